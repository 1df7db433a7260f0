"""Each transfer recorded once when a commit's acknowledgement is lost, whether the monitor
goes on (it hears the error and scans again) or its node dies right after: the in-memory log
(its ``lost_ack`` hook), the real PaymentMonitor and TonAPI client, the TonAPI stand-in
answered in-process (no socket)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from anyio.abc import TaskStatus

from actors.config import Settings
from actors.payment_monitor import CheckPayments, MonitorState, PaymentMonitor
from actors.runtime import ActorRef, ActorRunner
from actors.runtime.clock import SystemClock
from actors.ton import memo_for
from actors.tonapi import TonApiClient
from events import PaymentConfirmed, PaymentCreated
from events.errors import StoreUnavailable
from events.payments import RefundDue, TransferReceived
from events.streams import payment_stream
from ops.simulate.transports import InProcessServer, InProcessTransport
from ops.standins import TonApiStandIn
from store import RecordedEvent
from store.memory import MemoryLog

pytestmark = pytest.mark.memory

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
PRICE = 1_500_000_000


class LoseOneAck:
    """``lost_ack`` for the first commit that records a transfer: it is in, the caller hears
    that the connection was lost (as after a crash right after the commit)."""

    def __init__(self) -> None:
        self.armed = False
        self.lost = 0

    def on_commit(self, events: list[RecordedEvent]) -> None:
        if not self.lost and any(isinstance(r.event, TransferReceived) for r in events):
            self.armed = True

    def lost_ack(self, operation: str) -> bool:
        if self.armed:
            self.armed = False
            self.lost += 1
            return True
        return False


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def incarnation(log: MemoryLog, client: TonApiClient) -> AsyncIterator[ActorRef]:
    """One PaymentMonitor incarnation; a crash ends it, as the supervisor would see it."""
    settings = Settings(tonapi_url="http://tonapi.invalid", wallet=WALLET, payment_interval=3600)
    runner: ActorRunner[MonitorState] = ActorRunner(
        PaymentMonitor(settings, tonapi=client), log, SystemClock(), node="node-a"
    )

    async def run(*, task_status: TaskStatus[ActorRef]) -> None:
        try:
            await runner.run(task_status=task_status)
        except* StoreUnavailable:
            pass  # a crash would end it here (restarted below, as in production)

    async with anyio.create_task_group() as tg:
        yield await tg.start(run)
        tg.cancel_scope.cancel()


async def test_a_lost_acknowledgement_and_a_restart_record_each_transfer_once() -> None:
    hook = LoseOneAck()
    log = MemoryLog(on_commit=hook.on_commit, lost_ack=hook.lost_ack)
    now = datetime.now(UTC)
    for payment_id in (1, 2):
        created = PaymentCreated(
            payment_id=payment_id,
            user_id=100 + payment_id,
            plan="month",
            amount_nanotons=PRICE,
            wallet=WALLET,
            memo=memo_for(payment_id),
            created_at=now,
            expires_at=now + timedelta(hours=1),
        )
        await log.append(payment_stream(payment_id), [created])
    tonapi = TonApiStandIn()
    async with (
        InProcessServer(tonapi.application(), host="tonapi.invalid") as server,
        TonApiClient(server.url, transport=InProcessTransport(server), sleep=no_sleep) as client,
    ):
        async with incarnation(log, client) as ref:
            await ref.ask(CheckPayments(), timeout=10)  # after its first tick: nothing yet
            hashes = [
                tonapi.transfer(WALLET, source=PAYER, value=PRICE, comment=memo)["hash"]
                for memo in ("i3lani_1", "i3lani_1", "i3lani_2", "no such memo")
            ]
            # The commit recording them is in; the monitor hears it failed (not a crash).
            with pytest.raises(StoreUnavailable, match="acknowledged"):
                await ref.ask(CheckPayments(), timeout=10)
            await ref.ask(CheckPayments(), timeout=10)  # it goes on: nothing recorded twice
        async with incarnation(log, client) as ref:  # restarted: rebuilt from the log
            await ref.ask(CheckPayments(), timeout=10)
            await ref.ask(CheckPayments(), timeout=10)
    assert hook.lost == 1
    events = [r.event async for r in log.read_all()]
    recorded = Counter(e.tx_hash for e in events if isinstance(e, TransferReceived))
    assert recorded == dict.fromkeys(hashes, 1)
    due = Counter(e.refund_id for e in events if isinstance(e, RefundDue))
    assert due == dict.fromkeys(hashes[1:2] + hashes[3:], 1)  # the second payment, the memo
    confirmed = Counter(e.payment_id for e in events if isinstance(e, PaymentConfirmed))
    assert confirmed == {1: 1, 2: 1}
