"""Procedural 10-class shape images, vectorised with numpy, with named domains for shift studies.

Each shape is a signed distance function (SDF) evaluated on per-image coordinate grids, so one
set of numpy operations draws a whole batch, filled (alpha from the SDF) or as an outline
(alpha from |SDF|), anti-aliased at any size. Per-image parameters (label, position, scale,
rotation, colours, texture) are drawn from `seed` in the same order whatever the domain, so the
same seed yields the same scenes rendered in every domain: a clean covariate-shift pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: list[str] = [
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "hbar",
    "vbar",
    "x",
    "half_disc",
]
NUM_CLASSES = len(CLASS_NAMES)

# Rendering in fixed-size chunks bounds memory; fixed so the noise stream stays deterministic.
_CHUNK = 4096
# Image sides make_shapes accepts. Below 8 the shapes are sub-pixel; above 128 one chunk's
# temporaries (about 6x the chunk's images: 4.4 GB peak measured at 128) outgrow the memory
# of a small machine, whatever the number of images.
MIN_SIZE, MAX_SIZE = 8, 128


@dataclass(frozen=True)
class Domain:
    """How scenes are rendered: background, colour palette, pixel noise, filled or outline."""

    description: str
    palette: str = "light"  # "light": dark shapes on light ground; "dark": the reverse
    textured: bool = False
    noise_std: float = 0.02
    outline: bool = False


DOMAINS: dict[str, Domain] = {
    "plain": Domain("dark-ish shapes on flat light backgrounds"),
    "textured": Domain("shapes over stripe and blob textured backgrounds", textured=True),
    "dark": Domain("bright pastel shapes on dark backgrounds", palette="dark"),
    "noisy": Domain("plain scenes under strong gaussian pixel noise", noise_std=0.2),
    "outline": Domain("shapes drawn as outlines instead of filled", outline=True),
}


# --- signed distance functions, in shape units (the shape spans about [-1, 1]) ---------------


def _box(u: np.ndarray, v: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(u) - bx, np.abs(v) - by
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.85, 0.85)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral triangle, apex up (image y grows downwards, hence -v); after Inigo Quilez.
    k, r = np.sqrt(3.0), 1.0
    px = np.abs(u) - r
    py = -v + r / k + 0.29  # +0.29 centres the bounding box vertically
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.minimum(_box(u, v, 1.0, 0.28), _box(u, v, 0.28, 1.0))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.72) - 0.28


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) + np.abs(v) - 1.1) / np.sqrt(2.0)


def _hbar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 1.0, 0.3)


def _vbar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.3, 1.0)


def _x(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = np.float32(np.sqrt(0.5))
    return _plus(c * (u - v), c * (u + v))


def _half_disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Dome on a flat base; shifted down so its bounding box is centred like the others.
    w = v - 0.5
    return np.maximum(np.hypot(u, w) - 1.0, w)


_SDFS: list[Callable[[np.ndarray, np.ndarray], np.ndarray]] = [
    _circle,
    _square,
    _triangle,
    _plus,
    _ring,
    _diamond,
    _hbar,
    _vbar,
    _x,
    _half_disc,
]


# --- argument handling ------------------------------------------------------------------------


def _class_probs(class_priors: Sequence[float] | None, classes: Sequence[int] | None) -> np.ndarray:
    if class_priors is None:
        probs = np.ones(NUM_CLASSES)
    else:
        probs = np.asarray(class_priors, dtype=np.float64)
        if probs.shape != (NUM_CLASSES,):
            raise ValueError(f"class_priors needs {NUM_CLASSES} values, got {probs.size}")
        if not np.all(np.isfinite(probs)) or np.any(probs < 0):
            raise ValueError("class_priors must be finite and non-negative")
    if classes is not None:
        wanted = sorted({int(c) for c in classes})
        if not wanted or wanted[0] < 0 or wanted[-1] >= NUM_CLASSES:
            raise ValueError(f"classes must be a non-empty subset of 0..{NUM_CLASSES - 1}")
        mask = np.zeros(NUM_CLASSES, dtype=bool)
        mask[wanted] = True
        probs = np.where(mask, probs, 0.0)
    if probs.sum() <= 0:
        raise ValueError("class_priors give zero probability to every allowed class")
    return probs / probs.sum()


def proportional_counts(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` (largest-remainder rounding).

    Exact counts rather than sampled ones, so class priors hold without sampling noise.
    """
    weights = np.asarray(weights, dtype=np.float64)
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


# --- scene parameters -------------------------------------------------------------------------


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=1)


