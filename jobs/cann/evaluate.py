"""Scoring one arm's answers: recall of the right place, localisation by RANSAC against the
top retrieved images, and the metric names every trial logs (defined here once).

Localisation: for each query, the `top_k` retrieved database images are matched with the
query's local features (ratio test, RANSAC homography, localise.localise); the one with the
most inliers gives the pose, its database pose composed with the query-to-image
homography. A query is localised within t when that image shows the query's own place and
the pose's corner error is at most t x S pixels (localise.corner_error): the stand-in for
the paper's (metres, degrees) thresholds. Every arm is verified the same way, so the arms
differ only in what they retrieve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.cann.features import Features
from jobs.cann.localise import THRESHOLDS, corner_error, localise
from jobs.cann.places import Views

# corner-error thresholds (fractions of the view size S) of the localisation curve
CURVE = tuple(sorted({0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, *THRESHOLDS}))
MAIN_THRESHOLD = THRESHOLDS[1]  # `loc`: the middle one of the three, the paper's (0.5 m, 5 deg)
QUERY_S, INDEX_S = "query_s", "index_s"  # seconds per query image / per database image
LOG_QUERY_S, LOG_INDEX_S = "log10_query_s", "log10_index_s"  # what the speed comparisons judge


def loc_name(split: str, threshold: float) -> str:
    """The metric of the fraction of `split`'s queries localised within `threshold` x S."""
    return f"{split}_loc_{100 * threshold:g}pct"


def loc_metric(split: str) -> str:
    """The headline localisation rate: within MAIN_THRESHOLD (val: Tune's metric)."""
    return f"{split}_loc"


@dataclass
class Answers:
    """One split's queries as an arm answered them."""

    ranking: np.ndarray  # (queries, k) database image indices, best first
    errors: np.ndarray  # (queries,) corner error in px (inf: not localised, or wrong place)


def rank(scores: np.ndarray, k: int) -> np.ndarray:
    """(queries, images) scores -> (queries, k) image indices, best first (stable ties)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def answer(
    scores: np.ndarray,
    queries: Views,
    q_feats: list[Features],
    database: Views,
    db_feats: list[Features],
    top_k: int,
    size: int,
) -> Answers:
    ranking = rank(scores, max(top_k, 5))
    db_xy = [f.xy for f in db_feats]
    db_desc = [f.desc for f in db_feats]
    errors = np.full(len(q_feats), np.inf)
    for i, q in enumerate(q_feats):
        pose, chosen, _ = localise(q.xy, q.desc, list(ranking[i, :top_k]), db_xy, db_desc,
                                   database.pose)  # fmt: skip
        if pose is not None and database.place[chosen] == queries.place[i]:
            errors[i] = corner_error(pose, queries.pose[i], size)
    return Answers(ranking, errors)


def metrics(split: str, answers: Answers, queries: Views, database: Views, size: int) -> dict:
    """Recall@1/@5 (a right-place image among the top 1 / 5) and the localisation curve."""
    hit = database.place[answers.ranking] == queries.place[:, None]
    out = {
        f"{split}_recall1": float(hit[:, :1].any(1).mean()),
        f"{split}_recall5": float(hit[:, :5].any(1).mean()),
    }
    for t in CURVE:
        out[loc_name(split, t)] = float((answers.errors <= t * size).mean())
    out[loc_metric(split)] = out[loc_name(split, MAIN_THRESHOLD)]
    return out


def speed(index_seconds: float, n_images: int, query_seconds: float, n_queries: int) -> dict:
    index_s, query_s = index_seconds / max(n_images, 1), query_seconds / max(n_queries, 1)
    return {
        INDEX_S: index_s,
        QUERY_S: query_s,
        LOG_INDEX_S: float(np.log10(max(index_s, 1e-9))),
        LOG_QUERY_S: float(np.log10(max(query_s, 1e-9))),
    }
