"""The metaformer verdict, computed from the measured accuracies, params and MACs only.

Each arm (a mixer, or an ablation of the pooling model) is judged at its best lr (highest
mean final val accuracy over seeds; the same selection for every arm). A difference counts
when it exceeds 2 standard errors of the difference of means.

- Undecided with fewer than 2 seeds of pool3 or attention (the spread is unknown).
- The belief holds when attention is significantly ahead of pooling (pool3, the paper's
  PoolFormer).
- It is overturned when pooling is within the spread of attention (or ahead of it), is
  significantly ahead of the identity and frozen-random mixers, costs fewer MACs, and the
  spread (2 SE of attention - pooling) is narrower than pooling's lead over those trivial
  mixers (otherwise "within the spread" says only that the spread is wide).
- Undecided otherwise: pooling not clearly ahead of the trivial mixers means the token mixer
  barely matters at this scale, so the run cannot attribute anything to attention or pooling.

The component ablations are reported beside the verdict (they do not decide it): an ablation
"collapses" when it loses more than half of pool3's accuracy above chance; it "hurts" or
"improves" when it differs from pool3 (same lr) by more than 2 SE.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from skeptic.api import TrialResult, Verdict, diff_se, summarize

POOL, ATTN, CONTROLS = "pool3", "attention", ("identity", "random")
# Paper Table 5 (ImageNet top-1 %, PoolFormer-S12 at 77.2): which ablations collapsed.
PAPER_ABLATIONS = {"no_residual": 0.1, "no_mlp": 5.7, "no_norm": 46.1, "layernorm": 76.5,
                   "batchnorm": 76.4}  # fmt: skip
PAPER_POOL = 77.2
PAPER_COLLAPSED = {"no_residual", "no_mlp", "no_norm"}  # the paper's reading of its Table 5
PAPER_NOTE = """### For comparison: the paper at full scale

Yu et al. 2022 (ImageNet-1k, MetaFormer-S12, 1.8G MACs), top-1: pooling 77.2, identity 74.3,
frozen random matrix 75.8, depthwise conv 78.1, [Pool, Pool, Attn, Attn] 81.0; pool size
3/5/7: 77.2/77.2/77.1; without residual 0.1, without channel MLP 5.7, without norm 46.1,
LayerNorm 76.5, BatchNorm 76.4 (GroupNorm(1) 77.2). The decision rule above is applied to this
run's numbers only: tiny models, few epochs and generated 10-class shapes can rank mixers
differently, and the run says "undecided" when its differences are within the noise.

