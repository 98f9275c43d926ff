"""What the disagreement report shows besides its comparisons: part 1's AUC per measure
with the topic present and removed (and by statement side and form of disagreement), part
2's rho with the effect against alpha per measure (the map of where disagreement tracks
the effect better than the count), and the paper's numbers beside ours."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jobs.disagreement import verdict
from jobs.disagreement.evaluate import COUNT
from jobs.disagreement.lexicons import LICENCES
from jobs.disagreement.measures import MEASURES
from skeptic.api import Decision, Evidence, Judged, TrialResult, mean_ci, mean_ci_text

ORDER = (COUNT, *MEASURES)
PART1 = ("test_auc", "test_rho", "test_mean_agree", "test_mean_neutral", "test_mean_disagree",
         "test_auc_pro", "test_auc_con", "test_auc_explicit",
         "test_auc_counter", "test_auc_polite", "test_para_rho", "val_auc")  # fmt: skip


def _ok(r: TrialResult, key: str) -> bool:
    return r.outcome != "failed" and key in r.final


def validity_groups(results: list[TrialResult]) -> dict[tuple[str, str], list[TrialResult]]:
    """(measure, text) -> finished part 1 trials, in ORDER."""
    out = defaultdict(list)
    for r in results:
        if r.params.get("part") == "validity" and _ok(r, "test_auc"):
            out[(r.params["measure"], r.params["text"])].append(r)
    return dict(sorted(out.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1])))


Cell = tuple[float, str]  # (noise, displaced): one panel of part 2


def simulation_groups(
    results: list[TrialResult],
) -> dict[Cell, dict[str, dict[float, list[float]]]]:
    """(noise, displaced) -> measure -> alpha -> test rho of every seed."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        if r.params.get("part") == "simulation" and _ok(r, "test_rho"):
            p = r.params
            panel = (float(p["noise"]), str(p["displaced"]))
            out[panel][p["measure"]][float(p["alpha"])].append(r.final["test_rho"])
    return {
        n: dict(sorted(m.items(), key=lambda kv: ORDER.index(kv[0])))
        for n, m in sorted(out.items())
    }


def table(groups: dict[tuple[str, str], list[TrialResult]]) -> list[dict[str, Any]]:
    rows = []
    for (measure, text), trials in groups.items():
        row: dict[str, Any] = {"measure": measure, "topic": text, "folds": len(trials)}
        for key in PART1:
            values = [r.final[key] for r in trials if key in r.final and np.isfinite(r.final[key])]
            m, h = mean_ci(values)
            row[key] = "" if not values else f"{m:.3f}" + (f" ± {h:.3f}" if np.isfinite(h) else "")
        rows.append(row)
    return rows


