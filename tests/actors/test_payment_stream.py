"""The PaymentMonitor's fast path: the TON Streaming API wakes a scan; the REST scan decides.

A real event store, the real PaymentMonitor with its own TonAPI client and stream, the TonAPI
stand-in on loopback with its streaming endpoint. The poll interval is an hour (or a second,
where polling must carry on alone), so whatever is confirmed within moments was confirmed
through the stream. Every scenario ends with each transfer recorded once and each payment
confirmed at most once.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from actors.config import Settings
from actors.health import STREAM_GRACE, stream_check
from actors.payment_monitor import MonitorState, PaymentMonitor
from actors.runtime import ActorRunner
from actors.runtime.clock import SystemClock
from actors.ton import Address, memo_for
from actors.tonapi_stream import StreamStatus
from events import PaymentConfirmed, PaymentCreated
from events.payments import TransferReceived
from events.streams import PAYMENT, payment_stream
from ops.standins import TonApiStandIn
from store import EventStore

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
WALLET_RAW = Address.parse(WALLET).to_raw()
PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
PRICE = 1_500_000_000
FAST = {"backoff_min": 0.05, "backoff_max": 0.3, "stable_after": 5.0}
"""Reconnection backoff for the tests: short, still exponential with jitter."""


def settings(tonapi: TonApiStandIn, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tonapi_url": tonapi.url,
        "wallet": WALLET,
        "payment_interval": 3600.0,
        "stream_silence": 1.0,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def monitor(
    store: EventStore, tonapi: TonApiStandIn, **overrides: Any
) -> AsyncIterator[PaymentMonitor]:
    """A PaymentMonitor incarnation with its stream on, subscribed before the block runs."""
    actor = _Watched(settings(tonapi, **overrides), stream=True, stream_options=FAST)
    runner: ActorRunner[MonitorState] = ActorRunner(actor, store, SystemClock(), node="node-a")
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await until(lambda: _true(actor.stream_status.state == "subscribed"), "subscribed")
        await until(lambda: _true(actor.hints >= 1), "the scan after subscribing")
        yield actor
        runner.request_stop()
    assert actor.stream_status.state == "stopped"


class _Watched(PaymentMonitor):
    """The PaymentMonitor, noting the payments it has folded (for the tests to wait on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[int] = set()

    def evolve(self, state: MonitorState, recorded: Any) -> MonitorState:
        if isinstance(recorded.event, PaymentCreated):
            self.seen.add(recorded.event.payment_id)
        return super().evolve(state, recorded)


async def _true(value: bool) -> bool:
    return value


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> float:
    """Wait for ``check`` (polled every 10 ms); the seconds it took."""
    started = time.monotonic()
    for _ in range(int(within / 0.01)):
        if await check():
            return time.monotonic() - started
        await anyio.sleep(0.01)
    raise AssertionError(f"not within {within:g}s: {what}")


async def create(store: EventStore, payment_id: int) -> None:
    now = datetime.now(UTC)
    event = PaymentCreated(
        payment_id=payment_id,
        user_id=1000 + payment_id,
        plan="month",
        amount_nanotons=PRICE,
        wallet=WALLET,
        memo=memo_for(payment_id),
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    await store.append(payment_stream(payment_id), [event])


def pay(tonapi: TonApiStandIn, payment_id: int) -> dict[str, Any]:
    return tonapi.transfer(WALLET_RAW, source=PAYER, value=PRICE, comment=memo_for(payment_id))


async def confirmed(store: EventStore, payment_id: int) -> bool:
    events = await store.read_stream(payment_stream(payment_id))
    return any(isinstance(r.event, PaymentConfirmed) for r in events)


async def created_and_scanned(store: EventStore, actor: PaymentMonitor, payment_id: int) -> None:
    """Create the payment and let the scan its creation asks for pass, before it is paid."""
    await create(store, payment_id)
    await until(lambda: _true(payment_id in actor.seen), "the payment folded")
    await anyio.sleep(0.3)


async def exactly_once(store: EventStore) -> None:
    """Each transfer recorded once; each payment confirmed at most once."""
    transfers: Counter[str] = Counter()
    confirmations: Counter[int] = Counter()
    async for recorded in store.read_all(category=PAYMENT):
        if isinstance(recorded.event, TransferReceived):
            transfers[recorded.event.tx_hash] += 1
        if isinstance(recorded.event, PaymentConfirmed):
            confirmations[recorded.event.payment_id] += 1
    assert set(transfers.values()) <= {1}, transfers
    assert set(confirmations.values()) <= {1}, confirmations


async def test_the_stream_confirms_a_transfer_before_the_next_poll(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, monitor(store, tonapi) as actor:
        request = tonapi.stream.requests[0]
        assert (request.types, request.min_finality, request.answered) == (
            ["transactions"],
            "finalized",
            200,
        )
        assert [Address.parse(a).to_raw() for a in request.addresses] == [WALLET_RAW]
        await created_and_scanned(store, actor, 1)
        pay(tonapi, 1)
        took = await until(lambda: confirmed(store, 1), "the payment confirmed", within=5)
        # The next poll is an hour away: the stream's hint made the scan.
        assert took < 2.0
        assert actor.stream_status.notices >= 1
        await exactly_once(store)


async def test_only_the_finality_asked_for_wakes_a_scan(store: EventStore) -> None:
    # pending at once, confirmed 0.6 s later, finalized 1.2 s later; the server even sends
    # every level (leak): the monitor asked for finalized and waits for it.
    async with TonApiStandIn(finality_delay=0.6) as tonapi, monitor(store, tonapi) as actor:
        tonapi.stream.leak_levels()
        await created_and_scanned(store, actor, 1)
        hints = actor.hints
        pay(tonapi, 1)
        await anyio.sleep(0.9)  # pending and confirmed have been sent, finalized not yet
        assert actor.hints == hints
        assert not await confirmed(store, 1)
        took = await until(lambda: confirmed(store, 1), "the payment confirmed")
        assert took < 1.5
        await exactly_once(store)


async def test_confirmed_finality_can_be_chosen(store: EventStore) -> None:
    async with (
        TonApiStandIn(finality_delay=1.0) as tonapi,
        monitor(store, tonapi, min_finality="confirmed") as actor,
    ):
        assert tonapi.stream.requests[0].min_finality == "confirmed"
        await created_and_scanned(store, actor, 1)
        pay(tonapi, 1)
        took = await until(lambda: confirmed(store, 1), "the payment confirmed")
        assert took < 0.9  # before finalized was even sent
        await anyio.sleep(1.3)  # finalized comes too: a scan finds nothing new
        await exactly_once(store)


async def test_a_notice_ahead_of_the_index_is_scanned_for_again(store: EventStore) -> None:
    # TonAPI's REST index shows the transfer 0.6 s after its notice: the scan the notice asks
    # for finds nothing, the follow-ups (0.25, 0.5, 1 s later...) find it.
    async with TonApiStandIn() as tonapi, monitor(store, tonapi) as actor:
        await created_and_scanned(store, actor, 1)
        tonapi.index_lag = 0.6
        hints = actor.hints
        pay(tonapi, 1)
        took = await until(lambda: confirmed(store, 1), "confirmed by a follow-up scan")
        assert 0.6 <= took < 2.0
        assert actor.hints >= hints + 2
        await exactly_once(store)


async def test_a_pending_trace_withdrawn_wakes_nothing(store: EventStore) -> None:
    async with TonApiStandIn(finality_delay=0.2) as tonapi, monitor(store, tonapi) as actor:
        tonapi.stream.leak_levels()  # the pending notice reaches the monitor anyway
        await created_and_scanned(store, actor, 1)
        hints, scans = actor.hints, len(tonapi.requests)
        tonapi.stream.phantom(WALLET, source=PAYER, value=PRICE, comment=memo_for(1))
        await until(lambda: _true(actor.stream_status.ignored >= 2), "pending and withdrawn")
        await anyio.sleep(0.3)
        assert (actor.hints, len(tonapi.requests)) == (hints, scans)
        assert not await confirmed(store, 1)


async def test_a_dropped_stream_reconnects_and_scans_what_it_missed(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, monitor(store, tonapi) as actor:
        await created_and_scanned(store, actor, 1)
        await created_and_scanned(store, actor, 2)
        # The connection drops; TonAPI refuses reconnections for a moment (429).
        tonapi.stream.drop(cooldown=0.4, retry_after=0.1)
        pay(tonapi, 1)  # while no stream is open: never notified
        await until(lambda: confirmed(store, 1), "the scan after reconnecting confirmed it")
        assert actor.stream_status.connects >= 2
        assert actor.stream_status.refusals >= 1
        refused = [r for r in tonapi.stream.requests if r.answered == 429]
        assert refused
        pay(tonapi, 2)  # the new connection hears of it
        took = await until(lambda: confirmed(store, 2), "confirmed through the new stream")
        assert took < 2.0
        await exactly_once(store)


async def test_a_stalled_stream_is_taken_for_dead(store: EventStore) -> None:
    async with TonApiStandIn(keepalive=0.2) as tonapi, monitor(store, tonapi) as actor:
        await created_and_scanned(store, actor, 1)
        connects = actor.stream_status.connects
        tonapi.stream.stall()  # open, but silent: not even keepalives
        pay(tonapi, 1)  # notified into the silence: lost
        # Silence past stream_silence (1 s): the connection is taken for dead, and so is the
        # next one while the stall lasts.
        await until(lambda: _true(actor.stream_status.drops >= 1), "the silence noticed")
        assert not await confirmed(store, 1)
        tonapi.stream.heal()
        # Reconnected: the scan after subscribing finds the transfer.
        await until(lambda: confirmed(store, 1), "confirmed after the reconnection")
        assert actor.stream_status.connects > connects
        assert "silent" in (actor.stream_status.reason or "")
        await exactly_once(store)


async def test_garbage_on_the_stream_is_ignored(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, monitor(store, tonapi) as actor:
        tonapi.stream.garbage()
        await created_and_scanned(store, actor, 1)
        pay(tonapi, 1)
        took = await until(lambda: confirmed(store, 1), "confirmed through the garbage")
        assert took < 2.0
        assert actor.stream_status.garbage >= 1
        await exactly_once(store)


async def test_polling_alone_confirms_while_the_stream_is_refused(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        tonapi.stream.refuse(None, retry_after=0.2)  # every connection: 429
        actor = PaymentMonitor(
            settings(tonapi, payment_interval=1.0), stream=True, stream_options=FAST
        )
        runner: ActorRunner[MonitorState] = ActorRunner(actor, store, SystemClock(), node="n")
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await create(store, 1)
            pay(tonapi, 1)
            await until(lambda: confirmed(store, 1), "confirmed by polling")
            assert actor.stream_status.state in ("down", "connecting")
            assert actor.stream_status.connects == 0
            assert actor.stream_status.refusals >= 1
            # The health check: a warning once it is down past the grace, never a failure.
            later = datetime.now(UTC) + timedelta(seconds=STREAM_GRACE + 1)
            check = stream_check(actor.stream_status, later, 1.0)
            assert check.ok, check
            assert check.warning, check
            assert "polling every 1s" in check.detail
            runner.request_stop()
        await exactly_once(store)


async def test_the_stream_ends_with_the_incarnation(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        async with monitor(store, tonapi):
            assert len(tonapi.stream.connections) == 1
        await until(lambda: _true(not tonapi.stream.connections), "the stream closed")


async def test_the_stream_is_off_when_configured_so(store: EventStore) -> None:
    async with TonApiStandIn() as tonapi:
        status = StreamStatus()
        actor = PaymentMonitor(
            settings(tonapi, tonapi_stream=False), stream_status=status
        )  # its own client, as in production: the setting decides
        assert not actor.stream_enabled
        runner: ActorRunner[MonitorState] = ActorRunner(actor, store, SystemClock(), node="n")
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await anyio.sleep(0.3)
            assert status.state == "off"
            assert not tonapi.stream.requests
            runner.request_stop()
        assert PaymentMonitor(settings(tonapi)).stream_enabled
