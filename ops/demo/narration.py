"""Telling the log as it happens: one line per event (:class:`StreamView`), coloured on
a terminal (:class:`Console`), followed by a subscription.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import anyio
from anyio.abc import TaskStatus

from actors.refunds import owed_for
from actors.ton import format_ton
from events import (
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    ActorTicked,
    AlertRaised,
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
    CleanupCompleted,
    HealthChecked,
    LatePaymentReceived,
    LogSealed,
    OperatorCommandIssued,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
    UserRegistered,
    WalletScanned,
)
from events.payments import (
    RefundConfirmed,
    RefundDeclined,
    RefundDue,
    RefundSent,
    RefundUnconfirmed,
    TransferReceived,
    TransferSent,
    TransfersReconciled,
)
from events.tasks import TaskDeadLettered, TaskFailed
from store import EventStore, RecordedEvent
from store.records import START, Cursor

# -- showing the log ----------------------------------------------------------------------------
Tone = Literal["plain", "good", "warn", "bad", "action", "note"]


@dataclass(frozen=True)
class StreamLine:
    """One line of the live stream: who it is about, what happened, and how it should look."""

    label: str
    text: str
    tone: Tone = "plain"


def short(text: str, keep: int = 6) -> str:
    return text if len(text) <= keep + 3 else f"{text[:keep]}..."


def short_wallet(text: str) -> str:
    return text if len(text) <= 14 else f"{text[:6]}...{text[-5:]}"


def ton(nanotons: int) -> str:
    return f"{format_ton(nanotons)} TON"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def clock_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def _source(source: str) -> str:
    kind, _, rest = source.partition(":")
    if kind == "user":
        return f"user {rest} joined through their link"
    if kind == "channel":
        return f"channel @{rest} added"
    return source


_NOISE: Final[dict[type[Any], str]] = {
    ActorTicked: "actor ticks",
    WalletScanned: "wallet scans",
    HealthChecked: "health checks",
    CleanupCompleted: "cleanup passes",
    TransferReceived: "transfers recorded (each told by its payment's line)",
}
_TOLD_BY_PAYMENT: Final = frozenset({"confirmed", "overpaid", "underpaid", "late"})
_IGNORED: Final[dict[str, str]] = {
    "bounced": "a bounce",
    "aborted": "aborted",
    "failed": "failed on chain",
    "not-text-comment": "not a plain TON transfer",
    "has-out-messages": "sent straight back",
    "compute-skipped": "never processed by the wallet",
}


@dataclass
class StreamView:
    """Turns recorded events into stream lines (``None``: not shown, counted in
    :attr:`skipped`). Remembers what it needs to word later events: payments' expiry, channels'
    last counts, the last health verdict. Everything it says comes from the log: a transfer the
    PaymentMonitor scanned and left unpaid (a second payment, an unknown memo) is told from its
    ``TransferReceived``, the money owed back from its ``RefundDue``."""

    skipped: Counter[str] = field(default_factory=Counter)
    _expires: dict[int, datetime] = field(default_factory=dict)
    _channels: dict[str, str] = field(default_factory=dict)  # the last measurement, worded
    _healthy: bool | None = None
    _cleanup_shown: bool = False

    def describe(self, recorded: RecordedEvent) -> list[StreamLine]:
        event = recorded.event
        kind = type(event)
        if isinstance(event, WalletScanned):
            self.skipped[_NOISE[kind]] += 1
            return []
        if isinstance(event, HealthChecked):
            return self._health(event)
        if isinstance(event, CleanupCompleted):
            self.skipped[_NOISE[kind]] += 1
            if self._cleanup_shown and not any(event.removed.values()):
                return []
            self._cleanup_shown = True
            removed = ", ".join(
                f"{n} {what.replace('_', ' ')}" for what, n in event.removed.items()
            )
            return [StreamLine("Cleanup", f"pass done: removed {removed}")]
        if isinstance(event, ActorTicked) or (
            isinstance(event, TransferReceived) and event.category in _TOLD_BY_PAYMENT
        ):
            self.skipped[_NOISE[kind]] += 1
            return []
        if recorded.category == "task":
            return self._task(event)
        if isinstance(event, ChannelStatsUpdated | ChannelStatsFailed) and self._repeated(event):
            return []
        line = (
            self._payment(event)
            or self._transfer(event)
            or self._refund(event)
            or self._reward(event)
            or self._channel(event)
            or self._actor(event)
            or self._operations(event)
        )
        if line is None:
            self.skipped["other events"] += 1
            return []
        return [line]

    # -- by domain ---------------------------------------------------------------------------
    def _payment(self, event: Any) -> StreamLine | None:
        match event:
            case UserRegistered():
                via = f", referred by user {event.referred_by}" if event.referred_by else ""
                name = f" as @{event.username}" if event.username else ""
                return StreamLine(f"user {event.user_id}", f"registered{name}{via}")
            case PaymentCreated():
                self._expires[event.payment_id] = event.expires_at
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"created for user {event.user_id}: {event.plan} plan, "
                    f"{ton(event.amount_nanotons)}, memo {event.memo}, "
                    f"pay by {clock_time(event.expires_at)}",
                )
            case PaymentConfirmed():
                extra = (
                    f", {ton(event.overpaid_nanotons)} more than asked"
                    if event.overpaid_nanotons
                    else ""
                )
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"CONFIRMED  {ton(event.amount_nanotons)}  tx {short(event.tx_hash)}{extra}",
                    "good",
                )
            case SubscriptionActivated():
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"{event.plan} plan active for user {event.user_id} until "
                    f"{event.ends_at:%Y-%m-%d}",
                    "good",
                )
            case PaymentUnderpaid():
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"UNDERPAID  {ton(event.amount_nanotons)} of "
                    f"{ton(event.expected_nanotons)}  tx {short(event.tx_hash)}: not confirmed",
                    "warn",
                )
            case LatePaymentReceived():
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"LATE  {ton(event.amount_nanotons)} arrived after it expired  "
                    f"tx {short(event.tx_hash)}: not confirmed, for an operator to refund or "
                    "honour",
                    "warn",
                )
            case PaymentExpired():
                due = self._expires.get(event.payment_id)
                when = f" (due by {clock_time(due)})" if due else ""
                return StreamLine(
                    f"payment {event.payment_id}", f"EXPIRED without a full payment{when}", "warn"
                )
        return None

    def _transfer(self, event: Any) -> StreamLine | None:
        """Transfers no payment event tells: a second payment, an unknown or missing memo,
        an ignored one, and what the wallet sent; the others are counted as noise."""
        match event:
            case TransferReceived(category="second-payment"):
                return StreamLine(
                    f"payment {event.payment_id}",
                    f"another {ton(event.amount_nanotons)} (tx {short(event.tx_hash)}) recorded "
                    "and NOT confirmed again: the payment is already paid",
                    "warn",
                )
            case TransferReceived(category="unknown-memo" | "no-memo"):
                memo = f"memo {event.memo!r}" if event.memo else "no memo"
                return StreamLine(
                    "wallet",
                    f"{ton(event.amount_nanotons)} from {short_wallet(event.payer)} with {memo} "
                    f"(tx {short(event.tx_hash)}): names no payment, recorded",
                    "warn",
                )
            case TransferReceived(category="ignored"):
                why = _IGNORED.get(event.reason, event.reason)
                return StreamLine(
                    "wallet",
                    f"{ton(event.amount_nanotons)} (tx {short(event.tx_hash)}) recorded and "
                    f"ignored: {why}",
                    "warn",
                )
            case TransferSent():
                to = ", ".join(short_wallet(m.destination) for m in event.messages)
                total = sum(m.amount_nanotons for m in event.messages)
                return StreamLine(
                    "wallet", f"sent {ton(total)} to {to} (tx {short(event.tx_hash)}), recorded"
                )
            case TransfersReconciled():
                verdict = (
                    "every transfer matches"
                    if not event.discrepancies
                    else f"{event.discrepancies} DISCREPANCIES, the admins are alerted"
                )
                return StreamLine(
                    "Cleanup",
                    "wallet reconciled with TonAPI since the last pass: "
                    f"{_count(event.transactions, 'transaction')} on chain, {event.recorded} "
                    f"recorded: {verdict}",
                    "good" if not event.discrepancies else "bad",
                )
        return None

    def _refund(self, event: Any) -> StreamLine | None:
        match event:
            case RefundDue():
                return StreamLine(
                    f"refund {event.refund_id[:8]}",
                    f"DUE  {ton(event.amount_nanotons)} back to {short_wallet(event.to)}: "
                    f"{owed_for(event.category, event.payment_id)}",
                    "warn",
                )
            case RefundSent():
                return StreamLine(
                    f"refund {event.refund_id[:8]}",
                    f"marked refunded by {event.requested_by} with tx {short(event.tx_hash)}: "
                    "the next wallet scan checks it",
                )
            case RefundConfirmed():
                return StreamLine(
                    f"refund {event.refund_id[:8]}",
                    f"REFUNDED  {ton(event.amount_nanotons)} sent in tx {short(event.tx_hash)}, "
                    "confirmed on chain",
                    "good",
                )
            case RefundUnconfirmed():
                return StreamLine(
                    f"refund {event.refund_id[:8]}",
                    f"NOT confirmed: {event.reason}; due again",
                    "bad",
                )
            case RefundDeclined():
                return StreamLine(
                    f"refund {event.refund_id[:8]}",
                    f"declined by {event.requested_by}: {event.reason}",
                )
        return None

    def _reward(self, event: Any) -> StreamLine | None:
        match event:
            case RewardEarned():
                return StreamLine(
                    f"user {event.user_id}",
                    f"earned {ton(event.amount_nanotons)}: {_source(event.source)}",
                )
            case RewardCredited():
                return StreamLine(
                    f"user {event.user_id}",
                    f"credited {ton(event.amount_nanotons)}, balance now "
                    f"{ton(event.balance_after_nanotons)}",
                    "good",
                )
            case RewardFailed():
                return StreamLine(
                    f"user {event.user_id}",
                    f"reward FAILED after {event.attempts} attempts: {event.error}",
                    "bad",
                )
        return None

    def _channel(self, event: Any) -> StreamLine | None:
        match event:
            case ChannelAdded():
                return StreamLine(event.channel, f"added by user {event.added_by}")
            case ChannelStatsUpdated():
                return StreamLine(
                    event.channel,
                    f"{event.subscribers:,} subscribers, {event.active_subscribers:,} active",
                )
            case ChannelPriceChanged():
                was = (
                    f" (was {ton(event.old_price_nanotons)})"
                    if event.old_price_nanotons is not None
                    else ""
                )
                return StreamLine(
                    event.channel, f"priced {ton(event.new_price_nanotons)}{was}", "good"
                )
            case ChannelStatsFailed():
                return StreamLine(
                    event.channel, f"not measured: {event.kind}, {event.description}", "warn"
                )
        return None

    def _actor(self, event: Any) -> StreamLine | None:
        match event:
            case ActorStarted():
                return StreamLine(
                    event.actor, f"started on {event.node} (generation {event.generation})"
                )
            case ActorCrashed():
                return StreamLine(
                    event.actor,
                    f"CRASHED after {event.uptime_seconds:.1f} s: {event.error_type}: "
                    f"{event.message}",
                    "bad",
                )
            case ActorBackoffScheduled():
                return StreamLine(
                    event.actor,
                    f"supervisor: restart in {event.delay_seconds:.2f} s (attempt {event.attempt})",
                    "warn",
                )
            case ActorRestarted():
                why = {"crash": "after the crash", "operator": "by an operator"}.get(
                    event.cause, f"({event.cause})"
                )
                who = f" {event.requested_by}" if event.requested_by else ""
                return StreamLine(event.actor, f"restarted {why}{who}", "good")
            case ActorStopped():
                return StreamLine(event.actor, f"stopped: {event.reason}")
            case ActorParked():
                return StreamLine(event.actor, f"PARKED: {event.reason}", "bad")
        return None

    def _operations(self, event: Any) -> StreamLine | None:
        match event:
            case AlertRaised():
                tone: Tone = "good" if event.subject == "recovered" else "bad"
                what = (
                    f"health {event.subject}"
                    if event.kind == "health"
                    else f"{event.subject}: {event.message}"
                )
                return StreamLine("alert", f"sent to the admins by Telegram: {what}", tone)
            case LogSealed():
                return StreamLine(
                    "Sealer",
                    f"seal {event.seal}: the log up to #{event.last_position} "
                    f"({event.total} events), sha256 {short(event.hash, 12)}; digest sent to "
                    "the admins",
                )
            case OperatorCommandIssued():
                why = f" ({event.reason})" if event.reason else ""
                return StreamLine(
                    "operator", f"{event.action} {event.actor} by {event.requested_by}{why}"
                )
        return None

    def _repeated(self, event: ChannelStatsUpdated | ChannelStatsFailed) -> bool:
        """Whether a channel's measurement says what the last one said (not shown again)."""
        if isinstance(event, ChannelStatsUpdated):
            said = f"{event.subscribers} subscribers"
        else:
            said = f"{event.kind}: {event.description}"
        if self._channels.get(event.channel) == said:
            self.skipped["repeated channel measurements"] += 1
            return True
        self._channels[event.channel] = said
        return False

    def _task(self, event: Any) -> list[StreamLine]:
        if isinstance(event, TaskFailed):
            return [
                StreamLine(f"task {event.task_id}", f"failed: {short(event.error, 100)}", "warn")
            ]
        if isinstance(event, TaskDeadLettered):
            return [
                StreamLine(
                    f"task {event.task_id}",
                    f"DEAD-LETTERED after {event.attempts} attempts: {short(event.error, 100)}",
                    "bad",
                )
            ]
        self.skipped["task steps"] += 1
        return []

    def _health(self, event: HealthChecked) -> list[StreamLine]:
        self.skipped[_NOISE[HealthChecked]] += 1
        if event.healthy is self._healthy:
            return []
        self._healthy = event.healthy
        if event.healthy:
            return [StreamLine("health", f"healthy: all {len(event.checks)} checks pass", "good")]
        failing = "; ".join(f"{c.name}: {c.detail or 'failed'}" for c in event.checks if not c.ok)
        return [StreamLine("health", f"FAILING: {short(failing, 140)}", "warn")]


