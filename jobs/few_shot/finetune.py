"""k-shot fine-tuning of the source model: FT, LP, LP-FT and which parts are tuned.

The protocol of Lee et al. (daintlab/fewshot-SFDA, target_finetune.py and its scripts):
SAM (rho 0.05) around Adam, weight decay 0, batches of 32 drawn with replacement from the
shots (its InfiniteDataLoader) and augmented as its default train transform (in memory
less the crop and hue jitter; streamed, whole: see augment.py), a fixed number of steps
(1000), model selection by the lowest loss on one validation image per class, checked after
the first step, every `eval_every` steps (100) and at the last step; the learning rate is
chosen on the 1-shot split. LP-FT is two runs: LP (the classifier alone, 400 steps, lr
1e-4), whose last model starts FT (all parameters, lr 1e-5, the run that validation selects
in).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from jobs.few_shot.augment import Images, as_images, evaluate
from skeptic.training import Autocast

# method -> the parameters it tunes (the reference's --adapt: all, cls, BN, clsBN)
FT_METHODS: dict[str, str] = {
    "ft": "all",
    "lp": "classifier",
    "bn": "bn",
    "cls_bn": "classifier+bn",
    "lp_ft": "classifier (LP run), then all (FT run)",
}
SAM_RHO = 0.05  # the reference's --rho default, used with --SAM in all its scripts
LP_FT_LR_RATIO = 10.0  # LP-FT: LP at 1e-4, FT at 1e-5 in the reference (README)
LP_FT_LP_FRACTION = 0.4  # LP-FT: the LP run is 400 steps beside FT's 1000


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The convolutional BatchNorm layers: the reference's BN variants (and TENT) collect
    nn.BatchNorm2d only, so the bottleneck's BatchNorm1d is not among them."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def tuned_parameters(model: nn.Module, part: str) -> list[nn.Parameter]:
    """The parameters a variant trains; everything else gets requires_grad False."""
    bn = [p for m in bn_layers(model) for p in m.parameters()]
    head = list(model.classifier.parameters())
    chosen = {
        "all": list(model.parameters()),
        "classifier": head,
        "bn": bn,
        "classifier+bn": head + bn,
        "features": list(model.features.parameters()) + list(model.bottleneck.parameters()),
    }[part]
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def set_mode(model: nn.Module, part: str) -> None:
    """The reference's freeze_proper_param: only what is tuned is in train mode, so a frozen
    backbone keeps its BatchNorm statistics exactly as the source trained them. Called again
    after every evaluation, since `predict` sets every submodule back to train mode."""
    model.train(part in ("all", "features"))
    if part in ("bn", "classifier+bn"):
        for m in bn_layers(model):
            m.train()
    if part in ("classifier", "classifier+bn"):
        model.classifier.train()


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021) around a base optimiser, as in the
    reference's sam.py: climb to w + rho g / |g|, take the gradient there, step from w."""

    def __init__(self, params: list[nn.Parameter], base: type, rho: float = SAM_RHO, **kw):
        super().__init__(params, dict(rho=rho, **kw))
        self.base_optimizer = base(self.param_groups, **kw)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["old_p"] = p.detach().clone()
                    p.add_(p.grad * scale)
        self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.copy_(self.state[p]["old_p"])
        self.base_optimizer.step()
        self.zero_grad(set_to_none=True)


def sam_step(
    opt: SAM, loss_fn: Callable[..., torch.Tensor], batch: tuple, autocast: Autocast
) -> torch.Tensor:
    """One SAM update on the same batch (two forward-backward passes); returns the first loss."""
    with autocast():
        loss = loss_fn(*batch)
    loss.backward()
    opt.first_step()
    with autocast():
        second = loss_fn(*batch)
    second.backward()
    opt.second_step()
    return loss.detach()


