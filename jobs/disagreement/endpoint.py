"""What the served disagreement scorer answers over HTTP (Study.endpoints).

POST /disagreement/score: texts (each optionally with a period label and the statement it
replies to) -> per text, p(disagree) from the combined scorer the study chose on its
validation topics, with each lexicon index and the stance distance beside it; per period,
the index (the mean of its texts' scores, as the paper averages per month) with a 95% t
interval over the period's texts (null below two texts).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints
from torch import nn

from jobs.disagreement.lexicons import LEXICONS
from jobs.disagreement.measures import STANCE
from jobs.disagreement.scorer import score
from skeptic.api import Endpoint, mean_ci

MAX_CHARS = 2000  # a letter to the editor; a tweet is 280
MAX_TEXTS = 256
MAX_PERIOD = 40

Text = Annotated[
    StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHARS)
]
Period = Annotated[
    StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PERIOD)
]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text
    period: Period | None = Field(None, description="e.g. 2021-03; texts are averaged per period")
    reply_to: Text | None = Field(None, description="the statement this text replies to: adds "
                                  "the embedding stance distance to the score")  # fmt: skip


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": [
            {"text": "I disagree: the trial data were published and reviewed.",
             "period": "2021-03", "reply_to": "The vaccine trials were rushed and hidden."},
            {"text": "Exactly, nobody should trust a rushed vaccine.", "period": "2021-03"},
            {"text": "Masks are a simple courtesy in a crowded train.", "period": "2021-04"},
        ]}]},
    )  # fmt: skip

    texts: list[Text | Item] = Field(
        min_length=1, max_length=MAX_TEXTS,
        description="a text, or {text, period, reply_to}",
    )  # fmt: skip


class Scored(BaseModel):
    score: float = Field(description="p(disagree): the combined scorer")
    period: str | None
    vader: float
    nrc: float
    empath: float
    stance: float | None = Field(description="1 - cosine(statement, text); null without reply_to")


class PeriodIndex(BaseModel):
    period: str
    texts: int
    index: float = Field(description="the mean score of the period's texts")
    ci_low: float | None
    ci_high: float | None


class ScoreResponse(BaseModel):
    texts: list[Scored] = Field(description="one per text, in request order")
    periods: list[PeriodIndex] = Field(description="one per period label, in first-seen order")


def _items(request: ScoreRequest) -> list[Item]:
    return [t if isinstance(t, Item) else Item(text=t) for t in request.texts]


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def periods(labels: list[str | None], scores: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for label in dict.fromkeys(lab for lab in labels if lab is not None):
        values = [float(s) for s, lab in zip(scores, labels) if lab == label]
        mean, half = mean_ci(values)
        out.append({"period": label, "texts": len(values), "index": mean,
                    "ci_low": _finite(mean - half), "ci_high": _finite(mean + half)})  # fmt: skip
    return out


def answer(model: nn.Module, request: ScoreRequest) -> dict[str, Any]:
    items = _items(request)
    s = score(model, [i.text for i in items], [i.reply_to for i in items])
    texts = [
        {"score": float(s["score"][k]), "period": item.period,
         **{name: float(s[name][k]) for name in LEXICONS}, STANCE: _finite(s[STANCE][k])}
        for k, item in enumerate(items)
    ]  # fmt: skip
    return {"texts": texts, "periods": periods([i.period for i in items], s["score"])}


ENDPOINTS = (
    Endpoint("score", ScoreRequest, ScoreResponse, "answer",
             "p(disagree) per text and the disagreement index per period, with its 95% CI"),
)  # fmt: skip
