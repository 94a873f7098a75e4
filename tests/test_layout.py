"""The code layout's rules, checked on every run of the suite.

- The layers contract in pyproject.toml (`[tool.importlinter]`) holds:
  schemas < tasks.common < tasks.nets < the stage packages | tasks.run <
  tasks.recipe < tasks.sweep < flows < deployments | benchmarks, with the
  stages independent of each other.
- No import cycles among the project's modules, lazy (function-level) imports
  included; imports under `if TYPE_CHECKING:` do not run, so they do not count.
- No function in flows/, tasks/, schemas/ or deployments/ is longer than 80 lines.
- Every stage function is a Prefect task in flows/stages.py; importing the
  stages and the recipe imports neither Prefect nor a tracking library, and
  a command's worker processes do not run the command's module again.
- Prefect is used through its public API only: no module imports, reads,
  overrides or patches a private name of Prefect.
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


def _fresh_python(code: str) -> str:
    """What `python -c code` prints in a fresh process started in the project root; an error fails the test."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_stages_and_the_recipe_import_neither_prefect_nor_a_tracking_library():
    """What a rank of distributed training and a sweep worker import: no Prefect, MLflow or TensorBoard."""
    code = (
        "import sys\n"
        "import tasks.device, tasks.data, tasks.model, tasks.train, tasks.evaluate, tasks.bundle, tasks.recipe\n"
        "import tasks.sweep.executors\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'tensorboard'}))\n"
    )
    assert _fresh_python(code).strip() == "[]"


def test_worker_processes_of_a_command_do_not_run_its_module_again():
    """A sweep's worker processes, started while `python -m flows.sweep` is the main module, import no Prefect."""
    code = (
        "import importlib.machinery, multiprocessing, sys, types\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from tasks.common.processes import workers_skip_the_command_module\n"
        "command = types.ModuleType('__main__')\n"
        "command.__spec__ = importlib.machinery.ModuleSpec('flows.sweep', None)  # as under python -m flows.sweep\n"
        "sys.modules['__main__'] = command\n"
        "def prefect_in_a_worker():\n"
        "    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:\n"
        "        return pool.submit(eval, \"'prefect' in __import__('sys').modules\").result()\n"
        "with workers_skip_the_command_module():\n"
        "    skipped = prefect_in_a_worker()\n"
        "print(skipped, prefect_in_a_worker())\n"
    )
    assert _fresh_python(code).split() == ["False", "True"]  # without it, the worker runs flows.sweep again: Prefect


# --------------------------------------------------------------------------- Prefect's public API only

# Modules that still use a private name of Prefect, each with the change that removes it. The test fails
# for any other module, and for a module listed here that no longer does: then remove it from this list.
PRIVATE_PREFECT_ALLOWED: dict[str, str] = {}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _attribute_chain(node: ast.Attribute) -> list[str]:
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    return chain


def _prefect_bindings(tree: ast.AST) -> tuple[set[str], list[tuple[int, str]]]:
    """Names bound to Prefect's modules or objects, and the imports of private names."""
    bound: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prefect":
                    bound.add(alias.asname or "prefect")
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, f"imports {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect" and not node.level:
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if any(_private(part) for part in node.module.split(".")) or _private(alias.name):
                    found.append((node.lineno, f"imports {alias.name} from {node.module}"))
    return bound, found


def private_prefect_uses(path: Path) -> list[str]:
    """Where `path` imports a private name of Prefect, reads one (`prefect_server._x`), overrides one in a
    subclass of a Prefect class, or assigns to an attribute of a Prefect module or class (patching it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound, found = _prefect_bindings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _root_name(node) in bound:
            if any(_private(attr) for attr in _attribute_chain(node)):
                found.append((node.lineno, f"reads {ast.unparse(node)}"))
            if isinstance(node.ctx, ast.Store):
                found.append((node.lineno, f"patches {ast.unparse(node)}"))
        if isinstance(node, ast.ClassDef) and any(_root_name(base) in bound for base in node.bases):
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                    found.append((item.lineno, f"overrides {node.name}.{item.name} of a Prefect class"))
                if (isinstance(item, ast.Attribute) and _private(item.attr) and isinstance(item.value, ast.Call)
                        and isinstance(item.value.func, ast.Name) and item.value.func.id == "super"):
                    found.append((item.lineno, f"calls super().{item.attr}"))
    return [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in sorted(set(found))]


def test_the_private_name_check_finds_each_kind_of_use(tmp_path, monkeypatch):
    source = (
        "import prefect.server.api.server as prefect_server\n"
        "from prefect._internal.compatibility import deprecated\n"
        "from prefect.flows import _private_helper\n"
        "prefect_server.subprocess = None\n"
        "x = prefect_server._hidden\n"
        "class Mine(prefect_server.SubprocessASGIServer):\n"
        "    def _run(self):\n"
        "        return super()._run()\n"
        "from prefect import flow, task\n"
        "y = flow.__name__, task.with_options\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "m.py").write_text(source)
    found = private_prefect_uses(tmp_path / "m.py")
    assert [f.split(": ", 1)[1].split()[0] for f in found] == [
        "imports", "imports", "patches", "reads", "overrides", "calls",
    ], found
    assert all(f.startswith("m.py:") for f in found)


def test_no_module_uses_a_private_name_of_prefect():
    offenders: dict[str, list[str]] = {}
    for path in [*_project_files(), *sorted((ROOT / "tests").rglob("*.py"))]:
        uses = private_prefect_uses(path)
        if uses:
            offenders[path.relative_to(ROOT).as_posix()] = uses
    unexpected = {name: uses for name, uses in offenders.items() if name not in PRIVATE_PREFECT_ALLOWED}
    assert unexpected == {}, "Prefect's private names are used (use its public API instead):\n" + "\n".join(
        use for uses in unexpected.values() for use in uses
    )
    fixed = sorted(set(PRIVATE_PREFECT_ALLOWED) - set(offenders))
    assert fixed == [], f"{fixed} no longer use a private name of Prefect: remove them from PRIVATE_PREFECT_ALLOWED"
