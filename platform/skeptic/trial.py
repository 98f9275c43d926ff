"""One Tune trial: resolve its parameters, open (or re-open) its MLflow child run, call the study.

Everything a trial needs arrives in its config or through `tune.with_parameters`,
so it works the same on a remote worker (the tracking URI included: ray#36257). The
study sees a `RunningTrial` through the `skeptic.api.TrialContext` protocol.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel
from ray import tune

from skeptic.data import materialize
from skeptic.device import autocast, pick_device, seed_everything
from skeptic.schema import ERROR_CHARS, Metric, MlflowTag, Outcome, Param, Tag
from skeptic.spec import Spec, resolve_params
from skeptic.stages import StageResults, tasks_for, upstream_for
from skeptic.study import Study, get_study

STATE_FILE = "state.pt"
RUN_ID_RESULT = "skeptic_run_id"  # in every Tune result: the trial's MLflow run


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once, with the prepared data)."""

    spec: Spec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    swept: list[str]
    stage_salt: str = ""  # data hash + study code hash: part of every stage task's key
    stages: StageResults = field(default_factory=StageResults)
    started_at: float = 0.0  # time.time() when Tune started: each trial logs its delay
    round: int = 0  # the look of a sequential seed rule this trial runs in
    folder: str = ""  # the round's Tune folder: a multi-worker trial's Train runs go under it


