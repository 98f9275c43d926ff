"""The metaformer decision: the comparisons that decide "attention is what makes Transformers
work in vision", declared before any trial runs, and the rule over their decisions. The
statistics (paired t intervals, the tests, Holm across the comparisons) are the platform's
(skeptic.stats); the numbers are test accuracies (`test_acc`), which no choice ever saw.

Yu et al.'s answer: in the same MetaFormer skeleton, a parameter-free pooling mixer does
about as well as attention. Each deciding arm runs at one learning rate fixed in advance, the
one validation chose for it in the committed run (docs/results/metaformer: pool3 and
attention at the base lr, identity at twice it), so no lr is picked on this run's numbers;
the report shows each mixer at the lr this run's validation picks, and warns when that is not
a deciding arm's (a comparison cannot yet have "the arm at its validation-best lr" as an arm).
Paired by seed: a seed fixes the batch order (and augmentation draws) of every arm.

- `pool3_noninferior`: pool3 (b) no worse than attention (a) by more than MARGIN: "pooling is
  level with attention" (non-inferiority: pooling ahead of attention contradicts the belief
  more, not less);
- `pool3_vs_attention`: superiority, either way: attention ahead is what the belief predicts;
- `pool3_vs_identity`: superiority of pool3 (b) over no token mixing at all (a): unless
  mixing tokens matters at this scale, "pooling matches attention" says nothing about
  attention.
"""

from __future__ import annotations

from collections.abc import Mapping

from skeptic.api import Compare, Decision, Judged, Question

POOL, ATTENTION, IDENTITY = "pool3", "attention", "identity-lr2x"  # the deciding arms
NONINF, VERSUS, CONTROL = "pool3_noninferior", "pool3_vs_attention", "pool3_vs_identity"
MARGIN = 0.05  # test_acc is a fraction: 5 pp

WHY_MARGIN = (
    "5 pp of test accuracy, about a third of what token mixing adds at this scale (pool3 "
    "ahead of identity by 15.9 pp, val, in the committed run); in the paper the attention-"
    "pooling gap (DeiT-S 79.8 vs PoolFormer-S24 80.3) is likewise a fraction of pooling's "
    "lead over no mixing (S12: 77.2 vs 74.3). Seeds spread by 2.7 pp (pool3) and 6.4 pp "
    "(attention) sd there, so 3 seeds rarely decide it: the seed rule adds seeds"
)
WHY_VERSUS = "attention ahead of pooling is what the belief predicts; two-sided, paired by seed"
WHY_CONTROL = (
    "no token mixing (identity, at the lr validation chose for it in the committed run) vs "
    "pooling: if mixing does not matter here, pooling matching attention says nothing"
)


def comparisons() -> list[Compare]:
    pool, attention, identity = {"arm": POOL}, {"arm": ATTENTION}, {"arm": IDENTITY}
    return [
        Compare(NONINF, attention, pool, Question.NON_INFERIORITY, MARGIN, WHY_MARGIN),
        Compare(VERSUS, attention, pool, Question.SUPERIORITY, why=WHY_VERSUS),
        Compare(CONTROL, identity, pool, Question.SUPERIORITY, why=WHY_CONTROL),
    ]


def decide(judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
    """Overturned when pooling is shown level with attention (non-inferior, or ahead) and
    ahead of no mixing; held when attention is shown ahead of pooling and pooling is not
    shown level with it; undecided otherwise, saying what is missing."""
    versus = judged[VERSUS].decision
    level = judged[NONINF].decision == Decision.NON_INFERIOR or versus == Decision.B_BETTER
    mixing = judged[CONTROL].decision
    margin = f"{100 * MARGIN:g} pp"
    if level and mixing == Decision.B_BETTER:
        edge = {
            Decision.A_BETTER: ", attention's lead being real but smaller than that",
            Decision.B_BETTER: " (pooling is ahead)",
        }.get(versus, "")
        return False, (
            f"Overturned: pooling is no worse than attention by more than {margin} of test "
            f"accuracy{edge}, and it beats no token mixing: the mixer need not be attention."
        )
    if versus == Decision.A_BETTER and not level:
        return True, (
            f"Held: attention is ahead of pooling, which is not shown within {margin} of it."
        )
    if level:
        return None, (
            f"Undecided: pooling is within {margin} of attention, but it is not shown ahead of "
            "no token mixing (identity), so at this scale the mixer's part cannot be told."
        )
    return None, (
        f"Undecided: pooling is neither shown within {margin} of attention nor shown behind it "
        "(see each comparison's hint for the seeds needed)."
    )
