"""The registered model: a localiser whose database is its state. Its buffers hold every
database feature (descriptor, position, image) and every database image's place and pose;
safetensors stores them, so loading one unpickles nothing. The searcher (CANN's random
grids, or kNN voting) is rebuilt from the buffers on the first query.

An answer for a batch of views (float RGB in [0, 1], as the endpoint decodes images): each
place's score (its best database image's), and for the VERIFY best places the homography
from the query's pixels to the place frame (the pose; zeros where RANSAC found none) with
its inlier count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from jobs.cann import arms
from jobs.cann.features import Features, extract, stack
from jobs.cann.localise import match_homography
from jobs.cann.places import Places

METHODS = ("cann", "knn_vote")  # the arms whose model is a local-feature database
VERIFY = 5  # places whose best image RANSAC verifies per query


def checkpoint(p: Any, places: Places, db_feats: list[Features]) -> dict[str, Any]:
    """A trial's state for the registry: the localiser's tensors and its builder config."""
    db = places.database
    desc, image = stack(db_feats)
    model = {
        "desc": torch.from_numpy(desc).to(torch.float16),  # SIFT's entries are integers < 256
        "xy": torch.from_numpy(np.concatenate([f.xy.reshape(-1, 2) for f in db_feats])),
        "image": torch.from_numpy(image),
        "place": torch.from_numpy(db.place.astype(np.int64)),
        "pose": torch.from_numpy(db.pose.astype(np.float64)),
    }
    fields = ("method", "extractor", "num_features", "radius_scale", "size", "knn")
    config = {k: getattr(p, k) for k in fields} | {
        "features": len(desc), "dim": desc.shape[1], "images": len(db_feats),
        "class_names": list(places.names),
    }  # fmt: skip
    return {"model": model, "model_config": config}


class Localiser(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        n, m = config["features"], config["images"]
        self.register_buffer("desc", torch.zeros(n, config["dim"], dtype=torch.float16))
        self.register_buffer("xy", torch.zeros(n, 2))
        self.register_buffer("image", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("place", torch.zeros(m, dtype=torch.int64))
        self.register_buffer("pose", torch.zeros(m, 3, 3, dtype=torch.float64))
        self._db: list[Features] | None = None
        self._searcher: Any = None

    def _database(self) -> list[Features]:
        if self._db is None:
            desc, xy = self.desc.float().cpu().numpy(), self.xy.cpu().numpy()
            # rows are grouped by image, in image order (features.stack)
            ends = np.cumsum(np.bincount(self.image.cpu().numpy(), minlength=len(self.place)))
            self._db = [Features(x, d) for x, d in zip(np.split(xy, ends[:-1]),
                                                       np.split(desc, ends[:-1]), strict=True)]  # fmt: skip
            params = arms.local_params(self.config)
            self._searcher = arms.build_local(params, self._db)
        return self._db

    def locate(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        db = self._database()
        c = self.config
        views = (np.clip(batch, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
        q_feats = extract(views, c["extractor"], c["num_features"])
        image_scores = self._searcher.search(self._searcher.encode(q_feats, views))
        place, pose = self.place.cpu().numpy(), self.pose.cpu().numpy()
        n_places = len(c["class_names"])
        scores = np.zeros((len(views), n_places), np.float32)
        best = np.zeros((len(views), n_places), np.int64)  # each place's best image
        for k in range(n_places):
            mine = np.flatnonzero(place == k)
            if len(mine):
                best[:, k] = mine[image_scores[:, mine].argmax(1)]
                scores[:, k] = image_scores[:, mine].max(1)
        homography = np.zeros((len(views), n_places, 3, 3))
        inliers = np.zeros((len(views), n_places), np.int64)
        for i, q in enumerate(q_feats):
            for k in np.argsort(-scores[i], kind="stable")[:VERIFY]:
                j = best[i, k]
                h, count = match_homography(q.xy, q.desc, db[j].xy, db[j].desc)
                if h is not None:
                    homography[i, k], inliers[i, k] = pose[j] @ h, count
        return {"scores": scores, "homography": homography, "inliers": inliers}
