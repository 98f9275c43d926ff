"""Multi-worker trials: one Tune trial drives a Ray Train `TorchTrainer` (DDP).

With `resources.workers > 1` the Tune trial's function (skeptic.trial.run_trial) reserves
nothing itself and starts a Ray Train run of that many processes, each with the spec's
`resources.cpu` / `resources.gpu`. Every worker runs the study's `train` with its rank
(skeptic.trial.train_process); the study wraps its model with `ctx.prepare_model` (DDP)
and trains on `ctx.shard` of every global batch. Rank 0 logs to the trial's one MLflow
run and saves the checkpoints; Train's `TuneReportCallback` hands each epoch's metrics
(and the checkpoint's path) to Tune, so the sweep sees the trial report per epoch as it
would a one-process trial.

Faults: when a worker dies, Train restarts the worker group from the last checkpoint
(`sweep.max_failures + 1` tries, at least one); when the whole trial is retried or the
sweep resumed, the Train run of the same name under the round's folder is found and
continues from its last checkpoint too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

if TYPE_CHECKING:
    from skeptic.trial import TrialSetup

CHECKPOINT_PATH = "checkpoint_path"  # ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY
TRAIN_FOLDER = "train"  # under the round's Tune folder: one Train run per trial


def train_on_workers(
    config: dict, data: dict, setup: TrialSetup, run_id: str, trial_id: str, started: float,
    process: Callable[..., None],
) -> None:  # fmt: skip
    """Run the trial as a Ray Train run of `resources.workers` DDP processes and wait for it;
    each runs `process` (skeptic.trial.train_process) with its rank, device and checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = setup.spec.resources
    per_worker = {"CPU": r.cpu, **({"GPU": r.gpu} if r.gpu else {})}
    loop_config = {
        "config": config, "data": ray.put(data), "setup": setup, "run_id": run_id,
        "started": started, "process": process,
    }  # fmt: skip
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=r.workers, use_gpu=r.gpu > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"{trial_id}",
            storage_path=str(Path(setup.folder or tune.get_context().get_trial_dir()) / TRAIN_FOLDER),
            failure_config=FailureConfig(max_failures=max(1, setup.spec.sweep.max_failures)),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """One Train worker: the study's training with this worker's rank and device."""
    import ray.train
    import ray.train.torch

    from skeptic.study import get_study

    setup: TrialSetup = loop_config["setup"]
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if setup.spec.resources.gpu > 0 else _cpu()
    loop_config["process"](
        get_study(setup.spec.study), loop_config["config"], ray.get(loop_config["data"]), setup,
        loop_config["run_id"], loop_config["started"], device, ray.train.get_checkpoint(),
        rank=context.get_world_rank(), world_size=context.get_world_size(),
    )  # fmt: skip


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def result_checkpoint(result: Any) -> Any:
    """A trial's last checkpoint: Tune's own, or, for a multi-worker trial, the Train
    checkpoint whose path its last report carried."""
    if result.checkpoint is not None:
        return result.checkpoint
    path = (result.metrics or {}).get(CHECKPOINT_PATH)
    if path and Path(path).is_dir():
        return tune.Checkpoint.from_directory(path)
    return None
