"""Study `pruning` at the paper's scale (`--preset paper`, `paper-resnet110`): the CIFAR
networks of the reference code have the paper's sizes and train, Li et al.'s VGG-16-A /
ResNet-56-B / ResNet-110-B plans prune to the paper's parameter and FLOPs counts and
rebuild from their config, the augmentation and the multi-worker batch split do what they
say, and the presets validate, plan and estimate. CPU only, tiny batches, no training
beyond a step or two."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from jobs.pruning import cifar_nets, evidence, models, paper
from jobs.pruning.prune import count_flops, count_params, l1_filter_norms, prune_to
from jobs.pruning.study import (
    ARCH_NAMES,
    ARMS,
    BASELINE_FIELDS,
    PRESETS,
    Params,
    Pruning,
    crop_and_flip,
    plan_trial,
    train_one_epoch,
)
from skeptic.planning import check_comparisons, gpu_hours
from skeptic.spec import SpecError, grid_points, load_spec, resolve_params
from skeptic.stages import RunningStage
from skeptic.stats import judge
from skeptic.study import TrialResult
from skeptic.training import epoch_generator, train_epoch

SHAPE = [3, 32, 32]
CLASSES = [str(i) for i in range(10)]


def _build(arch: str, channels: list[int] | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    channels = models.full_channels(arch) if channels is None else channels
    return models.build(models.model_config(channels, SHAPE, CLASSES, arch=arch))


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """BatchNorm affine and running statistics away from their init, so that a pruned
    model that kept the wrong channels would compute something else."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.1
            m.running_mean = torch.randn(n, generator=gen) * 0.1
            m.running_var = torch.rand(n, generator=gen) + 0.5
    return model.eval()


# ---- the networks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, params",
    [("vgg16", 15.0e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)],
)
def test_each_network_has_the_papers_size_and_takes_a_step(arch, params):
    model = _build(arch)
    assert count_params(model) == pytest.approx(params, rel=0.02)
    x, y = torch.rand(2, *SHAPE), torch.tensor([1, 7])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert model(x).shape == (2, 10)


def test_the_networks_follow_the_reference_layout():
    vgg = _build("vgg16")
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4
    head = [type(m) for m in vgg.classifier]
    assert head == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]  # vgg.py's classifier
    assert vgg.classifier[0].in_features == 512 and vgg.classifier[0].out_features == 512
    r56 = _build("resnet56")
    assert len(r56.blocks()) == 27 and len(models.channels_of(r56)) == 27
    assert sum(isinstance(m, nn.Conv2d) for m in r56.modules()) == 55  # 56 layers: + the fc
    assert r56.blocks()[9].downsample is not None  # stride 2 into stage 2, zero-padded
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in r56.modules())
    # the input is normalised inside the model, with constants that are not parameters
    assert "normalize.mean" not in vgg.state_dict()


def test_counted_flops_are_li_et_als():
    """Li et al. count a multiply-add once; count_flops counts it twice."""
    assert count_flops(_build("vgg16"), SHAPE) / 2 == pytest.approx(3.13e8, rel=0.01)
    assert count_flops(_build("resnet56"), SHAPE) / 2 == pytest.approx(1.25e8, rel=0.01)
    assert count_flops(_build("resnet110"), SHAPE) / 2 == pytest.approx(2.53e8, rel=0.01)


# ---- Li et al.'s plans ----------------------------------------------------------------


def test_vgg16_a_prunes_half_of_conv1_and_convs_8_to_13():
    channels = cifar_nets.plan_channels("vgg16", "A")
    assert channels == [32, 64, 128, 128, 256, 256, 256] + [256] * 6  # vggprune.py's cfg


