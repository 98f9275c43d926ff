"""The paper's numbers beside this run's (Evidence.paper): one row per quantity the study
measures, the paper's value from its table, ours, and whether the direction agrees.

"yes" / "no" come from the judged comparisons (the platform's paired intervals) where the
quantity is one; a quantity the study only describes (Scratch-E, the lr 0.01 vs 0.1 level)
gets a direction only where the two means differ by more than 2 standard errors, else
"undecided". Never from validation: every number here is on the test split.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.pruning.verdict import TICKET, VERSUS, ratio_outcomes, tag
from skeptic.api import Decision, Judged

TABLE1 = "Table 1"  # Liu et al. 2019: L1-norm pruning, CIFAR-10, mean of 5 runs (values not
# checked against the paper text: no copy was reachable offline; see docs/results/pruning)
# (fine-tuned, Scratch-E, Scratch-B) test accuracy %, Table 1
PAPER_L1 = {"VGG-16-A": (93.41, 93.62, 93.78), "ResNet-56-A": (92.97, 92.96, 93.09),
            "ResNet-56-B": (92.67, 92.54, 93.05), "ResNet-110-A": (93.14, 93.25, 93.22),
            "ResNet-110-B": (92.69, 92.89, 93.60)}  # fmt: skip
TABLE1_ROWS = ("VGG-16-A", "ResNet-56-B", "ResNet-110-B")  # what a small run is set beside
# Table 1's unpruned networks, test accuracy %
UNPRUNED = {"VGG-16": 93.63, "ResNet-56": 93.14, "ResNet-110": 93.14}
VGG16_BASELINE = UNPRUNED["VGG-16"]  # the unpruned VGG-16 that VGG-16-A is pruned from
SECTION6 = "Sec. 6, Fig. 7; qualitative"  # Liu et al. 2019: lottery ticket, CIFAR-10
LI2017 = "Li et al. 2017, Table 1"
# (parameters, "FLOPs") of Li et al.'s Table 1; their FLOPs count a multiply-add once. The
# networks of cifar_nets.py give the same figures to three digits (tests/test_pruning_paper.py)
LI_SIZES = {
    "VGG-16": (1.5e7, 3.13e8), "VGG-16-A": (5.4e6, 2.06e8),
    "ResNet-56": (8.5e5, 1.25e8), "ResNet-56-A": (7.7e5, 1.12e8), "ResNet-56-B": (7.3e5, 9.09e7),
    "ResNet-110": (1.72e6, 2.53e8), "ResNet-110-A": (1.68e6, 2.13e8),
    "ResNet-110-B": (1.16e6, 1.55e8),
}  # fmt: skip
SIZE_TOLERANCE = 0.02  # ours within 2% of Li et al.'s (they round to 2-3 digits)


def unpruned_of(model: str) -> str:
    """VGG-16-A -> VGG-16."""
    return model.rsplit("-", 1)[0]


def _what(text: str, ratio: float, model: str | None, named: bool) -> str:
    """A row's quantity: per ratio for the small run and uniform plans, per network for
    Li et al.'s named plans (where the ratio is unused)."""
    if model is None:
        return f"{text}, ratio {ratio:g}"
    return f"{model}: {text}" if named else f"{model}: {text}, ratio {ratio:g}"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _paper_diffs(i: int, j: int, model: str | None = None) -> str:
    """Column j - column i of PAPER_L1, per model (Table 1's three rows, or `model`'s)."""
    names = TABLE1_ROWS if model is None else (model,)
    return "; ".join(
        f"{m} {PAPER_L1[m][j] - PAPER_L1[m][i]:+.2f} pp" for m in names if m in PAPER_L1
    )


def _ci(j: Judged | None) -> str:
    if j is None or j.estimate is None:
        return "too few seeds"
    e = j.estimate
    return f"{_pp(e.diff)} [95% CI {100 * e.ci_low:+.2f}, {100 * e.ci_high:+.2f}]"


def _two_se(a: dict, b: dict) -> str:
    """b - a by the means, with "yes"-able sign only beyond 2 standard errors."""
    diff = b["mean"] - a["mean"]
    se = math.sqrt(sum(s["std"] ** 2 / s["n"] for s in (a, b)))
    if math.isnan(se) or abs(diff) <= 2 * se:
        return "undecided"
    return "up" if diff > 0 else "down"


