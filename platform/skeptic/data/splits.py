"""Stratified, seeded splits of labelled samples: what every loader (in memory or on disk)
splits the same way, so the same seed gives the same train / validation / test files."""

from __future__ import annotations

import numpy as np

from skeptic.data.shapes import proportional_counts


def hold_out_test(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the rest, test) indices. Its own random stream: the train/val split of the rest is
    drawn exactly as it was before test sets existed when test_fraction is 0."""
    if not test_fraction:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rest, test = stratified_split(y, test_fraction, np.random.default_rng([seed, 3]))
    return np.sort(rest), np.sort(test)


def capped(
    x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most `size` of the samples (x, y), each class keeping its share (stratified_subset);
    all of them, untouched, when there are no more than `size`."""
    if len(y) <= size:
        return x, y
    keep = stratified_subset(y, size, rng)
    return x[keep], y[keep]


def stratified_subset(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `k` samples keeping each class's share (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    take = proportional_counts(k, counts)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def val_count(n: int, val_fraction: float) -> int:
    """How many of a class's `n` samples `stratified_split` puts in val: about
    val_fraction, but at least one and not all of them when the class has two or more."""
    n_val = round(n * val_fraction)
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return n_val


def stratified_split(
    labels: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, val) index arrays with about `val_fraction` of every class in val.

    Every class with at least two samples lands in both parts.
    """
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = val_count(len(idx), val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(
            f"{len(labels)} samples are too few to split with val_fraction {val_fraction}"
        )
    # Shuffle so batches are not sorted by class.
    return rng.permutation(train_idx), rng.permutation(val_idx)
