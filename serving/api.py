"""The HTTP contract of a served model: request/response schemas, and the checks that turn a
request body into a float32 batch of the model's signature shape or a 4xx that names the
problem. Pure functions (no Serve), so they are cheap to test and reuse."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_K = 3
K_MAX = 1000
# The formats the API documents. Pillow names multi-picture JPEGs (most phone cameras) MPO.
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP"})
# A request needs 2 + the input's rank; the JSON parser recurses ~1000 levels before failing.
MAX_JSON_DEPTH = 32

M = TypeVar("M", bound=BaseModel)


class RequestError(Exception):
    """A client error: HTTP status, a short machine-readable code and a message."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


# --- schemas (also what /openapi.json documents) ---------------------------------------------


class PredictRequest(BaseModel):
    """Give exactly one of `inputs` (preprocessed tensors) or `images` (encoded images)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": ["iVBORw0KGgo..."], "k": 3}]},
    )

    inputs: list[Any] | None = Field(
        None,
        description="Batch of float arrays, each nested to the model's input shape C x H x W "
        "(see /metadata: input_shape), values as in training (images: RGB in [0, 1]).",
    )
    images: list[str] | None = Field(
        None,
        description="Batch of base64-encoded PNG/JPEG/BMP images (other formats: 422 "
        "unsupported_image_format); each is decoded, converted to RGB and resized to the "
        "model's input size with the training data pipeline.",
    )
    # strict: "3" or true is a client bug, not a k
    k: int = Field(
        DEFAULT_K, ge=1, le=K_MAX, strict=True, description="labels to return per item (top-k)"
    )


class Label(BaseModel):
    """One of the top-k labels. A classifier gives `probability`; a model that scores its
    labels otherwise (a localiser's places) gives `score` and, per label, its own details
    (e.g. `homography`): every extra output the model returns beside its scores."""

    model_config = ConfigDict(extra="allow")

    label: str
    index: int
    probability: float | None = None
    score: float | None = None


class PredictResponse(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="the registered model version that answered")
    predictions: list[list[Label]] = Field(description="per input item, top-k, best first")


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. wrong_shape")
    detail: str = Field(description="what is wrong, in words")


# --- request body -> batch ---------------------------------------------------------------------


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_content_type(header: str | None, *, images: bool = False) -> str:
    """What the body is: "json" if declared JSON (`application/json`, `application/*+json`);
    with `images`, "image" for one raw image (`image/*`: its format is checked from its
    bytes); else 415. A text/plain or form body is a client mistake (and a browser sends
    those cross-site without asking first)."""
    media = _media_type(header)
    if _is_json(media):
        return "json"
    if images and media.startswith("image/"):
        return "image"
    want = "application/json" + (
        ", or one image as image/png, image/jpeg or image/bmp" if images else ""
    )
    raise RequestError(
        415,
        "unsupported_media_type",
        f"Content-Type is {header!r}; send the body as {want}"
        if header
        else f"no Content-Type; send the body as {want}",
    )


# A JSON string, escapes included; possessive, so a 4 MB base64 string is one linear pass.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(detail: str) -> RequestError:
    return RequestError(422, "json_too_deep", detail)


def json_depth(body: bytes) -> int:
    """How deep `[`/`{` nest in `body`, outside strings, found without parsing it: the
    parser recurses once per level and dies with RecursionError (a 500) on a deep body."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    steps = np.where(np.isin(np.frombuffer(brackets, np.uint8), (91, 123)), 1, -1)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def parse_json_object(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """JSON bytes -> a dict, or 400 (malformed JSON) / 422 (too deep, not an object): the
    checks every POST route makes before its own schema sees the body."""
    # Fewer brackets than the limit cannot nest deeper: image bodies skip the scan.
    if body.count(b"[") + body.count(b"{") > max_depth:
        depth = json_depth(body)
        if depth > max_depth:
            raise _too_deep(f"the JSON nests {depth} levels deep, over the limit of {max_depth}")
    try:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:  # json decides (and names the error): it also reads
            obj = json.loads(body)  # NaN and Infinity, which some clients send
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(
            400, "malformed_json", f"request body is not valid JSON: {err}"
        ) from None
    except RecursionError:  # only if the scan was fooled (e.g. a UTF-16 body)
        raise _too_deep(f"the JSON nests too deep (limit {max_depth})") from None
    if not isinstance(obj, dict):
        raise RequestError(
            422, "invalid_request", f"request body must be a JSON object, got {type(obj).__name__}"
        )
    return obj


def validation_detail(err: ValidationError, most: int = 5) -> str:
    """A pydantic error as one line naming each field by its path, e.g.
    "texts.2: Input should be a valid string; k: Field required" (the first `most`)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:most]
    )


