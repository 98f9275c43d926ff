"""`skeptic board`: one offline page built from a tracking store, the page a lab shares:
what each study's belief is, what the latest finished sweep says about it and why (its
comparisons, its forest plot), how the verdict moved across the study's sweeps, and links to
the runs and the champion in the MLflow UI.

The page is one self-contained file (`index.html`): its plots are embedded as data: URIs,
its style is inline, it has no script and loads nothing from the network, so it opens from
a file:// URL on a machine without internet. Everything is read from MLflow: the sweeps'
parent runs (tag Tag.KIND == SWEEP) and their tags, metrics and report artifacts, and the
model registry; a study's code is consulted only for the belief of a run too old to carry it.
"""

from __future__ import annotations

import functools
import html
import io
import os
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skeptic import review
from skeptic.report import FOREST, data_uri
from skeptic.schema import CHAMPION, SWEEP, Artifact, Metric, MlflowTag, Param, Tag
from skeptic.spec import SpecError
from skeptic.store import check_store, shown_uri, sqlite_path

BOARD_DIR = "skeptic-board"
PAGE = "index.html"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `skeptic ui` serves by default
LABELS = ("held", "undecided", "overturned")  # Verdict.label's values, top to bottom
FIELDS = ("diff", "ci_low", "ci_high", "p_adjusted")  # per comparison, from the parent run
# a verdict's colours (foreground, background): a label's badge, a point of the history plot
COLORS = {"held": ("#1a7f37", "#dafbe1"), "overturned": ("#cf222e", "#ffebe9"),
          "undecided": ("#9a6700", "#fff8c5")}  # fmt: skip
NO_VERDICT = ("#57606a", "#eaeef2")


@dataclass(frozen=True)
class SweepRow:
    """One sweep of a study: its parent run, as the history shows it."""

    run_id: str
    sweep_id: str
    started: float  # seconds since the epoch
    ended: float | None
    status: str  # the parent run's status: FINISHED, RUNNING, KILLED, FAILED
    verdict: str | None  # Tag.VERDICT; set only once a sweep is judged
    trials: int  # trial runs in the store
    planned: int  # trials planned at its start (Param.N_TRIALS; the seed rule may add more)
    model_version: str | None  # the version this sweep registered (Tag.CHAMPION_VERSION)

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED" and self.verdict is not None

    @property
    def shown_trials(self) -> str:
        """A finished sweep's trials; of an unfinished one, how many of those planned ran."""
        if self.finished or not self.planned:
            return str(self.trials)
        return f"{self.trials} of {self.planned}"

    @property
    def shown(self) -> str:
        """The verdict, or what became of a sweep that has none."""
        if self.finished:
            return self.verdict
        if self.status in ("RUNNING", "FINISHED"):
            return "running" if self.status == "RUNNING" else "finished without a verdict"
        return f"did not finish ({self.status.lower()})"


@dataclass(frozen=True)
class Comparison:
    name: str
    decision: str
    values: dict[str, float]  # FIELDS at the last look


@dataclass
class StudyBoard:
    name: str
    experiment_id: str
    belief: str
    paper: str
    sweeps: list[SweepRow]  # oldest first
    latest: SweepRow | None = None  # the latest finished sweep
    summary: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    forest: bytes | None = None  # the latest sweep's forest plot (PNG)
    champion: str | None = None  # the version behind the alias


# ---------------------------------------------------------------- the command


def default_out(tracking_uri: str) -> Path:
    """Beside a local SQLite store (./skeptic-board for the default store), else here."""
    db = sqlite_path(tracking_uri)
    return (db.parent if db else Path.cwd()) / BOARD_DIR


def default_mlflow_url(tracking_uri: str) -> str:
    """An MLflow server serves its UI at its own address; a local store, `skeptic ui`'s."""
    if tracking_uri.startswith(("http://", "https://")):
        return shown_uri(tracking_uri).rstrip("/")
    return DEFAULT_UI


