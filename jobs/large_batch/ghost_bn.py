"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better").

In training, batch-norm statistics come from small "ghost" chunks of the batch (e.g. 128 rows
of a 4096 batch) instead of the whole batch; at inference the running statistics are used
exactly as in `nn.BatchNorm1d`.

Design:
- Vectorised: the batch is viewed as (chunks, ghost, C, *spatial) and every chunk is normalised
  in one shot. The forward/backward is a hand-written `autograd.Function` because autograd over
  the elementwise formula keeps several full-size temporaries and `torch.var_mean` over a middle
  dimension is a slow Welford kernel on CPU (each ~5x plain BN on a 4096x512 batch); it uses one
  full-size buffer per direction, like plain BN. It traces under `torch.compile(fullgraph=True)`,
  which fuses the elementwise passes.
- Last chunk: with `batch % ghost = r != 0` the `r` remainder rows form one smaller last chunk,
  normalised with its own statistics in a second vectorised call (two calls, never a loop over
  chunks). A remainder holding a single value per channel (r == 1 on (N, C) input, where the
  variance is undefined) is merged into the previous chunk, which then has `ghost + 1` rows.
- Running statistics: updated once per ghost chunk, in chunk order, as in the paper's code
  (eladhoffer/bigBatch, main_gbn.py: each chunk of the batch is a separate forward pass
  through `nn.BatchNorm1d`, so every chunk moves the buffers by `momentum` and counts in
  `num_batches_tracked`). k chunks in one call give exactly the result of k sequential
  `nn.BatchNorm1d` updates with each chunk's mean and unbiased variance, computed in closed
  form (momentum m: weights m(1-m)^(k-1-i); momentum None: the cumulative average over
  chunks), so no loop over chunks.
- `ghost_size=None`, `ghost_size >= batch`, or a batch that forms a single chunk: exactly
  `nn.BatchNorm1d` (same `F.batch_norm` call).
- One value per channel in training (a batch of 1 on (N, C) input), where `nn.BatchNorm1d`
  raises: normalised with the running statistics, which are left untouched (gradients still
  flow to input and affine parameters). Without running statistics it returns the limit of the
  batch-norm formula, `bias` (zero gradient to the input).
- `ghost_size=1` on (N, C) input would give one value per chunk and channel: ValueError, like
  `nn.BatchNorm1d` on a batch of 1.
- Dtypes: statistics and intermediate values in at least float32, output in the input dtype, so
  it runs under autocast (fp16/bf16 activations) and on CUDA without dtype assumptions.
- Layout: a channels_last input (conv nets on CUDA) is used as it is, and the output and the
  input gradient keep its layout (no copy to contiguous and back around every BN).
- `make_norm` / `make_norm2d` build the norm layers of the study's MLP and CIFAR ResNet: plain
  BatchNorm for ghost_size None, else the ghost version.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GhostBatchNorm", "GhostBatchNorm2d", "make_norm", "make_norm2d"]

# (number of chunks, rows per chunk); the segments cover the batch in order.
Segments = tuple[tuple[int, int], ...]


def chunk_plan(batch: int, ghost: int, values_per_row: int = 1) -> Segments:
    """How a batch is cut: full ghost chunks, then at most one smaller (or merged) last chunk.

    `values_per_row` is the number of values one row adds per channel (H*W for images): a
    remainder is merged into the previous chunk only if it alone would have a single value.
    """
    full, rest = batch // ghost, batch % ghost  # not divmod: dynamo cannot trace it on SymInts
    if rest * values_per_row == 1 and full > 0:
        full, rest = full - 1, ghost + 1
    return tuple(seg for seg in ((full, ghost), (1, rest)) if seg[0] > 0 and seg[1] > 0)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Statistics of fp16/bf16 activations are taken in float32, as the fused BN kernels do.
    return torch.promote_types(dtype, torch.float32)


