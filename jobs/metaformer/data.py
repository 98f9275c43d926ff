"""Batches for the metaformer study's loader loop: the DeiT recipe's augmentation, from disk
(ImageNet through skeptic.data's FolderSource / image_loader) or from in-memory arrays
(CIFAR-100, which the platform hands every trial as float arrays).

The small default runs never come here: they train on the arrays with the study's own
light augmentation (study.make_forward). `Params.augment == "deit"` on arrays, or any
streamed image folder (data.stream), trains through `LoaderData`: one pass of a DataLoader
per epoch, every lr of the trial's search stepping on the same batch.

The DeiT recipe as sail-sg/poolformer's train.py runs it (timm's defaults there): random
resized crop (scale 0.08-1, ratio 3/4-4/3, a random interpolation), horizontal flip,
RandAugment rand-m9-mstd0.5-inc1 (colour jitter off, as timm turns it off under
RandAugment), ImageNet mean/std normalisation, random erasing 0.25 in pixel mode, then
Mixup 0.8 / CutMix 1.0 on the batch (switch probability 0.5) with label smoothing 0.1;
evaluation resizes to 224 / 0.9 = 248 (bicubic) and centre-crops 224 (crop_pct 0.9,
poolformer_s12's pretrained config). All of it is timm's own code (create_transform,
rand_augment_transform, RandomErasing, Mixup).

On 32x32 arrays (CIFAR) the crop is the CIFAR convention, a random 32x32 crop of the image
padded by 4 pixels, instead of a random resized crop: at 32 pixels an 8%-area crop is 9x9
pixels blown up 3.5 times. The rest is the recipe above.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import nn
from torchvision import transforms

from skeptic.training import epoch_generator

MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
CIFAR_PAD = 4  # pixels of zero padding before the random 32x32 crop


def mean_std(normalize: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the inputs are standardised with (ImageNet's, timm's
    default, also for CIFAR), or the identity when `normalize` is off."""
    return (MEAN, STD) if normalize else ((0.0,) * 3, (1.0,) * 3)


# ---- transforms ------------------------------------------------------------------------------


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize as it ran on the Pillow of the paper's time: 0 bits kept gives a
    black image. RandAugment's PosterizeIncreasing keeps 4 - int(magnitude / 10 * 4) bits,
    0 at magnitude 10, which rand-m9-mstd0.5 reaches (9 + N(0, 0.5), clipped at 10);
    Pillow >= 10.4 raises on 0 bits instead, and the DataLoader worker would die."""
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return auto_augment.posterize(img, bits_to_keep)


def with_safe_posterize(transform: Any) -> Any:
    """`transform` with every RandAugment in it posterizing through `_posterize`."""
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = _posterize
    return transform


def folder_train_transform(p: Any) -> Any:
    """The training transform of a PIL image from disk: timm's create_transform with the
    recipe's switches (`augment`: none = the evaluation transform, light = random resized
    crop + flip, heavy = the same (Mixup/CutMix come on the batch), deit = + RandAugment and
    random erasing)."""
    mean, std = mean_std(p.normalize)
    if p.augment == "none":
        return eval_transform(p)
    deit = p.augment == "deit"
    transform = create_transform(
        p.crop_size, is_training=True, interpolation="random", color_jitter=None,
        auto_augment=p.rand_augment if deit else None, mean=mean, std=std,
        re_prob=p.random_erasing if deit else 0.0, re_mode="pixel", re_count=1,
    )  # fmt: skip
    return with_safe_posterize(transform)


def eval_transform(p: Any) -> Any:
    """Resize to crop_size / eval_crop_pct (bicubic), centre crop crop_size, normalise."""
    mean, std = mean_std(p.normalize)
    return create_transform(
        p.crop_size, is_training=False, interpolation="bicubic", crop_pct=p.eval_crop_pct,
        mean=mean, std=std,
    )  # fmt: skip


def array_train_transform(p: Any, size: int) -> Any:
    """The DeiT recipe on a small PIL image (CIFAR): padded random crop, flip, RandAugment,
    to tensor, normalise, random erasing."""
    mean, std = mean_std(p.normalize)
    aa = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in MEAN)}
    steps = [
        transforms.RandomCrop(size, padding=CIFAR_PAD),
        transforms.RandomHorizontalFlip(),
        rand_augment_transform(p.rand_augment, aa),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    if p.random_erasing > 0:
        steps.append(RandomErasing(p.random_erasing, mode="pixel", max_count=1, device="cpu"))
    return with_safe_posterize(transforms.Compose(steps))


class _ArrayImages:
    """A map-style dataset of uint8 C x H x W arrays, each as a PIL image through `transform`."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Any) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i].transpose(1, 2, 0))), int(self.y[i])


# ---- the data a loader loop reads ------------------------------------------------------------


