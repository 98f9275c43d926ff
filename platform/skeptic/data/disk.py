"""Datasets read from disk by each trial, never shipped through Ray's object store.

- CIFAR-10/100 in their released "python version" layout, read with torchvision's
  `CIFAR10/CIFAR100(root, download=False)`: `DiskArrays` names the files on the driver, and
  each trial (or stage) loads the arrays itself (`materialize`), 0.2 GB at float32 for
  CIFAR-10's 50,000 training images. Train = the training batches (capped at data.size),
  validation held out of them (data.val_fraction, stratified, by data.seed), test = the
  released test batch.
- Image folders too large to decode up front (ImageNet, Office-Home at 224 pixels, with
  data.stream): `FolderSource` lists the files and splits them, and `image_loader` feeds a
  trial's training loop through a DataLoader with worker processes, a fresh order per
  (seed, epoch) and each of the trial's workers its own share.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from skeptic.data.imagefolder import domain_root, labelled_files, scan_imagefolder
from skeptic.data.splits import capped, hold_out_test, stratified_split

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

# torch and torchvision are imported where used: validating a spec must stay cheap
CIFAR = {  # data.name -> torchvision class, its folder under data.path, the meta file and key
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "batches.meta", "label_names"),
    "cifar100": ("CIFAR100", "cifar-100-python", "meta", "fine_label_names"),
}
CIFAR_SHAPE = (3, 32, 32)


class _Unchecked:
    """torchvision's CIFAR classes compare each file's md5 with the released archive's;
    a subset written in the same format (a test's, a user's sample) would then read as
    "corrupted". The layout is checked instead: every file the class reads must exist."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:  # torchvision's checks the meta file's md5 as well
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


@cache
def _cifar_class(name: str) -> type:
    from torchvision import datasets

    base = getattr(datasets, CIFAR[name][0])
    return type(f"Local{base.__name__}", (_Unchecked, base), {})


def cifar_classes(name: str, path: str) -> list[str]:
    """The class names from the meta file, checking the layout torchvision reads; raises
    FileNotFoundError / ValueError saying what is missing."""
    _, folder, meta, key = CIFAR[name]
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    base = root / folder
    if not base.is_dir():
        raise ValueError(
            f"{root} has no {folder}/ folder: data.path must be the folder holding the "
            f"extracted {name} python archive ({root}/{folder}/...), as torchvision reads it"
        )
    klass = _cifar_class(name)
    missing = [n for n, _ in klass.train_list + klass.test_list if not (base / n).is_file()]
    missing += [] if (base / meta).is_file() else [meta]
    if missing:
        raise ValueError(f"{base} is not the {name} python layout: missing {', '.join(missing)}")
    try:
        with open(base / meta, "rb") as f:
            return list(pickle.load(f, encoding="latin1")[key])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
        raise ValueError(f"{base / meta} is not a {name} meta file ({err})") from None


def read_cifar(name: str, path: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x 3 x 32 x 32 images, int64 labels) of the training or the test batches."""
    try:
        ds = _cifar_class(name)(path, train=train, download=False)
    except (KeyError, TypeError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path}: not the {name} python pickle layout ({type(err).__name__}: {err})") from None
    return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)


@dataclass(frozen=True)
class DiskArrays:
    """CIFAR data named on the driver, loaded as arrays by whichever process trains on it."""

    name: str
    path: str
    size: int
    val_fraction: float
    seed: int

    def fingerprint(self) -> str:
        """What the data hash covers: these settings and each file's size and mtime (hashing
        the bytes would read 180 MB on every sweep start)."""
        folder = Path(self.path) / CIFAR[self.name][1]
        stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())]
        return repr((self, stats))

    def load(self) -> dict[str, Any]:
        """The arrays dict every study's trial gets (x_* float32 in [0, 1], y_* int64)."""
        x, y = read_cifar(self.name, self.path, train=True)
        rng = np.random.default_rng([self.seed, 2])  # the streams load_dataset uses
        x, y = capped(x, y, self.size, rng)
        train, val = stratified_split(y, self.val_fraction, rng)
        xt, yt = read_cifar(self.name, self.path, train=False)
        return {
            "x_train": _floats(x[train]), "y_train": y[train],
            "x_val": _floats(x[val]), "y_val": y[val],
            "x_test": _floats(xt), "y_test": yt,
            "classes": cifar_classes(self.name, self.path),
        }  # fmt: skip


