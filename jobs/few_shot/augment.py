"""The training-time augmentations of the reference code, on image tensors in [0, 1].

- `shot_train`: SHOT's (and AaD's) image_train, Resize(256) + RandomCrop(224) +
  RandomHorizontalFlip: a random crop of 224/256 of the side, flipped half the time, brought
  back to the input size. Used to train the source model.
- `target_train`: what is left of it for the target images, the flip. At 16 x 16 the crop
  becomes a bilinear zoom that blurs the `textured` target's stripes (at 224 px it does
  not); measured on two seeds, SHOT lost 10-15 pp with it and gained 4-13 pp without, so the
  target-side pipelines (SHOT, AaD, and fine-tuning alike) crop nothing.
- `fewshot_train`: daintlab/fewshot-SFDA's default train transform (DomainBed's) without
  its RandomResizedCrop (as above): RandomHorizontalFlip + ColorJitter(0.3, 0.3, 0.3, 0.3)
  + RandomGrayscale(p 0.1). The hue jitter is left out (no cheap tensor version) and the
  three other jitters apply in a fixed order (torchvision shuffles it).

Crops are one affine resampling per image (bilinear, as torchvision's resize), all draws
from `gen` so that a run is reproducible from its seed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SHOT_CROP = 224 / 256
JITTER = 0.3
GRAYSCALE_P = 0.1


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _resample(
    x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Crop a w x h fraction of each image at a random place, flip half of them, resize back."""
    n = len(x)
    cx = (1 - w) * _uniform(n, -1, 1, gen)  # the crop's centre, in [-1, 1] coordinates
    cy = (1 - h) * _uniform(n, -1, 1, gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shot_train(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    side = torch.full((len(x),), SHOT_CROP)
    return _resample(x, side, side, gen)


def target_train(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip: half of the images mirrored."""
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def fewshot_train(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _jitter(target_train(x, gen), gen)


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [0.7, 1.3], then grayscale at p 0.1."""
    n, dev = len(x), x.device
    factor = [
        _uniform(n, 1 - JITTER, 1 + JITTER, gen).to(dev)[:, None, None, None] for _ in range(3)
    ]
    x = (x * factor[0]).clamp(0, 1)
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * factor[1] + mean).clamp(0, 1)
    gray = _gray(x)
    x = ((x - gray) * factor[2] + gray).clamp(0, 1)
    to_gray = (torch.rand(n, generator=gen) < GRAYSCALE_P).to(dev)[:, None, None, None]
    return torch.where(to_gray, _gray(x), x)
