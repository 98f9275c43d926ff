"""The clip sets a trial and the pretraining stages read: generated (clips.py) for a seed, or
cut from a folder of real clips (folder.py).

Generated, for seed s: `clips` egocentric training clips (pretraining reads all of them,
without labels; fine-tuning reads the labels of a fraction), `clips` labelled exocentric
clips, validation clips (a fifth as many, the same backgrounds) and test clips (two fifths,
on backgrounds no training clip shows). From a folder: the labelled egocentric clips are
split once (data.seed) into test (20%), validation (10%) and training; pretraining reads
every egocentric clip outside validation and test, labelled or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.ego_only.clips import Clips, generate

TEST_SHARE, VAL_SHARE = 0.2, 0.1  # of a folder's labelled egocentric clips


@dataclass(frozen=True)
class Sizes:
    clips: int
    frames: int
    size: int

    @property
    def val(self) -> int:
        return max(self.clips // 5, 8)

    @property
    def test(self) -> int:
        return max(2 * self.clips // 5, 8)


def _make(view: str, n: int, s: Sizes, seed: int, pool: str = "train") -> Clips:
    return generate(view, n, frames=s.frames, size=s.size, seed=seed, pool=pool)


def _folder_split(ego: Clips, seed: int) -> dict[str, np.ndarray]:
    labelled = np.flatnonzero((ego.y >= 0).all(axis=1))
    order = np.random.default_rng(seed).permutation(labelled)
    n_test, n_val = round(TEST_SHARE * len(order)), round(VAL_SHARE * len(order))
    test, val = order[:n_test], order[n_test : n_test + n_val]
    train = np.setdiff1d(np.arange(len(ego)), np.concatenate([test, val]))
    return {"train": train, "val": np.sort(val), "test": np.sort(test)}


def ego_clips(s: Sizes, seed: int, data: dict[str, Any], *parts: str) -> list[Clips]:
    """The egocentric clips of each of `parts` (train, val, test) for this seed; training
    and validation clips are generated in one go, as one draw."""
    if "folder" in data:
        ego = data["folder"]["ego"]
        split = _folder_split(ego, data["split_seed"])
        return [ego.subset(split[part]) for part in parts]
    made = {}
    if {"train", "val"} & set(parts):
        both = _make("ego", s.clips + s.val, s, seed)
        made["train"], made["val"] = (
            both.subset(np.arange(s.clips)),
            both.subset(np.arange(s.clips, len(both))),
        )
    if "test" in parts:
        made["test"] = _make("ego", s.test, s, seed, pool="test")
    return [made[part] for part in parts]


def exo_clips(s: Sizes, seed: int, data: dict[str, Any]) -> Clips:
    return data["folder"]["exo"] if "folder" in data else _make("exo", s.clips, s, seed)


def labelled(train: Clips, fraction: float, seed: int) -> Clips:
    """The training clips whose labels fine-tuning reads: round(fraction x clips) of the
    fully labelled ones, drawn by seed so that a smaller fraction's clips are a subset of a
    larger one's."""
    candidates = np.flatnonzero((train.y >= 0).all(axis=1))
    n = max(1, round(fraction * len(train)))
    if n > len(candidates):
        raise ValueError(f"labelled: {fraction:g} of {len(train)} training clips is {n}, but "
                         f"only {len(candidates)} are labelled")  # fmt: skip
    order = np.random.default_rng([seed, 7]).permutation(candidates)
    return train.subset(np.sort(order[:n]))
