"""`skeptic run`: one study, swept by Ray Tune, tracked in MLflow, judged, its champion registered.

Read top to bottom: plan the trials, check resources, prepare data once, open the
parent run, let Tune run `trial.run_trial` for every point, collect, judge, report,
register.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from skeptic import store, tracking
from skeptic.interrupt import Interrupted, StopOnSignal
from skeptic.preflight import check_resources, preflight
from skeptic.progress import Progress
from skeptic.registry import Registration, register_champion, registered_before
from skeptic.report import write_report
from skeptic.spec import Dim, Spec, SpecError, count_trials, grid_points, validate_spec
from skeptic.stages import (
    StageResults,
    StageSetup,
    code_hash,
    plan,
    run_stages,
)
from skeptic.study import Study, SweepFailed, TrialResult, Verdict, get_study
from skeptic.trial import STATE_FILE, TrialSetup, run_trial

DEFAULT_STORAGE = "skeptic-runs"


@dataclass
class SweepOutcome:
    study: str
    sweep_id: str
    parent_run_id: str
    verdict: Verdict
    report: Path
    results: list[TrialResult]
    registration: Registration | None  # the best trial's model version, if any


# ---- planning ----------------------------------------------------------------


def _tune_dim(dim: Dim) -> Any:
    if dim.kind == "choice":
        return tune.choice(dim.choice)
    if dim.kind == "uniform":
        return tune.uniform(*dim.uniform)
    return tune.loguniform(*dim.loguniform)


def random_dims(spec: Spec) -> dict[str, Dim]:
    return {k: d for k, d in spec.sweep.space.items() if d.kind != "grid"}


def param_space(spec: Spec) -> dict[str, Any]:
    """Grid points (already crossed with arms and de-duplicated) x seeds x random dims."""
    seeds = [spec.sweep.base_seed + i for i in range(spec.sweep.seeds)]
    space = {"point": tune.grid_search(grid_points(spec)), "seed": tune.grid_search(seeds)}
    space.update({k: _tune_dim(d) for k, d in random_dims(spec).items()})
    return space


def swept_names(spec: Spec) -> list[str]:
    names = [k for k, d in spec.sweep.space.items()]
    names += [k for arm in spec.sweep.arms.values() for k in arm if k not in names]
    names += [k for k in spec.sweep.derive if k not in names]
    return (["arm"] if spec.sweep.arms else []) + names


def describe_plan(study: Study, spec: Spec, address: str | None = None) -> str:
    """What --dry-run prints: the trial count and every grid point (after every check)."""
    check_before_start(study, spec, address)
    points = grid_points(spec)
    lines = [
        (
            f"study {study.name}: {count_trials(spec)} trials = {len(points)} grid points"
            f" x {spec.sweep.seeds} seeds x {spec.sweep.num_samples} samples"
        ),
        (
            f"scheduler {spec.sweep.scheduler.kind}, per trial cpu={spec.resources.cpu}"
            f" gpu={spec.resources.gpu}, max concurrent {spec.sweep.max_concurrent_trials or 'auto'}"
        ),
    ]
    for name, dim in random_dims(spec).items():
        lines.append(f"sampled per trial: {name} ~ {dim.kind}{getattr(dim, dim.kind)}")
    jobs = plan(study, spec, salt="")
    for stage in study.stages:
        count = sum(j.stage == stage.name for j in jobs)
        how = "shared by the trials" if spec.sweep.share_stages else "re-run inside every trial"
        lines.append(
            f"stage {stage.name}: {count} jobs (by {', '.join(stage.depends_on)} x seed), {how}"
        )
    for i, point in enumerate(points):
        lines.append(f"  [{i}] {json.dumps(point, default=str)}")
    return "\n".join(lines)


# ---- resources and Ray -------------------------------------------------------


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS, which a Ray job's driver has), else
    reuse a running in-process Ray, else start one in-process."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local": a new in-process instance, even if a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)


def check_before_start(study: Study, spec: Spec, address: str | None) -> None:
    """Everything a spec can be refused for, before Ray starts or anything is logged."""
    preflight(study, spec)
    check_resources(spec, address)


# ---- data ----------------------------------------------------------------------


def data_hash(data: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(data):
        value = data[key]
        digest.update(key.encode())
        if isinstance(value, np.ndarray):
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# ---- the sweep ------------------------------------------------------------------


def _scheduler(spec: Spec, study: Study) -> Any:
    cfg = spec.sweep.scheduler
    if cfg.kind == "asha":
        return ASHAScheduler(
            grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor, max_t=10_000
        )
    if cfg.kind == "pbt":  # spec validation made sure there is a sampled dimension to mutate
        mutations = {k: _tune_dim(d) for k, d in random_dims(spec).items()}
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=cfg.perturbation_interval,
            hyperparam_mutations=mutations,
        )
    return FIFOScheduler()


def _tuner(
    study: Study, spec: Spec, setup: TrialSetup, data_ref: Any, folder: Path, verbose: bool,
    restore: bool,
) -> tune.Tuner:  # fmt: skip
    trainable = tune.with_parameters(run_trial, data=data_ref, setup=setup)
    trainable = tune.with_resources(
        trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    # Tune's auto loggers are off (no TensorBoard files); JSON + CSV give the ResultGrid its history.
    callbacks = [
        JsonLoggerCallback(),
        CSVLoggerCallback(),
        tracking.FinalizeChildRuns(setup.tracking_uri),
    ]
    if not verbose:
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        # Its stop messages name Tuner.restore; skeptic prints its own resume command.
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
        # After a stop it warns about the trials that never reported; the runner counts them.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        callbacks.append(Progress(count_trials(spec), study.metric, study.mode))
    if restore:
        return tune.Tuner.restore(str(folder), trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode=study.mode,
            num_samples=spec.sweep.num_samples,
            scheduler=_scheduler(spec, study),
            max_concurrent_trials=spec.sweep.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            callbacks=callbacks,
            verbose=2 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _collect(
    grid: Any, client: MlflowClient, experiment_id: str, parent_run_id: str
) -> list[tuple[TrialResult, Any]]:
    """Each trial's result, with its parameters and outcome as its MLflow child run records them."""
    runs = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10_000
    )
    by_trial = {r.data.tags.get("skeptic.trial_id"): r for r in runs}
    collected = []
    for result in grid:
        trial_id = result.metrics.get("trial_id")
        run = by_trial.get(trial_id)
        history = []
        if result.metrics_dataframe is not None:
            history = result.metrics_dataframe.select_dtypes("number").to_dict("records")
        params = {k: _parse(v) for k, v in (run.data.params if run else {}).items()}
        outcome = run.data.tags.get("skeptic.outcome") if run else None
        outcome = outcome or ("failed" if result.error else "unknown")
        run_id = run.info.run_id if run else None
        collected.append((TrialResult(trial_id, params, history, outcome, run_id), result))
    return collected


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return {"None": None, "True": True, "False": False}.get(text, text)


