"""What does going through a cluster cost? Starts a `ray start --head` and a `skeptic
mlflow-server` on 127.0.0.1, then measures:

- submit -> first trial reporting (its first epoch's metrics reach the tracking server);
- the whole smoke sweep's wall time, submitted as a Ray job vs `skeptic run` locally,
  with the ratio.

    .venv/bin/python benchmarks/submit_latency.py
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from serving.control import free_port

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
ENV.pop("RAY_ADDRESS", None)


def wait(check, timeout: float, step: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(step)
    raise TimeoutError


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def first_metric(uri: str, since_ms: int) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("large_batch")
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], f"attributes.start_time > {since_ms}")
    return any("epoch_time" in r.data.metrics for r in runs)


def skeptic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "skeptic"), *args]
    return subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True, check=True)


def submitted(head: str, uri: str, tmp: Path) -> tuple[float, float]:
    from ray.job_submission import JobSubmissionClient

    since = int(time.time() * 1000)
    start = time.monotonic()
    out = skeptic("submit", "large_batch", "--smoke", "--address", head, "--tracking-uri", uri, cwd=tmp)
    job = re.search(r"submitted job (\S+)", out.stdout).group(1)
    wait(lambda: first_metric(uri, since), 300)
    first = time.monotonic() - start
    client = JobSubmissionClient(head)
    wait(lambda: str(client.get_job_status(job)).endswith(("SUCCEEDED", "FAILED", "STOPPED")), 600, 0.5)
    return first, time.monotonic() - start


def local(uri: str, tmp: Path) -> float:
    start = time.monotonic()
    skeptic("run", "large_batch", "--smoke", "--tracking-uri", uri, "--storage", str(tmp / "runs"), cwd=tmp)
    return time.monotonic() - start


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="skb-", dir="/tmp"))
    port, dashboard = free_port(), free_port()
    uri, head = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    server = subprocess.Popen(
        [str(BIN / "skeptic"), "mlflow-server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp / 'db.sqlite'}", "--artifacts-destination", str(tmp / "art")],
        env=ENV, cwd=tmp, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ports = [f"--{name}={free_port()}" for name in (
        "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")]  # fmt: skip
    try:
        wait(lambda: healthy(uri), 90)
        t0 = time.monotonic()
        subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats", *ports],
                       env=ENV, check=True, capture_output=True)  # fmt: skip
        print(f"ray start --head: {time.monotonic() - t0:.1f} s")
        first, job_wall = submitted(head, uri, tmp)
        local_wall = local(uri, tmp)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines()[1:]:
            pid, args = line.strip().split(None, 1)
            if str(tmp) in args:
                os.kill(int(pid), signal.SIGKILL)
    print(f"submit -> first trial reporting:   {first:6.1f} s")
    print(f"smoke sweep, submitted (end to end): {job_wall:6.1f} s")
    print(f"smoke sweep, skeptic run locally:    {local_wall:6.1f} s")
    print(f"ratio submitted / local:             {job_wall / local_wall:6.2f}")


if __name__ == "__main__":
    main()
