"""Shared fixtures: quiet environment, one local Ray for the whole session, temp MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

# Test-only studies (tests/fixtures/skeptic_test_studies) are found by Ray workers too:
# they inherit this environment when the session's Ray starts.
FIXTURES = str(Path(__file__).parent / "fixtures")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [FIXTURES, os.environ.get("PYTHONPATH")]))
os.environ["SKEPTIC_STUDY_PACKAGES"] = "jobs,skeptic_test_studies"
for key, value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}.items():
    os.environ.setdefault(key, value)

import shutil
import sys
import time

import pytest

sys.path.insert(0, FIXTURES)


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray for every test that needs it (starting Ray costs seconds)."""
    import ray

    from serving.control import fast_ingress_env

    os.environ.update(fast_ingress_env())  # Serve as `skeptic serve` starts it
    # Behind HAProxy a stopped replica drains for 30 s by default: every serving module's
    # teardown would wait that long for no request.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with its artifact folder, all under tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def smoke_sweep(ray_session, tmp_path_factory):
    """`skeptic run STUDY --smoke` once per study per test session, each in a store and folder
    of its own: (tracking URI, folder, seconds it took). The every-study test and a study's
    own tests read the same sweep instead of running it twice."""
    from skeptic.cli import main

    done: dict[str, tuple[str, Path, float]] = {}

    def run(study: str) -> tuple[str, Path, float]:
        if study not in done:
            folder = tmp_path_factory.mktemp(f"smoke-{study}")
            uri = f"sqlite:///{folder / 'mlflow.db'}"
            patch = pytest.MonkeyPatch()
            patch.chdir(folder)
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            started = time.perf_counter()
            try:
                code = main(["run", study, "--smoke", "--storage", str(folder / "runs")])
            finally:
                patch.undo()
            assert code == 0, f"{study} --smoke exited {code}"
            done[study] = (uri, folder, time.perf_counter() - started)
        return done[study]

    return run


# Chromium as root in a sandbox, with nothing that phones home (this machine's network is
# closed: without these flags the browser retries Google's hosts at every start).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """A real headless Chromium driven by Playwright: the system's browser (Playwright's own
    download is not reachable here). Skips, saying why, where either is missing; .ci/run
    installs Debian's chromium."""
    exe = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if exe is None:
        pytest.skip("no Chromium/Chrome binary on PATH (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
