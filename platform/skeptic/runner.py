"""`skeptic run`: one study, swept by Ray Tune, tracked in MLflow, judged, its champion registered.

Read top to bottom: check the spec, prepare the data and the MLflow store while Ray
starts, open the parent run, run the shared stages and then every trial on Tune
(`skeptic.tuning`, `skeptic.trial`), collect the results (`skeptic.results`), judge,
report, register the best trial (`skeptic.champion`). Ctrl-C and SIGTERM stop it cleanly
(`skeptic.interrupt`); `resume_sweep` finishes what was stopped (`skeptic.record`).
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient

from skeptic import store, tracking
from skeptic.champion import Registration, best_trial, register_best, registered_before
from skeptic.connect import init_ray
from skeptic.data import data_hash
from skeptic.interrupt import Interrupted, StopOnSignal
from skeptic.planning import check_before_start, selection_metric, selection_mode
from skeptic.record import SweepRecord, sweep_folder
from skeptic.report import write_report
from skeptic.results import count_ended
from skeptic.review import VIEW_KEY, SweepFacts, SweepRef, runs_view, sweep_description
from skeptic.rounds import Sweep, run_rounds
from skeptic.schema import Artifact, MlflowTag, Outcome, Param, Tag
from skeptic.spec import Spec, SpecError, count_trials, validate_spec
from skeptic.stages import code_hash
from skeptic.stats import Judged
from skeptic.study import Study, TrialResult, Verdict, get_study


@dataclass
class SweepOutcome:
    study: str
    sweep_id: str
    parent_run_id: str
    verdict: Verdict
    report: Path
    results: list[TrialResult]
    registration: Registration | None  # the best trial's model version, if any
    experiment_id: str = ""
    tracking_uri: str = ""


class Phases(dict[str, float]):
    """Seconds per phase of the sweep, logged to its parent run (tracking.log_phases)."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = time.perf_counter() - start


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
    """Check the spec, prepare data and store while Ray starts, open the parent run, run
    every trial, judge, register."""
    check_before_start(study, spec, address)
    uri = store.resolve_tracking_uri(tracking_uri)
    sweep_id = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = sweep_folder(storage, study.name, sweep_id)
    print(f"sweep {sweep_id}: {count_trials(spec)} trials; preparing data", flush=True)
    phases = Phases()
    data, client = _prepare_while_ray_starts(study, spec, uri, address, phases)
    experiment_id = tracking.ensure_experiment(client, study.name, uri)
    artifacts = client.get_experiment(experiment_id).artifact_location
    print(
        f"  mlflow: {uri}, experiment {study.name} (artifacts in {artifacts})\n"
        f"  folder: {folder} (Tune's results and checkpoints, the report)",
        flush=True,
    )
    parent = tracking.start_parent_run(
        client, experiment_id, sweep_id, study, spec, data_hash(data), count_trials(spec)
    )
    record = SweepRecord(
        sweep_id, study.name, spec.model_dump(mode="json"), uri, experiment_id, parent,
        str(folder), command,
    )  # fmt: skip
    record.save()
    return _execute(study, spec, record, data, verbose, register, False, phases)


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
    print(f"resuming sweep {sweep_id}; preparing data", flush=True)
    phases = Phases()
    data, client = _prepare_while_ray_starts(study, spec, record.tracking_uri, address, phases)
    recorded = client.get_run(record.parent_run_id).data.tags.get(Tag.DATA_HASH)
    if recorded != data_hash(data):
        raise SpecError(f"sweep {sweep_id}: the data differs from the data it started with")
    client.update_run(record.parent_run_id, status="RUNNING")
    return _execute(study, spec, record, data, verbose, register, True, phases)


def _prepare_while_ray_starts(
    study: Study, spec: Spec, uri: str, address: str | None, phases: Phases
) -> tuple[dict[str, Any], MlflowClient]:
    """The study's data and the MLflow store (a new SQLite store takes seconds to create),
    prepared in a thread while Ray starts here: ray.init must run on the main thread (its
    processes die with the thread that started them). Nothing is logged yet."""

    def data_and_store() -> tuple[dict[str, Any], MlflowClient]:
        with phases.timed("data"):
            data = study.prepare_data(spec)
        with phases.timed("store"):
            return data, store.open_store(uri)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        prepared = pool.submit(data_and_store)
        with phases.timed("ray_start"):
            init_ray(address)
        return prepared.result()


