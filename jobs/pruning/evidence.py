"""What the pruning report shows besides its deciding comparisons: every arm's numbers (test
accuracy, the verdict's split; validation beside it, what every choice saw), the lottery
ticket comparisons grouped by lr, the speed of the pruned architectures, the paper's
numbers beside ours, and two plots. Nothing here decides anything: Scratch-E is described by
its mean, not tested."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from jobs.pruning import cifar_nets, models, paper
from jobs.pruning.prune import count_flops, count_params, latency_pair_ms, structured_prune
from jobs.pruning.verdict import TICKET
from skeptic.api import Evidence, Judged, TrialResult, summarize

STRUCTURED = ["fine_tuned", "scratch_e", "scratch_b"]
ORDER = [*STRUCTURED, "ticket_lr0.1", "random_lr0.1", "ticket_lr0.01", "random_lr0.01"]
CEILING = 0.995  # both arms this close to 100%: a match there says little about the claim
PAPER_NOTE = """### For comparison: the paper at full scale

Liu et al. 2019, Table 1: CIFAR-10, L1-norm filter pruning (Li et al. 2017), mean of 5 runs,
test accuracy %, fine-tuned / Scratch-E / Scratch-B: VGG-16-A 93.41 / 93.62 / 93.78 (the
unpruned VGG-16: 93.63); ResNet-56-B 92.67 / 92.54 / 93.05; ResNet-110-B 92.69 / 92.89 /
93.60. Sec. 6: with the usual lr (0.1) a winning-ticket init did no better than a random
one; Frankle & Carbin's advantage showed only at the small lr (0.01), which trains every
model worse than lr 0.1.
"""
PROTOCOL_NOTE = """### Where this run follows the reference code, and where it cannot

Follows Eric-mingjie/rethinking-network-pruning (cifar/l1-norm-pruning, cifar/lottery-ticket):
filters ranked by the L1 norm of their own kernel, every layer on the unpruned model
(vggprune.py); fine-tuning at a constant lr (main_finetune.py); Scratch-E for the baseline's
epochs and Scratch-B for int(epochs x FLOPs_full / FLOPs_pruned), uncapped (main_B.py), both
with lr 0.1 divided by 10 at 50% and 75%; unstructured masks with one global magnitude
threshold over the conv weights only (cifar_prune_iterative.py), the ticket / random
retraining at the lr its baseline was trained with (lottery_ticket.py).
Differs: a 16-wide, 6-conv VGG on generated 16x16 images, 6 baseline epochs instead of 160,
no augmentation; every conv pruned at the same ratio (VGG-16-A
prunes 50% of the filters of layers 1 and 8-13 only); fine-tuning for as many epochs as the
baseline at lr 1e-2 (the paper: 25% of the epochs at 1e-3, ~31k SGD steps; here ~110, and
on validation 1e-2 beat 1e-3 by 0.75-2.5 pp: the benefit of the doubt goes to fine-tuning);
one-shot masks (the paper shows one-shot and iterative).
"""
SCALE_NOTE = """### What this scale can and cannot decide

A width-16 VGG on a few thousand generated 16x16 images, trained a few epochs: every arm is
short of convergence, where Scratch-B's longer budget counts for more than at the paper's 160
epochs, so a Scratch-B advantage here may be larger than the paper's; a 400-image test split
resolves 0.25 pp. The comparisons and the table's `test_acc` come from the test split, which
no choice saw (the baseline stage and every arm are measured on it alike); `val_acc` is what
Tune and the champion choice saw.
"""

PAPER_PROTOCOL_NOTE = """### Where this run follows the reference code, and where it differs

