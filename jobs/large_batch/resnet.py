"""The CIFAR ResNet of Hoffer, Hubara & Soudry's code (eladhoffer/bigBatch, models/resnet.py,
`ResNet_cifar10`), written again here with its batch norms made by the study's Ghost BN.

As bigBatch builds it (depth 6n + 2; ResNet-44: n = 7, about 0.66M parameters on CIFAR-10):
- a 3x3 conv (16 channels, no bias), BN, ReLU; three stages of n BasicBlocks at 16, 32, 64
  channels, the second and third starting with stride 2; an average pool over the last 8x8
  map (adaptive here, so smaller test images work too) and one Linear to the classes;
- BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. Where the shape
  changes the shortcut is a 1x1 conv (stride 2, no bias) and a BN (He et al.'s option B;
  bigBatch's `_make_layer`), not the zero-padding option A of the original CIFAR ResNets;
- init (bigBatch's `init_model`): conv weights N(0, 2 / (k * k * out_channels)), BN weight
  1 and bias 0, the Linear at PyTorch's default.

Every BatchNorm2d is `ghost_bn.make_norm2d(channels, ghost_batch)`: plain `nn.BatchNorm2d`
for ghost_batch None, else `GhostBatchNorm2d` (statistics per chunk of ghost_batch images),
so the +GBN / +RA arms run on this net as on the MLP. bigBatch instead feeds the network one
128-image chunk at a time (main_gbn.py), which computes the same statistics.

Input: images in [0, 1] (what the data loaders hand a trial), normalised inside the model by
the per-channel mean and std bigBatch's transforms use for CIFAR (preprocess.py: the ImageNet
statistics), so the registered model takes the same [0, 1] images as the trial saw.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from jobs.large_batch.ghost_bn import make_norm2d

__all__ = ["MEAN", "STD", "BasicBlock", "ResNetCifar", "blocks_per_stage"]

# bigBatch's preprocess.py normalises CIFAR with the ImageNet statistics (__imagenet_stats)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def blocks_per_stage(depth: int) -> int:
    """n of a depth-(6n + 2) CIFAR ResNet; ValueError for another depth."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}"
        )
    return (depth - 2) // 6


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, ghost: int | None):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = make_norm2d(cout, ghost)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = make_norm2d(cout, ghost)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:  # option B: a projection where the shape changes
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                make_norm2d(cout, ghost),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """bigBatch's `ResNet_cifar10(depth)` with Ghost BN (ghost_batch None: plain BN)."""

    def __init__(
        self,
        depth: int = 44,
        num_classes: int = 10,
        ghost_batch: int | None = None,
        in_channels: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ):
        super().__init__()
        n = blocks_per_stage(depth)
        # bigBatch: the ImageNet statistics for colour images, 0.5 / 0.5 for MNIST's one channel
        mean = mean or (MEAN if in_channels == 3 else (0.5,) * in_channels)
        std = std or (STD if in_channels == 3 else (0.5,) * in_channels)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values (one per input channel)")
        # not in the state_dict: the config rebuilds them (they are constants, not weights)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm2d(16, ghost_batch)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, ghost_batch))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)  # bigBatch: AvgPool2d(8) on the 8x8 map of 32x32 input
        self.fc = nn.Linear(64, num_classes)
        self._init()

    def _init(self) -> None:
        # bigBatch's init_model (the Linear keeps PyTorch's default, as there)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
