"""Study `large_batch`: Hoffer, Hubara & Soudry 2017, "Train longer, generalize better".

Protocol, after the paper's code (eladhoffer/bigBatch: models/mnist_f1.py, main_gbn.py,
main_normal.py, run_experiments.sh) unless said otherwise:
- Model: the paper's F1 shape, 5 x [Linear, BatchNorm, ReLU] + Linear, SGD with momentum
  0.9, weight decay 1e-4, gradient norm clipped at 5 (main_gbn.py), lr divided by 10 at
  fractions 0.5 and 0.75 of training (the CIFAR ResNet regime's 81 and 122 of 164 epochs).
- Arms (Table 1): SB at batch 128; at batch B = 2048 (16x, bigBatch's ResNet-44 runs) LB
  (SB's lr and epochs), +LR (lr x sqrt(B/128)), +GBN (+LR with Ghost BN over 128-row
  chunks), +RA (+GBN trained for as many updates as SB, the lr drops after the same
  updates), plus +LR(linear) (lr x B/128, the rule the paper argues against) and
  +RA(noGBN) (the regime without Ghost BN, main_normal.py --lr_bb_fix --regime_bb_fix), so
  the regime's effect is separated from Ghost BN's. The budget is counted in updates
  (schedule.py): +RA makes exactly SB's number of updates, every one on a full batch.
- Ghost BN (ghost_bn.py): statistics per 128-row chunk, running statistics updated once
  per chunk as in main_gbn.py, where each chunk is its own forward pass.
- SB's lr was chosen on validation before this sweep (the paper's small-batch baselines use
  their models' tuned regimes): pilots on these data (this model, 20 epochs, seeds 0-2)
  gave mean val_acc 84.08 / 83.71 / 83.99 / 84.15 / 83.91% at lr 0.025 / 0.05 / 0.1 / 0.2
  / 0.4, so SB runs at 0.2 (a flat optimum: every lr is within half a point), and LB and
  the lr rules start from it. 20 epochs reach SB's validation plateau (train accuracy
  ~99.5%; 32 epochs at lr 0.1 added 0.5 pp in a 16-vs-32-epoch pilot). The sweep re-checks
  the lr: SB also runs at lr/2 and 2 lr (arms `SB-lr*`), and the report warns if
  validation picks another.
- The weight-distance claim (||w_t - w_0|| ~ log t) is fitted, not asserted (distance.py).

Where the small CPU run differs from the paper, and why (also in the report):
- data: generated 12x12 noisy shapes, 9600 training images, not MNIST/CIFAR (nothing is
  downloaded); chosen so SB ends well below 100% (about 84% test) with near-100% train
  accuracy, a real generalization gap; LB at B shows a gap (about 3 pp in the pilots at
  SB's tuned lr, 11 pp at lr 0.05), smaller than the paper's 6.7 pp;
- model: width 128, not F1's 512, and batch 2048 vs 128, not Table 1's 4096 vs 128: +RA at
  16x costs 16x SB's compute, and the whole sweep must fit ~15 minutes on 2 CPU cores;
- training: 20 epochs, not 50-200; no data augmentation (F1 on MNIST had none either);
- the last partial batch of every data epoch is dropped (bigBatch keeps it), so the update
  counts match exactly; the lr rule is applied per round, not per bigBatch's epoch dict.

The `paper` preset (`skeptic run large_batch --preset paper --set data.path=...`): Table 1's
ResNet-44 row at the paper's scale. It follows bigBatch (models/resnet.py, main_gbn.py,
main_normal.py, preprocess.py) in:
- model: `ResNet_cifar10(depth=44)` (resnet.py: 3 stages of 7 BasicBlocks at 16/32/64
  channels, 1x1-conv + BN shortcuts where the shape changes, bigBatch's init; 661,338
  parameters), every BN a Ghost BN in the +GBN / +RA arms (ghost 128 images);
- data: CIFAR-10 from its released batches, bigBatch's training augmentation (pad 4 with
  gray 127, random 32x32 crop, horizontal flip; schedule.CropFlip, drawn per data epoch from
  (seed, epoch), applied on the device) and its normalisation (the ImageNet mean/std, done
  inside the model so the registered model takes [0, 1] images);
- recipe: SGD, momentum 0.9, weight decay 1e-4, gradient norm clipped at 5 (main_gbn.py and
  main_normal.py clip every update), lr 0.1 divided by 10 at epochs 81 and 122 of 164 (the
  model's `regime`); arms SB (batch 128), and at batch 4096 LB (SB's lr and epochs), +LR
  (lr x sqrt(4096 / 128) = 0.566, main_gbn.py's `lr_bb_fix`), +GBN (+LR, ghost 128) and +RA
  (+GBN with the epochs and drop epochs x 32, `regime_bb_fix`: SB's updates), 5 seeds.
It differs, and why:
- splits: 5000 of the 50000 training images are held out for every choice (Tune's metric,
  the champion), so the test batch, which bigBatch validates on, is only read for the
  numbers the verdict states; training sees 45000 images;
- updates: the last partial batch of each data epoch is dropped and +RA's budget is exactly
  SB's updates (above); 45000 / 4096 gives LB 10 updates per epoch where bigBatch's loader
  gives 11 (50000 images, partial batch kept);
- epochs: 164, where the regime's last drop sits (He et al.'s 64k updates at batch 128);
  bigBatch's main_gbn.py defaults to 200 and run_experiments.sh runs 100, and the paper does
  not state Table 1's count;
- SB's lr is the regime's 0.1, not re-tuned (no SB-lr* arms: the paper's SB is the
  published recipe), and the extra arms +LR(linear) and +RA(noGBN) are left out (each
  +RA-like arm costs 32 times SB); add them with --spec if wanted;
- bf16 autocast on CUDA (fp32 weights and BN statistics; the paper ran fp32), for
  throughput; `--set resources.bf16=false` runs fp32;
- Ghost BN normalises the chunks in one vectorised pass instead of bigBatch's forward pass
  per chunk (the same statistics and running-statistic updates; gradients are the mean over
  the batch either way). In a multi-worker trial (resources.workers > 1) the global batch is
  sharded (`ctx.shard`), Ghost BN chunks each worker's local batch into 128-image chunks,
  and the reported train loss / accuracy are the worker's (rank 0's are logged).
CIFAR-10 is not downloaded: data.path defaults to /data/cifar10 (where the k8s overlay mounts
the data volume), else the user names the folder holding cifar-10-batches-py/.

Data. Three splits, drawn once per sweep: train, validation (every choice: Tune's metric,
the champion, SB's lr) and test (every number the verdict states: the comparisons in
verdict.py, the table and plots in evidence.py). Every trial evaluates on validation and
test each round; nothing reads test_acc to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.large_batch import evidence, verdict
from jobs.large_batch.ghost_bn import make_norm
from jobs.large_batch.resnet import ResNetCifar, blocks_per_stage
from jobs.large_batch.schedule import CropFlip, batches, round_budget
from jobs.large_batch.verdict import RA_NO_GBN
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    Preset,
    SpecError,
    Study,
    TrialContext,
    TrialResult,
    register_study,
    sweep_params,
)
from skeptic.training import evaluate, optimizer_step, step_decay_lr

ARMS = {  # the paper's Table 1 arms (+RA includes +LR and +GBN); SB's batch is base_batch
    "SB": {"lr_rule": "none", "ghost_batch": None, "regime": "fixed"},
    "LB": {"lr_rule": "none", "ghost_batch": None, "regime": "fixed"},
    "+LR": {"lr_rule": "sqrt", "ghost_batch": None, "regime": "fixed"},
    "+LR(linear)": {"lr_rule": "linear", "ghost_batch": None, "regime": "fixed"},
    "+GBN": {"lr_rule": "sqrt", "ghost_batch": 128, "regime": "fixed"},
    "+RA": {"lr_rule": "sqrt", "ghost_batch": 128, "regime": "adapted"},
    # the regime without Ghost BN: bigBatch's main_normal.py --lr_bb_fix --regime_bb_fix
    RA_NO_GBN: {"lr_rule": "sqrt", "ghost_batch": None, "regime": "adapted"},
}
SB_BATCH = 128  # the paper's small batch, and its ghost batch
SB_LR = 0.2  # validation's pick for SB in the pilots (module docstring)
EPOCHS = 20


# --- the `paper` preset: Table 1's ResNet-44 row (module docstring, "The paper preset") ---
PAPER_BATCH = 4096  # Table 1's large batch (32x the small one)
PAPER_LR = 0.1  # bigBatch's ResNet_cifar10 regime: lr 0.1, / 10 at epochs 81 and 122
PAPER_EPOCHS = 164  # the regime's span (He et al.'s 64k updates at batch 128)
PAPER_ARMS = ("SB", "LB", "+LR", "+GBN", "+RA")  # Table 1's columns
TRAIN_IMAGES = 50000  # CIFAR-10's training batches (the planner takes validation out)
# GPU-seconds per training image (ResNet-44, 32x32, forward + backward): an estimate, not a
# measurement (cost_basis below)
PAPER_SECONDS_PER_IMAGE = 4e-5

PAPER_SPEC: dict = {
    # 45000 train / 5000 val (every choice) / CIFAR-10's released 10000-image
    # test batch (the numbers the verdict states)
    "data": {
        "name": "cifar10", "size": 50000, "val_fraction": 0.1, "test_fraction": 0.0,
        "image_size": 32, "domain": None, "path": "/data/cifar10",
    },
    "resources": {"cpu": 4, "gpu": 1, "bf16": True},
    "train": {
        "model": "resnet", "depth": 44, "augment": True, "base_batch": SB_BATCH,
        "lr": PAPER_LR, "epochs": PAPER_EPOCHS, "lr_drops": [81 / 164, 122 / 164],
        "momentum": 0.9, "weight_decay": 1e-4, "clip_norm": 5.0,
    },
    "sweep": {
        "space": {"batch_size": {"grid": [PAPER_BATCH]}},
        "arms": {
            **{k: ARMS[k] for k in PAPER_ARMS if k != "SB"},
            "SB": {**ARMS["SB"], "batch_size": SB_BATCH},
        },
        "derive": {
            "lr": {"source": "batch_size", "reference": SB_BATCH, "rule_from": "lr_rule"}
        },
        "seeds": 5,
    },
}  # fmt: skip


def sb_lr_arms(lr: float, batch: int, factors: tuple[float, ...] = (0.5, 2.0)) -> dict:
    """SB at other learning rates: the report checks on validation that SB's lr is the best
    of those tried (evidence.sb_lr_check); no comparison uses them."""
    return {f"SB-lr{f * lr:g}": {**ARMS["SB"], "batch_size": batch, "lr": f * lr} for f in factors}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1024, ge=1)
    base_batch: int = Field(SB_BATCH, ge=1, description="the small-batch reference B_small")
    lr: float = Field(SB_LR, gt=0, description="learning rate (scaled by sweep.derive)")
    lr_rule: Literal["none", "linear", "sqrt"] = "none"
    ghost_batch: int | None = Field(None, ge=2, description="Ghost BN chunk; None = plain BN")
    regime: Literal["fixed", "adapted"] = "fixed"
    epochs: int = Field(
        EPOCHS, ge=1, description="rounds: SB's epochs; +RA makes SB's updates per round"
    )
    # in [0, 1): a drop at 1 or later would never happen
    lr_drops: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.5, 0.75], description="fractions of training where lr /= 10"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    clip_norm: float = Field(5.0, gt=0)
    width: int = Field(128, ge=1, description="MLP width (unused by the ResNet)")
    depth: int = Field(5, ge=1, description="MLP: hidden layers; ResNet: depth 6n + 2 (44)")
    model: Literal["mlp", "resnet"] = Field(
        "mlp", description="mlp: the F1-shaped MLP; resnet: bigBatch's CIFAR ResNet (resnet.py)"
    )
    augment: bool = Field(
        False, description="bigBatch's CIFAR augmentation: 4-pixel-padded random crop + flip"
    )

    @model_validator(mode="after")
    def _resnet_depth(self) -> Params:
        if self.model == "resnet":
            try:
                blocks_per_stage(self.depth)
            except ValueError as err:
                raise ValueError(f"depth: {err}") from None
        return self

    @model_validator(mode="after")
    def _ghost_within_batch(self) -> Params:
        # A ghost batch as large as the batch is one chunk: plain BN (ghost_bn.make_norm),
        # so the arm would silently test nothing.
        if self.ghost_batch is not None and self.ghost_batch >= self.batch_size:
            raise ValueError(
                f"ghost_batch: {self.ghost_batch} must be smaller than batch_size "
                f"{self.batch_size} (a ghost batch covering the batch is plain BN), or None"
            )
        return self


class MLP(nn.Module):
    def __init__(self, in_features: int, classes: int, width: int, depth: int, ghost: int | None):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), make_norm(width, ghost)]
            layers.append(nn.ReLU())
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _first_layer(model: nn.Module) -> torch.Tensor:
    # The first parameter tensor (the MLP's first Linear weight, the ResNet's first conv):
    # what bigBatch's main_gbn.py logs as step_dist_n0, the distance its Figure-2-style
    # plots show.
    return next(model.parameters()).detach().flatten().clone()  # a copy, not a view


def _probe(
    out: dict[str, float],
    model: nn.Module,
    init: tuple[torch.Tensor, torch.Tensor],
    first: int,
    k: int,
) -> None:
    """After update t = first + k: at every power of two, both distances from init, as
    metrics `weight_distance.t00004` (the per-round points alone start at one round's
    updates, 75 for SB: too late to see how the distance grows from the start)."""
    t = first + k
    if t & (t - 1) == 0:
        w0, f0 = init
        out[f"weight_distance.t{t:05d}"] = (_weights(model) - w0).norm().item()
        out[f"weight_distance_first.t{t:05d}"] = (_first_layer(model) - f0).norm().item()


def _whole(idx: torch.Tensor) -> torch.Tensor:
    return idx


def _augmented(augment: CropFlip, x: torch.Tensor, first: int, idx: torch.Tensor, k: int):
    """The round's k-th batch (1-based), augmented as update first + k - 1 of training."""
    return augment(x, idx, first + k - 1)


