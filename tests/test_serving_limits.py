"""Per-request budgets of a served model: real Serve, real HTTP on 127.0.0.1.

The app runs with its default limits (4 MiB bodies, 64 items, 4096 x 4096 pixels per
image, 2 x 4096 x 4096 decoded pixels per request, JSON 32 levels deep), so each test sends
what a client could: a body of solid PNGs that are tiny encoded and huge decoded, a deeply
nested JSON, a GIF, a text/plain body, a string for `k`.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.parse
from typing import Self

import numpy as np
import pytest
from netutil import http_json, served_app
from PIL import Image
from test_serving import NAME, SHAPE, TOKEN, _b64, _http, _png, store  # noqa: F401

from serving.api import RequestError, json_depth, parse_body

APP = "limits"
MAX_PAYLOAD = 4 * 1024 * 1024  # ServeArgs' default
BIG = 4096  # a side at the per-image limit (max_image_pixels = 4096 * 4096)


# --- helpers -----------------------------------------------------------------------------------


def _post(url: str, raw: bytes, content_type: str | None) -> tuple[int, dict]:
    """POST `raw` with exactly this Content-Type (None: no such header; urllib would add
    application/x-www-form-urlencoded)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        conn.request("POST", path, body=raw, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _image(size: tuple[int, int], fmt: str, color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def _encoded(size: tuple[int, int], fmt: str, color: tuple[int, int, int] = (30, 90, 200)) -> str:
    return _b64(_image(size, fmt, color))


def _both_forms(url: str, image: bytes) -> list[tuple[int, dict]]:
    """The answers to `image` sent in JSON (base64 in `images`) and as the raw body."""
    return [_http("POST", url, {"images": [_b64(image)]}), _post(url, image, "image/png")]


def _bomb_body() -> bytes:
    """As many solid 4096 x 4096 PNGs (each within the per-image limit, ~58 KB encoded,
    50 MB decoded) as fit in one body under the byte limit."""
    image = _encoded((BIG, BIG), "PNG")
    count = min(64, (MAX_PAYLOAD - 100) // (len(image) + 4))
    assert count >= 40, count
    return json.dumps({"images": [image] * count}).encode()


def _p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99))


class Traffic:
    """Good requests in a loop on a few threads, recording status and latency."""

    def __init__(self, url: str, body: dict, threads: int = 2) -> None:
        self.url, self.body = url, body
        self.results: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            status, _ = _http("POST", self.url, self.body, timeout=60)
            self.results.append((status, time.perf_counter() - started))

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(ray_session, store):  # noqa: F811 (pytest passes the imported fixture)
    """The champion at /limits on a free loopback port, with the default limits."""
    args = {
        "model": f"{NAME}@champion", "tracking_uri": store["uri"], "token": TOKEN,
        "ray_actor_options": {"num_cpus": 0.5}, "batch_wait_timeout_s": 0.005,
        "num_replicas": 1,  # one replica: a blocked event loop would show in every answer
    }  # fmt: skip
    with served_app(args, APP, TOKEN) as base:
        yield {"base": base, "predict": f"{base}/predict"}


# --- no Serve needed -----------------------------------------------------------------------------


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"inputs": [[[1, 2]]]}') == 4
    assert json_depth(b'{"a": "[[[[{{{{", "b": ["\\"[[[[", "\\\\"]}') == 2
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000