def auc_figure(groups: dict[tuple[str, str], list[TrialResult]]) -> Any:
    """Test AUC per measure, topic present and removed (mean, 95% CI over folds; dots: folds)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    measures = list(dict.fromkeys(m for m, _ in groups))
    for j, text in enumerate(("present", "removed")):
        for i, m in enumerate(measures):
            values = [r.final["test_auc"] for r in groups.get((m, text), [])]
            if not values:
                continue
            mean, half = mean_ci(values)
            x = i + (j - 0.5) * 0.35
            ax.bar(x, mean - 0.5, 0.33, bottom=0.5, color=f"C{j}", alpha=0.7,
                   label=f"topic {text}" if i == 0 else None)  # fmt: skip
            ax.errorbar(x, mean, yerr=np.nan_to_num(half), color="k", capsize=3)
            ax.scatter([x] * len(values), values, s=8, color="k", alpha=0.4)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(measures)), measures)
    ax.set_ylabel("test AUC, disagree vs agree")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def rho_figure(groups: dict[Cell, dict[str, dict[float, list[float]]]]) -> Any:
    """Spearman rho with the latent effect against alpha: a panel per noise level (columns)
    and structure (rows: what disagreement displaces)."""
    noises = sorted({n for n, _ in groups})
    structures = list(dict.fromkeys(d for _, d in sorted(groups, key=lambda c: c[1])))
    fig, axes = plt.subplots(len(structures), len(noises), sharex=True, sharey=True,
                             figsize=(4.5 * len(noises), 3.2 * len(structures)),
                             squeeze=False)  # fmt: skip
    for (noise, displaced), by_measure in groups.items():
        ax = axes[structures.index(displaced)][noises.index(noise)]
        for i, (measure, by_alpha) in enumerate(by_measure.items()):
            alphas = sorted(by_alpha)
            stats = [mean_ci(by_alpha[a]) for a in alphas]
            style = {"lw": 2.4, "color": "k"} if measure == COUNT else {"lw": 1.2, "color": f"C{i}"}
            ax.errorbar(alphas, [m for m, _ in stats], yerr=[np.nan_to_num(h) for _, h in stats],
                        marker="o", ms=3, capsize=2, label=measure, **style)  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"noise {noise:g}, displaces {displaced}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("alpha: misinformation's share of the effect")
    for row in axes:
        row[0].set_ylabel("rho with the effect (test)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def map_markdown(groups: dict[Cell, dict[str, dict[float, list[float]]]],
                 judged: dict[str, Judged]) -> str:  # fmt: skip
    """Part 2's map: rho per measure and cell; '+' where the measure is shown to track the
    effect better than the count, '-' worse, '=' undecided."""
    marks = {Decision.B_BETTER: "+", Decision.A_BETTER: "-"}
    lines = []
    for (noise, displaced), by_measure in groups.items():
        alphas = sorted({a for by_alpha in by_measure.values() for a in by_alpha})
        head = " | ".join(f"alpha {a:g}" for a in alphas)
        lines += [f"noise {noise:g}, displaces {displaced} | {head}", "---|" * (len(alphas) + 1)]
        for measure, by_alpha in by_measure.items():
            cells = []
            for a in alphas:
                j = judged.get(f"{verdict.RHO}_{measure}_{verdict.tag(a, noise, displaced)}")
                mark = f" ({marks.get(j.decision, '=')})" if j else ""
                cells.append(f"{mean_ci_text(by_alpha.get(a, []), scale=1, digits=2)}{mark}")
            lines.append(f"{measure} | " + " | ".join(cells))
        lines.append("")
    return "\n".join(lines)


# what more disagreement displaces -> the replies whose mean a disagreeing reply replaces
DISPLACED_MIX = {"agree": {"agree": 1.0}, "neutral": {"neutral": 1.0},
                 "both": {"agree": 0.5, "neutral": 0.5}}  # fmt: skip


def contrast_markdown(groups: dict[tuple[str, str], list[TrialResult]]) -> str:
    """Per measure (topic present): a disagreeing reply's mean score minus the mean of what
    it displaces, per fold (mean +- 95% CI): its sign is the sign of the measure's rho with
    the effect in part 2's structure of that name."""
    head = " | ".join(f"displaces {d}" for d in DISPLACED_MIX)
    lines = [f"measure | {head}", "---|" * (len(DISPLACED_MIX) + 1)]
    for (measure, text), trials in groups.items():
        if text != "present":
            continue
        cells = []
        for mix in DISPLACED_MIX.values():
            values = [r.final["test_mean_disagree"]
                      - sum(w * r.final[f"test_mean_{rel}"] for rel, w in mix.items())
                      for r in trials if "test_mean_disagree" in r.final]  # fmt: skip
            cells.append(mean_ci_text(values, scale=1, digits=3))
        lines.append(f"{measure} | " + " | ".join(cells))
    return "\n".join(lines) + "\n"


# Recomputed from the repository's CSVs (data_output/tweet_disa_misinfo.csv: neg_swn vs
# nr_misinfo, 37 months; book_letters.csv nr_neg/swn_c vs the book's Percent Conspiracies,
# 1950-2007): the paper's own figures could not be read here.
PAPER_TWEETS = "rho = 0.587 (p = 1.3e-4, 37 months; recomputed from the repository's CSV)"
PAPER_LETTERS = "rho = 0.307 (p = 0.019, 58 years; recomputed from the repository's CSVs)"
PAPER_REMOVED = 'works "even when the specific topic is entirely removed" (abstract)'


def _row(quantity: str, paper: str, ours: str, agrees: str = "", note: str = "") -> dict:
    return {"quantity": quantity, "paper": paper, "ours": ours, "direction agrees": agrees,
            "note": note}  # fmt: skip


def _removed_row(name: str, j: Judged) -> dict:
    e = j.estimate
    agrees = "yes" if j.decision == Decision.NON_INFERIOR else "undecided"
    if e is not None and e.ci_high < -verdict.MARGIN:
        agrees = "no"
    ours = f"{e.diff:+.3f} [{e.ci_low:+.3f}, {e.ci_high:+.3f}]" if e else "not run"
    measure = name.removeprefix(verdict.REMOVED + "_")
    return _row(f"test AUC, topic removed minus present ({measure})", PAPER_REMOVED, ours,
                agrees, f"non-inferiority, margin {verdict.MARGIN:g}")  # fmt: skip


