"""What does the sequential seed rule buy? Simulated studies with one deciding comparison
(b vs a, superiority, paired by seed) and a known effect of 0, 0.5, 1 and 2 sigma, judged
by (i) the sequential rule `sweep.seeds: {min, max, step}` (default: `SeedRule`'s), (ii) a
fixed 3 seeds and (iii) a fixed 10 seeds. Printed side by side per effect: the share of
studies decided correctly (effect > 0: "b better"; effect 0: undecided), the false-decision
rate (effect 0: any decision; effect > 0: "a better") and the mean number of seeds per arm.

The design is the studies' paired one: seed s gives both arms a shared level ~ N(0, tau)
(same init, same baseline), each trial adds its own noise ~ N(0, sigma), arm b adds the
effect. Every rule sees the same simulated seeds (common random numbers), so differences
between rules are not differences between data sets.

The decisions are the platform's: `skeptic.stats.look_levels` gives each look's level and
the stopping logic is `skeptic.rounds.run_rounds`'s (judge the open comparison at the look's
level, a decision stays, the next look adds `step` seeds, the last look is final). For
thousands of studies only the t tests are vectorised; on a sample of studies (random, plus
those nearest a decision boundary) every rule is re-run through `skeptic.stats.judge` with
`Compare` and `TrialResult`s, and the decisions and seed counts must be identical.

Targets (PASS / MISS): false decisions <= 5% at effect 0 for each rule (judged on a larger
null-only run, --null-reps, as the table's Monte-Carlo error is as large as the effects in
question); at 1 sigma the sequential rule decides correctly at least as often as fixed 10
seeds, using <= 70% of their seeds. A missed target is followed by what would meet it.

    .venv/bin/python benchmarks/sequential_seeds.py [--min 3 --max 10 --step 2]
        [--tau 1 --sigma 1] [--reps 4000] [--null-reps 500000] [--check 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from skeptic.spec import SeedRule
from skeptic.stats import ALPHA, Compare, Decision, Judged, judge, look_levels
from skeptic.study import TrialResult

EFFECTS = (0.0, 0.5, 1.0, 2.0)  # b - a, in units of sigma (the per-trial noise)
TARGET_EFFECT = 1.0  # the effect (in sigma) the power and seeds targets are stated at
SEED_SHARE = 0.70  # the sequential rule may use at most this share of the fixed rule's seeds
FIXED = (3, 10)  # fixed numbers of seeds compared against (the last one: the targets')
Z95 = 1.959963984540054  # a 95% interval's half-width in standard errors
CHUNK = 100_000  # studies simulated at once (memory)

METRIC = "score"
COMPARE = Compare("b_vs_a", {"arm": "a"}, {"arm": "b"}, why="simulated")  # higher is better
CODE = {Decision.B_BETTER: 1, Decision.A_BETTER: -1, Decision.UNDECIDED: 0}


@dataclass(frozen=True)
class Rule:
    """A seed rule as the platform runs it: the seeds at each look (one look: fixed seeds)."""

    name: str
    looks: tuple[int, ...]
    sims: int = 40_000  # look_levels' calibration simulations (its default: what users get)

    @property
    def levels(self) -> tuple[float, ...]:
        return look_levels(self.looks, ALPHA, self.sims)  # a single look gets ALPHA


@dataclass(frozen=True)
class Runs:
    """One rule on every simulated study of one effect."""

    decision: np.ndarray  # per study: +1 "b better", -1 "a better", 0 undecided
    seeds: np.ndarray  # per study: seeds per arm when the rule stopped

    def correct(self, effect: float) -> np.ndarray:
        return self.decision == (1 if effect > 0 else 0)

    def false(self, effect: float) -> np.ndarray:
        return self.decision != 0 if effect == 0 else self.decision == -1


@dataclass(frozen=True)
class Design:
    tau: float  # sd of the seed's level, shared by both arms
    sigma: float  # sd of each trial's own noise

    @staticmethod
    def paired_effect(effect: float) -> float:
        """d_z = mean / sd of b - a for an effect in sigma: sd(b - a) = sigma sqrt(2), tau
        cancels."""
        return effect / math.sqrt(2)


# ---- simulating and deciding ---------------------------------------------------------------


def simulate(
    rng: np.random.Generator, design: Design, effect: float, reps: int, seeds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Arm a's and arm b's metric, studies x seeds: shared seed level + own noise (+ effect)."""
    level = rng.normal(0.0, design.tau, (reps, seeds))
    a = level + rng.normal(0.0, design.sigma, (reps, seeds))
    b = level + effect * design.sigma + rng.normal(0.0, design.sigma, (reps, seeds))
    return a, b


