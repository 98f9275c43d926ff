"""The one entry point studies use: `load_dataset(name, ...)` -> a train/val split `Dataset`."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skeptic.data.digits import DIGIT_NAMES, load_digits_arrays
from skeptic.data.disk import CIFAR, CIFAR_SHAPE, cifar_classes, has_train_val_layout, read_cifar
from skeptic.data.imagefolder import (
    domain_root,
    labelled_files,
    read_images,
    scan_imagefolder,
    survey_imagefolder,
)
from skeptic.data.shapes import (
    CLASS_NAMES,
    DOMAINS,
    MAX_SIZE,
    MIN_SIZE,
    class_counts,
    make_shapes,
    proportional_counts,
)
from skeptic.data.splits import capped, hold_out_test, stratified_split, val_count

# "table": a .parquet / .csv file at data.path that the study reads itself (its prepare_data)
DATASET_NAMES = ("shapes", "digits", "imagefolder", "cifar10", "cifar100", "table")

# A dataset is held as float32 arrays on the driver, then copied once into Ray's object
# store: bound it, so a typo in data.size fails at once instead of allocating until
# MemoryError. 4 GiB holds CIFAR-10 at 32x32 six times over and fits the object store of
# a 16 GB machine.
MAX_DATA_BYTES = 4 * 2**30
# Image sides per dataset: shapes' own limits (see shapes.MIN_SIZE); files are decoded one
# at a time, so only the array bounds them, and 512 is past every common benchmark's side
# (the spec's data.image_size allows 4..512 for any dataset).
IMAGE_SIZES = {"shapes": (MIN_SIZE, MAX_SIZE), "imagefolder": (4, 512)}
DIGITS_SHAPE = (1, 8, 8)


class DataError(ValueError):
    """A data section the loaders cannot serve. `field` is the key of the spec's data
    section at fault (name, path, domain, size, image_size, val_fraction)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DataPlan:
    """What `load_dataset` would return, known without generating or decoding an image."""

    name: str
    classes: list[str]
    class_counts: list[int]  # samples per class that are kept (after the data.size cap)
    input_shape: tuple[int, int, int]
    val_fraction: float
    test_fraction: float = 0.0
    # a released test set's images per class (CIFAR's test batch, ImageNet's val/): then
    # class_counts are the training images alone, and nothing is held out of them for test
    released_test: list[int] | None = None

    @property
    def size(self) -> int:
        return sum(self.class_counts)

    @property
    def test_counts(self) -> list[int]:
        if self.released_test is not None:
            return list(self.released_test)
        if not self.test_fraction:
            return [0] * len(self.class_counts)
        return [val_count(n, self.test_fraction) for n in self.class_counts]

    @property
    def val_counts(self) -> list[int]:
        if self.released_test is not None:
            return [val_count(n, self.val_fraction) for n in self.class_counts]
        share = self.val_fraction / (1 - self.test_fraction)
        return [val_count(n - t, share) for n, t in zip(self.class_counts, self.test_counts)]

    @property
    def n_test(self) -> int:
        return sum(self.test_counts)

    @property
    def n_val(self) -> int:
        return sum(self.val_counts)

    @property
    def n_train(self) -> int:
        held = 0 if self.released_test is not None else self.n_test
        return self.size - self.n_val - held


@dataclass
class Dataset:
    """Train/val/test arrays (N x C x H x W float32 in [0, 1], int64 labels) and class
    names. Validation is for every choice; test for the numbers a verdict reports (empty
    when the split was made without one)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    name: str
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

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
    test_fraction: float = 0.0,
) -> Dataset:
    """Load (or generate) a dataset and split it, stratified by class, reproducibly by `seed`:
    about `test_fraction` of every class to test, `val_fraction` to validation, the rest to
    training (the fractions are of the whole).

    shapes: generates `size` images of image_size x image_size in `domain` (default "plain").
    digits: sklearn's 8x8 digits, at most `size` of them (image_size and domain do not apply).
    imagefolder: `path/<class>/<image>` (or `path/<domain>/<class>/<image>` when domain is
    given), at most `size` images, resized to image_size.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    if name == "table":
        raise ValueError("data.name=table is read by the study's own prepare_data, not here")
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
        x, y = capped(x, y, size, rng)
        classes = list(DIGIT_NAMES)
    else:
        x, y, classes = _load_folder(path, domain, size, image_size, rng)
    rest, test = hold_out_test(y, test_fraction, seed)
    train, val = stratified_split(y[rest], val_fraction / (1 - test_fraction), rng)
    train, val = rest[train], rest[val]
    return Dataset(x[train], y[train], x[val], y[val], classes, name, x[test], y[test])


