"""The images a run trains on and their training-time augmentations.

Two sources, one interface (`Images`: batches of given indices as a view, and the model's
outputs over all of them in order):
- `TensorImages`: arrays in memory (the default and smoke runs, generated shapes or a small
  image folder), augmented on tensors in [0, 1] by the functions below;
- `FileImages`: files streamed from disk (data.stream, the `paper` preset's Office-Home at
  224 pixels), decoded by skeptic.data.image_loader's worker processes with the reference
  code's torchvision transforms (`stream_transforms`).

The tensor augmentations, at the small run's 16 pixels:
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
from `gen` so that a run is reproducible from its seed. Streamed images get the reference
transforms whole (crops and hue included, see `stream_transforms`); their random draws come
from the loader workers' generators, seeded from torch's (seeded by the run's seed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from skeptic.data import image_loader
from skeptic.training import predict

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


# ---- the images: in memory or streamed ------------------------------------------------------

# Views of the images, what each pipeline sees:
#   source    the source model's training (SHOT image_train)
#   target    SHOT's and AaD's target training (SHOT image_train: crop + flip; flip alone
#             in memory, see `target_train`)
#   fewshot   few-shot fine-tuning (fewshot-SFDA's default train transform)
#   shot_test SHOT's evaluation passes: source validation, SHOT's pseudo-labels, AaD's bank
#             (SHOT image_test: Resize(256) + CenterCrop(224))
#   test      the target's validation and test images, TENT's batches (fewshot-SFDA's test
#             transform: Resize((224, 224)))
VIEWS = ("source", "target", "fewshot", "shot_test", "test")
_TENSOR_VIEWS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "source": shot_train, "target": target_train, "fewshot": fewshot_train,
    "shot_test": None, "test": None,
}  # fmt: skip
RESIZE = 256 / 224  # SHOT's Resize(256) before its 224 crops, as a ratio to the crop
CHUNK = 1024  # images per forward pass when predicting in memory (skeptic.training.predict)
STREAM_CHUNK = 256  # images per forward pass when predicting from disk


def stream_transforms(size: int = 224) -> dict[str, Any]:
    """The reference transforms on PIL images, to [0, 1] tensors (the ImageNet normalisation
    is the network's own first step, see network.ShotResNet), at crop side `size` (224 in
    the references; the resize before a crop keeps their 256 : 224 ratio)."""
    from torchvision import transforms as T

    resize = round(size * RESIZE)
    shot_train = T.Compose([
        T.Resize((resize, resize)), T.RandomCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
    ])  # fmt: skip
    fewshot = T.Compose([
        T.RandomResizedCrop(size, scale=(0.7, 1.0)), T.RandomHorizontalFlip(),
        T.ColorJitter(JITTER, JITTER, JITTER, JITTER), T.RandomGrayscale(GRAYSCALE_P),
        T.ToTensor(),
    ])  # fmt: skip
    return {
        "source": shot_train,
        "target": shot_train,
        "fewshot": fewshot,
        "shot_test": T.Compose([T.Resize((resize, resize)), T.CenterCrop(size), T.ToTensor()]),
        "test": T.Compose([T.Resize((size, size)), T.ToTensor()]),
    }


class Images(Protocol):
    """A run's images, by index 0..len-1."""

    def __len__(self) -> int: ...

    def batches(
        self, indices: Iterator[torch.Tensor], view: str, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, images) on the device for each batch of `indices`, as `view` sees them."""
        ...

    def predict(self, model: nn.Module, view: str = "test") -> torch.Tensor:
        """The model's outputs for all the images in order, in eval mode (as
        skeptic.training.predict: every submodule's mode is restored afterwards)."""
        ...

    def subset(self, idx: np.ndarray) -> Images: ...


class TensorImages:
    """Images held as one N x C x H x W tensor on the device."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(
        self, indices: Iterator[torch.Tensor], view: str, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = _TENSOR_VIEWS[view]
        for idx in indices:
            idx = idx.to(self.x.device)
            yield idx, self.x[idx] if augment is None else augment(self.x[idx], gen)

    def predict(self, model: nn.Module, view: str = "test") -> torch.Tensor:
        return predict(model, self.x, CHUNK)

    def subset(self, idx: np.ndarray) -> TensorImages:
        return TensorImages(self.x[torch.as_tensor(idx, device=self.x.device)])


class FileImages:
    """Image files decoded batch by batch by skeptic.data.image_loader (`workers` processes,
    pinned memory on CUDA), transformed as `stream_transforms(size)`."""

    SEGMENT = 64  # batches one loader reads: its workers start once per segment

    def __init__(
        self, files: np.ndarray, size: int, device: torch.device, workers: int
    ) -> None:  # fmt: skip
        self.files = np.asarray(files, dtype=str)
        self.size, self.device, self.workers = size, device, workers
        self.transforms = stream_transforms(size)

    def __len__(self) -> int:
        return len(self.files)

    def _loader(self, idx: torch.Tensor, view: str, batch_size: int) -> Any:
        order = idx.cpu().numpy()
        return image_loader(
            self.files[order].tolist(), order.tolist(), self.transforms[view], batch_size,
            shuffle=False, workers=self.workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip

    def batches(
        self, indices: Iterator[torch.Tensor], view: str, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each run of up to SEGMENT equally long batches is read by one loader, in order
        (the label it yields is the image's index, so the caller's labels stay its own)."""
        for run in _runs(indices, self.SEGMENT):
            for xb, idx in self._loader(torch.cat(run), view, len(run[0])):
                yield idx.to(self.device), xb.to(self.device, non_blocking=True)

    @torch.no_grad()
    def predict(self, model: nn.Module, view: str = "test") -> torch.Tensor:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            loader = self._loader(torch.arange(len(self)), view, STREAM_CHUNK)
            out = [model(xb.to(self.device, non_blocking=True)) for xb, _ in loader]
            return torch.cat(out) if out else torch.zeros(0, 1, device=self.device)
        finally:
            for module, mode in modes:
                module.training = mode

    def subset(self, idx: np.ndarray) -> FileImages:
        return FileImages(self.files[np.asarray(idx)], self.size, self.device, self.workers)


def _runs(indices: Iterator[torch.Tensor], most: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive batches grouped while they have the same length, at most `most` a group."""
    run: list[torch.Tensor] = []
    for idx in indices:
        if run and (len(idx) != len(run[0]) or len(run) == most):
            yield run
            run = []
        run.append(idx)
    if run:
        yield run


def as_images(x: torch.Tensor | Images) -> Images:
    """Tensors as TensorImages; Images as they are."""
    return TensorImages(x) if isinstance(x, torch.Tensor) else x


def evaluate(
    model: nn.Module, images: Images, y: torch.Tensor, view: str = "test"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the images, as skeptic.training.evaluate computes
    them on a tensor (the same numbers for TensorImages)."""
    logits = images.predict(model, view).float()
    loss = F.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()
