"""Study `pruning`: Liu et al. 2019, "Rethinking the Value of Network Pruning".

Protocol, after the reference code (Eric-mingjie/rethinking-network-pruning, cifar/
l1-norm-pruning and cifar/lottery-ticket). A baseline VGG-style CNN is trained once per
(config, seed) as the sweep's `baseline` stage (SGD momentum 0.9, wd 1e-4, batch 64, `lr`
divided by 10 at 50% and 75% of the epochs). Every trial starts from that stage's result
(initial + trained weights):
- structured: Li et al.'s L1 filter pruning at `ratio` (every conv's filters ranked by the
  L1 norm of their own kernel on the unpruned model, as vggprune.py; torch-pruning does the
  surgery), then `fine_tuned` (the kept weights, `finetune_epochs` at a constant
  `finetune_lr`, as main_finetune.py), `scratch_e` (the pruned architecture from a fresh
  init, the baseline's epochs, as main_E.py) or `scratch_b` (int(epochs x measured
  FLOPs_full / FLOPs_pruned), uncapped, as main_B.py; `scratch_b_cap` sets a cap, off by
  default, and the report says where it binds);
- unstructured: one global magnitude threshold over the conv weights only (the classifier
  is never masked, as cifar_prune_iterative.py), retrained with the mask kept for the
  baseline's epochs and schedule, from the baseline's original init (`ticket`) or a fresh
  one (`random`). The arms at lr 0.01 set `lr`, so they prune a baseline of their own that
  was trained at lr 0.01, and retrain at it (lottery_ticket.py: one lr throughout).

Data. Three splits, drawn once per sweep: train, validation (every choice: Tune's metric,
the champion, the fine-tuning lr below) and test (every number the verdict states, the
baseline stage's included); no choice ever reads the test split.

Scale. Default: generated `shapes` 16x16 in the `noisy` domain (2000 images: 1200 train,
400 val, 400 test), width-16 VGG (73K params, 4.9 MFLOPs/image), 6 baseline epochs, ratios
0.3 / 0.5 / 0.7 x 7 arms x 5 seeds = 105 trials + 10 shared baselines (lr 0.1 and 0.01 per
seed), and 2 more seeds (12 trials) for the fine_tuned / scratch_b pairs of any ratio still
undecided. Where it differs from the paper, and why:
- Ratio 0.9 is out of the default grid: it leaves 1-6 filters per conv (103x fewer FLOPs,
  far beyond Table 1's 1.3-1.5x) and its uncapped Scratch-B budget is 618 epochs, 3 minutes
  per seed on its own (`--set 'sweep.space.ratio.grid=[0.3,0.5,0.7,0.9]'` runs it).
- Fine-tuning: the paper fine-tunes 40 epochs (25% of 160) at lr 1e-3, ~31k SGD steps on
  CIFAR-10; 6 epochs of 1200 images are ~110 steps, after which lr 1e-3 leaves the pruned
  model short. On validation (2 seeds, ratios 0.3 and 0.5, before the full run) lr 1e-2 beat
  1e-3 by 0.75-2.5 pp after 6 epochs, and 6 epochs beat 2 (the paper's 25%) at either lr,
  so the small run fine-tunes for as many epochs as the baseline at lr 1e-2: the benefit of
  the doubt goes to the belief (`--set train.finetune_lr=0.001 --set
  train.finetune_epochs=2` is the paper's recipe scaled).
- Every conv is pruned at the same ratio (VGG-16-A prunes 50% of layers 1 and 8-13 only);
  masks are one-shot (the paper shows one-shot and iterative); no augmentation.

Is it enough? It is enough to compare the arms against each other within the seed spread
(the verdict's question: see verdict.py), not to reproduce the CIFAR-10 numbers: every arm
is short of convergence, where a longer budget (Scratch-B) counts for more than at 160
epochs, and 400 test images resolve about 0.25 pp. The paper's setting is `--preset paper` (below).

The paper presets (`--preset paper`: VGG-16-A and ResNet-56-B; `--preset paper-resnet110`:
ResNet-110-B). Follows the reference code: the networks of models/vgg.py and models/resnet.py
(cifar_nets.py: VGG-16 15.0M parameters, ResNet-56 0.85M, ResNet-110 1.73M; their init, BN
and classifier), Li et al.'s plans as vggprune.py / res56prune.py / res110prune.py -v A|B
(VGG-16-A: 50% of the filters of conv 1 and convs 8-13; ResNet-B: only the first conv of
each residual block, 60/30/10% (56) or 50/40/30% (110) per stage, the most sensitive blocks
skipped), filters ranked by their own L1 norm on the unpruned model (pruned VGG-16-A 5.40M
parameters / 206M multiply-adds, ResNet-56-B 0.74M / 90.9M, ResNet-110-B 1.17M / 155M:
Li et al.'s Table 1 to three digits), CIFAR-10 with the reference's normalisation (inside
the model) and Pad(4) + RandomCrop(32) + flip (`augment`, on device tensors, drawn per
(seed, epoch)), main.py's recipe (SGD momentum 0.9, wd 1e-4, batch 64, lr 0.1 / 10 at 50%
and 75% of 160 epochs), main_finetune.py's 40 epochs at a constant 1e-3, main_E.py's 160
epochs, main_B.py's int(160 x FLOPs_full / FLOPs_pruned) epochs uncapped (VGG-16-A 243,
ResNet-56-B 220, ResNet-110-B 260), 5 seeds (Table 1: mean and sd of 5 runs).
Differs, and why:
- 5000 of the 50000 training images are held out for validation (every choice: Tune's
  metric, the champion), so every arm trains on 45000; the reference trains on all 50000.
  Every number the verdict states is on the 10000-image test batch, which no choice sees.
- The reference's checkpoints keep the best test accuracy over the epochs (main.py's
  best_prec1); here each arm's (and the baseline's) last epoch counts: choosing an epoch by
  the test set would leak it into the numbers compared.
- bf16 autocast on the GPU (the reference: fp32, 2018 PyTorch); the same for every arm.
- Several workers (resources.workers > 1) split each global batch of 64 (DDP; on CUDA the
  BatchNorm is synchronised, so its statistics still cover the batch). The baseline stage
  trains in one process.
- The average pools are adaptive (AvgPool2d(2) / (8) in the reference): the same at 32x32.
- The lottery-ticket arms (Sec. 6: unstructured, a different setting) are not in the
  presets; `--set` them in (sweep.arms) to run them on these networks.
- ResNet-110-B is a second preset rather than a third `arch` of `paper`: it costs ~1.5x the
  VGG-16-A + ResNet-56-B sweep on its own (by the estimate below), so the two rows that
  carry the headline finish first, and each preset's verdict covers the networks it ran.
GPU-hours (`--dry-run`): the baseline (160 epochs), fine-tuning (40), Scratch-E (160) and
Scratch-B (its FLOPs budget) per seed, each scaled by the network's per-image cost (ARCH_COST)
from a stated, unmeasured 8e-5 s per VGG-16 training image on an A100: ~10 GPU-hours for
`paper`, ~15 for `paper-resnet110`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.pruning import cifar_nets, evidence, models, verdict
from jobs.pruning.prune import (
    apply_masks,
    bake,
    count_flops,
    count_params,
    global_magnitude_masks,
    prune_to,
    scratch_b_epochs,
    sparsity,
    structured_prune,
)
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    Preset,
    SpecError,
    Stage,
    StageContext,
    Study,
    TrialContext,
    TrialResult,
    grid_points,
    register_study,
)
from skeptic.spec import resolve_params
from skeptic.training import Autocast, epoch_generator, evaluate, optimizer_step, step_decay_lr

LR_DROPS = (0.5, 0.75)  # lr /= 10 at these fractions of training (the paper's schedule)
RESEED = 10_007  # offset for "random init" arms, so they never replay the baseline's init
PAD = 4  # the reference's transforms.Pad(4) + RandomCrop(32)

ARMS: dict[str, dict[str, Any]] = {
    "fine_tuned": {"method": "fine_tuned"},
    "scratch_e": {"method": "scratch_e"},
    "scratch_b": {"method": "scratch_b"},
    # the unstructured arms set `lr`, which the baseline stage depends on: each lr gets its
    # own baseline (trained at that lr, as in the reference lottery-ticket code), and the
    # ticket / random retraining runs at the same lr
    "ticket_lr0.1": {"method": "ticket", "lr": 0.1},
    "random_lr0.1": {"method": "random", "lr": 0.1},
    "ticket_lr0.01": {"method": "ticket", "lr": 0.01},
    "random_lr0.01": {"method": "random", "lr": 0.01},
}
STRUCTURED = ("fine_tuned", "scratch_e", "scratch_b")
ARCH_NAMES = {"small_vgg": "small VGG", "vgg16": "VGG-16", "resnet56": "ResNet-56",
              "resnet110": "ResNet-110"}  # fmt: skip


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["fine_tuned", "scratch_e", "scratch_b", "ticket", "random"] = "fine_tuned"
    ratio: float = Field(
        0.5, gt=0, lt=1,
        description="fraction of filters / weights removed (plan uniform; unused by plans A/B)",
    )  # fmt: skip
    width: int = Field(
        16, ge=1, description="small_vgg: channels of the first conv (plan w,w,2w,2w,4w,4w)"
    )
    arch: Literal["small_vgg", "vgg16", "resnet56", "resnet110"] = Field(
        "small_vgg",
        description="small_vgg: the 6-conv VGG-style net; vgg16 / resnet56 / resnet110: the "
        "paper's CIFAR networks (cifar_nets.py)",
    )
    plan: Literal["uniform", "A", "B"] | None = Field(
        None,
        description="which filters structured pruning removes: uniform (`ratio` of every "
        "prunable conv) or Li et al.'s plan A / B (vggprune.py, res56prune.py, "
        "res110prune.py; VGG-16 has A only). None: Liu et al.'s Table 1 plan of the arch "
        "(VGG-16-A, ResNet-56-B, ResNet-110-B; small_vgg: uniform)",
    )
    augment: bool = Field(
        False, description="random crop (zero-padded by 4) + horizontal flip of every "
        "training image, drawn per (seed, epoch), as the reference's CIFAR loader",
    )  # fmt: skip
    epochs: int = Field(6, ge=1, description="baseline epochs (= Scratch-E's)")
    lr: float = Field(
        0.1, gt=0, description="initial lr of the baseline and of every arm trained from an init"
    )
    batch_size: int = Field(64, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    finetune_lr: float = Field(
        1e-2, gt=0, description="constant lr of fine-tuning (the paper: 1e-3; see the docstring)"
    )
    finetune_epochs: int = Field(6, ge=1)
    scratch_b_cap: float | None = Field(
        None,
        ge=1,
        description="most epochs Scratch-B gets, x baseline (None: no cap, as the "
        "reference CIFAR code)",
    )

    @model_validator(mode="after")
    def _plan_of_the_arch(self) -> Params:
        """An unset plan is Table 1's for the arch; a set one must exist for it."""
        if self.plan is None:
            self.plan = cifar_nets.TABLE1_PLAN.get(self.arch, "uniform")
        allowed = cifar_nets.PLANS.get(self.arch, ("uniform",))
        if self.plan not in allowed:
            raise ValueError(
                f"plan: {self.plan!r} is not a plan of {self.arch}; allowed: {allowed}"
            )
        return self

    @model_validator(mode="after")
    def _every_conv_keeps_a_filter(self) -> Params:
        """Every conv keeps int(channels x (1 - ratio)) filters, and at least one, so past
        1 - 1/c the narrowest prunable convs (c filters) keep one filter, more than `ratio`
        allows: the structured arms would compare models pruned less than `ratio`."""
        structured = self.method in STRUCTURED
        narrowest = min(models.full_channels(self.arch, self.width))
        if structured and self.plan == "uniform" and int(narrowest * (1 - self.ratio)) < 1:
            most = 1 - 1 / narrowest
            if self.arch == "small_vgg":
                where, at, fix = "(width)", f"width {self.width}", " (or a larger width)"
            else:
                where, at, fix = f"of {self.arch}", self.arch, ""
            raise ValueError(
                f"ratio: {self.ratio} of the {narrowest} filters of the narrowest convs {where} "
                f"keeps none, and a conv keeps at least one; at {at} allowed: ratio <= "
                f"{most:.4g}{fix}"
            )
        return self


