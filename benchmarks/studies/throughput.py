"""`throughput`: N training steps of a paper preset's model on synthetic images, as a real
Skeptic trial (Tune, MLflow logging, a checkpoint per epoch; the trial context's
prepare_model, autocast and device), for benchmarks/gpu_throughput.py."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from skeptic.api import Study, TrialContext, register_study

MODELS = ("resnet44", "resnet56", "vgg16", "resnet50", "poolformer_s12")


def build(name: str, classes: int) -> nn.Module:
    """The paper presets' models, as their studies build them."""
    if name == "resnet44":
        from jobs.large_batch.resnet import ResNetCifar

        return ResNetCifar(depth=44, num_classes=classes)
    if name == "resnet56":
        from jobs.pruning.cifar_nets import CifarResNet, resnet_channels

        return CifarResNet(56, resnet_channels(56), 3, classes)
    if name == "vgg16":
        from jobs.pruning.cifar_nets import VGG16, vgg16_channels

        return VGG16(vgg16_channels(), 3, classes)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(num_classes=classes)
    import timm

    return timm.create_model("poolformer_s12", num_classes=classes)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("resnet44", pattern="|".join(MODELS))
    image_size: int = Field(32, ge=8)
    batch_size: int = Field(128, ge=1)
    steps: int = Field(20, ge=1)  # per epoch
    epochs: int = Field(3, ge=2)  # the first is warm-up (cuDNN autotuning, compile)
    classes: int = Field(10, ge=2)


@register_study
class Throughput(Study):
    name = "throughput"
    belief = "Benchmark study: a trial trains as fast as a plain loop."
    paper = "none"
    Params = Params
    metric = "loss"
    mode = "min"
    report_metric = "loss"
    defaults: ClassVar[dict] = {"data": {"name": "shapes", "size": 100, "image_size": 8}}

    def prepare_data(self, spec: Any) -> dict[str, Any]:
        return {}  # synthetic batches are made on the trial's device

    def check_data(self, spec: Any, *, scan: bool = True) -> None:
        return None

    def train(self, ctx: TrialContext[Params]) -> None:
        p, dev = ctx.params, ctx.device
        model = build(p.model, p.classes).to(dev)
        trained = ctx.prepare_model(model)
        opt = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
        x, y = synthetic(p, dev)
        for _ in range(ctx.start_epoch, p.epochs):
            for _ in range(p.steps):
                with ctx.autocast():
                    loss = nn.functional.cross_entropy(trained(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            config = {"model": p.model, "classes": p.classes}
            state = {"model": model.state_dict(), "model_config": config}
            ctx.report({"loss": loss.item()}, state, samples=p.steps * p.batch_size)

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        return build(config["model"], config.get("classes", 10))

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        side = 32 if config["model"] in ("resnet44", "resnet56", "vgg16") else 224
        return np.zeros((1, 3, side, side), dtype=np.float32)


def synthetic(p: Params, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(p.batch_size, 3, p.image_size, p.image_size, generator=gen)
    y = torch.randint(0, p.classes, (p.batch_size,), generator=gen)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


