"""Ctrl-C and SIGTERM stop a running `skeptic run` cleanly: no verdict, no champion, no run
left RUNNING, exit 130 / 143 with one line naming the resume command; `skeptic resume`
then judges the whole sweep and registers its best trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from skeptic.cli import main

pytestmark = pytest.mark.slow
RESUME = re.compile(r"continue with: skeptic resume (\S+) --storage (\S+)$")


def _runs(uri: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("flaky")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _start(tmp_path: Path, seeds: int = 2) -> subprocess.Popen:
    """`skeptic run flaky` (3 widths x seeds trials of 4 half-second epochs), in its own
    process group as a terminal would start it."""
    cmd = [sys.executable, "-m", "skeptic", "run", "flaky", "--storage", str(tmp_path / "runs"),
           "--set", "train.epoch_seconds=0.5", "--set", f"sweep.seeds={seeds}",
           "--set", "sweep.max_concurrent_trials=2"]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_until(uri: str, proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        if ready(_runs(uri)[1]):
            return
        time.sleep(0.3)
    raise AssertionError("the sweep never reached the point to interrupt it")


def _one_completed(children: list) -> bool:
    return any(r.data.tags.get("skeptic.outcome") == "completed" for r in children)


def _one_running(children: list) -> bool:
    return any(r.info.status == "RUNNING" for r in children)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc.pid)
    return proc.returncode, err


def _kill_group(pgid: int) -> None:
    """Whatever the stopped driver left of its Ray (normally nothing)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _assert_stopped_cleanly(uri: str, rc: int, err: str, expected_rc: int, signame: str) -> None:
    assert rc == expected_rc, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"skeptic: interrupted by {signame}: "), last
    assert RESUME.search(last), last
    parents, children = _runs(uri)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "skeptic.verdict" not in parents[0].data.tags  # no verdict from a partial sweep
    for run in children:
        assert run.info.status != "RUNNING", run.info.run_name
        outcome = run.data.tags.get("skeptic.outcome")
        assert outcome in ("completed", "interrupted"), (run.info.run_name, outcome)
    assert MlflowClient(uri).search_registered_models() == []  # no champion


def test_ctrl_c_to_the_process_group_stops_cleanly_and_resume_registers_the_best(
    ray_session, mlflow_store, tmp_path
):
    MlflowClient(mlflow_store).search_experiments()  # one process creates the store's tables
    proc = _start(tmp_path)
    try:
        _wait_until(mlflow_store, proc, _one_completed)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    finally:
        rc, err = _finish(proc)
    _assert_stopped_cleanly(mlflow_store, rc, err, 130, "SIGINT")
    finished = int(re.search(r": (\d+) of 6 trials finished", err).group(1))
    assert 1 <= finished < 6
    sweep_id, storage = RESUME.search(err.strip().splitlines()[-1]).groups()

    assert main(["resume", sweep_id, "--storage", storage]) == 0

    parents, children = _runs(mlflow_store)
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["skeptic.verdict"]
    assert len(children) == 6  # the interrupted trials were continued, not duplicated
    assert all(r.info.status == "FINISHED" for r in children)
    client = MlflowClient(mlflow_store)
    versions = client.search_model_versions("name = 'flaky'")
    assert len(versions) == 1  # one champion, from the completed sweep
    champion = client.get_model_version_by_alias("flaky", "champion")
    best = max(client.get_metric_history(r.info.run_id, "score")[-1].value for r in children)
    scores = client.get_metric_history(champion.run_id, "score")
    assert scores[-1].value == best


def test_sigterm_exits_143_with_one_line_and_no_traceback(ray_session, mlflow_store, tmp_path):
    MlflowClient(mlflow_store).search_experiments()
    proc = _start(tmp_path, seeds=1)
    try:
        _wait_until(mlflow_store, proc, _one_running)
        proc.send_signal(signal.SIGTERM)  # what `ray job stop` and Kubernetes send
    finally:
        rc, err = _finish(proc)
    _assert_stopped_cleanly(mlflow_store, rc, err, 143, "SIGTERM")


def test_a_second_ctrl_c_quits_at_once_and_leaves_nothing_running(
    ray_session, mlflow_store, tmp_path
):
    MlflowClient(mlflow_store).search_experiments()
    proc = _start(tmp_path, seeds=1)
    try:
        _wait_until(mlflow_store, proc, _one_running)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        started = time.monotonic()
    finally:
        rc, err = _finish(proc)
    assert time.monotonic() - started < 15
    assert rc == 130, err
    assert "Traceback" not in err, err
    parents, children = _runs(mlflow_store)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert all(r.info.status != "RUNNING" for r in children)
    assert MlflowClient(mlflow_store).search_registered_models() == []
