"""The PostgreSQL event store: append-only log, reading, subscriptions, checkpoints.

Public API::

    from store import EventStore, ANY, NO_STREAM, STREAM_EXISTS, START, migrate, database_url

See :mod:`store.eventstore` for the guarantees, ``store/sql/`` for the SQL and the reasoning
behind its ordering and locking. This package knows nothing of payments or actors.
"""

from __future__ import annotations

from store.database import database_url, redact_dsn
from store.eventstore import (
    NOTIFY_CHANNEL,
    EventStore,
    Fence,
    NewEvent,
    Page,
    Transaction,
    derived_id,
)
from store.migrate import migrate, migrations
from store.records import (
    ANY,
    NO_STREAM,
    START,
    STREAM_EXISTS,
    AppendResult,
    Cursor,
    Expected,
    ExpectedVersion,
    RecordedEvent,
)
from store.subscription import Subscription

__all__ = [
    "EventStore",
    "Transaction",
    "Subscription",
    "NewEvent",
    "Fence",
    "Page",
    "derived_id",
    "NOTIFY_CHANNEL",
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "START",
    "AppendResult",
    "Cursor",
    "Expected",
    "ExpectedVersion",
    "RecordedEvent",
    "migrate",
    "migrations",
    "database_url",
    "redact_dsn",
]
