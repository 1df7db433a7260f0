"""How soon a payment is confirmed, and its user told: the fast path beside polling alone.

Two arms, one after the other, in the same run, each with a real ``i3lani run --actors
PaymentMonitor`` worker process at the default poll interval (``I3LANI_PAYMENT_INTERVAL``
unset: 30 s), the TonAPI stand-in and the Bot API stand-in in the bench process, and the
gateway's real payment notifier (:func:`bot_gateway.notifier.run_notifier`) following the log
there too:

1. **with the stream** (``I3LANI_TONAPI_STREAM=on``, finality ``finalized``): N payments
   created, then paid one at a time, 0.4 to 0.8 s apart;
2. **polling alone** (``I3LANI_TONAPI_STREAM=off``): M payments created, then paid at random
   moments over two poll intervals (so each transfer meets a uniformly random point of the
   30 s cycle, as a user's does).

For each transfer: t0 when the bench put it on the stand-in's chain (the REST endpoint shows it
from then on; the stream's notices follow), t1 when its ``PaymentConfirmed`` reached a reader
of the log in the bench process (committed, and visible to others: an upper bound of the
append), t2 when the notifier's "Payment #N is confirmed" reached the Bot API stand-in's
``sendMessage``. Payments are created before any transfer and the scan each creation asks for
has passed, so only the stream or a tick can see a transfer. Every payment must be confirmed
exactly once and told once, or the rows FAIL. In a database of its own
(``i3lani_bench_confirm``, made afresh and dropped after), so that the payments earlier
suites of a full run leave in the bench's database are not read as its own.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import anyio
from aiogram import Bot
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from actors.clients import telegram_bot
from actors.config import Settings
from actors.telegram import TelegramClient
from actors.ton import Address, memo_for
from bench.measure import BenchContext, percentile
from bench.report import Goal, Row
from bench.scale import fresh_database
from bot_gateway.notifier import run_notifier
from events import PaymentConfirmed, PaymentCreated
from events.streams import PAYMENT, payment_stream
from ops.standins import BotApiStandIn, TonApiStandIn
from ops.standins.telegram import SentMessage
from store import EventStore
from store.admin import drop_database
from store.database import with_database

__all__ = ["NOTES", "run"]

SEED: Final = 20_261_215
DATABASE: Final = "i3lani_bench_confirm"  # made afresh for the suite, dropped after it
TOKEN: Final = "7000000001:bench-confirm-token"
PAYER: Final = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
WALLETS: Final = {
    "stream": "EQDKbjIcfM6ezt8KjKJJLshZJJSqX7XOA4ff-W72r5gqPrHF",
    "polling": "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE",
}
PRICE: Final = 1_000_000_000
POLL_INTERVAL: Final = 30.0  # the default I3LANI_PAYMENT_INTERVAL: the worker is not told
SECTION: Final = "payments, confirmation: transfer visible at the TonAPI stand-in -> ..."

NOTES = [
    "payments, confirmation: two arms in one run, each a real `i3lani run --actors "
    "PaymentMonitor` worker at the default 30 s poll interval against the TonAPI stand-in "
    "(loopback, a notice per finality level at once), the gateway's payment notifier (its Bot "
    "on the shared rate limits, as the gateway builds it) and the Bot API stand-in in the bench "
    "process; both workers keep to the shared TonAPI rate (10/s by default). With the stream: "
    "payments paid one at a time, 0.4-0.8 s apart (polling goes on too). Polling alone "
    "(I3LANI_TONAPI_STREAM=off): "
    "transfers at random moments over two poll intervals. Confirmed = the PaymentConfirmed "
    "read back from the log by a subscriber in the bench process; notice = the 'is confirmed' "
    "sendMessage reaching the Bot API stand-in. Payments are created, and the scan each "
    "creation asks for has run, before any transfer.",
]


class _StampedSent(list[SentMessage]):
    """The Bot API stand-in's ``sent`` list, noting when each message arrived (wall clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []

    def append(self, item: SentMessage) -> None:
        self.stamps.append(time.time())
        super().append(item)


@dataclass(slots=True)
class _Arm:
    name: str
    wallet: str
    ids: list[int]
    paid_at: dict[int, float] = field(default_factory=dict)
    confirmed_at: dict[int, float] = field(default_factory=dict)
    confirmations: dict[int, int] = field(default_factory=dict)
    noticed_at: dict[int, float] = field(default_factory=dict)
    failure: str | None = None

    def latencies(self, ends: dict[int, float]) -> list[float]:
        """Milliseconds from each transfer to ``ends`` (only those that got there)."""
        return [
            (ends[i] - self.paid_at[i]) * 1000 for i in self.ids if i in ends and i in self.paid_at
        ]


def _worker_command() -> list[str]:
    script = Path(sys.executable).parent / "i3lani"
    if script.exists():
        return [str(script)]
    found = shutil.which("i3lani")
    return [found] if found else [sys.executable, "-m", "ops.cli"]


