"""Study cann, data and localisation: rendered places, the folder format, homography recovery."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from jobs.cann.localise import corner_error, localise, match_homography
from jobs.cann.places import check_folder, load_folder, make_places, photos, write_folder
from skeptic.api import DataError

SIZE = 96


def _places(places=6, db_views=2, query_views=2, aliasing=0.0, difficulty="easy", **seeds):
    seeds = {"tile_seed": 0, "view_seed": 0, **seeds}
    return make_places(
        places=places, db_views=db_views, query_views=query_views, size=SIZE,
        aliasing=aliasing, difficulty=difficulty, **seeds,
    )  # fmt: skip


def _sift(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keypoints, desc = cv2.SIFT_create().detectAndCompute(
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None
    )
    return np.array([k.pt for k in keypoints], np.float32), desc


def test_photos_load_offline_as_rgb():
    for name, image in photos():
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name


def test_a_known_homography_is_recovered():
    photo = dict(photos())["immunohistochemistry"][:256, :256]
    true = np.array([[0.9, -0.2, 30.0], [0.15, 0.95, 10.0], [2e-4, -1e-4, 1.0]])
    # view pixel -> photo pixel = true: render the view by sampling the photo through it
    view = cv2.warpPerspective(
        photo, true, (160, 160), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    h, inliers = match_homography(*_sift(view), *_sift(photo))
    assert inliers >= 20
    assert corner_error(h, true, 160) < 1.0
    assert corner_error(None, true, 160) == float("inf")
    assert corner_error(np.zeros((3, 3)), true, 160) == float("inf")


def test_localise_picks_the_view_that_matches_and_maps_into_the_place():
    places = _places()
    db = [_sift(image) for image in places.database.images]
    i = 0
    q_xy, q_desc = _sift(places.val.images[i])
    pose, j, inliers = localise(
        q_xy, q_desc, list(range(len(db))), [d[0] for d in db], [d[1] for d in db],
        places.database.pose,
    )  # fmt: skip
    assert places.database.place[j] == places.val.place[i] and inliers >= 8
    assert corner_error(pose, places.val.pose[i], SIZE) < 0.03 * SIZE


def test_views_are_deterministic_per_seed_and_shaped():
    a, b = _places(), _places()
    c = _places(view_seed=1)
    for split in ("database", "val", "test"):
        va, vb = getattr(a, split), getattr(b, split)
        assert np.array_equal(va.images, vb.images) and np.array_equal(va.pose, vb.pose)
        assert va.images.shape == (12, SIZE, SIZE, 3) and va.images.dtype == np.uint8
        assert va.place.dtype == np.int64 and va.pose.shape == (12, 3, 3)
    assert a.names == c.names  # the tiles follow tile_seed alone
    assert not np.array_equal(a.val.images, c.val.images)
    assert not np.array_equal(a.val.images, a.test.images)  # val and test are separate draws
    assert _places(tile_seed=1).names != a.names


def test_aliasing_count_and_donors():
    places = _places(places=10, aliasing=0.3)
    assert len(places.aliases) == 3
    aliased = {a for a, _ in places.aliases}
    assert all(d not in aliased and d != a for a, d in places.aliases)
    assert _places(places=4, aliasing=0.99).aliases.__len__() == 3  # one place stays original


def test_poses_map_view_centres_into_the_place():
    for difficulty in ("easy", "hard"):
        views = _places(difficulty=difficulty).val
        centre = np.array([SIZE / 2, SIZE / 2, 1.0])
        mapped = views.pose @ centre
        xy = mapped[:, :2] / mapped[:, 2:]
        assert np.all((xy > 0) & (xy < SIZE))
    db = _places().database
    corners = np.array([[0, 0, 1], [SIZE, 0, 1], [SIZE, SIZE, 1], [0, SIZE, 1]], float).T
    mapped = db.pose @ corners
    xy = mapped[:, :2] / mapped[:, 2:]
    assert np.all((xy > -0.3 * SIZE) & (xy < 1.3 * SIZE))  # the mild views stay near the tile


def test_folder_round_trip(tmp_path):
    places = _places(places=3, db_views=1, query_views=1)
    write_folder(places, tmp_path)
    check_folder(tmp_path)
    loaded = load_folder(tmp_path, SIZE)
    assert loaded.names == places.names and loaded.size == SIZE
    for split in ("database", "val", "test"):
        a, b = getattr(places, split), getattr(loaded, split)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.place, b.place)
        assert np.allclose(a.pose, b.pose)
    half = load_folder(tmp_path, SIZE // 2)  # images and poses both rescaled
    expected = np.diag([0.5, 0.5, 1]) @ places.val.pose[0] @ np.diag([2.0, 2, 1])
    assert half.val.images.shape[1:] == (SIZE // 2, SIZE // 2, 3)
    assert np.allclose(half.val.pose[0] / half.val.pose[0][2, 2], expected / expected[2, 2])


def _rewrite(path, edit):
    with open(path / "poses.csv") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path / "poses.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda rows: rows[2].__setitem__(5, "abc"), "row 3: column h13"),
        (lambda rows: [r.pop(4) for r in rows], "missing column(s) h12"),
        (lambda rows: rows[1].__setitem__(1, "nowhere.png"), "row 2: column image"),
        (lambda rows: rows[1].__setitem__(0, "train"), "row 2: column split"),
        (lambda rows: [rows.remove(r) for r in rows[1:] if r[0] == "test"], "split=test"),
    ],
)
def test_a_broken_folder_names_the_fault(tmp_path, edit, needle):
    write_folder(_places(places=2, db_views=1, query_views=1), tmp_path)
    _rewrite(tmp_path, edit)
    with pytest.raises(DataError) as e:
        load_folder(tmp_path, SIZE)
    assert e.value.field == "path" and needle in str(e.value)
