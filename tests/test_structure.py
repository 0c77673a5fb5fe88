"""The package's shape, checked: module and function sizes, import direction, no import cycles.

Imports are read from the source (module level and inside functions alike: a lazy import is
still a dependency), so these tests need no model and run in a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mudi"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: Stage subpackages in pipeline order.
STAGES = ("prepare", "compose", "train", "generate", "evaluate", "report")
#: Packages that chain stages (iterative training): they may use every stage, no stage uses them.
WORKFLOWS = ("workflows", "bench")
#: Modules every stage may use; they import no stage, no command and not the toy world.
SHARED = ("errors", "protocols", "subjects", "metadata", "io", "viz", "geometry", "runtime", "settings", "stage", "version",
          "models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The mudi modules that module ``name`` imports (``from a import b`` counts a.b when it is a module)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _area(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_modules_and_functions_are_small():
    too_long = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {n} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert not _cycles(), f"import cycles: {_cycles()}"


def test_the_cycle_check_can_fail(monkeypatch):
    monkeypatch.setitem(GRAPH, "mudi.errors", GRAPH["mudi.errors"] | {"mudi.io"})
    assert any("mudi.errors" in c for c in _cycles())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    area = _area(name)
    for target in GRAPH[name]:
        to = _area(target)
        if area != "toy":
            assert to != "toy", f"{name} imports {target}: the product never imports the toy world"
        if area in SHARED:
            assert to in SHARED or to == "", f"{name} (shared) imports {target}: shared modules import no stage"
        if area in STAGES or area in SHARED:
            assert to not in WORKFLOWS, f"{name} imports a workflow ({target}): workflows sit above the stages"
        if area in STAGES and to in STAGES:
            assert STAGES.index(to) <= STAGES.index(area), f"{name} imports a later stage: {target}"
        if area != "cli":
            assert to != "cli", f"{name} imports the command line ({target})"
