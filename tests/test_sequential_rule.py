"""The sequential seed rule on simulated sweeps: its overall error rate at no effect stays at
alpha, it stops early on a large effect and runs to `max` on none, and `look_levels` spends
little alpha early. The stopping logic is skeptic.rounds.run_rounds' (judge at each look's
level, a decision stays, the last look is final) with vectorised paired t tests; one test
checks it against skeptic.stats.judge itself. No Ray, no training."""

from __future__ import annotations

import gc
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from skeptic.spec import SeedRule
from skeptic.stats import ALPHA, Compare, Decision, Judged, judge, look_levels
from skeptic.study import TrialResult

DEFAULT = SeedRule().looks()  # (3, 5, 7, 9, 10)
RULES = [DEFAULT, SeedRule(min=4, max=12, step=4).looks(), SeedRule(min=2, max=8, step=1).looks()]


def _studies(rng: np.random.Generator, effect: float, reps: int, seeds: int) -> np.ndarray:
    """b - a per study and seed: a shared seed level (cancels) and each trial's own noise."""
    level = rng.normal(0, 1, (reps, seeds))
    a = level + rng.normal(0, 1, (reps, seeds))
    b = level + effect + rng.normal(0, 1, (reps, seeds))
    return b - a


def _sequential(d: np.ndarray, looks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per study: the decision (+1 b better, -1 a better, 0 undecided) and the seeds used,
    stopping at the first look whose two-sided paired t test decides at its level."""
    decision = np.zeros(len(d), dtype=int)
    seeds = np.zeros(len(d), dtype=int)
    open_ = np.ones(len(d), dtype=bool)
    for n, level in zip(looks, look_levels(looks)):
        x = d[:, :n]
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        now = open_ & (2 * sps.t.sf(np.abs(t), n - 1) < level)
        decision[now] = np.sign(t[now])
        seeds[open_] = n
        open_ &= ~now
    return decision, seeds


@pytest.mark.parametrize("looks", RULES, ids=str)
def test_the_error_rate_at_no_effect_stays_at_alpha(looks: tuple[int, ...]) -> None:
    reps = 5000
    decision, _ = _sequential(_studies(np.random.default_rng(11), 0.0, reps, looks[-1]), looks)
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert (decision != 0).mean() <= ALPHA + 3 * se


def test_a_large_effect_stops_before_max_in_most_sweeps() -> None:
    decision, seeds = _sequential(_studies(np.random.default_rng(12), 2.0, 2000, 10), DEFAULT)
    assert (seeds < DEFAULT[-1]).mean() > 0.8
    assert (decision == 1).mean() > 0.9 and (decision == -1).sum() == 0


def test_no_effect_runs_to_max_in_most_sweeps() -> None:
    _, seeds = _sequential(_studies(np.random.default_rng(13), 0.0, 2000, 10), DEFAULT)
    assert (seeds == DEFAULT[-1]).mean() > 0.9


@pytest.mark.parametrize("looks", RULES, ids=str)
def test_look_levels_increase_and_the_last_stays_within_alpha(looks: tuple[int, ...]) -> None:
    levels = look_levels(looks)
    assert len(levels) == len(looks)
    assert all(early < late for early, late in itertools.pairwise(levels))
    assert levels[-1] <= ALPHA


@pytest.mark.parametrize("seeds", [2, 3, 10])
def test_a_fixed_number_of_seeds_gets_alpha(seeds: int) -> None:
    looks = SeedRule(min=seeds, max=seeds).looks()
    assert looks == (seeds,) and look_levels(looks) == (ALPHA,)


def _judged(d_a: np.ndarray, d_b: np.ndarray, looks: tuple[int, ...]) -> tuple[int, int]:
    """One sweep through judge, look by look as run_rounds does it."""
    compare = Compare("b_vs_a", {"arm": "a"}, {"arm": "b"})
    levels = look_levels(looks)
    decided: dict[str, Judged] = {}
    for look, n in enumerate(looks):
        results = [
            TrialResult(f"{arm}{s}", {"arm": arm, "seed": s}, [{"score": float(x[s])}], "completed")
            for arm, x in (("a", d_a), ("b", d_b))
            for s in range(n)
        ]
        final = look == len(looks) - 1
        for j in judge([compare], results, "score", levels[look], final):
            if final or j.decision != Decision.UNDECIDED:
                decided[j.compare.name] = j
        if decided:
            break
    code = {Decision.B_BETTER: 1, Decision.A_BETTER: -1, Decision.UNDECIDED: 0}
    return code[decided["b_vs_a"].decision], n


def test_the_vectorised_rule_decides_as_judge_does() -> None:
    rng = np.random.default_rng(14)
    a = rng.normal(0, 1, (40, DEFAULT[-1]))
    b = a + rng.normal(0, 1, a.shape) + np.repeat([0.0, 1.0, 2.0, 3.0], 10)[:, None]
    decision, seeds = _sequential(b - a, DEFAULT)
    gc.freeze()  # statsmodels' Holm runs gc.collect() per call: spare it the live objects
    try:
        got = [_judged(a[i], b[i], DEFAULT) for i in range(len(a))]
    finally:
        gc.unfreeze()
    assert got == list(zip(decision.tolist(), seeds.tolist()))
    assert len(set(got)) > 3  # decisions at several looks, not all alike