def build_board(tracking_uri: str, out: Path, mlflow_url: str, say: Any = print) -> Path:
    """Read every study's sweeps from the store and write `out`/index.html; return it.
    A user's mistake (no store, `out` a file, no sweeps) is a SpecError, and then nothing
    is written."""
    check_out(out)
    if not mlflow_url.startswith(("http://", "https://")):
        raise SpecError(f"--mlflow-url {mlflow_url}: give the UI's http(s)://HOST:PORT")
    check_store(tracking_uri, must_exist=True)
    from mlflow.tracking import MlflowClient

    say(f"board: reading {shown_uri(tracking_uri)}")
    studies = collect(MlflowClient(tracking_uri))
    if not studies:
        raise SpecError(
            f"--tracking-uri {tracking_uri}: no sweeps in this store yet (`skeptic run` makes one)"
        )
    n = sum(len(s.sweeps) for s in studies)
    say(f"board: {len(studies)} studies, {n} sweeps")
    page = render_page(studies, shown_uri(tracking_uri), mlflow_url.rstrip("/"))
    return write_page(out, page)


def check_out(out: Path) -> None:
    """`out` must be a folder, or not exist yet under a folder."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out}: is a file; give a folder (index.html is written into it)")
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise SpecError(f"--out {out}: {above} is a file, not a folder")


def write_page(out: Path, page: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    target = out / PAGE
    partial = out / f".{PAGE}.{os.getpid()}"
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)  # a reader never sees half a page
    return target


# ---------------------------------------------------------------- reading the store


def collect(client: Any) -> list[StudyBoard]:
    """One StudyBoard per experiment that has sweeps, by study name."""
    boards = [_study(client, exp) for exp in client.search_experiments()]
    return sorted(filter(None, boards), key=lambda b: b.name)


def _study(client: Any, experiment: Any) -> StudyBoard | None:
    runs = _search(client, experiment.experiment_id, f"tags.`{Tag.KIND}` = '{SWEEP}'")
    if not runs:
        return None
    counts = _trial_counts(client, experiment.experiment_id)
    runs.sort(key=lambda r: r.info.start_time or 0)
    name = runs[-1].data.tags.get(Tag.STUDY, experiment.name)
    belief, paper = _belief(runs, name)
    sweeps = [_sweep_row(r, counts) for r in runs]
    board = StudyBoard(name, experiment.experiment_id, belief, paper, sweeps)
    finished = [(s, r) for s, r in zip(sweeps, runs) if s.finished]
    if finished:
        _add_latest(client, board, *max(finished, key=lambda sr: sr[0].ended or sr[0].started))
    board.champion = _champion(client, name, board.latest)
    return board


def _search(client: Any, experiment_id: str, query: str) -> list[Any]:
    """Every run that matches, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _trial_counts(client: Any, experiment_id: str) -> Counter:
    """Trial runs (not stage runs) per parent run."""
    trials = _search(client, experiment_id, f"tags.`{Tag.TRIAL_ID}` LIKE '%'")
    return Counter(r.data.tags.get(MlflowTag.PARENT_RUN_ID) for r in trials)


def _sweep_row(run: Any, counts: Counter) -> SweepRow:
    info, tags = run.info, run.data.tags
    planned = int(run.data.params.get(Param.N_TRIALS, 0))
    return SweepRow(
        info.run_id, tags.get(Tag.SWEEP_ID, info.run_name or info.run_id),
        info.start_time / 1000, info.end_time / 1000 if info.end_time else None, info.status,
        tags.get(Tag.VERDICT), counts.get(info.run_id, 0), planned, tags.get(Tag.CHAMPION_VERSION),
    )  # fmt: skip


def _belief(runs: list[Any], name: str) -> tuple[str, str]:
    """The belief and paper the newest sweep recorded; a run too old to carry them falls
    back to the study's own class, when this machine has it."""
    for run in reversed(runs):
        tags = run.data.tags
        if tags.get(Tag.BELIEF):
            return tags[Tag.BELIEF], tags.get(Tag.PAPER, "")
    cls = _known_studies().get(name)
    if cls is None:
        return "(not recorded in the store, and no study of this name is installed here)", ""
    return cls.belief, cls.paper


@functools.cache
def _known_studies() -> dict[str, Any]:
    from skeptic.study import all_studies  # imports every study: only for old runs

    return all_studies()