def _best(study: Study, collected: list[tuple[TrialResult, Any]]) -> tuple[TrialResult, Any] | None:
    usable = [
        (t, r)
        for t, r in collected
        if t.outcome != "failed"
        and r.checkpoint
        and study.metric in t.final
        and study.champion_eligible(t)
    ]
    if not usable:
        return None
    sign = 1 if study.mode == "max" else -1
    return max(usable, key=lambda tr: sign * tr[0].final[study.metric])


def _champion(
    study: Study, best: tuple[TrialResult, Any], sweep_id: str, verdict: Verdict, policy: str
) -> Registration:
    trial, result = best
    with result.checkpoint.as_directory() as path:
        state = torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")["state"]
    params = {k: v for k, v in trial.params.items() if k in study.Params.model_fields}
    tags = {"skeptic.sweep_id": sweep_id, "skeptic.verdict": verdict.label}
    score = trial.final[study.metric]
    return register_champion(study, state, params, trial.run_id, tags, score, policy)


@dataclass
class SweepRecord:
    """What `skeptic resume` needs, saved beside Tune's state as skeptic-sweep.json."""

    sweep_id: str
    study: str
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    folder: str  # the sweep's folder: Tune's experiment path
    command: str

    FILE: ClassVar[str] = "skeptic-sweep.json"

    def save(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        (Path(self.folder) / self.FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def find(cls, sweep_id: str, storage: str | None) -> SweepRecord:
        root = Path(storage or DEFAULT_STORAGE).resolve()
        matches = list(root.glob(f"*/{sweep_id}/{cls.FILE}"))
        if not matches:
            raise SpecError(
                f"sweep {sweep_id!r}: no {cls.FILE} under {root}/<study>/ (check --storage)"
            )
        return cls(**json.loads(matches[0].read_text()))


def run_sweep(
    study: Study,
    spec: Spec,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    verbose: bool = False,
    command: str = "",
    register: str = "best",
) -> SweepOutcome:
    """Validate resources, prepare data once, open the parent run, run every trial, judge, register."""
    check_before_start(study, spec, address)
    uri = store.resolve_tracking_uri(tracking_uri)
    sweep_id = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = Path(storage or DEFAULT_STORAGE).resolve() / study.name / sweep_id
    print(f"sweep {sweep_id}: {count_trials(spec)} trials; preparing data", flush=True)
    data = study.prepare_data(spec)
    client = store.open_store(uri)
    experiment_id = tracking.ensure_experiment(client, study.name, uri)
    artifacts = client.get_experiment(experiment_id).artifact_location
    print(
        f"  mlflow: {uri}, experiment {study.name} (artifacts in {artifacts})\n"
        f"  folder: {folder} (Tune's results and checkpoints, the report)",
        flush=True,
    )
    parent = tracking.start_parent_run(
        client, experiment_id, sweep_id, spec, data_hash(data), count_trials(spec)
    )
    record = SweepRecord(
        sweep_id, study.name, spec.model_dump(mode="json"), uri, experiment_id, parent,
        str(folder), command,
    )  # fmt: skip
    record.save()
    return _execute(study, spec, record, data, address, verbose, register, restore=False)


def resume_sweep(
    sweep_id: str, *, storage: str | None = None, address: str | None = None,
    verbose: bool = False, register: str = "best",
) -> SweepOutcome:  # fmt: skip
    """Finish an interrupted sweep: only unfinished trials run, into the same MLflow runs;
    then the whole sweep is judged again and its best trial registered."""
    record = SweepRecord.find(sweep_id, storage)
    store.check_store(record.tracking_uri, must_exist=True)
    study = get_study(record.study)
    spec = validate_spec(record.spec, study.Params)
    check_before_start(study, spec, address)
    client = store.open_store(record.tracking_uri)
    print(f"resuming sweep {sweep_id}; preparing data", flush=True)
    data = study.prepare_data(spec)
    recorded = client.get_run(record.parent_run_id).data.tags.get("skeptic.data_hash")
    if recorded != data_hash(data):
        raise SpecError(f"sweep {sweep_id}: the data differs from the data it started with")
    client.update_run(record.parent_run_id, status="RUNNING")
    return _execute(study, spec, record, data, address, verbose, register, restore=True)


def _execute(
    study: Study, spec: Spec, record: SweepRecord, data: dict, address: str | None,
    verbose: bool, register: str, restore: bool,
) -> SweepOutcome:  # fmt: skip
    client = MlflowClient(record.tracking_uri)
    tracking.set_active_uri(record.tracking_uri)

    def close_killed() -> None:
        tracking.close_sweep(client, record.experiment_id, record.parent_run_id, "KILLED")

    init_ray(address)  # before our handlers: ray.init installs a SIGTERM handler of its own
    status = "FAILED"
    with StopOnSignal(close_killed) as stop:
        try:
            grid = _run_trials(study, spec, record, data, verbose, restore, stop)
            if stop.signum is None:
                _check_judgeable(grid, client, record, count_trials(spec))
                outcome = _judge_and_register(study, spec, record, client, grid, register)
                status = "FINISHED"
                return outcome
        except KeyboardInterrupt:
            stop.signum = stop.signum or signal.SIGINT
        except Exception:
            if stop.signum is None:
                raise  # a real failure; an error while stopping is part of the stop
        finally:
            tracking.close_sweep(
                client, record.experiment_id, record.parent_run_id,
                "KILLED" if stop.signum else status,
            )  # fmt: skip
    finished = _finished_trials(client, record)
    raise Interrupted(stop.signum, finished, count_trials(spec), resume_command(record))


def _run_trials(
    study: Study, spec: Spec, record: SweepRecord, data: dict, verbose: bool, restore: bool,
    stop: StopOnSignal,
) -> Any:  # fmt: skip
    """The shared stages, then every trial on Tune; returns Tune's ResultGrid."""
    client = MlflowClient(record.tracking_uri)
    data_ref = ray.put(data)
    salt = data_hash(data)[:16] + code_hash(study)
    stage_setup = StageSetup(spec, record.tracking_uri, record.experiment_id, record.parent_run_id)
    shared = (
        run_stages(study, spec, stage_setup, data_ref, salt)
        if spec.sweep.share_stages
        else StageResults()
    )
    if shared.reused:
        client.set_tag(record.parent_run_id, "skeptic.stages_reused", str(shared.reused))
    setup = TrialSetup(
        spec, record.tracking_uri, record.experiment_id, record.parent_run_id, swept_names(spec),
        salt, shared,
    )  # fmt: skip
    tuner = _tuner(study, spec, setup, data_ref, Path(record.folder), verbose, restore)
    with stop.tune_running():
        return tuner.fit()


def _trial_runs(client: MlflowClient, record: SweepRecord) -> list[Any]:
    """The sweep's trial runs in MLflow (its stage runs are children too, tagged apart)."""
    runs = client.search_runs(
        [record.experiment_id],
        f"tags.`mlflow.parentRunId` = '{record.parent_run_id}'",
        max_results=10_000,
    )
    return [r for r in runs if "skeptic.stage" not in r.data.tags]


def _finished_trials(client: MlflowClient, record: SweepRecord) -> int:
    return sum(
        r.data.tags.get("skeptic.outcome") in ("completed", "stopped_early", "failed")
        for r in _trial_runs(client, record)
    )


def _check_judgeable(grid: Any, client: MlflowClient, record: SweepRecord, total: int) -> None:
    """Judge only a whole sweep (Tune can return with trials it never started) with at
    least one trial that did not fail."""
    finished = _finished_trials(client, record)
    if len(grid) < total or finished < total:
        raise SweepFailed(
            f"only {finished} of {total} trials finished; continue with: {resume_command(record)}"
        )
    if all(r.error for r in grid):
        raise SweepFailed(f"every trial failed; first error: {grid[0].error}")


def resume_command(record: SweepRecord) -> str:
    """The exact command that finishes this sweep."""
    root = Path(record.folder).parent.parent
    command = f"skeptic resume {record.sweep_id}"
    if root != Path(DEFAULT_STORAGE).resolve():
        command += f" --storage {shlex.quote(str(root))}"
    return command


def _judge_and_register(
    study: Study, spec: Spec, record: SweepRecord, client: MlflowClient, grid: Any, register: str
) -> SweepOutcome:
    parent = record.parent_run_id
    collected = _collect(grid, client, record.experiment_id, parent)
    results = [t for t, _ in collected]
    verdict = study.verdict(results, spec)
    facts = {
        "sweep": record.sweep_id, "trials": len(results), "tracking": record.tracking_uri,
        "parent run": parent, "git commit": client.get_run(parent).data.tags.get("skeptic.git_commit"),
    }  # fmt: skip
    report = write_report(study, verdict, Path(record.folder) / "report", facts, record.command)
    client.log_artifacts(parent, str(report.parent), artifact_path="report")
    client.set_tag(parent, "skeptic.verdict", verdict.label)
    client.set_tag(parent, "skeptic.verdict_summary", verdict.summary[:4000])
    best = _best(study, collected)
    registration = None
    tags = client.get_run(parent).data.tags
    if best and tags.get("skeptic.champion_run_id") == best[0].run_id:  # resumed again
        registration = registered_before(study, tags["skeptic.champion_version"])
    elif best:
        registration = _champion(study, best, record.sweep_id, verdict, register)
        client.set_tag(parent, "skeptic.champion_version", registration.version)
        client.set_tag(parent, "skeptic.champion_run_id", best[0].run_id)
    return SweepOutcome(study.name, record.sweep_id, parent, verdict, report, results, registration)
