"""The CLI: help on every command, bad input exits 2 before anything starts or is logged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skeptic.cli import build_parser, main


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
        for action in p._actions:
            if action.dest not in ("help",):
                assert action.help, f"{name} {action.dest} has no help"


def test_studies_lists_belief(capsys):
    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    assert "large_batch" in out and "belief:" in out


def test_dry_run_prints_trials_without_starting_ray(capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    was_running = ray.is_initialized()
    assert main(["run", "large_batch", "--dry-run", "--set", "sweep.seeds=2"]) == 0
    out = capsys.readouterr().out
    assert "22 trials = 11 grid points x 2 seeds" in out
    assert '"arm": "SB"' in out
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "nope"], "unknown study 'nope'"),
        (["run", "large_batch", "--set", "sweep.seedz=2"], "sweep.seedz: unknown key"),
        (["run", "large_batch", "--set", "train.batch_size=0"], "train.batch_size"),
        (["run", "large_batch", "--set", "train.lr=-1"], "train.lr"),
        (["run", "large_batch", "--set", "sweep.seeds=abc"], "sweep.seeds"),
        (["run", "large_batch", "--set", "resources.gpu=1"], "no GPU"),
    ],
)
def test_bad_input_exits_2_and_logs_nothing(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_console_script_and_module_entry_points():
    done = subprocess.run(
        [sys.executable, "-m", "skeptic", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "studies" in done.stdout


def test_relative_sqlite_tracking_uri_is_made_absolute(tmp_path, monkeypatch) -> None:
    # Ray workers do not share the driver's working directory: a relative SQLite path would
    # open another (empty) database there.
    from skeptic.store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
