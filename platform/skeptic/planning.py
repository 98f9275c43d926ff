"""Plan a sweep: the trials Tune will run (grid points x seeds x samples), what --dry-run
prints, and every check that can refuse a spec before anything starts."""

from __future__ import annotations

import json
from typing import Any

from ray import tune

from skeptic.preflight import check_resources, preflight
from skeptic.schema import Param
from skeptic.spec import (
    Dim,
    Spec,
    check_selection_metric,
    count_trials,
    grid_points,
    seed_looks,
)
from skeptic.stages import plan_tasks
from skeptic.stats import ALPHA, look_levels
from skeptic.study import Study


def check_before_start(study: Study, spec: Spec, address: str | None) -> None:
    """Everything a spec can be refused for, before Ray starts or anything is logged."""
    check_selection_metric(selection_metric(study, spec), "sweep.metric")
    preflight(study, spec)
    check_resources(spec, address)


def selection_metric(study: Study, spec: Spec) -> str:
    """What Tune optimises and the champion is chosen by: sweep.metric, else the study's."""
    return spec.sweep.metric or study.metric


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
    """What --dry-run prints: the trial count and every grid point (after every check)."""
    check_before_start(study, spec, address)
    points = grid_points(spec)
    sweep, resources, looks = spec.sweep, spec.resources, seed_looks(spec)
    lines = [
        (
            f"study {study.name}: {count_trials(spec)} trials = {len(points)} grid points"
            f" x {looks[0]} seeds x {sweep.num_samples} samples"
        ),
        (
            f"scheduler {sweep.scheduler.kind}, per trial cpu={resources.cpu}"
            f" gpu={resources.gpu}, max concurrent {sweep.max_concurrent_trials or 'auto'}"
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
    lines += [f"  [{i}] {json.dumps(point, default=str)}" for i, point in enumerate(points)]
    return "\n".join(lines)


def _comparison_lines(study: Study, spec: Spec, looks: tuple[int, ...]) -> list[str]:
    compares = study.comparisons(spec)
    lines = [f"deciding comparisons ({study.report_metric}, Holm over {len(compares)}):"]
    for c in compares:
        margin = f" +-{c.margin:g}" if c.margin else ""
        lines.append(f"  {c.name}: {dict(c.a)} vs {dict(c.b)}, {c.question}{margin}")
    if len(looks) > 1:
        levels = ", ".join(f"{n}: {a:.3g}" for n, a in zip(looks, look_levels(looks)))
        lines.append(
            f"seeds until decided: looks at {', '.join(map(str, looks))} seeds, up to "
            f"{len(grid_points(spec)) * looks[-1] * spec.sweep.num_samples} trials; level per "
            f"look (O'Brien-Fleming-shaped, overall {ALPHA:g}): {levels}"
        )
    return lines
