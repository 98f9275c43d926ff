"""Results survive crashes: a killed trial worker resumes from its checkpoint in the same
MLflow run, and a killed driver's sweep is finished by `skeptic resume`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from skeptic.cli import main

pytestmark = pytest.mark.slow


def _children(uri: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("flaky")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _steps(uri: str, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "score")]


def test_crashed_trial_resumes_from_its_checkpoint_in_the_same_run(ray_session, mlflow_store, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    args = ["run", "flaky", "--storage", str(tmp_path / "runs"), "--set", "sweep.max_failures=2",
            "--set", "train.crash_at_epoch=2", "--set", f"train.markers={markers}",
            "--set", "sweep.space.width.grid=[3]"]  # fmt: skip
    assert main(args) == 0
    parents, children = _children(mlflow_store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags["skeptic.outcome"] == "completed"
    assert (markers / "w3-s0.starts").read_text().split() == ["0", "2"]  # crashed, resumed at 2
    assert _steps(mlflow_store, run.info.run_id) == [0, 1, 2, 3]  # every epoch logged once


def test_killed_driver_then_resume_finishes_only_unfinished_trials(ray_session, mlflow_store, tmp_path):
    markers, storage = tmp_path / "markers", tmp_path / "runs"
    markers.mkdir()
    MlflowClient(mlflow_store).search_experiments()  # create the store before two processes use it
    cmd = [sys.executable, "-m", "skeptic", "run", "flaky", "--storage", str(storage),
           "--set", "train.epoch_seconds=1.0", "--set", f"train.markers={markers}",
           "--set", "sweep.max_concurrent_trials=1", "--set", "resources.cpu=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_one_completed_trial(mlflow_store, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, all at once
        proc.wait()
        _kill_ray_of(proc.pid)
    parents, children = _children(mlflow_store)
    done_before = {r.info.run_name for r in children if r.data.tags.get("skeptic.outcome") == "completed"}
    assert 1 <= len(done_before) < 3
    sweep_id = parents[0].info.run_name

    assert main(["resume", sweep_id, "--storage", str(storage)]) == 0

    parents, children = _children(mlflow_store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["skeptic.verdict"] == "undecided"
    assert len(children) == 3  # no duplicate runs
    for run in children:
        assert run.info.status == "FINISHED", run.info.run_name
        assert _steps(mlflow_store, run.info.run_id) == [0, 1, 2, 3]
    for name in done_before:  # finished trials were not run again
        width = name.split("-")[0].removeprefix("width")
        assert (markers / f"w{width}-s0.starts").read_text().split() == ["0"]
    versions = MlflowClient(mlflow_store).search_model_versions("name = 'flaky'")
    assert len(versions) == 1  # champion registered once


def _wait_for_one_completed_trial(uri: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        _, children = _children(uri)
        if any(r.data.tags.get("skeptic.outcome") == "completed" for r in children):
            return
        time.sleep(0.5)
    raise AssertionError("no trial completed in time")


def _kill_ray_of(driver_pid: int) -> None:
    """Ray's agents can outlive a SIGKILLed driver and ignore SIGTERM: end every process of
    the Ray session that driver started (its session folder name ends with the driver's pid)."""
    session = re.compile(rf"session_[0-9_-]+_{driver_pid}\b")
    out = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines()[1:]:
        pid, sid, args = line.split(None, 2)
        if int(sid) == driver_pid or session.search(args):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
