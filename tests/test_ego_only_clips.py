"""Study `ego_only`, its clips: the generator (labels are the drawn segments, deterministic,
ego moves the camera and exo does not, each action changes the frames its own way, the
background pools are disjoint, bad arguments named) and the real-data folder (frames, mp4
and gif clips, labels, windows, unlabelled clips, and the faults each named)."""

from __future__ import annotations

import shutil

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from jobs.ego_only import clips as clips_module
from jobs.ego_only.clips import (
    ACTIONS,
    NOISE,
    SKIN,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    backgrounds,
    generate,
)
from jobs.ego_only.folder import check_folder, load_folder
from skeptic.api import DataError

IDLE, WALK, TURN_LEFT, TURN_RIGHT, REACH, LOOK_DOWN = range(len(ACTIONS))


def runs(y: np.ndarray) -> list[tuple[int, int]]:
    """(label, length) of each run of equal labels in one clip."""
    starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])
    ends = np.r_[starts[1:], len(y)]
    return [(int(y[s]), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def steady(y: np.ndarray, action: int) -> np.ndarray:
    """(n, T-1) mask of frames t >= 1 of `action` whose predecessor is in the same segment:
    frame t's change from frame t-1 is the action's alone."""
    return (y[:, 1:] == action) & (y[:, :-1] == action)


# ---- the generator -------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["ego", "exo"])
@pytest.mark.parametrize(("min_len", "max_len"), [(3, 8), (4, 4)])
def test_labels_are_the_drawn_segments(view, min_len, max_len):
    clips = generate(view, 60, frames=20, size=16, min_len=min_len, max_len=max_len, seed=1)
    assert clips.x.shape == (60, 20, 16, 16, 3) and clips.x.dtype == np.uint8
    assert clips.y.shape == (60, 20) and clips.y.dtype == np.int64
    assert clips.classes == ACTIONS and len(clips) == 60
    assert set(np.unique(clips.y)) == set(range(len(ACTIONS)))
    for y in clips.y:
        *whole, last = runs(y)
        # with min_len == max_len, two equal segments in a row would show as a double run
        assert all(min_len <= length <= max_len for _, length in whole)
        assert 1 <= last[1] <= max_len


def test_the_same_arguments_give_the_same_clips_and_any_other_differs():
    a = generate("ego", 8, seed=3)
    assert np.array_equal(a.x, generate("ego", 8, seed=3).x)
    assert np.array_equal(a.y, generate("ego", 8, seed=3).y)
    for other in (
        generate("ego", 8, seed=4),
        generate("exo", 8, seed=3),
        generate("ego", 8, seed=3, pool="test"),
        generate("ego", 8, seed=3, max_len=7),
    ):
        assert not np.array_equal(a.y, other.y)
        assert not np.array_equal(a.x, other.x)


def test_subset_keeps_the_clips_and_their_labels():
    clips = generate("exo", 6, seed=0)
    part = clips.subset(np.array([4, 1]))
    assert np.array_equal(part.x, clips.x[[4, 1]]) and np.array_equal(part.y, clips.y[[4, 1]])
    assert part.classes == clips.classes and len(part) == 2


def test_the_ego_camera_moves_far_more_than_the_exo_camera():
    def camera_motion(view: str) -> float:
        """The mean global shift between consecutive frames (phase correlation), in pixels:
        the camera's motion; a small actor on a still background barely moves it."""
        grey = generate(view, 60, seed=2).x.astype(np.float32).mean(-1)
        moves = [cv2.phaseCorrelate(clip[t], clip[t + 1])[0] for clip in grey
                 for t in range(len(clip) - 1)]  # fmt: skip
        return float(np.linalg.norm(moves, axis=1).mean())

    ego, exo = camera_motion("ego"), camera_motion("exo")
    assert ego >= 4 * exo and ego > 0.5, (ego, exo)


def shifts(x: np.ndarray, y: np.ndarray, action: int) -> np.ndarray:
    """The image content's (dx, dy) shift between consecutive frames of `action` (phase
    correlation on grey frames): (frames, 2)."""
    grey = x.astype(np.float32).mean(-1)
    mask = steady(y, action)
    return np.array(
        [cv2.phaseCorrelate(grey[i, t], grey[i, t + 1])[0] for i, t in zip(*np.nonzero(mask))]
    )


def test_ego_turns_and_look_down_pan_the_camera_the_stated_way():
    clips = generate("ego", 150, seed=5)
    left, right, down = (
        shifts(clips.x, clips.y, a).mean(0) for a in (TURN_LEFT, TURN_RIGHT, LOOK_DOWN)
    )
    pan = clips_module.PAN / 2  # phase correlation on blurred frames reads about 70% of it
    assert left[0] > pan and abs(left[1]) < 0.5  # the camera pans left: the scene slides right
    assert right[0] < -pan and abs(right[1]) < 0.5
    assert down[1] < -pan and abs(down[0]) < 0.5  # the camera tilts down: the scene slides up
    for still in (IDLE, REACH):
        assert np.abs(shifts(clips.x, clips.y, still).mean(0)).max() < 0.5


def zoom_wins(a: np.ndarray, b: np.ndarray) -> int:
    """Which of zoom out / none / zoom in (by the generator's step) of grey frame `a`, then
    the best shift, matches `b` best: 0, 1 or 2."""
    size = a.shape[0]
    errors = []
    step = 1 + clips_module.ZOOM
    for scale in (1 / step, 1.0, step):
        m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), 0, scale)
        zoomed = cv2.warpAffine(a, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        (dx, dy), _ = cv2.phaseCorrelate(zoomed, b)
        moved = cv2.warpAffine(
            zoomed,
            np.float32([[1, 0, dx], [0, 1, dy]]),
            (size, size),
            borderMode=cv2.BORDER_REFLECT,
        )
        inner = slice(size // 5, size - size // 5)
        errors.append(np.abs(moved[inner, inner] - b[inner, inner]).mean())
    return int(np.argmin(errors))


def test_ego_walk_zooms_in():
    clips = generate("ego", 100, seed=6)
    grey = clips.x.astype(np.float32).mean(-1)
    picks = {}
    for action in (WALK, IDLE):
        i, t = np.nonzero(steady(clips.y, action))
        picks[action] = np.bincount(
            [zoom_wins(grey[a, b], grey[a, b + 1]) for a, b in zip(i, t)], minlength=3
        ) / len(i)
    assert picks[WALK][2] > 0.7, picks  # measured: about 0.83
    assert picks[IDLE][1] > 0.8, picks


def skin_fraction(frame: np.ndarray) -> float:
    """The share of the central lower box (where a reaching hand ends) in a hand's colours."""
    tones = np.array([*SKIN, *[[int(0.8 * c) for c in s] for s in SKIN]], dtype=float)
    box = frame[12:26, 8:24].astype(float)
    return float((np.linalg.norm(box[:, :, None] - tones, axis=-1).min(-1) < 20).mean())


def test_ego_reach_raises_a_hand_to_the_centre_and_nothing_else_does():
    clips = generate("ego", 200, seed=2, min_len=6, max_len=6)  # full segments at 0 and 6
    gain = {a: [] for a in range(len(ACTIONS))}
    for x, y in zip(clips.x, clips.y, strict=True):
        for start in (0, 6):
            gain[int(y[start])].append(skin_fraction(x[start + 5]) - skin_fraction(x[start]))
    assert np.mean(gain[REACH]) > 0.2, gain[REACH]  # measured: about 0.35
    for action in set(range(len(ACTIONS))) - {REACH}:
        assert abs(np.mean(gain[action])) < 0.05, (ACTIONS[action], np.mean(gain[action]))


def test_exo_frames_change_only_where_the_actor_acts():
    clips = generate("exo", 150, seed=7)
    diff = np.abs(np.diff(clips.x.astype(np.int16), axis=1))
    changed = (diff.max(-1) > 30).sum(axis=(2, 3))  # pixels that changed beyond noise
    idle = steady(clips.y, IDLE)
    assert diff[idle].max() <= 2 * NOISE  # a still actor, a still camera: sensor noise only
    for action, least in (
        (WALK, 1.0),
        (TURN_LEFT, 1.0),
        (TURN_RIGHT, 1.0),
        (REACH, 0.97),
        (LOOK_DOWN, 0.85),
    ):
        assert (changed[steady(clips.y, action)] >= 1).mean() >= least, ACTIONS[action]
    # walking moves the whole actor; bowing the head or reaching, a few pixels
    assert changed[steady(clips.y, WALK)].mean() > 3 * changed[steady(clips.y, LOOK_DOWN)].mean()


def test_train_and_test_backgrounds_are_disjoint_rgb_photos():
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    train, test = backgrounds("train"), backgrounds("test")
    assert len(train) == len(TRAIN_PHOTOS) and len(test) == len(TEST_PHOTOS)
    for photo in train + test:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert not photo.flags.writeable  # shared through the cache
    assert not {p.tobytes() for p in train} & {p.tobytes() for p in test}
    assert backgrounds("train") is train


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"view": "top"}, "view"),
        ({"pool": "val"}, "pool"),
        ({"n": -1}, "n"),
        ({"frames": 3}, "frames"),
        ({"size": 12}, "size"),
        ({"size": 36}, "size"),
        ({"seed": -1}, "seed"),
        ({"min_len": 0}, "min_len"),
        ({"min_len": 5, "max_len": 4}, "max_len"),
    ],
)
def test_bad_arguments_are_named(kwargs, named):
    args = {"view": "ego", "n": 2} | kwargs
    with pytest.raises(ValueError, match=rf"^{named}\b"):
        generate(args.pop("view"), args.pop("n"), **args)
    with pytest.raises(ValueError, match="pool"):
        backgrounds("val")


