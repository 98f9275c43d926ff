"""Plan a sweep: the trials Tune will run (grid points x seeds x samples), what --dry-run
prints, and every check that can refuse a spec before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from ray import tune

from skeptic.data import DataPlan
from skeptic.preflight import check_data, check_resources, preflight
from skeptic.schema import Param
from skeptic.spec import (
    Dim,
    Spec,
    SpecError,
    check_selection_metric,
    count_trials,
    grid_points,
    resolve_params,
    seed_looks,
    seed_values,
)
from skeptic.stages import plan_tasks
from skeptic.stats import ALPHA, Compare, look_levels, margin_text
from skeptic.study import Preset, Study


def check_before_start(study: Study, spec: Spec, address: str | None) -> None:
    """Everything a spec can be refused for, before Ray starts or anything is logged."""
    check_selection_metric(selection_metric(study, spec), "sweep.metric")
    preflight(study, spec)
    check_comparisons(study, spec)
    check_resources(spec, address)


def point_params(study: Study, spec: Spec, point: dict) -> BaseModel:
    """A grid point's resolved (derived) training parameters (the arm's name is not one)."""
    return resolve_params(spec, study.Params, {k: v for k, v in point.items() if k != "arm"})


def point_values(study: Study, spec: Spec, point: dict) -> dict[str, Any]:
    """A grid point's trial parameters as comparisons select them: the resolved (derived)
    values a trial logs, and the arm's name."""
    return {**point, **point_params(study, spec, point).model_dump()}


def points_of(study: Study, spec: Spec, compares: list[Compare]) -> list[dict]:
    """The grid points whose trials are in arm a or b of any of `compares`."""
    return [
        point for point in grid_points(spec)
        if any(c.side(point_values(study, spec, point)) for c in compares)
    ]  # fmt: skip


def _default_data(study: Study) -> bool:
    """Whether the study's data is the spec's data section, split by the platform."""
    return type(study).prepare_data is Study.prepare_data


def check_comparisons(study: Study, spec: Spec) -> None:
    """Each arm of a deciding comparison is one grid point: with another grid dimension (a
    width, say) an arm would have two trials per seed, which cannot be paired, and the
    platform would find out only when judging, after every trial ran."""
    compares = study.comparisons(spec)
    released_test = spec.data.name.startswith("cifar") or spec.data.stream  # checked by the plan
    if compares and not spec.data.test_fraction and _default_data(study) and not released_test:
        raise SpecError(
            f"data.test_fraction: 0 leaves no test split, and the comparisons judge "
            f"{study.report_metric} on it; give e.g. 0.2"
        )
    if compares and spec.sweep.num_samples > 1:
        raise SpecError(
            f"sweep.num_samples: {spec.sweep.num_samples} samples give each arm of a comparison "
            "several trials per seed; sample once and repeat with sweep.seeds"
        )
    points = [point_values(study, spec, p) for p in grid_points(spec)]
    for c in compares:
        for side, where in (("a", c.a), ("b", c.b)):
            if where is None:
                continue
            n = sum(c.side(values) == side for values in points)
            if n > 1:
                raise SpecError(
                    f"sweep: comparison {c.name!r} needs one grid point per arm, but its arm "
                    f"{side} ({dict(where)}) matches {n}; sweep only the dimensions the study "
                    "compares and set the others in `train`"
                )


def selection_metric(study: Study, spec: Spec) -> str:
    """What Tune optimises and the champion is chosen by: sweep.metric, else the study's."""
    return spec.sweep.metric or study.metric


def selection_mode(study: Study, spec: Spec) -> str:
    """Whether the selection metric is maximised or minimised: sweep.mode, else the study's."""
    return spec.sweep.mode or study.mode


def sampled_dims(spec: Spec) -> dict[str, Dim]:
    """The dimensions sampled per trial (choice / uniform / loguniform)."""
    return {k: d for k, d in spec.sweep.space.items() if d.kind != "grid"}


