"""The cann study's features and searchers: the released CANN schedule, CANN-RG against its
exact reference, and the baselines on easy synthetic sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch

from jobs.cann.features import ORB_SCALE, Features, extract
from jobs.cann.retrieval import (
    CannParams,
    ExactCann,
    HogGlobal,
    KnnVote,
    RandomGridCann,
    Vlad,
    grid_count,
    kernel,
    radii,
)

P = CannParams()


def _points(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    """n SIFT-like points: non-negative, L2 norm 512 (pairwise distances ~300-600)."""
    x = rng.random((n, dim)) ** 2
    return (512 * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _near(rng: np.random.Generator, x: np.ndarray, distance: float) -> np.ndarray:
    """Each row of x moved by exactly `distance` in a random direction."""
    u = rng.standard_normal(x.shape)
    return (x + distance * u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def _feats(desc: np.ndarray) -> Features:
    return Features(xy=np.zeros((len(desc), 2), np.float32), desc=np.asarray(desc, np.float32))


def test_radii_match_the_released_formula():
    big_c, b = 1 / P.eps, P.p1
    rg_r = -(P.p0 * (1 - big_c ** (b / (b - 1))) ** (1 / b)) / (big_c ** (b / (b - 1)) - 1)
    expected, r = [], min(P.min_distance, rg_r)
    while r < rg_r:
        expected.append(r)
        r *= 1 + (P.c - 1) * 0.25
    got = radii(c=P.c, eps=P.eps, p0=P.p0, p1=P.p1, min_distance=P.min_distance)
    assert len(got) == len(expected) == 36
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    scaled, weights = CannParams(radius_scale=3.0).schedule()
    np.testing.assert_allclose(scaled, 3 * got, rtol=1e-5)
    np.testing.assert_allclose(weights, kernel(got, p0=P.p0, p1=P.p1), rtol=1e-5)


def test_kernel_is_one_at_zero_and_zero_at_p0():
    assert kernel(0.0, p0=P.p0, p1=P.p1) == pytest.approx(1.0)
    assert kernel(P.p0, p0=P.p0, p1=P.p1) == pytest.approx(0.0)
    k = kernel(
        radii(c=P.c, eps=P.eps, p0=P.p0, p1=P.p1, min_distance=P.min_distance), p0=P.p0, p1=P.p1
    )
    assert np.all(np.diff(k) < 0) and k[-1] > 0


def test_grid_count_truncates_like_the_reference():
    assert grid_count(20, 128, P.c) == int(math.exp(math.log(20))) == 19
    assert grid_count(20, 2, P.c) == int(math.exp(2 / P.c))


def test_coloured_count_wins_where_one_nn_voting_ties():
    rng = np.random.default_rng(0)
    q = _points(rng, 4)
    # image 0 has a point near every query feature; image 1 an even nearer one for two of them
    db = [_feats(_near(rng, q, 1.0)), _feats(np.r_[_near(rng, q[:2], 0.2), _points(rng, 2)])]
    assert KnnVote.build(db, k=1).scores(_feats(q)).tolist() == [0.5, 0.5]
    r0_weight = CannParams().schedule()[1][0]
    np.testing.assert_allclose(ExactCann.build(db).scores(_feats(q)), [r0_weight, r0_weight / 2])
    s = RandomGridCann.build(db).scores(_feats(q))
    assert s[0] > s[1] > 0


def test_a_pair_counts_once_across_radii_and_grids():
    rng = np.random.default_rng(1)
    x = _points(rng, 3)
    # image 0 holds the query's first point three times, image 1 once; both are found by
    # every grid at every radius, yet each (query feature, image) pair adds kernel(r0) once
    db = [_feats(np.r_[x[:1], x[:1], x[:1]]), _feats(x[:2]), _feats(_points(rng, 3))]
    index = RandomGridCann.build(db)
    r0_weight = CannParams().schedule()[1][0]
    np.testing.assert_allclose(index.scores(_feats(x)), [r0_weight / 3, 2 * r0_weight / 3, 0])


def _clustered(rng: np.random.Generator, spread: float):
    """20 database images of 8 private tight clusters each (clusters ~300+ apart); query i
    holds 4, 3, 2 and 1 cluster(s) of images i, i+1, i+2, i+3: that is the exact ranking."""
    centres = _points(rng, 20 * 8).reshape(20, 8, 128)
    db = [_feats(_near(rng, c, spread)) for c in centres]
    queries = [
        _feats(
            _near(rng, np.concatenate([centres[(i + j) % 20, : 4 - j] for j in range(4)]), spread)
        )
        for i in range(10)
    ]
    return db, queries


def test_random_grids_rank_like_the_exact_reference():
    db, queries = _clustered(np.random.default_rng(2), spread=1.5)
    exact = ExactCann.build(db).scores_many(queries)
    approx = RandomGridCann.build(db).scores_many(queries)
    assert exact.shape == approx.shape == (10, 20)
    for i, (e, a) in enumerate(zip(exact, approx, strict=True)):
        top = [(i + j) % 20 for j in range(4)]
        assert np.argsort(-e)[:4].tolist() == np.argsort(-a)[:4].tolist() == top
        assert np.count_nonzero(a) == np.count_nonzero(e) == 4
    # 1.5 apart: the grids find the pairs within the first few radii, where the kernel
    # weighs them a little less than the exact first radius >= 1.5 (the smallest) does
    assert np.all(approx <= exact + 1e-12) and approx.sum() > 0.8 * exact.sum()


def test_radius_scale_reaches_farther_pairs():
    rng = np.random.default_rng(3)
    x = _points(rng, 50)
    db, q = [_feats(x)], _near(rng, x, 30.0)
    for scale, found in ((1.0, 0), (20.0, 50)):
        index = RandomGridCann.build(db, CannParams(radius_scale=scale))
        first = index.first_radius(torch.from_numpy(q))[:, 0]
        assert (first < len(index.grids.radii)).sum().item() == found


def test_baselines_retrieve_the_right_image_on_an_easy_set():
    rng = np.random.default_rng(4)
    db_desc = [_points(rng, 40) for _ in range(12)]
    db = [_feats(d) for d in db_desc]
    queries = [_feats(_near(rng, d[rng.choice(40, 25, replace=False)], 60.0)) for d in db_desc]
    for searcher in (KnnVote.build(db), Vlad.build(db, words=16)):
        s = searcher.scores_many(queries)
        assert s.shape == (12, 12)
        assert np.array_equal(s.argmax(1), np.arange(12))
        assert searcher.build_seconds > 0


def test_searchers_accept_queries_without_features():
    rng = np.random.default_rng(5)
    db = [_feats(_points(rng, 5)) for _ in range(3)]
    empty = _feats(np.zeros((0, 128), np.float32))
    for build in (RandomGridCann.build, ExactCann.build, KnnVote.build, Vlad.build):
        assert build(db).scores(empty).tolist() == [0.0, 0.0, 0.0]


def test_hog_global_finds_a_lightly_changed_image():
    photo = skimage.data.astronaut()
    images = np.stack([photo[y : y + 128, x : x + 128] for y in (0, 200) for x in (0, 200, 380)])
    noisy = np.clip(
        images.astype(int) + np.random.default_rng(6).integers(-8, 9, images.shape), 0, 255
    )
    s = HogGlobal.build(images).scores_many(noisy.astype(np.uint8))
    assert np.array_equal(s.argmax(1), np.arange(len(images)))


def test_extract_keeps_the_strongest_features_and_empty_views():
    views = np.stack([skimage.data.astronaut()[:128, :128], np.zeros((128, 128, 3), np.uint8)])
    sift = extract(views, "sift", 20)
    assert sift[0].desc.shape == (20, 128) and sift[0].xy.shape == (20, 2)
    assert sift[1].desc.shape == (0, 128) and sift[1].xy.shape == (0, 2)
    np.testing.assert_allclose(np.linalg.norm(sift[0].desc, axis=1), 512, rtol=0.01)
    orb = extract(views, "orb", 20)
    assert 10 < len(orb[0]) <= 20 and orb[0].desc.shape[1] == 256 and orb[1].desc.shape == (0, 256)
    assert set(np.unique(orb[0].desc)) == {-ORB_SCALE, ORB_SCALE}
    with pytest.raises(ValueError, match="unknown feature method"):
        extract(views, "surf", 10)