def scratch_b_rows(
    judged: dict[str, Judged], model: str | None = None, named: bool = False
) -> list[dict[str, Any]]:
    """Scratch-B - fine-tuned per ratio: the paper says comparable or better."""
    word = {"matched": "yes", "fine-tuning": "no", "open": "undecided"}
    return [{
        "quantity": _what("Scratch-B - fine-tuned", r, model, named),
        "paper": f"{_paper_diffs(0, 2, model)} ({TABLE1})",
        "ours": _ci(judged.get(f"{VERSUS}_{tag(r)}")),
        "direction agrees": word[outcome],
        "note": "the paper: comparable or better; 'yes' = Scratch-B shown within 1 pp of "
        "fine-tuned or ahead, 'no' = fine-tuned shown ahead",
    } for r, outcome in ratio_outcomes(judged).items()]  # fmt: skip


def scratch_e_rows(
    diffs: dict[float, tuple[float, int]], model: str | None = None, named: bool = False
) -> list[dict[str, Any]]:
    """Scratch-E - fine-tuned per ratio, over the seeds both ran (described, not tested):
    the paper finds them level."""
    return [{
        "quantity": _what("Scratch-E - fine-tuned", r, model, named),
        "paper": f"{_paper_diffs(0, 1, model)} ({TABLE1})",
        "ours": f"{_pp(d)} (mean over {n} seeds)",
        "direction agrees": "undecided",
        "note": "the paper: comparable; described here by means, not tested",
    } for r, (d, n) in diffs.items()]  # fmt: skip


def fine_tuned_rows(
    stats: dict[tuple[str, float], dict], baseline: dict | None, model: str | None = None,
    named: bool = False,
) -> list[dict]:  # fmt: skip
    """Fine-tuned - unpruned baseline at the lowest ratio: how much fine-tuning recovers.
    `baseline`: the summary (mean, std, n) of the structured arms' baseline, one per seed.
    `model`: the paper's network this run prunes (None: a small run, set beside VGG-16-A)."""
    ratios = sorted(r for a, r in stats if a == "fine_tuned")
    if not ratios or not baseline:
        return []
    ft = stats[("fine_tuned", ratios[0])]
    sign = _two_se(baseline, ft)
    row = {
        "ours": f"{_pp(ft['mean'] - baseline['mean'])} (means)",
        "direction agrees": {"down": "yes", "up": "no"}.get(sign, "undecided"),
    }
    if model is not None and model in PAPER_L1:
        full = UNPRUNED[unpruned_of(model)]
        tuned = PAPER_L1[model][0]
        saved = 1 - LI_SIZES[model][1] / LI_SIZES[unpruned_of(model)][1]
        # the paper's direction: fine-tuned below its unpruned network (every Table 1 row but
        # ResNet-110-A, level)
        return [{
            "quantity": _what("fine-tuned - unpruned baseline", ratios[0], model, named),
            "paper": f"{tuned - full:+.2f} pp ({tuned} vs {full}; {TABLE1}; {100 * saved:.0f}% "
            "fewer FLOPs)",
            **row,
            "note": "means, not tested: a direction only beyond 2 standard errors",
        }]  # fmt: skip
    vgg = PAPER_L1["VGG-16-A"][0]
    return [{
        "quantity": f"fine-tuned - unpruned baseline, ratio {ratios[0]:g}",
        "paper": f"VGG-16-A {vgg - VGG16_BASELINE:+.2f} pp ({vgg} vs {VGG16_BASELINE}; "
        f"{TABLE1}; 34% fewer FLOPs)",
        **row,
        "note": "means, not tested: a direction only beyond 2 standard errors. Fine-tuning "
        "here: as many epochs as the baseline at lr 1e-2, ~110 SGD steps (the paper: 40 "
        "CIFAR-10 epochs at 1e-3, ~31k steps); every layer loses filters (VGG-16-A: only "
        "the layers that tolerate it)",
    }]  # fmt: skip