def test_resnet_b_plans_skip_the_sensitive_blocks_and_prune_per_stage():
    r56 = cifar_nets.plan_channels("resnet56", "B")
    # res56prune.py -v B: conv ids 16, 18, 20, 34, 38, 54 (blocks 7, 8, 9, 16, 18, 26) kept
    skipped = {7, 8, 9, 16, 18, 26}
    full = cifar_nets.resnet_channels(56)
    assert [i for i, (a, b) in enumerate(zip(r56, full, strict=True)) if a == b] == sorted(skipped)
    assert {r56[i] for i in range(9) if i not in skipped} == {6}  # 16 x (1 - 0.6)
    assert {r56[i] for i in range(9, 18) if i not in skipped} == {22}  # 32 x 0.7
    assert {r56[i] for i in range(18, 27) if i not in skipped} == {57}  # 64 x 0.9
    r110 = cifar_nets.plan_channels("resnet110", "B")
    assert [i for i, c in enumerate(r110) if c == cifar_nets.resnet_channels(110)[i]] == [
        17,
        18,
        36,
    ]
    assert set(r110[:17]) == {8} and set(r110[19:36]) == {19} and set(r110[37:]) == {44}


@pytest.mark.parametrize(
    "arch, plan, params, macs",
    [
        ("vgg16", "A", 5.4e6, 2.06e8),
        ("resnet56", "A", 7.7e5, 1.12e8),
        ("resnet56", "B", 7.3e5, 9.09e7),
        ("resnet110", "A", 1.68e6, 2.13e8),
        ("resnet110", "B", 1.16e6, 1.55e8),
    ],
)
def test_plans_prune_to_the_papers_sizes(arch, plan, params, macs):
    """Li et al. 2017, Table 1 (the rows Liu et al.'s Table 1 re-runs)."""
    pruned = _build(arch, cifar_nets.plan_channels(arch, plan))
    assert count_params(pruned) == pytest.approx(params, rel=0.02)
    assert count_flops(pruned, SHAPE) / 2 == pytest.approx(macs, rel=0.02)
    assert paper.LI_SIZES[f"{ARCH_NAMES[arch]}-{plan}"] == (params, macs)  # what the report shows


@pytest.mark.parametrize("arch, plan", [("vgg16", "A"), ("resnet56", "B")])
def test_pruning_keeps_the_largest_l1_filters_and_rebuilds_from_its_config(arch, plan):
    full = _randomise_bn(_build(arch))
    target = cifar_nets.plan_channels(arch, plan)
    pruned = prune_to(full, SHAPE, target)
    assert models.channels_of(pruned) == target
    # the kept filters are those of the largest own-kernel L1 norm, in their order (a VGG
    # conv also loses the input channels its predecessor lost; a block's first conv reads
    # the unpruned residual stream)
    removed, before = {}, None
    for conv, new, k in zip(
        models.prunable_convs(full), models.prunable_convs(pruned), target, strict=True
    ):
        kept = sorted(torch.argsort(l1_filter_norms(conv), descending=True)[:k].tolist())
        inputs = before if arch == "vgg16" and before is not None else list(range(conv.in_channels))
        torch.testing.assert_close(new.weight, conv.weight[kept][:, inputs])
        removed[conv] = sorted(set(range(conv.out_channels)) - set(kept))
        before = kept
    # surgery only: the pruned model computes what the full one does with the removed
    # filters' BatchNorm outputs zeroed (ReLU(0) = 0 feeds nothing to the next layer)
    silenced = _randomise_bn(_build(arch))
    silenced.load_state_dict(full.state_dict())
    convs = models.prunable_convs(silenced)
    bns = [m for m in silenced.modules() if isinstance(m, nn.BatchNorm2d)]
    for conv, idx in zip(convs, removed.values(), strict=True):
        bn = next(
            b for b in bns if b.num_features == conv.out_channels and _follows(silenced, conv, b)
        )
        bn.weight.data[idx] = 0
        bn.bias.data[idx] = 0
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), silenced.eval()(x), rtol=1e-4, atol=1e-4)
    # the registry stores weights + config: the config rebuilds it, outputs identical
    config = models.model_config(models.channels_of(pruned), SHAPE, CLASSES, arch=arch)
    rebuilt = models.build(config)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))


