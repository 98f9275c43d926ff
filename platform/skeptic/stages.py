"""Staged sweeps: upstream work that many trials share (a trained baseline, a source model).

A study declares `stages` (see `skeptic.study.Stage`). Before the trials start, the driver
lists the distinct (stage, config, seed) tasks the sweep's trials need, finds the ones an
earlier sweep already finished (an MLflow run tagged with the task's key) and runs the rest
as Ray tasks, one stage after the other, the tasks of a stage in parallel. Each result is
saved as an artifact of its own MLflow run (a child of the sweep's parent run) and handed
to the trials through the object store as `ctx.upstream[stage_name]`.

The key hashes the stage's config, the seed, the data, the study's source code and the
upstream keys: a changed study or dataset never reuses a stale result.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from skeptic.data import materialize
from skeptic.device import autocast, pick_device, seed_everything
from skeptic.schema import ERROR_CHARS, Artifact, MlflowTag, Outcome, Param, Tag
from skeptic.spec import (
    Spec,
    SpecError,
    grid_points,
    resolve_params,
    seed_looks,
    seed_values,
)
from skeptic.study import Stage, Study, SweepFailed


@dataclass(frozen=True)
class StageTask:
    """One unit of upstream work: a stage for one config and seed."""

    stage: str
    config: dict[str, Any]
    seed: int
    key: str
    upstream: dict[str, str]  # earlier stage name -> its task key

    @property
    def run_name(self) -> str:
        values = "-".join(f"{k}{v}" for k, v in self.config.items())
        return f"{self.stage}-{values}-s{self.seed}" if values else f"{self.stage}-s{self.seed}"


@dataclass
class RunningStage:
    """The study's handle on one stage task (skeptic.api.StageContext)."""

    stage: str
    config: dict[str, Any]  # the values of the stage's `depends_on` parameters
    seed: int
    device: torch.device
    data: dict[str, Any]
    upstream: dict[str, dict[str, Any]]  # results of earlier stages, by stage name
    client: MlflowClient | None = None
    run_id: str | None = None  # None when a trial runs the stage itself (share_stages=false)
    bf16: bool = False
    weights_path: str | None = None  # the spec's model.weights_path
    _start: float = field(default_factory=time.perf_counter)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics (e.g. per epoch) to the stage's MLflow run."""
        if self.client is not None and self.run_id is not None:
            for name, value in metrics.items():
                self.client.log_metric(self.run_id, name, float(value), step=step)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.bf16)


# The shared code a study's stages may run besides its own (skeptic.training's loops).
SHARED_CODE = (Path(__file__).with_name("training.py"),)


def code_hash(study: Study) -> str:
    """Hash of the study's source files and the shared training code: editing either
    invalidates the study's cached stages."""
    path = Path(inspect.getfile(type(study)))
    files = sorted(path.parent.glob("*.py")) if path.name != "__init__.py" else [path]
    files += list(SHARED_CODE)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def _stage_config(stage: Stage, params: BaseModel) -> dict[str, Any]:
    return {name: getattr(params, name) for name in stage.depends_on}


def tasks_for(study: Study, params: BaseModel, seed: int, salt: str) -> dict[str, StageTask]:
    """The stage tasks one trial needs, by stage name. `salt` = data hash + code hash."""
    tasks: dict[str, StageTask] = {}
    for stage in study.stages:
        config = _stage_config(stage, params)
        upstream = {name: task.key for name, task in tasks.items()}
        text = json.dumps(
            [study.name, stage.name, config, seed, salt, upstream], sort_keys=True, default=str
        )
        key = hashlib.sha256(text.encode()).hexdigest()[:24]
        tasks[stage.name] = StageTask(stage.name, config, seed, key, upstream)
    return tasks


def check_stage_fields(study: Study, spec: Spec) -> None:
    """Stages must be fixed before the trials are sampled: they may not depend on random dims."""
    sampled = {k for k, d in spec.sweep.space.items() if d.kind != "grid"}
    for stage in study.stages:
        unknown = [f for f in stage.depends_on if f not in study.Params.model_fields]
        if unknown:
            raise ValueError(
                f"study {study.name!r}: stage {stage.name!r} depends on unknown params {unknown}"
            )
        clash = sampled.intersection(stage.depends_on)
        if clash:
            raise SpecError(
                f"sweep.space: {sorted(clash)} are sampled per trial, but stage {stage.name!r} "
                f"depends on them; make them grid dimensions"
            )


def plan_tasks(
    study: Study, spec: Spec, salt: str, points: list[dict] | None = None,
    seeds: list[int] | None = None,
) -> list[StageTask]:  # fmt: skip
    """Every distinct stage task of the sweep's trials (of `points` x `seeds`: by default
    every grid point and the first look's seeds), earlier stages first."""
    seeds = seeds if seeds is not None else seed_values(spec, 0, seed_looks(spec)[0])
    found: dict[str, StageTask] = {}
    for point in grid_points(spec) if points is None else points:
        params = resolve_params(spec, study.Params, {k: v for k, v in point.items() if k != "arm"})
        for seed in seeds:
            for task in tasks_for(study, params, seed, salt).values():
                found.setdefault(task.key, task)
    order = {stage.name: i for i, stage in enumerate(study.stages)}
    return sorted(found.values(), key=lambda j: order[j.stage])


# ---- running them ----------------------------------------------------------------


