"""Ghost Batch Normalization: equal to BatchNorm1d in the degenerate cases, to a per-chunk
reference otherwise (outputs, gradients, and running statistics updated once per chunk as
bigBatch does), and robust on the last chunk and on a batch of one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jobs.large_batch.ghost_bn import GhostBatchNorm, GhostBatchNorm2d, chunk_plan, make_norm

C = 8
TIGHT = {"rtol": 1e-10, "atol": 1e-10}  # float64 throughout the reference comparisons


def _pair(ghost: int | None, momentum: float | None = 0.1) -> tuple[GhostBatchNorm, nn.Module]:
    """A GhostBatchNorm and a BatchNorm1d with the same random affine parameters."""
    torch.manual_seed(0)
    gbn = GhostBatchNorm(C, ghost, momentum=momentum).double()
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 1.5)
        gbn.bias.uniform_(-0.5, 0.5)
    bn = nn.BatchNorm1d(C, momentum=momentum).double()
    bn.load_state_dict(gbn.state_dict())
    return gbn, bn


def _run(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output and gradients w.r.t. input, weight and bias of one forward+backward."""
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad, module.weight.grad.clone(), module.bias.grad.clone()


def _chunk_reference(
    x: torch.Tensor, sizes: list[int], w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Slow reference: each chunk normalised on its own by plain batch norm."""
    chunks = x.split(sizes)
    return torch.cat([F.batch_norm(c, None, None, w, b, True, 0.0, eps) for c in chunks])


def _assert_all_close(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TIGHT)


@pytest.mark.parametrize("ghost", [None, 64, 1000])
def test_equals_batchnorm1d_when_one_chunk(ghost: int | None) -> None:
    gbn, bn = _pair(ghost)
    for step in range(3):
        torch.manual_seed(step)
        x, dy = torch.randn(64, C, dtype=torch.float64) * 3 + 1, torch.randn(64, C).double()
        _assert_all_close(_run(gbn, x, dy), _run(bn, x, dy))
    _assert_all_close(
        (gbn.running_mean, gbn.running_var, gbn.num_batches_tracked),
        (bn.running_mean, bn.running_var, bn.num_batches_tracked),
    )


@pytest.mark.parametrize(
    ("batch", "sizes"),
    [
        (512, [128] * 4),  # even split
        (300, [128, 128, 44]),  # smaller last chunk, normalised with its own statistics
        (257, [128, 129]),  # remainder of one row: merged into the previous chunk
        (129, [129]),  # ... which here leaves a single chunk: plain batch norm
    ],
)
def test_matches_per_chunk_reference(batch: int, sizes: list[int]) -> None:
    gbn, _ = _pair(128)
    torch.manual_seed(1)
    x = torch.randn(batch, C, dtype=torch.float64) * 2 + torch.linspace(-3, 3, batch)[:, None]
    dy = torch.randn(batch, C, dtype=torch.float64)
    got = _run(gbn, x, dy)

    w = gbn.weight.detach().clone().requires_grad_(True)
    b = gbn.bias.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    y = _chunk_reference(xr, sizes, w, b)
    y.backward(dy)
    _assert_all_close(got, (y.detach(), xr.grad, w.grad, b.grad))
    assert torch.isfinite(got[0]).all()

    # Buffers: one nn.BatchNorm1d update per chunk, in order (bigBatch's main_gbn.py runs
    # each chunk as its own forward pass).
    _, bn = _pair(None)
    for chunk in x.split(sizes):
        bn(chunk)
    _assert_all_close(
        (gbn.running_mean, gbn.running_var, gbn.num_batches_tracked),
        (bn.running_mean, bn.running_var, bn.num_batches_tracked),
    )
    assert gbn.num_batches_tracked.item() == len(sizes)


def test_running_stats_follow_sequential_chunk_updates_over_steps() -> None:
    """Several training steps of 2048 rows in 16 chunks, as the study's +GBN/+RA arms: the
    buffers equal those of nn.BatchNorm1d fed the chunks one by one."""
    gbn, bn = _pair(128)
    for step in range(3):
        torch.manual_seed(10 + step)
        x = torch.randn(2048, C, dtype=torch.float64) * (1 + step) + step
        gbn(x)
        for chunk in x.split(128):
            bn(chunk)
    _assert_all_close((gbn.running_mean, gbn.running_var), (bn.running_mean, bn.running_var))
    assert gbn.num_batches_tracked.item() == bn.num_batches_tracked.item() == 48


def test_eval_equals_batchnorm1d_eval() -> None:
    gbn, bn = _pair(16)
    for step in range(3):
        torch.manual_seed(step)
        gbn(torch.randn(64, C, dtype=torch.float64) + step)
    bn.load_state_dict(gbn.state_dict())
    gbn.eval()
    bn.eval()
    x, dy = torch.randn(50, C, dtype=torch.float64), torch.randn(50, C, dtype=torch.float64)
    _assert_all_close(_run(gbn, x, dy), _run(bn, x, dy))


def test_cumulative_momentum_none() -> None:
    gbn, _ = _pair(16, momentum=None)
    batches = [torch.randn(64, C, dtype=torch.float64) + i for i in range(3)]
    for x in batches:
        gbn(x)
    chunk_means = torch.stack([x.view(4, 16, C).mean(1).mean(0) for x in batches])
    torch.testing.assert_close(gbn.running_mean, chunk_means.mean(0), **TIGHT)
    _, bn = _pair(None, momentum=None)  # the cumulative average over all 12 chunks
    for x in batches:
        for chunk in x.split(16):
            bn(chunk)
    _assert_all_close((gbn.running_mean, gbn.running_var), (bn.running_mean, bn.running_var))


def test_batch_of_one_uses_running_stats_and_leaves_them() -> None:
    gbn, bn = _pair(16)
    gbn(torch.randn(64, C, dtype=torch.float64))
    state = {k: v.clone() for k, v in gbn.state_dict().items()}
    x = torch.randn(1, C, dtype=torch.float64)
    y, dx, dw, db = _run(gbn, x, torch.ones(1, C, dtype=torch.float64))
    for t in (y, dx, dw, db):
        assert torch.isfinite(t).all()
    bn.load_state_dict(state)
    torch.testing.assert_close(y, bn.eval()(x), **TIGHT)
    for k, v in gbn.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_batch_of_one_without_running_stats_returns_bias() -> None:
    gbn = GhostBatchNorm(C, 16, track_running_stats=False)
    with torch.no_grad():
        gbn.bias.uniform_(-1, 1)
    x = torch.randn(1, C, requires_grad=True)
    y = gbn(x)
    y.sum().backward()
    torch.testing.assert_close(y, gbn.bias.detach()[None])
    assert torch.isfinite(x.grad).all()


def test_invalid_ghost_sizes() -> None:
    with pytest.raises(ValueError):
        GhostBatchNorm(C, 0)
    with pytest.raises(ValueError, match="one value per channel"):
        GhostBatchNorm(C, 1)(torch.randn(10, C))


def test_chunk_plan() -> None:
    assert chunk_plan(4096, 128) == ((32, 128),)
    assert chunk_plan(300, 128) == ((2, 128), (1, 44))
    assert chunk_plan(257, 128) == ((1, 128), (1, 129))
    assert chunk_plan(257, 128, values_per_row=4) == ((2, 128), (1, 1))  # 4 values: no merge


def test_sequence_and_image_inputs_match_reference() -> None:
    torch.manual_seed(2)
    for module, shape in (
        (GhostBatchNorm(C, 4), (10, C, 5)),
        (GhostBatchNorm2d(C, 4), (10, C, 3, 3)),
    ):
        module = module.double()
        x = torch.randn(*shape, dtype=torch.float64)
        want = _chunk_reference(x, [4, 4, 2], module.weight, module.bias)
        torch.testing.assert_close(module(x), want, **TIGHT)


def test_low_precision_input_keeps_dtype() -> None:
    torch.manual_seed(3)
    layer = nn.Sequential(nn.Linear(16, C), GhostBatchNorm(C, 32))
    x = torch.randn(128, 16)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    got.float().sum().backward()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_make_norm() -> None:
    assert type(make_norm(C, None)) is nn.BatchNorm1d
    norm = make_norm(C, 32)
    assert isinstance(norm, GhostBatchNorm) and norm.ghost_size == 32


def test_float32_with_offset_mean_stays_accurate() -> None:
    # y = x * scale + shift loses digits when |mean| >> std; check it stays within fp32 noise.
    torch.manual_seed(4)
    gbn = GhostBatchNorm(C, 32)
    x = torch.randn(256, C) + 20
    dy = torch.randn(256, C)
    got = _run(gbn, x, dy)
    want = _run(GhostBatchNorm(C, 32).double(), x.double(), dy.double())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-4)
