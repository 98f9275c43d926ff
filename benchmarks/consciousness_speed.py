"""What does each `consciousness` arm cost per training epoch, on the device at hand?

One epoch of the study's own training step (skeptic.training.train_epoch over
jobs.consciousness.models.SceneNet, Adam, batch 128) on the default scenes (6 slots, 2 cued,
task `greater`, --scenes 20,000 training scenes, scenes.splits at seed 0), for the arms
dense, soft, topk2 and random2: one warm-up epoch, then --epochs (3) timed, on CUDA when
there is a GPU (synchronised before each clock read), else on the CPU with --threads (1, as
a trial gets) torch threads. Prints scenes/s per arm, each arm's time relative to soft
attention's (the same parameters, one read-out; top-k adds the selection), and the seconds
per training scene that the `scaling` preset's GPU-hours estimate uses.

    .venv/bin/python benchmarks/consciousness_speed.py [--scenes 20000] [--epochs 3]
        [--threads 1]

Measured: on an H200, 0.46 / 0.71 / 0.88 / 0.72 s per epoch (dense / soft / topk2 /
random2; 4.4e-5 s per training scene for topk2; launch-bound); on this 2-core machine, one
thread: 0.09 / 0.17 / 0.17 / 0.14 s per 5,000 scenes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from jobs.consciousness.models import SceneNet
from jobs.consciousness.scenes import splits
from jobs.consciousness.study import Params, model_config
from skeptic.training import epoch_generator, train_epoch

ARMS = {"dense": {"select": "dense"}, "soft": {"select": "soft"},
        "topk2": {"select": "topk", "k": 2}, "random2": {"select": "random", "k": 2}}  # fmt: skip


def seconds_per_epoch(arm: dict, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    p = Params(**arm, scenes=len(y))
    torch.manual_seed(0)
    model = SceneNet(model_config(p)).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    took = []
    for epoch in range(epochs + 1):  # the first is a warm-up
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_epoch(model, opt, x, y, p.batch, epoch_generator(0, epoch))
        if x.is_cuda:
            torch.cuda.synchronize()
        took.append(time.perf_counter() - start)
    return sum(took[1:]) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    sp = splits(0, 6, 2, "greater", (args.scenes, 10, 10))
    x = torch.as_tensor(sp.train.x, device=device)
    y = torch.as_tensor(sp.train.y, device=device)
    times = {arm: seconds_per_epoch(values, x, y, args.epochs) for arm, values in ARMS.items()}
    print(f"device: {name}; {args.scenes} training scenes per epoch, batch 128")
    print(f"{'arm':10} {'s/epoch':>9} {'scenes/s':>10} {'time / soft':>12}")
    for arm, s in times.items():
        print(f"{arm:10} {s:9.3f} {args.scenes / s:10.0f} {s / times['soft']:12.2f}")
    print(f"seconds per training scene (topk2): {times['topk2'] / args.scenes:.2e}")


if __name__ == "__main__":
    main()
