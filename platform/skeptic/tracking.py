"""MLflow bookkeeping on the driver: the sweep's parent run, reproducibility facts,
and a Tune callback that gives every child run a truthful final status."""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from skeptic import provenance
from skeptic.schema import (
    ERROR_CHARS,
    SWEEP,
    TRAINING_EXPERIMENT,
    Artifact,
    Metric,
    MlflowTag,
    Outcome,
    Param,
    Tag,
)
from skeptic.spec import Spec
from skeptic.stats import Judged
from skeptic.store import artifacts_root
from skeptic.study import Study
from skeptic.trial import RUN_ID_RESULT

PACKAGES = ("skeptic", "torch", "ray", "mlflow", "numpy", "timm", "transformers", "scikit-learn")


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment for a study, marked as model training (see `mark_as_training`); on a
    local SQLite store its artifacts go beside the DB."""
    existing = client.get_experiment_by_name(name)
    if existing is None:
        root = artifacts_root(tracking_uri)
        try:
            kind = {MlflowTag.EXPERIMENT_KIND: TRAINING_EXPERIMENT}
            client.create_experiment(name, artifact_location=root and root.as_uri(), tags=kind)
        except MlflowException:  # another sweep created it a moment ago
            pass
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise MlflowException(f"experiment {name} could not be created")
    mark_as_training(client, existing)
    return existing.experiment_id


def mark_as_training(client: MlflowClient, experiment: Any) -> None:
    """MLflow 3's UI opens an experiment without this tag in its GenAI view (traces,
    prompts), where a sweep's runs are hidden. Experiments of older Skeptics, and ones whose
    kind the UI only guessed, are fixed when a sweep next logs there; a kind the user chose
    is left alone."""
    kind = experiment.tags.get(MlflowTag.EXPERIMENT_KIND, "")
    if kind in ("", "no_inferred_type") or kind.endswith("_inferred"):
        client.set_experiment_tag(
            experiment.experiment_id, MlflowTag.EXPERIMENT_KIND, TRAINING_EXPERIMENT
        )


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def start_parent_run(
    client: MlflowClient,
    experiment_id: str,
    sweep_id: str,
    study: Study,
    spec: Spec,
    data_hash: str,
    n_trials: int,
) -> str:
    """Create the sweep's parent run and record everything needed to reproduce it."""
    code = provenance.collect()
    tags = {
        Tag.STUDY: spec.study,
        Tag.SWEEP_ID: sweep_id,
        Tag.KIND: SWEEP,
        Tag.VERSION: code.version,
        Tag.GIT_COMMIT: code.commit,
        Tag.GIT_DIRTY: str(code.dirty).lower(),
        Tag.CODE_SOURCE: code.source,
        Tag.DATA_HASH: data_hash,
        Tag.BELIEF: study.belief,
        Tag.PAPER: study.paper,
    }
    if code.commit != "unknown":
        tags[MlflowTag.GIT_COMMIT] = code.commit
    run_id = client.create_run(experiment_id, run_name=sweep_id, tags=tags).info.run_id
    client.log_param(run_id, Param.N_TRIALS, n_trials)
    client.log_param(run_id, Param.SEEDS, spec.sweep.seeds)
    client.log_param(run_id, Param.SCHEDULER, spec.sweep.scheduler.kind)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            Artifact.SPEC: yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
            Artifact.PACKAGES: yaml.safe_dump(package_versions()),
        }
        if code.diff.strip():
            files[Artifact.DIFF] = code.diff  # Skeptic's own uncommitted changes only
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=Artifact.REPRODUCE)
    return run_id


class FinalizeChildRuns(Callback):
    """Trials the scheduler stopped never reach the end of their trainable, and a crashed
    worker never reaches its `except`: the driver closes such runs so none stays RUNNING."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def _close(self, trial: Any, outcome: Outcome, status: str) -> None:
        run_id = (trial.last_result or {}).get(RUN_ID_RESULT)
        if not run_id:
            return
        client = MlflowClient(self.tracking_uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, Tag.OUTCOME, outcome)
        if trial.error_file and os.path.exists(trial.error_file):
            client.set_tag(run_id, Tag.ERROR, Path(trial.error_file).read_text()[-ERROR_CHARS:])
        client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, Outcome.STOPPED_EARLY, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, Outcome.FAILED, "FAILED")


def close_sweep(
    client: MlflowClient, experiment_id: str, parent_run_id: str, status: str,
    outcome: Outcome = Outcome.INTERRUPTED,
) -> None:  # fmt: skip
    """End the parent run; if the sweep did not finish, end its still-running children as
    KILLED too (with `outcome`), so the dashboard never shows runs that nothing is running.

    The parent is ended first: a trial starting at this moment checks it after opening its
    run (see `trial.run_trial`), so either this search finds that run or the trial sees the
    ended parent and closes the run itself."""
    client.set_terminated(parent_run_id, status)
    if status != "FINISHED":
        running = client.search_runs(
            [experiment_id],
            f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in running:
            client.set_tag(run.info.run_id, Tag.OUTCOME, outcome)
            client.set_terminated(run.info.run_id, "KILLED")


def log_phases(client: MlflowClient, run_id: str, seconds: dict[str, float]) -> None:
    """Where the sweep's wall time went (ray start, data, trials, report, ...), as metrics
    of the parent run: the platform's own overhead, next to the trials' training time."""
    client.log_batch(
        run_id, metrics=[MlflowMetric(Metric.phase(k), v, 0, 0) for k, v in seconds.items()]
    )


def log_looks(
    client: MlflowClient, run_id: str, looks: tuple[int, ...], levels: tuple[float, ...]
) -> None:
    """The seed rule's planned looks and the significance level of each."""
    client.set_tag(run_id, Tag.LOOKS, ",".join(map(str, looks)))
    client.set_tag(run_id, Tag.LEVELS, ",".join(f"{a:.4g}" for a in levels))


def log_look(client: MlflowClient, run_id: str, look: int, seeds: int, judged: list[Judged]) -> None:
    """One look: the seeds per trial, and every comparison judged at it (step = the look)."""
    ts = int(time.time() * 1000)
    metrics = [MlflowMetric(Metric.SEEDS, seeds, ts, look)]
    for j in judged:
        values = {"p": j.p, "p_adjusted": j.p_adjusted, "level": j.level}
        if j.estimate is not None:
            e = j.estimate
            values.update(diff=e.diff, ci_low=e.ci_low, ci_high=e.ci_high, n_a=e.n_a, n_b=e.n_b)
        name = j.compare.name
        metrics += [MlflowMetric(Metric.comparison(name, k), v, ts, look) for k, v in values.items()]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(Tag.ROUND, str(look))])


def log_decisions(client: MlflowClient, run_id: str, judged: list[Judged]) -> None:
    """What the data decide, per deciding comparison, as tags of the parent run."""
    tags = [RunTag(Tag.decision(j.compare.name), str(j.decision)) for j in judged]
    if tags:
        client.log_batch(run_id, tags=tags)


def set_active_uri(uri: str) -> None:
    """The fluent API (used by model logging) must point at the same store as the client."""
    mlflow.set_tracking_uri(uri)
