#!/usr/bin/env bash
# Create .venv/ in the repo root and install Skeptic into it (idempotent).
# torch is pinned and installed first, in its own pip call: an unpinned torch
# pulls a multi-GB CUDA build, and torchvision must match torch (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# This machine's pip config names local indexes that may be absent; hide that noise only.
pip() {
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip install "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
pip install -e ".[dev]"
echo "skeptic installed: .venv/bin/skeptic"
