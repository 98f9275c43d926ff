"""`skeptic serve` and `skeptic query`: serve registered models with Ray Serve, query them.

The serving app owns its command line: `skeptic` finds these commands through the entry
point `serving = "serving.cli:add_commands"` of the group `skeptic.commands` (see
pyproject.toml), so the core never imports `serving`.

    skeptic serve large_batch@champion            # start (or reuse) a local Ray, deploy, wait
    skeptic serve large_batch/3 --name lb_v3      # a specific version, side by side
    skeptic serve --config serving/large_batch.yaml
    skeptic serve --list
    skeptic serve --shutdown large_batch          # or: --shutdown all (also stops our Ray head)
    skeptic query large_batch cat.png --k 3
    skeptic query text_model --route embed --json '{"texts": ["hello"]}'

Nothing here imports ray at module level: the Ray client environment (loopback, token
authentication) has to be decided before `import ray`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from skeptic.spec import SpecError

TOKEN_ENV = "SKEPTIC_API_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_ROUTE = "predict"  # the labeller's; a study may declare others (Study.endpoints)
# A route is one URL segment: "../metadata" or "a/b" would reach another route or app.
_ROUTE = re.compile(r"^[A-Za-z0-9_-]+$")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `serve` and `query` to the `skeptic` parser's sub-commands."""
    p = sub.add_parser(
        "serve",
        help="serve a registered model over HTTP with Ray Serve (or list / shut down served apps)",
        description=(
            "Deploy models:/NAME@ALIAS or models:/NAME/VERSION as a Ray Serve app at /<name>. "
            "Without --address and without a running local Ray, starts a Ray head on "
            "127.0.0.1 that outlives this command (stop it with --shutdown all). "
            "Re-running with the same name rolls the app over to the model the reference "
            "now points at."
        ),
    )
    p.add_argument(
        "model", nargs="?", metavar="MODEL_REF",
        help="registered model: NAME@ALIAS (e.g. large_batch@champion), NAME/VERSION "
        "(e.g. large_batch/3), or NAME (= NAME@champion)",
    )  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--config", metavar="FILE",
        help="deploy a Ray Serve config file instead (e.g. serving/large_batch.yaml)",
    )  # fmt: skip
    mode.add_argument("--list", action="store_true", help="list the served apps and exit")
    mode.add_argument(
        "--shutdown", metavar="NAME|all",
        help="delete one served app, or all of them and the Ray head `skeptic serve` started",
    )  # fmt: skip
    p.add_argument("--name", help="app name and route prefix /NAME (default: the model name)")
    p.add_argument("--host", help="address the HTTP proxy binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument(
        "--replicas", type=int, metavar="N",
        help="fixed number of replicas (default: one per core, at most 8; 1 with --replica-gpus)",
    )  # fmt: skip
    scale.add_argument(
        "--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas"
    )
    p.add_argument(
        "--address",
        help="Ray cluster to use (default: $RAY_ADDRESS, else the local one, else start one)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    p.add_argument(
        "--token",
        help=f"require this API token (Authorization: Bearer) on every request "
        f"(default: ${TOKEN_ENV}; none means no token check)",
    )
    p.add_argument(
        "--max-batch-size", type=int, metavar="N",
        help="requests combined into one forward pass (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--batch-wait-ms", type=float, metavar="MS",
        help="longest wait for a batch to fill, in milliseconds (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--no-batching", action="store_true", help="one forward pass per request (no batching)"
    )
    p.add_argument(
        "--max-payload-bytes", type=int, metavar="N",
        help="largest request body; larger gets 413 (default 4 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--max-batch-items", type=int, metavar="N",
        help="most items in one request; more gets 413 (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--max-decoded-pixels", type=int, metavar="N",
        help="most image pixels (width x height, summed) in one request; more gets 413 "
        "(default 33554432)",
    )  # fmt: skip
    p.add_argument(
        "--replica-cpus", type=float, metavar="N", help="CPUs reserved per replica (default 0.5)"
    )
    p.add_argument(
        "--access-log", action="store_true",
        help="log every request in the replica logs (off by default: it costs throughput)",
    )  # fmt: skip
    p.add_argument(
        "--replica-gpus", type=float, metavar="N",
        help="GPUs per replica (default 0: CPU inference; > 0 runs the model on CUDA)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=float, default=300, metavar="S",
        help="seconds to wait for the app to answer (default 300)",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)

    q = sub.add_parser(
        "query",
        help="ask a served model for the top-k labels of images or tensors, or call a route "
        "its study declares (--route)",
        description=(
            "POST to <url>/<name>/<route> (default route: predict, the top-k labels of IMAGE "
            "files or --json tensors) and print the JSON answer. A study that declares its "
            "own endpoints (a text model, say) is asked with --route and --json, e.g. "
            'skeptic query beliefs --route embed --json \'{"statements": ["..."]}\'; '
            "GET <url>/<name>/metadata lists a served model's routes and their schemas."
        ),
    )
    q.add_argument("name", help="served app name (its route prefix), e.g. large_batch")
    q.add_argument(
        "images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, BMP; --route predict)"
    )
    q.add_argument(
        "--json", metavar="JSON|@FILE",
        help='raw request body, e.g. \'{"inputs": [[[...]]]}\' or @request.json',
    )  # fmt: skip
    q.add_argument(
        "--route", default=DEFAULT_ROUTE, metavar="NAME",
        help=f"the route to POST to: one URL segment, e.g. embed (default {DEFAULT_ROUTE}); "
        "see the model's /metadata \"endpoints\"",
    )  # fmt: skip
    q.add_argument(
        "--k", type=int, help="labels per item (default: the server's, 3; --route predict)"
    )
    q.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    q.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    q.add_argument(
        "--timeout", type=float, default=60, metavar="S", help="HTTP timeout (default 60)"
    )
    q.set_defaults(func=cmd_query)


