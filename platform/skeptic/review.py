"""What a reviewer reads in the MLflow UI without opening an artifact: the sweep's verdict and
its evidence as the parent run's description, and what the champion version is, as its own.

Links are relative to the UI (its hash routes), so they work behind any host. MLflow 3.17's
UI shows an experiment in its GenAI view (traces, prompts) whenever the browser's global
"workflow" switch says so, which it does by default, whatever the experiment's kind: every
link Skeptic writes names the model-training view instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from skeptic.report import FOREST, split_of
from skeptic.schema import Artifact, Metric, Param, Tag
from skeptic.stats import Judged, margin_text
from skeptic.study import Study, Verdict

TRAINING_VIEW = "workflowType=machine_learning"
VIEW_KEY = "skeptic"  # the runs list's shared view (see `runs_view`)
SPLITS = {"val": "validation", "test": "test", "train": "training"}


def runs_page(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{TRAINING_VIEW}"


def run_page(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def artifact_page(experiment_id: str, run_id: str, path: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{TRAINING_VIEW}"


def version_page(model: str, version: str) -> str:
    return f"#/models/{model}/versions/{version}?{TRAINING_VIEW}"


def split_name(metric: str) -> str:
    """The split a metric was measured on, in words (val_acc -> validation)."""
    split = split_of(metric)
    return SPLITS.get(split, split)


def runs_view(study: Study, judged: list[Judged]) -> str:
    """The runs list as a reviewer wants it first (the UI's shared-view format, kept in the
    experiment tag `MlflowTag.SHARED_VIEW + VIEW_KEY`): the verdict and, per deciding
    comparison, its decision and estimate on the parent run; each trial's arm, seed and
    metrics beside it."""
    deciding = [j.compare.name for j in judged if j.compare.deciding]
    tags = [Tag.VERDICT, *(Tag.decision(name) for name in deciding)]
    metrics = [*(Metric.comparison(name, "diff") for name in deciding)]
    metrics += [study.report_metric, study.metric]
    columns = [f"tags.`{t}`" for t in tags] + [f"metrics.`{m}`" for m in metrics]
    columns += [f"params.`{p}`" for p in (Param.ARM, Param.SEED)]
    return json.dumps({
        "selectedColumns": columns, "searchFilter": "", "orderByKey": "attributes.start_time",
        "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active",
        "datasetsFilter": [], "modelVersionFilter": "All Runs",
    })  # fmt: skip


@dataclass(frozen=True)
class SweepRef:
    """Where a sweep lives in the tracking store."""

    sweep_id: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class SweepFacts:
    """What the description says about the sweep beside its verdict."""

    sweep: SweepRef
    trials: int
    seeds: int  # distinct seeds among its trials
    started_ms: int  # the parent run's start (MLflow's milliseconds)
    champion: str | None  # the version this sweep registered, if any


def sweep_description(study: Study, verdict: Verdict, facts: SweepFacts) -> str:
    """The parent run's description (Markdown): label, belief, paper, the reason, one table
    row per comparison, the size and duration of the sweep, links to report and champion."""
    e, r = facts.sweep.experiment_id, facts.sweep.parent_run_id
    report = f"{Artifact.REPORT}/report.html"
    links = [
        f"[report]({artifact_page(e, r, report)})",
        f"[forest plot]({artifact_page(e, r, f'{Artifact.REPORT}/{FOREST}.png')})",
    ]
    if facts.champion:
        links.append(f"champion: [{study.name} version {facts.champion}]"
                     f"({version_page(study.name, facts.champion)})")  # fmt: skip
    started, judged = _utc(facts.started_ms / 1000), _utc(time.time())
    split = split_name(study.report_metric)
    size = (
        f"{facts.trials} trials over {facts.seeds} seeds; started {started}, judged {judged}. "
        "Choices (learning rates, epochs, the champion) were made on validation data; the "
        f"comparisons are on the **{split}** split."
    )
    # The UI folds a description after a few lines: the verdict and its numbers come first.
    return "\n".join([
        f"**The belief {verdict.label.upper()}**: {verdict.reason}",
        "",
        comparisons_table(verdict.comparisons, study.report_metric),
        "",
        f"**Belief:** {study.belief}  ",
        f"**Paper:** {study.paper}",
        "",
        size,
        "",
        " · ".join(links),
    ])  # fmt: skip


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def comparisons_table(judged: list[Judged], metric: str) -> str:
    """Every comparison in one Markdown table: estimate, 95% CI, p (Holm), decision."""
    lines = [
        f"| comparison | question | b − a ({metric}) | 95% CI | p (Holm) | decision |",
        "|---|---|---|---|---|---|",
    ]
    for j in judged:
        c, est = j.compare, j.estimate
        question = c.question + margin_text(c) + ("" if c.deciding else " (reported)")
        diff = f"{est.diff:+.4g}" if est else "–"
        ci = f"[{est.ci_low:+.4g}, {est.ci_high:+.4g}]" if est else "–"
        lines.append(
            f"| {c.name} | {question} | {diff} | {ci} | {j.p_adjusted:.3g} | **{j.decision}** |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Champion:
    """What a registered version is: where it came from and how it was chosen."""

    sweep: SweepRef
    verdict: str  # the sweep's verdict label at registration
    metric: str  # the selection metric (a validation metric)
    score: float | None
    params: dict[str, Any]  # the trial's, with its seed (and arm)


def version_description(study: Study, champion: Champion) -> str:
    """The model version's description (Markdown)."""
    c, s = champion, champion.sweep
    score = "n/a" if c.score is None else f"{c.score:.4g}"
    params = ", ".join(f"`{k}={v}`" for k, v in c.params.items())
    sweep = run_page(s.experiment_id, s.parent_run_id)
    return "\n".join([
        f"**{study.name}**: the best trial of sweep [{s.sweep_id}]({sweep})",
        "",
        f"- verdict of that sweep at registration: **{c.verdict}**",
        f"- chosen by: {c.metric} = {score}, on the {split_name(c.metric)} split",
        f"- trial parameters: {params}",
        f"- belief under test: {study.belief}",
    ])  # fmt: skip
