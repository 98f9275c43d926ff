"""What the metaformer report shows beside its deciding comparisons: every arm's accuracy
(validation, which made the choices, and test, which the verdict states), the lr each seed's
search picked, params, MACs and throughput; how far training got (learning curves); the
paper's numbers beside ours; and what this scale cannot decide. Descriptive only: nothing
here changes the label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jobs.metaformer.verdict import ATTENTION, CONTROL, IDENTITY, MARGIN, NONINF, POOL, VERSUS
from skeptic.api import Decision, Evidence, Judged, TrialResult, summarize
from skeptic.stats import estimate

TEST, VAL = "test_acc", "val_acc"
DECIDING = (POOL, ATTENTION, IDENTITY)
FIT = 0.95  # "trained to convergence": train accuracy of the picked model at the last epoch
# Paper Table 5 (ImageNet-1k top-1 %, PoolFormer-S12 = pool3 at 77.2), and which rows
# collapsed (the paper's reading of its own table).
PAPER_POOL = 77.2
PAPER_ABLATIONS = {"no_residual": 0.1, "no_mlp": 5.7, "no_norm": 46.1, "layernorm": 76.5,
                   "batchnorm": 76.4}  # fmt: skip
PAPER_COLLAPSED = {"no_residual", "no_mlp", "no_norm"}
# Table 5's other rows against pooling (77.2): (arm, paper's top-1, what the paper reads);
# identity is a deciding comparison and has its own row
PAPER_MIXERS = (
    ("random", 75.8, "lower"), ("sepconv", 78.1, "higher"),
    ("hybrid", 81.0, "higher"), ("pool5", 77.2, "same"), ("pool7", 77.1, "same"),
)  # fmt: skip
PAPER_TABLE = """Yu et al. 2022, Table 5 (ImageNet-1k, PoolFormer-S12: 12 blocks, 1.8G MACs, 300 epochs):
pooling 77.2, identity 74.3, global random matrix 75.8, depthwise conv 78.1,
[Pool, Pool, Attn, Attn] 81.0; pool size 3/5/7: 77.2/77.2/77.1; without residual 0.1,
without channel MLP 5.7, without norm 46.1, LayerNorm 76.5, BatchNorm 76.4 (GroupNorm(1)
77.2). Table 2: PoolFormer-S24 80.3 vs DeiT-S 79.8 (3.4G vs 4.6G MACs)."""
PAPER_NOTE = f"""### The paper at full scale, and what this run cannot decide

{PAPER_TABLE}

