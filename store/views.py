"""Read-only views over the log for status displays, each a named function over a named query.

Callers above the store (the supervisor, the actors' status model, the gateway, ops) ask these
functions instead of running SQL of their own; driver errors are translated here, once.
"""

from __future__ import annotations

from typing import Literal

import asyncpg

from events.errors import StoreError
from store.eventstore import _CONNECTION_ERRORS, EventStore, _unavailable
from store.queries import query

__all__ = ["DesiredState", "desired_state"]


# actor status
DesiredState = Literal["running", "stopped", "parked"]
"""What operators (or parking) last asked of an actor."""


async def desired_state(store: EventStore, name: str) -> DesiredState:
    """What operators last asked of actor ``name`` (or parking imposed): running unless
    stopped. StoreUnavailable when PostgreSQL cannot be reached, StoreError when it refuses."""
    try:
        record = await store.pool.fetchrow(query("desired_state"), name)
    except _CONNECTION_ERRORS as exc:
        raise _unavailable(exc) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"cannot read the desired state of {name}: {exc}") from exc
    if record is None:
        return "running"
    if record["type"] == "ActorParked":
        return "parked"
    return "stopped" if record["action"] == "stop" else "running"
