"""The import graph of memlaw has no circle, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import memlaw

SRC = Path(memlaw.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """memlaw module -> the memlaw modules its import statements name (anywhere in the file)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "memlaw.train.trainer" in graph["memlaw.train.cli"]  # imported inside a command function
    assert "memlaw.law.lawfile" in graph["memlaw.demo"]


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_a_module_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_cli_registers_commands_by_static_imports():
    source = (SRC / "cli.py").read_text(encoding="utf-8")
    assert "importlib" not in source and "import_module" not in source


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_nothing_below_memory_imports_it():
    """memory.py (a memorized run) stands on train/ and evaluate/: none of what it uses, directly or not, imports it
    or the commands above it (memory_cli), even inside a function."""
    graph = import_graph()
    below = reachable(graph, "memlaw.memory")
    assert "memlaw.train.trainer" in below and "memlaw.evaluate.locality" in below
    offenders = sorted(m for m in below if graph[m] & {"memlaw.memory", "memlaw.memory_cli"})
    assert offenders == []
    packages = ("memlaw.train", "memlaw.evaluate", "memlaw.model", "memlaw.data", "memlaw.law", "memlaw.sweep")
    assert not [m for m in graph if m.startswith(packages) and graph[m] & {"memlaw.memory", "memlaw.memory_cli"}]
