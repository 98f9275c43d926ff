"""Serving owns its command line: `skeptic serve` / `skeptic query` live in serving.cli and
reach the `skeptic` CLI through the `skeptic.commands` entry point; the core never imports
`serving`, and `serving` uses only the core's public modules. No Ray, no Serve here."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import serving
import skeptic
from skeptic.cli import COMMANDS_GROUP, build_parser

CORE = Path(skeptic.__file__).parent
SERVING = Path(serving.__file__).parent
# What serving may import from the core (skeptic.data: its submodules too).
SERVING_MAY_IMPORT = (
    "skeptic.api", "skeptic.schema", "skeptic.store", "skeptic.spec", "skeptic.data",
    "skeptic.cli",
)  # fmt: skip


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _skeptic(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skeptic", *argv], capture_output=True, text=True, check=False
    )


def _commands(parser: object) -> list[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(sub.choices)


def test_serve_and_query_come_from_the_entry_point() -> None:
    entries = importlib.metadata.entry_points(group=COMMANDS_GROUP)
    assert {(e.name, e.value) for e in entries} >= {("serving", "serving.cli:add_commands")}
    # listed (in --help too) where they have always been: after ui, before quickstart
    assert _commands(build_parser())[-4:] == ["ui", "serve", "query", "quickstart"]
    done = _skeptic("--help")
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert "serve a registered model" in done.stdout and "ask a served model" in done.stdout
    for command, flag in (("serve", "--max-decoded-pixels"), ("query", "--json")):
        done = _skeptic(command, "--help")
        assert done.returncode == 0 and flag in done.stdout, done.stderr


def _fail_on_call(sub: object) -> None:
    raise RuntimeError("this plugin is broken\nsecond line")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("no_such_module_xyz:add_commands", "ModuleNotFoundError"),
        (f"{__name__}:_fail_on_call", "RuntimeError: this plugin is broken"),
    ],
)
def test_a_broken_command_plugin_leaves_the_other_commands(value, why, monkeypatch, capsys):
    original = importlib.metadata.entry_points
    broken = importlib.metadata.EntryPoint(name="broken", value=value, group=COMMANDS_GROUP)

    def entry_points(**params: str) -> object:
        found = original(**params)
        return [*found, broken] if params.get("group") == COMMANDS_GROUP else found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    commands = _commands(build_parser())
    assert {"run", "serve", "query", "quickstart"} <= set(commands)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'broken'" in err[0] and value in err[0] and why in err[0], err


def test_the_core_never_imports_serving() -> None:
    for path in sorted(CORE.rglob("*.py")):
        found = [m for m in _imports(path) if m == "serving" or m.startswith("serving.")]
        assert not found, f"{path.relative_to(CORE.parent)} imports {found}"


def test_serving_imports_only_the_cores_public_modules() -> None:
    for path in sorted(SERVING.glob("*.py")):
        core = [m for m in _imports(path) if m == "skeptic" or m.startswith("skeptic.")]
        outside = [
            m
            for m in core
            if not any(m == ok or m.startswith(f"{ok}.") for ok in SERVING_MAY_IMPORT)
        ]
        assert not outside, f"serving/{path.name} imports {outside}"
