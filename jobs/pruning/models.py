"""The study's networks, whose per-layer channel counts are their whole config.

- `vgg` (Params.arch `small_vgg`, the default): a small VGG-style CNN, [conv3x3 - BN - ReLU]
  x 6 (w, w, 2w, 2w, 4w, 4w), max-pools after convs 2, 4 and 6, global pool, linear.
- `vgg16`, `resnet56`, `resnet110`: the paper's CIFAR networks (cifar_nets.py).

Pruning only changes the channel counts, so `model_config["channels"]` read off a pruned
network rebuilds it exactly (module names are the same, only the shapes shrink): the
registry stores weights + this config, never a pickled module. `channels` are the widths of
the prunable convs (`prunable_convs`): every conv of a VGG, the first conv of every residual
block of a ResNet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jobs.pruning import cifar_nets

# Params.arch -> the config's "arch" (the small VGG's configs say "vgg", as they always did)
CONFIG_ARCH = {
    "small_vgg": "vgg",
    "vgg16": "vgg16",
    "resnet56": "resnet56",
    "resnet110": "resnet110",
}


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


def full_channels(arch: str, width: int = 16) -> list[int]:
    """The unpruned `channels` of a Params.arch (`width` is the small VGG's only)."""
    if arch == "small_vgg":
        return base_channels(width)
    if arch == "vgg16":
        return cifar_nets.vgg16_channels()
    return cifar_nets.resnet_channels(cifar_nets.RESNET_DEPTHS[arch])


def min_side(arch: str) -> int:
    """The smallest image side the arch's pooling leaves at least one pixel of."""
    return {"small_vgg": 2 ** len(POOL_AFTER), "vgg16": 16}.get(arch, 4)


def model_config(
    channels: list[int], input_shape: list[int], class_names: list[str], arch: str = "vgg",
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """The JSON-able builder config (extra: ratio, method, flops, ... for the registry).
    `arch` is the config's name (CONFIG_ARCH's values)."""
    return {
        "arch": arch, "channels": [int(c) for c in channels], "input_shape": list(input_shape),
        "num_classes": len(class_names), "class_names": list(class_names), **extra,
    }  # fmt: skip


def build(config: dict[str, Any]) -> nn.Module:
    arch, channels = config.get("arch", "vgg"), config["channels"]
    in_channels, classes = config["input_shape"][0], config["num_classes"]
    if arch == "vgg":
        return VGG(channels, in_channels, classes)
    if arch == "vgg16":
        return cifar_nets.VGG16(channels, in_channels, classes)
    if arch in cifar_nets.RESNET_DEPTHS:
        return cifar_nets.CifarResNet(
            cifar_nets.RESNET_DEPTHS[arch], channels, in_channels, classes
        )
    raise ValueError(f"model_config arch {arch!r}: allowed {sorted(set(CONFIG_ARCH.values()))}")


def prunable_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The convs whose filters structured pruning removes, in order: every conv of a VGG, the
    first conv of every residual block of a ResNet (the second's output is the shortcut's)."""
    if isinstance(model, cifar_nets.CifarResNet):
        return [block.conv1 for block in model.blocks()]
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def channels_of(model: nn.Module) -> list[int]:
    """The widths of the prunable convs of a (possibly pruned) model, in order: its config's
    `channels`."""
    return [conv.out_channels for conv in prunable_convs(model)]
