"""Study `metaformer` at the paper's scale: the S12-size models (timm's poolformer_s12 and the
identity, random, hybrid and all-attention mixers at its size) build with the paper's
parameter counts and MACs and take one training step; the `paper` and `cifar100` presets
validate with the DeiT recipe and a stated cost; the DeiT transforms and the reference's lr
schedule are as train.py runs them; the loader loop trains from a streamed ImageNet-layout
folder and from CIFAR-like arrays, resumes, and registers a model that takes [0, 1] images;
a 2-worker (gloo) trial trains exactly as one worker does. All on CPU, tiny."""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.models.metaformer import Attention, Pooling

from jobs.metaformer import data as mf_data
from jobs.metaformer import evidence
from jobs.metaformer.mixers import (
    S12_DEPTHS,
    S12_DIMS,
    S12_HEAD_DIM,
    AddPositionEmb,
    RandomMixing,
    build_metaformer,
    stage_sizes,
)
from jobs.metaformer.study import (
    PAPER_ARMS,
    S12_MACS,
    MetaFormerStudy,
    Params,
    build,
    count_macs,
    count_params,
    make_scheduler,
)
from skeptic.data import FolderSource
from skeptic.planning import gpu_hours
from skeptic.spec import SpecError, load_spec, sweep_params
from skeptic.study import TrialResult

STUDY = MetaFormerStudy()
M = 1e6


def _s12(
    mixer: str, image: int = 224, classes: int = 1000, stem: str = "7x7s4", meta: bool = False
) -> torch.nn.Module:
    """An S12-size model; `meta`: shapes only (no memory, no init), enough to count its
    parameters and MACs at 224 pixels in a fraction of a second."""
    torch.manual_seed(0)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return build_metaformer(
            mixer, "none", S12_DIMS, S12_DEPTHS, image, classes, stem=stem,
            head_dim=S12_HEAD_DIM, drop_path=0.1,
        )  # fmt: skip


# ---- the S12-size models -----------------------------------------------------------------------


def test_pooling_s12_is_timms_poolformer_s12_with_the_papers_11_9m_parameters():
    ours, timms = _s12("pool3"), timm.create_model("poolformer_s12")
    assert count_params(ours) == count_params(timms)
    assert count_params(ours) == pytest.approx(11.9 * M, rel=0.02)
    ours.load_state_dict(timms.state_dict(), strict=True)  # the same modules, names and shapes
    assert count_macs(_s12("pool3", meta=True), 224) == pytest.approx(1.8e9, rel=0.02)  # 1.8G
    assert stage_sizes(224, 4, "7x7s4") == [56, 28, 14, 7]
    assert all(type(s.blocks[0].token_mixer) is Pooling for s in ours.stages)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for s in ours.stages for b in s.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)  # linear to the README's 0.1


@pytest.mark.parametrize("mixer", ["identity", "random"])
def test_identity_and_random_mixers_have_s12s_parameters(mixer):
    model = _s12(mixer, meta=True)
    assert count_params(model) == pytest.approx(11.9 * M, rel=0.02)  # metaformer_id_s12: 11.9M
    if mixer == "random":  # frozen: buffers, one token x token matrix per block
        mixers = [b.token_mixer for s in model.stages for b in s.blocks]
        assert all(isinstance(m, RandomMixing) for m in mixers)
        assert mixers[0].matrix.shape == (56 * 56, 56 * 56)
        assert "matrix" not in dict(model.named_parameters())


def test_hybrid_is_metaformer_ppaa_s12_224():
    """[Pool, Pool, Attn, Attn], head dim 32, a 14x14 position embedding into stage 3, as
    sail-sg/poolformer's models/metaformer.py builds it: 16.5M parameters, 2.5G MACs."""
    model = _s12("hybrid", meta=True)
    assert count_params(model) == pytest.approx(16.5 * M, rel=0.02)
    kinds = [type(s.blocks[0].token_mixer) for s in model.stages]
    assert kinds == [Pooling, Pooling, Attention, Attention]
    assert model.stages[2].blocks[0].token_mixer.head_dim == 32
    embeds = [m for m in model.modules() if isinstance(m, AddPositionEmb)]
    assert [tuple(e.pos_embed.shape) for e in embeds] == [(1, 320, 14, 14)]
    assert count_macs(model, 224) == pytest.approx(2.5e9, rel=0.03)


