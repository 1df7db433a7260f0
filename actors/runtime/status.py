"""An actor's status, as ``i3lani status``, the admin API and the health checks show it.

A read model: :func:`project_status` folds an actor's lifecycle events (the ``actor-<name>``
stream the supervisor writes) into an :class:`ActorStatus`, purely; :func:`actor_status` reads
those events, the actor's last tick (its tick schedule), its lease and its desired state from
the store and folds them. It sits in the runtime, below the supervisor that writes the events
and the product actors and the gateway that read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    ActorTicked,
)
from events.streams import actor_stream, tick_stream
from store import EventStore, RecordedEvent
from store.leases import LeaseInfo, Leases
from store.memory import MemoryLog
from store.views import DesiredState, desired_state

__all__ = ["SHUTDOWN_REASON", "ActorStatus", "StatusState", "actor_status", "project_status"]


StatusState = Literal["starting", "running", "backing off", "parked", "stopped", "never started"]
SHUTDOWN_REASON: Final = "shutdown"
"""The reason an ActorStopped gives when the actor's node shut down (not an operator's stop)."""


class ActorStatus(msgspec.Struct, kw_only=True):
    """What ``i3lani status`` shows for one actor; a projection of its events."""

    actor: str
    state: StatusState = "never started"
    node: str | None = None
    generation: int | None = None
    since: datetime | None = None
    backing_off_until: datetime | None = None
    restarts_last_hour: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_tick: datetime | None = None
    stop_reason: str | None = None
    lease_live: bool | None = None
    lease_suspect: bool | None = None
    """Its lease is held and live but has not been renewed for over half its time to live:
    the node holding it may be frozen or cut off (it stops acting before the lease expires)."""
    lease_renewed_seconds_ago: float | None = None
    desired: DesiredState = "running"


def project_status(
    actor: str,
    lifecycle: Sequence[RecordedEvent],
    now: datetime,
    *,
    last_tick: datetime | None = None,
    lease: LeaseInfo | None = None,
    desired: DesiredState = "running",
) -> ActorStatus:
    """Fold an actor's lifecycle events into its status at ``now``. Pure.

    A backoff is "backing off" until its ``until``, and "starting" from then on (since then)
    until the next lifecycle event."""
    status = ActorStatus(actor=actor, last_tick=last_tick, desired=desired)
    hour_ago = now - timedelta(hours=1)
    for recorded in lifecycle:
        event = recorded.event
        if isinstance(event, ActorStarted):
            status.state, status.node, status.generation = "running", event.node, event.generation
            status.since, status.backing_off_until, status.stop_reason = (
                event.started_at,
                None,
                None,
            )
        elif isinstance(event, ActorCrashed):
            status.last_error = f"{event.error_type}: {event.message}"
            status.last_error_at = event.crashed_at
            status.state, status.since = "starting", event.crashed_at
        elif isinstance(event, ActorBackoffScheduled):
            status.state, status.backing_off_until = "backing off", event.until
            status.since = event.scheduled_at
        elif isinstance(event, ActorRestarted):
            status.state, status.since, status.backing_off_until = (
                "starting",
                event.restarted_at,
                None,
            )
            if event.restarted_at > hour_ago:
                status.restarts_last_hour += 1
        elif isinstance(event, ActorParked):
            status.state, status.since, status.stop_reason = "parked", event.parked_at, event.reason
            status.backing_off_until = None
        elif isinstance(event, ActorStopped):
            status.state, status.since, status.stop_reason = (
                "stopped",
                event.stopped_at,
                event.reason,
            )
            status.backing_off_until = None
    if (
        status.state == "backing off"
        and status.backing_off_until is not None
        and status.backing_off_until <= now
    ):
        # The backoff is over: the restart is under way (or waits for a node to take the
        # lease). Its ActorRestarted is appended only with the next incarnation's first
        # record, ActorStarted or ActorCrashed, once that incarnation is up or has failed
        # (see supervisor.Supervisor._back_off), so until then the log still ends with the
        # backoff: read as such, a slow start would show as a backoff long since over.
        status.state, status.since = "starting", status.backing_off_until
        status.backing_off_until = None
    if desired == "parked":
        status.state = "parked"
    if lease is not None:
        status.lease_live = lease.live and lease.node is not None
        status.lease_suspect = lease.suspect
        status.lease_renewed_seconds_ago = round(lease.renewed_seconds_ago, 1)
    return status


async def actor_status(store: EventStore | MemoryLog, name: str, now: datetime) -> ActorStatus:
    """The status of ``name``, projected from the log (and its lease, for liveness)."""
    lifecycle = await store.read_stream(actor_stream(name), skip_unknown=True)
    record = await store.load_tick(name)
    last_tick = record.ticked_at if record is not None else None
    if record is None:  # a log written before tick schedules left it
        tick = await store.last_event(tick_stream(name), skip_unknown=True)
        if tick is not None and isinstance(tick.event, ActorTicked):
            last_tick = tick.event.ticked_at
    leases = {info.name: info for info in await Leases(store, "status").all()}
    return project_status(
        name,
        lifecycle,
        now,
        last_tick=last_tick,
        lease=leases.get(name),
        desired=await desired_state(store, name),
    )