def _add_latest(client: Any, board: StudyBoard, sweep: SweepRow, run: Any) -> None:
    board.latest = sweep
    board.summary = run.data.tags.get(Tag.VERDICT_SUMMARY, "")
    board.comparisons = _comparisons(run)
    board.forest = _forest(client, sweep.run_id)


def _comparisons(run: Any) -> list[Comparison]:
    """Each comparison's decision (tags) and numbers at the last look (a run's metrics hold
    the value of the last step)."""
    prefix, tags, metrics = Tag.decision(""), run.data.tags, run.data.metrics
    names = sorted((k.removeprefix(prefix) for k in tags if k.startswith(prefix)),
                   key=_declared_order(tags.get(Tag.VERDICT_SUMMARY, "")))  # fmt: skip
    keys = {n: {f: Metric.comparison(n, f) for f in FIELDS} for n in names}
    return [
        Comparison(
            n, tags[Tag.decision(n)], {f: metrics[k] for f, k in keys[n].items() if k in metrics}
        )
        for n in names
    ]


def _declared_order(summary: str) -> Any:
    """A sort key: the study's order of its comparisons (as the report and the forest plot
    list them), read from the verdict summary's line per comparison ("name: b - a = ...");
    names it lacks after those, by name."""
    lines = [line.partition(": ")[0] for line in summary.splitlines()]
    position = {name: i for i, name in reversed(list(enumerate(lines)))}
    return lambda name: (position.get(name, len(lines)), name)


def _forest(client: Any, run_id: str) -> bytes | None:
    """The report's forest plot, from the parent run's artifacts (None if it is missing)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{Artifact.REPORT}/{FOREST}.png", tmp)
            return Path(path).read_bytes()
        except (MlflowException, OSError):
            return None


def _champion(client: Any, name: str, latest: SweepRow | None) -> str | None:
    """The version behind the alias; without one, the version the latest sweep registered."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return latest.model_version if latest else None


# ---------------------------------------------------------------- plots


def history_plot(sweeps: list[SweepRow]) -> bytes:
    """The verdict of each sweep in order (an unfinished sweep on a row of its own), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 1.9))
    _draw_history(ax, sweeps)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)  # pyplot keeps every figure alive until closed
    return buf.getvalue()


def _draw_history(ax: Any, sweeps: list[SweepRow]) -> None:
    rows = {label: i for i, label in enumerate(reversed(LABELS), start=1)}  # 0: unfinished
    points = [(i, rows.get(s.verdict, 0) if s.finished else 0) for i, s in enumerate(sweeps)]
    done = [p for p, s in zip(points, sweeps) if s.finished]
    if done:  # the verdict as it stood after each finished sweep
        ax.plot(*zip(*done), color="#8c959f", lw=1.2, drawstyle="steps-post", zorder=1)
    for (x, y), s in zip(points, sweeps):
        color = COLORS.get(s.verdict, NO_VERDICT)[0] if s.finished else "#8c959f"
        ax.scatter(x, y, s=60, color=color if s.finished else "white", edgecolors=color,
                   linewidths=1.5, zorder=2)  # fmt: skip
    ax.set_yticks([0, *rows.values()], ["did not finish", *rows], fontsize=9)
    ax.set_ylim(-0.6, len(LABELS) + 0.6)
    ticks = list(range(0, len(sweeps), max(1, len(sweeps) // 6)))
    ax.set_xticks(ticks, [_date(sweeps[i].started, short=True) for i in ticks], fontsize=9)
    ax.set_xlim(-0.5, len(sweeps) - 0.5)
    ax.set_xlabel("sweep (started, UTC)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#eaeef2", lw=0.8)


def _date(seconds: float, short: bool = False) -> str:
    return time.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M", time.gmtime(seconds))


# ---------------------------------------------------------------- the page

STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:#1f2328;font:15px/1.5 system-ui,-apple-system,
 "Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:28px 32px 48px}
h1{font-size:28px;margin:0 0 4px}h2{font-size:22px;margin:0}
h3{font-size:15px;font-weight:600;color:#57606a;margin:22px 0 8px}
.meta{color:#57606a;font-size:13px;margin:0 0 24px}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%;font-size:14px;background:#fff}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#f6f8fa;font-weight:600;color:#57606a;font-size:13px;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:20px 24px;
 margin:0 0 24px}
.head{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.badge{display:inline-block;border-radius:999px;padding:2px 12px;font-weight:700;
 font-size:12px;letter-spacing:.06em;text-transform:uppercase;white-space:nowrap}
.belief{font-size:18px;margin:12px 0 2px}.paper{color:#57606a;margin:0}
.why{margin:12px 0 0;padding:10px 14px;border-left:4px solid #d0d7de;background:#f6f8fa}
.cols{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:28px;align-items:start}
.evidence{display:flex;flex-wrap:wrap;gap:20px 28px;align-items:flex-start}
.evidence>div{flex:1 1 520px;max-width:640px}
.forest{flex:1 1 480px;min-width:0;max-width:720px;margin:0}
.legend{font-size:13px;color:#57606a;margin:-14px 0 20px}.legend .badge{margin:0 4px 0 12px}
img{max-width:100%;height:auto;display:block;margin:0 auto}
.links{margin-top:16px;font-size:14px;color:#57606a}
.links a{margin-right:16px}
.undecided{color:#9a6700}.decided{font-weight:600}.undecided,.decided{white-space:nowrap}
.note{color:#57606a;font-size:12px;margin:6px 0 0}
td a{white-space:nowrap;font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.date{white-space:nowrap;font-variant-numeric:tabular-nums}
details{margin-top:8px;font-size:13px}
pre{white-space:pre-wrap;font-size:12px;background:#f6f8fa;padding:8px;border-radius:6px}
@media (max-width:900px){.cols{grid-template-columns:1fr}}
"""