Follows Eric-mingjie/rethinking-network-pruning (cifar/l1-norm-pruning): the networks of
models/vgg.py and models/resnet.py, Li et al.'s plans as vggprune.py / res56prune.py /
res110prune.py (filters ranked by the L1 norm of their own kernel, every layer on the
unpruned model), CIFAR-10 with Pad(4) + RandomCrop(32) + flip, main.py's recipe (SGD
momentum 0.9, wd 1e-4, batch 64, lr 0.1 / 10 at 50% and 75% of 160 epochs),
main_finetune.py's 40 epochs at a constant 1e-3, Scratch-E 160 epochs, Scratch-B
int(160 x FLOPs_full / FLOPs_pruned) uncapped (main_B.py), 5 seeds.
Differs: 5000 training images held out for validation (45000 train; the reference trains on
50000); each arm's last epoch counts (the reference keeps its best test epoch, which would
leak the test set into the comparison); bf16 autocast on the GPU (the reference: fp32).
"""
PAPER_SCALE_NOTE = """### What this run can and cannot decide

The paper's networks, data and budget: its test accuracies (Table 1) are the figures to set
ours beside. 10000 test images resolve 0.01 pp, but a seed's arms spread by ~0.1-0.4 pp (the
paper's sd over 5 runs), so 5 seeds decide a fine-tuned vs Scratch-B gap of about the
margin (1 pp) and leave smaller ones open. The comparisons and `test_acc` come from the test
split, which no choice saw; `val_acc` (5000 held-out training images) is what Tune and the
champion choice saw.
"""


def group(results: list[TrialResult], metric: str) -> dict[tuple[str, float], list[TrialResult]]:
    """Finished trials by (arm, ratio)."""
    groups: dict[tuple[str, float], list[TrialResult]] = defaultdict(list)
    for r in results:
        if r.outcome != "failed" and metric in r.final:
            arm = r.params.get("arm", r.params.get("method", "?"))
            groups[(arm, float(r.params["ratio"]))].append(r)
    return groups


def _rank(arm: str) -> tuple[int, str]:
    return (ORDER.index(arm) if arm in ORDER else len(ORDER), arm)


def _lr(trial: TrialResult) -> float:
    """The lr the arm trains at: fine-tuning its own, every other arm the baseline's."""
    p = trial.params
    return p.get("finetune_lr" if p.get("method") == "fine_tuned" else "lr")


def _mean_pct(trials: list[TrialResult], key: str) -> float:
    return round(100 * float(np.mean([t.final.get(key, np.nan) for t in trials])), 2)


def table(groups: dict[tuple[str, float], list[TrialResult]], metric: str) -> list[dict[str, Any]]:
    """One row per arm and ratio, every accuracy labelled with its split."""
    rows = []
    for (arm, ratio), trials in sorted(groups.items(), key=lambda kv: (kv[0][1], _rank(kv[0][0]))):
        s, last = summarize([t.final[metric] for t in trials]), trials[0].final
        rows.append({
            "arm": arm, "ratio": ratio, "lr": _lr(trials[0]), "epochs": int(last.get("epochs_total", 0)),
            f"{metric} %": round(100 * s["mean"], 2), f"{metric} sd (pp)": round(100 * s["std"], 2),
            "seeds": s["n"], "val_acc %": _mean_pct(trials, "val_acc"),
            "params": int(last.get("nonzero_weights", last.get("params", 0))),
            "MFLOPs": round(last.get("flops", 0) / 1e6, 3),
            f"baseline {metric} %": _mean_pct(trials, f"baseline_{metric}"),
        })  # fmt: skip
    return rows


def _per_ratio(stats: dict[tuple[str, float], dict], arm: str) -> dict[float, dict]:
    return {ratio: s for (a, ratio), s in stats.items() if a == arm}


def _fmt(ratios: list[float]) -> str:
    return ", ".join(f"{r:g}" for r in ratios)