@dataclass
class RunningTrial:
    """The study's handle on its trial (skeptic.api.TrialContext): parameters, data,
    device, and `report`. In a multi-worker trial each worker has one, with its rank."""

    params: BaseModel
    seed: int
    device: torch.device
    data: dict[str, Any]
    client: MlflowClient
    run_id: str
    start_epoch: int = 0  # first epoch to run (after a restore)
    state: dict[str, Any] | None = None  # the last checkpointed state, if restored
    logged_through: int = -1  # epochs up to this one are already in the MLflow run
    bf16: bool = False
    upstream: dict[str, Any] = field(default_factory=dict)  # stage name -> its result
    weights_path: str | None = None
    rank: int = 0
    world_size: int = 1
    compile: bool = False
    _last: float = field(default_factory=time.perf_counter)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Wrap forward passes in this: bf16 autocast on CUDA when the spec asks for it."""
        return autocast(self.device, self.bf16)

    def prepare_model(self, model: torch.nn.Module, *, conv: bool = True) -> torch.nn.Module:
        return prepare_model(model, self.device, conv=conv, compile=self.compile,
                             world_size=self.world_size)  # fmt: skip

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank :: self.world_size]

    def report(
        self,
        metrics: dict[str, float],
        state: dict[str, Any],
        samples: int = 0,
        progress: float | None = None,
    ) -> None:
        """End of an epoch: checkpoint `state` (tensors and plain values; the model's
        weights under "model"), log metrics to MLflow and Tune. `samples` processed this
        epoch gives `throughput` (samples/s); `progress` (0-1) feeds the time estimate.
        In a multi-worker trial every worker calls it; rank 0 logs and checkpoints."""
        now = time.perf_counter()
        epoch = self.start_epoch
        metrics = {Metric.EPOCH_TIME: now - self._last, **metrics}
        if samples:
            metrics[Metric.THROUGHPUT] = samples / metrics[Metric.EPOCH_TIME]
        lead = self.rank == 0
        if lead and epoch > self.logged_through:  # replayed epochs: checkpoint older than the crash
            ts = int(time.time() * 1000)
            batch = [MlflowMetric(k, float(v), ts, epoch) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=batch)
        extra = {"epoch": epoch, RUN_ID_RESULT: self.run_id}
        if progress is not None:
            extra["progress"] = progress
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if lead:
                torch.save({"epoch": epoch, "state": state}, Path(tmp) / STATE_FILE)
                checkpoint = tune.Checkpoint.from_directory(tmp)
            if self.world_size > 1:
                import ray.train

                ray.train.report({**metrics, **extra}, checkpoint=checkpoint)
            else:
                tune.report({**metrics, **extra}, checkpoint=checkpoint)
        self.start_epoch = epoch + 1
        self._last = time.perf_counter()


def prepare_model(
    model: torch.nn.Module, device: torch.device, *, conv: bool = True, compile: bool = False,
    world_size: int = 1,
) -> torch.nn.Module:  # fmt: skip
    """channels_last (CUDA conv nets), DistributedDataParallel (several workers: plain
    BatchNorm becomes SyncBatchNorm on CUDA, so its statistics cover the global batch as in
    one process), torch.compile when asked. Parameters stay shared with `model`."""
    if device.type == "cuda" and conv:
        model = model.to(memory_format=torch.channels_last)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = _sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model)
    return model


def _sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """torch's convert_sync_batchnorm, for plain BatchNorm only: a study's own subclass
    (Ghost BN, whose statistics cover a fixed number of samples) stays as it is."""
    plain = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    if type(module) in plain:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, _sync_batchnorm(child))
    return module


def restore_checkpoint(checkpoint: Any) -> tuple[int, dict | None]:
    """(first epoch to run, the saved state) from a Tune or Train checkpoint, or (0, None)."""
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as path:
        saved = torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")
    return saved["epoch"] + 1, saved["state"]


def _child_run(client: MlflowClient, setup: TrialSetup, trial_id: str, name: str) -> str | None:
    """The trial's MLflow run: found again by trial id after a retry or resume, never
    duplicated. None when that run already completed (Tune's saved state can lag it)."""
    found = client.search_runs(
        [setup.experiment_id],
        filter_string=(
            f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{setup.parent_run_id}' "
            f"and tags.`{Tag.TRIAL_ID}` = '{trial_id}'"
        ),
        max_results=1,
    )
    if found:
        if found[0].data.tags.get(Tag.OUTCOME) == Outcome.COMPLETED:
            return None
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {
        MlflowTag.PARENT_RUN_ID: setup.parent_run_id,
        Tag.TRIAL_ID: trial_id,
        Tag.STUDY: setup.spec.study,
    }
    return client.create_run(setup.experiment_id, run_name=name, tags=tags).info.run_id


def _logged_through(client: MlflowClient, run_id: str) -> int:
    """The last epoch this run has metrics for: Tune's recorded checkpoint can lag the crash."""
    history = client.get_metric_history(run_id, Metric.EPOCH_TIME)
    return max((m.step for m in history), default=-1)


def trial_params(study: Study, setup: TrialSetup, config: dict) -> tuple[BaseModel, dict]:
    """Validated parameters of this trial, and the flat dict logged as its MLflow params."""
    point = {k: v for k, v in config["point"].items() if k != "arm"}
    point.update({k: v for k, v in config.items() if k not in ("point", "seed")})
    params = resolve_params(setup.spec, study.Params, point)
    logged = {**params.model_dump(), Param.SEED: config["seed"]}
    if "arm" in config["point"]:
        logged[Param.ARM] = config["point"]["arm"]
    return params, logged


def run_trial(config: dict, data: dict, setup: TrialSetup) -> None:
    """The Tune trainable shared by every study: one process, or the driver of a Ray Train
    run over `resources.workers` processes (skeptic.distributed)."""
    started = time.time()
    study = get_study(setup.spec.study)
    _, logged = trial_params(study, setup, config)
    client = MlflowClient(setup.tracking_uri)
    trial_id = tune.get_context().get_trial_id()
    run_id = _child_run(client, setup, trial_id, study.run_name(logged, setup.swept))
    if run_id is None:
        return  # finished before the driver died: never train it twice
    if client.get_run(setup.parent_run_id).info.status != "RUNNING":
        # The sweep was stopped while this trial was starting: see tracking.close_sweep.
        client.set_tag(run_id, Tag.OUTCOME, Outcome.INTERRUPTED)
        client.set_terminated(run_id, "KILLED")
        return
    try:
        if setup.spec.resources.workers > 1:
            from skeptic.distributed import train_on_workers

            train_on_workers(config, data, setup, run_id, trial_id, started, train_process)
        else:
            device = pick_device(setup.spec.resources.gpu)
            train_process(study, config, data, setup, run_id, started, device, tune.get_checkpoint())
    except Exception as err:
        client.set_tag(run_id, Tag.OUTCOME, Outcome.FAILED)
        client.set_tag(run_id, Tag.ERROR, f"{type(err).__name__}: {err}"[:ERROR_CHARS])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_tag(run_id, Tag.OUTCOME, Outcome.COMPLETED)
    client.set_terminated(run_id, "FINISHED")


def train_process(
    study: Study, config: dict, data: dict, setup: TrialSetup, run_id: str, started: float,
    device: torch.device, checkpoint: Any, rank: int = 0, world_size: int = 1,
) -> None:  # fmt: skip
    """One training process of a trial: the whole trial, or one worker of a Ray Train run,
    from its last (Tune or Train) checkpoint if it has one."""
    params, logged = trial_params(study, setup, config)
    seed = int(config["seed"])
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes per trial
    torch.set_num_threads(max(1, int(setup.spec.resources.cpu)))
    client = MlflowClient(setup.tracking_uri)
    start_epoch, state = restore_checkpoint(checkpoint)
    if start_epoch == 0 and rank == 0:
        _log_start(client, run_id, study, setup, params, logged, seed, device, started)
    data = materialize(data)  # arrays read from disk here, not shipped through Ray
    upstream = upstream_for(study, params, seed, data, setup)
    seed_everything(seed + 1000 * start_epoch)
    through = _logged_through(client, run_id)
    resources, weights = setup.spec.resources, setup.spec.model.weights_path
    ctx = RunningTrial(
        params, seed, device, data, client, run_id, start_epoch, state, through,
        bf16=resources.bf16, upstream=upstream, weights_path=weights, rank=rank,
        world_size=world_size, compile=resources.compile,
    )  # fmt: skip
    study.train(ctx)


def _log_start(
    client: MlflowClient, run_id: str, study: Study, setup: TrialSetup, params: BaseModel,
    logged: dict, seed: int, device: torch.device, started: float,
) -> None:  # fmt: skip
    """A new trial's params, where it runs, which stage runs it starts from, and how long
    after Tune's start its code began (worker start-up and queueing: the sweep's overhead)."""
    lineage = [
        RunTag(Tag.upstream(name), setup.stages.runs[task.key])
        for name, task in tasks_for(study, params, seed, setup.stage_salt).items()
        if task.key in setup.stages.runs
    ]
    client.log_batch(
        run_id,
        metrics=[MlflowMetric(Metric.STARTED_AFTER, started - setup.started_at, int(started * 1000), 0)],
        params=[MlflowParam(k, str(v)) for k, v in logged.items()],
        tags=[
            RunTag(Tag.DEVICE, str(device)),
            RunTag(Tag.HOST, os.uname().nodename),
            RunTag(Tag.ROUND, str(setup.round)),
            *lineage,
        ],
    )
