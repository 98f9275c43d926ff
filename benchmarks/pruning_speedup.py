"""Does structured pruning turn into real speed? For each pruning ratio: the FLOPs ratio and
the measured CPU inference latency ratio (batch 1 and batch 64) of the pruned vs the unpruned
model. Runs are interleaved (unpruned, pruned, pruned, unpruned, ...) so that load from other
processes hits both alike; medians are reported. Target: at batch 64 the latency ratio is
within 1.5x of the FLOPs ratio (latency ratio >= FLOPs ratio / 1.5).

The model is the study's VGG-style CNN at a size where compute, not per-call overhead,
dominates (width 64 on 32x32 inputs: 1.2M params, 0.3 GFLOPs per image); the study's own
small run (width 16, 16x16) is overhead-bound at batch 1, which this benchmark also shows
with --width 16 --image-size 16.

    .venv/bin/python benchmarks/pruning_speedup.py [--width 64 --image-size 32 --threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from jobs.pruning import models
from jobs.pruning.prune import count_flops, count_params, latency_pair_ms, structured_prune

TARGET = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--width", type=int, default=64, help="first conv's channels (default 64)")
    p.add_argument("--image-size", type=int, default=32, help="input height = width (32)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--repeats", type=int, default=15, help="timed runs per model and batch (15)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as a trial)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = [3, args.image_size, args.image_size]
    full = models.build(
        models.model_config(models.base_channels(args.width), shape, list("0123456789"))
    )
    full.eval()
    flops_full = count_flops(full, shape)
    print(f"unpruned: channels {models.channels_of(full)}, {count_params(full):,} params, "
          f"{flops_full / 1e6:.1f} MFLOPs/image; CPU, {args.threads} thread(s)")  # fmt: skip
    head = f"{'ratio':>5} {'params':>9} {'MFLOPs':>8} {'FLOPs x':>8} | {'b1 ms full/pruned':>18} {'b1 x':>6}"
    print(head + f" | {'b64 ms full/pruned':>19} {'b64 x':>6} | target b64 x >= FLOPs x / {TARGET}")
    missed = 0
    for ratio in args.ratios:
        pruned = structured_prune(full, shape, ratio).eval()
        flops_x = flops_full / count_flops(pruned, shape)
        row = f"{ratio:>5} {count_params(pruned):>9,} {count_flops(pruned, shape) / 1e6:>8.2f} {flops_x:>8.2f}"
        for batch in (1, 64):
            t_full, t_pruned = latency_pair_ms(full, pruned, shape, batch, args.repeats)
            row += f" | {t_full:>8.2f} / {t_pruned:>7.2f} {t_full / t_pruned:>6.2f}"
        ok = t_full / t_pruned >= flops_x / TARGET
        missed += not ok
        print(f"{row} | {'met' if ok else 'MISSED'}", flush=True)
    print(f"target met at {len(args.ratios) - missed}/{len(args.ratios)} ratios")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