def ticket_lines(judged: list[Judged]) -> list[str]:
    """The ticket comparisons' decisions, one line per lr (the platform judged them)."""
    by_lr: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in judged:
        if j.compare.name.startswith(TICKET + "_"):
            lr = str(j.compare.b["arm"]).split("_lr", 1)[-1]
            word = {"b better": "ticket better", "a better": "random better"}.get(
                j.decision, j.decision
            )
            by_lr[lr][word].append(float(j.compare.b["ratio"]))
    return [
        f"Lottery ticket vs random init, lr {lr} (reported, not counted): "
        + "; ".join(f"{word} at {_fmt(ratios)}" for word, ratios in words.items())
        + "."
        for lr, words in sorted(by_lr.items())
    ]


def scratch_e_diffs(groups: dict[tuple[str, float], list[TrialResult]], metric: str) -> dict:
    """Per ratio: Scratch-E - fine-tuned, the mean over the seeds both ran (the seed rule may
    give fine-tuned more seeds than Scratch-E), and how many seeds that is."""
    out = {}
    for (arm, r), trials in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if arm != "scratch_e" or ("fine_tuned", r) not in groups:
            continue
        ft = {t.params.get("seed"): t.final[metric] for t in groups[("fine_tuned", r)]}
        diffs = [
            t.final[metric] - ft[t.params.get("seed")] for t in trials if t.params.get("seed") in ft
        ]
        if diffs:
            out[r] = (float(np.mean(diffs)), len(diffs))
    return out


def scratch_e_lines(diffs: dict[float, tuple[float, int]], split: str) -> list[str]:
    """Scratch-E against fine-tuned, by mean only (not a deciding comparison)."""
    if not diffs:
        return []
    said = "; ".join(f"{r:g}: {100 * d:+.2f} pp" for r, (d, _) in diffs.items())
    n = min(k for _, k in diffs.values())
    line = (
        f"Scratch-E - fine-tuned, mean {split} accuracy over the seeds both ran ({n}; "
        f"described, not tested): {said}."
    )
    return [line]


def ceiling_lines(stats: dict[tuple[str, float], dict]) -> list[str]:
    """Ratios where fine-tuned and Scratch-B both reach the ceiling: a match there is weak
    evidence (the data are too easy to tell the methods apart)."""
    ft, sb = _per_ratio(stats, "fine_tuned"), _per_ratio(stats, "scratch_b")
    at = [r for r in sorted(set(ft) & set(sb)) if min(ft[r]["mean"], sb[r]["mean"]) >= CEILING]
    if not at:
        return []
    line = (
        f"At ratio {_fmt(at)} both fine-tuned and Scratch-B average >= {100 * CEILING:g}%: "
        "a match there says little; harder data would."
    )
    return [line]


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


