"""``i3lani audit``: replay the whole event log, check its invariants, report the state.

The replay is pure (:class:`Replay`: ``apply(batch)`` then ``report(...)``, no I/O, no clock);
:func:`run_audit` reads the log a page at a time and feeds it, so memory stays bounded by the
number of *entities* (payments, rewards, users, channels), never the number of events. Per
entity the state is a small Struct the garbage collector does not track, a tuple or an int.
Events committed behind a write transaction that is still open are waited for a few seconds,
then left out with a note in the report (never silently).

State rebuilt
-------------
* payments: created, pending, confirmed, underpaid (still open after a short transfer),
  expired, late (a transfer arrived after expiry); which tx hash confirmed which payment;
  TON received (the confirmed amounts, overpayments included);
* subscriptions: each ``SubscriptionActivated``;
* rewards: earned, credited, failed, still pending; each user's balance (the sum of the
  ``RewardCredited`` of that user);
* channels: added, last stats, current price.

Invariants (each violation names the global positions that show it)
--------------------------------------------------------------------
1. ``tx-hash-reused``: one ``PaymentConfirmed`` per tx hash overall, so a hash confirms at
   most one payment.
2. ``confirmed-twice``: no payment is confirmed twice.
3. ``confirmed-after-expiry``: a ``PaymentConfirmed`` is valid only if no ``PaymentExpired``
   precedes it in that payment's stream. (``confirmed_at`` is when the monitor *detected*
   the transfer, not the chain's time, so it is not compared with ``expires_at``.)
4. ``reward-mismatch``: every ``RewardCredited`` matches exactly one earlier ``RewardEarned``
   (same reward id, user and amount); a reward id is earned once, credited at most once, and
   never both credited and failed.
5. ``balance-mismatch``: each ``RewardCredited.balance_after_nanotons`` equals the sum of that
   user's credits up to and including it.
6. ``price-mismatch``: each ``ChannelStatsUpdated.active_subscribers`` is
   ``active_subscribers(subscribers, share)``; each ``ChannelPriceChanged`` follows a
   ``ChannelStatsUpdated`` of its channel, with ``new_price == channel_price(active)`` of those
   stats and ``old_price`` equal to the price before it; and stats that call for another price
   are followed by that ``ChannelPriceChanged`` (ChannelAnalytics appends both together).
7. ``subscription-without-payment``: a ``SubscriptionActivated`` comes after the
   ``PaymentConfirmed`` of the same payment, and only once.
8. ``confirmed-without-payment``: a ``PaymentConfirmed`` follows the ``PaymentCreated`` of its
   payment.
9. ``confirmed-below-price``: a ``PaymentConfirmed`` carries at least the payment's price
   (``PaymentCreated.amount_nanotons``); less is ``PaymentUnderpaid``, never a confirmation.
10. ``unknown-event-type``: every stored event has a type this release knows. A type renamed
    to an unknown one is a discrepancy naming its position, never skipped (audit with the
    release that wrote it if a newer one did).
11. ``undecodable-event``: every stored event decodes into its type (payload and metadata);
    one that does not is a discrepancy naming its position, and the replay goes on.
12. ``append-only-triggers``: PostgreSQL still holds both append-only triggers on
    ``i3lani.events`` as the migrations made them, ``ENABLE ALWAYS`` (so that not even a
    superuser's ``session_replication_role = replica`` passes them), running the shipped
    ``i3lani.refuse_event_change()`` (:mod:`store.integrity`).

With ``--verify-seals`` every seal is recomputed from the rows (:mod:`store.sealing`), in the
same pass over the log:

13. ``seal-mismatch``: the log still holds, byte for byte, every event each seal sealed, and
    nothing more in its range; the first event that differs is named (changed, deleted,
    inserted), or the seal event itself when it no longer matches its unchanged range.
14. ``seal-chain``: the seals follow one another: numbered 1, 2, ... without a gap, each
    starting where the one before ended and naming its hash, each counting the events sealed.
15. ``digest-mismatch`` (``--against DIGEST``): the log, recomputed from its rows alone, leads
    to the digest kept outside (``i3lani seal --export``, the Sealer's Telegram message): a
    rewrite with every seal recomputed still shows here.

The wallet's books (each transfer recorded once, where its nanotons went, every amount owed back
followed to its end) are checked by :mod:`ops.audit_transfers`; their checks join the list
(``transfer-recorded-twice``, ``transfer-mismatch``, ``refund-mismatch``) and their totals the
summary.

Pricing uses :func:`actors.config.load_settings`: the defaults unless the environment sets
``I3LANI_ACTIVE_SHARE``, ``I3LANI_PRICE_PER_1000`` or ``I3LANI_MIN_PRICE`` (set them as the
actors had them). Check 6 calls the very functions ChannelAnalytics prices with
(:func:`~actors.config.active_subscribers`, :func:`~actors.config.channel_price`, exact), so
the audit and the actor cannot disagree on a price.

Comparison with the live read models
------------------------------------
Today the actors' read models are folds of the log kept in memory; the values they computed
are recorded *in* the log, and those are what the audit compares with its own replay:

* ``RewardCredited.balance_after_nanotons`` (the RewardProcessor's balance) against the sum of
  credits (check 5);
* ``ChannelPriceChanged.old_price_nanotons`` (the ChannelAnalytics' current price) against the
  replayed price, and ``new_price_nanotons`` / ``active_subscribers`` against the pricing rule
  applied to the stats (check 6);
* the PaymentMonitor's decisions (confirm once, never after expiry, activate after confirming)
  through checks 1-3 and 7.

The ``snapshots`` table is not compared: no product actor persists its state there today
(none sets ``snapshot_every``; their states are rebuilt from the log at start), so it holds no
read model of payments, balances or prices. Checkpoints and the task queue are progress, not
state, and are not compared either.

Options: ``--as-of`` stops the replay at a global position (in the log's reading order, the
order every subscriber sees: the events up to and including that one) or keeps only the events
recorded at or before an ISO time (the whole log is read, since recording times are not
strictly ordered); ``--user`` / ``--stream`` narrow what is *shown*, never what is checked.
Exit code 0 when clean, 1 with discrepancies, 2 on bad arguments. ``--format json`` always
prints one JSON document on stdout: the report, or ``{"clean": false, "error": ..., "exit_code":
...}`` when the audit could not run (the error is also one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TextIO

import anyio
import msgspec

from actors.config import Settings, active_subscribers, channel_price, load_settings, share_text
from actors.ton import format_ton
from events import (
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
    Event,
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
)
from events.base import check_telegram_id
from events.errors import I3laniError, one_line
from ops.audit_transfers import TRANSFER_CHECKS, TransferBooks, TransferSummary, summary_rows
from store import START, Cursor, EventStore, RecordedEvent, migrate
from store.budget import COMMAND_MAX_CONNECTIONS
from store.integrity import append_only_problems, append_only_triggers
from store.reading import ReadAhead
from store.sealing import SealDigest, SealFeeder, SealReport, SealVerifier
from store.stored import Rejected, StoredDecoder, StoredEvent, StoredPage

__all__ = [
    "CHECKS",
    "Discrepancy",
    "Summary",
    "PaymentState",
    "UserState",
    "ChannelState",
    "StreamState",
    "AuditReport",
    "AuditError",
    "SealSummary",
    "Replay",
    "AsOf",
    "parse_as_of",
    "run_audit",
    "Progress",
    "render",
    "add_arguments",
    "audit_command",
]

CHECKS: Final = {
    "tx-hash-reused": "1: a tx hash confirms at most one payment, once",
    "confirmed-twice": "2: no payment confirmed twice",
    "confirmed-after-expiry": "3: no payment confirmed after it expired",
    "reward-mismatch": "4: each credit matches one earned reward; credited once, never also failed",
    "balance-mismatch": "5: balance_after equals the sum of the user's credits",
    "price-mismatch": "6: prices follow the stats",
    "subscription-without-payment": "7: a subscription is activated once, after its payment",
    "confirmed-without-payment": "8: a confirmed payment was created before",
    "confirmed-below-price": "9: a confirmation carries at least the payment's price",
    "unknown-event-type": "10: every stored event has a type this release knows",
    "undecodable-event": "11: every stored event decodes",
    "append-only-triggers": "12: the append-only triggers are in place, ENABLE ALWAYS",
    "seal-mismatch": "13: the log holds what its seals sealed (--verify-seals)",
    "seal-chain": "14: the seals follow one another (--verify-seals)",
    "digest-mismatch": "15: the log leads to the digest kept outside (--against)",
    **TRANSFER_CHECKS,
}

MAX_LISTED_PER_CHECK: Final = 1000
"""Discrepancies kept per check (all are counted): a broken log must not exhaust memory."""

BATCH_SIZE: Final = 500

Format = Literal["table", "json", "csv"]


# -- the report -------------------------------------------------------------------------------
class Discrepancy(msgspec.Struct, frozen=True):
    check: str
    message: str
    positions: list[int]


class Summary(msgspec.Struct, kw_only=True):
    events_replayed: int = 0
    events_unreadable: int = 0  # stored rows of an unknown type or that do not decode
    last_position: int = 0
    seconds: float = 0.0
    events_per_second: float = 0.0
    as_of: str | None = None
    payments_created: int = 0
    payments_pending: int = 0
    payments_confirmed: int = 0
    payments_underpaid: int = 0
    payments_expired: int = 0
    payments_late: int = 0
    received_nanotons: int = 0
    late_received_nanotons: int = 0
    subscriptions_activated: int = 0
    rewards_earned: int = 0
    rewards_credited: int = 0
    rewards_failed: int = 0
    rewards_pending: int = 0
    credited_nanotons: int = 0
    users_with_balance: int = 0
    balances_total_nanotons: int = 0
    channels_added: int = 0
    channels_priced: int = 0
    price_changes: int = 0
    transfers: TransferSummary = msgspec.field(default_factory=TransferSummary)


class PaymentState(msgspec.Struct, kw_only=True):
    payment_id: int
    user_id: int | None
    status: str
    amount_nanotons: int
    tx_hash: str | None = None
    late: bool = False
    subscription_activated: bool = False


class UserState(msgspec.Struct, kw_only=True):
    user_id: int
    balance_nanotons: int = 0
    rewards_earned: int = 0
    rewards_credited: int = 0
    rewards_failed: int = 0
    rewards_pending: int = 0
    credited_nanotons: int = 0
    subscriptions: list[str] = msgspec.field(default_factory=list)
    payments: list[PaymentState] = msgspec.field(default_factory=list)


class ChannelState(msgspec.Struct, kw_only=True):
    stream: str
    channel: str | None = None
    subscribers: int | None = None
    active_subscribers: int | None = None
    price_nanotons: int | None = None


class StreamState(msgspec.Struct, kw_only=True):
    stream: str
    events: int = 0
    last_version: int = 0
    types: dict[str, int] = msgspec.field(default_factory=dict)
    payment: PaymentState | None = None
    user: UserState | None = None
    channel: ChannelState | None = None


class SealSummary(msgspec.Struct, kw_only=True):
    """What ``--verify-seals`` found (:mod:`store.sealing`)."""

    seals_verified: int = 0
    events_verified: int = 0
    last_sealed_position: int | None = None
    events_not_sealed_yet: int = 0
    first_difference: int | None = None  # the first global position where the log differs
    against: str | None = None  # the digest checked against (--against)
    digest_matched: bool | None = None
    findings: int = 0


class AuditReport(msgspec.Struct, kw_only=True):
    clean: bool
    summary: Summary
    discrepancies: list[Discrepancy]
    discrepancy_counts: dict[str, int]
    user: UserState | None = None
    stream: StreamState | None = None
    seals: SealSummary | None = None
    notes: list[str] = msgspec.field(default_factory=list)


# -- the replay (pure) ------------------------------------------------------------------------
class _Payment(msgspec.Struct, gc=False):
    """One payment: positions of its decisive events (0: none yet) and flags.

    A Struct without garbage-collector tracking: only ints and bools, so no cycles, and a
    replay of a million events creates hundreds of thousands of these (tracked objects would
    make every collection walk them all).
    """

    user_id: int = 0
    amount: int = 0
    created: bool = False
    created_at: int = 0  # position of its PaymentCreated
    underpaid: bool = False
    late: bool = False
    confirmed_at: int = 0
    expired_at: int = 0
    activated_at: int = 0

    def status(self) -> str:
        if self.confirmed_at:
            return "confirmed"
        if self.expired_at:
            return "expired"
        if self.underpaid:
            return "underpaid"
        return "pending"


class _Channel(msgspec.Struct, gc=False):
    channel: str | None = None
    price: int | None = None
    subscribers: int | None = None
    active: int | None = None
    stats_at: int = 0  # position of the last ChannelStatsUpdated
    owed_price: int | None = None  # price the last stats call for, until it is recorded


@dataclass(slots=True)
class _UserDetail:
    """What is shown for the selected user (collected only for that user)."""

    earned: int = 0
    credited: int = 0
    failed: int = 0
    credited_nanotons: int = 0
    payment_ids: list[int] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)


class Replay:
    """The audit's fold of the log: ``apply`` batches in reading order, then ``report``.

    ``user`` / ``stream`` only choose what the report shows; every event is checked.
    """

    def __init__(
        self, settings: Settings, *, user: int | None = None, stream: str | None = None
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.user = user
        # Details are collected for the user shown (--user, or the user of --stream user-N).
        self.details: dict[int, _UserDetail] = {}
        if user is not None:
            self.details[user] = _UserDetail()
        if stream is not None and stream.startswith("user-") and stream[5:].isdigit():
            self.details.setdefault(int(stream[5:]), _UserDetail())
        self.events = 0
        self.unreadable = 0
        self.last_position = 0
        self.payments: dict[int, _Payment] = {}
        self.confirmations: dict[bytes, tuple[int, int]] = {}  # tx hash -> (payment, position)
        self.received = 0
        self.late_received = 0
        self.subscriptions = 0
        self.pending_rewards: dict[int, tuple[int, int, int]] = {}  # id -> (user, amount, pos)
        self.resolved_rewards: dict[int, int] = {}  # id -> +position credited / -position failed
        self.rewards_earned = 0
        self.rewards_credited = 0
        self.rewards_failed = 0
        self.credited_nanotons = 0
        self.balances: dict[int, int] = {}
        self.last_credit: dict[int, int] = {}  # user -> position of the last credit
        self.channels: dict[str, _Channel] = {}
        self.price_changes = 0
        self.found: dict[str, list[Discrepancy]] = {check: [] for check in CHECKS}
        self.counts: dict[str, int] = dict.fromkeys(CHECKS, 0)
        self.stream_events = 0
        self.stream_version = 0
        self.stream_types: dict[str, int] = {}
        self._handlers: dict[type[Event], Callable[[RecordedEvent, int], None]] = {
            PaymentCreated: self._payment_created,
            PaymentConfirmed: self._payment_confirmed,
            PaymentUnderpaid: self._payment_underpaid,
            PaymentExpired: self._payment_expired,
            LatePaymentReceived: self._late_payment,
            SubscriptionActivated: self._subscription,
            RewardEarned: self._reward_earned,
            RewardCredited: self._reward_credited,
            RewardFailed: self._reward_failed,
            ChannelAdded: self._channel_added,
            ChannelStatsUpdated: self._channel_stats,
            ChannelPriceChanged: self._channel_price,
            ChannelStatsFailed: self._channel_other,
        }
        self.books = TransferBooks(self._flag)
        for kind, handler in self.books.handlers().items():
            self._handlers[kind] = _both(self._handlers.get(kind), handler)

    # -- feeding --------------------------------------------------------------------------
    def apply(self, batch: Iterable[RecordedEvent]) -> None:
        handlers = self._handlers
        stream = self.stream
        count = 0
        position = self.last_position
        for recorded in batch:
            count += 1
            position = recorded.position
            handler = handlers.get(type(recorded.event))
            if handler is not None:
                handler(recorded, position)
            if stream is not None and recorded.stream == stream:
                self.stream_events += 1
                self.stream_version = recorded.version
                self.stream_types[recorded.type] = self.stream_types.get(recorded.type, 0) + 1
        self.events += count
        self.last_position = position

    def reject(self, rejected: Iterable[Rejected]) -> None:
        """Stored rows that are no event this release can read (checks 10 and 11): each is a
        discrepancy, never a skip."""
        for row in rejected:
            self.unreadable += 1
            stored = row.row
            where = f"{stored.stream} v{stored.version}"
            if row.unknown_type:
                self._flag(
                    "unknown-event-type",
                    f"the event at #{stored.position} ({where}) has type {stored.type!r}, "
                    "which no event of this release has: renamed, or written by a newer release",
                    stored.position,
                )
            else:
                self._flag(
                    "undecodable-event",
                    f"the event at #{stored.position} ({where}) does not decode: {row.reason}",
                    stored.position,
                )

    def finish(self) -> None:
        """The log ended: stats still owed a price change are discrepancies."""
        for stream, channel in self.channels.items():
            self._settle(stream, channel)
        self.books.finish()

    def flag(self, check: str, message: str, *positions: int) -> None:
        """Record a discrepancy found outside the replay (the triggers, the seals)."""
        self._flag(check, message, *positions)

    def _flag(self, check: str, message: str, *positions: int) -> None:
        self.counts[check] += 1
        found = self.found[check]
        if len(found) < MAX_LISTED_PER_CHECK:
            found.append(Discrepancy(check, message, sorted(p for p in positions if p)))

    # -- payments -------------------------------------------------------------------------
    def _payment(self, payment_id: int) -> _Payment:
        payment = self.payments.get(payment_id)
        if payment is None:
            payment = self.payments[payment_id] = _Payment()
        return payment

    def _payment_created(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, PaymentCreated)
        payment = self._payment(event.payment_id)
        payment.user_id = event.user_id
        payment.amount = event.amount_nanotons
        payment.created = True
        payment.created_at = payment.created_at or position
        detail = self.details.get(event.user_id)
        if detail is not None:
            detail.payment_ids.append(event.payment_id)

    def _payment_confirmed(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, PaymentConfirmed)
        payment_id = event.payment_id
        payment = self._payment(payment_id)
        self._check_confirmed_amount(payment_id, payment, event, position)
        tx = bytes.fromhex(event.tx_hash)
        earlier = self.confirmations.get(tx)
        if earlier is None:
            self.confirmations[tx] = (payment_id, position)
        else:
            other, at = earlier
            whom = "the same payment again" if other == payment_id else f"payment {payment_id}"
            self._flag(
                "tx-hash-reused",
                f"tx {event.tx_hash} confirmed payment {other} (#{at}) and then {whom} "
                f"(#{position})",
                at,
                position,
            )
        if payment.confirmed_at:
            self._flag(
                "confirmed-twice",
                f"payment {payment_id} confirmed at #{payment.confirmed_at} and again at "
                f"#{position}",
                payment.confirmed_at,
                position,
            )
            return  # the first confirmation stands
        if payment.expired_at:
            self._flag(
                "confirmed-after-expiry",
                f"payment {payment_id} expired at #{payment.expired_at} and was confirmed "
                f"afterwards at #{position}",
                payment.expired_at,
                position,
            )
        payment.confirmed_at = position
        self.received += event.amount_nanotons

    def _check_confirmed_amount(
        self, payment_id: int, payment: _Payment, event: PaymentConfirmed, position: int
    ) -> None:
        """Checks 8 and 9: a confirmation needs its payment created, and its price paid."""
        if not payment.created:
            self._flag(
                "confirmed-without-payment",
                f"payment {payment_id} confirmed at #{position} was never created (no "
                "PaymentCreated before it)",
                position,
            )
        elif event.amount_nanotons < payment.amount:
            self._flag(
                "confirmed-below-price",
                f"payment {payment_id} confirmed at #{position} for "
                f"{format_ton(event.amount_nanotons)} TON, below its price of "
                f"{format_ton(payment.amount)} TON (#{payment.created_at})",
                payment.created_at,
                position,
            )

    def _payment_underpaid(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, PaymentUnderpaid)
        self._payment(event.payment_id).underpaid = True
        self.late_received += event.amount_nanotons

    def _payment_expired(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, PaymentExpired)
        payment = self._payment(event.payment_id)
        payment.expired_at = payment.expired_at or position

    def _late_payment(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, LatePaymentReceived)
        self._payment(event.payment_id).late = True
        self.late_received += event.amount_nanotons

    def _subscription(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, SubscriptionActivated)
        payment = self._payment(event.payment_id)
        self.subscriptions += 1
        detail = self.details.get(event.user_id)
        if detail is not None:
            detail.subscriptions.append(f"{event.plan} until {event.ends_at.isoformat()}")
        if payment.activated_at:
            self._flag(
                "subscription-without-payment",
                f"payment {event.payment_id} activated a subscription at "
                f"#{payment.activated_at} and again at #{position}",
                payment.activated_at,
                position,
            )
        elif not payment.confirmed_at:
            self._flag(
                "subscription-without-payment",
                f"subscription activated at #{position} for payment {event.payment_id}, "
                "which was not confirmed before it",
                position,
            )
        payment.activated_at = payment.activated_at or position

    # -- rewards --------------------------------------------------------------------------
    def _reward_earned(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, RewardEarned)
        key = event.reward_id.int
        self.rewards_earned += 1
        detail = self.details.get(event.user_id)
        if detail is not None:
            detail.earned += 1
        pending = self.pending_rewards.get(key)
        resolved = self.resolved_rewards.get(key)
        if pending is not None or resolved is not None:
            first = pending[2] if pending is not None else abs(resolved or 0)
            self._flag(
                "reward-mismatch",
                f"reward {event.reward_id} earned again at #{position} (already recorded "
                f"at #{first})",
                first,
                position,
            )
            return
        self.pending_rewards[key] = (event.user_id, event.amount_nanotons, position)

    def _reward_credited(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, RewardCredited)
        key = event.reward_id.int
        user, amount = event.user_id, event.amount_nanotons
        self.rewards_credited += 1
        self.credited_nanotons += amount
        detail = self.details.get(user)
        if detail is not None:
            detail.credited += 1
            detail.credited_nanotons += amount
        # Check 5: the balance is the sum of every credit of the user, this one included.
        balance = self.balances.get(user, 0) + amount
        self.balances[user] = balance
        if event.balance_after_nanotons != balance:
            previous = self.last_credit.get(user, 0)
            self._flag(
                "balance-mismatch",
                f"user {user}: credit at #{position} records a balance of "
                f"{format_ton(event.balance_after_nanotons)} TON, the sum of credits is "
                f"{format_ton(balance)} TON",
                previous,
                position,
            )
        self.last_credit[user] = position
        # Check 4: one earned reward, matching, credited once, not failed.
        pending = self.pending_rewards.pop(key, None)
        resolved = self.resolved_rewards.get(key)
        if pending is not None:
            earned_user, earned_amount, earned_at = pending
            self.resolved_rewards[key] = position
            if (earned_user, earned_amount) != (user, amount):
                self._flag(
                    "reward-mismatch",
                    f"reward {event.reward_id} earned by user {earned_user} for "
                    f"{format_ton(earned_amount)} TON (#{earned_at}) but credited to user "
                    f"{user} for {format_ton(amount)} TON (#{position})",
                    earned_at,
                    position,
                )
        elif resolved is None:
            self.resolved_rewards[key] = position
            self._flag(
                "reward-mismatch",
                f"reward {event.reward_id} credited at #{position} was never earned before",
                position,
            )
        elif resolved > 0:
            self._flag(
                "reward-mismatch",
                f"reward {event.reward_id} credited twice: #{resolved} and #{position}",
                resolved,
                position,
            )
        else:
            self._flag(
                "reward-mismatch",
                f"reward {event.reward_id} failed at #{-resolved} and was credited at #{position}",
                -resolved,
                position,
            )

    def _reward_failed(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, RewardFailed)
        key = event.reward_id.int
        self.rewards_failed += 1
        detail = self.details.get(event.user_id)
        if detail is not None:
            detail.failed += 1
        self.pending_rewards.pop(key, None)
        resolved = self.resolved_rewards.get(key)
        if resolved is not None and resolved > 0:
            self._flag(
                "reward-mismatch",
                f"reward {event.reward_id} credited at #{resolved} and failed at #{position}",
                resolved,
                position,
            )
            return  # the credit stands
        if resolved is None:
            self.resolved_rewards[key] = -position

    # -- channels -------------------------------------------------------------------------
    def _channel(self, stream: str) -> _Channel:
        channel = self.channels.get(stream)
        if channel is None:
            channel = self.channels[stream] = _Channel()
        return channel

    def _settle(self, stream: str, channel: _Channel) -> None:
        """Stats that called for a new price must have been followed by its change."""
        if channel.owed_price is not None:
            self._flag(
                "price-mismatch",
                f"{stream}: stats at #{channel.stats_at} put the price at "
                f"{format_ton(channel.owed_price)} TON, but no ChannelPriceChanged followed "
                f"(price stays {_ton_or_none(channel.price)})",
                channel.stats_at,
            )
            channel.owed_price = None

    def _channel_added(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, ChannelAdded)
        channel = self._channel(recorded.stream)
        self._settle(recorded.stream, channel)
        channel.channel = channel.channel or event.channel

    def _channel_other(self, recorded: RecordedEvent, position: int) -> None:
        channel = self._channel(recorded.stream)
        self._settle(recorded.stream, channel)

    def _channel_stats(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, ChannelStatsUpdated)
        stream = recorded.stream
        channel = self._channel(stream)
        self._settle(stream, channel)
        expected_active = active_subscribers(event.subscribers, self.settings.active_share)
        if event.active_subscribers != expected_active:
            self._flag(
                "price-mismatch",
                f"{stream}: stats at #{position} count {event.active_subscribers} active of "
                f"{event.subscribers} subscribers; the active share "
                f"{share_text(self.settings.active_share)} gives {expected_active}",
                position,
            )
        channel.subscribers = event.subscribers
        channel.active = event.active_subscribers
        channel.stats_at = position
        price = channel_price(event.active_subscribers, self.settings)
        if price != channel.price:
            channel.owed_price = price

    def _channel_price(self, recorded: RecordedEvent, position: int) -> None:
        event = recorded.event
        assert isinstance(event, ChannelPriceChanged)
        stream = recorded.stream
        channel = self._channel(stream)
        self.price_changes += 1
        if channel.active is None:
            self._flag(
                "price-mismatch",
                f"{stream}: price changed at #{position} without any ChannelStatsUpdated before it",
                position,
            )
        else:
            expected = channel_price(channel.active, self.settings)
            if event.new_price_nanotons != expected:
                self._flag(
                    "price-mismatch",
                    f"{stream}: price set to {format_ton(event.new_price_nanotons)} TON at "
                    f"#{position}; the stats at #{channel.stats_at} ({channel.active} active) "
                    f"give {format_ton(expected)} TON",
                    channel.stats_at,
                    position,
                )
            if event.active_subscribers != channel.active:
                self._flag(
                    "price-mismatch",
                    f"{stream}: price change at #{position} names {event.active_subscribers} "
                    f"active subscribers, the stats at #{channel.stats_at} {channel.active}",
                    channel.stats_at,
                    position,
                )
        if event.old_price_nanotons != channel.price:
            self._flag(
                "price-mismatch",
                f"{stream}: price change at #{position} records the old price as "
                f"{_ton_or_none(event.old_price_nanotons)}, the price was "
                f"{_ton_or_none(channel.price)}",
                position,
            )
        channel.price = event.new_price_nanotons
        channel.owed_price = None

    # -- the report -----------------------------------------------------------------------
    def discrepancies(self) -> list[Discrepancy]:
        listed = [d for found in self.found.values() for d in found]
        listed.sort(key=lambda d: (d.positions[:1], d.check))
        return listed

    def summary(self) -> Summary:
        summary = Summary(
            events_replayed=self.events,
            events_unreadable=self.unreadable,
            last_position=self.last_position,
            received_nanotons=self.received,
            late_received_nanotons=self.late_received,
            subscriptions_activated=self.subscriptions,
            rewards_earned=self.rewards_earned,
            rewards_credited=self.rewards_credited,
            rewards_failed=self.rewards_failed,
            rewards_pending=len(self.pending_rewards),
            credited_nanotons=self.credited_nanotons,
            users_with_balance=sum(1 for b in self.balances.values() if b),
            balances_total_nanotons=sum(self.balances.values()),
            channels_added=sum(1 for c in self.channels.values() if c.channel is not None),
            channels_priced=sum(1 for c in self.channels.values() if c.price is not None),
            price_changes=self.price_changes,
            transfers=self.books.summary(),
        )
        for payment in self.payments.values():
            if payment.created:
                summary.payments_created += 1
            if payment.late:
                summary.payments_late += 1
            match payment.status():
                case "confirmed":
                    summary.payments_confirmed += 1
                case "expired":
                    summary.payments_expired += 1
                case "underpaid":
                    summary.payments_underpaid += 1
                case _:
                    summary.payments_pending += 1
        return summary

    def _payment_states(self, ids: Sequence[int]) -> list[PaymentState]:
        wanted = {i for i in ids if i in self.payments}
        hashes = {
            payment_id: tx.hex()
            for tx, (payment_id, _) in self.confirmations.items()
            if payment_id in wanted
        }
        states = []
        for payment_id in ids:
            payment = self.payments.get(payment_id)
            if payment is None:
                continue
            states.append(
                PaymentState(
                    payment_id=payment_id,
                    user_id=payment.user_id or None,
                    status=payment.status(),
                    amount_nanotons=payment.amount,
                    tx_hash=hashes.get(payment_id),
                    late=payment.late,
                    subscription_activated=bool(payment.activated_at),
                )
            )
        return states

    def user_state(self, user: int) -> UserState:
        detail = self.details.get(user) or _UserDetail()
        return UserState(
            user_id=user,
            balance_nanotons=self.balances.get(user, 0),
            rewards_earned=detail.earned,
            rewards_credited=detail.credited,
            rewards_failed=detail.failed,
            rewards_pending=sum(1 for r in self.pending_rewards.values() if r[0] == user),
            credited_nanotons=detail.credited_nanotons,
            subscriptions=list(detail.subscriptions),
            payments=self._payment_states(detail.payment_ids),
        )

    def stream_state(self, stream: str) -> StreamState:
        state = StreamState(
            stream=stream,
            events=self.stream_events,
            last_version=self.stream_version,
            types=dict(sorted(self.stream_types.items())),
        )
        category, _, tail = stream.partition("-")
        if category == "payment" and tail.isdigit():
            found = self._payment_states([int(tail)])
            state.payment = found[0] if found else None
        elif category == "user" and tail.isdigit():
            state.user = self.user_state(int(tail))
        elif category == "channel" and stream in self.channels:
            channel = self.channels[stream]
            state.channel = ChannelState(
                stream=stream,
                channel=channel.channel,
                subscribers=channel.subscribers,
                active_subscribers=channel.active,
                price_nanotons=channel.price,
            )
        return state

    def report(self, *, seconds: float = 0.0, as_of: str | None = None) -> AuditReport:
        summary = self.summary()
        summary.seconds = round(seconds, 3)
        summary.events_per_second = round(self.events / seconds, 1) if seconds > 0 else 0.0
        summary.as_of = as_of
        listed = self.discrepancies()
        return AuditReport(
            clean=not any(self.counts.values()),
            summary=summary,
            discrepancies=listed,
            discrepancy_counts={check: n for check, n in self.counts.items() if n},
            user=self.user_state(self.user) if self.user is not None else None,
            stream=self.stream_state(self.stream) if self.stream is not None else None,
        )


def _both(
    first: Callable[[RecordedEvent, int], None] | None,
    second: Callable[[RecordedEvent, int], None],
) -> Callable[[RecordedEvent, int], None]:
    """One handler running ``first`` (if any) then ``second``."""
    if first is None:
        return second

    def both(recorded: RecordedEvent, position: int) -> None:
        first(recorded, position)
        second(recorded, position)

    return both


def _ton_or_none(nanotons: int | None) -> str:
    return "none" if nanotons is None else f"{format_ton(nanotons)} TON"


# -- --as-of ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AsOf:
    """Where history stops: a global position, or a recording time (timezone-aware)."""

    position: int | None = None
    time: datetime | None = None

    def __str__(self) -> str:
        if self.time is not None:
            return self.time.isoformat()
        return f"#{self.position}"


def parse_as_of(text: str) -> AsOf:
    """``--as-of``: a global position (``1234``) or an ISO time with a zone (``...Z``).

    ValueError, one line, when it is neither.
    """
    text = text.strip()
    if text.isdigit():
        return AsOf(position=int(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--as-of takes a global position (e.g. 1234) or an ISO time with a timezone "
            f"(e.g. 2026-11-29T10:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"--as-of time {text!r} has no timezone: add Z or an offset such as +00:00"
        )
    return AsOf(time=moment)


# -- progress ---------------------------------------------------------------------------------
class Progress:
    """A progress bar on a terminal, or a percentage line at most every ``interval`` s."""

    def __init__(
        self,
        stream: TextIO,
        total_position: int,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        self.stream = stream
        self.total = max(total_position, 1)
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self.interval = interval if interval is not None else (0.1 if self.tty else 1.0)
        self.started = clock()
        self.last_shown = self.started
        self.shown = False

    def _line(self, events: int, position: int) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        share = min(position / self.total, 1.0)
        rate = events / elapsed
        if self.tty:
            filled = int(share * 30)
            bar = "#" * filled + "." * (30 - filled)
            return f"\raudit [{bar}] {share:6.1%}  {events:,} events  {rate:,.0f} events/s"
        return f"audit: {share:.0%} ({events:,} events, {rate:,.0f} events/s)\n"

    def update(self, events: int, position: int) -> None:
        now = self.clock()
        if now - self.last_shown < self.interval:
            return
        self.last_shown = now
        self.stream.write(self._line(events, position))
        self.stream.flush()
        self.shown = True

    def close(self, events: int, position: int) -> None:
        if self.shown:
            self.stream.write(self._line(events, max(position, self.total)))
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


# -- I/O --------------------------------------------------------------------------------------
async def run_audit(
    store: EventStore,
    settings: Settings,
    *,
    as_of: AsOf | None = None,
    user: int | None = None,
    stream: str | None = None,
    progress: TextIO | None = None,
    batch_size: int = BATCH_SIZE,
    held_back_patience: float = 5.0,
    verify_seals: bool = False,
    against: SealDigest | None = None,
) -> AuditReport:
    """Replay the log (up to ``as_of``) and check it; ``progress`` gets the progress bar.

    Events committed behind a transaction that is still open are waited for up to
    ``held_back_patience`` seconds, then left out with a note in the report. With
    ``verify_seals`` (or ``against``, a digest kept outside) every seal is recomputed from the
    same rows in the same pass.
    """
    started = time.monotonic()
    replay = Replay(settings, user=user, stream=stream)
    stop: Cursor | None = None
    if as_of is not None and as_of.position is not None:
        try:
            stop = await store.cursor_at(as_of.position)
        except ValueError:
            raise ValueError(
                f"--as-of {as_of.position}: no event at that global position "
                "(`i3lani events` shows the positions)"
            ) from None
    until = as_of.time if as_of is not None else None
    for problem in append_only_problems(await append_only_triggers(store)):
        replay.flag("append-only-triggers", problem)
    seals = (
        SealFeeder(store, SealVerifier(against)) if verify_seals or against is not None else None
    )
    decoder = StoredDecoder(store.registry)
    head = (await store.head()).position
    bar = Progress(progress, stop.position if stop else head) if progress is not None else None
    cursor = START
    limit = (stop.transaction_id, stop.position) if stop is not None else None
    notes: list[str] = []
    patience: float | None = None
    # The rows as stored, a page at a time: a row no event of this release reads (an unknown
    # type, a payload that does not decode) is a discrepancy, never a skip; and the seals, if
    # asked for, are recomputed from the very same rows. A short page is checked for events
    # held back by a transaction still open. The page after a full one is asked for before
    # this one is checked (ReadAhead): the server reads it while the replay works.

    async def read(after: Cursor) -> StoredPage:
        return await store.read_stored(after, limit=batch_size)

    async with anyio.create_task_group() as tg:
        ahead: ReadAhead[StoredPage] | None = None
        while True:
            page = await (ahead.result() if ahead is not None else read(cursor))
            ahead = None
            cursor = page.cursor
            rows: Sequence[StoredEvent] = page.rows
            done = limit is not None and (cursor.transaction_id, cursor.position) >= limit
            if not done and len(page.rows) == batch_size:
                ahead = await ReadAhead.begin(tg, read, cursor)
            if done and limit is not None:
                rows = [r for r in rows if (r.transaction_id, r.position) <= limit]
            if seals is not None:
                await seals.feed(rows)
            if until is not None:
                rows = [r for r in rows if r.recorded_at <= until]
            events, rejected = decoder.decode(rows)
            replay.apply(events)
            replay.reject(rejected)
            if rows:
                replay.last_position = rows[-1].position
            if bar is not None:
                bar.update(replay.events, cursor.position)
            if done:
                break
            if len(page.rows) == batch_size:
                continue
            if not await store.held_back(cursor):
                break
            patience = patience if patience is not None else time.monotonic() + held_back_patience
            if time.monotonic() > patience:
                notes.append(
                    f"events after #{cursor.position} are held back by a write transaction "
                    "still open: they are not in this audit; run it again once it ends"
                )
                break
            await anyio.sleep(0.05)
    if as_of is None:
        replay.finish()  # a cut through history may fall between stats and their price
    if bar is not None:
        bar.close(replay.events, replay.last_position)
    report = replay.report(
        seconds=time.monotonic() - started, as_of=None if as_of is None else str(as_of)
    )
    if seals is not None:
        # Every sealed row is below the horizon, so it was read whatever was held back; only a
        # cut (--as-of a position) leaves seals unjudged.
        found = await seals.finish(complete=stop is None)
        report = _with_seals(replay, report, found)
    report.notes = notes
    return report


def _with_seals(replay: Replay, report: AuditReport, found: SealReport) -> AuditReport:
    """The report with what seal verification found (checks 13 to 15)."""
    for finding in found.findings:
        check = {"digest": "digest-mismatch", "chain": "seal-chain"}.get(
            finding.kind, "seal-mismatch"
        )
        replay.flag(
            check, finding.message, *(p for p in (finding.position, finding.seal_position) if p)
        )
    summary = SealSummary(
        seals_verified=found.seals,
        events_verified=found.events,
        last_sealed_position=found.last_sealed_position,
        events_not_sealed_yet=found.unsealed,
        first_difference=found.first_difference,
        against=found.against,
        digest_matched=found.digest_matched,
        findings=len(found.findings),
    )
    redone = replay.report(seconds=report.summary.seconds, as_of=report.summary.as_of)
    redone.seals = summary
    return redone


# -- rendering --------------------------------------------------------------------------------
def _summary_rows(s: Summary) -> list[tuple[str, str]]:
    unreadable = [("events unreadable", f"{s.events_unreadable:,}")] if s.events_unreadable else []
    return [
        ("events replayed", f"{s.events_replayed:,}"),
        *unreadable,
        ("last position", str(s.last_position)),
        ("as of", s.as_of or "now"),
        ("time taken", f"{s.seconds:.2f} s"),
        ("events/s", f"{s.events_per_second:,.0f}"),
        ("payments created", str(s.payments_created)),
        ("payments pending", str(s.payments_pending)),
        ("payments confirmed", str(s.payments_confirmed)),
        ("payments underpaid", str(s.payments_underpaid)),
        ("payments expired", str(s.payments_expired)),
        ("payments late", str(s.payments_late)),
        ("TON received", f"{format_ton(s.received_nanotons)} TON"),
        ("TON underpaid or late", f"{format_ton(s.late_received_nanotons)} TON"),
        ("subscriptions activated", str(s.subscriptions_activated)),
        ("rewards earned", str(s.rewards_earned)),
        ("rewards credited", f"{s.rewards_credited} ({format_ton(s.credited_nanotons)} TON)"),
        ("rewards failed", str(s.rewards_failed)),
        ("rewards pending", str(s.rewards_pending)),
        ("balances total", f"{format_ton(s.balances_total_nanotons)} TON"),
        ("users with a balance", str(s.users_with_balance)),
        ("channels added", str(s.channels_added)),
        ("channels priced", str(s.channels_priced)),
        ("price changes", str(s.price_changes)),
        *summary_rows(s.transfers),
    ]


def _payment_text(p: PaymentState) -> str:
    extra = f" tx={p.tx_hash}" if p.tx_hash else ""
    if p.late:
        extra += " late-transfer"
    if p.subscription_activated:
        extra += " subscribed"
    return f"payment {p.payment_id}: {p.status}, {format_ton(p.amount_nanotons)} TON{extra}"


def _user_rows(u: UserState) -> list[tuple[str, str]]:
    rows = [
        ("user", str(u.user_id)),
        ("balance", f"{format_ton(u.balance_nanotons)} TON"),
        ("rewards earned", str(u.rewards_earned)),
        ("rewards credited", f"{u.rewards_credited} ({format_ton(u.credited_nanotons)} TON)"),
        ("rewards failed", str(u.rewards_failed)),
        ("rewards pending", str(u.rewards_pending)),
        ("payments", str(len(u.payments))),
    ]
    rows += [("payment", _payment_text(p)) for p in u.payments]
    rows += [("subscription", text) for text in u.subscriptions]
    return rows


def _stream_rows(st: StreamState) -> list[tuple[str, str]]:
    rows = [
        ("stream", st.stream),
        ("events", str(st.events)),
        ("version", str(st.last_version)),
    ]
    rows += [(f"{name} events", str(n)) for name, n in st.types.items()]
    if st.payment is not None:
        rows.append(("payment", _payment_text(st.payment)))
    if st.user is not None:
        rows += _user_rows(st.user)
    if st.channel is not None:
        ch = st.channel
        rows += [
            ("channel", ch.channel or "-"),
            ("subscribers", "-" if ch.subscribers is None else str(ch.subscribers)),
            ("active", "-" if ch.active_subscribers is None else str(ch.active_subscribers)),
            ("price", _ton_or_none(ch.price_nanotons)),
        ]
    return rows


def _sections(report: AuditReport) -> list[tuple[str, list[tuple[str, str]]]]:
    """The summary of everything, or (--user, --stream) only what was asked for."""
    sections = []
    if report.user is not None:
        sections.append(("user", _user_rows(report.user)))
    if report.stream is not None:
        sections.append(("stream", _stream_rows(report.stream)))
    return sections or [("summary", _summary_rows(report.summary))]


def _table(report: AuditReport) -> str:
    lines = []
    s = report.summary
    lines.append(
        f"audit of {s.events_replayed:,} events up to #{s.last_position} "
        f"(as of {s.as_of or 'now'}) in {s.seconds:.2f} s, {s.events_per_second:,.0f} events/s"
    )
    for _, rows in _sections(report):
        width = max(len(k) for k, _ in rows)
        lines += [f"  {key:<{width}}  {value}" for key, value in rows]
    if report.seals is not None:
        lines.append("")
        lines.append(_seal_verdict(report.seals))
        rows = _seal_rows(report.seals)
        width = max(len(k) for k, _ in rows)
        lines += [f"  {key:<{width}}  {value}" for key, value in rows]
    lines.append("")
    lines += [f"note: {note}" for note in report.notes]
    if report.clean:
        lines.append("clean")
    else:
        total = sum(report.discrepancy_counts.values())
        lines.append(f"{total} discrepancies:")
        for d in report.discrepancies:
            at = ", ".join(f"#{p}" for p in d.positions)
            lines.append(f"  {d.check:<28} {d.message}  [{at}]")
        for check, n in report.discrepancy_counts.items():
            listed = sum(1 for d in report.discrepancies if d.check == check)
            if n > listed:
                lines.append(f"  {check:<28} ... and {n - listed} more")
    return "\n".join(lines) + "\n"


def _seal_verdict(seals: SealSummary) -> str:
    """One line: does the log still hold what its seals (and the digest) say?"""
    if seals.first_difference is not None:
        return f"seals: the log differs from its seals, first at #{seals.first_difference}"
    if seals.digest_matched is False:
        return "seals: the log does NOT lead to the digest kept outside: it was rewritten"
    if seals.findings:
        return "seals: the seals themselves were altered or do not follow one another"
    if seals.seals_verified == 0:
        return "seals: none yet (the Sealer, in `i3lani run`, seals the log)"
    checked = f"{seals.seals_verified:,} seals, {seals.events_verified:,} events"
    if seals.digest_matched:
        return f"seals: verified ({checked}), and the log leads to the digest kept outside"
    return f"seals: verified ({checked}): the log holds what they sealed"


def _seal_rows(seals: SealSummary) -> list[tuple[str, str]]:
    last = seals.last_sealed_position
    waiting = seals.events_not_sealed_yet
    rows = [
        ("seals verified", f"{seals.seals_verified:,}"),
        ("events verified", f"{seals.events_verified:,}"),
        ("sealed up to", "-" if last is None else f"#{last}"),
        (
            "not sealed yet",
            f"{waiting:,} event{'' if waiting == 1 else 's'} (the next seal covers them)",
        ),
        (
            "first difference",
            "none" if seals.first_difference is None else f"#{seals.first_difference}",
        ),
    ]
    if seals.against is not None:
        rows.append(("against digest", seals.against))
        rows.append(("digest", "matches" if seals.digest_matched else "DOES NOT MATCH"))
    return rows


def _csv(report: AuditReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "name", "value", "positions"])
    sections = _sections(report)
    if report.user is not None or report.stream is not None:
        sections.insert(0, ("replay", _summary_rows(report.summary)[:5]))
    for section, rows in sections:
        writer.writerows((section, key, value, "") for key, value in rows)
    if report.seals is not None:
        writer.writerows(("seals", key, value, "") for key, value in _seal_rows(report.seals))
    writer.writerows(["note", "held back", note, ""] for note in report.notes)
    writer.writerow(["result", "clean" if report.clean else "discrepancies", "", ""])
    for d in report.discrepancies:
        writer.writerow(["discrepancy", d.check, d.message, " ".join(map(str, d.positions))])
    return buffer.getvalue()


def render(report: AuditReport, fmt: Format) -> str:
    """The report as text: ``table`` (for people), ``json`` (one document) or ``csv``."""
    if fmt == "json":
        return msgspec.json.encode(report).decode() + "\n"
    if fmt == "csv":
        return _csv(report)
    return _table(report)


# -- the command ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``i3lani audit``'s options (``--as-of``, ``--user`` and ``--against`` are parsed by the
    command: one-line errors, and one JSON document with ``--format json``)."""
    parser.add_argument(
        "--as-of",
        metavar="POSITION|TIME",
        help="state at that point: a global position, or an ISO time with a zone (…Z)",
    )
    parser.add_argument("--user", metavar="ID", help="show only this user's state")
    parser.add_argument("--stream", metavar="NAME", help="show only this stream's state")
    parser.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="report format"
    )
    parser.add_argument("--out", metavar="FILE", help="write the report to FILE, not stdout")
    parser.add_argument(
        "--verify-seals",
        action="store_true",
        help="also recompute every seal and name the first position where the log differs",
    )
    parser.add_argument(
        "--against",
        metavar="DIGEST",
        help="also check the log against a digest kept outside (`i3lani seal --export` "
        "printed it; implies --verify-seals)",
    )


