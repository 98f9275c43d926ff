"""Multi-worker trials: `resources.workers: 2` runs each Tune trial as a Ray Train DDP run
(gloo on CPU) on the shared test Ray. One MLflow child run per trial, per-epoch metrics from
rank 0, a checkpoint and a champion; a killed worker resumes from the last checkpoint; and
the global batch split across workers trains the model a single process would."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from skeptic.cli import main
from skeptic.schema import CHAMPION

pytestmark = pytest.mark.slow


def _trial_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ddp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, metric))


def _run(tmp_path, name: str, *sets: str) -> str:
    uri = f"sqlite:///{tmp_path / name}.db"
    args = ["run", "ddp", "--storage", str(tmp_path / name), "--tracking-uri", uri]
    for assignment in sets:
        args += ["--set", assignment]
    assert main(args) == 0
    return uri


def test_two_worker_trial_survives_a_killed_worker_and_trains_as_one_process(
    ray_session, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    ddp = _run(
        tmp_path, "ddp", "resources.workers=2", "train.epochs=4", "train.crash_at_epoch=2",
        f"train.markers={markers}",
    )  # fmt: skip
    (run,) = _trial_runs(ddp)  # one run per trial, not per worker
    assert run.info.status == "FINISHED" and run.data.tags["skeptic.outcome"] == "completed"
    assert run.data.params["seed"] == "0"
    # rank 1 killed itself at epoch 2; Train restarted both workers from epoch 1's checkpoint
    for rank in (0, 1):
        assert (markers / f"r{rank}-s0.starts").read_text().split() == ["0", "2"]
    losses = _history(ddp, run.info.run_id, "val_loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3]  # every epoch logged once, by rank 0

    client = MlflowClient(ddp)
    champion = client.get_model_version_by_alias("ddp", CHAMPION)
    assert champion.run_id == run.info.run_id

    one = _run(tmp_path, "one", "train.epochs=4")
    (single,) = _trial_runs(one)
    expected = _history(one, single.info.run_id, "val_loss")
    # DDP averages the two half-batch gradients: the whole global batch's gradient
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-4)
    assert expected[-1][1] < expected[0][1]  # and the model does learn
