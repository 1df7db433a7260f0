"""The PostgreSQL event store: append-only log, reading, subscriptions, checkpoints.

Public API::

    from store import EventStore, ANY, NO_STREAM, STREAM_EXISTS, START, migrate, database_url
    from store import TaskQueue, TaskProcessor, TaskTypes, RetryPolicy   # the task queue
    from store import views      # read models and queries: views.summary(store), ...
    from store import admin      # databases: create_database, drop_database, ...

:class:`EventLog` (:mod:`store.port`) names the operations the rest of the system uses on the
log; :class:`store.memory.MemoryLog` implements them in memory. See :mod:`store.eventstore` for
the guarantees, ``store/sql/`` for the SQL and the reasoning behind its ordering and locking.
This package knows nothing of payments or actors; the task queue (:mod:`store.tasks`) runs
whatever task types an application registers. Only this package imports the database driver or
runs SQL; everything else calls its named functions.
"""

from __future__ import annotations

from store.database import database_url, redact_dsn
from store.eventstore import (
    NOTIFY_CHANNEL,
    Append,
    EventStore,
    Fence,
    LeaseClock,
    NewEvent,
    OpenTransaction,
    Page,
    RecordedPosition,
    Transaction,
    derived_id,
)
from store.limits import SessionLimits
from store.migrate import migrate, migrations
from store.port import EventLog, LogTransaction
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
    TickRecord,
)
from store.subscription import Subscription
from store.tasks import (
    TASKS_CHANNEL,
    DeadLetter,
    DeadTask,
    NewTask,
    ProcessorState,
    ProcessorStatistics,
    Retry,
    RetryPolicy,
    TaskContext,
    TaskInfo,
    TaskProcessor,
    TaskQueue,
    TaskType,
    TaskTypes,
    TypeCounts,
)

__all__ = [
    "EventStore",
    "Transaction",
    "EventLog",
    "LogTransaction",
    "Subscription",
    "NewEvent",
    "Append",
    "RecordedPosition",
    "Fence",
    "LeaseClock",
    "OpenTransaction",
    "SessionLimits",
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
    "TickRecord",
    "migrate",
    "migrations",
    "database_url",
    "redact_dsn",
    # task queue
    "TaskQueue",
    "TaskProcessor",
    "TaskTypes",
    "TaskType",
    "NewTask",
    "RetryPolicy",
    "Retry",
    "DeadLetter",
    "TaskContext",
    "ProcessorState",
    "ProcessorStatistics",
    "TaskInfo",
    "TypeCounts",
    "DeadTask",
    "TASKS_CHANNEL",
]