def paper_rows(results: list[TrialResult], judged: dict[str, Judged]) -> list[dict[str, Any]]:
    rho_count = defaultdict(list)  # (noise, alpha) -> vader's rho with the count
    for r in results:
        p = r.params
        vader = p.get("measure") == "vader" and p.get("displaced") == "both"
        if p.get("part") == "simulation" and vader and _ok(r, "test_rho_count"):
            rho_count[(float(p["noise"]), float(p["alpha"]))].append(r.final["test_rho_count"])
    ours = "; ".join(f"alpha {a:g}, noise {n:g}: {mean_ci_text(v, scale=1, digits=2)}"
                     for (n, a), v in sorted(rho_count.items()))  # fmt: skip
    rows = [
        _row("Spearman rho, monthly disagreement index vs misinformation count (vaccine tweets)",
             PAPER_TWEETS, ours or "(no vader simulation trials)", "",
             "ours: the VADER index in the simulation, per alpha, disagreement displacing both "
             "(the paper's data set one unknown alpha)"),
        _row("Spearman rho, yearly index vs percent conspiracies (NYT letters)", PAPER_LETTERS,
             "(not run: the letters cannot be downloaded)"),
    ]  # fmt: skip
    rows += [_removed_row(name, j) for name, j in judged.items()
             if name.startswith(verdict.REMOVED + "_")]  # fmt: skip
    return rows


NOTE = """### What this tests, and what it cannot

Part 1 scores real lexicons and a real sentence encoder on real sentences, but the sentences
were written for the study (jobs/disagreement/exchanges, 110 topics): agreeing with a negative
claim is written in negative words, and disagreement is a third each explicit, bare
counter-claims and polite. The AUCs say what each index reads in such exchanges (negativity,
or disagreement); they do not say how often disagreement on Twitter or in letters sounds
negative, which is what would make the paper's index track disagreement there.

Part 2 is a simulation. Its structure makes the effect show itself in the stance relations
of posts and nowhere else, so at alpha = 0 only a disagreement measure can track it, and at
alpha = 1 the count tracks it up to sampling noise: those two ends are built in. With the
paper's 10,000 posts a month, a monthly mean has almost no sampling error, so a measure's
rho with the effect is close to the ceiling the `noise` parameter sets (about 0.85 at 0.5,
0.5 at 1.5) whenever its contrast above is not zero, however small: the structure decides
the size of rho, and what more disagreement displaces decides which contrast counts. What
the real text decides is the sign of that contrast, measure by measure: whether the index
rises or falls when disagreement rises. Each seed's world quotes the topics of one test
fold, so where the corpus cannot tell a contrast from zero its sign changes between seeds
and the comparison stays undecided instead of inheriting the simulation's precision.
Fewer posts a month (`--set train.posts=200`) let the size of the contrast matter too.

Lexicon licences: """


def evidence(results: list[TrialResult], judged: list[Judged]) -> Evidence:
    by_name = {j.compare.name: j for j in judged}
    validity, sim = validity_groups(results), simulation_groups(results)
    aucs = [f"{m} ({t}) {mean_ci_text([r.final['test_auc'] for r in trials], scale=1, digits=2)}"
            for (m, t), trials in validity.items()]  # fmt: skip
    summary = "Test AUC, disagree vs agree replies: " + "; ".join(aucs) + "." if aucs else ""
    licences = "; ".join(f"{k}: {v}" for k, v in LICENCES.items()) + "."
    figures = {}
    if validity:
        figures["auc_by_measure"] = auc_figure(validity)
    if sim:
        figures["rho_vs_alpha"] = rho_figure(sim)
    details = ("### Part 1's contrasts behind part 2's signs: a disagreeing reply's mean score "
               "minus that of the replies it displaces (test folds)\n\n"
               + contrast_markdown(validity) + "\n"
               "### Part 2: Spearman rho with the effect, per measure and cell (test world; "
               "+/-: shown better/worse than the count, =: undecided)\n\n"
               + map_markdown(sim, by_name) + "\n" + NOTE + licences)  # fmt: skip
    return Evidence(summary=summary, table=table(validity), figures=figures, details=details,
                    paper=paper_rows(results, by_name))  # fmt: skip
