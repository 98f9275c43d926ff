"""The pruning verdict, computed from the measured accuracies only.

Decision rule (structured pruning; the belief is "fine-tuning beats training from scratch"):
- at each ratio, Scratch-B vs fine-tuned: a difference counts when it exceeds
  max(2 standard errors of the difference of means, 0.25 pp) (0.25 pp is about one
  validation image at the default scale: below it a "difference" is rounding);
- a ratio where both arms average >= 99.5% is at the ceiling and cannot discriminate;
- no decision with fewer than 2 seeds per arm;
- overturned when fine-tuning is significantly better at no ratio; held when it is
  significantly better at every ratio; undecided when the ratios disagree.
The lottery-ticket arms (ticket vs random init, per lr) are reported the same way but do
not change `held`: they test the paper's second, separate claim.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from jobs.pruning import models
from jobs.pruning.prune import count_flops, count_params, latency_pair_ms, structured_prune
from skeptic.api import TrialResult, Verdict, diff_se, summarize

STRUCTURED = ["fine_tuned", "scratch_e", "scratch_b"]
MIN_GAP = 0.0025
CEILING = 0.995
PAPER_NOTE = """### For comparison: the paper at full scale

Liu et al. 2019, CIFAR-10, L1-norm filter pruning (Li et al. 2017), mean of 5 runs,
fine-tuned / Scratch-E / Scratch-B: VGG-16-A 93.41 / 93.62 / 93.78; ResNet-56-B
92.67 / 92.54 / 93.05; ResNet-110-B 92.69 / 92.89 / 93.60. With the usual lr (0.1) a
winning-ticket init did no better than a random one; Frankle & Carbin's advantage showed only
at the small lr (0.01). The rule above is applied to this run's numbers only.
"""


def _groups(results: list[TrialResult], metric: str) -> dict[tuple[str, float], list[TrialResult]]:
    groups: dict[tuple[str, float], list[TrialResult]] = defaultdict(list)
    for r in results:
        if r.outcome != "failed" and metric in r.final:
            groups[
                (r.params.get("arm", r.params.get("method", "?")), float(r.params["ratio"]))
            ].append(r)
    return groups


def _compare(a: dict, b: dict) -> tuple[float, float]:
    """b - a, and the threshold it must pass to count."""
    se = diff_se(a, b)
    return b["mean"] - a["mean"], max(2 * se, MIN_GAP)


def _table(groups: dict, metric: str) -> list[dict[str, Any]]:
    rows = []
    for (arm, ratio), trials in sorted(groups.items(), key=lambda kv: (kv[0][1], _rank(kv[0][0]))):
        s, last = summarize([t.final[metric] for t in trials]), trials[0].final
        rows.append({
            "arm": arm, "ratio": ratio, "lr": _lr(trials[0]), "epochs": int(last.get("epochs_total", 0)),
            f"{metric} %": round(100 * s["mean"], 2), "± std": round(100 * s["std"], 2), "seeds": s["n"],
            "params": int(last.get("nonzero_weights", last.get("params", 0))),
            "MFLOPs": round(last.get("flops", 0) / 1e6, 3),
            "baseline %": round(100 * float(np.mean([t.final.get("baseline_val_acc", np.nan) for t in trials])), 2),
        })  # fmt: skip
    return rows


def _lr(trial: TrialResult) -> float:
    p = trial.params
    return {
        "fine_tuned": p.get("finetune_lr"),
        "ticket": p.get("retrain_lr"),
        "random": p.get("retrain_lr"),
    }.get(p.get("method"), p.get("lr"))


ORDER = [*STRUCTURED, "ticket_lr0.1", "random_lr0.1", "ticket_lr0.01", "random_lr0.01"]


def _rank(arm: str) -> tuple[int, str]:
    return (ORDER.index(arm) if arm in ORDER else len(ORDER), arm)


def _per_ratio(stats: dict[tuple[str, float], dict], arm: str) -> dict[float, dict]:
    return {ratio: s for (a, ratio), s in stats.items() if a == arm}


def _decide(stats: dict) -> tuple[bool | None, list[str]]:
    ft, se, sb = (_per_ratio(stats, a) for a in STRUCTURED)
    ratios = sorted(set(ft) & set(sb))
    if not ratios:
        return None, ["Cannot decide: the sweep lacks the fine_tuned or scratch_b arm."]
    if min(s["n"] for r in ratios for s in (ft[r], sb[r])) < 2:
        why = "Cannot decide: fewer than 2 seeds per arm, so the spread is unknown."
        return None, [f"{why} Re-run with --set sweep.seeds=3 (or more)."]
    lines, ft_wins, matched, ceiling = [], [], [], []
    for r in ratios:
        diff, thr = _compare(ft[r], sb[r])
        word = "matches or beats" if diff >= -thr else "is BELOW"
        if min(ft[r]["mean"], sb[r]["mean"]) >= CEILING:
            ceiling.append(r)
            word = "ties at the ceiling with"
        else:
            (matched if diff >= -thr else ft_wins).append(r)
        extra = ""
        if r in se:
            d_e, t_e = _compare(ft[r], se[r])
            extra = f"; Scratch-E - fine-tuned = {100 * d_e:+.2f} pp (threshold {100 * t_e:.2f})"
        lines.append(f"ratio {r:g}: Scratch-B - fine-tuned = {100 * diff:+.2f} pp (threshold {100 * thr:.2f} pp): "
                     f"Scratch-B {word} fine-tuning{extra}.")  # fmt: skip
    if not matched and not ft_wins:
        return None, [
            *lines,
            "Cannot decide: every ratio is at the accuracy ceiling; use harder data.",
        ]
    if not ft_wins:
        head = f"Scratch-B matches or beats fine-tuning at every ratio tested ({_fmt(matched)})."
        return False, [head, *lines]
    if not matched:
        head = f"Fine-tuning beats Scratch-B at every ratio tested ({_fmt(ft_wins)})."
        return True, [head, *lines]
    head = (f"Mixed: Scratch-B matches or beats fine-tuning at ratios {_fmt(matched)}, fine-tuning "
            f"wins at {_fmt(ft_wins)}; the run does not give one answer.")  # fmt: skip
    return None, [head, *lines]


def _fmt(ratios: list[float]) -> str:
    return ", ".join(f"{r:g}" for r in ratios)


def _tickets(stats: dict) -> list[str]:
    """Ticket vs random re-init, per lr, from the arm names `ticket_lr<x>` / `random_lr<x>`."""
    lines = []
    for arm in sorted({a for a, _ in stats if a.startswith("ticket")}):
        rand = arm.replace("ticket", "random", 1)
        tk, rd = _per_ratio(stats, arm), _per_ratio(stats, rand)
        verdicts = defaultdict(list)
        for r in sorted(set(tk) & set(rd)):
            if min(tk[r]["n"], rd[r]["n"]) < 2:
                verdicts["unknown spread (1 seed)"].append(r)
                continue
            diff, thr = _compare(rd[r], tk[r])
            verdicts[
                "ticket better" if diff > thr else "ticket worse" if diff < -thr else "tie"
            ].append(r)
        lr = arm.split("_lr", 1)[-1]
        parts = [f"{k} at {_fmt(v)}" for k, v in verdicts.items()]
        lines.append(
            f"Lottery ticket vs random init, lr {lr}: {'; '.join(parts) or 'no common ratio'}."
        )
    return lines


def speed_rows(width: int, input_shape: list[int], ratios: list[float]) -> list[dict[str, Any]]:
    """Params, FLOPs and measured CPU latency (1 thread, batches 1 and 64, each pruned model
    timed interleaved with the unpruned one) of the structured-pruned architectures (the
    speed of an architecture does not depend on its weights)."""
    config = models.model_config(models.base_channels(width), input_shape, list("0123456789"))
    torch.manual_seed(0)
    full = models.build(config)
    flops_full = count_flops(full, input_shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    unpruned = {
        "ratio": 0.0, "channels": str(models.channels_of(full)), "params": count_params(full),
        "MFLOPs": round(flops_full / 1e6, 3), "FLOPs ratio": 1.0,
    }  # fmt: skip
    try:
        return [unpruned] + [_speed(r, full, flops_full, input_shape) for r in ratios]
    finally:
        torch.set_num_threads(threads)


def _speed(
    ratio: float, full: torch.nn.Module, flops_full: int, shape: list[int]
) -> dict[str, Any]:
    net = structured_prune(full, shape, ratio)
    flops = count_flops(net, shape)
    full1, pruned1 = latency_pair_ms(full, net, shape, 1, repeats=30)
    full64, pruned64 = latency_pair_ms(full, net, shape, 64, repeats=10)
    return {
        "ratio": ratio, "channels": str(models.channels_of(net)), "params": count_params(net),
        "MFLOPs": round(flops / 1e6, 3), "FLOPs ratio": round(flops_full / flops, 2),
        "ms b1 (unpruned)": f"{pruned1:.3f} ({full1:.3f})",
        "latency ratio b1": round(full1 / pruned1, 2),
        "ms b64 (unpruned)": f"{pruned64:.2f} ({full64:.2f})",
        "latency ratio b64": round(full64 / pruned64, 2),
    }  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(k, "-")) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def _plot(stats: dict, arms: list[str], baseline: float, title: str) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    colours: dict[str, str] = {}
    for arm in arms:
        per = _per_ratio(stats, arm)
        xs = sorted(per)
        ys = [100 * per[r]["mean"] for r in xs]
        err = [100 * np.nan_to_num(per[r]["std"]) for r in xs]
        # ticket / random pairs share a colour per lr: random dashed, ticket solid
        lr = arm.split("_lr", 1)[-1] if "_lr" in arm else arm
        style = "--" if arm.startswith("random") else "-"
        line = ax.errorbar(
            xs, ys, yerr=err, marker="o", capsize=3, ls=style, label=arm, color=colours.get(lr)
        )
        colours.setdefault(lr, line[0].get_color())
    if not math.isnan(baseline):
        ax.axhline(100 * baseline, color="k", lw=1, ls=":", label="unpruned baseline")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("final val accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def judge(results: list[TrialResult], metric: str, input_shape: list[int]) -> Verdict:
    groups = _groups(results, metric)
    if not groups:
        return Verdict(None, "Cannot decide: no trial finished.")
    stats = {key: summarize([t.final[metric] for t in ts]) for key, ts in groups.items()}
    held, lines = _decide(stats)
    lines += _tickets(stats)
    finals = [t.final for ts in groups.values() for t in ts]
    baseline = float(np.mean([f.get("baseline_val_acc", np.nan) for f in finals]))
    lines.append(f"Unpruned baseline: {100 * baseline:.2f}% (mean over its seeds).")
    figures = {
        "accuracy_vs_ratio": _plot(
            stats, [a for a in STRUCTURED if _per_ratio(stats, a)], baseline,
            "Structured pruning: fine-tuned vs from scratch",
        ),
        "ticket_vs_random": _plot(
            stats, sorted({a for a, _ in stats if a not in STRUCTURED}, key=_rank), baseline,
            "Unstructured pruning: winning-ticket vs random init (random dashed)",
        ),
    }  # fmt: skip
    width = int(next(iter(groups.values()))[0].params.get("width", 16))
    speed = speed_rows(width, input_shape, sorted({r for _, r in groups}))
    details = (
        "### Speed of the structured-pruned architectures (measured in the verdict, CPU, 1 thread)\n\n"
        "Each pruned model is timed interleaved with the unpruned one (first row); the unpruned\n"
        "time is in brackets; medians of 30 (batch 1) and 10 (batch 64) runs.\n\n"
        f"{markdown_table(speed)}\n\n{PAPER_NOTE}"
    )
    return Verdict(held, "\n".join(lines), _table(groups, metric), figures, details)
