"""What the metaformer report shows beside its deciding comparisons: every arm's accuracy
(validation, which made the choices, and test, which the verdict states), params, MACs and
throughput; the lr validation picks for each mixer; the component ablations beside the
paper's Table 5; and what this scale cannot decide. Descriptive only: nothing here changes
the label.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jobs.metaformer.verdict import ATTENTION, IDENTITY, POOL
from skeptic.api import Evidence, TrialResult, summarize
from skeptic.stats import estimate

TEST, VAL = "test_acc", "val_acc"
DECIDING = (POOL, ATTENTION, IDENTITY)
# Paper Table 5 (ImageNet top-1 %, PoolFormer-S12 at 77.2): which ablations collapsed.
PAPER_ABLATIONS = {"no_residual": 0.1, "no_mlp": 5.7, "no_norm": 46.1, "layernorm": 76.5,
                   "batchnorm": 76.4}  # fmt: skip
PAPER_POOL = 77.2
PAPER_COLLAPSED = {"no_residual", "no_mlp", "no_norm"}  # the paper's reading of its Table 5
PAPER_NOTE = """### The paper at full scale, and what this run cannot decide

Yu et al. 2022 (ImageNet-1k, MetaFormer-S12, 1.8G MACs), top-1: pooling 77.2, identity 74.3,
frozen random matrix 75.8, depthwise conv 78.1, [Pool, Pool, Attn, Attn] 81.0; pool size
3/5/7: 77.2/77.2/77.1; without residual 0.1, without channel MLP 5.7, without norm 46.1,
LayerNorm 76.5, BatchNorm 76.4 (GroupNorm(1) 77.2); PoolFormer-S24 80.3 vs DeiT-S 79.8.

Splits: the models train on the train split; every choice (the deciding arms' lr, fixed from
the committed run's validation; the lr each mixer's row marks; the champion, by val_acc) is
made on the validation split; every number the verdict states (`test_acc`) is on the test
split, which nothing chose on. The decided question is pool3 vs attention (and vs no mixing)
on 16x16 generated 10-class shapes with 4-block models trained for a few epochs: tiny
models, short schedules and generated data can rank mixers differently from ImageNet, and
the other mixers, pool sizes and ablations are shown, not tested.

