"""Study `large_batch`: Hoffer, Hubara & Soudry 2017, "Train longer, generalize better".

Model: the paper's F1-style MLP (depth x [Linear, BN, ReLU]) on flattened generated
images. Why: on 2 CPU cores it trains in seconds per epoch at every batch size, and
the effect under test (too few updates, not large batches as such) is an
optimisation-budget effect that an MLP shows as clearly as a ResNet.

Data. Three splits, drawn once per sweep: train, validation (every choice: Tune's metric,
the champion) and test (every number the verdict states: the comparisons in verdict.py, the
table and plots in evidence.py). Every trial evaluates on validation and test each epoch;
nothing reads test_acc to choose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.large_batch import evidence, verdict
from jobs.large_batch.ghost_bn import make_norm
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    SpecError,
    Study,
    TrialContext,
    TrialResult,
    register_study,
    sweep_params,
)
from skeptic.training import epoch_generator, evaluate, step_decay_lr, train_epoch

ARMS = {  # the paper's Table 1 arms; SB's batch size is base_batch
    "SB": {"lr_rule": "none", "ghost_batch": None, "regime": "fixed"},
    "LB": {"lr_rule": "none", "ghost_batch": None, "regime": "fixed"},
    "+LR": {"lr_rule": "sqrt", "ghost_batch": None, "regime": "fixed"},
    "+LR(linear)": {"lr_rule": "linear", "ghost_batch": None, "regime": "fixed"},
    "+GBN": {"lr_rule": "sqrt", "ghost_batch": 64, "regime": "fixed"},
    "+RA": {"lr_rule": "sqrt", "ghost_batch": 64, "regime": "adapted"},
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1024, ge=1)
    base_batch: int = Field(64, ge=1, description="the small-batch reference B_small")
    lr: float = Field(0.05, gt=0, description="learning rate (scaled by sweep.derive)")
    lr_rule: Literal["none", "linear", "sqrt"] = "none"
    ghost_batch: int | None = Field(None, ge=2, description="Ghost BN chunk; None = plain BN")
    regime: Literal["fixed", "adapted"] = "fixed"
    epochs: int = Field(10, ge=1, description="epochs of the small-batch regime")
    # in [0, 1): a drop at 1 or later would never happen
    lr_drops: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.5, 0.75], description="fractions of training where lr /= 10"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    clip_norm: float = Field(5.0, gt=0)
    width: int = Field(256, ge=1)
    depth: int = Field(5, ge=1)

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


def epochs_for(p: Params) -> int:
    """Regime adaptation: multiply epochs by B / B_small so the number of updates is kept."""
    if p.regime == "adapted":
        return max(1, round(p.epochs * p.batch_size / p.base_batch))
    return p.epochs


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


@register_study
class LargeBatch(Study):
    name = "large_batch"
    belief = "Large-batch training generalizes worse, inherently."
    paper = (
        "Hoffer, Hubara & Soudry 2017, 'Train longer, generalize better: closing the "
        "generalization gap in large batch training of neural networks' (NeurIPS)"
    )
    Params = Params
    # FIFO only. The belief is about the end of training; the large-batch arms make fewer
    # updates per epoch and +RA trains up to B/B_small times more epochs, so at equal
    # iterations ASHA stops exactly the arms the claim is about, and the verdict would read
    # their early accuracy as final. PBT would copy another arm's weights and config in.
    schedulers = ("fifo",)
    schedulers_reason = (
        "large-batch arms make fewer updates per epoch and +RA trains longer, so ASHA would "
        "stop the arms the claim is about, and PBT would copy weights between arms"
    )
    defaults: ClassVar[dict] = {
        # 9600 train / 3200 val (every choice) / 3200 test (the numbers the verdict states)
        "data": {
            "name": "shapes", "size": 16000, "image_size": 16, "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
        "resources": {"cpu": 1},
        "train": {"base_batch": 64, "lr": 0.05, "epochs": 10},
        "sweep": {
            "space": {"batch_size": {"grid": [256, 2048]}},  # 4x and 32x the small batch
            "arms": {
                **{k: v for k, v in ARMS.items() if k != "SB"},
                "SB": {**ARMS["SB"], "batch_size": 64},
            },
            "derive": {"lr": {"source": "batch_size", "reference": 64, "rule_from": "lr_rule"}},
            "seeds": 3,
        },
    }
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
        p = ctx.params
        data, dev = ctx.data, ctx.device
        x, y = (torch.tensor(data[k], device=dev) for k in ("x_train", "y_train"))
        xv, yv = (torch.tensor(data[k], device=dev) for k in ("x_val", "y_val"))
        xt, yt = (torch.tensor(data[k], device=dev) for k in ("x_test", "y_test"))
        config = self.model_config_for(p, x.shape[1:], len(data["classes"]), data["classes"])
        model = self.build_model(config).to(dev)
        opt = torch.optim.SGD(
            model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        w0 = _weights(model)
        if ctx.state:
            model.load_state_dict(ctx.state["model"])
            opt.load_state_dict(ctx.state["optimizer"])
            w0 = ctx.state["w0"].to(dev)
        total = epochs_for(p)
        for epoch in range(ctx.start_epoch, total):
            lr = step_decay_lr(p.lr, epoch, total, p.lr_drops)
            for group in opt.param_groups:
                group["lr"] = lr
            gen = epoch_generator(ctx.seed, epoch)
            with ctx.autocast():
                train_loss, train_acc = train_epoch(
                    model, opt, x, y, p.batch_size, gen, clip_norm=p.clip_norm
                )
            with ctx.autocast():
                val_loss, val_acc = evaluate(model, xv, yv, chunk=2048)  # Tune, the champion
                test_loss, test_acc = evaluate(model, xt, yt, chunk=2048)  # the verdict only
            metrics = {
                "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "gap_test": train_acc - test_acc, "lr": lr,
                "updates": (epoch + 1) * math.ceil(len(x) / p.batch_size),
                "weight_distance": (_weights(model) - w0).norm().item(),
            }  # fmt: skip
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "w0": w0.cpu(),
                "model_config": config,
            }
            ctx.report(metrics, state, samples=len(x), progress=(epoch + 1) / total)

    # --- the registered model ---

    @staticmethod
    def model_config_for(p: Params, shape: tuple, classes: int, names: list[str]) -> dict[str, Any]:
        return {
            "input_shape": list(shape), "num_classes": classes, "class_names": list(names),
            "width": p.width, "depth": p.depth, "ghost_batch": p.ghost_batch,
        }  # fmt: skip

    def build_model(self, config: dict[str, Any]) -> nn.Module:
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
        return evidence.evidence(results, self.report_metric)
