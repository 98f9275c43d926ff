"""The arms' models: one slot encoder and read-out, and five ways to pick what it reads.

Every model embeds each slot the same way (a shared MLP on its 64 pixels plus a learnt
embedding of its position) and the cue (which slots, in which order) as one vector.

- `dense`: an MLP over every slot's embedding and the cue (no attention);
- `soft`: the cue's query scores each slot (scaled dot product with its key); the read-out
  sums phi(slot) weighted by the softmax of the scores over all slots, and an MLP maps that
  sum and the cue to the answer (a transformer-style read-out with one query);
- `topk`: the same, but only the k highest-scoring slots are read (the conscious state):
  their softmax weights renormalised over the k, every other slot's weight exactly 0. The
  selection learns by the straight-through estimator: the forward pass uses the hard
  weights, the backward pass the softmax's gradient over all slots (`topk_weights`). The
  shared workspace code (anirudh9119/shared_workspace) masks the softmax to its top k and
  back-propagates through the mask only, so an unselected slot's score learns only that
  it should stay out (through the normaliser), never that it should come in; the
  straight-through gradient tells every slot what reading it would have changed;
- `random`: k slots chosen uniformly at random per scene, equal weights (the control: does
  the *selection* matter, or only reading few slots?);
- `workspace`: a shared-workspace-style bottleneck (Goyal et al. 2022): `memory` workspace
  slots, each with its own learnt query offset on the cue's query, each writing the top k
  scene slots it selects (straight-through, as `topk`); the read-out takes the workspace
  slots in order, so each can hold one cued factor. The paper's workspace also broadcasts
  back to the inputs over several layers; a one-step read-out has nothing to broadcast to.

`soft`, `topk` and `random` have the same parameters; the first hidden width of `dense`'s
MLP and of `workspace`'s read-out is set so that their counts match (`matched_hidden`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from jobs.consciousness.scenes import PIXELS

SELECTIONS = ("dense", "soft", "topk", "random", "workspace")


def topk_weights(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Weights over the last axis: forward, the softmax kept on the k largest scores and
    renormalised over them (exactly k nonzero per row); backward, the softmax's gradient."""
    soft = torch.softmax(scores, dim=-1)
    mask = torch.zeros_like(soft).scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)
    hard = soft * mask
    hard = hard / hard.sum(-1, keepdim=True)
    return soft + (hard - soft).detach()


def random_weights(shape: torch.Size, k: int, device: torch.device,
                   generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """k slots per row chosen uniformly at random, each weighted 1/k."""
    noise = torch.rand(shape, device=device, generator=generator)
    mask = torch.zeros(shape, device=device).scatter_(-1, noise.topk(k, dim=-1).indices, 1.0)
    return mask / k


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SceneNet(nn.Module):
    """One arm's model. Input: scenes (n, slots, 65) (scenes.py); output: logits (n, 2).
    `attend` also gives each slot's weight (n, slots), None for `dense`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.select, self.k = config["select"], int(config["k"])
        self.slots, self.cued = int(config["slots"]), int(config["cued"])
        self.warming = False  # True: a top-k model reads every slot softly (its warm-up)
        d, h = int(config["dim"]), int(config["hidden"])
        self.encode = mlp([PIXELS, h, d])
        self.position = nn.Parameter(torch.randn(self.slots, d) / math.sqrt(d))
        self.cue = nn.Linear(self.cued * self.slots, d)
        if self.select == "dense":
            self.dense = mlp([(self.slots + 1) * d, int(config["matched_hidden"]), h, 2])
            return
        self.query, self.key = nn.Linear(d, d), nn.Linear(d, d)
        self.phi = mlp([d, h, d])
        if self.select == "workspace":
            self.memory = int(config["memory"])
            self.offsets = nn.Parameter(torch.randn(self.memory, d) / math.sqrt(d))
            self.head = mlp([(self.memory + 1) * d, int(config["matched_hidden"]), 2])
            return
        self.head = mlp([2 * d, h, 2])

    def _cue(self, x: torch.Tensor) -> torch.Tensor:
        ranks = x[..., PIXELS].round().long()  # (n, slots): 0 = not cued, r = r-th cued
        onehot = torch.stack([(ranks == r) for r in range(1, self.cued + 1)], dim=1)
        return self.cue(onehot.float().flatten(1))

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.encode(x[..., :PIXELS]) + self.position
        cue = self._cue(x)
        if self.select == "dense":
            return self.dense(torch.cat([tokens.flatten(1), cue], dim=1)), None
        query = self.query(cue).unsqueeze(1)  # (n, 1, d): one query ...
        if self.select == "workspace":
            query = query + self.offsets  # ... or one per workspace slot (n, memory, d)
        scores = query @ self.key(tokens).transpose(1, 2) / math.sqrt(tokens.shape[-1])
        if self.select == "soft" or self.warming:
            weights = torch.softmax(scores, dim=-1)
        elif self.select in ("topk", "workspace"):
            weights = topk_weights(scores, self.k)
        else:
            weights = random_weights(scores.shape, self.k, scores.device)
        read = weights @ self.phi(tokens)  # (n, 1 or memory, d)
        logits = self.head(torch.cat([read.flatten(1), cue], dim=1))
        return logits, weights.mean(1)  # a slot's weight: its share of what was read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]


def parameters(config: dict[str, Any]) -> int:
    return sum(p.numel() for p in SceneNet(config).parameters())


def matched_hidden(config: dict[str, Any]) -> int:
    """The first hidden width of `dense`'s MLP or `workspace`'s read-out that brings its
    parameter count nearest the one-query attention models' (same dim, hidden, slots)."""
    if config["select"] not in ("dense", "workspace"):
        return 1  # unused
    target = parameters({**config, "select": "soft"})
    one, two = (parameters({**config, "matched_hidden": w}) for w in (1, 2))
    return max(1, round(1 + (target - one) / (two - one)))