def test_the_stated_macs_table_is_what_count_macs_measures():
    """work() scales each arm by S12_MACS: the figures are the models' own counts."""
    for stem, image, classes in (("7x7s4", 224, 1000), ("3x3s2", 32, 100)):
        for mixer in PAPER_ARMS:
            measured = count_macs(_s12(mixer, image, classes, stem, meta=True), image)
            assert measured == pytest.approx(S12_MACS[stem][mixer], rel=0.002), (stem, mixer)


@pytest.mark.parametrize("mixer", PAPER_ARMS)
def test_every_paper_arm_takes_a_training_step_at_s12_size(mixer):
    """Batch 2 at 64x64 (stages 16/8/4/2 through the 7x7 stride-4 stem) and at CIFAR's 32x32
    through the 3x3 stride-2 stem (16/8/4/2)."""
    for stem, image in (("7x7s4", 64), ("3x3s2", 32)):
        model = _s12(mixer, image, 10, stem)
        assert stage_sizes(image, 4, stem) == [16, 8, 4, 2]
        out = model(torch.rand(2, 3, image, image))
        assert out.shape == (2, 10)
        torch.nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_cifar_adaptation_keeps_s12_but_the_32_pixel_stem():
    model = _s12("pool3", 32, 100, "3x3s2")
    assert (model.stem.conv.kernel_size, model.stem.conv.stride) == ((3, 3), (2, 2))
    assert count_params(model) == pytest.approx(11.9 * M - 900 * 512, rel=0.02)  # 100 classes
    assert min(stage_sizes(32, 4, "7x7s4")) == 1  # why: pooling would mix nothing in stage 4


# ---- the presets -------------------------------------------------------------------------------


def _preset_spec(name: str, *sets: str):
    s = MetaFormerStudy
    sets = ("data.path=/nowhere", *sets)  # the spec needs one; nothing here reads it
    preset = (name, s.presets[name].spec)
    return load_spec(s.name, s.defaults, s.Params, sets=list(sets), preset=preset)


def test_paper_preset_is_the_papers_recipe_on_one_8_gpu_node_per_trial():
    spec = _preset_spec("paper", "data.path=/data/imagenet")
    assert (spec.data.name, spec.data.stream, spec.data.image_size) == ("imagefolder", True, 224)
    assert spec.data.test_fraction == 0  # ImageNet's val/ is the test split
    assert (spec.resources.workers, spec.resources.gpu) == (8, 1)
    points = list(sweep_params(spec, Params))
    assert sorted(p.mixer for p in points) == sorted(PAPER_ARMS)
    for p in points:
        assert (p.dims, p.depths, p.stem, p.head_dim) == (
            [64, 128, 320, 512],
            [2, 2, 6, 2],
            "7x7s4",
            32,
        )
        assert p.batch_size == 1024 and p.lr_grid == [1e-3] and p.weight_decay == 0.05
        assert (p.epochs, p.warmup_epochs, p.cooldown_epochs) == (310, 5, 10)
        assert (p.warmup_lr, p.min_lr, p.label_smoothing, p.drop_path) == (1e-6, 1e-5, 0.1, 0.1)
        assert (p.augment, p.rand_augment, p.mixup, p.cutmix) == (
            "deit",
            "rand-m9-mstd0.5-inc1",
            0.8,
            1.0,
        )
        assert (p.random_erasing, p.crop_size, p.eval_crop_pct, p.normalize) == (
            0.25,
            224,
            0.9,
            True,
        )
    STUDY.check_spec(spec, None)


def test_cifar100_preset_adapts_s12_for_one_node():
    spec = _preset_spec("cifar100", "data.path=/data/cifar")
    assert (spec.data.name, spec.data.test_fraction, spec.data.image_size) == ("cifar100", 0, 32)
    assert (spec.resources.workers, spec.resources.gpu) == (1, 1)
    for p in sweep_params(spec, Params):
        assert (p.stem, p.dims, p.augment, p.batch_size) == ("3x3s2", list(S12_DIMS), "deit", 256)
        assert len(p.lr_grid) == 3
    STUDY.check_spec(spec, None)


