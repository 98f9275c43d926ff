"""Studies are found by name, with nothing central to edit; the stdlib `platform` stays intact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skeptic.study import UnknownStudy, all_studies, get_study

ROOT = Path(__file__).resolve().parents[1]


def test_large_batch_is_discovered():
    studies = all_studies()
    assert "large_batch" in studies
    assert "generalizes worse" in studies["large_batch"].belief


def test_unknown_study_names_the_known_ones():
    with pytest.raises(UnknownStudy, match="unknown study 'nope'.*large_batch"):
        get_study("nope")


def test_a_new_study_package_is_found_without_editing_the_core(tmp_path, monkeypatch):
    pkg = tmp_path / "extra_studies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from skeptic.study import Study, Verdict, register_study

            @register_study
            class Toy(Study):
                name = "toy_for_test"
                belief = "b"
                paper = "p"
                Params = BaseModel
                defaults = {}
                def train(self, ctx): pass
                def verdict(self, results, spec): return Verdict(None, "")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SKEPTIC_STUDY_PACKAGES", "jobs,extra_studies")
    assert get_study("toy_for_test").paper == "p"


def test_stdlib_platform_is_not_shadowed():
    assert not (ROOT / "platform" / "__init__.py").exists()
    code = "import platform, torch, ray; print(platform.system())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Linux"


def test_a_broken_study_module_does_not_hide_the_others(tmp_path, monkeypatch, capsys) -> None:
    from skeptic import study as registry
    from skeptic.cli import main

    package = tmp_path / "broken_studies_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SKEPTIC_STUDY_PACKAGES", "jobs,broken_studies_pkg")
    monkeypatch.setattr(registry, "BROKEN", {})
    assert "large_batch" in registry.all_studies()
    assert main(["studies"]) == 1
    captured = capsys.readouterr()
    assert "large_batch" in captured.out
    assert "broken_studies_pkg.bad failed to import" in captured.err
    assert "no_such_module_anywhere" in captured.err
    with pytest.raises(registry.UnknownStudy, match="no_such_module_anywhere"):
        registry.get_study("bad")
