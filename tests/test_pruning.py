"""Study `pruning`: structured pruning really shrinks the model, Scratch-B's budget comes
from measured FLOPs, unstructured masks survive retraining, the baseline stage is usable,
the decision rule decides as it says (on hand-made results, through the platform's
statistics), and `skeptic run pruning --smoke` runs end to end on local Ray into a
temporary MLflow."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch_pruning as tp
from mlflow.tracking import MlflowClient

from jobs.pruning import evidence as evidence_module
from jobs.pruning import models
from jobs.pruning.prune import (
    apply_masks,
    bake,
    count_flops,
    count_params,
    filters_to_remove,
    global_magnitude_masks,
    l1_filter_norms,
    scratch_b_epochs,
    sparsity,
    structured_prune,
)
from jobs.pruning.study import (
    ARMS,
    BASELINE_FIELDS,
    Params,
    Pruning,
    plan_trial,
    tensors,
    verdict_split,
)
from jobs.pruning.verdict import MARGIN
from skeptic.data import load_dataset
from skeptic.planning import check_comparisons
from skeptic.schema import Metric, Tag
from skeptic.spec import SpecError, grid_points, load_spec, resolve_params
from skeptic.stages import RunningStage
from skeptic.stats import Decision, judge
from skeptic.study import TrialResult
from skeptic.training import evaluate, train_epoch

SHAPE = [3, 8, 8]
CLASSES = [str(i) for i in range(10)]


def _model(width: int = 8, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(models.model_config(models.base_channels(width), SHAPE, CLASSES))


@pytest.fixture(scope="module")
def data() -> dict:
    ds = load_dataset("shapes", 300, 0.2, seed=0, image_size=8, test_fraction=0.2)
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val,
            "x_test": ds.x_test, "y_test": ds.y_test, "classes": list(ds.classes)}  # fmt: skip


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


def test_pruning_keeps_exactly_the_original_filters_with_the_largest_l1_norms():
    full = _model()
    original = full.features[0].weight.detach().flatten(1)
    kept = structured_prune(full, SHAPE, 0.5).features[0].weight.detach().flatten(1)
    top = torch.argsort(original.abs().sum(1), descending=True)[:4]
    # the kept filters are the original ones, untouched, with the 4 largest norms
    torch.testing.assert_close(kept, original[top.sort().values], rtol=0, atol=0)


def _hand_made_vgg() -> torch.nn.Module:
    """Width 4; the first conv's filters have kernel L1 norms 27 x (1, 4, 2, 3), but the
    BatchNorm after it scales filter 1 (the largest kernel) down 100-fold and the next conv
    reads filters 0 and 2 (the smallest) 100-fold more: a group importance (conv + BN + next
    layer, torch-pruning's default) ranks them the other way round."""
    model = _model(width=4)
    conv, bn, nxt = model.features[0], model.features[1], model.features[3]
    with torch.no_grad():
        for i, value in enumerate((1.0, 4.0, 2.0, 3.0)):
            conv.weight[i] = value
        bn.weight.copy_(torch.tensor([1.0, 0.01, 1.0, 1.0]))
        nxt.weight[:, [0, 2]] *= 100
    return model


def test_l1_criterion_ranks_filters_by_their_own_kernel_norm():
    model = _hand_made_vgg()
    conv = model.features[0]
    torch.testing.assert_close(l1_filter_norms(conv), 27 * torch.tensor([1.0, 4.0, 2.0, 3.0]))
    assert filters_to_remove(conv, 0.5) == [0, 2]  # the two smallest kernels
    pruned = structured_prune(model, SHAPE, 0.5)
    torch.testing.assert_close(pruned.features[0].weight, conv.weight[[1, 3]])
    torch.testing.assert_close(pruned.features[1].weight, model.features[1].weight[[1, 3]])
    # the criterion it replaces would keep other filters on this conv: the test can tell them apart
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE))
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(4)))
    group_scores = tp.importance.MagnitudeImportance(p=1)(group)
    assert set(torch.argsort(group_scores)[:2].tolist()) != {0, 2}


