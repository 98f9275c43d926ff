"""Verdict statistics, computed once for every study.

A study declares its deciding comparisons (`Compare`: which trials are arm a and arm b, the
question asked, the margin). For each, `judge` estimates the difference b - a of the
study's reported (test) metric with a 95% confidence interval — a paired t interval when
the arms share their seeds (same init, same baseline per seed), Welch's otherwise — tests
the question asked, adjusts the p-values across the study's comparisons (Holm), and says
what the data decide:

- superiority: is either arm better? two-sided t test; "a better" / "b better" / undecided;
- non-inferiority: is b no worse than a by more than `margin`? one-sided t test;
- equivalence: are they within +-`margin` of each other? two one-sided tests (TOST).

"Not significantly different" is never read as "the same": only an equivalence test within
a stated margin says that. A sequential seed rule looks at the data several times; the
level of each look comes from `look_levels` (O'Brien-Fleming-shaped boundaries calibrated
by simulation so that all looks together keep the error rate at `ALPHA`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sps

if TYPE_CHECKING:
    from skeptic.study import TrialResult

ALPHA = 0.05  # family-wise error rate of one study's deciding comparisons, all looks together
POWER = 0.8  # what the "seeds needed" hint aims for
MAX_SEEDS = 10_000  # the most seeds the hint names ("seeds alone will not decide it" beyond)


class Question(StrEnum):
    SUPERIORITY = "superiority"
    NON_INFERIORITY = "non_inferiority"
    EQUIVALENCE = "equivalence"


class Decision(StrEnum):
    A_BETTER = "a better"
    B_BETTER = "b better"
    EQUIVALENT = "equivalent"  # within +-margin
    NON_INFERIOR = "non-inferior"  # b no worse than a by more than the margin
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Compare:
    """One deciding comparison: the trials of arm `a` and arm `b` (the parameter values they
    have, e.g. {"arm": "SB", "batch_size": 64}), the question, and the margin in the
    metric's units with the reason for it. `metric` defaults to the study's report metric;
    `higher_is_better` says which direction "better" is. `a=None` tests arm b's values
    against zero (a one-sample t test, for a metric that is itself a contrast within each
    trial: a slope, say): "b - a" is then b's mean."""

    name: str  # short, unique within the study: it names MLflow metrics (cmp.<name>.diff)
    a: Mapping[str, Any] | None
    b: Mapping[str, Any]
    question: Question = Question.SUPERIORITY
    margin: float = 0.0
    why: str = ""  # why this margin (and this comparison): shown in the report
    metric: str | None = None
    paired_by: str | None = "seed"
    higher_is_better: bool = True
    # False: reported beside the deciding ones, in a Holm family of its own, and it does not
    # make the seed rule add seeds (e.g. a second claim of the paper the label ignores)
    deciding: bool = True

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"comparison name {self.name!r}: letters, digits, _ and - only")
        if self.question != Question.SUPERIORITY and self.margin <= 0:
            raise ValueError(f"comparison {self.name!r}: {self.question} needs a margin > 0")

    def side(self, params: Mapping[str, Any]) -> str | None:
        """"a", "b" or None: which arm a trial with these parameters belongs to."""
        for side, where in (("a", self.a), ("b", self.b)):
            if where is not None and all(_same(params.get(k), v) for k, v in where.items()):
                return side
        return None


def margin_text(c: Compare) -> str:
    """The margin as the question uses it: one-sided for non-inferiority."""
    if c.question == Question.EQUIVALENCE:
        return f" within +-{c.margin:g}"
    if c.question == Question.NON_INFERIORITY:
        return f" (margin {c.margin:g})"
    return ""


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(value, int | float) and isinstance(wanted, int | float):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return value == wanted


@dataclass(frozen=True)
class Estimate:
    """b - a in the metric's units, with its 95% confidence interval."""

    n_a: int
    n_b: int
    paired: bool
    diff: float
    ci_low: float
    ci_high: float
    sd: float  # of the paired differences, or the two arms' pooled sd
    df: float


