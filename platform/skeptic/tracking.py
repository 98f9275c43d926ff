"""MLflow bookkeeping on the driver: the sweep's parent run, reproducibility facts,
and a Tune callback that gives every child run a truthful final status."""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from skeptic import provenance
from skeptic.spec import Spec
from skeptic.store import artifacts_root

PACKAGES = ("skeptic", "torch", "ray", "mlflow", "numpy", "timm", "transformers", "scikit-learn")


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment for a study; on a local SQLite store its artifacts go beside the DB."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = artifacts_root(tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=root and root.as_uri())
    except MlflowException:  # another sweep created it a moment ago
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


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
    spec: Spec,
    data_hash: str,
    n_trials: int,
) -> str:
    """Create the sweep's parent run and record everything needed to reproduce it."""
    code = provenance.collect()
    tags = {
        "skeptic.study": spec.study,
        "skeptic.sweep_id": sweep_id,
        "skeptic.kind": "sweep",
        "skeptic.version": code.version,
        "skeptic.git_commit": code.commit,
        "skeptic.git_dirty": str(code.dirty).lower(),
        "skeptic.code_source": code.source,
        "skeptic.data_hash": data_hash,
    }
    if code.commit != "unknown":
        tags["mlflow.source.git.commit"] = code.commit
    run = client.create_run(experiment_id, run_name=sweep_id, tags=tags)
    run_id = run.info.run_id
    client.log_param(run_id, "n_trials", n_trials)
    client.log_param(run_id, "seeds", spec.sweep.seeds)
    client.log_param(run_id, "scheduler", spec.sweep.scheduler.kind)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "spec.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
            "packages.yaml": yaml.safe_dump(package_versions()),
        }
        if code.diff.strip():
            files["skeptic.diff"] = code.diff  # Skeptic's own uncommitted changes only
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            client.log_artifact(run_id, str(Path(tmp) / name), artifact_path="reproduce")
    return run_id


class FinalizeChildRuns(Callback):
    """Trials the scheduler stopped never reach the end of their trainable, and a crashed
    worker never reaches its `except`: the driver closes such runs so none stays RUNNING."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def _close(self, trial, outcome: str, status: str) -> None:
        run_id = (trial.last_result or {}).get("skeptic_run_id")
        if not run_id:
            return
        client = MlflowClient(self.tracking_uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "skeptic.outcome", outcome)
        if trial.error_file and os.path.exists(trial.error_file):
            client.set_tag(run_id, "skeptic.error", Path(trial.error_file).read_text()[-5000:])
        client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "stopped_early", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "failed", "FAILED")


def close_sweep(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the parent run; if the sweep did not finish, end its still-running children as
    KILLED too, so the dashboard never shows runs that nothing is running.

    The parent is ended first: a trial starting at this moment checks it after opening its
    run (see `trial.run_trial`), so either this search finds that run or the trial sees the
    ended parent and closes the run itself."""
    client.set_terminated(parent_run_id, status)
    if status != "FINISHED":
        running = client.search_runs(
            [experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in running:
            client.set_tag(run.info.run_id, "skeptic.outcome", "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")


def set_active_uri(uri: str) -> None:
    """The fluent API (used by model logging) must point at the same store as the client."""
    mlflow.set_tracking_uri(uri)
