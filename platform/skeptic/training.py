"""Training helpers a study may call or ignore: evaluation, seeded epochs, step decay.

    from skeptic.training import epoch_generator, evaluate, step_decay_lr, train_epoch

    for epoch in range(ctx.start_epoch, total):
        for group in opt.param_groups:
            group["lr"] = step_decay_lr(p.lr, epoch, total, drops=(0.5, 0.75))
        with ctx.autocast():
            train_loss, train_acc = train_epoch(
                model, opt, x, y, p.batch_size, epoch_generator(ctx.seed, epoch)
            )
            val_loss, val_acc = evaluate(model, xv, yv)

Plain functions over tensors already on the device; torch only (no Ray, no MLflow), so a
study's module stays cheap to import. They do exactly what the shipped studies' own loops
did (the same random draws in the same order, the same batches, the same train/eval modes),
so a study moved onto them reports the same numbers for the same seed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

# A zero-argument factory of the context forward passes run in, e.g. a TrialContext's
# `autocast` (bf16 autocast on CUDA when the spec asks for it).
Autocast = Callable[[], contextlib.AbstractContextManager]

# One mini-batch's forward pass, (inputs, labels) -> (logits, loss).
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# seed * stride + epoch: distinct seeds never share an epoch's generator (below 100,003 epochs)
_SEED_STRIDE = 100_003


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The model's outputs for `x` in eval mode (BatchNorm on its running statistics, dropout
    off), `chunk` samples at a time so that a large set fits in memory.

    Afterwards every submodule is back in the mode it was in, so a submodule kept in eval
    mode inside a training model (a frozen backbone's BatchNorm) stays in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if not len(x):  # torch.cat of no chunks would raise
            return x.new_zeros(0, 1)
        return torch.cat([model(xb) for xb in x.split(chunk)])
    finally:
        for module, mode in modes:
            module.training = mode


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y), computed as `predict` does.

    The chunk size does not change which predictions are made, but it can change the last
    bits of a logit (matrix kernels differ by batch size), so keep a study's chunk fixed."""
    logits = predict(model, x, chunk).float()  # bf16 logits under autocast: score in fp32
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


# ---- one epoch ---------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch's shuffling (and any other draw the epoch makes).

    It depends on (seed, epoch) only: every epoch gets another order, and a trial resumed
    from a checkpoint replays exactly the order it would have had."""
    return torch.Generator().manual_seed(seed * _SEED_STRIDE + epoch)


def shuffled_batches(
    n: int,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """One pass over the indices 0..n-1 in mini-batches: a single `torch.randperm` drawn
    from `gen` (on the CPU, so the order is the same on every device), moved to `device`,
    cut into `batch_size` pieces. The last piece may be shorter; `drop_last` skips it."""
    order = torch.randperm(n, generator=gen).to(device)
    for idx in order.split(batch_size):
        if drop_last and len(idx) < batch_size:
            return
        yield idx


def optimizer_step(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    clip_norm: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """One update from `loss`: clear the gradients (to None), backpropagate, clip the total
    gradient 2-norm of the optimiser's parameters to `clip_norm` when given, step the
    optimiser, then the per-step `scheduler` when given."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm is not None:
        params = [p for group in opt.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, clip_norm)
    opt.step()
    if scheduler is not None:
        scheduler.step()


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    gen: torch.Generator,
    *,
    forward: Forward | None = None,
    clip_norm: float | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    drop_last: bool = False,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[float, float]:
    """Train `model` in train mode for one pass over (x, y) in an order drawn from `gen`
    (see `shuffled_batches`), one `optimizer_step` per mini-batch; returns the mean loss and
    the accuracy over the samples trained on.

    `forward(xb, yb) -> (logits, loss)` replaces plain cross-entropy: augmentation, Mixup,
    label smoothing (the accuracy is always counted against `yb`). `autocast` wraps each
    forward pass only, as torch recommends; a caller that wraps the whole call in autocast
    instead runs the backward pass and the update under it too."""
    if forward is None:
        forward = _cross_entropy(model)
    model.train()
    loss_sum = correct = seen = 0.0
    for idx in shuffled_batches(len(x), batch_size, gen, x.device, drop_last):
        xb, yb = x[idx], y[idx]
        with autocast():
            logits, loss = forward(xb, yb)
        optimizer_step(opt, loss, clip_norm, scheduler)
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(idx)
    return loss_sum / seen, correct / seen


def _cross_entropy(model: nn.Module) -> Forward:
    def forward(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(xb)
        return logits, nn.functional.cross_entropy(logits, yb)

    return forward


# ---- learning-rate schedule --------------------------------------------------------------------


def step_decay_lr(lr: float, epoch: int, total: int, drops: Sequence[float]) -> float:
    """The step schedule of the classic ImageNet/CIFAR recipes: `lr`, divided by 10 at each
    fraction of training in `drops`, from epoch floor(fraction * total) on.

    E.g. drops (0.5, 0.75) over 6 epochs: epochs 0-2 at lr, 3 at lr / 10, 4-5 at lr / 100."""
    return lr * 0.1 ** sum(epoch >= math.floor(f * total) for f in drops)