def test_parse_body_refuses_deep_json_without_recursing() -> None:
    with pytest.raises(RequestError) as err:
        parse_body(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert (err.value.status, err.value.code) == (422, "json_too_deep")
    parse_body(json.dumps({"inputs": np.zeros((2, *SHAPE)).tolist()}).encode())  # depth 5


def test_cli_flag_reaches_the_app_args(monkeypatch, tmp_path, capsys) -> None:
    from serving import cli, control

    monkeypatch.setattr(control, "start_head", lambda *a, **k: pytest.fail("started a head"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["serve", "m@a", "--max-decoded-pixels", "0"]) == 2
    assert "max_decoded_pixels" in capsys.readouterr().err


# --- a served model ------------------------------------------------------------------------------


def test_png_bomb_gets_413_at_once_and_good_requests_keep_their_latency(limited) -> None:
    """Four bodies of ~53 solid 4096 x 4096 PNGs at once (~0.9 G pixels each: once 8.75 s
    and ~1 GB per body): 413 within a second each, from the headers alone, while
    a stream of small requests keeps being answered in well under a second."""
    bomb = _bomb_body()
    good = {"images": [_b64(_png((200, 20, 20)))], "k": 1}

    def send_bomb() -> tuple[int, dict, float]:
        started = time.perf_counter()
        status, answer = _http("POST", limited["predict"], raw=bomb)
        return status, answer, time.perf_counter() - started

    with Traffic(limited["predict"], good) as traffic:
        time.sleep(0.5)
        bombs: list[tuple[int, dict, float]] = []
        senders = [threading.Thread(target=lambda: bombs.append(send_bomb())) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        time.sleep(0.5)
    assert len(bombs) == 4, bombs
    latencies = [took for _, took in traffic.results]
    print(f"413s in {max(b[2] for b in bombs):.2f}s at most; good p99 {_p99(latencies):.2f}s")
    for status, answer, took in bombs:
        assert status == 413 and answer["error"] == "too_many_pixels", answer
        assert took < 1.0, f"the 413 took {took:.2f}s"
    statuses = {status for status, _ in traffic.results}
    assert statuses == {200} and len(latencies) > 10, (statuses, len(latencies))
    assert _p99(latencies) < 1.0, f"good requests' p99 {_p99(latencies):.2f}s"


def test_decoding_runs_off_the_event_loop(limited) -> None:
    """Two 4096 x 4096 PNGs (the whole pixel budget: about a second of decoding) are
    decoded while other requests go on being answered, not after."""
    heavy = {"images": [_encoded((BIG, BIG), "PNG", (9, 9, 9 + i)) for i in range(2)], "k": 1}
    good = {"inputs": np.zeros((1, *SHAPE)).tolist(), "k": 1}
    with Traffic(limited["predict"], good, threads=1) as traffic:
        time.sleep(0.3)
        started = time.perf_counter()
        status, answer = _http("POST", limited["predict"], heavy)
        heavy_s = time.perf_counter() - started
        time.sleep(0.3)
    assert status == 200 and len(answer["predictions"]) == 2, answer
    slowest = max(took for _, took in traffic.results)
    print(f"heavy request {heavy_s:.2f}s; slowest good request {slowest:.2f}s")
    assert {status for status, _ in traffic.results} == {200}
    # Decoding on the event loop, the slowest would wait out the whole decode (~heavy_s).
    assert slowest < max(0.25, heavy_s / 2), (slowest, heavy_s)


def test_deeply_nested_json_gets_422(limited) -> None:
    for raw in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        status, answer = _http("POST", limited["predict"], raw=raw)
        assert status == 422 and answer["error"] == "json_too_deep", answer


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_undocumented_image_formats_get_422(limited, fmt) -> None:
    for status, answer in _both_forms(limited["predict"], _image((20, 20), fmt)):
        assert status == 422 and answer["error"] == "unsupported_image_format", answer
        assert fmt in answer["detail"]


def test_documented_image_formats_are_served(limited) -> None:
    images = [_image((20, 20), fmt) for fmt in ("PNG", "JPEG", "BMP")]
    status, answer = _http(
        "POST", limited["predict"], {"images": [_b64(i) for i in images], "k": 1}
    )
    assert status == 200 and len(answer["predictions"]) == 3, answer
    for image, media in zip(images, ("image/png", "image/jpeg", "image/bmp"), strict=True):
        status, raw = _post(f"{limited['predict']}?k=1", image, media)
        assert status == 200 and len(raw["predictions"]) == 1, raw


def test_one_image_over_the_pixel_limit_gets_413(limited) -> None:
    for status, answer in _both_forms(limited["predict"], _image((BIG + 1, BIG), "PNG")):
        assert status == 413 and answer["error"] == "image_too_large", answer


def test_a_raw_image_body_is_answered_as_its_json_twin(limited) -> None:
    """The same PNG as the body (image/png, k in the query) and base64 in JSON: the same
    labels and probabilities; without `k` the default 3."""
    png = _png((200, 20, 20), size=31)
    status, raw = _post(f"{limited['predict']}?k=2", png, "image/png")
    assert status == 200, raw
    assert raw == _http("POST", limited["predict"], {"images": [_b64(png)], "k": 2})[1]
    status, answer = _post(limited["predict"], png, "image/png")
    assert status == 200 and len(answer["predictions"][0]) == 3, answer


@pytest.mark.parametrize(
    ("query", "raw", "status", "code"),
    [
        pytest.param("", b"", 422, "bad_image", id="empty"),
        pytest.param("", b"GIF89a garbage", 422, "bad_image", id="undecodable"),
        pytest.param("", _png((1, 2, 3))[:40], 422, "bad_image", id="truncated"),
        pytest.param("", b'{"images": []}', 422, "bad_image", id="json-as-image"),
        pytest.param("?k=0", _png((1, 2, 3)), 422, "invalid_request", id="k-zero"),
        pytest.param("?k=two", _png((1, 2, 3)), 422, "invalid_request", id="k-word"),
        pytest.param("?k=1.5", _png((1, 2, 3)), 422, "invalid_request", id="k-float"),
        pytest.param("?top=2", _png((1, 2, 3)), 422, "invalid_request", id="unknown-parameter"),
        pytest.param("", b"\0" * (MAX_PAYLOAD + 1), 413, "payload_too_large", id="payload"),
    ],
)
def test_bad_raw_image_requests_get_4xx_and_the_server_keeps_serving(
    limited, query, raw, status, code
) -> None:
    got, answer = _post(limited["predict"] + query, raw, "image/png")
    assert got == status and answer["error"] == code and answer["detail"], answer
    assert _post(limited["predict"], _png((1, 2, 3)), "image/png")[0] == 200


def test_raw_image_requests_need_the_token(limited) -> None:
    status, answer = http_json("POST", limited["predict"], raw=_png((1, 2, 3)), token=None,
                               content_type="image/png")  # fmt: skip
    assert status == 401 and answer["error"] == "unauthorized", answer


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_bodies_not_declared_json_get_415(limited, content_type) -> None:
    raw = json.dumps({"inputs": np.zeros((1, *SHAPE)).tolist()}).encode()
    status, answer = _post(limited["predict"], raw, content_type)
    assert status == 415 and answer["error"] == "unsupported_media_type", answer
    assert _post(limited["predict"], raw, "application/json; charset=utf-8")[0] == 200


@pytest.mark.parametrize("k", ["3", True, 2.0])
def test_k_must_be_an_integer(limited, k) -> None:
    body = {"inputs": np.zeros((1, *SHAPE)).tolist(), "k": k}
    status, answer = _http("POST", limited["predict"], body)
    assert status == 422 and answer["error"] == "invalid_request" and "k" in answer["detail"]


def test_metadata_lists_the_budgets(limited) -> None:
    limits = _http("GET", f"{limited['base']}/metadata")[1]["limits"]
    assert limits["max_decoded_pixels"] == 2 * BIG * BIG and limits["max_json_depth"] == 32