def validate_request(schema: type[M], obj: dict[str, Any]) -> M:
    """`obj` as an instance of `schema`, or 422 invalid_request naming the fields."""
    try:
        return schema.model_validate(obj)
    except ValidationError as err:
        raise RequestError(422, "invalid_request", validation_detail(err)) from None


def parse_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> PredictRequest:
    """JSON bytes -> PredictRequest, or 400 (malformed JSON) / 422 (too deep, wrong fields)."""
    request = validate_request(PredictRequest, parse_json_object(body, max_depth))
    given = [f for f in ("inputs", "images") if getattr(request, f) is not None]
    if not given:
        raise RequestError(
            422,
            "missing_field",
            "missing field: give `inputs` (arrays of the model's input shape) "
            "or `images` (base64-encoded images)",
        )
    if len(given) == 2:
        raise RequestError(422, "invalid_request", "give either `inputs` or `images`, not both")
    return request


def to_batch(
    request: PredictRequest,
    input_shape: tuple[int, ...],
    *,
    max_items: int,
    max_image_pixels: int | None = None,
    max_decoded_pixels: int | None = None,
) -> np.ndarray | Images:
    """The request's items as one float32 array of shape (N, *input_shape), or, for
    `images`, the checked images whose `decode` makes that array (decoding is the
    CPU-bound part: see Images.pixels). The caller casts to the signature's dtype."""
    items = request.inputs if request.inputs is not None else request.images
    field = "inputs" if request.inputs is not None else "images"
    if not items:
        raise RequestError(422, "invalid_request", f"`{field}` is empty: send at least one item")
    if len(items) > max_items:
        raise RequestError(
            413,
            "batch_too_large",
            f"{len(items)} items in `{field}`, over the limit of {max_items}",
        )
    if request.images is not None:
        named = [(f"images[{i}]", _b64decode(i, text)) for i, text in enumerate(request.images)]
        return open_images(named, input_shape, max_image_pixels, max_decoded_pixels)
    return _inputs_to_batch(request.inputs, input_shape)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _inputs_to_batch(inputs: list[Any], input_shape: tuple[int, ...]) -> np.ndarray:
    want = f"[N, {_shape_text(input_shape)[1:]}"
    try:
        array = np.asarray(inputs)
    except (ValueError, TypeError):
        raise RequestError(
            422,
            "wrong_shape",
            f"`inputs` is not a regular array (ragged nesting); the model takes {want} float32",
        ) from None
    if array.dtype.kind not in "iuf":
        kind = "strings" if array.dtype.kind == "U" else f"{array.dtype} values"
        raise RequestError(
            422,
            "wrong_dtype",
            f"`inputs` holds {kind}; the model takes numbers (float32)",
        )
    if array.shape[1:] != tuple(input_shape):
        raise RequestError(
            422,
            "wrong_shape",
            f"`inputs` has shape {_shape_text(array.shape)}; the model takes {want} float32",
        )
    with np.errstate(over="ignore"):
        batch = array.astype(np.float32)
    if not np.isfinite(batch).all():
        raise RequestError(
            422, "wrong_dtype", "`inputs` holds values that are not finite float32 numbers"
        )
    return batch


# Pillow raises several types for corrupt or truncated data; all mean "unreadable".
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)


def query_k(query: Mapping[str, str]) -> int | None:
    """The `k` of a raw-image request's query string (`?k=2`), or None; 422 for anything
    else in it, as an unknown field of a JSON body is."""
    unknown = sorted(set(query) - {"k"})
    if unknown:
        raise RequestError(
            422, "invalid_request", f"unknown query parameter(s): {', '.join(unknown)}"
        )
    if "k" not in query:
        return None
    text = query["k"]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= K_MAX):
        raise RequestError(
            422, "invalid_request", f"k: {text!r} is not an integer from 1 to {K_MAX}"
        )
    return int(text)


