"""What the served segmenter answers over HTTP (Study.endpoints): a clip in, per-frame
labels and the detected actions out.

POST /predict: {"frames": [T x H x W x 3 pixel values in 0-255]} or {"video": base64 of
a .gif or .mp4 file} -> each frame's label, and the detected segments (label, first frame,
one past the last, score: the mean probability of the label over the segment). Frames of
another size are resized to the model's (GET /metadata: params.size); a clip longer than
the model's window (params.frames) is read in windows, the last one aligned to the clip's
end, overlapping frames' probabilities averaged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import tempfile
from pathlib import Path
from typing import Annotated, Any

import cv2
import imageio.v3 as iio
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.ego_only.clips import generate
from jobs.ego_only.folder import read_video
from jobs.ego_only.segments import localise
from jobs.ego_only.train import frame_probs
from skeptic.api import DataError, Endpoint, InvalidRequest

MAX_FRAMES = 512
MAX_SIDE = 256
MAX_VIDEO_BYTES = 4 * 2**20  # of the decoded file; base64 is 4/3 of it

Pixel = Annotated[float, Field(ge=0, le=255)]


def example_clip(config: dict[str, Any]) -> np.ndarray:
    """One generated egocentric clip (T, H, W, 3) uint8 at the model's size."""
    return generate("ego", 1, frames=config["frames"], size=config["size"], seed=0, pool="test").x[
        0
    ]


@functools.cache
def example_video() -> str:
    """The request example: a generated egocentric clip (16 frames of 32x32) as a base64 GIF."""
    buffer = io.BytesIO()
    iio.imwrite(buffer, example_clip({"frames": 16, "size": 32}), extension=".gif", loop=0)
    return base64.b64encode(buffer.getvalue()).decode()


def _examples(schema: dict[str, Any]) -> None:
    schema["examples"] = [{"video": example_video()}]  # built when a schema is asked for


class ClipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_examples)

    frames: list[list[list[list[Pixel]]]] | None = Field(
        None, min_length=1, max_length=MAX_FRAMES,
        description=f"the clip, frames x rows x columns x RGB, pixel values 0-255; at least "
        f"the model's window (GET /metadata: params.frames) and at most {MAX_FRAMES} frames, "
        f"sides up to {MAX_SIDE}",
    )  # fmt: skip
    video: str | None = Field(
        None, max_length=(MAX_VIDEO_BYTES * 4) // 3 + 4,
        description="a .gif or .mp4 file, base64-encoded (instead of frames)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_clip(self) -> ClipRequest:
        if (self.frames is None) == (self.video is None):
            raise ValueError("frames: send the clip as `frames` or as `video`, exactly one")
        return self


class Detected(BaseModel):
    label: str
    start: int = Field(description="the segment's first frame")
    end: int = Field(description="one past its last frame")
    score: float = Field(description="the label's mean probability over the segment")


class ClipResponse(BaseModel):
    frames: int = Field(description="frames read")
    labels: list[str] = Field(description="each frame's most probable action")
    segments: list[Detected] = Field(description="the detected actions (not the background)")


def clip_array(request: ClipRequest) -> np.ndarray:
    """The request's clip as (T, H, W, 3) uint8; InvalidRequest naming the field otherwise."""
    if request.video is not None:
        return _decode(request.video)
    try:
        x = np.asarray(request.frames, dtype=np.float32)
    except ValueError:
        raise InvalidRequest("frames: every frame must have the same rows, columns and 3 "
                             "channels (a T x H x W x 3 array)") from None  # fmt: skip
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidRequest(f"frames: a T x H x W x 3 array, got shape {x.shape}")
    return np.round(x).astype(np.uint8)


def _decode(text: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("video: not base64") from None
    suffix = ".gif" if data[:4] == b"GIF8" else ".mp4"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip{suffix}"
        path.write_bytes(data)
        try:
            return read_video(path, MAX_FRAMES + 1)
        except DataError:
            raise InvalidRequest(f"video: not a readable {suffix} file") from None


def _fit(x: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Check the clip's length and size; resize its frames to the model's."""
    t, h, w, _ = x.shape
    window, side = config["frames"], config["size"]
    if max(h, w) > MAX_SIDE:
        raise InvalidRequest(f"frames: sides of at most {MAX_SIDE} pixels, got {h} x {w}")
    if t < window:
        raise InvalidRequest(f"frames: this model reads clips of at least {window} frames, got {t}")
    if t > MAX_FRAMES:
        raise InvalidRequest(f"frames: at most {MAX_FRAMES} frames a request, got {t}")
    if (h, w) == (side, side):
        return x
    return np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in x])


def clip_probs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Per-frame probabilities (T, C) of a clip of any length >= the model's window."""
    window, t = model.config["frames"], len(x)
    starts = sorted({*range(0, t - window + 1, window), t - window})
    probs = frame_probs(model, torch.from_numpy(np.stack([x[s : s + window] for s in starts])))
    total, count = np.zeros((t, probs.shape[-1])), np.zeros((t, 1))
    for s, p in zip(starts, probs, strict=True):
        total[s : s + window] += p
        count[s : s + window] += 1
    return total / count


def segment(model: nn.Module, request: ClipRequest) -> dict[str, Any]:
    x = _fit(clip_array(request), model.config)
    probs = clip_probs(model, x)
    classes = model.config["classes"]
    found = localise(probs, min_len=model.config.get("min_len", 1))
    return {
        "frames": len(x),
        "labels": [classes[i] for i in probs.argmax(-1)],
        "segments": [
            {"label": classes[s.label], "start": s.start, "end": s.end, "score": float(s.score)}
            for s in found
        ],
    }


ENDPOINTS = (
    Endpoint("predict", ClipRequest, ClipResponse, "segment",
             "each frame's action and the detected action segments of a clip"),
)  # fmt: skip