def tune_dim(dim: Dim) -> Any:
    """A sampled dimension as Tune's search-space object."""
    if dim.kind == "choice":
        return tune.choice(dim.choice)
    if dim.kind == "uniform":
        return tune.uniform(*dim.uniform)
    return tune.loguniform(*dim.loguniform)


def param_space(spec: Spec, points: list[dict], seeds: list[int]) -> dict[str, Any]:
    """Grid points (already crossed with arms and de-duplicated) x seeds x sampled dims."""
    space = {"point": tune.grid_search(points), "seed": tune.grid_search(seeds)}
    space.update({k: tune_dim(d) for k, d in sampled_dims(spec).items()})
    return space


def swept_names(spec: Spec) -> list[str]:
    """The parameters that differ between trials, in the order run names show them."""
    names = list(spec.sweep.space)
    names += [k for arm in spec.sweep.arms.values() for k in arm if k not in names]
    names += [k for k in spec.sweep.derive if k not in names]
    return ([Param.ARM] if spec.sweep.arms else []) + names


def describe_plan(study: Study, spec: Spec, address: str | None = None) -> str:
    """What --dry-run prints: the trial count, every grid point, the preset's data and its
    GPU-hours estimate (after every check). A plan is also for a cluster: data that is not
    on this machine and trials this machine cannot fit are listed, not refused."""
    check_selection_metric(selection_metric(study, spec), "sweep.metric")
    preflight(study, spec, local_data=False)
    check_comparisons(study, spec)
    plan, absent = _local_plan(study, spec, address)
    if plan is not None:  # the data is here: the study's checks that need it too
        study.check_spec(spec, plan)
    points = grid_points(spec)
    sweep, resources, looks = spec.sweep, spec.resources, seed_looks(spec)
    workers = f", {resources.workers} workers (DDP)" if resources.workers > 1 else ""
    lines = [
        (
            f"study {study.name}: {count_trials(spec)} trials = {len(points)} grid points"
            f" x {looks[0]} seeds x {sweep.num_samples} samples"
        ),
        (
            f"scheduler {sweep.scheduler.kind}, per trial{workers} cpu={resources.cpu}"
            f" gpu={resources.gpu}{' per worker' if workers else ''},"
            f" max concurrent {sweep.max_concurrent_trials or 'auto'}"
        ),
    ]
    for name, dim in sampled_dims(spec).items():
        lines.append(f"sampled per trial: {name} ~ {dim.kind}{getattr(dim, dim.kind)}")
    tasks = plan_tasks(study, spec, salt="")
    for stage in study.stages:
        count = sum(t.stage == stage.name for t in tasks)
        how = "shared by the trials" if spec.sweep.share_stages else "re-run inside every trial"
        lines.append(
            f"stage {stage.name}: {count} tasks (by {', '.join(stage.depends_on)} x seed), {how}"
        )
    lines += _comparison_lines(study, spec, looks)
    if spec.preset is not None:
        lines += _preset_lines(study, spec, spec.preset, plan)
    lines += [f"not ready on this machine: {why}" for why in absent]
    lines += [f"  [{i}] {json.dumps(point, default=str)}" for i, point in enumerate(points)]
    return "\n".join(lines)


def _local_plan(study: Study, spec: Spec, address: str | None) -> tuple[DataPlan | None, list[str]]:
    """The data as read here, and what keeps the sweep from starting on this machine: a
    data.path or model.weights_path that does not exist here (it may on the cluster), or a
    trial larger than this machine. Anything else wrong is an error, as in a run."""
    absent = []
    plan = None
    if _missing_here(spec.data.path):
        absent.append(f"data.path {spec.data.path} (a run reads it where the trials run)")
    else:
        plan = check_data(study, spec, scan=True)
    if _missing_here(spec.model.weights_path):
        absent.append(f"model.weights_path {spec.model.weights_path}")
    try:
        check_resources(spec, address)
    except SpecError as err:
        absent.append(str(err))
    return plan, absent


def _missing_here(path: str | None) -> bool:
    return path is not None and not Path(path).exists()


