"""`skeptic quickstart` end to end, as a newcomer runs it: a real smoke sweep, a real Ray head
with Serve, one real HTTP query, the shutdown. Its own Ray temp dir (RAY_TMPDIR) and HTTP
port keep it apart from any other Ray or server on the machine, and whatever happens the
head it started is stopped."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from serving.control import free_port

# ~90 s on 2 idle cores; a busy machine may take twice that, a hang takes forever.
WITHIN_S = 360
ANSWER = re.compile(r"true label: (\S+); the model's top answer: (\S+) \(p=([0-9.]+)\)")
# Noise a newcomer should never see in the quickstart's output.
UNWANTED = (
    "UserWarning",
    "Controller failed to shut down",
    "Token authentication is enabled",
    "Traceback",
)
PYTHON_WARNING = re.compile(r"\b\w*Warning: .*")  # how `warnings` prints one



def _skeptic(*argv: str, env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "skeptic", *argv], env=env, cwd=cwd, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout


def _procs_mentioning(text: str) -> list[int]:
    """Other processes whose command line or environment contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            files = (Path(f"/proc/{entry}/cmdline"), Path(f"/proc/{entry}/environ"))
            if any(text.encode() in f.read_bytes() for f in files):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _stop_everything(ray_tmp: str, env: dict[str, str], cwd: Path) -> None:
    """The quickstart's own cleanup, again (a no-op when it already ran), then SIGKILL for
    whatever process of this Ray temp dir is still there (the test failed half-way)."""
    try:
        _skeptic("serve", "--shutdown", "all", env=env, cwd=cwd, timeout=120)
    except subprocess.TimeoutExpired:
        pass
    for pid in _procs_mentioning(ray_tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_quickstart_serves_a_model_that_answers_right(tmp_path: Path) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="skq-", dir="/tmp")  # short: Ray's socket paths
    drop = ("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_TRACKING_URI", "SKEPTIC_API_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["RAY_TMPDIR"] = ray_tmp  # its own head, never one already running here
    port = free_port()  # not 8000: another server may have it
    started = time.monotonic()
    try:
        code, out = _skeptic("quickstart", "--port", str(port), env=env, cwd=tmp_path, timeout=900)
        took = time.monotonic() - started
        tail = out[-4000:]
        assert code == 0, f"quickstart exited {code}:\n{tail}"
        answer = ANSWER.search(out)
        assert answer, f"no 'true label: ...' line:\n{tail}"
        truth, top, p = answer.group(1), answer.group(2), float(answer.group(3))
        assert top == truth and p >= 0.6, f"the model said {top} (p={p}) for a {truth}"
        assert (tmp_path / "mlflow.db").exists()  # ./mlflow.db: the default store, here
        for text in UNWANTED:
            assert text not in out, f"{text!r} in the quickstart's output:\n{tail}"
        warned = PYTHON_WARNING.findall(out)  # any other Python warning, e.g. a library's
        assert not warned, f"Python warnings in the quickstart's output: {warned}"
        assert "Stopped the Ray head skeptic serve started" in out
        assert took < WITHIN_S, f"quickstart took {took:.0f}s (bound {WITHIN_S}s)"
        deadline = time.monotonic() + 20  # workers notice their raylet is gone, then exit
        while _procs_mentioning(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _procs_mentioning(ray_tmp), "the quickstart left Ray processes running"
    finally:
        _stop_everything(ray_tmp, env, tmp_path)