def size_rows(model: str, sizes: dict[str, float]) -> list[dict[str, Any]]:
    """The pruned network's parameters and FLOPs against Li et al.'s: the same architecture,
    or not. `sizes`: a structured trial's params, flops, params_full, flops_full (FLOPs
    counting a multiply-add twice, so halved here as Li et al. count them)."""
    out = []
    for name, key, paper_idx, scale in (
        (unpruned_of(model), "params_full", 0, 1), (unpruned_of(model), "flops_full", 1, 0.5),
        (model, "params", 0, 1), (model, "flops", 1, 0.5),
    ):  # fmt: skip
        if name not in LI_SIZES or key not in sizes:
            continue
        ours, theirs = scale * float(sizes[key]), LI_SIZES[name][paper_idx]
        close = abs(ours / theirs - 1) <= SIZE_TOLERANCE
        what = "parameters" if paper_idx == 0 else "multiply-adds (Li et al.'s FLOPs)"
        which = "pruned" if name == model else f"unpruned {name}"
        out.append({
            "quantity": f"{model}: {which}, {what}",
            "paper": f"{theirs:.3g} ({LI2017})",
            "ours": f"{ours:.4g} (measured)",
            "direction agrees": "yes" if close else "no",
            "note": f"'yes': within {100 * SIZE_TOLERANCE:g}% (the paper rounds to 2-3 digits): "
            "the same architecture",
        })  # fmt: skip
    return out


def ticket_rows(judged: dict[str, Judged]) -> list[dict[str, Any]]:
    """Winning ticket - random init, per lr and ratio."""
    rows = []
    for name, j in judged.items():
        if not name.startswith(TICKET + "_"):
            continue
        lr = str(j.compare.b["arm"]).split("_lr", 1)[-1]
        small = lr == "0.01"
        if j.decision == Decision.B_BETTER:
            agrees = "yes" if small else "no"
        elif j.decision == Decision.A_BETTER:
            agrees = "no" if small else "yes"
        else:
            agrees = "undecided"
        rows.append({
            "quantity": f"winning ticket - random init, lr {lr}, ratio {j.compare.b['ratio']:g}",
            "paper": ("ticket better" if small else "no better than random") + f" ({SECTION6})",
            "ours": _ci(j),
            "direction agrees": agrees,
            "note": "a superiority test shows the ticket ahead or not; it cannot show 'no better' "
            "(undecided at lr 0.1 is what the paper predicts, not evidence for it)",
        })  # fmt: skip
    return rows


def lr_rows(stats: dict[tuple[str, float], dict]) -> list[dict[str, Any]]:
    """Retrained sparse models at lr 0.01 vs 0.1: the paper's 0.01 is worse."""
    rows = []
    for (arm, r), low in sorted(stats.items(), key=lambda kv: kv[0][1]):
        high = stats.get((arm.replace("_lr0.01", "_lr0.1"), r))
        if not arm.endswith("_lr0.01") or high is None:
            continue
        sign = _two_se(high, low)
        rows.append({
            "quantity": f"{arm.split('_lr')[0]}, lr 0.01 - lr 0.1, ratio {r:g}",
            "paper": f"lower at lr 0.01 ({SECTION6})",
            "ours": f"{_pp(low['mean'] - high['mean'])} (means)",
            "direction agrees": {"down": "yes", "up": "no"}.get(sign, "undecided"),
            "note": "means, not tested: a direction only beyond 2 standard errors",
        })  # fmt: skip
    return rows


def rows(
    stats: dict[tuple[str, float], dict], judged: list[Judged], baseline: dict | None,
    scratch_e: dict[float, tuple[float, int]], model: str | None = None,
    named: bool = False, sizes: dict[str, float] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every row of the report's "The paper beside this run". `model`: the paper's network
    and plan this run prunes (e.g. "VGG-16-A"), None for a small run; `named`: Li et al.'s
    plan (the ratio unused); `sizes`: a structured trial's parameter and FLOPs counts."""
    by_name = {j.compare.name: j for j in judged}
    size = size_rows(model, sizes) if model is not None and sizes else []
    return [*size, *scratch_b_rows(by_name, model, named), *scratch_e_rows(scratch_e, model, named),
            *fine_tuned_rows(stats, baseline, model, named), *ticket_rows(by_name),
            *lr_rows(stats)]  # fmt: skip
