"""Staged sweeps: upstream stages run once per (config, seed), are shared by the trials,
cached across sweeps by key, and fail the sweep clearly."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from skeptic_test_studies.staged import base_value

from skeptic.cli import main

pytestmark = pytest.mark.slow


def _runs(uri: str) -> tuple[list, list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("staged")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    stages = [r for r in runs if "skeptic.stage" in r.data.tags]
    trials = [r for r in runs if "skeptic.trial_id" in r.data.tags]
    return parents, stages, trials


def _run(tmp_path, *sets: str) -> int:
    args = ["run", "staged", "--storage", str(tmp_path / "runs")]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_stages_run_once_per_config_and_seed_are_shared_and_reused(
    ray_session, mlflow_store, tmp_path
):
    assert _run(tmp_path, "sweep.space.offset.grid=[0.0, 0.5]") == 0
    parents, stages, trials = _runs(mlflow_store)
    assert len(trials) == 2 * 2 * 2  # width x offset x seed
    assert len(stages) == 2 * 2  # width x seed: the offsets share
    assert {(r.data.params["width"], r.data.params["seed"]) for r in stages} == {
        ("2", "0"),
        ("2", "1"),
        ("3", "0"),
        ("3", "1"),
    }
    assert all(r.info.status == "FINISHED" for r in stages + trials)
    _check_lineage(stages, trials)

    # A second sweep reuses what the first finished: width 2 is cached, width 5 is new.
    assert _run(tmp_path, "sweep.space.offset.grid=[1.0]", "sweep.space.width.grid=[2, 5]") == 0
    parents, stages, trials = _runs(mlflow_store)
    assert len(stages) == 4 + 2 and len(trials) == 8 + 4
    second = max(parents, key=lambda r: r.info.start_time)
    assert second.data.tags["skeptic.stages_reused"] == "2"
    _check_lineage(stages, trials)


def _check_lineage(stages: list, trials: list) -> None:
    """Every trial read the result of the stage run for its own width and seed."""
    stage_of = {r.info.run_id: r for r in stages}
    for trial in trials:
        width, seed = int(trial.data.params["width"]), int(trial.data.params["seed"])
        assert trial.data.metrics["base_value"] == base_value(width, seed)
        lineage = stage_of[trial.data.tags["skeptic.upstream.base"]]
        assert (lineage.data.params["width"], lineage.data.params["seed"]) == (
            str(width),
            str(seed),
        )


def test_unshared_stages_run_inside_every_trial(ray_session, mlflow_store, tmp_path):
    assert (
        _run(tmp_path, "sweep.share_stages=false", "sweep.seeds=1", "sweep.space.offset.grid=[0.0]")
        == 0
    )
    _, stages, trials = _runs(mlflow_store)
    assert stages == [] and len(trials) == 2
    assert all(
        t.data.metrics["base_value"] == base_value(int(t.data.params["width"]), 0) for t in trials
    )


def test_a_failing_stage_fails_the_sweep_and_names_the_stage(
    ray_session, mlflow_store, tmp_path, capsys
):
    assert (
        _run(tmp_path, "train.fail_stage=true", "sweep.seeds=1", "sweep.space.width.grid=[2]") == 1
    )
    err = capsys.readouterr().err
    assert "stage base failed" in err and "stage asked to fail" in err
    parents, stages, trials = _runs(mlflow_store)
    assert trials == [] and parents[0].info.status == "FAILED"
    assert stages and all(r.info.status == "FAILED" for r in stages)


def test_a_stage_may_not_depend_on_a_sampled_parameter(mlflow_store, tmp_path, capsys):
    assert _run(tmp_path, 'sweep.space.width={"choice": [2, 3]}') == 2
    assert "stage 'base' depends on them" in capsys.readouterr().err
