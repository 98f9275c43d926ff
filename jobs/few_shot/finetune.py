"""k-shot fine-tuning of the source model: FT, LP, LP-FT and which parts are tuned.

The protocol of Lee et al. (daintlab/fewshot-SFDA): Adam, weight decay 0, batch 32, a fixed
number of steps, model selection by the lowest loss on one validation image per class,
checked every `eval_every` steps; the learning rate is chosen on the 1-shot split.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from skeptic.training import Autocast, evaluate, optimizer_step

# method -> the parameters it tunes (LP-FT: classifier for the first half of the steps, then all)
FT_METHODS: dict[str, str] = {
    "ft": "all",
    "lp": "classifier",
    "bn": "bn",
    "cls_bn": "classifier+bn",
    "lp_ft": "classifier, then all",
}


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def tuned_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    """The parameters a variant trains; everything else gets requires_grad False."""
    bn = [p for m in bn_layers(model) for p in m.parameters()]
    chosen = {
        "all": list(model.parameters()),
        "classifier": list(model.classifier.parameters()),
        "bn": bn,
        "classifier+bn": list(model.classifier.parameters()) + bn,
        "features": list(model.features.parameters()),
    }[part]
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def set_mode(model: nn.Module, part: str) -> None:
    """Train mode, except that a linear probe keeps the backbone (its BN statistics
    included) exactly as the source trained it."""
    model.train()
    if part == "classifier":
        model.features.eval()


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of indices 0..n-1 (each pass is a fresh permutation);
    a leftover of one sample is skipped (BatchNorm needs two)."""
    while True:
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            if len(idx) >= 2 or n == 1:
                yield idx


@dataclass
class Point:
    """One evaluation point of an adaptation run: the step and the running train loss."""

    step: int
    train_loss: float


def run_steps(
    loss_fn: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    eval_every: int,
    start: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> Iterator[Point]:
    """Optimise `loss_fn(step)` for `steps` steps, yielding every `eval_every` steps and
    at the end, so the caller evaluates and selects models at a fixed step interval."""
    total, count = 0.0, 0
    for step in range(start, start + steps):
        with autocast():  # the forward pass only; backward runs outside autocast
            loss = loss_fn(step)
        optimizer_step(optimizer, loss, scheduler=scheduler)
        total, count = total + loss.item(), count + 1
        done = step + 1
        if done % eval_every == 0 or done == start + steps:
            yield Point(done, total / count)
            total, count = 0.0, 0


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    lr: float,
    steps: int,
    eval_every: int,
    batch_size: int,
    seed: int,
    autocast: Autocast = contextlib.nullcontext,
) -> Iterator[Point]:
    """Fine-tune `model` in place on the labelled shots with Adam (weight decay 0)."""
    if method not in FT_METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; allowed: {', '.join(FT_METHODS)}")
    gen = torch.Generator().manual_seed(seed)
    stream = batches(len(x), batch_size, gen)

    def loss_fn(step: int) -> torch.Tensor:
        idx = next(stream).to(x.device)
        return nn.functional.cross_entropy(model(x[idx]), y[idx])

    phases = [("classifier", steps // 2), ("all", steps - steps // 2)]
    if method != "lp_ft":
        phases = [(FT_METHODS[method], steps)]
    start = 0
    for part, n in phases:
        if n == 0:
            continue
        opt = torch.optim.Adam(tuned_parameters(model, part), lr=lr, weight_decay=0.0)
        set_mode(model, part)
        yield from run_steps(loss_fn, opt, n, eval_every, start, autocast=autocast)
        start += n


@dataclass
class Selected:
    """The model with the lowest validation loss among the evaluation points."""

    step: int
    val_loss: float
    state: dict[str, torch.Tensor]


def select_by_val_loss(
    model: nn.Module, points: Iterator[Point], xv: torch.Tensor, yv: torch.Tensor
) -> Selected:
    """Run `points` to the end, keeping a copy of the weights with the lowest val loss
    (the source model itself, step 0, included)."""
    best = Selected(0, evaluate(model, xv, yv)[0], copy.deepcopy(model.state_dict()))
    for point in points:
        loss = evaluate(model, xv, yv)[0]
        if loss < best.val_loss:
            best = Selected(point.step, loss, copy.deepcopy(model.state_dict()))
    return best


def choose_lr(
    source: nn.Module,
    x1: torch.Tensor,
    y1: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    method: str,
    grid: Sequence[float],
    steps: int,
    eval_every: int,
    batch_size: int,
    seed: int,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[float, dict[float, float]]:
    """The paper's LR choice: fine-tune on the 1-shot split with every LR of the grid and
    keep the one whose selected model has the lowest validation loss."""
    losses = {}
    for lr in grid:
        model = copy.deepcopy(source)
        points = finetune(model, x1, y1, method, lr, steps, eval_every, batch_size, seed, autocast)
        losses[lr] = select_by_val_loss(model, points, xv, yv).val_loss
    return min(losses, key=losses.get), losses
