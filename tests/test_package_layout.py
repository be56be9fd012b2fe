"""The package's shape: no import cycles (lazy imports included), the gateway never imports the launcher,
no module grows past ~400 lines unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "vlgate"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every vlgate module `path` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` needs the module, `from pkg import name` pkg
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_known_edges() -> None:
    graph = import_graph()
    assert "vlgate.gateway.gateway" in graph["vlgate.gateway.app"]
    assert "vlgate.launcher.binary" in graph["vlgate.launcher.run"]  # a plain `from ... import`
    assert "vlgate.gateway.app" in graph["vlgate.launcher.run"]  # a lazy import inside a function


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("part", ["vlgate.gateway", "vlgate.images", "vlgate.presets"])
def test_parts_do_not_reach_into_the_launcher(part: str) -> None:
    """The launcher owns processes; the HTTP side meets it only at `vlgate.backends`."""
    wrong = {f"{m} -> {d}" for m, deps in import_graph().items() if m.startswith(part)
             for d in deps if d.startswith("vlgate.launcher")}
    assert not wrong


def test_no_module_over_the_size_limit() -> None:
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
