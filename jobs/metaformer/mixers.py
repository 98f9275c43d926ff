"""The token mixers timm's MetaFormer lacks, and the builder of every model in the study.

Reused from `timm.models.metaformer`: the MetaFormer skeleton, `Pooling` (PoolFormer's
`pool(x) - x`), `Attention`, `SepConv` (the depthwise-separable conv of ConvFormer), the norms
(`GroupNorm1`, `LayerNorm2d`, `LayerNormNoBias`); `timm.layers.Mlp` for the spatial MLP.
Written here (timm has no such mixer): frozen random token mixing (the paper's "random
matrix"), a token-mixing spatial MLP, and `Zero`, which cuts a block's residual or channel-MLP
branch for the component ablations.

Input size: the study uses 16x16 images and three stages, with timm's 7x7 stride-4 stem
replaced by a 3x3 stride-2 conv (`model.stem.conv`), so the stages run at 8, 4 and 2 pixels
and `pool(x) - x` is non-zero in every stage (with the stride-4 stem the last stage would be
1x1, where it is exactly zero; `build_metaformer` refuses any stage below 2x2). A 16x16 input
keeps a trial at tens of seconds on one CPU core. The random and spatial-MLP mixers mix a fixed number of tokens, so their
classes are made per stage with the token count bound (`_per_stage`).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from timm.layers import GroupNorm1, LayerNorm2d, Mlp
from timm.models.metaformer import Attention, LayerNormNoBias, MetaFormer, Pooling, SepConv
from torch import nn

__all__ = [
    "ABLATIONS", "MIXERS", "RandomMixing", "SpatialMlp", "Zero", "build_metaformer",
    "stage_sizes",
]  # fmt: skip

MIXERS = (
    "pool3", "pool5", "pool7", "identity", "random", "sepconv", "attention", "spatial_mlp",
    "hybrid",
)  # fmt: skip
ABLATIONS = ("none", "no_residual", "no_mlp", "no_norm", "layernorm", "batchnorm")
STEM_STRIDE = 2
HEAD_DIM = 16  # timm's default 32 breaks on a 16-channel stage (heads * head_dim != dim)
DOWNSAMPLE = 2  # each stage after the first halves the resolution (timm's Downsampling)


class RandomMixing(nn.Module):
    """Tokens mixed by a frozen random row-stochastic matrix (Yu et al., "random matrix").

    The matrix is a buffer, not a parameter: it is never trained, yet it is saved with the
    weights, so a registered model reloads the exact mixing it was trained with.
    """

    num_tokens: int = 0  # bound per stage by _per_stage

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__()
        n = self.num_tokens
        self.register_buffer("matrix", torch.softmax(torch.rand(n, n), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        mixed = torch.einsum("mn,bcn->bcm", self.matrix, x.reshape(b, c, h * w))
        return mixed.reshape(b, c, h, w)


class SpatialMlp(nn.Module):
    """MLP-Mixer's token-mixing MLP: one MLP over the token axis, shared by all channels."""

    num_tokens: int = 0  # bound per stage by _per_stage

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__()
        self.mlp = Mlp(self.num_tokens, self.num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.mlp(x.reshape(b, c, h * w)).reshape(b, c, h, w)


class Zero(nn.Module):
    """Replaces a block's residual scale (no residual) or its channel MLP (no MLP): the
    branch contributes nothing, through timm's own hooks instead of a rewritten block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def stage_sizes(image_size: int, stages: int) -> list[int]:
    """Feature-map side length of every stage for a square input."""
    side = image_size // STEM_STRIDE
    return [side // DOWNSAMPLE**i for i in range(stages)]


def _per_stage(base: type[nn.Module], tokens: int) -> type[nn.Module]:
    # timm instantiates a mixer class with `dim` only; the token count is fixed per stage.
    return type(f"{base.__name__}{tokens}", (base,), {"num_tokens": tokens})


def _mixers(mixer: str, sizes: list[int]) -> tuple[list[type[nn.Module]], dict[str, Any]]:
    """Token-mixer class per stage and extra keyword arguments timm passes to every mixer."""
    n = len(sizes)
    if mixer.startswith("pool"):
        return [Pooling] * n, {"pool_size": int(mixer[4:])}
    if mixer == "hybrid":  # the paper's [Pool, Pool, Attn, Attn]: pooling first, attention last
        half = n // 2
        return [Pooling] * half + [Attention] * (n - half), {"pool_size": 3, "head_dim": HEAD_DIM}
    fixed = {"identity": nn.Identity, "sepconv": SepConv, "attention": Attention}
    if mixer in fixed:
        return [fixed[mixer]] * n, {"head_dim": HEAD_DIM} if mixer == "attention" else {}
    per_token = {"random": RandomMixing, "spatial_mlp": SpatialMlp}
    if mixer in per_token:
        return [_per_stage(per_token[mixer], s * s) for s in sizes], {}
    raise ValueError(f"unknown mixer {mixer!r}; known: {', '.join(MIXERS)}")


def _norms(ablation: str, mixers: list[type[nn.Module]]) -> list[type[nn.Module]]:
    """Norm per stage. Attention stages run on (B, N, C) tokens and need a channels-last LN."""
    spatial = {
        "layernorm": LayerNorm2d, "batchnorm": nn.BatchNorm2d, "no_norm": nn.Identity,
    }.get(ablation, GroupNorm1)  # fmt: skip
    token = nn.Identity if ablation == "no_norm" else LayerNormNoBias
    return [token if issubclass(m, Attention) else spatial for m in mixers]


def _ablate(model: MetaFormer, ablation: str) -> None:
    for stage in model.stages:
        for block in stage.blocks:
            if ablation == "no_residual":  # x = 0 * x + mixer(...), likewise for the MLP
                block.res_scale1, block.res_scale2 = Zero(), Zero()
            elif ablation == "no_mlp":  # x = x + mixer(norm(x)) only
                block.mlp, block.norm2 = Zero(), nn.Identity()


def build_metaformer(
    mixer: str,
    ablation: str = "none",
    dims: tuple[int, ...] = (32, 64, 128),
    depths: tuple[int, ...] = (1, 2, 1),
    image_size: int = 16,
    num_classes: int = 10,
    layer_scale: float | None = None,
) -> MetaFormer:
    """A small PoolFormer-v1-shaped MetaFormer (GELU MLP with bias, GroupNorm(1), no
    downsample norm, linear head) with `mixer` in every stage and one `ablation` applied."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    if any(b <= a for a, b in itertools.pairwise(dims)):
        raise ValueError(f"dims must increase ({dims}): timm skips the downsampling otherwise")
    sizes = stage_sizes(image_size, len(dims))
    if min(sizes) < 2:
        raise ValueError(f"image_size {image_size} leaves a stage at {min(sizes)}x{min(sizes)}")
    mixers, extra = _mixers(mixer, sizes)
    model = MetaFormer(
        num_classes=num_classes, depths=tuple(depths), dims=tuple(dims), token_mixers=mixers,
        norm_layers=_norms(ablation, mixers), downsample_norm=None, mlp_act=nn.GELU,
        mlp_bias=True, layer_scale_init_values=layer_scale, res_scale_init_values=None,
        output_norm=nn.Identity if ablation == "no_norm" else GroupNorm1, use_mlp_head=False,
        **extra,
    )  # fmt: skip
    model.stem.conv = nn.Conv2d(3, dims[0], kernel_size=3, stride=STEM_STRIDE, padding=1)
    _ablate(model, ablation)
    return model
