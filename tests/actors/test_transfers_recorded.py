"""Every nanoton the wallet receives, end to end: a real event store, the real TonAPI client,
the TonAPI stand-in producing each kind of transfer; the refunds' operator path; the daily
reconciliation (Cleanup) alerting the admins.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Final

import anyio
import pytest

from actors.cleanup import Cleanup, CleanupState
from actors.config import Settings
from actors.payment_monitor import payment_event_id
from actors.refunds import (
    Refund,
    RefundRefused,
    RefundStatus,
    UnknownRefund,
    decline,
    list_refunds,
    mark_refunded,
)
from actors.runtime import ActorNotRunning, ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.ton import Address
from actors.tonapi import TonApiClient
from actors.transfers import read_ledger, reconcile_wallet, scan_stream
from events import AlertRaised, EventMetadata
from events.errors import ConcurrencyConflict, EventIdReused
from events.payments import (
    RefundConfirmed,
    RefundDue,
    RefundSent,
    RefundUnconfirmed,
    TransferReceived,
    TransferSent,
    TransfersReconciled,
    WalletScanned,
)
from events.streams import OPS_ALERTS, payment_refund_stream
from ops.standins import TonApiStandIn
from store import EventStore, RecordedEvent
from tests.actors.test_payment_monitor import (
    PAYER,
    PRICE,
    WALLET,
    WALLET_RAW,
    check,
    create,
    monitor,
    no_sleep,
    pay,
    types_in,
)
from tests.waiting import eventually

OTHER = "0:ca6e321c7cce9ecedf0a8ca2492ec8592494aa5fb5ce0387dff96ef6af982a3e"
OPERATOR = "cli:test@host"


async def wallet_stream(store: EventStore) -> list[RecordedEvent]:
    return await store.read_stream(scan_stream(Address.parse(WALLET)))


async def transfers(store: EventStore) -> dict[str, TransferReceived | TransferSent]:
    """Each recorded transfer by hash; a hash recorded twice fails the test."""
    found: dict[str, TransferReceived | TransferSent] = {}
    for recorded in await wallet_stream(store):
        if isinstance(recorded.event, TransferReceived | TransferSent):
            assert recorded.event.tx_hash not in found, f"{recorded.event.tx_hash} twice"
            assert recorded.event_id == payment_event_id(recorded.type, recorded.event.tx_hash)
            found[recorded.event.tx_hash] = recorded.event
    return found


def category(record: TransferReceived | TransferSent) -> str:
    return record.category if isinstance(record, TransferReceived) else "sent"


async def refund_of(store: EventStore, refund_id: str) -> list[str]:
    return [r.type for r in await store.read_stream(payment_refund_stream(refund_id))]


async def test_each_kind_of_transfer_is_recorded_once_with_where_its_money_went(
    store: EventStore,
) -> None:
    old = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    async with TonApiStandIn() as tonapi:
        for payment_id in (1, 2, 3):
            await create(store, payment_id)
        await create(store, 4, created=datetime.now(UTC) - timedelta(hours=2))  # expired
        chain = {
            "confirmed": pay(tonapi, 1, PRICE),
            "overpaid": pay(tonapi, 2, PRICE + 7),
            "underpaid": pay(tonapi, 3, PRICE - 1),
            "second-payment": pay(tonapi, 1, PRICE),
            "late": pay(tonapi, 4, PRICE),
            "unknown-memo": pay(tonapi, "thanks for the ads", 10**9),
            "unknown-payment": pay(tonapi, 99, 10**9, utime=old),  # names no payment of ours
            "no-memo": pay(tonapi, "x", 10**9, op="none"),
            "bounced": pay(tonapi, 1, PRICE, bounced=True),
            "failed": pay(tonapi, 1, PRICE, success=False, aborted=True),
            "aborted": pay(tonapi, 1, PRICE, aborted=True),
            "jetton": pay(tonapi, 1, PRICE, op="jetton_notify"),
            "encrypted": pay(tonapi, 1, PRICE, op="encrypted_comment"),
            "sent back": pay(tonapi, 1, PRICE, out_msgs=1),
            "sent": tonapi.send(WALLET_RAW, destination=PAYER, value=10**9),
        }
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
            await check(ref)  # a second poll: nothing new
        recorded = await transfers(store)
        assert set(recorded) == {tx["hash"] for tx in chain.values()}
        expected = {
            "unknown-payment": "unknown-memo",
            "bounced": "ignored",
            "failed": "ignored",
            "aborted": "ignored",
            "jetton": "ignored",
            "encrypted": "ignored",
            "sent back": "ignored",
        }
        for name, tx in chain.items():
            assert category(recorded[tx["hash"]]) == expected.get(name, name), name
        reasons = {
            name: recorded[chain[name]["hash"]].reason  # type: ignore[union-attr]
            for name in ("bounced", "failed", "aborted", "jetton", "encrypted", "sent back")
        }
        assert reasons == {
            "bounced": "bounced",
            "failed": "failed",
            "aborted": "aborted",
            "jetton": "not-text-comment",
            "encrypted": "not-text-comment",
            "sent back": "has-out-messages",
        }
        # Where every nanoton went: kept for a payment, owed back, or ignored.
        owed = {
            tx_hash: r.refund_nanotons
            for tx_hash, r in recorded.items()
            if isinstance(r, TransferReceived) and r.refund_nanotons
        }
        assert owed == {
            chain["overpaid"]["hash"]: 7,
            chain["underpaid"]["hash"]: PRICE - 1,
            chain["second-payment"]["hash"]: PRICE,
            chain["late"]["hash"]: PRICE,
            chain["unknown-memo"]["hash"]: 10**9,
            chain["unknown-payment"]["hash"]: 10**9,
            chain["no-memo"]["hash"]: 10**9,
        }
        refunds = {r.refund_id: r for r in await list_refunds(store)}
        assert {k: r.amount_nanotons for k, r in refunds.items()} == owed
        assert all(r.status is RefundStatus.DUE and r.to == PAYER for r in refunds.values())
        assert refunds[chain["second-payment"]["hash"]].payment_id == 1
        # The payments' own events are unchanged.
        assert await types_in(store, 1) == [
            "PaymentCreated",
            "PaymentConfirmed",
            "SubscriptionActivated",
        ]
        assert (await types_in(store, 4))[1:] == ["LatePaymentReceived", "PaymentExpired"]
        # The cursor says which range is recorded whole; the chain agrees with the log.
        scans = [r.event for r in await wallet_stream(store) if r.type == "WalletScanned"]
        assert isinstance(scans[0], WalletScanned)
        assert scans[0].from_lt == 0
        async with TonApiClient(tonapi.url, sleep=no_sleep) as client:
            result = await reconcile_wallet(store, client, Address.parse(WALLET))
        assert result is not None
        assert result.clean, result.discrepancies
        assert result.recorded == result.chain_transfers == len(chain)


async def test_a_rescan_records_nothing_twice(store: EventStore) -> None:
    """A transfer for a payment not known yet holds the cursor, so the scans read the
    transfers after it again and again: none is recorded twice, and the held one is
    recorded once, as a payment, when the payment becomes known."""
    async with TonApiStandIn() as tonapi:
        await create(store, 1)
        pay(tonapi, 7, PRICE)  # payment 7 is not known yet: holds the cursor
        after = [pay(tonapi, 1, PRICE), pay(tonapi, "hello", 10**9), pay(tonapi, 1, PRICE)]
        async with monitor(store, tonapi) as (ref, runner):
            for _ in range(3):
                await check(ref)
            assert runner.state.cursors.get(WALLET_RAW) is None  # still held
        recorded = await transfers(store)
        assert set(recorded) == {tx["hash"] for tx in after}
        await create(store, 7)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
            await check(ref)
        recorded = await transfers(store)
        assert Counter(category(r) for r in recorded.values()) == {
            "confirmed": 2,
            "unknown-memo": 1,
            "second-payment": 1,
        }
        assert len(await list_refunds(store)) == 2


async def test_two_nodes_polling_at_once_record_each_transfer_once(
    store: EventStore, dsn: str
) -> None:
    async with TonApiStandIn() as tonapi:
        for payment_id in range(1, 11):
            await create(store, payment_id)
            pay(tonapi, payment_id, PRICE)
            pay(tonapi, payment_id, PRICE)  # a second payment each: a refund each
        crashes: list[BaseException] = []
        async with (
            EventStore.open(dsn, node="node-b") as other_store,
            monitor(store, tonapi, node="node-a", crashes=crashes) as (ref_a, _),
            monitor(other_store, tonapi, node="node-b", crashes=crashes) as (ref_b, _),
        ):

            async def poll(ref: ActorRef) -> None:
                with contextlib.suppress(ConcurrencyConflict, EventIdReused, ActorNotRunning):
                    await check(ref)  # the other node won a race: nothing was written

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll, ref_a)
                tg.start_soon(poll, ref_b)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        recorded = await transfers(store)  # fails on a hash recorded twice
        assert len(recorded) == 20
        refunds = await list_refunds(store)
        assert len(refunds) == 10
        for refund in refunds:
            assert await refund_of(store, refund.refund_id) == ["RefundDue"]


# -- refunds: the operator's path ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def second_payment(store: EventStore) -> AsyncIterator[tuple[TonApiStandIn, Refund]]:
    """A payment paid twice, scanned: the second transfer is a refund due."""
    async with TonApiStandIn() as tonapi:
        await create(store, 1)
        pay(tonapi, 1, PRICE)
        pay(tonapi, 1, PRICE)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        (refund,) = await list_refunds(store)
        assert refund.category == "second-payment"
        yield tonapi, refund


async def test_a_refund_marked_then_seen_on_chain_is_confirmed(store: EventStore) -> None:
    async with second_payment(store) as (tonapi, refund):
        out = tonapi.send(WALLET_RAW, destination=PAYER, value=PRICE)
        marked = await mark_refunded(
            store, refund.refund_id[:10].upper(), out["hash"].upper(), requested_by=OPERATOR
        )
        assert (marked.status, marked.tx_hash, marked.marked_by) == (
            RefundStatus.SENT,
            out["hash"],
            OPERATOR,
        )
        last = await store.last_event(payment_refund_stream(refund.refund_id))
        assert last is not None
        assert last.metadata.caused_by == OPERATOR
        with pytest.raises(RefundRefused, match="already marked refunded"):
            await mark_refunded(store, refund.refund_id, out["hash"], requested_by="cli:other")
        with pytest.raises(RefundRefused, match="cannot decline"):
            await decline(store, refund.refund_id, "no", requested_by=OPERATOR)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        assert await refund_of(store, refund.refund_id) == [
            "RefundDue",
            "RefundSent",
            "RefundConfirmed",
        ]
        (done,) = await list_refunds(store)
        assert (done.status, done.refunded_nanotons) == (RefundStatus.REFUNDED, PRICE)
        with pytest.raises(RefundRefused, match="was refunded already"):
            await mark_refunded(store, refund.refund_id, "ab" * 32, requested_by=OPERATOR)


async def test_a_refund_marked_after_the_scan_recorded_its_transaction_is_confirmed_at_once(
    store: EventStore,
) -> None:
    async with second_payment(store) as (tonapi, refund):
        out = tonapi.send(WALLET_RAW, destination=PAYER, value=PRICE - 100)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)  # records the outgoing transfer before anyone marks it
            head = await store.head()
            await mark_refunded(store, refund.refund_id, out["hash"], requested_by=OPERATOR)
            with anyio.fail_after(10):
                async with store.subscribe(category="payment", after=head) as subscription:
                    async for recorded in subscription:
                        if isinstance(recorded.event, RefundConfirmed):
                            assert recorded.event.amount_nanotons == PRICE - 100
                            break


async def test_a_mark_the_chain_does_not_bear_out_makes_the_refund_due_again(
    store: EventStore,
) -> None:
    async with second_payment(store) as (tonapi, refund):
        elsewhere = tonapi.send(WALLET_RAW, destination=OTHER, value=PRICE)
        await mark_refunded(store, refund.refund_id, elsewhere["hash"], requested_by=OPERATOR)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        events = await store.read_stream(payment_refund_stream(refund.refund_id))
        assert [r.type for r in events] == ["RefundDue", "RefundSent", "RefundUnconfirmed"]
        unconfirmed = events[-1].event
        assert isinstance(unconfirmed, RefundUnconfirmed)
        assert f"sent nothing to {PAYER}" in unconfirmed.reason
        (again,) = await list_refunds(store)
        assert again.status is RefundStatus.DUE
        assert "sent nothing to" in again.problem
        # Now that the scan recorded it, the same wrong hash is refused at once.
        with pytest.raises(RefundRefused, match="sent nothing to"):
            await mark_refunded(store, refund.refund_id, elsewhere["hash"], requested_by=OPERATOR)
        # A hash the wallet received is refused too.
        received = refund.refund_id
        with pytest.raises(RefundRefused, match="a transfer the wallet received"):
            await mark_refunded(store, refund.refund_id, received, requested_by=OPERATOR)
        # A typo: a hash no transaction has. Once the scans pass a transaction made well after
        # the mark, the refund is due again.
        await mark_refunded(store, refund.refund_id, "cd" * 32, requested_by=OPERATOR)
        later = int((datetime.now(UTC) + timedelta(minutes=11)).timestamp())
        pay(tonapi, "unrelated", 10**9, utime=later)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        last = await store.last_event(payment_refund_stream(refund.refund_id))
        assert last is not None
        assert isinstance(last.event, RefundUnconfirmed)
        assert "no transaction cdcd" in last.event.reason


async def test_bad_refund_input_is_refused_in_one_line_and_changes_nothing(
    store: EventStore,
) -> None:
    async with second_payment(store) as (_, refund):
        before = await store.head()
        cases: list[tuple[type[Exception], str, str, str]] = [
            (ValueError, "a transaction hash is 64 hexadecimal digits", refund.refund_id, "abc"),
            (ValueError, "a transaction hash is 64", refund.refund_id, "g" * 64),
            (ValueError, "a refund id is the hash", "1234", "ab" * 32),
            (ValueError, "a refund id is the hash", "zz" * 8, "ab" * 32),
            (UnknownRefund, "no refund 00000000", "00000000", "ab" * 32),
        ]
        for error, message, refund_id, tx_hash in cases:
            with pytest.raises(error, match=message) as raised:
                await mark_refunded(store, refund_id, tx_hash, requested_by=OPERATOR)
            assert "\n" not in str(raised.value)
        with pytest.raises(ValueError, match="say why"):
            await decline(store, refund.refund_id, "   ", requested_by=OPERATOR)
        with pytest.raises(ValueError, match="keep it to 200"):
            await decline(store, refund.refund_id, "x" * 201, requested_by=OPERATOR)
        assert await store.head() == before
        declined = await decline(store, refund.refund_id, "honoured by hand", requested_by=OPERATOR)
        assert (declined.status, declined.reason, declined.declined_by) == (
            RefundStatus.DECLINED,
            "honoured by hand",
            OPERATOR,
        )
        with pytest.raises(RefundRefused, match="was declined by cli:test@host"):
            await decline(store, refund.refund_id, "again", requested_by=OPERATOR)


# -- the daily reconciliation ----------------------------------------------------------------
@contextlib.asynccontextmanager
async def cleanup(
    store: EventStore, tonapi: TonApiStandIn
) -> AsyncIterator[ActorRunner[CleanupState]]:
    settings = Settings(tonapi_url=tonapi.url, wallet=WALLET, cleanup_interval=3600)
    async with (
        TonApiClient(tonapi.url, retries=1, sleep=no_sleep) as client,
        anyio.create_task_group() as tg,
    ):
        runner = ActorRunner(Cleanup(settings, tonapi=client), store, SystemClock(), node="n")
        await tg.start(runner.run)
        yield runner
        tg.cancel_scope.cancel()


FORGED: Final = "ee" * 32


async def forge(store: EventStore, tonapi: TonApiStandIn) -> str:
    """Past the cursor, as if a scan had covered them: a transfer on chain that the log lacks
    (a scan that skipped it), and a record of a transfer the chain never had (:data:`FORGED`);
    the hash of the first."""
    ledger = await read_ledger(store, Address.parse(WALLET))
    assert ledger.cursor is not None
    lost = pay(tonapi, "lost", 10**9, lt=ledger.cursor + 1)
    now = datetime.now(UTC)
    await store.append(
        scan_stream(Address.parse(WALLET)),
        [
            TransferReceived(
                wallet=WALLET_RAW,
                tx_hash=FORGED,
                lt=ledger.cursor + 2,
                received_at=now,
                amount_nanotons=5 * 10**9,
                payer=PAYER,
                category="no-memo",
                refund_nanotons=5 * 10**9,
                detected_at=now,
            ),
            WalletScanned(
                wallet=WALLET_RAW,
                last_lt=ledger.cursor + 3,
                transactions=2,
                scanned_at=now,
                from_lt=ledger.cursor,
            ),
        ],
        metadata=EventMetadata(caused_by="test:forger"),
    )
    return str(lost["hash"])


async def reconciliations(store: EventStore, count: int) -> bool:
    return [r.type for r in await wallet_stream(store)].count("TransfersReconciled") == count


async def alerts(store: EventStore) -> list[AlertRaised]:
    return [
        r.event for r in await store.read_stream(OPS_ALERTS) if isinstance(r.event, AlertRaised)
    ]


async def test_the_daily_reconciliation_catches_a_transfer_missing_and_one_invented(
    store: EventStore,
) -> None:
    async with TonApiStandIn() as tonapi:
        await create(store, 1)
        pay(tonapi, 1, PRICE)
        async with monitor(store, tonapi) as (ref, _):
            await check(ref)
        async with cleanup(store, tonapi):  # the first pass is due at once
            await eventually(lambda: reconciliations(store, 1))
        (clean,) = [r.event for r in await wallet_stream(store) if r.type == "TransfersReconciled"]
        assert isinstance(clean, TransfersReconciled)
        assert (clean.transactions, clean.recorded, clean.discrepancies) == (1, 1, 0)
        assert await alerts(store) == []

        lost = await forge(store, tonapi)
        async with cleanup(store, tonapi) as runner:  # the next day's pass
            for message in await runner.actor.on_tick(runner.state, runner):
                await runner.ref.ask(message)
        found = [r.event for r in await wallet_stream(store) if r.type == "TransfersReconciled"]
        assert len(found) == 2
        latest = found[-1]
        assert isinstance(latest, TransfersReconciled)
        assert latest.from_lt == clean.to_lt  # only what no reconciliation covered
        assert (latest.discrepancies, set(latest.tx_hashes)) == (2, {lost, FORGED})
        (alert,) = await alerts(store)
        assert alert.kind == "reconciliation"
        assert alert.subject == "2 transfer discrepancies"
        assert f"missing-from-log tx {lost}" in alert.message
        assert f"not-on-chain tx {FORGED}" in alert.message


def test_refund_due_ids_derive_from_the_transfer() -> None:
    tx_hash = "ab" * 32
    assert payment_event_id("RefundDue", tx_hash) == payment_event_id("RefundDue", tx_hash)
    assert payment_event_id("RefundDue", tx_hash) != payment_event_id("TransferReceived", tx_hash)
    assert isinstance(payment_event_id("RefundDue", tx_hash), uuid.UUID)
    assert RefundDue.__struct_config__.tag == "RefundDue"
    assert RefundSent.__struct_config__.tag == "RefundSent"
