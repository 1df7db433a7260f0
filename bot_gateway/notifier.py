"""Tells users what became of their payments: a follower of the ``payment`` category.

:func:`payment_notice` (pure) words the message for one payment event; :func:`run_notifier`
follows the log under the checkpoint ``gateway-notifier`` and sends each notice through
:class:`actors.telegram.TelegramClient` (flood control waited out, transient failures
retried), saving the checkpoint **after** sending. Delivery is therefore at least once: a
crash between the send and the save repeats the notices sent since the last save, and nothing
is ever skipped; a notice the Bot API cannot take for now is kept and sent again later. A user
who blocked the bot is logged and passed over. The first run starts at the head of the
log, so payments settled before the gateway ever ran are not announced.

**At once.** The follower is woken by the append's notification (LISTEN/NOTIFY; its poll
interval is only the fallback), and a notice goes out as soon as its event is read: each
user's notices go through a lane of their own (in log order for that user), up to
:data:`MAX_SENDING` users at a time, so one user's slow send, or the Bot API's flood control
on one chat (Telegram takes about one message a second per chat, so a payment's second notice,
the plan's activation, may wait its turn), never holds back another user's confirmation. The
checkpoint follows the longest run of events whose notices are all sent, so nothing past an
unsent notice is ever taken for done; a notice already sent is not sent again when the follower
resumes in the same process.

Two gateways running at once (Render overlaps instances on every deploy) share the checkpoint:
when the other one moved it, this one starts over from the stored checkpoint.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from actors.runtime import tracing
from actors.telegram import ChatProblem, TelegramClient
from actors.ton import format_ton
from events import (
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
)
from events.base import Event
from events.errors import CheckpointConflict, StoreUnavailable
from events.streams import PAYMENT
from store import Cursor, EventStore, RecordedEvent, views
from store.memory import MemoryLog
from store.subscription import Subscription

__all__ = ["NOTIFIER_CHECKPOINT", "MAX_SENDING", "payment_notice", "run_notifier"]

logger = logging.getLogger(__name__)

NOTIFIER_CHECKPOINT: Final = "gateway-notifier"
MAX_SENDING: Final = 8
"""Users whose notices are being sent at once (each user's in order)."""
MAX_AHEAD: Final = 256
"""Events read past the checkpoint at most, while the notices before them are sent."""
_RETRY_DELAY: Final = 1.0
_MAX_RETRY_DELAY: Final = 60.0


def payment_notice(event: Event, created: PaymentCreated) -> str | None:
    """The message for ``event`` of the payment ``created``; ``None``: nothing to tell. Pure."""
    pid = created.payment_id
    if isinstance(event, PaymentConfirmed):
        text = f"Payment #{pid} is confirmed: {format_ton(event.amount_nanotons)} TON received."
        if event.overpaid_nanotons:
            text += f" You sent {format_ton(event.overpaid_nanotons)} TON more than needed."
        return text + " Thank you!"
    if isinstance(event, SubscriptionActivated):
        return f"Your {event.plan} plan is active until {event.ends_at:%Y-%m-%d %H:%M} UTC."
    if isinstance(event, PaymentUnderpaid):
        missing = event.expected_nanotons - event.amount_nanotons
        return (
            f"Payment #{pid} is underpaid: {format_ton(event.amount_nanotons)} TON arrived, "
            f"{format_ton(event.expected_nanotons)} TON is due ({format_ton(missing)} TON "
            "missing). It is not confirmed; contact support to settle it."
        )
    if isinstance(event, PaymentExpired):
        return (
            f"Payment #{pid} ({created.plan}) expired before a transfer arrived. "
            f"Send /subscribe {created.plan} to get a new one."
        )
    if isinstance(event, LatePaymentReceived):
        return (
            f"Your transfer for payment #{pid} arrived after it expired. It is recorded and "
            "kept for manual review; support will contact you."
        )
    return None


class NoticeDeferred(Exception):
    """A notice the Bot API could not take for now (down, or flood control too long)."""

    def __init__(self, payment_id: int, problem: ChatProblem) -> None:
        super().__init__(
            f"payment {payment_id}'s notice not delivered for now: {problem.kind} "
            f"({problem.description})"
        )


class _Notice:
    """One notice to send: to whom, what, and for which payment."""

    __slots__ = ("payment_id", "text", "user_id")

    def __init__(self, user_id: int, text: str, payment_id: int) -> None:
        self.user_id, self.text, self.payment_id = user_id, text, payment_id


async def _notice_for(store: EventStore | MemoryLog, recorded: RecordedEvent) -> _Notice | None:
    """The notice ``recorded`` calls for, if any (reads the payment's creation)."""
    if isinstance(recorded.event, PaymentCreated):
        return None
    created = await views.first_event(store, recorded.stream, PaymentCreated)
    if created is None:
        return None  # not a payment stream (payment-scan-...), or a payment of unknown origin
    text = payment_notice(recorded.event, created)
    if text is None:
        return None
    return _Notice(created.user_id, text, created.payment_id)


async def _send(telegram: TelegramClient, recorded: RecordedEvent, notice: _Notice) -> None:
    # The notice sent, in the trace of the decision that recorded the event (if traced).
    with tracing.span(
        f"notify {recorded.type}",
        parent=recorded.metadata.traceparent,
        attributes={"i3lani.stream": recorded.stream, "i3lani.position": recorded.position},
    ):
        problem = await telegram.deliver(notice.user_id, notice.text)
    if problem is not None and problem.kind in ("unavailable", "rate_limited"):
        # The Bot API is down or busy for now: keep the notice (the checkpoint stays before
        # it) and send it again later, rather than lose it.
        raise NoticeDeferred(notice.payment_id, problem)
    logger.info(
        "payment %s: %s notice %s to user %s",
        notice.payment_id,
        recorded.type,
        "sent" if problem is None else f"NOT delivered ({problem.kind}: {problem.description})",
        notice.user_id,
        extra={"action": "gateway_payment_notice"},
    )


@dataclass(slots=True, eq=False)
class _Entry:
    recorded: RecordedEvent
    done: bool = False


@dataclass(slots=True, eq=False)
class _Lane:
    """One user's notices: sent one at a time, in log order."""

    lock: anyio.Lock
    queued: int = 0


class _Lanes:
    """The notices of one subscription's run, sent in per-user lanes (see the module
    docstring); the checkpoint is saved over the prefix of events that are done."""

    def __init__(
        self,
        store: EventStore | MemoryLog,
        telegram: TelegramClient,
        sub: Subscription,
        tg: TaskGroup,
        sent: set[uuid.UUID],
        delivered: Callable[[], None],
    ) -> None:
        self.store, self.telegram, self.sub, self.tg = store, telegram, sub, tg
        self.delivered = delivered  # told of each notice sent
        self.sent = sent  # notices sent whose events the checkpoint has not passed yet
        self.entries: deque[_Entry] = deque()
        self.lanes: dict[int, _Lane] = {}
        self.slots = anyio.CapacityLimiter(MAX_SENDING)
        self.saving = anyio.Lock()
        self.progress = anyio.Event()
        self.failure: Exception | None = None

    async def add(self, recorded: RecordedEvent) -> None:
        """Take the next event read: its notice starts on its user's lane (or it is done)."""
        while len(self.entries) >= MAX_AHEAD and self.failure is None:
            await self.progress.wait()
            self.progress = anyio.Event()
        if self.failure is not None:
            raise self.failure
        entry = _Entry(recorded)
        self.entries.append(entry)
        notice = None if recorded.event_id in self.sent else await _notice_for(self.store, recorded)
        if notice is None:
            entry.done = True
            await self._checkpoint()
            return
        lane = self.lanes.get(notice.user_id)
        if lane is None:
            lane = self.lanes[notice.user_id] = _Lane(anyio.Lock())
        lane.queued += 1
        self.tg.start_soon(self._deliver, entry, notice, lane)

    async def _deliver(self, entry: _Entry, notice: _Notice, lane: _Lane) -> None:
        try:
            async with lane.lock, self.slots:
                if self.failure is not None:
                    return
                await _send(self.telegram, entry.recorded, notice)
            self.delivered()
            self.sent.add(entry.recorded.event_id)
            entry.done = True
            await self._checkpoint()
        except Exception as exc:  # ends this run: run_notifier decides what follows
            if self.failure is None:
                self.failure = exc
            self.progress.set()
            self.tg.cancel_scope.cancel()
        finally:
            lane.queued -= 1
            if not lane.queued:
                self.lanes.pop(notice.user_id, None)

    async def _checkpoint(self) -> None:
        """Save the checkpoint past every event at the front whose notice is done."""
        async with self.saving:
            passed: list[_Entry] = []
            while self.entries and self.entries[0].done:
                passed.append(self.entries.popleft())
            if not passed:
                return
            self.progress.set()
            await self.sub.save_checkpoint(passed[-1].recorded)
            self.sent.difference_update(e.recorded.event_id for e in passed)

    def finish(self) -> None:
        """After the run's task group: a lane's failure, if any, raised as the run's."""
        if self.failure is not None:
            raise self.failure


async def run_notifier(
    store: EventStore | MemoryLog,
    telegram: TelegramClient,
    *,
    name: str = NOTIFIER_CHECKPOINT,
    poll_interval: float = 1.0,
    retry_delay: float = _RETRY_DELAY,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Follow ``payment-*`` forever, notifying each payment's user; started once subscribed.

    A notice the Bot API cannot take for now (5xx, timeouts, flood control too long) is kept:
    the checkpoint stays before it and it is sent again after a growing delay (1 s to 60 s),
    so no confirmed payment goes unannounced for an outage. A refusal (the user blocked the
    bot) is logged and passed over. ``retry_delay`` is the first of those delays."""
    started = False
    delay = retry_delay
    first: Cursor | None = None  # where this process began, before any checkpoint was saved
    sent: set[uuid.UUID] = set()  # notices sent past the checkpoint: not sent again

    def delivered() -> None:
        nonlocal delay
        delay = retry_delay  # the Bot API takes notices again: the next failure starts over

    while True:
        try:
            # The first run starts at the head of the log: payments settled before the gateway
            # ever ran are not announced again.
            after = None
            if await store.load_checkpoint(name) is None:
                first = after = first if first is not None else await store.head()
            async with store.subscribe(
                name,
                category=PAYMENT,
                after=after,
                poll_interval=poll_interval,
                skip_unknown=True,
            ) as sub:
                if not started:
                    started = True
                    task_status.started()
                lanes: _Lanes | None = None
                try:
                    async with anyio.create_task_group() as tg:
                        lanes = _Lanes(store, telegram, sub, tg, sent, delivered)
                        async for recorded in sub:
                            await lanes.add(recorded)
                except BaseExceptionGroup as group:
                    # One failure ends the run (the lanes' are caught in them): as itself.
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
                if lanes is not None:
                    lanes.finish()
        except CheckpointConflict:
            logger.info(
                "notifier checkpoint moved by another gateway; resuming from it",
                extra={"action": "gateway_notifier_resume"},
            )
        except (StoreUnavailable, NoticeDeferred) as exc:
            logger.warning(
                "notifier: %s; retrying in %.0fs",
                exc,
                delay,
                extra={"action": "gateway_notifier_retry"},
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)