LEGEND = (
    "<p class=legend>The verdict of a study's latest finished sweep, by the study's own rule "
    "over its deciding comparisons:<span class='badge v-held'>held</span>the data support the "
    "belief<span class='badge v-overturned'>overturned</span>they contradict it"
    "<span class='badge v-undecided'>undecided</span>they do not decide it yet</p>"
)


def render_page(studies: list[StudyBoard], store: str, mlflow_url: str) -> str:
    generated = _date(time.time())
    sweeps = sum(len(s.sweeps) for s in studies)
    kinds = {**COLORS, "none": NO_VERDICT}
    badges = "".join(f".v-{k}{{color:{fg};background:{bg}}}" for k, (fg, bg) in kinds.items())
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>Skeptic board: what we believe and why</title><style>{STYLE}{badges}</style>"
        "</head>"
        "<body><main><h1>What we believe, and why</h1>"
        f"<p class=meta>Skeptic board: {len(studies)} studies, {sweeps} sweeps in "
        f"{html.escape(store)}; generated {generated} UTC. Links open the MLflow UI at "
        f"{_a(mlflow_url, mlflow_url)}.</p>{LEGEND}"
        f"{_overview(studies)}{''.join(_section(s, mlflow_url) for s in studies)}"
        "</main></body></html>\n"
    )


