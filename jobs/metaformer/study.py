"""Study `metaformer`: Yu et al. 2022, "MetaFormer Is Actually What You Need for Vision".

Every model is timm's `MetaFormer` (built in `mixers.build_metaformer`): three stages, dims
32/64/128, depths 1/2/1, on 16x16 generated shapes with a stride-2 stem (stages at 8/4/2
pixels, so `pool(x) - x` is non-zero in every stage). One arm per token mixer (pooling 3/5/7,
identity, frozen random mixing, timm's SepConv, attention, spatial MLP, the hybrid: pooling in
the first stage, attention in the last two) and per component ablation of the pooling model
(no residual, no channel MLP, no norm, LayerNorm / BatchNorm instead of GroupNorm(1)).

Recipe shaped like the paper's, scaled to 2 CPU cores: AdamW (weight decay 0.05), lr given
for batch 1024 and scaled linearly to the trial's batch by the spec's `derive`, linear warmup
then cosine (per step), label smoothing 0.1; augmentation (flips + shifts, or those plus timm
Mixup/CutMix as in the paper) only when the spec asks for it. Params and MACs are measured per
model with torch.utils.flop_counter (MACs = FLOPs / 2).

Three-way split (the platform's default data): the models train on the train split, every
choice (the deciding arms' lr, the champion) is made on validation accuracy, and the numbers
the verdict states are test accuracies, measured once, after the last epoch. The decision:
jobs/metaformer/verdict.py; the report's tables: evidence.py.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.models.metaformer import Attention
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jobs.metaformer import evidence, verdict
from jobs.metaformer.mixers import ABLATIONS, HEAD_DIM, MIXERS, build_metaformer, stage_sizes
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    Spec,
    SpecError,
    Study,
    TrialContext,
    TrialResult,
    register_study,
    sweep_params,
)
from skeptic.training import Forward, epoch_generator, evaluate, train_epoch

Mixer = Literal[MIXERS]  # type: ignore[valid-type]
Ablation = Literal[ABLATIONS]  # type: ignore[valid-type]

# lr for batch 1024 (0.001 at batch 64): pool3 and attention did best at it in a pilot.
BASE_LR = 0.016
# Two arms per mixer: `<mixer>` at BASE_LR and `<mixer>-lr2x` at twice it (the report marks
# the one validation picks); pool 5/7 and the ablations (paper Table 5 rows) run at BASE_LR
# only, so 3 seeds take ~15 minutes on 2 cores. Every arm names its lr, so the
# deciding comparisons select their trials by arm name alone.
MIXER_ARMS = ("pool3", "identity", "random", "sepconv", "attention", "spatial_mlp", "hybrid")
ARMS = {
    **{m: {"mixer": m, "lr": BASE_LR} for m in MIXER_ARMS},
    **{f"{m}-lr2x": {"mixer": m, "lr": 2 * BASE_LR} for m in MIXER_ARMS},
    "pool5": {"mixer": "pool5", "lr": BASE_LR},
    "pool7": {"mixer": "pool7", "lr": BASE_LR},
    **{f"pool3-{a}": {"mixer": "pool3", "ablation": a, "lr": BASE_LR} for a in ABLATIONS[1:]},
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mixer: Mixer = "pool3"
    ablation: Ablation = "none"
    lr: float = Field(BASE_LR, gt=0, description="AdamW lr (the spec scales it by batch/1024)")
    batch_size: int = Field(64, ge=2)
    epochs: int = Field(6, ge=1)
    warmup_epochs: float = Field(0.5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment: Literal["none", "light", "heavy"] = "none"  # heavy: + Mixup 0.8 / CutMix 1.0
    dims: list[Annotated[int, Field(ge=1)]] = Field([32, 64, 128], min_length=2)
    # >= 1: a stage of depth 0 has no block, so the mixer under test would not be in it
    depths: list[Annotated[int, Field(ge=1)]] = Field([1, 2, 1], min_length=2)
    layer_scale: float | None = Field(None, gt=0, description="timm layer scale; None = off")

    @model_validator(mode="after")
    def _model_builds(self) -> Params:
        """What build_metaformer and the training loop need, checked per sweep point."""
        if len(self.dims) != len(self.depths):
            raise ValueError(
                f"depths: {self.depths} and dims {self.dims} give one value per stage, so they "
                "need the same length"
            )
        if any(b <= a for a, b in zip(self.dims, self.dims[1:], strict=False)):
            raise ValueError(
                f"dims: must increase ({self.dims}): timm skips downsampling otherwise"
            )
        odd = [d for d in self.dims[self._first_attention() :] if d % HEAD_DIM]
        if odd:
            raise ValueError(
                f"dims: the attention stages of mixer {self.mixer} need multiples of the head "
                f"dimension {HEAD_DIM}, got {odd}"
            )
        if self.warmup_epochs >= self.epochs:  # make_scheduler would cut the warmup short
            raise ValueError(
                f"warmup_epochs: {self.warmup_epochs} must be less than epochs ({self.epochs}): "
                "the lr warms up, then decays over the remaining epochs"
            )
        if self.augment == "heavy" and self.batch_size % 2:
            raise ValueError(
                f"batch_size: augment heavy (Mixup/CutMix) pairs up a batch, so it must be even, "
                f"got {self.batch_size}"
            )
        return self

    def _first_attention(self) -> int:
        """Index of the first attention stage (len(dims) when there is none); see
        mixers._mixers: the hybrid runs pooling in the first half, attention after."""
        stages = len(self.dims)
        return {"attention": 0, "hybrid": stages // 2}.get(self.mixer, stages)


def model_config_for(p: Params, image_size: int, names: list[str]) -> dict[str, Any]:
    return {
        "mixer": p.mixer, "ablation": p.ablation, "dims": list(p.dims), "depths": list(p.depths),
        "image_size": image_size, "num_classes": len(names), "class_names": list(names),
        "layer_scale": p.layer_scale,
    }  # fmt: skip


def build(config: dict[str, Any]) -> nn.Module:
    return build_metaformer(
        config["mixer"], config["ablation"], tuple(config["dims"]), tuple(config["depths"]),
        config["image_size"], config["num_classes"], config["layer_scale"],
    )  # fmt: skip


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
    """Per-step linear warmup then cosine to zero (torch's own schedulers)."""
    total = p.epochs * steps_per_epoch
    warm = min(total - 1, round(p.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    if warm <= 0:
        return cosine
    warmup = sched.LinearLR(opt, start_factor=0.01, total_iters=warm)
    return sched.SequentialLR(opt, [warmup, cosine], milestones=[warm])


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation: random horizontal flips and a random shift of up to 2 pixels."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
    padded = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    size = x.shape[-1]
    return padded[..., 2 + dy : 2 + dy + size, 2 + dx : 2 + dx + size]


def make_forward(model: nn.Module, p: Params, classes: int, gen: torch.Generator) -> Forward:
    """One training batch's forward pass under `p`: augmentation from the epoch's
    generator, then timm's Mixup/CutMix (heavy) or label-smoothed cross-entropy."""
    mixup = None
    if p.augment == "heavy":  # the paper's Mixup/CutMix; it also smooths the labels
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=p.label_smoothing,
                      num_classes=classes)  # fmt: skip
    loss_fn = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(
        label_smoothing=p.label_smoothing
    )  # fmt: skip

    def forward(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if p.augment != "none":
            xb = _augment(xb, gen)
        inputs, targets = mixup(xb, yb) if mixup else (xb, yb)
        logits = model(inputs)
        return logits, loss_fn(logits, targets)

    return forward


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
    # 4500 images: 20% test, 20% validation, and the 2700 training images (900 validation)
    # the study trained and chose on before it had a test split.
    defaults: ClassVar[dict] = {
        "data": {
            "name": "shapes", "size": 4500, "image_size": 16, "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
        "resources": {"cpu": 1},
        "train": {"batch_size": 64, "epochs": 6},
        "sweep": {
            "arms": ARMS,
            "derive": {"lr": {"source": "batch_size", "reference": 1024, "rule": "linear"}},
            # 3 seeds, then 3 more at a time for the deciding arms of the comparisons still
            # undecided, up to 12: 3 paired seeds (2 degrees of freedom) decide only gaps
            # far larger than the seed spread.
            "seeds": {"min": 3, "max": 12, "step": 3},
            "max_concurrent_trials": 2,
        },
    }  # fmt: skip
    # The deciding arms with 2 seeds: the smallest sweep that gives every comparison an
    # estimate (2 seeds are far too few to decide one). 300 training images, as before.
    smoke: ClassVar[dict] = {
        "data": {"size": 500, "val_fraction": 0.2},
        "train": {"epochs": 1, "batch_size": 32, "dims": [16, 32, 48], "depths": [1, 1, 1]},
        "sweep": {
            "arms": {a: ARMS[a] for a in (verdict.POOL, verdict.IDENTITY, verdict.ATTENTION)},
            "seeds": 2,
        },
    }

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        """RGB input (the stem is a 3-channel conv), an image large enough for every stage to
        stay 2x2 or larger, and a training set of at least one full batch (the loop drops the
        last partial batch, so a smaller set would train on nothing). The platform checks
        the test split the comparisons need."""
        if data is None:
            return
        if data.input_shape[0] != 3:
            raise SpecError(
                f"data.name: metaformer models take RGB (3-channel) images; {data.name} has "
                f"{data.input_shape[0]} channel(s); use shapes or imagefolder"
            )
        side = data.input_shape[-1]
        for p in sweep_params(spec, Params):
            if min(stage_sizes(side, len(p.dims))) < 2:
                need = 2 * 2 ** len(p.dims)
                raise SpecError(
                    f"data.image_size: {side} leaves a stage below 2x2 with {len(p.dims)} "
                    f"stages (the stem and every later stage halve it); allowed: >= {need}"
                )
            if p.batch_size > data.n_train:
                raise SpecError(
                    f"train.batch_size: {p.batch_size} is more than the {data.n_train} training "
                    f"images, and partial batches are dropped; allowed: <= {data.n_train}"
                )

    def run_name(self, params: dict[str, Any], swept: list[str]) -> str:
        """e.g. `pool3-no_mlp-lr0.002-s1`."""
        return f"{params.get('arm', params['mixer'])}-lr{params['lr']:.3g}-s{params['seed']}"

    def train(self, ctx: TrialContext[Params]) -> None:
        p = ctx.params
        data, dev = ctx.data, ctx.device
        x, y = (torch.tensor(data[k], device=dev) for k in ("x_train", "y_train"))
        xv, yv = (torch.tensor(data[k], device=dev) for k in ("x_val", "y_val"))
        xt, yt = (torch.tensor(data[k], device=dev) for k in ("x_test", "y_test"))
        config = model_config_for(p, x.shape[-1], data["classes"])
        model = build(config).to(dev)
        size = {"params": count_params(model), "macs": count_macs(model, x.shape[-1])}
        config.update(size)
        steps = len(x) // p.batch_size  # drop_last: Mixup needs an even, full batch
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = make_scheduler(opt, p, steps)
        if ctx.state:
            model.load_state_dict(ctx.state["model"])
            opt.load_state_dict(ctx.state["optimizer"])
            sched.load_state_dict(ctx.state["scheduler"])
        classes = int(y.max().item()) + 1
        for epoch in range(ctx.start_epoch, p.epochs):
            # one generator draws the epoch's order and its augmentations, in that order
            gen = epoch_generator(ctx.seed, epoch)
            forward = make_forward(model, p, classes, gen)
            start = time.perf_counter()
            with ctx.autocast():
                train_loss, train_acc = train_epoch(
                    model, opt, x, y, p.batch_size, gen,
                    forward=forward, scheduler=sched, drop_last=True,
                )  # fmt: skip
            train_rate = steps * p.batch_size / (time.perf_counter() - start)
            start = time.perf_counter()
            with ctx.autocast():
                val_loss, val_acc = evaluate(model, xv, yv, chunk=512)
            eval_rate = len(xv) / (time.perf_counter() - start)
            metrics = {
                "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, "lr": opt.param_groups[0]["lr"],
                "train_images_per_s": train_rate, "eval_images_per_s": eval_rate, **size,
            }  # fmt: skip
            if epoch == p.epochs - 1:  # the trained model, once: no choice may see test data
                with ctx.autocast():
                    metrics["test_loss"], metrics["test_acc"] = evaluate(model, xt, yt, chunk=512)
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "model_config": config,
            }  # fmt: skip
            ctx.report(metrics, state, samples=len(x), progress=(epoch + 1) / p.epochs)

    # --- the registered model ---

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        return build(config)

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.zeros((2, 3, config["image_size"], config["image_size"]), dtype=np.float32)

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        keys = ("mixer", "ablation", "macs", "params", "dims", "depths", "class_names")
        shape = [3, config["image_size"], config["image_size"]]
        return {**{k: config[k] for k in keys}, "input_shape": shape}

    # ---- the verdict: jobs/metaformer/verdict.py (the rule), evidence.py (the report) ----

    def comparisons(self, spec: Spec) -> list[Compare]:
        return verdict.comparisons()

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        return verdict.decide(judged)

    def evidence(self, results: list[TrialResult], spec: Spec, judged: list[Judged]) -> Evidence:
        return evidence.evidence(results)
