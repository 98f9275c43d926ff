"""The shape of the core: a study imports one small API that pulls in neither Ray nor MLflow;
the engine depends on the API, never the other way round; no import circles. (That the
core never imports the serving app: tests/test_serving_cli.py.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import skeptic

CORE = Path(skeptic.__file__).parent
# What a study may import from Skeptic, and what those modules import in turn.
API_LAYER = {
    "skeptic", "skeptic.api", "skeptic.contexts", "skeptic.study", "skeptic.spec",
    "skeptic.schema", "skeptic.stats", "skeptic.data", "skeptic.data.datasets",
    "skeptic.data.digits", "skeptic.data.imagefolder", "skeptic.data.shapes", "skeptic.data.disk",
    "skeptic.data.splits",
    "skeptic.training",
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> list[str]:
    """Every module imported anywhere in the file (functions included), except under
    `if TYPE_CHECKING:`, which never runs."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
            names.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = _runtime_imports(ast.parse(path.read_text()))
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph[node]):
            if dep in path:
                return path[path.index(dep) :] + [dep]
            if dep not in done:
                found = walk(dep, [*path, dep])
                if found:
                    return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = walk(start, [start])
        if found:
            return found
    return None


def test_no_import_circles_in_the_core():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_api_layer_never_imports_the_engine():
    graph = _graph()
    for name in sorted(API_LAYER & set(graph)):
        engine = sorted(graph[name] - API_LAYER)
        assert not engine, f"{name} imports engine modules {engine}"


def test_importing_the_study_api_pulls_in_neither_ray_nor_mlflow():
    code = (
        "import sys, skeptic.api\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'ray.tune') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_study_module_imports_skeptic_only_through_the_api_layer():
    jobs = CORE.parent.parent / "jobs"
    for path in jobs.rglob("*.py"):
        imported = _runtime_imports(ast.parse(path.read_text()))
        core = {m for m in imported if m.startswith("skeptic")}
        outside = sorted(
            m for m in core if m not in API_LAYER and m.rsplit(".", 1)[0] not in API_LAYER
        )
        assert not outside, f"{path.relative_to(jobs.parent)} imports {outside}"
