"""The verdict report: Markdown + HTML + PNG plots, written to the sweep's folder."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from skeptic.study import Study, Verdict


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


def write_report(
    study: Study, verdict: Verdict, folder: Path, facts: dict[str, Any], command: str
) -> Path:
    """Write report.md, report.html and one PNG per figure into `folder`; return report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for stem, figure in verdict.figures.items():
        figure.savefig(folder / f"{stem}.png", dpi=120, bbox_inches="tight")
        images.append(f"{stem}.png")
    title = f"{study.name}: the belief {verdict.label.upper()}"
    facts_md = "\n".join(f"- **{k}**: {_fmt(v)}" for k, v in facts.items())
    md = (
        f"# {title}\n\n**Belief:** {study.belief}\n\n**Paper:** {study.paper}\n\n"
        f"## Verdict: {verdict.label}\n\n{verdict.summary}\n\n"
        + "".join(f"![{s}]({s})\n\n" for s in images)
        + f"## Numbers\n\n{markdown_table(verdict.table)}\n{verdict.details}\n\n"
        f"## Run\n\n{facts_md}\n\nReproduce with:\n\n```\n{command}\n```\n"
    )
    (folder / "report.md").write_text(md)
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<h1>{html.escape(title)}</h1><p><b>Belief:</b> {html.escape(study.belief)}</p>"
        f"<p><b>Paper:</b> {html.escape(study.paper)}</p>"
        f"<h2>Verdict: {verdict.label}</h2><pre>{html.escape(verdict.summary)}</pre>"
        + "".join(f'<img src="{s}" style="max-width:100%">' for s in images)
        + f"<h2>Numbers</h2>{_html_table(verdict.table)}<pre>{html.escape(verdict.details)}</pre>"
        f"<h2>Run</h2><pre>{html.escape(facts_md)}\n\n{html.escape(command)}</pre>"
    )
    (folder / "report.html").write_text(page)
    return folder / "report.md"
