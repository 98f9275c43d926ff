"""A small VGG-style CNN whose per-layer channel counts are its whole config.

Pruning only changes the channel counts, so `model_config["channels"]` read off a pruned
network rebuilds it exactly (module names are the same, only the shapes shrink): the
registry stores weights + this config, never a pickled module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def base_channels(width: int) -> list[int]:
    """VGG-style plan: two 3x3 convs per resolution, doubling the width after each pool."""
    return [width, width, 2 * width, 2 * width, 4 * width, 4 * width]


POOL_AFTER = (1, 3, 5)  # 2x2 max-pool after these conv indices: 3 resolutions


class VGG(nn.Module):
    """[conv3x3 - BN - ReLU] x len(channels), max-pools at POOL_AFTER, global pool, linear."""

    def __init__(self, channels: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def model_config(
    channels: list[int], input_shape: list[int], class_names: list[str], **extra: Any
) -> dict[str, Any]:
    """The JSON-able builder config (extra: ratio, method, flops, ... for the registry)."""
    return {
        "arch": "vgg", "channels": [int(c) for c in channels], "input_shape": list(input_shape),
        "num_classes": len(class_names), "class_names": list(class_names), **extra,
    }  # fmt: skip


def build(config: dict[str, Any]) -> VGG:
    return VGG(config["channels"], config["input_shape"][0], config["num_classes"])


def channels_of(model: nn.Module) -> list[int]:
    """The conv output widths of a (possibly pruned) model, in order."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