Splits: the models train on the train split; every choice (each trial's lr, by the last
epoch's val_acc; the champion, by val_acc) is made on the validation split; every number
the verdict states (`test_acc`) is on the test split, measured once per trial on the model
validation picked. The decided question is pool3 vs attention (and vs no mixing) on 18x18
generated 10-class shapes with 5-block four-stage models: tiny models, 18-epoch schedules
and generated data can rank mixers differently from ImageNet, and the other mixers and
ablations are shown, not tested (the 'direction agrees' column reads their 95% CIs).

MACs come from torch.utils.flop_counter (matmuls and convolutions; the average pooling and
element-wise ops count as zero, as in the paper's MACs). Images/s are measured inside each
trial on a shared CPU (one thread) and are only indicative.
"""
PAPER_SCALE_NOTE = f"""### The paper's numbers beside this run

{PAPER_TABLE}

This run has the paper's models (PoolFormer-S12 and the other mixers at S12 size) and recipe
(300 epochs of DeiT's): on ImageNet-1k (the `paper` preset), where the test split is
ImageNet's val and the absolute rows put each arm's top-1 beside the paper's single run, or
on CIFAR-100 (`cifar100`), where only the directions compare. Splits: the models train on
the train split; every choice (each trial's lr, the champion) is made on the validation
split held out of the training images; every number the verdict states (`test_acc`) is on
the test split, measured once per trial on the model validation picked.

MACs come from torch.utils.flop_counter (matmuls and convolutions; the average pooling and
element-wise ops count as zero, as in the paper's MACs). Images/s are each trial's own: all
its lrs and workers together, from disk (or memory) through augmentation to the update.
"""


def evidence(
    results: list[TrialResult],
    judged: Sequence[Judged] = (),
    num_classes: int = 10,
    notes: str = "",
    scale: str = "small",
) -> Evidence:
    """`notes`: Markdown the report shows after the paper's numbers (the study's list of
    where it differs from the paper's protocol). `scale`: "small" (the default runs),
    "imagenet" (the paper preset: our top-1 also beside the paper's own, absolute) or
    "scaled" (the S12 models and DeiT recipe on other data: the cifar100 preset)."""
    arms = _arms(results)
    if not arms:
        return Evidence("No trial finished with a test accuracy.")
    lines = _ablations(arms, 1.0 / num_classes) + _training_note(arms) + _grid_edges(arms)
    figures = {"acc_vs_macs": _plot_macs(arms), "learning_curves": _plot_curves(arms)}
    rows = paper_rows(arms, {j.compare.name: j for j in judged}, 1.0 / num_classes)
    if scale == "imagenet":
        rows = _absolute_rows(arms) + rows
    note = PAPER_NOTE if scale == "small" else PAPER_SCALE_NOTE
    details = note + ("\n" + notes + "\n" if notes else "")
    return Evidence("\n".join(lines), _table(arms), figures, details, rows)


# The paper's ImageNet-1k top-1 of each S12-size arm (Table 5), for the paper preset's run
PAPER_TOP1 = {POOL: PAPER_POOL, IDENTITY: 74.3, "random": 75.8, "hybrid": 81.0}


def _absolute_rows(arms: dict[str, list[TrialResult]]) -> list[dict[str, Any]]:
    """Our ImageNet top-1 (the test split is ImageNet's val) beside the paper's, per arm."""
    rows = []
    for arm, paper in PAPER_TOP1.items():
        row = {"quantity": f"{arm} top-1 %, ImageNet val", "paper": f"{paper} (Table 5)"}
        if arm not in arms:
            rows.append({**row, **NOT_RUN})
            continue
        test = summarize([t.final[TEST] for t in arms[arm]])
        ours = f"{100 * test['mean']:.1f} ± {100 * test['std']:.1f} sd ({test['n']} seeds)"
        gap = 100 * test["mean"] - paper
        rows.append({**row, "ours": ours, "direction agrees": "-",
                     "note": f"absolute, ours - paper {gap:+.1f} pp (the paper: one run)"})  # fmt: skip
    return rows


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


def _lr_grid(trials: list[TrialResult]) -> list[float]:
    """The lrs the trials searched (at their batch size), in grid order."""
    final = trials[0].final
    return [final[f"lr_base_lr{k}"] for k in range(len(trials[0].params.get("lr_grid", [])))
            if f"lr_base_lr{k}" in final]  # fmt: skip


def _picks(trials: list[TrialResult]) -> str:
    """Which lr each seed's validation picked, e.g. '0.0005 x2, 0.002 x1'."""
    counts: dict[float, int] = defaultdict(int)
    for t in trials:
        counts[t.final.get("lr_base", np.nan)] += 1
    return ", ".join(f"{lr:.2g} x{n}" for lr, n in sorted(counts.items()))


def _per_lr_val(trials: list[TrialResult]) -> str:
    """Mean val_acc after the last epoch at each lr of the search."""
    grid = _lr_grid(trials)
    return " / ".join(f"{lr:.2g}: {100 * _mean(trials, f'val_acc_lr{k}'):.1f}"
                      for k, lr in enumerate(grid))  # fmt: skip


def _grid_edges(arms: dict[str, list[TrialResult]]) -> list[str]:
    """Arms whose validation picked the top or bottom lr of the search in most seeds: their
    best lr may lie outside it, so the comparison may not show them at their best."""
    edges = []
    for arm, trials in sorted(arms.items()):
        grid = _lr_grid(trials)
        if len(grid) < 2:
            continue
        for edge, name in ((grid[0], "lowest"), (grid[-1], "highest")):
            n = sum(np.isclose(t.final.get("lr_base", np.nan), edge) for t in trials)
            if 2 * n > len(trials):
                edges.append(f"{arm} ({name}, {n} of {len(trials)} seeds)")
    if not edges:
        return []
    line = (
        f"lr at the edge of the search: {', '.join(edges)}: validation may prefer an lr "
        "outside the grid (see 'val_acc % per lr')."
    )
    return [line]


def _table(arms: dict[str, list[TrialResult]]) -> list[dict[str, Any]]:
    attention = arms.get(ATTENTION)
    attn_macs = attention[0].final["macs"] if attention else None
    rows = []
    for arm, trials in sorted(arms.items(), key=lambda kv: _row_order(*kv)):
        p, test = trials[0].params, summarize([t.final[TEST] for t in trials])
        macs = trials[0].final["macs"]
        rows.append({
            "arm": arm, "mixer": p["mixer"], "ablation": p["ablation"],
            "role": "deciding" if arm in DECIDING else "shown",
            "lr picked (per seed)": _picks(trials), "val_acc % per lr": _per_lr_val(trials),
            "val_acc %": round(100 * _mean(trials, VAL), 2),
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


def _on(trials: list[TrialResult], seeds: set[int]) -> list[TrialResult]:
    """The trials of these seeds (all of them when none is among them)."""
    return [t for t in trials if t.params["seed"] in seeds] or trials


def _by_seed(trials: list[TrialResult]) -> dict[int, float]:
    return {t.params["seed"]: t.final[TEST] for t in trials}


def _ci(ref: list[TrialResult], other: list[TrialResult]) -> tuple[float, float] | None:
    """95% CI of other - ref in test accuracy, paired by seed; None under 2 seeds."""
    a, b = _by_seed(ref), _by_seed(other)
    if min(len(a), len(b)) < 2:
        return None
    e = estimate(a, b, "seed")
    return e.ci_low, e.ci_high


# ---- the ablations ---------------------------------------------------------------------------


def _ablations(arms: dict[str, list[TrialResult]], chance: float) -> list[str]:
    """Each ablation of pool3 against pool3, beside the paper's Table 5. A collapse: losing
    more than half of pool3's test accuracy above chance (the paper's collapsed rows lose
    most of it). Descriptive: a CI, not a test."""
    if POOL not in arms:
        return []
    lines = []
    for arm, trials in sorted(arms.items()):
        ablation = trials[0].params["ablation"]
        if trials[0].params["mixer"] == POOL and ablation != "none":
            lines.append(_ablation_line(ablation, arms[POOL], trials, chance))
    return lines


def _collapsed(ref: float, mine: float, chance: float) -> bool:
    return (ref - mine) / max(ref - chance, 1e-9) > 0.5


def _ablation_line(
    ablation: str, pool: list[TrialResult], trials: list[TrialResult], chance: float
) -> str:
    pool = _on(pool, {t.params["seed"] for t in trials})  # the seeds both ran
    ref, mine = _mean(pool, TEST), _mean(trials, TEST)
    collapsed = _collapsed(ref, mine, chance)
    ci = _ci(pool, trials)
    ci_text = f", 95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else ""
    paper = PAPER_ABLATIONS.get(ablation)
    same = paper is None or collapsed == (ablation in PAPER_COLLAPSED)
    was = ""
    if paper is not None:
        collapsed_too = ", collapsed" if ablation in PAPER_COLLAPSED else ""
        was = f" (paper: {paper}% vs {PAPER_POOL}%{collapsed_too})"
    verdict = "collapses" if collapsed else "no collapse"
    return (
        f"ablation {ablation}: {100 * mine:.1f}% vs pool3 {100 * ref:.1f}% test_acc "
        f"({100 * (mine - ref):+.1f} pp{ci_text}; shown, not tested): {verdict}, "
        f"{'as in' if same else 'unlike'} the paper{was}."
    )


# ---- how far training got --------------------------------------------------------------------


def _curve(t: TrialResult, name: str) -> list[float]:
    """`name` per epoch of the lr this trial's validation picked at the end."""
    k = int(t.final.get("lr_index", 0))
    return [h.get(f"{name}_lr{k}", h.get(name, np.nan)) for h in t.history]


def _mean_curve(trials: list[TrialResult], name: str) -> np.ndarray:
    curves = [_curve(t, name) for t in trials]
    n = min(len(c) for c in curves)
    return np.mean([c[:n] for c in curves], axis=0)


def _training_note(arms: dict[str, list[TrialResult]]) -> list[str]:
    """Where training stands: a mixer still far from fitting its training set is compared on
    how fast it learns as much as on what it can reach."""
    parts = []
    for arm in sorted(arms, key=lambda a: -_mean(arms[a], "train_acc")):
        curve = _mean_curve(arms[arm], "train_acc")
        reached = np.flatnonzero(curve >= FIT)
        when = f"from epoch {reached[0] + 1}" if len(reached) else "not reached"
        parts.append(f"{arm} {100 * curve[-1]:.1f}% ({when})")
    if not parts:
        return []
    fitted = [a for a in DECIDING if a in arms and _mean(arms[a], "train_acc") >= FIT]
    missing = [a for a in DECIDING if a in arms and a not in fitted]
    verdict = (
        "every deciding arm fits its training set"
        if not missing
        else f"not fitted: {', '.join(missing)}: their comparison also measures learning speed"
    )
    line = (
        f"Train accuracy at the last epoch (train split, the picked lr; {100 * FIT:.0f}% "
        f"counts as fitted), mean over seeds: {'; '.join(parts)}. {verdict[0].upper()}"
        f"{verdict[1:]} (learning_curves.png)."
    )
    return [line]


def _plot_curves(arms: dict[str, list[TrialResult]]) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for arm, trials in sorted(arms.items()):
        style = {"lw": 2.2 if arm in DECIDING else 1.0, "ls": "-" if arm in DECIDING else "--"}
        for ax, name in ((left, "train_acc"), (right, "val_acc")):
            curve = 100 * _mean_curve(trials, name)
            ax.plot(np.arange(1, len(curve) + 1), curve, label=arm, **style)
    left.axhline(100 * FIT, color="gray", lw=0.8, ls=":")
    left.set_title(f"train_acc (train split; dotted: {100 * FIT:.0f}%)")
    right.set_title("val_acc (validation split)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    left.set_ylabel("% (mean over seeds, the lr validation picked)")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# ---- accuracy vs MACs, labels kept apart -----------------------------------------------------


def spread(ys: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Positions as close to `ys` as possible, at least `gap` apart, within [low, high] where
    they fit: labels that would overlap are pushed apart, in their original order."""
    order = np.argsort(ys, kind="stable")
    placed = np.array(ys, dtype=float)[order]
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    overflow = placed[-1] - high if len(placed) else 0.0
    if overflow > 0:  # shift down as a block, then keep the gaps from the bottom
        placed -= overflow
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    placed = np.maximum(placed, low + gap * np.arange(len(placed))) if len(placed) else placed
    out = np.empty_like(placed)
    out[order] = placed
    return out.tolist()


def _plot_macs(arms: dict[str, list[TrialResult]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 5))
    points = []
    for arm, trials in arms.items():
        s = summarize([t.final[TEST] for t in trials])
        ablated = trials[0].params["ablation"] != "none"
        macs, acc = trials[0].final["macs"] / 1e6, 100 * s["mean"]
        ax.errorbar(
            macs, acc, yerr=100 * np.nan_to_num(s["std"]), fmt="s" if ablated else "o",
            color="tab:gray" if ablated else "tab:blue", capsize=3,
        )  # fmt: skip
        points.append((arm, macs, acc))
    _label(ax, fig, points)
    ax.set_xlabel("MACs per image (M, torch.utils.flop_counter)")
    ax.set_ylabel("test_acc (%), mean ± sd over seeds")
    ax.set_title("Token mixers (blue) and pool3 ablations (gray): test accuracy vs MACs")
    return fig


def _label(ax: Any, fig: Any, points: list[tuple[str, float, float]]) -> None:
    """Each label to the right of its point, the labels spread apart vertically (in axes
    fractions) with a leader line where a label had to move."""
    xs = [m for _, m, _ in points]
    span = (max(xs) - min(xs)) or 1.0
    ax.set_xlim(min(xs) - 0.1 * span, max(xs) + 0.6 * span)  # room for the labels
    fig.canvas.draw()
    to_axes = ax.transData + ax.transAxes.inverted()
    where = [to_axes.transform((m, a)) for _, m, a in points]
    ys = spread([y for _, y in where], gap=0.055, low=0.02, high=0.98)
    for (arm, m, a), (x, _), y in zip(points, where, ys, strict=True):
        ax.annotate(
            arm, (m, a), xytext=(x + 0.04, y), textcoords="axes fraction", fontsize=8,
            va="center", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6},
        )  # fmt: skip


# ---- the paper beside this run ---------------------------------------------------------------


def _agrees(ci: tuple[float, float] | None, direction: str) -> str:
    """Does the 95% CI of (arm - pool3) point the paper's way? 'same': inside +-MARGIN."""
    if ci is None:
        return "undecided"
    low, high = ci
    above, below = low > 0, high < 0
    agree = {"higher": above, "lower": below, "same": -MARGIN < low and high < MARGIN}
    disagree = {"higher": below, "lower": above, "same": above or below}
    return "yes" if agree[direction] else "no" if disagree[direction] else "undecided"


def _diff_text(ref: list[TrialResult], other: list[TrialResult]) -> tuple[str, Any]:
    ref = _on(ref, {t.params["seed"] for t in other})
    ci = _ci(ref, other)
    diff = 100 * (_mean(other, TEST) - _mean(ref, TEST))
    ci_text = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
    return (
        f"{100 * _mean(other, TEST):.1f} vs {100 * _mean(ref, TEST):.1f} ({diff:+.1f} pp{ci_text})",
        ci,
    )


NOT_RUN = {"ours": "not run", "direction agrees": "undecided",
           "note": "arm not in this sweep (add it with --set 'sweep.arms=...')"}  # fmt: skip


def _decided(judged: dict[str, Judged], name: str) -> str:
    j = judged.get(name)
    return str(j.decision) if j else "not judged"


def _deciding_rows(arms: dict[str, list[TrialResult]], judged: dict[str, Judged]) -> list[dict]:
    rows = []
    level = {_decided(judged, NONINF), _decided(judged, VERSUS)}
    attention = {
        "quantity": "pool3 - attention, test_acc %",
        "paper": "PoolFormer-S24 80.3 vs DeiT-S 79.8 (Table 2): pooling level or ahead",
        "direction agrees": "yes" if level & {str(Decision.NON_INFERIOR), str(Decision.B_BETTER)}
        else "no" if str(Decision.A_BETTER) in level else "undecided",
        "note": f"deciding: {NONINF} {_decided(judged, NONINF)}, {VERSUS} {_decided(judged, VERSUS)}",
    }  # fmt: skip
    identity = {
        "quantity": "pool3 - identity, test_acc %",
        "paper": "77.2 vs 74.3 (Table 5): pooling ahead",
        "direction agrees": {str(Decision.B_BETTER): "yes", str(Decision.A_BETTER): "no"}.get(
            _decided(judged, CONTROL), "undecided"),
        "note": f"deciding: {CONTROL} {_decided(judged, CONTROL)}",
    }  # fmt: skip
    for row, other in ((attention, ATTENTION), (identity, IDENTITY)):
        if POOL in arms and other in arms:
            row["ours"] = _diff_text(arms[other], arms[POOL])[0]
            rows.append(row)
        else:
            rows.append({**row, **NOT_RUN})
    return rows


def _macs_row(arms: dict[str, list[TrialResult]]) -> dict[str, Any]:
    row = {
        "quantity": "MACs, pooling / attention",
        "paper": "3.4G / 4.6G = 0.74 (Table 2, S24 vs DeiT-S)",
    }
    if POOL not in arms or ATTENTION not in arms:
        return {**row, **NOT_RUN}
    ratio = arms[POOL][0].final["macs"] / arms[ATTENTION][0].final["macs"]
    note = "measured, not estimated: attention's q k^T and attn v are counted"
    return {
        **row,
        "ours": f"{ratio:.2f}",
        "direction agrees": "yes" if ratio < 1 else "no",
        "note": note,
    }


def _shown_rows(arms: dict[str, list[TrialResult]], chance: float) -> list[dict[str, Any]]:
    collapses = [(f"pool3-{a}", v, "collapse" if a in PAPER_COLLAPSED else "same")
                 for a, v in PAPER_ABLATIONS.items()]  # fmt: skip
    return [_shown_row(arms, chance, *row) for row in (*PAPER_MIXERS, *collapses)]


def _shown_row(
    arms: dict[str, list[TrialResult]], chance: float, arm: str, paper: float, direction: str
) -> dict[str, Any]:
    """One arm against pool3 by its paired 95% CI; a collapse (paper Table 5's no residual,
    no MLP, no norm) agrees only when ours is lower and loses half of pool3's lead over
    chance too."""
    row = {"quantity": f"{arm} - pool3, test_acc %", "paper": f"{paper} vs {PAPER_POOL} (Table 5)"}
    if POOL not in arms or arm not in arms:
        return {**row, **NOT_RUN}
    ours, ci = _diff_text(arms[POOL], arms[arm])
    note = f"paper: {direction}; shown, not tested ('same': 95% CI inside ±{100 * MARGIN:g} pp)"
    agree = _agrees(ci, "lower" if direction == "collapse" else direction)
    if direction == "collapse":
        collapsed = _collapsed(_mean(arms[POOL], TEST), _mean(arms[arm], TEST), chance)
        agree = agree if collapsed or agree != "yes" else "no"
        note = f"paper: collapses; ours: {'collapses' if collapsed else 'no collapse'}"
    return {**row, "ours": ours, "direction agrees": agree, "note": note}


def paper_rows(
    arms: dict[str, list[TrialResult]], judged: dict[str, Judged], chance: float = 0.1
) -> list[dict[str, Any]]:
    """The paper's numbers beside ours: the deciding comparisons by their decisions, every
    other arm against pool3 by its paired 95% CI (b - a, test accuracy), MACs by their ratio."""
    rows = _deciding_rows(arms, judged) + [_macs_row(arms)] + _shown_rows(arms, chance)
    return [{k: row.get(k, "") for k in PAPER_COLUMNS} for row in rows]


PAPER_COLUMNS = ("quantity", "paper", "ours", "direction agrees", "note")
