"""Study `large_batch`: its decision rule on hand-made results (through the platform's
statistics, as a sweep judges them), and end to end: `skeptic run large_batch --smoke` on a
real local Ray into a temporary MLflow store, then read MLflow back and load the champion
in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from jobs.large_batch.study import SB_LR, LargeBatch, Params
from jobs.large_batch.verdict import BEHIND, CLOSES, GAP
from skeptic.planning import check_comparisons
from skeptic.schema import Metric, Tag
from skeptic.spec import SpecError, load_spec
from skeptic.stats import Decision, judge
from skeptic.study import TrialResult

# smoke: 2 rounds for every arm (one report per round; +RA makes SB's updates in each)
EXPECTED_EPOCHS = {"SB": 2, "LB": 2, "+RA": 2}
SMOKE_SEEDS = LargeBatch.smoke["sweep"]["seeds"]


# ---- the decision rule, on hand-made trial results ------------------------------------------


def _spec(**override):
    """The smoke spec (SB at batch 32; LB and +RA at 256), with `override` merged in."""
    smoke = {**LargeBatch.smoke, **override}
    return load_spec("large_batch", LargeBatch.defaults, Params, smoke)


def _results(means: dict[str, float], noise: float, seeds: int = 5) -> list[TrialResult]:
    """Each arm's test accuracy = a level shared by the seed's arms (the init a seed fixes)
    + the arm's mean + its own noise; validation set apart, so a rule that read it would
    fail."""
    batch = {"SB": 32, "LB": 256, "+RA": 256}
    out = []
    for seed in range(seeds):
        level = np.random.default_rng([seed, 99]).normal(0, 0.01)
        for i, (arm, mean) in enumerate(means.items()):
            acc = level + mean + noise * np.random.default_rng([seed, i]).normal()
            params = {"arm": arm, "batch_size": batch[arm], "seed": seed}
            final = {"test_acc": acc, "val_acc": 0.5, "train_acc": 1.0, "updates": 10}
            out.append(TrialResult(f"{arm}-{seed}", params, [final], "completed"))
    return out


def _decide(results: list[TrialResult], spec=None):
    study = LargeBatch()
    judged = judge(study.comparisons(spec or _spec()), results, study.report_metric)
    by_name = {j.compare.name: j for j in judged}
    return study.decide(by_name), by_name


def test_declared_comparisons_are_paired_at_the_largest_batch_with_a_stated_margin():
    compares = {c.name: c for c in LargeBatch().comparisons(_spec())}
    assert list(compares) == [GAP, CLOSES, BEHIND]
    assert all(c.paired_by == "seed" and c.a == {"arm": "SB"} for c in compares.values())
    assert compares[GAP].b == {"arm": "LB", "batch_size": 256}
    assert compares[CLOSES].question == "non_inferiority" and compares[CLOSES].margin == 0.01
    assert "pilots" in compares[CLOSES].why
    default = LargeBatch().comparisons(load_spec("large_batch", LargeBatch.defaults, Params))
    assert {c.b["batch_size"] for c in default} == {2048}  # the largest batch of the grid


def test_gap_closed_by_ra_overturns():
    (held, why), judged = _decide(_results({"SB": 0.90, "LB": 0.85, "+RA": 0.902}, noise=0.001))
    assert judged[GAP].decision == Decision.A_BETTER and judged[GAP].estimate.paired
    assert judged[CLOSES].decision == Decision.NON_INFERIOR
    assert held is False and "not inherent" in why


def test_ra_beating_sb_by_more_than_the_margin_still_overturns():
    (held, _), judged = _decide(_results({"SB": 0.90, "LB": 0.85, "+RA": 0.93}, noise=0.001))
    assert judged[BEHIND].decision == Decision.B_BETTER
    assert held is False


def test_ra_below_sb_by_less_than_the_margin_counts_as_closed():
    # SB is shown ahead of +RA, but by less than the margin we declared negligible
    (held, _), judged = _decide(_results({"SB": 0.90, "LB": 0.85, "+RA": 0.898}, noise=0.0002))
    assert judged[BEHIND].decision == Decision.A_BETTER
    assert judged[CLOSES].decision == Decision.NON_INFERIOR
    assert held is False


def test_gap_that_ra_does_not_close_holds():
    (held, why), judged = _decide(_results({"SB": 0.90, "LB": 0.85, "+RA": 0.86}, noise=0.001))
    assert judged[BEHIND].decision == Decision.A_BETTER
    assert judged[CLOSES].decision == Decision.UNDECIDED
    assert held is True and "does not close" in why


def test_noisy_null_is_undecided():
    (held, why), judged = _decide(_results({"SB": 0.9, "LB": 0.9, "+RA": 0.9}, noise=0.03, seeds=3))
    assert {j.decision for j in judged.values()} == {Decision.UNDECIDED}
    assert held is None and "no gap to explain" in why


def test_no_large_batch_gap_leaves_the_claim_untested():
    (held, why), _ = _decide(_results({"SB": 0.85, "LB": 0.90, "+RA": 0.90}, noise=0.001))
    assert held is None and "LB beats SB" in why


def test_one_seed_is_undecided():
    (held, why), judged = _decide(_results({"SB": 0.95, "LB": 0.5, "+RA": 0.95}, 0.001, seeds=1))
    assert held is None and "fewer than 2 seeds" in why
    assert all(j.estimate is None and "2 seeds" in j.hint for j in judged.values())


def test_a_sweep_without_ra_declares_the_gap_only_and_cannot_decide():
    arms = {k: v for k, v in LargeBatch.smoke["sweep"]["arms"].items() if k != "+RA"}
    spec = _spec(sweep={**LargeBatch.smoke["sweep"], "arms": arms})
    assert [c.name for c in LargeBatch().comparisons(spec)] == [GAP]
    (held, why), _ = _decide(_results({"SB": 0.9, "LB": 0.8}, noise=0.001), spec)
    assert held is None and "lacks" in why


@pytest.mark.parametrize(
    "setting, field",
    [("sweep.space.width.grid=[32,64]", "sweep"), ("data.test_fraction=0", "data.test_fraction")],
)
def test_a_spec_the_comparisons_cannot_judge_is_refused_before_start(setting, field):
    spec = load_spec("large_batch", LargeBatch.defaults, Params, LargeBatch.smoke, sets=[setting])
    with pytest.raises(SpecError, match=field):
        check_comparisons(LargeBatch(), spec)  # the platform checks every study so


def test_evidence_labels_every_number_with_its_split():
    results = _results({"SB": 0.90, "LB": 0.85, "+RA": 0.902}, noise=0.001)
    for r in results:
        r.history = [{**r.final, "weight_distance": 1.0}]
    evidence = LargeBatch().evidence(results, _spec(), [])
    assert {"test_acc %", "test_acc sd (pp)", "val_acc %", "train - test (pp)"} <= set(evidence.table[0])
    assert {"arms", "weight_distance"} <= set(evidence.figures)
    assert "test accuracies" in evidence.summary and "Updates: SB" in evidence.summary
    assert "What this scale can and cannot decide" in evidence.details
    assert all("direction agrees" in row for row in evidence.paper)


# ---- end to end ------------------------------------------------------------------------------


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


@pytest.mark.slow
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
    assert Counter(c.data.params["arm"] for c in children) == {a: SMOKE_SEEDS for a in EXPECTED_EPOCHS}
    assert len({c.data.tags["skeptic.trial_id"] for c in children}) == len(children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/arms.png", "report/report.html", "report/comparisons.png"} <= artifacts
    assert any(a.path.endswith("spec.yaml") for a in client.list_artifacts(parent.info.run_id, "reproduce"))


@pytest.mark.slow
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
        for metric in ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "epoch_time",
                       "throughput", "weight_distance", "weight_distance_first", "updates"):  # fmt: skip
            history = client.get_metric_history(child.info.run_id, metric)
            assert [m.step for m in history] == list(range(EXPECTED_EPOCHS[arm])), (arm, metric)


@pytest.mark.slow
def test_ra_made_exactly_as_many_updates_as_sb(smoke_run):
    uri, _ = smoke_run
    _, _, children = _runs(uri)
    final = {}
    for child in children:
        arm = child.data.params["arm"]
        final.setdefault(arm, set()).add(child.data.metrics["updates"])
    assert final["+RA"] == final["SB"] == {2 * (720 // 32)}  # 2 rounds of SB's 22 updates
    assert final["LB"] == {2 * (720 // 256)}  # LB: SB's epochs, full batches only


@pytest.mark.slow
def test_derived_learning_rate_is_logged(smoke_run):
    uri, _ = smoke_run
    _, _, children = _runs(uri)
    lrs = {c.data.params["arm"]: float(c.data.params["lr"]) for c in children}
    lr = SB_LR  # the smoke keeps the default's lr (validation's pick for SB)
    assert lrs["SB"] == pytest.approx(lr)
    assert lrs["LB"] == pytest.approx(lr)
    assert lrs["+RA"] == pytest.approx(lr * (256 / 32) ** 0.5)


@pytest.mark.slow
def test_report_written_under_the_sweep_folder(smoke_run):
    _, tmp = smoke_run
    reports = list((tmp / "runs" / "large_batch").glob("*/report/report.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "Verdict:" in text and "skeptic run large_batch --smoke" in text
    assert "## Deciding comparisons" in text and "Numbers on the **test** split" in text
    assert all(f"| {name} |" in text for name in (GAP, CLOSES, BEHIND))
    assert "| test_acc % |" in text and "| val_acc % |" in text  # the study's table, by split
    assert (reports[0].parent / "comparisons.png").is_file()


@pytest.mark.slow
def test_parent_run_records_each_comparison_and_its_decision(smoke_run):
    uri, _ = smoke_run
    _, parents, _ = _runs(uri)
    parent = parents[0].data
    for name in (GAP, CLOSES, BEHIND):  # two seeds a side: every comparison is estimated
        assert Metric.comparison(name, "diff") in parent.metrics, name
        assert parent.metrics[Metric.comparison(name, "n_a")] == SMOKE_SEEDS
        assert parent.tags[Tag.decision(name)] in {d.value for d in Decision}, name


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process_and_predicts(smoke_run):
    uri, _ = smoke_run
    client, parents, _ = _runs(uri)
    version = client.get_model_version_by_alias("large_batch", "champion")
    assert version.tags["skeptic.verdict"] == parents[0].data.tags["skeptic.verdict"]
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
