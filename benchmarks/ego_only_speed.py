"""What does one `ego_only` step cost: an MAE pretraining step, a supervised (exo) step and a
fine-tuning step, on the device at hand?

The study's own steps (jobs.ego_only.train: AdamW, the warm-up + cosine schedule, gradient
clipping) on the default model (ViT width 64, depth 4, tubelets 2x8x8 over 16 frames of
32x32) and generated clips, at --batch (64) clips: two warm-up steps, then --steps (10)
timed, on CUDA when there is a GPU (synchronised before each clock read), else on the CPU
with each of --threads (1 and 2; a trial gets one). Prints seconds per step, clips/s, each
step's time relative to the fine-tuning step's, and the seconds per pretraining clip that a
GPU-hours estimate would use.

    .venv/bin/python benchmarks/ego_only_speed.py [--batch 64] [--steps 10] [--threads 1 2]

Measured on this 2-core machine, batch 64: MAE step 0.227 s, fine-tuning step 0.293 s on one
thread (0.78x); 0.151 s and 0.217 s on two (0.70x).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from jobs.ego_only.clips import ACTIONS, generate
from jobs.ego_only.models import MAE, Segmenter, VideoViT
from jobs.ego_only.study import Params, encoder_config, model_config
from jobs.ego_only.train import CLIP_NORM, as_frames, frame_loss, optimizer
from skeptic.training import optimizer_step


def timed(step: Callable[[], None], steps: int, cuda: bool) -> float:
    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def steps_of(p: Params, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
    """One step of each kind, as the stages and a trial run it."""
    device = x.device
    mae = MAE(VideoViT(encoder_config(p)), p.mask_ratio).to(device)
    seg = Segmenter(model_config(p, list(ACTIONS))).to(device)
    opts = {"mae": optimizer(mae, p.pretrain_lr, 1000), "seg": optimizer(seg, p.lr, 1000)}
    gen = torch.Generator().manual_seed(0)

    def mae_step() -> None:
        optimizer_step(
            opts["mae"][0], mae.loss(as_frames(x, device), gen), CLIP_NORM, opts["mae"][1]
        )

    def seg_step() -> None:
        loss = frame_loss(seg(as_frames(x, device)), y)
        optimizer_step(opts["seg"][0], loss, CLIP_NORM, opts["seg"][1])

    # exo_sup's pretraining step is a fine-tuning step on exocentric clips: the same cost
    return {"MAE pretraining": mae_step, "fine-tuning (and exo_sup)": seg_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    p = Params()
    clips = generate("ego", args.batch, frames=p.frames, size=p.size, seed=0)
    x, y = torch.from_numpy(clips.x).to(device), torch.from_numpy(clips.y).to(device)
    settings = [("cuda", 0)] if cuda else [("cpu", t) for t in args.threads]
    print(
        f"batch {args.batch} clips of {p.frames}x{p.size}x{p.size}; ViT width {p.dim}, depth {p.depth}"
    )
    print(f"{'device':28} {'step':28} {'s/step':>8} {'clips/s':>9} {'/ fine-tune':>12}")
    for kind, threads in settings:
        if not cuda:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        name = torch.cuda.get_device_name() if cuda else f"CPU, {threads} thread(s)"
        times = {k: timed(step, args.steps, cuda) for k, step in steps_of(p, x, y).items()}
        base = times["fine-tuning (and exo_sup)"]
        for k, s in times.items():
            print(f"{name:28} {k:28} {s:8.3f} {args.batch / s:9.0f} {s / base:12.2f}")
        print(
            f"{name:28} seconds per pretraining clip (MAE): {times['MAE pretraining'] / args.batch:.2e}"
        )


if __name__ == "__main__":
    main()