MACs come from torch.utils.flop_counter (matmuls and convolutions; the average pooling and
element-wise ops count as zero, as in the paper's MACs). Images/s are measured inside each
trial on a shared CPU (one thread) and are only indicative; see
benchmarks/mixer_throughput.py for a side-by-side measurement.
"""


def _arm(r: TrialResult) -> str:
    p = r.params
    if "arm" in p:
        return str(p["arm"])
    return p["mixer"] if p.get("ablation", "none") == "none" else f"{p['mixer']}-{p['ablation']}"


def _summaries(results: list[TrialResult], metric: str) -> dict[str, dict[float, dict]]:
    """arm -> lr -> accuracy stats plus params, MACs and throughput of those trials."""
    groups: dict[str, dict[float, list[TrialResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.outcome != "failed" and metric in r.final:
            groups[_arm(r)][float(r.params["lr"])].append(r)
    out: dict[str, dict[float, dict]] = {}
    for arm, by_lr in groups.items():
        out[arm] = {}
        for lr, trials in by_lr.items():
            rates = [np.median([h["train_images_per_s"] for h in t.history]) for t in trials]
            evals = [np.median([h["eval_images_per_s"] for h in t.history]) for t in trials]
            out[arm][lr] = {
                **summarize([t.final[metric] for t in trials]), "lr": lr,
                "mixer": trials[0].params["mixer"], "ablation": trials[0].params["ablation"],
                "params": int(trials[0].final["params"]), "macs": int(trials[0].final["macs"]),
                "train_ips": float(np.mean(rates)), "eval_ips": float(np.mean(evals)),
                "epochs": len(trials[0].history),
                "train_acc": float(np.mean([t.final.get("train_acc", np.nan) for t in trials])),
            }  # fmt: skip
    return out


def _best(summaries: dict[str, dict[float, dict]]) -> dict[str, dict]:
    return {arm: max(by_lr.values(), key=lambda s: s["mean"]) for arm, by_lr in summaries.items()}


def _table(best: dict[str, dict], summaries: dict[str, dict[float, dict]]) -> list[dict]:
    attn = best.get(ATTN)
    rows = []
    for arm, s in sorted(
        best.items(), key=lambda kv: (kv[1]["ablation"] != "none", -kv[1]["mean"])
    ):
        others = ", ".join(
            f"{lr:.3g}: {100 * o['mean']:.1f}" for lr, o in sorted(summaries[arm].items()) if lr != s["lr"]
        )  # fmt: skip
        rows.append({
            "arm": arm, "mixer": s["mixer"], "ablation": s["ablation"], "best lr": f"{s['lr']:.3g}",
            "val_acc %": round(100 * s["mean"], 2), "± std": round(100 * s["std"], 2),
            "seeds": s["n"], "params (K)": round(s["params"] / 1e3, 1),
            "MACs (M)": round(s["macs"] / 1e6, 2),
            "MACs / attention": round(s["macs"] / attn["macs"], 2) if attn else "-",
            "train img/s": round(s["train_ips"]), "eval img/s": round(s["eval_ips"]),
            "other lr (acc %)": others or "-",
        })  # fmt: skip
    return rows


def _compare(a: dict, b: dict) -> tuple[float, float]:
    """a - b and 2 standard errors of that difference."""
    return a["mean"] - b["mean"], 2 * diff_se(a, b)


def _decide(best: dict[str, dict]) -> tuple[bool | None, list[str]]:
    if POOL not in best or ATTN not in best:
        return None, ["Cannot decide: the sweep lacks the pool3 or the attention arm."]
    pool, attn = best[POOL], best[ATTN]
    if min(pool["n"], attn["n"]) < 2:
        why = "Cannot decide: fewer than 2 seeds of pool3 or attention, so the spread is unknown."
        return None, [f"{why} Re-run with --set sweep.seeds=3 (or more)."]
    gap, two_se = _compare(attn, pool)
    lines = [f"attention - pool3 = {100 * gap:+.2f} pp (2 SE = {100 * two_se:.2f} pp)."]
    if gap > two_se:
        lines.append("Attention is significantly ahead of pooling: the belief holds at this scale.")
        return True, lines
    lines.append("Pooling is within the spread of attention (or ahead of it).")
    ahead, leads = [], []
    for name in CONTROLS:
        if name not in best:
            lines.append(f"The sweep lacks the {name} arm.")
            continue
        d, s = _compare(pool, best[name])
        ahead.append(d > s)
        leads.append(d)
        verb = "ahead of" if d > s else "NOT significantly ahead of"
        lines.append(f"pool3 is {verb} {name}: {100 * d:+.2f} pp (2 SE = {100 * s:.2f} pp).")
    cheaper = pool["macs"] < attn["macs"]
    lines.append(
        f"MACs: pool3 {pool['macs'] / 1e6:.2f}M vs attention {attn['macs'] / 1e6:.2f}M "
        f"({'fewer' if cheaper else 'NOT fewer'})."
    )
    narrow = bool(leads) and two_se < min(leads)
    if ahead and all(ahead) and len(ahead) == len(CONTROLS) and cheaper and not narrow:
        lines.append(
            "Cannot decide: the spread of attention - pool3 is as wide as pooling's lead over "
            "the trivial mixers. More seeds would narrow it."
        )
        return None, lines
    if ahead and all(ahead) and len(ahead) == len(CONTROLS) and cheaper:
        lines.append("Overturned: a parameter-free pooling mixer does as well as attention here.")
        return False, lines
    lines.append(
        "Cannot decide: pooling is not clearly ahead of the trivial mixers (or not cheaper), "
        "so at this scale the token mixer's share of the result cannot be told from noise."
    )
    return None, lines


def _ablations(best: dict[str, dict], summaries: dict, chance: float) -> list[str]:
    if POOL not in best:
        return []
    lines = []
    for arm, s in sorted(best.items()):
        if s["mixer"] != POOL or s["ablation"] == "none":
            continue
        ref = summaries[POOL].get(s["lr"], best[POOL])  # pool3 at the ablation's lr
        lost = (ref["mean"] - s["mean"]) / max(ref["mean"] - chance, 1e-9)
        d, two_se = _compare(ref, s)
        collapsed = lost > 0.5
        status = "collapses" if collapsed else "hurts" if d > two_se else "no significant change"
        status = "improves" if d < -two_se else status
        paper = PAPER_ABLATIONS.get(s["ablation"])
        was = "" if paper is None else f" (paper: {paper}% vs {PAPER_POOL}%"
        was += (
            "" if paper is None else (", collapsed)" if s["ablation"] in PAPER_COLLAPSED else ")")
        )
        same = paper is None or collapsed == (s["ablation"] in PAPER_COLLAPSED)
        lines.append(
            f"ablation {s['ablation']}: {100 * s['mean']:.1f}% vs pool3 {100 * ref['mean']:.1f}% "
            f"({100 * d:+.1f} pp, 2 SE {100 * two_se:.1f}): {status}, "
            f"{'' if collapsed else 'no collapse, '}{'as in' if same else 'unlike'} the paper{was}."
        )
    return lines


def _training_note(best: dict[str, dict]) -> list[str]:
    """How far training got: a mixer still far from fitting the training set is compared on
    how fast it learns in this budget as much as on what it can reach."""
    shown = [a for a in (POOL, ATTN, *CONTROLS) if a in best and not np.isnan(best[a]["train_acc"])]
    if not shown:
        return []
    accs = ", ".join(f"{a} {100 * best[a]['train_acc']:.1f}%" for a in shown)
    return [f"Final train accuracy (best lr): {accs}."]


def _plot_macs(best: dict[str, dict]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, s in best.items():
        ablated = s["ablation"] != "none"
        ax.errorbar(
            s["macs"] / 1e6, 100 * s["mean"], yerr=100 * np.nan_to_num(s["std"]),
            fmt="s" if ablated else "o", color="tab:gray" if ablated else "tab:blue", capsize=3,
        )  # fmt: skip
        ax.annotate(arm, (s["macs"] / 1e6, 100 * s["mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("MACs per image (M, torch.utils.flop_counter)")
    ax.set_ylabel("final val accuracy (%), mean ± std over seeds")
    ax.set_title("Token mixers (blue) and pool3 ablations (gray): accuracy vs MACs")
    return fig


def judge(results: list[TrialResult], metric: str, num_classes: int = 10) -> Verdict:
    summaries = _summaries(results, metric)
    if not summaries:
        return Verdict(None, "Cannot decide: no trial finished.")
    best = _best(summaries)
    held, lines = _decide(best)
    lines += _ablations(best, summaries, 1.0 / num_classes)
    lines += _training_note(best)
    table = _table(best, summaries)
    return Verdict(held, "\n".join(lines), table, {"acc_vs_macs": _plot_macs(best)}, PAPER_NOTE)