_COLOURS: Final[dict[Tone, str]] = {
    "plain": "",
    "good": "\x1b[32m",
    "warn": "\x1b[33m",
    "bad": "\x1b[1;31m",
    "action": "\x1b[36m",
    "note": "\x1b[1m",
}
_DIM: Final = "\x1b[2m"
_RESET: Final = "\x1b[0m"


class Console:
    """Where the story is told: ``HH:MM:SS  label  > text`` for what the simulated users (and
    the demo) do, ``HH:MM:SS  label    text`` for events. Colours only on a terminal."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color

    def _paint(self, tone: Tone, text: str) -> str:
        code = _COLOURS[tone]
        return f"{code}{text}{_RESET}" if self.color and code else text

    def line(self, at: datetime, label: str, text: str, tone: Tone = "plain") -> None:
        stamp = clock_time(at)
        if self.color:
            stamp = f"{_DIM}{stamp}{_RESET}"
        mark = "> " if tone == "action" else "  "
        print(f"{stamp}  {label:<17}{mark}{self._paint(tone, text)}", file=self.out, flush=True)

    def act(self, label: str, text: str) -> None:
        self.line(datetime.now(UTC), label, text, "action")

    def note(self, text: str, tone: Tone = "note") -> None:
        self.line(datetime.now(UTC), "demo", text, tone)

    def say(self, text: str = "", tone: Tone = "plain") -> None:
        print(self._paint(tone, text), file=self.out, flush=True)


class Follower:
    """Follows the whole log with a subscription and tells it on the console."""

    def __init__(self, store: EventStore, console: Console, view: StreamView) -> None:
        self.store = store
        self.console = console
        self.view = view
        self.cursor: Cursor = START
        self._moved = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.store.subscribe(after=START, poll_interval=0.5, skip_unknown=True) as sub:
            task_status.started()
            async for recorded in sub:
                for line in self.view.describe(recorded):
                    self.console.line(recorded.recorded_at, line.label, line.text, line.tone)
                self.cursor = recorded.cursor
                self._moved.set()
                self._moved = anyio.Event()

    async def wait_caught_up(self, seconds: float) -> None:
        """Wait (``seconds`` at most) until everything in the log now has been shown,
        including events held back behind a transaction still open elsewhere."""
        with anyio.move_on_after(seconds):
            while self.cursor < await self.store.head() or await self.store.held_back(self.cursor):
                with anyio.move_on_after(0.1):
                    await self._moved.wait()
