"""SHOT's network (tim-learn/SHOT object/network.py): a backbone (netF), a bottleneck
(netB: Linear + BatchNorm1d, type "bn") and a weight-normalised linear classifier (netC,
type "wn"), as `features`, `bottleneck` and `classifier`.

- `SmallCNN`: the backbone at toy scale (three conv-BN-ReLU blocks), for the in-memory runs.
- `ShotResNet`: torchvision's ResNet-50 up to its average pool (SHOT's ResBase: the same
  modules, so a torchvision or timm resnet50 state dict loads into `features` by key), for
  the `paper` preset. Its backbone normalises the [0, 1] input with the ImageNet mean and
  std first (SHOT's transforms do it before the net), so that the registered model takes
  the same [0, 1] images as every other Skeptic model, and `features` (what SHOT's
  pseudo-labels and AaD's feature bank embed with) is the whole of netF.

`load_backbone` reads an ImageNet-pretrained resnet50 checkpoint (the spec's
model.weights_path) into a ShotResNet's backbone.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet50

ARCHS = ("small", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET50_FEATURES = 2048  # torchvision's resnet50().fc.in_features


def _head(features: int, bottleneck: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    neck = nn.Sequential(nn.Linear(features, bottleneck), nn.BatchNorm1d(bottleneck))
    classifier = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, num_classes))
    return neck, classifier


class SmallCNN(nn.Module):
    """SHOT's network at toy scale: a backbone (`features`, SHOT's netF: conv-BN-ReLU blocks
    of width, 2x, 4x channels, pooled), a bottleneck with BatchNorm (netB: Linear +
    BatchNorm1d, type "bn") and a weight-normalised linear classifier (netC, type "wn")."""

    def __init__(self, in_channels: int, num_classes: int, width: int, bottleneck: int = 256):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.bottleneck, self.classifier = _head(chans[-1], bottleneck, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(self.features(x)))


class _Normalize(nn.Module):
    """x -> (x - mean) / std per channel; the constants are not part of the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def resnet50_backbone() -> nn.Module:
    """torchvision's ResNet-50 (random weights) without its ImageNet head: N x 2048 features
    after the average pool and flatten, as SHOT's ResBase("resnet50")."""
    net = resnet50(weights=None)
    net.fc = nn.Identity()
    return net


class ShotResNet(nn.Module):
    """SHOT's netF (ResNet-50) + netB (bottleneck, BN) + netC (weight-normed classifier).
    The bottleneck's Linear is initialised as SHOT's init_weights does (Xavier normal, zero
    bias); the classifier as torch does, with a zero bias (SHOT's init_weights on a
    weight-normed layer only reaches the bias)."""

    def __init__(self, num_classes: int, bottleneck: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(normalize=_Normalize(), resnet=resnet50_backbone())
        )
        self.bottleneck, self.classifier = _head(RESNET50_FEATURES, bottleneck, num_classes)
        nn.init.xavier_normal_(self.bottleneck[0].weight)
        nn.init.zeros_(self.bottleneck[0].bias)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(self.features(x)))


def build(config: Mapping[str, Any]) -> nn.Module:
    """The network a model_config describes (configs written before `arch` existed are the
    small CNN's)."""
    arch = config.get("arch", "small")
    if arch == "resnet50":
        return ShotResNet(config["num_classes"], config["bottleneck"])
    if arch == "small":
        shape = config["input_shape"]
        return SmallCNN(shape[0], config["num_classes"], config["width"], config["bottleneck"])
    raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")


# ---- ImageNet-pretrained weights (model.weights_path) ----------------------------------------

# Where checkpoints keep the weights: a bare state dict, or one of these entries (torchvision
# and timm save bare state dicts; training scripts wrap them).
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")
# Prefixes that wrappers add to every key: DataParallel / DDP ("module."), torch.compile
# ("_orig_mod."), a model saved as a `model` / `backbone` / `encoder` attribute.
_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")


class WeightsError(ValueError):
    """model.weights_path is missing or is not a resnet50 checkpoint; the message says which."""


def _state_dict(obj: Any) -> dict[str, torch.Tensor]:
    for _ in range(3):  # a wrapper may wrap another ({"model": {"state_dict": ...}})
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        inner = next((obj[k] for k in _WRAPPERS if k in obj), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    raise WeightsError("it holds no state dict (a mapping of parameter names to tensors)")


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def read_resnet50_weights(path: str | Path | None) -> dict[str, torch.Tensor]:
    """The backbone part of a resnet50 checkpoint (torchvision's or timm's, whose key names
    are the same: conv1, bn1, layer1-4, fc): the state dict, unwrapped from "state_dict" /
    "model" entries and "module." prefixes, without the ImageNet head (fc).

    Raises WeightsError naming model.weights_path when the file is missing, unreadable, or
    does not hold exactly a resnet50 backbone's tensors with their shapes."""
    if path is None:
        raise WeightsError(
            "model.weights_path: not set; arch resnet50 starts from ImageNet-pretrained "
            "weights, a torchvision or timm resnet50 checkpoint on the machines the trials "
            "run on (nothing is downloaded)"
        )
    field = f"model.weights_path: {path}"
    file = Path(path)
    if not file.is_file():
        raise WeightsError(
            f"{field}: no such file (an ImageNet-pretrained resnet50 checkpoint on the machine "
            "the trials run on, e.g. torchvision's IMAGENET1K_V1 resnet50-0676ba61.pth, as "
            "SHOT used; nothing is downloaded)"
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise WeightsError(f"{field}: cannot read it as a torch checkpoint: {err}") from None
    try:
        state = _strip(_state_dict(obj))
    except WeightsError as err:
        raise WeightsError(f"{field}: not a resnet50 state dict: {err}") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    with torch.device("meta"):  # the keys and shapes, without initialising 23.5M weights
        want = resnet50_backbone().state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise WeightsError(
            f"{field}: not a resnet50 state dict: {len(missing)} of its {len(want)} backbone "
            f"keys missing (e.g. {', '.join(missing[:3]) or '-'}), {len(extra)} unexpected "
            f"(e.g. {', '.join(extra[:3]) or '-'})"
        )
    wrong = [k for k, v in want.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"{field}: not a resnet50 state dict: {len(wrong)} tensors have other shapes "
            f"({k}: {tuple(state[k].shape)}, resnet50 has {tuple(want[k].shape)})"
        )
    return state


def load_backbone(model: nn.Module, path: str | Path | None) -> None:
    """Load a resnet50 checkpoint into a ShotResNet's backbone (strict on the backbone's keys;
    the checkpoint's fc head is ignored: the bottleneck and classifier start fresh, as SHOT's)."""
    model.features.resnet.load_state_dict(read_resnet50_weights(path), strict=True)
