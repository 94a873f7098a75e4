"""The code layout's rules, checked on every run of the suite.

- The layers contract in pyproject.toml (`[tool.importlinter]`) holds:
  schemas < tasks.common < tasks.nets < the stage packages | tasks.run <
  tasks.recipe < tasks.sweep < flows < deployments | benchmarks, with the
  stages independent of each other.
- No import cycles among the project's modules, lazy (function-level) imports
  included; imports under `if TYPE_CHECKING:` do not run, so they do not count.
- No function in flows/, tasks/, schemas/ or deployments/ is longer than 80 lines.
- Every stage function is a Prefect task in flows/stages.py.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "tasks", "flows", "deployments", "benchmarks")
MAX_FUNCTION_LINES = 80


def test_the_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [shutil.which("lint-imports") or "lint-imports"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth, except under `if TYPE_CHECKING:`."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != here:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                resolve(full if full in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_there_are_no_import_cycles():
    files = _project_files()
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["flows", "tasks", "schemas", "deployments"])
def test_no_function_is_longer_than_80_lines(package):
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


STAGES = ("device", "data", "model", "train", "evaluate", "bundle")


def test_every_stage_is_a_prefect_task_of_the_flows_and_imports_no_other_stage():
    import importlib

    from prefect import Task

    import flows.stages

    made = {id(value.fn) for value in vars(flows.stages).values() if isinstance(value, Task)}
    for stage in STAGES:
        assert (ROOT / "tasks" / stage / "__init__.py").is_file(), f"tasks/{stage} is not a package"
        package = importlib.import_module(f"tasks.{stage}")
        public = [getattr(package, name) for name in getattr(package, "__all__", vars(package))]
        assert not any(isinstance(v, Task) for v in public), f"tasks.{stage} makes a Prefect task itself"
        assert any(id(v) in made for v in public), f"no function of tasks.{stage} is a Prefect task in flows/stages.py"
    modules = {_module_name(p) for p in _project_files()}
    for stage in STAGES:
        for path in (ROOT / "tasks" / stage).rglob("*.py"):
            others = {
                m for m in _imports(path, modules)
                if m.startswith("tasks.") and m.split(".")[1] in STAGES and m.split(".")[1] != stage
            }
            assert not others, f"{path.relative_to(ROOT)} imports another stage: {sorted(others)}"