@dataclass(frozen=True)
class Judged:
    """A comparison, what the data show, and what they decide."""

    compare: Compare
    estimate: Estimate | None  # None: an arm has fewer than 2 values
    p: float  # of the question asked, before adjustment
    p_adjusted: float  # Holm over the study's comparisons, against this look's level
    level: float  # the significance level of this look (ALPHA with a fixed number of seeds)
    decision: Decision
    hint: str = ""  # for an undecided comparison: what would decide it

    def in_pp(self, digits: int = 1) -> str:
        """b - a and its 95% CI in percentage points, for a metric that is a fraction:
        "+1.2 [+0.3, +2.1]"; "not run" without an estimate."""
        e = self.estimate
        if e is None:
            return "not run"
        return f"{100 * e.diff:+.{digits}f} [{100 * e.ci_low:+.{digits}f}, {100 * e.ci_high:+.{digits}f}]"

    def line(self) -> str:
        """One line for the report and the console."""
        c, e = self.compare, self.estimate
        if e is None:
            return f"{c.name}: {self.decision} ({self.hint})"
        how = "paired by " + str(c.paired_by) if e.paired else "Welch, unpaired"
        return (
            f"{c.name}: b - a = {e.diff:+.4g} [95% CI {e.ci_low:+.4g}, {e.ci_high:+.4g}], "
            f"n = {e.n_a}/{e.n_b} ({how}), {c.question}{margin_text(c)}: p = {self.p:.3g} "
            f"(Holm {self.p_adjusted:.3g} vs {self.level:.3g}) -> {self.decision}"
            + (f"; {self.hint}" if self.hint else "")
        )


# ---- estimating one comparison ---------------------------------------------------------------


def arm_values(
    compare: Compare, results: Iterable[TrialResult], metric: str
) -> tuple[dict[Any, float], dict[Any, float]]:
    """The metric of every trial in arm a and in arm b, keyed by its pairing value (seed).
    Failed trials and trials without the metric are left out."""
    arms: dict[str, dict[Any, float]] = {"a": {}, "b": {}}
    for r in results:
        side = compare.side(r.params)
        if side is None or r.outcome == "failed" or metric not in r.final:
            continue
        key = r.params.get(compare.paired_by) if compare.paired_by else r.trial_id
        if key in arms[side]:
            raise ValueError(
                f"comparison {compare.name!r}: two trials of arm {side} share "
                f"{compare.paired_by}={key!r}; narrow its selector"
            )
        arms[side][key] = float(r.final[metric])
    if compare.a is None:  # against zero: b paired with a zero for each of its seeds
        return dict.fromkeys(arms["b"], 0.0), arms["b"]
    return arms["a"], arms["b"]


def estimate(a: Mapping[Any, float], b: Mapping[Any, float], paired_by: str | None) -> Estimate:
    """b - a with a 95% CI: paired t when every seed is in both arms, else Welch t."""
    paired = bool(paired_by) and set(a) == set(b) and len(a) >= 2
    if paired:
        keys = sorted(a, key=str)
        xa, xb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
        test = sps.ttest_rel(xb, xa)
        sd = float(np.std(xb - xa, ddof=1))
    else:
        xa, xb = np.array(list(a.values())), np.array(list(b.values()))
        test = sps.ttest_ind(xb, xa, equal_var=False)
        sd = float(math.sqrt((np.var(xa, ddof=1) + np.var(xb, ddof=1)) / 2))
    ci = test.confidence_interval(0.95)
    diff = float(np.mean(xb) - np.mean(xa))
    return Estimate(len(xa), len(xb), paired, diff, float(ci.low), float(ci.high), sd,
                    float(test.df))  # fmt: skip


def p_value(compare: Compare, a: Mapping[Any, float], b: Mapping[Any, float], paired: bool) -> float:
    """The p-value of the question asked (small: the data support the decision)."""
    sign = 1.0 if compare.higher_is_better else -1.0  # measure "better" as larger
    xa = {k: sign * v for k, v in a.items()}
    xb = {k: sign * v for k, v in b.items()}
    m = compare.margin
    if compare.question == Question.SUPERIORITY:
        return _test(xa, xb, paired, shift=0.0, alternative="two-sided")
    if compare.question == Question.NON_INFERIORITY:  # H1: b - a > -m
        return _test(xa, xb, paired, shift=m, alternative="greater")
    above = _test(xa, xb, paired, shift=m, alternative="greater")  # H1: b - a > -m
    below = _test(xa, xb, paired, shift=-m, alternative="less")  # H1: b - a < +m
    return max(above, below)


