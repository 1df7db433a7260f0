"""Waking a follower: LISTEN when it can, poll anyway.

Subscriptions (channel ``i3lani_events``) and task processors (``i3lani_tasks``) follow work
that others commit. Each listens when it can and polls in any case, so a lost notification, a
dropped connection or a server that refuses only delays it:

* :class:`Wakeup` is the wake-up itself, never lost: re-armed before each look for work, a
  wake-up that comes during the look makes the following wait return at once.
* :class:`ListenHub` keeps **one** LISTEN connection for the whole process (a store has one
  hub), whatever the number of followers: each follower holds a :class:`Listener` on it, for
  its channel. The connection is opened when the first follower asks, a channel is LISTENed
  when its first follower asks and UNLISTENed when its last one leaves, and the connection is
  closed when nobody follows any more. After a refusal it is not tried again within a second
  (polling covers that second; a server that just refused is not hammered); when it is lost,
  every follower is told, and the next to ask opens it again (each one reads once more, since
  notifications may have been missed meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from events import environment
from events.errors import StoreError
from store.limits import SessionLimits
from store.listener import (
    ListenConnection,
    close_listener,
    listen_on,
    open_listener,
    unlisten,
)

__all__ = ["Wakeup", "ListenHub", "Listener", "ListenStatistics", "RETRY_LISTEN_AFTER"]

logger = logging.getLogger(__name__)

RETRY_LISTEN_AFTER = 1.0
"""Seconds after a refused LISTEN before the next try (polling meanwhile)."""


class Wakeup:
    """A wake-up that is never lost between a look for work and the wait that follows it."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._set = False  # set() since the last arm(): what tells a wake-up from a time-out

    def arm(self) -> None:
        """Call before looking for work: a :meth:`set` from now on ends the next wait."""
        self._event = anyio.Event()
        self._set = False

    def set(self) -> None:
        self._set = True
        if self._event is None:
            self._event = anyio.Event()
        self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self, at_most: float = math.inf) -> bool:
        """Wait until :meth:`set` (True) or ``at_most`` seconds have passed (False). The time
        limit is a timer of the loop's that sets the event (:func:`events.environment.set_after`),
        not a cancel scope: a wait that runs out is the common case, and this way it is cheap."""
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        await environment.set_after(event, at_most)
        if not self._set and self._event is event:
            self._event = anyio.Event()  # set by the timer: the next wait waits again
        return self._set


Opener = Callable[[Callable[..., Any]], Awaitable[ListenConnection]]
"""Opens a LISTEN connection with ``on_lost(connection)``; raises StoreError when it cannot."""


class ListenStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The hub at one moment: whether its connection is open, the followers of each channel,
    and how many connections it has opened so far."""

    connected: bool
    followers: dict[str, int]
    opened: int


class ListenHub:
    """One LISTEN connection shared by every follower of a process (see the module
    docstring). ``clock`` times the pause after a refusal."""

    def __init__(
        self, open_connection: Opener, *, clock: Callable[[], float] = anyio.current_time
    ) -> None:
        self._open = open_connection
        self._clock = clock
        self._conn: ListenConnection | None = None
        self._channels: dict[str, set[Listener]] = {}  # followers, active or not
        self._listening: set[str] = set()  # channels LISTENed on the current connection
        self._failed_at: float | None = None
        self._lock: anyio.Lock | None = None
        self._opened = 0
        self._closed = False

    @classmethod
    def for_database(cls, dsn: str, limits: SessionLimits | None) -> ListenHub:
        """A hub on the database at ``dsn``, its connection carrying ``limits``."""

        async def open_connection(on_lost: Callable[..., Any]) -> ListenConnection:
            return await open_listener(dsn, on_lost, limits)

        return cls(open_connection)

    def listener(
        self,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None = None,
        who: str,
        poll_interval: float,
    ) -> Listener:
        """A follower of ``channel``: ``on_notify(payload)`` for each notification,
        ``on_lost()`` when the connection drops. ``who`` names it in the log line a refusal
        writes; ``poll_interval`` is how often it polls meanwhile."""
        return Listener(
            self,
            channel,
            on_notify=on_notify,
            on_lost=on_lost,
            who=who,
            poll_interval=poll_interval,
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def statistics(self) -> ListenStatistics:
        return ListenStatistics(
            connected=self.connected,
            followers={
                channel: active
                for channel, followers in sorted(self._channels.items())
                if (active := sum(1 for f in followers if f.active and self.connected))
            },
            opened=self._opened,
        )

    async def close(self) -> None:
        """Close the connection for good (the store is closing): followers poll from now on."""
        self._closed = True
        conn, self._conn = self._conn, None
        self._listening.clear()
        for followers in self._channels.values():
            for follower in followers:
                follower.active = False
        await close_listener(conn)

    # -- for Listener ----------------------------------------------------------------------------
    async def _join(self, follower: Listener) -> bool:
        """Listen for ``follower``: whether it listens now (False: refused, poll meanwhile)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._closed:
                return False
            if not self.connected:
                now = self._clock()
                if self._failed_at is not None and now - self._failed_at < RETRY_LISTEN_AFTER:
                    return False  # polling covers us; do not hammer a server that just refused
                try:
                    self._conn = await self._open(self._lost)
                except StoreError as exc:
                    self._refused(follower, exc)
                    return False
                self._opened += 1
                self._failed_at = None
                self._listening = set()
            assert self._conn is not None
            channel = follower.channel
            if channel not in self._listening:
                try:
                    await listen_on(self._conn, channel, self._notified)
                except StoreError as exc:
                    self._refused(follower, exc)
                    return False
                self._listening.add(channel)
            self._channels.setdefault(channel, set()).add(follower)
            follower.active = True
            return True

    async def _leave(self, follower: Listener) -> None:
        """Forget ``follower``; UNLISTEN its channel if it was the last to follow it, close the
        connection if nobody follows any more. Shielded: a follower cancelled on its way out
        (an actor stopped) must not leave the connection open behind it."""
        follower.active = False
        followers = self._channels.get(follower.channel)
        if followers is None or follower not in followers:
            return
        followers.discard(follower)
        if self._lock is None:
            self._lock = anyio.Lock()
        with anyio.CancelScope(shield=True):
            await self._release_unfollowed(follower.channel)

    async def _release_unfollowed(self, channel: str) -> None:
        assert self._lock is not None
        async with self._lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            if not any(self._channels.values()):
                # Nobody follows any more: the connection goes back.
                self._conn = None
                self._listening.clear()
                await close_listener(conn)
            elif not self._channels.get(channel) and channel in self._listening:
                self._listening.discard(channel)
                # On a failure the connection is terminated: the others are told (_lost).
                with contextlib.suppress(StoreError):
                    await unlisten(conn, channel, self._notified)

    def _refused(self, follower: Listener, error: StoreError) -> None:
        self._failed_at = self._clock()
        others = sum(len(f) for f in self._channels.values())
        logger.info(
            "%s cannot LISTEN (%s); polling every %.1fs%s",
            follower.who,
            error,
            follower.nominal_poll,
            f" (as are the {others} other followers of this process)" if others else "",
            extra={"action": "listen_failed"},
        )

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        for follower in list(self._channels.get(channel, ())):
            if follower.active:
                follower.on_notify(str(payload))

    def _lost(self, connection: object) -> None:
        if connection is not self._conn and self._conn is not None:
            return  # an older connection, already replaced
        self._conn = None
        self._listening.clear()
        for followers in list(self._channels.values()):
            for follower in list(followers):
                if follower.active:
                    follower.active = False
                    if follower.on_lost is not None:
                        follower.on_lost()


class Listener:
    """One follower's hold on its process's LISTEN connection (:meth:`ListenHub.listener`)."""

    def __init__(
        self,
        hub: ListenHub,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None,
        who: str,
        poll_interval: float,
    ) -> None:
        self.hub = hub
        self.channel = channel
        self.on_notify = on_notify
        self.on_lost = on_lost
        self.who = who
        self.nominal_poll = poll_interval
        self.active = False  # registered on a live connection that LISTENs on the channel

    @property
    def poll_interval(self) -> float:
        """Seconds until the follower's next look when nothing wakes it: its interval, give or
        take a quarter at random, so that followers started together (a worker's actors)
        drift apart instead of polling at the same instant and needing as many connections
        at once."""
        return self.nominal_poll * random.uniform(0.75, 1.25)

    @property
    def listening(self) -> bool:
        return self.active and self.hub.connected

    async def listen(self) -> bool:
        """Listen unless listening already (or refused less than a second ago): whether it
        started listening now. A refusal is logged; the follower polls meanwhile."""
        if self.listening:
            return False
        return await self.hub._join(self)

    async def close(self) -> None:
        """Stop following (the connection closes once nobody follows)."""
        await self.hub._leave(self)
