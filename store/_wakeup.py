"""Waking a follower: LISTEN when it can, poll anyway.

Subscriptions (channel ``i3lani_events``) and task processors (``i3lani_tasks``) follow work
that others commit. Each keeps a LISTEN connection when it can be had and polls in any case,
so a lost notification, a dropped connection or a server that refuses only delays it:

* :class:`Wakeup` is the wake-up itself, never lost: re-armed before each look for work, a
  wake-up that comes during the look makes the following wait return at once.
* :class:`Listener` keeps the LISTEN connection: opened when asked, not tried again within a
  second of a refusal (polling covers that second; a server that just refused is not hammered),
  and dropped when it is lost (the owner is told, and asks again on its next round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from events.errors import StoreError
from store.limits import SessionLimits
from store.listener import ListenConnection, close_listener, open_listener

__all__ = ["Wakeup", "Listener", "RETRY_LISTEN_AFTER"]

logger = logging.getLogger(__name__)

RETRY_LISTEN_AFTER = 1.0
"""Seconds after a refused LISTEN before the next try (polling meanwhile)."""


class Wakeup:
    """A wake-up that is never lost between a look for work and the wait that follows it."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def arm(self) -> None:
        """Call before looking for work: a :meth:`set` from now on ends the next wait."""
        self._event = anyio.Event()

    def set(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        self._event.set()

    def is_set(self) -> bool:
        return self._event is not None and self._event.is_set()

    async def wait(self, at_most: float = math.inf) -> bool:
        """Wait until :meth:`set` (True) or ``at_most`` seconds have passed (False)."""
        if self._event is None:
            self._event = anyio.Event()
        with anyio.move_on_after(at_most):
            await self._event.wait()
            return True
        return False


Opener = Callable[
    [Callable[..., Any], Callable[..., Any]],
    Awaitable[ListenConnection],
]
"""Opens a LISTEN connection with (on_notify(connection, pid, channel, payload),
on_lost(connection)); raises StoreError when it cannot."""


class Listener:
    """A LISTEN connection, kept when it can be had: ``on_notify(payload)`` for each
    notification, ``on_lost()`` when the connection drops. ``who`` names the owner in the log
    line a refusal writes; ``poll_interval`` is how often it polls meanwhile."""

    def __init__(
        self,
        open_connection: Opener,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None] | None = None,
        who: str,
        poll_interval: float,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._open = open_connection
        self._on_notify = on_notify
        self._on_lost = on_lost
        self.who = who
        self.poll_interval = poll_interval
        self._clock = clock
        self._conn: ListenConnection | None = None
        self._failed_at: float | None = None

    @classmethod
    def for_channel(
        cls,
        dsn: str,
        channel: str,
        limits: SessionLimits | None,
        **options: Any,
    ) -> Listener:
        """A listener on ``channel`` of the database at ``dsn`` (see :func:`open_listener`)."""

        async def open_connection(
            on_notify: Callable[..., Any], on_lost: Callable[..., Any]
        ) -> ListenConnection:
            return await open_listener(dsn, channel, on_notify, on_lost, limits)

        return cls(open_connection, **options)

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def listen(self) -> bool:
        """Open the connection unless it is open (or was refused less than a second ago):
        whether it was opened now. A refusal is logged; the owner polls meanwhile."""
        if self.listening:
            return False
        now = self._clock()
        if self._failed_at is not None and now - self._failed_at < RETRY_LISTEN_AFTER:
            return False  # polling covers us; do not hammer a server that just refused
        try:
            conn = await self._open(self._notified, self._lost)
        except StoreError as exc:
            self._failed_at = now
            logger.info(
                "%s cannot LISTEN (%s); polling every %.1fs",
                self.who,
                exc,
                self.poll_interval,
                extra={"action": "listen_failed"},
            )
            return False
        self._failed_at = None
        self._conn = conn
        return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await close_listener(conn)

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        self._on_notify(str(payload))

    def _lost(self, connection: object) -> None:
        self._conn = None
        if self._on_lost is not None:
            self._on_lost()
