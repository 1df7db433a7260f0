"""Operator commands: restart, stop or start an actor.

A command is an :class:`~events.OperatorCommandIssued` event appended to ``ops-commands``; the
node running the actor acts on it (see :mod:`supervisor`). ``i3lani restart|stop|start`` and
the admin API's ``POST /api/actors/{name}/{action}`` build and append it here, so both record
the same thing, and so does the bot's admin command (:mod:`bot_gateway.service`).

It sits with the product actors, whose names it checks, below the bot gateway and ops, which
both use it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final, Literal

from actors.names import ACTOR_NAMES, UnknownActor
from events import EventMetadata, OperatorCommandIssued, environment
from events.streams import OPS_COMMANDS
from store import AppendResult, EventStore, NewEvent
from store.memory import MemoryLog

__all__ = ["ACTIONS", "Action", "UnknownAction", "operator_command", "issue_command"]

Action = Literal["restart", "stop", "start"]
ACTIONS: Final[dict[str, Action]] = {"restart": "restart", "stop": "stop", "start": "start"}
"""The actions an operator can ask for, by name."""


class UnknownAction(ValueError):
    """An action that is not restart, stop or start."""

    def __init__(self, action: str) -> None:
        super().__init__(f"unknown action {action!r}; valid actions: {', '.join(ACTIONS)}")


def operator_command(
    action: str,
    actor: str,
    *,
    requested_by: str,
    reason: str = "",
    now: datetime | None = None,
) -> OperatorCommandIssued:
    """The command event for ``action`` on ``actor``; UnknownActor or UnknownAction (both
    ValueError, one line naming the valid values) when either is not known. Pure but for the
    fresh command id and, without ``now``, the time."""
    if actor not in ACTOR_NAMES:
        raise UnknownActor(actor)
    checked = ACTIONS.get(action)
    if checked is None:
        raise UnknownAction(action)
    return OperatorCommandIssued(
        command_id=environment.new_uuid(),
        action=checked,
        actor=actor,
        requested_by=requested_by,
        requested_at=now or environment.now(),
        reason=reason,
    )


async def issue_command(
    store: EventStore | MemoryLog,
    command: OperatorCommandIssued,
    *,
    event_id: uuid.UUID | None = None,
) -> AppendResult:
    """Append ``command`` to ``ops-commands``, its requester recorded as the cause. An
    ``event_id`` derived from the request makes a repeat of it refused (``EventIdReused``)."""
    return await store.append(
        OPS_COMMANDS,
        [NewEvent(event=command, event_id=event_id or environment.new_uuid())],
        metadata=EventMetadata(caused_by=command.requested_by),
    )
