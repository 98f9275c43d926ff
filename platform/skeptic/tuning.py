"""Run the trials on Ray Tune: the scheduler, the callbacks, and a Tuner (new or restored)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from skeptic.planning import (
    param_space,
    sampled_dims,
    selection_metric,
    selection_mode,
    tune_dim,
)
from skeptic.progress import Progress
from skeptic.spec import Spec
from skeptic.study import Study
from skeptic.tracking import FinalizeChildRuns
from skeptic.trial import TrialSetup, run_trial


def scheduler(spec: Spec) -> Any:
    cfg = spec.sweep.scheduler
    if cfg.kind == "asha":
        return ASHAScheduler(
            grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor, max_t=10_000
        )
    if cfg.kind == "pbt":  # spec validation made sure there is a sampled dimension to mutate
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=cfg.perturbation_interval,
            hyperparam_mutations={k: tune_dim(d) for k, d in sampled_dims(spec).items()},
        )
    return FIFOScheduler()


def trial_resources(spec: Spec) -> dict[str, float]:
    """What Tune reserves for a trial: its one process's CPUs and GPUs, or, for a multi-worker
    trial, nothing: its function only drives the Ray Train run, whose workers reserve theirs
    (a reservation here would hold a CPU idle per trial, and deadlock a full node). Tune
    refuses an empty request, so it asks for one byte of memory."""
    r = spec.resources
    if r.workers > 1:
        return {"cpu": 0, "memory": 1}
    return {"cpu": r.cpu, "gpu": r.gpu}


def _quiet_tune() -> None:
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    # Its stop messages name Tuner.restore; skeptic prints its own resume command.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # After a stop it warns about the trials that never reported; the runner counts them.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Round:
    """One round of trials (one look of a sequential seed rule): Tune's experiment folder,
    the grid points and seeds it runs, and its label for the progress line."""

    folder: Path
    points: list[dict]
    seeds: list[int]
    label: str = ""

    @property
    def trials(self) -> int:
        return len(self.points) * len(self.seeds)


def make_tuner(
    study: Study, spec: Spec, setup: TrialSetup, data_ref: Any, run: Round, verbose: bool,
    restore: bool,
) -> tune.Tuner:  # fmt: skip
    """A Tuner for a round of the sweep, or the one saved in its folder (`restore`)."""
    trainable = tune.with_parameters(run_trial, data=data_ref, setup=setup)
    trainable = tune.with_resources(trainable, trial_resources(spec))
    # Tune's auto loggers are off (no TensorBoard files); JSON + CSV give the ResultGrid its history.
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), FinalizeChildRuns(setup.tracking_uri)]
    if not verbose:
        _quiet_tune()
        total = run.trials * spec.sweep.num_samples
        callbacks.append(Progress(total, selection_metric(study, spec), selection_mode(study, spec), run.label))
    if restore:
        return tune.Tuner.restore(str(run.folder), trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, run.points, run.seeds),
        tune_config=tune.TuneConfig(
            metric=selection_metric(study, spec),
            mode=selection_mode(study, spec),
            num_samples=spec.sweep.num_samples,
            scheduler=scheduler(spec),
            max_concurrent_trials=spec.sweep.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run.folder.name,
            storage_path=str(run.folder.parent),
            callbacks=callbacks,
            verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
