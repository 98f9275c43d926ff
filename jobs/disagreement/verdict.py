"""The disagreement decision: comparisons declared before any trial runs, and the rule over
their decisions, part by part. Statistics are the platform's, paired by seed: in part 1 a
seed is a test fold of topics (the same replies for every measure), in part 2 it draws the
simulated world (the same posts for every measure).

Deciding are the comparisons the label reads (below), in one Holm family; the others are
reported beside them, in a family of their own.

Part 1, measurement validity (AUC of disagree vs agree replies, on the fold's topics):
- `chance_<m>` (superiority, against 0): lexicon index m's AUC above chance (0.5);
- `flat_<m>` (equivalence within FLAT of chance): index m no better than a coin;
- `removed_<m>` (non-inferiority, MARGIN): m with the topic removed from the texts no
  worse than with it present: the paper's "works even when the topic is removed";
- reported: `emb_<m>` (superiority), index m against the embedding stance distance, and
  the chance and topic-removed comparisons of the stance distance and the combined scorer.

Part 2, the simulation (Spearman rho of each period's measure with the latent effect):
- `rho_<m>_a<alpha>_n<noise>_<displaced>` (superiority): disagreement measure m against
  the misinformation count, at each alpha, noise and structure (what disagreement
  displaces) of the sweep; deciding for the lexicon indices at alpha <= 0.5, reported for
  the stance distance, the combined scorer and alpha > 0.5 (at alpha = 1 the count should
  win: a check of the simulation).

The label is about the belief (misinformation effects are best measured by counting
misinformation). Part 1 "overturned": some lexicon index beats chance and keeps its AUC
without the topic; "held": every lexicon index is shown at chance (within FLAT) or below
it (ranking agreeing replies above disagreeing ones reads agreement as disagreement). Part 2
"overturned": wherever misinformation drives at most half of the effect (alpha <= 0.5), a
lexicon index tracks it better than the count; "held": nowhere there does any, and the
count beats every lexicon index somewhere there. The study's label: overturned when both
parts overturn it, held when one holds it and neither overturns it, undecided otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import product
from typing import Any

from pydantic import BaseModel

from jobs.disagreement.lexicons import LEXICONS
from jobs.disagreement.measures import STANCE
from skeptic.api import Compare, Decision, Judged, Question

MARGIN = 0.05  # AUC lost when the topic is removed
FLAT = 0.05  # AUC within 0.5 +- this: as good as a coin
HALF = 0.5  # part 2's label reads the cells where misinformation drives at most half
COUNT = "count"
CHANCE, FLAT_NAME, EMB, REMOVED, RHO = "chance", "flat", "emb", "removed", "rho"
ABOVE_CHANCE = "test_auc_above_chance"

CAVEAT = (
    "Caveat: part 2 is a simulation built so that the effect shows itself in the stance of "
    "posts, so that disagreement can track it at alpha = 0 and the count at alpha = 1 is "
    "built in; the real text decides only how much of that stance each measure reads, and "
    "part 1's text was written for the study, so neither part says how the index behaves on "
    "real tweets or letters."
)
WHY_CHANCE = "a measure of disagreement must rank disagreeing replies above agreeing ones"
WHY_FLAT = "0.05 AUC: one pair in twenty ranked better than by a coin is no measure"
WHY_EMB = "the lexicon index against the meaning-based alternative: which reads stance better"
WHY_REMOVED = (
    "0.05 AUC: the paper's claim that the index works with the topic removed; a loss this "
    "size would leave the index far weaker than with the topic"
)
WHY_RHO = "the paper's claim: disagreement tracks the effect better than counting misinformation"
WHY_RHO_CHECK = "a check of the simulation: at alpha = 1 the count should track the effect best"


def _validity(measure: str, text: str = "present") -> dict[str, Any]:
    return {"part": "validity", "measure": measure, "text": text}


def _arms(spec: Any, train: BaseModel, part: str) -> list[dict[str, Any]]:
    """The parameters of the sweep's arms of `part` (the `train` value where an arm does not
    set one; `train`: the spec's training parameters)."""
    base = train.model_dump()
    arms = [base | dict(arm) for arm in spec.sweep.arms.values()] or [base]
    return [a for a in arms if a["part"] == part]


def arm_values(spec: Any, train: BaseModel, part: str, name: str) -> list[Any]:
    """The values of parameter `name` among the sweep's arms of `part`."""
    return sorted({a[name] for a in _arms(spec, train, part)}, key=str)


def grid(spec: Any, train: BaseModel, name: str) -> list[float]:
    dim = spec.sweep.space.get(name)
    return sorted(dim.grid or dim.choice) if dim is not None else [getattr(train, name)]


def tag(alpha: float, noise: float, displaced: str) -> str:
    return f"a{alpha:g}_n{noise:g}_{displaced}".replace(".", "p")


def _removed_measures(spec: Any, train: BaseModel) -> set[str]:
    """The measures part 1 runs with the topic removed."""
    return {a["measure"] for a in _arms(spec, train, "validity") if a["text"] == "removed"}