def test_flops_are_measured():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_flops(conv, SHAPE) == 2 * 8 * 8 * 4 * 3 * 9  # 2 FLOPs per multiply-add
    full = _model()
    assert count_flops(structured_prune(full, SHAPE, 0.5), SHAPE) < 0.3 * count_flops(full, SHAPE)


def test_scratch_b_budget_comes_from_measured_flops_uncapped_by_default(baseline):
    p = Params(method="scratch_b", ratio=0.3, width=4, epochs=2, batch_size=32)
    assert p.scratch_b_cap is None  # the reference CIFAR code (main_B.py) has no cap
    plan = plan_trial(p, baseline, seed=0)
    full = models.build(baseline["model_config"])
    pruned = models.build(plan.config)
    measured = count_flops(full, SHAPE) / count_flops(pruned, SHAPE)
    assert plan.facts["flops_ratio"] == pytest.approx(measured)
    assert plan.epochs == int(2 * measured) == plan.facts["scratch_b_uncapped_epochs"]
    assert scratch_b_epochs(160, 313, 206) == 243  # int(160 x 313/206) as main_B.py
    assert scratch_b_epochs(10, 400, 100) == 40  # 4x the FLOPs saved, 4x the epochs
    assert scratch_b_epochs(10, 400, 100, cap=2.0) == 20  # a cap, when set, binds
    assert scratch_b_epochs(10, 300, 200, cap=2.0) == 15
    capped = plan_trial(p.model_copy(update={"scratch_b_cap": 1.0}), baseline, seed=0)
    assert capped.epochs == 2 and capped.facts["scratch_b_uncapped_epochs"] == plan.epochs
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
    assert plan.lr == p.finetune_lr == 1e-2 and not plan.step_decay  # constant, as main_finetune.py
    # what the report states of the baseline is its test accuracy, the arms' split
    assert plan.facts["baseline_test_acc"] == baseline["test_acc"]
    scratch = plan_trial(p.model_copy(update={"method": "scratch_e"}), baseline, seed=0)
    assert not torch.equal(scratch.weights["features.0.weight"], plan.weights["features.0.weight"])


def test_masks_cover_conv_weights_only():
    model = _model(width=4)
    masks = global_magnitude_masks(model, 0.6)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(masks) == convs  # the classifier (a Linear) is never masked
    # one threshold across the convs: every kept weight is at least every removed one
    weights = {n: m.weight.detach().abs() for n, m in model.named_modules() if n in convs}
    kept = torch.cat([weights[n][masks[n] == 1] for n in convs])
    gone = torch.cat([weights[n][masks[n] == 0] for n in convs])
    assert kept.min() >= gone.max()
    masked = apply_masks(model, masks)
    assert not hasattr(masked.classifier, "weight_mask")
    assert (masked.classifier.weight != 0).all()


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
    assert sparsity(masked) >= 0.6 - 1e-3  # of the conv weights, what the mask covers
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
    assert ticket.lr == rand.lr == p.lr  # retrained at the lr its baseline was trained at


def test_each_ticket_lr_gets_its_own_baseline_stage():
    """The arms' `lr` is a field the baseline stage depends on, so the lr 0.01 tickets prune
    (and reset to the init of) a baseline trained at lr 0.01, as in the reference code."""
    assert "lr" in BASELINE_FIELDS
    spec = load_spec("pruning", Pruning.defaults, Params)
    keys: dict[str, set] = {}
    for point in grid_points(spec):
        params = resolve_params(spec, Params, point)
        keys.setdefault(point["arm"], set()).add(tuple(getattr(params, f) for f in BASELINE_FIELDS))
    lr_of = {arm: {dict(zip(BASELINE_FIELDS, k))["lr"] for k in ks} for arm, ks in keys.items()}
    assert lr_of["ticket_lr0.01"] == lr_of["random_lr0.01"] == {0.01}
    assert lr_of["ticket_lr0.1"] == lr_of["fine_tuned"] == lr_of["scratch_b"] == {0.1}
    assert len(set().union(*keys.values())) == 2  # two baselines per seed, not one


