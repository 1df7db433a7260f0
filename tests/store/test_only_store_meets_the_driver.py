"""Only ``store/`` knows the driver (issue 12): no other package imports asyncpg, reaches for
the store's connection pool or a transaction's connection, or runs raw SQL through it.

Read models and queries belong in :mod:`store.views` (SQL in ``store/sql/views.sql``), and
operations on databases in :mod:`store.admin`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "bot_gateway", "ops", "events")
MODULES = ("supervisor.py",)
FORBIDDEN_ATTRIBUTES = {"pool", "connection", "execute_sql"}


def _sources() -> list[Path]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    return sorted([*files, *(ROOT / name for name in MODULES)])


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] == "asyncpg"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncpg":
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_the_packages_are_there() -> None:
    assert len(_sources()) > 20


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_driver_outside_the_store(path: Path) -> None:
    assert _offences(path) == [], (
        f"{path.relative_to(ROOT)} meets the driver: put the query in store/views.py "
        "(SQL in store/sql/views.sql) and call it"
    )