def train_round(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    stream: Any,
    clip_norm: float,
    autocast: Any,
    after_update: Callable[[int], None] = lambda k: None,
    *,
    shard: Callable[[torch.Tensor], torch.Tensor] = _whole,
    inputs: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """One round of updates (train mode), each on a full batch from `stream`; returns the
    mean loss and the running accuracy over the samples trained on. `after_update(k)` runs
    after the round's k-th update (1-based).

    `shard(idx)` is this worker's part of a global batch (the trial context's `shard`; all
    of it in a one-process trial), so the sums are over this worker's samples. `inputs(idx,
    k)` makes the batch's images (the augmentation; default x[idx])."""
    x, y = data
    model.train()
    # summed on the device (float64: the same sums as Python floats of loss.item()), read
    # once at the end, so a GPU is not made to wait for the host after every update
    dev = y.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen = 0
    for k, idx in enumerate(stream, 1):
        idx = shard(idx)
        xb = x[idx] if inputs is None else inputs(idx, k)
        yb = y[idx]
        with autocast():
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
        optimizer_step(opt, loss, clip_norm)
        after_update(k)
        loss_sum += loss.detach().double() * len(idx)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(idx)
    return loss_sum.item() / seen, correct.item() / seen


@register_study
class LargeBatch(Study):
    name = "large_batch"
    belief = "Large-batch training generalizes worse, inherently."
    paper = (
        "Hoffer, Hubara & Soudry 2017, 'Train longer, generalize better: closing the "
        "generalization gap in large batch training of neural networks' (NeurIPS)"
    )
    Params = Params
    # FIFO only. The belief is about the end of training; the fixed-regime large-batch arms
    # make B/B_small times fewer updates per round (one report per round) and +RA passes
    # over the data B/B_small times per round, so at equal iterations ASHA stops exactly the
    # arms the claim is about, and the verdict would read their early accuracy as final.
    # PBT would copy another arm's weights and config in.
    schedulers = ("fifo",)
    schedulers_reason = (
        "large-batch arms make fewer updates per epoch and +RA trains longer, so ASHA would "
        "stop the arms the claim is about, and PBT would copy weights between arms"
    )
    defaults: ClassVar[dict] = {
        # 9600 train / 3200 val (every choice) / 3200 test (the numbers the verdict states);
        # noisy 12x12 scenes: SB ends near 84% test with ~99.5% train, far from the ceiling
        "data": {
            "name": "shapes", "size": 16000, "image_size": 12, "domain": "noisy",
            "val_fraction": 0.2, "test_fraction": 0.2,
        },
        "resources": {"cpu": 1},
        "train": {
            "base_batch": SB_BATCH, "lr": SB_LR, "epochs": EPOCHS, "width": 128, "depth": 5,
            "weight_decay": 1e-4,
        },
        "sweep": {
            "space": {"batch_size": {"grid": [2048]}},  # 16x the small batch, as bigBatch's b2048
            "arms": {
                **{k: v for k, v in ARMS.items() if k != "SB"},
                "SB": {**ARMS["SB"], "batch_size": SB_BATCH},
                **sb_lr_arms(SB_LR, SB_BATCH),
            },
            "derive": {
                "lr": {"source": "batch_size", "reference": SB_BATCH, "rule_from": "lr_rule"}
            },
            # seeds until decided: 5, then 5 more for the arms of comparisons still
            # undecided (SB, LB, +RA; at most ~12 minutes on 2 cores)
            "seeds": {"min": 5, "max": 10, "step": 5},
        },
    }  # fmt: skip
    smoke: ClassVar[dict] = {
        "data": {"size": 1200, "image_size": 8},
        "train": {"epochs": 2, "width": 64, "depth": 2, "base_batch": 32},
        "sweep": {
            "space": {"batch_size": {"grid": [256]}},
            "arms": {
                "SB": {**ARMS["SB"], "batch_size": 32},
                "LB": ARMS["LB"],
                "+RA": {**ARMS["+RA"], "ghost_batch": 32},
            },
            "derive": {"lr": {"source": "batch_size", "reference": 32, "rule_from": "lr_rule"}},
            # two seeds: the fewest a paired t interval needs, so the smoke judges every
            # comparison end to end (at 1 degree of freedom it decides only huge effects)
            "seeds": 2,
        },
    }

    presets: ClassVar[dict[str, Preset]] = {
        "paper": Preset(
            about=(
                "Table 1, ResNet-44 on CIFAR-10: SB (batch 128) vs LB, +LR, +GBN, +RA at "
                "batch 4096 (ghost 128), bigBatch's regime, 5 seeds"
            ),
            spec=PAPER_SPEC,
            data=(
                "CIFAR-10 in its released python format: data.path is the folder holding "
                "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), as "
                "torchvision's CIFAR10(root, download=False) reads it; nothing is downloaded. "
                "Default /data/cifar10 (the k8s overlay's volume); elsewhere --set "
                "data.path=<folder>. Training = the 50000 training images less a stratified 10% "
                "validation holdout (5000, every choice); test = the 10000-image test batch."
            ),
            seconds_per_image=PAPER_SECONDS_PER_IMAGE,
            gpu="A100 80GB",
            cost_basis=(
                "stated: an estimate, nothing was measured on a GPU for this figure. ResNet-44 "
                "is 97.4M multiply-adds per 32x32 image forward (counted from this model), "
                "~0.58 GFLOP per image forward + backward; small-channel (16-64) convs and the "
                "Ghost BN arms (+GBN, +RA: ~90% of the images, their BN not a fused cuDNN "
                "kernel) keep an A100 far below peak, so ~25k images/s with bf16 and "
                "channels_last is assumed. Replace it with benchmarks/gpu_throughput.py's "
                "figure when measured"
            ),
            train_images=TRAIN_IMAGES,
        )
    }

    def work(self, params: BaseModel, train_images: int) -> float:
        """Training images one trial processes: `epochs` rounds of `round_budget` updates on
        full batches, so +RA (SB's updates at batch B) counts B / base_batch times the
        images of the fixed-regime arms, as it trains."""
        p = params if isinstance(params, Params) else Params.model_validate(params)
        try:
            per_round = round_budget(p, train_images)
        except ValueError:  # a batch larger than the data: the trial fails, nothing trains
            return 0.0
        return float(p.epochs * per_round * p.batch_size)

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        """The lr rule and the regime adaptation share one small-batch reference: the derive's reference
        must be train.base_batch, or the +LR arms scale the lr against another batch than
        the one their epochs are adapted to."""
        rule = spec.sweep.derive.get("lr")
        if rule is None or rule.source != "batch_size":
            return
        for p in sweep_params(spec, Params):
            if rule.reference != p.base_batch:
                raise SpecError(
                    f"sweep.derive.lr.reference: {rule.reference:g} must equal train.base_batch "
                    f"({p.base_batch}), the small batch both the lr rule and the regime "
                    "adaptation are relative to"
                )

    def run_name(self, params: dict[str, Any], swept: list[str]) -> str:
        """e.g. `+RA-bs1024-lr0.2-gbn64-adapted-s0`."""
        gbn = params.get("ghost_batch") or "off"
        return (
            f"{params.get('arm', 'trial')}-bs{params['batch_size']}-lr{params['lr']:.3g}"
            f"-gbn{gbn}-{params['regime']}-s{params['seed']}"
        )

    def train(self, ctx: TrialContext[Params]) -> None:
        """`epochs` rounds of updates (schedule.py: SB's pass over the data, or as many updates
        for +RA), one report per round, the lr dropped at fractions of the rounds."""
        p, data, dev = ctx.params, ctx.data, ctx.device
        x, y = (torch.tensor(data[k], device=dev) for k in ("x_train", "y_train"))
        xv, yv = (torch.tensor(data[k], device=dev) for k in ("x_val", "y_val"))
        xt, yt = (torch.tensor(data[k], device=dev) for k in ("x_test", "y_test"))
        config = self.model_config_for(p, x.shape[1:], len(data["classes"]), data["classes"])
        model = self.build_model(config).to(dev)  # the plain model: state_dict, evaluation
        # what trains: DDP over the trial's workers, channels_last / compile where asked
        net = ctx.prepare_model(model, conv=p.model == "resnet")
        shard = ctx.shard
        opt = torch.optim.SGD(
            model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        w0, f0 = _weights(model), _first_layer(model)
        if ctx.state:
            model.load_state_dict(ctx.state["model"])
            opt.load_state_dict(ctx.state["optimizer"])
            w0, f0 = ctx.state["w0"].to(dev), ctx.state["f0"].to(dev)
        per_round = round_budget(p, len(x))
        augment = CropFlip(len(x), p.batch_size, ctx.seed) if p.augment else None
        probes: dict[str, float] = {}  # the distance at t = 1, 2, 4, ... updates (Figure 2)
        for r in range(ctx.start_epoch, p.epochs):
            lr = step_decay_lr(p.lr, r, p.epochs, p.lr_drops)
            for group in opt.param_groups:
                group["lr"] = lr
            first = r * per_round  # updates before this round
            stream = batches(len(x), p.batch_size, ctx.seed, first, per_round, dev)
            probe = partial(_probe, probes, model, (w0, f0), first)
            inputs = None if augment is None else partial(_augmented, augment, x, first)
            train_loss, train_acc = train_round(
                net, opt, (x, y), stream, p.clip_norm, ctx.autocast, probe,
                shard=shard, inputs=inputs,
            )  # fmt: skip
            with ctx.autocast():
                val_loss, val_acc = evaluate(model, xv, yv, chunk=2048)  # Tune, the champion
                test_loss, test_acc = evaluate(model, xt, yt, chunk=2048)  # the verdict only
            updates = (r + 1) * per_round
            metrics = {
                "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "gap_test": train_acc - test_acc, "lr": lr, "updates": updates,
                "data_epochs": updates * p.batch_size / len(x),
                "weight_distance": (_weights(model) - w0).norm().item(),
                "weight_distance_first": (_first_layer(model) - f0).norm().item(),
                **probes,
            }  # fmt: skip
            probes.clear()
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "w0": w0.cpu(), "f0": f0.cpu(), "model_config": config,
            }  # fmt: skip
            samples = per_round * p.batch_size
            ctx.report(metrics, state, samples=samples, progress=(r + 1) / p.epochs)

    # --- the registered model ---

    @staticmethod
    def model_config_for(p: Params, shape: tuple, classes: int, names: list[str]) -> dict[str, Any]:
        return {
            "model": p.model, "input_shape": list(shape), "num_classes": classes,
            "class_names": list(names), "width": p.width, "depth": p.depth,
            "ghost_batch": p.ghost_batch,
        }  # fmt: skip

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        if config.get("model", "mlp") == "resnet":  # configs before the ResNet: the MLP
            return ResNetCifar(
                config["depth"],
                config["num_classes"],
                config["ghost_batch"],
                in_channels=config["input_shape"][0],
            )
        in_features = int(np.prod(config["input_shape"]))
        return MLP(
            in_features,
            config["num_classes"],
            config["width"],
            config["depth"],
            config["ghost_batch"],
        )

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.zeros((2, *config["input_shape"]), dtype=np.float32)

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"input_shape": config["input_shape"], "class_names": config["class_names"]}

    # --- the verdict: declared comparisons, the rule over them, the rest of the report ---

    def comparisons(self, spec: Any) -> list[Compare]:
        return verdict.comparisons(spec, Params)

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        return verdict.decide(judged)

    def evidence(self, results: list[TrialResult], spec: Any, judged: list[Judged]) -> Evidence:
        resnet = any(p.model == "resnet" for p in sweep_params(spec, Params))
        return evidence.evidence(results, self.report_metric, judged, paper_scale=resnet)