def test_run_stage_gives_a_usable_baseline(baseline, data, tmp_path):
    assert set(baseline) == {"init", "trained", "model_config", "val_acc", "test_acc"}
    torch.save(baseline, tmp_path / "b.pt")  # the platform's round trip: plain values only
    loaded = torch.load(tmp_path / "b.pt", weights_only=True)
    model = models.build(loaded["model_config"])
    model.load_state_dict(loaded["trained"])
    _, _, xv, yv = tensors(data, torch.device("cpu"))
    assert evaluate(model, xv, yv)[1] == pytest.approx(loaded["val_acc"])
    xt, yt = verdict_split(data, torch.device("cpu"))
    assert evaluate(model, xt, yt)[1] == pytest.approx(loaded["test_acc"])
    assert not torch.equal(
        loaded["init"]["features.0.weight"], loaded["trained"]["features.0.weight"]
    )
    assert loaded["model_config"]["channels"] == models.base_channels(4)


# ---- the decision rule, on hand-made trial results ----------------------------------------

RULE_ARMS = ("fine_tuned", "scratch_b", "ticket_lr0.1", "random_lr0.1")


def _spec(ratios=(0.5, 0.9), arms=RULE_ARMS):
    override = {"sweep": {"space": {"ratio": {"grid": list(ratios)}},
                          "arms": {a: ARMS[a] for a in arms}}}  # fmt: skip
    return load_spec("pruning", Pruning.defaults, Params, override)


def _results(means: dict, noise: float, seeds: int = 5, ratios=(0.5, 0.9)) -> list[TrialResult]:
    """Test accuracy per arm: a mean (or a mean per ratio) + a level a seed's arms share (the
    baseline they prune) + each trial's own noise; validation set apart, so a rule that read
    it would fail."""
    out = []
    for seed in range(seeds):
        level = np.random.default_rng([seed, 99]).normal(0, 0.01)
        for i, (arm, mean) in enumerate(means.items()):
            for ratio in ratios:
                m = mean[ratio] if isinstance(mean, dict) else mean
                acc = level + m + noise * np.random.default_rng([seed, i, int(100 * ratio)]).normal()
                params = {"arm": arm, "method": arm.split("_lr")[0], "ratio": ratio, "seed": seed,
                          "width": 4, "lr": 0.1, "finetune_lr": 1e-2}  # fmt: skip
                final = {"test_acc": acc, "val_acc": 0.5, "baseline_test_acc": 0.95}
                out.append(TrialResult(f"{arm}{ratio}{seed}", params, [final], "completed"))
    return out


def _decide(results: list[TrialResult], spec=None):
    study = Pruning()
    judged = judge(study.comparisons(spec or _spec()), results, study.report_metric)
    return study.decide({j.compare.name: j for j in judged}), {j.compare.name: j for j in judged}


def test_declared_comparisons_per_ratio_paired_with_a_stated_margin():
    compares = {c.name: c for c in Pruning().comparisons(_spec())}
    assert list(compares) == ["sb_noninf_r50", "ft_vs_sb_r50", "sb_noninf_r90", "ft_vs_sb_r90",
                              "ticket_lr0p1_r50", "ticket_lr0p1_r90"]  # fmt: skip
    assert all(c.paired_by == "seed" for c in compares.values())
    noninf = compares["sb_noninf_r50"]
    assert noninf.a == {"arm": "fine_tuned", "ratio": 0.5} and noninf.b["arm"] == "scratch_b"
    assert noninf.question == "non_inferiority" and noninf.margin == MARGIN == 0.01
    assert "docs/results/pruning" in noninf.why
    assert compares["ticket_lr0p1_r90"].b == {"arm": "ticket_lr0.1", "ratio": 0.9}
    default = Pruning().comparisons(load_spec("pruning", Pruning.defaults, Params))
    assert len(default) == 3 * 2 + 2 * 3  # 3 ratios x (2 questions + 2 ticket lrs)


def test_scratch_b_better_at_every_ratio_overturns():
    (held, why), judged = _decide(_results({"fine_tuned": 0.90, "scratch_b": 0.93}, noise=0.002))
    assert judged["ft_vs_sb_r50"].decision == Decision.B_BETTER
    assert judged["sb_noninf_r90"].decision == Decision.NON_INFERIOR
    assert held is False and "0.5, 0.9" in why


