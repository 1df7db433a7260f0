"""Tells users what became of their payments: a follower of the ``payment`` category.

:func:`payment_notice` (pure) words the message for one payment event; :func:`run_notifier`
follows the log under the checkpoint ``gateway-notifier`` and sends each notice through
:class:`actors.telegram.TelegramClient` (flood control waited out, transient failures
retried), saving the checkpoint **after** sending. Delivery is therefore at least once: a
crash between the send and the save repeats that one notice, and nothing is ever skipped; a
notice the Bot API cannot take for now is kept and sent again later. A user who blocked the
bot is logged and passed over. The first run starts at the head of the
log, so payments settled before the gateway ever ran are not announced.

Two gateways running at once (Render overlaps instances on every deploy) share the checkpoint:
when the other one moved it, this one starts over from the stored checkpoint.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from anyio.abc import TaskStatus

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

__all__ = ["NOTIFIER_CHECKPOINT", "payment_notice", "run_notifier"]

logger = logging.getLogger(__name__)

NOTIFIER_CHECKPOINT: Final = "gateway-notifier"
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


async def _notify(
    store: EventStore | MemoryLog, telegram: TelegramClient, recorded: RecordedEvent
) -> None:
    if isinstance(recorded.event, PaymentCreated):
        return
    created = await views.first_event(store, recorded.stream, PaymentCreated)
    if created is None:
        return  # not a payment stream (payment-scan-...), or a payment of unknown origin
    text = payment_notice(recorded.event, created)
    if text is None:
        return
    # The notice sent, in the trace of the decision that recorded the event (if traced).
    with tracing.span(
        f"notify {recorded.type}",
        parent=recorded.metadata.traceparent,
        attributes={"i3lani.stream": recorded.stream, "i3lani.position": recorded.position},
    ):
        problem = await telegram.deliver(created.user_id, text)
    if problem is not None and problem.kind in ("unavailable", "rate_limited"):
        # The Bot API is down or busy for now: keep the notice (the checkpoint stays before
        # it) and send it again later, rather than lose it.
        raise NoticeDeferred(created.payment_id, problem)
    logger.info(
        "payment %s: %s notice %s to user %s",
        created.payment_id,
        recorded.type,
        "sent" if problem is None else f"NOT delivered ({problem.kind}: {problem.description})",
        created.user_id,
        extra={"action": "gateway_payment_notice"},
    )


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
                async for recorded in sub:
                    await _notify(store, telegram, recorded)
                    await sub.save_checkpoint(recorded)
                    delay = retry_delay
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