# The baseline depends on exactly these: every ratio and arm with the same values shares it.
BASELINE_FIELDS = ("arch", "width", "epochs", "lr", "batch_size", "momentum", "weight_decay",
                   "augment")  # fmt: skip


# ---- one epoch ------------------------------------------------------------------------------


def draw_crops(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position in an epoch's order: the crop's (row, col) offset into the image padded
    by PAD (0..2 PAD, as RandomCrop after Pad) and whether it is flipped (p 0.5)."""
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    return offsets, flips


def crop_and_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The reference's transforms.Pad(4), RandomCrop(32), RandomHorizontalFlip() on a batch
    of device tensors: zero padding (black, before normalisation, as Pad on the image), each
    image its own offset and flip."""
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (b, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (b, w)
    out = padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def train_one_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    batch_size: int, gen: torch.Generator, *, augment: bool = False,
    shard: Callable[[torch.Tensor], torch.Tensor] | None = None, world_size: int = 1,
) -> tuple[float, float]:  # fmt: skip
    """One pass over (x, y) in global mini-batches of `batch_size` drawn from `gen`; this
    worker trains on `shard` of each (every worker draws the same order and the same crops,
    so the global batch does not depend on the number of workers). With one worker, no
    augmentation and no shard, the same draws, batches and updates as
    skeptic.training.train_epoch. Returns this worker's mean loss and accuracy."""
    net.train()
    n = len(x)
    order = torch.randperm(n, generator=gen)
    crops = draw_crops(n, gen) if augment else None  # drawn after the order, on the CPU
    order = order.to(x.device)
    loss_sum = correct = seen = 0.0
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if end - start < world_size:  # a last batch too small for every worker to get one
            break
        pos = torch.arange(start, end)
        if shard is not None:
            pos = shard(pos)
        idx = order[pos.to(x.device)]
        xb, yb = x[idx], y[idx]
        if crops is not None:
            xb = crop_and_flip(xb, crops[0][pos].to(x.device), crops[1][pos].to(x.device))
        logits = net(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        optimizer_step(opt, loss)
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(idx)
    return loss_sum / seen, correct / seen


@dataclass
class Loop:
    """How a run trains: the module to train (DDP-wrapped or not), the plain model it shares
    its parameters with (evaluated, checkpointed), and this worker's share of each batch."""

    net: nn.Module
    model: nn.Module
    augment: bool = False
    shard: Callable[[torch.Tensor], torch.Tensor] | None = None
    world_size: int = 1


def run_epoch(
    loop: Loop, opt: torch.optim.Optimizer, lr: float, data: tuple[torch.Tensor, ...],
    batch_size: int, seed: int, epoch: int, autocast: Autocast,
) -> dict[str, float]:  # fmt: skip
    """Train one epoch at `lr`, then evaluate the plain model; `data` is (x, y, x_val,
    y_val). The order (and the crops) depend on (seed, epoch) only, so a resumed trial
    replays them exactly."""
    x, y, xv, yv = data
    for group in opt.param_groups:
        group["lr"] = lr
    gen = epoch_generator(seed, epoch)
    with autocast():
        train_loss, train_acc = train_one_epoch(
            loop.net, opt, x, y, batch_size, gen, augment=loop.augment, shard=loop.shard,
            world_size=loop.world_size,
        )  # fmt: skip
        val_loss, val_acc = evaluate(loop.model, xv, yv)
    return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": lr}  # fmt: skip


def tensors(data: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(x, y, x_val, y_val): what training and every choice use."""
    return tuple(
        torch.as_tensor(data[k], device=device) for k in ("x_train", "y_train", "x_val", "y_val")
    )


def verdict_split(data: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_test, y_test): for the numbers the verdict states, never for a choice."""
    return tuple(torch.as_tensor(data[k], device=device) for k in ("x_test", "y_test"))


def score_on_test(
    model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], autocast: Autocast
) -> dict[str, float]:
    """Loss and accuracy on the test split (evaluation only: training is unchanged)."""
    with autocast():
        test_loss, test_acc = evaluate(model, *test)
    return {"test_loss": test_loss, "test_acc": test_acc}


def sgd(model: nn.Module, lr: float, p: Params) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay
    )


def fresh_model(config: dict[str, Any], seed: int) -> nn.Module:
    """A randomly initialised model of `config`, its init fixed by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(config)


def base_config(p: Params, input_shape: list[int], class_names: list[str]) -> dict[str, Any]:
    """The unpruned network's builder config."""
    return models.model_config(
        models.full_channels(p.arch, p.width), input_shape, class_names,
        arch=models.CONFIG_ARCH[p.arch],
    )  # fmt: skip


def pruned_channels(p: Params) -> list[int]:
    """The structured arms' channels, from the params alone (no weights needed)."""
    if p.plan == "uniform":
        return [cifar_nets.keep(c, p.ratio) for c in models.full_channels(p.arch, p.width)]
    return cifar_nets.plan_channels(p.arch, p.plan, p.ratio)


@dataclass
class Plan:
    """What one trial trains: its starting weights, mask, epochs and learning rate."""

    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    epochs: int
    lr: float
    step_decay: bool
    facts: dict[str, float]  # constants logged with every epoch (params, FLOPs, ...)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def plan_trial(p: Params, baseline: dict[str, Any], seed: int) -> Plan:
    """Turn the shared baseline into this trial's starting point (pruning happens here)."""
    base_cfg = baseline["model_config"]
    trained = models.build(base_cfg)
    trained.load_state_dict(baseline["trained"])
    common = {
        "baseline_val_acc": float(baseline["val_acc"]),
        "baseline_test_acc": float(baseline["test_acc"]),
        "flops_full": count_flops(trained, base_cfg["input_shape"]),
        "params_full": count_params(trained),
    }
    if p.method in ("ticket", "random"):
        return _plan_unstructured(p, baseline, trained, common, seed)
    return _plan_structured(p, base_cfg, trained, common, seed)


def _plan_unstructured(
    p: Params, baseline: dict[str, Any], trained: nn.Module, common: dict, seed: int
) -> Plan:
    """Global magnitude masks on the conv weights of the trained baseline, retrained at the
    baseline's own lr and epochs from its original init (ticket) or a fresh one (random)."""
    config = dict(baseline["model_config"])
    masks = global_magnitude_masks(trained, p.ratio)
    start = (
        baseline["init"]
        if p.method == "ticket"
        else fresh_model(config, seed + RESEED).state_dict()
    )
    removed = int(sum((m == 0).sum().item() for m in masks.values()))
    params = count_params(trained)
    facts = {**common, "flops": common["flops_full"], "params": params,
             "nonzero_weights": params - removed}  # fmt: skip
    return Plan(config=config, weights=start, masks=masks, epochs=p.epochs, lr=p.lr,
                step_decay=True, facts=facts)  # fmt: skip


def _plan_structured(
    p: Params, base_cfg: dict[str, Any], trained: nn.Module, common: dict, seed: int
) -> Plan:
    """L1 filter pruning of the trained baseline (`ratio` of every prunable conv, or Li et
    al.'s plan), then fine-tuned (its kept weights, constant `finetune_lr`) or trained from
    a fresh init (Scratch-E: the baseline's epochs; Scratch-B: its FLOPs budget)."""
    shape = base_cfg["input_shape"]
    if p.plan == "uniform":
        pruned = structured_prune(trained, shape, p.ratio)
    else:
        pruned = prune_to(trained, shape, cifar_nets.plan_channels(p.arch, p.plan))
    flops = count_flops(pruned, shape)
    config = {**base_cfg, "channels": models.channels_of(pruned)}
    facts = {**common, "flops": flops, "params": count_params(pruned),
             "flops_ratio": common["flops_full"] / flops}  # fmt: skip
    if p.method == "fine_tuned":
        return Plan(config=config, weights=pruned.state_dict(), epochs=p.finetune_epochs,
                    lr=p.finetune_lr, step_decay=False, facts=facts)  # fmt: skip
    epochs = p.epochs
    if p.method == "scratch_b":
        epochs = scratch_b_epochs(p.epochs, common["flops_full"], flops, p.scratch_b_cap)
        # what the reference's uncapped budget would be: the report says where a cap binds
        facts["scratch_b_uncapped_epochs"] = scratch_b_epochs(p.epochs, common["flops_full"], flops)
    start = fresh_model(config, seed + RESEED).state_dict()
    return Plan(config=config, weights=start, epochs=epochs, lr=p.lr, step_decay=True, facts=facts)


# ---- the GPU-hours estimate -----------------------------------------------------------------

# GPU time per training image relative to the unpruned VGG-16 (the paper presets'
# seconds_per_image), batch 64 in eager PyTorch: at that batch a step is bound by kernel
# launches more than by FLOPs, so the deep, narrow ResNets cost more per image than VGG-16
# (ResNet-56: ~3x VGG-16's kernels per step at 40% of its FLOPs). Stated, not measured: see
# the presets' cost_basis. A pruned model is counted at its unpruned network's cost (the
# launches stay; an upper bound where FLOPs dominate).
ARCH_COST = {"small_vgg": 0.5, "vgg16": 1.0, "resnet56": 2.5, "resnet110": 5.0}


@functools.lru_cache(maxsize=64)
def _flops_pair(arch: str, width: int, channels: tuple[int, ...]) -> tuple[int, int]:
    """(unpruned, pruned) forward FLOPs of one image, measured on randomly initialised
    networks of the two architectures (at 32x32; the small VGG at 16x16, its default)."""
    shape = [3, 16, 16] if arch == "small_vgg" else [3, 32, 32]
    classes = [str(i) for i in range(10)]
    name = models.CONFIG_ARCH[arch]
    full = models.build(
        models.model_config(models.full_channels(arch, width), shape, classes, arch=name)
    )
    small = models.build(models.model_config(list(channels), shape, classes, arch=name))
    return count_flops(full, shape), count_flops(small, shape)


def trial_epochs(p: Params) -> int:
    """The epochs one trial trains (Scratch-B: the FLOPs budget, as plan_trial sets it)."""
    if p.method == "fine_tuned":
        return p.finetune_epochs
    if p.method == "scratch_b":
        full, pruned = _flops_pair(p.arch, p.width, tuple(pruned_channels(p)))
        return scratch_b_epochs(p.epochs, full, pruned, p.scratch_b_cap)
    return p.epochs


# ---- settings: one network and plan, one verdict's worth ------------------------------------


def setting_of(params: Mapping[str, Any]) -> tuple[str, str]:
    """(arch, plan) of a trial's params (results written before `arch` existed: the small
    VGG, uniform)."""
    return params.get("arch") or "small_vgg", params.get("plan") or "uniform"


def setting_label(arch: str, plan: str) -> str:
    """e.g. VGG-16-A, ResNet-56-B, VGG-16 (uniform)."""
    return f"{ARCH_NAMES[arch]}-{plan}" if plan != "uniform" else f"{ARCH_NAMES[arch]} (uniform)"


def setting_slug(arch: str, plan: str) -> str:
    """e.g. vgg16A, resnet56B, vgg16u: a comparison-name suffix."""
    return arch.replace("_", "") + (plan if plan != "uniform" else "u")


def settings(spec: Any) -> list[tuple[str, str]]:
    """The (arch, plan) pairs the sweep runs, in grid order."""
    found: dict[tuple[str, str], None] = {}
    for point in grid_points(spec):
        p = resolve_params(spec, Params, {k: v for k, v in point.items() if k != "arm"})
        found[(p.arch, p.plan)] = None
    return list(found)


def is_legacy(found: list[tuple[str, str]]) -> bool:
    """Only the small VGG pruned uniformly: comparisons, rule and report as they always were."""
    return all(s == ("small_vgg", "uniform") for s in found)


def _ratios(spec: Any) -> set[float]:
    return {float(resolve_params(spec, Params, {k: v for k, v in pt.items() if k != "arm"}).ratio)
            for pt in grid_points(spec)}  # fmt: skip


def _renamed(c: Compare, arch: str, plan: str, drop_ratio: bool) -> Compare:
    """`c` narrowed to one setting: its arms select that arch and plan, its name says it
    (under a named plan with one ratio, the ratio's tag goes: the ratio is unused)."""
    name = c.name
    if drop_ratio:
        name = name.removesuffix(f"_{verdict.tag(float(c.a['ratio']))}")
    sel = {"arch": arch, "plan": plan}
    return dataclasses.replace(
        c, name=f"{name}_{setting_slug(arch, plan)}", a={**c.a, **sel}, b={**c.b, **sel}
    )


def _original_name(j: Judged) -> str:
    """The name verdict.comparisons gave a setting's comparison (what evidence/paper read)."""
    c = j.compare
    arch, plan = c.a["arch"], c.a["plan"]
    name = c.name.removesuffix(f"_{setting_slug(arch, plan)}")
    tag = f"_{verdict.tag(float(c.a['ratio']))}"
    return name if name.endswith(tag) else name + tag


def decide_settings(
    outcomes: dict[str, str], judged: Mapping[str, Judged]
) -> tuple[bool | None, str]:
    """verdict.decide's rule across networks: the belief is general, so it holds only if
    fine-tuning is shown better for every network (and ratio) tested; one where Scratch-B
    is shown within the margin (or better) overturns it, unless fine-tuning is shown better
    for another: then the answer depends on the network, and the run is undecided."""
    return verdict.decide_outcomes(outcomes, judged, over="network")


# ---- the paper presets ----------------------------------------------------------------------

TRAIN_IMAGES = 50_000  # CIFAR-10's training batches; 45,000 train after the 10% validation
PAPER_SECONDS_PER_IMAGE = 8e-5  # one unpruned VGG-16 training image; ARCH_COST scales it
PAPER_DATA = (
    "CIFAR-10 in its released python format: data.path is the folder holding "
    "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), as torchvision's "
    "CIFAR10(root, download=False) reads it; nothing is downloaded. Default /data/cifar10 "
    "(the k8s overlay's volume); elsewhere --set data.path=<folder>. Training = the 50000 "
    "training images less a stratified 10% validation holdout (5000: every choice); test = "
    "the 10000-image test batch (every number the verdict states)."
)
PAPER_COST_BASIS = (
    "stated: an estimate, nothing was measured on a GPU for this figure. 8e-5 s per training "
    "image of the unpruned VGG-16 (313M multiply-adds forward at 32x32, counted from this "
    "model; ~1.9 GFLOP forward + backward), batch 64, bf16, eager PyTorch: a step of ~3 ms "
    "of kernel launches (a loss.item() per step syncs, so launches and GPU work add up) plus "
    "~1 ms of compute, ~4 s per 45k-image epoch, plus ~11% for evaluating validation + test "
    "every epoch. work() scales it per network (ARCH_COST: ResNet-56 2.5x, ResNet-110 5x: "
    "launch-bound, ~3x / ~6x VGG-16's kernels per step) and counts a pruned network at its "
    "unpruned one's cost (an upper bound). Replace it with benchmarks/gpu_throughput.py's "
    "figure when measured"
)


def _paper_spec(archs: list[str]) -> dict[str, Any]:
    return {
        "data": {
            "name": "cifar10",
            "size": TRAIN_IMAGES,
            "val_fraction": 0.1,
            "test_fraction": 0.0,
            "image_size": 32,
            "domain": None,
            "path": "/data/cifar10",  # the k8s overlay's data volume
        },
        "resources": {"cpu": 4, "gpu": 1, "bf16": True},
        "train": {
            # main.py: SGD momentum 0.9, wd 1e-4, batch 64, lr 0.1 / 10 at 50% and 75% of 160
            # epochs; main_finetune.py: 40 epochs at a constant 1e-3; main_B.py: Scratch-B
            # int(160 x FLOPs ratio) epochs, uncapped; Pad(4) + RandomCrop(32) + flip
            "epochs": 160,
            "lr": 0.1,
            "batch_size": 64,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "finetune_epochs": 40,
            "finetune_lr": 1e-3,
            "scratch_b_cap": None,
            "augment": True,
            "plan": None,
        },
        "sweep": {
            # under Li et al.'s named plans the ratio is unused: one value, so no duplicates
            "space": {"arch": {"grid": archs}, "ratio": {"grid": [0.5]}},
            "arms": {k: ARMS[k] for k in STRUCTURED},
            "seeds": 5,  # Liu et al.: mean and sd of 5 runs
        },
    }


PRESETS = {
    "paper": Preset(
        about=(
            "Liu et al. 2019, Table 1 (L1-norm filter pruning, Li et al. 2017), CIFAR-10: "
            "VGG-16-A and ResNet-56-B, fine-tuned vs Scratch-E vs Scratch-B, 160 + 40 "
            "epochs, 5 seeds"
        ),
        spec=_paper_spec(["vgg16", "resnet56"]),
        data=PAPER_DATA,
        seconds_per_image=PAPER_SECONDS_PER_IMAGE,
        gpu="A100 80GB",
        cost_basis=PAPER_COST_BASIS,
        train_images=TRAIN_IMAGES,
    ),
    "paper-resnet110": Preset(
        about=(
            "Liu et al. 2019, Table 1's ResNet-110-B row (Li et al.'s plan B), CIFAR-10, "
            "fine-tuned vs Scratch-E vs Scratch-B, 160 + 40 epochs, 5 seeds; on its own "
            "because it costs ~1.5x the `paper` preset"
        ),
        spec=_paper_spec(["resnet110"]),
        data=PAPER_DATA,
        seconds_per_image=PAPER_SECONDS_PER_IMAGE,
        gpu="A100 80GB",
        cost_basis=PAPER_COST_BASIS,
        train_images=TRAIN_IMAGES,
    ),
}


@register_study
class Pruning(Study):
    name = "pruning"
    belief = (
        "A large model's learned weights are worth keeping after pruning: fine-tuning a pruned "
        "model beats training the pruned architecture from scratch."
    )
    paper = "Liu, Sun, Zhou, Huang & Darrell 2019, 'Rethinking the Value of Network Pruning' (ICLR)"
    Params = Params
    stages = (Stage("baseline", BASELINE_FIELDS),)
    # FIFO only. Fine-tuned trials start from the trained baseline and scratch ones from a
    # random init, so at any equal iteration scratch is behind: ASHA would stop exactly the
    # arms the verdict weighs against fine-tuning, and the verdict would read their early
    # accuracy as final. PBT would copy a fine-tuned model into a "scratch" trial.
    schedulers = ("fifo",)
    schedulers_reason = (
        "fine-tuned trials start trained and scratch ones from random init, so ASHA would "
        "stop the scratch arms the verdict needs, and PBT would copy weights between arms"
    )
    defaults: ClassVar[dict] = {
        "data": {
            "name": "shapes",
            "domain": "noisy",
            "size": 2000,
            "image_size": 16,
            "val_fraction": 0.2,  # 400 images for every choice
            "test_fraction": 0.2,  # 400 for the numbers the verdict states; 1200 to train
        },
        "resources": {"cpu": 1},
        "train": {"width": 16, "epochs": 6, "finetune_epochs": 6},
        "sweep": {
            "space": {"ratio": {"grid": [0.3, 0.5, 0.7]}},
            "arms": ARMS,
            # 3 seeds left every comparison undecided (fine-tuned's seeds spread 2-6 pp at
            # 0.5-0.7): every arm runs 5, and the rule adds 2 to the fine_tuned / scratch_b
            # pairs still undecided (the tickets, not deciding, keep 5)
            "seeds": {"min": 5, "max": 7, "step": 2},
        },
    }
    smoke: ClassVar[dict] = {
        "data": {"size": 400, "image_size": 8},
        "train": {"width": 8, "epochs": 2, "finetune_epochs": 1},
        "sweep": {
            "space": {"ratio": {"grid": [0.5]}},
            "arms": {
                k: ARMS[k] for k in ("fine_tuned", "scratch_b", "ticket_lr0.1", "random_lr0.1")
            },
            # two seeds: the fewest a paired t interval needs, so the smoke judges every
            # comparison end to end (at 1 degree of freedom it decides only huge effects)
            "seeds": 2,
        },
    }
    presets: ClassVar[dict[str, Preset]] = PRESETS

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        """Every network's pools leave a pixel (the small VGG pools 3 times, VGG-16 4), and
        a named plan does not sweep the ratio it ignores."""
        found = settings(spec)
        if data is not None:
            side = data.input_shape[-1]
            for arch in dict.fromkeys(a for a, _ in found):
                least = models.min_side(arch)
                if side < least:
                    pools = len(models.POOL_AFTER) if arch == "small_vgg" else 4
                    name = "the VGG" if arch == "small_vgg" else ARCH_NAMES[arch]
                    raise SpecError(
                        f"data.image_size: {side} is pooled {pools} times by {name}, to "
                        f"nothing; allowed: >= {least}"
                    )
        if any(plan != "uniform" for _, plan in found) and len(_ratios(spec)) > 1:
            raise SpecError(
                "sweep.space.ratio: Li et al.'s plans A / B fix every layer's ratio, so the "
                "swept ratio would only repeat their trials; sweep it with train.plan=uniform"
            )

    def run_name(self, params: dict[str, Any], swept: list[str]) -> str:
        """e.g. `scratch_b-r0.5-s1`, `fine_tuned-vgg16A-s0`."""
        arm = params.get("arm", params["method"])
        arch, plan = setting_of(params)
        if (arch, plan) == ("small_vgg", "uniform"):
            return f"{arm}-r{params['ratio']:.3g}-s{params['seed']}"
        ratio = f"-r{params['ratio']:.3g}" if plan == "uniform" else ""
        return f"{arm}-{setting_slug(arch, plan)}{ratio}-s{params['seed']}"

    # --- the GPU-hours estimate ------------------------------------------------------------

    def work(self, params: BaseModel, train_images: int) -> float:
        """Training images one trial processes, in unpruned-VGG-16 images (ARCH_COST):
        fine-tuning's epochs, Scratch-E's, or Scratch-B's FLOPs budget (measured on the
        two architectures, as plan_trial does)."""
        p = params if isinstance(params, Params) else Params.model_validate(params)
        return float(trial_epochs(p) * train_images * ARCH_COST[p.arch])

    def stage_work(self, stage: str, config: dict[str, Any], train_images: int) -> float:
        """The baseline: `epochs` over the training set, on the unpruned network."""
        if stage != "baseline":
            return super().stage_work(stage, config, train_images)
        arch = config.get("arch", "small_vgg")
        return float(config["epochs"] * train_images * ARCH_COST[arch])

    # --- the shared baseline -------------------------------------------------------------

    def run_stage(self, stage: str, ctx: StageContext) -> dict[str, Any]:
        if stage != "baseline":
            return super().run_stage(stage, ctx)
        p = Params(**ctx.config)
        data = tensors(ctx.data, ctx.device)
        config = base_config(p, list(data[0].shape[1:]), ctx.data["classes"])
        model = fresh_model(config, ctx.seed)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        model.to(ctx.device)
        if ctx.device.type == "cuda":  # one process: no DDP, channels_last as prepare_model
            model.to(memory_format=torch.channels_last)
        loop = Loop(net=model, model=model, augment=p.augment)
        opt = sgd(model, p.lr, p)
        test = verdict_split(ctx.data, ctx.device)
        metrics: dict[str, float] = {}
        for epoch in range(p.epochs):
            lr = step_decay_lr(p.lr, epoch, p.epochs, LR_DROPS)
            metrics = run_epoch(loop, opt, lr, data, p.batch_size, ctx.seed, epoch, ctx.autocast)
            metrics.update(score_on_test(model, test, ctx.autocast))
            ctx.log(metrics, step=epoch)
        trained = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        # the last epoch's weights, chosen by no metric; the report states its test accuracy
        return {"init": init, "trained": trained, "model_config": config,
                "val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"]}  # fmt: skip

    # --- one trial -------------------------------------------------------------------------

    def train(self, ctx: TrialContext[Params]) -> None:
        p = ctx.params
        plan = plan_trial(p, ctx.upstream["baseline"], ctx.seed)
        data = tensors(ctx.data, ctx.device)
        test = verdict_split(ctx.data, ctx.device)
        model = models.build(plan.config)
        model.load_state_dict(ctx.state["model"] if ctx.state else plan.weights)
        model = apply_masks(model.to(ctx.device), plan.masks)  # kept through every step
        # the module to train: channels_last on CUDA, DDP over the trial's workers; `model`
        # (sharing its parameters) is what is evaluated and checkpointed
        loop = Loop(net=ctx.prepare_model(model), model=model, augment=p.augment,
                    shard=ctx.shard, world_size=ctx.world_size)  # fmt: skip
        opt = sgd(model, plan.lr, p)
        if ctx.state:
            opt.load_state_dict(ctx.state["optimizer"])
        # what the registry records; unstructured models keep dense shapes, so their count of
        # non-zero weights is what pruning bought
        extra = {
            k: int(plan.facts[k]) for k in ("flops", "params", "nonzero_weights") if k in plan.facts
        }
        named = {"plan": p.plan} if p.plan != "uniform" else {}
        config = {**plan.config, "ratio": p.ratio, "method": p.method, **named, **extra}
        for epoch in range(ctx.start_epoch, plan.epochs):
            lr = plan.lr
            if plan.step_decay:
                lr = step_decay_lr(plan.lr, epoch, plan.epochs, LR_DROPS)
            metrics = run_epoch(loop, opt, lr, data, p.batch_size, ctx.seed, epoch, ctx.autocast)
            metrics.update(score_on_test(model, test, ctx.autocast))
            metrics.update(epochs_total=plan.epochs, sparsity=sparsity(model), **plan.facts)
            state = {"model": bake(model), "optimizer": opt.state_dict(), "model_config": config}
            ctx.report(metrics, state, samples=len(data[0]), progress=(epoch + 1) / plan.epochs)

    # --- the registered model ---------------------------------------------------------------

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        return models.build(config)

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.zeros((2, *config["input_shape"]), dtype=np.float32)

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        keys = ("arch", "plan", "input_shape", "class_names", "channels", "ratio", "method")
        keys += ("flops", "params", "nonzero_weights")
        return {k: config[k] for k in keys if k in config}

    def champion_eligible(self, trial: TrialResult) -> bool:
        # Only structured arms are really smaller and faster; a masked (unstructured) model
        # keeps every layer's size, so it is never the champion of a pruning study.
        return trial.params.get("method") in STRUCTURED

    # --- the verdict: declared comparisons, the rule over them, the rest of the report ---

    def comparisons(self, spec: Any) -> list[Compare]:
        """verdict.comparisons; with the paper's networks, once per (arch, plan): each
        network's fine-tuned and Scratch-B trials pair by seed among themselves."""
        found = verdict.comparisons(spec, Params)
        sets = settings(spec)
        if is_legacy(sets):
            return found
        one_ratio = len(_ratios(spec)) == 1
        return [_renamed(c, arch, plan, one_ratio and plan != "uniform")
                for arch, plan in sets for c in found]  # fmt: skip

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        if all("arch" not in j.compare.a for j in judged.values()):
            return verdict.decide(judged)
        per: dict[tuple[str, str], dict[str, Judged]] = defaultdict(dict)
        for name, j in judged.items():
            per[(j.compare.a["arch"], j.compare.a["plan"])][name] = j
        outcomes: dict[str, str] = {}
        for (arch, plan), sub in per.items():
            label = setting_label(arch, plan)
            for ratio, outcome in verdict.ratio_outcomes(sub).items():
                where = label if plan != "uniform" else f"{label} at ratio {ratio:g}"
                outcomes[where] = outcome
        return decide_settings(outcomes, judged)

    def evidence(self, results: list[TrialResult], spec: Any, judged: list[Judged]) -> Evidence:
        shape = input_shape(spec)
        sets = settings(spec)
        if is_legacy(sets):
            return evidence.evidence(results, self.report_metric, judged, shape)
        parts = []
        for arch, plan in sets:
            mine = [r for r in results if setting_of(r.params) == (arch, plan)]
            theirs = [
                dataclasses.replace(
                    j, compare=dataclasses.replace(j.compare, name=_original_name(j))
                )
                for j in judged
                if (j.compare.a.get("arch"), j.compare.a.get("plan")) == (arch, plan)
            ]
            part = evidence.evidence(mine, self.report_metric, theirs, shape, arch=arch, plan=plan,
                                     label=setting_label(arch, plan), notes=False)  # fmt: skip
            parts.append((setting_label(arch, plan), setting_slug(arch, plan), part))
        return evidence.merge(parts)


def input_shape(spec: Any) -> list[int]:
    """The image shape the sweep trained on (for the verdict's latency measurements)."""
    if spec.data.name == "digits":
        return [1, 8, 8]
    if spec.data.name in ("cifar10", "cifar100"):
        return [3, 32, 32]
    return [3, spec.data.image_size, spec.data.image_size]
