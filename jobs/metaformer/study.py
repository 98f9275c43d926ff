"""Study `metaformer`: Yu et al. 2022, "MetaFormer Is Actually What You Need for Vision".

Every model is timm's `MetaFormer` shaped like the reference code's (sail-sg/poolformer; see
`mixers.build_metaformer`): four stages, LayerScale 1e-5 on both branches of every block,
GroupNorm(1) for the pooling models, the hybrid as metaformer_ppaa_s12_224 ([Pool, Pool,
Attn, Attn], LayerNormChannel, a learned position embedding before the first attention
stage). One arm per token mixer (pooling 3/5/7, identity, frozen random mixing, timm's
SepConv, attention, spatial MLP, the hybrid) and per component ablation of the pooling model
(no residual, no channel MLP, no norm, LayerNorm / BatchNorm instead of GroupNorm(1)); the
default sweep runs five of them (DEFAULT_ARMS), `--set 'sweep.arms=...'` any others.

Recipe: the reference's (train.py, README), scaled down: AdamW, weight decay 0.05, lr given
for batch 1024 and scaled linearly to the trial's batch, linear warmup then cosine (per
step), label smoothing 0.1. Every arm gets the same lr search: each trial trains one model
per lr of `lr_grid`, from the same initial weights on the same batches, and keeps the one
with the highest validation accuracy after the last epoch. Params and MACs are measured per
model with torch.utils.flop_counter (MACs = FLOPs / 2).

Where this run differs from the paper's protocol, and why:
- Data: 3000 generated 18x18 shapes of 10 classes (1200 train, 600 validation, 1200 test)
  instead of ImageNet-1k at 224x224: nothing is downloaded, and 2 CPU cores train it.
- Model: dims 16/32/64/128, depths 1/1/2/1 (5 blocks) instead of S12's 64/128/320/512,
  2/2/6/2 (12 blocks); a 3x3 stride-2 stem instead of 7x7 stride 4, for the 18-pixel input
  (stages at 9/5/3/2 pixels); attention head dim 16 instead of 32; the head's norm after
  global pooling (timm) instead of before it. Size and time, not the design, force these.
- Schedule: 18 epochs at batch 64 with 2 warmup epochs, cosine to zero (reference: 300
  epochs at batch 1024, 5 warmup epochs, cosine to 1e-5 and 10 cooldown epochs). 18 epochs
  bring the deciding arms to about 95% train accuracy in the pilots; the report shows the
  learning curves and where each arm stands.
- lr: the reference's 1e-3 x batch/1024 (6.25e-5 at batch 64) barely moves a model that
  starts near the identity (LayerScale 1e-5) within 324 steps, so every arm searches 32x,
  64x and 128x it (2e-3, 4e-3 and 8e-3 at batch 64) and validation picks, per trial (pilot
  runs with 1e-3 / 3e-3 and then 2e-3 / 4e-3 saw validation pick the upper end for most
  trials, so the grid was moved up and widened to three values).
- Regularisation: no RandAugment, Mixup/CutMix, random erasing or drop path (reference:
  all on, drop path 0.1 for S12): with 1200 images and 18 epochs they would keep the models
  from fitting; `train.augment: heavy` turns Mixup/CutMix (and flips/shifts) on.
- The attention baseline: the paper compares PoolFormer with DeiT/PVT (Table 2), other
  models; here attention is the token mixer of the same four-stage MetaFormer, with a
  learned position embedding before its first stage as DeiT has at its input.
- Seeds: 3 per arm, 6 for the deciding arms of comparisons 3 seeds leave undecided; paired
  by seed (the paper reports one run per model).
- Arms: the default sweep runs pool3, attention, identity, the hybrid and random mixing;
  the pool sizes, SepConv, the spatial MLP and the Table 5 component ablations are built and
  tested but left out of the default run, which must fit 15 minutes on 2 cores.

The presets: the paper's own scale (`skeptic run metaformer --preset paper` / `cifar100`)

`paper` follows the paper's Table 5 setting and sail-sg/poolformer's train.py and README:
PoolFormer-S12 (dims 64/128/320/512, depths 2/2/6/2, the 7x7 stride-4 stem: timm's
poolformer_s12 module for module, 11.9M parameters, 1.8G MACs), and at the same size the
identity mixer (metaformer_id_s12, 11.9M), frozen random mixing (11.9M trained parameters plus
21.1M frozen matrix entries, 3.3G MACs) and [Pool, Pool, Attn, Attn] (metaformer_ppaa_s12_224,
16.5M, 2.5G MACs); ImageNet-1k at 224 pixels streamed from disk; the DeiT recipe: AdamW,
lr 1e-3 at batch 1024 (128 per GPU on one 8-GPU node), weight decay 0.05, 5 warmup epochs from
1e-6, cosine to 1e-5 over 300 epochs and 10 cooldown epochs at 1e-5 (timm's 300 + 10), label
smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, Mixup 0.8 / CutMix 1.0, random erasing 0.25,
drop path 0.1, random-resized 224 crops; evaluation at 224 after resizing to 248 (crop_pct
0.9). The paper's top-1 (Table 5): pooling 77.2, identity 74.3, random matrix 75.8, hybrid
81.0; the report puts ours beside them. Where it differs, and why:
- An all-attention arm at S12 size (attention in all four stages, a position embedding after
  the stem; 16.8M, 5.6G MACs): the verdict's comparisons are pool3 vs attention in one
  skeleton. The paper's attention baseline is DeiT-S (Table 2), another model.
- 1% of ImageNet's training images are held out as validation (every choice is made there,
  the champion included); the paper trains on all of them and reports ImageNet's val, which
  is our test split, measured once after the last epoch.
- 3 seeds per arm, paired (the paper reports one run per model): the fewest for which the
  platform's paired interval exists (--set sweep.seeds=... for more, at 15 runs' cost each).
- Per-step lr schedule (timm's is per epoch) and bf16 autocast (the reference: apex fp16).
- The head normalises after global pooling (timm) instead of before it: on a 1x1 map it is
  the same LayerNorm of the pooled features. The hybrid and all-attention arms are evaluated
  at crop_pct 0.9 like the others (metaformer_ppaa_s12_224's config says 0.95), so every arm
  is tested on the same pixels.
- With several workers each evaluates its share of val / test: up to workers - 1 images of
  a split (of 50,000) are left out so that every share is equally long.

`cifar100` runs the same five arms and recipe on one node (8 GPUs: a trial per GPU; at the
estimate below, about 20 RTX-3090-hours in all): CIFAR-100's 45,000 training images (5,000
held out for validation), its 10,000 test images as the test split. The S12 models are adapted
to 32 pixels: a 3x3 stride-2 stem instead of 7x7 stride 4, so the stages run at 16/8/4/2
pixels (with the 7x7 stride-4 stem they would be 8/4/2/1, and pooling mixes nothing on a 1x1
map); the rest of the model as in `paper` (11.4M parameters with the 100-class head, 0.15G
MACs). The crop is a random 32-pixel crop of the image padded by 4 (the CIFAR convention; a
random resized crop at 32 pixels blows 9x9 patches up 3.5 times); batch 256; an lr search of
1e-3, 2e-3 and 4e-3 at batch 1024 (2.5e-4 to 1e-3 at 256), since the reference's rule was
tuned on ImageNet and small-data runs from scratch usually want a larger rate: validation
picks per trial. 310 epochs (300 + 10 cooldown) as in `paper`.

Three-way split (the platform's default data): the models train on the train split, every
choice (each trial's lr, the champion) is made on validation accuracy, and the numbers the
verdict states are test accuracies, measured once, after the last epoch, on the model
validation picked. The decision: jobs/metaformer/verdict.py; the report: evidence.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.loss import SoftTargetCrossEntropy
from timm.models.metaformer import Attention
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jobs.metaformer import evidence, verdict
from jobs.metaformer.data import (
    LoaderData,
    all_reduce,
    evaluate_models,
    mean_std,
)
from jobs.metaformer.mixers import (
    ABLATIONS,
    HEAD_DIM,
    LAYER_SCALE,
    MIXERS,
    S12_DEPTHS,
    S12_DIMS,
    S12_HEAD_DIM,
    STEMS,
    build_metaformer,
    stage_sizes,
)
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    Preset,
    Spec,
    SpecError,
    Study,
    TrialContext,
    TrialResult,
    register_study,
    sweep_params,
)
from skeptic.training import (
    Forward,
    epoch_generator,
    evaluate,
    optimizer_step,
    shuffled_batches,
    train_epoch,
)

Mixer = Literal[MIXERS]  # type: ignore[valid-type]
STEM_NAMES = tuple(STEMS)
Ablation = Literal[ABLATIONS]  # type: ignore[valid-type]

# The docstring's list of deviations from the paper's protocol, repeated in the report.
_DOC = (__doc__ or "").partition("and why:\n")[2].partition("\n\n")[0]
DEVIATIONS = f"### Where this run differs from the paper's protocol, and why\n\n{_DOC}"
# The presets' part of the docstring, shown in the report of a preset's run
_PRESETS_DOC = (__doc__ or "").partition("The presets: ")[2].partition("\n\nThree-way")[0]
PRESET_NOTES = f"### The presets: {_PRESETS_DOC}"
# The lr search every arm gets, as lrs for batch 1024 (scaled linearly to the trial's batch,
# the reference's rule lr = 1e-3 * batch / 1024): each trial trains one model per value and
# keeps the one with the highest val_acc after the last epoch. The reference's 1e-3 is far
# too small for an 18-epoch run that starts near identity (LayerScale 1e-5): see the docstring.
LR_GRID = (0.032, 0.064, 0.128)
# One arm per token mixer and per component ablation of the pooling model (paper Table 5);
# every arm gets the same lr search, so the deciding comparisons select trials by arm alone.
MIXER_ARMS = MIXERS
ARMS = {
    **{m: {"mixer": m} for m in MIXER_ARMS},
    **{f"pool3-{a}": {"mixer": "pool3", "ablation": a} for a in ABLATIONS[1:]},
}
# What the default sweep runs: what fits ~15 minutes on 2 cores at 18 epochs (see defaults).
DEFAULT_ARMS = ("pool3", "attention", "identity", "hybrid", "random")

# ---- the presets: the paper's own scale (see the docstring) ----

# PoolFormer-S12 (timm poolformer_s12) and the other mixers at its size; drop path 0.1 is
# the README's for S12
S12 = {"dims": list(S12_DIMS), "depths": list(S12_DEPTHS), "head_dim": S12_HEAD_DIM,
       "drop_path": 0.1}  # fmt: skip
# The DeiT recipe as sail-sg/poolformer's train.py sets it (timm's train.py defaults there)
DEIT = {
    "augment": "deit", "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25,
    "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "weight_decay": 0.05,
    "normalize": True, "warmup_lr": 1e-6, "min_lr": 1e-5,
}  # fmt: skip
# The paper's Table 5 mixers, and attention: the verdict's pool3-vs-attention comparisons
# need it (the paper's own attention baseline is DeiT, another model: Table 2)
PAPER_ARMS = ("pool3", "attention", "identity", "random", "hybrid")
IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images (val/: 50,000, the test split)
CIFAR100_TRAIN = 50_000
# MACs of one image (count_macs, measured here on CPU) of the S12-size models at each
# preset's input: 224 pixels through the 7x7 stride-4 stem, 32 (CIFAR) through 3x3 stride 2.
# `work` scales a trial's images by its arm's MACs over pool3's, the model whose time the
# presets' seconds_per_image is for (the figures are in tests/test_metaformer_paper.py).
S12_MACS = {
    "7x7s4": {"pool3": 1.812e9, "identity": 1.812e9, "random": 3.305e9, "hybrid": 2.549e9,
              "attention": 5.587e9},
    "3x3s2": {"pool3": 1.460e8, "identity": 1.460e8, "random": 1.559e8, "hybrid": 1.947e8,
              "attention": 2.304e8},
}  # fmt: skip
# `--preset paper`: PoolFormer-S12's Table 5 setting (the docstring says where it differs)
PAPER_SPEC = {
    "data": {
        "name": "imagefolder", "stream": True, "size": IMAGENET_TRAIN,
        "image_size": 224, "val_fraction": 0.01, "test_fraction": 0.0,
        "path": "/data/imagenet",  # where the trials read it: --set data.path=ROOT
    },
    # per worker: 8 workers = one 8-GPU node; the global batch 1024 is 128 a GPU
    "resources": {"workers": 8, "gpu": 1, "cpu": 10, "bf16": True},
    "train": {
        **S12, **DEIT, "stem": "7x7s4", "batch_size": 1024, "lr_grid": [1e-3],
        "epochs": 310, "warmup_epochs": 5, "cooldown_epochs": 10, "crop_size": 224,
        "eval_crop_pct": 0.9, "eval_batch_size": 256, "loader_workers": 8,
    },
    # one trial holds a node: raise max_concurrent_trials to the nodes you have
    "sweep": {"arms": {a: ARMS[a] for a in PAPER_ARMS}, "seeds": 3,
              "max_concurrent_trials": 1},
}  # fmt: skip
# `--preset cifar100`: the same models and recipe on one node (see the docstring)
CIFAR100_SPEC = {
    "data": {
        "name": "cifar100", "size": CIFAR100_TRAIN, "image_size": 32,
        "val_fraction": 0.1, "test_fraction": 0.0,
        "path": "/data/cifar100",  # the folder holding cifar-100-python/: --set data.path=
    },
    "resources": {"workers": 1, "gpu": 1, "cpu": 8, "bf16": True},
    "train": {
        **S12, **DEIT, "stem": "3x3s2", "batch_size": 256,
        "lr_grid": [1e-3, 2e-3, 4e-3], "epochs": 310, "warmup_epochs": 5,
        "cooldown_epochs": 10, "eval_batch_size": 1000, "loader_workers": 6,
    },
    "sweep": {"arms": {a: ARMS[a] for a in PAPER_ARMS}, "seeds": 3,
              "max_concurrent_trials": 8},
}  # fmt: skip


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mixer: Mixer = "pool3"
    ablation: Ablation = "none"
    lr_grid: list[Annotated[float, Field(gt=0)]] = Field(
        list(LR_GRID), min_length=1,
        description="AdamW lrs for batch 1024, each scaled by batch/1024; validation picks one",
    )  # fmt: skip
    batch_size: int = Field(64, ge=2)
    epochs: int = Field(18, ge=1)
    warmup_epochs: float = Field(2.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # none | light (flips, shifts) | heavy (+ Mixup/CutMix) | deit: the paper's recipe
    # (random (resized) crop, flip, RandAugment, random erasing, Mixup/CutMix; jobs/metaformer/
    # data.py), through a DataLoader; a streamed image folder always trains through one
    augment: Literal["none", "light", "heavy", "deit"] = "none"
    mixup: float = Field(0.8, ge=0, description="Mixup alpha (augment heavy / deit); 0 = off")
    cutmix: float = Field(1.0, ge=0, description="CutMix alpha (augment heavy / deit); 0 = off")
    rand_augment: str = Field("rand-m9-mstd0.5-inc1", description="timm RandAugment (deit)")
    random_erasing: float = Field(0.25, ge=0, le=1, description="erasing probability (deit)")
    # standardise inputs by ImageNet's mean/std (the registered model takes [0, 1] images
    # either way: it standardises them itself)
    normalize: bool = False
    # four stages as the reference's S12 (2/2/6/2 blocks, dims 64/128/320/512), scaled down
    dims: list[Annotated[int, Field(ge=1)]] = Field([16, 32, 64, 128], min_length=2)
    # >= 1: a stage of depth 0 has no block, so the mixer under test would not be in it
    depths: list[Annotated[int, Field(ge=1)]] = Field([1, 1, 2, 1], min_length=2)
    # the stem conv: 3x3 stride 2 (small inputs) or the reference's 7x7 stride 4 (224 pixels)
    stem: Literal[STEM_NAMES] = "3x3s2"  # type: ignore[valid-type]
    head_dim: int = Field(HEAD_DIM, ge=1, description="attention head width (reference: 32)")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth (S12: 0.1)")
    layer_scale: float | None = Field(
        LAYER_SCALE, gt=0, description="LayerScale init (reference: 1e-5); None = off"
    )
    # the schedule's ends (reference: warmup from 1e-6, cosine down to 1e-5, then 10 epochs
    # at 1e-5); the defaults are the small runs': warmup from 1% of the peak, cosine to zero
    warmup_lr: float | None = Field(None, gt=0, description="absolute lr the warmup starts at")
    min_lr: float = Field(0.0, ge=0, description="absolute lr the cosine ends at")
    cooldown_epochs: int = Field(0, ge=0, description="last epochs held at min_lr")
    # the loader loop (augment deit, or a streamed image folder)
    crop_size: int = Field(224, ge=8, description="a streamed folder's train/eval crop")
    eval_crop_pct: float = Field(0.9, gt=0, le=1, description="eval resize = crop / this")
    eval_batch_size: int = Field(256, ge=1, description="per worker, evaluation only")
    loader_workers: int = Field(8, ge=0, description="DataLoader worker processes per worker")

    @model_validator(mode="after")
    def _model_builds(self) -> Params:
        """What build_metaformer and the training loop need, checked per sweep point."""
        if len(self.dims) != len(self.depths):
            # name the one the spec set (the other kept its default of four stages)
            field, other = ("dims", "depths") if "depths" not in self.model_fields_set else (
                "depths", "dims")  # fmt: skip
            raise ValueError(
                f"{field}: {getattr(self, field)} and {other} {getattr(self, other)} give one "
                "value per stage, so they need the same length"
            )
        if any(b <= a for a, b in zip(self.dims, self.dims[1:], strict=False)):
            raise ValueError(
                f"dims: must increase ({self.dims}): timm skips downsampling otherwise"
            )
        odd = [d for d in self.dims[self._first_attention() :] if d % self.head_dim]
        if odd:
            raise ValueError(
                f"dims: the attention stages of mixer {self.mixer} need multiples of the head "
                f"dimension {self.head_dim}, got {odd}"
            )
        if self.warmup_epochs >= self.epochs:  # make_scheduler would cut the warmup short
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs} must be less than epochs ({self.epochs}): "
                "the lr warms up, then decays over the remaining epochs"
            )
        if self.warmup_epochs + self.cooldown_epochs >= self.epochs:
            raise ValueError(
                f"cooldown_epochs: {self.cooldown_epochs} plus warmup_epochs "
                f"{self.warmup_epochs} must be less than epochs ({self.epochs}): the cosine "
                "runs between them"
            )
        if self.augment in ("heavy", "deit") and self.batch_size % 2:
            raise ValueError(
                f"batch_size: augment {self.augment} (Mixup/CutMix) pairs up a batch, so it must "
                f"be even, got {self.batch_size}"
            )
        low = min(scaled_lrs(self))
        if self.min_lr >= low:
            raise ValueError(
                f"min_lr: {self.min_lr} must be below the smallest lr of the search at this "
                f"batch ({low:.3g} = lr_grid x batch_size / 1024): the cosine decays to it"
            )
        if self.warmup_lr is not None and self.warmup_lr >= low:
            raise ValueError(
                f"warmup_lr: {self.warmup_lr} must be below the smallest lr of the search at "
                f"this batch ({low:.3g}): the warmup rises from it"
            )
        if self.augment == "deit":
            try:
                rand_augment_transform(self.rand_augment, {})
            except (AssertionError, KeyError, ValueError, IndexError) as err:  # timm's
                raise ValueError(
                    f"rand_augment: {self.rand_augment!r} is not a timm RandAugment policy "
                    f"(e.g. rand-m9-mstd0.5-inc1): {err}"
                ) from None
        return self

    def _first_attention(self) -> int:
        """Index of the first attention stage (len(dims) when there is none); see
        mixers._mixers: the hybrid runs pooling in the first half, attention after."""
        stages = len(self.dims)
        return {"attention": 0, "hybrid": stages // 2}.get(self.mixer, stages)


def model_config_for(p: Params, image_size: int, names: list[str]) -> dict[str, Any]:
    config = {
        "mixer": p.mixer, "ablation": p.ablation, "dims": list(p.dims), "depths": list(p.depths),
        "image_size": image_size, "num_classes": len(names), "class_names": list(names),
        "layer_scale": p.layer_scale,
    }  # fmt: skip
    # only what differs from the small models' builder defaults, so their configs (and the
    # registered versions of earlier runs) stay as they were
    if p.stem != "3x3s2" or p.head_dim != HEAD_DIM or p.drop_path:
        config.update({"stem": p.stem, "head_dim": p.head_dim, "drop_path": p.drop_path})
    if p.normalize:  # the registered model standardises its [0, 1] input itself
        mean, std = mean_std(True)
        config["input_norm"] = {"mean": list(mean), "std": list(std)}
    return config


def build(config: dict[str, Any]) -> nn.Module:
    """The network a config describes, as trained (inputs as the training loop feeds them)."""
    return build_metaformer(
        config["mixer"], config["ablation"], tuple(config["dims"]), tuple(config["depths"]),
        config["image_size"], config["num_classes"], config["layer_scale"],
        stem=config.get("stem", "3x3s2"), head_dim=config.get("head_dim", HEAD_DIM),
        drop_path=config.get("drop_path", 0.0),
    )  # fmt: skip


def _standardise_input(model: nn.Module, norm: dict[str, list[float]]) -> nn.Module:
    """The registered model takes [0, 1] images: standardise them as training did, in a
    forward pre-hook with non-persistent buffers, so the weights keep timm's names."""
    model.register_buffer(
        "input_mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1), persistent=False
    )
    model.register_buffer("input_std", torch.tensor(norm["std"]).view(1, 3, 1, 1), persistent=False)

    def standardise(module: nn.Module, args: tuple) -> tuple:
        return ((args[0] - module.input_mean) / module.input_std, *args[1:])

    model.register_forward_pre_hook(standardise)
    return model


