"""`skeptic quickstart`: the main job end to end, for a newcomer's first minute.

A smoke sweep of a study (tracked in MLflow, its champion registered), the champion served
on 127.0.0.1, one generated image sent to it over HTTP, then serving stopped again
(unless --keep-serving). Each step is the ordinary CLI command run in its own process, so
what it prints is what the newcomer will type next.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="smoke-run a study, serve its champion on 127.0.0.1, answer one query",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--study", default="large_batch", help="study to run (default large_batch)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: ./mlflow.db)")
    p.add_argument("--keep-serving", action="store_true", help="leave the model served afterwards")
    p.set_defaults(func=cmd_quickstart)


def cmd_quickstart(args: argparse.Namespace) -> int:
    tracking = ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
    code = _step("1/3", "run", args.study, "--smoke", *tracking)
    if code == 0:
        code = _step("2/3", "serve", f"{args.study}@champion", *tracking)
    if code != 0:
        return code
    try:
        with tempfile.TemporaryDirectory() as tmp:
            image, label = _sample_image(args.study, Path(tmp))
            print(f"\n(a generated {label!r} the model never saw)", flush=True)
            code = _step("3/3", "query", args.study, str(image))
    finally:
        if not args.keep_serving:
            _step("end", "serve", "--shutdown", "all")
    if code == 0:
        print(
            f"\ndone. Browse the runs: skeptic ui. Serve again: skeptic serve {args.study}@champion"
        )
    return code


def _step(label: str, *argv: str) -> int:
    """One ordinary CLI command in its own process, exactly as a user would type it."""
    print(f"\n=== {label}  skeptic {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, "-m", "skeptic", *argv], check=False).returncode


def _sample_image(study_name: str, folder: Path) -> tuple[Path, str]:
    """One held-out shape (a seed the smoke data never used) as a PNG, and its class name."""
    from skeptic.data import CLASS_NAMES, make_shapes
    from skeptic.spec import load_spec
    from skeptic.study import get_study

    study = get_study(study_name)
    spec = load_spec(study.name, study.defaults, study.Params, study.smoke)
    x, y = make_shapes(1, seed=spec.data.seed + 12345, size=spec.data.image_size)
    pixels = (x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    path = folder / "query.png"
    Image.fromarray(pixels).save(path)
    return path, CLASS_NAMES[int(y[0])]