@pytest.mark.parametrize("name", ["paper", "cifar100"])
def test_presets_state_their_cost_and_work_counts_every_lr_and_arm(name):
    preset = MetaFormerStudy.presets[name]
    assert preset.cost_basis.startswith("stated") and "not measured" in preset.cost_basis
    assert preset.seconds_per_image > 0 and preset.gpu and preset.data and preset.about
    spec = _preset_spec(name, "data.path=/nowhere")
    low, high, images = gpu_hours(STUDY, spec, preset, None)
    assert 0 < low <= high and images > 0
    points = {p.mixer: p for p in sweep_params(spec, Params)}
    pool = STUDY.work(points["pool3"], 1000)
    assert pool == points["pool3"].epochs * 1000 * len(points["pool3"].lr_grid)
    stem = points["pool3"].stem
    ratio = S12_MACS[stem]["attention"] / S12_MACS[stem]["pool3"]
    assert STUDY.work(points["attention"], 1000) == pytest.approx(pool * ratio)
    assert STUDY.work(Params(), 1000) == Params().epochs * 1000 * len(Params().lr_grid)


@pytest.mark.parametrize("name", ["paper", "cifar100"])
def test_smoke_over_a_preset_validates_with_the_small_models(name):
    s = MetaFormerStudy
    preset = (name, s.presets[name].spec)
    spec = load_spec(s.name, s.defaults, s.Params, s.smoke, sets=["data.path=/nowhere"],
                     preset=preset)  # fmt: skip
    assert spec.preset == name
    STUDY.check_spec(spec, None)
    for p in sweep_params(spec, Params):
        assert p.epochs == 1 and p.dims == [16, 32, 48, 64] and p.augment == "deit"


def test_paper_scale_spec_errors_name_the_field():
    with pytest.raises(SpecError, match=r"train\.batch_size: 1020 is the global batch"):
        STUDY.check_spec(_preset_spec("paper", "train.batch_size=1020"), None)
    with pytest.raises(SpecError, match=r"train\.batch_size: 1032 gives each of 8 workers 129"):
        STUDY.check_spec(_preset_spec("paper", "train.batch_size=1032"), None)
    with pytest.raises(SpecError, match=r"train\.crop_size: 192 differs from data\.image_size"):
        STUDY.check_spec(_preset_spec("paper", "train.crop_size=192"), None)
    with pytest.raises(SpecError, match="min_lr"):
        _preset_spec("paper", "train.min_lr=0.01")
    with pytest.raises(SpecError, match="rand_augment"):
        _preset_spec("paper", "train.rand_augment=foo")
    with pytest.raises(SpecError, match="cooldown_epochs"):
        _preset_spec("paper", "train.cooldown_epochs=306")


def test_the_reference_schedule_warms_from_1e_6_cosines_to_1e_5_and_cools_down():
    p = _preset_spec("paper").train
    p = Params(**{**p, "mixer": "pool3"})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_scheduler(opt, p, steps_per_epoch=2)
    lrs = []
    for _ in range(p.epochs * 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 10  # after 5 epochs
    assert lrs[300 * 2] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(lrs[10:]))
    saved = sched.state_dict()  # a trial's checkpoint resumes its schedule
    again = make_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), p, 2)
    again.load_state_dict(saved)
    assert again.get_last_lr() == sched.get_last_lr()


