"""A real cluster: `ray start --head` on loopback and a real `skeptic mlflow-server`; studies are
submitted through the Ray Jobs API with `skeptic submit`, watched, and stopped."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from netutil import healthy

from serving.control import free_port
from skeptic.cli import main

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent



def _kill_matching(needle: str) -> None:
    """End every process whose command line names `needle` (`ray stop` would also end the
    test session's own in-process Ray). Repeated until none is left: a dying head can
    still be starting workers or agents."""
    for _ in range(30):
        out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=False)
        pids = [int(line.split(None, 1)[0]) for line in out.stdout.splitlines()[1:] if needle in line]
        pids = [pid for pid in pids if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _head_command(temp: Path) -> tuple[list[str], str]:
    """`ray start --head` on loopback, every port its own; and its dashboard address."""
    dashboard = free_port()
    cmd = [
        str(BIN / "ray"), "start", "--head", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp}",
        # every port its own: fixed defaults (e.g. the agent's 52365) collide with other heads
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    return cmd, f"http://127.0.0.1:{dashboard}"


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    temp = Path(subprocess.check_output(["mktemp", "-d", "/tmp/skh-XXXX"], text=True).strip())
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    cmd, address = _head_command(temp)
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        _kill_matching(str(temp))


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A head started the default way (no RAY_AUTH_MODE) by a user who has a token in
    ~/.ray/auth_token: Ray turns token authentication on. Yields (address, that HOME)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp = Path(subprocess.check_output(["mktemp", "-d", "/tmp/skt-XXXX"], text=True).strip())
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    cmd, address = _head_command(temp)
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield address, home
    finally:
        _kill_matching(str(temp))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "skeptic", "mlflow-server", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: healthy(url), 90, "mlflow server")
        yield url, root / "artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()



def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _submit(capsys, head: str, uri: str, *extra: str) -> str:
    assert main(["submit", "large_batch", "--smoke", "--address", head, "--tracking-uri", uri, *extra]) == 0
    return re.search(r"submitted job (\S+)", capsys.readouterr().out).group(1)


def _status(head: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(head).get_job_status(job_id)).rsplit(".", 1)[-1]


def _runs(uri: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("large_batch")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"], runs


def test_submitted_smoke_study_is_tracked_on_the_server(ray_head, mlflow_server, capsys):
    uri, artifacts = mlflow_server
    job_id = _submit(capsys, ray_head, uri)
    _wait(lambda: _status(ray_head, job_id) in ("SUCCEEDED", "FAILED", "STOPPED"), 480, "the job")
    assert main(["logs", job_id, "--address", ray_head]) == 0
    logs = capsys.readouterr().out
    assert _status(ray_head, job_id) == "SUCCEEDED", logs[-3000:]
    assert "verdict: the belief UNDECIDED" in logs
    parents, runs = _runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    # the smoke runs every arm on two seeds (the fewest a paired interval needs)
    assert sorted(c.data.params["arm"] for c in children) == ["+RA", "+RA", "LB", "LB", "SB", "SB"]
    version = MlflowClient(uri).get_model_version_by_alias("large_batch", "champion")
    assert version.run_id in {c.info.run_id for c in children}
    assert list(artifacts.rglob("report.md")), "the report must land in the server's artifact store"
    assert list(artifacts.rglob("weights.safetensors")), "the champion must land on the server"
    from skeptic import provenance

    assert parents[0].data.tags["skeptic.git_commit"] == provenance.collect().commit  # this side's
    assert main(["status", job_id, "--address", ray_head]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "--address", ray_head]) == 0
    assert job_id in capsys.readouterr().out


def test_stopped_job_leaves_no_running_runs(ray_head, mlflow_server, capsys):
    uri, _ = mlflow_server
    before = {r.info.run_id for r in _runs(uri)[0]}
    job_id = _submit(capsys, ray_head, uri, "--set", "train.epochs=400")

    def training() -> bool:
        _, runs = _runs(uri)
        return any(r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags for r in runs)

    _wait(training, 240, "a running trial")
    assert main(["stop", job_id, "--address", ray_head]) == 0
    assert "STOPPED" in capsys.readouterr().out
    parents, runs = _runs(uri)
    (parent,) = [p for p in parents if p.info.run_id not in before]
    assert parent.info.status == "KILLED"
    mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert mine and all(r.info.status != "RUNNING" for r in mine)


def test_clear_errors_before_anything_is_submitted(ray_head, mlflow_server, capsys):
    uri, _ = mlflow_server
    assert main(["status", "no-such-job", "--address", ray_head]) == 2
    assert "unknown" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", "large_batch", "--smoke", "--address", dead, "--tracking-uri", uri]) == 2
    assert dead in capsys.readouterr().err
    jobs_before = len(main_jobs(ray_head))
    assert main(["submit", "large_batch", "--smoke", "--address", ray_head, "--tracking-uri", dead]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert len(main_jobs(ray_head)) == jobs_before


def main_jobs(head: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head).list_jobs()


def _skeptic(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "skeptic", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_a_default_token_auth_head_is_used_with_the_local_token(token_head, tmp_path):
    address, home = token_head
    done = _skeptic("jobs", "--address", address, home=home)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    elsewhere = tmp_path / "no-token"  # a client without the cluster's token
    elsewhere.mkdir()
    done = _skeptic("jobs", "--address", address, home=elsewhere)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("skeptic: error: --address:")
    assert "RAY_AUTH_TOKEN_PATH" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--tracking-uri", "sqlite:///mlflow.db"], "--tracking-uri"),  # a file on this machine
        (["--tracking-uri", "http://127.0.0.1:5000", "--storage", "runs"], "--storage"),
    ],
)
def test_a_job_on_a_remote_cluster_refuses_places_it_cannot_share(extra, named, capsys):
    remote = "http://10.255.255.1:8265"  # never contacted: refused before anything is sent
    assert main(["submit", "large_batch", "--smoke", "--address", remote, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skeptic: error: {named}") and "Traceback" not in err


def test_a_ray_job_with_a_temporary_working_dir_refuses_a_store_inside_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # as a Ray job's unpacked working_dir
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://x.zip"}}')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "large_batch", "--smoke", "--dry-run"]) == 2
    assert "skeptic: error: --tracking-uri:" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    outside = f"sqlite:///{tmp_path.parent / 'kept.db'}"
    assert main(["run", "large_batch", "--smoke", "--dry-run", "--tracking-uri", outside]) == 2
    assert "skeptic: error: --storage:" in capsys.readouterr().err
    assert main(["run", "large_batch", "--smoke", "--dry-run", "--tracking-uri", outside,
                 "--storage", str(tmp_path.parent / "runs")]) == 0  # fmt: skip
