"""Source-free unsupervised domain adaptation baselines, each with its official settings.

- SHOT (Liang et al. 2020; tim-learn/SHOT object/image_target.py): information maximisation
  (confident + diverse predictions) plus 0.3 x cross-entropy to pseudo-labels from feature
  centroids, recomputed once per epoch (`obtain_label`); the classifier ("hypothesis") is
  frozen, the backbone adapts at 0.1 x and the bottleneck at 1 x lr 1e-2; SGD (momentum 0.9,
  nesterov, weight decay 1e-3) with (1 + 10 t / T)^-0.75 decay, batch 64, 15 epochs.
- AaD (Yang et al. 2022; Albert0147/AaD_SFDA office-home/train_tar.py, the Office-Home
  setting): predictions of a sample and its K nearest neighbours in a feature bank are
  pulled together, other predictions in the batch pushed apart with a constant alpha = 1;
  backbone 0.1 x, bottleneck and classifier 1 x lr 1e-3 (the classifier is trained), SGD
  (momentum 0.9, nesterov, weight decay 5e-4) without decay, batch 64, K = 3 (2 after half
  the steps, as that script does), 40 epochs.
- TENT (Wang et al. 2021; DequanWang/tent, its CIFAR configuration): entropy of the
  predictions on the test batches themselves, one Adam step (lr 1e-3) per batch of 128, the
  BatchNorm2d affine parameters alone, BatchNorm on batch statistics (running ones removed).

None of them sees a target label: the model is the last step (the caller may also log the
oracle, best-test-accuracy step, and must say that it is one).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from jobs.few_shot.augment import Images, as_images
from jobs.few_shot.finetune import Point, batches, bn_layers, is_check, set_mode, tuned_parameters
from skeptic.training import Autocast, optimizer_step

SFUDA_METHODS = ("shot", "aad", "tent")


@dataclass(frozen=True)
class SfudaConfig:
    """Each method's hyperparameters, from its released code (see HPARAMS)."""

    optimizer: str  # "sgd" (momentum 0.9, nesterov) or "adam"
    lr: float
    batch_size: int
    epochs: int  # passes over the data it adapts on
    weight_decay: float = 0.0
    backbone_lr: float = 1.0  # the backbone's lr as a fraction of lr (SHOT and AaD: 0.1)
    decay: bool = False  # SHOT's (1 + 10 t / T) ** -0.75 lr decay
    beta: float = 0.3  # SHOT: weight of the pseudo-label cross-entropy (cls_par)
    neighbours: int = 3  # AaD: K
    alpha: float = 1.0  # AaD: the dispersion weight (constant)


HPARAMS: dict[str, SfudaConfig] = {
    "shot": SfudaConfig(
        "sgd", 1e-2, 64, 15, weight_decay=1e-3, backbone_lr=0.1, decay=True, beta=0.3
    ),
    "aad": SfudaConfig("sgd", 1e-3, 64, 40, weight_decay=5e-4, backbone_lr=0.1, neighbours=3),
    "tent": SfudaConfig("adam", 1e-3, 128, 1),
}
# what each method trains (tuned_parameters' parts)
PARTS = {"shot": "features", "aad": "all", "tent": "bn"}


# ---- the losses ----------------------------------------------------------------------------


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy of softmax(logits), in nats."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1)


def information_maximization(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SHOT's L_ent + L_div: mean per-sample entropy minus the entropy of the mean prediction.
    Lowest (-log C) when every prediction is confident and the classes are used equally."""
    p = F.softmax(logits, dim=1)
    mean = p.mean(0)
    return entropy(logits).mean() + (mean * torch.log(mean + eps)).sum()


@torch.no_grad()
def shot_pseudo_labels(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """SHOT's obtain_label: centroids weighted by the softmax predictions, then hard-label
    centroids, labels by the nearest centroid (cosine, on features with a 1 appended). In
    each of the two rounds only the classes that the previous labels use (first the
    classifier's argmax, then the first round's labels) are candidate centroids."""
    f = torch.cat([features, torch.ones(len(features), 1, device=features.device)], 1)
    f = F.normalize(f, dim=1)
    weights = F.softmax(logits, dim=1)
    labels = weights.argmax(1)
    for _ in range(2):
        centroids = weights.T @ f / (weights.sum(0)[:, None] + 1e-8)
        labelset = torch.unique(labels)  # classes predicted at least once (threshold 0)
        cos = f @ F.normalize(centroids[labelset], dim=1).T
        labels = labelset[cos.argmax(1)]
        weights = F.one_hot(labels, weights.shape[1]).float()
    return labels


def shot_loss(logits: torch.Tensor, pseudo: torch.Tensor, beta: float) -> torch.Tensor:
    return information_maximization(logits) + beta * F.cross_entropy(logits, pseudo)


def aad_loss(probs: torch.Tensor, neighbour_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """AaD: -(agreement with the K neighbours' stored predictions) + alpha * (agreement with
    the other samples of the batch). probs: B x C; neighbour_probs: B x K x C."""
    attract = (probs[:, None, :] * neighbour_probs).sum(-1).sum(1).mean()
    dots = probs @ probs.T
    disperse = (dots - torch.diag(torch.diag(dots))).sum(1).mean()
    return -attract + alpha * disperse


def tent_loss(logits: torch.Tensor) -> torch.Tensor:
    return entropy(logits).mean()


# ---- the adaptation runs -------------------------------------------------------------------


def _optimizer(model: nn.Module, method: str, cfg: SfudaConfig, steps: int) -> tuple:
    """The method's optimiser over what it trains, the backbone at cfg.backbone_lr x lr."""
    params = {id(p) for p in tuned_parameters(model, PARTS[method])}
    backbone = [p for p in model.features.parameters() if id(p) in params]
    params -= {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) in params]
    groups = [g for g in (
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr}, {"params": rest, "lr": cfg.lr},
    ) if g["params"]]  # fmt: skip
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay), None
    opt = torch.optim.SGD(
        groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
    )
    if not cfg.decay:
        return opt, None
    # SHOT's lr_scheduler is applied before each update with iter_num = t + 1
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 + 10 * (t + 1) / steps) ** -0.75)
    return opt, decay