def _follows(model: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """Whether `bn` is the BatchNorm right after `conv` (module order)."""
    mods = list(model.modules())
    return mods.index(bn) == next(
        i for i in range(mods.index(conv) + 1, len(mods)) if isinstance(mods[i], nn.BatchNorm2d)
    )


# ---- params -----------------------------------------------------------------------------


def test_the_plan_defaults_to_table_1s_for_the_network():
    assert Params(arch="vgg16").plan == "A"
    assert Params(arch="resnet56").plan == Params(arch="resnet110").plan == "B"
    assert Params().plan == "uniform" and Params().arch == "small_vgg"  # the default run
    assert Params(arch="resnet56", plan="A").plan == "A"
    with pytest.raises(ValueError, match="plan"):
        Params(arch="vgg16", plan="B")  # Li et al. have no VGG-16-B
    with pytest.raises(ValueError, match="plan"):
        Params(plan="A")  # the small VGG has no named plan
    with pytest.raises(ValueError, match="ratio"):
        Params(arch="resnet56", plan="uniform", ratio=0.95)  # 16 filters keep none
    assert {"arch", "augment"} <= set(BASELINE_FIELDS) and "plan" not in BASELINE_FIELDS


# ---- augmentation and the multi-worker split ----------------------------------------------


def test_crop_and_flip_is_pad_4_random_crop_and_flip():
    x = torch.rand(3, 3, 32, 32)
    centre = torch.tensor([[4, 4], [0, 0], [8, 3]])
    out = crop_and_flip(x, centre, torch.tensor([False, False, True]))
    assert torch.equal(out[0], x[0])  # offset (4, 4) of the padded image: the image
    assert torch.equal(out[1, :, 4:, 4:], x[1, :, :28, :28])  # shifted down-right by 4
    assert (out[1, :, :4] == 0).all() and (out[1, :, :, :4] == 0).all()  # zero padding
    shifted = torch.nn.functional.pad(x[2], (4, 4, 4, 4))[:, 8:40, 3:35]
    assert torch.equal(out[2], shifted.flip(2))


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


def test_one_worker_without_augmentation_trains_as_skeptics_train_epoch():
    x, y = torch.rand(50, 3, 8, 8), torch.randint(0, 10, (50,))
    a, b = _tiny_net(), _tiny_net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    ours = train_one_epoch(a, opt_a, x, y, 16, epoch_generator(3, 1))
    theirs = train_epoch(b, opt_b, x, y, 16, epoch_generator(3, 1))
    assert ours == theirs
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


class _Recorder(nn.Module):
    """Records the labels (= sample ids) and images of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))
        self.seen: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images.append(x.detach().clone())
        return self.w.expand(len(x), 10)


def test_workers_split_each_global_batch_and_draw_the_same_crops():
    n, batch = 40, 16
    x = torch.rand(n, 3, 8, 8)
    ids = torch.arange(n) % 10
    runs = {}
    for world in (1, 2):
        for rank in range(world):
            net = _Recorder()
            opt = torch.optim.SGD(net.parameters(), lr=0.0)
            shard = (lambda idx, r=rank, w=world: idx[r::w]) if world > 1 else None
            train_one_epoch(net, opt, x, ids, batch, epoch_generator(0, 5), augment=True,
                            shard=shard, world_size=world)  # fmt: skip
            runs[(world, rank)] = net.images
    # two workers see halves of the same global batches, with the same crops and flips
    for step, whole in enumerate(runs[(1, 0)]):
        torch.testing.assert_close(runs[(2, 0)][step], whole[0::2])
        torch.testing.assert_close(runs[(2, 1)][step], whole[1::2])
    # augmented: not the raw images; the same (seed, epoch) draws the same, another epoch not
    assert not torch.equal(
        runs[(1, 0)][0], x[torch.randperm(n, generator=epoch_generator(0, 5))[:batch]]
    )
    again = _Recorder()
    train_one_epoch(again, torch.optim.SGD(again.parameters(), lr=0.0), x, ids, batch,
                    epoch_generator(0, 5), augment=True)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(again.images, runs[(1, 0)], strict=True))


# ---- baseline stage and a trial on the paper's network (CPU, a step or two) ----------------


def _data(n: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.random((k, *SHAPE), dtype=np.float32), rng.integers(0, 10, k).astype(np.int64)

    (x, y), (xv, yv), (xt, yt) = split(n), split(8), split(8)
    return {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv, "x_test": xt, "y_test": yt,
            "classes": CLASSES}  # fmt: skip


@pytest.fixture(scope="module")
def vgg_baseline() -> dict:
    p = Params(arch="vgg16", epochs=1, batch_size=8, augment=True)
    config = {k: getattr(p, k) for k in BASELINE_FIELDS}
    ctx = RunningStage("baseline", config, 0, torch.device("cpu"), _data(), {})
    return Pruning().run_stage("baseline", ctx)


def test_the_baseline_stage_trains_the_unpruned_network(vgg_baseline):
    assert vgg_baseline["model_config"]["arch"] == "vgg16"
    assert vgg_baseline["model_config"]["channels"] == cifar_nets.vgg16_channels()
    model = models.build(vgg_baseline["model_config"])
    model.load_state_dict(vgg_baseline["trained"])
    assert not torch.equal(
        vgg_baseline["init"]["features.0.weight"], vgg_baseline["trained"]["features.0.weight"]
    )


def test_plans_from_the_baseline_follow_vgg16_a(vgg_baseline):
    p = Params(arch="vgg16", method="scratch_b", epochs=160, finetune_epochs=40)
    sb = plan_trial(p, vgg_baseline, seed=0)
    assert sb.config["channels"] == list(cifar_nets.VGG16_A)
    assert sb.epochs == 243  # main_B.py: int(160 x 313.5M / 206.3M)
    assert sb.facts["params"] == pytest.approx(5.4e6, rel=0.02)
    ft = plan_trial(p.model_copy(update={"method": "fine_tuned"}), vgg_baseline, seed=0)
    assert ft.epochs == 40 and not ft.step_decay
    assert Pruning().work(p, 45_000) == 243 * 45_000  # VGG-16: ARCH_COST 1


class _Ctx(SimpleNamespace):
    """A TrialContext's surface, one worker, in this process."""

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def prepare_model(self, model, *, conv=True):
        self.prepared = model
        return model

    def shard(self, idx):
        return idx[self.rank :: self.world_size]

    def report(self, metrics, state, samples=0, progress=None):
        self.reports.append((metrics, state))


def test_a_fine_tuned_trial_trains_through_prepare_model_and_registers_its_config(vgg_baseline):
    p = Params(arch="vgg16", method="fine_tuned", finetune_epochs=1, batch_size=8, augment=True)
    ctx = _Ctx(params=p, seed=0, device=torch.device("cpu"), data=_data(), state=None,
               start_epoch=0, upstream={"baseline": vgg_baseline}, rank=0, world_size=1,
               reports=[])  # fmt: skip
    Pruning().train(ctx)
    assert ctx.prepared is not None and len(ctx.reports) == 1
    metrics, state = ctx.reports[0]
    assert {"train_loss", "val_acc", "test_acc", "flops", "params"} <= set(metrics)
    config = state["model_config"]
    assert config["arch"] == "vgg16" and config["plan"] == "A"
    assert config["channels"] == list(cifar_nets.VGG16_A)
    rebuilt = Pruning().build_model(config)
    rebuilt.load_state_dict(state["model"])
    assert Pruning().model_metadata(config)["plan"] == "A"


# ---- the presets ------------------------------------------------------------------------


def _preset_spec(name: str, *sets: str):
    return load_spec("pruning", Pruning.defaults, Params, sets=list(sets),
                     preset=(name, PRESETS[name].spec))  # fmt: skip


@pytest.mark.parametrize(
    "name, archs", [("paper", ["vgg16", "resnet56"]), ("paper-resnet110", ["resnet110"])]
)
def test_the_paper_presets_validate_and_follow_the_reference_recipe(name, archs):
    spec = _preset_spec(name)
    assert spec.data.name == "cifar10" and spec.data.test_fraction == 0
    assert spec.sweep.seeds == 5 or getattr(spec.sweep.seeds, "min", None) == 5
    points = grid_points(spec)
    assert len(points) == 3 * len(archs)  # fine-tuned, Scratch-E, Scratch-B per network
    for point in points:
        p = resolve_params(spec, Params, {k: v for k, v in point.items() if k != "arm"})
        assert (p.epochs, p.lr, p.batch_size, p.weight_decay) == (160, 0.1, 64, 1e-4)
        assert (p.finetune_epochs, p.finetune_lr, p.scratch_b_cap) == (40, 1e-3, None)
        assert p.augment and p.plan == cifar_nets.TABLE1_PLAN[p.arch]
    check_comparisons(Pruning(), spec)  # every comparison pairs one trial per seed and arm
    names = [c.name for c in Pruning().comparisons(spec)]
    slugs = {"vgg16": "vgg16A", "resnet56": "resnet56B", "resnet110": "resnet110B"}
    assert names == [f"{k}_{slugs[a]}" for a in archs for k in ("sb_noninf", "ft_vs_sb")]
    Pruning().check_spec(spec, None)


def test_a_named_plan_refuses_a_swept_ratio():
    spec = _preset_spec("paper", "sweep.space.ratio.grid=[0.3,0.5]")
    with pytest.raises(SpecError, match="sweep.space.ratio"):
        Pruning().check_spec(spec, None)


def test_the_gpu_hours_count_the_baseline_fine_tuning_and_scratch_b():
    study = Pruning()
    spec = _preset_spec("paper")
    low, high, images = gpu_hours(study, spec, PRESETS["paper"], None)
    n = 45_000  # 50000 less the 10% validation holdout
    per_seed = (160 + 40 + 160 + 243) * n * 1.0 + (160 + 40 + 160 + 220) * n * 2.5
    assert images == pytest.approx(5 * per_seed)
    assert low == high == pytest.approx(5 * per_seed * PRESETS["paper"].seconds_per_image / 3600)
    assert 5 < low < 20
    low110, _, _ = gpu_hours(
        study, _preset_spec("paper-resnet110"), PRESETS["paper-resnet110"], None
    )
    assert low110 == pytest.approx(5 * (160 + 40 + 160 + 260) * n * 5.0 * 8e-5 / 3600)
    assert "stated" in PRESETS["paper"].cost_basis


# ---- the verdict across networks ----------------------------------------------------------


@functools.cache
def _sizes(arch: str, plan: str) -> dict[str, int]:
    """What a structured trial logs of its network's size, pruned and unpruned."""
    pruned, full = _build(arch, cifar_nets.plan_channels(arch, plan)), _build(arch)
    return {"params": count_params(pruned), "flops": count_flops(pruned, SHAPE),
            "params_full": count_params(full), "flops_full": count_flops(full, SHAPE)}  # fmt: skip


def _results(means: dict, noise: float = 0.002, seeds: int = 5) -> list[TrialResult]:
    """Test accuracy per (arch, arm); each trial carries the facts a structured trial logs."""
    out = []
    for seed in range(seeds):
        for i, ((arch, arm), mean) in enumerate(means.items()):
            acc = mean + noise * np.random.default_rng([seed, i]).normal()
            plan = cifar_nets.TABLE1_PLAN[arch]
            params = {"arm": arm, "method": arm, "ratio": 0.5, "seed": seed, "arch": arch,
                      "plan": plan, "lr": 0.1, "finetune_lr": 1e-3, "width": 16}  # fmt: skip
            sizes = _sizes(arch, plan) if seed == 0 else {}
            final = {"test_acc": acc, "val_acc": 0.5, "baseline_test_acc": 0.93, **sizes}
            out.append(TrialResult(f"{arch}{arm}{seed}", params, [final], "completed"))
    return out


def _decide(means: dict):
    study, spec = Pruning(), _preset_spec("paper")
    results = _results(means)
    judged = judge(study.comparisons(spec), results, study.report_metric)
    return study.decide({j.compare.name: j for j in judged}), judged, results, spec


def test_scratch_b_matching_on_both_networks_overturns_the_belief():
    means = {("vgg16", "fine_tuned"): 0.934, ("vgg16", "scratch_b"): 0.938,
             ("resnet56", "fine_tuned"): 0.927, ("resnet56", "scratch_b"): 0.930}  # fmt: skip
    (held, why), _, _, _ = _decide(means)
    assert held is False and "VGG-16-A, ResNet-56-B" in why


def test_networks_that_disagree_leave_it_undecided_and_one_that_agrees_holds_only_with_the_other():
    means = {("vgg16", "fine_tuned"): 0.934, ("vgg16", "scratch_b"): 0.938,
             ("resnet56", "fine_tuned"): 0.93, ("resnet56", "scratch_b"): 0.90}  # fmt: skip
    (held, why), _, _, _ = _decide(means)
    assert held is None and "depends on the network" in why
    means[("vgg16", "scratch_b")] = 0.90
    (held, why), _, _, _ = _decide(means)
    assert held is True and "every network" in why


def test_the_report_sets_each_network_beside_its_table_1_row(monkeypatch):
    monkeypatch.setattr(evidence, "network_speed_rows", lambda *a: [{"plan": "A", "params": 1}])
    means = {("vgg16", "fine_tuned"): 0.934, ("vgg16", "scratch_e"): 0.936,
             ("vgg16", "scratch_b"): 0.938, ("resnet56", "fine_tuned"): 0.927,
             ("resnet56", "scratch_b"): 0.930}  # fmt: skip
    _, judged, results, spec = _decide(means)
    ev = Pruning().evidence(results, spec, judged)
    assert {row["network"] for row in ev.table} == {"VGG-16-A", "ResNet-56-B"}
    assert {"vgg16A_accuracy_vs_ratio", "resnet56B_accuracy_vs_ratio"} <= set(ev.figures)
    rows = {r["quantity"]: r for r in ev.paper}
    assert rows["VGG-16-A: Scratch-B - fine-tuned"]["direction agrees"] == "yes"
    assert "VGG-16-A +0.37 pp" in rows["VGG-16-A: Scratch-B - fine-tuned"]["paper"]
    assert "ResNet-56-B +0.38 pp" in rows["ResNet-56-B: Scratch-B - fine-tuned"]["paper"]
    # the pruned architectures are Li et al.'s: their parameter and FLOPs counts agree
    for what in ("VGG-16-A: pruned, parameters",
                 "VGG-16-A: pruned, multiply-adds (Li et al.'s FLOPs)",
                 "VGG-16-A: unpruned VGG-16, parameters", "ResNet-56-B: pruned, parameters",
                 "ResNet-56-B: unpruned ResNet-56, multiply-adds (Li et al.'s FLOPs)"):  # fmt: skip
        assert rows[what]["direction agrees"] == "yes", rows[what]
    assert ev.summary.startswith("VGG-16-A: ") and "ResNet-56-B: " in ev.summary
    assert ev.details.count("### Where this run follows the reference code") == 1
    assert ARMS["scratch_b"] == {"method": "scratch_b"}