def test_scratch_b_equal_within_the_margin_overturns():
    (held, _), judged = _decide(_results({"fine_tuned": 0.90, "scratch_b": 0.899}, noise=0.001))
    assert {judged[f"sb_noninf_r{r}"].decision for r in (50, 90)} == {Decision.NON_INFERIOR}
    assert held is False


def test_fine_tuning_better_at_every_ratio_holds():
    (held, why), judged = _decide(_results({"fine_tuned": 0.95, "scratch_b": 0.85}, noise=0.002))
    assert judged["ft_vs_sb_r90"].decision == Decision.A_BETTER
    assert judged["sb_noninf_r90"].decision == Decision.UNDECIDED
    assert held is True and "every ratio" in why


def test_ratios_that_disagree_are_undecided():
    means = {"fine_tuned": {0.5: 0.90, 0.9: 0.95}, "scratch_b": {0.5: 0.92, 0.9: 0.85}}
    (held, why), _ = _decide(_results(means, noise=0.002))
    assert held is None and "depends on the ratio" in why


def test_noisy_null_is_undecided():
    (held, _), judged = _decide(_results({"fine_tuned": 0.9, "scratch_b": 0.9}, 0.03, seeds=3))
    assert {j.decision for j in judged.values()} == {Decision.UNDECIDED}
    assert held is None


def test_one_seed_is_undecided():
    (held, why), judged = _decide(_results({"fine_tuned": 0.95, "scratch_b": 0.5}, 0.001, seeds=1))
    assert held is None and "fewer than 2 seeds" in why
    assert all(j.estimate is None for j in judged.values())


def test_ticket_comparisons_are_judged_but_do_not_count():
    means = {"fine_tuned": 0.90, "scratch_b": 0.93, "ticket_lr0.1": 0.97, "random_lr0.1": 0.80}
    results = _results(means, noise=0.002)
    (held, _), judged = _decide(results)
    assert judged["ticket_lr0p1_r50"].decision == Decision.B_BETTER
    assert held is False  # Scratch-B's result alone decides
    swapped = {**means, "ticket_lr0.1": 0.80, "random_lr0.1": 0.97}
    assert _decide(_results(swapped, noise=0.002))[0][0] is False
    evidence = Pruning().evidence(results, _spec(), list(judged.values()))
    assert "lr 0.1 (reported, not counted): ticket better at 0.5, 0.9" in evidence.summary
    # the paper beside it: Scratch-B ahead agrees with Table 1; a ticket ahead at lr 0.1 does not
    rows = {r["quantity"]: r for r in evidence.paper}
    assert all(set(r) == {"quantity", "paper", "ours", "direction agrees", "note"} for r in rows.values())
    assert rows["Scratch-B - fine-tuned, ratio 0.5"]["direction agrees"] == "yes"
    assert "Table 1" in rows["Scratch-B - fine-tuned, ratio 0.5"]["paper"]
    assert rows["winning ticket - random init, lr 0.1, ratio 0.9"]["direction agrees"] == "no"
    assert rows["fine-tuned - unpruned baseline, ratio 0.5"]["direction agrees"] == "yes"


@pytest.mark.parametrize(
    "setting, field",
    [("sweep.space.width.grid=[16,32]", "sweep"), ("data.test_fraction=0", "data.test_fraction")],
)
def test_a_spec_the_comparisons_cannot_judge_is_refused_before_start(setting, field):
    spec = load_spec("pruning", Pruning.defaults, Params, sets=[setting])
    with pytest.raises(SpecError, match=field):
        check_comparisons(Pruning(), spec)  # the platform checks every study so


def test_evidence_labels_every_number_with_its_split():
    results = _results({"fine_tuned": 0.90, "scratch_b": 0.93}, noise=0.002)
    evidence = Pruning().evidence(results, _spec(), [])
    assert {"test_acc %", "test_acc sd (pp)", "val_acc %", "baseline test_acc %"} <= set(evidence.table[0])
    assert {"accuracy_vs_ratio", "ticket_vs_random"} <= set(evidence.figures)
    # the baseline, on the arms' split, per lr it was trained at
    assert "Unpruned baseline, test accuracy (mean over its seeds): 95.00% at lr 0.1" in evidence.summary
    assert "latency" in evidence.details and "Liu et al. 2019" in evidence.details


