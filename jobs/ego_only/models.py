"""A tiny video ViT (~0.8M parameters), its masked-autoencoder pretraining head (tube
masking) and its per-frame segmentation head.

The encoder follows MAE-ST (facebookresearch/mae_st, models_vit / models_mae): a Conv3d
cuts the clip into tubelets of `tubelet` frames x `patch` x `patch` pixels, separable
positional embeddings (one per time step plus one per spatial position), pre-norm
transformer blocks (timm's), and a final LayerNorm. Masking is VideoMAE's *tube* masking:
one random set of spatial positions is hidden at every time step, so a masked patch cannot
be copied from the same place a tubelet earlier. The decoder is MAE's: a narrower
transformer over the visible tokens' codes and mask tokens, predicting each masked
tubelet's pixels, normalised per tubelet (norm_pix_loss). The segmentation head reads each
time step's tokens (mean over space) and predicts a label for each of its `tubelet` frames.

Frames arrive as (batch, T, H, W, 3) floats in [0, 1] (clips.py's uint8 / 255).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

MEAN, STD = 0.45, 0.225  # MAE-ST's Kinetics normalisation, one value per channel (close enough)


def grid(config: dict[str, Any]) -> tuple[int, int]:
    """(time steps, spatial positions) of a clip's tokens."""
    side = config["size"] // config["patch"]
    return config["frames"] // config["tubelet"], side * side


class VideoViT(nn.Module):
    """The encoder every arm shares: tubelet embedding, separable positions, blocks."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        dim, t, p = config["dim"], config["tubelet"], config["patch"]
        steps, places = grid(config)
        self.embed = nn.Conv3d(3, dim, kernel_size=(t, p, p), stride=(t, p, p))
        self.pos_time = nn.Parameter(torch.zeros(1, steps, 1, dim))
        self.pos_space = nn.Parameter(torch.zeros(1, 1, places, dim))
        self.blocks = nn.ModuleList(
            Block(dim, config["heads"], qkv_bias=True) for _ in range(config["depth"])
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_time, std=0.02)
        nn.init.trunc_normal_(self.pos_space, std=0.02)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) in [0, 1] -> embedded tokens with positions, (B, steps, places, dim)."""
        x = (frames.permute(0, 4, 1, 2, 3) - MEAN) / STD  # (B, 3, T, H, W)
        x = self.embed(x).flatten(3).permute(0, 2, 3, 1)  # (B, steps, places, dim)
        return x + self.pos_time + self.pos_space

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim) through the blocks and the final norm."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Every token's code, (B, steps, places, dim)."""
        x = self.tokens(frames)
        b, steps, places, dim = x.shape
        return self.encode(x.reshape(b, steps * places, dim)).reshape(b, steps, places, dim)


def visible_tokens(batch: int, steps: int, places: int, ratio: float, masking: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """The token indices (into steps x places) each clip keeps visible, (batch, keep), sorted.
    `tube`: one random set of spatial positions, the same at every time step (VideoMAE);
    `random`: any tokens (MAE-ST). At least one token per step is kept and one hidden."""
    if masking == "tube":
        keep = min(max(1, round(places * (1 - ratio))), places - 1)
        where = torch.rand(batch, places, generator=generator).argsort(dim=1)[:, :keep]
        where = where.sort(dim=1).values
        return (torch.arange(steps)[None, :, None] * places + where[:, None, :]).reshape(batch, -1)
    total = steps * places
    keep = min(max(steps, round(total * (1 - ratio))), total - 1)
    where = torch.rand(batch, total, generator=generator).argsort(dim=1)[:, :keep]
    return where.sort(dim=1).values


def patchify(frames: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """(B, T, H, W, 3) -> each tubelet's pixels, (B, steps, places, tubelet * patch^2 * 3)."""
    b, t, h, w, c = frames.shape
    tt, p = config["tubelet"], config["patch"]
    x = frames.reshape(b, t // tt, tt, h // p, p, w // p, p, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # b, steps, rows, cols, tt, p, p, c
    return x.reshape(b, t // tt, (h // p) * (w // p), tt * p * p * c)


class MAE(nn.Module):
    """Masked-autoencoder pretraining around a VideoViT: `loss(frames)` is the mean squared
    error of the normalised pixels of the masked tubelets (MAE's norm_pix_loss)."""

    def __init__(self, encoder: VideoViT, mask_ratio: float, masking: str = "tube",
                 decoder_dim: int = 64, decoder_depth: int = 1, decoder_heads: int = 4) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.mask_ratio, self.masking = encoder, mask_ratio, masking
        config = encoder.config
        steps, places = grid(config)
        self.to_decoder = nn.Linear(config["dim"], decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.pos_time = nn.Parameter(torch.zeros(1, steps, 1, decoder_dim))
        self.pos_space = nn.Parameter(torch.zeros(1, 1, places, decoder_dim))
        self.blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.norm = nn.LayerNorm(decoder_dim)
        self.predict = nn.Linear(decoder_dim, config["tubelet"] * config["patch"] ** 2 * 3)
        for p in (self.mask_token, self.pos_time, self.pos_space):
            nn.init.trunc_normal_(p, std=0.02)

    def loss(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.encoder.tokens(frames)
        b, steps, places, dim = x.shape
        x = x.reshape(b, steps * places, dim)
        keep = visible_tokens(b, steps, places, self.mask_ratio, self.masking, generator)
        keep = keep.to(x.device)
        visible = x.gather(1, keep[..., None].expand(-1, -1, dim))
        code = self.to_decoder(self.encoder.encode(visible))
        full = self.mask_token.expand(b, steps * places, code.shape[-1]).clone()
        full.scatter_(1, keep[..., None].expand_as(code), code)
        y = full + (self.pos_time + self.pos_space).reshape(1, steps * places, -1)
        for block in self.blocks:
            y = block(y)
        pred = self.predict(self.norm(y))
        target = patchify(frames, self.encoder.config).reshape(b, steps * places, -1)
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ).sqrt()
        masked = torch.ones(b, steps * places, device=x.device).scatter_(1, keep, 0.0)
        error = ((pred - target) ** 2).mean(-1)
        return (error * masked).sum() / masked.sum()


class Segmenter(nn.Module):
    """Per-frame action logits: the encoder, then each time step's mean token, a linear map
    to `tubelet` x classes (one label per frame of the tubelet). Returns (B, T, classes)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.encoder = VideoViT(config)
        self.classes = len(config["classes"])
        self.head = nn.Linear(config["dim"], config["tubelet"] * self.classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        code = self.encoder(frames).mean(2)  # (B, steps, dim)
        b, steps, _ = code.shape
        return self.head(code).reshape(b, steps * self.config["tubelet"], self.classes)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
