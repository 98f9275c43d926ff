"""How much does the platform cost? The same large_batch training loop and data,
(a) as a plain Python loop over the trials in one process, and (b) as Tune trials
through `skeptic run` (Ray, MLflow logging, checkpoints, report, registration).

Prints samples/second for both, their ratio (target >= 0.80 at the default size, >= 0.90
at --epochs 30), the CPU utilisation of the sweep: busy core-seconds / (wall seconds x
cores) (target >= 0.85), and where (b)'s fixed cost goes: the phases the sweep logs to its
parent run (Ray start, data, store, trials, verdict and report, registration), when the
first trial's code ran, and the seconds per trial not spent in its epochs.

    .venv/bin/python benchmarks/tune_overhead.py [--epochs 6] [--size 12000]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(k, v)

import torch

from skeptic.cli import main as skeptic
from skeptic.contexts import OneProcess
from skeptic.spec import grid_points, load_spec, resolve_params
from skeptic.study import get_study


@dataclass
class PlainContext(OneProcess):
    """What a hand-written loop gives the training code: no tracking, no checkpoints."""

    params: Any
    seed: int
    data: dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    start_epoch: int = 0
    state: dict | None = None
    samples: int = field(default=0)

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: float = 0) -> None:
        self.samples += samples

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def sets(args: argparse.Namespace) -> list[str]:
    return [
        f"train.epochs={args.epochs}",
        f"data.size={args.size}",
        "sweep.space.batch_size.grid=[256]",
        (
            "sweep.arms={LB: {}, +LR: {lr_rule: sqrt}, +GBN: {lr_rule: sqrt, ghost_batch: 64}, "
            "LIN: {lr_rule: linear}}"
        ),
        f"sweep.seeds={args.seeds}",
    ]


def _trials(args: argparse.Namespace) -> list[tuple[dict, int]]:
    study = get_study("large_batch")
    spec = load_spec(study.name, study.defaults, study.Params, sets=sets(args))
    points = [{k: v for k, v in p.items() if k != "arm"} for p in grid_points(spec)]
    return [(p, seed) for p in points for seed in range(spec.sweep.seeds)]


def _train(job: tuple[argparse.Namespace, list[tuple[dict, int]], int]) -> int:
    """Train some trials in this process with `threads` torch threads; return samples seen."""
    args, trials, threads = job
    torch.set_num_threads(threads)
    study = get_study("large_batch")
    spec = load_spec(study.name, study.defaults, study.Params, sets=sets(args))
    data = study.prepare_data(spec)
    samples = 0
    for point, seed in trials:
        ctx = PlainContext(resolve_params(spec, study.Params, point), seed, data)
        study.train(ctx)
        samples += ctx.samples
    return samples


def plain(args: argparse.Namespace, processes: int) -> tuple[float, int]:
    """The hand-written loop: one process using every core, or one process per core."""
    cores = os.cpu_count() or 1
    trials = _trials(args)
    start = time.perf_counter()
    if processes == 1:
        samples = _train((args, trials, cores))
    else:
        jobs = [(args, trials[i::processes], 1) for i in range(processes)]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            samples = sum(pool.map(_train, jobs))
    return time.perf_counter() - start, samples


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def swept(args: argparse.Namespace) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, CPU utilisation, breakdown) of `skeptic run`, in-process."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        argv = ["run", "large_batch", "--storage", tmp]
        argv += [a for s in sets(args) for a in ("--set", s)]
        busy0, total0 = busy_seconds()
        start = time.perf_counter()
        assert skeptic(argv) == 0
        wall = time.perf_counter() - start
        busy1, total1 = busy_seconds()
        breakdown = phases(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
    return wall, (busy1 - busy0) / (total1 - total0), breakdown


def phases(uri: str) -> dict[str, float]:
    """The sweep's own phase timings (its parent run's metrics) and its trials' start delays
    and time outside their epochs (their runs' metrics)."""
    from mlflow.tracking import MlflowClient

    from skeptic.schema import Metric, MlflowTag, Tag

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("large_batch").experiment_id])
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "sweep")
    out = {
        k.removeprefix("phase_").removesuffix("_s"): v
        for k, v in parent.data.metrics.items()
        if k.startswith("phase_")
    }
    trials = [r for r in runs if r.data.tags.get(MlflowTag.PARENT_RUN_ID)]
    out["first trial started after"] = min(r.data.metrics[Metric.STARTED_AFTER] for r in trials)
    trained = sum(
        sum(m.value for m in client.get_metric_history(r.info.run_id, Metric.EPOCH_TIME))
        for r in trials
    )
    slots = min(len(trials), os.cpu_count() or 1)  # one CPU per trial
    out["per trial, outside its epochs"] = (out["trials"] * slots - trained) / len(trials)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    parser.add_argument("--size", type=int, default=12000, help="generated samples")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per arm (4 arms)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    serial_wall, samples = plain(args, 1)
    parallel_wall, _ = plain(args, cores)
    tune_wall, util, breakdown = swept(args)
    best_plain = min(serial_wall, parallel_wall)
    ratio = best_plain / tune_wall
    target = 0.90 if args.epochs >= 30 else 0.80
    print(f"\ntrials: {4 * args.seeds}, samples trained in all: {samples}, cores: {cores}")
    print(f"(a1) plain loop, 1 process x {cores} threads: {serial_wall:7.1f} s {samples / serial_wall:9.0f} samples/s")
    print(f"(a2) plain loop, {cores} processes x 1 thread: {parallel_wall:7.1f} s {samples / parallel_wall:9.0f} samples/s")
    print(f"(b)  skeptic run (end to end):      {tune_wall:7.1f} s {samples / tune_wall:9.0f} samples/s")
    print(f"ratio (b) / best plain loop: {ratio:.2f}  target >= {target:.2f}  {'PASS' if ratio >= target else 'MISS'}")
    print(f"CPU utilisation of (b):      {util:.2f}  target >= 0.85  {'PASS' if util >= 0.85 else 'MISS'}")
    print("\nwhere (b)'s time went (s; data and store are prepared while Ray starts):")
    for name, seconds in breakdown.items():
        print(f"  {name:32} {seconds:6.2f}")
    print(f"  {'fixed cost: (b) - best plain':32} {tune_wall - best_plain:6.2f}")


if __name__ == "__main__":
    main()
