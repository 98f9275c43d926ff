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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

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
