"""The MLflow store a command uses: which one, whether it is usable, and where a local one
keeps its files. Imports neither Ray nor MLflow's client at module level, so the serving
command line can use it before it sets up Ray's environment."""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from skeptic.spec import SpecError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# What MLflow's tracking and registry stores both accept ("" is a plain folder path).
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks", "")


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path(DEFAULT_DB).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Relative to this directory: Ray workers run elsewhere and would open another file.
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def shown_uri(uri: str) -> str:
    """The tracking URI as a report may show it: a local store relative to the working
    directory (or by file name alone outside it), a server without its credentials; a
    report never carries the paths of the machine that wrote it."""
    db = sqlite_path(uri)
    if db is not None:
        try:
            return f"sqlite:///{db.relative_to(Path.cwd().resolve())}"
        except ValueError:
            return f"sqlite:///.../{db.name}"
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.split('@', 1)[-1]}" if sep else uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve()


def artifacts_root(uri: str) -> Path | None:
    """Where a local SQLite store's artifacts live: beside the database file (not in the
    current directory, which for a Ray job is a temporary folder)."""
    db = sqlite_path(uri)
    return db.parent / DEFAULT_ARTIFACTS if db else None


def check_store(uri: str, *, must_exist: bool = False) -> None:
    """Refuse, before anything starts, a store no command could use: an unknown scheme, a
    SQLite file in a missing folder (or missing, when `must_exist`), a server that does
    not answer (MLflow's own client retries for minutes)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme not in SCHEMES:
        raise SpecError(
            f"--tracking-uri {uri}: unknown scheme {scheme!r}; give sqlite:///FILE, "
            "http://HOST:PORT (an MLflow server) or postgresql://..."
        )
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise SpecError(f"--tracking-uri {uri}: the folder {db.parent} does not exist")
    if db is not None and must_exist and not db.is_file():
        raise SpecError(f"--tracking-uri {uri}: no MLflow store there yet (`skeptic run` makes one)")
    if scheme in ("http", "https"):
        _check_server(uri)


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as answer:
            if answer.status == 200:
                return
    except (urllib.error.URLError, OSError) as err:
        raise SpecError(
            f"--tracking-uri: the MLflow server at {uri} is unreachable: {err}"
        ) from None
    raise SpecError(f"--tracking-uri: the MLflow server at {uri} is not healthy")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise, across processes, what two sweeps on one SQLite store must not do at once:
    MLflow creating a new store's tables ("duplicate column name") and moving an alias."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=120):
        yield


def open_store(uri: str) -> object:
    """An MlflowClient whose store (runs and model registry) exists, created under store_lock."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):  # the client's constructor already opens the store
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client
