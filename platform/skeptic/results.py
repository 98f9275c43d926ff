"""Read a sweep's trials back: from Tune's results (history, checkpoint) and MLflow's runs
(parameters, outcome), as the TrialResults a verdict judges."""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

from skeptic.record import SweepRecord
from skeptic.schema import ENDED, MlflowTag, Outcome, Tag
from skeptic.study import SweepFailed, TrialResult


def trial_runs(client: MlflowClient, record: SweepRecord) -> list[Any]:
    """The sweep's trial runs in MLflow (its stage runs are children too, tagged apart)."""
    runs = client.search_runs(
        [record.experiment_id],
        f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{record.parent_run_id}'",
        max_results=10_000,
    )
    return [r for r in runs if Tag.STAGE not in r.data.tags]


def count_ended(client: MlflowClient, record: SweepRecord) -> int:
    """Trials that ended for good (completed, stopped early, failed)."""
    return sum(r.data.tags.get(Tag.OUTCOME) in ENDED for r in trial_runs(client, record))


def check_judgeable(grid: Any, client: MlflowClient, record: SweepRecord, total: int) -> None:
    """Judge only a whole round (Tune can return with trials it never started) with at
    least one trial that did not fail."""
    ids = {result.metrics.get("trial_id") for result in grid}
    ended = sum(
        r.data.tags.get(Tag.TRIAL_ID) in ids and r.data.tags.get(Tag.OUTCOME) in ENDED
        for r in trial_runs(client, record)
    )
    if len(grid) < total or ended < total:
        raise SweepFailed(
            f"only {ended} of {total} trials finished; continue with: {record.resume_command()}"
        )
    if all(r.error for r in grid):
        raise SweepFailed(f"every trial failed; first error: {grid[0].error}")


def collect(
    grid: Any, client: MlflowClient, record: SweepRecord
) -> list[tuple[TrialResult, Any]]:
    """Each trial's result (with its Tune result, which holds the checkpoint): history from
    Tune, parameters and outcome as its MLflow run records them."""
    by_trial = {r.data.tags.get(Tag.TRIAL_ID): r for r in trial_runs(client, record)}
    collected = []
    for result in grid:
        trial_id = result.metrics.get("trial_id")
        run = by_trial.get(trial_id)
        history = []
        if result.metrics_dataframe is not None:
            history = result.metrics_dataframe.select_dtypes("number").to_dict("records")
        params = {k: _parse(v) for k, v in (run.data.params if run else {}).items()}
        recorded = run.data.tags.get(Tag.OUTCOME) if run else None
        outcome = Outcome(recorded) if recorded else Outcome.FAILED
        run_id = run.info.run_id if run else None
        collected.append((TrialResult(trial_id, params, history, outcome, run_id), result))
    return collected


def _parse(text: str) -> Any:
    """A logged param back as a value: MLflow stores every param as a string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return {"None": None, "True": True, "False": False}.get(text, text)
