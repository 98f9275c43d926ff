"""The data layer: procedural shapes, digits, image folders, load_dataset and data_hash."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skeptic.data import (
    CLASS_NAMES,
    DATASET_NAMES,
    DIGIT_NAMES,
    DOMAINS,
    Dataset,
    data_hash,
    load_dataset,
    load_digits_arrays,
    load_domain_folder,
    load_imagefolder,
    make_shapes,
)

# --- shapes -----------------------------------------------------------------------------------


def test_shapes_shape_dtype_range() -> None:
    x, y = make_shapes(50, seed=0, size=24)
    assert x.shape == (50, 3, 24, 24) and x.dtype == np.float32
    assert y.shape == (50,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10


def test_shapes_deterministic_by_seed() -> None:
    a_x, a_y = make_shapes(64, seed=3, domain="textured")
    b_x, b_y = make_shapes(64, seed=3, domain="textured")
    assert a_x.tobytes() == b_x.tobytes() and a_y.tobytes() == b_y.tobytes()
    c_x, _ = make_shapes(64, seed=4, domain="textured")
    assert not np.array_equal(a_x, c_x)


def test_shapes_balanced_by_default() -> None:
    _, y = make_shapes(1003, seed=1)
    counts = np.bincount(y, minlength=10)
    assert counts.min() >= 100 and counts.max() <= 101


def test_class_priors_honoured() -> None:
    priors = [10, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    _, y = make_shapes(1800, seed=0, class_priors=priors)
    counts = np.bincount(y, minlength=10)
    # Counts are exact (largest-remainder rounding), not sampled.
    assert counts[0] == 1000 and counts[9] == 0
    assert np.all(counts[1:9] == 100)


def test_classes_subset_honoured() -> None:
    _, y = make_shapes(300, seed=0, classes=[2, 5, 7])
    assert set(np.unique(y)) == {2, 5, 7}
    assert np.all(np.bincount(y)[[2, 5, 7]] == 100)
    # Priors and a subset combine: the subset's priors are renormalised.
    _, y = make_shapes(400, seed=0, classes=[0, 1], class_priors=[3, 1] + [5] * 8)
    assert np.bincount(y, minlength=10)[:2].tolist() == [300, 100]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"size": 7}, "size must be"),
        ({"class_priors": [1.0] * 9}, "10 values"),
        ({"class_priors": [-1.0] + [1.0] * 9}, "non-negative"),
        ({"class_priors": [0.0] * 10}, "zero probability"),
        ({"classes": [3, 10]}, "subset of 0..9"),
        ({"classes": [1], "class_priors": [1.0] + [0.0] * 9}, "zero probability"),
        ({"domain": "sepia"}, "plain, textured, dark, noisy, outline"),
    ],
)
def test_shapes_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"n": 10, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        make_shapes(**args)


def test_every_domain_generates_and_differs() -> None:
    images = {d: make_shapes(200, seed=5, domain=d, size=16) for d in DOMAINS}
    assert {"plain", "textured", "dark", "noisy", "outline"} <= set(DOMAINS)
    # Same seed, same scenes: only the rendering changes between domains.
    for x, y in images.values():
        assert x.shape == (200, 3, 16, 16) and np.array_equal(y, images["plain"][1])
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(images[a][0], images[b][0]), (a, b)
    plain, dark = images["plain"][0], images["dark"][0]
    textured, noisy, outline = images["textured"][0], images["noisy"][0], images["outline"][0]
    assert dark.mean() < 0.35 and plain.mean() > 0.6
    # Texture varies the background within an image; a flat background barely does.
    corner = np.s_[:, :, :3, :3]
    assert textured[corner].std(axis=(2, 3)).mean() > 2 * plain[corner].std(axis=(2, 3)).mean()
    assert _roughness(noisy) > 3 * _roughness(plain)
    # Dark shapes on light ground: an outline covers fewer pixels, so the image is lighter.
    assert outline.mean() > plain.mean() + 0.01


def _roughness(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=-1)).mean())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_shapes_learnable_but_not_linearly_trivial() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = make_shapes(2000, seed=0, size=16)
    xt, yt = make_shapes(1000, seed=100, size=16)
    clf = LogisticRegression(max_iter=200).fit(x.reshape(len(x), -1), y)
    acc = clf.score(xt.reshape(len(xt), -1), yt)
    # Measured about 0.34-0.38 over seeds; chance is 0.1.
    assert 0.22 < acc < 0.7


# --- digits -----------------------------------------------------------------------------------


def test_digits_arrays() -> None:
    x, y = load_digits_arrays()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10)) and DIGIT_NAMES[3] == "3"


# --- image folders ----------------------------------------------------------------------------


def _write_folder(root: Path, classes: tuple[str, ...] = ("cat", "ant", "bee"), n: int = 4) -> None:
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P"]
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = 10 + 7 * i, 13 + 3 * i
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels).convert(modes[i % len(modes)])
            img.save(root / c / f"img{i}.png")


def test_load_imagefolder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    (tmp_path / "ant" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / ".hidden").mkdir()
    x, y, classes = load_imagefolder(tmp_path, size=12)
    assert classes == ["ant", "bee", "cat"]
    assert x.shape == (12, 3, 12, 12) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x, y, _ = load_imagefolder(tmp_path, size=8, limit_per_class=2)
    assert x.shape == (6, 3, 8, 8) and np.bincount(y).tolist() == [2, 2, 2]


def test_imagefolder_reads_jpeg_and_bmp(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "a" / "red.JPG", format="JPEG")
    Image.new("RGB", (5, 9), (0, 0, 255)).save(tmp_path / "a" / "blue.bmp")
    x, _, _ = load_imagefolder(tmp_path, size=4)
    assert x.shape == (2, 3, 4, 4)
    assert x[0, 2].mean() > 0.9 and x[0, 0].mean() < 0.1  # blue.bmp sorts first
    assert x[1, 0].mean() > 0.9


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_imagefolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class folders"):
        load_imagefolder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty.*has no images"):
        load_imagefolder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_imagefolder(tmp_path)
    with pytest.raises(ValueError, match="limit_per_class"):
        load_imagefolder(tmp_path, limit_per_class=0)


def test_truncated_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a" / "full.png")
    data = (tmp_path / "a" / "full.png").read_bytes()
    (tmp_path / "a" / "full.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="full.png"):
        load_imagefolder(tmp_path)


def test_office_layout(tmp_path: Path) -> None:
    _write_folder(tmp_path / "amazon", classes=("mug", "bike"), n=3)
    _write_folder(tmp_path / "webcam" / "images", classes=("mug", "bike"), n=2)  # Office-31
    x, y, classes = load_domain_folder(tmp_path, "amazon", size=8)
    assert classes == ["bike", "mug"] and x.shape == (6, 3, 8, 8)
    x, y, classes = load_domain_folder(tmp_path, "webcam", size=8)
    assert classes == ["bike", "mug"] and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="amazon, webcam"):
        load_domain_folder(tmp_path, "dslr")


# --- load_dataset and data_hash ------------------------------------------------------------


def test_load_dataset_shapes_stratified_and_deterministic() -> None:
    ds = load_dataset("shapes", size=500, val_fraction=0.2, seed=1, image_size=16)
    assert isinstance(ds, Dataset) and ds.name == "shapes"
    assert len(ds.y_train) == 400 and len(ds.y_val) == 100
    assert np.bincount(ds.y_val).tolist() == [10] * 10
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 10
    assert ds.classes == CLASS_NAMES
    # Shuffled, not sorted by class.
    assert not np.all(np.diff(ds.y_train) >= 0)
    again = load_dataset("shapes", size=500, val_fraction=0.2, seed=1, image_size=16)
    assert data_hash(asdict(ds)) == data_hash(asdict(again))
    other = load_dataset("shapes", size=500, val_fraction=0.2, seed=2, image_size=16)
    assert data_hash(asdict(ds)) != data_hash(asdict(other))


def test_load_dataset_shapes_domain() -> None:
    plain = load_dataset("shapes", size=40, image_size=16)
    dark = load_dataset("shapes", size=40, image_size=16, domain="dark")
    assert np.array_equal(plain.y_train, dark.y_train)
    assert dark.x_train.mean() < plain.x_train.mean()


def test_load_dataset_digits() -> None:
    ds = load_dataset("digits", size=300, seed=0)
    assert len(ds.y_train) + len(ds.y_val) == 300
    assert ds.input_shape == (1, 8, 8) and ds.classes == DIGIT_NAMES
    every = load_dataset("digits", size=10_000, val_fraction=0.25)
    assert len(every.y_train) + len(every.y_val) == 1797
    per_class = np.bincount(every.y_val) / np.bincount(np.r_[every.y_train, every.y_val])
    assert np.allclose(per_class, 0.25, atol=0.01)


def test_load_dataset_imagefolder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    ds = load_dataset("imagefolder", size=100, path=str(tmp_path), image_size=10, val_fraction=0.25)
    assert ds.classes == ["ant", "bee", "cat"] and ds.input_shape == (3, 10, 10)
    assert np.bincount(ds.y_val).tolist() == [1, 1, 1]
    assert np.bincount(ds.y_train).tolist() == [3, 3, 3]
    capped = load_dataset("imagefolder", size=6, path=str(tmp_path), image_size=10)
    assert len(capped.y_train) + len(capped.y_val) == 6
    _write_folder(tmp_path / "office" / "art", classes=("a", "b"), n=2)
    office = load_dataset("imagefolder", size=10, path=str(tmp_path / "office"), domain="art")
    assert office.classes == ["a", "b"]


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=", ".join(DATASET_NAMES)):
        load_dataset("cifar", size=10)
    with pytest.raises(ValueError, match="needs path"):
        load_dataset("imagefolder", size=10)
    with pytest.raises(ValueError, match="no domains"):
        load_dataset("digits", size=10, domain="dark")
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("shapes", size=10, val_fraction=1.0)
    with pytest.raises(ValueError, match="unknown domain"):
        load_dataset("shapes", size=10, domain="sepia")
    with pytest.raises(FileNotFoundError):
        load_dataset("imagefolder", size=10, path=str(tmp_path / "missing"))


def test_data_hash_tracks_content() -> None:
    ds = load_dataset("digits", size=100)
    h = data_hash(asdict(ds))
    assert len(h) == 64 and h == data_hash(asdict(load_dataset("digits", size=100)))
    ds.x_train[0, 0, 0, 0] += 0.5
    assert data_hash(asdict(ds)) != h
    ds.x_train[0, 0, 0, 0] -= 0.5
    assert data_hash(asdict(ds)) == h
    ds.classes = ds.classes[::-1]
    assert data_hash(asdict(ds)) != h
