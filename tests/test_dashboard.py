"""The MLflow UI is where a sweep is reviewed: what a smoke sweep writes for it (the parent
run's description, the champion version's description and tags, the experiment's kind and
runs view), and the same pages loaded in a real headless Chromium from a real `mlflow server`
over that sweep's store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from netutil import healthy

from serving.control import free_port
from skeptic import review, tracking
from skeptic.schema import SWEEP, TRAINING_EXPERIMENT, Metric, MlflowTag, Tag
from skeptic.study import get_study

STUDY = "large_batch"


@pytest.fixture(scope="module")
def sweep(smoke_sweep):
    """The large_batch smoke sweep's store: (client, experiment id, parent run, folder)."""
    uri, folder, _ = smoke_sweep(STUDY)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    (parent,) = client.search_runs(
        [experiment.experiment_id], f"tags.`{Tag.KIND}` = '{SWEEP}'"
    )
    return client, experiment, parent, folder


def _decided(parent) -> dict[str, str]:
    """Each deciding comparison of the sweep, and its decision (the parent's tags)."""
    prefix = Tag.decision("")
    tags = parent.data.tags
    decided = {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}
    assert decided, "the sweep has no deciding comparison"
    return decided


def test_the_experiment_is_a_model_training_experiment_with_a_runs_view(sweep):
    _, experiment, parent, _ = sweep
    assert experiment.tags[MlflowTag.EXPERIMENT_KIND] == TRAINING_EXPERIMENT
    view = experiment.tags[MlflowTag.SHARED_VIEW + review.VIEW_KEY]
    for comparison in _decided(parent):
        assert Metric.comparison(comparison, "diff") in view


@pytest.mark.parametrize(
    ("kind", "after"),
    [
        (None, TRAINING_EXPERIMENT),  # made by an older Skeptic
        ("genai_development_inferred", TRAINING_EXPERIMENT),  # only the UI's guess
        ("finetuning", "finetuning"),  # somebody's choice: left alone
    ],
)
def test_an_existing_experiment_becomes_a_training_experiment_when_a_sweep_logs_there(
    mlflow_store, kind, after
):
    client = MlflowClient(mlflow_store)
    tags = {MlflowTag.EXPERIMENT_KIND: kind} if kind else None
    made = client.create_experiment("older", tags=tags)
    assert tracking.ensure_experiment(client, "older", mlflow_store) == made
    assert client.get_experiment(made).tags.get(MlflowTag.EXPERIMENT_KIND) == after


def test_the_parent_run_description_is_the_verdict_with_its_evidence(sweep):
    _, experiment, parent, _ = sweep
    note, tags = parent.data.tags[MlflowTag.NOTE], parent.data.tags
    study = get_study(STUDY)
    assert note.startswith(f"**The belief {tags[Tag.VERDICT].upper()}**")
    assert study.belief in note and study.paper in note
    assert "95% CI" in note and "p (Holm)" in note
    for comparison, decision in _decided(parent).items():
        row = next(line for line in note.splitlines() if line.startswith(f"| {comparison} |"))
        assert f"**{decision}**" in row
        ci_low = parent.data.metrics[Metric.comparison(comparison, "ci_low")]
        assert f"[{ci_low:+.4g}," in row  # the same numbers as the parent's metrics
    report = review.artifact_page(experiment.experiment_id, parent.info.run_id, "report/report.html")
    assert f"[report]({report})" in note
    version = tags[Tag.CHAMPION_VERSION]
    assert review.version_page(STUDY, version) in note
    assert "trials over" in note and "seeds" in note


def test_the_champion_version_says_where_it_came_from(sweep):
    client, experiment, parent, _ = sweep
    version = client.get_model_version(STUDY, parent.data.tags[Tag.CHAMPION_VERSION])
    tags = parent.data.tags
    assert version.tags[Tag.SWEEP_ID] == tags[Tag.SWEEP_ID]
    assert version.tags[Tag.VERDICT] == tags[Tag.VERDICT]
    assert version.tags[MlflowTag.PARENT_RUN_ID] == parent.info.run_id
    assert version.tags[Tag.SPLIT] == "validation"
    metric = version.tags[Tag.METRIC]
    assert metric.startswith("val_")
    trial = client.get_run(version.run_id)
    assert version.tags[Tag.param("seed")] == trial.data.params["seed"]
    assert float(version.tags[Tag.score(metric)]) == pytest.approx(trial.data.metrics[metric])
    text = version.description
    assert tags[Tag.SWEEP_ID] in text and f"**{tags[Tag.VERDICT]}**" in text
    assert review.run_page(experiment.experiment_id, parent.info.run_id) in text
    assert f"{metric} = " in text and "validation split" in text
    assert client.get_registered_model(STUDY).description.startswith(get_study(STUDY).belief)


