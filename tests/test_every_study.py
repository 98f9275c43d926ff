"""Every study under jobs/ against what the platform relies on, the way timm's tests loop over
list_models(): a study added under jobs/ is checked here without touching a test.

Only the real studies (module under the `jobs` package): the session also registers test-only
studies (tests/fixtures/skeptic_test_studies, throwaway ones of other tests), skipped here.
The example in README.md's "Adding a study", read from the README, passes the same checks but
the slow one (test_the_readme_example_is_a_valid_study), so the README cannot drift from the
API.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ValidationError

from skeptic import study as studies
from skeptic.cli import main
from skeptic.contexts import OneProcess
from skeptic.device import pick_device, seed_everything
from skeptic.planning import check_before_start, sampled_dims, swept_names
from skeptic.schema import ENDED, SWEEP, MlflowTag, Tag
from skeptic.spec import Spec, count_trials, grid_points, load_spec, seed_looks, seed_values
from skeptic.stages import run_task, tasks_for
from skeptic.study import Study, TrialResult, Verdict, all_studies
from skeptic.trial import TrialSetup, trial_params

ROOT = Path(__file__).resolve().parents[1]
STUDY_PACKAGE = "jobs"
SPECS = pytest.mark.parametrize("smoke", [False, True], ids=["default", "smoke"])
VERDICTS = {Verdict(held, "").label for held in (True, False, None)}
SENTENCE_BREAK = re.compile(r"[.!?]\s+[A-Z]")  # "... worse. Also ..."
SMOKE_BUDGET_S = 300  # `--smoke` promises a minute or two on 2 cores; this guards the suite


def real_studies(package: str = STUDY_PACKAGE) -> dict[str, type[Study]]:
    """The registered studies whose module lives under `package`."""
    return {n: c for n, c in all_studies().items() if c.__module__.split(".")[0] == package}


STUDIES = real_studies()
every_study = pytest.mark.parametrize("name", sorted(STUDIES))


def spec_of(study: Study, smoke: bool) -> Spec:
    return load_spec(study.name, study.defaults, study.Params, study.smoke if smoke else None)


def trial_config(spec: Spec, point: dict[str, Any], seed: int) -> dict[str, Any]:
    """A trial's config as Tune hands it over; each sampled dimension at one fixed value."""
    sampled = {
        k: d.choice[0] if d.kind == "choice" else (d.uniform or d.loguniform)[0]
        for k, d in sampled_dims(spec).items()
    }
    return {"point": point, "seed": seed, **sampled}


def setup_of(spec: Spec) -> TrialSetup:
    """What trial_params needs of a sweep's setup (no MLflow, no Ray)."""
    return TrialSetup(spec, tracking_uri="", experiment_id="", parent_run_id="",
                      swept=swept_names(spec))  # fmt: skip


# ---- one trial, in this process, up to its first ctx.report ---------------------------------


class _Reported(Exception):
    """Raised by FirstEpoch.report: the first epoch's report is all the model checks need."""


@dataclass
class FirstEpoch(OneProcess):
    """A skeptic.api.TrialContext that keeps the trial's first report and stops it there."""

    params: Any
    seed: int
    device: torch.device
    data: dict[str, Any]
    upstream: dict[str, Any]
    start_epoch: int = 0
    state: dict[str, Any] | None = None
    reported: tuple[dict[str, float], dict[str, Any]] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: Any = None) -> None:
        self.reported = (dict(metrics), state)
        raise _Reported


@dataclass
class FirstReport:
    logged: dict[str, Any]  # the trial's MLflow params
    metrics: dict[str, float]
    state: dict[str, Any]  # what it checkpointed: "model" and "model_config" included
    classes: list[str] | None  # the class names prepare_data gave, if it gives them


