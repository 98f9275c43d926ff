"""Image retrieval from local features: CANN (random grids, and its exact reference), kNN
voting, VLAD, and a HOG global-descriptor floor.

Every searcher is built by `Searcher.build(db, ...)` from the database images' features (HOG:
from the images themselves), records `build_seconds`, and scores queries with `scores(q)` ->
(n_images,) and `scores_many(qs)` -> (n_queries, n_images), higher = better.

CANN (Aiger et al. 2023, "Yes, we CANN"; released code google-research/cann, main/cann_rg.cc)
ranks database images by how many query features have a near neighbour *of that image's
colour*: for each radius of a fixed schedule (smallest first) a colored near-neighbour index
answers, per query feature, the set of images with a point in the feature's cell; a (query
feature, image) pair scores kernel(r) at the first radius that finds it, and an image's score
is the sum over query features / the number of query features.

`RandomGridCann` is that released CANN-RG, vectorised with torch (CPU or GPU, whichever device
it is built on). Departures, documented where made: cell keys are hashed to 64 bits (distinct
cells collide w.p. ~2**-54); grid coordinates are clamped at +-255 cells where the released
int8 cast wraps past +-127; the released top 50 images per query are not cut (every image
is scored); the rotations come from numpy's generator (seeded 1962 like the reference's
std::mt19937, but not the same draws).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import faiss
import numpy as np
import torch
from skimage.feature import hog

from jobs.cann.features import Features, stack

HASH_DIMS = 128  # the reference's kNumHashDimensions: rows of each grid's rotation kept


# --- the released schedule ---------------------------------------------------------------


def radii(*, c: float, eps: float, p0: float, p1: float, min_distance: float) -> np.ndarray:
    """The released radius schedule: geometric steps of 1 + (c - 1) / 4 from min_distance
    up to rg_R, where the kernel falls to ~eps. Float32 steps, as the reference's `float`."""
    big_c, b = 1.0 / eps, p1
    rg_r = -(p0 * (1 - big_c ** (b / (b - 1))) ** (1 / b)) / (big_c ** (b / (b - 1)) - 1)
    out, r = [], np.float32(min(min_distance, rg_r))
    while r < rg_r:
        out.append(r)
        r = np.float32(r * (1.0 + (c - 1.0) * 0.25))
    return np.array(out, np.float64)


def kernel(r: np.ndarray | float, *, p0: float, p1: float) -> np.ndarray:
    """The released per-radius score (1 - (r/p0)^(p1/(1-p1)))^((1-p1)/p1): 1 at r = 0, 0 from
    r = p0 on."""
    ratio = np.clip(np.asarray(r, np.float64) / p0, 0.0, 1.0)
    return (1.0 - ratio ** (p1 / (1.0 - p1))) ** ((1.0 - p1) / p1)


def grid_count(num_grids: int, dim: int, c: float) -> int:
    """The reference's int(exp(min(log(num_grids), dim / c))): 19 for num_grids = 20, since
    exp(log(20)) is 19.999999999999996 in doubles and the cast truncates."""
    return int(math.exp(min(math.log(num_grids), dim / c)))


@dataclass(frozen=True)
class CannParams:
    """The released defaults. radius_scale multiplies p0 and min_distance (so the radii, not
    the kernel's values, scale): descriptor distances depend on the feature type."""

    c: float = 1.165939651397022
    num_grids: int = 20
    eps: float = 1e-6
    p0: float = 120.0
    p1: float = 0.4591763556652752
    min_distance: float = 28.28296718361788
    radius_scale: float = 1.0

    def schedule(self) -> tuple[np.ndarray, np.ndarray]:
        """(radii, kernel at each radius) after radius_scale."""
        p0, md = self.p0 * self.radius_scale, self.min_distance * self.radius_scale
        rs = radii(c=self.c, eps=self.eps, p0=p0, p1=self.p1, min_distance=md)
        return rs, kernel(rs, p0=p0, p1=self.p1)