def _execute(
    study: Study, spec: Spec, record: SweepRecord, data: dict, verbose: bool, register: str,
    restore: bool, phases: Phases,
) -> SweepOutcome:  # fmt: skip
    """Run the rounds of trials under StopOnSignal, judge and register; close the parent run."""
    client = MlflowClient(record.tracking_uri)
    tracking.set_active_uri(record.tracking_uri)

    def close_killed(outcome: Outcome) -> None:
        tracking.close_sweep(client, record.experiment_id, record.parent_run_id, "KILLED", outcome)

    sweep = Sweep(study, spec, record, ray.put(data), data_hash(data)[:16] + code_hash(study))
    status = "FAILED"
    with StopOnSignal(close_killed) as stop:
        try:
            if run_rounds(sweep, client, verbose, restore, stop, phases):
                outcome = _conclude(sweep, client, register, phases)
                tracking.log_phases(client, record.parent_run_id, phases)
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
    ended = count_ended(client, record)
    planned = max(sweep.planned, count_trials(spec))
    raise Interrupted(stop.signum or signal.SIGINT, ended, planned, record.resume_command())


def _conclude(sweep: Sweep, client: MlflowClient, register: str, phases: Phases) -> SweepOutcome:
    """The verdict from the judged comparisons and the study's rule, the report, the champion."""
    study, record = sweep.study, sweep.record
    with phases.timed("verdict"):
        results = [t for t, _ in sweep.collected]
        verdict = _verdict(study, sweep.spec, results, sweep.judged)
        report = _report(study, verdict, record, client, len(results))
        tracking.log_decisions(client, record.parent_run_id, sweep.judged)
    with phases.timed("register"):
        chosen = (selection_metric(study, sweep.spec), selection_mode(study, sweep.spec))
        registration = _register(study, record, client, sweep.collected, verdict, register, chosen)
    parent = record.parent_run_id
    _describe(study, verdict, record, client, results, registration)
    return SweepOutcome(
        study.name, record.sweep_id, parent, verdict, report, results, registration,
        record.experiment_id, record.tracking_uri,
    )  # fmt: skip


def _verdict(study: Study, spec: Spec, results: list[TrialResult], judged: list[Judged]) -> Verdict:
    """The label from the study's rule over its decided comparisons; the evidence its own."""
    held, reason = study.decide({j.compare.name: j for j in judged})
    evidence = study.evidence(results, spec, judged)
    summary = "\n".join([reason, *(j.line() for j in judged), evidence.summary]).strip()
    return Verdict(
        held, summary, evidence.table, evidence.figures, evidence.details, judged, evidence.paper,
        reason,
    )  # fmt: skip


def _report(
    study: Study, verdict: Verdict, record: SweepRecord, client: MlflowClient, n_trials: int
) -> Path:
    parent = record.parent_run_id
    facts = {
        "sweep": record.sweep_id, "trials": n_trials, "tracking": store.shown_uri(record.tracking_uri),
        "parent run": parent, "git commit": client.get_run(parent).data.tags.get(Tag.GIT_COMMIT),
    }  # fmt: skip
    report = write_report(study, verdict, Path(record.folder) / "report", facts, record.command)
    client.log_artifacts(parent, str(report.parent), artifact_path=Artifact.REPORT)
    client.set_tag(parent, Tag.VERDICT, verdict.label)
    client.set_tag(parent, Tag.VERDICT_SUMMARY, verdict.summary[:4000])
    return report


def _describe(
    study: Study, verdict: Verdict, record: SweepRecord, client: MlflowClient,
    results: list[TrialResult], registration: Registration | None,
) -> None:  # fmt: skip
    """The verdict and its evidence as the parent run's description, for the MLflow UI."""
    facts = SweepFacts(
        _ref(record), len(results),
        len({t.params.get(Param.SEED) for t in results}),
        client.get_run(record.parent_run_id).info.start_time,
        registration.version if registration else None,
    )  # fmt: skip
    client.set_tag(record.parent_run_id, MlflowTag.NOTE, sweep_description(study, verdict, facts))
    view = runs_view(study, verdict.comparisons)
    client.set_experiment_tag(record.experiment_id, MlflowTag.SHARED_VIEW + VIEW_KEY, view)


def _ref(record: SweepRecord) -> SweepRef:
    return SweepRef(record.sweep_id, record.experiment_id, record.parent_run_id)


def _register(
    study: Study, record: SweepRecord, client: MlflowClient,
    collected: list[tuple[TrialResult, Any]], verdict: Verdict, policy: str,
    chosen: tuple[str, str],
) -> Registration | None:  # fmt: skip
    """Register the best trial by the selection metric and mode (`chosen`), once per sweep
    (a resumed sweep is judged again)."""
    metric, mode = chosen
    best = best_trial(study, collected, metric, mode)
    if best is None:
        return None
    tags = client.get_run(record.parent_run_id).data.tags
    if tags.get(Tag.CHAMPION_RUN_ID) == best[0].run_id:
        return registered_before(study, tags[Tag.CHAMPION_VERSION])
    registration = register_best(study, best, _ref(record), verdict, policy, metric, mode)
    client.set_tag(record.parent_run_id, Tag.CHAMPION_VERSION, registration.version)
    client.set_tag(record.parent_run_id, Tag.CHAMPION_RUN_ID, best[0].run_id)
    return registration
