"""large_batch's `paper` preset: bigBatch's ResNet-44 with Ghost BN, the CIFAR augmentation,
the preset's spec and its cost. Fast, CPU only: tiny batches, one step at most."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from jobs.large_batch.ghost_bn import GhostBatchNorm2d
from jobs.large_batch.resnet import ResNetCifar
from jobs.large_batch.schedule import CropFlip, crop_flip, total_updates
from jobs.large_batch.study import PAPER_BATCH, SB_BATCH, LargeBatch, Params
from skeptic.spec import SpecError, grid_points, load_spec, resolve_params

STUDY = LargeBatch()
PAPER = LargeBatch.presets["paper"]
RESNET44_PARAMS = 0.66e6  # the issue's (and He et al.'s) figure for ResNet-44


def _config(ghost: int | None = None, depth: int = 44) -> dict:
    p = Params(model="resnet", depth=depth, batch_size=256, ghost_batch=ghost)
    names = [f"c{i}" for i in range(10)]
    return STUDY.model_config_for(p, (3, 32, 32), 10, names)


def _paper_spec(*sets: str):
    return load_spec("large_batch", LargeBatch.defaults, Params, preset=("paper", PAPER.spec), sets=list(sets))


def test_resnet44_parameters_step_and_rebuild():
    """ResNet-44 has ~0.66M parameters (bigBatch's: 661,338 with its 1x1-conv shortcuts),
    trains one step on a tiny batch, and the registered model rebuilds from its config."""
    torch.manual_seed(0)
    config = _config()
    model = STUDY.build_model(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - RESNET44_PARAMS) / RESNET44_PARAMS < 0.02, n
    assert n == 661_338
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (4, 10)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the champion: config through JSON (as MLflow stores it), weights loaded strictly
    rebuilt = STUDY.build_model(json.loads(json.dumps(config)))
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_resnet_depths():
    """6n + 2 only; ResNet-56 (the pruning study's figure) lands at ~0.85M too."""
    n56 = sum(p.numel() for p in ResNetCifar(56).parameters())
    assert abs(n56 - 0.85e6) / 0.85e6 < 0.02
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNetCifar(45)
    with pytest.raises(ValidationError, match="depth"):
        Params(model="resnet", depth=45)
    Params(depth=45)  # the MLP's depth is any count of layers


def test_ghost_bn_chunks_the_resnet():
    """With ghost 2, every BN is a GhostBatchNorm2d and a batch of 4 in train mode gives
    exactly what two batches of 2 give (everything else in the net is per image); plain BN
    over the 4 differs. Running statistics move once per chunk."""
    torch.manual_seed(0)
    ghost = STUDY.build_model(_config(ghost=2))
    bns = [m for m in ghost.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, GhostBatchNorm2d) and m.ghost_size == 2 for m in bns)
    plain = STUDY.build_model(_config(ghost=None))
    plain.load_state_dict(ghost.state_dict())
    assert not any(isinstance(m, GhostBatchNorm2d) for m in plain.modules())
    x = torch.rand(4, 3, 32, 32)
    separate = copy.deepcopy(ghost)
    with torch.no_grad():
        together = ghost(x)
        halves = torch.cat([separate(x[:2]), separate(x[2:])])
        whole = plain(x)
    torch.testing.assert_close(together, halves, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together, whole, rtol=1e-3, atol=1e-4)
    assert all(int(m.num_batches_tracked) == 2 for m in bns)  # two chunks, one call


def test_ghost_bn_keeps_channels_last():
    """A channels_last input (the layout prepare_model gives conv nets on CUDA) gives the
    same output and gradients as a contiguous one, and stays channels_last."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5)
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        bn = GhostBatchNorm2d(4, 2)
        nn.init.uniform_(bn.weight), nn.init.uniform_(bn.bias)
        xi = x.clone().to(memory_format=fmt).requires_grad_()
        y = bn(xi)
        y.backward(torch.randn(y.shape).to(memory_format=fmt))
        assert y.is_contiguous(memory_format=fmt)
        outs.append((y.detach(), xi.grad, bn.weight.grad, bn.running_var.clone()))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b)


def test_crop_flip_matches_pad_crop_flip():
    """crop_flip is torchvision's Pad(4, fill) + crop at (top, left) + horizontal flip."""
    x = torch.rand(3, 3, 8, 8)
    top, left, flip = torch.tensor([0, 4, 8]), torch.tensor([8, 4, 1]), torch.tensor([1, 0, 1])
    out = crop_flip(x, top, left, flip.bool(), pad=4, fill=0.5)
    for i in range(3):
        padded = nn.functional.pad(x[i], (4, 4, 4, 4), value=0.5)
        want = padded[:, top[i] : top[i] + 8, left[i] : left[i] + 8]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)
    assert torch.equal(out[1], x[1])  # centred, unflipped: the image itself


