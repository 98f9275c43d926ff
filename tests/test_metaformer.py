"""Study `metaformer`: every mixer and ablation builds through timm's MetaFormer and trains at
the study's input size, every block carries LayerScale at the reference's 1e-5, the hybrid is
[Pool, Pool, Attn, Attn] with a position embedding before its first attention stage, pooling
mixes in every stage, params/MACs are measured, a trial's lr search keeps the lr validation
prefers, the report's labels do not overlap, the decision rule decides from hand-made
results (through skeptic.stats.judge, as a sweep judges); then `skeptic run metaformer
--smoke` end to end on a real local Ray into a temporary MLflow store."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
import torch
from matplotlib.text import Text
from mlflow.tracking import MlflowClient
from timm.layers import GroupNorm1
from timm.models.metaformer import Attention, MetaFormer, Pooling, Scale
from torch import nn

from jobs.metaformer import evidence
from jobs.metaformer.mixers import (
    ABLATIONS,
    MIXERS,
    AddPositionEmb,
    LayerNormChannel,
    RandomMixing,
    Zero,
    build_metaformer,
    stage_sizes,
)
from jobs.metaformer.study import MetaFormerStudy, Params, count_macs, count_params
from skeptic import stats
from skeptic.contexts import OneProcess
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


def _blocks(model: MetaFormer) -> list[nn.Module]:
    return [b for s in model.stages for b in s.blocks]


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_block_has_layer_scale_at_the_references_1e_5(mixer):
    """poolformer.py / metaformer.py: use_layer_scale=True, layer_scale_init_value=1e-5 on
    both branches (token mixer and MLP) of every block, trainable."""
    assert P.layer_scale == pytest.approx(1e-5)
    blocks = _blocks(_model(mixer))
    assert len(blocks) == sum(P.depths)
    for block in blocks:
        for scale in (block.layer_scale1, block.layer_scale2):
            assert isinstance(scale, Scale), type(scale)
            assert scale.scale.requires_grad
            assert torch.equal(scale.scale, torch.full_like(scale.scale, 1e-5))


def test_layer_scale_is_off_only_when_asked():
    model = build_metaformer("pool3", "none", tuple(P.dims), tuple(P.depths), IMAGE, 10, None)
    assert not any(isinstance(m, Scale) for b in _blocks(model) for m in b.modules()
                   if m is b.layer_scale1 or m is b.layer_scale2)  # fmt: skip


def test_hybrid_is_pool_pool_attn_attn_with_a_position_embedding_before_attention():
    """metaformer_ppaa_s12_224: four stages [Pool, Pool, Attn, Attn], LayerNormChannel, and a
    learned position embedding (zeros at init) after the downsampling into stage 3 only."""
    model = _model("hybrid")
    kinds = [type(s.blocks[0].token_mixer) for s in model.stages]
    assert kinds == [Pooling, Pooling, Attention, Attention]
    embeds = [[m for m in s.downsample.modules() if isinstance(m, AddPositionEmb)]
              for s in model.stages]  # fmt: skip
    assert [len(e) for e in embeds] == [0, 0, 1, 0]
    side = stage_sizes(IMAGE, 4)[2]
    assert embeds[2][0].pos_embed.shape == (1, P.dims[2], side, side)
    assert not embeds[2][0].pos_embed.any()
    assert all(isinstance(b.norm1, LayerNormChannel) for b in model.stages[0].blocks)
    assert all(isinstance(b.norm1, nn.LayerNorm) for b in model.stages[3].blocks)
    x = torch.rand(2, 3, IMAGE, IMAGE)
    before = model(x)
    with torch.no_grad():
        embeds[2][0].pos_embed.add_(1.0)
    assert not torch.allclose(before, model(x))  # it is on the path the input takes


def test_pooling_models_use_group_norm_one_and_no_position_embedding():
    model = _model("pool3")
    assert all(isinstance(b.norm1, GroupNorm1) and isinstance(b.norm2, GroupNorm1)
               for b in _blocks(model))  # fmt: skip
    assert not any(isinstance(m, AddPositionEmb) for m in model.modules())
    assert sum(isinstance(m, AddPositionEmb) for m in _model("attention").modules()) == 1


def test_ablations_change_the_blocks_as_named():
    assert all(isinstance(b.res_scale1, Zero) for b in _blocks(_model("pool3", "no_residual")))
    assert all(isinstance(b.mlp, Zero) for b in _blocks(_model("pool3", "no_mlp")))
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
    for side, d, depth in zip(stage_sizes(IMAGE, len(P.dims)), P.dims, P.depths, strict=True):
        n = side * side
        extra += depth * (4 * n * d * d + 2 * n * n * d)
    assert count_macs(attn, IMAGE) - count_macs(pool, IMAGE) == extra


# ---- the decision rule, on hand-made results ---------------------------------------------------

STUDY = MetaFormerStudy()
DECIDING = {"pool3": "pool3", "attention": "attention", "identity": "identity"}
GRID = [0.002, 0.004]  # the lr search at batch 64


def _result(
    arm: str, seed: int, test: float, val: float | None = None, pick: int = 0, macs: int = 10**6
) -> TrialResult:
    """A finished trial as the sweep records it: the picked lr's metrics, and every lr's."""
    mixer, _, rest = arm.partition("-")
    ablation = rest if rest in ABLATIONS else "none"
    val = test if val is None else val
    per_lr = {}
    for k, lr in enumerate(GRID):
        per_lr.update({f"val_acc_lr{k}": val if k == pick else val - 0.1, f"lr_base_lr{k}": lr,
                       f"train_acc_lr{k}": 0.97 if k == pick else 0.5})  # fmt: skip
    row = {
        **per_lr, "test_acc": test, "val_acc": val, "train_acc": 0.97, "lr_base": GRID[pick],
        "lr_index": pick, "params": 1000, "macs": macs, "train_images_per_s": 100.0,
        "eval_images_per_s": 300.0,
    }  # fmt: skip
    early = {**row, "train_acc_lr0": 0.4, "train_acc_lr1": 0.4}
    params = {"arm": arm, "mixer": mixer, "ablation": ablation, "lr_grid": [0.032, 0.064],
              "seed": seed}  # fmt: skip
    return TrialResult(f"{arm}{seed}", params, [early, row], "completed")


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
    assert compares["pool3_vs_identity"].a == {"arm": "identity"}
    assert all(c.paired_by == "seed" and c.why for c in compares.values())
    arms = _spec().sweep.arms
    for c in compares.values():  # each selector names exactly one arm of the default sweep
        for side in (c.a, c.b):
            assert set(side) == {"arm"} and side["arm"] in arms


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


def test_evidence_reports_test_numbers_ablations_lr_picks_curves_and_the_paper():
    results = _sweep({"pool3": 0.80, "attention": 0.81, "identity": 0.60}, seeds=3)
    for seed, (test, val) in enumerate([(0.10, 0.11), (0.11, 0.10), (0.10, 0.12)]):
        results.append(_result("pool3-no_residual", seed, test, val))
    for seed in range(3):
        results.append(_result("pool3-batchnorm", seed, 0.95))
        results.append(_result("hybrid", seed, 0.90 + 0.01 * seed, pick=1))
    judged = stats.judge(STUDY.comparisons(_spec()), results, STUDY.report_metric)
    ev = STUDY.evidence(results, _spec(), judged)
    assert "ablation no_residual" in ev.summary and "collapses, as in the paper" in ev.summary
    assert "ablation batchnorm" in ev.summary and "no collapse" in ev.summary
    assert "hybrid 97.0% (from epoch 2)" in ev.summary  # where training stands
    assert "Every deciding arm fits its training set" in ev.summary
    rows = {r["arm"]: r for r in ev.table}
    assert set(rows) == {"pool3", "attention", "identity", "pool3-no_residual",
                         "pool3-batchnorm", "hybrid"}  # fmt: skip
    assert {"val_acc %", "test_acc %", "± sd (test)"} <= set(rows["pool3"])
    assert rows["hybrid"]["lr picked (per seed)"] == "0.004 x3"
    assert "lr at the edge of the search: " in ev.summary
    assert "hybrid (highest, 3 of 3 seeds)" in ev.summary and "pool3 (lowest, 3 of 3" in ev.summary
    assert rows["pool3"]["val_acc % per lr"].startswith("0.002: ")
    assert {"acc_vs_macs", "learning_curves"} <= set(ev.figures)
    paper = {r["quantity"]: r for r in ev.paper}
    assert all(set(r) == {"quantity", "paper", "ours", "direction agrees", "note"}
               for r in ev.paper)  # fmt: skip
    assert paper["pool3 - attention, test_acc %"]["direction agrees"] == "yes"  # non-inferior
    assert paper["pool3 - identity, test_acc %"]["direction agrees"] == "yes"
    assert paper["hybrid - pool3, test_acc %"]["direction agrees"] == "yes"  # paper: higher
    assert paper["pool3-no_residual - pool3, test_acc %"]["direction agrees"] == "yes"
    assert paper["random - pool3, test_acc %"]["ours"] == "not run"
    plt.close("all")


def test_acc_vs_macs_labels_do_not_overlap():
    """Arms at the same MACs and nearly the same accuracy (as pool3-no_norm and random were)
    get labels that are pushed apart, each still tied to its point by a leader line."""
    results = []
    for arm, acc in [
        ("pool3", 0.8),
        ("pool5", 0.805),
        ("pool7", 0.81),
        ("identity", 0.79),
        ("pool3-no_norm", 0.17),
        ("random", 0.168),
        ("pool3-no_mlp", 0.18),
    ]:
        results += [_result(arm, seed, acc) for seed in range(2)]
    results += [_result("attention", s, 0.8, macs=2 * 10**6) for s in range(2)]
    fig = evidence.evidence(results).figures["acc_vs_macs"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_text()]
    assert len(labels) == 8
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its line
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)


def test_spread_keeps_order_and_gap_and_stays_in_range():
    ys = [0.5, 0.5, 0.51, 0.9, 0.99, 0.1]
    out = evidence.spread(ys, gap=0.05, low=0.0, high=1.0)
    order = np.argsort(ys, kind="stable")
    placed = np.array(out)[order]
    assert np.all(np.diff(placed) >= 0.05 - 1e-12) and placed.max() <= 1.0 + 1e-12
    assert out[5] == pytest.approx(0.1)  # a label with room stays at its point


# ---- a trial's lr search -----------------------------------------------------------------------


@dataclass
class _Ctx(OneProcess):
    """The TrialContext a trial sees (skeptic.api), kept in memory: every report."""

    params: Params
    data: dict[str, Any]
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    upstream: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    state: dict[str, Any] | None = None
    reports: list[tuple[dict, dict]] = field(default_factory=list)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def report(self, metrics: dict, state: dict, samples: int = 0, progress: Any = None) -> None:
        self.reports.append((dict(metrics), state))
        self.start_epoch += 1


def _tiny_data(n: int = 96) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    split = {}
    for name, size in (("train", n), ("val", 48), ("test", 48)):
        split[f"x_{name}"] = rng.random((size, 3, 8, 8), dtype=np.float32)
        split[f"y_{name}"] = np.arange(size) % 10
    return {**split, "classes": [str(c) for c in range(10)]}


def test_a_trial_searches_every_lr_and_keeps_the_one_validation_prefers():
    """One model per lr from the same initial weights on the same batches; the trial's
    metrics and weights are those of the best val_acc; test accuracy once, at the end."""
    p = Params(mixer="pool3", lr_grid=[1e-9, 0.05], epochs=2, warmup_epochs=0.5, batch_size=32,
               dims=[8, 16], depths=[1, 1])  # fmt: skip
    ctx = _Ctx(p, _tiny_data())
    STUDY.train(ctx)
    assert len(ctx.reports) == 2
    first, last = ctx.reports[0][0], ctx.reports[-1][0]
    assert "test_acc" not in first and "test_acc" in last
    for m in (first, last):
        k = m["lr_index"]
        assert m["val_acc"] == max(m["val_acc_lr0"], m["val_acc_lr1"]) == m[f"val_acc_lr{k}"]
        assert m["lr_base"] == m[f"lr_base_lr{k}"] == [1e-9 * 32 / 1024, 0.05 * 32 / 1024][k]
    state = ctx.reports[-1][1]
    assert len(state["runs"]) == 2
    picked = state["runs"][int(last["lr_index"])]["model"]
    assert all(torch.equal(picked[k], v) for k, v in state["model"].items())
    assert state["model_config"]["lr"] == last["lr_base"]
    # the lr that barely moved still holds the common initial weights
    torch.manual_seed(ctx.seed)
    start = MetaFormerStudy().build_model(state["model_config"]).state_dict()
    slow = state["runs"][0]["model"]
    assert all(torch.allclose(slow[k], v, atol=1e-6) for k, v in start.items())


def test_a_resumed_trial_continues_every_lr_from_its_checkpoint():
    p = Params(mixer="identity", lr_grid=[0.01, 0.05], epochs=2, warmup_epochs=0.5,
               batch_size=32, dims=[8, 16], depths=[1, 1])  # fmt: skip
    whole = _Ctx(p, _tiny_data())
    STUDY.train(whole)
    resumed = _Ctx(p, _tiny_data(), start_epoch=1, state=whole.reports[0][1])
    STUDY.train(resumed)
    assert len(resumed.reports) == 1
    assert resumed.reports[0][0]["test_acc"] == whole.reports[-1][0]["test_acc"]


def _spec(smoke: bool = False):
    s = MetaFormerStudy
    return load_spec(s.name, s.defaults, s.Params, smoke=s.smoke if smoke else None)


def test_smoke_spec_is_small_and_default_spec_is_valid():
    smoke = _spec(smoke=True)
    full = _spec()
    assert set(smoke.sweep.arms) == set(DECIDING.values()) and smoke.sweep.seeds == 2
    assert full.sweep.seeds.min >= 3 and full.sweep.seeds.max > full.sweep.seeds.min
    assert {"pool3", "attention", "identity", "hybrid"} <= set(full.sweep.arms)
    # every arm gets the same lr search: no arm fixes its own lr
    assert not any("lr" in a or "lr_grid" in a for a in full.sweep.arms.values())
    assert len(Params().lr_grid) >= 2 and Params().layer_scale == pytest.approx(1e-5)


def test_data_has_train_validation_and_a_larger_test_split():
    data = STUDY.prepare_data(_spec())
    assert (len(data["x_train"]), len(data["x_val"]), len(data["x_test"])) == (1200, 600, 1200)
    assert data["x_train"].shape[-1] == IMAGE == 18
    assert stage_sizes(IMAGE, 4) == [9, 5, 3, 2]


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(smoke_sweep):
    uri, tmp, _ = smoke_sweep("metaformer")  # shared with tests/test_every_study.py
    return uri, tmp


def test_smoke_sweep_logs_one_child_per_arm_and_seed(smoke_run):
    uri, tmp = smoke_run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("metaformer")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("skeptic.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    spec = _spec(smoke=True)
    keys = sorted((c.data.params["mixer"], c.data.params["seed"]) for c in children)
    assert len(keys) == len(set(keys)) == len(spec.sweep.arms) * spec.sweep.seeds
    for child in children:
        assert child.data.tags["skeptic.outcome"] == "completed"
        for metric in ("val_acc", "test_acc", "params", "macs", "train_images_per_s", "lr_base",
                       "val_acc_lr0", "train_acc_lr0"):  # fmt: skip
            assert metric in child.data.metrics
    assert list((tmp / "runs" / "metaformer").glob("*/report/acc_vs_macs.png"))
    assert list((tmp / "runs" / "metaformer").glob("*/report/learning_curves.png"))


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
    assert "## The paper beside this run" in text and "| direction agrees |" in text


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
