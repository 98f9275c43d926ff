"""Submit `skeptic run` to a Ray cluster as a Ray job, and manage those jobs.

The job ships its own code: the core package as a `py_module`, and a small staged
working_dir holding `jobs/`, `serving/` and the fully resolved spec, so nothing
large (.git, venvs, data, runs) is uploaded and the cluster runs exactly what was
validated here.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from skeptic import provenance, store
from skeptic.spec import Spec, SpecError

SPEC_NAME = "skeptic-spec.yaml"
PROVENANCE_NAME = "skeptic-provenance.json"
DEFAULT_JOB_STORAGE = "$HOME/skeptic-runs"  # expanded by the job's shell on the head
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a job's driver
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
    """A Jobs API client for the cluster; on a token-auth cluster it uses the local token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = cluster_address(address)
    for attempt in range(2):
        try:
            return JobSubmissionClient(address)
        except AuthenticationError as err:
            # `ray start --head` turns token auth on when ~/.ray/auth_token exists, while a
            # client leaves it off unless RAY_AUTH_MODE says so: use the token if there is one.
            if attempt or not _use_local_token():
                raise SpecError(_auth_help(address, err)) from None
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpecError(f"--address: cannot reach the Ray cluster at {address}: {err}") from None
    raise AssertionError("unreachable")


def _use_local_token() -> bool:
    """Turn on token auth for this process if RAY_AUTH_MODE is unset and a token exists
    (~/.ray/auth_token or $RAY_AUTH_TOKEN_PATH); Ray's own rule for `ray start`."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    if os.environ.get("RAY_AUTH_MODE"):
        return False
    quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that auth is on, which is what we asked for
    try:
        return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def _auth_help(address: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0]
    return (
        f"--address: the Ray cluster at {address} wants an authentication token ({first}); "
        "put the cluster's token (`ray get-auth-token` on the head prints it) in "
        "~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH=FILE"
    )


def _package_dir(name: str) -> Path:
    import importlib

    return Path(importlib.import_module(name).__file__).parent


def stage(spec: Spec, folder: Path) -> None:
    """The job's working_dir: the study and serving packages, the resolved spec, and the
    provenance of the code (the job's copy has no .git to read it from)."""
    for name in STAGED_PACKAGES:
        shutil.copytree(_package_dir(name), folder / name, ignore=IGNORED)
    (folder / SPEC_NAME).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    provenance.collect().save(folder / PROVENANCE_NAME)


def _is_loopback(address: str) -> bool:
    host = urllib.parse.urlsplit(address if "://" in address else f"//{address}").hostname
    return host in ("127.0.0.1", "localhost", "::1")


def check_job_locations(address: str, tracking_uri: str, storage: str | None) -> None:
    """Refuse places a job on `address` cannot share with this machine. A SQLite or file
    store is a file here: a job on another machine would write a database of its own
    there, seen by nobody."""
    if not tracking_uri.startswith(("http://", "https://")) and not _is_loopback(address):
        raise SpecError(
            f"--tracking-uri: {tracking_uri} is a file on this machine, but the job runs on the "
            f"cluster at {address}; run an MLflow server both can reach (skeptic mlflow-server "
            "--host 0.0.0.0) and give --tracking-uri http://HOST:5000"
        )
    if storage and not Path(storage).is_absolute() and not storage.startswith("$"):
        raise SpecError(
            f"--storage {storage}: give an absolute path on the cluster's head (a relative one "
            "would land in the job's temporary working directory)"
        )


def check_run_locations(tracking_uri: str, storage: str | None) -> None:
    """`skeptic run` as a Ray job with a working_dir (`ray job submit --working-dir .`) runs
    in a temporary folder: refuse results (a SQLite store, its artifacts, the sweep
    folders) that would be written into it and deleted with it."""
    job_config = json.loads(os.environ.get(JOB_CONFIG_ENV, "{}") or "{}")
    if not job_config.get("runtime_env", {}).get("working_dir"):
        return
    here = Path.cwd().resolve()
    db = store.sqlite_path(tracking_uri)
    if db is not None and db.is_relative_to(here):
        raise SpecError(
            f"--tracking-uri: {tracking_uri} lies in this Ray job's temporary working directory "
            f"{here}, which is deleted with the job; give an MLflow server "
            "(--tracking-uri http://HOST:5000) or an absolute sqlite://// path outside it"
        )
    folder = Path(storage or "skeptic-runs").resolve()
    if folder.is_relative_to(here):
        raise SpecError(
            f"--storage: {folder} lies in this Ray job's temporary working directory; "
            "give an absolute --storage outside it (e.g. $HOME/skeptic-runs)"
        )


def submit(
    spec: Spec, *, address: str | None, tracking_uri: str, storage: str | None, verbose: bool
) -> str:
    client = job_client(address)
    # The job's working_dir is temporary: results default to the head's home directory.
    entrypoint = (
        f"python -m skeptic run {spec.study} --spec {SPEC_NAME}"
        f" --tracking-uri {shlex.quote(tracking_uri)}"
        f" --storage {shlex.quote(storage) if storage else DEFAULT_JOB_STORAGE}"
    )
    if spec.preset:  # the file holds every value; the preset is named so the run records it
        entrypoint += f" --preset {shlex.quote(spec.preset)}"
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
                provenance.SUBMITTED_ENV: PROVENANCE_NAME,
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