class AuditError(msgspec.Struct, kw_only=True):
    """What ``--format json`` prints when the audit could not run."""

    clean: bool = False
    error: str
    exit_code: int


def _user_id(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.strip().isdigit() or len(text) > 24:
        raise ValueError(f"--user takes a Telegram user id (>= 1), got {text[:40]!r}")
    return check_telegram_id(int(text), what="--user (a Telegram user id)")


async def audit_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``i3lani audit``: 0 when clean, 1 with discrepancies (ValueError: a usage error).

    With ``--format json`` on stdout, an error that stops the audit is also printed there as
    one JSON document (:class:`AuditError`) before it propagates."""
    try:
        return await _audit_command(dsn, args, out)
    except (I3laniError, ValueError) as exc:
        if args.format == "json" and args.out is None:
            code = 2 if isinstance(exc, ValueError) and not isinstance(exc, I3laniError) else 1
            error = AuditError(error=f"i3lani audit: {one_line(str(exc), 500)}", exit_code=code)
            out.write(msgspec.json.encode(error).decode() + "\n")
        raise


async def _audit_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    as_of = parse_as_of(args.as_of) if args.as_of is not None else None
    user = _user_id(args.user)
    against = SealDigest.parse(args.against) if args.against is not None else None
    settings = load_settings()
    await migrate(dsn)

    async def audit() -> AuditReport:
        async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
            return await run_audit(
                store,
                settings,
                as_of=as_of,
                user=user,
                stream=args.stream,
                progress=sys.stderr,
                verify_seals=args.verify_seals,
                against=against,
            )

    if args.out is None:
        report = await audit()
        out.write(render(report, args.format))
        if args.format != "table":
            for note in report.notes:
                print(f"i3lani audit: note: {note}", file=sys.stderr)
    else:
        try:  # opened first: a path that cannot be written fails before the long replay
            handle = await anyio.open_file(args.out, "w", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--out {args.out}: {exc.strerror or exc}") from None
        async with handle:
            report = await audit()
            await handle.write(render(report, args.format))
        verdict = (
            "clean" if report.clean else f"{sum(report.discrepancy_counts.values())} discrepancies"
        )
        print(f"audit report written to {args.out}: {verdict}", file=out)
    return 0 if report.clean else 1
