"""The one entry point studies use: `load_dataset(name, ...)` -> a train/val split `Dataset`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skeptic.data.digits import DIGIT_NAMES, load_digits_arrays
from skeptic.data.imagefolder import domain_root, read_images, scan_imagefolder
from skeptic.data.shapes import CLASS_NAMES, make_shapes, proportional_counts

DATASET_NAMES = ("shapes", "digits", "imagefolder")


@dataclass
class Dataset:
    """Train/val arrays (N x C x H x W float32 in [0, 1], int64 labels) and class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (3, 32, 32)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(
    name: str,
    size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    domain: str | None = None,
    path: str | None = None,
    image_size: int = 32,
) -> Dataset:
    """Load (or generate) a dataset and split it, stratified by class, reproducibly by `seed`.

    shapes: generates `size` images of image_size x image_size in `domain` (default "plain").
    digits: sklearn's 8x8 digits, at most `size` of them (image_size and domain do not apply).
    imagefolder: `path/<class>/<image>` (or `path/<domain>/<class>/<image>` when domain is
    given), at most `size` images, resized to image_size.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    if size < 2:
        raise ValueError(f"size must be >= 2 (a train and a val sample), got {size}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    # A stream separate from the shapes generator's, so the split is not tied to its draws.
    rng = np.random.default_rng([seed, 2])
    if name == "shapes":
        x, y = make_shapes(size, seed, domain or "plain", image_size)
        classes = list(CLASS_NAMES)
    elif name == "digits":
        if domain is not None:
            raise ValueError("the digits dataset has no domains; leave domain unset")
        x, y = load_digits_arrays()
        x, y = _cap(x, y, size, rng)
        classes = list(DIGIT_NAMES)
    else:
        x, y, classes = _load_folder(path, domain, size, image_size, rng)
    train, val = stratified_split(y, val_fraction, rng)
    return Dataset(x[train], y[train], x[val], y[val], classes, name)


def _cap(
    x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= size:
        return x, y
    keep = stratified_subset(y, size, rng)
    return x[keep], y[keep]


def _load_folder(
    path: str | None, domain: str | None, size: int, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if path is None:
        raise ValueError("the imagefolder dataset needs path=<folder with one subfolder per class>")
    root = Path(path)
    if domain is not None:
        root = domain_root(root, domain)
    classes, files = scan_imagefolder(root)
    paths = np.array([p for f in files for p in f], dtype=object)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    # Pick the subset before decoding: a capped run over ImageNet must not read every file.
    if len(labels) > size:
        keep = stratified_subset(labels, size, rng)
        paths, labels = paths[keep], labels[keep]
    return read_images(list(paths), image_size), labels, classes


def stratified_subset(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `k` samples keeping each class's share (largest-remainder rounding)."""
    classes, counts = np.unique(labels, return_counts=True)
    take = proportional_counts(k, counts)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def stratified_split(
    labels: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, val) index arrays with about `val_fraction` of every class in val.

    Every class with at least two samples lands in both parts.
    """
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(
            f"{len(labels)} samples are too few to split with val_fraction {val_fraction}"
        )
    # Shuffle so batches are not sorted by class.
    return rng.permutation(train_idx), rng.permutation(val_idx)


def dataset_hash(ds: Dataset) -> str:
    """sha256 hex digest of the split arrays (dtype, shape and bytes) and the class names."""
    h = hashlib.sha256()
    for key in ("x_train", "y_train", "x_val", "y_val"):
        arr = np.ascontiguousarray(getattr(ds, key))
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.data)
    h.update(json.dumps(ds.classes).encode())
    return h.hexdigest()
