"""The store's modules form layers: no module imports one that imports it back, not even
inside a function or under TYPE_CHECKING. No PostgreSQL needed."""

from __future__ import annotations

import ast
from pathlib import Path

import store

PACKAGE = Path(store.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package (``store/__init__.py`` aside: it gathers the public names)
    -> the modules of the package it imports, anywhere in its text."""
    modules = {
        _module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "__init__.py"
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_store_modules_import_each_other_without_cycles() -> None:
    graph = _imports()
    assert "store.eventstore" in graph["store.leases"]  # the walk does see imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_subscriptions_do_not_depend_on_the_event_store() -> None:
    graph = _imports()
    assert "store.eventstore" not in graph["store.subscription"]
