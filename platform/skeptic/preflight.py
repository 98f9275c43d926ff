"""Spec-time checks that need the study, the data or the cluster, not just the spec.

`load_spec` validates every field on its own and against the study's Params. What is left
is checked here, before Ray starts and before anything is logged, so a bad spec is one
`skeptic: error:` line naming the field (exit status 2), never a traceback from a trial:

- `preflight(study, spec)`: the data section as the study's loaders would read it (the
  folder behind data.path included), the schedulers the study supports, settings that
  would be silently overridden, and the study's own cross-section constraints. No cluster.
- `check_resources(spec, address)`: whether one trial fits on the machine or on one node
  of the cluster it will run on (Tune would otherwise wait for resources forever).
"""

from __future__ import annotations

import os
from typing import Any

from skeptic.data import DataError, DataPlan
from skeptic.spec import Data, Dim, Spec, SpecError
from skeptic.study import Study

_MISSING = object()


def preflight(study: Study, spec: Spec, *, local_data: bool = True) -> None:
    """Every spec-time check that needs no cluster; raises SpecError naming the field.

    `local_data=False` skips reading data.path: for `skeptic submit`, whose data lives on
    the cluster (the submitted job's own `skeptic run` checks it there)."""
    from skeptic.stages import check_stage_fields  # imports Ray: the sweep needs it anyway

    check_scheduler(study, spec)
    check_overridden(study, spec)
    check_stage_sharing(study, spec)
    check_stage_fields(study, spec)
    data = check_data(study, spec, scan=local_data)
    if local_data:
        check_weights(spec)
    check_ignored_data(study, spec)
    study.check_spec(spec, data)


def check_data(study: Study, spec: Spec, *, scan: bool = True) -> DataPlan | None:
    """The study's data, as its loaders would read it (without reading it)."""
    try:
        return study.check_data(spec, scan=scan)
    except DataError as err:
        raise SpecError(f"data.{err.field}: {err}") from None


def check_weights(spec: Spec) -> None:
    """model.weights_path, where the trials will read it (the study checks its contents)."""
    path = spec.model.weights_path
    if path is not None and not os.path.isfile(path):
        raise SpecError(f"model.weights_path: no such file: {path}")


def check_ignored_data(study: Study, spec: Spec) -> None:
    """The digits are 8x8 and never resized: an image size the user asked for would be
    ignored (the study's own value, or the spec's default, is just not used)."""
    size, default = spec.data.image_size, Data.model_fields["image_size"].default
    if spec.data.name == "digits" and _user_given(study, spec, ("data", "image_size"), size, default):
        raise SpecError(
            f"data.image_size: {size} would be ignored, the digits are 8x8 and are not "
            "resized; leave data.image_size unset with data.name=digits"
        )


def check_scheduler(study: Study, spec: Spec) -> None:
    kind = spec.sweep.scheduler.kind
    if kind not in study.schedulers:
        why = f": {study.schedulers_reason}" if study.schedulers_reason else ""
        raise SpecError(
            f"sweep.scheduler.kind: study {study.name} allows {', '.join(study.schedulers)}, "
            f"not {kind}{why}"
        )


def check_overridden(study: Study, spec: Spec) -> None:
    """A value the user gave that no trial would ever use is an error, not a warning: the
    sweep would run to the end on values the user did not ask for, and a warning scrolls
    away under the progress table. Only values the user gave are checked (those that differ
    from the study's defaults and smoke overrides): a study may well set a train value
    as the fallback that its arms or sweep dimensions override."""
    arms = spec.sweep.arms
    every_arm = set.intersection(*(set(arm) for arm in arms.values())) if arms else set()
    for key, value in spec.train.items():
        if not _user_given(study, spec, ("train", key), value):
            continue
        if key in spec.sweep.space:
            raise SpecError(
                f"train.{key}: {value!r} is never used, sweep.space.{key} sets {key} for every "
                f"trial; change the dimension instead (e.g. --set sweep.space.{key}.grid=[{value}])"
            )
        if key in every_arm:
            raise SpecError(
                f"train.{key}: {value!r} is never used, every arm of sweep.arms "
                f"({', '.join(arms)}) sets {key}; change it in the arms instead"
            )
    for name, dim in spec.sweep.space.items():
        if name in every_arm and _user_given(study, spec, ("sweep", "space", name), dim):
            raise SpecError(
                f"sweep.space.{name}: never used, every arm of sweep.arms ({', '.join(arms)}) "
                f"sets {name} and arm values win over grid values; remove {name} from the arms "
                "or from the dimension"
            )


