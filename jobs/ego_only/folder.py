"""Real clips from a folder: the study's data when videos exist, in place of the generator.

The layout (`root` is data.path):

    root/classes.txt          one class name per line; the first is the background class
    root/ego/<clip>/          a folder of frames (*.png, *.jpg, *.jpeg), in name order with
                              numbers compared as numbers (frame_2 before frame_10) ...
    root/ego/<clip>.mp4       ... or a video: .mp4 (read with PyAV) or .gif (imageio)
    root/ego/<clip>.txt       the clip's labels: one class name per line, one line per frame;
                              absent = an unlabelled clip (pretraining only, y = -1)
    root/exo/...              the same for the exocentric clips

Labels always sit beside their clip as <clip>.txt, for frame folders too: a frame folder
holds frames only, so a labels file put inside one is an error, not silently unlabelled.
Files and folders whose name starts with a dot are skipped.

Every clip is cut into windows of `frames` frames (not overlapping; a tail shorter than
`frames` is dropped) and every frame resized to size x size (cv2's INTER_AREA), while it is
decoded, so a long video never sits in memory at full size. Anything the loaders cannot
read (a missing folder or classes.txt, an unreadable frame or video, a label that is not a
class, a label file with more or fewer lines than its clip has frames) is a DataError
naming the file, and the line for a label.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from jobs.ego_only.clips import VIEWS, Clips
from skeptic.api import DataError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".gif")
LABEL_SUFFIX = ".txt"


@dataclass(frozen=True)
class _Clip:
    source: Path  # a frame folder or a video file
    labels: Path | None  # None: unlabelled


def load_folder(root: str | Path, *, frames: int, size: int) -> dict[str, Clips]:
    """{"ego": Clips, "exo": Clips}: every clip of each view cut into windows of `frames`
    frames of size x size; `classes` = classes.txt's names."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    root = Path(root)
    classes = _classes(root)
    out = {}
    for view, clips in _layout(root).items():
        xs, ys = [], []
        for clip in clips:
            video = np.stack([_resize(f, size) for f in _frames(clip.source)])
            y = (
                _labels(clip.labels, classes, len(video))
                if clip.labels
                else np.full(len(video), -1)
            )
            k = len(video) // frames
            xs.append(video[: k * frames].reshape(k, frames, size, size, 3))
            ys.append(y[: k * frames].reshape(k, frames))
        if not sum(len(x) for x in xs):
            raise DataError("path", f"{root / view}: no clip has {frames} frames")
        out[view] = Clips(np.concatenate(xs), np.concatenate(ys), classes)
    return out


def check_folder(root: str | Path) -> str:
    """The spec-time check: read every clip and label file as `load_folder` would (decoding
    every frame: seconds for minutes of video), raise DataError at the first fault, and
    return a one-line summary."""
    root = Path(root)
    classes = _classes(root)
    parts = []
    for view, clips in _layout(root).items():
        for clip in clips:
            count = sum(1 for _ in _frames(clip.source))
            if clip.labels:
                _labels(clip.labels, classes, count)
        labelled = sum(clip.labels is not None for clip in clips)
        parts.append(f"{view}: {len(clips)} clips ({labelled} labelled)")
    return f"{', '.join(parts)}, {len(classes)} classes"


def _classes(root: Path) -> tuple[str, ...]:
    path = root / "classes.txt"
    if not root.is_dir():
        raise DataError("path", f"{root}: no such folder")
    lines = _lines(path)
    for i, name in enumerate(lines, 1):
        if not name or name in lines[: i - 1]:
            raise DataError(
                "path", f"{path}, line {i}: {'an empty' if not name else 'a repeated'} class name"
            )
    if len(lines) < 2:  # the background and at least one action
        raise DataError("path", f"{path}: needs at least two classes, has {len(lines)}")
    return tuple(lines)


