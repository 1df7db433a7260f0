"""The contract suite: every guarantee of the event log, run on each log, and its backends.

A test that takes ``log`` (an :class:`store.port.EventLog`) is a contract test: it runs once
on PostgreSQL (:class:`store.EventStore`, marked ``postgres``) and once in memory
(:class:`store.memory.MemoryLog`, marked ``memory``), as eventsourcing runs one recorder test
case against each of its backends. What a test needs beyond the port (an event written the
way another release would have, a lease granted) it asks of ``backend``, which each log
supplies in its own way.

The task queue's tests (``test_tasks.py``, ``test_task_fencing.py``) are contract tests too:
a :class:`store.tasks.TaskQueue` on each log runs on that log's task table (PostgreSQL's
``i3lani.tasks``, or :class:`store.tasks.memory.MemoryTaskTable`); ``backend`` counts and
edits task rows the way an operator or another release would.

Tests that take ``store``, ``raw`` or ``dsn`` are PostgreSQL's alone: they look at SQL itself
(triggers, migrations, session limits, jsonb, query plans, NOTIFY), or at real connections
(killed, restarted, or holding a transaction open from outside the store).

The PostgreSQL database is asked for lazily (``request.getfixturevalue``), so the memory runs
need no server and are not marked ``postgres`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import asyncpg

from events import EventRegistry
from store import EventStore, Fence
from store.leases import Leases
from store.memory import MemoryLog
from store.port import EventLog
from store.tasks.memory import MemoryTaskTable


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

    async def count_tasks(self, log: EventLog) -> int:
        """How many task rows the log's task table holds, whatever their status."""
        ...

    async def update_task(self, log: EventLog, task_id: int, **changes: Any) -> None:
        """Change columns of a task's row behind the queue's back (``payload`` as JSON
        bytes), as another release or an operator's SQL would."""
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

    async def count_tasks(self, log: EventLog) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            total: int = await conn.fetchval("SELECT count(*) FROM i3lani.tasks")
        finally:
            await conn.close()
        return total

    async def update_task(self, log: EventLog, task_id: int, **changes: Any) -> None:
        columns = list(changes)
        values = [
            changes[c].decode() if isinstance(changes[c], bytes) else changes[c] for c in columns
        ]
        casts = {"payload": "::jsonb"}
        assignments = ", ".join(
            f"{c} = ${n}{casts.get(c, '')}" for n, c in enumerate(columns, start=2)
        )
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                f"UPDATE i3lani.tasks SET {assignments} WHERE id = $1", task_id, *values
            )
        finally:
            await conn.close()


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

    async def count_tasks(self, log: EventLog) -> int:
        assert isinstance(log, MemoryLog)
        return len(MemoryTaskTable.of(log)._rows)

    async def update_task(self, log: EventLog, task_id: int, **changes: Any) -> None:
        assert isinstance(log, MemoryLog)
        rows = MemoryTaskTable.of(log)._rows
        rows[task_id] = dataclasses.replace(rows[task_id], **changes)


async def count(log: EventLog) -> int:
    """How many events of known types the log holds (all of them readable by now)."""
    return len([recorded async for recorded in log.read_all(skip_unknown=True)])
