"""Named SQL queries, read once from ``sql/queries.sql``.

The file is the single place where the store's SQL lives, with the reasoning for ordering
and locking written beside each statement.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["query", "sql_file"]

_NAME = re.compile(r"^-- name: (?P<name>[a-z_]+)\s*$", re.MULTILINE)


def sql_file(relative: str) -> str:
    """The text of a file under ``store/sql/``."""
    return resources.files("store").joinpath("sql", relative).read_text(encoding="utf-8")


@cache
def _queries() -> dict[str, str]:
    text = sql_file("queries.sql")
    found: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        body = text[match.end() : end]
        statement = "\n".join(
            line
            for line in body.splitlines()
            if line.strip() and not line.lstrip().startswith("--")
        ).strip()
        found[match.group("name")] = statement.rstrip(";")
    return found


def query(name: str) -> str:
    """The SQL of the named query (KeyError for a name that does not exist)."""
    return _queries()[name]
