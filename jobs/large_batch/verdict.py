"""The large_batch verdict, computed from the measured accuracies only.

Decision rule (for the largest batch size swept):
- a difference counts when it exceeds 2 standard errors of the difference of means;
- no decision with fewer than 2 seeds per arm, or when LB shows no significant gap to SB
  (then this scale cannot test the claim);
- the belief is overturned when +RA (same number of updates as SB) is not significantly
  below SB; it holds when +RA stays significantly below SB.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from skeptic.api import TrialResult, Verdict, diff_se, summarize

ORDER = ["LB", "+LR", "+GBN", "+RA"]  # the paper's Table 1, each arm adding one fix
PAPER_NOTE = """### For comparison: the paper at full scale

Hoffer et al. 2017, Table 1, ResNet-44 on CIFAR-10, batch 128 vs 4096 (ghost 128): SB 92.83,
LB 86.10, +LR 89.30, +GBN 90.50, +RA 93.07. The decision rule above is applied to this run's
numbers only; a small run on generated data can show a smaller gap than the paper's, and says
"undecided" when its gap is within the noise.
"""
SHOWN = ["LB", "+LR", "+LR(linear)", "+GBN", "+RA"]


def _groups(results: list[TrialResult], metric: str) -> dict[tuple[str, int], list[TrialResult]]:
    groups: dict[tuple[str, int], list[TrialResult]] = defaultdict(list)
    for r in results:
        if r.outcome != "failed" and metric in r.final:
            groups[(r.params.get("arm", "?"), int(r.params["batch_size"]))].append(r)
    return groups


def _table(groups: dict, metric: str) -> list[dict[str, Any]]:
    rows = []
    for (arm, bs), trials in sorted(groups.items(), key=lambda kv: (kv[0][1], _rank(kv[0][0]))):
        s = summarize([t.final[metric] for t in trials])
        train = float(np.mean([t.final.get("train_acc", np.nan) for t in trials]))
        rows.append({
            "arm": arm, "batch": bs, "lr": trials[0].params.get("lr"),
            "ghost": trials[0].params.get("ghost_batch") or "-", "epochs": len(trials[0].history),
            "updates": int(trials[0].final.get("updates", 0)),
            f"{metric} %": round(100 * s["mean"], 2), "± std": round(100 * s["std"], 2),
            "seeds": s["n"], "train_acc %": round(100 * train, 2),
            "gap (train-val) pp": round(100 * (train - s["mean"]), 2),
        })  # fmt: skip
    return rows


def _rank(arm: str) -> int:
    return SHOWN.index(arm) + 1 if arm in SHOWN else 0


def _decide(sb: dict, arms: dict[str, dict], big: int) -> tuple[bool | None, list[str]]:
    lines = []
    if "LB" not in arms or "+RA" not in arms:
        return None, [
            f"batch {big}: the sweep lacks the LB or +RA arm, so the claim cannot be tested."
        ]
    if min([sb["n"]] + [a["n"] for a in arms.values()]) < 2:
        why = "Cannot decide: fewer than 2 seeds per arm, so the spread is unknown."
        return None, [f"{why} Re-run with --set sweep.seeds=3 (or more)."]
    lb, ra = arms["LB"], arms["+RA"]
    gap, gap_se = sb["mean"] - lb["mean"], diff_se(sb, lb)
    lines.append(f"batch {big}: SB - LB = {100 * gap:+.2f} pp (2 SE = {200 * gap_se:.2f} pp)")
    if gap <= 2 * gap_se:
        lines.append("No significant large-batch gap at this scale: the run cannot test the claim.")
        return None, lines
    left, left_se = sb["mean"] - ra["mean"], diff_se(sb, ra)
    closed = left <= 2 * left_se
    lines.append(
        f"batch {big}: SB - (+RA) = {100 * left:+.2f} pp (2 SE = {200 * left_se:.2f} pp): "
        + (
            "+RA closes the gap (same number of updates as SB)."
            if closed
            else "+RA does NOT close the gap."
        )
    )
    return (not closed), lines


def _ordering(arms: dict[str, dict], big: int) -> str:
    present = [a for a in ORDER if a in arms]
    means = [arms[a]["mean"] for a in present]
    pairs = zip(present, present[1:], means, means[1:])
    broken = [f"{b} is below {a}" for a, b, ma, mb in pairs if mb < ma]
    if not broken:
        return f"batch {big}: arms ordered as the paper found ({' <= '.join(present)})."
    return f"batch {big}: order differs from the paper: {', '.join(broken)} (by mean)."


def _plot_arms(sb: dict, per_batch: dict[int, dict[str, dict]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 4))
    shown = [a for a in SHOWN if any(a in arms for arms in per_batch.values())]
    width = 0.8 / max(len(per_batch), 1)
    core = [100 * a["mean"] for arms in per_batch.values() for k, a in arms.items() if k in ORDER]
    bottom = max(0.0, min([*core, 100 * sb["mean"]]) - 3)
    for i, (bs, arms) in enumerate(sorted(per_batch.items())):
        xs = [shown.index(a) + i * width for a in shown if a in arms]
        ys = [100 * arms[a]["mean"] for a in shown if a in arms]
        err = [100 * np.nan_to_num(arms[a]["std"]) for a in shown if a in arms]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"batch {bs}")
        for x, y in zip(xs, ys):
            if y < bottom:  # e.g. a diverged arm: say so instead of squashing the scale
                ax.annotate(
                    f"{y:.0f}% (off scale)",
                    (x, bottom),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
    ax.axhline(100 * sb["mean"], color="k", lw=1.5, label=f"SB (batch {sb['batch']})")
    if not math.isnan(sb["std"]):
        ax.axhspan(
            100 * (sb["mean"] - sb["std"]), 100 * (sb["mean"] + sb["std"]), color="k", alpha=0.12
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], shown)
    ax.set_ylim(bottom, 100)
    ax.set_ylabel("final val accuracy (%), mean ± std over seeds")
    ax.set_title("Large batch: each arm of Hoffer et al. vs the small-batch baseline (SB)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _plot_distance(groups: dict, big: int) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    for (arm, bs), trials in sorted(groups.items()):
        if bs != big and arm != "SB":
            continue
        h = trials[0].history
        ax.plot(
            [r["updates"] for r in h],
            [r["weight_distance"] for r in h],
            marker=".",
            label=f"{arm} (b{bs})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("updates (log scale)")
    ax.set_ylabel("||w_t - w_0||")
    ax.set_title("Weight distance grows ~ log t (one seed per arm)")
    ax.legend(fontsize=8)
    return fig


def judge(results: list[TrialResult], metric: str) -> Verdict:
    groups = _groups(results, metric)
    sb_trials = [t for (arm, _), ts in groups.items() if arm == "SB" for t in ts]
    if not sb_trials:
        return Verdict(
            None, "Cannot decide: no finished SB (small-batch) trial.", _table(groups, metric)
        )
    sb = {
        **summarize([t.final[metric] for t in sb_trials]),
        "batch": int(sb_trials[0].params["batch_size"]),
    }
    per_batch: dict[int, dict[str, dict]] = defaultdict(dict)
    for (arm, bs), ts in groups.items():
        if arm != "SB":
            per_batch[bs][arm] = summarize([t.final[metric] for t in ts])
    if not per_batch:
        return Verdict(
            None, "Cannot decide: no large-batch trial finished.", _table(groups, metric)
        )
    big = max(per_batch)
    held, lines = _decide(sb, per_batch[big], big)
    lines += [_ordering(arms, bs) for bs, arms in sorted(per_batch.items())]
    lines.append(f"SB (batch {sb['batch']}): {100 * sb['mean']:.2f}% over {sb['n']} seed(s).")
    figures = {"arms": _plot_arms(sb, per_batch), "weight_distance": _plot_distance(groups, big)}
    return Verdict(held, "\n".join(lines), _table(groups, metric), figures, PAPER_NOTE)
