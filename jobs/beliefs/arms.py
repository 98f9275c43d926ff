"""Each encoder arm as an Embedder (what trains) and a way to embed every statement.

- `frozen`: the pretrained encoder, untouched;
- `head`: a linear map on the frozen embeddings, initialised to the identity;
- `top`: copies of BERT's top `layers` layers, on the states the stage cached below them;
- `full`: the whole encoder from tokens (the paper's setting; the GPU path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from jobs.beliefs.encoder import (
    DIM,
    LAYERS,
    SentenceEncoder,
    TopLayers,
    model_config,
    pretrained,
    served_state,
    tokens,
)
from jobs.beliefs.train import Embedder

BATCH = 128  # statements per forward pass when embedding them all


class Arm:
    """One trial's encoder: its trainable part, every statement's embedding, its weights.
    `cache` is the stage's (lower_states of `texts`): where it was cut decides the layers a
    `top` arm trains; `full` reads tokens and needs none. `frozen` holds every statement's
    embedding before any training (the pretrained encoder's)."""

    def __init__(self, method: str, cache: dict[str, Any], texts: list[str],
                 device: torch.device) -> None:  # fmt: skip
        self.method, self.device, self.texts = method, device, texts
        self.bert = pretrained()
        self.top: TopLayers | None = None
        self.head: nn.Linear | None = None
        self.full: SentenceEncoder | None = None
        self.trainable: Embedder | None = None
        if method == "full":
            self._full()
            self.frozen = self.embeddings()
            return
        self.top = TopLayers(self.bert, int(cache["first_trained"])).to(device)
        self.hidden, self.mask = cache["hidden"], cache["mask"].long()
        if method == "top":
            self.trainable = Embedder(self.top, self._top_embed)
            self.frozen = self.embeddings()  # before any step: the pretrained encoder's
            return
        self.top.requires_grad_(False)
        self.base = self._all(self._top_embed)  # the frozen encoder's embeddings
        if method == "head":
            self.head = nn.Linear(DIM, DIM, bias=False).to(device)
            nn.init.eye_(self.head.weight)
            self.trainable = Embedder(self.head, lambda idx: self.head(self.base[idx].to(device)))
        self.frozen = self.base.cpu().numpy()

    def _top_embed(self, idx: torch.Tensor) -> torch.Tensor:
        dev = self.device
        return self.top(self.hidden[idx].to(dev), self.mask[idx].to(dev))

    def _full(self) -> None:
        config = model_config(self.bert, head=False, pro_scale=1.0)
        self.full = SentenceEncoder(config).to(self.device)
        self.full.load_state_dict(served_state(self.bert, None, None), strict=True)
        enc = tokens(self.texts)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        dev = self.device
        self.trainable = Embedder(self.full, lambda idx: self.full(ids[idx].to(dev), mask[idx].to(dev)))

    def _all(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            parts = [embed(torch.arange(i, min(i + BATCH, len(self.texts))))
                     for i in range(0, len(self.texts), BATCH)]  # fmt: skip
        return torch.cat(parts).float()

    def embeddings(self) -> np.ndarray:
        """Every statement's embedding, in eval mode: (statements, DIM)."""
        if self.trainable is not None:
            self.trainable.module.eval()
            return self._all(self.trainable.embed).cpu().numpy()
        return self.base.cpu().numpy()

    def state(self, pro_scale: float) -> dict[str, Any]:
        """The served encoder's weights and config (SentenceEncoder)."""
        if self.full is not None:
            weights = {k: v.detach().cpu().clone() for k, v in self.full.state_dict().items()}
        else:
            top = self.top if self.method == "top" else None
            weights = served_state(self.bert, top, self.head)
        return {"model": weights,
                "model_config": model_config(self.bert, self.head is not None, pro_scale)}  # fmt: skip


def stage_result(texts: list[str], layers: int) -> dict[str, Any]:
    """The stage's cache: every statement's states entering the first trained layer."""
    from jobs.beliefs.encoder import lower_states

    return lower_states(pretrained(), texts, LAYERS - layers)
