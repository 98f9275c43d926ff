"""Real images from disk: torchvision ImageFolder / CIFAR-10 / ImageNet and Office-31 layouts.

Layout: `root/<class>/<image>`; classes are the sorted subfolder names. Office-31 and
Office-Home add a domain level: `root/<domain>/<class>/<image>`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def scan_imagefolder(root: str | Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files (sorted), without decoding anything."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = _subdirs(root)
    if not class_dirs:
        raise ValueError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    files = [_image_files(d) for d in class_dirs]
    for d, f in zip(class_dirs, files, strict=True):
        if not f:
            raise ValueError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [d.name for d in class_dirs], files


def labelled_files(files: list[list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    """scan_imagefolder's files of each class as one array of paths (str, so the array's
    bytes, which the data hash reads, are the paths themselves) and their int64 labels."""
    paths = np.array([str(p) for f in files for p in f], dtype=str)
    labels = np.repeat(np.arange(len(files), dtype=np.int64), [len(f) for f in files])
    return paths, labels


# The files of the CIFAR-10 "python version" archive: recognised only to say what to do.
_CIFAR_BATCHES = ("data_batch_1", "batches.meta", "test_batch")


def survey_imagefolder(root: str | Path) -> tuple[list[str], list[int]]:
    """Whether `root` can train a classifier, cheaply (no image is decoded): its class names
    and images per class. Raises FileNotFoundError / ValueError saying what is wrong.

    Beyond `scan_imagefolder`: at least two classes (one class is nothing to classify), and
    the header of each class's first image must read, so a folder of files that merely end
    in .png fails here rather than in the middle of a sweep."""
    root = Path(root)
    if root.is_dir() and any((root / name).is_file() for name in _CIFAR_BATCHES):
        raise ValueError(
            f"{root} holds CIFAR-10 python batches, which the image-folder loader does not "
            f"read; export them as {root}/<class>/<image>.png (e.g. torchvision's CIFAR10 "
            "dataset, saving each image under its class name)"
        )
    classes, files = scan_imagefolder(root)
    if len(classes) < 2:
        raise ValueError(
            f"{root} has {len(classes)} class folder ({classes[0]}); a classifier needs at "
            f"least 2 ({root}/<class>/<image>)"
        )
    for f in files:
        _check_header(f[0])
    return classes, [len(f) for f in files]


def _check_header(path: Path) -> None:
    try:
        with Image.open(path):  # reads the header only
            pass
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _subdirs(folder: Path) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store-style clutter) are never classes.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def read_images(paths: list[Path], size: int) -> np.ndarray:
    """Decode, convert to RGB and resize: float32 N x 3 x size x size in [0, 1]."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = np.empty((len(paths), 3, size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = _read_one(path, size)
    return out


# PIL raises several types for corrupt or truncated files; all mean "unreadable".
_UNREADABLE = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


def image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """The preprocessing shared by training and serving: RGB, bilinear resize to
    size x size, float32 3 x size x size in [0, 1]."""
    rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def decode_image(data: bytes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, ...) and preprocess them exactly like
    `read_images` does files. `max_pixels` caps width x height, checked from the header
    before anything is decoded (a small PNG can expand to gigabytes).

    Raises ValueError with the reason when the bytes are not a readable image."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError("cannot decode image: not a known image format (PNG, JPEG, ...)") from None
    except _UNREADABLE as e:
        raise ValueError(f"cannot decode image: {e}") from e
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(f"image is {width}x{height} pixels, over the limit of {max_pixels}")
        try:
            return image_to_array(im, size)
        except _UNREADABLE as e:
            raise ValueError(f"cannot decode image: {e}") from e


def _read_one(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return image_to_array(im, size)
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def load_imagefolder(
    root: str | Path, size: int = 32, limit_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (float32 N x 3 x size x size), int64 labels and sorted class names.

    limit_per_class keeps the first files (sorted by name) of each class, so it is deterministic
    and avoids decoding a whole ImageNet-sized folder.
    """
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1, got {limit_per_class}")
    classes, files = scan_imagefolder(root)
    if limit_per_class is not None:
        files = [f[:limit_per_class] for f in files]
    paths, labels = labelled_files(files)
    return read_images(list(paths), size), labels, classes


def domain_root(root: str | Path, domain: str) -> Path:
    """The class-folder root of one domain of an Office-31 / Office-Home style tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    folder = root / domain
    if not folder.is_dir():
        found = sorted(p.name for p in _subdirs(root))
        raise FileNotFoundError(
            f"domain {domain!r} not found in {root}; domains there: {', '.join(found) or 'none'}"
        )
    # The Office-31 archive nests classes one level deeper: <domain>/images/<class>/.
    inner = _subdirs(folder)
    if len(inner) == 1 and inner[0].name == "images":
        return inner[0]
    return folder


def load_domain_folder(
    root: str | Path, domain: str, size: int = 32, limit_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One domain of an Office-31 / Office-Home style tree: `root/<domain>/<class>/<image>`."""
    return load_imagefolder(domain_root(root, domain), size, limit_per_class)
