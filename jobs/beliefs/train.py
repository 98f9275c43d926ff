"""Triplet-loss training of one encoder arm, as sentence-transformers' TripletLoss (Euclidean
distance, relu(|a - p| - |a - n| + margin)), with AdamW and a linear warm-up then decay.

What is trained depends on the arm: `head` a linear map (initialised to the identity) on the
frozen encoder's embeddings; `top` copies of BERT's top layers on the cached states below
them; `full` every layer, from tokens. Each is an `Embedder`: its trainable module and a
function from statement indices to their (differentiable) embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

WARMUP = 0.1  # share of the steps with a rising learning rate
WEIGHT_DECAY = 0.01  # sentence-transformers' fit() default


@dataclass
class Embedder:
    module: nn.Module  # what the optimiser trains
    embed: Callable[[torch.Tensor], torch.Tensor]  # statement indices -> embeddings


def triplet_loss(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                 margin: float) -> torch.Tensor:  # fmt: skip
    d_pos = torch.linalg.vector_norm(anchor - pos, dim=1)
    d_neg = torch.linalg.vector_norm(anchor - neg, dim=1)
    return torch.relu(d_pos - d_neg + margin).mean()


def fit(
    model: Embedder, rows: np.ndarray, *, epochs: int, batch: int, lr: float, margin: float,
    seed: int, after_epoch: Callable[[int, float], None],
) -> None:  # fmt: skip
    """Train on the (anchor, positive, negative) index rows; `after_epoch(epoch, mean loss)`."""
    from transformers import get_linear_schedule_with_warmup

    rng = np.random.default_rng(seed)
    params = [p for p in model.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    per_epoch = math.ceil(len(rows) / batch)
    total = max(1, per_epoch * epochs)
    sched = get_linear_schedule_with_warmup(opt, int(WARMUP * total), total)
    for epoch in range(epochs):
        model.module.train()
        losses = []
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), batch):
            idx = rows[order[start : start + batch]]
            unique, inverse = np.unique(idx, return_inverse=True)
            emb = model.embed(torch.as_tensor(unique))
            a, p, n = (emb[torch.as_tensor(inverse.reshape(-1, 3)[:, k])] for k in range(3))
            loss = triplet_loss(a, p, n, margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.module.eval()
        after_epoch(epoch, float(np.mean(losses)) if losses else float("nan"))
