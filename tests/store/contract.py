"""The contract suite: every guarantee of the event log, run on each log, and its backends.

A test that takes ``log`` (an :class:`store.port.EventLog`) is a contract test: it runs once
on PostgreSQL (:class:`store.EventStore`, marked ``postgres``) and once in memory
(:class:`store.memory.MemoryLog`, marked ``memory``), as eventsourcing runs one recorder test
case against each of its backends. What a test needs beyond the port (an event written the
way another release would have, a lease granted) it asks of ``backend``, which each log
supplies in its own way.

Tests that take ``store``, ``raw`` or ``dsn`` are PostgreSQL's alone: they look at SQL itself
(triggers, migrations, session limits, jsonb), at real connections (killed, restarted, or
holding a transaction open from outside the store), or at the task queue, whose only
implementation is SQL.

The PostgreSQL database is asked for lazily (``request.getfixturevalue``), so the memory runs
need no server and are not marked ``postgres`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import asyncpg

from events import EventRegistry
from store import EventStore, Fence
from store.leases import Leases
from store.memory import MemoryLog
from store.port import EventLog


class Backend(Protocol):
    """What the contract suite needs of a log beyond the port."""

    name: str

    def open(self, registry: EventRegistry | None = None) -> AbstractAsyncContextManager[EventLog]:
        """A client of the test's log (``registry``: one that decodes with another registry).
        PostgreSQL: another store on the same database. Memory: the same log (a process's
        memory is shared), or a new one for another registry."""
        ...

    async def insert_raw(
        self,
        log: EventLog,
        stream: str,
        version: int,
        tag: str,
        schema_version: int,
        payload: bytes,
        *,
        event_id: uuid.UUID | None = None,
    ) -> int:
        """Store a row the way another release or client would have, bypassing the store's
        checks and registry; its global position."""
        ...

    async def grant(self, log: EventLog, lease: str) -> Fence:
        """Grant ``lease`` (anew: its generation goes up) and return its fence."""
        ...


class PostgresBackend:
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @asynccontextmanager
    async def open(self, registry: EventRegistry | None = None) -> AsyncIterator[EventLog]:
        options = {} if registry is None else {"registry": registry}
        async with EventStore.open(self.dsn, node="test-node", **options) as store:
            yield store

    async def insert_raw(
        self,
        log: EventLog,
        stream: str,
        version: int,
        tag: str,
        schema_version: int,
        payload: bytes,
        *,
        event_id: uuid.UUID | None = None,
    ) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            position: int = await conn.fetchval(
                "INSERT INTO i3lani.events (event_id, stream, stream_version, type, "
                "schema_version, payload) VALUES ($1, $2, $3, $4, $5, $6::jsonb) "
                "RETURNING global_position",
                event_id or uuid.uuid4(),
                stream,
                version,
                tag,
                schema_version,
                payload.decode(),
            )
        finally:
            await conn.close()
        return position

    async def grant(self, log: EventLog, lease: str) -> Fence:
        assert isinstance(log, EventStore)
        # One holder: its grant again (a new incarnation) bumps the generation too.
        granted = await Leases(log, "test-node", ttl=60).acquire(lease)
        assert granted is not None
        return Fence(granted.name, granted.generation)


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.log = MemoryLog(node="test-node")

    @asynccontextmanager
    async def open(self, registry: EventRegistry | None = None) -> AsyncIterator[EventLog]:
        if registry is None:
            yield self.log
            return
        async with MemoryLog(node="test-node", registry=registry) as log:
            yield log

    async def insert_raw(
        self,
        log: EventLog,
        stream: str,
        version: int,
        tag: str,
        schema_version: int,
        payload: bytes,
        *,
        event_id: uuid.UUID | None = None,
    ) -> int:
        assert isinstance(log, MemoryLog)
        return log.insert_encoded(stream, version, tag, schema_version, payload, event_id=event_id)

    async def grant(self, log: EventLog, lease: str) -> Fence:
        assert isinstance(log, MemoryLog)
        return Fence(lease, log.grant(lease))


async def count(log: EventLog) -> int:
    """How many events of known types the log holds (all of them readable by now)."""
    return len([recorded async for recorded in log.read_all(skip_unknown=True)])
