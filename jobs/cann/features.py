"""Local features of views: keypoint positions and descriptors, strongest first (OpenCV).

SIFT descriptors are OpenCV's raw 128-d floats (each vector normalised to 512, entries
clipped and stored as bytes), so the L2 distances the CANN radii are measured in run from 0
to ~700. ORB's 32 bytes are unpacked to 256 bits and mapped to +-ORB_SCALE, so that every ORB
vector has SIFT's L2 norm (512) and L2 = 2 * ORB_SCALE * sqrt(Hamming): unrelated pairs are
then about as far apart as SIFT's (median ~600 vs ~540 on the places' views), though ORB's
nearest same-place neighbours are ~3x farther (median ~250 vs ~70), so ORB wants a larger
`CannParams.radius_scale`. ORB's patch and edge margin are 15 px (OpenCV's 31 leaves a 128 px
view with a quarter of the keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIFT_DIM = 128
ORB_DIM = 256
ORB_SCALE = 32.0  # 256 entries of +-32: L2 norm 512, SIFT's nominal norm
METHODS = ("sift", "orb")


@dataclass
class Features:
    xy: np.ndarray  # (n, 2) float32 keypoint positions, px
    desc: np.ndarray  # (n, d) float32 descriptors

    def __len__(self) -> int:
        return len(self.xy)


def _detector(method: str, num_features: int) -> cv2.Feature2D:
    if method == "sift":
        return cv2.SIFT_create(nfeatures=num_features)
    if method == "orb":
        return cv2.ORB_create(nfeatures=num_features, edgeThreshold=15, patchSize=15)
    raise ValueError(f"unknown feature method {method!r}: one of {METHODS}")


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def _descriptors(method: str, raw: np.ndarray | None, n: int) -> np.ndarray:
    dim = SIFT_DIM if method == "sift" else ORB_DIM
    if raw is None or n == 0:
        return np.zeros((0, dim), np.float32)
    if method == "sift":
        return raw.astype(np.float32)
    bits = np.unpackbits(raw, axis=1).astype(np.float32)
    return (2.0 * bits - 1.0) * ORB_SCALE


def extract_one(image: np.ndarray, method: str, num_features: int) -> Features:
    """Features of one (H, W, 3) RGB or (H, W) gray uint8 image."""
    keypoints, raw = _detector(method, num_features).detectAndCompute(_gray(image), None)
    desc = _descriptors(method, raw, len(keypoints))
    xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    # strongest first, then clip: the reference keeps each image's first num_features
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:num_features]
    return Features(xy=xy[order], desc=desc[order])


def extract(images: np.ndarray, method: str, num_features: int) -> list[Features]:
    """Features of each of (n, S, S, 3) uint8 RGB views, at most `num_features` per view."""
    if method not in METHODS:
        raise ValueError(f"unknown feature method {method!r}: one of {METHODS}")
    return [extract_one(image, method, num_features) for image in images]


def stack(features: list[Features]) -> tuple[np.ndarray, np.ndarray]:
    """All descriptors (N, d) and the image index (colour) of each row (N,) int64."""
    dim = next((f.desc.shape[1] for f in features), SIFT_DIM)
    if not features:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    desc = np.concatenate([f.desc for f in features]).astype(np.float32, copy=False)
    colour = np.repeat(np.arange(len(features)), [len(f) for f in features])
    return desc, colour