def network_speed_rows(
    arch: str, plan: str, input_shape: list[int], ratios: list[float]
) -> list[dict[str, Any]]:
    """speed_rows for the paper's networks: the unpruned one, then the pruned architecture
    of Li et al.'s plan (or of each ratio, under plan uniform), built from channel counts
    alone (speed does not depend on the weights)."""
    name, classes = models.CONFIG_ARCH[arch], list("0123456789")
    torch.manual_seed(0)
    full = models.build(
        models.model_config(models.full_channels(arch), input_shape, classes, arch=name)
    )
    flops_full = count_flops(full, input_shape)
    variants = [
        (r, cifar_nets.plan_channels(arch, plan, r))
        for r in (ratios if plan == "uniform" else ratios[:1])
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    key = "ratio" if plan == "uniform" else "plan"
    unpruned = {
        key: 0.0 if plan == "uniform" else "unpruned", "params": count_params(full),
        "MFLOPs": round(flops_full / 1e6, 3), "FLOPs ratio": 1.0,
    }  # fmt: skip
    try:
        rows = [unpruned]
        for r, channels in variants:
            net = models.build(models.model_config(channels, input_shape, classes, arch=name))
            row = _speed_of(net, full, flops_full, input_shape)
            rows.append({key: r if plan == "uniform" else plan, **row})
        return rows
    finally:
        torch.set_num_threads(threads)


def _speed_of(
    net: torch.nn.Module, full: torch.nn.Module, flops_full: int, shape: list[int]
) -> dict[str, Any]:
    flops = count_flops(net, shape)
    full1, pruned1 = latency_pair_ms(full, net, shape, 1, repeats=30)
    full64, pruned64 = latency_pair_ms(full, net, shape, 64, repeats=10)
    return {
        "params": count_params(net), "MFLOPs": round(flops / 1e6, 3),
        "FLOPs ratio": round(flops_full / flops, 2),
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


def plot(
    stats: dict, arms: list[str], baselines: dict[float, float], title: str, split: str
) -> Any:
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
        line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, ls=style, label=arm,
                           color=colours.get(lr))  # fmt: skip
        colours.setdefault(lr, line[0].get_color())
    for (lr, base), ls in zip(sorted(baselines.items(), reverse=True), (":", "-."), strict=False):
        if not math.isnan(base):
            ax.axhline(100 * base, color="k", lw=1, ls=ls, label=f"unpruned baseline, lr {lr:g}")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel(f"final {split} accuracy (%), mean ± sd over seeds")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def baselines(groups: dict[tuple[str, float], list[TrialResult]], metric: str, arms) -> dict:
    """The unpruned baseline's mean accuracy per lr it was trained at, over the trials of
    `arms` (every arm's trials carry the baseline they started from)."""
    by_lr: dict[float, list[float]] = defaultdict(list)
    for (arm, _), trials in groups.items():
        if arm in arms:
            for t in trials:
                by_lr[float(t.params.get("lr", math.nan))].append(
                    t.final.get(f"baseline_{metric}", np.nan)
                )
    return {lr: float(np.mean(v)) for lr, v in by_lr.items()}


def scratch_b_lines(groups: dict[tuple[str, float], list[TrialResult]]) -> list[str]:
    """Scratch-B's budget per ratio, and where a cap (train.scratch_b_cap) cut it short."""
    sb = {
        r: ts[0].final
        for (a, r), ts in sorted(groups.items(), key=lambda kv: kv[0][1])
        if a == "scratch_b"
    }
    if not sb:
        return []
    budget = ", ".join(f"{int(f.get('epochs_total', 0))} at {r:g}" for r, f in sb.items())
    capped = [f"{r:g} ({int(f['epochs_total'])} instead of {int(f['scratch_b_uncapped_epochs'])})"
              for r, f in sb.items()
              if f.get("epochs_total", 0) < f.get("scratch_b_uncapped_epochs", 0)]  # fmt: skip
    cap = f" The cap binds at ratio {'; '.join(capped)}." if capped else " No cap binds."
    return [f"Scratch-B epochs (baseline epochs x measured FLOPs ratio): {budget}.{cap}"]


def evidence(
    results: list[TrialResult], metric: str, judged: list[Judged], input_shape: list[int],
    *, arch: str = "small_vgg", plan: str = "uniform", label: str | None = None,
    notes: bool = True,
) -> Evidence:  # fmt: skip
    """The table, the ticket and Scratch-E lines, the plots, the speed table and the notes,
    of one network (`arch`, pruned by `plan`; `label` names it, e.g. "VGG-16-A"). `notes`:
    the protocol and scale notes in `details` (merge adds them once for several)."""
    split = metric.split("_", 1)[0]
    groups = group(results, metric)
    small = arch == "small_vgg"
    text = notes_for(small) if notes else ""
    if not groups:
        return Evidence("No trial finished.", details=text)
    stats = {key: summarize([t.final[metric] for t in ts]) for key, ts in groups.items()}
    base_s = baselines(groups, metric, STRUCTURED)
    base_u = baselines(groups, metric, {a for a, _ in groups} - set(STRUCTURED))
    every = {**base_u, **base_s}
    said = ", ".join(
        f"{100 * v:.2f}% at lr {lr:g}" for lr, v in sorted(every.items(), reverse=True)
    )
    se_diffs = scratch_e_diffs(groups, metric)
    lines = [*ticket_lines(judged), *scratch_e_lines(se_diffs, split), *scratch_b_lines(groups),
             *ceiling_lines(stats),
             f"Unpruned baseline, {split} accuracy (mean over its seeds): {said}."]  # fmt: skip
    figures = {
        "accuracy_vs_ratio": plot(
            stats, [a for a in STRUCTURED if _per_ratio(stats, a)], base_s,
            "Structured pruning: fine-tuned vs from scratch", split,
        ),
        "ticket_vs_random": plot(
            stats, sorted({a for a, _ in stats if a not in STRUCTURED}, key=_rank), base_u,
            "Unstructured pruning: winning-ticket vs random init (random dashed)", split,
        ),
    }  # fmt: skip
    ratios = sorted({r for _, r in groups})
    if small:
        width = int(next(iter(groups.values()))[0].params.get("width", 16))
        speed = speed_rows(width, input_shape, ratios)
    else:
        speed = network_speed_rows(arch, plan, input_shape, ratios)
    details = (
        "### Speed of the structured-pruned architectures (measured in the verdict, CPU, 1 thread)\n\n"
        "Each pruned model is timed interleaved with the unpruned one (first row); the unpruned\n"
        "time is in brackets; medians of 30 (batch 1) and 10 (batch 64) runs.\n\n"
        f"{markdown_table(speed)}\n\n{text}"
    )
    model = None if small else label
    named = plan != "uniform"
    rows = paper.rows(stats, judged, baseline_per_seed(groups, metric), se_diffs, model=model,
                      named=named, sizes=_sizes(groups))  # fmt: skip
    return Evidence("\n".join(lines), table(groups, metric), figures, details, paper=rows)


def notes_for(small: bool) -> str:
    """The protocol, the paper's numbers and what the run can decide."""
    if small:
        return f"{PROTOCOL_NOTE}\n{PAPER_NOTE}\n{SCALE_NOTE}"
    return f"{PAPER_PROTOCOL_NOTE}\n{PAPER_NOTE}\n{PAPER_SCALE_NOTE}"


def _sizes(groups: dict[tuple[str, float], list[TrialResult]]) -> dict[str, float] | None:
    """A structured trial's parameter and FLOPs counts, pruned and unpruned."""
    for (arm, _), trials in groups.items():
        if arm in STRUCTURED:
            final = trials[0].final
            return {
                k: final[k] for k in ("params", "flops", "params_full", "flops_full") if k in final
            }
    return None


def merge(parts: list[tuple[str, str, Evidence]]) -> Evidence:
    """One report from several networks' evidence (label, name slug, evidence): lines and
    rows labelled with the network, figures named by it, the notes once."""
    summary, table_rows, figures, details, rows = [], [], {}, [], []
    for label, slug, ev in parts:
        summary += [f"{label}: {line}" for line in ev.summary.splitlines() if line]
        table_rows += [{"network": label, **row} for row in ev.table]
        figures.update({f"{slug}_{name}": fig for name, fig in ev.figures.items()})
        details.append(f"### {label}\n\n{ev.details}".rstrip())
        rows += [r if r["quantity"].startswith(label) else {**r, "quantity": f"{label}: {r['quantity']}"}
                 for r in ev.paper]  # fmt: skip
    details.append(notes_for(small=False))
    return Evidence("\n".join(summary), table_rows, figures, "\n\n".join(details), paper=rows)


def baseline_per_seed(
    groups: dict[tuple[str, float], list[TrialResult]], metric: str
) -> dict | None:
    """The structured arms' unpruned baseline, one value per seed (its trials share it);
    None where they ran at more than one lr."""
    trials = [t for (arm, _), ts in groups.items() if arm in STRUCTURED for t in ts]
    if len({t.params.get("lr") for t in trials}) != 1:
        return None
    per_seed = {t.params.get("seed"): t.final.get(f"baseline_{metric}", np.nan) for t in trials}
    return summarize(list(per_seed.values()))