def test_scratch_e_is_described_over_the_seeds_it_shares_with_fine_tuned():
    """The seed rule gives fine-tuned (a deciding arm) more seeds than Scratch-E: the
    description pairs them by seed, never mixes seed sets."""
    results = _results({"fine_tuned": 0.90, "scratch_e": 0.90}, noise=0.0, seeds=7)
    results = [r for r in results if r.params["arm"] == "fine_tuned" or r.params["seed"] < 5]
    groups = evidence_module.group(results, "test_acc")
    diffs = evidence_module.scratch_e_diffs(groups, "test_acc")
    assert diffs == {0.5: (pytest.approx(0.0, abs=1e-12), 5), 0.9: (pytest.approx(0.0, abs=1e-12), 5)}


# ---- end to end ------------------------------------------------------------------------

SMOKE_SEEDS = Pruning.smoke["sweep"]["seeds"]


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    uri, tmp, _ = smoke_sweep("pruning")  # shared with tests/test_every_study.py
    return uri, tmp


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pruning")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    stages = [r for r in runs if "skeptic.stage" in r.data.tags]
    trials = [
        r for r in runs if "mlflow.parentRunId" in r.data.tags and "skeptic.stage" not in r.data.tags
    ]
    return client, parents, stages, trials


@pytest.mark.slow
def test_smoke_sweep_one_child_per_arm_ratio_seed(smoke_run):
    uri, _ = smoke_run
    _, parents, stages, trials = _runs(uri)
    assert len(parents) == 1 and len(stages) == SMOKE_SEEDS  # one baseline per seed, shared
    keys = Counter((t.data.params["arm"], float(t.data.params["ratio"])) for t in trials)
    smoke = Pruning.smoke["sweep"]
    assert keys == {(a, r): SMOKE_SEEDS for a in smoke["arms"] for r in smoke["space"]["ratio"]["grid"]}
    assert all(t.data.tags["skeptic.outcome"] == "completed" for t in trials)
    assert parents[0].data.tags["skeptic.verdict"] in ("held", "overturned", "undecided")


@pytest.mark.slow
def test_smoke_report_shows_the_comparisons_and_labels_the_split(smoke_run):
    _, tmp = smoke_run
    report = next((tmp / "runs" / "pruning").glob("*/report/report.md"))
    text = report.read_text()
    assert "## Deciding comparisons" in text and "Numbers on the **test** split" in text
    for name in ("sb_noninf_r50", "ft_vs_sb_r50", "ticket_lr0p1_r50"):
        assert f"| {name} |" in text, name
    assert "| test_acc % |" in text and "| val_acc % |" in text and "latency" in text.lower()
    assert (report.parent / "comparisons.png").is_file()


@pytest.mark.slow
def test_parent_run_records_each_comparison_and_its_decision(smoke_run):
    uri, _ = smoke_run
    _, parents, _, _ = _runs(uri)
    parent = parents[0].data
    for name in ("sb_noninf_r50", "ft_vs_sb_r50", "ticket_lr0p1_r50"):
        assert Metric.comparison(name, "diff") in parent.metrics, name
        assert parent.metrics[Metric.comparison(name, "n_b")] == SMOKE_SEEDS
        assert parent.tags[Tag.decision(name)] in {d.value for d in Decision}, name


@pytest.mark.slow
def test_smoke_trials_report_test_accuracy_and_the_baseline_on_the_same_split(smoke_run):
    uri, _ = smoke_run
    _, _, stages, trials = _runs(uri)
    for run in (*stages, *trials):
        assert {"val_acc", "test_acc"} <= set(run.data.metrics), run.info.run_name
    assert all("baseline_test_acc" in t.data.metrics for t in trials)


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
    # the smoke also runs ticket arms, but a masked model is not smaller: never the champion
    assert meta["method"] in ("fine_tuned", "scratch_e", "scratch_b")
    model = mlflow.pyfunc.load_model("models:/pruning@champion")
    probs = model.predict(np.random.rand(3, 3, 8, 8).astype(np.float32))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
