"""The paper's CIFAR networks and Li et al.'s pruning plans, after the reference code
(Eric-mingjie/rethinking-network-pruning, cifar/l1-norm-pruning: models/vgg.py,
models/resnet.py, vggprune.py, res56prune.py, res110prune.py), written anew.

- `VGG16`: vgg.py at depth 16 with batch norm: 13 conv3x3-BN-ReLU (64, 64, M, 128, 128, M,
  256 x 3, M, 512 x 3, M, 512 x 3), then a 2x2 average pool (1x1 left at 32x32) and the
  classifier Linear(c, 512) - BN1d - ReLU - Linear(512, classes); 15.0M parameters.
- `CifarResNet`: resnet.py, He et al.'s CIFAR ResNet of depth 6n + 2 (BasicBlocks, 16/32/64
  channels, a parameter-free shortcut: 2x2 average pool + zero channels where the shape
  changes); ResNet-56 0.85M, ResNet-110 1.73M parameters.

A pruned network differs from the unpruned one only in its channel counts, so its config's
`channels` rebuild it: VGG-16's 13 conv widths; a ResNet's inner width of every residual
block (the output of its first conv, the only conv Li et al.'s -A/-B plans prune: the
second conv's output is tied to the shortcut).

Both normalise their input (images in [0, 1]) with the reference's CIFAR mean / std inside
the model (constant buffers, no parameters), so the registry's model takes raw images.
The average pools are adaptive: the same as the reference's AvgPool2d(2) / AvgPool2d(8) at
32x32, and still defined at other sizes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# the reference's transforms.Normalize (CIFAR-10's; its code uses them for CIFAR-100 too)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512)  # fmt: skip
RESNET_DEPTHS = {"resnet56": 56, "resnet110": 110}


class Normalize(nn.Module):
    """(x - mean) / std per channel; constants, not parameters (and not in the state_dict)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _he_normal_(conv: nn.Conv2d) -> None:
    """The reference's conv init: N(0, sqrt(2 / (k * k * out_channels)))."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))


# ---- VGG-16 -----------------------------------------------------------------------------


def vgg16_channels() -> list[int]:
    return [int(v) for v in VGG16_CFG if v != "M"]


class VGG16(nn.Module):
    """vgg.py (depth 16, batch norm): `channels` are the 13 conv widths; the 4 max-pools sit
    where VGG16_CFG has them."""

    def __init__(self, channels: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        if len(channels) != len(vgg16_channels()):
            raise ValueError(f"VGG-16 has 13 convs, got {len(channels)} channel counts")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        layers: list[nn.Module] = []
        widths = iter(channels)
        c_in = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c = next(widths)
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]  # fmt: skip
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )  # fmt: skip
        for m in self.modules():  # vgg.py's _initialize_weights
            if isinstance(m, nn.Conv2d):
                _he_normal_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.normalize(x)))
        return self.classifier(torch.flatten(x, 1))


# ---- CIFAR ResNet -----------------------------------------------------------------------


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 (20, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


def resnet_channels(depth: int) -> list[int]:
    """The unpruned inner width of every block: 16 x n, 32 x n, 64 x n."""
    n = blocks_per_stage(depth)
    return [16] * n + [32] * n + [64] * n


class Shortcut(nn.Module):
    """resnet.py's downsample_basic_block: 2x2 average pool, then zero channels up to
    `planes` (He et al.'s option A; no parameters)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        pad = x.new_zeros(x.shape[0], self.planes - x.shape[1], *x.shape[2:])
        return torch.cat([x, pad], 1)


class BasicBlock(nn.Module):
    """conv3x3(in, width, stride) - BN - ReLU - conv3x3(width, planes) - BN, + shortcut,
    ReLU. `width` is what pruning changes; `planes` is tied to the shortcut."""

    def __init__(self, inplanes: int, planes: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = Shortcut(planes) if stride != 1 or inplanes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class CifarResNet(nn.Module):
    """resnet.py: conv3x3(3, 16) - BN - ReLU, three stages of n BasicBlocks (16, 32, 64
    planes; stride 2 into stages 2 and 3), global average pool, Linear(64, classes).
    `channels`: every block's inner width (3n values)."""

    def __init__(self, depth: int, channels: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if len(channels) != 3 * n:
            raise ValueError(f"ResNet-{depth} has {3 * n} blocks, got {len(channels)} widths")
        self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], 16
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(inplanes, planes, channels[s * n + b], stride))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # resnet.py's init (the Linear keeps torch's default)
            if isinstance(m, nn.Conv2d):
                _he_normal_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[BasicBlock]:
        return [b for stage in (self.layer1, self.layer2, self.layer3) for b in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- Li et al.'s pruning plans ----------------------------------------------------------

# vggprune.py: VGG-16-A keeps 32 of conv 1's 64 filters and 256 of the 512 of convs 8-13;
# the others are kept whole (Li et al.: the layers their sensitivity analysis found robust)
VGG16_A = (32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256)

# res56prune.py / res110prune.py: `layer_id` numbers the convs from 1 (the stem conv), so a
# block's first conv has an even id; these ids are kept whole (the layers most sensitive to
# pruning, next to the stage changes), the rest lose the stage's fraction of filters.
RESNET_SKIP = {
    ("resnet56", "A"): (16, 20, 38, 54), ("resnet56", "B"): (16, 18, 20, 34, 38, 54),
    ("resnet110", "A"): (36,), ("resnet110", "B"): (36, 38, 74),
}  # fmt: skip
RESNET_STAGE_RATIO = {
    ("resnet56", "A"): (0.1, 0.1, 0.1), ("resnet56", "B"): (0.6, 0.3, 0.1),
    ("resnet110", "A"): (0.5, 0.0, 0.0), ("resnet110", "B"): (0.5, 0.4, 0.3),
}  # fmt: skip
PLANS = {"vgg16": ("uniform", "A"), "resnet56": ("uniform", "A", "B"),
         "resnet110": ("uniform", "A", "B")}  # fmt: skip
# Liu et al.'s Table 1 (L1-norm pruning) prunes with these
TABLE1_PLAN = {"vgg16": "A", "resnet56": "B", "resnet110": "B"}


def keep(n: int, ratio: float) -> int:
    """Filters kept of `n` when `ratio` of them go: int(n x (1 - ratio)) as the reference
    (the 1e-9 absorbs 1 - 0.7 = 0.30000000000000004), and at least one."""
    return max(1, int(n * (1 - ratio) + 1e-9))


def plan_channels(arch: str, plan: str, ratio: float = 0.5) -> list[int]:
    """The pruned `channels` (a config's) of `arch` under `plan`: "A" / "B" as Li et al.,
    "uniform" every prunable conv at `ratio` (VGG-16: every conv; a ResNet: every block's
    first conv)."""
    if plan not in PLANS.get(arch, ()):
        raise ValueError(f"plan {plan!r}: {arch} has {PLANS.get(arch, ())}")
    if arch == "vgg16":
        full = vgg16_channels()
        return [keep(c, ratio) for c in full] if plan == "uniform" else list(VGG16_A)
    full = resnet_channels(RESNET_DEPTHS[arch])
    if plan == "uniform":
        return [keep(c, ratio) for c in full]
    n = len(full) // 3
    skip, stage_ratio = RESNET_SKIP[(arch, plan)], RESNET_STAGE_RATIO[(arch, plan)]
    # block i's first conv is layer_id 2 + 2i; its stage is i // n (the reference's
    # "layer_id <= 18 / 36" for ResNet-56 and "<= 36 / 72" for ResNet-110)
    return [c if 2 + 2 * i in skip else keep(c, stage_ratio[i // n]) for i, c in enumerate(full)]
