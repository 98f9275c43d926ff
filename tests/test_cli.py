"""The CLI: help on every command, bad input exits 2 before anything starts or is logged."""

from __future__ import annotations

import os
import re
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
    trials, points = map(int, re.search(r"(\d+) trials = (\d+) grid points x 2 seeds", out).groups())
    assert trials == 2 * points > 0
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


USER_ERRORS = [
    (["resume", "no-such-sweep"], "sweep 'no-such-sweep'"),
    (["submit", "large_batch", "--smoke"], "--address"),
    (["jobs", "--address", "not an address"], "--address"),
    (["status", "some-job"], "--address"),
    (["logs", "some-job", "--address", "http://127.0.0.1:1"], "--address"),
    (["stop", "some-job", "--address", "http://127.0.0.1:1"], "--address"),
    (["serve", "large_batch@champion"], "--tracking-uri"),  # no store here yet
    (["query", "large_batch", "missing.png"], "image not found"),
    (["ui", "--tracking-uri", "bogus://x"], "--tracking-uri"),
    (["run", "large_batch", "--smoke", "--tracking-uri", "bogus://x"], "--tracking-uri"),
    (["run", "large_batch", "--smoke", "--tracking-uri", "http://127.0.0.1:1"], "unreachable"),
]


@pytest.fixture
def environment_kept():
    """Commands set Ray's client environment in os.environ (serve does): undo it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(("argv", "named"), USER_ERRORS, ids=[a[0] for a, _ in USER_ERRORS])
def test_a_user_error_is_one_line_and_exit_2_in_every_command(
    argv, named, capsys, tmp_path, monkeypatch, environment_kept
):
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SKEPTIC_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skeptic: error: ") and named in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_skeptic_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKEPTIC_DEBUG", "1")
    assert main(["run", "large_batch", "--smoke", "--tracking-uri", "bogus://x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "skeptic: error:" in err