def test_augmentation_is_seeded_per_epoch():
    """The draws depend on (seed, data epoch) only: replayed exactly (a resumed trial),
    new each epoch and each seed, the same for an image whatever batch or shard it is in,
    and they change the images."""
    n, batch = 64, 16  # 4 updates per data epoch
    x = torch.rand(n, 3, 8, 8)
    a, b = CropFlip(n, batch, seed=3), CropFlip(n, batch, seed=3)
    idx = torch.randperm(n)[:batch]
    assert torch.equal(a(x, idx, 5), b(x, idx, 5))  # same seed, same update: replayed
    assert torch.equal(a(x, idx, 4), a(x, idx, 7))  # updates 4..7: data epoch 1's draws
    assert not torch.equal(a(x, idx, 4), a(x, idx, 8))  # next data epoch: new draws
    assert not torch.equal(a(x, idx, 4), CropFlip(n, batch, seed=4)(x, idx, 4))
    assert torch.equal(a(x, idx[1::2], 4), a(x, idx, 4)[1::2])  # a worker's shard
    out = a(x, idx, 0)
    assert out.shape == x[idx].shape
    changed = (out != x[idx]).flatten(1).any(1).float().mean()
    assert changed > 0.5  # most images moved or flipped (1 in 162 stays as it was)
    top, left, flip = a.draws(0)
    assert int(top.min()) >= 0 and int(top.max()) <= 8 and int(left.max()) <= 8
    assert 0.25 < flip.float().mean() < 0.75


def test_paper_preset_validates():
    """The preset merges over the defaults and validates (CIFAR-10 is not downloaded: its
    data.path defaults to the k8s volume's /data/cifar10); its arms run Table 1's settings."""
    with pytest.raises(SpecError, match="data.path"):
        _paper_spec("data.path=null")
    spec = _paper_spec()
    assert spec.preset == "paper" and spec.data.path == "/data/cifar10"
    assert spec.data.name == "cifar10" and spec.data.test_fraction == 0
    assert spec.data.val_fraction == 0.1 and spec.data.domain is None
    STUDY.check_spec(spec, None)
    params = {name: _arm_params(spec, name) for name in ("SB", "LB", "+LR", "+GBN", "+RA")}
    assert set(spec.sweep.arms) == set(params)
    for p in params.values():
        assert (p.model, p.depth, p.augment, p.clip_norm) == ("resnet", 44, True, 5.0)
        assert (p.momentum, p.weight_decay, p.epochs) == (0.9, 1e-4, 164)
        assert [math.floor(f * p.epochs) for f in p.lr_drops] == [81, 122]
    assert (params["SB"].batch_size, params["SB"].lr) == (SB_BATCH, 0.1)
    assert (params["LB"].batch_size, params["LB"].lr) == (PAPER_BATCH, 0.1)
    assert params["+LR"].lr == pytest.approx(0.1 * math.sqrt(PAPER_BATCH / SB_BATCH))
    assert params["+LR"].ghost_batch is None and params["+GBN"].ghost_batch == 128
    assert (params["+RA"].ghost_batch, params["+RA"].regime) == (128, "adapted")
    n = 45000  # CIFAR-10's 50000 training images less the 10% validation holdout
    assert PAPER.train_images == 50000
    assert total_updates(params["+RA"], n) == total_updates(params["SB"], n)
    assert spec.sweep.seeds == 5


def _arm_params(spec, arm: str) -> Params:
    (point,) = [pt for pt in grid_points(spec) if pt.get("arm") == arm]
    return resolve_params(spec, Params, point)


def test_paper_preset_work_counts_the_adapted_regime():
    """work(): +RA processes batch/base_batch = 32 times the images of LB (SB's updates on
    4096-image batches); the GPU-hours figure follows from it."""
    spec = _paper_spec("data.path=/data/cifar10")
    n = 45000
    work = {arm: STUDY.work(_arm_params(spec, arm), n) for arm in ("SB", "LB", "+RA")}
    assert work["SB"] == 164 * (n // 128) * 128
    assert work["LB"] == 164 * (n // 4096) * 4096
    assert work["+RA"] == 32 * work["SB"]
    assert PAPER.cost_basis.startswith("stated:") and PAPER.seconds_per_image > 0
    assert "data.path" in PAPER.data


def test_mlp_defaults_unchanged():
    """The MLP study is what it was: defaults, model and config keys."""
    p = Params()
    assert (p.model, p.augment, p.depth, p.width) == ("mlp", False, 5, 128)
    config = STUDY.model_config_for(p, (3, 12, 12), 4, ["a", "b", "c", "d"])
    old = {k: v for k, v in config.items() if k != "model"}  # a config saved before "model"
    assert type(STUDY.build_model(old)).__name__ == "MLP"