def _draw_scenes(rng: np.random.Generator, labels: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Every per-image random parameter, drawn in a fixed order independent of the domain."""
    n = len(labels)
    r = rng.uniform(0.2, 0.34, n) * size
    margin = r * 1.1
    p = {
        "r": r,
        "cx": margin + rng.random(n) * (size - 2 * margin),
        "cy": margin + rng.random(n) * (size - 2 * margin),
        "sx": rng.uniform(0.85, 1.15, n),
        "sy": rng.uniform(0.85, 1.15, n),
        # Small enough that plus/x, square/diamond and hbar/vbar stay distinct.
        "theta": rng.uniform(-0.26, 0.26, n),
        "fg_h": rng.random(n),
        "fg_s": rng.random(n),
        "fg_v": rng.random(n),
        "bg_v": rng.random(n),
        "bg_tint": rng.uniform(-1, 1, (n, 3)),
        "stripe_angle": rng.uniform(0, np.pi, n),
        "stripe_period": rng.uniform(3, 8, n) * size / 32,
        "stripe_phase": rng.uniform(0, 2 * np.pi, n),
        "stripe_amp": rng.uniform(0.05, 0.2, n),
        "blob_amp": rng.uniform(0.1, 0.3, n),
        "blobs": rng.random((n, 3, 5, 5)),
    }
    return p


def _colours(p: dict[str, np.ndarray], palette: str) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background RGB (n x 3), with a guaranteed brightness gap between them."""
    if palette == "light":
        fg = _hsv_to_rgb(p["fg_h"], 0.4 + 0.6 * p["fg_s"], 0.1 + 0.4 * p["fg_v"])
        bg = 0.7 + 0.3 * p["bg_v"][:, None] + 0.08 * p["bg_tint"]
    else:
        fg = _hsv_to_rgb(p["fg_h"], 0.2 + 0.4 * p["fg_s"], 0.65 + 0.35 * p["fg_v"])
        bg = 0.2 * p["bg_v"][:, None] + 0.05 * p["bg_tint"]
    return fg, np.clip(bg, 0, 1)


# --- rendering --------------------------------------------------------------------------------


def _upsample_matrix(low: int, size: int) -> np.ndarray:
    pos = (np.arange(size) + 0.5) / size * (low - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, low - 1)
    w = pos - lo
    m = np.zeros((size, low))
    m[np.arange(size), lo] += 1 - w
    m[np.arange(size), hi] += w
    return m


_STRIPE_KEYS = ("stripe_angle", "stripe_period", "stripe_phase", "stripe_amp", "blob_amp")


def _texture(p: dict[str, np.ndarray], sl: slice, size: int) -> np.ndarray:
    """Zero-mean-ish stripe plus smooth-blob pattern, n x 3 x size x size."""
    grid = (np.arange(size) + 0.5).astype(np.float32)
    q = {k: p[k][sl, None, None].astype(np.float32) for k in _STRIPE_KEYS}
    # Spatial frequency folded into the direction vector: one multiply-add per pixel.
    fx = np.cos(q["stripe_angle"]) * (2 * np.pi) / q["stripe_period"]
    fy = np.sin(q["stripe_angle"]) * (2 * np.pi) / q["stripe_period"]
    stripes = q["stripe_amp"] * np.sin(fx * grid + fy * grid[:, None] + q["stripe_phase"])
    m = _upsample_matrix(p["blobs"].shape[-1], size).astype(np.float32)
    blobs = m @ (p["blobs"][sl].astype(np.float32) - 0.5) @ m.T
    return stripes[:, None] + 2 * q["blob_amp"][..., None] * blobs


def _alpha(
    p: dict[str, np.ndarray], labels: np.ndarray, sl: slice, size: int, outline: bool
) -> np.ndarray:
    """Shape coverage in [0, 1], n x size x size."""
    grid = (np.arange(size) + 0.5).astype(np.float32)
    f32 = {k: p[k][sl].astype(np.float32) for k in ("cx", "cy", "r", "sx", "sy", "theta")}
    dx = grid[None, None, :] - f32["cx"][:, None, None]
    dy = grid[None, :, None] - f32["cy"][:, None, None]
    cos, sin = np.cos(f32["theta"])[:, None, None], np.sin(f32["theta"])[:, None, None]
    u = (cos * dx + sin * dy) / (f32["r"] * f32["sx"])[:, None, None]
    v = (cos * dy - sin * dx) / (f32["r"] * f32["sy"])[:, None, None]
    alpha = np.empty(u.shape, dtype=np.float32)
    lab = labels[sl]
    width = max(1.0, size / 20)
    for k in np.unique(lab):
        sel = lab == k
        dist = _SDFS[k](u[sel], v[sel]) * f32["r"][sel, None, None]  # approx. pixels
        edge = width / 2 - np.abs(dist) if outline else -dist
        alpha[sel] = np.clip(edge + 0.5, 0, 1)
    return alpha


def _render(
    p: dict[str, np.ndarray], labels: np.ndarray, domain: Domain, size: int, noise_seed: int
) -> np.ndarray:
    n = len(labels)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    fg, bg = _colours(p, domain.palette)
    noise_rng = np.random.default_rng([noise_seed, 1])
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        back = bg[sl, :, None, None].astype(np.float32)
        if domain.textured:
            back = np.clip(back + _texture(p, sl, size).astype(np.float32), 0, 1)
        alpha = _alpha(p, labels, sl, size, domain.outline)[:, None]
        img = back + alpha * (fg[sl, :, None, None].astype(np.float32) - back)
        if domain.noise_std > 0:
            noise = noise_rng.standard_normal(img.shape, dtype=np.float32)
            img += np.float32(domain.noise_std) * noise
        out[sl] = np.clip(img, 0, 1)
    return out


def class_counts(
    n: int,
    class_priors: Sequence[float] | None = None,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Images per class that `make_shapes` draws for these arguments, without drawing any
    (what spec-time checks count shots and splits from)."""
    return proportional_counts(n, _class_probs(class_priors, classes))


def make_shapes(
    n: int,
    seed: int,
    domain: str = "plain",
    size: int = 32,
    class_priors: Sequence[float] | None = None,
    classes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` shape images (float32 n x 3 x size x size in [0, 1]) and their int64 labels.

    class_priors: 10 non-negative weights (normalised here) for label shift; class counts are
    exact (largest-remainder rounding), not sampled. classes: restrict to a subset of labels.
    The same arguments always give identical bytes.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; allowed: {', '.join(DOMAINS)}")
    counts = class_counts(n, class_priors, classes)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), counts)
    labels = labels[rng.permutation(n)]
    params = _draw_scenes(rng, labels, size)
    return _render(params, labels, DOMAINS[domain], size, seed), labels
