"""`skeptic quickstart`: the main job end to end, for a newcomer's first minute.

A smoke sweep of a study (tracked in MLflow, its champion registered), the champion served
on 127.0.0.1, one generated image sent to it over HTTP, then serving stopped again
(unless --keep-serving). Each step is the ordinary CLI command run in its own process, so
what it prints is what the newcomer will type next.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# What the quickstart adds to a study's smoke spec so that the model it serves answers
# correctly: the smoke alone (a few hundred 8x8 images, 2 epochs) checks the plumbing and
# trains a model that is right about a third of the time. For large_batch: more data, larger
# images, a wider net and a few more epochs: about 90% right on fresh images, for ~15 s more
# training on 2 cores.
QUICKSTART_SETS: dict[str, tuple[str, ...]] = {
    "large_batch": (
        "data.size=24000", "data.image_size=16", "train.width=128", "train.epochs=4",
    ),
}  # fmt: skip
QUERY_SEED_OFFSET = 12345  # the query image's seed: the study's data seed + this, never trained on


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="smoke-run a study, serve its champion on 127.0.0.1, answer one query",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--study", default="large_batch", help="study to run (default large_batch)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    p.add_argument("--port", type=int, help="HTTP port to serve on (default 8000)")
    p.add_argument("--keep-serving", action="store_true", help="leave the model served afterwards")
    p.set_defaults(func=cmd_quickstart)


def cmd_quickstart(args: argparse.Namespace) -> int:
    tracking = ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
    sets = QUICKSTART_SETS.get(args.study, ())
    overrides = [arg for s in sets for arg in ("--set", s)]
    port = ["--port", str(args.port)] if args.port else []
    url = ["--url", f"http://127.0.0.1:{args.port}"] if args.port else []
    code = _step("1/3", "run", args.study, "--smoke", *overrides, *tracking)[0]
    if code == 0:
        code = _step("2/3", "serve", f"{args.study}@champion", *tracking, *port)[0]
    if code != 0:
        return code
    try:
        code = _query(args.study, sets, url)
    finally:
        if not args.keep_serving:
            _step("end", "serve", "--shutdown", "all")
    if code == 0:
        print(
            f"\ndone. Browse the runs: skeptic ui. Serve again: skeptic serve {args.study}@champion"
        )
    return code


def _query(study: str, sets: tuple[str, ...], url: list[str]) -> int:
    """Step 3: ask the served model about one held-out image; say what it really shows."""
    with tempfile.TemporaryDirectory() as tmp:
        image, label = _sample_image(study, Path(tmp), sets)
        print(f"\n(a generated {label!r} the model never saw)", flush=True)
        code, out = _step("3/3", "query", study, str(image), *url, capture=True)
    if code == 0:
        print(f"\n{_answer_line(label, out)}", flush=True)
    return code


def _step(label: str, *argv: str, capture: bool = False) -> tuple[int, str]:
    """One ordinary CLI command in its own process, exactly as a user would type it; its exit
    code and (with `capture`, still shown) its standard output."""
    print(f"\n=== {label}  skeptic {' '.join(argv)}", flush=True)
    cmd = [sys.executable, "-m", "skeptic", *argv]
    if not capture:
        return subprocess.run(cmd, check=False).returncode, ""
    done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    return done.returncode, done.stdout


def _answer_line(true_label: str, answer_json: str) -> str:
    """`true label: circle; the model's top answer: circle (p=0.83)` from `skeptic query`'s
    JSON (a line saying so if the answer cannot be read)."""
    try:
        top: dict[str, Any] = json.loads(answer_json)["predictions"][0][0]
        answer = f"{top['label']} (p={float(top['probability']):.2f})"
    except (ValueError, KeyError, IndexError, TypeError):
        answer = "(could not read the answer above)"
    return f"true label: {true_label}; the model's top answer: {answer}"


def _sample_image(study_name: str, folder: Path, sets: tuple[str, ...] = ()) -> tuple[Path, str]:
    """One held-out shape as a PNG, and its class name: drawn like the run's data (the same
    spec: domain, image size) from a seed the run never used."""
    from skeptic.data import CLASS_NAMES, make_shapes
    from skeptic.spec import load_spec
    from skeptic.study import get_study

    study = get_study(study_name)
    spec = load_spec(study.name, study.defaults, study.Params, study.smoke, sets=list(sets))
    data = spec.data
    # One image per class, shuffled (make_shapes gives exact class counts, so a single
    # image would always be class 0); the first is the query: its class is the seed's draw.
    x, y = make_shapes(
        len(CLASS_NAMES), seed=data.seed + QUERY_SEED_OFFSET,
        domain=data.domain or "plain", size=data.image_size,
    )  # fmt: skip
    pixels = (x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    path = folder / "query.png"
    Image.fromarray(pixels).save(path)
    return path, CLASS_NAMES[int(y[0])]
