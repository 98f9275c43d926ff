"""The consciousness decision: comparisons declared before any trial runs, and the rule over
their decisions. Statistics are the platform's, paired by seed (a seed draws the image
pools and the scenes, the same for every arm); reported numbers are on the test scenes.

At each setting of the sweep (each task; each N and k_true where the sweep varies them),
the bottleneck arm is top-k at k = k_true with the spec's warm-up, and, for each shift
(every trial is tested under both):

- `drop_dense_*`, `drop_soft_*` (superiority, lower is better): its OOD drop (in-
  distribution test accuracy minus OOD test accuracy) against dense and soft attention's;
- `ood_random_*` (superiority): its OOD accuracy against random-k at the same k: does the
  *selection* matter, or only reading few slots?
- `sel_random_*` (superiority): how often it selects the cued slots on the OOD scenes
  (selection recall), against random-k's: does the conscious state hold the cued factors
  when the distractors shift?

and once per setting (the in-distribution test does not depend on the shift):

- `id_dense_*`, `id_soft_*` (non-inferiority, MARGIN): its in-distribution test accuracy no
  worse than theirs by more than 2 pp: a small drop bought by learning little is no win.

The label is about the belief (dense or soft attention generalises best): "overturned"
means the prior's prediction is borne out, "held" that dense or soft attention generalised
better.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import product
from typing import Any

from pydantic import BaseModel

from jobs.consciousness.evaluate import drop, ood
from jobs.consciousness.scenes import SHIFTS
from skeptic.api import Compare, Decision, Judged, Question

MARGIN = 0.02  # in-distribution test accuracy
DROP, ID, RANDOM, SELECT = "drop", "id", "ood_random", "sel_random"
SETTING = ("task", "slots", "cued")  # what a comparison holds fixed

WHY_DROP = "the prior's prediction: a sparse conscious state ignores shifted distractors"
WHY_ID = (
    "2 pp: a bottleneck that learns less in distribution may drop less out of it; the "
    "claim is about generalisation at a comparable fit"
)
WHY_RANDOM = "the same number of slots read, chosen at random: isolates the learnt selection"
WHY_SELECT = "the conscious state should hold the cued factors, also after the shift"


def settings(spec: Any, train: BaseModel) -> list[dict[str, Any]]:
    """Every combination of the sweep's values of `SETTING` (the `train` value where not
    swept; `train`: the spec's training parameters, the study's Params)."""
    values = {}
    for name in SETTING:
        dim = spec.sweep.space.get(name)
        values[name] = list(dim.grid or dim.choice) if dim is not None else [getattr(train, name)]
    return [dict(zip(SETTING, combo, strict=True)) for combo in product(*values.values())]


def tag(setting: Mapping[str, Any], varied: set[str]) -> str:
    parts = [str(setting["task"])] if "task" in varied else []
    parts += [f"n{setting['slots']}"] if "slots" in varied else []
    parts += [f"k{setting['cued']}"] if "cued" in varied else []
    return "_".join(parts)


def _name(*parts: str) -> str:
    return "_".join(p for p in parts if p)


def comparisons(spec: Any, train: BaseModel) -> list[Compare]:
    warmup = train.warmup
    all_settings = settings(spec, train)
    varied = {n for n in SETTING if len({s[n] for s in all_settings}) > 1}
    out = []
    for s in all_settings:
        t = tag(s, varied)
        at = {"select": "topk", "k": s["cued"], "warmup": warmup} | s
        dense, soft = {"select": "dense"} | s, {"select": "soft"} | s
        rand = {"select": "random", "k": s["cued"]} | s
        out += [
            Compare(_name(ID, "dense", t), dense, at, Question.NON_INFERIORITY, MARGIN, WHY_ID),
            Compare(_name(ID, "soft", t), soft, at, Question.NON_INFERIORITY, MARGIN, WHY_ID),
        ]
        for shift in SHIFTS:
            lower = {"metric": drop(shift), "higher_is_better": False, "why": WHY_DROP}
            out += [
                Compare(_name(DROP, "dense", t, shift), dense, at, **lower),
                Compare(_name(DROP, "soft", t, shift), soft, at, **lower),
                Compare(_name(RANDOM, t, shift), rand, at, metric=f"{ood(shift)}_acc",
                        why=WHY_RANDOM),
                Compare(_name(SELECT, t, shift), rand, at, metric=f"{ood(shift)}_sel_recall",
                        why=WHY_SELECT),
            ]  # fmt: skip
    return out


def _of(judged: Mapping[str, Judged], prefix: str) -> list[Decision]:
    return [j.decision for name, j in judged.items() if name.startswith(prefix + "_")]


def decide(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    """Overturned when, at every setting, the bottleneck's OOD drop is shown smaller than
    dense's and soft's, its in-distribution accuracy non-inferior to theirs, and it beats
    random-k in OOD accuracy and in selecting the cued slots. Held when dense or soft
    attention is shown to drop less than the bottleneck somewhere and the bottleneck is
    nowhere shown to drop less. Undecided otherwise."""
    drops = _of(judged, DROP)
    ids = _of(judged, ID)
    chosen = _of(judged, RANDOM) + _of(judged, SELECT)
    won = [d == Decision.B_BETTER for d in drops]
    lost = [d == Decision.A_BETTER for d in drops]
    if drops and all(won) and all(d in (Decision.NON_INFERIOR, Decision.B_BETTER) for d in ids) \
            and all(d == Decision.B_BETTER for d in chosen):  # fmt: skip
        return False, (
            "Overturned: at every setting the top-k bottleneck (k = k_true) drops less out of "
            "distribution than dense and soft attention, at a non-inferior in-distribution "
            "accuracy, and selects the cued slots and generalises better than random-k: the "
            "prior's prediction holds on this task."
        )
    if any(lost) and not any(won):
        return True, (
            f"Held: dense or soft attention drops less out of distribution than the top-k "
            f"bottleneck in {sum(lost)} of {len(drops)} comparisons, and the bottleneck drops "
            "less in none: on this task the hard bottleneck does not generalise better."
        )
    if any(won) and any(lost):
        return None, (
            f"Undecided: the bottleneck drops less in {sum(won)} comparisons and more in "
            f"{sum(lost)}: the answer depends on the shift or the baseline."
        )
    return None, (
        "Undecided: the bottleneck's OOD drop is not shown smaller than dense's and soft's "
        "everywhere (with a non-inferior fit and a selection better than random-k), nor "
        "shown larger anywhere."
    )
