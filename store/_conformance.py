"""Type-checked proof that both event logs implement the port (:mod:`store.port`), and both
rate-limit tables theirs (:mod:`store.flow.table`).

Nothing imports this module at run time; mypy checks it with the package, so a method that
drifts from the port in either log fails the type check. It lives apart from the port so that
the port imports neither of its implementations (no import cycle, even a type-only one).
"""

from __future__ import annotations

from store.eventstore import EventStore, Transaction
from store.flow.memory import MemoryFlowTable
from store.flow.postgres import PostgresFlowTable
from store.flow.table import FlowTable
from store.memory import MemoryLog, MemoryTransaction
from store.port import EventLog, LogTransaction

_postgres: type[EventLog] = EventStore
_memory: type[EventLog] = MemoryLog
_postgres_tx: type[LogTransaction] = Transaction
_memory_tx: type[LogTransaction] = MemoryTransaction
_postgres_flow: type[FlowTable] = PostgresFlowTable
_memory_flow: type[FlowTable] = MemoryFlowTable
