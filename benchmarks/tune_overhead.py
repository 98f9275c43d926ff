"""How much does the platform cost? The same large_batch training loop and data,
(a) as a plain Python loop over the trials in one process, and (b) as Tune trials
through `skeptic run` (Ray, MLflow logging, checkpoints, report, registration).

Prints samples/second for both, their ratio (target >= 0.90), and the CPU
utilisation of the sweep: busy core-seconds / (wall seconds x cores) (target >= 0.80).

    .venv/bin/python benchmarks/tune_overhead.py [--epochs 6] [--size 12000]
"""

from __future__ import annotations

import argparse
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

import psutil  # noqa: E402
import torch  # noqa: E402

from skeptic.cli import main as skeptic  # noqa: E402
from skeptic.spec import grid_points, load_spec, resolve_params  # noqa: E402
from skeptic.study import get_study  # noqa: E402


@dataclass
class PlainContext:
    """What a hand-written loop gives the training code: no tracking, no checkpoints."""

    params: Any
    seed: int
    data: dict
    device: torch.device = torch.device("cpu")
    start_epoch: int = 0
    state: dict | None = None
    samples: int = field(default=0)

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: float = 0) -> None:
        self.samples += samples


def sets(args: argparse.Namespace) -> list[str]:
    return [
        f"train.epochs={args.epochs}",
        f"data.size={args.size}",
        "sweep.space.batch_size.grid=[256]",
        "sweep.arms={LB: {}, +LR: {lr_rule: sqrt}, +GBN: {lr_rule: sqrt, ghost_batch: 64}, "
        "LIN: {lr_rule: linear}}",
        f"sweep.seeds={args.seeds}",
    ]


def plain(args: argparse.Namespace) -> tuple[float, int]:
    study = get_study("large_batch")
    spec = load_spec(study.name, study.defaults, study.Params, sets=sets(args))
    data = study.prepare_data(spec)
    torch.set_num_threads(os.cpu_count() or 1)
    start, samples = time.perf_counter(), 0
    for point in grid_points(spec):
        for seed in range(spec.sweep.seeds):
            point = {k: v for k, v in point.items() if k != "arm"}
            ctx = PlainContext(resolve_params(spec, study.Params, point), seed, data)
            study.train(ctx)
            samples += ctx.samples
    return time.perf_counter() - start, samples


def swept(args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        argv = ["run", "large_batch", "--storage", tmp]
        argv += [a for s in sets(args) for a in ("--set", s)]
        before = psutil.cpu_times()
        start = time.perf_counter()
        assert skeptic(argv) == 0
        wall = time.perf_counter() - start
        after = psutil.cpu_times()
    busy = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "nice", "irq", "softirq"))
    return wall, busy / (wall * psutil.cpu_count())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial")
    parser.add_argument("--size", type=int, default=12000, help="generated samples")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per arm (4 arms)")
    args = parser.parse_args()
    plain_wall, samples = plain(args)
    tune_wall, util = swept(args)
    plain_rate, tune_rate = samples / plain_wall, samples / tune_wall
    print(f"\ntrials: {4 * args.seeds}, samples trained in all: {samples}")
    print(f"(a) plain loop:     {plain_wall:7.1f} s  {plain_rate:9.0f} samples/s")
    print(f"(b) skeptic run:    {tune_wall:7.1f} s  {tune_rate:9.0f} samples/s (end to end)")
    print(f"ratio (b)/(a):      {tune_rate / plain_rate:.2f}   target >= 0.90  "
          f"{'PASS' if tune_rate / plain_rate >= 0.9 else 'MISS'}")
    print(f"CPU utilisation (b): {util:.2f}  target >= 0.80  {'PASS' if util >= 0.8 else 'MISS'}")


if __name__ == "__main__":
    main()