@dataclass
class LoaderData:
    """One trial's batches: `train(epoch)` this worker's share of the epoch's augmented
    batches, `eval_batches(split)` its share of val / test, preprocessed as for evaluation.
    Built by `from_stream` (an image folder on disk) or `from_arrays` (CIFAR in memory)."""

    ctx: Any
    p: Any
    classes: int
    image_size: int
    n_train: int  # training images in the whole split (every worker's together)
    _train: Any
    _eval: Any

    @classmethod
    def from_stream(cls, ctx: Any, p: Any) -> LoaderData:
        from skeptic.data import image_loader

        src = ctx.data["stream"]
        splits = {part: src.split(part) for part in ("train", "val", "test")}
        rank, world = ctx.rank, ctx.world_size
        pin = ctx.device.type == "cuda"
        train_tf, eval_tf = folder_train_transform(p), eval_transform(p)

        def train(epoch: int) -> Any:
            files, labels = splits["train"]
            return image_loader(
                files, labels, train_tf, batch_size=p.batch_size // world, seed=ctx.seed,
                epoch=epoch, shuffle=True, rank=rank, world=world, workers=p.loader_workers,
                pin_memory=pin, drop_last=True,
            )  # fmt: skip

        def evaluate(split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            files, labels = splits[split]
            yield from image_loader(
                files, labels, eval_tf, batch_size=p.eval_batch_size, shuffle=False,
                rank=rank, world=world, workers=p.loader_workers, pin_memory=pin,
            )  # fmt: skip

        n = len(splits["train"][0])
        return cls(ctx, p, len(ctx.data["classes"]), p.crop_size, n, train, evaluate)

    @classmethod
    def from_arrays(cls, ctx: Any, p: Any) -> LoaderData:
        """CIFAR-style arrays (float32 in [0, 1], N x 3 x H x W): training batches through a
        DataLoader whose workers run the PIL augmentation; evaluation on the arrays
        themselves, normalised on the device."""
        data, dev = ctx.data, ctx.device
        x = np.rint(np.asarray(data["x_train"]) * 255).astype(np.uint8)
        y = np.asarray(data["y_train"])
        size = x.shape[-1]
        dataset = _ArrayImages(x, y, array_train_transform(p, size))
        world = ctx.world_size
        mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in mean_std(p.normalize))

        def train(epoch: int) -> Any:
            # one global order from (seed, epoch), as the in-memory loop draws it; this
            # worker takes its shard of every global batch
            gen = epoch_generator(ctx.seed, epoch)
            order = torch.randperm(len(y), generator=gen)
            steps = len(y) // p.batch_size
            batches = [
                ctx.shard(b).tolist() for b in order[: steps * p.batch_size].split(p.batch_size)
            ]
            return torch.utils.data.DataLoader(
                dataset, batch_sampler=batches, num_workers=p.loader_workers,
                pin_memory=dev.type == "cuda", generator=gen,
            )  # fmt: skip

        def evaluate(split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            xs = torch.as_tensor(data[f"x_{split}"], device=dev)
            ys = torch.as_tensor(data[f"y_{split}"], device=dev)
            idx = torch.arange(len(ys), device=dev)[ctx.rank :: world]
            for chunk in idx.split(p.eval_batch_size):
                yield (xs[chunk] - mean) / std, ys[chunk]

        return cls(ctx, p, len(data["classes"]), size, len(y), train, evaluate)

    def train(self, epoch: int) -> Any:
        return self._train(epoch)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in self._eval(split):
            yield (xb.to(self.ctx.device, non_blocking=True),
                   yb.to(self.ctx.device, non_blocking=True))  # fmt: skip


@torch.no_grad()
def evaluate_models(
    models: list[nn.Module], batches: Iterator[tuple[torch.Tensor, torch.Tensor]], ctx: Any
) -> tuple[list[tuple[float, float]], float]:
    """(mean cross-entropy, accuracy) of each model over the same batches (each read once
    for all of them), summed over the trial's workers; and the images/s of the pass."""
    start = time.perf_counter()
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = torch.zeros(len(models), 3, dtype=torch.float64, device=ctx.device)
    try:
        for xb, yb in batches:
            for k, model in enumerate(models):
                with ctx.autocast():
                    logits = model(xb)
                logits = logits.float()
                sums[k, 0] += nn.functional.cross_entropy(logits, yb, reduction="sum")
                sums[k, 1] += (logits.argmax(1) == yb).sum()
                sums[k, 2] += len(yb)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    sums = all_reduce(sums, ctx)
    seen = max(1.0, sums[0, 2].item())
    rate = seen / (time.perf_counter() - start)
    return [(s[0].item() / seen, s[1].item() / seen) for s in sums.cpu()], rate


def all_reduce(t: torch.Tensor, ctx: Any) -> torch.Tensor:
    """The sum over the trial's workers (the tensor itself with one worker)."""
    if (
        ctx.world_size > 1
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t

