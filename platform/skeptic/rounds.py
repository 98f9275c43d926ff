"""The sweep's trials, in rounds: one round with a fixed number of seeds; with a seed rule
(`sweep.seeds: {min, max, step}`), one round per look: after each, the deciding comparisons
are judged at that look's level (`skeptic.stats.look_levels`), and the next round adds
seeds only to the trials of the comparisons still undecided, until all are decided or
`max` is reached. Each round is a Tune experiment of its own (record.round_folder); the
sweep's record says which round is in progress, so a resumed sweep continues the rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from skeptic import tracking
from skeptic.interrupt import StopOnSignal
from skeptic.planning import point_values, points_of, swept_names
from skeptic.record import SweepRecord
from skeptic.results import check_judgeable, collect
from skeptic.schema import Tag
from skeptic.spec import Spec, grid_points, seed_looks, seed_values
from skeptic.stages import StageResults, StageSetup, run_stages
from skeptic.stats import Compare, Decision, Judged, judge, look_levels
from skeptic.study import Study, TrialResult
from skeptic.trial import TrialSetup
from skeptic.tuning import Round, make_tuner


@dataclass
class Sweep:
    """What the rounds need and what they produced."""

    study: Study
    spec: Spec
    record: SweepRecord
    data_ref: Any
    salt: str  # data hash + study code hash: part of every stage task's key
    collected: list[tuple[TrialResult, Any]] = field(default_factory=list)
    decided: dict[str, Judged] = field(default_factory=dict)
    planned: int = 0  # trials of the rounds started so far

    @property
    def judged(self) -> list[Judged]:
        """Every deciding comparison, in the study's order, as last judged."""
        return [self.decided[c.name] for c in self.study.comparisons(self.spec)]


def run_rounds(
    sweep: Sweep, client: MlflowClient, verbose: bool, resuming: bool, stop: StopOnSignal,
    seconds: dict[str, float],
) -> bool:  # fmt: skip
    """Run every round the seed rule calls for; False when a signal stopped the sweep."""
    spec, record = sweep.spec, sweep.record
    looks = seed_looks(spec)
    levels = look_levels(looks)
    tracking.log_looks(client, record.parent_run_id, looks, levels)
    compares = sweep.study.comparisons(spec)
    for look in range(len(looks)):
        run = _round(sweep, look, looks, _open(sweep, compares, deciding_only=True))
        sweep.planned += run.trials * spec.sweep.num_samples
        grid = _results(sweep, run, look, verbose, resuming, stop, seconds)
        if grid is None:
            return False
        check_judgeable(grid, client, record, run.trials * spec.sweep.num_samples)
        sweep.collected += collect(grid, client, record)
        judged = _judge_look(sweep, compares, levels[look], final=look == len(looks) - 1)
        tracking.log_look(client, record.parent_run_id, look, looks[look], judged)
        record.round = look + 1
        record.save()
        if not _open(sweep, compares, deciding_only=True):
            break
    return True


def _open(sweep: Sweep, compares: list[Compare], deciding_only: bool) -> list[Compare]:
    """The comparisons still to judge: undecided deciding ones, and (unless
    `deciding_only`) every reported one, judged again as seeds come."""
    return [
        c for c in compares
        if (c.deciding and c.name not in sweep.decided) or (not c.deciding and not deciding_only)
    ]  # fmt: skip


def _judge_look(sweep: Sweep, compares: list[Compare], level: float, final: bool) -> list[Judged]:
    """Judge the open comparisons at this look's level; a deciding one stays decided from
    the look that decided it (or that cannot be decided: an arm the sweep does not run)."""
    study, spec = sweep.study, sweep.spec
    results = [t for t, _ in sweep.collected]
    judged = judge(_open(sweep, compares, deciding_only=False), results, study.report_metric,
                   level, final)  # fmt: skip
    for j in judged:
        c = j.compare
        settled = j.decision != Decision.UNDECIDED or not _both_arms_planned(study, spec, c)
        if final or not c.deciding or settled:
            sweep.decided[c.name] = j
    return judged


def _round(sweep: Sweep, look: int, looks: tuple[int, ...], open_: list[Compare]) -> Round:
    """The trials of one look: every grid point at first, then the points of the
    comparisons still open, each with the seeds this look adds."""
    spec = sweep.spec
    points = grid_points(spec) if look == 0 else points_of(sweep.study, spec, open_)
    seeds = seed_values(spec, looks[look - 1] if look else 0, looks[look])
    label = f"look {look + 1}/{len(looks)} ({looks[look]} seeds)" if len(looks) > 1 else ""
    return Round(sweep.record.round_folder(look), points, seeds, label)


def _both_arms_planned(study: Study, spec: Spec, compare: Compare) -> bool:
    """Whether the sweep's grid has trials in both arms of `compare`."""
    sides = {_point_side(study, spec, point, compare) for point in grid_points(spec)}
    return {"a", "b"} <= sides


def _point_side(study: Study, spec: Spec, point: dict, compare: Compare) -> str | None:
    return compare.side(point_values(study, spec, point))


def _results(
    sweep: Sweep, run: Round, look: int, verbose: bool, resuming: bool, stop: StopOnSignal,
    seconds: dict[str, float],
) -> Any:  # fmt: skip
    """Tune's results of one round: read back if it ended before a stop, else run (or
    continue) it. None when a signal stopped it."""
    restore = resuming and tune.Tuner.can_restore(str(run.folder))
    if look < sweep.record.round:  # this round ended before the sweep was stopped
        return _tuner(sweep, run, look, StageResults(), verbose, True).get_results()
    started = time.perf_counter()
    shared = _shared_stages(sweep, run)
    seconds["stages"] = seconds.get("stages", 0.0) + time.perf_counter() - started
    tuner = _tuner(sweep, run, look, shared, verbose, restore)
    started = time.perf_counter()
    with stop.tune_running():
        grid = tuner.fit()
    seconds["trials"] = seconds.get("trials", 0.0) + time.perf_counter() - started
    return None if stop.signum is not None else grid


def _tuner(
    sweep: Sweep, run: Round, look: int, shared: StageResults, verbose: bool, restore: bool
) -> tune.Tuner:
    spec, record = sweep.spec, sweep.record
    setup = TrialSetup(
        spec, record.tracking_uri, record.experiment_id, record.parent_run_id, swept_names(spec),
        sweep.salt, shared, started_at=time.time(), round=look, folder=str(run.folder),
    )  # fmt: skip
    return make_tuner(sweep.study, spec, setup, sweep.data_ref, run, verbose, restore)


def _shared_stages(sweep: Sweep, run: Round) -> StageResults:
    """The upstream stages this round's trials need (run once, or reused from MLflow)."""
    spec, record = sweep.spec, sweep.record
    if not spec.sweep.share_stages:
        return StageResults()
    setup = StageSetup(spec, record.tracking_uri, record.experiment_id, record.parent_run_id)
    shared = run_stages(sweep.study, spec, setup, sweep.data_ref, sweep.salt, run.points, run.seeds)
    if shared.reused:
        client = MlflowClient(record.tracking_uri)
        client.set_tag(record.parent_run_id, Tag.STAGES_REUSED, str(shared.reused))
    return shared