# --- the same, in a real browser --------------------------------------------------------




@pytest.fixture(scope="module")
def ui(sweep):
    """A real `mlflow server` on 127.0.0.1 over the sweep's store; stopped even on failure."""
    client, _, _, folder = sweep
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", client.tracking_uri,
        "--default-artifact-root", (Path(folder) / "mlartifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while not healthy(url):
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# The UI opens its assistant panel on a first visit, which hides half of the runs table
# (and the table draws only the columns in view).
NO_ASSISTANT = """
window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
"""


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 2600, "height": 1000})
    context.add_init_script(NO_ASSISTANT)
    try:
        yield context.new_page()
    finally:
        context.close()


def _open(page, url: str, text: str) -> str:
    """Load a UI page and wait until `text` renders; return the page's text."""
    page.goto(url)
    page.get_by_text(text).first.wait_for(timeout=60_000)
    return page.inner_text("body")


@pytest.mark.slow
def test_the_runs_list_opens_in_the_training_view_with_the_deciding_numbers(sweep, ui, page):
    _, experiment, parent, _ = sweep
    body = _open(page, ui + review.runs_page(experiment.experiment_id), parent.info.run_name[:20])
    assert "Group by" in body and "Columns" in body  # the training runs table
    assert "Detect Issues" not in body and "Token Usage" not in body  # not the GenAI overview
    for comparison in _decided(parent):
        assert Metric.comparison(comparison, "diff") in body  # a column of the runs list


@pytest.mark.slow
def test_the_parent_run_page_shows_the_verdict_and_its_comparisons(sweep, ui, page):
    _, experiment, parent, _ = sweep
    label = parent.data.tags[Tag.VERDICT].upper()
    body = _open(page, ui + review.run_page(experiment.experiment_id, parent.info.run_id),
                 f"The belief {label}")  # fmt: skip
    assert "No description" not in body
    for comparison in _decided(parent):
        assert comparison in body
    assert "95% CI" in body and "Belief:" in body


@pytest.mark.slow
def test_the_champion_version_page_shows_its_description(sweep, ui, page):
    _, _, parent, _ = sweep
    version = parent.data.tags[Tag.CHAMPION_VERSION]
    body = _open(page, ui + review.version_page(STUDY, version), "the best trial of sweep")
    assert parent.data.tags[Tag.SWEEP_ID] in body
    assert "validation split" in body


@pytest.mark.parametrize(
    ("uri", "ui"),
    [
        ("sqlite:///mlflow.db", "http://127.0.0.1:5000"),  # `skeptic ui` serves it
        ("http://me:secret@mlflow.lab:5000", "http://mlflow.lab:5000"),  # the server's own UI
    ],
)
def test_a_finished_run_prints_its_parent_runs_page_in_the_ui_of_its_store(capsys, uri, ui):
    from skeptic.cli import _print_outcome
    from skeptic.runner import SweepOutcome
    from skeptic.study import Verdict

    outcome = SweepOutcome("s", "sweep", "run1", Verdict(None, ""), Path("r.md"), [], None, "3", uri)
    _print_outcome(outcome)
    out = capsys.readouterr().out
    assert f"{ui}/{review.run_page('3', 'run1')}" in out
    assert "secret" not in out
    line = next(x for x in out.splitlines() if x.startswith("mlflow:"))
    assert ("skeptic ui" in line) == uri.startswith("sqlite")


@pytest.mark.slow
def test_skeptic_ui_stopped_by_sigterm_leaves_no_server_behind(mlflow_store, tmp_path):
    import psutil

    port = free_port()
    cmd = [sys.executable, "-m", "skeptic", "ui", "--port", str(port), "--tracking-uri", mlflow_store]
    ui = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list = []
    try:
        deadline = time.monotonic() + 90
        while not healthy(f"http://127.0.0.1:{port}"):
            assert ui.poll() is None and time.monotonic() < deadline, "skeptic ui did not start"
            time.sleep(0.5)
        children = psutil.Process(ui.pid).children(recursive=True)
        assert children, "the UI server runs in a child process"
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
        assert not healthy(f"http://127.0.0.1:{port}")
    finally:
        if ui.poll() is None:
            ui.kill()
        for proc in children:
            with contextlib.suppress(psutil.Error):
                proc.kill()
