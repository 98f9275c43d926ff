"""Seeds until decided, end to end on the shared test Ray: a clear effect stops the rule
early, the extra seeds go only to the undecided comparison's trials, every look is on the
parent run, a null effect ends undecided with a hint; a test metric never chooses."""

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
from skeptic.schema import Metric, MlflowTag, Tag

pytestmark = pytest.mark.slow
RULE = "sweep.seeds={min: 2, max: 8, step: 2}"


def _runs(uri: str) -> tuple[object, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("effect")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "sweep")
    return parent, [r for r in runs if r.data.tags.get(MlflowTag.PARENT_RUN_ID)]


def test_a_clear_effect_stops_early_and_only_the_undecided_get_more_seeds(
    ray_session, mlflow_store, tmp_path, capsys
):
    # b is 5 noise-sds above a (decided at an early look), c is level with a (never decided)
    argv = ["run", "effect", "--set", RULE, "--set", "train.effect=5", "--set", "train.effect_c=0",
            "--storage", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    parent, trials = _runs(mlflow_store)
    assert parent.data.tags[Tag.decision("b_vs_a")] == "b better"
    assert parent.data.tags[Tag.decision("c_vs_a")] == "undecided"
    assert parent.data.tags[Tag.LOOKS] == "2,4,6,8"
    seeds = {side: sorted(int(t.data.params["seed"]) for t in trials if t.data.params["side"] == side)
             for side in "abc"}  # fmt: skip
    assert seeds["a"] == seeds["c"] == list(range(8))  # c_vs_a stayed open to the last look
    assert len(seeds["b"]) < 8  # b's seeds stopped once b_vs_a was decided
    client = MlflowClient(mlflow_store)
    history = client.get_metric_history(parent.info.run_id, Metric.SEEDS)
    assert [int(m.value) for m in sorted(history, key=lambda m: m.step)] == [2, 4, 6, 8]
    diffs = client.get_metric_history(parent.info.run_id, Metric.comparison("b_vs_a", "diff"))
    assert len(diffs) == len(seeds["b"]) // 2  # judged at every look until it was decided
    assert "verdict: the belief HELD" in out
    assert re.search(r"c_vs_a: .* -> undecided; (about \d+ seeds per arm|no visible effect)", out)
    report = next((tmp_path / "runs" / "effect").glob("*/report/report.md")).read_text()
    assert "## Deciding comparisons" in report and "comparisons.png" in report


def test_a_null_effect_runs_to_the_last_look_and_ends_undecided(
    ray_session, mlflow_store, tmp_path, capsys
):
    argv = ["run", "effect", "--set", "sweep.seeds={min: 2, max: 4, step: 2}",
            "--set", "train.effect=0", "--set", "sweep.space.side.grid=[a, b]",
            "--storage", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    parent, trials = _runs(mlflow_store)
    assert parent.data.tags[Tag.VERDICT] == "undecided"
    assert len(trials) == 2 * 4  # both sides, every look
    assert "b_vs_a" in out and "undecided" in out
    # c_vs_a has no trials in this sweep: undecided, and it did not ask for more seeds
    assert parent.data.tags[Tag.decision("c_vs_a")] == "undecided"


def test_a_test_metric_never_chooses(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "effect", "--set", "sweep.metric=test_score", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skeptic: error: sweep.metric: 'test_score' is measured on the test split")
    assert list(tmp_path.iterdir()) == []


def test_a_stopped_sequential_sweep_resumes_at_the_look_it_was_in(
    ray_session, mlflow_store, tmp_path
):
    MlflowClient(mlflow_store).search_experiments()  # one process creates the store
    cmd = [sys.executable, "-m", "skeptic", "run", "effect", "--set", "sweep.seeds={min: 2, max: 6, step: 2}",
           "--set", "train.effect=0", "--set", "train.seconds=1.5", "--set", "sweep.space.side.grid=[a, b]",
           "--storage", str(tmp_path / "runs")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(t.data.tags.get(Tag.ROUND) == "1" for t in _runs_or_none(mlflow_store)):
                break  # the second look's trials are running
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err
    sweep_id = re.search(r"skeptic resume (\S+)", err).group(1)

    assert main(["resume", sweep_id, "--storage", str(tmp_path / "runs")]) == 0
    parent, trials = _runs(mlflow_store)
    assert parent.info.status == "FINISHED" and parent.data.tags[Tag.VERDICT] == "undecided"
    keys = sorted((t.data.params["side"], int(t.data.params["seed"])) for t in trials)
    assert keys == [(side, seed) for side in "ab" for seed in range(6)]  # no duplicates
    assert {t.data.tags[Tag.ROUND] for t in trials} == {"0", "1", "2"}


def _runs_or_none(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("effect")
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(MlflowTag.PARENT_RUN_ID)]
