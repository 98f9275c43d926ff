"""End to end: `skeptic run large_batch --smoke` on a real local Ray into a temporary
MLflow store, then read MLflow back and load the champion in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

EXPECTED_EPOCHS = {"SB": 2, "LB": 2, "+RA": 16}  # smoke: 2 epochs; +RA adapts 256/32 = 8x


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    uri, tmp, _ = smoke_sweep("large_batch")  # shared with tests/test_every_study.py
    return uri, tmp


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("large_batch")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_parent_and_children_are_nested(smoke_run):
    uri, _ = smoke_run
    client, parents, children = _runs(uri)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skeptic.verdict"] in ("held", "overturned", "undecided")
    assert len(parent.data.tags["skeptic.git_commit"]) >= 7
    assert len(parent.data.tags["skeptic.data_hash"]) == 64
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["arm"] for c in children) == sorted(EXPECTED_EPOCHS)
    assert len({c.data.tags["skeptic.trial_id"] for c in children}) == len(children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/arms.png", "report/report.html"} <= artifacts
    assert any(a.path.endswith("spec.yaml") for a in client.list_artifacts(parent.info.run_id, "reproduce"))


def test_children_carry_params_and_per_epoch_metrics(smoke_run):
    uri, _ = smoke_run
    client, _, children = _runs(uri)
    for child in children:
        arm = child.data.params["arm"]
        assert child.info.status == "FINISHED"
        assert child.data.tags["skeptic.outcome"] == "completed"
        assert child.data.tags["skeptic.device"] == "cpu"
        assert child.info.run_name.startswith(f"{arm}-bs{child.data.params['batch_size']}-lr")
        for key in ("batch_size", "lr", "seed", "ghost_batch", "regime", "lr_rule"):
            assert key in child.data.params
        for metric in ("train_loss", "val_acc", "val_loss", "epoch_time", "throughput", "weight_distance"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert [m.step for m in history] == list(range(EXPECTED_EPOCHS[arm])), (arm, metric)


def test_derived_learning_rate_is_logged(smoke_run):
    uri, _ = smoke_run
    _, _, children = _runs(uri)
    lrs = {c.data.params["arm"]: float(c.data.params["lr"]) for c in children}
    assert lrs["SB"] == pytest.approx(0.05)
    assert lrs["LB"] == pytest.approx(0.05)
    assert lrs["+RA"] == pytest.approx(0.05 * (256 / 32) ** 0.5)


def test_report_written_under_the_sweep_folder(smoke_run):
    _, tmp = smoke_run
    reports = list((tmp / "runs" / "large_batch").glob("*/report/report.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Verdict:" in text and "skeptic run large_batch --smoke" in text
    assert "Cannot decide" in text  # one seed: the smoke run must say it cannot decide


def test_champion_loads_in_a_fresh_process_and_predicts(smoke_run):
    uri, _ = smoke_run
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("large_batch", "champion")
    assert version.tags["skeptic.verdict"] == "undecided"
    code = (
        "import json, numpy as np, mlflow;"
        "m = mlflow.pyfunc.load_model('models:/large_batch@champion');"
        "p = m.predict(np.random.rand(5, 3, 8, 8).astype(np.float32));"
        "print(json.dumps({'shape': list(p.shape), 'sum': p.sum(1).tolist()}))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [5, 10]
    assert out["sum"] == pytest.approx([1.0] * 5, abs=1e-4)
