"""The `skeptic` command line. Every sub-command has --help."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

# No outbound calls, ever: set before ray / mlflow / transformers are imported.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    # MLflow's INFO lines ("Creating initial MLflow database tables...") repeat what Skeptic
    # prints itself; its warnings still show.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Keeping few checkpoints makes Tune snapshot its state often, and warn each time.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}

EXIT_BAD_INPUT = 2


def _cmd_studies(args: argparse.Namespace) -> int:
    from skeptic.study import BROKEN, all_studies

    for name, cls in all_studies().items():
        print(f"{name}\n  belief: {cls.belief}\n  paper:  {cls.paper}")
        for preset, about in cls.presets.items():
            print(f"  --preset {preset}: {about.about}")
    for module, why in BROKEN.items():
        print(f"error: study module {module} failed to import: {why}", file=sys.stderr)
    return 1 if BROKEN else 0


def _load(args: argparse.Namespace) -> tuple:
    from skeptic.spec import SpecError, load_spec
    from skeptic.study import get_study

    study = get_study(args.study)
    smoke = study.smoke if args.smoke else None
    preset = None
    if args.preset is not None:
        if args.preset not in study.presets:
            known = ", ".join(study.presets) or "none"
            raise SpecError(f"--preset: study {study.name} has no preset {args.preset!r} (presets: {known})")
        preset = (args.preset, study.presets[args.preset].spec)
    spec = load_spec(
        study.name, study.defaults, study.Params, smoke, args.spec, args.set, preset=preset
    )
    return study, spec


def _print_outcome(outcome: object) -> None:
    print(f"\nverdict: the belief {outcome.verdict.label.upper()}")
    print(textwrap.indent(outcome.verdict.summary, "  "))
    print(f"report:  {outcome.report}")
    from skeptic import review
    from skeptic.board import default_mlflow_url

    ui = default_mlflow_url(outcome.tracking_uri)
    page = review.run_page(outcome.experiment_id, outcome.parent_run_id)
    server = outcome.tracking_uri.startswith(("http://", "https://"))
    how = "" if server else " run `skeptic ui`, then"  # a local store has no UI running
    print(f"mlflow:  parent run {outcome.parent_run_id}:{how} open")
    print(f"         {ui}/{page}")
    registered = outcome.registration
    if registered is None:
        print("model:   none registered (no eligible trial with a checkpoint)")
    elif registered.moved:
        print(
            f"model:   models:/{outcome.study}@champion is now version {registered.version}"
            f" ({registered.reason})"
        )
    else:
        print(
            f"model:   registered as models:/{outcome.study}/{registered.version}; the champion"
            f" stays version {registered.champion} ({registered.reason}; --register latest"
            " moves it anyway)"
        )


def _cmd_run(args: argparse.Namespace) -> int:
    study, spec = _load(args)
    from skeptic.cluster import check_run_locations
    from skeptic.store import check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_store(uri)
    check_run_locations(uri, args.storage)
    if args.dry_run:
        from skeptic.planning import describe_plan

        print(describe_plan(study, spec, args.address))
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
        register=args.register,
    )
    _print_outcome(outcome)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from skeptic.runner import resume_sweep

    outcome = resume_sweep(
        args.sweep_id, storage=args.storage, address=args.address, verbose=args.verbose,
        register=args.register,
    )  # fmt: skip
    _print_outcome(outcome)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from skeptic import cluster
    from skeptic.store import check_store, resolve_tracking_uri

    study, spec = _load(args)
    from skeptic.preflight import preflight

    preflight(study, spec, local_data=False)  # the data lives on the cluster: checked there
    uri = resolve_tracking_uri(args.tracking_uri)
    address = cluster.cluster_address(args.address)
    cluster.check_job_locations(address, uri, args.storage)
    check_store(uri)
    job_id = cluster.submit(
        spec, address=address, tracking_uri=uri, storage=args.storage, verbose=args.verbose
    )
    print(f"submitted job {job_id} to {address}")
    print(f"follow it:  skeptic logs {job_id} --follow")
    print(f"runs:       {uri}  (experiment {spec.study})")
    print(
        f"sweeps:     {args.storage or cluster.DEFAULT_JOB_STORAGE} on the cluster's head node"
        " (Tune's results and checkpoints, the report)"
    )
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from skeptic import cluster

    for job in cluster.list_jobs(args.address):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        print(
            f"{job.submission_id or job.job_id}  {str(job.status).rsplit('.', 1)[-1]:9}  {started}  {job.entrypoint}"
        )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from skeptic import cluster

    info = cluster.job_status(args.address, args.job_id)
    print(
        f"{args.job_id}: {str(info.status).rsplit('.', 1)[-1]}"
        + (f" ({info.message})" if info.message else "")
    )
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from skeptic import cluster

    cluster.job_logs(args.address, args.job_id, args.follow)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from skeptic import cluster

    status = cluster.stop_job(args.address, args.job_id)
    print(f"{args.job_id}: {status}")
    return 0 if status in cluster.TERMINAL else 1


def _cmd_mlflow_server(args: argparse.Namespace) -> int:
    Path(args.artifacts_destination).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", args.backend_store_uri,
        "--artifacts-destination", Path(args.artifacts_destination).resolve().as_uri(),
        "--serve-artifacts", "--host", args.host, "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(
        f"MLflow tracking server on http://{args.host}:{args.port} (store {args.backend_store_uri})"
    )
    print(f"log to it with: --tracking-uri http://{args.host}:{args.port}")
    return _run_server(cmd, env)


def _run_server(cmd: list[str], env: dict[str, str]) -> int:
    """Run a server in the foreground until it exits or this command is stopped; then it
    goes with everything it started (`mlflow server` leaves its uvicorn workers behind
    otherwise). It stays in this process group, so a Ctrl-C or a kill of the group reaches
    it as well."""
    import psutil

    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for each in tree:
                with contextlib.suppress(psutil.Error):
                    each.terminate()
            _, alive = psutil.wait_procs(tree, timeout=10)
            for each in alive:
                with contextlib.suppress(psutil.Error):
                    each.kill()


def _cmd_board(args: argparse.Namespace) -> int:
    from skeptic import board
    from skeptic.store import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    out = Path(args.out) if args.out else board.default_out(uri)
    page = board.build_board(uri, out, args.mlflow_url or board.default_mlflow_url(uri))
    print(f"board: wrote {page.resolve().as_uri()}")
    return 0


def _ui_board(uri: str, ui_url: str) -> str:
    """`skeptic ui` (re)builds the board beside the store, its links pointing at this UI."""
    from skeptic import board
    from skeptic.spec import SpecError

    try:
        page = board.build_board(uri, board.default_out(uri), ui_url, say=lambda _: None)
    except (SpecError, OSError) as err:  # the UI starts all the same
        return f"not built ({err})"
    return page.resolve().as_uri()


def _cmd_ui(args: argparse.Namespace) -> int:
    from skeptic.store import DEFAULT_ARTIFACTS, artifacts_root, check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_store(uri)
    artifacts = artifacts_root(uri) or Path(DEFAULT_ARTIFACTS).resolve()
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--host", args.host, "--port", str(args.port),
        "--default-artifact-root", artifacts.as_uri(), "--workers", "1",
    ]  # fmt: skip
    # One worker and no job runner: 2 processes and 0.4 GB instead of 15 and 2.3 GB.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ui_url = f"http://{shown_host}:{args.port}"
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    print(f"board:   {_ui_board(uri, ui_url)} (each study's runs, verdict and champion)")
    return _run_server(cmd, env)


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name (see `skeptic studies`)")
    p.add_argument("--spec", metavar="FILE", help="YAML spec overriding the study's defaults")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one spec value, e.g. --set sweep.seeds=3 --set train.epochs=5",
    )  # fmt: skip
    p.add_argument(
        "--preset", metavar="NAME",
        help="a named spec the study ships, e.g. paper (the paper's setting; see `skeptic studies`)",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny sweep (a minute or two on 2 cores)")
    p.add_argument(
        "--storage", help="where Tune keeps results and checkpoints (default ./skeptic-runs)"
    )
    p.add_argument("--verbose", action="store_true", help="show Tune's own progress table")


def _add_register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--register", choices=("best", "latest"), default="best",
        help="move the study's champion alias to this sweep's best trial only if it is at "
        "least as good as the current champion (best, the default) or always (latest)",
    )  # fmt: skip


def _add_job_args(p: argparse.ArgumentParser, job: bool = True) -> None:
    p.add_argument(
        "--address", help="Ray dashboard address, http://HEAD:8265 (default $RAY_ADDRESS)"
    )
    if job:
        p.add_argument("job_id", help="the job's submission id (see `skeptic jobs`)")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )


COMMANDS_GROUP = "skeptic.commands"


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands other packages add (`serve` and `query` come from `serving`): each entry
    point of COMMANDS_GROUP is a function taking the sub-commands object. Found, like the
    studies, by discovery, so the core never imports what plugs into it."""
    import importlib.metadata

    entries = importlib.metadata.entry_points(group=COMMANDS_GROUP)
    for entry in sorted(entries, key=lambda e: e.name):  # a stable order in --help
        try:
            entry.load()(sub)
        except Exception as err:  # noqa: BLE001  (one broken plugin must not break the others)
            why = (str(err).splitlines() or [""])[0]
            print(
                f"skeptic: error: command plugin {entry.name!r} ({entry.value}) failed to load: "
                f"{type(err).__name__}: {why}",
                file=sys.stderr,
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
        description="Sweep a study. Spec = study defaults <- --preset <- --smoke <- --spec FILE <- --set.",
    )
    _add_spec_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the trials; start nothing"
    )
    p.add_argument(
        "--address",
        help="Ray cluster to run on, e.g. ray://HEAD:10001 or auto (default: in-process)",
    )
    _add_tracking(p)
    _add_register(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted sweep (only its unfinished trials)")
    p.add_argument("sweep_id", help="the sweep id printed by `skeptic run` (its folder's name)")
    p.add_argument("--storage", help="the --storage the sweep ran with (default ./skeptic-runs)")
    p.add_argument("--address", help="Ray cluster to run on (default: in-process)")
    p.add_argument("--verbose", action="store_true", help="show Tune's own progress table")
    _add_register(p)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("submit", help="submit `skeptic run` to a Ray cluster as a Ray job")
    _add_spec_args(p)
    _add_job_args(p, job=False)
    _add_tracking(p)
    p.set_defaults(func=_cmd_submit)

    for name, func, text in [
        ("status", _cmd_status, "show a submitted job's status"),
        ("stop", _cmd_stop, "stop a submitted job (its MLflow runs end KILLED)"),
    ]:
        p = sub.add_parser(name, help=text)
        _add_job_args(p)
        p.set_defaults(func=func)
    p = sub.add_parser("logs", help="print a submitted job's logs")
    _add_job_args(p)
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=_cmd_logs)
    p = sub.add_parser("jobs", help="list the jobs submitted to a Ray cluster")
    _add_job_args(p, job=False)
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("mlflow-server", help="run an MLflow tracking server that jobs can log to")
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow-server.db",
                   help="SQLite or PostgreSQL URI (default sqlite:///mlflow-server.db)")  # fmt: skip
    p.add_argument("--artifacts-destination", default="mlartifacts-server",
                   help="folder (or s3:// URI) for artifacts, served through the server")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.set_defaults(func=_cmd_mlflow_server)

    from skeptic.board import BOARD_DIR, DEFAULT_UI

    p = sub.add_parser(
        "board",
        help="write one offline page of every study: belief, verdict, evidence, history",
        description="Write DIR/index.html from a tracking store: per study, the belief and "
        "its paper, the latest finished sweep's verdict and why (its comparisons, their "
        "decisions and forest plot), how the verdict moved across the study's sweeps (unfinished "
        "ones marked as such), and links to the parent runs and the champion in the MLflow UI. "
        "The page is one self-contained file (plots embedded, no script, nothing loaded from "
        "the network): it opens from file:// on a machine without internet. `skeptic ui` "
        "rebuilds it beside the store, linked to that UI.",
    )  # fmt: skip
    _add_tracking(p)
    p.add_argument(
        "--out", metavar="DIR",
        help=f"folder to write index.html into (default: {BOARD_DIR}/ beside a SQLite store, "
        f"./{BOARD_DIR} for a server)",
    )  # fmt: skip
    p.add_argument(
        "--mlflow-url", metavar="URL",
        help="the MLflow UI the page links to (default: the tracking server itself, else "
        f"{DEFAULT_UI}, where `skeptic ui` serves)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_board)

    p = sub.add_parser(
        "ui", help="open the MLflow UI on 127.0.0.1 for the tracked runs (and build the board)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    _add_tracking(p)
    p.set_defaults(func=_cmd_ui)

    _add_plugin_commands(sub)
    from skeptic.quickstart import add_command as add_quickstart_command

    add_quickstart_command(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a sweep (a sweep turns it into a clean stop of its own)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _user_error(err: Exception) -> str | None:
    """The one line to show for a mistake in the user's input or set-up; None for a bug."""
    from mlflow.exceptions import MlflowException
    from ray.exceptions import AuthenticationError

    from skeptic.spec import SpecError
    from skeptic.study import UnknownStudy

    if isinstance(err, SpecError | UnknownStudy):
        return str(err)
    if isinstance(err, AuthenticationError):
        return f"the Ray cluster refused this client: {str(err).splitlines()[0]}"
    if isinstance(err, ConnectionError):
        return f"cannot connect: {err}"
    if isinstance(err, MlflowException):
        return f"MLflow: {err.message.splitlines()[0]}"
    return None


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run_command(args)
    finally:
        if previous is not None:  # a caller's own handler (tests, a notebook) comes back
            signal.signal(signal.SIGTERM, previous)


def _run_command(args: argparse.Namespace) -> int:
    """Run the command; every error is one line (the traceback with SKEPTIC_DEBUG=1)."""
    from skeptic.interrupt import Interrupted
    from skeptic.study import SweepFailed

    debug = os.environ.get("SKEPTIC_DEBUG") == "1" or getattr(args, "verbose", False)
    try:
        return args.func(args)
    except Interrupted as err:
        print(f"skeptic: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt as err:
        print("\nskeptic: interrupted", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except SweepFailed as err:
        print(f"skeptic: sweep failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001  (no raw traceback for any error; see below)
        if debug:
            traceback.print_exc()
        message = _user_error(err)
        if message is not None:
            print(f"skeptic: error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        hint = "" if debug else " (SKEPTIC_DEBUG=1 shows the traceback)"
        print(f"skeptic: internal error: {type(err).__name__}: {err}{hint}", file=sys.stderr)
        return 1
