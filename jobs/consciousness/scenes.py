"""Scenes of real digits whose target depends on a few cued slots, and the shift that
tests generalisation out of distribution.

A scene has `slots` slots, each holding one of scikit-learn's 8x8 handwritten digits, and a
cue naming `cued` of them, in order. The target reads the cued slots' digit classes only:

- `greater`: is the first cued digit greater than the second (two cued slots; the two
  classes are drawn distinct, so there are no ties and the classes are balanced);
- `sum`: is the sum of the cued digits above its mean, 4.5 per cued slot (any number of
  cued slots: every cued digit matters at once). Parity of the sum was tried first and
  dropped: no arm, dense included, rose above chance in 15 epochs (3 cued slots, seed 0).

Cued slots hold any class 0-9, in every split. The other slots (distractors) change
distribution between the in-distribution splits and the out-of-distribution tests, one per
shift (every trial is tested under both):

- `classes`: distractors are classes 0-4 in training, validation and the in-distribution
  test, classes 5-9 in the OOD test;
- `inverted`: distractors are classes 0-4 everywhere, drawn inverted (1 - pixel) in the OOD
  test: images no slot ever showed in training.

The images of the training, validation and test scenes come from disjoint pools of the
1797 digits (60/20/20 per class, drawn per seed), so no test image was seen in training.
The OOD test is the in-distribution test scene for scene with only the distractors
redrawn, so a model's OOD drop is a counterfactual difference on the same cued digits.

A scene is one array (slots, 65): each slot's 64 pixels in [0, 1], then its cue rank (0 =
not cued, 1 = the first cued slot, 2 = the second, ...). The model, the served endpoint and
MLflow's pyfunc all read that array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skeptic.data import load_digits_arrays

PIXELS = 64
WIDTH = PIXELS + 1  # the pixels, then the cue rank
TASKS = ("greater", "sum")
SHIFTS = ("classes", "inverted")
TRAIN_DISTRACTORS = tuple(range(5))  # classes 0-4
SHIFTED_DISTRACTORS = tuple(range(5, 10))  # classes 5-9 (shift `classes`)
POOLS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2)  # of each class: train, val; the rest is test


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes with their targets and, for each, which slots were cued."""

    x: np.ndarray  # (n, slots, WIDTH) float32
    y: np.ndarray  # (n,) int64: 0 / 1
    cued: np.ndarray  # (n, cued) int64: the cued slots, in cue order

    def __len__(self) -> int:
        return len(self.y)


def image_pools(seed: int) -> dict[str, list[np.ndarray]]:
    """The digits split per class into disjoint train / val / test pools: pool -> a list,
    per class, of (images, 64) arrays."""
    x, y = load_digits_arrays()
    flat = x.reshape(len(x), PIXELS)
    rng = np.random.default_rng(seed)
    pools: dict[str, list[np.ndarray]] = {p: [] for p in POOLS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        a = int(FRACTIONS[0] * len(idx))
        b = a + int(FRACTIONS[1] * len(idx))
        for pool, part in zip(POOLS, (idx[:a], idx[a:b], idx[b:]), strict=True):
            pools[pool].append(flat[part])
    return pools


def target(task: str, classes: np.ndarray) -> np.ndarray:
    """The target of each scene from its cued slots' classes (n, cued), in cue order."""
    if task == "greater":
        return (classes[:, 0] > classes[:, 1]).astype(np.int64)
    if task == "sum":
        return (2 * classes.sum(axis=1) > 9 * classes.shape[1]).astype(np.int64)
    raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")


def cued_classes(task: str, n: int, cued: int, rng: np.random.Generator) -> np.ndarray:
    """The cued slots' classes: uniform over 0-9; distinct for `greater` (no ties)."""
    if task == "greater":
        return np.stack([rng.choice(10, size=cued, replace=False) for _ in range(n)])
    return rng.integers(0, 10, size=(n, cued))


def make_scenes(pool: list[np.ndarray], n: int, slots: int, cued: int, task: str,
                rng: np.random.Generator, *, distractors: tuple[int, ...] = TRAIN_DISTRACTORS,
                invert: bool = False) -> Scenes:  # fmt: skip
    """`n` scenes drawn from one image pool. `distractors`: the classes the uncued slots
    hold; `invert`: draw them inverted (the `inverted` shift). The cued slots are drawn
    first, so the same `rng` state gives the same cued slots, classes and images whatever
    the distractors: a shifted scene is the unshifted one with its distractors redrawn."""
    positions = np.argsort(rng.random((n, slots)), axis=1)[:, :cued]  # distinct, in cue order
    wanted = cued_classes(task, n, cued, rng)
    is_cued = np.zeros((n, slots), dtype=bool)
    np.put_along_axis(is_cued, positions, True, axis=1)
    x = np.zeros((n, slots, WIDTH), dtype=np.float32)
    cued_images = np.zeros((n, cued, PIXELS), dtype=np.float32)
    _fill(cued_images, wanted, pool, rng)
    np.put_along_axis(x[..., :PIXELS], positions[..., None], cued_images, axis=1)
    classes = rng.choice(distractors, size=(n, slots))
    images = np.zeros((n, slots, PIXELS), dtype=np.float32)
    _fill(images, np.where(is_cued, -1, classes), pool, rng)
    if invert:
        images = 1.0 - images
    x[~is_cued, :PIXELS] = images[~is_cued]
    np.put_along_axis(x[..., PIXELS], positions, np.arange(1, cued + 1, dtype=np.float32)[None], axis=1)
    return Scenes(x, target(task, wanted), positions.astype(np.int64))


def _fill(out: np.ndarray, classes: np.ndarray, pool: list[np.ndarray],
          rng: np.random.Generator) -> None:  # fmt: skip
    """out[i, j] = a random image of class classes[i, j] from the pool (-1: left as is)."""
    for c in range(10):
        where = classes == c
        if where.any():
            out[where] = pool[c][rng.integers(0, len(pool[c]), size=int(where.sum()))]


def cue_of(x: np.ndarray) -> np.ndarray:
    """The cued slots of scenes (n, slots, WIDTH), in cue order: (n, cued)."""
    ranks = np.rint(x[..., PIXELS]).astype(np.int64)
    cued = int(ranks.max()) if ranks.size else 0
    return np.stack([np.argmax(ranks == r, axis=1) for r in range(1, cued + 1)], axis=1)


@dataclass(frozen=True)
class Splits:
    train: Scenes
    val: Scenes
    test: Scenes  # in distribution
    ood: dict[str, Scenes]  # shift -> the test scenes with their distractors shifted


def splits(seed: int, slots: int, cued: int, task: str, sizes: tuple[int, int, int]) -> Splits:
    """One trial's scenes: (train, val, test) sizes, and the test under every shift: each
    shifted test is the in-distribution test with its distractors redrawn (the same cued
    slots, classes and images, scene for scene), so an OOD drop is a paired, counterfactual
    difference. Training does not depend on the shift, so a trial trains once and is tested
    under each. Everything is drawn from `seed`: the arms of one seed see the same scenes."""
    pools = image_pools(seed)

    def make(pool: str, n: int, stream: int, **kw: Any) -> Scenes:
        rng = np.random.default_rng([seed, stream])
        return make_scenes(pools[pool], n, slots, cued, task, rng, **kw)

    n_train, n_val, n_test = sizes
    shifted = {"classes": {"distractors": SHIFTED_DISTRACTORS}, "inverted": {"invert": True}}
    return Splits(make("train", n_train, 1), make("val", n_val, 2), make("test", n_test, 3),
                  {shift: make("test", n_test, 3, **kw) for shift, kw in shifted.items()})  # fmt: skip
