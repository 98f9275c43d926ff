"""A sweep records the Skeptic that ran it (version; commit, dirty flag and diff of Skeptic's
own checkout), never the repository the user happens to stand in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

import skeptic
from skeptic import provenance, tracking
from skeptic.spec import Spec
from skeptic.study import get_study

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _other_repo(root: Path) -> Path:
    """Somebody else's project, with an uncommitted secret."""
    root.mkdir()
    _git(root, "init", "-q")
    (root / "app.py").write_text("print('hi')\n")
    _git(root, "add", "app.py")
    _git(root, "commit", "-qm", "theirs")
    (root / "app.py").write_text("API_KEY = 'sk-secret'\n")
    return root


def test_a_sweep_from_inside_another_repository_records_skeptics_own_code(
    mlflow_store, tmp_path, monkeypatch
):
    other = _other_repo(tmp_path / "project")
    monkeypatch.chdir(other)
    client = MlflowClient(mlflow_store)
    study = get_study("effect")
    exp = tracking.ensure_experiment(client, study.name, mlflow_store)
    spec = Spec(study=study.name)
    run_id = tracking.start_parent_run(client, exp, "sweep-1", study, spec, "h", 1)

    tags = client.get_run(run_id).data.tags
    assert tags["skeptic.git_commit"] != _git(other, "rev-parse", "HEAD")
    assert tags["skeptic.version"] == provenance.collect().version
    root = provenance.checkout_root()
    if root is not None:  # an editable install from a checkout (CI, the README's setup)
        assert tags["skeptic.git_commit"] == _git(root, "rev-parse", "HEAD")
        assert tags["skeptic.code_source"] == f"git checkout {root}"
    names = [a.path for a in client.list_artifacts(run_id, "reproduce")]
    assert "reproduce/git.diff" not in names
    with_diff = [n for n in names if n.endswith(".diff")]
    for name in with_diff:
        text = Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text()
        assert "sk-secret" not in text


def _fake_checkout(root: Path) -> Path:
    """A git checkout laid out like Skeptic's (platform/skeptic, jobs, serving)."""
    shutil.copytree(Path(skeptic.__file__).parent, root / "platform" / "skeptic",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("jobs", "serving"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
    (root / "notes.txt").write_text("nothing\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "skeptic")
    return root


def _collect_in(checkout: Path, cwd: Path, env: dict | None = None) -> dict:
    code = "import json; from skeptic import provenance; print(json.dumps(provenance.collect().__dict__))"
    base = {k: v for k, v in os.environ.items() if k != provenance.SUBMITTED_ENV}
    env = {**base, "PYTHONPATH": str(checkout / "platform"), **(env or {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)


def test_the_diff_holds_skeptics_own_changes_only(tmp_path):
    checkout = _fake_checkout(tmp_path / "skeptic")
    other = _other_repo(tmp_path / "project")
    (checkout / "jobs" / "__init__.py").write_text("# edited\n")
    (checkout / "jobs" / "new_study.py").write_text("BELIEF = 'new'\n")
    (checkout / "notes.txt").write_text("my password\n")  # not Skeptic's code

    found = _collect_in(checkout, cwd=other)

    assert found["commit"] == _git(checkout, "rev-parse", "HEAD")
    assert found["dirty"] is True
    assert "# edited" in found["diff"] and "BELIEF = 'new'" in found["diff"]
    assert "password" not in found["diff"] and "sk-secret" not in found["diff"]


def test_a_clean_checkout_is_not_dirty_and_a_plain_folder_records_no_commit(tmp_path):
    checkout = _fake_checkout(tmp_path / "skeptic")
    plain = tmp_path / "plain"
    plain.mkdir()
    found = _collect_in(checkout, cwd=plain)
    assert found["dirty"] is False and found["diff"] == ""
    assert found["commit"] == _git(checkout, "rev-parse", "HEAD")

    shutil.rmtree(checkout / ".git")  # installed from a copy, not a checkout
    found = _collect_in(checkout, cwd=_other_repo(tmp_path / "project"))
    assert found["commit"] == "unknown" and found["dirty"] is False


def test_a_submitted_job_records_what_the_submitting_side_saw(tmp_path):
    recorded = provenance.Provenance("0.1.0", "abc123", True, "diff text", "git checkout /x")
    recorded.save(tmp_path / "prov.json")
    checkout = _fake_checkout(tmp_path / "skeptic")
    found = _collect_in(checkout, cwd=tmp_path, env={provenance.SUBMITTED_ENV: "prov.json"})
    assert found["commit"] == "abc123" and found["diff"] == "diff text"
