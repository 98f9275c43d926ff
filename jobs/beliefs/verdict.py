"""The beliefs decision: comparisons declared before any trial runs, and the rule over
their decisions. Statistics are the platform's, paired by seed (a seed draws the voters and
the test fold, the same for every arm), on the test votes, which no choice saw.

The fine-tuned arm is `full` where the sweep has it (the paper preset), else `top2`.

- `tuned_vs_frozen` (deciding, superiority): stance accuracy, fine-tuned (b) vs frozen (a);
- `frozen_level` (deciding, equivalence within MARGIN): the frozen encoder within 1 pp of
  the fine-tuned one: what "fine-tuning adds little" says, with its margin stated;
- `tuned_vs_group` (deciding, superiority): fine-tuned vs the group majority, the baseline
  the paper beats by 4.4 pp: an encoder that cannot beat it predicts nothing;
- `frozen_vs_group` (deciding, superiority): the frozen encoder vs the group majority: the
  belief says a general-purpose embedding already captures how beliefs relate, so "held"
  needs it to predict something, not only to be level with a fine-tune that fails too;
- `oracle_vs_group` (reported): the rule on the hidden loadings vs the group majority: how
  predictable the simulated votes are at all (the ceiling no encoder can pass);
- `dissonance` (reported): the slope of the fine-tuned arm's test accuracy over the five
  d_rel quintiles, tested against zero: the paper's behavioural claim (positive = held);
- `tuned_vs_user` (reported): fine-tuned vs each user's own majority stance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs.beliefs.evaluate import SLOPE
from skeptic.api import Compare, Decision, Judged, Question

FROZEN, GROUP, USER = "frozen", "group_majority", "user_majority"
TUNED, LEVEL, VS_GROUP, FROZEN_GROUP = (
    "tuned_vs_frozen", "frozen_level", "tuned_vs_group", "frozen_vs_group",
)  # fmt: skip
DISSONANCE, VS_USER, ORACLE = "dissonance", "tuned_vs_user", "oracle_vs_group"
MARGIN = 0.01  # 1 pp of stance accuracy

WHY_TUNED = "the paper's headline: fine-tuned S-BERT 57.66% vs base S-BERT 56.14%"
WHY_LEVEL = (
    "1 pp: smaller than the paper's own gain (1.5 pp), so 'adds little' is shown only if "
    "the gain here is smaller than the paper's; a tighter margin needs far more seeds"
)
WHY_GROUP = "the paper's fine-tuned model beats the group majority (53.24%) by 4.4 pp"
WHY_DISSONANCE = (
    "accuracy gained per d_rel quintile (a fraction per quintile), tested against zero: "
    "the paper reports accuracy rising with relative dissonance"
)
WHY_USER = "each user's own majority stance: how much of the signal is just a user's lean"
WHY_FROZEN = "the general-purpose embedding must predict held-out stances at all for 'held'"
WHY_ORACLE = "the most the simulated votes allow: the paper's rule on the hidden loadings"


def tuned_arm(arms: Mapping[str, Any]) -> str:
    return "full" if "full" in arms else "top2"


def comparisons(tuned: str) -> list[Compare]:
    t = {"arm": tuned}
    return [
        Compare(TUNED, {"arm": FROZEN}, t, Question.SUPERIORITY, why=WHY_TUNED),
        Compare(LEVEL, t, {"arm": FROZEN}, Question.EQUIVALENCE, MARGIN, WHY_LEVEL),
        Compare(VS_GROUP, {"arm": GROUP}, t, Question.SUPERIORITY, why=WHY_GROUP),
        Compare(FROZEN_GROUP, {"arm": GROUP}, {"arm": FROZEN}, why=WHY_FROZEN),
        Compare(DISSONANCE, None, t, metric=SLOPE, why=WHY_DISSONANCE, deciding=False),
        Compare(VS_USER, {"arm": USER}, t, why=WHY_USER, deciding=False),
        Compare(ORACLE, {"arm": GROUP}, {"arm": "oracle"}, why=WHY_ORACLE, deciding=False),
    ]


def dissonance_label(judged: Mapping[str, Judged]) -> str:
    d = judged[DISSONANCE].decision if DISSONANCE in judged else Decision.UNDECIDED
    return {Decision.B_BETTER: "supported (accuracy rises with d_rel)",
            Decision.A_BETTER: "contradicted (accuracy falls with d_rel)"}.get(
        d, "undecided (the slope's CI spans zero)")  # fmt: skip


def decide(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    """Overturned when fine-tuning is shown better than the frozen encoder and than the
    group majority; held when the frozen encoder is shown within the margin of the
    fine-tuned one (or better) and better than the group majority; undecided otherwise.
    The dissonance claim is reported beside the label."""
    tuned, level, group, frozen = (judged[k].decision for k in (TUNED, LEVEL, VS_GROUP,
                                                                FROZEN_GROUP))  # fmt: skip
    tail = f" The paper's dissonance claim: {dissonance_label(judged)}."
    if tuned == Decision.B_BETTER and group == Decision.B_BETTER:
        return False, (
            "Overturned: stance-aware fine-tuning predicts held-out beliefs better than the "
            "frozen encoder, and better than the group majority." + tail
        )
    level_or_better = level == Decision.EQUIVALENT or tuned == Decision.A_BETTER
    if level_or_better and frozen == Decision.B_BETTER:
        return True, (
            f"Held: the frozen encoder predicts held-out beliefs better than the group "
            f"majority and is within {100 * MARGIN:g} pp of the fine-tuned one, or better." + tail
        )
    if frozen != Decision.B_BETTER and group != Decision.B_BETTER:
        return None, (
            "Undecided: neither the frozen nor the fine-tuned encoder is shown to predict "
            "held-out beliefs better than the group majority, so this run cannot say "
            "whether fine-tuning adds to an embedding that places them." + tail
        )
    return None, (
        "Undecided: fine-tuning is neither shown better than both the frozen encoder and "
        f"the group majority, nor shown within {100 * MARGIN:g} pp of a frozen encoder that "
        "beats the group majority." + tail
    )