def _lines(path: Path) -> list[str]:
    """A text file's lines, stripped, trailing blank lines dropped."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError("path", f"{path}: cannot read ({err})") from None
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _layout(root: Path) -> dict[str, list[_Clip]]:
    """Each view's clips in name order, each with its labels file if it has one."""
    layout = {}
    for view in VIEWS:
        folder = root / view
        if not folder.is_dir():
            raise DataError("path", f"{folder}: missing (the clips of view {view!r})")
        sources: dict[str, Path] = {}
        labels: dict[str, Path] = {}
        for path in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
            if path.name.startswith("."):
                continue
            suffix = path.suffix.lower()
            if not path.is_dir() and suffix == LABEL_SUFFIX:
                labels[path.stem] = path
                continue
            if not path.is_dir() and suffix not in VIDEO_SUFFIXES:
                raise DataError(
                    "path",
                    f"{path}: neither a frame folder, a video ({', '.join(VIDEO_SUFFIXES)}) nor labels ({LABEL_SUFFIX})",
                )
            name = path.name if path.is_dir() else path.stem
            if name in sources:  # one labels file could not tell which clip it is for
                raise DataError(
                    "path", f"{path}: a second clip named {name!r} (also {sources[name]})"
                )
            sources[name] = path
        for name, path in labels.items():
            if name not in sources:
                raise DataError(
                    "path", f"{path}: labels for no clip (no {name}/ or {name}.mp4/.gif beside it)"
                )
        if not sources:
            raise DataError("path", f"{folder}: no clips")
        layout[view] = [_Clip(path, labels.get(name)) for name, path in sources.items()]
    return layout


def _natural(name: str) -> list[str | int]:
    """A sort key comparing the numbers in names as numbers (frame_2 before frame_10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _labels(path: Path, classes: tuple[str, ...], count: int) -> np.ndarray:
    """The class index of every frame of a clip of `count` frames."""
    index = {name: i for i, name in enumerate(classes)}
    lines = _lines(path)
    for i, name in enumerate(lines, 1):
        if name not in index:
            raise DataError("path", f"{path}, line {i}: {name!r} is not a class of classes.txt")
    if len(lines) != count:
        raise DataError("path", f"{path}: {len(lines)} labels for a clip of {count} frames")
    return np.array([index[name] for name in lines], dtype=np.int64)


def read_video(path: str | Path, limit: int | None = None) -> np.ndarray:
    """A .gif or .mp4 file's frames (T, H, W, 3) uint8, at most `limit` of them; DataError
    when it cannot be read."""
    return np.stack(list(islice(_frames(Path(path)), limit)))


def _frames(source: Path) -> Iterator[np.ndarray]:
    """A clip's frames, RGB uint8, one at a time; at least one."""
    if source.is_dir():
        frames = _folder_frames(source)
    elif source.suffix.lower() == ".gif":
        frames = _gif_frames(source)
    else:
        frames = _video_frames(source)
    empty = True
    for frame in frames:
        empty = False
        yield frame
    if empty:
        raise DataError("path", f"{source}: no frames")


def _folder_frames(folder: Path) -> Iterator[np.ndarray]:
    for path in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.suffix.lower() not in FRAME_SUFFIXES:
            raise DataError(
                "path",
                f"{path}: a frame folder holds frames only ({', '.join(FRAME_SUFFIXES)}); labels go beside it as {folder.name}{LABEL_SUFFIX}",
            )
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError("path", f"{path}: not a readable image")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _gif_frames(path: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    try:
        for frame in iio.imiter(path):
            yield _rgb(frame)
    except (OSError, ValueError, SyntaxError) as err:  # what Pillow raises for a bad GIF
        raise DataError("path", f"{path}: not a readable GIF ({err})") from None


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    import av  # PyAV: torchvision no longer reads video

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError("path", f"{path}: no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError("path", f"{path}: not a readable video ({err})") from None


def _rgb(frame: np.ndarray) -> np.ndarray:
    """Grey to three channels, RGBA to RGB."""
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=2)
    return np.ascontiguousarray(frame[..., :3])


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
