"""The verdict report: Markdown + HTML + PNG plots, written to the sweep's folder. Every
report has the deciding comparisons (one line each, and a forest plot) before the study's
own tables and plots."""

from __future__ import annotations

import base64
import html
import shlex
from pathlib import Path
from typing import Any

from skeptic.stats import Judged, Question, margin_text
from skeptic.study import Study, Verdict

FOREST = "comparisons"  # the forest plot's file stem


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no rows_\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def comparison_rows(judged: list[Judged], metric: str) -> list[dict[str, Any]]:
    """One row per comparison: what it asks, on which metric (the study's report metric
    unless the comparison names its own), what the data show, what they decide."""
    rows = []
    for j in judged:
        c, e = j.compare, j.estimate
        rows.append({
            "comparison": c.name, "a": _where(c.a), "b": _where(c.b),
            "question": c.question + margin_text(c) + ("" if c.deciding else " (reported)"),
            "metric": c.metric or metric, "b - a": e.diff if e else "", "95% CI": f"[{e.ci_low:+.4g}, {e.ci_high:+.4g}]" if e else "",
            "n a/b": f"{e.n_a}/{e.n_b}" if e else "", "paired": ("by " + str(c.paired_by)) if e and e.paired else "no",
            "p (Holm)": j.p_adjusted, "level": j.level, "decision": j.decision,
        })  # fmt: skip
    return rows


def _where(selector: Any) -> str:
    if selector is None:
        return "0 (one-sample)"
    return ", ".join(f"{k}={v}" for k, v in selector.items())


def forest_plot(judged: list[Judged], split: str) -> Any:
    """Each comparison's difference b - a with its 95% CI, its margin band, zero marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [j for j in judged if j.estimate is not None]
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(len(shown), 1) + 1.2))
    for y, j in enumerate(reversed(shown)):
        e, c = j.estimate, j.compare
        if c.question == Question.EQUIVALENCE:
            ax.fill_betweenx([y - 0.35, y + 0.35], -c.margin, c.margin, color="#cde", zorder=0)
        elif c.question == Question.NON_INFERIORITY:  # the worst b may be: one side only
            bound = -c.margin if c.higher_is_better else c.margin
            ax.plot([bound, bound], [y - 0.35, y + 0.35], color="#c33", lw=2)
        ax.errorbar(e.diff, y, xerr=[[e.diff - e.ci_low], [e.ci_high - e.diff]], fmt="o",
                    color="black", capsize=4)  # fmt: skip
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{j.compare.name}: {j.decision}" for j in reversed(shown)])
    ax.set_xlabel(
        f"b - a, {split} metric (95% CI); shaded: equivalence margin; red: non-inferiority bound"
    )
    fig.tight_layout()
    return fig


def write_report(
    study: Study, verdict: Verdict, folder: Path, facts: dict[str, Any], command: str
) -> Path:
    """Write report.md, report.html and one PNG per figure (the forest plot first) into
    `folder`; return report.md."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    split = split_of(study.report_metric)
    figures = {FOREST: forest_plot(verdict.comparisons, split), **verdict.figures}
    images = []
    for stem, figure in figures.items():
        figure.savefig(folder / f"{stem}.png", dpi=120, bbox_inches="tight")
        plt.close(figure)  # pyplot keeps every figure alive until closed
        images.append(f"{stem}.png")
    command = shown_command(command)
    title = f"{study.name}: the belief {verdict.label.upper()}"
    facts_md = "\n".join(f"- **{k}**: {_fmt(v)}" for k, v in facts.items())
    compared = markdown_table(comparison_rows(verdict.comparisons, study.report_metric))
    why = "".join(f"- **{j.compare.name}**: {j.compare.why}\n" for j in verdict.comparisons if j.compare.why)
    md = (
        f"# {title}\n\n**Belief:** {study.belief}\n\n**Paper:** {study.paper}\n\n"
        f"## Verdict: {verdict.label}\n\n{verdict.summary}\n\n"
        f"## Deciding comparisons\n\nNumbers on the **{split}** split; choices (learning rates, "
        f"epochs, the champion) were made on validation data.\n\n{compared}\n{why}\n"
        + (f"## The paper beside this run\n\n{markdown_table(verdict.paper)}\n" if verdict.paper else "")
        + "".join(f"![{s}]({s})\n\n" for s in images)
        + (f"## Numbers\n\n{markdown_table(verdict.table)}\n" if verdict.table else "")
        + (f"{verdict.details}\n\n" if verdict.details else "")
        + f"## Run\n\n{facts_md}\n\nReproduce with:\n\n```\n{command}\n```\n"
    )
    (folder / "report.md").write_text(md)
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<h1>{html.escape(title)}</h1><p><b>Belief:</b> {html.escape(study.belief)}</p>"
        f"<p><b>Paper:</b> {html.escape(study.paper)}</p>"
        f"<h2>Verdict: {verdict.label}</h2><pre>{html.escape(verdict.summary)}</pre>"
        f"<h2>Deciding comparisons ({split} split)</h2>"
        f"{_html_table(comparison_rows(verdict.comparisons, study.report_metric))}"
        + (f"<h2>The paper beside this run</h2>{_html_table(verdict.paper)}" if verdict.paper else "")
        + "".join(f'<img src="{data_uri((folder / s).read_bytes())}" style="max-width:100%">' for s in images)
        + f"<h2>Numbers</h2>{_html_table(verdict.table)}<pre>{html.escape(verdict.details)}</pre>"
        f"<h2>Run</h2><pre>{html.escape(facts_md)}\n\n{html.escape(command)}</pre>"
    )
    (folder / "report.html").write_text(page)
    return folder / "report.md"


def data_uri(png: bytes) -> str:
    """A PNG inside an HTML page: the page is one file that MLflow's artifact preview (a
    sandboxed frame), a mail attachment or a machine without network show whole."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def shown_command(command: str) -> str:
    """The command with every absolute path under the working directory written relative to
    it (`--storage /home/me/x/runs` run in /home/me/x reads `--storage runs`), so a report
    does not carry the paths of the machine that wrote it; other arguments as given."""
    here = Path.cwd().resolve()

    def relative(token: str) -> str:
        key, eq, value = token.rpartition("=") if "=" in token else ("", "", token)
        if not value.startswith("/"):
            return token
        try:
            return f"{key}{eq}{Path(value).resolve().relative_to(here).as_posix() or '.'}"
        except ValueError:
            return token

    try:
        return shlex.join(relative(t) for t in shlex.split(command))
    except ValueError:  # unbalanced quotes: show it as it was
        return command


def split_of(metric: str) -> str:
    """Which split a metric was measured on, from its name (test_acc -> test)."""
    for split in ("test", "val", "train"):
        if metric.startswith(split):
            return split
    return "reported"
