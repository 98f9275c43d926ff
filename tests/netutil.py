"""Loopback helpers for the tests that start servers (a free port: serving.control.free_port)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def healthy(url: str) -> bool:
    """Whether the server at `url` answers its /health endpoint with 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def http_json(method: str, url: str, body: object = None, *, raw: bytes | None = None,
              token: str | None = None, timeout: float = 60,
              content_type: str = "application/json") -> tuple[int, dict]:  # fmt: skip
    """(status, the JSON answer) of a request with a JSON body (or `raw` bytes); 4xx and 5xx
    are answers too. A body that is not JSON comes back as {"text": ...}."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        text, status = err.read(), err.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"text": text.decode(errors="replace")}


@contextmanager
def served_app(args: dict[str, Any], app: str, token: str | None = None,
               timeout_s: float = 120) -> Iterator[str]:  # fmt: skip
    """Serve on a free loopback port with `serving.app` deployed as `app` (its build_app
    `args`), healthy; yields its base URL; Serve is shut down even when the test fails."""
    from ray import serve

    from serving.control import deploy, free_port, wait_healthy

    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(args, app)
        base = f"http://127.0.0.1:{port}/{app}"
        wait_healthy(base, token, timeout_s=timeout_s)
        yield base
    finally:
        serve.shutdown()
