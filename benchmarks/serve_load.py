"""What does serving cost, and what does dynamic batching buy? One registered large_batch MLP
(default width 512, depth 5, on 3x32x32 inputs), served by serving.app over HTTP on
127.0.0.1, loaded by a second process (aiohttp, a fixed number of requests in flight for a
fixed time: bounded load) at concurrency 1, 8 and 32, with batching on and off; and the
same model's in-process batched forward throughput (pyfunc.predict on batches of
max_batch_size, the best over torch thread counts) as the ceiling.

Prints requests/second and p50/p99 latency per run (one image per request), then
  served / in-process at concurrency 32, batching on   (target >= 0.5)
  batching on / batching off at concurrency 32          (target >= 3x)
with PASS/MISS.

    .venv/bin/python benchmarks/serve_load.py [--width 512] [--duration 8] [--payload images]
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


def register(root: Path, width: int, depth: int, size: int) -> str:
    import torch
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from jobs.large_batch.study import LargeBatch
    from skeptic.registry import register_champion

    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = {
        "input_shape": [3, size, size], "num_classes": len(CLASSES), "class_names": CLASSES,
        "width": width, "depth": depth, "ghost_batch": None,
    }  # fmt: skip
    torch.manual_seed(0)
    study = LargeBatch()
    state = {"model": study.build_model(config).state_dict(), "model_config": config}
    client = MlflowClient(uri)
    exp = client.create_experiment("large_batch", artifact_location=(root / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    with _use_tracking_uri(uri):
        register_champion(study, state, {"width": width}, run_id, {"skeptic.verdict": "bench"})
    client.set_terminated(run_id)
    return uri


def in_process_ceiling(uri: str, batch_size: int, size: int, seconds: float = 3) -> dict:
    """pyfunc.predict on ready batches, no HTTP: the most this machine can do."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        model = mlflow.pyfunc.load_model("models:/large_batch@champion")
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


def request_body(payload: str, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    if payload == "inputs":
        return json.dumps({"inputs": rng.random((1, 3, size, size)).round(4).tolist()}).encode()
    pixels = (rng.random((size, size, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode()


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--width", type=int, default=512, help="MLP width (default 512)")
    p.add_argument("--depth", type=int, default=5, help="MLP depth (default 5)")
    p.add_argument("--size", type=int, default=32, help="input is 3 x SIZE x SIZE (default 32)")
    p.add_argument("--duration", type=float, default=8, help="seconds measured per run (default 8)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument("--payload", choices=["images", "inputs"], default="images",
                   help="one base64 PNG per request, or one float array (default images)")  # fmt: skip
    p.add_argument("--max-batch-size", type=int, default=32, help="serve.batch size (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=10, help="batch wait (default 10 ms)")
    p.add_argument("--replica-cpus", type=float, default=1, help="CPUs per replica (default 1)")
    p.add_argument("--_load", help=argparse.SUPPRESS)
    p.add_argument("--_body", help=argparse.SUPPRESS)
    p.add_argument("--_concurrency", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._load:  # the load-generator process
        body = Path(args._body).read_bytes()
        result = asyncio.run(_load(args._load, body, args._concurrency, args.duration, warmup=1.0))
        print(json.dumps(result))
        return 0

    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        print(f"model: large_batch MLP width {args.width} depth {args.depth} on 3x{args.size}x"
              f"{args.size}; payload: one {args.payload[:-1]} per request; "
              f"{os.cpu_count()} cores", flush=True)  # fmt: skip
        uri = register(root, args.width, args.depth, args.size)
        ceiling = in_process_ceiling(uri, args.max_batch_size, args.size)
        print(f"in-process batched forward (batch {args.max_batch_size}, "
              f"{ceiling['threads']} thread(s)): {ceiling['samples_per_s']:.0f} samples/s", flush=True)  # fmt: skip
        body_file = root / "body.json"
        body_file.write_bytes(request_body(args.payload, args.size))
        results = serve_runs(args, uri, body_file, levels)

    print()
    print(f"{'batching':<9} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  errors")
    for (mode, c), r in results.items():
        errors = sum(r["errors"].values())
        print(f"{mode:<9} {c:>4} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}  "
              f"{errors}{' ' + json.dumps(r['errors']) if errors else ''}")  # fmt: skip
    top = max(levels)
    on, off = results[("on", top)]["rps"], results[("off", top)]["rps"]
    served_ratio = on / ceiling["samples_per_s"]
    batching_ratio = on / off if off else float("inf")
    print()
    print(f"served/in-process at concurrency {top} (batching on): {on:.1f} / "
          f"{ceiling['samples_per_s']:.0f} = {served_ratio:.2f}  (target >= 0.5)  "
          f"{'PASS' if served_ratio >= 0.5 else 'MISS'}")  # fmt: skip
    print(f"batching on/off at concurrency {top}: {on:.1f} / {off:.1f} = {batching_ratio:.2f}x  "
          f"(target >= 3x)  {'PASS' if batching_ratio >= 3 else 'MISS'}")  # fmt: skip
    return 0


def serve_runs(args: argparse.Namespace, uri: str, body_file: Path, levels: list[int]) -> dict:
    import ray
    from ray import serve

    from serving.control import deploy, free_port, get, wait_healthy

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _node_ip_address="127.0.0.1")  # fmt: skip
    results: dict[tuple[str, int], dict] = {}
    try:
        port = free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        for mode in ("on", "off"):
            serve_args = {
                "model": "large_batch@champion", "tracking_uri": uri,
                "batching": mode == "on", "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": args.batch_wait_ms / 1000,
                "ray_actor_options": {"num_cpus": args.replica_cpus}, "access_log": False,
            }  # fmt: skip
            deploy(serve_args, "bench")
            base = f"http://127.0.0.1:{port}/bench"
            wait_healthy(base, None)
            for c in levels:
                before = get(f"{base}/metadata")[1]["batching"]
                results[(mode, c)] = r = run_load(f"{base}/predict", body_file, c, args.duration)
                after = get(f"{base}/metadata")[1]["batching"]
                batches = after["batches_run"] - before["batches_run"]
                r["per_batch"] = (
                    (after["requests_batched"] - before["requests_batched"]) / batches
                    if batches else None
                )  # fmt: skip
                print(f"batching {mode:<3} concurrency {c:>3}: {r['rps']:7.1f} req/s  "
                      f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                      f"errors {sum(r['errors'].values())}"
                      + (f"  requests/batch {r['per_batch']:.1f}" if r["per_batch"] else ""),
                      flush=True)  # fmt: skip
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


if __name__ == "__main__":
    sys.exit(main())
