"""Named SQL queries, read once from the files under ``sql/`` named in ``_FILES``.

The files are the single place where the store's SQL lives, with the reasoning for ordering
and locking written beside each statement: ``queries.sql`` the event log's and the task
queue's, ``views.sql`` the read models and the rest that :mod:`store.views` and
:mod:`store.admin` run, ``seals.sql`` the log's integrity (stored rows, triggers). They share
one namespace of names.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["query", "sql_file"]

_NAME = re.compile(r"^-- name: (?P<name>[a-z_]+)\s*$", re.MULTILINE)
_FILES = ("queries.sql", "views.sql", "seals.sql")


def sql_file(relative: str) -> str:
    """The text of a file under ``store/sql/``."""
    return resources.files("store").joinpath("sql", relative).read_text(encoding="utf-8")


@cache
def _queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for relative in _FILES:
        for name, statement in _named(sql_file(relative)):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice (again in {relative})")
            found[name] = statement
    return found


def _named(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    matches = list(_NAME.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        body = text[match.end() : end]
        statement = "\n".join(
            line
            for line in body.splitlines()
            if line.strip() and not line.lstrip().startswith("--")
        ).strip()
        found.append((match.group("name"), statement.rstrip(";")))
    return found


def query(name: str) -> str:
    """The SQL of the named query (KeyError for a name that does not exist)."""
    return _queries()[name]
