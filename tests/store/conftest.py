"""Fixtures of the contract suite: ``backend`` and ``log``, one run per log (see
:mod:`tests.store.contract`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from store.port import EventLog
from tests.store.contract import Backend, MemoryBackend, PostgresBackend


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("memory", marks=pytest.mark.memory),
    ]
)
def backend(request: pytest.FixtureRequest, anyio_backend: object) -> Backend:
    """Each log the contract suite runs on (a sync fixture: it may ask for the database
    lazily, which an async fixture cannot)."""
    if request.param == "postgres":
        return PostgresBackend(request.getfixturevalue("dsn"))
    return MemoryBackend()


@pytest.fixture
async def log(backend: Backend) -> AsyncIterator[EventLog]:
    """The test's own, empty log, on each backend."""
    async with backend.open() as opened:
        yield opened