def _test(
    a: Mapping[Any, float], b: Mapping[Any, float], paired: bool, shift: float, alternative: str
) -> float:
    """p of a t test of (b + shift) against a."""
    if paired:
        keys = sorted(a, key=str)
        xa, xb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys]) + shift
        result = sps.ttest_rel(xb, xa, alternative=alternative)
    else:
        xa, xb = np.array(list(a.values())), np.array(list(b.values())) + shift
        result = sps.ttest_ind(xb, xa, equal_var=False, alternative=alternative)
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p  # no spread at all: nothing to conclude


# ---- a study's comparisons together ---------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' implementation)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


def judge(
    compares: Sequence[Compare], results: Sequence[TrialResult], metric: str,
    level: float = ALPHA, final: bool = True,
) -> list[Judged]:  # fmt: skip
    """Estimate, test and decide every comparison at one look (`level`: this look's share
    of ALPHA; Holm across the comparisons). `final`: no more seeds will come, so the hint
    says how many would be needed."""
    rows = []
    for c in compares:
        a, b = arm_values(c, results, c.metric or metric)
        if min(len(a), len(b)) < 2:
            rows.append((c, None, 1.0))
            continue
        est = estimate(a, b, c.paired_by)
        rows.append((c, est, p_value(c, a, b, est.paired)))
    adjusted = _holm_per_family(rows)
    out = []
    for (c, est, p), p_adj in zip(rows, adjusted):
        decision = _decide(c, est, p_adj, level)
        hint = _hint(c, est, level) if final and decision == Decision.UNDECIDED else ""
        out.append(Judged(c, est, p, p_adj, level, decision, hint))
    return out


def _holm_per_family(rows: list[tuple[Compare, Estimate | None, float]]) -> list[float]:
    """Holm within the deciding comparisons, and within the reported ones apart."""
    adjusted = [1.0] * len(rows)
    for deciding in (True, False):
        family = [i for i, (c, _, _) in enumerate(rows) if c.deciding == deciding]
        for i, p in zip(family, holm([rows[i][2] for i in family])):
            adjusted[i] = p
    return adjusted


def _decide(c: Compare, est: Estimate | None, p_adjusted: float, level: float) -> Decision:
    if est is None or p_adjusted >= level:
        return Decision.UNDECIDED
    if c.question == Question.EQUIVALENCE:
        return Decision.EQUIVALENT
    if c.question == Question.NON_INFERIORITY:
        return Decision.NON_INFERIOR
    b_higher = est.diff > 0
    return Decision.B_BETTER if b_higher == c.higher_is_better else Decision.A_BETTER


# ---- what would decide an undecided comparison --------------------------------------------------


def _hint(c: Compare, est: Estimate | None, level: float) -> str:
    """Roughly how many seeds per arm the observed effect and spread would need (80% power
    at this level), or why more seeds would not help."""
    if est is None:
        return "needs at least 2 seeds in each arm (an arm may have no trials in this sweep)"
    if not est.sd > 0:
        return "no spread between seeds: the data cannot be tested"
    toward = est.diff if c.higher_is_better else -est.diff  # > 0: b looks better
    if c.question == Question.SUPERIORITY:
        effect = abs(est.diff)
        alternative = "two-sided"
    elif c.question == Question.NON_INFERIORITY:
        effect, alternative = toward + c.margin, "larger"
        if effect <= 0:
            return (
                f"the estimate is worse than the margin ({c.margin:g}): more seeds are unlikely "
                "to show non-inferiority"
            )
    else:
        effect, alternative = c.margin - abs(est.diff), "larger"
        if effect <= 0:
            return (
                f"the estimate is as large as the margin ({c.margin:g}): more seeds are unlikely "
                "to show equivalence"
            )
    if effect / est.sd < 0.02:
        return "no visible effect: seeds alone will not decide it"
    n = seeds_needed(effect / est.sd, level, est.paired, alternative)
    return f"about {n} seeds per arm would decide an effect this size ({POWER:.0%} power)"