def _preset_lines(study: Study, spec: Spec, name: str, plan: DataPlan | None) -> list[str]:
    preset = study.presets[name]
    low, high, images = gpu_hours(study, spec, preset, plan)
    span = _hours(low) if low == high else f"{_hours(low)} (first look) to {_hours(high)} (last look)"
    return [
        f"preset {name}: {preset.about}",
        f"data: {preset.data}",
        (
            f"GPU-hours: {span} on {preset.gpu}: {images:.3g} training images x "
            f"{preset.seconds_per_image:.3g} s/image ({preset.cost_basis})"
        ),
    ]


def _hours(h: float) -> str:
    """Whole hours, or two significant digits below 10 (a small study is not "0")."""
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def gpu_hours(
    study: Study, spec: Spec, preset: Preset, plan: DataPlan | None
) -> tuple[float, float, float]:
    """(GPU-hours at the first look, at the last look of a seed rule, training images at the
    last look): every trial's and stage run's `work` x the preset's seconds per image. Past
    the first look only the grid points of deciding comparisons get more seeds."""
    n = plan.n_train if plan else _stated_train_images(spec, preset)
    looks = seed_looks(spec)
    points = grid_points(spec)
    deciding = points_of(study, spec, [c for c in study.comparisons(spec) if c.deciding])
    first_seeds, later_seeds = seed_values(spec, 0, looks[0]), seed_values(spec, looks[0], looks[-1])

    def trials(chosen: list[dict], seeds: int) -> float:
        return sum(study.work(point_params(study, spec, p), n) for p in chosen) * seeds

    def stages(later: list[int]) -> float:  # each distinct stage task runs once
        tasks = {t.key: t for t in plan_tasks(study, spec, "", points, first_seeds)}
        tasks |= {t.key: t for t in plan_tasks(study, spec, "", deciding, later)} if later else {}
        return sum(study.stage_work(t.stage, dict(t.config), n) for t in tasks.values())

    at_first = trials(points, looks[0])
    first = (at_first + stages([])) * spec.sweep.num_samples
    last = (at_first + trials(deciding, len(later_seeds)) + stages(later_seeds)) * spec.sweep.num_samples
    per_hour = preset.seconds_per_image / 3600
    return first * per_hour, last * per_hour, last


def _stated_train_images(spec: Spec, preset: Preset) -> int:
    """Training images per epoch when the data is not readable here: the preset's count,
    capped at data.size, less validation (and test, when it is held out of the same set)."""
    n = min(spec.data.size, preset.train_images)
    return int(n * (1 - spec.data.val_fraction - spec.data.test_fraction))


def _comparison_lines(study: Study, spec: Spec, looks: tuple[int, ...]) -> list[str]:
    compares = study.comparisons(spec)
    deciding = sum(c.deciding for c in compares)
    reported = f", {len(compares) - deciding} reported (Holm over those)" if deciding < len(compares) else ""
    lines = [f"comparisons ({study.report_metric}): {deciding} deciding (Holm over those){reported}:"]
    for c in compares:
        role = "" if c.deciding else " (reported)"
        metric = f", on {c.metric}" if c.metric and c.metric != study.report_metric else ""
        metric += " (lower is better)" if metric and not c.higher_is_better else ""
        lines.append(f"  {c.name}: {dict(c.a) if c.a is not None else 0} vs {dict(c.b)}, "
                     f"{c.question}{margin_text(c)}{metric}{role}")  # fmt: skip
    if len(looks) > 1:
        levels = ", ".join(f"{n}: {a:.3g}" for n, a in zip(looks, look_levels(looks)))
        deciding = points_of(study, spec, [c for c in compares if c.deciding])
        most = len(grid_points(spec)) * looks[0] + len(deciding) * (looks[-1] - looks[0])
        lines.append(
            f"seeds until decided: looks at {', '.join(map(str, looks))} seeds, up to "
            f"{most * spec.sweep.num_samples} trials (more seeds only for the "
            f"{len(deciding)} grid points of undecided comparisons); level per look "
            f"(O'Brien-Fleming-shaped, overall {ALPHA:g}): {levels}"
        )
    return lines
