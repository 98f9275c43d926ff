"""What does sharing upstream stages save? Wall time of the same sweep with its stages
(the pruning study's trained baseline, the few-shot study's source model) run once per
(config, seed) and shared by the trials (`sweep.share_stages=true`, the default) vs re-run
inside every trial (`=false`).

Each sweep runs end to end (`skeptic run`) on one local Ray instance started once, into its
own fresh MLflow store, so no stage result is reused from an earlier sweep. The runs are
interleaved (shared, unshared, unshared, shared, ...) so load from other processes hits both.

    .venv/bin/python benchmarks/staged_reuse.py [--study pruning] [--repeats 1] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}.items():
    os.environ.setdefault(_key, _value)

import ray

from skeptic.cli import main


def parse_args(argv: list[str] | None = None, study: str = "pruning") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--study", default=study, help=f"a study with stages ({study})")
    p.add_argument("--repeats", type=int, default=1, help="sweeps per variant (1)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray (2)")
    p.add_argument("--set", action="append", default=[], dest="sets", help="extra spec overrides")
    p.add_argument("--full", action="store_true", help="the default spec instead of --smoke")
    return p.parse_args(argv)


def one_sweep(shared: bool, args: argparse.Namespace) -> float:
    """Wall seconds of one `skeptic run` into a fresh store (stages never cached)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["run", args.study, "--storage", f"{tmp}/runs"]
        cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        cmd += [] if args.full else ["--smoke"]
        for s in [*args.sets, f"sweep.share_stages={str(shared).lower()}"]:
            cmd += ["--set", s]
        old = os.getcwd()
        os.chdir(tmp)  # the artifacts of a SQLite store go to ./mlartifacts
        try:
            start = time.perf_counter()
            code = main(cmd)
            elapsed = time.perf_counter() - start
        finally:
            os.chdir(old)
    if code != 0:
        raise SystemExit(f"sweep failed (exit {code}): {' '.join(cmd)}")
    return elapsed


def run(argv: list[str] | None = None, study: str = "pruning") -> None:
    args = parse_args(argv, study)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(args.repeats):
            for shared in (True, False) if i % 2 == 0 else (False, True):
                times[shared].append(one_sweep(shared, args))
    finally:
        ray.shutdown()
    shared, unshared = statistics.median(times[True]), statistics.median(times[False])
    what = "default spec" if args.full else "smoke spec"
    print(f"\n{args.study} sweep ({what}{', ' + ', '.join(args.sets) if args.sets else ''}),")
    print(f"{args.cpus} Ray CPUs, median of {args.repeats}, whole `skeptic run` wall time:")
    print(f"  stages shared (run once per config and seed): {shared:7.1f} s  {times[True]}")
    print(f"  stages re-run inside every trial:             {unshared:7.1f} s  {times[False]}")
    print(f"  ratio unshared / shared:                      {unshared / shared:7.2f}x")


if __name__ == "__main__":
    run()