def _owners(qs: list[Features]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All query descriptors, the query index of each row, and each query's feature count."""
    desc, owner = stack(qs)
    return desc, owner, np.array([len(q) for q in qs], np.int64)


def _normalise_rows(totals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return totals / np.maximum(counts, 1)[:, None]


# --- CANN with random grids ----------------------------------------------------------------


_WEIGHTS = 6  # integer projections per cell key, each 9 bits: distinct cells collide w.p. 2**-54
_WEIGHT_HIGH = 512
_KEY_LIMIT = 255  # |grid coordinate| cap: 128 * 255 * 511 < 2**24 keeps float32 sums exact
_BLOCK = 256  # rows hashed at once on a CPU: their projections (256 x grids x 128) stay in cache
_GPU_BLOCK = 8192  # on a GPU, rows enough to fill it


class _Grids:
    """The random shifted grids of every radius: one rotation and shift per grid, shared by
    all radii (the reference seeds every radius's Setup alike), and the hash of cell keys."""

    def __init__(self, dim: int, params: CannParams, seed: int, device: torch.device) -> None:
        rng = np.random.default_rng(seed)
        self.grids = grid_count(params.num_grids, dim, params.c)
        self.hash_dims = min(HASH_DIMS, dim)
        rows = []
        for _ in range(self.grids):
            q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            rows.append(q[: self.hash_dims])
        # (dim, grids * hash_dims): one matmul projects a feature for every grid at once
        self.rotation = torch.tensor(np.concatenate(rows).T, dtype=torch.float32, device=device)
        shift = rng.uniform(0.0, 1.0, self.grids * self.hash_dims)
        self.shift = torch.tensor(shift, dtype=torch.float32, device=device)
        weights = rng.integers(0, _WEIGHT_HIGH, (_WEIGHTS, self.hash_dims))
        self.weights = torch.tensor(weights, dtype=torch.float32, device=device)
        mix = rng.integers(-(2**62), 2**62, _WEIGHTS + self.grids) | 1
        self.mix = torch.tensor(mix[:_WEIGHTS, None], dtype=torch.int64, device=device)
        self.salt = torch.tensor(mix[_WEIGHTS:], dtype=torch.int64, device=device)
        self.cell_factor = params.c / math.sqrt(dim)  # the reference's w
        self.radii, self.kernel = params.schedule()
        # projections clamped here keep every radius's coordinates within +-_KEY_LIMIT
        self.limit = (_KEY_LIMIT - 1) * self.cell_factor * float(self.radii[0])

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """(radii, n, grids) int64 hashes of the n points' cells at every radius."""
        out = torch.empty(len(self.radii), len(x), self.grids, dtype=torch.long, device=x.device)
        block = _BLOCK if x.device.type == "cpu" else _GPU_BLOCK
        for s in range(0, len(x), block):
            projected = (x[s : s + block] @ self.rotation).clamp_(-self.limit, self.limit)
            scratch = torch.empty_like(projected)
            ints = torch.empty(projected.shape, dtype=torch.int32, device=x.device)
            for i, r in enumerate(self.radii):
                out[i, s : s + block] = self._keys(projected, float(r), scratch, ints)
        return out

    def _keys(
        self, projected: torch.Tensor, radius: float, out: torch.Tensor, ints: torch.Tensor
    ) -> torch.Tensor:
        """(n, grids) hashes at one radius (`out`, `ints`: scratch shaped like `projected`).
        A cell is the int cast of rotation @ x / cell + shift per hash dim, as released: it
        truncates toward zero, so the cell around 0 is twice as wide (at large radii many
        coordinates fall in it). The released int8 wrap past +-127 cells is not copied (keys
        are clamped at +-255 instead): it only merges far-apart cells."""
        torch.add(self.shift, projected, alpha=1.0 / (self.cell_factor * radius), out=out)
        out.copy_(ints.copy_(out))  # float -> int32 truncates (torch's own trunc_ is slower)
        # exact integer projections (float32 sums < 2**24), mixed to 64 bits with odd
        # multipliers (wrapping), salted per grid; (weights @ keys.T) is the fast layout
        sums = self.weights @ out.view(-1, self.hash_dims).T
        mixed = (sums.long() * self.mix).sum(0).view(len(projected), self.grids)
        return mixed + self.salt


class _Table:
    """One radius's index over all grids: the sorted unique keys (cell hash with its low bits
    replaced by a colour); a bitmap of the cell hashes' top bits (8-16 bits per key) that turns
    ~90% of empty cells away with one cache-resident gather; and a directory of the keys by
    their top bits (2-4 keys per bucket) that finds the rest by a short scan, not a binary
    search's ~20 cache misses. ~11 bytes per key in all."""

    def __init__(self, keys: torch.Tensor, colour_bits: int) -> None:
        self.keys, self.low = keys, (1 << colour_bits) - 1
        self.bits = max(1, (len(keys) // 4).bit_length())
        counts = torch.bincount(self._bucket(keys, self.bits), minlength=1 << self.bits)
        self.starts = torch.zeros(len(counts) + 1, dtype=torch.int32, device=keys.device)
        torch.cumsum(counts, 0, out=self.starts[1:])
        self.map_bits = self.bits + 5
        flags = torch.zeros(1 << self.map_bits, dtype=torch.bool, device=keys.device)
        flags[self._bucket(keys, self.map_bits)] = True
        self.bitmap = _pack(flags)

    @staticmethod
    def _bucket(hashed: torch.Tensor, bits: int) -> torch.Tensor:
        # arithmetic shift + offset: bucket order = signed key order, so buckets are ranges
        return (hashed >> (64 - bits)) + (1 << (bits - 1))

    def lookup(self, hashed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index into `hashed`, colour) for every stored key in the cells `hashed` name."""
        cell = hashed & ~self.low
        slot = self._bucket(cell, self.map_bits)
        byte = self.bitmap.index_select(0, slot >> 3)
        row = ((byte >> (slot & 7).to(torch.uint8)) & 1).nonzero().squeeze(1)
        cell = cell.index_select(0, row)
        bucket = self._bucket(cell, self.bits)
        start = self.starts.index_select(0, bucket).long()
        count = self.starts.index_select(0, bucket + 1).long() - start
        # every needle's bucket, key by key: positions start, start + 1, ..., flattened
        seen = torch.repeat_interleave(count)
        offset = torch.arange(len(seen), device=seen.device)
        offset -= (count.cumsum(0) - count).index_select(0, seen)
        stored = self.keys.index_select(0, start.index_select(0, seen) + offset)
        match = ((stored & ~self.low) == cell.index_select(0, seen)).nonzero().squeeze(1)
        return row.index_select(0, seen.index_select(0, match)), stored[match] & self.low


def _pack(flags: torch.Tensor) -> torch.Tensor:
    """Bool (8k,) -> uint8 (k,), flag 8j + b in bit b of byte j."""
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=flags.device)
    return (flags.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)


class RandomGridCann:
    """CANN-RG: per radius, `grids` random shifted grids of cell size w * r, each cell holding
    the set of colours (database images) of the points in it. Torch does the projections,
    hashing and lookups, on the device the index is built on."""

    def __init__(self, grids: _Grids, tables: list[_Table], n_images: int) -> None:
        self.grids, self.tables, self.n_images = grids, tables, n_images
        self.build_seconds = 0.0

    @classmethod
    def build(
        cls,
        db: list[Features],
        params: CannParams | None = None,
        *,
        seed: int = 1962,
        device: str | torch.device = "cpu",
        chunk: int = 4096,
    ) -> RandomGridCann:
        started = time.perf_counter()
        desc, colour = stack(db)
        device = torch.device(device)
        grids = _Grids(desc.shape[1], params or CannParams(), seed, device)
        colour_bits = max(1, int(len(db) - 1).bit_length())
        x_all = torch.from_numpy(desc).to(device)
        c_all = torch.from_numpy(colour).to(device)
        # a (points, grids) block per radius, each freed as soon as its table is made
        shape = (len(desc), grids.grids)
        raw = [torch.empty(shape, dtype=torch.long, device=device) for _ in grids.radii]
        for s in range(0, len(desc), chunk):
            keys = grids.hash(x_all[s : s + chunk])
            keys = (keys >> colour_bits) << colour_bits | c_all[s : s + chunk, None]
            for block, radius_keys in zip(raw, keys, strict=True):
                block[s : s + chunk] = radius_keys
        tables = []
        while raw:
            tables.append(_Table(torch.unique(raw.pop(0)), colour_bits))
        index = cls(grids, tables, len(db))
        index.build_seconds = time.perf_counter() - started
        return index

    def scores(self, q: Features) -> np.ndarray:
        return self.scores_many([q])[0]

    def scores_many(self, qs: list[Features], chunk: int | None = None) -> np.ndarray:
        desc, owner, counts = _owners(qs)
        device = self.grids.rotation.device
        chunk = chunk or (4096 if device.type == "cpu" else 32768)
        totals = torch.zeros(len(qs), self.n_images, dtype=torch.float64, device=device)
        weight = torch.tensor([*self.grids.kernel, 0.0], dtype=torch.float64, device=device)
        x_all = torch.from_numpy(desc).to(device)
        o_all = torch.from_numpy(owner).to(device)
        for s in range(0, len(desc), chunk):
            first = self.first_radius(x_all[s : s + chunk])
            totals.index_add_(0, o_all[s : s + chunk], weight[first])
        return _normalise_rows(totals.cpu().numpy(), counts)

    def first_radius(self, x: torch.Tensor) -> torch.Tensor:
        """(n, n_images) index of the smallest radius at which some grid puts a point of that
        image in the query point's cell (len(radii): none). A (feature, image) pair thus
        counts once, at its first radius, whatever the grids and radii that find it again.
        Largest radius first, so smaller ones overwrite; one radius at a time over all of x,
        so that radius's table stays in cache."""
        none = len(self.grids.radii)
        first = torch.full((len(x), self.n_images), none, dtype=torch.long, device=x.device)
        hashed = self.grids.hash(x)
        for i in reversed(range(none)):
            row, image = self.tables[i].lookup(hashed[i].flatten())
            flat = torch.div(row, self.grids.grids, rounding_mode="floor") * self.n_images
            first.view(-1).index_fill_(0, flat + image, i)
        return first


# --- the exact reference -------------------------------------------------------------------


class ExactCann:
    """What CANN approximates, computed exactly: for each (query feature, image) the distance d
    to the image's nearest feature; the pair scores kernel(first radius >= d) when d is within
    the last radius. Brute force (torch matmul distances, per-image min), so O(query x db)."""

    def __init__(self, desc: torch.Tensor, starts: np.ndarray, params: CannParams) -> None:
        self.desc, self.starts = desc, starts
        self.sq_norms = (desc * desc).sum(1)
        self.radii, self.kernel = params.schedule()
        self.n_images = len(starts) - 1
        self.build_seconds = 0.0

    @classmethod
    def build(
        cls,
        db: list[Features],
        params: CannParams | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> ExactCann:
        started = time.perf_counter()
        desc, _ = stack(db)
        starts = np.concatenate([[0], np.cumsum([len(f) for f in db])])
        index = cls(torch.from_numpy(desc).to(device), starts, params or CannParams())
        index.build_seconds = time.perf_counter() - started
        return index

    def nearest(self, q: np.ndarray) -> np.ndarray:
        """(n, n_images) exact distance from each query row to each image's nearest feature
        (inf for images without features)."""
        out = np.full((len(q), self.n_images), np.inf)
        full = np.flatnonzero(np.diff(self.starts) > 0)
        if len(full) == 0 or len(q) == 0:
            return out
        rows = max(1, (1 << 25) // max(len(self.desc), 1))  # ~128 MiB of distances at a time
        qt = torch.from_numpy(q).to(self.desc.device)
        for s in range(0, len(q), rows):
            x = qt[s : s + rows]
            d2 = (x * x).sum(1, keepdim=True) + self.sq_norms - 2.0 * (x @ self.desc.T)
            d2 = d2.clamp_min_(0.0).cpu().numpy()
            out[s : s + rows, full] = np.minimum.reduceat(d2, self.starts[full], axis=1)
        return np.sqrt(out)

    def scores(self, q: Features) -> np.ndarray:
        return self.scores_many([q])[0]

    def scores_many(self, qs: list[Features]) -> np.ndarray:
        desc, owner, counts = _owners(qs)
        weight = np.append(self.kernel, 0.0)
        totals = np.zeros((len(qs), self.n_images))
        rows = max(1, (1 << 22) // max(self.n_images, 1))
        for s in range(0, len(desc), rows):
            d = self.nearest(desc[s : s + rows])
            # the first radius >= d; past the last radius: the 0 appended to the kernel
            np.add.at(totals, owner[s : s + rows], weight[np.searchsorted(self.radii, d)])
        return _normalise_rows(totals, counts)


# --- plain local-feature voting and aggregation ---------------------------------------------


class KnnVote:
    """Each query feature's k exact nearest database features (faiss IndexFlatL2) vote for their
    images, one vote per (query feature, image); an image's score is votes / query features."""

    def __init__(self, index: faiss.Index, colour: np.ndarray, n_images: int, k: int) -> None:
        self.index, self.colour, self.n_images, self.k = index, colour, n_images, k
        self.build_seconds = 0.0

    @classmethod
    def build(cls, db: list[Features], *, k: int = 10) -> KnnVote:
        started = time.perf_counter()
        desc, colour = stack(db)
        index = faiss.IndexFlatL2(desc.shape[1])
        index.add(desc)
        searcher = cls(index, colour, len(db), k)
        searcher.build_seconds = time.perf_counter() - started
        return searcher

    def scores(self, q: Features) -> np.ndarray:
        return self.scores_many([q])[0]

    def scores_many(self, qs: list[Features]) -> np.ndarray:
        desc, owner, counts = _owners(qs)
        totals = np.zeros((len(qs), self.n_images))
        k = min(self.k, self.index.ntotal)
        if len(desc) and k:
            _, nn = self.index.search(desc, k)
            image = np.sort(self.colour[nn], axis=1)  # faiss pads missing neighbours with -1
            fresh = np.ones_like(image, bool)
            fresh[:, 1:] = image[:, 1:] != image[:, :-1]  # one vote per (feature, image)
            rows = np.broadcast_to(owner[:, None], image.shape)
            np.add.at(totals, (rows[fresh], image[fresh]), 1.0)
        return _normalise_rows(totals, counts)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ip_scores(index: faiss.Index, queries: np.ndarray) -> np.ndarray:
    """(n_queries, n_database) inner products, through a full faiss IndexFlatIP search."""
    n = index.ntotal
    out = np.zeros((len(queries), n), np.float32)
    if len(queries) and n:
        sims, ids = index.search(np.ascontiguousarray(queries, np.float32), n)
        np.put_along_axis(out, ids, sims, axis=1)
    return out


class Vlad:
    """VLAD (Jegou et al. 2010) of the same local features: a faiss k-means codebook on the
    database descriptors; per word the sum of residuals, intra-normalised (Arandjelovic &
    Zisserman 2013), signed square root, L2; cosine retrieval with faiss IndexFlatIP."""

    def __init__(self, centroids: np.ndarray, index: faiss.Index) -> None:
        self.centroids, self.index = centroids, index
        self.assign = faiss.IndexFlatL2(centroids.shape[1])
        self.assign.add(centroids)
        self.build_seconds = 0.0

    @classmethod
    def build(cls, db: list[Features], *, words: int = 64, seed: int = 0) -> Vlad:
        started = time.perf_counter()
        desc, _ = stack(db)
        words = max(1, min(words, len(desc)))
        kmeans = faiss.Kmeans(desc.shape[1], words, niter=20, seed=seed, verbose=False)
        kmeans.train(desc)
        searcher = cls(kmeans.centroids, faiss.IndexFlatIP(words * desc.shape[1]))
        searcher.index.add(searcher.encode(db))
        searcher.build_seconds = time.perf_counter() - started
        return searcher

    def encode(self, feats: list[Features]) -> np.ndarray:
        """(n, words * d) float32 VLAD vectors (zero for an image without features)."""
        words, dim = self.centroids.shape
        out = np.zeros((len(feats), words, dim), np.float32)
        for i, f in enumerate(feats):
            if len(f):
                _, word = self.assign.search(f.desc, 1)
                np.add.at(out[i], word[:, 0], f.desc - self.centroids[word[:, 0]])
        out = _l2(out)
        out = np.sign(out) * np.sqrt(np.abs(out))
        return _l2(out.reshape(len(feats), -1)).astype(np.float32)

    def scores(self, q: Features) -> np.ndarray:
        return self.scores_many([q])[0]

    def scores_many(self, qs: list[Features]) -> np.ndarray:
        return ip_scores(self.index, self.encode(qs))


class HogGlobal:
    """A hand-crafted global descriptor floor: HOG (skimage) of the gray view resized to
    64 x 64, L2-normalised, cosine retrieval with faiss IndexFlatIP. Takes images."""

    SIDE = 64

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.build_seconds = 0.0

    @classmethod
    def build(cls, db_images: np.ndarray) -> HogGlobal:
        started = time.perf_counter()
        vectors = cls.describe(db_images)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        searcher = cls(index)
        searcher.build_seconds = time.perf_counter() - started
        return searcher

    @classmethod
    def describe(cls, images: np.ndarray) -> np.ndarray:
        """(n, d) L2-normalised HOG vectors of (n, H, W, 3) uint8 RGB images."""
        out = []
        for image in images:
            gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            small = cv2.resize(gray, (cls.SIDE, cls.SIDE), interpolation=cv2.INTER_AREA)
            out.append(hog(small, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
        return _l2(np.array(out, np.float32).reshape(len(images), -1))

    def scores(self, image: np.ndarray) -> np.ndarray:
        return self.scores_many(image[None])[0]

    def scores_many(self, query_images: np.ndarray) -> np.ndarray:
        return ip_scores(self.index, self.describe(query_images))
