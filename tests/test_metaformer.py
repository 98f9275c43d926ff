"""Study `metaformer`: every mixer and ablation builds through timm's MetaFormer and trains at
the study's input size, pooling mixes in every stage, params/MACs are measured, the decision
rule decides from hand-made results (through skeptic.stats.judge, as a sweep judges); then
`skeptic run metaformer --smoke` end to end on a real local Ray into a temporary MLflow store."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from timm.layers import GroupNorm1
from timm.models.metaformer import Attention, MetaFormer, Pooling
from torch import nn

from jobs.metaformer.mixers import ABLATIONS, MIXERS, RandomMixing, Zero, build_metaformer
from jobs.metaformer.study import MetaFormerStudy, Params, count_macs, count_params
from skeptic import stats
from skeptic.schema import Metric, Tag
from skeptic.spec import load_spec
from skeptic.stats import Decision
from skeptic.study import TrialResult

P = Params()
IMAGE = MetaFormerStudy.defaults["data"]["image_size"]


def _model(mixer: str, ablation: str = "none") -> MetaFormer:
    torch.manual_seed(0)
    return build_metaformer(mixer, ablation, tuple(P.dims), tuple(P.depths), IMAGE)


def _stage_mixer_inputs(
    model: MetaFormer, x: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of the first token mixer of every stage."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        stage.blocks[0].token_mixer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        for stage in model.stages
    ]
    model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("variant", [*MIXERS, *(f"pool3:{a}" for a in ABLATIONS[1:])])
def test_every_variant_builds_through_timm_and_trains(variant):
    mixer, _, ablation = variant.partition(":")
    model = _model(mixer, ablation or "none")
    assert isinstance(model, MetaFormer)
    x = torch.rand(4, 3, IMAGE, IMAGE)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)


def test_pool_minus_x_is_nonzero_in_every_stage():
    model = _model("pool3")
    seen = _stage_mixer_inputs(model, torch.rand(2, 3, IMAGE, IMAGE))
    assert len(seen) == len(P.dims) >= 3
    for i, (inp, out) in enumerate(seen):
        assert inp.shape[-1] >= 2, f"stage {i} is {inp.shape[-1]}x{inp.shape[-1]}"
        assert out.abs().max() > 1e-4, f"pool(x) - x vanishes in stage {i}"


def test_hybrid_is_pooling_then_attention():
    kinds = [type(s.blocks[0].token_mixer) for s in _model("hybrid").stages]
    assert kinds[0] is Pooling and kinds[-1] is Attention


def test_ablations_change_the_blocks_as_named():
    blocks = lambda m: [b for s in m.stages for b in s.blocks]
    assert all(isinstance(b.res_scale1, Zero) for b in blocks(_model("pool3", "no_residual")))
    assert all(isinstance(b.mlp, Zero) for b in blocks(_model("pool3", "no_mlp")))
    assert not any(isinstance(m, GroupNorm1) for m in _model("pool3", "no_norm").modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in _model("pool3", "batchnorm").modules())


def test_random_mixing_is_frozen_and_saved_with_the_weights():
    model = _model("random")
    mixers = [m for m in model.modules() if isinstance(m, RandomMixing)]
    assert mixers and not any("matrix" in n for n, _ in model.named_parameters())
    assert all(torch.allclose(m.matrix.sum(1), torch.ones(1)) for m in mixers)
    torch.manual_seed(1)
    again = build_metaformer("random", "none", tuple(P.dims), tuple(P.depths), IMAGE)
    again.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, IMAGE, IMAGE)
    model.eval(), again.eval()
    assert torch.allclose(model(x), again(x))


def test_params_and_macs_are_measured():
    pool, attn, identity = _model("pool3"), _model("attention"), _model("identity")
    assert count_params(pool) == count_params(identity) > 0  # pooling has no parameters
    assert count_macs(pool, IMAGE) == count_macs(identity, IMAGE) > 0
    # Attention adds qkv + proj (4 d^2 per token) and q k^T + attn v (2 N^2 d) per block:
    # counted in full, although the fused CPU kernel is invisible to FlopCounterMode.
    extra = 0
    for i, (d, depth) in enumerate(zip(P.dims, P.depths, strict=True)):
        n = (IMAGE // 2 // 2**i) ** 2
        extra += depth * (4 * n * d * d + 2 * n * n * d)
    assert count_macs(attn, IMAGE) - count_macs(pool, IMAGE) == extra


# ---- the decision rule, on hand-made results ---------------------------------------------------

STUDY = MetaFormerStudy()
DECIDING = {"pool3": "pool3", "attention": "attention", "identity": "identity-lr2x"}


def _result(arm: str, seed: int, test: float, val: float | None = None) -> TrialResult:
    mixer, _, rest = arm.partition("-")
    ablation = rest if rest in ABLATIONS else "none"
    row = {
        "test_acc": test, "val_acc": test if val is None else val, "train_acc": 0.9,
        "params": 1000, "macs": 10**6, "train_images_per_s": 100.0, "eval_images_per_s": 300.0,
    }  # fmt: skip
    lr = 0.002 if arm.endswith("lr2x") else 0.001
    params = {"arm": arm, "mixer": mixer, "ablation": ablation, "lr": lr, "seed": seed}
    return TrialResult(f"{arm}{seed}", params, [row], "completed")


def _sweep(means: dict[str, float], seeds: int = 6, noise: float = 0.003) -> list[TrialResult]:
    """Test accuracy per mixer (pool3, attention, identity: their deciding arms): each seed
    shifts every arm alike (its batch order), plus independent noise."""
    rng = np.random.default_rng(0)
    out = []
    for seed in range(seeds):
        level = 0.02 * rng.normal()
        for mixer, acc in means.items():
            out.append(_result(DECIDING[mixer], seed, acc + level + noise * rng.normal()))
    return out


def _decide(results: list[TrialResult]) -> tuple[bool | None, str, dict[str, str]]:
    judged = stats.judge(STUDY.comparisons(_spec()), results, STUDY.report_metric)
    held, why = STUDY.decide({j.compare.name: j for j in judged})
    return held, why, {j.compare.name: j.decision for j in judged}


def test_the_deciding_comparisons_are_declared_with_a_margin_and_paired_by_seed():
    compares = {c.name: c for c in STUDY.comparisons(_spec())}
    assert list(compares) == ["pool3_noninferior", "pool3_vs_attention", "pool3_vs_identity"]
    assert compares["pool3_noninferior"].question == "non_inferiority"
    assert compares["pool3_noninferior"].margin == pytest.approx(0.05)
    assert compares["pool3_vs_identity"].a == {"arm": "identity-lr2x"}
    assert all(c.paired_by == "seed" and c.why for c in compares.values())
    arms = _spec().sweep.arms
    for c in compares.values():  # each selector names exactly one arm, and that arm its lr
        for side in (c.a, c.b):
            assert set(side) == {"arm"} and "lr" in arms[side["arm"]]


def test_pooling_level_with_attention_and_ahead_of_no_mixing_overturns():
    held, why, decided = _decide(_sweep({"pool3": 0.80, "attention": 0.80, "identity": 0.60}))
    assert decided == {"pool3_noninferior": "non-inferior", "pool3_vs_attention": "undecided",
                       "pool3_vs_identity": "b better"}  # fmt: skip
    assert held is False and "no worse than attention by more than 5 pp" in why


def test_attention_clearly_ahead_holds():
    held, why, decided = _decide(_sweep({"pool3": 0.70, "attention": 0.85, "identity": 0.60}))
    assert decided["pool3_vs_attention"] == "a better"
    assert decided["pool3_noninferior"] == "undecided"
    assert held is True and "Held" in why


def test_level_with_attention_but_not_ahead_of_no_mixing_is_undecided():
    held, why, _ = _decide(_sweep({"pool3": 0.80, "attention": 0.80, "identity": 0.80}))
    assert held is None and "not shown ahead of no token mixing" in why


def test_a_noisy_null_and_too_few_seeds_are_undecided():
    means = {"pool3": 0.80, "attention": 0.80, "identity": 0.60}
    held, _, decided = _decide(_sweep(means, noise=0.15))
    assert held is None and decided["pool3_noninferior"] == "undecided"
    held, _, decided = _decide(_sweep(means, seeds=1))
    assert held is None and set(decided.values()) == {"undecided"}


def test_evidence_reports_test_numbers_ablations_and_the_validation_lr_check():
    results = _sweep({"pool3": 0.80, "attention": 0.81, "identity": 0.60}, seeds=3)
    for seed, (test, val) in enumerate([(0.10, 0.11), (0.11, 0.10), (0.10, 0.12)]):
        results.append(_result("pool3-no_residual", seed, test, val))
    for seed in range(3):  # validation prefers attention at twice the lr
        results.append(_result("attention-lr2x", seed, 0.78, val=0.9))
        results.append(_result("pool3-batchnorm", seed, 0.95))
    ev = STUDY.evidence(results, _spec(), [])
    assert "ablation no_residual" in ev.summary and "collapses, as in the paper" in ev.summary
    assert "ablation batchnorm" in ev.summary and "no collapse" in ev.summary
    assert "validation prefers attention-lr2x to the deciding arm attention" in ev.summary
    assert "- attention: attention-lr2x (lr 0.002): val_acc 90.0%, test_acc 78.0%" in ev.details
    rows = {r["arm"]: r for r in ev.table}
    assert set(rows) == {"pool3", "attention", "identity-lr2x", "pool3-no_residual",
                         "attention-lr2x", "pool3-batchnorm"}  # fmt: skip
    assert {"val_acc %", "test_acc %", "± sd (test)"} <= set(rows["pool3"])
    assert rows["attention-lr2x"]["role"] == "validation's lr"
    assert "acc_vs_macs" in ev.figures


def _spec(smoke: bool = False):
    s = MetaFormerStudy
    return load_spec(s.name, s.defaults, s.Params, smoke=s.smoke if smoke else None)


def test_smoke_spec_is_small_and_default_spec_is_valid():
    smoke = _spec(smoke=True)
    full = _spec()
    assert set(smoke.sweep.arms) == set(DECIDING.values()) and smoke.sweep.seeds == 2
    assert full.sweep.seeds.min >= 3 and full.sweep.seeds.max > full.sweep.seeds.min
    lrs = {(a["mixer"], a["lr"]) for a in full.sweep.arms.values() if "ablation" not in a}
    assert {("attention", 0.016), ("attention", 0.032), ("pool3", 0.032)} <= lrs


def test_data_has_a_test_split_and_the_training_set_of_before():
    data = STUDY.prepare_data(_spec())
    assert (len(data["x_train"]), len(data["x_val"]), len(data["x_test"])) == (2700, 900, 900)


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    uri, tmp, _ = smoke_sweep("metaformer")  # shared with tests/test_every_study.py
    return uri, tmp


def test_smoke_sweep_logs_one_child_per_mixer_lr_seed(smoke_run):
    uri, tmp = smoke_run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("metaformer")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    spec = _spec(smoke=True)
    keys = sorted(
        (c.data.params["mixer"], c.data.params["lr"], c.data.params["seed"]) for c in children
    )
    assert len(keys) == len(set(keys)) == len(spec.sweep.arms) * spec.sweep.seeds
    for child in children:
        assert child.data.tags["skeptic.outcome"] == "completed"
        for metric in ("val_acc", "test_acc", "params", "macs", "train_images_per_s"):
            assert metric in child.data.metrics
    assert list((tmp / "runs" / "metaformer").glob("*/report/acc_vs_macs.png"))


def test_smoke_parent_and_report_carry_every_comparison(smoke_run):
    uri, tmp = smoke_run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("metaformer")
    parent = next(
        r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(Tag.KIND) == "sweep"
    )
    for c in STUDY.comparisons(_spec(smoke=True)):
        assert Metric.comparison(c.name, "diff") in parent.data.metrics, c.name
        assert parent.data.tags[Tag.decision(c.name)] in {str(d) for d in Decision}
    assert parent.data.tags[Tag.VERDICT] in ("held", "overturned", "undecided")
    report = next((tmp / "runs" / "metaformer").glob("*/report"))
    text = (report / "report.md").read_text()
    assert "## Deciding comparisons" in text and "(comparisons.png)" in text
    assert (report / "comparisons.png").is_file()
    assert "val_acc %" in text and "test_acc %" in text  # each number names its split


def test_smoke_champion_is_registered_with_mixer_and_macs(smoke_run):
    uri, _ = smoke_run
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("metaformer", "champion")
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/metaformer@champion")
    assert info.metadata["mixer"] in MIXERS and info.metadata["macs"] > 0
    model = mlflow.pyfunc.load_model("models:/metaformer@champion")
    size = info.metadata["input_shape"]
    probs = model.predict(torch.rand(3, *size).numpy())
    assert probs.shape == (3, 10)
    assert version.tags[Tag.METRIC] == "val_acc"  # the champion is chosen on validation
    assert version.tags[Tag.VERDICT] in ("held", "overturned", "undecided")
