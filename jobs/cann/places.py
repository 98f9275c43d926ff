"""Places to localise in: views of square tiles cut from real photographs, with known poses.

A *place* is a square tile of a photograph; its *frame* is the tile's own S x S pixel grid.
A *view* of a place is an S x S image rendered through a homography; its `pose` maps the view's
pixel (x, y, 1) to the place frame. The database (the map) holds mildly warped views; the
val and test queries are harder views ("easy" or "hard": rotation, scale, perspective,
photometric changes, and for "hard" occluders), rendered from the whole photograph so that
what lies outside the tile is real photo content. Perceptual aliasing is dialled in by pasting
a donor place's centre into an alias place's tile.

Real data (`load_folder`) uses this layout:

    <path>/poses.csv   header: split,image,place,h11,h12,h13,h21,h22,h23,h31,h32,h33
                       split: database | val | test (all three present);
                       image: a PNG/JPEG path relative to <path>;
                       place: the place's name (any string; every query place must also
                       have database images);
                       h11..h33: the row-major homography from the image's pixel (x, y, 1)
                       to the place frame in *unit* coordinates, where the place spans
                       [0, 1] x [0, 1] (so that any image size and any S can be used).
    <path>/<images>    resized to S x S on load; the poses are rescaled to match (to the
                       image's S x S pixels -> the place's S x S frame).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from sklearn.datasets import load_sample_image

from skeptic.api import DataError

# Photos that ship inside the skimage and scikit-learn wheels (no download). Left out:
# retina (mostly black at tile scale), moon/cell/clock (few keypoints), page/text and the
# brick/grass/gravel textures (repeated patterns would alias places beyond the `aliasing` knob),
# and the motorcycle's right stereo image (a near copy of the left one).
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
    "motorcycle",
    "china",
    "flower",
)
SPLITS = ("database", "val", "test")
COLUMNS = ("split", "image", "place", "h11", "h12", "h13", "h21", "h22", "h23", "h31", "h32", "h33")
# A tile a SIFT detector finds fewer keypoints in (blank sky, a black background) is no place
# a feature-based localiser could map, whatever the retrieval.
MIN_KEYPOINTS = 30
ALIAS_CENTRE = 0.6  # the fraction of the donor tile's side pasted into the alias's tile


@dataclass
class Views:
    images: np.ndarray  # (n, S, S, 3) uint8 RGB
    place: np.ndarray  # (n,) int64 index into Places.names
    pose: np.ndarray  # (n, 3, 3) float64: view pixel (x, y, 1) -> place frame (S x S px)


@dataclass
class Places:
    names: list[str]
    size: int
    database: Views
    val: Views
    test: Views
    aliases: list[tuple[int, int]]  # (aliased place, donor place)


@dataclass(frozen=True)
class _Regime:
    """How far a view may stray from the place's own frame, and how its pixels degrade."""

    rotate: float  # max |rotation|, degrees
    scale: float  # zoom factor drawn log-uniformly in [1/scale, scale]
    tilt: float  # perspective: the view's corners get w in [1 - 2 tilt, 1 + 2 tilt]
    shift: float  # max translation, fraction of S
    gain: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0  # Gaussian noise sigma, grey levels
    blur: float = 0.0  # max Gaussian blur sigma, px (drawn uniformly; half the views unblurred)
    occluders: int = 0  # at most this many random rectangles


REGIMES = {
    "database": _Regime(rotate=10, scale=1.1, tilt=0.03, shift=0.05),
    "easy": _Regime(
        rotate=30, scale=1.3, tilt=0.06, shift=0.1, gain=(0.8, 1.25), gamma=(0.8, 1.25),
        noise=2.0, blur=0.8,
    ),
    "hard": _Regime(
        rotate=180, scale=1.8, tilt=0.12, shift=0.15, gain=(0.6, 1.6), gamma=(0.65, 1.5),
        noise=5.0, blur=1.5, occluders=3,
    ),
}  # fmt: skip


@functools.cache
def photos() -> list[tuple[str, np.ndarray]]:
    """The PHOTOS as (name, RGB uint8 array), greyscale ones stacked to three channels."""
    out = []
    for name in PHOTOS:
        if name in ("china", "flower"):
            image = load_sample_image(f"{name}.jpg")
        elif name == "motorcycle":
            image = skimage.data.stereo_motorcycle()[0]
        else:
            image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        image.setflags(write=False)
        out.append((name, image))
    return out