def _floats(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def materialize(data: dict[str, Any]) -> dict[str, Any]:
    """A study's prepared data as its code reads it: arrays a DiskArrays names are loaded
    here, in the process that trains (once per process); anything else is returned as is."""
    source = data.get("source")
    if isinstance(source, DiskArrays):
        return {**_load_cached(source), **{k: v for k, v in data.items() if k != "source"}}
    return data


@cache
def _load_cached(source: DiskArrays) -> dict[str, Any]:
    return source.load()


# ---- image folders, streamed ------------------------------------------------------------


@dataclass(frozen=True)
class FolderSource:
    """An image folder split into train / val / test file lists, listed by the process that
    reads it. Layouts: `root/train/<class>/...` + `root/val/<class>/...` (ImageNet: test is
    val/, validation is held out of train/), or `root/<class>/...` / `root/<domain>/<class>/...`
    split three ways as the in-memory loader splits it (the same files for the same seed)."""

    root: str
    domain: str | None
    size: int
    val_fraction: float
    test_fraction: float
    seed: int

    def fingerprint(self) -> str:
        """These settings and the folder tree's top two levels' mtimes (a full listing of
        ImageNet would take seconds on every sweep start)."""
        root = Path(self.root)
        dirs = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
        return repr((self, [(str(d), d.stat().st_mtime_ns) for d in dirs]))

    def split(self, part: str) -> tuple[list[str], list[int]]:
        """The files and labels of "train", "val" or "test"."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, got {part!r}")
        files, labels = _splits(self)[part]
        return list(files), labels.tolist()

    @property
    def classes(self) -> list[str]:
        return _splits(self)["classes"]


def has_train_val_layout(root: Path) -> bool:
    """ImageNet's layout: a root holding exactly train/ and val/ image folders."""
    if not root.is_dir():
        return False
    return sorted(p.name for p in root.iterdir() if p.is_dir()) == ["train", "val"]


@cache
def _splits(src: FolderSource) -> dict[str, Any]:
    """The classes, and each part's (files, labels)."""
    root = Path(src.root)
    rng = np.random.default_rng([src.seed, 2])
    if src.domain is None and has_train_val_layout(root):
        classes, files, labels = _listing(root / "train")
        test_classes, test_files, test_labels = _listing(root / "val")
        if test_classes != classes:
            raise ValueError(f"{root}/val has other classes than {root}/train")
        files, labels = capped(files, labels, src.size, rng)
        train, val = stratified_split(labels, src.val_fraction, rng)
        test = np.arange(len(test_labels))
        parts = {"train": (files, labels, train), "val": (files, labels, val),
                 "test": (test_files, test_labels, test)}  # fmt: skip
    else:
        folder = domain_root(root, src.domain) if src.domain else root
        classes, files, labels = _listing(folder)
        files, labels = capped(files, labels, src.size, rng)
        rest, test = hold_out_test(labels, src.test_fraction, src.seed)
        train, val = stratified_split(labels[rest], src.val_fraction / (1 - src.test_fraction), rng)
        parts = {p: (files, labels, idx) for p, idx in
                 (("train", rest[train]), ("val", rest[val]), ("test", test))}  # fmt: skip
    out: dict[str, Any] = {"classes": classes}
    for name, (f, y, idx) in parts.items():
        out[name] = (f[idx], y[idx])
    return out


def _listing(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    classes, files = scan_imagefolder(folder)
    return (classes, *labelled_files(files))


class _Images:  # a map-style dataset: DataLoader needs __len__ and __getitem__ only
    def __init__(self, files: list[str], labels: list[int], transform: Any) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def image_loader(
    files: list[str], labels: list[int], transform: Any, batch_size: int, *, seed: int = 0,
    epoch: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1, workers: int = 4,
    pin_memory: bool = False, drop_last: bool = False,
) -> DataLoader:  # fmt: skip
    """Batches of (transformed image, label) for one epoch of one worker of a trial.

    The order is one permutation drawn from (seed, epoch) only (skeptic.training's epoch
    generator), so a resumed trial replays it; the trial's `world` workers take disjoint,
    equally long shares of it (rank::world, after trimming to a multiple of world, so no
    worker waits for another's extra batch). `batch_size` is this worker's."""
    import torch
    from torch.utils.data import DataLoader

    from skeptic.training import epoch_generator

    n = len(files)
    order = torch.randperm(n, generator=epoch_generator(seed, epoch)) if shuffle else torch.arange(n)
    order = order[: n - n % world][rank::world] if world > 1 else order
    return DataLoader(
        _Images(files, labels, transform), batch_size=batch_size, sampler=order.tolist(),
        num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
        persistent_workers=False,
    )  # fmt: skip