def first_reports(study: Study) -> list[FirstReport]:
    """Each grid point of the smoke spec (first seed), trained the way its trial is (same
    params, data and upstream stages; see skeptic.trial.run_trial) up to its first report."""
    spec = spec_of(study, smoke=True)
    data = study.prepare_data(spec)
    setup, seed = setup_of(spec), spec.sweep.base_seed
    stage_results: dict[str, Any] = {}  # by task key: shared, as a sweep shares them
    threads = torch.get_num_threads()  # run_task sets the trial's thread count
    reports = []
    try:
        for point in grid_points(spec):
            params, logged = trial_params(study, setup, trial_config(spec, point, seed))
            upstream: dict[str, Any] = {}
            for stage, task in tasks_for(study, params, seed, salt="").items():
                if task.key not in stage_results:
                    stage_results[task.key] = run_task(study, task, data, dict(upstream), spec)
                upstream[stage] = stage_results[task.key]
            seed_everything(seed)
            ctx = FirstEpoch(params, seed, pick_device(spec.resources.gpu), data, upstream)
            with contextlib.suppress(_Reported):
                study.train(ctx)
            assert ctx.reported is not None, f"trial {logged} never called ctx.report"
            reports.append(FirstReport(logged, *ctx.reported, data.get("classes")))
    finally:
        torch.set_num_threads(threads)
    return reports


@functools.cache
def first_reports_of(name: str) -> list[FirstReport]:
    return first_reports(studies.get_study(name))


# ---- the checks, one helper each (the README example runs them all) -------------------------


def assert_spec_is_valid(study: Study, smoke: bool) -> None:
    spec = spec_of(study, smoke)  # raises SpecError naming the field
    check_before_start(study, spec, address=None)
    assert count_trials(spec) >= 1


def assert_dry_run_plans_the_trials(study: Study, smoke: bool, capsys: Any, cwd: Path) -> None:
    """Run in `cwd` (empty, the caller's chdir): it prints the plan and leaves nothing."""
    ray_was_running = ray.is_initialized()
    capsys.readouterr()
    code = main(["run", study.name, "--dry-run", *(["--smoke"] if smoke else [])])
    out, err = capsys.readouterr()
    assert code == 0, err
    trials = count_trials(spec_of(study, smoke))
    assert out.splitlines()[0].startswith(f"study {study.name}: {trials} trials = "), out
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert ray.is_initialized() == ray_was_running


def assert_model_gives_probabilities(study: Study, reports: list[FirstReport]) -> None:
    """Rebuilt as champion registration and the server rebuild it: from the JSON of the checkpointed
    model_config, the weights loaded, in eval mode; one probability row per input (or, for a
    model that scores its labels otherwise, one score row with each extra output per label).
    Every trial that may become the champion checkpoints its model."""
    for report in reports:
        trial = TrialResult("first", report.logged, [report.metrics], "completed")
        if not study.champion_eligible(trial):
            continue
        assert {"model", "model_config"} <= set(report.state), report.logged
        config = json.loads(json.dumps(report.state["model_config"], default=str))
        model = study.build_model(config)
        model.load_state_dict(report.state["model"])
        model.eval()
        example = study.model_input_example(config)
        if study.endpoints:  # a model with its own routes (text, say): each answers its example
            assert_endpoints_answer(study, model, example, report.logged)
            continue
        rng = np.random.default_rng(0)
        batch = rng.random((5, *example.shape[1:])).astype(example.dtype)  # inputs in [0, 1)
        for x in (example, batch):
            output = study.predict(model, x)
            scores = np.asarray(output["scores"] if isinstance(output, dict) else output)
            assert scores.ndim == 2 and scores.shape[0] == len(x), (report.logged, scores.shape)
            if report.classes is not None:
                assert scores.shape[1] == len(report.classes), (report.logged, scores.shape)
            assert np.isfinite(scores).all() and (scores >= 0).all(), report.logged
            if isinstance(output, dict):  # per-label extras: (inputs, labels, ...)
                for name, values in output.items():
                    assert np.asarray(values).shape[:2] == scores.shape, (name, report.logged)
                continue
            np.testing.assert_allclose(
                scores.sum(axis=1), 1.0, atol=1e-4, err_msg=str(report.logged)
            )


