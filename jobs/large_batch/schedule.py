"""The training budget, counted in updates, and the batches that spend it.

Hoffer et al.'s regime adaptation (+RA) trains B / B_small times more epochs so that the
large batch makes as many updates as the small one; their code (eladhoffer/bigBatch,
main_gbn.py) multiplies the epochs and the lr-drop epochs by ceil(B / B_small) and keeps
the last partial batch, so the counts match only when B_small divides the data and B
divides B_small's epochs. Here the budget is set in updates instead, exactly:

- every batch is full: each data epoch is a fresh permutation cut into `n // batch` batches,
  the rest dropped (a different rest every epoch);
- training is `epochs` rounds; a round is one pass over the data for the fixed regime
  (SB, LB, +LR, +GBN), and for the adapted regime as many updates as SB makes in one pass
  (`n // base_batch`), which may cross data-epoch boundaries. So +RA makes exactly
  `epochs * (n // base_batch)` updates, SB's count, whatever n and B are;
- the lr drops at fractions of the rounds, i.e. after the same number of updates for SB and
  +RA (the paper scales the drop epochs by the same factor as the epochs).

One report (MLflow step, checkpoint) per round, so every arm has `epochs` points.

`CropFlip` is bigBatch's CIFAR training augmentation (preprocess.py `pad_random_crop`: pad
4 pixels with gray 127, random 32x32 crop, random horizontal flip), drawn per data epoch
from (seed, epoch) and applied to each batch on the device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from skeptic.training import epoch_generator, shuffled_batches


def updates_per_round(batch_size: int, base_batch: int, regime: str, n: int) -> int:
    """Updates in one round: a pass over the data, or SB's pass for the adapted regime."""
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples")
    if regime == "adapted":
        return n // base_batch
    return n // batch_size


def round_budget(p: Any, n: int) -> int:
    """`updates_per_round` for a trial's Params."""
    return updates_per_round(p.batch_size, p.base_batch, p.regime, n)


def total_updates(p: Any, n: int) -> int:
    """The whole budget of a trial, in updates."""
    return p.epochs * round_budget(p, n)


def batches(
    n: int, batch: int, seed: int, start: int, count: int, device: torch.device | None = None
) -> Iterator[torch.Tensor]:
    """The sample indices of updates `start` .. `start + count - 1`: update u is batch
    u % (n // batch) of data epoch u // (n // batch), whose order comes from
    `epoch_generator(seed, epoch)`. It depends on (seed, u) only, so a resumed trial replays
    exactly the batches it would have had."""
    per = n // batch
    u, stop = start, start + count
    while u < stop:
        epoch, first = divmod(u, per)
        take = min(per - first, stop - u)
        full = shuffled_batches(n, batch, epoch_generator(seed, epoch), device, drop_last=True)
        yield from itertools.islice(full, first, first + take)
        u += take


_AUGMENT_TAG = 0x6367  # keeps the crop/flip stream apart from the shuffling (epoch_generator)


class CropFlip:
    """bigBatch's CIFAR augmentation for the batches of `batches(n, batch, seed, ...)`:
    every training image gets, per data epoch, a crop offset in [0, 2 * pad] on each axis of
    its `pad`-padded copy (padded with `fill`, bigBatch's gray 127 of 255) and a horizontal
    flip with probability 1/2, as torchvision's Pad + RandomCrop + RandomHorizontalFlip
    would draw it.

    The draws of data epoch e are made for all n images at once from a CPU generator seeded
    by (seed, e) only, so they do not depend on the batch, the worker's shard, the device or
    where a resumed trial starts; update u's batch belongs to data epoch u // (n // batch),
    as in `batches`. Applied on the device as one gather (no per-image loop)."""

    def __init__(self, n: int, batch: int, seed: int, pad: int = 4, fill: float = 127 / 255):
        self.n, self.per, self.seed, self.pad, self.fill = n, n // batch, seed, pad, fill
        self._cached: tuple[tuple[int, torch.device], tuple[torch.Tensor, ...]] | None = None

    def draws(self, epoch: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        """(row offsets, column offsets, flips) of every image in data epoch `epoch`."""
        key = (epoch, torch.device(device or "cpu"))
        if self._cached is None or self._cached[0] != key:
            state = np.random.SeedSequence([self.seed, epoch, _AUGMENT_TAG]).generate_state(1)
            gen = torch.Generator().manual_seed(int(state[0]))
            top = torch.randint(0, 2 * self.pad + 1, (self.n,), generator=gen)
            left = torch.randint(0, 2 * self.pad + 1, (self.n,), generator=gen)
            flip = torch.rand(self.n, generator=gen) < 0.5
            self._cached = key, tuple(d.to(key[1]) for d in (top, left, flip))
        return self._cached[1]

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, update: int) -> torch.Tensor:
        """The augmented images x[idx] of update `update` (0-based, counted from the start
        of training); x is the whole training set (N, C, H, W), on idx's device."""
        top, left, flip = (d[idx] for d in self.draws(update // self.per, idx.device))
        return crop_flip(x[idx], top, left, flip, self.pad, self.fill)


def crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    pad: int,
    fill: float,
) -> torch.Tensor:
    """Image i of x padded by `pad` (value `fill`), cropped back to x's size at (top[i],
    left[i]) of the padded image, then mirrored left-right where flip[i]."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, H) rows of the padded image
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]
