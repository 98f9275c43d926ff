"""Localisation from retrieved database images: match local features, fit a homography.

The paper scores a query as localised when the pose error is under (0.25 m, 2 deg),
(0.5 m, 5 deg) and (5 m, 10 deg). Our poses are homographies to the place frame, so the error is
the mean displacement of the view's four corners, and the thresholds are fractions of S.
"""

from __future__ import annotations

import cv2
import numpy as np

# Corner error, fraction of S (at S = 128: 1.28, 3.84 and 12.8 px). Chosen so the three levels
# spread when the query is matched to its own place's database views with SIFT at S = 128: easy
# queries ~86% / 97% / 99%, hard ones ~44% / 62% / 71% (the rest find no homography at all).
THRESHOLDS = (0.01, 0.03, 0.1)
MIN_INLIERS = 8  # fewer RANSAC inliers than this is no localisation (a chance fit needs 4)


def corner_error(estimated: np.ndarray | None, true: np.ndarray, size: int) -> float:
    """Mean distance (place-frame px) between the view's 4 corners mapped by each pose; inf
    when `estimated` is missing, not finite, singular, or sends a corner to infinity/behind."""
    if estimated is None or not np.isfinite(estimated).all():
        return float("inf")
    corners = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1]], float).T
    mapped = []
    for h in (estimated, true):
        w = (h @ corners)[2]
        if abs(np.linalg.det(h)) < 1e-12 or np.any(w * np.sign(w.mean()) < 1e-9):
            return float("inf")
        mapped.append((h @ corners)[:2] / w)
    return float(np.linalg.norm(mapped[0] - mapped[1], axis=0).mean())


def match_homography(
    q_xy: np.ndarray,
    q_desc: np.ndarray,
    d_xy: np.ndarray,
    d_desc: np.ndarray,
    *,
    ratio: float = 0.8,
    ransac_px: float = 3.0,
) -> tuple[np.ndarray | None, int]:
    """(query px -> database-view px homography, RANSAC inliers) from Lowe-ratio matches;
    (None, 0) when fewer than 4 matches survive or RANSAC finds no model."""
    if len(q_desc) < 4 or len(d_desc) < 2:
        return None, 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        np.ascontiguousarray(q_desc, np.float32), np.ascontiguousarray(d_desc, np.float32), k=2
    )
    good = [(m.queryIdx, m.trainIdx) for m, n in pairs if m.distance < ratio * n.distance]
    if len(good) < 4:
        return None, 0
    q_idx, d_idx = np.array(good).T
    h, mask = cv2.findHomography(
        q_xy[q_idx].astype(np.float32), d_xy[d_idx].astype(np.float32), cv2.RANSAC, ransac_px
    )
    if h is None:
        return None, 0
    return h, int(mask.sum())


def localise(
    q_xy: np.ndarray,
    q_desc: np.ndarray,
    candidates: list[int],
    db_xy: list,
    db_desc: list,
    db_pose: np.ndarray,
    *,
    min_inliers: int = MIN_INLIERS,
    ratio: float = 0.8,
    ransac_px: float = 3.0,
) -> tuple[np.ndarray | None, int, int]:
    """Match the query to each candidate database image and keep the one with most inliers:
    (query px -> place frame homography = db_pose[j] @ H, j, inliers). When no candidate
    reaches min_inliers: (None, -1, the most inliers seen)."""
    best_h, best_j, best = None, -1, 0
    for j in candidates:
        h, inliers = match_homography(
            q_xy, q_desc, db_xy[j], db_desc[j], ratio=ratio, ransac_px=ransac_px
        )
        if h is not None and inliers > best:
            best_h, best_j, best = h, j, inliers
    if best < min_inliers:
        return None, -1, best
    pose = db_pose[best_j] @ best_h
    return pose / pose[2, 2], best_j, best
