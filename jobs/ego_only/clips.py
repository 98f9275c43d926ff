"""Short clips of six actions, filmed egocentrically or from outside, over real photographs.

No video can be downloaded here, so the clips are generated: each is a run of action segments
(lengths drawn in [min_len, max_len], the last one cut at the clip's end, no two consecutive
segments the same action, so every change of label is a real change of action) and every
frame carries its segment's action. The backgrounds are photographs shipped inside the
scikit-image wheel, split into a train and a disjoint test pool (held-out ego test clips use
the test pool, so a model cannot pass by remembering backgrounds).

- `ego`, a head-mounted camera: a virtual camera moves over a canvas (a crop of a photo with
  a few coloured objects on it). The action drives the camera: idle = jitter only; walk =
  steady zoom-in with a vertical bob and a sideways sway; turn_left / turn_right = pan left /
  right; look_down = tilt down; reach = the camera nearly still while a skin-coloured hand
  rises from the bottom edge toward the centre. Every frame has egocentric nuisance on top:
  a roll oscillation, position jitter, per-segment speeds (+-30%), and, in 30% of the
  other segments, a hand resting at the bottom edge (a visible hand alone is not the cue).
- `exo`, a static third-person camera: a fixed crop of a photo with one or two objects and a
  small actor (body, head, legs, a heading marker). idle = still; walk = moves along its
  heading with its legs swinging (bouncing off the borders); turn_left / turn_right = the
  heading turns counter-clockwise / clockwise; reach = an arm extends toward the nearest
  object; look_down = the head bows. Only sensor noise changes the rest of the frame.

The two views differ where the paper's question lies: in ego clips the whole frame moves
with the action, in exo clips a few pixels do.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import skimage.data

ACTIONS = ("idle", "walk", "turn_left", "turn_right", "reach", "look_down")  # 0 = background
VIEWS = ("ego", "exo")
POOLS = ("train", "test")

# The photos of each pool: all load from files inside the scikit-image 0.26 wheel (nothing
# is fetched). The test pool mixes two colour photos and two grey textures, like the train
# pool. Left out: horse (a flat binary silhouette: a camera moving over it shows nothing),
# logo and the chessboards (synthetic), microaneurysms (102 px: too small to crop).
TEST_PHOTOS = ("coffee", "rocket", "brick", "moon")
TRAIN_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "page",
    "text",
    "grass",
    "gravel",
    "cell",
    "retina",
    "motorcycle",
)
MAX_SIDE = 512  # photos are shrunk to this shorter side once: crops stay cheap to resize

IDLE, WALK, TURN_LEFT, TURN_RIGHT, REACH, LOOK_DOWN = range(len(ACTIONS))
SPEED_SPREAD = 0.3  # each segment's speed is drawn in 1 +- this
NOISE = 2  # sensor noise: uniform integers in [-NOISE, NOISE] on every pixel
SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 205, 160), (170, 110, 75))


@dataclass
class Clips:
    """A batch of clips with a label per frame."""

    x: np.ndarray  # (n, T, H, W, 3) uint8 frames
    y: np.ndarray  # (n, T) int64 per-frame action index; -1 = unlabelled frame
    classes: tuple[str, ...] = ACTIONS

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Clips:
        return Clips(self.x[idx], self.y[idx], self.classes)


@functools.cache
def backgrounds(pool: str) -> list[np.ndarray]:
    """The photos of one pool, RGB uint8 (grey ones stacked to three channels), read-only:
    the list is cached and shared by every caller."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: one of {', '.join(POOLS)}")
    photos = []
    for name in TEST_PHOTOS if pool == "test" else TRAIN_PHOTOS:
        img = _photo(name)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        scale = MAX_SIDE / min(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
        img.setflags(write=False)
        photos.append(img)
    return photos


def _photo(name: str) -> np.ndarray:
    if name == "motorcycle":  # the left view of the stereo pair
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


# Measured: 2,000 clips of 16 frames at 32x32 take 3.0 s (ego) and 4.4 s (exo) on one core
# (taskset, the machine otherwise busy), plus 0.5 s once to load the photos.
def generate(view: str, n: int, *, frames: int = 16, size: int = 32, seed: int = 0,
             pool: str = "train", min_len: int = 3, max_len: int = 8) -> Clips:  # fmt: skip
    """`n` clips of `frames` frames, size x size, of one view, over the photos of `pool`.
    Deterministic in all the arguments: the seed is derived from every one of them, so ego
    and exo clips of one seed differ, and so do two calls that differ only in `n` (give
    distinct splits distinct seeds anyway: they share the backgrounds)."""
    _check(view, n, frames, size, seed, pool, min_len, max_len)
    key = [seed, VIEWS.index(view), POOLS.index(pool), n, frames, size, min_len, max_len]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    photos = backgrounds(pool)
    render = _ego_clip if view == "ego" else _exo_clip
    x = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    y = np.empty((n, frames), dtype=np.int64)
    for i in range(n):
        segments = _segments(frames, min_len, max_len, rng)
        y[i] = np.concatenate([np.full(length, a) for a, length in segments])[:frames]
        photo = photos[rng.integers(len(photos))]
        clip = render(photo, segments, frames, size, rng).astype(np.int16)
        clip += rng.integers(-NOISE, NOISE + 1, size=clip.shape, dtype=np.int16)
        x[i] = np.clip(clip, 0, 255)
    return Clips(x, y)


def _check(view: str, n: int, frames: int, size: int, seed: int, pool: str,
           min_len: int, max_len: int) -> None:  # fmt: skip
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: one of {', '.join(VIEWS)}")
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: one of {', '.join(POOLS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if frames < 4:
        raise ValueError(f"frames must be >= 4, got {frames}")
    if size < 16 or size % 8:
        raise ValueError(f"size must be >= 16 and a multiple of 8, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len}")
    if max_len < min_len:
        raise ValueError(f"max_len must be >= min_len ({min_len}), got {max_len}")


def _segments(
    frames: int, min_len: int, max_len: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(action, drawn length) of each segment until the clip is full; the last one may run
    past the end (the clip cuts it, and its motion is cut with it, not squeezed)."""
    out: list[tuple[int, int]] = []
    total = 0
    action = int(rng.integers(len(ACTIONS)))
    while total < frames:
        length = int(rng.integers(min_len, max_len + 1))
        out.append((action, length))
        total += length
        # any action but the current one, uniformly: every boundary is a real change
        action = (action + int(rng.integers(1, len(ACTIONS)))) % len(ACTIONS)
    return out


def _steps(
    segments: list[tuple[int, int]], frames: int, rng: np.random.Generator
) -> Iterator[tuple[int, float, float, bool]]:
    """Each frame's (action, progress through its segment in (0, 1], segment speed, first
    frame of its segment), with the speed drawn per segment."""
    t = 0
    for action, length in segments:
        speed = 1 + SPEED_SPREAD * rng.uniform(-1, 1)
        for k in range(min(length, frames - t)):
            yield action, (k + 1) / length, speed, k == 0
        t += length


def _crop(
    photo: np.ndarray, side: int, fraction: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A random square crop of `photo`, `fraction` of its shorter side, resized to side x
    side. A crop with little texture is drawn again (retina's and hubble's black corners,
    over which no camera motion would show)."""
    h, w = photo.shape[:2]
    for _ in range(8):
        c = int(min(h, w) * rng.uniform(*fraction))
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        crop = photo[top : top + c, left : left + c]
        crop = cv2.resize(
            crop, (side, side), interpolation=cv2.INTER_AREA if c > side else cv2.INTER_LINEAR
        )
        if crop.std() > 20:
            break
    return crop


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated, bright colour: objects stand out from most photos."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.7, 1), rng.uniform(0.75, 1))
    return int(255 * r), int(255 * g), int(255 * b)


def _objects(
    img: np.ndarray, count: int, radius: float, margin: float, rng: np.random.Generator
) -> np.ndarray:
    """Paste `count` coloured discs and squares on `img` (in place); their centres (count, 2)."""
    side = img.shape[0]
    centres = rng.uniform(margin, side - margin, size=(count, 2))
    for cx, cy in centres:
        r = radius * rng.uniform(0.8, 1.2)
        colour = _colour(rng)
        if rng.random() < 0.5:
            cv2.circle(img, _pt(cx, cy), int(r * 16), colour, -1, cv2.LINE_AA, 4)
        else:
            cv2.rectangle(img, _pt(cx - r, cy - r), _pt(cx + r, cy + r), colour, -1, cv2.LINE_AA, 4)
    return centres


def _pt(x: float, y: float) -> tuple[int, int]:
    """A point for cv2's drawing functions at 1/16 pixel (their `shift=4`)."""
    return round(x * 16), round(y * 16)


# ---- ego: a head-mounted camera over a canvas ----------------------------------------------------

# In frame pixels (x size/32) per frame, at speed 1.
PAN = 1.6  # turn_left / turn_right / look_down
ZOOM = 0.04  # walk: the zoom grows by this fraction a frame
MAX_ZOOM = 4.0  # walk stops zooming here (a long clip with many walks); bob and sway go on
BOB = 1.2  # walk: vertical amplitude, a step every BOB_PERIOD frames
BOB_PERIOD = 4
BLUR = 1.5  # canvas pixels (half a frame pixel at zoom 1): a head camera's defocus and motion blur
JITTER = 0.15  # every frame: position noise
RESTING_HAND = 0.3  # the chance a non-reach segment shows a hand resting at the bottom edge


def _ego_clip(photo: np.ndarray, segments: list[tuple[int, int]], frames: int, size: int,
              rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """One ego clip: the camera's state moves with each frame's action, then the frame is the
    canvas seen through it, with a hand drawn over it where there is one."""
    canvas = _canvas(photo, size, rng)
    period = canvas.shape[0]
    u = size / 32
    scale0 = 0.5  # canvas -> frame pixels at zoom 1: the frame sees half the photo crop
    centre = rng.uniform(0, period, size=2)
    zoom = rng.uniform(1.0, 1.3)
    roll_amp, roll_period = rng.uniform(0.5, 1.5), rng.uniform(8, 16)  # degrees, frames
    roll_phase, bob_phase = rng.uniform(0, 2 * np.pi, size=2)
    skin = SKIN[rng.integers(len(SKIN))]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    hand = None
    for t, (action, progress, speed, first) in enumerate(_steps(segments, frames, rng)):
        scale = scale0 * zoom
        if first:  # a segment's hand: rising (reach), resting (sometimes) or none
            side = rng.uniform(0.1, 0.25) * rng.choice([-1, 1])
            hand = side if action == REACH or rng.random() < RESTING_HAND else None
        offset = rng.normal(0, JITTER * u, size=2)
        if action == WALK:
            zoom = min(zoom * (1 + ZOOM * speed), MAX_ZOOM)
            step = 2 * np.pi * t / BOB_PERIOD + bob_phase
            offset += (BOB * u * 0.5 * math.sin(step / 2), BOB * u * math.sin(step))
        elif action in (TURN_LEFT, TURN_RIGHT, LOOK_DOWN):
            move = PAN * u * speed / scale  # canvas pixels
            centre += {TURN_LEFT: (-move, 0), TURN_RIGHT: (move, 0), LOOK_DOWN: (0, move)}[action]
        roll = math.radians(roll_amp * math.sin(2 * np.pi * t / roll_period + roll_phase))
        out[t] = _look(canvas, centre + offset / scale, scale, roll, size)
        if hand is not None:
            rise = progress if action == REACH else 0.0
            _hand(out[t], hand, rise, skin, size, rng)
        centre %= period
    return out


def _canvas(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The world around the camera: a photo crop (4x the frame) with 2-3 objects on it, and
    its mirror images beside and below it, a seamless torus: the camera pans forever
    (warpAffine wraps around) and never meets an edge or a seam."""
    side = 4 * size
    crop = _crop(photo, side, (0.35, 0.7), rng)
    _objects(crop, int(rng.integers(2, 4)), side / 16, side / 10, rng)
    crop = cv2.GaussianBlur(crop, (0, 0), BLUR)
    row = np.concatenate([crop, crop[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([row, row[::-1]], axis=0))


def _look(
    canvas: np.ndarray, centre: np.ndarray, scale: float, roll: float, size: int
) -> np.ndarray:
    """The frame a camera at `centre` (canvas pixels) sees, `scale` frame pixels per canvas
    pixel, rolled by `roll` radians."""
    cos, sin = scale * math.cos(roll), scale * math.sin(roll)
    rot = np.array([[cos, -sin], [sin, cos]])
    shift = size / 2 - rot @ centre
    m = np.hstack([rot, shift[:, None]])
    return cv2.warpAffine(
        canvas, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
    )


def _hand(frame: np.ndarray, side: float, rise: float, skin: tuple[int, int, int], size: int,
          rng: np.random.Generator) -> None:  # fmt: skip
    """Draw a hand and forearm coming up from the bottom edge: `side` is its offset from the
    centre (fraction of the frame), `rise` 0 = resting at the edge, 1 = up at the centre
    (reaching moves it toward the centre too)."""
    u = size / 32
    x = size * (0.5 + side * (1 - 0.6 * rise)) + rng.normal(0, 0.3 * u)
    y = size * (0.93 - 0.45 * rise) + rng.normal(0, 0.3 * u)
    base = (size * (0.5 + 1.6 * side), size * 1.3)
    arm = tuple(int(0.8 * c) for c in skin)  # the forearm a shade darker (a sleeve's shadow)
    cv2.line(frame, _pt(*base), _pt(x, y), arm, max(1, round(6 * u)), cv2.LINE_AA, 4)
    cv2.ellipse(frame, _pt(x, y), _pt(3.8 * u, 3.2 * u), 0, 0, 360, skin, -1, cv2.LINE_AA, 4)
    finger = max(1, round(1.3 * u))
    for dx in (-2.2, -0.7, 0.8, 2.3):
        cv2.line(
            frame,
            _pt(x + dx * u, y),
            _pt(x + dx * 1.1 * u, y - 5 * u),
            skin,
            finger,
            cv2.LINE_AA,
            4,
        )


# ---- exo: a static camera watching a small actor -------------------------------------------------

# In frame pixels (x size/32) per frame, at speed 1.
STRIDE = 2.0  # walk
TURN = 0.45  # turn_left / turn_right: radians a frame
SWING = 1.6  # walk: how far each foot swings
BOW = (2.0, 3.0)  # look_down: the head's full move (forward, down)
ARM = 10.0  # reach: the longest arm


def _exo_clip(photo: np.ndarray, segments: list[tuple[int, int]], frames: int, size: int,
              rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """One exo clip: the actor's state moves with each frame's action over a fixed scene."""
    u = size / 32
    scene = _crop(photo, size, (0.4, 0.9), rng)
    targets = _objects(scene, int(rng.integers(1, 3)), 1.8 * u, 4 * u, rng)
    # the actor's half extent (head to feet): it stays in view, all but its heading pointer's
    # tip, which may poke out at a border for the frame it bounces
    margin = np.array([6 * u, 7.5 * u])
    pos = rng.uniform(margin, size - margin)
    heading = rng.uniform(0, 2 * np.pi)
    look = {"shirt": _colour(rng), "skin": SKIN[rng.integers(len(SKIN))]}
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t, (action, progress, speed, _) in enumerate(_steps(segments, frames, rng)):
        pose = {"swing": 0.0, "bow": 0.0, "reach": None}
        if action == WALK:
            pos = pos + STRIDE * u * speed * np.array([math.cos(heading), -math.sin(heading)])
            heading = _bounce(pos, heading, margin, size)
            pos = np.clip(pos, margin, size - margin)
            pose["swing"] = SWING * u * (1 if t % 2 else -1)
        elif action in (TURN_LEFT, TURN_RIGHT):  # heading is counter-clockwise on screen
            heading += TURN * speed * (1 if action == TURN_LEFT else -1)
        elif action == REACH:
            nearest = targets[np.argmin(np.linalg.norm(targets - pos, axis=1))]
            pose["reach"] = (nearest, progress)
        elif action == LOOK_DOWN:
            pose["bow"] = progress
        out[t] = scene
        _actor(out[t], pos, heading, pose, look, u)
    return out


def _bounce(pos: np.ndarray, heading: float, margin: np.ndarray, size: int) -> float:
    """The heading after reflecting off a border the actor crossed."""
    if not margin[0] <= pos[0] <= size - margin[0]:
        heading = math.pi - heading
    if not margin[1] <= pos[1] <= size - margin[1]:
        heading = -heading
    return heading


def _actor(
    frame: np.ndarray, pos: np.ndarray, heading: float, pose: dict, look: dict, u: float
) -> None:
    """Draw the actor standing at `pos` (its body's centre), every part outlined in black to
    show on any photo: the heading marker (a yellow pointer from the centre, under the rest,
    so it shows beyond the body whichever way it points), legs, body, head, and the reaching
    arm (from the shoulder on the target's side)."""
    x, y = pos
    thick = max(1, round(1.2 * u))
    tip = pos + 8 * u * np.array([math.cos(heading), -math.sin(heading)])
    _stroke(frame, pos, tip, (255, 230, 0), thick)
    _disc(frame, tip, 1.4 * u, (255, 230, 0))
    for side in (-1, 1):
        hip = (x + side * 0.8 * u, y + 3 * u)
        foot = (x + side * (0.9 * u + pose["swing"]), y + 6.5 * u)
        _stroke(frame, hip, foot, (40, 40, 40), thick)
    for grow, colour in ((0.7, (0, 0, 0)), (0, look["shirt"])):  # the body, outlined
        w, h = 1.5 * u + grow, 3.5 * u + grow
        cv2.rectangle(frame, _pt(x - w, y - h), _pt(x + w, y + h), colour, -1, cv2.LINE_AA, 4)
    forward = 1 if math.cos(heading) >= 0 else -1
    head = (x + BOW[0] * u * pose["bow"] * forward, y - 5 * u + BOW[1] * u * pose["bow"])
    _disc(frame, head, 1.8 * u, look["skin"])
    if pose["reach"] is not None:
        target, progress = pose["reach"]
        shoulder = np.array([x + 1.5 * u * (1 if target[0] >= x else -1), y - 2.5 * u])
        gap = target - shoulder
        length = min(np.linalg.norm(gap), ARM * u) * progress
        hand = shoulder + gap / max(np.linalg.norm(gap), 1e-6) * length
        _stroke(frame, shoulder, hand, look["skin"], thick)
        _disc(frame, hand, 1.2 * u, look["skin"])


def _stroke(frame: np.ndarray, a, b, colour: tuple[int, int, int], thick: int) -> None:
    """A line from `a` to `b`, outlined in black."""
    cv2.line(frame, _pt(*a), _pt(*b), (0, 0, 0), thick + 2, cv2.LINE_AA, 4)
    cv2.line(frame, _pt(*a), _pt(*b), colour, thick, cv2.LINE_AA, 4)


def _disc(frame: np.ndarray, centre, radius: float, colour: tuple[int, int, int]) -> None:
    """A filled disc outlined in black."""
    cv2.circle(frame, _pt(*centre), round((radius + 0.7) * 16), (0, 0, 0), -1, cv2.LINE_AA, 4)
    cv2.circle(frame, _pt(*centre), round(radius * 16), colour, -1, cv2.LINE_AA, 4)
