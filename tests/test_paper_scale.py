"""The paper's scale on this CPU machine: CIFAR in its released pickle layout read through
the real torchvision path (and refused, naming the field, when it is not that), image
folders streamed from disk with per-epoch, per-worker orders, the GPU-hours plan of
`--preset paper --dry-run`, and the throughput benchmark running to completion."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skeptic.cli import main
from skeptic.data import DiskArrays, FolderSource, image_loader, materialize, plan_dataset
from skeptic.study import all_studies

ROOT = Path(__file__).resolve().parents[1]


def write_cifar10(root: Path, per_class: int = 3, test_per_class: int = 2) -> Path:
    """CIFAR-10's python layout: five training batches, a test batch and batches.meta, each
    a pickled dict of uint8 rows (3072 = 3 x 32 x 32, channel-major) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name: str, labels: list[int]) -> None:
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = np.asarray(labels) * 20  # the first red pixel encodes the label
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)

    train = [c for c in range(10) for _ in range(per_class)]
    for i in range(5):
        batch(f"data_batch_{i + 1}", train[i::5])
    batch("test_batch", [c for c in range(10) for _ in range(test_per_class)])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    return root


def test_cifar_layout_loads_through_torchvision_with_the_released_test_split(tmp_path):
    root = write_cifar10(tmp_path / "cifar", per_class=4)
    plan = plan_dataset("cifar10", 1000, 0.25, path=str(root), image_size=32)
    assert plan.classes[0] == "airplane" and plan.n_test == 20  # the test batch, not held out
    assert plan.n_val == 10 and plan.n_train == 30
    data = materialize({"source": DiskArrays("cifar10", str(root), 1000, 0.25, 0), "classes": plan.classes})
    assert data["x_train"].shape == (30, 3, 32, 32) and data["x_train"].dtype == np.float32
    assert len(data["y_val"]) == 10 and len(data["y_test"]) == 20
    # channel-major rows: the first red pixel still encodes each image's label
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        assert np.allclose(data[x][:, 0, 0, 0] * 255, data[y] * 20, atol=0.5)
    assert not set(map(tuple, data["x_val"][:, 0, 0, :4].tolist())) & set(
        map(tuple, data["x_train"][:, 0, 0, :4].tolist())
    )  # validation is held out of training


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda p: p / "missing", "data.path"),
        (lambda p: p, "data.path"),  # a folder without cifar-10-batches-py/
        (lambda p: _without(write_cifar10(p / "c"), "data_batch_3"), "data.path"),
        (lambda p: _corrupt(write_cifar10(p / "c"), "data_batch_2"), "data.path"),
    ],
    ids=["missing", "not_cifar", "batch_missing", "not_a_pickle"],
)
def test_bad_cifar_path_exits_2_naming_the_field(make, field, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    sets = ["data.name=cifar10", f"data.path={path}", "data.test_fraction=0", "data.image_size=32",
            "data.domain=null"]
    code = main(["run", "large_batch", "--smoke", *[a for s in sets for a in ("--set", s)]])
    assert code == 2
    assert f"error: {field}" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "skeptic-runs").exists()


def test_cifar_test_fraction_is_refused_naming_the_field(tmp_path, capsys):
    root = write_cifar10(tmp_path)
    code = main(["run", "large_batch", "--dry-run", "--set", "data.name=cifar10", "--set", "data.domain=null",
                 "--set", f"data.path={root}", "--set", "data.image_size=32"])  # fmt: skip
    assert code == 2 and "data.test_fraction" in capsys.readouterr().err


def _without(root: Path, name: str) -> Path:
    (root / "cifar-10-batches-py" / name).unlink()
    return root


def _corrupt(root: Path, name: str) -> Path:
    (root / "cifar-10-batches-py" / name).write_bytes(b"not a pickle")
    return root


def _image_tree(root: Path, classes: int = 3, per_class: int = 6) -> None:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * c, i, 0)).save(root / f"c{c}" / f"{i}.png")


def test_streamed_imagenet_layout_splits_and_shards_every_epoch(tmp_path):
    _image_tree(tmp_path / "train", per_class=10)
    _image_tree(tmp_path / "val", per_class=2)
    src = FolderSource(str(tmp_path), None, 10_000, 0.2, 0.0, seed=0)
    train, val, test = (src.split(p) for p in ("train", "val", "test"))
    assert len(train[0]) == 24 and len(val[0]) == 6 and len(test[0]) == 6
    assert not set(train[0]) & set(val[0]) and all("/val/" in f for f in test[0])
    plan = plan_dataset("imagefolder", 10_000, 0.2, path=str(tmp_path), stream=True)
    assert (plan.n_train, plan.n_val, plan.n_test) == (24, 6, 6)

    def labels(epoch: int, rank: int) -> list[int]:
        loader = image_loader(*train, _to_tensor, 4, seed=1, epoch=epoch, rank=rank, world=2, workers=0)
        return [int(x[0, 0, 0] * 255) * 100 + int(x[1, 0, 0] * 255) for x, _ in _unbatch(loader)]

    ranks = [labels(0, 0), labels(0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 12 and not set(ranks[0]) & set(ranks[1])
    assert labels(0, 0) == ranks[0]  # the same (seed, epoch): the same order
    assert labels(1, 0) != ranks[0]  # another epoch: another order


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255


def _unbatch(loader):
    for xb, yb in loader:
        yield from zip(xb, yb)


@pytest.mark.parametrize("name", [n for n, cls in all_studies().items() if "paper" in cls.presets])
def test_paper_preset_dry_run_prints_the_plan_and_gpu_hours(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", name, "--preset", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "preset paper:" in out and "GPU-hours:" in out and "data:" in out
    assert "not ready on this machine: data.path" in out  # the preset's data is not here
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.slow
def test_gpu_throughput_benchmark_runs_tiny_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--tiny"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    if not torch.cuda.is_available():
        assert "no GPU: CPU figures only" in out
    assert "resnet44" in out and "aggregate ratio" in out
