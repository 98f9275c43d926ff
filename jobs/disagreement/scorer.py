"""The served model: a disagreement scorer, the `combined` measure's weights as tensors.

Two logistic regressions fitted by the champion trial on the validation topics: `pair`
on the three lexicon indices and the stance distance (a text that replies to a given
statement), `text` on the lexicon indices alone (a lone text). The lexicons and the
sentence encoder come from their packages; only the regressions are weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from jobs.disagreement.lexicons import LEXICONS, indices
from jobs.disagreement.measures import BASE, STANCE, Weights, stance_distance

KINDS = {"pair": BASE, "text": LEXICONS}  # the measures each regression reads


class Scorer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        for kind, names in KINDS.items():
            if tuple(config.get(kind, ())) != names:
                raise ValueError(f"model_config.{kind}: expects measures {names}")
            for field in ("mean", "std", "coef"):
                self.register_buffer(
                    f"{kind}_{field}", torch.zeros(len(names), dtype=torch.float64)
                )
            self.register_buffer(f"{kind}_intercept", torch.zeros((), dtype=torch.float64))

    def weights(self, kind: str) -> Weights:
        def get(field: str) -> Any:
            return getattr(self, f"{kind}_{field}").cpu().tolist()

        return Weights(KINDS[kind], *(tuple(get(f)) for f in ("mean", "std", "coef")),
                       float(get("intercept")))  # fmt: skip

    @property
    def device(self) -> str:
        return str(self.pair_mean.device)


def state(pair: Weights, text: Weights) -> dict[str, Any]:
    """The checkpoint the champion registers: weights and builder config."""
    tensors = {}
    for kind, w in (("pair", pair), ("text", text)):
        for field in ("mean", "std", "coef"):
            tensors[f"{kind}_{field}"] = torch.tensor(getattr(w, field), dtype=torch.float64)
        tensors[f"{kind}_intercept"] = torch.tensor(w.intercept, dtype=torch.float64)
    return {"model": tensors, "model_config": {k: list(v) for k, v in KINDS.items()}}


def score(model: Scorer, texts: list[str], reply_to: list[str | None]) -> dict[str, np.ndarray]:
    """Per text: each lexicon index, the stance distance (NaN without a statement) and
    p(disagree) from the regression that fits what the text comes with."""
    out = {name: indices(texts, name) for name in LEXICONS}
    out[STANCE] = np.full(len(texts), np.nan)
    paired = [i for i, s in enumerate(reply_to) if s is not None]
    if paired:
        out[STANCE][paired] = stance_distance([reply_to[i] for i in paired],
                                              [texts[i] for i in paired], model.device)  # fmt: skip
    alone = model.weights("text").score(out)
    with_pair = model.weights("pair").score({**out, STANCE: np.nan_to_num(out[STANCE])})
    out["score"] = np.where(np.isnan(out[STANCE]), alone, with_pair)
    return out
