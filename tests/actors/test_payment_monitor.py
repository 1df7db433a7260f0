"""PaymentMonitor end to end: a real event store, the real TonAPI client, the TonAPI stand-in.

Payments are created the way the gateway creates them (a ``PaymentCreated`` appended to
``payment-<id>``); transfers are put on the stand-in's simulated chain; the monitor is asked to
check (``CheckPayments``, what a new payment or a tick triggers) and the log is read back.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from actors.config import Settings
from actors.payment_monitor import (
    CheckPayments,
    MonitorState,
    PaymentMonitor,
    payment_event_id,
    scan_cursor,
    scan_stream,
)
from actors.payments import match_all
from actors.runtime import ActorNotRunning, ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.ton import Address, memo_for
from actors.tonapi import TonApiClient
from events import (
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
    WalletScanned,
)
from events.errors import ConcurrencyConflict, EventIdReused
from events.payments import LatePaymentReceived
from events.streams import payment_stream
from ops.standins import TonApiFaultMode, TonApiStandIn
from store import EventStore

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
WALLET_RAW = Address.parse(WALLET).to_raw()
PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
PRICE = 1_500_000_000


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


def settings(tonapi: TonApiStandIn) -> Settings:
    return Settings(tonapi_url=tonapi.url, wallet=WALLET, payment_interval=3600)


@contextlib.asynccontextmanager
async def monitor(
    store: EventStore,
    tonapi: TonApiStandIn,
    *,
    node: str = "node-a",
    crashes: list[BaseException] | None = None,
) -> AsyncIterator[tuple[ActorRef, ActorRunner[MonitorState]]]:
    """A PaymentMonitor incarnation; with ``crashes``, a crash is recorded there (as the
    supervisor would before restarting it) instead of failing the test."""

    async def run(*, task_status: TaskStatus[ActorRef]) -> None:
        try:
            await runner.run(task_status=task_status)
        except Exception as exc:
            if crashes is None:
                raise
            crashes.append(exc)

    async with (
        TonApiClient(tonapi.url, retries=1, timeout=2.0, sleep=no_sleep) as client,
        anyio.create_task_group() as tg,
    ):
        runner = ActorRunner(
            PaymentMonitor(settings(tonapi), tonapi=client), store, SystemClock(), node=node
        )
        ref: ActorRef = await tg.start(run)
        yield ref, runner
        tg.cancel_scope.cancel()


async def create(
    store: EventStore,
    payment_id: int,
    *,
    amount: int = PRICE,
    expires_in: timedelta = timedelta(hours=1),
    created: datetime | None = None,
) -> PaymentCreated:
    now = created or datetime.now(UTC)
    event = PaymentCreated(
        payment_id=payment_id,
        user_id=1000 + payment_id,
        plan="month",
        amount_nanotons=amount,
        wallet=WALLET,
        memo=memo_for(payment_id),
        created_at=now,
        expires_at=now + expires_in,
    )
    await store.append(payment_stream(payment_id), [event])
    return event


async def types_in(store: EventStore, payment_id: int) -> list[str]:
    return [r.type for r in await store.read_stream(payment_stream(payment_id))]


async def check(ref: ActorRef) -> None:
    await ref.ask(CheckPayments(), timeout=20)


def pay(tonapi: TonApiStandIn, payment_id: int | str, value: int, **kwargs: Any) -> dict[str, Any]:
    comment = memo_for(payment_id) if isinstance(payment_id, int) else payment_id
    return tonapi.transfer(WALLET_RAW, source=PAYER, value=value, comment=comment, **kwargs)


async def test_a_paid_payment_is_confirmed_then_activated(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        await create(store, 1)
        tx = pay(tonapi, 1, PRICE)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        events = await store.read_stream("payment-1")
        assert [r.type for r in events] == [
            "PaymentCreated",
            "PaymentConfirmed",
            "SubscriptionActivated",
        ]
        confirmed = events[1].event
        assert isinstance(confirmed, PaymentConfirmed)
        assert confirmed.tx_hash == tx["hash"]
        assert confirmed.lt == tx["lt"]
        assert confirmed.amount_nanotons == PRICE
        assert confirmed.payer == PAYER
        assert confirmed.overpaid_nanotons == 0
        activated = events[2].event
        assert isinstance(activated, SubscriptionActivated)
        assert activated.ends_at - activated.starts_at == timedelta(days=30)
        cursor = await store.last_event(scan_stream(Address.parse(WALLET)))
        assert cursor is not None
        assert isinstance(cursor.event, WalletScanned)
        assert cursor.event.last_lt == tx["lt"]


async def test_every_rule_on_one_chain(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        for payment_id in range(1, 10):
            await create(store, payment_id)
        await create(store, 12)
        pay(tonapi, 1, PRICE)  # i3lani_1 pays 1, never 12
        pay(tonapi, "  I3LANI_12\n", PRICE + 7)  # stray whitespace and capitals; overpaid
        pay(tonapi, 3, PRICE - 1)  # underpaid by one nanoton
        pay(tonapi, 4, PRICE, bounced=True)
        pay(tonapi, 5, PRICE, success=False, aborted=True)
        pay(tonapi, 6, PRICE, op="jetton_notify")
        pay(tonapi, 7, PRICE, op="encrypted_comment")
        pay(tonapi, "i3lani_8 thanks", PRICE)  # a memo inside other text: never a match
        pay(tonapi, 9, PRICE, out_msgs=1)  # the wallet sent something back
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        assert await types_in(store, 1) == [
            "PaymentCreated",
            "PaymentConfirmed",
            "SubscriptionActivated",
        ]
        twelve = await store.read_stream("payment-12")
        assert [r.type for r in twelve][1] == "PaymentConfirmed"
        assert isinstance(twelve[1].event, PaymentConfirmed)
        assert twelve[1].event.overpaid_nanotons == 7
        three = await store.read_stream("payment-3")
        assert [r.type for r in three] == ["PaymentCreated", "PaymentUnderpaid"]
        assert isinstance(three[1].event, PaymentUnderpaid)
        assert three[1].event.amount_nanotons == PRICE - 1
        for ignored in (4, 5, 6, 7, 8, 9):
            assert await types_in(store, ignored) == ["PaymentCreated"], ignored


async def test_a_transfer_is_never_counted_twice(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        await create(store, 1)
        pay(tonapi, 1, PRICE)
        async with monitor(store, tonapi) as (ref, runner):
            await check(ref)
            await check(ref)  # a second poll: the cursor moved, nothing new
            # The same transaction again (TonAPI repeating itself past the cursor) and a
            # second transfer for the paid payment: neither confirms anything again (the
            # second is recorded as a transfer owing a refund).
            pay(tonapi, 1, PRICE)
            await check(ref)
            assert len(runner.state.used_hashes) == 2
            assert len(runner.state.refunds) == 1
        assert await types_in(store, 1) == [
            "PaymentCreated",
            "PaymentConfirmed",
            "SubscriptionActivated",
        ]


async def test_late_transfer_is_kept_for_review_and_unpaid_payments_expire(
    store: EventStore,
) -> None:
    async with TonApiStandIn() as tonapi:
        past = datetime.now(UTC) - timedelta(hours=2)
        await create(store, 1, created=past)  # expired an hour ago
        await create(store, 2, created=past)  # expired, never paid
        pay(tonapi, 1, PRICE)  # arrives now, after expiry
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        one = await store.read_stream("payment-1")
        assert [r.type for r in one] == ["PaymentCreated", "LatePaymentReceived", "PaymentExpired"]
        assert isinstance(one[1].event, LatePaymentReceived)
        two = await store.read_stream("payment-2")
        assert [r.type for r in two] == ["PaymentCreated", "PaymentExpired"]
        assert isinstance(two[1].event, PaymentExpired)


@pytest.mark.parametrize("fault", ["500", "429", "timeout", "garbage", "wrong_type"])
async def test_a_tonapi_outage_changes_nothing_and_the_next_check_catches_up(
    store: EventStore, fault: TonApiFaultMode
) -> None:
    async with TonApiStandIn(hang=3.0) as tonapi:
        await create(store, 1)
        await create(store, 2, created=datetime.now(UTC) - timedelta(hours=2))
        pay(tonapi, 1, PRICE)
        tonapi.fail(fault, times=None)
        async with monitor(store, tonapi) as (ref, runner):
            await check(ref)  # answers: the outage is not a crash
            assert await types_in(store, 1) == ["PaymentCreated"]
            # No scan succeeded, so nothing is expired either.
            assert await types_in(store, 2) == ["PaymentCreated"]
            monitor_actor = runner.actor
            assert isinstance(monitor_actor, PaymentMonitor)
            assert monitor_actor.consecutive_failures >= 1  # the first tick failed too
            assert monitor_actor.last_error
            assert await store.last_event(scan_stream(Address.parse(WALLET))) is None
            tonapi.heal()
            await check(ref)
            assert monitor_actor.consecutive_failures == 0
        assert (await types_in(store, 1))[1] == "PaymentConfirmed"
        assert (await types_in(store, 2))[1] == "PaymentExpired"


async def test_a_new_payment_is_checked_at_once(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, monitor(store, tonapi) as (_, _runner):
        pay(tonapi, 5, PRICE)
        head = await store.head()
        await create(store, 5)  # the gateway's append wakes the monitor; no tick, no ask
        with anyio.fail_after(10):
            async with store.subscribe(category="payment", after=head) as subscription:
                async for recorded in subscription:
                    if isinstance(recorded.event, SubscriptionActivated):
                        break
        assert await types_in(store, 5) == [
            "PaymentCreated",
            "PaymentConfirmed",
            "SubscriptionActivated",
        ]


async def test_two_nodes_polling_at_once_confirm_once(store: EventStore, dsn: str) -> None:
    async with TonApiStandIn() as tonapi:
        for payment_id in range(1, 21):
            await create(store, payment_id)
            pay(tonapi, payment_id, PRICE)
        # No leases here (the supervisor's would keep the second node waiting): both run at
        # once. Whoever loses a race is refused its append, or crashes on the checkpoint both
        # share, as the supervisor would see it before restarting it.
        crashes: list[BaseException] = []
        async with (
            EventStore.open(dsn, node="node-b") as other_store,
            monitor(store, tonapi, node="node-a", crashes=crashes) as (ref_a, _),
            monitor(other_store, tonapi, node="node-b", crashes=crashes) as (ref_b, _),
        ):
            refused: list[BaseException] = []

            async def poll(ref: ActorRef) -> None:
                try:
                    await check(ref)
                except (ConcurrencyConflict, EventIdReused, ActorNotRunning) as exc:
                    refused.append(exc)  # the other node won a race: nothing was written

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll, ref_a)
                tg.start_soon(poll, ref_b)
            # Whoever lost a race catches up on the next poll and finds nothing to do.
            await poll(ref_a)
            await poll(ref_b)
        # A crashed one is restarted (by the supervisor, in production) and polls again.
        async with monitor(store, tonapi, node="node-a") as (ref, _):
            await check(ref)
        confirmations: dict[int, int] = {}
        hashes: list[str] = []
        for payment_id in range(1, 21):
            for recorded in await store.read_stream(payment_stream(payment_id)):
                if isinstance(recorded.event, PaymentConfirmed):
                    confirmations[payment_id] = confirmations.get(payment_id, 0) + 1
                    hashes.append(recorded.event.tx_hash)
        assert confirmations == dict.fromkeys(range(1, 21), 1)
        assert len(hashes) == len(set(hashes)) == 20


def test_event_ids_are_derived_from_what_they_record() -> None:
    assert payment_event_id("PaymentConfirmed", 1) == payment_event_id("PaymentConfirmed", 1)
    assert payment_event_id("PaymentConfirmed", 1) != payment_event_id("PaymentConfirmed", 12)
    assert isinstance(payment_event_id("x"), uuid.UUID)


async def test_a_transfer_seen_before_its_payment_is_known_is_matched_later(
    store: EventStore,
) -> None:
    async with TonApiStandIn() as tonapi:
        async with monitor(store, tonapi) as (ref, _):
            pay(tonapi, 7, PRICE)  # the monitor has not folded payment 7 yet...
            await check(ref)
        assert await store.last_event(scan_stream(Address.parse(WALLET))) is None  # held back
        await create(store, 7)  # ...now it is known
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        assert (await types_in(store, 7))[1] == "PaymentConfirmed"


async def test_scan_cursor_skips_old_unknown_memos() -> None:
    now = datetime.now(UTC)
    old, recent = int((now - timedelta(hours=1)).timestamp()), int(now.timestamp())
    async with TonApiStandIn() as tonapi:
        pay(tonapi, 99, PRICE, utime=old)  # unknown and old: left behind
        pay(tonapi, 98, PRICE, utime=recent)  # unknown and recent: holds the cursor
        pay(tonapi, "hello", PRICE, utime=recent)
        async with TonApiClient(tonapi.url, sleep=no_sleep) as client:
            transactions = await client.transactions_since(WALLET_RAW, None)
    decisions = match_all(Address.parse(WALLET), {}, set(), transactions)
    assert scan_cursor(transactions, decisions, now) == transactions[0].lt
    assert scan_cursor(transactions, decisions, now + timedelta(hours=1)) == transactions[-1].lt
    assert scan_cursor([], [], now) is None
