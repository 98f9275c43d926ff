"""Loopback helpers for the tests that start servers (a free port: serving.control.free_port)."""

from __future__ import annotations

import urllib.request


def healthy(url: str) -> bool:
    """Whether the server at `url` answers its /health endpoint with 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