@dataclass
class Images:
    """Images opened and checked from their headers, not decoded yet: `decode` makes the
    float32 batch with the training preprocessing. `pixels` (width x height, summed)
    measures what decoding will cost."""

    named: list[tuple[str, Image.Image]]
    side: int  # the model's input is 3 x side x side
    pixels: int

    def decode(self) -> np.ndarray:
        from skeptic.data.imagefolder import image_to_array

        out = np.empty((len(self.named), 3, self.side, self.side), dtype=np.float32)
        for i, (name, im) in enumerate(self.named):
            try:
                with im:
                    out[i] = image_to_array(im, self.side)  # the training preprocessing
            except _UNREADABLE as err:
                raise RequestError(
                    422, "bad_image", f"{name}: cannot decode image: {err}"
                ) from None
        return out


def open_images(
    images: list[tuple[str, bytes]],
    input_shape: tuple[int, ...],
    max_pixels: int | None,
    max_total: int | None,
) -> Images:
    """Encoded images, each named for its errors (e.g. "images[2]"), opened and checked
    against the model's input (square RGB) and the pixel limits; 413/422 naming the image."""
    if len(input_shape) != 3 or input_shape[0] != 3 or input_shape[1] != input_shape[2]:
        raise RequestError(
            422,
            "wrong_shape",
            f"this model takes inputs of shape {_shape_text(input_shape)}, not square RGB "
            "images: send `inputs`",
        )
    # Every header is read and every limit checked before the first pixel is decoded: a
    # 4 MB body holds dozens of solid PNGs that each expand to 50 MB and a second of CPU.
    opened = [_open_image(name, data, max_pixels) for name, data in images]
    total = sum(im.width * im.height for im in opened)
    if max_total is not None and total > max_total:
        raise RequestError(
            413,
            "too_many_pixels",
            f"the images hold {total} pixels in all, over the limit of {max_total} per request",
        )
    named = [(name, im) for (name, _), im in zip(images, opened, strict=True)]
    return Images(named, input_shape[1], total)


def _b64decode(i: int, text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "bad_image", f"images[{i}] is not valid base64") from None


def _open_image(name: str, data: bytes, max_pixels: int | None) -> Image.Image:
    """An image opened lazily: format and size come from the header, no pixels yet."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # Pillow's own cap, above ours by default
        raise RequestError(413, "image_too_large", f"{name}: {err}") from None
    except UnidentifiedImageError:
        raise RequestError(
            422, "bad_image", f"{name} is not an image (send PNG, JPEG or BMP)"
        ) from None
    except _UNREADABLE as err:
        raise RequestError(422, "bad_image", f"{name}: cannot read image: {err}") from None
    if im.format not in IMAGE_FORMATS:
        im.close()
        raise RequestError(
            422,
            "unsupported_image_format",
            f"{name} is {im.format}; send PNG, JPEG or BMP",
        )
    if max_pixels is not None and im.width * im.height > max_pixels:
        im.close()
        raise RequestError(
            413,
            "image_too_large",
            f"{name} is {im.width}x{im.height} pixels, over the limit of {max_pixels}",
        )
    return im


# --- response ---------------------------------------------------------------------------------


def top_k(
    scores: np.ndarray,
    class_names: list[str],
    k: int,
    extras: dict[str, np.ndarray] | None = None,
    key: str = "probability",
) -> list[list[dict[str, Any]]]:
    """Per input row, the k best labels, best first, under `key`; each of `extras` (arrays
    of shape (rows, labels, ...)) adds its entry for that label."""
    extras = extras or {}
    k = max(1, min(k, scores.shape[1]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [
            {
                "label": class_names[j] if j < len(class_names) else str(j),
                "index": int(j),
                key: float(scores[i, j]),
                **{name: values[i, j].tolist() for name, values in extras.items()},
            }
            for j in idx
        ]
        for i, idx in enumerate(order)
    ]


def split_outputs(output: Any) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """A model's answer for a batch as (scores, extras, the scores' name in the response):
    class probabilities (an array), or a study's dict {"scores": ..., other: ...} whose
    other arrays give each label's details (Study.predict)."""
    if isinstance(output, dict):
        extras = {k: np.asarray(v) for k, v in output.items() if k != "scores"}
        return np.asarray(output["scores"]), extras, "score"
    return np.asarray(output), {}, "probability"


# --- API token ------------------------------------------------------------------------------


def token_digest(token: str) -> str:
    """What the replicas keep instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_ok(authorization: str | None, digest: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (on the SHA-256 digests,
    so neither the length nor the content of the expected token leaks)."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(token_digest(presented.strip()), digest)
