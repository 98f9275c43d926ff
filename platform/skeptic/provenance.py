"""Which Skeptic ran a sweep: the installed version and, for a git checkout of Skeptic, its
commit, dirty flag and the diff of Skeptic's own files.

Never the current directory's repository: a sweep started from inside another project
must not record that project's commit or upload its uncommitted changes. A job submitted
to a cluster runs code shipped without .git, so the submitting side records this and the
job reads it back (`SUBMITTED_ENV` names the file in the job's working directory).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import skeptic

SOURCE_DIRS = ("platform", "jobs", "serving")  # Skeptic's code in its checkout
SUBMITTED_ENV = "SKEPTIC_PROVENANCE"
MAX_UNTRACKED_BYTES = 1_000_000  # a new study file is code; a large file is not


@dataclass(frozen=True)
class Provenance:
    version: str  # the installed package's version
    commit: str  # "unknown" when not run from a git checkout of Skeptic
    dirty: bool
    diff: str  # uncommitted changes to SOURCE_DIRS, new files included
    source: str  # where the code came from, for the reader

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Provenance:
        return cls(**json.loads(path.read_text()))


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def checkout_root() -> Path | None:
    """The git checkout Skeptic is imported from (an editable install), else None.

    A regular install inside some other repository (a venv in a project) is not Skeptic's
    checkout: the package must sit at <root>/platform/skeptic of the work tree's root."""
    package = Path(skeptic.__file__).resolve().parent
    root = package.parent.parent
    if package != root / "platform" / "skeptic":
        return None
    top = _git(root, "rev-parse", "--show-toplevel")
    return root if top and Path(top.strip()).resolve() == root else None


def _untracked_diff(root: Path) -> str:
    listed = _git(root, "ls-files", "--others", "--exclude-standard", "--", *SOURCE_DIRS) or ""
    parts = []
    for name in listed.splitlines():
        path = root / name
        if path.is_file() and path.stat().st_size <= MAX_UNTRACKED_BYTES:
            # --no-index exits 1 when files differ, so read its output directly
            done = subprocess.run(
                ["git", "-C", str(root), "diff", "--no-index", "--", "/dev/null", name],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            parts.append(done.stdout)
        else:
            parts.append(f"# untracked, not included (over {MAX_UNTRACKED_BYTES} bytes): {name}\n")
    return "".join(parts)


def collect() -> Provenance:
    """This process's Skeptic: recorded by the submitting side for a job, else found here."""
    try:
        version = importlib.metadata.version("skeptic")
    except importlib.metadata.PackageNotFoundError:  # shipped to a cluster as a py_module
        version = skeptic.__version__
    submitted = Path(os.environ.get(SUBMITTED_ENV, ""))
    if submitted.name and submitted.is_file():
        return Provenance.load(submitted)
    root = checkout_root()
    if root is None:
        return Provenance(version, "unknown", False, "", f"installed package {skeptic.__file__}")
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or "unknown"
    diff = (_git(root, "diff", "HEAD", "--", *SOURCE_DIRS) or "") + _untracked_diff(root)
    return Provenance(version, commit, bool(diff.strip()), diff, f"git checkout {root}")
