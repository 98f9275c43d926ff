"""The training loops: pretraining (masked autoencoding, or supervised segmentation of the
exocentric clips) and fine-tuning for per-frame segmentation, over uint8 clips.

Every loop is AdamW with MAE-ST's betas (0.9, 0.95) and weight decay 0.05, a linear
warm-up over the first tenth of its steps, then a cosine decay to zero (main_pretrain.py,
main_finetune.py). Each step's batch is drawn from a generator of (seed, chunk), so a
resumed fine-tune replays the batches it would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from jobs.ego_only.models import MAE, Segmenter, VideoViT
from skeptic.training import epoch_generator, optimizer_step, shuffled_batches

BETAS, WEIGHT_DECAY, WARMUP = (0.9, 0.95), 0.05, 0.1
CLIP_NORM = 1.0
EVAL_CHUNK = 256


def optimizer(model: nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:  # fmt: skip
    """AdamW without weight decay on biases, norms and positional embeddings (as MAE), and
    the warm-up + cosine schedule over `steps`."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_" not in n)]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": rest, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS)
    warm = max(1, round(WARMUP * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def as_frames(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 clips (n, T, H, W, 3) -> floats in [0, 1] on `device`."""
    return x.to(device, non_blocking=True).float().div_(255)


def batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """`steps` batches of min(batch, n) distinct clips each, drawn from `gen`."""
    size = min(batch, n)
    return [torch.randperm(n, generator=gen)[:size] for _ in range(steps)]


def pretrain(loss_of: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
             model: nn.Module, x: torch.Tensor, epochs: int, batch: int, lr: float, seed: int,
             log: Callable[[dict[str, float], int], None]) -> list[float]:  # fmt: skip
    """`epochs` passes over the clips `x` (uint8, CPU), minimising `loss_of(indices, frames,
    generator)`; returns each epoch's mean loss (also logged)."""
    per_epoch = max(1, len(x) // batch)
    opt, sched = optimizer(model, lr, epochs * per_epoch)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for epoch in range(epochs):
        gen = epoch_generator(seed, epoch)
        total = 0.0
        for idx in shuffled_batches(len(x), batch, gen, drop_last=len(x) >= batch):
            loss = loss_of(idx, as_frames(x[idx], device), gen)
            optimizer_step(opt, loss, CLIP_NORM, sched)
            total += loss.item()
        losses.append(total / per_epoch)
        log({"pretrain_loss": losses[-1]}, epoch)
    return losses


def pretrain_mae(mae: MAE, x: torch.Tensor, epochs: int, batch: int, lr: float, seed: int,
                 log: Callable[[dict[str, float], int], None]) -> list[float]:  # fmt: skip
    return pretrain(lambda idx, f, gen: mae.loss(f, gen), mae, x, epochs, batch, lr, seed, log)


def pretrain_supervised(encoder: VideoViT, x: torch.Tensor, y: torch.Tensor, classes: int,
                        epochs: int, batch: int, lr: float, seed: int,
                        log: Callable[[dict[str, float], int], None]) -> list[float]:  # fmt: skip
    """Per-frame segmentation of labelled clips, through a head that is then thrown away
    (the transfer keeps the encoder, as a Kinetics-supervised backbone)."""
    names = [str(c) for c in range(classes)]
    model = Segmenter(encoder.config | {"classes": names}).to(next(encoder.parameters()).device)
    model.encoder = encoder
    device = next(model.parameters()).device

    def loss_of(idx: torch.Tensor, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return frame_loss(model(frames), y[idx].to(device))

    return pretrain(loss_of, model, x, epochs, batch, lr, seed, log)


def frame_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every labelled frame: logits (B, T, C), labels (B, T), -1 ignored."""
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1)


def finetune_chunk(model: Segmenter, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                   x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
                   gen: torch.Generator) -> float:  # fmt: skip
    """`steps` fine-tuning steps on the labelled clips; their mean loss."""
    device = next(model.parameters()).device
    model.train()
    total = 0.0
    for idx in batches(len(x), batch, steps, gen):
        loss = frame_loss(model(as_frames(x[idx], device)), y[idx].to(device))
        optimizer_step(opt, loss, CLIP_NORM, sched)
        total += loss.item()
    return total / max(1, steps)


@torch.no_grad()
def frame_probs(model: Segmenter, x: torch.Tensor) -> np.ndarray:
    """Per-frame class probabilities (n, T, C) in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    out = [
        torch.softmax(model(as_frames(xb, device)).float(), -1).cpu() for xb in x.split(EVAL_CHUNK)
    ]
    return torch.cat(out).numpy()