async def _drain(stream: ByteReceiveStream, into: bytearray) -> None:
    try:
        async for chunk in stream:
            into.extend(chunk)
            del into[:-100_000]
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def run(ctx: BenchContext) -> list[Row]:
    rng = random.Random(SEED)
    streamed = _Arm("stream", WALLETS["stream"], list(range(1, (12 if ctx.quick else 40) + 1)))
    polled = _Arm(
        "polling", WALLETS["polling"], list(range(1001, 1001 + (10 if ctx.quick else 30)))
    )
    window = POLL_INTERVAL * (1 if ctx.quick else 2)
    by_id = {i: arm for arm in (streamed, polled) for i in arm.ids}
    # A database of its own: the suites before it in a full run leave payments with these
    # ids in the bench's (the payments suite's thousands), whose confirmations would be read
    # as this run's and whose streams the new PaymentCreated would land in.
    dsn = await fresh_database(ctx, DATABASE)
    try:
        return await _measure(ctx, dsn, rng, streamed, polled, by_id, window)
    finally:
        await drop_database(with_database(ctx.dsn, "postgres"), DATABASE)


async def _measure(
    ctx: BenchContext,
    dsn: str,
    rng: random.Random,
    streamed: _Arm,
    polled: _Arm,
    by_id: dict[int, _Arm],
    window: float,
) -> list[Row]:
    async with (
        EventStore.open(dsn) as store,
        TonApiStandIn() as tonapi,
        BotApiStandIn(token=TOKEN) as bot_api,
        TelegramClient(_gateway_bot(store, bot_api.url)) as telegram,
        anyio.create_task_group() as tg,
    ):
        sent = _StampedSent()
        bot_api.sent = sent
        tg.start_soon(_observe, store, by_id)
        await tg.start(run_notifier, store, telegram)
        tg.start_soon(_notices, sent, by_id)
        for arm in (streamed, polled):
            ctx.log(f"  {arm.name}: {len(arm.ids)} transfers ...")
            try:
                await _arm(ctx, dsn, tg, store, tonapi, arm, rng, window)
            except (TimeoutError, RuntimeError) as exc:
                arm.failure = f"{arm.name}: {exc}"
        tg.cancel_scope.cancel()
    return _rows(streamed, polled)


def _gateway_bot(store: EventStore, url: str) -> Bot:
    """The Bot as the gateway builds it for its notifier: on the shared rate limits, at the
    default rates (30 messages a second, one a second per chat)."""
    return telegram_bot(Settings(bot_token=TOKEN, telegram_api_url=url), store)


async def _observe(store: EventStore, by_id: dict[int, _Arm]) -> None:
    """Note when each PaymentConfirmed reaches a reader of the log."""
    async with store.subscribe(category=PAYMENT, poll_interval=1.0) as sub:
        async for recorded in sub:
            event = recorded.event
            if isinstance(event, PaymentConfirmed) and event.payment_id in by_id:
                arm = by_id[event.payment_id]
                arm.confirmed_at.setdefault(event.payment_id, time.time())
                arm.confirmations[event.payment_id] = arm.confirmations.get(event.payment_id, 0) + 1


async def _notices(sent: _StampedSent, by_id: dict[int, _Arm]) -> None:
    """Note when each "Payment #N is confirmed" notice reached the Bot API stand-in."""
    seen = 0
    while True:
        for stamp, message in zip(sent.stamps[seen:], sent[seen:], strict=True):
            text = message.text
            if text.startswith("Payment #") and " is confirmed" in text:
                payment_id = int(text.removeprefix("Payment #").split(" ", 1)[0])
                if payment_id in by_id:
                    by_id[payment_id].noticed_at.setdefault(payment_id, stamp)
        seen = len(sent.stamps)
        await anyio.sleep(0.05)