def _a(url: str, text: str) -> str:
    return f'<a href="{html.escape(url)}">{html.escape(text)}</a>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells; the columns in `numeric` right-aligned."""
    th = "".join(f"<th{' class=num' if i in numeric else ''}>{h}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{th}</tr>{body}</table>"


def _badge(sweep: SweepRow | None) -> str:
    """The verdict as a label coloured by what it says (grey: no verdict)."""
    label = sweep.shown if sweep else "no finished sweep"
    kind = label if label in COLORS else "none"
    return f'<span class="badge v-{kind}">{html.escape(label)}</span>'


def _overview(studies: list[StudyBoard]) -> str:
    rows = [
        [_a(f"#{s.name}", s.name), html.escape(s.belief), _badge(s.latest), str(len(s.sweeps)),
         _date(s.sweeps[-1].started)]
        for s in studies
    ]  # fmt: skip
    head = ["study", "belief", "verdict", "sweeps", "last sweep (UTC)"]
    return f"<section class=card>{_table(head, rows, {3, 4})}</section>"


def _section(s: StudyBoard, mlflow_url: str) -> str:
    why, _, rest = s.summary.partition("\n")
    full = f"<details><summary>the verdict in full</summary><pre>{html.escape(s.summary)}</pre>"
    return (
        f'<section class=card id="{html.escape(s.name)}"><div class=head>'
        f"<h2>{html.escape(s.name)}</h2>{_badge(s.latest)}</div>"
        f"<p class=belief>&ldquo;{html.escape(s.belief)}&rdquo;</p>"
        f"<p class=paper>{html.escape(s.paper)}</p>"
        + (f"<p class=why>{html.escape(why)}</p>" if why else "")
        + (f"{full}</details>" if rest else "")
        + f"{_evidence(s)}{_history(s, mlflow_url)}{_links(s, mlflow_url)}</section>"
    )


def _evidence(s: StudyBoard) -> str:
    """The latest finished sweep's comparisons, beside its forest plot."""
    if s.latest is None:
        return "<h3>Evidence</h3><p class=note>No sweep of this study has finished yet.</p>"
    title = f"<h3>Evidence: the latest finished sweep, {html.escape(s.latest.sweep_id)}</h3>"
    plot = (
        f'<img class=forest src="{data_uri(s.forest)}" alt="forest plot of {html.escape(s.name)}">'
        if s.forest else "<p class=note>(the forest plot is not in the store)</p>"
    )  # fmt: skip
    return f"{title}<div class=evidence><div>{_comparison_table(s.comparisons)}</div>{plot}</div>"


def _num(values: dict[str, float], key: str, fmt: str = "+.3g") -> str:
    return format(values[key], fmt) if key in values else ""


def _comparison_table(comparisons: list[Comparison]) -> str:
    if not comparisons:
        return "<p class=note>No comparisons recorded.</p>"
    rows = []
    for c in comparisons:
        v, kind = c.values, "undecided" if c.decision == "undecided" else "decided"
        ci = f"[{_num(v, 'ci_low')}, {_num(v, 'ci_high')}]" if "ci_low" in v else ""
        decision = f"<span class={kind}>{html.escape(c.decision)}</span>"
        rows.append(
            [html.escape(c.name), decision, _num(v, "diff"), ci, _num(v, "p_adjusted", ".3g")]
        )
    head = ["comparison", "decision", "b &minus; a", "95% CI", "p (Holm)"]
    return _table(head, rows, {2, 3, 4}) + (
        "<p class=note>b &minus; a at the sweep's last look, with its 95% confidence interval; "
        "p adjusted across the study's comparisons (Holm). The sweep's report names each "
        "comparison's arms, question and metric.</p>"
    )


def _history(s: StudyBoard, mlflow_url: str) -> str:
    """Every sweep, newest first, beside a plot of how the verdict moved (from 2 sweeps)."""
    rows = [
        [f"<span class=date>{_date(w.started)}</span>",
         _a(run_url(mlflow_url, s.experiment_id, w.run_id), w.sweep_id), _badge(w), w.shown_trials]
        for w in reversed(s.sweeps)
    ]  # fmt: skip
    table = _table(["started (UTC)", "sweep", "verdict", "trials"], rows, {3})
    if len(s.sweeps) < 2:
        return f"<h3>History</h3><div class=cols><div>{table}</div></div>"
    alt = f"verdict history of {html.escape(s.name)}"
    plot = f'<img src="{data_uri(history_plot(s.sweeps))}" alt="{alt}">'
    return f"<h3>History</h3><div class=cols><div>{table}</div>{plot}</div>"


def _links(s: StudyBoard, mlflow_url: str) -> str:
    links = [_a(f"{mlflow_url}/{review.runs_page(s.experiment_id)}", "the experiment")]
    if s.latest:
        url = run_url(mlflow_url, s.experiment_id, s.latest.run_id)
        links.append(_a(url, f"the latest finished sweep's parent run ({s.latest.run_id[:8]})"))
    if s.champion:
        url = model_url(mlflow_url, s.name, s.champion)
        links.append(_a(url, f"the champion: {s.name} version {s.champion}"))
    return f"<div class=links>In MLflow: {''.join(links)}</div>"


def run_url(mlflow_url: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_url}/{review.run_page(experiment_id, run_id)}"


def model_url(mlflow_url: str, name: str, version: str) -> str:
    return f"{mlflow_url}/{review.version_page(urllib.parse.quote(name), version)}"