def _param_view(p: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    # (C,) -> (C, 1, ...) to broadcast against a (chunks, rows, C, *spatial) segment.
    return None if p is None else p.view(-1, *([1] * (ndim - 3)))


class _GhostBatchNormFn(torch.autograd.Function):
    """y = (x - mean_chunk) * rstd_chunk * weight + bias for each chunk, with a fused backward.

    Returns (y, per-chunk means, per-chunk unbiased variances), both (chunks, C) in chunk
    order; the two statistics are for the running buffers and carry no gradient.

    On CPU the cost is memory traffic, page faults on fresh full-size buffers and, for small
    batches, the number of dispatched ops. So each direction allocates one full-size buffer
    (as plain BN does) and works in it in place, x (not x - mean) is saved so no extra
    activation-sized tensor is kept, and the per-chunk algebra uses as few ops as possible.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        segments: Segments,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = _dense(x)
        acc = _acc_dtype(x.dtype)
        per_row = math.prod(x.shape[2:])
        w = _param_view(weight, x.dim() + 1)
        b = _param_view(bias, x.dim() + 1)
        y = torch.empty_like(x, dtype=acc)  # x's layout (channels_last stays channels_last)
        means, rstds, chunk_means, chunk_vars = [], [], [], []
        for xs, ys, (_, g) in zip(_split(x, segments), _split(y, segments), segments, strict=True):
            red = _reduce_dims(xs)
            # Two-pass (centred) variance, the squares computed in the output buffer.
            mean = xs.mean(red, keepdim=True, dtype=acc)
            var = torch.sub(xs, mean, out=ys).square_().mean(red, keepdim=True)
            rstd = var.add(eps).rsqrt_()
            scale = rstd if w is None else rstd * w
            shift = torch.mul(mean, scale).neg_() if b is None else b.addcmul(mean, scale, value=-1)
            torch.addcmul(shift, xs, scale, out=ys)
            means.append(mean)
            rstds.append(rstd)
            # Buffers: each chunk's mean and unbiased variance (n values per channel).
            n = g * per_row
            chunk_means.append(mean.reshape(mean.shape[0], -1))
            chunk_vars.append(var.reshape(var.shape[0], -1) * (n / max(n - 1, 1)))
        ctx.segments = segments
        ctx.save_for_backward(x, weight, *means, *rstds)
        chunk_mean, chunk_var = torch.cat(chunk_means), torch.cat(chunk_vars)
        ctx.mark_non_differentiable(chunk_mean, chunk_var)
        return y.to(x.dtype), chunk_mean, chunk_var

    @staticmethod
    def backward(
        ctx: Any, dy: torch.Tensor, _dmean: torch.Tensor | None, _dvar: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, *stats = ctx.saved_tensors
        segments = ctx.segments
        means, rstds = stats[: len(segments)], stats[len(segments) :]
        per_row = math.prod(x.shape[2:])
        w = _param_view(weight, x.dim() + 1)
        acc = means[0].dtype
        dx = torch.empty_like(x, dtype=acc)
        dw = db = None
        parts = zip(_split(x, segments), _split(dy, segments), _split(dx, segments), strict=True)
        for (xs, dys, dxs), mean, rstd, (_, g) in zip(parts, means, rstds, segments, strict=True):
            red = _reduce_dims(xs)
            neg_inv_n = -1.0 / (g * per_row)
            sum_dy = dys.sum(red, keepdim=True, dtype=acc)
            # sum(dy * xhat), the product dy * (x - mean) formed in the dx buffer.
            sum_dy_xhat = torch.sub(xs, mean, out=dxs).mul_(dys).sum(red, keepdim=True)
            sum_dy_xhat.mul_(rstd)
            seg_dw, seg_db = sum_dy_xhat.sum(0), sum_dy.sum(0)
            dw = seg_dw if dw is None else dw.add_(seg_dw)
            db = seg_db if db is None else db.add_(seg_db)
            # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) = scale*dy + a*x + c
            scale = rstd if w is None else rstd * w
            a = torch.mul(scale, rstd).mul_(sum_dy_xhat).mul_(neg_inv_n)
            c = torch.mul(scale, sum_dy).mul_(neg_inv_n).addcmul_(a, mean, value=-1)
            torch.addcmul(c, dys, scale, out=dxs).addcmul_(xs, a)
        needs = ctx.needs_input_grad
        dw = dw.view(-1).to(weight.dtype) if needs[1] else None
        db = db.view(-1).to(weight.dtype) if needs[2] else None
        return dx.to(x.dtype) if needs[0] else None, dw, db, None, None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if it is contiguous or channels_last (a conv net's layout on CUDA), else a
    contiguous copy: either way, cutting the batch dimension into chunks is a view, so the
    `out=` writes into `_split` pieces land in the buffer."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _split(x: torch.Tensor, segments: Segments) -> list[torch.Tensor]:
    """Views of x as (chunks, rows, C, *spatial), one per segment (no copy if x is contiguous
    or channels_last: only the batch dimension is cut)."""
    if len(segments) == 1:
        return [x.reshape(*segments[0], *x.shape[1:])]
    parts = x.split([k * g for k, g in segments])
    return [p.reshape(k, g, *x.shape[1:]) for p, (k, g) in zip(parts, segments, strict=True)]


def _reduce_dims(seg: torch.Tensor) -> tuple[int, ...]:
    # Statistics per (chunk, channel): over the rows of the chunk and the spatial positions.
    return (1, *range(3, seg.dim()))


class _GhostMixin:
    """Ghost forward shared by the 1d and 2d classes (which differ only in accepted shapes)."""

    ghost_size: int | None

    def __init__(
        self,
        num_features: int,
        ghost_size: int | None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)  # the BatchNorm
        if ghost_size is not None and ghost_size < 1:
            raise ValueError(f"ghost_size must be >= 1 or None, got {ghost_size}")
        self.ghost_size = ghost_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_size={self.ghost_size}"  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        use_batch_stats = bn.training or bn.running_mean is None
        if not use_batch_stats:
            return super().forward(x)  # type: ignore[misc]
        bn._check_input_dim(x)
        per_row = math.prod(x.shape[2:])
        if x.shape[0] * per_row == 1:
            return self._single_value(x)
        if self.ghost_size is None or self.ghost_size >= x.shape[0]:
            return super().forward(x)  # type: ignore[misc]
        if self.ghost_size * per_row == 1:
            raise ValueError(
                f"ghost_size={self.ghost_size} leaves one value per channel in each chunk: "
                "batch statistics are undefined"
            )
        segments = chunk_plan(x.shape[0], self.ghost_size, per_row)
        if len(segments) == 1 and segments[0][0] == 1:
            return super().forward(x)  # type: ignore[misc]  # one chunk: plain batch norm
        y, mean, var = _GhostBatchNormFn.apply(x, bn.weight, bn.bias, segments, bn.eps)
        self._update_running(mean, var)
        return y

    def _single_value(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of one (N, C) row in training, where batch statistics do not exist."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        if bn.running_mean is not None and bn.running_var is not None:
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        # The limit of the formula: x - mean(x) is exactly 0 (and so is its gradient).
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        y = (x - x.mean(dims, keepdim=True)) * (1 / math.sqrt(bn.eps))
        if bn.weight is not None:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """k chunk updates at once: the same buffers as k `nn.BatchNorm1d` forward passes,
        one per chunk in order (bigBatch's ghost batch norm)."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            return
        k = means.shape[0]
        if bn.momentum is None:  # cumulative average over every chunk so far
            # (reads the counter, as nn.BatchNorm1d does: a graph break under torch.compile)
            seen = 0 if bn.num_batches_tracked is None else int(bn.num_batches_tracked)
            keep = seen / (seen + k)
            weights = torch.full((k,), 1.0 / (seen + k), dtype=means.dtype, device=means.device)
        else:  # chunk i (of k) is then decayed by the k - 1 - i updates after it
            m = bn.momentum
            keep = (1 - m) ** k
            powers = torch.arange(k - 1, -1, -1, dtype=means.dtype, device=means.device)
            weights = m * (1 - m) ** powers
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(k)
        for buf, stats in ((bn.running_mean, means), (bn.running_var, variances)):
            buf.mul_(keep).add_((weights @ stats).to(buf.dtype))


class GhostBatchNorm(_GhostMixin, nn.BatchNorm1d):
    """`nn.BatchNorm1d` whose training statistics come from ghost chunks of `ghost_size` rows.

    Input (N, C) or (N, C, L). Same parameters, buffers and state_dict as nn.BatchNorm1d, so
    checkpoints are interchangeable. See the module docstring for the edge cases.
    """


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """`nn.BatchNorm2d` (input (N, C, H, W)) with ghost chunks of `ghost_size` images."""


def make_norm(num_features: int, ghost_size: int | None) -> nn.Module:
    """nn.BatchNorm1d for ghost_size None, else GhostBatchNorm (for (N, C) MLP activations)."""
    if ghost_size is None:
        return nn.BatchNorm1d(num_features)
    return GhostBatchNorm(num_features, ghost_size)


def make_norm2d(num_features: int, ghost_size: int | None) -> nn.Module:
    """nn.BatchNorm2d for ghost_size None, else GhostBatchNorm2d (for (N, C, H, W) conv maps)."""
    if ghost_size is None:
        return nn.BatchNorm2d(num_features)
    return GhostBatchNorm2d(num_features, ghost_size)