def check_stage_sharing(study: Study, spec: Spec) -> None:
    if not spec.sweep.share_stages and not study.stages:
        raise SpecError(
            f"sweep.share_stages: study {study.name} has no upstream stages, so false would "
            "change nothing; leave it true"
        )


def _user_given(
    study: Study, spec: Spec, path: tuple[str, ...], value: Any, default: Any = _MISSING
) -> bool:  # fmt: skip
    """Whether `value` at `path` differs from what the study's own layers (its defaults,
    its smoke overrides, its presets) put there, or, where they put nothing, from `default`."""
    preset = study.presets[spec.preset].spec if spec.preset in study.presets else {}
    found = [_lookup(layer, path) for layer in (study.defaults, preset, study.smoke)]
    found = [f for f in found if f is not _MISSING] or [default]
    return not any(f is not _MISSING and _same(f, value) for f in found)


def _lookup(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _same(study_value: Any, value: Any) -> bool:
    if isinstance(value, Dim):  # the study's dimensions are still raw dicts
        try:
            study_value = Dim.model_validate(study_value)
        except ValueError:
            return False
    return study_value == value


# ---- resources ---------------------------------------------------------------------


def check_resources(spec: Spec, address: str | None) -> None:
    """Fail fast (before anything is started or logged) when one trial asks for more CPUs
    or GPUs than the machine has, or than the largest node of the cluster has: a trial
    runs on one node, and Tune waits for resources that never come, silently.

    Local run (no address, no $RAY_ADDRESS, Ray not started): this machine's CPU count
    (os.cpu_count(), what an in-process Ray gets) and CUDA devices. Otherwise the cluster,
    joined the way the sweep joins it. An autoscaling cluster that would add a larger node
    on demand is refused too: ask for what its current nodes have, or start the node."""
    import ray  # here, not at module level: preflight's other checks must not pay for Ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address or ray.is_initialized():
        from skeptic.connect import init_ray

        init_ray(address)
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        nodes = [(float(r.get("CPU", 0)), float(r.get("GPU", 0))) for r in alive]
        where = f"the cluster at {address}" if address else "the running Ray instance"
        node = f"the largest node of {where}"
    else:
        import torch

        nodes = [(float(os.cpu_count() or 1), float(torch.cuda.device_count()))]
        where = node = "this machine"
    r = spec.resources
    _check_fit(r.cpu, r.gpu, nodes, node)
    if r.workers > 1:
        _check_workers(r.workers, r.cpu, r.gpu, nodes, where)


def _check_workers(
    workers: int, cpu: float, gpu: float, nodes: list[tuple[float, float]], where: str
) -> None:
    """A multi-worker trial's processes may spread over nodes, but all must fit at once:
    Ray Train waits for the last one forever."""
    fits = sum(min(c // cpu, g // gpu if gpu else c // cpu) for c, g in nodes)
    if fits < workers:
        raise SpecError(
            f"resources.workers: {workers} workers of cpu={cpu:g} gpu={gpu:g} requested, but "
            f"{where} fits {fits:g} at once; allowed: resources.workers <= {max(fits, 1):g}"
        )


def _check_fit(cpu: float, gpu: float, nodes: list[tuple[float, float]], where: str) -> None:
    """One trial must fit on one node: enough CPUs and GPUs on the same node."""
    if any(cpus >= cpu and gpus >= gpu for cpus, gpus in nodes):
        return
    most_cpus = max((c for c, _ in nodes), default=0.0)
    most_gpus = max((g for _, g in nodes), default=0.0)
    if gpu > 0 and most_gpus <= 0:
        raise SpecError(
            f"resources.gpu: {gpu:g} GPU per trial requested, but {where} has no GPU; "
            "set resources.gpu=0"
        )
    if gpu > most_gpus:
        raise SpecError(
            f"resources.gpu: {gpu:g} GPUs per trial requested, but {where} has {most_gpus:g}; "
            f"allowed: resources.gpu <= {most_gpus:g}"
        )
    if cpu > most_cpus:
        raise SpecError(
            f"resources.cpu: {cpu:g} CPUs per trial requested, but {where} has {most_cpus:g}, "
            f"and the trials would wait for them forever; allowed: resources.cpu <= {most_cpus:g}"
        )
    best = max(c for c, g in nodes if g >= gpu)
    raise SpecError(
        f"resources.cpu: {cpu:g} CPUs and {gpu:g} GPUs per trial requested, but the nodes with "
        f"that many GPUs have at most {best:g} CPUs; allowed: resources.cpu <= {best:g}"
    )