# ---- the real-data folder ------------------------------------------------------------------------

CLASSES = ("none", "pour", "stir")


def colours(count: int, seed: int) -> np.ndarray:
    """`count` solid RGB frames of distinct colours, 24 x 32 (not square: frames are resized)."""
    rgb = np.random.default_rng(seed).integers(30, 226, size=(count, 3))
    return np.broadcast_to(rgb[:, None, None, :], (count, 24, 32, 3)).astype(np.uint8)


def write_mp4(path, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(
                stream.encode(
                    av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                )
            )
        out.mux(stream.encode())


def write_labels(path, labels: list[int]) -> None:
    path.write_text("".join(CLASSES[i] + "\n" for i in labels))


def make_folder(root):
    """ego: `a` 10 PNG frames (labelled), `b` an mp4 of 9 frames (labelled), `c` a gif of 8
    frames (unlabelled); exo: `d` 5 PNG frames and `e` a gif of 6, both labelled. Returns
    each clip's frames and labels."""
    (root / "ego").mkdir(parents=True)
    (root / "exo").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    clips = {
        "ego/a": (colours(10, 0), [0, 0, 1, 1, 1, 2, 2, 0, 0, 1]),
        "ego/b": (colours(9, 1), [2, 2, 2, 1, 1, 1, 0, 0, 0]),
        "ego/c": (colours(8, 2), None),
        "exo/d": (colours(5, 3), [1, 1, 2, 2, 0]),
        "exo/e": (colours(6, 4), [0, 1, 2, 0, 1, 2]),
    }
    for name, (frames, labels) in clips.items():
        if name in ("ego/a", "exo/d"):  # frame_1 ... frame_10: sorted as numbers, not text
            (root / name).mkdir()
            for i, frame in enumerate(frames, 1):
                cv2.imwrite(str(root / name / f"frame_{i}.png"), frame[..., ::-1])
        elif name == "ego/b":
            write_mp4(root / f"{name}.mp4", frames)
        else:
            iio.imwrite(root / f"{name}.gif", frames, duration=100, loop=0)
        if labels is not None:
            write_labels(root / f"{name}.txt", labels)
    return clips


def test_a_folder_loads_as_windows_of_resized_frames_with_their_labels(tmp_path):
    clips = make_folder(tmp_path)
    assert (
        check_folder(tmp_path) == "ego: 3 clips (2 labelled), exo: 2 clips (2 labelled), 3 classes"
    )
    data = load_folder(tmp_path, frames=4, size=16)
    ego, exo = data["ego"], data["exo"]
    assert ego.classes == CLASSES and exo.classes == CLASSES
    # a: 10 frames -> 2 windows, b: 9 -> 2, c: 8 -> 2; d: 5 -> 1, e: 6 -> 1 (tails dropped)
    assert ego.x.shape == (6, 4, 16, 16, 3) and ego.y.shape == (6, 4)
    assert exo.x.shape == (2, 4, 16, 16, 3)
    windows = {
        "ego": ("ego/a", "ego/a", "ego/b", "ego/b", "ego/c", "ego/c"),
        "exo": ("exo/d", "exo/e"),
    }
    for view, names in windows.items():
        seen = {}
        for w, name in enumerate(names):
            frames, labels = clips[name]
            start = 4 * seen.setdefault(name, 0)
            seen[name] += 1
            got = data[view].x[w].reshape(4, -1, 3).mean(1)
            lossy = 6 if name == "ego/b" else 1.5  # the mp4 is compressed; PNG and GIF are not
            assert np.abs(got - frames[start : start + 4, 0, 0]).max() <= lossy, name
            want = labels[start : start + 4] if labels is not None else [-1] * 4
            assert data[view].y[w].tolist() == want, name


def test_a_clip_shorter_than_a_window_is_dropped_and_a_view_of_none_refused(tmp_path):
    make_folder(tmp_path)
    assert len(load_folder(tmp_path, frames=6, size=16)["exo"]) == 1  # d (5 frames) dropped
    with pytest.raises(DataError, match="exo: no clip has 7 frames"):
        load_folder(tmp_path, frames=7, size=16)


BROKEN = {
    "a label that is no class": (
        lambda r: (r / "ego/a.txt").write_text("none\nnone\njump\n" + "none\n" * 7),
        r"ego/a\.txt, line 3: 'jump'",
    ),
    "one label too many": (
        lambda r: write_labels(r / "ego/b.txt", [0] * 10),
        r"ego/b\.txt: 10 labels for a clip of 9 frames",
    ),
    "one label too few": (
        lambda r: write_labels(r / "exo/d.txt", [0] * 4),
        r"exo/d\.txt: 4 labels",
    ),
    "an unreadable frame": (
        lambda r: (r / "ego/a/frame_3.png").write_bytes(b"not a png"),
        r"ego/a/frame_3\.png: not a readable image",
    ),
    "an unreadable mp4": (
        lambda r: (r / "ego/b.mp4").write_bytes(b"\x00" * 64),
        r"ego/b\.mp4: not a readable video",
    ),
    "an unreadable gif": (
        lambda r: (r / "exo/e.gif").write_bytes(b"GIF89a broken"),
        r"exo/e\.gif: not a readable GIF",
    ),
    "no exo folder": (lambda r: shutil.rmtree(r / "exo"), r"exo: missing"),
    "no classes.txt": (lambda r: (r / "classes.txt").unlink(), r"classes\.txt: cannot read"),
    "a repeated class": (
        lambda r: (r / "classes.txt").write_text("none\npour\nnone\n"),
        r"classes\.txt, line 3: a repeated class",
    ),
    "labels inside a frame folder": (
        lambda r: (r / "ego/a.txt").rename(r / "ego/a/labels.txt"),
        r"ego/a/labels\.txt: a frame folder holds frames only",
    ),
    "labels of no clip": (
        lambda r: write_labels(r / "exo/f.txt", [0]),
        r"exo/f\.txt: labels for no clip",
    ),
    "a stray file": (
        lambda r: (r / "ego/notes.md").write_text("x"),
        r"ego/notes\.md: neither a frame folder",
    ),
    "two clips of one name": (
        lambda r: iio.imwrite(r / "exo/d.gif", colours(4, 9), duration=100),
        r"exo/d\.gif: a second clip named 'd'",
    ),
}


@pytest.mark.parametrize("fault", list(BROKEN))
def test_a_broken_folder_is_one_data_error_naming_the_file(tmp_path, fault):
    make_folder(tmp_path)
    breaks, message = BROKEN[fault]
    breaks(tmp_path)
    for read in (check_folder, lambda root: load_folder(root, frames=4, size=16)):
        with pytest.raises(DataError, match=message) as err:
            read(tmp_path)
        assert err.value.field == "path"
