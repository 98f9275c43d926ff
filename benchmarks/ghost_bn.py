"""What does Ghost Batch Normalization cost? Forward+backward time of GhostBatchNorm vs
nn.BatchNorm1d on the same batch, as a bare norm layer, on a small batch, and inside an MLP layer
Linear -> norm -> ReLU. Runs are interleaved (plain, ghost, ghost, plain, ...) so that load from
other processes hits both alike; the median is reported. Target: ghost/plain <= 1.3.

    .venv/bin/python benchmarks/ghost_bn.py [--batch 4096 --features 512 --ghost 128 --repeats 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from jobs.large_batch.ghost_bn import GhostBatchNorm

TARGET = 1.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=4096, help="batch size (default 4096)")
    p.add_argument("--features", type=int, default=512, help="features / layer width (512)")
    p.add_argument("--ghost", type=int, default=128, help="ghost batch size (default 128)")
    p.add_argument("--small-batch", type=int, default=256, help="small-batch case (256)")
    p.add_argument("--small-ghost", type=int, default=32, help="its ghost size (32)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per variant (30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (5)")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (all cores)"
    )
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even if available")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both variants first (fused kernels; ~1 min of compiling per case)",
    )
    return p.parse_args(argv)


def step_fn(model: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    """One forward+backward, gradients w.r.t. input and parameters."""
    x = x.clone().requires_grad_(True)

    def step() -> None:
        x.grad = None
        model.zero_grad(set_to_none=True)
        model(x).backward(dy)

    return step


def time_pair(
    plain: Callable[[], None], ghost: Callable[[], None], args: argparse.Namespace, cuda: bool
) -> tuple[float, float]:
    """Median seconds of each, interleaved with alternating order."""

    def once(fn: Callable[[], None]) -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(args.warmup):
        plain()
        ghost()
    times: dict[str, list[float]] = {"plain": [], "ghost": []}
    for i in range(args.repeats):
        order = [("plain", plain), ("ghost", ghost)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(once(fn))
    return statistics.median(times["plain"]), statistics.median(times["ghost"])


def case(
    label: str, batch: int, ghost: int, mlp: bool, args: argparse.Namespace, device: str
) -> float:
    torch.manual_seed(0)
    f = args.features

    def build(norm: nn.Module) -> nn.Module:
        layers = [nn.Linear(f, f), norm, nn.ReLU()] if mlp else [norm]
        model = nn.Sequential(*layers).to(device)
        return torch.compile(model, fullgraph=True, dynamic=False) if args.compile else model

    x = torch.randn(batch, f, device=device)
    dy = torch.randn(batch, f, device=device)
    plain = step_fn(build(nn.BatchNorm1d(f)), x, dy)
    ghosted = step_fn(build(GhostBatchNorm(f, ghost)), x, dy)
    t_plain, t_ghost = time_pair(plain, ghosted, args, device == "cuda")
    ratio = t_ghost / t_plain
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(
        f"{device:4s} {label:34s} plain {t_plain * 1e3:8.3f} ms  ghost {t_ghost * 1e3:8.3f} ms"
        f"  ratio {ratio:5.2f}  (target <= {TARGET}) {verdict}"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    mode = "torch.compile" if args.compile else "eager"
    print(
        f"torch {torch.__version__}, {args.threads} CPU threads, {mode}, median of {args.repeats}"
    )
    b, g, sb, sg = args.batch, args.ghost, args.small_batch, args.small_ghost
    for device in devices:
        case(f"BN fwd+bwd  batch {b} ghost {g}", b, g, False, args, device)
        case(f"BN fwd+bwd  batch {sb} ghost {sg}", sb, sg, False, args, device)
        case(f"Linear-BN-ReLU  batch {b} ghost {g}", b, g, True, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
