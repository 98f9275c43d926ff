"""Structured L1 filter pruning (torch-pruning), unstructured global magnitude masks
(torch.nn.utils.prune), measured FLOPs and CPU latency.

Nothing here does channel surgery by hand: torch-pruning's dependency graph removes a
conv's filters together with its BatchNorm entries and the next layer's input channels.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as nn_prune
from torch.utils.flop_counter import FlopCounterMode


def structured_prune(model: nn.Module, input_shape: list[int], ratio: float) -> nn.Module:
    """A copy of `model` with `ratio` of every conv's filters removed, lowest L1 norm first
    (Li et al. 2017, the criterion Liu et al. use); the classifier keeps its outputs."""
    pruned = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, *input_shape)
    with torch.enable_grad():  # the dependency graph is traced through autograd
        pruner = tp.pruner.MagnitudePruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[pruned.classifier],
        )
        pruner.step()
    return pruned


def count_flops(model: nn.Module, input_shape: list[int]) -> int:
    """Forward FLOPs of one image, measured by torch's FLOP counter (a MAC counts 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def scratch_b_epochs(epochs: int, flops_full: int, flops_pruned: int, cap: float) -> int:
    """Scratch-B's budget: baseline epochs x FLOPs_unpruned / FLOPs_pruned (measured), so it
    spends the same compute as the baseline, capped at `cap` x the baseline epochs."""
    factor = min(flops_full / flops_pruned, cap)
    return max(epochs, math.ceil(epochs * factor - 1e-9))


# ---- unstructured: global magnitude masks kept through retraining ---------------------


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every conv and linear weight: what the global unstructured mask covers."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def global_magnitude_masks(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """Masks (by module name) zeroing the `ratio` smallest-|w| weights across all layers."""
    scratch = copy.deepcopy(model)
    nn_prune.global_unstructured(
        prunable(scratch), pruning_method=nn_prune.L1Unstructured, amount=ratio
    )
    return {
        name: m.weight_mask.detach().clone()
        for name, m in scratch.named_modules()
        if hasattr(m, "weight_mask")
    }


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Re-parametrise weight = weight_orig * mask (a forward pre-hook), so every optimiser
    step keeps the pruned weights at zero; undo with `bake`."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        nn_prune.custom_from_mask(modules[name], "weight", mask.to(modules[name].weight.device))
    return model


def bake(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state_dict of a masked model (weight = weight_orig * mask), loadable by
    `models.build` without any pruning hooks."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("weight_mask"):
            continue
        if key.endswith("weight_orig"):
            key = key.removesuffix("_orig")
            value = value * state[f"{key}_mask"]
        out[key] = value.detach().cpu().clone()
    return out


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero conv/linear weights (masked ones included)."""
    weights = [getattr(m, n).detach() for m, n in prunable(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


# ---- latency ----------------------------------------------------------------------------


def latency_pair_ms(
    full: nn.Module, pruned: nn.Module, input_shape: list[int], batch: int, repeats: int = 15
) -> tuple[float, float]:
    """Median CPU forward time (ms) of one batch through `full` and through `pruned`, timed
    interleaved (full, pruned, pruned, full, ...) after a warm-up, so that load from other
    processes on a shared machine hits both alike."""
    full, pruned = (copy.deepcopy(m).cpu().eval() for m in (full, pruned))
    x = torch.randn(batch, *input_shape)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for _ in range(3):
            full(x), pruned(x)
        for i in range(repeats):
            for which in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                (full, pruned)[which](x)
                times[which].append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])