def paired_p(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: two-sided paired t p-value of b vs a (scipy.stats.ttest_rel's) and b - a."""
    d = b - a
    n = d.shape[1]
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    return 2 * sps.t.sf(np.abs(t), n - 1), d.mean(1)


def run_vectorised(a: np.ndarray, b: np.ndarray, rule: Rule) -> Runs:
    """run_rounds' stopping logic with vectorised t tests (one comparison: Holm's p is p)."""
    reps = a.shape[0]
    decision = np.zeros(reps, dtype=np.int8)
    seeds = np.zeros(reps, dtype=np.int64)
    open_ = np.ones(reps, dtype=bool)
    for n, level in zip(rule.looks, rule.levels):
        p, diff = paired_p(a[:, :n], b[:, :n])
        now = open_ & (p < level)  # judge: undecided when p_adjusted >= level
        decision[now] = np.where(diff[now] > 0, 1, -1)
        seeds[open_] = n
        open_ &= ~now
    return Runs(decision, seeds)


def run_rules(
    rng: np.random.Generator, design: Design, effect: float, reps: int, rules: Sequence[Rule]
) -> tuple[list[Runs], np.ndarray, np.ndarray]:
    """Every rule on the same simulated studies; the studies too."""
    a, b = simulate(rng, design, effect, reps, max(max(r.looks) for r in rules))
    return [run_vectorised(a, b, r) for r in rules], a, b


def null_false_rates(
    rng: np.random.Generator, design: Design, reps: int, rules: Sequence[Rule]
) -> list[float]:
    """Each rule's false-decision rate at effect 0 on `reps` studies, in chunks."""
    false = np.zeros(len(rules))
    for start in range(0, reps, CHUNK):
        runs, _, _ = run_rules(rng, design, 0.0, min(CHUNK, reps - start), rules)
        false += [r.false(0.0).sum() for r in runs]
    return list(false / reps)


# ---- the platform's own path, on a sample ---------------------------------------------------


def trial_results(a: Sequence[float], b: Sequence[float]) -> list[TrialResult]:
    """The trials of one simulated study as the verdict reads them."""
    return [
        TrialResult(f"{arm}{seed}", {"arm": arm, "seed": seed}, [{METRIC: float(v)}], "completed")
        for arm, values in (("a", a), ("b", b))
        for seed, v in enumerate(values)
    ]


def run_judged(a: np.ndarray, b: np.ndarray, rule: Rule) -> tuple[int, int]:
    """One study through skeptic.stats.judge, look by look as skeptic.rounds.run_rounds does:
    (decision code, seeds per arm at the stop)."""
    compares, levels = [COMPARE], rule.levels
    decided: dict[str, Judged] = {}
    for look, n in enumerate(rule.looks):
        open_ = [c for c in compares if c.name not in decided]
        final = look == len(rule.looks) - 1
        judged = judge(open_, trial_results(a[:n], b[:n]), METRIC, levels[look], final)
        decided.update(
            {j.compare.name: j for j in judged if final or j.decision != Decision.UNDECIDED}
        )
        if len(decided) == len(compares):
            break
    return CODE[decided[COMPARE.name].decision], n


def near_boundary(a: np.ndarray, b: np.ndarray, rule: Rule, k: int) -> np.ndarray:
    """The k studies whose p-value comes nearest (in log) to a look's level."""
    gap = np.full(a.shape[0], np.inf)
    for n, level in zip(rule.looks, rule.levels):
        p, _ = paired_p(a[:, :n], b[:, :n])
        gap = np.minimum(gap, np.abs(np.log(np.maximum(p, 1e-300) / level)))
    return np.argsort(gap)[:k]


def check_against_judge(
    a: np.ndarray, b: np.ndarray, rules: Sequence[Rule], runs: Sequence[Runs], picks: np.ndarray
) -> int:
    """Assert that judge decides the picked studies as the vectorised path did; how many."""
    gc.freeze()  # statsmodels' Holm runs gc.collect() per call: spare it the live objects
    for rule, run in zip(rules, runs):
        for i in picks:
            got = run_judged(a[i], b[i], rule)
            want = (int(run.decision[i]), int(run.seeds[i]))
            assert got == want, f"{rule.name}, study {i}: judge {got}, vectorised {want}"
    return len(picks) * len(rules)


# ---- targets -----------------------------------------------------------------------------------


def rate_half(m: float, n: int) -> float:
    """95% Monte-Carlo half-width of a rate m estimated on n studies."""
    return Z95 * math.sqrt(max(m * (1 - m), 1e-12) / n)


def verdict(estimate: float, half: float, bound: float, at_most: bool) -> str:
    """PASS when the estimate meets the bound; PASS (MC) when it misses by less than its own
    95% Monte-Carlo half-width (the data cannot tell it from the bound); else MISS."""
    gap = (bound - estimate) if at_most else (estimate - bound)
    if gap >= 0:
        return "PASS"
    return "PASS (MC)" if -gap <= half else "MISS"


def null_targets(rules: Sequence[Rule], rates: Sequence[float], reps: int) -> list[str]:
    """Print the effect-0 targets; the names of the rules that miss."""
    missed = []
    for rule, rate in zip(rules, rates):
        half = rate_half(rate, reps)
        v = verdict(rate, half, ALPHA, at_most=True)
        print(f"  false decisions at 0σ <= {ALPHA:.0%}, {rule.name:<18}: {rate:.2%} ± {half:.2%}"
              f" ({reps} studies)  {v}")  # fmt: skip
        missed += [rule.name] if v == "MISS" else []
    return missed


def power_targets(rules: Sequence[Rule], runs: Sequence[Runs]) -> list[str]:
    """Print the target-effect targets (sequential: rules[0], fixed: rules[-1]); the misses."""
    seq, fixed, e = runs[0], runs[-1], TARGET_EFFECT
    diff = seq.correct(e).astype(float) - fixed.correct(e)
    half = Z95 * float(diff.std(ddof=1)) / math.sqrt(len(diff))  # paired: the same studies
    v_power = verdict(float(diff.mean()), half, 0.0, at_most=False)
    print(f"  at {e:g}σ correct, {rules[0].name} - {rules[-1].name} >= 0: "
          f"{seq.correct(e).mean():.1%} - {fixed.correct(e).mean():.1%} = {diff.mean():+.1%} "
          f"± {half:.1%}  {v_power}")  # fmt: skip
    bound = SEED_SHARE * rules[-1].looks[-1]
    half = Z95 * float(seq.seeds.std(ddof=1)) / math.sqrt(len(seq.seeds))
    v_seeds = verdict(float(seq.seeds.mean()), half, bound, at_most=True)
    print(f"  at {e:g}σ mean seeds, {rules[0].name} <= {SEED_SHARE:.0%} of "
          f"{rules[-1].looks[-1]} = {bound:g}: {seq.seeds.mean():.2f} ± {half:.2f}  {v_seeds}")  # fmt: skip
    return [n for n, v in (("power", v_power), ("seeds", v_seeds)) if v == "MISS"]


# ---- what would meet a missed target -------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    rule: SeedRule
    correct: float  # at the effect tried
    fixed_correct: float  # the fixed rule's, on the same studies
    seeds: float  # mean seeds per arm

    def meets(self, max_seeds: float) -> bool:
        return self.correct >= self.fixed_correct and self.seeds <= max_seeds

    def line(self) -> str:
        r = self.rule
        return (f"{{min: {r.min}, max: {r.max}, step: {r.step}}}: correct {self.correct:.1%} "
                f"(fixed {self.fixed_correct:.1%}), seeds {self.seeds:.2f}")  # fmt: skip


def candidates(
    seq_rules: Sequence[SeedRule], fixed: int, design: Design, effect: float, reps: int,
    rng: np.random.Generator,
) -> list[Candidate]:  # fmt: skip
    """Sequential rules against fixed seeds at one effect, all on the same studies."""
    rules = [Rule("fixed", (fixed,))] + [Rule("seq", r.looks()) for r in seq_rules]
    runs, _, _ = run_rules(rng, design, effect, reps, rules)
    fixed_correct = float(runs[0].correct(effect).mean())
    return [
        Candidate(r, float(run.correct(effect).mean()), fixed_correct, float(run.seeds.mean()))
        for r, run in zip(seq_rules, runs[1:])
    ]


def rule_grid() -> list[SeedRule]:
    return [
        SeedRule(min=lo, max=hi, step=step)
        for lo in (2, 3, 4, 5) for step in (1, 2, 3) for hi in (8, 10, 12, 16)
    ]  # fmt: skip


def print_rule_search(fixed: int, design: Design, reps: int, rng: np.random.Generator) -> None:
    """Which {min, max, step} meet both targets, at the target effect and larger ones."""
    max_seeds, grid = SEED_SHARE * fixed, rule_grid()
    print(f"  rules {{min 2-5, step 1-3, max 8/10/12/16}} ({len(grid)}), correct >= fixed "
          f"{fixed}'s and seeds <= {max_seeds:g}, point estimates on {reps} studies:")  # fmt: skip
    for effect in (TARGET_EFFECT, 1.5, 2.0):
        cands = candidates(grid, fixed, design, effect, reps, rng)
        meet = sorted((c for c in cands if c.meets(max_seeds)), key=lambda c: c.seeds)
        print(f"    at {effect:g}σ: {len(meet)} meet both" + (", fewest seeds:" if meet else ""))
        for c in meet[:3]:
            print("      " + c.line())
        if meet:
            continue
        cheap = [c for c in cands if c.seeds <= max_seeds]
        strong = [c for c in cands if c.correct >= c.fixed_correct]
        if cheap:
            print("      most often correct within the seeds: "
                  + max(cheap, key=lambda c: c.correct).line())  # fmt: skip
        if strong:
            print("      fewest seeds, correct as often: "
                  + min(strong, key=lambda c: c.seeds).line())  # fmt: skip


def print_effect_search(
    rule: SeedRule, fixed: int, design: Design, reps: int, rng: np.random.Generator
) -> None:
    """The effect the given rule needs, and what tau and sigma change (nothing but gap/sigma)."""
    max_seeds = SEED_SHARE * fixed
    print(f"  the rule {{min: {rule.min}, max: {rule.max}, step: {rule.step}}} at larger effects"
          f" (the same as keeping the gap b - a at {design.sigma:g} and shrinking sigma):")  # fmt: skip
    for effect in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
        c = candidates([rule], fixed, design, effect, reps, rng)[0]
        ok = "meets both" if c.meets(max_seeds) else "misses"
        print(f"    {effect:g}σ (d_z {design.paired_effect(effect):.2f}, or sigma "
              f"{design.sigma / effect:.2g}): correct {c.correct:.2%} vs fixed "
              f"{c.fixed_correct:.2%}, seeds {c.seeds:.2f}: {ok}")  # fmt: skip
    same = {}
    for tau in (0.0, design.tau, 4 * design.tau):  # each on the same random numbers
        d = Design(tau, design.sigma)
        same[tau] = candidates([rule], fixed, d, TARGET_EFFECT, reps, np.random.default_rng(1))[0]
    print(f"    tau {', '.join(f'{t:g}' for t in same)} at {TARGET_EFFECT:g}σ, same studies: "
          + "; ".join(f"{c.correct:.1%} correct, {c.seeds:.2f} seeds" for c in same.values())
          + " (tau cancels in the paired difference)")  # fmt: skip


def print_why(rules: Sequence[Rule], runs: Sequence[Runs], missed: Sequence[str]) -> None:
    """Why the sequential rule misses the target-effect targets."""
    seq, fixed = rules[0], rules[-1]
    if "power" in missed and seq.looks[-1] <= fixed.looks[-1]:
        print(f"  why: {seq.name} judges its last look at {seq.levels[-1]:.4f} < {ALPHA:g} (the"
              f" price of its earlier looks), so with max <= {fixed.looks[-1]} it decides less"
              f" often than {fixed.name} unless both decide almost always")  # fmt: skip
    if "seeds" in missed:
        undecided = float((runs[0].decision == 0).mean())
        print(f"  why: at {TARGET_EFFECT:g}σ {undecided:.0%} of {seq.name}'s studies stay "
              f"undecided and use all {seq.looks[-1]} seeds; the decided ones stop late, as "
              f"early looks decide only large effects")  # fmt: skip


def print_needed_null(rule: Rule, design: Design, reps: int, rng: np.random.Generator) -> None:
    """The null target with look_levels calibrated on more simulations."""
    print(f"  {rule.name}: look_levels calibrates on {rule.sims} simulations (standard error "
          f"of the calibrated rate about {math.sqrt(ALPHA * (1 - ALPHA) / rule.sims):.2%});"
          f" with more:")  # fmt: skip
    for sims in (400_000,):
        better = Rule(f"sims {sims}", rule.looks, sims)
        rate = null_false_rates(rng, design, reps, [better])[0]
        half = rate_half(rate, reps)
        levels = ", ".join(f"{lv:.4f}" for lv in better.levels)
        print(f"    look_levels(looks, sims={sims}): levels {levels}: false at 0σ "
              f"{rate:.2%} ± {half:.2%}  {verdict(rate, half, ALPHA, at_most=True)}")  # fmt: skip


# ---- printing the table ------------------------------------------------------------------------


def print_header(args: argparse.Namespace, design: Design, seq: Rule) -> None:
    print(f"Sequential vs fixed seeds: {args.reps} simulated studies per effect, one comparison"
          f" b vs a (superiority, paired by seed, alpha {ALPHA:g})")  # fmt: skip
    print(f"design: seed level sd tau = {design.tau:g} (both arms), trial noise sd sigma = "
          f"{design.sigma:g}; effects in sigma; d_z = effect / sd(b - a) = effect / "
          f"(sigma sqrt 2): {TARGET_EFFECT:g}σ is d_z {design.paired_effect(TARGET_EFFECT):.3f}")  # fmt: skip
    levels = ", ".join(f"{n}: {lv:.4f}" for n, lv in zip(seq.looks, seq.levels))
    print(f"sequential looks (seeds: level): {levels}; fixed seeds: level {ALPHA:g}\n")


def print_table(rules: Sequence[Rule], table: dict[float, list[Runs]]) -> None:
    width = 24
    head = f"{'effect':>7} {'d_z':>5} |" + "|".join(f"{r.name:^{width}}" for r in rules)
    sub = f"{'':>13} |" + "|".join(f"{'correct':>8}{'false':>7}{'seeds':>7}  " for _ in rules)
    print(head, sub, "-" * len(head), sep="\n")
    for effect, runs in table.items():
        cells = [
            f"{r.correct(effect).mean():>8.1%}{r.false(effect).mean():>7.1%}"
            f"{r.seeds.mean():>7.2f}  "
            for r in runs
        ]
        print(f"{effect:>6g}σ {Design.paired_effect(effect):>5.2f} |" + "|".join(cells))


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SeedRule()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--min", type=int, default=d.min, help=f"sequential rule: first look ({d.min})")
    p.add_argument("--max", type=int, default=d.max, help=f"sequential rule: last look ({d.max})")
    p.add_argument("--step", type=int, default=d.step, help=f"seeds added per look ({d.step})")
    p.add_argument("--tau", type=float, default=1.0, help="sd of the shared seed level (1)")
    p.add_argument("--sigma", type=float, default=1.0, help="sd of each trial's noise (1)")
    p.add_argument("--reps", type=int, default=4000, help="simulated studies per effect (4000)")
    p.add_argument("--null-reps", type=int, default=500_000,
                   help="studies of the effect-0 targets (500000)")  # fmt: skip
    p.add_argument("--check", type=int, default=40,
                   help="studies per effect re-run through judge (40, plus 10 near a boundary)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        seq = SeedRule(min=args.min, max=args.max, step=args.step)
    except ValueError as e:  # pydantic's ValidationError
        raise SystemExit(f"--min/--max/--step: {e}") from None
    design = Design(args.tau, args.sigma)
    rules = [Rule(f"seq {seq.min}..{seq.max} step {seq.step}", seq.looks())]
    rules += [Rule(f"fixed {n}", (n,)) for n in FIXED]
    rng = np.random.default_rng(args.seed)
    table: dict[float, list[Runs]] = {}
    checked = 0
    for effect in EFFECTS:
        table[effect], a, b = run_rules(rng, design, effect, args.reps, rules)
        picks = rng.choice(args.reps, min(args.check, args.reps), replace=False)
        picks = np.unique(np.concatenate([picks, near_boundary(a, b, rules[0], 10)]))
        checked += check_against_judge(a, b, rules, table[effect], picks)
    print_header(args, design, rules[0])
    print_table(rules, table)
    half_null, half_max = rate_half(ALPHA, args.reps), rate_half(0.5, args.reps)
    print(f"\nMonte-Carlo error (95%): ±{half_null:.2%} on a 5% rate, ±{half_max:.2%} at most (a "
          f"50% rate); seeds are per arm. {checked} rule runs re-judged by skeptic.stats.judge:"
          f" identical decisions and seeds")  # fmt: skip
    print("\nTargets (PASS (MC): misses the bound by less than its 95% Monte-Carlo error)")
    null_missed = null_targets(rules, null_false_rates(rng, design, args.null_reps, rules),
                               args.null_reps)  # fmt: skip
    missed = power_targets(rules, table[TARGET_EFFECT])
    if null_missed or missed:
        print("\nWhat would meet the missed targets:")
    for rule in rules:
        if rule.name in null_missed and len(rule.looks) > 1:
            print_needed_null(rule, design, args.null_reps, rng)
    if missed:
        print_why(rules, table[TARGET_EFFECT], missed)
        print_rule_search(FIXED[-1], design, args.reps, rng)
        print_effect_search(seq, FIXED[-1], design, args.reps, rng)
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