def seeds_needed(effect_size: float, level: float, paired: bool, alternative: str) -> int:
    """The fewest seeds per arm (at least 2, at most MAX_SEEDS) at which a t test detects a
    standardised effect with POWER, searched by doubling then bisection. (statsmodels'
    solve_power gives nan when the answer is small, and its power is nan at scattered n for
    large effects: a large effect seen over 2 seeds read as "10000 seeds".)"""

    def enough(n: int) -> bool:
        return t_test_power(effect_size, n, level, paired, alternative) >= POWER

    low, high = 1, 2  # enough(high) is what the loops look for; low never is
    while not enough(high):
        if high >= MAX_SEEDS:
            return MAX_SEEDS
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def t_test_power(effect_size: float, n: int, level: float, paired: bool, alternative: str) -> float:
    """Power of a paired (one-sample on the differences) or pooled two-sample t test with n
    seeds per arm, from the noncentral t: `alternative` is "two-sided" or "larger"."""
    df, nc = (n - 1, effect_size * math.sqrt(n)) if paired else (2 * n - 2, effect_size * math.sqrt(n / 2))
    if alternative == "larger":
        return float(sps.nct.sf(sps.t.ppf(1 - level, df), df, nc))
    critical = sps.t.ppf(1 - level / 2, df)
    return float(sps.nct.sf(critical, df, nc) + sps.nct.cdf(-critical, df, nc))


# ---- sequential seeds ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def look_levels(looks: tuple[int, ...], alpha: float = ALPHA, sims: int = 400_000) -> tuple[float, ...]:
    """The significance level of each planned look at `looks` seeds (cumulative), so that
    stopping at the first look that decides keeps the overall error rate at `alpha`.

    O'Brien-Fleming-shaped: look k's boundary on the z scale is C * sqrt(n_K / n_k), so
    early looks decide only on large effects and the last look keeps nearly all of alpha.
    C is calibrated by simulation: paired t tests on normal data with no effect, the
    same seeds accumulating over the looks (deterministic, cached; about a second). The
    target is alpha less two Monte-Carlo standard errors, so that the calibration's own
    noise cannot push the real error rate above alpha."""
    if len(looks) == 1:
        return (alpha,)
    n = np.array(looks, dtype=float)
    rng = np.random.default_rng(20261126)
    data = rng.standard_normal((sims, int(n[-1])), dtype=np.float32)
    p = np.stack([_null_p(data[:, : int(k)]) for k in n])  # looks x sims
    target = alpha - 2 * math.sqrt(alpha * (1 - alpha) / sims)

    def levels(c: float) -> np.ndarray:
        return 2 * sps.norm.sf(c * np.sqrt(n[-1] / n))

    low, high = 0.0, 10.0  # boundary C: larger C, fewer rejections
    for _ in range(50):
        c = (low + high) / 2
        if (p < levels(c)[:, None]).any(0).mean() > target:
            low = c
        else:
            high = c
    return tuple(float(x) for x in levels(high))


def _null_p(x: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t p-values of each row (its mean against 0)."""
    k = x.shape[1]
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(k))
    return 2 * sps.t.sf(np.abs(t), k - 1)


# ---- small summaries for tables ---------------------------------------------------------------


def summarize(values: list[float]) -> dict[str, float]:
    """mean, sample std (NaN for a single value: the spread is unknown) and n."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean of the finite values and the half-width of its 95% t interval (NaN below two
    values): an arm's spread over seeds, for a report's tables and error bars."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    half = sps.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr))
    return float(arr.mean()), float(half)


def mean_ci_text(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """`mean_ci` as a table cell, both numbers times `scale` (100: a fraction in %):
    "52.3 +- 4.1", the mean alone below two values, "" without any."""
    mean, half = mean_ci(values)
    if not np.isfinite(mean):
        return ""
    text = f"{scale * mean:.{digits}f}"
    return f"{text} +- {scale * half:.{digits}f}" if np.isfinite(half) else text
