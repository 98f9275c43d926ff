"""The ego_only decision: comparisons declared before any trial runs, and the rule over their
decisions. Statistics are the platform's, paired by seed (a seed draws every clip set and
the labelled subset, the same for every arm); reported numbers are test-clip segment F1@0.5.

At each labelled fraction L, Ego-Only (`ego_mae`: MAE on the unlabelled egocentric clips,
no exocentric data) against every exocentric-transfer arm present (`exo_sup`, `exo_mae`,
`exo_ego_mae`), so also against the best of them, whichever that is, without choosing it
on test data:

- `ni_<arm>_<L>` (non-inferiority, MARGIN): Ego-Only no worse than the arm by more than 3 pp;
- `sup_<arm>_<L>` (superiority): which is better, if either;

and against training from scratch:

- `scratch_<L>` (superiority): does in-domain self-supervision help at all?

The label is about the belief (egocentric models need exocentric pretraining):
"overturned" means Ego-Only matched every exocentric transfer at every fraction and beat
scratch; "held" that an exocentric transfer beat it, it matched them all at no fraction,
and its MAE was shown to help somewhere (a manipulation check: an MAE that learnt nothing
at this scale cannot speak for egocentric pretraining).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from skeptic.api import Compare, Decision, Judged, Question

MARGIN = 0.03  # test segment F1@0.5
EGO = {"exo": "none", "ego_mae": True}
SCRATCH = {"exo": "none", "ego_mae": False}
EXO_ARMS = {
    "exo_sup": {"exo": "supervised", "ego_mae": False},
    "exo_mae": {"exo": "mae", "ego_mae": False},
    "exo_ego_mae": {"exo": "mae", "ego_mae": True},
}
NI, SUP, VS_SCRATCH = "ni", "sup", "scratch"

WHY_NI = (
    "3 pp of segment F1@0.5: a gap a user would notice, and smaller than the gain the belief "
    "credits exocentric pretraining with (scratch vs pretrained)"
)
WHY_SUP = "Ego-Only's claim: in-domain self-supervision beats exocentric transfer"
WHY_SCRATCH = "in-domain pretraining must beat training the same network from scratch"


def fractions(spec: Any, train: BaseModel) -> list[float]:
    """The sweep's labelled fractions (`train`'s where not swept; `train`: the spec's
    training parameters, the study's Params)."""
    dim = spec.sweep.space.get("labelled")
    return sorted(dim.grid or dim.choice) if dim is not None else [train.labelled]


def _present(spec: Any, train: BaseModel, values: Mapping[str, Any]) -> bool:
    """Whether an arm of the sweep trains these (pretraining) values."""
    base = train.model_dump()
    return any(all((base | dict(arm))[k] == v for k, v in values.items())
               for arm in spec.sweep.arms.values())  # fmt: skip


def tag(fraction: float) -> str:
    return f"l{100 * fraction:g}".replace(".", "p")


def comparisons(spec: Any, train: BaseModel) -> list[Compare]:
    out = []
    for fraction in fractions(spec, train):
        at = {"labelled": fraction}
        ego, t = EGO | at, tag(fraction)
        for name, arm in EXO_ARMS.items():
            if not _present(spec, train, arm):
                continue
            out += [
                Compare(
                    f"{NI}_{name}_{t}", arm | at, ego, Question.NON_INFERIORITY, MARGIN, WHY_NI
                ),
                Compare(f"{SUP}_{name}_{t}", arm | at, ego, why=WHY_SUP),
            ]
        if _present(spec, train, SCRATCH):
            out.append(Compare(f"{VS_SCRATCH}_{t}", SCRATCH | at, ego, why=WHY_SCRATCH))
    return out


def _of(judged: Mapping[str, Judged], prefix: str) -> dict[str, Decision]:
    return {n: j.decision for n, j in judged.items() if n.startswith(prefix + "_")}


def matched_all(judged: Mapping[str, Judged]) -> list[str]:
    """The fractions (tags) at which Ego-Only is shown non-inferior to every exocentric arm."""
    ni = _of(judged, NI)
    tags = {n.rsplit("_", 1)[1] for n in ni}
    return sorted(t for t in tags if all(d == Decision.NON_INFERIOR for n, d in ni.items()
                                         if n.endswith("_" + t)))  # fmt: skip


def decide(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    """Overturned when, at every labelled fraction, Ego-Only is shown non-inferior to every
    exocentric-transfer arm and better than scratch. Held when an exocentric transfer is
    shown better than Ego-Only somewhere, Ego-Only is non-inferior to all of them at no
    fraction, and its MAE is shown to help somewhere (better than scratch): an egocentric MAE
    that learnt nothing at this scale says nothing about egocentric pretraining. Undecided
    otherwise."""
    ni, sup, scratch = _of(judged, NI), _of(judged, SUP), _of(judged, VS_SCRATCH)
    tags = {n.rsplit("_", 1)[1] for n in ni}
    matched = matched_all(judged)
    beaten = sorted(n for n, d in sup.items() if d == Decision.A_BETTER)
    helped = [n for n, d in scratch.items() if d == Decision.B_BETTER]
    if ni and len(matched) == len(tags) and scratch and len(helped) == len(scratch):
        return False, (
            "Overturned: at every labelled fraction Ego-Only (MAE on the egocentric clips "
            "alone) is within 3 pp of every exocentric transfer or better, and beats training "
            "from scratch: this run needs no exocentric pretraining."
        )
    if beaten and not matched and helped:
        return True, (
            f"Held: an exocentric transfer beats Ego-Only ({', '.join(beaten)}), and at no "
            "labelled fraction is Ego-Only shown within 3 pp of every exocentric arm."
        )
    if not helped:
        return None, (
            "Undecided: Ego-Only's MAE is not shown to beat training from scratch at any "
            "labelled fraction, so this run's egocentric pretraining may have learnt nothing "
            "to transfer: it cannot test whether egocentric pretraining suffices."
        )
    if beaten:
        return None, (
            f"Undecided: an exocentric transfer beats Ego-Only ({', '.join(beaten)}), but "
            f"Ego-Only matches every exocentric arm at {', '.join(matched)}: the answer "
            "depends on how many labels there are."
        )
    return None, (
        "Undecided: Ego-Only is not shown within 3 pp of every exocentric transfer at every "
        "labelled fraction, nor shown worse than any of them."
    )
