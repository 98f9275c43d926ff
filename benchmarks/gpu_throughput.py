"""Does a Skeptic trial train a paper preset's model as fast as a plain PyTorch loop, and do
fractional-GPU trials pack one GPU well?

(1) For each paper preset's model (ResNet-44, ResNet-56, VGG-16 on 32x32; ResNet-50 and
PoolFormer-S12 on 224x224): images/s of the same training steps (SGD, bf16 autocast and
channels_last on CUDA) as a Skeptic trial (`skeptic run throughput`: Tune, the trial
context, MLflow metrics and a checkpoint every epoch) and as a plain loop in this process.
Target: trial / plain >= 0.90. The first epoch of each is warm-up and not counted.
(2) ResNet-44: 4 trials sharing one GPU (resources.gpu=0.25, all at once) against 1 trial
on the whole GPU: aggregate images/s ratio. On a machine without a GPU both parts run on
the CPU (4 trials at cpu=cores/4 against 1 at all cores) and the script says so.

    .venv/bin/python benchmarks/gpu_throughput.py            # paper sizes (a GPU machine)
    .venv/bin/python benchmarks/gpu_throughput.py --tiny     # tiny sizes: CI checks it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ["SKEPTIC_STUDY_PACKAGES"] = "jobs,benchmarks.studies"
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(k, v)

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from benchmarks.studies.throughput import Params, build, synthetic
from skeptic.cli import main as skeptic
from skeptic.schema import Metric

CIFAR_MODELS = ("resnet44", "resnet56", "vgg16")
IMAGENET_MODELS = ("resnet50", "poolformer_s12")


def sizes(model: str, tiny: bool) -> dict[str, int]:
    """Image side and batch per model: the paper's batch per GPU, or a tiny CPU-sized one."""
    cifar = model in CIFAR_MODELS
    if tiny:
        return {"image_size": 32 if cifar else 64, "batch_size": 8 if cifar else 4}
    return {"image_size": 32 if cifar else 224, "batch_size": 128 if cifar else 64}


def plain_images_per_s(p: Params, device: torch.device) -> float:
    """The same steps in a plain loop: model, SGD, bf16 autocast and channels_last on CUDA."""
    torch.manual_seed(0)
    model = build(p.model, p.classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = synthetic(p, device)
    rates = []
    for _ in range(p.epochs):
        start = time.perf_counter()
        for _ in range(p.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()  # waits for the GPU, as the trial's report does
        rates.append(p.steps * p.batch_size / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def trial_rates(folder: Path, sets: list[str]) -> list[list[float]]:
    """Run `skeptic run throughput` with `sets`; each trial's per-epoch images/s (warm-up
    epoch dropped), in trial order."""
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = ["run", "throughput", "--storage", str(folder / "runs"), "--tracking-uri", uri]
    for s in sets:
        args += ["--set", s]
    if skeptic(args) != 0:
        raise SystemExit(f"skeptic run throughput {' '.join(sets)} failed")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("throughput")
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=100)
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        history = sorted(client.get_metric_history(run.info.run_id, Metric.THROUGHPUT), key=lambda m: m.step)
        out.append([m.value for m in history[1:]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and few steps (CPU, CI)")
    ap.add_argument("--steps", type=int, help="training steps per epoch (default 50; tiny 2)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs, the first one warm-up (>= 2)")
    ap.add_argument("--models", nargs="+", choices=[*CIFAR_MODELS, *IMAGENET_MODELS],
                    help="default: all five; with --tiny, resnet44 (CI checks the script runs)")
    args = ap.parse_args()
    args.models = args.models or (["resnet44"] if args.tiny else [*CIFAR_MODELS, *IMAGENET_MODELS])
    steps = args.steps or (2 if args.tiny else 50)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # as the trials below: resources.cpu = every core
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print(f"no GPU: CPU figures only ({cores} cores; sizes {'tiny' if args.tiny else 'paper'})")
    from skeptic.connect import init_ray

    init_ray(None)  # one in-process Ray for every sweep below, started as `skeptic run` starts it
    gpu = ["resources.gpu=1", "resources.bf16=true"] if cuda else [f"resources.cpu={cores}"]
    with tempfile.TemporaryDirectory() as tmp:
        whole: dict[str, float] = {}  # model -> one trial's images/s on the whole device
        print("\n(1) images/s: Skeptic trial vs plain loop, same steps, same device")
        print(f"{'model':16s} {'image':>5s} {'batch':>5s} {'trial':>10s} {'plain':>10s} {'ratio':>6s}")
        for i, model in enumerate(args.models):
            size = sizes(model, args.tiny)
            p = Params(model=model, steps=steps, epochs=args.epochs, **size)
            plain = plain_images_per_s(p, device)
            sets = [f"train.{k}={v}" for k, v in p.model_dump().items()] + gpu
            (trial,) = trial_rates(Path(tmp) / f"m{i}", sets)
            rate = statistics.median(trial)
            whole[model] = rate
            print(f"{model:16s} {p.image_size:5d} {p.batch_size:5d} {rate:10.1f} {plain:10.1f} {rate / plain:6.2f}")
        print("\n(2) resnet44: 4 trials sharing the device at once vs 1 trial on all of it")
        size = sizes("resnet44", args.tiny)
        p = Params(model="resnet44", steps=steps, epochs=args.epochs, **size)
        sets = [f"train.{k}={v}" for k, v in p.model_dump().items()]
        if "resnet44" not in whole:
            whole["resnet44"] = statistics.median(trial_rates(Path(tmp) / "whole", sets + gpu)[0])
        share = ["resources.gpu=0.25", "resources.bf16=true"] if cuda else [f"resources.cpu={cores / 4:g}"]
        four = trial_rates(Path(tmp) / "four", [*sets, *share, "sweep.seeds=4", "sweep.max_concurrent_trials=4"])
        one = whole["resnet44"]
        together = sum(statistics.median(r) for r in four)
        unit = "0.25 GPU" if cuda else f"{cores / 4:g} CPU"
        print(f"1 trial: {one:.1f} images/s; 4 trials at {unit} each: {together:.1f} images/s in all")
        print(f"aggregate ratio (4 fractional / 1 whole): {together / one:.2f}")
    if args.tiny:
        print("\n--tiny: a few images per epoch, so each epoch's checkpoint and logging dominate;"
              " these ratios show the script runs, they measure nothing")


if __name__ == "__main__":
    main()
