"""Fixtures of the ops tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from store.database import with_database


@pytest.fixture
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """A name for a database a command makes of its own (the demo's, dev's), dropped after the
    test."""
    name = f"i3lani_t_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        admin = await asyncpg.connect(with_database(server_dsn, "postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()
