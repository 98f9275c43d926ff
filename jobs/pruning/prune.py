"""Structured L1 filter pruning (torch-pruning), unstructured global magnitude masks
(torch.nn.utils.prune), measured FLOPs and CPU latency.

The filters to remove are chosen here, by Li et al.'s per-filter L1 norm; nothing does channel
surgery by hand: torch-pruning's dependency graph removes those filters together with their
BatchNorm entries and the next layer's input channels.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as nn_prune
from torch.utils.flop_counter import FlopCounterMode

from jobs.pruning import models


def l1_filter_norms(conv: nn.Conv2d) -> torch.Tensor:
    """Li et al.'s criterion: the L1 norm of each filter's own kernel, sum |w| over its input
    channels and 3x3 taps (vggprune.py: np.sum(abs(w), axis=(1, 2, 3))). Neither the
    BatchNorm after the conv nor the next layer's weights enter it."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def filters_to_remove(conv: nn.Conv2d, ratio: float) -> list[int]:
    """The indices of the filters `ratio` of `conv` loses, lowest own-kernel L1 norm first;
    it keeps int(out_channels x (1 - ratio)) (the 1e-9 absorbs 1 - 0.7 = 0.30000000000000004),
    and at least one: a conv without filters would cut the network."""
    return weakest_filters(conv, max(1, int(conv.out_channels * (1 - ratio) + 1e-9)))


def weakest_filters(conv: nn.Conv2d, keep: int) -> list[int]:
    """The indices of all but the `keep` filters of `conv` with the largest own-kernel L1
    norm (vggprune.py / res56prune.py keep the top `keep` by np.argsort of the norms)."""
    order = torch.argsort(l1_filter_norms(conv), stable=True)  # ascending: weakest first
    return sorted(order[: conv.out_channels - keep].tolist())


def structured_prune(model: nn.Module, input_shape: list[int], ratio: float) -> nn.Module:
    """A copy of `model` with `ratio` of every prunable conv's filters (models.prunable_convs:
    every conv of a VGG, every residual block's first conv of a ResNet) removed by Li et
    al.'s L1 norm; the classifier keeps its outputs."""
    keep = [max(1, int(c * (1 - ratio) + 1e-9)) for c in models.channels_of(model)]
    return prune_to(model, input_shape, keep)


def prune_to(model: nn.Module, input_shape: list[int], channels: list[int]) -> nn.Module:
    """A copy of `model` whose prunable convs keep `channels[i]` filters each, those of the
    largest L1 norm (a named plan: cifar_nets.plan_channels). As in the reference
    vggprune.py / res56prune.py, every layer's filters are ranked on the unpruned model
    before any is removed (Li et al.'s "independent" strategy); torch-pruning only does the
    surgery (the conv's filters, its BatchNorm entries, the next layer's input channels) on
    the indices chosen here."""
    pruned = copy.deepcopy(model).cpu().eval()
    convs = models.prunable_convs(pruned)
    if len(channels) != len(convs):
        raise ValueError(f"{len(channels)} channel counts for {len(convs)} prunable convs")
    for conv, k in zip(convs, channels, strict=True):
        if not 1 <= k <= conv.out_channels:
            raise ValueError(f"keep {k} of a conv's {conv.out_channels} filters")
    chosen = [(c, weakest_filters(c, k)) for c, k in zip(convs, channels, strict=True)]
    example = torch.zeros(1, *input_shape)
    with torch.enable_grad():  # the dependency graph is traced through autograd
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
        for conv, idxs in chosen:  # every choice made before any surgery
            if not idxs:
                continue
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
            group.prune()
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


def scratch_b_epochs(
    epochs: int, flops_full: int, flops_pruned: int, cap: float | None = None
) -> int:
    """Scratch-B's budget as the reference main_B.py computes it: int(epochs x FLOPs_unpruned
    / FLOPs_pruned) (measured), the baseline's compute spent on the smaller model. The CIFAR
    code has no cap (the paper's "at most 2x" is for ImageNet); `cap`, when set, limits it to
    cap x the baseline epochs. Never fewer than the baseline's epochs."""
    factor = flops_full / flops_pruned
    if cap is not None:
        factor = min(factor, cap)
    return max(epochs, int(epochs * factor + 1e-9))


# ---- unstructured: global magnitude masks kept through retraining ---------------------


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every conv weight: what the global unstructured mask covers. As in the reference
    lottery-ticket and weight-level code (cifar_prune_iterative.py), the classifier, the
    BatchNorms and the biases are never masked."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]


def global_magnitude_masks(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """Masks (by module name) zeroing the `ratio` smallest-|w| conv weights, one threshold
    across all conv layers."""
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
    """Fraction of exactly-zero conv weights (masked ones included): what the mask covers."""
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
