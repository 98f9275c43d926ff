"""One trial of each part: the metrics it reports.

Part 1 (validity): a measure's scores on the replies of the trial's test fold of topics,
against their known relation: AUC of disagree vs agree (neutral left out) and Spearman rho
with the level (agree 0, neutral 1, disagree 2); the same on the validation topics for
every choice. Part 2 (simulation): Spearman rho of the measure's per-period series with the
latent effect over the periods of a simulated world (simulate.py); `val_rho` from a second
world whose posts quote the validation topics only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from jobs.disagreement import simulate
from jobs.disagreement.corpus import FORMS, RELATIONS, SIDES
from jobs.disagreement.lexicons import LEXICONS
from jobs.disagreement.measures import COMBINED, Weights, fit
from jobs.disagreement.scorer import state

COUNT = "count"
TEXT_ONLY = "text_only"  # the combined weights on the lexicons alone (fit_weights)


def auc(scores: np.ndarray, relation: np.ndarray) -> float:
    """AUC of disagreeing (2) vs agreeing (0) texts; NaN without both."""
    use = relation != 1
    y = relation[use] == 2
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, scores[use]))


def rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho; NaN where either side is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def in_fold(data: dict[str, Any], seed: int, folds: int) -> np.ndarray:
    """Which replies belong to the seed's test fold of topics (seed % folds)."""
    return data["fold"][data["corpus"].topic] == seed % folds


def fit_weights(corpus: Any, scores: dict[str, dict[str, np.ndarray]],
                val_topics: np.ndarray) -> dict[str, Weights]:  # fmt: skip
    """The combined scorer's weights, fitted once per sweep on the validation topics'
    replies: per text variant on every measure, and TEXT_ONLY on the lexicons alone (what
    the served scorer uses for a text without the statement it replies to)."""
    rows = np.isin(corpus.topic, val_topics)
    out = {v: fit(s, corpus.relation, rows) for v, s in scores.items()}
    out[TEXT_ONLY] = fit(scores["present"], corpus.relation, rows, LEXICONS)
    return out


def scores_of(measure: str, data: dict[str, Any], text: str) -> np.ndarray:
    if measure == COMBINED:
        return data["weights"][text].score(data["scores"][text])
    return data["scores"][text][measure]


def validity(p: Any, seed: int, data: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Part 1: metrics on the validation topics and the test fold seed % folds; the
    combined scorer's checkpoint (both regressions) when it is the measure."""
    corpus = data["corpus"]
    s = scores_of(p.measure, data, p.text)
    val = np.isin(corpus.topic, data["val_topics"])
    test = in_fold(data, seed, p.folds)
    rel = corpus.relation
    m = {"val_auc": auc(s[val], rel[val]), "val_rho": rho(s[val], rel[val])}
    m["test_auc"] = auc(s[test], rel[test])
    m["test_auc_above_chance"] = m["test_auc"] - 0.5
    m["test_rho"] = rho(s[test], rel[test])
    for k, side in enumerate(SIDES):
        here = test & (corpus.side == k)
        m[f"test_auc_{side}"] = auc(s[here], rel[here])
    for level, relation in enumerate(RELATIONS):
        m[f"test_mean_{relation}"] = float(np.mean(s[test & (rel == level)]))
    m |= _by_form(s, corpus, test)
    m["test_para_rho"] = _paraphrase_rho(s, corpus, test)
    checkpoint = {}
    if p.measure == COMBINED and p.text == "present":
        checkpoint = state(data["weights"]["present"], data["weights"][TEXT_ONLY])
    return m, checkpoint


def _by_form(s: np.ndarray, corpus: Any, rows: np.ndarray) -> dict[str, float]:
    """AUC of each form of disagreement against every agreeing reply of the rows."""
    if corpus.form is None:
        return {}
    out = {}
    for form in FORMS:
        keep = rows & ((corpus.relation == 0) | ((corpus.relation == 2) & (corpus.form == form)))
        out[f"test_auc_{form}"] = auc(s[keep], corpus.relation[keep])
    return out


def _paraphrase_rho(s: np.ndarray, corpus: Any, rows: np.ndarray) -> float:
    """Spearman rho between each reply's score and its paraphrase's: how much the
    measure depends on the wording rather than what the reply says."""
    first = np.flatnonzero(rows & (corpus.wording == 0))
    second = first + 1  # a paraphrase follows its reply (corpus._load)
    keep = second < len(corpus)
    first, second = first[keep], second[keep]
    keep = corpus.wording[second] == 1
    if keep.sum() < 3:
        return float("nan")
    return rho(s[first[keep]], s[second[keep]])


def simulation(p: Any, seed: int, data: dict[str, Any]) -> dict[str, float]:
    """Part 2: rho with the effect in the test world and in the validation world; rho with
    the count, the paper's statistic. The test world's posts quote the topics of the seed's
    test fold (part 1's), so the spread over seeds holds how topics differ, not only the
    simulated noise: a measure whose contrast the corpus cannot tell from zero changes sign
    between seeds instead of looking decided. The validation world quotes the validation
    topics."""
    corpus = data["corpus"]
    val_rows = np.flatnonzero(np.isin(corpus.topic, data["val_topics"]))
    test_rows = np.flatnonzero(in_fold(data, seed, p.folds))
    s = None if p.measure == COUNT else scores_of(p.measure, data, "present")
    m = {}
    for split, pool, stream in (("val", val_rows, 1), ("test", test_rows, 0)):
        world = simulate.simulate(p.alpha, p.noise, p.periods, p.posts, pool, corpus.relation,
                                  seed, stream, p.displaced)  # fmt: skip
        series = world.count.astype(float) if s is None else simulate.period_means(world, s)
        m[f"{split}_rho"] = rho(series, world.effect)
        m[f"{split}_rho_count"] = rho(series, world.count.astype(float))
    return m
