"""One MLflow store, many sweeps: concurrent sweeps into a new SQLite file all succeed, and
the `champion` alias moves only to a trial at least as good as the current champion
(unless --register latest), saying which."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from skeptic.cli import main

pytestmark = pytest.mark.slow


def _flaky(*sets: str) -> list[str]:
    args = ["run", "flaky"]
    for assignment in ("train.epochs=1", *sets):
        args += ["--set", assignment]
    return args


def test_a_report_shows_the_store_without_this_machines_paths(tmp_path, monkeypatch):
    from skeptic.store import shown_uri

    monkeypatch.chdir(tmp_path)
    assert shown_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}") == "sqlite:///runs/mlflow.db"
    assert shown_uri("sqlite:////elsewhere/deep/mlflow.db") == "sqlite:///.../mlflow.db"
    assert shown_uri("https://user:secret@mlflow.example:5000") == "https://mlflow.example:5000"
    assert shown_uri("databricks") == "databricks"


def test_a_reports_command_shows_paths_under_the_working_directory_relative(tmp_path, monkeypatch):
    from skeptic.report import shown_command

    monkeypatch.chdir(tmp_path)
    given = f"skeptic run pruning --storage {tmp_path}/runs --set data.path={tmp_path} --set x=/opt/d"
    assert shown_command(given) == "skeptic run pruning --storage runs --set data.path=. --set x=/opt/d"


def test_two_sweeps_at_once_into_a_new_sqlite_store_both_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "skeptic", *_flaky(), "--tracking-uri", uri,
             "--storage", str(tmp_path / f"runs{i}"), "--set", "resources.cpu=1"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("flaky")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    assert sorted(p.info.status for p in parents) == ["FINISHED", "FINISHED"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    assert len(client.search_model_versions("name = 'flaky'")) == 2


def test_the_champion_moves_only_to_a_better_trial_unless_asked(
    ray_session, mlflow_store, capsys
):
    client = MlflowClient(mlflow_store)

    def champion() -> str:
        return str(client.get_model_version_by_alias("flaky", "champion").version)

    assert main(_flaky("sweep.space.width.grid=[8]")) == 0  # score 8.0
    assert champion() == "1"
    out = capsys.readouterr().out
    assert "champion is now version 1 (the first champion)" in out
    sweep_id = re.search(r"sweep (\S+): 1 trials", out).group(1)
    assert main(["resume", sweep_id]) == 0  # judged again: registered once all the same
    assert len(client.search_model_versions("name = 'flaky'")) == 1
    assert "registered by this sweep before" in capsys.readouterr().out

    assert main(_flaky("sweep.space.width.grid=[2]")) == 0  # score 2.0: worse
    out = capsys.readouterr().out
    assert champion() == "1"
    assert "registered as models:/flaky/2; the champion stays version 1" in out
    assert "score 2 vs 8 of version 1" in out

    assert main([*_flaky("sweep.space.width.grid=[2]"), "--register", "latest"]) == 0
    assert champion() == "3"
    assert "--register latest (was version 1)" in capsys.readouterr().out

    assert main(_flaky("sweep.space.width.grid=[4]")) == 0  # 4.0 beats version 3's 2.0
    assert champion() == "4"
    assert client.get_model_version("flaky", "4").tags["skeptic.score"] == "4"