def count_macs(model: nn.Module, image_size: int) -> int:
    """MACs of one 3 x image_size x image_size image (FLOPs / 2 from FlopCounterMode).

    Fused attention is switched off while counting: FlopCounterMode has no formula for the
    CPU scaled-dot-product kernel and would leave out q @ k^T and attn @ v."""
    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(m, Attention)]
    for m, _ in fused:
        m.fused_attn = False
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for m, flag in fused:
            m.fused_attn = flag
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_scheduler(opt: torch.optim.Optimizer, p: Params, steps_per_epoch: int) -> Any:
    """Per-step linear warmup then cosine (torch's own schedulers): from 1% of the peak lr to
    zero by default; from `warmup_lr` to `min_lr` and then `cooldown_epochs` at `min_lr` when
    those are set (the reference's timm schedule, per step instead of per epoch)."""
    total = p.epochs * steps_per_epoch
    if p.warmup_lr is not None or p.min_lr or p.cooldown_epochs:
        return _reference_schedule(opt, p, steps_per_epoch)
    warm = min(total - 1, round(p.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    if warm <= 0:
        return cosine
    warmup = sched.LinearLR(opt, start_factor=0.01, total_iters=warm)
    return sched.SequentialLR(opt, [warmup, cosine], milestones=[warm])


class _Schedule:
    """The multiplier of the peak lr at a step: linear warmup from `start`, cosine down to
    `floor` over `cosine` steps, then `floor` (a picklable LambdaLR function)."""

    def __init__(self, warm: int, cosine: int, start: float, floor: float) -> None:
        self.warm, self.cosine, self.start, self.floor = warm, cosine, start, floor

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return self.start + (1 - self.start) * step / self.warm
        t = min(1.0, (step - self.warm) / max(1, self.cosine))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def _reference_schedule(opt: torch.optim.Optimizer, p: Params, steps_per_epoch: int) -> Any:
    peak = opt.param_groups[0]["lr"]
    total = p.epochs * steps_per_epoch
    cool = p.cooldown_epochs * steps_per_epoch
    warm = min(total - cool - 1, round(p.warmup_epochs * steps_per_epoch))
    start = p.warmup_lr / peak if p.warmup_lr is not None else 0.01
    shape = _Schedule(max(0, warm), total - cool - max(0, warm), start, p.min_lr / peak)
    return torch.optim.lr_scheduler.LambdaLR(opt, shape)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation: random horizontal flips and a random shift of up to 2 pixels."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
    padded = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    size = x.shape[-1]
    return padded[..., 2 + dy : 2 + dy + size, 2 + dx : 2 + dx + size]


def make_mixup(p: Params, classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (augment heavy or deit; it smooths the labels too), else None."""
    if p.augment not in ("heavy", "deit") or not (p.mixup or p.cutmix):
        return None
    return Mixup(mixup_alpha=p.mixup, cutmix_alpha=p.cutmix, label_smoothing=p.label_smoothing,
                 num_classes=classes)  # fmt: skip


def make_loss(mixup: Mixup | None, p: Params) -> nn.Module:
    return SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(
        label_smoothing=p.label_smoothing
    )  # fmt: skip


def make_forward(model: nn.Module, p: Params, classes: int, gen: torch.Generator) -> Forward:
    """One training batch's forward pass under `p`: augmentation from the epoch's
    generator, then timm's Mixup/CutMix (heavy) or label-smoothed cross-entropy."""
    mixup = make_mixup(p, classes)
    loss_fn = make_loss(mixup, p)

    def forward(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if p.augment != "none":
            xb = _augment(xb, gen)
        inputs, targets = mixup(xb, yb) if mixup else (xb, yb)
        logits = model(inputs)
        return logits, loss_fn(logits, targets)

    return forward


def scaled_lrs(p: Params) -> list[float]:
    """The lr search at the trial's batch: the reference's linear rule lr x batch / 1024."""
    return [lr * p.batch_size / 1024 for lr in p.lr_grid]


class _LrRun:
    """One lr of a trial's search: its model (plain, for weights and evaluation; `train_model`
    is the one trained: the same parameters, maybe wrapped in DDP), optimiser, schedule and
    last epoch's metrics."""

    def __init__(self, lr: float, model: nn.Module, train_model: nn.Module, opt: Any,
                 sched: Any) -> None:  # fmt: skip
        self.lr, self.model, self.train_model, self.opt, self.sched = (
            lr,
            model,
            train_model,
            opt,
            sched,
        )
        self.metrics: dict[str, float] = {}
        self._sums: torch.Tensor | None = None

    @classmethod
    def start(cls, config: dict[str, Any], lr: float, p: Params, steps: int, ctx: Any) -> _LrRun:
        torch.manual_seed(ctx.seed)  # every lr (and worker) starts from the same weights
        model = build(config).to(ctx.device)
        train_model = ctx.prepare_model(model)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=p.weight_decay)
        return cls(lr, model, train_model, opt, make_scheduler(opt, p, steps))

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "metrics": self.metrics}  # fmt: skip

    def load(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.metrics = dict(saved["metrics"])

    def epoch(
        self, ctx: Any, p: Params, train: tuple, val: tuple, classes: int, epoch: int
    ) -> None:
        """One epoch on in-memory arrays; the batch order and augmentation draws depend on
        (seed, epoch) only, so every lr (and every arm) sees the same batches. Several
        workers draw the same global order and each trains on its shard of every batch."""
        gen = epoch_generator(ctx.seed, epoch)
        forward = make_forward(self.train_model, p, classes, gen)
        start = time.perf_counter()
        with ctx.autocast():
            if ctx.world_size > 1:
                train_loss, train_acc = self._sharded_epoch(ctx, p, train, gen, forward)
            else:
                train_loss, train_acc = train_epoch(
                    self.train_model, self.opt, *train, p.batch_size, gen,
                    forward=forward, scheduler=self.sched, drop_last=True,
                )  # fmt: skip
        train_rate = (len(train[0]) // p.batch_size) * p.batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        with ctx.autocast():
            val_loss, val_acc = evaluate(self.model, *val, chunk=512)
        self.metrics = {
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": self.opt.param_groups[0]["lr"], "lr_base": self.lr,
            "train_images_per_s": train_rate,
            "eval_images_per_s": len(val[0]) / (time.perf_counter() - start),
        }  # fmt: skip

    def _sharded_epoch(
        self, ctx: Any, p: Params, train: tuple, gen: torch.Generator, forward: Forward
    ) -> tuple[float, float]:
        """skeptic.training.train_epoch with each global batch's indices cut to this worker's
        shard (ctx.shard); loss and accuracy summed over the workers."""
        x, y = train
        self.train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=x.device)
        for idx in shuffled_batches(len(x), p.batch_size, gen, x.device, drop_last=True):
            local = ctx.shard(idx)
            xb, yb = x[local], y[local]
            logits, loss = forward(xb, yb)
            optimizer_step(self.opt, loss, None, self.sched)
            sums += torch.stack([loss.detach().double() * len(yb),
                                 (logits.argmax(1) == yb).sum().double(),
                                 torch.tensor(float(len(yb)), device=x.device, dtype=torch.float64)])  # fmt: skip
        sums = all_reduce(sums, ctx)
        return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()

    # ---- the loader loop: every lr steps on the same batch ----

    def begin_epoch(self, device: torch.device) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.train_model.train()

    def step(self, ctx: Any, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
             loss_fn: nn.Module) -> None:  # fmt: skip
        with ctx.autocast():
            logits = self.train_model(inputs)
        loss = loss_fn(logits.float(), targets)
        optimizer_step(self.opt, loss, None, self.sched)
        assert self._sums is not None
        n = torch.tensor(float(len(labels)), device=labels.device, dtype=torch.float64)
        self._sums += torch.stack([loss.detach().double() * n,
                                   (logits.argmax(1) == labels).sum().double(), n])  # fmt: skip

    def end_epoch(self, ctx: Any) -> tuple[float, float]:
        """(mean training loss, accuracy against the unmixed labels), over every worker."""
        assert self._sums is not None
        sums = all_reduce(self._sums, ctx)
        seen = max(1.0, sums[2].item())
        return sums[0].item() / seen, sums[1].item() / seen


def _num_classes(spec: Spec) -> int:
    """Classes of the spec's data, for chance accuracy in the report: CIFAR's by name, an
    image folder's by its class folders (ImageNet's train/, or the domain's), else 10."""
    d = spec.data
    if d.name in ("cifar10", "cifar100"):
        return int(d.name[5:])
    if d.name == "imagefolder" and d.path:
        root = Path(d.path)
        root = (
            root / d.domain if d.domain else root / "train" if (root / "train").is_dir() else root
        )
        if root.is_dir():
            return sum(1 for c in root.iterdir() if c.is_dir()) or 10
    return 10


@register_study
class MetaFormerStudy(Study):
    name = "metaformer"
    belief = "Attention is what makes Transformers work in vision."
    paper = (
        "Yu, Luo, Zhou, Si, Zhou, Wang, Feng & Yan 2022, 'MetaFormer Is Actually What You "
        "Need for Vision' (CVPR)"
    )
    Params = Params
    metric = "val_acc"  # the champion; the comparisons judge test_acc (report_metric)
    # FIFO only. The verdict compares the mixers at the end of a full cosine schedule (the
    # lr decays to zero); ASHA would stop the mixers that learn slowest early on (attention)
    # and the verdict would read their early accuracy as final. PBT would copy one mixer's
    # weights into a trial of another architecture.
    schedulers = ("fifo",)
    schedulers_reason = (
        "the verdict compares every mixer after its full schedule; ASHA would judge slow "
        "starters early, and PBT would copy weights between different architectures"
    )
    # 3000 generated 18x18 images: 1200 to train on, 600 to choose on (the lr, the
    # champion), 1200 to test on (the verdict's numbers; more test than validation images, as
    # the test accuracy is the deciding one). 18x18 with the stride-2 stem gives four stages
    # at 9/5/3/2 pixels. 16-20 epochs bring pool3, attention and the hybrid to ~95% train
    # accuracy (pilots at 2e-3 to 8e-3; identity learns slower). Measured: 4 arms x 3 seeds
    # x 2 lrs took 5 minutes on a quiet 2-core machine, so 5 arms x 3 seeds x 3 lrs should
    # take ~10 of the 15 minutes a run may take; the other mixers and the ablations are left
    # out of the default sweep: --set 'sweep.arms=...' runs them (ARMS has them all).
    defaults: ClassVar[dict] = {
        "data": {
            "name": "shapes", "size": 3000, "image_size": 18, "val_fraction": 0.2,
            "test_fraction": 0.4,
        },
        "resources": {"cpu": 1},
        "train": {"batch_size": 64, "epochs": 18},
        "sweep": {
            "arms": {a: ARMS[a] for a in DEFAULT_ARMS},
            # 3 paired seeds, then 3 more for the deciding arms of the comparisons still
            # undecided (the platform's seed rule, two looks): 3 seeds (2 degrees of freedom)
            # decide only gaps far beyond the seed spread. At most 24 trials, ~10 minutes on a
            # quiet machine (15 trials took 6); more looks would not fit 15 minutes.
            "seeds": {"min": 3, "max": 6, "step": 3},
            "max_concurrent_trials": 2,
        },
    }  # fmt: skip
    # The deciding arms with 2 seeds, one lr: the smallest sweep that gives every comparison
    # an estimate (2 seeds are far too few to decide one). head_dim and cooldown_epochs are
    # the defaults, set so that --smoke over a preset (S12's head dim 32, 10 cooldown
    # epochs) still builds the small models and fits one epoch.
    smoke: ClassVar[dict] = {
        "data": {"size": 500, "val_fraction": 0.2},
        "train": {
            "epochs": 1, "warmup_epochs": 0.5, "batch_size": 32, "dims": [16, 32, 48, 64],
            "depths": [1, 1, 1, 1], "lr_grid": [0.032], "head_dim": HEAD_DIM,
            "cooldown_epochs": 0,
        },
        "sweep": {
            "arms": {a: ARMS[a] for a in (verdict.POOL, verdict.IDENTITY, verdict.ATTENTION)},
            "seeds": 2,
        },
    }  # fmt: skip

    presets: ClassVar[dict[str, Preset]] = {
        "paper": Preset(
            about=(
                "Table 5 at the paper's scale: PoolFormer-S12 (timm poolformer_s12, 11.9M) vs "
                "identity, random and [Pool, Pool, Attn, Attn] mixers (and all-attention) at "
                "S12 size on ImageNet-1k, 300 epochs of the DeiT recipe, one 8-GPU node a trial"
            ),
            spec=PAPER_SPEC,
            data=(
                "ImageNet-1k (ILSVRC-2012) as ImageFolder trees, data.path ROOT (default "
                "/data/imagenet): "
                "ROOT/train/<wnid>/*.JPEG (1,281,167 images; 1% held out for validation) and "
                "ROOT/val/<wnid>/*.JPEG (50,000: the test split), read from disk by each worker"
            ),
            seconds_per_image=1 / 1342.5,
            gpu="RTX 3090 (24GB)",
            cost_basis=(
                "stated: timm's results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv, "
                "poolformer_s12 trains at 1342.5 images/s (AMP, channels_last, batch 512, "
                "synthetic batches: no JPEG decoding or RandAugment); the other arms by their "
                "MACs over pool3's (S12_MACS); not measured on a GPU here"
            ),
            train_images=IMAGENET_TRAIN,
        ),
        "cifar100": Preset(
            about=(
                "The same five S12-size models on CIFAR-100 for one node: a 3x3 stride-2 stem "
                "for 32-pixel images, 300 epochs of the DeiT recipe, three lrs per trial"
            ),
            spec=CIFAR100_SPEC,
            data=(
                "CIFAR-100 as released (the 'python version'), data.path ROOT (default "
                "/data/cifar100): "
                "ROOT/cifar-100-python/{train,test,meta}; 10% of train held out for validation, "
                "the test batch (10,000) is the test split"
            ),
            seconds_per_image=1.0e-4,
            gpu="RTX 3090 (24GB)",
            cost_basis=(
                "stated, derived: poolformer_s12's 1342.5 images/s at 224 pixels (timm's RTX "
                "3090 AMP training benchmark) scaled by the MACs at 32 pixels (0.146G vs 1.81G: "
                "6.0e-5 s/image), with 1.7x for a GPU's lower use of 16-to-2-pixel feature "
                "maps; the other arms by their MACs (S12_MACS); not measured on a GPU here"
            ),
            train_images=CIFAR100_TRAIN,
        ),
    }

    def work(self, params: BaseModel, train_images: int) -> float:
        """Images one trial trains on (forward + backward), in pool3-equivalents: `epochs`
        passes for each lr of its search (each lr trains its own model), and, at the S12
        size, times the arm's MACs over pool3's (S12_MACS), whose time the presets' cost is
        for: all-attention is about 3x pool3 at 224 pixels."""
        p = params if isinstance(params, Params) else Params.model_validate(params)
        images = float(p.epochs) * train_images * len(p.lr_grid)
        macs = S12_MACS.get(p.stem, {})
        s12 = (tuple(p.dims), tuple(p.depths)) == (S12_DIMS, S12_DEPTHS) and p.ablation == "none"
        if s12 and p.mixer in macs:
            images *= macs[p.mixer] / macs["pool3"]
        return images

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        """RGB input (the stem is a 3-channel conv), an image large enough for every stage to
        stay 2x2 or larger, and a training set of at least one full batch (the loop drops the
        last partial batch, so a smaller set would train on nothing). Several workers split
        the global batch evenly (and each share in pairs, for Mixup/CutMix); a streamed
        folder is cropped to train.crop_size, which must be data.image_size. The platform
        checks the test split the comparisons need."""
        workers = getattr(spec.resources, "workers", 1)
        stream = getattr(spec.data, "stream", False)
        for p in sweep_params(spec, Params):
            if p.batch_size % workers:
                raise SpecError(
                    f"train.batch_size: {p.batch_size} is the global batch, split evenly over "
                    f"resources.workers ({workers}); give a multiple of {workers}"
                )
            if p.augment in ("heavy", "deit") and (p.batch_size // workers) % 2:
                raise SpecError(
                    f"train.batch_size: {p.batch_size} gives each of {workers} workers "
                    f"{p.batch_size // workers} images, and Mixup/CutMix pairs them up: give a "
                    f"multiple of {2 * workers}"
                )
            if stream and p.crop_size != spec.data.image_size:
                raise SpecError(
                    f"train.crop_size: {p.crop_size} differs from data.image_size "
                    f"{spec.data.image_size}; a streamed folder is cropped to train.crop_size, "
                    "so set both to the same size (224 for the paper)"
                )
        if data is None:
            return
        if data.input_shape[0] != 3:
            raise SpecError(
                f"data.name: metaformer models take RGB (3-channel) images; {data.name} has "
                f"{data.input_shape[0]} channel(s); use shapes or imagefolder"
            )
        side = data.input_shape[-1]
        for p in sweep_params(spec, Params):
            if min(stage_sizes(side, len(p.dims), p.stem)) < 2:
                need = next(n for n in range(side, 8 * side + 64)
                            if min(stage_sizes(n, len(p.dims), p.stem)) >= 2)  # fmt: skip
                raise SpecError(
                    f"data.image_size: {side} leaves a stage below 2x2 with {len(p.dims)} "
                    f"stages (the {p.stem} stem and every later stage shrink it); allowed: "
                    f">= {need}"
                )
            if p.batch_size > data.n_train:
                raise SpecError(
                    f"train.batch_size: {p.batch_size} is more than the {data.n_train} training "
                    f"images, and partial batches are dropped; allowed: <= {data.n_train}"
                )

    def run_name(self, params: dict[str, Any], swept: list[str]) -> str:
        """e.g. `pool3-no_mlp-s1`."""
        return f"{params.get('arm', params['mixer'])}-s{params['seed']}"

    def train(self, ctx: TrialContext[Params]) -> None:
        """One model per lr of the search, trained side by side on the same batches from
        the same initialisation; after every epoch each is evaluated on validation, and the
        trial's own metrics (val_acc, train_acc, the registered weights) are those of the
        lr with the highest val_acc. Test accuracy is measured once, after the last epoch,
        of the model validation picked.

        In-memory arrays train as they always did (each lr in turn over the epoch's batches);
        a streamed image folder (ImageNet) or the DeiT augmentation (CIFAR-100 in memory)
        trains through a DataLoader, each batch read and augmented once and stepped by every
        lr (`_train_loader`). With several workers each trains on its share of every
        global batch (DDP averages the gradients) and evaluates its share of val / test."""
        p, data, dev = ctx.params, ctx.data, ctx.device
        if "stream" in data or p.augment == "deit":
            self._train_loader(ctx)
            return
        x, y, xv, yv, xt, yt = (
            torch.tensor(data[k], device=dev)
            for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        )  # fmt: skip
        if p.normalize:
            mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in mean_std(True))
            x, xv, xt = ((v - mean) / std for v in (x, xv, xt))
        config = model_config_for(p, x.shape[-1], data["classes"])
        steps = len(x) // p.batch_size  # drop_last: Mixup needs an even, full batch
        runs = [_LrRun.start(config, lr, p, steps, ctx) for lr in scaled_lrs(p)]
        size = self._size(runs, config, x.shape[-1])
        if ctx.state:
            for run, saved in zip(runs, ctx.state["runs"], strict=True):
                run.load(saved)
        classes = int(y.max().item()) + 1
        for epoch in range(ctx.start_epoch, p.epochs):
            for run in runs:
                run.epoch(ctx, p, (x, y), (xv, yv), classes, epoch)

            def test(model: nn.Module) -> tuple[float, float]:
                with ctx.autocast():
                    return evaluate(model, xt, yt, chunk=512)

            self._report(ctx, runs, size, config, epoch, test, len(x) * len(runs))

    def _train_loader(self, ctx: TrialContext[Params]) -> None:
        """The loader loop (jobs/metaformer/data.py): per epoch one pass of this worker's
        DataLoader, Mixup/CutMix on the batch, every lr one step on it; then each model on
        the validation batches (read once for all of them), summed over the workers."""
        p, dev = ctx.params, ctx.device
        stream = "stream" in ctx.data
        data = LoaderData.from_stream(ctx, p) if stream else LoaderData.from_arrays(ctx, p)
        config = model_config_for(p, data.image_size, ctx.data["classes"])
        steps = len(data.train(ctx.start_epoch))  # this worker's batches per epoch
        runs = [_LrRun.start(config, lr, p, steps, ctx) for lr in scaled_lrs(p)]
        size = self._size(runs, config, data.image_size)
        if ctx.state:
            for run, saved in zip(runs, ctx.state["runs"], strict=True):
                run.load(saved)
        mixup = make_mixup(p, data.classes)
        loss_fn = make_loss(mixup, p)
        for epoch in range(ctx.start_epoch, p.epochs):
            for run in runs:
                run.begin_epoch(dev)
            start, seen = time.perf_counter(), 0
            for xb, yb in data.train(epoch):
                xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                inputs, targets = mixup(xb, yb) if mixup else (xb, yb)
                for run in runs:
                    run.step(ctx, inputs, targets, yb, loss_fn)
                seen += len(yb)
            seen = int(all_reduce(torch.tensor([float(seen)], device=dev), ctx).item())
            train_rate = seen * len(runs) / (time.perf_counter() - start)
            val, eval_rate = evaluate_models([r.model for r in runs], data.eval_batches("val"), ctx)
            for run, (val_loss, val_acc) in zip(runs, val, strict=True):
                train_loss, train_acc = run.end_epoch(ctx)
                run.metrics = {
                    "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                    "val_acc": val_acc, "lr": run.opt.param_groups[0]["lr"], "lr_base": run.lr,
                    "train_images_per_s": train_rate, "eval_images_per_s": eval_rate,
                }  # fmt: skip

            def test(model: nn.Module) -> tuple[float, float]:
                return evaluate_models([model], data.eval_batches("test"), ctx)[0][0]

            self._report(ctx, runs, size, config, epoch, test, seen * len(runs))

    @staticmethod
    def _size(runs: list[_LrRun], config: dict[str, Any], image_size: int) -> dict[str, float]:
        """Params and MACs of the trial's model, measured, and added to its config."""
        size = {
            "params": count_params(runs[0].model),
            "macs": count_macs(runs[0].model, image_size),
        }
        config.update(size)
        return size

    @staticmethod
    def _report(ctx: Any, runs: list[_LrRun], size: dict[str, float], config: dict[str, Any],
                epoch: int, test: Any, samples: int) -> None:  # fmt: skip
        """The epoch's metrics (every lr's, and the picked lr's as the trial's own), the test
        numbers after the last epoch, the checkpoint."""
        p = ctx.params
        metrics: dict[str, float] = {**size}
        for k, run in enumerate(runs):
            metrics.update({f"{name}_lr{k}": v for name, v in run.metrics.items()})
        pick = max(range(len(runs)), key=lambda k: runs[k].metrics["val_acc"])
        metrics.update({**runs[pick].metrics, "lr_index": pick})
        if epoch == p.epochs - 1:  # the trained model, once: no choice may see test data
            metrics["test_loss"], metrics["test_acc"] = test(runs[pick].model)
        state = {
            "model": runs[pick].model.state_dict(), "model_config": {**config, "lr": runs[pick].lr},
            "runs": [run.state() for run in runs],
        }  # fmt: skip
        ctx.report(metrics, state, samples=samples, progress=(epoch + 1) / p.epochs)

    # --- the registered model ---

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        """The registered network: `build`, taking [0, 1] images (standardised inside when
        training standardised them)."""
        model = build(config)
        norm = config.get("input_norm")
        return _standardise_input(model, norm) if norm else model

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.zeros((2, 3, config["image_size"], config["image_size"]), dtype=np.float32)

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        keys = ("mixer", "ablation", "macs", "params", "dims", "depths", "class_names", "lr")
        shape = [3, config["image_size"], config["image_size"]]
        extra = {k: config[k] for k in ("stem", "head_dim") if k in config}
        return {**{k: config[k] for k in keys}, **extra, "input_shape": shape}

    # ---- the verdict: jobs/metaformer/verdict.py (the rule), evidence.py (the report) ----

    def comparisons(self, spec: Spec) -> list[Compare]:
        return verdict.comparisons()

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        return verdict.decide(judged)

    def evidence(self, results: list[TrialResult], spec: Spec, judged: list[Judged]) -> Evidence:
        """The report: at the small default scale with its list of deviations; a preset's run
        (ImageNet, CIFAR-100) with the presets' (and, on ImageNet, each arm's top-1 beside the
        paper's)."""
        d, preset, classes = spec.data, getattr(spec, "preset", None), _num_classes(spec)
        scale = "small"
        if preset == "paper" or (d.stream and classes == 1000):
            scale = "imagenet"
        elif preset or d.stream or d.name == "cifar100":
            scale = "scaled"
        notes = DEVIATIONS if scale == "small" else PRESET_NOTES
        return evidence.evidence(results, judged, classes, notes=notes, scale=scale)