def assert_endpoints_answer(study: Study, model: Any, example: np.ndarray, logged: Any) -> None:
    """Each declared endpoint documents a request example, and the rebuilt model answers it
    with a valid response; the pyfunc answer (MLflow's) has one row per input."""
    assert len(study.predict(model, example)) == len(example), logged
    for endpoint in study.endpoints:
        examples = endpoint.request.model_json_schema().get("examples")
        assert examples, f"{endpoint.path}: the request schema gives no example for /docs"
        request = endpoint.request.model_validate(examples[0])
        answer = getattr(study, endpoint.handler)(model, request)
        endpoint.response.model_validate(answer)


def assert_trials_report_the_metric(study: Study, reports: list[FirstReport]) -> None:
    """Tune optimises it and the champion is chosen by it."""
    for report in reports:
        assert study.metric in report.metrics, (report.logged, sorted(report.metrics))
        assert np.isfinite(report.metrics[study.metric]), report.logged


def assert_run_names_are_unique(study: Study) -> None:
    for smoke in (False, True):
        spec = spec_of(study, smoke)
        setup = setup_of(spec)
        seeds = seed_values(spec, 0, seed_looks(spec)[-1])  # every seed the rule may run
        seen: dict[str, tuple] = {}
        for point in grid_points(spec):
            for seed in seeds:
                _, logged = trial_params(study, setup, trial_config(spec, point, seed))
                name = study.run_name(logged, setup.swept)
                assert isinstance(name, str) and name, (point, seed)
                assert name not in seen, (
                    f"{'smoke' if smoke else 'default'} spec: run name {name!r} for both "
                    f"{seen.get(name)} and {(point, seed)}"
                )
                seen[name] = (point, seed)


def forbids_unknown_keys(params: type[BaseModel]) -> bool:
    try:
        params.model_validate({"surely_not_a_parameter": 1})
    except ValidationError as err:
        return any(e["type"] == "extra_forbidden" for e in err.errors())
    return False


def assert_declarations(study: Study) -> None:
    assert isinstance(study.metric, str) and study.metric.strip()
    assert study.mode in ("min", "max")
    assert isinstance(study.paper, str) and study.paper.strip()
    belief = study.belief
    assert isinstance(belief, str) and belief.strip()
    assert "\n" not in belief.strip() and not SENTENCE_BREAK.search(belief), (
        f"belief: one sentence, got {belief!r}"
    )
    assert forbids_unknown_keys(study.Params), (
        "Params must forbid unknown keys: model_config = ConfigDict(extra='forbid')"
    )
    assert "fifo" in study.schedulers, f"schedulers {study.schedulers}: fifo must be allowed"


# ---- every study ------------------------------------------------------------------------------


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, and the default store (./mlflow.db) and local Ray."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cwd


def test_there_are_studies_and_every_study_module_imports():
    assert STUDIES, f"no study found under {STUDY_PACKAGE}/"
    all_studies()
    broken = {m: why for m, why in studies.BROKEN.items() if m.split(".")[0] == STUDY_PACKAGE}
    assert not broken, f"study modules that fail to import (and are not tested): {broken}"


@SPECS
@every_study
def test_spec_validates_and_passes_the_checks_before_start(name, smoke):
    assert_spec_is_valid(studies.get_study(name), smoke)


@SPECS
@every_study
def test_dry_run_prints_the_trial_count_and_creates_no_files(name, smoke, capsys, empty_cwd):
    assert_dry_run_plans_the_trials(studies.get_study(name), smoke, capsys, empty_cwd)


@every_study
def test_a_trials_model_rebuilds_and_gives_one_probability_row_per_input(name):
    assert_model_gives_probabilities(studies.get_study(name), first_reports_of(name))


@every_study
def test_a_trial_reports_the_study_metric(name):
    assert_trials_report_the_metric(studies.get_study(name), first_reports_of(name))


@every_study
def test_run_names_are_unique_per_grid_point_and_seed(name):
    assert_run_names_are_unique(studies.get_study(name))