def _embed(model: nn.Module, x: Images) -> tuple[torch.Tensor, ...]:
    """Bottleneck features and logits of all of `x`, in eval mode (BN on running stats),
    on SHOT's test transform (its obtain_label and AaD's bank read the test loader)."""
    feats = x.predict(nn.Sequential(model.features, model.bottleneck), "shot_test")
    with torch.no_grad():
        return feats, model.classifier(feats)


def steps_for(method: str, n: int, cfg: SfudaConfig | None = None) -> int:
    """The method's update count on n images: its epochs of batches (a last batch of one
    image skipped)."""
    cfg = cfg or HPARAMS[method]
    per_epoch = n // cfg.batch_size + (n % cfg.batch_size > 1)
    return max(1, cfg.epochs * per_epoch)


def tent_configure(model: nn.Module) -> None:
    """TENT's configure_model: BatchNorm2d normalises with the batch's statistics, always."""
    for m in bn_layers(model):
        m.track_running_stats = False
        m.running_mean, m.running_var, m.num_batches_tracked = None, None, None


def adapt(
    model: nn.Module,
    x: torch.Tensor | Images,
    method: str,
    eval_every: int,
    seed: int,
    cfg: SfudaConfig | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> Iterator[Point]:
    """Adapt `model` in place on the unlabelled target images `x` (TENT: the test images),
    in memory or streamed."""
    if method not in SFUDA_METHODS:
        raise ValueError(f"unknown SFUDA method {method!r}; allowed: {', '.join(SFUDA_METHODS)}")
    cfg = cfg or HPARAMS[method]
    x = as_images(x)
    steps = steps_for(method, len(x), cfg)
    if method == "tent":
        tent_configure(model)
    opt, decay = _optimizer(model, method, cfg, steps)
    mode = "all" if method == "tent" else PARTS[method]  # TENT: model.train() throughout
    gen = torch.Generator().manual_seed(seed)  # the batches and their augmentation
    # SHOT's and AaD's target loader augments (image_train), TENT predicts the test batches
    # as they are
    view = "test" if method == "tent" else "target"
    stream = x.batches(batches(len(x), cfg.batch_size, gen), view, gen)
    make = {"shot": _shot, "aad": _aad, "tent": _tent}[method]
    loss_fn = make(model, x, stream, cfg, steps, math.ceil(steps / cfg.epochs))
    set_mode(model, mode)
    total, count = 0.0, 0
    for step in range(steps):
        with autocast():
            loss = loss_fn(step)
        optimizer_step(opt, loss, scheduler=decay)
        total, count = total + loss.item(), count + 1
        if is_check(step + 1, eval_every, steps):
            yield Point(step + 1, total / count)
            set_mode(model, mode)
            total, count = 0.0, 0


def _tent(
    model: nn.Module, x: Images, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    def loss_fn(step: int) -> torch.Tensor:
        return tent_loss(model(next(stream)[1]))

    return loss_fn


def _shot(
    model: nn.Module, x: Images, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    # Pseudo-labels from the whole target set at the start of every epoch (interval_iter =
    # max_iter // interval with interval = max_epoch), with the model in eval mode.
    pseudo: dict[str, torch.Tensor] = {}

    def loss_fn(step: int) -> torch.Tensor:
        if step % epoch == 0:
            pseudo["labels"] = shot_pseudo_labels(*_embed(model, x))
            set_mode(model, PARTS["shot"])
        idx, xb = next(stream)
        return shot_loss(model(xb), pseudo["labels"][idx], cfg.beta)

    return loss_fn


def _aad(
    model: nn.Module, x: Images, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    feats, logits = _embed(model, x)
    bank = {"features": F.normalize(feats, dim=1), "scores": F.softmax(logits, dim=1)}

    def loss_fn(step: int) -> torch.Tensor:
        # the Office-Home script drops K to 2 once past half of its iterations
        k = min(cfg.neighbours if step <= steps // 2 else 2, len(x) - 1)
        idx, xb = next(stream)
        feats = model.bottleneck(model.features(xb))
        probs = F.softmax(model.classifier(feats), dim=1)
        with torch.no_grad():
            f = F.normalize(feats.detach(), dim=1)
            bank["features"][idx] = f
            bank["scores"][idx] = probs.detach()
            near = (f @ bank["features"].T).topk(k + 1, dim=1).indices[:, 1:]
        return aad_loss(probs, bank["scores"][near], cfg.alpha)

    return loss_fn
