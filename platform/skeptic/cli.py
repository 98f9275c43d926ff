"""The `skeptic` command line. Every sub-command has --help."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

# No outbound calls, ever: set before ray / mlflow / transformers are imported.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Keeping few checkpoints makes Tune snapshot its state often, and warn each time.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}

EXIT_BAD_INPUT = 2


def _cmd_studies(args: argparse.Namespace) -> int:
    from skeptic.study import all_studies

    for name, cls in all_studies().items():
        print(f"{name}\n  belief: {cls.belief}\n  paper:  {cls.paper}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from skeptic.spec import load_spec
    from skeptic.study import get_study

    study = get_study(args.study)
    spec = load_spec(
        study.name, study.defaults, study.Params, study.smoke if args.smoke else None, args.spec, args.set
    )
    if args.dry_run:
        from skeptic.runner import describe_plan

        print(describe_plan(study, spec))
        return 0
    from skeptic.runner import run_sweep

    command = "skeptic " + " ".join(shlex.quote(a) for a in args.argv)
    outcome = run_sweep(
        study,
        spec,
        tracking_uri=args.tracking_uri,
        address=args.address,
        storage=args.storage,
        verbose=args.verbose,
        command=command,
    )
    print(f"\nverdict: the belief {outcome.verdict.label.upper()}")
    print(textwrap.indent(outcome.verdict.summary, "  "))
    print(f"report:  {outcome.report}")
    print(f"mlflow:  parent run {outcome.parent_run_id} (skeptic ui to browse)")
    if outcome.champion_version:
        print(f"model:   models:/{study.name}@champion (version {outcome.champion_version})")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from skeptic.tracking import DEFAULT_ARTIFACTS, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--host", args.host, "--port", str(args.port),
        "--default-artifact-root", Path(DEFAULT_ARTIFACTS).resolve().as_uri(),
    ]  # fmt: skip
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    return subprocess.call(cmd)


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skeptic",
        description="Re-run deep-learning 'common beliefs' as tracked Ray Tune studies.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("studies", help="list the studies and the belief each one tests")
    p.set_defaults(func=_cmd_studies)

    p = sub.add_parser(
        "run",
        help="sweep a study on Ray Tune, track it in MLflow, judge it, register the champion",
        description="Sweep a study. Spec = study defaults <- --smoke <- --spec FILE <- --set.",
    )
    p.add_argument("study", help="study name (see `skeptic studies`)")
    p.add_argument("--spec", metavar="FILE", help="YAML spec overriding the study's defaults")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one spec value, e.g. --set sweep.seeds=3 --set train.epochs=5",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny sweep (a minute or two on 2 cores)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trials; start nothing")
    p.add_argument("--address", help="Ray cluster address (default: start Ray in-process)")
    p.add_argument("--storage", help="where Tune keeps results and checkpoints (default ./skeptic-runs)")
    p.add_argument("--verbose", action="store_true", help="show Tune's own progress table")
    _add_tracking(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1 for the tracked runs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    _add_tracking(p)
    p.set_defaults(func=_cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    from skeptic.spec import SpecError
    from skeptic.study import UnknownStudy

    try:
        return args.func(args)
    except (SpecError, UnknownStudy) as err:
        print(f"skeptic: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
