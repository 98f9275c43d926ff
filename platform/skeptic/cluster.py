"""Submit `skeptic run` to a Ray cluster as a Ray job, and manage those jobs.

The job ships its own code: the core package as a `py_module`, and a small staged
working_dir holding `jobs/`, `serving/` and the fully resolved spec, so nothing
large (.git, venvs, data, runs) is uploaded and the cluster runs exactly what was
validated here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from skeptic.spec import Spec, SpecError

SPEC_NAME = "skeptic-spec.yaml"
STAGED_PACKAGES = ("jobs", "serving")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def cluster_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS, as Ray's own CLI does."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SpecError(
            "--address: give the cluster's dashboard address (http://HEAD:8265) or set RAY_ADDRESS"
        )
    return address


def job_client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    address = cluster_address(address)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SpecError(f"--address: cannot reach the Ray cluster at {address}: {err}") from None


def check_tracking_server(uri: str) -> None:
    """Fail now, not after an hour, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            if answer.status == 200:
                return
    except (urllib.error.URLError, OSError) as err:
        raise SpecError(
            f"--tracking-uri: the MLflow server at {uri} is unreachable: {err}"
        ) from None
    raise SpecError(f"--tracking-uri: the MLflow server at {uri} is not healthy")


def _package_dir(name: str) -> Path:
    import importlib

    return Path(importlib.import_module(name).__file__).parent


def stage(spec: Spec, folder: Path) -> None:
    """The job's working_dir: the study and serving packages, and the resolved spec."""
    for name in STAGED_PACKAGES:
        shutil.copytree(_package_dir(name), folder / name, ignore=IGNORED)
    (folder / SPEC_NAME).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def submit(
    spec: Spec, *, address: str | None, tracking_uri: str, storage: str | None, verbose: bool
) -> str:
    check_tracking_server(tracking_uri)
    client = job_client(address)
    # The job's working_dir is temporary: results default to the head's home directory.
    entrypoint = (
        f"python -m skeptic run {spec.study} --spec {SPEC_NAME} --tracking-uri {tracking_uri}"
        f" --storage {storage or '$HOME/skeptic-runs'}"
    )
    if verbose:
        entrypoint += " --verbose"
    with tempfile.TemporaryDirectory(prefix="skeptic-job-") as tmp:
        stage(spec, Path(tmp))
        runtime_env = {
            "working_dir": tmp,
            "py_modules": [str(_package_dir("skeptic"))],
            "excludes": ["__pycache__"],
            "env_vars": {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "RAY_USAGE_STATS_ENABLED": "0",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            },
        }
        return _submit_with_retry(client, entrypoint, runtime_env)


def _submit_with_retry(client: Any, entrypoint: str, runtime_env: dict, wait_s: float = 60) -> str:
    """A head that has just started answers 'No available agent' for a few seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _info(client: Any, job_id: str) -> Any:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:
        raise SpecError(f"job {job_id!r}: unknown on this cluster ({err})") from None


def job_status(address: str | None, job_id: str) -> Any:
    return _info(job_client(address), job_id)


def list_jobs(address: str | None) -> list[Any]:
    return sorted(job_client(address).list_jobs(), key=lambda j: j.start_time or 0)


def job_logs(address: str | None, job_id: str, follow: bool) -> None:
    client = job_client(address)
    _info(client, job_id)
    if not follow:
        print(client.get_job_logs(job_id), end="")
        return
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())


def stop_job(address: str | None, job_id: str, timeout_s: float = 60) -> str:
    """Stop a job and wait until it has ended; return its final status."""
    client = job_client(address)
    _info(client, job_id)
    client.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        if status in TERMINAL:
            return status
        time.sleep(1)
    return str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
