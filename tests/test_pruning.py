"""Study `pruning`: structured pruning really shrinks the model, Scratch-B's budget comes
from measured FLOPs, unstructured masks survive retraining, the baseline stage is usable,
and `skeptic run pruning --smoke` runs end to end on local Ray into a temporary MLflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from jobs.pruning import models
from jobs.pruning.prune import (
    apply_masks,
    bake,
    count_flops,
    count_params,
    global_magnitude_masks,
    scratch_b_epochs,
    sparsity,
    structured_prune,
)
from jobs.pruning.study import BASELINE_FIELDS, Params, Pruning, plan_trial, tensors
from skeptic.data import load_dataset
from skeptic.stages import RunningStage
from skeptic.training import evaluate, train_epoch

SHAPE = [3, 8, 8]
CLASSES = [str(i) for i in range(10)]


def _model(width: int = 8, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(models.model_config(models.base_channels(width), SHAPE, CLASSES))


@pytest.fixture(scope="module")
def data() -> dict:
    ds = load_dataset("shapes", 240, 0.25, seed=0, image_size=8)
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val,
            "classes": list(ds.classes)}  # fmt: skip


@pytest.fixture(scope="module")
def baseline(data) -> dict:
    p = Params(width=4, epochs=2, batch_size=32)
    ctx = RunningStage(
        "baseline", {k: getattr(p, k) for k in BASELINE_FIELDS}, 0, torch.device("cpu"), data, {}
    )
    return Pruning().run_stage("baseline", ctx)


def test_structured_pruning_removes_channels_and_the_model_still_runs():
    full = _model()
    pruned = structured_prune(full, SHAPE, 0.5)
    assert models.channels_of(full) == [8, 8, 16, 16, 32, 32]
    assert models.channels_of(pruned) == [4, 4, 8, 8, 16, 16]
    assert count_params(pruned) < 0.35 * count_params(full)  # convs shrink ~4x, not 2x
    x = torch.randn(5, *SHAPE)
    assert pruned.eval()(x).shape == (5, 10)
    assert pruned.features[0].weight.shape == (4, 3, 3, 3)  # really removed, not zeroed
    # the channel config alone rebuilds the pruned architecture (what the registry relies on)
    rebuilt = models.build(models.model_config(models.channels_of(pruned), SHAPE, CLASSES))
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), pruned(x))


def test_pruning_keeps_original_filters_with_the_larger_l1_norms():
    full = _model()
    original = full.features[0].weight.detach().flatten(1)
    kept = structured_prune(full, SHAPE, 0.5).features[0].weight.detach().flatten(1)
    # every kept filter is one of the original ones, untouched (removed, not re-initialised)
    matches = (kept[:, None, :] == original[None, :, :]).all(-1)
    assert matches.any(1).all()
    # torch-pruning scores a filter by its whole group (conv + BN + next conv's inputs), so
    # compare on average: the kept filters have the larger L1 norms
    assert kept.abs().sum(1).mean() > original.abs().sum(1).mean()


def test_flops_are_measured():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_flops(conv, SHAPE) == 2 * 8 * 8 * 4 * 3 * 9  # 2 FLOPs per multiply-add
    full = _model()
    assert count_flops(structured_prune(full, SHAPE, 0.5), SHAPE) < 0.3 * count_flops(full, SHAPE)


def test_scratch_b_budget_comes_from_measured_flops(baseline):
    p = Params(method="scratch_b", ratio=0.3, width=4, epochs=2, batch_size=32, scratch_b_cap=100)
    plan = plan_trial(p, baseline, seed=0)
    full = models.build(baseline["model_config"])
    pruned = models.build(plan.config)
    measured = count_flops(full, SHAPE) / count_flops(pruned, SHAPE)
    assert plan.facts["flops_ratio"] == pytest.approx(measured)
    assert plan.epochs == math.ceil(2 * measured)
    assert scratch_b_epochs(10, 400, 100, cap=2.0) == 20  # capped at 2x
    assert scratch_b_epochs(10, 300, 200, cap=2.0) == 15
    # Scratch-E: same architecture, baseline epochs; both start from a fresh init
    plan_e = plan_trial(p.model_copy(update={"method": "scratch_e"}), baseline, seed=0)
    assert plan_e.epochs == 2 and plan_e.config["channels"] == plan.config["channels"]


def test_fine_tuned_starts_from_the_pruned_trained_weights(baseline):
    p = Params(method="fine_tuned", ratio=0.5, width=4, epochs=2)
    plan = plan_trial(p, baseline, seed=0)
    trained = models.build(baseline["model_config"])
    trained.load_state_dict(baseline["trained"])
    expected = structured_prune(trained, SHAPE, 0.5).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(plan.weights[key], value)
    assert plan.lr == 1e-3 and not plan.step_decay
    scratch = plan_trial(p.model_copy(update={"method": "scratch_e"}), baseline, seed=0)
    assert not torch.equal(scratch.weights["features.0.weight"], plan.weights["features.0.weight"])


def test_unstructured_mask_is_kept_during_retraining(data):
    model = _model(width=4)
    masks = global_magnitude_masks(model, 0.6)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.4 * total, abs=1)
    before = bake(apply_masks(_model(width=4), masks))
    masked = apply_masks(model, masks)
    opt = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y, _, _ = tensors(data, torch.device("cpu"))
    for epoch in range(2):
        train_epoch(masked, opt, x, y, 32, torch.Generator().manual_seed(epoch))
    after = bake(masked)
    for name, mask in masks.items():
        weight = after[f"{name}.weight"]
        assert torch.all(weight[mask == 0] == 0), name  # pruned weights stayed at zero
        assert not torch.equal(weight, before[f"{name}.weight"]), name  # the rest trained
    assert sparsity(masked) >= 0.6 - 1e-3
    # the baked state dict is a plain model's: loadable without any pruning hooks
    plain = models.build(models.model_config(models.base_channels(4), SHAPE, CLASSES))
    plain.load_state_dict(after)


def test_ticket_reuses_the_original_init_and_random_does_not(baseline):
    p = Params(method="ticket", ratio=0.5, width=4, epochs=2)
    ticket = plan_trial(p, baseline, seed=0)
    rand = plan_trial(p.model_copy(update={"method": "random"}), baseline, seed=0)
    torch.testing.assert_close(
        ticket.weights["features.0.weight"], baseline["init"]["features.0.weight"]
    )
    assert not torch.equal(rand.weights["features.0.weight"], baseline["init"]["features.0.weight"])
    for key in ticket.masks:
        assert torch.equal(ticket.masks[key], rand.masks[key])  # the same mask for both


def test_run_stage_gives_a_usable_baseline(baseline, data, tmp_path):
    assert set(baseline) == {"init", "trained", "model_config", "val_acc"}
    torch.save(baseline, tmp_path / "b.pt")  # the platform's round trip: plain values only
    loaded = torch.load(tmp_path / "b.pt", weights_only=True)
    model = models.build(loaded["model_config"])
    model.load_state_dict(loaded["trained"])
    _, _, xv, yv = tensors(data, torch.device("cpu"))
    assert evaluate(model, xv, yv)[1] == pytest.approx(loaded["val_acc"])
    assert not torch.equal(
        loaded["init"]["features.0.weight"], loaded["trained"]["features.0.weight"]
    )
    assert loaded["model_config"]["channels"] == models.base_channels(4)


# ---- end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    uri, tmp, _ = smoke_sweep("pruning")  # shared with tests/test_every_study.py
    return uri, tmp


@pytest.mark.slow
def test_smoke_sweep_one_child_per_arm_ratio_seed(smoke_run):
    uri, tmp = smoke_run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pruning")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    stages = [r for r in runs if "skeptic.stage" in r.data.tags]
    trials = [
        r
        for r in runs
        if "mlflow.parentRunId" in r.data.tags and "skeptic.stage" not in r.data.tags
    ]
    assert len(parents) == 1 and len(stages) == 1  # one baseline shared by every trial
    keys = sorted(
        (t.data.params["arm"], float(t.data.params["ratio"]), t.data.params["seed"]) for t in trials
    )
    smoke = Pruning.smoke["sweep"]
    expected = sorted((a, r, "0") for a in smoke["arms"] for r in smoke["space"]["ratio"]["grid"])
    assert keys == expected
    assert all(t.data.tags["skeptic.outcome"] == "completed" for t in trials)
    assert parents[0].data.tags["skeptic.verdict"] == "undecided"  # 1 seed cannot decide
    report = next((tmp / "runs" / "pruning").glob("*/report/report.md")).read_text()
    assert "Cannot decide" in report and "latency" in report.lower()


@pytest.mark.slow
def test_smoke_champion_is_a_registered_pruned_model(smoke_run):
    import mlflow

    uri, _ = smoke_run
    mlflow.set_tracking_uri(uri)  # version.source (models:/m-...) is read from this store
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("pruning", "champion")
    meta = mlflow.models.get_model_info(version.source).metadata
    assert {"ratio", "flops", "params", "channels"} <= set(meta)
    assert meta["ratio"] == 0.5
    # the smoke also runs a ticket arm, but a masked model is not smaller: never the champion
    assert meta["method"] in ("fine_tuned", "scratch_e", "scratch_b")
    model = mlflow.pyfunc.load_model("models:/pruning@champion")
    probs = model.predict(np.random.rand(3, 3, 8, 8).astype(np.float32))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


# ---- the verdict's decision rule, on hand-made trial results --------------------------


def _results(acc: dict[str, list[float]], ratios: tuple[float, ...] = (0.5, 0.9)) -> list:
    from skeptic.study import TrialResult

    out = []
    for arm, values in acc.items():
        method = arm.split("_lr")[0]
        for ratio in ratios:
            for seed, v in enumerate(values):
                params = {"arm": arm, "method": method, "ratio": ratio, "seed": seed, "width": 4}
                out.append(
                    TrialResult(f"{arm}{ratio}{seed}", params, [{"val_acc": v}], "completed")
                )
    return out


def test_verdict_overturned_when_scratch_b_matches_fine_tuning():
    from jobs.pruning.verdict import judge

    v = judge(_results({"fine_tuned": [0.90, 0.91, 0.92], "scratch_e": [0.9, 0.9, 0.9],
                        "scratch_b": [0.91, 0.92, 0.93]}), "val_acc", SHAPE)  # fmt: skip
    assert v.held is False and "every ratio" in v.summary
    assert {"accuracy_vs_ratio", "ticket_vs_random"} <= set(v.figures)


def test_verdict_held_when_fine_tuning_wins_and_undecided_with_one_seed():
    from jobs.pruning.verdict import judge

    v = judge(
        _results({"fine_tuned": [0.95, 0.96, 0.95], "scratch_b": [0.80, 0.81, 0.80]}),
        "val_acc",
        SHAPE,
    )
    assert v.held is True
    one = judge(_results({"fine_tuned": [0.95], "scratch_b": [0.80]}), "val_acc", SHAPE)
    assert one.held is None and "Cannot decide" in one.summary


def test_verdict_reports_ticket_vs_random_per_lr():
    from jobs.pruning.verdict import judge

    acc = {"fine_tuned": [0.9, 0.9], "scratch_b": [0.9, 0.9], "ticket_lr0.01": [0.95, 0.96],
           "random_lr0.01": [0.80, 0.81], "ticket_lr0.1": [0.9, 0.91], "random_lr0.1": [0.9, 0.91]}  # fmt: skip
    summary = judge(_results(acc), "val_acc", SHAPE).summary
    assert "lr 0.01: ticket better at 0.5, 0.9" in summary
    assert "lr 0.1: tie at 0.5, 0.9" in summary
