"""The metaformer decision: the comparisons that decide "attention is what makes Transformers
work in vision", declared before any trial runs, and the rule over their decisions. The
statistics (paired t intervals, the tests, Holm across the comparisons) are the platform's
(skeptic.stats); the numbers are test accuracies (`test_acc`), which no choice ever saw.

Yu et al.'s answer: in the same MetaFormer skeleton, a parameter-free pooling mixer does
about as well as attention. Every arm gets the same lr search inside its trials (one model
per lr of `Params.lr_grid`, the one with the highest validation accuracy kept), so each
side of a comparison is "that mixer at the lr validation picked for it", and the numbers
compared are that model's test accuracy. Paired by seed: a seed fixes the initial weights,
the batch order and augmentation draws of every arm.

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

POOL, ATTENTION, IDENTITY = "pool3", "attention", "identity"  # the deciding arms
NONINF, VERSUS, CONTROL = "pool3_noninferior", "pool3_vs_attention", "pool3_vs_identity"
MARGIN = 0.05  # test_acc is a fraction: 5 pp

WHY_MARGIN = (
    "5 pp of test accuracy (declared before this run, as in issue 13's run): a gap the paper "
    "would call a real loss for pooling. At ImageNet scale its attention-pooling gaps are "
    "under 1 pp (Table 2: PoolFormer-S24 80.3 vs DeiT-S 79.8), but pooling's lead over no "
    "mixing is itself only 2.9 pp (Table 5: 77.2 vs 74.3); on 10 generated classes with 1200 "
    "test images and 3 seeds, a tighter margin could not be decided"
)
WHY_VERSUS = "attention ahead of pooling is what the belief predicts; two-sided, paired by seed"
WHY_CONTROL = (
    "no token mixing (identity, with the same lr search) vs pooling: if mixing does not "
    "matter here, pooling matching attention says nothing"
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
