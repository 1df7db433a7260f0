"""The product's layers, held by its imports: each layer imports only the layers below it.

    events <- store <- actors.runtime <- supervisor <- product actors <- bot_gateway <- ops

(``actors.runtime`` is the actor runtime; every other module of ``actors/`` is a product actor.)
Every module of the product is parsed with :mod:`ast`, nothing is imported and no PostgreSQL is
needed. Two rules:

* no import runs up the order above;
* no import cycle between files of the product.

What counts as an import: every ``import`` / ``from ... import`` statement in a file, at module
level or inside a function (a function-level import still runs), **except** those under
``if TYPE_CHECKING:``, which never run. ``from package import name`` is an import of the
submodule ``package.name`` when that file exists, else of the package's ``__init__``; the
parent packages Python loads on the way are not counted (every import of ``store.records``
would otherwise "import" ``store/__init__.py``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, str], ...] = (
    ("events", "events"),
    ("store", "store"),
    ("actor runtime", "actors.runtime"),
    ("supervisor", "supervisor"),
    ("product actors", "actors"),
    ("bot gateway", "bot_gateway"),
    ("ops", "ops"),
)
"""(layer, module prefix), lowest first; a module is in the layer of its longest prefix."""

ORDER = " <- ".join(name for name, _ in LAYERS)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the product module it imports
    path: str  # the importing file, relative to the repository
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files() -> dict[str, Path]:
    """Every module of the product, by dotted name."""
    files = [ROOT / "supervisor.py"]
    for package in ("events", "store", "actors", "bot_gateway", "ops"):
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return {_module_name(path): path for path in files}


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer ``module`` belongs to."""
    best = -1
    best_length = -1
    for index, (_, prefix) in enumerate(LAYERS):
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
            best, best_length = index, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return best


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run: all of them but those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(files: dict[str, Path]) -> list[Import]:
    """Every import, between modules of the product, that runs."""
    edges: list[Import] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        relative = str(path.relative_to(ROOT))
        for node in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, path, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in files else base)
            for target in dict.fromkeys(targets):
                if target in files and target != module:
                    edges.append(Import(module, target, relative, node.lineno))
    return edges


def _cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_every_product_module_has_a_layer() -> None:
    files = product_files()
    assert {"supervisor", "actors.runtime", "store", "events", "ops.cli"} <= set(files)
    for module in files:
        layer_of(module)


def test_the_parser_sees_imports() -> None:
    """Guards the two tests below against passing on an empty graph."""
    edges = {(edge.source, edge.target) for edge in imports(product_files())}
    assert ("supervisor", "actors.runtime") in edges
    assert ("actors.catalog", "actors.runtime") in edges


def test_no_import_runs_up_the_layers() -> None:
    upward = [
        edge for edge in imports(product_files()) if layer_of(edge.target) > layer_of(edge.source)
    ]
    lines = [
        f"{edge.where()}: {edge.source} ({LAYERS[layer_of(edge.source)][0]}) imports "
        f"{edge.target} ({LAYERS[layer_of(edge.target)][0]}), a layer above it"
        for edge in upward
    ]
    assert not upward, (
        f"imports must only run down the layers {ORDER}; these run up:\n" + "\n".join(lines)
    )


def test_no_import_cycle_between_files() -> None:
    edges = imports(product_files())
    found = _cycles(edges)
    described = []
    for component in found:
        members = set(component)
        inside = [e for e in edges if e.source in members and e.target in members]
        described.append(
            "cycle among "
            + ", ".join(component)
            + ":\n"
            + "\n".join(f"  {e.where()}: {e.source} imports {e.target}" for e in inside)
        )
    assert not found, "\n".join(described)