@functools.cache
def _tiles(size: int) -> tuple[tuple[int, int, int, int], ...]:
    """Every usable tile as (photo index, x0, y0, index in its photo's grid): the photos cut
    into a non-overlapping grid of size x size tiles, keeping those with MIN_KEYPOINTS."""
    sift = cv2.SIFT_create()
    out = []
    for p, (_, image) in enumerate(photos()):
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        rows, cols = gray.shape[0] // size, gray.shape[1] // size
        for k in range(rows * cols):
            y0, x0 = (k // cols) * size, (k % cols) * size
            if len(sift.detect(gray[y0 : y0 + size, x0 : x0 + size])) >= MIN_KEYPOINTS:
                out.append((p, x0, y0, k))
    return tuple(out)


def make_places(
    *,
    places: int,
    db_views: int,
    query_views: int,
    size: int,
    aliasing: float,
    difficulty: str,
    tile_seed: int,
    view_seed: int,
) -> Places:
    """`places` tiles (drawn by tile_seed) with db_views database views each and query_views
    val and test views each (drawn by view_seed). round(aliasing * places) of the places
    (at most places - 1) are aliases of a donor place: their tile's centre is the donor's."""
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    if not 0 <= aliasing < 1:
        raise ValueError(f"aliasing must be in [0, 1), got {aliasing}")
    tiles = _tiles(size)
    if places > len(tiles):
        raise ValueError(f"{places} places asked for; the photos give {len(tiles)} at size {size}")
    rng = np.random.default_rng([tile_seed, 0])
    chosen = [tiles[i] for i in rng.permutation(len(tiles))[:places]]
    contexts = [_context(photos()[p][1], x0, y0, size) for p, x0, y0, _ in chosen]
    aliases = _alias(contexts, round(aliasing * places), size, rng)
    names = [f"{PHOTOS[p]}/{k}" for p, _, _, k in chosen]
    split_views = [
        _render(contexts, n, REGIMES[regime], size, np.random.default_rng([view_seed, s]))
        for s, (regime, n) in enumerate(
            [("database", db_views), (difficulty, query_views), (difficulty, query_views)]
        )
    ]
    return Places(names, size, *split_views, aliases=aliases)


def _context(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """The tile and one tile's width of the photo around it (3S x 3S), mirrored past the
    photo's edges: views that zoom out or rotate see real surroundings, not black."""
    padded = cv2.copyMakeBorder(image, size, size, size, size, cv2.BORDER_REFLECT_101)
    return padded[y0 : y0 + 3 * size, x0 : x0 + 3 * size].copy()


def _alias(
    contexts: list[np.ndarray], count: int, size: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Turn `count` places into aliases (in place): paste a donor's tile centre into theirs.
    Donors are drawn from the places that are not aliases themselves."""
    count = min(count, len(contexts) - 1)
    order = rng.permutation(len(contexts))
    aliased, others = order[:count], order[count:]
    donors = rng.choice(others, size=count) if count else np.array([], dtype=int)
    lo = size + round(size * (1 - ALIAS_CENTRE) / 2)
    hi = 2 * size - (lo - size)
    for a, d in zip(aliased, donors, strict=True):
        contexts[a][lo:hi, lo:hi] = contexts[d][lo:hi, lo:hi]
    return sorted((int(a), int(d)) for a, d in zip(aliased, donors, strict=True))


def _render(
    contexts: list[np.ndarray], per_place: int, regime: _Regime, size: int, rng: np.random.Generator
) -> Views:
    n = len(contexts) * per_place
    images = np.empty((n, size, size, 3), np.uint8)
    poses = np.empty((n, 3, 3))
    # The context's pixel = the place frame + one tile: it holds the tile in its middle.
    to_context = np.array([[1.0, 0, size], [0, 1, size], [0, 0, 1]])
    for i in range(n):
        poses[i] = _homography(regime, size, rng)
        images[i] = cv2.warpPerspective(
            contexts[i // per_place],
            to_context @ poses[i],
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        images[i] = _degrade(images[i], regime, rng)
    place = np.repeat(np.arange(len(contexts), dtype=np.int64), per_place)
    return Views(images, place, poses)


def _homography(regime: _Regime, size: int, rng: np.random.Generator) -> np.ndarray:
    """View pixel -> place frame: about the centre, a perspective tilt, zoom, rotation, then
    a shift."""
    c = size / 2
    angle = np.deg2rad(rng.uniform(-regime.rotate, regime.rotate))
    zoom = np.exp(rng.uniform(-1, 1) * np.log(regime.scale))
    tx, ty = rng.uniform(-regime.shift, regime.shift, 2) * size
    gx, gy = rng.uniform(-regime.tilt, regime.tilt, 2) / c
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    centred = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, 1, 0], [gx, gy, 1]]
    )
    h = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1]]) @ centred
    h = h @ np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]])
    return h / h[2, 2]


def _degrade(image: np.ndarray, regime: _Regime, rng: np.random.Generator) -> np.ndarray:
    """Gain, gamma, blur, noise, occluders: the photometric side of a query's difficulty."""
    if regime.noise == 0 and regime.blur == 0 and regime.occluders == 0:
        return image
    gain, gamma = rng.uniform(*regime.gain), rng.uniform(*regime.gamma)
    out = gain * 255.0 * (image / 255.0) ** gamma
    sigma = rng.uniform(0, regime.blur) if rng.random() < 0.5 else 0.0
    if sigma > 0.1:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0, regime.noise, out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    size = image.shape[0]
    for _ in range(rng.integers(0, regime.occluders + 1)):
        w, h = (rng.uniform(0.15, 0.4, 2) * size).astype(int)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        out[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return out


def write_folder(places: Places, path: str | Path) -> None:
    """Write `places` in the load_folder layout (PNG images under <path>/<split>/)."""
    path = Path(path)
    unit = np.diag([1.0 / places.size, 1.0 / places.size, 1.0])
    rows = []
    for split in SPLITS:
        views = getattr(places, split)
        (path / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(views.place)):
            name = f"{split}/{i:05d}.png"
            cv2.imwrite(str(path / name), cv2.cvtColor(views.images[i], cv2.COLOR_RGB2BGR))
            h = (unit @ views.pose[i]).ravel()
            rows.append([split, name, places.names[views.place[i]], *map(repr, h.tolist())])
    with open(path / "poses.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def check_folder(path: str | Path) -> None:
    """The layout checks that need no image decoded: poses.csv, its columns and values, all
    three splits, every query place mapped in the database, every image file present."""
    _read_poses(Path(path))


def load_folder(path: str | Path, size: int) -> Places:
    """Places from a folder in the module docstring's layout; aliases are unknown there ([])."""
    path = Path(path)
    rows = _read_poses(path)
    names = list(dict.fromkeys(place for _, _, place, _ in rows))  # first-seen order
    index = {name: i for i, name in enumerate(names)}
    frame = np.diag([float(size), size, 1.0])
    views = []
    for split in SPLITS:
        mine = [r for r in rows if r[0] == split]
        images, poses = [], []
        for _, image, _, h in mine:
            pixels, (height, width) = _read_image(path / image, size)
            images.append(pixels)
            poses.append(frame @ h @ np.diag([width / size, height / size, 1.0]))
        place = np.array([index[r[2]] for r in mine], dtype=np.int64)
        views.append(Views(np.stack(images), place, np.stack(poses)))
    return Places(names, size, *views, aliases=[])


def _read_poses(path: Path) -> list[tuple[str, str, str, np.ndarray]]:
    """poses.csv as (split, image, place, 3 x 3 homography) rows, checked; DataError("path")
    naming the file, row and column at fault."""
    csv_path = path / "poses.csv"
    if not csv_path.is_file():
        raise DataError("path", f"{csv_path} not found (see jobs/cann/places.py for the layout)")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError("path", f"{csv_path}: missing column(s) {', '.join(missing)}")
        rows = [_parse_row(csv_path, n, row, path) for n, row in enumerate(reader, start=2)]
    splits = {r[0] for r in rows}
    for split in SPLITS:
        if split not in splits:
            raise DataError("path", f"{csv_path}: no rows with split={split}")
    mapped = {r[2] for r in rows if r[0] == "database"}
    for n, r in enumerate(rows, start=2):
        if r[2] not in mapped:
            raise DataError("path", f"{csv_path}: row {n}: place {r[2]!r} has no database image")
    return rows


def _parse_row(
    csv_path: Path, n: int, row: dict[str, str], root: Path
) -> tuple[str, str, str, np.ndarray]:
    where = f"{csv_path}: row {n}"
    if row["split"] not in SPLITS:
        raise DataError("path", f"{where}: column split: {row['split']!r} not in {SPLITS}")
    if not (root / row["image"]).is_file():
        raise DataError("path", f"{where}: column image: {root / row['image']} not found")
    values = []
    for column in COLUMNS[3:]:
        try:
            values.append(float(row[column]))
        except (TypeError, ValueError):
            raise DataError(
                "path", f"{where}: column {column}: not a number: {row[column]!r}"
            ) from None
    h = np.array(values).reshape(3, 3)
    if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12:
        raise DataError("path", f"{where}: columns h11..h33: not an invertible finite homography")
    return row["split"], row["image"], row["place"], h


def _read_image(file: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(size x size RGB uint8, the original (height, width))."""
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError("path", f"cannot decode image {file}")
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), image.shape[:2]