def test_default_schedule_is_unchanged():
    """Without the reference's ends the small runs keep torch's SequentialLR."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert type(make_scheduler(opt, Params(), 10)).__name__ == "SequentialLR"


# ---- the DeiT transforms -----------------------------------------------------------------------


def test_folder_transforms_are_deits_and_the_eval_crop_is_224_of_248():
    p = Params(augment="deit", normalize=True)
    train = mf_data.folder_train_transform(p).transforms
    crop = train[0]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0)
    ra = next(t for t in train if isinstance(t, RandAugment))
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {9}
    assert {op.magnitude_std for op in ra.ops} == {0.5}
    erase = next(t for t in train if isinstance(t, RandomErasing))
    assert (erase.probability, erase.mode) == (0.25, "pixel")
    ev = mf_data.eval_transform(p).transforms
    assert ev[0].size == 248 and ev[1].size == (224, 224)
    out = mf_data.eval_transform(p)(Image.new("RGB", (300, 260)))
    assert out.shape == (3, 224, 224)


def test_rand_augment_at_magnitude_10_posterizes_to_black_instead_of_failing():
    """PosterizeIncreasing keeps 0 bits at magnitude 10; Pillow >= 10.4 refuses 0 bits."""
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(mf_data._posterize(img, 0)).max() == 0
    assert np.asarray(mf_data._posterize(img, 4)).max() == 192
    p = Params(augment="deit", crop_size=32)
    for t in (mf_data.folder_train_transform(p), mf_data.array_train_transform(p, 32)):
        ra = next(x for x in t.transforms if isinstance(x, RandAugment))
        poster = [op for op in ra.ops if "Posterize" in op.name]
        assert poster and all(op.aug_fn is mf_data._posterize for op in poster)


# ---- the loader loop ---------------------------------------------------------------------------


@dataclass
class _Ctx:
    """The TrialContext (skeptic.api) in memory, one worker."""

    params: Params
    data: dict[str, Any]
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    upstream: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    state: dict[str, Any] | None = None
    rank: int = 0
    world_size: int = 1
    reports: list[tuple[dict, dict]] = field(default_factory=list)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare_model(self, model: torch.nn.Module, *, conv: bool = True) -> torch.nn.Module:
        from skeptic.trial import prepare_model

        return prepare_model(model, self.device, conv=conv, world_size=self.world_size)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank :: self.world_size]

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: Any = None) -> None:
        self.reports.append((dict(metrics), state))
        self.start_epoch += 1


TINY = {"dims": [8, 16], "depths": [1, 1], "epochs": 2, "warmup_epochs": 0.5, "batch_size": 8,
        "lr_grid": [0.05, 0.1], "loader_workers": 0, "eval_batch_size": 16}  # fmt: skip


@pytest.fixture(scope="module")
def imagenet_layout(tmp_path_factory) -> Path:
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, odd sizes as ImageNet's."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 3)):
        for c, tone in (("n01440764", 40), ("n01443537", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(30, 50, 2)
                pixels = np.clip(tone + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{c}_{i}.JPEG")
    return root


def test_a_streamed_imagenet_trial_trains_tests_once_resumes_and_registers(imagenet_layout):
    src = FolderSource(str(imagenet_layout), None, 10**6, 0.25, 0.0, 0)
    p = Params(**TINY, mixer="hybrid", augment="deit", crop_size=24, normalize=True,
               head_dim=8, warmup_lr=1e-6, min_lr=1e-6, drop_path=0.1)  # fmt: skip
    ctx = _Ctx(p, {"stream": src, "classes": src.classes})
    STUDY.train(ctx)
    assert len(ctx.reports) == 2
    first, last = ctx.reports[0][0], ctx.reports[-1][0]
    assert "test_acc" not in first and 0 <= last["test_acc"] <= 1
    for m in (first, last):
        assert m["val_acc"] == max(m["val_acc_lr0"], m["val_acc_lr1"])
        assert m["params"] > 0 and m["macs"] > 0 and m["train_images_per_s"] > 0
    state = ctx.reports[-1][1]
    config = state["model_config"]
    assert (config["image_size"], config["num_classes"], config["stem"]) == (24, 2, "3x3s2")
    # resumed after the first epoch: the second epoch only, ending at the same lr
    resumed = _Ctx(p, {"stream": src, "classes": src.classes}, start_epoch=1,
                   state=ctx.reports[0][1])  # fmt: skip
    STUDY.train(resumed)
    assert len(resumed.reports) == 1 and "test_acc" in resumed.reports[0][0]
    assert resumed.reports[0][0]["lr_lr0"] == pytest.approx(last["lr_lr0"])
    # the registered model takes [0, 1] images and standardises them as training did
    registered = STUDY.build_model(config)
    registered.load_state_dict(state["model"])
    trained = build(config)
    trained.load_state_dict(state["model"])
    x = torch.rand(2, 3, 24, 24)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mf_data.mean_std(True))
    registered.eval(), trained.eval()
    assert torch.allclose(registered(x), trained((x - mean) / std), atol=1e-5)
    assert set(registered.state_dict()) == set(trained.state_dict())


def _arrays(n: int = 32, side: int = 16) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for name, size in (("train", n), ("val", 12), ("test", 12)):
        out[f"x_{name}"] = rng.random((size, 3, side, side), dtype=np.float32)
        out[f"y_{name}"] = np.arange(size) % 4
    out["classes"] = list("abcd")
    return out


def test_cifar_arrays_train_with_the_deit_recipe_through_a_loader():
    p = Params(**TINY, augment="deit", normalize=True)
    ctx = _Ctx(p, _arrays())
    STUDY.train(ctx)
    last = ctx.reports[-1][0]
    assert "test_acc" in last and last["train_images_per_s"] > 0
    assert ctx.reports[-1][1]["model_config"]["input_norm"]["mean"] == list(mf_data.MEAN)
    loader = mf_data.LoaderData.from_arrays(ctx, p).train(0)
    xb, _ = next(iter(loader))
    assert xb.shape == (8, 3, 16, 16) and len(loader) == 32 // 8


# ---- two workers (DDP over gloo) ---------------------------------------------------------------


def _deterministic(p: Any, size: int) -> Any:
    from torchvision import transforms

    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(*mf_data.mean_std(p.normalize))]
    )


# the in-memory loop, and the loader loop (DeiT recipe, its random draws switched off)
DDP_RUNS = ({}, {"augment": "deit", "normalize": True, "mixup": 0, "cutmix": 0,
                 "random_erasing": 0})  # fmt: skip


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    torch.set_num_threads(1)
    mf_data.array_train_transform = _deterministic  # random crops differ by process
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    saved = []
    for kwargs in DDP_RUNS:
        ctx = _Ctx(Params(**{**TINY, **kwargs}), _arrays(), rank=rank, world_size=world)
        STUDY.train(ctx)
        saved.append([(m, s["model"]) for m, s in ctx.reports])
    if rank == 0:
        torch.save(saved, out)
    if world > 1:
        torch.distributed.destroy_process_group()


def test_two_workers_train_as_one_worker_does(tmp_path):
    """The global batch split over 2 gloo workers (DDP averages the gradients; each worker
    evaluates its share and the sums are reduced): the same metrics and weights as one
    worker, for the in-memory loop and the loader loop."""
    from serving.control import free_port

    _worker(0, 1, 0, str(tmp_path / "one.pt"))
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(tmp_path / "two.pt")), nprocs=2)
    ones = torch.load(tmp_path / "one.pt", weights_only=False)
    twos = torch.load(tmp_path / "two.pt", weights_only=False)
    for one, two in zip(ones, twos, strict=True):
        assert len(one) == len(two) == TINY["epochs"]
        for (m1, w1), (m2, w2) in zip(one, two, strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "val_acc_lr1"):
                assert m1[key] == pytest.approx(m2[key], abs=1e-5), key
            assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
        assert one[-1][0]["test_acc"] == pytest.approx(two[-1][0]["test_acc"])


# ---- the report at the paper's scale -----------------------------------------------------------


def _result(arm: str, seed: int, test: float) -> TrialResult:
    row = {"test_acc": test, "val_acc": test, "train_acc": 0.8, "lr_base": 1e-3, "lr_index": 0,
           "val_acc_lr0": test, "lr_base_lr0": 1e-3, "train_acc_lr0": 0.8, "params": 11.9e6,
           "macs": S12_MACS["7x7s4"][arm], "train_images_per_s": 9000.0,
           "eval_images_per_s": 20000.0}  # fmt: skip
    params = {"arm": arm, "mixer": arm, "ablation": "none", "lr_grid": [1e-3], "seed": seed}
    return TrialResult(f"{arm}{seed}", params, [row, row], "completed")


def test_an_imagenet_report_puts_each_arms_top1_beside_the_papers():
    import matplotlib.pyplot as plt

    tops = {"pool3": 0.771, "identity": 0.745, "random": 0.759, "hybrid": 0.808, "attention": 0.79}
    results = [_result(a, s, t + 0.001 * s) for a, t in tops.items() for s in range(3)]
    spec = _preset_spec("paper", "data.path=/nowhere")
    ev = STUDY.evidence(results, spec, [])
    rows = {r["quantity"]: r for r in ev.paper}
    assert rows["pool3 top-1 %, ImageNet val"]["paper"] == "77.2 (Table 5)"
    assert rows["pool3 top-1 %, ImageNet val"]["ours"].startswith("77.2 ")
    assert rows["identity top-1 %, ImageNet val"]["paper"] == "74.3 (Table 5)"
    assert rows["random top-1 %, ImageNet val"]["paper"] == "75.8 (Table 5)"
    assert rows["hybrid top-1 %, ImageNet val"]["paper"] == "81.0 (Table 5)"
    assert "### The presets" in ev.details and "18x18" not in ev.details.split("### The presets")[0]
    assert evidence.PAPER_TOP1["pool3"] == 77.2
    plt.close("all")
    assert math.isfinite(evidence.PAPER_POOL)