@dataclass(frozen=True)
class StageSetup:
    """What every stage task of a sweep shares."""

    spec: Spec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def run_task(study: Study, task: StageTask, data: dict, upstream: dict, spec: Spec,
            client: MlflowClient | None = None, run_id: str | None = None,
            cpus: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one stage task in this process (a Ray task, or a trial when stages are not shared)."""
    device = pick_device(spec.resources.gpu)
    torch.set_num_threads(max(1, int(cpus or spec.resources.cpu)))
    seed_everything(task.seed)
    ctx = RunningStage(
        task.stage, dict(task.config), task.seed, device, materialize(data), upstream, client,
        run_id, spec.resources.bf16, spec.model.weights_path,
    )  # fmt: skip
    return study.run_stage(task.stage, ctx)


def _stage_task(
    task: StageTask, data: dict, upstream_refs: dict[str, Any], setup: StageSetup, cpus: float
) -> dict:
    """A Ray task: run the task inside its own MLflow run and save the result as its artifact."""
    from skeptic.study import get_study

    study = get_study(setup.spec.study)
    client = MlflowClient(setup.tracking_uri)
    tags = {
        MlflowTag.PARENT_RUN_ID: setup.parent_run_id, Tag.STAGE: task.stage,
        Tag.STAGE_KEY: task.key, Tag.STUDY: study.name,
    }  # fmt: skip
    run_id = client.create_run(setup.experiment_id, run_name=task.run_name, tags=tags).info.run_id
    params = [MlflowParam(k, str(v)) for k, v in {**task.config, Param.SEED: task.seed}.items()]
    client.log_batch(
        run_id,
        params=params,
        tags=[RunTag(Tag.upstream(k), v) for k, v in task.upstream.items()],
    )
    upstream = {name: ray.get(ref) for name, ref in upstream_refs.items()}
    try:
        result = run_task(study, task, data, upstream, setup.spec, client, run_id, cpus)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(result, Path(tmp) / Artifact.STAGE_RESULT)
            client.log_artifact(run_id, str(Path(tmp) / Artifact.STAGE_RESULT), Artifact.STAGE)
    except BaseException as err:
        client.set_tag(run_id, Tag.ERROR, f"{type(err).__name__}: {err}"[:ERROR_CHARS])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_tag(run_id, Tag.OUTCOME, Outcome.COMPLETED)
    client.set_terminated(run_id, "FINISHED")
    return result


def _cached(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """The run of an earlier sweep (or an earlier attempt of this one) that finished this task."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{Tag.STAGE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _load(client: MlflowClient, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"{Artifact.STAGE}/{Artifact.STAGE_RESULT}", tmp)
        return torch.load(path, weights_only=True, map_location="cpu")


@dataclass
class StageResults:
    """Object-store references to every stage result, by task key, and the MLflow run of each."""

    refs: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    reused: int = 0


def run_stages(
    study: Study, spec: Spec, setup: StageSetup, data_ref: Any, salt: str,
    points: list[dict] | None = None, seeds: list[int] | None = None,
) -> StageResults:  # fmt: skip
    """Run (or reuse) every stage task the trials of `points` x `seeds` need; fail the
    sweep if one fails."""
    out = StageResults()
    if not study.stages:
        return out
    client = MlflowClient(setup.tracking_uri)
    for stage in study.stages:
        planned = plan_tasks(study, spec, salt, points, seeds)
        tasks = [t for t in planned if t.stage == stage.name]
        todo = []
        for task in tasks:
            cached = _cached(client, setup.experiment_id, task.key)
            if cached:
                out.refs[task.key], out.runs[task.key] = ray.put(_load(client, cached)), cached
                out.reused += 1
            else:
                todo.append(task)
        cpus = _cpus_per_task(spec, len(todo))
        remote = ray.remote(_stage_task).options(
            num_cpus=cpus, num_gpus=spec.resources.gpu, max_retries=spec.sweep.max_failures
        )
        pending = {}
        for task in todo:
            upstream = {name: out.refs[key] for name, key in task.upstream.items()}
            pending[remote.remote(task, data_ref, upstream, setup, cpus)] = task
        _wait(stage.name, pending, len(tasks))
        for ref, task in pending.items():
            out.refs[task.key] = ref
            out.runs[task.key] = _cached(client, setup.experiment_id, task.key) or ""
    return out


def _cpus_per_task(spec: Spec, tasks: int) -> float:
    """CPU-only stages with fewer tasks than the cluster has CPUs get the idle ones as extra
    threads: nothing else runs until the stage is done."""
    if spec.resources.gpu > 0 or tasks == 0:
        return spec.resources.cpu
    total = ray.cluster_resources().get("CPU", spec.resources.cpu)
    return max(spec.resources.cpu, float(int(total // tasks)))


def _wait(stage: str, pending: dict[Any, StageTask], total: int) -> None:
    """Block until the stage's tasks finish, printing progress; the first failure fails the sweep."""
    reused = total - len(pending)
    print(f"stage {stage}: {total} tasks ({reused} reused from earlier runs)", flush=True)
    waiting, done, started = list(pending), 0, time.perf_counter()
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        task = pending[ready[0]]
        try:
            ray.get(ready[0])
        except Exception as err:
            raise SweepFailed(f"stage {stage} failed for {task.run_name}: {err}") from err
        done += 1
        elapsed = time.perf_counter() - started
        print(f"stage {stage}: {done}/{len(pending)} trained ({elapsed:.0f}s)", flush=True)


def upstream_for(
    study: Study, params: BaseModel, seed: int, data: dict, setup: Any
) -> dict[str, Any]:
    """A trial's upstream results by stage name (`setup` is the sweep's TrialSetup)."""
    tasks = tasks_for(study, params, seed, setup.stage_salt)
    if setup.spec.sweep.share_stages:
        return {name: ray.get(setup.stages.refs[task.key]) for name, task in tasks.items()}
    results: dict[str, Any] = {}
    for name, task in tasks.items():  # every trial retrains: the cost sharing saves
        results[name] = run_task(study, task, data, dict(results), setup.spec)
    return results
