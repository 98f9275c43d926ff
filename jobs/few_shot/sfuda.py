"""Source-free unsupervised domain adaptation baselines, each with its own loss.

- SHOT (Liang et al. 2020): information maximisation (confident + diverse predictions) plus
  cross-entropy to self-supervised pseudo-labels from feature centroids; the classifier
  ("hypothesis") is frozen and the feature extractor adapts.
- AaD (Yang et al. 2022, "Attracting and Dispersing"): predictions of a sample and its K
  nearest neighbours in a feature bank are pulled together, other predictions in the batch
  pushed apart; classifier frozen, as in their code (after SHOT/NRC).
- TENT (Wang et al. 2021): minimise the entropy of predictions, training only the BatchNorm
  affine parameters, with batch statistics.

None of them sees a target label: selection is the last step (the caller may also log the
oracle, best-test-accuracy step, and must say that it is one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from jobs.few_shot.finetune import Point, batches, run_steps, set_mode, tuned_parameters
from skeptic.training import Autocast, predict

SFUDA_METHODS = ("shot", "aad", "tent")


@dataclass(frozen=True)
class SfudaConfig:
    """Each method's hyperparameters, from its paper / released code (see HPARAMS)."""

    optimizer: str  # "sgd" (momentum 0.9, nesterov, SHOT's lr decay) or "adam"
    lr: float
    weight_decay: float = 0.0
    beta: float = 0.3  # SHOT: weight of the pseudo-label cross-entropy
    neighbours: int = 3  # AaD: K
    decay: float = 0.75  # AaD: the dispersion weight is (1 + 10 t / T) ** -decay


HPARAMS: dict[str, SfudaConfig] = {
    # SHOT: SGD, lr 1e-2 with (1 + 10 p) ** -0.75 decay, wd 1e-3, beta (cls_par) 0.3.
    "shot": SfudaConfig("sgd", 1e-2, weight_decay=1e-3, beta=0.3),
    # AaD: the SHOT/NRC code base's optimiser and schedule, K = 3, alpha decay exponent 0.75.
    "aad": SfudaConfig("sgd", 1e-2, weight_decay=1e-3, neighbours=3, decay=0.75),
    # TENT: Adam, lr 1e-3, BN affine parameters only.
    "tent": SfudaConfig("adam", 1e-3),
}


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
    """SHOT's self-supervised pseudo-labels: centroids weighted by the predictions, labels by
    the nearest centroid (cosine), then one more round with hard-label centroids."""
    f = torch.cat([features, torch.ones(len(features), 1, device=features.device)], 1)
    f = F.normalize(f, dim=1)
    weights = F.softmax(logits, dim=1)
    for _ in range(2):
        centroids = F.normalize(weights.T @ f / (weights.sum(0)[:, None] + 1e-8), dim=1)
        labels = (f @ centroids.T).argmax(1)
        # SHOT keeps only classes that received samples as centroids in the second round.
        present = torch.bincount(labels, minlength=weights.shape[1]) > 0
        weights = F.one_hot(labels, weights.shape[1]).float() * present
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


def _optimizer(params: list[nn.Parameter], cfg: SfudaConfig, steps: int) -> tuple:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay), None
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
    )
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 + 10 * t / steps) ** -0.75)
    return opt, decay


def _embed(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Features and logits of all of `x`, in eval mode (BN on its running statistics)."""
    feats = predict(model.features, x)
    with torch.no_grad():
        return feats, model.classifier(feats)


def adapt(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    steps: int,
    eval_every: int,
    batch_size: int,
    seed: int,
    cfg: SfudaConfig | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> Iterator[Point]:
    """Adapt `model` in place on the unlabelled target images `x`."""
    if method not in SFUDA_METHODS:
        raise ValueError(f"unknown SFUDA method {method!r}; allowed: {', '.join(SFUDA_METHODS)}")
    cfg = cfg or HPARAMS[method]
    part = "bn" if method == "tent" else "features"
    opt, decay = _optimizer(tuned_parameters(model, part), cfg, steps)
    set_mode(model, part)
    stream = batches(len(x), batch_size, torch.Generator().manual_seed(seed))
    make = {"shot": _shot, "aad": _aad, "tent": _tent}[method]
    loss_fn = make(model, x, stream, cfg, steps, max(1, len(x) // batch_size))
    yield from run_steps(loss_fn, opt, steps, eval_every, scheduler=decay, autocast=autocast)


def _tent(
    model: nn.Module, x: torch.Tensor, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    def loss_fn(step: int) -> torch.Tensor:
        return tent_loss(model(x[next(stream).to(x.device)]))

    return loss_fn


def _shot(
    model: nn.Module, x: torch.Tensor, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    # Pseudo-labels are recomputed from the whole target set once per pass over it (`epoch`
    # steps), as SHOT recomputes them at every interval of its training.
    pseudo: dict[str, torch.Tensor] = {}

    def loss_fn(step: int) -> torch.Tensor:
        if step % epoch == 0:
            pseudo["labels"] = shot_pseudo_labels(*_embed(model, x))
        idx = next(stream).to(x.device)
        return shot_loss(model(x[idx]), pseudo["labels"][idx], cfg.beta)

    return loss_fn


def _aad(
    model: nn.Module, x: torch.Tensor, stream: Iterator, cfg: SfudaConfig, steps: int, epoch: int
) -> Callable[[int], torch.Tensor]:
    feats, logits = _embed(model, x)
    bank = {"features": F.normalize(feats, dim=1), "scores": F.softmax(logits, dim=1)}
    k = min(cfg.neighbours, len(x) - 1)

    def loss_fn(step: int) -> torch.Tensor:
        idx = next(stream).to(x.device)
        f = model.features(x[idx])
        probs = F.softmax(model.classifier(f), dim=1)
        with torch.no_grad():
            bank["features"][idx] = F.normalize(f.detach(), dim=1)
            bank["scores"][idx] = probs.detach()
            near = (bank["features"][idx] @ bank["features"].T).topk(k + 1, dim=1).indices[:, 1:]
        alpha = (1 + 10 * step / steps) ** -cfg.decay
        return aad_loss(probs, bank["scores"][near], alpha)

    return loss_fn