# --- skeptic serve ------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None


def _fail(message: str) -> int:
    print(f"skeptic: error: {message}", file=sys.stderr)
    return 1


def _serve_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `serving.app:build_app` args the flags stand for (validated here: exit 2)."""
    out: dict[str, Any] = {}
    if args.max_batch_size is not None:
        out["max_batch_size"] = args.max_batch_size
    if args.batch_wait_ms is not None:
        out["batch_wait_timeout_s"] = args.batch_wait_ms / 1000
    if args.no_batching:
        out["batching"] = False
    if args.access_log:
        out["access_log"] = True
    if args.max_payload_bytes is not None:
        out["max_payload_bytes"] = args.max_payload_bytes
    if args.max_batch_items is not None:
        out["max_batch_items"] = args.max_batch_items
    if args.max_decoded_pixels is not None:
        out["max_decoded_pixels"] = args.max_decoded_pixels
    if args.replicas is not None:
        out["num_replicas"] = args.replicas
    if args.autoscale:
        lo, sep, hi = args.autoscale.partition(":")
        try:
            low, high = int(lo), int(hi)
        except ValueError:
            low = high = -1
        if not sep or low < 0 or high < max(low, 1):
            raise SpecError(
                f"--autoscale {args.autoscale!r}: give MIN:MAX with 0 <= MIN <= MAX, MAX >= 1"
            )
        batch = out.get("max_batch_size", 32)
        out["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
            # a batching replica is busy, not overloaded, with a batch's worth of requests
            "target_ongoing_requests": max(2, batch // 2) if not args.no_batching else 2,
        }  # fmt: skip
    actor: dict[str, Any] = {}
    if args.replica_cpus is not None:
        actor["num_cpus"] = args.replica_cpus
    if args.replica_gpus:
        actor["num_gpus"] = args.replica_gpus
        actor.setdefault("num_cpus", 1)
    if actor:
        actor.setdefault("num_cpus", 1)
        out["ray_actor_options"] = actor
    from pydantic import ValidationError

    from serving.app import ServeArgs  # imports ray: the caller set the client env first

    try:
        ServeArgs.model_validate({"model": "x@y", **out})
    except ValidationError as err:
        raise SpecError(_pydantic_problems(err)) from None
    return out


def _pydantic_problems(err: Any) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def _check_flags(args: argparse.Namespace) -> None:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise SpecError(f"--port {args.port}: give a port between 1 and 65535")
    if args.replicas is not None and args.replicas < 1:
        raise SpecError(f"--replicas {args.replicas}: give at least 1")
    if args.list or args.shutdown:
        extra = [f for f in ("model", "config") if getattr(args, f)]
        if extra:
            raise SpecError(f"--list/--shutdown take no {' or '.join(extra)}")
    elif args.config and args.model:
        raise SpecError("give MODEL_REF or --config FILE, not both")
    elif not args.config and not args.model:
        raise SpecError("give MODEL_REF, --config FILE, --list or --shutdown NAME|all")


def _plan_cluster(args: argparse.Namespace, may_start: bool) -> tuple[str | None, Any]:
    """Which cluster to use, decided before `import ray` (and before anything starts):
    (address, head state) or (None, None) meaning "start a local head". Applies the
    matching client environment to this process."""
    from serving.control import client_env, find_local_cluster

    address = args.address or os.environ.get("RAY_ADDRESS") or None
    state = None
    if address is None:
        found = find_local_cluster()
        if found is not None:
            address, state = found
        elif not may_start:
            return None, None
    target = address or "127.0.0.1:0"  # a head we start binds to loopback
    for key, value in client_env(target, state).items():
        os.environ.setdefault(key, value)
    if address is None and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"  # what start_head gives the head
    return address, state


def _ensure_cluster(address: str | None, state: Any) -> tuple[str, Any]:
    from serving.control import connect, start_head

    if address is None:
        print("No Ray cluster is running: starting a local Ray head on 127.0.0.1 ...", flush=True)
        state = start_head()
        print(
            f"Started a Ray head at {state.address} (pid {state.pid}, dashboard "
            f"{state.dashboard}, log {state.log}); it keeps running after this command: "
            "stop it with `skeptic serve --shutdown all`.",
            flush=True,
        )
        address = state.address
    connect(address, state)
    return address, state


def _quiet_serve_logs() -> None:
    import logging

    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _resolve_or_exit(ref_text: str, uri: str) -> Any:
    from serving.model_ref import ModelRefError, check_safe_format, parse_model_ref, resolve
    from skeptic.store import check_store

    check_store(uri, must_exist=True)
    try:
        resolved = resolve(parse_model_ref(ref_text), uri)
        check_safe_format(resolved, uri)
    except ModelRefError as err:
        raise SpecError(str(err)) from None
    return resolved


def cmd_serve(args: argparse.Namespace) -> int:
    _check_flags(args)
    from serving.control import ServeControlError

    joined_here = not ("ray" in sys.modules and sys.modules["ray"].is_initialized())
    try:
        if args.list:
            return _serve_list(args)
        if args.shutdown:
            return _serve_shutdown(args)
        if args.config:
            return _serve_config(args)
        return _serve_model(args)
    except ServeControlError as err:
        return _fail(str(err))
    finally:
        if joined_here:  # a caller's own Ray session (a notebook, the tests) is left alone
            _disconnect()


def _disconnect() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _serve_model(args: argparse.Namespace) -> int:
    from serving.model_ref import ModelRefError, check_app_name, parse_model_ref
    from skeptic.store import resolve_tracking_uri

    # 1. Everything that can be checked before anything starts.
    try:
        ref = parse_model_ref(args.model)
        name = check_app_name(args.name or ref.name)
    except ModelRefError as err:
        raise SpecError(str(err)) from None
    # Decides (starts nothing) and sets Ray's client environment, which Ray reads when it
    # is imported: before _serve_args, whose ServeArgs imports ray. Later, a driver on a
    # machine with a network address joins the loopback head at that address, and fails.
    address, state = _plan_cluster(args, may_start=True)
    options = _serve_args(args)
    uri = resolve_tracking_uri(args.tracking_uri)
    resolved = _resolve_or_exit(args.model, uri)
    token = _token(args)
    host = args.host or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            f"warning: serving on {host} without an API token: anyone who can reach this "
            f"machine can query the model (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    # 2. Cluster, HTTP proxy, app.
    from serving.control import deploy, http_base, start_serve, wait_healthy

    address, state = _ensure_cluster(address, state)
    _quiet_serve_logs()
    host, port = start_serve(args.host, args.port)
    print(f"Deploying {resolved.ref} (version {resolved.version}) as /{name} ...", flush=True)
    serve_args = {
        "model": str(ref), "name": name, "tracking_uri": uri, "token": token, **options,
    }  # fmt: skip
    deploy(serve_args, name, timeout_s=args.timeout)
    base = f"{http_base(host, port)}/{name}"
    health = wait_healthy(base, token, timeout_s=args.timeout)
    print(f"Serving models:/{resolved.name}/{health.get('version')} at {base}")
    routes = _served_routes(base, token)
    posts = "   ".join(f"POST {base}/{route}" for route in routes)
    print(f"  {posts}   GET {base}/metadata   GET {base}/healthz   docs: {base}/docs")
    if routes == [DEFAULT_ROUTE]:
        print(f"  try: skeptic query {name} IMAGE.png --url {http_base(host, port)}")
    else:
        print(
            f"  try: skeptic query {name} --route {routes[0]} --json '{{...}}' "
            f"--url {http_base(host, port)}   (request schemas: {base}/metadata)"
        )
    if token:
        print("  every request needs: Authorization: Bearer <token>")
    print(f"  stop: skeptic serve --shutdown {name}   (or --shutdown all)")
    return 0


def _served_routes(base: str, token: str | None) -> list[str]:
    """The POST routes the app answers (its /metadata "endpoints"): the labeller's
    /predict, or those its study declares."""
    from serving.control import get

    try:
        status, body = get(f"{base}/metadata", token, timeout=10)
    except (OSError, ValueError):
        return [DEFAULT_ROUTE]
    endpoints = body.get("endpoints") if status == 200 and isinstance(body, dict) else None
    return list(endpoints) if isinstance(endpoints, dict) and endpoints else [DEFAULT_ROUTE]


def _serve_config(args: argparse.Namespace) -> int:
    import yaml

    from serving.control import (
        http_base,
        serve_client,
        start_serve,
        wait_apps,
        wait_healthy,
    )
    from skeptic.store import resolve_tracking_uri

    path = Path(args.config)
    if not path.is_file():
        raise SpecError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not raw.get("applications"):
        raise SpecError(
            f"{path}: a Serve config needs `applications:` (see serving/large_batch.yaml)"
        )
    address, state = _plan_cluster(args, may_start=True)
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from serving.api import token_digest
    from serving.app import ServeArgs

    token = _token(args)
    default_uri = resolve_tracking_uri(args.tracking_uri)
    http = dict(raw.get("http_options") or {})
    http["host"] = args.host or http.get("host") or "127.0.0.1"  # loopback unless told
    http["port"] = args.port or http.get("port") or 8000
    raw["http_options"] = http
    ours = []
    for app in raw["applications"]:
        if not isinstance(app, dict) or app.get("import_path") != "serving.app:build_app":
            continue
        app_args = app.setdefault("args", {}) or {}
        app["args"] = app_args
        env_vars = (app.get("runtime_env") or {}).get("env_vars") or {}
        uri = app_args.get("tracking_uri") or env_vars.get("MLFLOW_TRACKING_URI")
        if not uri:
            app_args["tracking_uri"] = uri = default_uri
        if token and not (app_args.get("token") or app_args.get("token_sha256")):
            app_args["token_sha256"] = token_digest(token)  # never the token itself
        try:
            ServeArgs.model_validate(app_args)
        except ValidationError as err:
            raise SpecError(f"{path}: app {app.get('name')!r}: {_pydantic_problems(err)}") from None
        resolved = _resolve_or_exit(app_args["model"], uri)
        ours.append((app.get("name"), app.get("route_prefix"), resolved))
    try:
        config = ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{path}: {_pydantic_problems(err)}") from None

    _ensure_cluster(address, state)
    _quiet_serve_logs()
    host, port = start_serve(http["host"], http["port"], str(config.proxy_location.value))
    names = [a.name for a in config.applications]
    print(f"Deploying {', '.join(names)} from {path} ...", flush=True)
    serve_client().deploy_apps(config)
    failed = wait_apps(names, timeout_s=args.timeout)
    if failed:
        return _fail("; ".join(f"app {n!r} failed: {why}" for n, why in failed.items()))
    for name, prefix, resolved in ours:
        if prefix:
            base = f"{http_base(host, port)}{prefix.rstrip('/')}"
            health = wait_healthy(base, token, timeout_s=args.timeout)
            print(f"Serving models:/{resolved.name}/{health.get('version')} as {name!r} at {base}")
    for name in set(names) - {n for n, _, _ in ours}:
        print(f"Deployed {name!r}")
    return 0


def _connect_existing(args: argparse.Namespace) -> str | None:
    from serving.control import connect

    address, state = _plan_cluster(args, may_start=False)
    if address is None:
        return None
    connect(address, state)
    return address


def _serve_list(args: argparse.Namespace) -> int:
    try:
        address = _connect_existing(args)
        if address is None:
            print("No Ray cluster is running: nothing is served.")
            return 0
        from serving.control import get, http_base, list_apps, serve_client

        client = serve_client()
        if client is None:
            print(f"Serve is not running on the Ray cluster at {address}.")
            return 0
        base = http_base(client.http_config.host, client.http_config.port)
        rows = list_apps()
        if not rows:
            print(f"No apps are served (Serve HTTP on {base}).")
            return 0
        token = _token(args)
        print(f"{'NAME':<20} {'STATUS':<14} {'VERSION':<8} URL")
        for row in rows:
            version = "-"
            if row["route_prefix"]:
                try:
                    status, body = get(f"{base}{row['route_prefix']}/metadata", token, timeout=3)
                    if status == 200 and isinstance(body, dict):
                        version = f"{body.get('name')}/{body.get('version')}"
                    elif status == 401:
                        version = "(token?)"
                except OSError:
                    pass
            url = f"{base}{row['route_prefix']}" if row["route_prefix"] else "(no HTTP route)"
            print(f"{row['name']:<20} {row['status']:<14} {version:<8} {url}")
            if row["message"] and row["status"] != "RUNNING":
                print(f"  {row['message'][:300]}")
        return 0
    finally:
        _disconnect()


def _serve_shutdown(args: argparse.Namespace) -> int:
    from serving.control import read_state, stop_head

    target = args.shutdown
    try:
        address = _connect_existing(args)
        if address is None:
            print("No Ray cluster is running: nothing to shut down.")
            return 0
        from serving.control import delete_app, list_apps, shutdown_serve

        if target != "all":
            names = [r["name"] for r in list_apps()]
            if target not in names:
                raise SpecError(
                    f"no served app named {target!r} (served: {', '.join(names) or 'none'})"
                )
            delete_app(target)
            print(f"Deleted the app {target!r}.")
            return 0
        shutdown_serve()
        print(f"Shut down Serve (all apps) on the Ray cluster at {address}.")
    finally:
        _disconnect()
    state = read_state()
    if state is not None and state.address == address:
        killed = stop_head(state)
        extra = f"; killed leftover pids {killed}" if killed else ""
        print(f"Stopped the Ray head skeptic serve started (pid {state.pid}){extra}.")
    else:
        print(f"Left the Ray cluster at {address} running (skeptic serve did not start it).")
    return 0


# --- skeptic query -------------------------------------------------------------------------------


def _check_route(args: argparse.Namespace) -> str:
    route = args.route
    if not _ROUTE.match(route or ""):
        raise SpecError(
            f"--route {route!r}: give one route name of letters, digits, '_' or '-' "
            f"(e.g. {DEFAULT_ROUTE}, embed)"
        )
    if route != DEFAULT_ROUTE:
        # IMAGE files and --k build the labeller's request; another route has its own schema.
        if args.images:
            raise SpecError(
                f"IMAGE files go to --route {DEFAULT_ROUTE}; for --route {route} give --json"
            )
        if args.k is not None:
            raise SpecError(
                f"--k is for --route {DEFAULT_ROUTE}; put what --route {route} takes in --json"
            )
        if not args.json:
            raise SpecError(f"--route {route}: give the request body with --json JSON|@FILE")
    return route


def _query_body(args: argparse.Namespace) -> bytes:
    if args.images and args.json:
        raise SpecError("give IMAGE files or --json, not both")
    if args.k is not None and args.k < 1:
        raise SpecError(f"--k {args.k}: give at least 1")
    if args.json:
        text = args.json
        if text.startswith("@"):
            source = Path(text[1:])
            if not source.is_file():
                raise SpecError(f"--json file not found: {source}")
            text = source.read_text()
        try:
            body = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"--json is not valid JSON: {err}") from None
        if args.k is not None and isinstance(body, dict):
            body["k"] = args.k
        return json.dumps(body).encode()
    if not args.images:
        raise SpecError("give one or more IMAGE files, or --json")
    images = []
    for name in args.images:
        path = Path(name)
        if not path.is_file():
            raise SpecError(f"image not found: {path}")
        images.append(base64.b64encode(path.read_bytes()).decode())
    body = {"images": images}
    if args.k is not None:
        body["k"] = args.k
    return json.dumps(body).encode()


def cmd_query(args: argparse.Namespace) -> int:
    route = _check_route(args)
    body = _query_body(args)
    url = f"{args.url.rstrip('/')}/{args.name.strip('/')}/{route}"
    headers = {"Content-Type": "application/json"}
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        return _fail(f"{url} answered HTTP {err.code}: {text}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return _fail(f"cannot reach {url}: {reason} (is it served? see `skeptic serve --list`)")
    print(json.dumps(answer, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.cli serve|query ...` (the same commands as `skeptic`)."""
    from skeptic.cli import EXIT_BAD_INPUT, QUIET_ENV

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(prog="skeptic", description="Serve and query models.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except SpecError as err:
        print(f"skeptic: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
