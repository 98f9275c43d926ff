"""Each arm as one searcher: built on the database, it encodes queries, then searches.

`encode` is the arm's feature extraction (the CNN's forward pass, HOG; nothing for the
local-feature arms, whose SIFT/ORB features every arm extracts alike) and is not timed;
`search` is what the query time measures (VLAD's aggregation of the query's local features
is part of its search). `build_seconds` is the index time: CANN's grids, kNN's flat index,
VLAD's codebook and database encoding, the global arms' faiss index (their database
embedding is extraction, not indexing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np
import torch

from jobs.cann import retrieval
from jobs.cann.features import Features
from jobs.cann.global_net import EmbedNet, embed

LOCAL = ("cann", "knn_vote")


class Searcher:
    build_seconds: float = 0.0

    def encode(self, feats: list[Features], images: np.ndarray) -> Any:
        return feats

    def search(self, encoded: Any) -> np.ndarray:
        """(queries, database images) scores, higher is better."""
        raise NotImplementedError


class OnFeatures(Searcher):
    """A retrieval.py searcher of local features (CANN, kNN voting, VLAD)."""

    def __init__(self, searcher: Any) -> None:
        self.inner, self.build_seconds = searcher, searcher.build_seconds

    def search(self, encoded: list[Features]) -> np.ndarray:
        return self.inner.scores_many(encoded)


class Hog(Searcher):
    def __init__(self, db_images: np.ndarray) -> None:
        self.inner = retrieval.HogGlobal.build(db_images)
        self.build_seconds = self.inner.build_seconds

    def encode(self, feats: list[Features], images: np.ndarray) -> np.ndarray:
        return images

    def search(self, encoded: np.ndarray) -> np.ndarray:
        return self.inner.scores_many(encoded)


class GlobalCnn(Searcher):
    """The stage's embedding network; cosine similarity over faiss inner product."""

    def __init__(self, net_state: Mapping[str, Any], db_images: np.ndarray, device: Any) -> None:
        self.net = EmbedNet(int(net_state["dim"]), int(net_state["size"]))
        self.net.load_state_dict(net_state["weights"])
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        db = embed(self.net, db_images, self.device)
        started = time.perf_counter()
        self.index = faiss.IndexFlatIP(db.shape[1])
        self.index.add(db)
        self.build_seconds = time.perf_counter() - started

    def encode(self, feats: list[Features], images: np.ndarray) -> np.ndarray:
        return embed(self.net, images, self.device)

    def search(self, encoded: np.ndarray) -> np.ndarray:
        return retrieval.ip_scores(self.index, encoded)


def local_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a local-feature searcher needs, from a trial's params or a localiser's config."""
    return {k: config[k] for k in ("method", "radius_scale", "knn")}


def build_local(
    params: Mapping[str, Any], db_feats: list[Features], device: Any = "cpu"
) -> Searcher:
    if params["method"] == "cann":
        cann = retrieval.CannParams(radius_scale=float(params["radius_scale"]))
        return OnFeatures(retrieval.RandomGridCann.build(db_feats, cann, device=device))
    if params["method"] == "knn_vote":
        return OnFeatures(retrieval.KnnVote.build(db_feats, k=int(params["knn"])))
    raise ValueError(f"not a local-feature method: {params['method']!r}; one of {LOCAL}")


def build(
    p: Any, db_images: np.ndarray, db_feats: list[Features], upstream: Mapping, device: Any
) -> Searcher:
    """The searcher of trial params `p` (Params) over the database."""
    if p.method in LOCAL:
        return build_local(local_params(p.model_dump()), db_feats, device)
    if p.method == "vlad":
        return OnFeatures(retrieval.Vlad.build(db_feats, words=p.vlad_words))
    if p.method == "global_hog":
        return Hog(db_images)
    if p.method == "global_cnn":
        return GlobalCnn(upstream["global_net"], db_images, device)
    raise ValueError(f"unknown method {p.method!r}")