@every_study
def test_metric_mode_belief_paper_params_and_schedulers_are_declared(name):
    assert_declarations(studies.get_study(name))


@pytest.mark.slow
@every_study
def test_smoke_sweep_runs_end_to_end(name, smoke_sweep):
    study = studies.get_study(name)
    uri, folder, took = smoke_sweep(name)  # run once per session, shared with its own tests
    print(f"\n{name} --smoke: {took:.1f} s")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == SWEEP]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get(Tag.VERDICT) in VERDICTS
    trials = [
        r for r in runs
        if r.data.tags.get(MlflowTag.PARENT_RUN_ID) == parent.info.run_id
        and Tag.STAGE not in r.data.tags
    ]  # fmt: skip
    assert len(trials) == count_trials(spec_of(study, smoke=True))
    assert all(t.data.tags.get(Tag.OUTCOME) in ENDED for t in trials)
    (report,) = (folder / "runs" / name).glob("*/report/report.md")
    text = report.read_text()
    assert "- **tracking**: sqlite:///mlflow.db" in text  # relative: no path of this machine
    assert "## The paper beside this run" in text and "| direction agrees |" in text
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags.get(Tag.METRIC) == study.metric
    assert champion.run_id in {t.info.run_id for t in trials}
    assert took < SMOKE_BUDGET_S, f"{name} --smoke took {took:.0f} s"


# ---- the README's example -----------------------------------------------------------------------

README_PACKAGE = "readme_example_studies"
# the standard library, torch, numpy and pydantic; of Skeptic only its study API
ALLOWED_IMPORTS = {*sys.stdlib_module_names, "__future__", "torch", "numpy", "pydantic"}


def readme_example() -> tuple[str, str, str]:
    """From README.md's "Adding a study": the folder under jobs/, its __init__.py line, and
    the study module (the section's python block)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Adding a study\n", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    folder = re.search(rf"`{STUDY_PACKAGE}/(\w+)/study\.py`", section)
    init = re.search(r"`(from \. import study[^`]*)`", section)
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert folder and init and code, "README: Adding a study lost its example"
    return folder[1], init[1], code[1]


def imported_modules(code: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.fixture
def readme_study(tmp_path, monkeypatch) -> Iterator[tuple[str, str]]:
    """The README's example saved as <tmp>/readme_example_studies/<folder>/ and found the way
    studies are (SKEPTIC_STUDY_PACKAGES); the registry is put back afterwards."""
    folder, init, code = readme_example()
    package = tmp_path / "studies" / README_PACKAGE / folder
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text(init + "\n")
    (package / "study.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "studies"))
    packages = os.environ.get("SKEPTIC_STUDY_PACKAGES", STUDY_PACKAGE)
    monkeypatch.setenv("SKEPTIC_STUDY_PACKAGES", f"{packages},{README_PACKAGE}")
    # The study registry's module-level dicts (name -> class, BROKEN) are copies during the test.
    for key, value in list(vars(studies).items()):
        if isinstance(value, dict) and not key.startswith("__"):
            monkeypatch.setattr(studies, key, dict(value))
    try:
        yield folder, code
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == README_PACKAGE]:
            del sys.modules[module]


def test_the_readme_example_is_a_valid_study(readme_study, capsys, empty_cwd):
    folder, code = readme_study
    modules = imported_modules(code)
    assert {m for m in modules if m.split(".")[0] not in ALLOWED_IMPORTS} == {"skeptic.api"}
    found = real_studies(README_PACKAGE)  # what this module's tests take from jobs/
    assert list(found) == [folder], (found, studies.BROKEN)
    study = studies.get_study(folder)
    assert_declarations(study)
    for smoke in (False, True):
        assert_spec_is_valid(study, smoke)
        assert_dry_run_plans_the_trials(study, smoke, capsys, empty_cwd)
    assert_run_names_are_unique(study)
    reports = first_reports(study)
    assert_model_gives_probabilities(study, reports)
    assert_trials_report_the_metric(study, reports)