def validity_comparisons(spec: Any, train: BaseModel) -> list[Compare]:
    measures = arm_values(spec, train, "validity", "measure")
    removed = _removed_measures(spec, train)
    out = []
    for m in measures:
        lexicon = m in LEXICONS
        at = _validity(m)
        out += [
            Compare(f"{CHANCE}_{m}", None, at, metric=ABOVE_CHANCE, why=WHY_CHANCE,
                    deciding=lexicon),
        ]  # fmt: skip
        if lexicon:
            out.append(Compare(f"{FLAT_NAME}_{m}", None, at, Question.EQUIVALENCE, FLAT,
                               WHY_FLAT, metric=ABOVE_CHANCE))  # fmt: skip
            if STANCE in measures:
                out.append(Compare(f"{EMB}_{m}", _validity(STANCE), at, metric="test_auc",
                                   why=WHY_EMB, deciding=False))  # fmt: skip
        if m in removed:
            out.append(Compare(f"{REMOVED}_{m}", at, _validity(m, "removed"),
                               Question.NON_INFERIORITY, MARGIN, WHY_REMOVED,
                               metric="test_auc", deciding=lexicon))  # fmt: skip
    return out


def simulation_comparisons(spec: Any, train: BaseModel) -> list[Compare]:
    measures = [m for m in arm_values(spec, train, "simulation", "measure") if m != COUNT]
    if COUNT not in arm_values(spec, train, "simulation", "measure"):
        return []
    out = []
    cells = product(*(grid(spec, train, name) for name in ("alpha", "noise", "displaced")))
    for alpha, noise, displaced in cells:
        cell = {"part": "simulation", "alpha": alpha, "noise": noise, "displaced": displaced}
        check = alpha >= 1
        for m in measures:
            name = f"{RHO}_{m}_{tag(alpha, noise, displaced)}"
            out.append(Compare(name, cell | {"measure": COUNT}, cell | {"measure": m},
                               metric="test_rho",
                               why=WHY_RHO_CHECK if check else WHY_RHO,
                               deciding=m in LEXICONS and alpha <= HALF))  # fmt: skip
    return out


def comparisons(spec: Any, train: BaseModel) -> list[Compare]:
    return validity_comparisons(spec, train) + simulation_comparisons(spec, train)


def _lexicon_decisions(judged: Mapping[str, Judged], prefix: str) -> dict[str, Decision]:
    return {m: judged[f"{prefix}_{m}"].decision for m in LEXICONS if f"{prefix}_{m}" in judged}


def part1(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    chance = _lexicon_decisions(judged, CHANCE)
    flat = _lexicon_decisions(judged, FLAT_NAME)
    removed = _lexicon_decisions(judged, REMOVED)
    works = [m for m, d in chance.items() if d == Decision.B_BETTER
             and removed.get(m) == Decision.NON_INFERIOR]  # fmt: skip
    if works:
        return False, (f"{', '.join(works)} rank(s) disagreeing replies above agreeing ones "
                       "and keep(s) that with the topic removed")  # fmt: skip
    failed = [
        m for m in chance if chance[m] == Decision.A_BETTER or flat.get(m) == Decision.EQUIVALENT
    ]
    if chance and len(failed) == len(chance):
        return True, "every lexicon index is shown at chance or below it"
    return None, ("no lexicon index is shown both above chance and non-inferior without the "
                  "topic, nor is every one shown at or below chance")  # fmt: skip


def _cells(judged: Mapping[str, Judged]) -> dict[str, dict[str, Decision]]:
    """alpha<=HALF cells of part 2 -> lexicon -> decision (a count, b measure)."""
    cells: dict[str, dict[str, Decision]] = {}
    for name, j in judged.items():
        b = j.compare.b
        if name.startswith(RHO + "_") and b["measure"] in LEXICONS and b["alpha"] <= HALF:
            cells.setdefault(tag(b["alpha"], b["noise"], b["displaced"]), {})[b["measure"]] = (
                j.decision
            )
    return cells


def part2(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    cells = _cells(judged)
    if not cells:
        return None, "no simulation cell with alpha <= 0.5 was run"
    won = {c for c, d in cells.items() if Decision.B_BETTER in d.values()}
    lost = {c for c, d in cells.items() if all(x == Decision.A_BETTER for x in d.values())}
    if len(won) == len(cells):
        return False, (f"in all {len(cells)} cells with alpha <= 0.5 a lexicon index tracks "
                       "the effect better than the misinformation count")  # fmt: skip
    if not won and lost:
        return True, (f"the count tracks the effect better than every lexicon index in "
                      f"{len(lost)} of {len(cells)} cells with alpha <= 0.5, and no lexicon "
                      "index does better in any")  # fmt: skip
    return None, (f"of the {len(cells)} cells with alpha <= 0.5, a lexicon index tracks the "
                  f"effect better than the count in {len(won)} and the count beats every "
                  f"lexicon index in {len(lost)}")  # fmt: skip


def decide(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    (one, why1), (two, why2) = part1(judged), part2(judged)
    label = {True: "held", False: "overturned", None: "undecided"}
    parts = (f"Part 1 (real text) {label[one]}: {why1}. Part 2 (simulation) {label[two]}: "
             f"{why2}. {CAVEAT}")  # fmt: skip
    if one is False and two is False:
        return False, "Overturned. " + parts
    if True in (one, two) and False not in (one, two):
        return True, "Held. " + parts
    return None, "Undecided. " + parts
