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

import msgspec

from actors.names import ACTOR_NAMES, UnknownActor
from actors.runtime.status import ActorStatus
from events import EventMetadata, OperatorCommandIssued, environment
from events.errors import I3laniError
from events.streams import OPS_COMMANDS
from store import AppendResult, EventStore, NewEvent
from store.memory import MemoryLog

__all__ = [
    "ACTIONS",
    "Action",
    "CommandRefused",
    "Outlook",
    "UnknownAction",
    "command_outlook",
    "operator_command",
    "issue_command",
]

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


class CommandRefused(I3laniError):
    """An operator command that nothing would act on: refused, and nothing recorded."""


class Outlook(msgspec.Struct, frozen=True, kw_only=True):
    """What an operator command will do, judged before it is recorded (:func:`command_outlook`).

    ``record``: append it (a node is there to act on it, or what it asks lasts until one is);
    ``wait``: a node holds the actor and acts within a second or two, worth waiting for;
    ``refused``: nothing can act on it, so nothing is recorded and the command fails;
    ``message``: the one line that says so, when there is something to say before waiting.
    """

    record: bool
    wait: bool
    refused: bool = False
    message: str = ""


def command_outlook(action: Action, status: ActorStatus) -> Outlook:
    """What ``action`` on the actor in ``status`` will do, truthfully. Pure.

    Only the node holding an actor's live lease acts on a restart (a node that takes the lease
    later starts afresh and ignores the commands before its grant), while stop and start last:
    they set what the actor should be (:func:`store.views.desired_state`), which every node
    reads before it takes the lease. So:

    1. A live lease: record it and wait for the node to act.
    2. Restart, no live lease: nothing would act on it; refused, nothing recorded (recording it
       would even start a stopped actor later, as it counts as asking for it to run).
    3. Stop, no live lease: recorded; it stays stopped, on every node, until started.
    4. Start, no live lease, stopped or parked: recorded; a worker with it starts it (wait, in
       case one stands by).
    5. Start, no live lease, not stopped: nothing to start, nothing recorded.
    """
    name = status.actor
    # 1. Someone is running it (or backing it off): it acts now.
    if status.lease_live:
        if action == "start" and status.desired == "running" and status.state == "running":
            return Outlook(
                record=False,
                wait=False,
                message=f"{name} already runs on {status.node}: nothing to start, nothing recorded",
            )
        return Outlook(record=True, wait=True)
    where = _where(status)
    stopped = status.desired in ("stopped", "parked")
    if action == "restart":
        # 2. Nothing would act on it.
        then = (
            f"`i3lani start {name}` starts it"
            if stopped
            else "a worker started with it (`i3lani run`) starts it afresh"
        )
        return Outlook(
            record=False,
            wait=False,
            refused=True,
            message=f"no node runs {name} ({where}): nothing to restart, nothing recorded; " + then,
        )
    if action == "stop":
        # 3. Lasts until a start.
        return Outlook(
            record=True,
            wait=False,
            message=f"no node runs {name} ({where}); recorded: it stays stopped, and no "
            f"worker starts it until `i3lani start {name}`",
        )
    if stopped:
        # 4. A worker standing by starts it now; any worker started with it later.
        return Outlook(record=True, wait=True)
    # 5. Already wanted running.
    return Outlook(
        record=False,
        wait=False,
        message=f"{name} is not stopped ({where}): nothing to start, nothing recorded; a "
        "worker started with it (`i3lani run`) runs it",
    )


def _where(status: ActorStatus) -> str:
    """Where the actor stands, for a message: ``never started``, ``stopped by ...``."""
    if status.state == "never started":
        return "never started"
    if status.stop_reason and status.state in ("stopped", "parked"):
        return f"{status.state}: {status.stop_reason}"
    if status.node:
        return f"its lease on {status.node} has expired"
    return status.state
