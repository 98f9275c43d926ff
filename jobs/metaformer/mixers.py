"""The token mixers timm's MetaFormer lacks, and the builder of every model in the study.

Checked against the paper's released code (github.com/sail-sg/poolformer, models/poolformer.py
and models/metaformer.py). Reused from `timm.models.metaformer`: the MetaFormer skeleton and
its blocks (`x + LayerScale * mixer(norm(x))`, then the same with the channel MLP), its 7x7
stride-4 stem, `Pooling` (`pool(x) - x`, avgpool with count_include_pad=False as in
poolformer.py), `Attention`, `SepConv`, `GroupNorm1` (poolformer.py's GroupNorm, 1 group),
stochastic depth (linear over the blocks from 0, as poolformer.py's basic_blocks);
`timm.layers.Mlp` for the spatial MLP. As in the reference: LayerScale on both branches of
every block, initialised at 1e-5 (`LAYER_SCALE`); GELU MLP with ratio 4 and bias; 3x3
stride-2 downsampling without a norm; a linear head. Written here: `LayerNormChannel` (the
reference's, eps 1e-5), `AddPositionEmb` (metaformer.py's learned position embedding), frozen
random token mixing (the paper's "random matrix"), a token-mixing spatial MLP, and `Zero`,
which cuts a block's residual or channel-MLP branch for the component ablations.

At the reference's size (`S12_DIMS`, `S12_DEPTHS`, stem `7x7s4`, head dim 32), the pooling
model is timm's `poolformer_s12` exactly (the same modules, parameter names and shapes: its
state dict loads into ours; 11.9M parameters), the identity model is metaformer_id_s12 and
the hybrid metaformer_ppaa_s12_224 (16.5M: attention in the last two stages, a 14x14 position
embedding before stage 3 at 224 pixels).

Where the study's small default models differ from the reference, and why:
- Input and stem: 18x18 images and a 3x3 stride-2 stem (the reference: 224x224, 7x7 stride
  4), so the four stages run at 9, 5, 3 and 2 pixels and `pool(x) - x` is non-zero in every
  stage (a 1x1 stage makes it exactly zero; `build_metaformer` refuses stages below 2x2).
- Size: dims 16/32/64/128 and depths 1/1/2/1 (S12: 64/128/320/512, 2/2/6/2), so a CPU core
  trains one model for 18 epochs in about a minute.
- Attention: head dim 16 (reference 32: a 16-channel stage would have no whole head); qkv
  without bias and the output projection with one, as in the reference. timm runs attention
  stages on (B, N, C) tokens, where nn.LayerNorm is the reference's LayerNormChannel.
- The head normalises after global pooling (timm, at every size) instead of before it
  (reference); with GroupNorm(1) / LayerNorm over channels of a 1x1 map this is a LayerNorm
  of the pooled features instead of a norm of every position before the mean.
- The all-attention arm (no such model in the reference; the paper's attention baseline is
  DeiT) gets a learned position embedding before its first stage, as DeiT has one.
- No stochastic depth by default (reference S12: drop path 0.1; `drop_path` sets it).
- Random mixing: one frozen matrix per block (the released code has no such model; the
  paper's Table 5 "global random matrix" is frozen): a buffer, so it counts no parameters.

The random and spatial-MLP mixers mix a fixed number of tokens, so their classes are made per
stage with the token count bound (`_per_stage`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from timm.layers import GroupNorm1, LayerNorm2d, Mlp
from timm.models.metaformer import Attention, MetaFormer, Pooling, SepConv
from torch import nn

__all__ = [
    "ABLATIONS", "MIXERS", "S12_DEPTHS", "S12_DIMS", "STEMS", "RandomMixing", "SpatialMlp",
    "Zero", "build_metaformer", "stage_sizes",
]  # fmt: skip

MIXERS = (
    "pool3", "pool5", "pool7", "identity", "random", "sepconv", "attention", "spatial_mlp",
    "hybrid",
)  # fmt: skip
ABLATIONS = ("none", "no_residual", "no_mlp", "no_norm", "layernorm", "batchnorm")
# (kernel, stride, padding) of the stem conv: the study's small inputs use 3x3 stride 2; the
# reference (and timm's Stem) 7x7 stride 4 padding 2, so 224 pixels give stages 56/28/14/7
STEMS = {"3x3s2": (3, 2, 1), "7x7s4": (7, 4, 2)}
# PoolFormer-S12 (poolformer.py, timm's poolformer_s12): four stages, 12 blocks
S12_DIMS = (64, 128, 320, 512)
S12_DEPTHS = (2, 2, 6, 2)
S12_HEAD_DIM = 32  # metaformer.py's Attention(head_dim=32)
LAYER_SCALE = 1e-5  # poolformer.py / metaformer.py: layer_scale_init_value=1e-5
HEAD_DIM = 16  # timm's default 32 breaks on a 16-channel stage (heads * head_dim != dim)
# metaformer.py's Attention: qkv without bias (timm's default too), the output projection
# with one (nn.Linear's default there; timm's default is without)
ATTENTION_ARGS = {"head_dim": HEAD_DIM, "qkv_bias": False, "proj_bias": True}


def attention_args(head_dim: int = HEAD_DIM) -> dict[str, Any]:
    return {**ATTENTION_ARGS, "head_dim": head_dim}


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


class LayerNormChannel(LayerNorm2d):
    """poolformer.py's LayerNormChannel: LayerNorm over the channels of (B, C, H, W), eps 1e-5
    (timm's LayerNorm2d defaults to 1e-6)."""

    def __init__(self, num_channels: int, **kwargs: Any) -> None:
        super().__init__(num_channels, eps=1e-5, **kwargs)


class AddPositionEmb(nn.Module):
    """metaformer.py's AddPositionEmb: a learned (1, C, H, W) embedding, zeros at init."""

    def __init__(self, dim: int, side: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, side, side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embed


class Zero(nn.Module):
    """Replaces a block's residual scale (no residual) or its channel MLP (no MLP): the
    branch contributes nothing, through timm's own hooks instead of a rewritten block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def stage_sizes(image_size: int, stages: int, stem: str = "3x3s2") -> list[int]:
    """Feature-map side length of every stage for a square input: the stem conv (`STEMS`),
    then every later stage's downsampling, a 3x3 stride-2 conv with padding 1 (halves,
    rounding up). The 7x7 stride-4 stem takes 224 to 56 (stages 56/28/14/7)."""
    kernel, stride, pad = STEMS[stem]
    sides = [(image_size + 2 * pad - kernel) // stride + 1]
    for _ in range(stages - 1):
        sides.append(math.ceil(sides[-1] / DOWNSAMPLE))
    return sides


def _per_stage(base: type[nn.Module], tokens: int) -> type[nn.Module]:
    # timm instantiates a mixer class with `dim` only; the token count is fixed per stage.
    return type(f"{base.__name__}{tokens}", (base,), {"num_tokens": tokens})


def _mixers(
    mixer: str, sizes: list[int], head_dim: int = HEAD_DIM
) -> tuple[list[type[nn.Module]], dict[str, Any]]:
    """Token-mixer class per stage and extra keyword arguments timm passes to every mixer."""
    n = len(sizes)
    attention = attention_args(head_dim)
    if mixer.startswith("pool"):
        return [Pooling] * n, {"pool_size": int(mixer[4:])}
    if mixer == "hybrid":  # metaformer_ppaa_s12_224: [Pool, Pool, Attn, Attn] (first half pools)
        half = n // 2
        return [Pooling] * half + [Attention] * (n - half), {"pool_size": 3, **attention}
    fixed = {"identity": nn.Identity, "sepconv": SepConv, "attention": Attention}
    if mixer in fixed:
        return [fixed[mixer]] * n, attention if mixer == "attention" else {}
    per_token = {"random": RandomMixing, "spatial_mlp": SpatialMlp}
    if mixer in per_token:
        return [_per_stage(per_token[mixer], s * s) for s in sizes], {}
    raise ValueError(f"unknown mixer {mixer!r}; known: {', '.join(MIXERS)}")


def _norms(
    mixer: str, ablation: str, mixers: list[type[nn.Module]]
) -> tuple[list[type[nn.Module]], type[nn.Module]]:
    """Norm per stage, and the head's. PoolFormer (poolformer.py) uses GroupNorm(1) for every
    mixer of its ablation table; metaformer_ppaa_s12_224 (metaformer.py) keeps its default
    LayerNormChannel. Attention stages run on (B, N, C) tokens in timm, where nn.LayerNorm
    (with bias, eps 1e-5) is exactly LayerNormChannel."""
    default = LayerNormChannel if mixer in ("hybrid", "attention") else GroupNorm1
    spatial = {
        "layernorm": LayerNormChannel, "batchnorm": nn.BatchNorm2d, "no_norm": nn.Identity,
    }.get(ablation, default)  # fmt: skip
    token = nn.Identity if ablation == "no_norm" else nn.LayerNorm
    norms = [token if issubclass(m, Attention) else spatial for m in mixers]
    return norms, nn.Identity if ablation == "no_norm" else default


def _ablate(model: MetaFormer, ablation: str) -> None:
    for stage in model.stages:
        for block in stage.blocks:
            if ablation == "no_residual":  # x = 0 * x + mixer(...), likewise for the MLP
                block.res_scale1, block.res_scale2 = Zero(), Zero()
            elif ablation == "no_mlp":  # x = x + mixer(norm(x)) only
                block.mlp, block.norm2 = Zero(), nn.Identity()


def _add_position_embedding(
    model: MetaFormer, mixers: list[type[nn.Module]], dims: tuple[int, ...], sizes: list[int]
) -> None:
    """A learned position embedding added to the input of the first attention stage, after
    its downsampling (metaformer.py's AddPositionEmb, zero-initialised): where the reference
    puts it in metaformer_ppaa_s12_224. The all-attention model gets one before its first
    stage as well, as DeiT (the paper's attention baseline) has one at its input."""
    first = next((i for i, m in enumerate(mixers) if issubclass(m, Attention)), None)
    if first is None:
        return
    stage = model.stages[first]
    embed = AddPositionEmb(dims[first], sizes[first])
    stage.downsample = nn.Sequential(stage.downsample, embed)


def build_metaformer(
    mixer: str,
    ablation: str = "none",
    dims: tuple[int, ...] = (16, 32, 64, 128),
    depths: tuple[int, ...] = (1, 1, 2, 1),
    image_size: int = 20,
    num_classes: int = 10,
    layer_scale: float | None = LAYER_SCALE,
    *,
    stem: str = "3x3s2",
    head_dim: int = HEAD_DIM,
    drop_path: float = 0.0,
) -> MetaFormer:
    """A MetaFormer shaped like the reference's (poolformer.py / metaformer.py): GELU MLP
    (ratio 4) with bias, LayerScale (init 1e-5) on both branches of every block, no
    downsample norm, a linear head; `mixer` in every stage (the hybrid: pooling then
    attention) and one `ablation` applied. `stem` picks the stem conv (`STEMS`: timm's own
    7x7 stride 4 is kept as built), `head_dim` the attention heads' width, `drop_path` the
    stochastic depth of the last block (linear from 0 over the blocks, as the reference)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
    if any(b <= a for a, b in itertools.pairwise(dims)):
        raise ValueError(f"dims must increase ({dims}): timm skips the downsampling otherwise")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    sizes = stage_sizes(image_size, len(dims), stem)
    if min(sizes) < 2:
        raise ValueError(f"image_size {image_size} leaves a stage at {min(sizes)}x{min(sizes)}")
    mixers, extra = _mixers(mixer, sizes, head_dim)
    norms, output_norm = _norms(mixer, ablation, mixers)
    model = MetaFormer(
        num_classes=num_classes, depths=tuple(depths), dims=tuple(dims), token_mixers=mixers,
        norm_layers=norms, downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
        layer_scale_init_values=layer_scale, res_scale_init_values=None,
        output_norm=output_norm, use_mlp_head=False, drop_path_rate=drop_path, **extra,
    )  # fmt: skip
    kernel, stride, pad = STEMS[stem]
    if (kernel, stride, pad) != STEMS["7x7s4"]:  # timm's Stem is the reference's 7x7 stride 4
        model.stem.conv = nn.Conv2d(3, dims[0], kernel_size=kernel, stride=stride, padding=pad)
    _add_position_embedding(model, mixers, dims, sizes)
    _ablate(model, ablation)
    return model
