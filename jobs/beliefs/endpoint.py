"""What the served belief encoder answers over HTTP (Study.endpoints): the request and
response schemas, validated by the serving app, and the two answers.

POST /predict: a user's prior beliefs and candidate propositions -> per candidate p(Pro),
the distances to its Pro and Con statements, d_rel, and the prior beliefs nearest the
stance it predicts. The rule is the paper's (evaluate.py): the user's vector is the mean of
the prior beliefs' embeddings, Pro when the Pro statement is nearer; p(Pro) is
sigmoid(pro_scale * (d_con - d_pro)), the scale fitted on the validation votes.
POST /embed: a list of statements -> their embeddings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints
from torch import nn

from jobs.beliefs.evaluate import distances, relative_dissonance
from jobs.beliefs.votes import AGREE, DISAGREE, statement, title_of
from skeptic.api import Endpoint

MAX_CHARS = 300  # a statement; debate titles are far shorter
MAX_BELIEFS = 200
MAX_CANDIDATES = 64
MAX_STATEMENTS = 256  # /embed
MAX_NEAREST = 20

Text = Annotated[
    StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHARS)
]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "beliefs": ["I agree with the following: The minimum wage should be raised",
                        "I disagree with the following: Taxes should be lowered"],
            "candidates": ["Universal healthcare should be provided by the state"],
            "nearest": 2,
        }]},
    )  # fmt: skip

    beliefs: list[Text] = Field(
        min_length=1, max_length=MAX_BELIEFS,
        description="the user's prior beliefs, as statements 'I agree with the following: "
        "<proposition>' or 'I disagree with the following: <proposition>'; a bare "
        "proposition counts as agreeing with it",
    )  # fmt: skip
    candidates: list[Text] = Field(
        min_length=1, max_length=MAX_CANDIDATES,
        description="propositions to predict the user's stance on (a debate title; a "
        "statement's template is stripped)",
    )  # fmt: skip
    nearest: int = Field(3, ge=0, le=MAX_NEAREST, strict=True,
                         description="prior beliefs to list per candidate, nearest first")  # fmt: skip


class Near(BaseModel):
    belief: str
    distance: float


class Prediction(BaseModel):
    candidate: str = Field(description="the proposition, template stripped")
    stance: Literal["Pro", "Con"] = Field(description="the predicted stance (the nearer one)")
    p_pro: float = Field(description="p(the user agrees), calibrated on validation votes")
    d_pro: float = Field(description="distance of the Pro statement to the user's vector")
    d_con: float = Field(description="distance of the Con statement to the user's vector")
    d_rel: float = Field(description="relative dissonance |d_pro - d_con| / min(d_pro, d_con)")
    nearest: list[Near] = Field(description="prior beliefs nearest the predicted statement")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per candidate, in request order")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"statements": ["I agree with the following: God exists"]}]},
    )

    statements: list[Text] = Field(min_length=1, max_length=MAX_STATEMENTS)


class EmbedResponse(BaseModel):
    dim: int
    vectors: list[list[float]] = Field(description="one embedding per statement, in order")


def as_statement(text: str) -> str:
    return text if text.startswith((AGREE, DISAGREE)) else statement(text, True)


def answer(model: nn.Module, request: PredictRequest) -> dict[str, Any]:
    beliefs = [as_statement(b) for b in request.beliefs]
    titles = [title_of(c) for c in request.candidates]
    texts = beliefs + [statement(t, pro) for pro in (True, False) for t in titles]
    emb = model.encode(texts).numpy().astype(np.float64)
    nb, nc = len(beliefs), len(titles)
    prior, pro, con = emb[:nb], emb[nb : nb + nc], emb[nb + nc :]
    d_pro, d_con = distances(prior.mean(0), pro, con)
    d_rel = relative_dissonance(d_pro, d_con)
    p_pro = 1.0 / (1.0 + np.exp(-getattr(model, "pro_scale", 1.0) * (d_con - d_pro)))
    predictions = []
    for i, title in enumerate(titles):
        chosen = pro[i] if d_pro[i] < d_con[i] else con[i]
        gaps = np.linalg.norm(prior - chosen, axis=1)
        near = np.argsort(gaps, kind="stable")[: request.nearest]
        predictions.append({
            "candidate": title, "stance": "Pro" if d_pro[i] < d_con[i] else "Con",
            "p_pro": float(p_pro[i]), "d_pro": float(d_pro[i]), "d_con": float(d_con[i]),
            "d_rel": float(d_rel[i]),
            "nearest": [{"belief": beliefs[j], "distance": float(gaps[j])} for j in near],
        })  # fmt: skip
    return {"predictions": predictions}


def embed(model: nn.Module, request: EmbedRequest) -> dict[str, Any]:
    vectors = model.encode(list(request.statements)).numpy()
    return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}


ENDPOINTS = (
    Endpoint("predict", PredictRequest, PredictResponse, "answer",
             "p(Pro), d_rel and the nearest prior beliefs, per candidate proposition"),
    Endpoint("embed", EmbedRequest, EmbedResponse, "embed", "embeddings of statements"),
)  # fmt: skip