def sampled_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of `batch_size` indices drawn with replacement (the reference's
    RandomSampler(replacement=True) with drop_last): 32 images a step even from 10 shots."""
    while True:
        yield torch.randint(n, (batch_size,), generator=gen)


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of indices 0..n-1 (each pass a fresh permutation; a
    leftover of one sample is skipped, as SHOT and AaD skip it): the SFUDA methods' loader."""
    while True:
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            if len(idx) >= 2 or n == 1:
                yield idx


@dataclass
class Point:
    """One evaluation point of an adaptation run: the step and the running train loss."""

    step: int
    train_loss: float


def is_check(done: int, eval_every: int, total: int) -> bool:
    """The reference's `step % val_freq == 0 or step == adapt_step - 1` (0-based step):
    after the first step, every eval_every steps after it, and after the last."""
    return (done - 1) % eval_every == 0 or done == total


def finetune(
    model: nn.Module,
    x: torch.Tensor | Images,
    y: torch.Tensor,
    method: str,
    lr: float,
    steps: int,
    eval_every: int,
    batch_size: int,
    seed: int,
    autocast: Autocast = contextlib.nullcontext,
) -> Iterator[Point]:
    """Fine-tune `model` in place on the labelled shots (`x`: images in memory or streamed,
    `y`: their labels on the model's device) with SAM(Adam, weight decay 0), yielding the
    checks of the run validation selects in (for LP-FT: its FT run)."""
    if method not in FT_METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; allowed: {', '.join(FT_METHODS)}")
    gen = torch.Generator().manual_seed(seed)  # the batches and their augmentation
    stream = _augmented(as_images(x), y, sampled_batches(len(x), batch_size, gen), gen)
    if method == "lp_ft":  # run 1: LP; its last model (no selection) starts run 2
        lp_steps = max(1, round(LP_FT_LP_FRACTION * steps))
        lp_lr = LP_FT_LR_RATIO * lr
        for _ in _run(model, "classifier", lp_lr, lp_steps, eval_every, stream, autocast):
            pass
        yield from _run(model, "all", lr, steps, eval_every, stream, autocast)
        return
    yield from _run(model, FT_METHODS[method], lr, steps, eval_every, stream, autocast)


def _augmented(
    images: Images, y: torch.Tensor, indices: Iterator[torch.Tensor], gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for idx, xb in images.batches(indices, "fewshot", gen):
        yield xb, y[idx]


def _run(
    model: nn.Module, part: str, lr: float, steps: int, eval_every: int,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]], autocast: Autocast,
) -> Iterator[Point]:  # fmt: skip
    """One run of the reference's training loop: a fresh optimiser over `part`."""
    opt = SAM(tuned_parameters(model, part), torch.optim.Adam, lr=lr, weight_decay=0.0)
    set_mode(model, part)

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(xb), yb)

    total, count = 0.0, 0
    for done in range(1, steps + 1):
        loss = sam_step(opt, loss_fn, next(stream), autocast)
        total, count = total + loss.item(), count + 1
        if is_check(done, eval_every, steps):
            yield Point(done, total / count)
            set_mode(model, part)  # the caller evaluated: put the frozen parts back in eval
            total, count = 0.0, 0


@dataclass
class Selected:
    """The model with the lowest validation loss among the evaluation points."""

    step: int
    val_loss: float
    state: dict[str, torch.Tensor]


def select_by_val_loss(
    model: nn.Module, points: Iterator[Point], xv: torch.Tensor | Images, yv: torch.Tensor
) -> Selected:
    """Run `points` to the end, keeping a copy of the weights with the lowest val loss
    among the checks (as the reference, the unadapted model is not a candidate)."""
    best = Selected(0, math.inf, copy.deepcopy(model.state_dict()))
    for point in points:
        loss = evaluate(model, as_images(xv), yv)[0]
        if loss < best.val_loss:
            best = Selected(point.step, loss, copy.deepcopy(model.state_dict()))
    return best


def choose_lr(
    source: nn.Module,
    x1: torch.Tensor | Images,
    y1: torch.Tensor,
    xv: torch.Tensor | Images,
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