MACs come from torch.utils.flop_counter (matmuls and convolutions; the average pooling and
element-wise ops count as zero, as in the paper's MACs). Images/s are measured inside each
trial on a shared CPU (one thread) and are only indicative; see
benchmarks/mixer_throughput.py for a side-by-side measurement.
"""


def evidence(results: list[TrialResult], num_classes: int = 10) -> Evidence:
    arms = _arms(results)
    if not arms:
        return Evidence("No trial finished with a test accuracy.")
    picked = _val_picks(arms)
    lines = _lr_check(picked) + _ablations(arms, 1.0 / num_classes) + _training_note(arms)
    figures = {"acc_vs_macs": _plot_macs(arms)}
    details = _pick_notes(arms, picked) + PAPER_NOTE
    return Evidence("\n".join(lines), _table(arms, picked), figures, details)


def _arm(r: TrialResult) -> str:
    p = r.params
    if "arm" in p:
        return str(p["arm"])
    return p["mixer"] if p.get("ablation", "none") == "none" else f"{p['mixer']}-{p['ablation']}"


def _arms(results: list[TrialResult]) -> dict[str, list[TrialResult]]:
    arms: dict[str, list[TrialResult]] = defaultdict(list)
    for r in results:
        if r.outcome != "failed" and TEST in r.final:
            arms[_arm(r)].append(r)
    return dict(arms)


def _mean(trials: list[TrialResult], name: str) -> float:
    return float(np.mean([t.final.get(name, np.nan) for t in trials]))


def _median_rate(trials: list[TrialResult], name: str) -> float:
    """The median over a trial's epochs, averaged over its seeds."""
    return float(np.mean([np.nanmedian([h.get(name, np.nan) for h in t.history]) for t in trials]))


def _val_picks(arms: dict[str, list[TrialResult]]) -> dict[str, str]:
    """Per (mixer, ablation) run at several lrs: the arm with the highest mean val_acc over
    the seeds they all ran (a seed rule gives the deciding arms more)."""
    by_model: dict[tuple[str, str], list[str]] = defaultdict(list)
    for arm, trials in arms.items():
        p = trials[0].params
        by_model[(p["mixer"], p["ablation"])].append(arm)
    picks = {}
    for (mixer, ablation), names in by_model.items():
        if len(names) > 1:
            model = mixer if ablation == "none" else f"{mixer}-{ablation}"
            seeds = set.intersection(*({t.params["seed"] for t in arms[a]} for a in names))
            picks[model] = max(names, key=lambda a: _mean(_on(arms[a], seeds), VAL))
    return picks


def _lr_check(picked: dict[str, str]) -> list[str]:
    """Does this run's validation pick the lr the deciding arms were fixed at?"""
    lines = []
    for arm in DECIDING:
        mixer = arm.split("-")[0]
        if mixer in picked and picked[mixer] != arm:
            lines.append(
                f"Caution: this run's validation prefers {picked[mixer]} to the deciding arm "
                f"{arm} (its lr fixed from the committed run): the comparisons may not show "
                f"{mixer} at its best."
            )
    return lines


def _table(arms: dict[str, list[TrialResult]], picked: dict[str, str]) -> list[dict[str, Any]]:
    attention = arms.get(ATTENTION) or next(
        (ts for ts in arms.values() if ts[0].params["mixer"] == "attention"), None
    )
    attn_macs = attention[0].final["macs"] if attention else None
    rows = []
    for arm, trials in sorted(arms.items(), key=lambda kv: _row_order(*kv)):
        p, test = trials[0].params, summarize([t.final[TEST] for t in trials])
        macs = trials[0].final["macs"]
        roles = ["deciding"] * (arm in DECIDING) + ["validation's lr"] * (arm in picked.values())
        rows.append({
            "arm": arm, "mixer": p["mixer"], "ablation": p["ablation"], "lr": f"{p['lr']:.3g}",
            "role": ", ".join(roles), "val_acc %": round(100 * _mean(trials, VAL), 2),
            "test_acc %": round(100 * test["mean"], 2), "± sd (test)": round(100 * test["std"], 2),
            "seeds": test["n"],
            "train_acc % (last epoch)": round(100 * _mean(trials, "train_acc"), 1),
            "params (K)": round(trials[0].final["params"] / 1e3, 1),
            "MACs (M)": round(macs / 1e6, 2),
            "MACs / attention": round(macs / attn_macs, 2) if attn_macs else "-",
            "train img/s": round(_median_rate(trials, "train_images_per_s")),
            "eval img/s": round(_median_rate(trials, "eval_images_per_s")),
        })  # fmt: skip
    return rows


def _row_order(arm: str, trials: list[TrialResult]) -> tuple:
    """Mixers before ablations, each by test accuracy, best first."""
    return trials[0].params["ablation"] != "none", -_mean(trials, TEST)


def _pick_notes(arms: dict[str, list[TrialResult]], picked: dict[str, str]) -> str:
    """Each mixer at the lr validation picks, with its test accuracy."""
    if not picked:
        return ""
    lines = [
        "### Each mixer at the lr validation picks (highest mean val_acc), with its test_acc",
        "",
    ]
    for model, arm in sorted(picked.items(), key=lambda kv: -_mean(arms[kv[1]], TEST)):
        trials = arms[arm]
        lines.append(
            f"- {model}: {arm} (lr {trials[0].params['lr']:.3g}): val_acc "
            f"{100 * _mean(trials, VAL):.1f}%, test_acc {100 * _mean(trials, TEST):.1f}%"
        )
    return "\n".join(lines) + "\n\n"


def _ablations(arms: dict[str, list[TrialResult]], chance: float) -> list[str]:
    """Each ablation of pool3 against pool3 at the same lr, beside the paper's Table 5. A
    collapse: losing more than half of pool3's test accuracy above chance (the paper's
    collapsed rows lose most of it). Descriptive: a CI, not a test."""
    if POOL not in arms:
        return []
    lines = []
    for arm, trials in sorted(arms.items()):
        ablation = trials[0].params["ablation"]
        if trials[0].params["mixer"] != POOL or ablation == "none":
            continue
        lines.append(_ablation_line(ablation, arms[POOL], trials, chance))
    return lines


def _ablation_line(
    ablation: str, pool: list[TrialResult], trials: list[TrialResult], chance: float
) -> str:
    pool = _on(pool, {t.params["seed"] for t in trials})  # the seeds both ran
    ref, mine = _mean(pool, TEST), _mean(trials, TEST)
    collapsed = (ref - mine) / max(ref - chance, 1e-9) > 0.5
    a, b = _by_seed(pool), _by_seed(trials)
    ci = ""
    if min(len(a), len(b)) >= 2:
        e = estimate(a, b, "seed")
        ci = f", 95% CI {100 * e.ci_low:+.1f} to {100 * e.ci_high:+.1f}"
    paper = PAPER_ABLATIONS.get(ablation)
    same = paper is None or collapsed == (ablation in PAPER_COLLAPSED)
    was = ""
    if paper is not None:
        collapsed_too = ", collapsed" if ablation in PAPER_COLLAPSED else ""
        was = f" (paper: {paper}% vs {PAPER_POOL}%{collapsed_too})"
    verdict = "collapses" if collapsed else "no collapse"
    return (
        f"ablation {ablation}: {100 * mine:.1f}% vs pool3 {100 * ref:.1f}% test_acc "
        f"({100 * (mine - ref):+.1f} pp{ci}; shown, not tested): {verdict}, "
        f"{'as in' if same else 'unlike'} the paper{was}."
    )


def _on(trials: list[TrialResult], seeds: set[int]) -> list[TrialResult]:
    """The trials of these seeds (all of them when none is among them)."""
    return [t for t in trials if t.params["seed"] in seeds] or trials


def _by_seed(trials: list[TrialResult]) -> dict[int, float]:
    return {t.params["seed"]: t.final[TEST] for t in trials}


def _training_note(arms: dict[str, list[TrialResult]]) -> list[str]:
    """How far training got: a mixer still far from fitting the training set is compared on
    how fast it learns in this budget as much as on what it can reach."""
    shown = [a for a in DECIDING if a in arms and not np.isnan(_mean(arms[a], "train_acc"))]
    if not shown:
        return []
    accs = ", ".join(f"{a} {100 * _mean(arms[a], 'train_acc'):.1f}%" for a in shown)
    return [f"Train accuracy of the last epoch (train split): {accs}."]


def _plot_macs(arms: dict[str, list[TrialResult]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, trials in arms.items():
        s = summarize([t.final[TEST] for t in trials])
        ablated = trials[0].params["ablation"] != "none"
        macs = trials[0].final["macs"] / 1e6
        ax.errorbar(
            macs, 100 * s["mean"], yerr=100 * np.nan_to_num(s["std"]),
            fmt="s" if ablated else "o", color="tab:gray" if ablated else "tab:blue", capsize=3,
        )  # fmt: skip
        ax.annotate(arm, (macs, 100 * s["mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("MACs per image (M, torch.utils.flop_counter)")
    ax.set_ylabel("test_acc (%), mean ± sd over seeds")
    ax.set_title("Token mixers (blue) and pool3 ablations (gray): test accuracy vs MACs")
    return fig