def _load_folder(
    path: str | None, domain: str | None, size: int, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if path is None:
        raise ValueError("the imagefolder dataset needs path=<folder with one subfolder per class>")
    root = Path(path)
    if domain is not None:
        root = domain_root(root, domain)
    classes, files = scan_imagefolder(root)
    # Pick the subset before decoding: a capped run over ImageNet must not read every file.
    paths, labels = capped(*labelled_files(files), size, rng)
    return read_images(list(paths), image_size), labels, classes


# ---- spec-time checks: what load_dataset would do, without doing it ------------------------


TABLE_SUFFIXES = (".parquet", ".csv")


def _plan_table(path: str | None, scan: bool) -> None:
    """A table file: named, with a suffix the readers know, present (when scanned). What its
    rows mean is the study's to check (Study.check_data)."""
    if path is None:
        raise DataError("path", "data.name=table reads a .parquet or .csv file: give data.path")
    if Path(path).suffix.lower() not in TABLE_SUFFIXES:
        raise DataError("path", f"{path}: a table is a .parquet or .csv file")
    if scan and not Path(path).is_file():
        raise DataError("path", f"{path}: no such file")


def plan_dataset(
    name: str,
    size: int,
    val_fraction: float = 0.2,
    domain: str | None = None,
    path: str | None = None,
    image_size: int = 32,
    *,
    scan: bool = True,
    test_fraction: float = 0.0,
    stream: bool = False,
) -> DataPlan | None:
    """Check the arguments of `load_dataset` the way it would use them, and say what it
    would load; raises DataError naming the field and what is allowed.

    Cheap: shapes are counted, not drawn; an image folder is listed, not decoded (one header
    per class is read). `scan=False` skips everything that reads `path` (the folder may
    exist only on the cluster a job is submitted to) and then returns None for imagefolder.
    """
    if name not in DATASET_NAMES:
        raise DataError("name", f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    if not 0 < val_fraction < 1:
        raise DataError("val_fraction", f"must be in (0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            "test_fraction",
            f"{test_fraction}: must be in [0, 1) and leave data for training "
            f"(val_fraction + test_fraction = {val_fraction + test_fraction:g} < 1)",
        )
    if name not in ON_DISK and path is not None:
        raise DataError(
            "path", f"applies to data.name={' / '.join(ON_DISK)} only, not {name!r}; unset it"
        )
    if stream and name != "imagefolder":
        raise DataError("stream", f"streams image folders only (data.name=imagefolder), not {name!r}")
    if name == "table":
        return _plan_table(path, scan)
    if name in CIFAR:
        return _plan_cifar(name, size, val_fraction, domain, path, image_size, scan, test_fraction)
    if name == "imagefolder":
        found = _folder_source(size, domain, path, image_size, scan, stream)
    else:
        found = _SOURCES[name](size, domain, path, image_size, scan)
    if found is None:
        return None
    classes, counts, shape, *released = found
    if sum(counts) > size:  # capped to `size`, keeping each class's share (stratified_subset)
        counts = proportional_counts(size, np.asarray(counts)).tolist()
    if not stream:  # streamed images are read batch by batch, never held as one array
        _check_bytes(sum(counts), shape)
    test = released[0] if released else None
    if test is not None and test_fraction:
        raise DataError(
            "test_fraction",
            f"{path} has a val/ folder, which is the test split (as ImageNet's); set "
            "data.test_fraction=0",
        )
    plan = DataPlan(name, classes, counts, shape, val_fraction, test_fraction, test)
    if plan.n_train == 0 or plan.n_val == 0 or (test_fraction and plan.n_test == 0):
        parts = 3 if test_fraction else 2
        raise DataError(
            "size",
            f"{plan.size} samples in {len(classes)} classes leave {plan.n_train} for training, "
            f"{plan.n_val} for validation and {plan.n_test} for test; give at least {parts} "
            f"per class (data.size >= {parts * len(classes)})",
        )
    return plan


Source = tuple[list[str], list[int], tuple[int, int, int]]  # classes, counts, sample shape


def _shapes_source(
    size: int, domain: str | None, path: str | None, image_size: int, scan: bool
) -> Source:
    _check_image_size("shapes", image_size)
    if domain is not None and domain not in DOMAINS:
        raise DataError(
            "domain", f"unknown shapes domain {domain!r}; allowed: {', '.join(DOMAINS)}"
        )
    shape = (3, image_size, image_size)
    _check_bytes(size, shape)  # before counting: generated data has exactly `size` images
    return list(CLASS_NAMES), class_counts(size).tolist(), shape


def _digits_source(
    size: int, domain: str | None, path: str | None, image_size: int, scan: bool
) -> Source:
    # image_size does not apply: the digits are 8x8 (studies read the shape from the data)
    if domain is not None:
        raise DataError("domain", f"the digits dataset has no domains; unset it (got {domain!r})")
    _, y = load_digits_arrays()
    return list(DIGIT_NAMES), np.bincount(y, minlength=len(DIGIT_NAMES)).tolist(), DIGITS_SHAPE


def _folder_source(
    size: int, domain: str | None, path: str | None, image_size: int, scan: bool,
    stream: bool = False,
) -> Source | None:  # fmt: skip
    _check_image_size("imagefolder", image_size)
    if path is None:
        raise DataError("path", "data.name=imagefolder needs data.path=<root>/<class>/<image>")
    if not scan:
        return None
    root = Path(path)
    if stream and domain is None and has_train_val_layout(root):  # FolderSource's layouts
        classes, counts = _survey(str(root / "train"), None)
        test_classes, test_counts = _survey(str(root / "val"), None)
        if test_classes != classes:
            raise DataError("path", f"{root}/val has other class folders than {root}/train")
        return classes, counts, (3, image_size, image_size), test_counts
    classes, counts = _survey(path, domain)
    return classes, counts, (3, image_size, image_size)


def _plan_cifar(
    name: str, size: int, val_fraction: float, domain: str | None, path: str | None,
    image_size: int, scan: bool, test_fraction: float,
) -> DataPlan | None:  # fmt: skip
    """CIFAR's splits: the training batches (capped at size) less a validation holdout, and
    the released test batch as the test split."""
    if domain is not None:
        raise DataError("domain", f"{name} has no domains; unset it (got {domain!r})")
    if test_fraction:
        raise DataError(
            "test_fraction",
            f"{test_fraction}: {name}'s test split is its released test batch; set "
            "data.test_fraction=0",
        )
    if image_size != 32:
        raise DataError("image_size", f"{name} images are 32x32 and not resized; set 32")
    if path is None:
        raise DataError(
            "path", f"data.name={name} needs data.path=<folder holding {CIFAR[name][1]}/>"
        )
    if not scan:
        return None
    try:
        classes = cifar_classes(name, path)
        _, y = read_cifar(name, path, train=True)
        _, yt = read_cifar(name, path, train=False)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise DataError("path", f"{path}: {err}") from None
    counts = np.bincount(y, minlength=len(classes))
    if len(y) > size:
        counts = proportional_counts(size, counts)
    test = np.bincount(yt, minlength=len(classes)).tolist()
    return DataPlan(name, classes, counts.tolist(), CIFAR_SHAPE, val_fraction, 0.0, test)


_SOURCES = {"shapes": _shapes_source, "digits": _digits_source, "imagefolder": _folder_source}
ON_DISK = ("imagefolder", *CIFAR, "table")  # the datasets data.path applies to


def _check_image_size(name: str, image_size: int) -> None:
    low, high = IMAGE_SIZES[name]
    if not low <= image_size <= high:
        raise DataError(
            "image_size", f"{name} images must be {low}..{high} pixels, got {image_size}"
        )


def _check_bytes(n: int, shape: tuple[int, ...]) -> None:
    nbytes = n * int(np.prod(shape)) * 4
    if nbytes > MAX_DATA_BYTES:
        most = MAX_DATA_BYTES // (int(np.prod(shape)) * 4)
        side = "x".join(map(str, shape))
        raise DataError(
            "size",
            f"{n} images of {side} float32 take {nbytes / 2**30:.3g} GiB; the data may take "
            f"at most {MAX_DATA_BYTES / 2**30:g} GiB (size x channels x image_size^2 x 4 "
            f"bytes), so data.size <= {most} at this image size",
        )


def _survey(path: str, domain: str | None) -> tuple[list[str], list[int]]:
    """The image folder (or one domain of it) as the loader would read it."""
    root = Path(path)
    if not root.is_dir():
        raise DataError("path", f"no such folder: {root}")
    if domain is not None:
        try:
            root = domain_root(root, domain)
        except (OSError, ValueError) as err:
            hint = f"; data.domain=null reads {path} itself as <class>/<image>"
            raise DataError("domain", f"{err}{hint}") from None
    try:
        return survey_imagefolder(root)
    except (OSError, ValueError) as err:
        raise DataError("path", str(err)) from None


def data_hash(data: dict[str, Any]) -> str:
    """sha256 hex digest of a study's prepared data (arrays by their bytes, other values as
    JSON): a resumed sweep checks it, and it keys cached stage results."""
    digest = hashlib.sha256()
    for key in sorted(data):
        value = data[key]
        digest.update(key.encode())
        if isinstance(value, np.ndarray):
            digest.update(np.ascontiguousarray(value).tobytes())
        elif hasattr(value, "fingerprint"):  # data read from disk by each trial
            digest.update(value.fingerprint().encode())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()