async def _arm(
    ctx: BenchContext,
    dsn: str,
    tg: TaskGroup,
    store: EventStore,
    tonapi: TonApiStandIn,
    arm: _Arm,
    rng: random.Random,
    window: float,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("I3LANI_") or k == "I3LANI_HOME"}
    env.update(
        {
            "DATABASE_URL": dsn,
            "TONAPI_URL": tonapi.url,
            "WALLET_ADDRESS": arm.wallet,
            "I3LANI_NODE": f"bench-confirm-{arm.name}",
            "I3LANI_TONAPI_STREAM": "on" if arm.name == "stream" else "off",
            "I3LANI_LOG_LEVEL": "WARNING",
        }
    )
    for key in ("BOT_TOKEN", "TELEGRAM_API_URL", "TONAPI_KEY"):
        env.pop(key, None)
    output = bytearray()
    process: Process = await anyio.open_process(
        [*_worker_command(), "run", "--actors", "PaymentMonitor"], env=env
    )
    for stream in (process.stdout, process.stderr):
        assert stream is not None
        tg.start_soon(_drain, stream, output)
    try:
        await _ready(process, output, tonapi, arm)
        now = datetime.now(UTC)
        for payment_id in arm.ids:
            await store.append(
                payment_stream(payment_id),
                [
                    PaymentCreated(
                        payment_id=payment_id,
                        user_id=50_000 + payment_id,
                        plan="week",
                        amount_nanotons=PRICE,
                        wallet=arm.wallet,
                        memo=memo_for(payment_id),
                        created_at=now,
                        expires_at=now + timedelta(hours=2),
                    )
                ],
            )
        await anyio.sleep(2.0)  # the scan the creations asked for has run
        raw = Address.parse(arm.wallet).to_raw()
        if arm.name == "stream":
            offsets = []
            at = 0.0
            for _ in arm.ids:
                at += rng.uniform(0.4, 0.8)
                offsets.append(at)
        else:
            offsets = sorted(rng.uniform(0, window) for _ in arm.ids)
        started = time.monotonic()
        for payment_id, offset in zip(arm.ids, offsets, strict=True):
            await anyio.sleep(max(started + offset - time.monotonic(), 0))
            arm.paid_at[payment_id] = time.time()
            tonapi.transfer(raw, source=PAYER, value=PRICE, comment=memo_for(payment_id))
        with anyio.fail_after(POLL_INTERVAL + 30):
            while True:
                if len(arm.noticed_at) == len(arm.confirmed_at) == len(arm.ids):
                    break
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)  # a second confirmation, if any, has time to show
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(30):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()
    if process.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"the worker exited with {process.returncode}: {output[-2000:]!r}")


async def _ready(process: Process, output: bytearray, tonapi: TonApiStandIn, arm: _Arm) -> None:
    """The worker supervises, its monitor has scanned once and (stream arm) is subscribed."""
    path = f"/v2/blockchain/accounts/{Address.parse(arm.wallet).to_raw()}/transactions"
    with anyio.fail_after(90):
        while not any(r.path.replace("%3A", ":") == path for r in tonapi.requests) or (
            arm.name == "stream" and not tonapi.stream.connections
        ):
            if process.returncode is not None:
                raise RuntimeError(f"the worker exited early: {output[-2000:]!r}")
            await anyio.sleep(0.05)


def _p(values: Sequence[float], fraction: float) -> float:
    return percentile(list(values), fraction) if values else float("nan")


def _rows(streamed: _Arm, polled: _Arm) -> list[Row]:
    failures = [arm.failure for arm in (streamed, polled) if arm.failure]
    for arm in (streamed, polled):
        twice = sorted(i for i, n in arm.confirmations.items() if n > 1)
        if twice:
            failures.append(f"{arm.name}: payments confirmed more than once: {twice}")
        missing = sorted(set(arm.ids) - set(arm.confirmed_at))
        if missing:
            failures.append(f"{arm.name}: payments never confirmed: {missing[:10]}")
    failure = "; ".join(failures) or None
    confirm_s, confirm_p = (
        streamed.latencies(streamed.confirmed_at),
        polled.latencies(polled.confirmed_at),
    )
    notice_s, notice_p = (
        streamed.latencies(streamed.noticed_at),
        polled.latencies(polled.noticed_at),
    )
    after = [
        (streamed.noticed_at[i] - streamed.confirmed_at[i]) * 1000
        for i in streamed.ids
        if i in streamed.noticed_at and i in streamed.confirmed_at
    ]
    section = (
        f"{SECTION} ({len(streamed.ids)} transfers with the stream, "
        f"{len(polled.ids)} polling alone)"
    )
    reference = f"polling alone, {POLL_INTERVAL:g} s"
    details = {
        "stream_confirm_ms": [round(v, 1) for v in confirm_s],
        "polling_confirm_ms": [round(v, 1) for v in confirm_p],
        "stream_notice_ms": [round(v, 1) for v in notice_s],
        "polling_notice_ms": [round(v, 1) for v in notice_p],
    }
    return [
        Row(
            section,
            "PaymentConfirmed appended, p50, with the stream",
            _p(confirm_s, 0.5),
            "ms",
            f"{reference}, p50",
            _p(confirm_p, 0.5),
            goal=Goal.below(500, "ms"),
            details=details,
            failure=failure,
        ),
        Row(
            section,
            "PaymentConfirmed appended, p99, with the stream",
            _p(confirm_s, 0.99),
            "ms",
            f"{reference}, p99",
            _p(confirm_p, 0.99),
            goal=Goal.below(2000, "ms"),
            failure=failure,
        ),
        Row(
            section,
            "user's Telegram notice sent, p50, with the stream",
            _p(notice_s, 0.5),
            "ms",
            f"{reference}, p50",
            _p(notice_p, 0.5),
            goal=Goal.below(1000, "ms"),
            failure=failure,
        ),
        Row(
            section,
            "user's Telegram notice sent, p99, with the stream",
            _p(notice_s, 0.99),
            "ms",
            f"{reference}, p99",
            _p(notice_p, 0.99),
        ),
        Row(
            section,
            "  of which PaymentConfirmed -> notice, p50",
            statistics.median(after) if after else float("nan"),
            "ms",
        ),
    ]
