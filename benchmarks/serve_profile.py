"""Where does a served request's CPU go?

`skeptic serve`'s defaults (HAProxy ingress, replicas per core) serve one model of
benchmarks/serve_load.py (`smoke` or a width) under bounded load from another process
(C requests in flight, the same 32x32 PNG body). Two phases of --seconds each:

1. CPU per request of every process on the machine (from /proc via psutil, the load
   generator from its rusage): replicas, HAProxy, Ray's daemons, the load generator.
2. With py-spy installed (`pip install py-spy`; not a dependency of Skeptic): one
   replica sampled at 200 Hz, only while it holds the GIL (its bottleneck), each sample
   put to the code it was in (Ray Serve, uvicorn, Skeptic, Pillow, torch, ...).

    .venv/bin/python benchmarks/serve_profile.py [--model smoke] [--concurrency 32]
        [--replicas N] [--env RAY_SERVE_HAPROXY_METRICS_ENABLED=1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serve_load  # benchmarks/: the models, the body and the load generator

# Whose code a sample is in, by the path of its innermost frame (first match wins).
OWNERS = [
    ("ray/serve", "Ray Serve (replica wrapper, metrics, batching)"), ("ray/", "Ray core"),
    ("uvicorn", "uvicorn (HTTP)"), ("starlette", "Starlette/FastAPI"),
    ("fastapi", "Starlette/FastAPI"), ("pydantic", "pydantic"),
    ("serving/", "Skeptic serving"), ("skeptic/", "Skeptic preprocessing"),
    ("PIL", "Pillow"), ("torch", "torch"), ("mlflow", "MLflow pyfunc"), ("numpy", "numpy"),
    ("asyncio", "asyncio"), ("concurrent", "threads"), ("threading", "threads"),
    ("logging", "logging"), ("json", "json"), ("base64", "base64"),
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smoke", help="smoke or an MLP width (default smoke)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    p.add_argument("--seconds", type=float, default=10, help="length of each phase (10)")
    p.add_argument("--replicas", type=int, help="default: skeptic serve's")
    p.add_argument("--payload", choices=["json", "raw"], default="json", help="body (json)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the Ray cluster, e.g. to undo a default")  # fmt: skip
    return p.parse_args()


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds so far."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            times = proc.cpu_times()
            name = " ".join(proc.info["cmdline"] or [])[:70] or f"pid {proc.pid}"
            out[proc.pid] = (name, times.user + times.system)
        except psutil.Error:
            continue
    return out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load(url: str, body: Path, concurrency: int, seconds: float) -> subprocess.Popen:
    cmd = [sys.executable, serve_load.__file__, "--_load", url, "--_body", str(body),
           "--_concurrency", str(concurrency), "--duration", str(seconds)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> dict:
    return json.loads(process.communicate()[0].strip().splitlines()[-1])


def cpu_phase(url: str, body: Path, args: argparse.Namespace) -> None:
    """Phase 1: CPU per request, every process."""
    import psutil

    before, children, machine = cpu_seconds(), children_cpu(), psutil.cpu_times()
    started = time.perf_counter()
    result = finished(load(url, body, args.concurrency, args.seconds))
    took = time.perf_counter() - started
    after, ended = cpu_seconds(), psutil.cpu_times()
    busy = sum(getattr(ended, f) - getattr(machine, f) for f in ("user", "system", "nice"))
    rps = result["rps"]
    print(f"\n{rps:.0f} req/s at concurrency {args.concurrency}, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms; machine {busy / took:.2f} cores busy")  # fmt: skip
    rows = [
        ((after[pid][1] - before.get(pid, ("", 0.0))[1]) / took, after[pid][0]) for pid in after
    ]
    rows.append(((children_cpu() - children) / took, "the load generator"))
    print(f"{'cores':>6} {'ms/request':>10}  process")
    for cores, name in sorted(rows, reverse=True)[:12]:
        print(f"{cores:6.2f} {1000 * cores / rps:10.3f}  {name}")


def owner(frame: str) -> str:
    match = re.search(r"\(([^)]*)\)", frame)
    path = match.group(1) if match else frame
    return next((name for key, name in OWNERS if key in path), "other")


def spy_phase(url: str, body: Path, args: argparse.Namespace, out: Path) -> None:
    """Phase 2: one replica's GIL-holding samples, by whose code they are in."""
    import psutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("\n(py-spy is not installed: `pip install py-spy` for the per-owner profile)")
        return
    replica = next(p.pid for p in psutil.process_iter(["cmdline"])
                   if "ServeReplica" in " ".join(p.info["cmdline"] or []))  # fmt: skip
    generator = load(url, body, args.concurrency, args.seconds)
    time.sleep(1.5)
    raw = out / "replica.txt"
    subprocess.run([spy, "record", "--pid", str(replica), "-d", str(int(args.seconds - 3)),
                    "-r", "200", "--gil", "--nonblocking", "-f", "raw", "-o", str(raw)],
                   capture_output=True, check=False)  # fmt: skip
    finished(generator)
    owners: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        owners[owner(stack.split(";")[-1])] += int(count)
    total = sum(owners.values())
    print(f"\none replica, samples holding the GIL ({total}), by the code they were in:")
    for name, count in owners.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")


def main() -> int:
    args = parse_args()
    from serving.control import deploy, fast_ingress_env, free_port, wait_healthy

    extra = dict(item.split("=", 1) for item in args.env)
    os.environ.update({**fast_ingress_env(), **extra})
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory(prefix="serve-profile-") as tmp:
        root = Path(tmp)
        uri, (version,) = serve_load.register(root, serve_load.parse_models(args.model))
        body = serve_load.write_body(root, args.payload)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING", _node_ip_address="127.0.0.1")  # fmt: skip
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve_args = {"model": f"large_batch/{version}", "tracking_uri": uri}
            if args.replicas:
                serve_args["num_replicas"] = args.replicas
            deploy(serve_args, "profile")
            base = f"http://127.0.0.1:{port}/profile"
            wait_healthy(base, None)
            url = f"{base}/predict"
            replicas = serve_load.running_replicas("profile")
            print(f"{args.model}: {replicas} replica(s), {os.cpu_count()} cores, "
                  f"{args.payload} body, extra env {extra or 'none'}")  # fmt: skip
            finished(load(url, body, args.concurrency, 3))  # warm up
            cpu_phase(url, body, args)
            spy_phase(url, body, args, root)
        finally:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
