"""Screenshots of the live dashboard, for the docs, taken by Debian's headless Chromium.

    python -m ops.screenshot [--out docs]

writes ``docs/dashboard.png`` (a phone, 390 x 844), ``docs/dashboard-desktop.png`` (1280
wide, the whole page) and ``docs/dashboard-confirm.png`` (an action's confirmation dialog). It
creates a scratch database on ``DATABASE_URL``'s server (or the embedded PostgreSQL), fills it
with an hour of a small bot's activity (:func:`seed_showcase`), serves
:func:`ops.admin.build_admin_app` on 127.0.0.1, logs in with a throwaway token, waits until the
live stream has filled the page, and drops the database afterwards.

The browser is driven through the DevTools protocol (:class:`Chromium`), which the dashboard's
browser tests use too. ``--dump-dom`` with ``--virtual-time-budget`` cannot do it: virtual time
stands still while a request is open, and the page's event stream never closes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
import msgspec
from anyio.abc import Process

from actors.health import health_samples
from actors.names import PRODUCT_ACTORS
from actors.tasks import REWARD_DISTRIBUTION, RewardDistribution, task_types
from events import (
    NANOTONS_PER_TON,
    ActorBackoffScheduled,
    ActorCrashed,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    Event,
    HealthCheck,
    HealthChecked,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    SubscriptionActivated,
    UserRegistered,
    WalletScanned,
)
from events.errors import I3laniError
from events.payments import RefundDue
from events.streams import (
    OPS_HEALTH,
    actor_stream,
    member_stream,
    payment_refund_stream,
    payment_stream,
    user_stream,
)
from ops.admin import serve_admin_app
from store import EventStore, TaskProcessor, TaskQueue, TaskTypes, database_url, migrate
from store.admin import backdate_events, create_database, drop_database
from store.database import with_database
from store.flow import Limit, RateLimiter, Scope, flow_table
from store.tasks import RetryPolicy, TaskContext
from store.views import HealthSample, record_health_samples

__all__ = [
    "Chromium",
    "ChromiumMissing",
    "Page",
    "find_chromium",
    "png_size",
    "seed_showcase",
    "take_screenshots",
    "main",
]

logger = logging.getLogger(__name__)

PHONE: Final = (390, 844)
DESKTOP_WIDTH: Final = 1280
READY: Final = "document.body.dataset.ready === 'true'"
"""True once the page has rendered a snapshot from the live stream."""


class ChromiumMissing(I3laniError):
    """No Chromium on this machine."""

    def __init__(self) -> None:
        super().__init__("Debian chromium not installed: `make browser` installs it")


def find_chromium() -> str | None:
    """Chromium's executable: ``$CHROMIUM`` (a name or a path) if set, else ``chromium`` on
    the PATH; None when that is not an executable."""
    return shutil.which(os.environ.get("CHROMIUM") or "chromium")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header; ValueError if it is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# -- the browser -------------------------------------------------------------------------------
class _Cdp:
    """The DevTools protocol over one WebSocket: one call at a time, events ignored."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = params or {}
        if session is not None:
            message["sessionId"] = session
        async with self._lock:
            with anyio.fail_after(30):
                await self._socket.send_str(msgspec.json.encode(message).decode())
                while True:
                    frame = await self._socket.receive()
                    if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        raise I3laniError(f"Chromium closed the DevTools connection ({method})")
                    answer: dict[str, Any] = msgspec.json.decode(frame.data)
                    if answer.get("id") == message["id"]:
                        break
        if "error" in answer:
            raise I3laniError(f"Chromium refused {method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer.get("result", {})
        return result


@dataclass
class Page:
    """One tab."""

    cdp: _Cdp
    session: str

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.cdp.call(method, params, session=self.session)

    async def resize(self, width: int, height: int) -> None:
        await self._call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )

    async def goto(self, url: str) -> None:
        result = await self._call("Page.navigate", url=url)
        if result.get("errorText"):
            raise I3laniError(f"Chromium could not open the page: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page."""
        result = await self._call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise I3laniError(f"script failed in the page: {result['exceptionDetails']['text']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, within: float = 20.0) -> None:
        """Return once ``expression`` is true in the page; I3laniError after ``within`` s."""
        with anyio.move_on_after(within):
            while True:
                with contextlib.suppress(I3laniError):  # mid-navigation: no document yet
                    if await self.evaluate(expression) is True:
                        return
                await anyio.sleep(0.1)
        raise I3laniError(f"still not true after {within:g}s in the page: {expression}")

    async def html(self) -> str:
        value = await self.evaluate("document.documentElement.outerHTML")
        return str(value)

    async def screenshot(self, *, full_page: bool = False) -> bytes:
        """A PNG of the viewport, or of the whole page (the viewport grown to its height)."""
        if full_page:
            width = int(await self.evaluate("window.innerWidth"))
            height = int(await self.evaluate("document.documentElement.scrollHeight"))
            await self.resize(width, height)
        result = await self._call("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])


class Chromium:
    """Headless Chromium, driven through the DevTools protocol.

    ``async with Chromium.start() as browser: page = await browser.new_page(390, 844)``."""

    def __init__(self, cdp: _Cdp) -> None:
        self.cdp = cdp

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, executable: str | None = None) -> AsyncIterator[Chromium]:
        executable = executable or find_chromium()
        if executable is None:
            raise ChromiumMissing()
        profile = await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "i3lani-chromium-")
        try:
            log = await anyio.open_file(Path(profile) / "stderr.log", "wb")
            try:
                process = await anyio.open_process(
                    [
                        executable,
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--no-default-browser-check",
                        "--hide-scrollbars",
                        "--mute-audio",
                        "--remote-debugging-port=0",
                        f"--user-data-dir={profile}",
                        "about:blank",
                    ],
                    stdin=None,
                    stdout=log.wrapped,
                    stderr=log.wrapped,
                )
                try:
                    url = await _devtools_url(process, Path(profile))
                    async with (
                        aiohttp.ClientSession() as http,
                        http.ws_connect(url, max_msg_size=64 * 1024 * 1024) as socket,
                    ):
                        browser = cls(_Cdp(socket))
                        yield browser
                        with contextlib.suppress(I3laniError, aiohttp.ClientError):
                            await browser.cdp.call("Browser.close")
                finally:
                    await _end(process)
            finally:
                await log.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, profile, True)

    async def new_page(self, width: int, height: int) -> Page:
        target = await self.cdp.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.cdp.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self.cdp, attached["sessionId"])
        await page.resize(width, height)
        return page


async def _devtools_url(process: Process, profile: Path) -> str:
    """The browser's DevTools WebSocket, from the file Chromium writes once it listens."""
    port_file = anyio.Path(profile / "DevToolsActivePort")
    with anyio.move_on_after(30):
        while process.returncode is None:
            if await port_file.exists():
                lines = (await port_file.read_text()).split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await anyio.sleep(0.05)
    tail = (await anyio.Path(profile / "stderr.log").read_text(errors="replace"))[-600:]
    problem = tail.strip().splitlines()[-1] if tail.strip() else "no output"
    raise I3laniError(f"Chromium did not start (exit code {process.returncode}): {problem}")


async def _end(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with anyio.move_on_after(5):
                await process.wait()
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- a realistic log ---------------------------------------------------------------------------
NODE: Final = "render-worker:7"
TX_HASHES = (f"{i:02x}" * 32 for i in itertools.count(17))


@dataclass
class _Timeline:
    """Events with the time they happened, appended in that order."""

    now: datetime
    entries: list[tuple[datetime, str, Event]]
    ticks: dict[str, datetime] = field(default_factory=dict)
    """Each actor's last tick (its tick schedule, beside the log)."""
    health: list[HealthSample] = field(default_factory=list)
    """The last health round's samples (the table the dashboard reads them from)."""

    def at(self, minutes_ago: float) -> datetime:
        return self.now - timedelta(minutes=minutes_ago)

    def add(self, minutes_ago: float, stream: str, event: Event) -> None:
        self.entries.append((self.at(minutes_ago), stream, event))

    def tick(self, minutes_ago: float, actor: str) -> None:
        moment = self.at(minutes_ago)
        self.ticks[actor] = max(moment, self.ticks.get(actor, moment))


def _lifecycle(line: _Timeline) -> None:
    for name in PRODUCT_ACTORS:
        line.add(
            58.5,
            actor_stream(name),
            ActorStarted(actor=name, node=NODE, generation=1, started_at=line.at(58.5)),
        )

    def crash(name: str, minutes_ago: float, generation: int, error: tuple[str, str]) -> None:
        stream = actor_stream(name)
        line.add(
            minutes_ago,
            stream,
            ActorCrashed(
                actor=name,
                node=NODE,
                generation=generation,
                error_type=error[0],
                message=error[1],
                traceback_digest="3f2a9c1d0b7e4a55",
                uptime_seconds=600.0,
                crashed_at=line.at(minutes_ago),
            ),
        )
        later = minutes_ago - 0.02
        line.add(
            later,
            stream,
            ActorBackoffScheduled(
                actor=name,
                attempt=1,
                delay_seconds=0.5,
                until=line.at(later - 0.01),
                scheduled_at=line.at(later),
            ),
        )
        line.add(
            later - 0.01,
            stream,
            ActorRestarted(
                actor=name,
                cause="crash",
                attempt=1,
                delay_seconds=0.5,
                restarted_at=line.at(later - 0.01),
            ),
        )
        line.add(
            later - 0.02,
            stream,
            ActorStarted(
                actor=name, node=NODE, generation=generation + 1, started_at=line.at(later - 0.02)
            ),
        )

    crash("ChannelAnalytics", 41, 1, ("TelegramRetryAfter", "Flood control exceeded: retry in 30s"))
    crash("PaymentMonitor", 23, 1, ("TonApiUnavailable", "TonAPI answered 502 Bad Gateway"))
    crash("PaymentMonitor", 6.5, 2, ("TonApiUnavailable", "TonAPI timed out after 10s"))
    stream = actor_stream("RewardProcessor")
    line.add(
        15,
        stream,
        ActorStopped(
            actor="RewardProcessor",
            node=NODE,
            generation=1,
            reason="operator restart",
            stopped_at=line.at(15),
        ),
    )
    line.add(
        14.99,
        stream,
        ActorRestarted(
            actor="RewardProcessor",
            cause="operator",
            attempt=0,
            delay_seconds=0,
            restarted_at=line.at(14.99),
            requested_by="cli:amina@ops-laptop",
            reason="pick up the new reward settings",
        ),
    )
    line.add(
        14.98,
        stream,
        ActorStarted(actor="RewardProcessor", node=NODE, generation=2, started_at=line.at(14.98)),
    )
    for name, minutes_ago in (
        ("ChannelAnalytics", 40.9),
        ("Cleanup", 58.4),
        ("RewardProcessor", 1.9),
        ("HealthChecker", 3.8),
    ):
        line.tick(minutes_ago, name)


def _activity(line: _Timeline) -> None:
    """Twelve minutes of a small bot: wallet scans every 30 s, sign-ups, payments, rewards."""
    users = itertools.count(58_213_401, 7_919)
    scan_stream = "payment-scan-0_83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8"
    lt = 48_120_000_000_001
    step = 0.5
    minute = 12.0
    while minute > 0:
        lt += 1_000
        line.tick(minute, "PaymentMonitor")
        line.add(
            minute - 0.001,
            scan_stream,
            WalletScanned(
                wallet="0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8",
                last_lt=lt,
                transactions=int(minute * 3) % 4,
                scanned_at=line.at(minute),
            ),
        )
        minute -= step
    signups = (11.6, 10.2, 9.9, 8.1, 7.7, 7.3, 5.4, 4.9, 3.2, 2.8, 2.75, 1.4, 0.9, 0.3)
    referrer: int | None = None
    for when in signups:
        user = next(users)
        line.add(
            when,
            member_stream(user),
            UserRegistered(
                user_id=user,
                registered_at=line.at(when),
                referred_by=referrer,
                username=f"user{user % 10_000}",
            ),
        )
        if referrer is not None:
            reward = uuid.uuid4()
            amount = NANOTONS_PER_TON // 10
            line.add(
                when - 0.01,
                user_stream(referrer),
                RewardEarned(
                    reward_id=reward,
                    user_id=referrer,
                    amount_nanotons=amount,
                    reason="referral",
                    source=member_stream(user),
                    earned_at=line.at(when - 0.01),
                ),
            )
            line.add(
                when - 0.05,
                user_stream(referrer),
                RewardCredited(
                    reward_id=reward,
                    user_id=referrer,
                    amount_nanotons=amount,
                    balance_after_nanotons=amount * 3,
                    credited_at=line.at(when - 0.05),
                ),
            )
        referrer = user if referrer is None else None


def _payments(line: _Timeline) -> None:
    ton = NANOTONS_PER_TON
    plans = {"week": ton, "month": 3 * ton, "channel-boost": 5_440_000_000}
    #          id   user        plan             created  outcome       at    paid
    story: list[tuple[int, int, str, float, str, float, int]] = [
        (1041, 58_120_771, "month", 55.0, "confirmed", 53.1, 0),
        (1042, 58_131_002, "week", 47.0, "expired", 4.0, 0),
        (1043, 58_140_513, "channel-boost", 33.0, "confirmed", 31.8, 0),
        (1044, 58_141_208, "week", 21.0, "underpaid", 19.5, 500_000_000),
        (1045, 58_152_390, "month", 16.0, "confirmed", 15.2, 0),
        (1046, 58_160_057, "week", 11.0, "confirmed", 10.4, 0),
        (1047, 58_163_901, "month", 9.0, "confirmed", 8.3, 250_000_000),
        (1048, 58_170_444, "channel-boost", 6.0, "confirmed", 5.1, 0),
        (1049, 58_171_016, "week", 4.5, "confirmed", 3.7, 0),
        (1050, 58_177_730, "month", 2.2, "pending", 0, 0),
        (1051, 58_180_112, "week", 1.1, "pending", 0, 0),
    ]
    wallet = "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8"
    for payment_id, user, plan, created, outcome, at, extra in story:
        stream = payment_stream(payment_id)
        amount = plans[plan]
        line.add(
            created,
            stream,
            PaymentCreated(
                payment_id=payment_id,
                user_id=user,
                plan=plan,
                amount_nanotons=amount,
                wallet=wallet,
                memo=f"i3lani_{payment_id}",
                created_at=line.at(created),
                expires_at=line.at(created - 60),
            ),
        )
        payer = f"0:{payment_id:064x}"
        tx_hash = next(TX_HASHES) if outcome in ("confirmed", "underpaid") else ""
        if extra:  # a surplus, or an underpayment: owed back
            line.add(
                at - 0.002,
                payment_refund_stream(tx_hash),
                RefundDue(
                    refund_id=tx_hash,
                    wallet=wallet,
                    to=payer,
                    amount_nanotons=extra,
                    category="overpaid" if outcome == "confirmed" else "underpaid",
                    payment_id=payment_id,
                    due_at=line.at(at),
                ),
            )
        if outcome == "confirmed":
            line.add(
                at,
                stream,
                PaymentConfirmed(
                    payment_id=payment_id,
                    tx_hash=tx_hash,
                    lt=48_120_000_000_000 + payment_id,
                    amount_nanotons=amount + extra,
                    payer=payer,
                    confirmed_at=line.at(at),
                    overpaid_nanotons=extra,
                ),
            )
            days = 30 if plan == "month" else 7
            line.add(
                at - 0.001,
                stream,
                SubscriptionActivated(
                    payment_id=payment_id,
                    user_id=user,
                    plan=plan,
                    starts_at=line.at(at),
                    ends_at=line.at(at) + timedelta(days=days),
                ),
            )
        elif outcome == "underpaid":
            line.add(
                at,
                stream,
                PaymentUnderpaid(
                    payment_id=payment_id,
                    tx_hash=tx_hash,
                    lt=48_120_000_000_000 + payment_id,
                    amount_nanotons=extra,
                    expected_nanotons=amount,
                    payer=payer,
                    detected_at=line.at(at),
                ),
            )
        elif outcome == "expired":
            line.add(at, stream, PaymentExpired(payment_id=payment_id, expired_at=line.at(at)))


def _health(line: _Timeline) -> None:
    checks = [
        HealthCheck(name="database", ok=True, latency_ms=1.9),
        HealthCheck(name="tonapi", ok=True, latency_ms=48.3),
        HealthCheck(name="telegram", ok=True, latency_ms=95.1),
        *(
            HealthCheck(name=f"actor:{name}", ok=True, detail=detail)
            for name, detail in (
                ("ChannelAnalytics", "running, last tick 37m ago"),
                ("Cleanup", "running, last tick 55m ago"),
                ("PaymentMonitor", "running, last tick 12s ago"),
                ("RewardProcessor", "running, last tick 2m ago"),
            )
        ),
        HealthCheck(
            name="tasks", ok=False, latency_ms=0.8, detail="1 dead letter(s) wait for an operator"
        ),
        HealthCheck(name="lag:PaymentMonitor", ok=True, detail="0 event(s) behind"),
        HealthCheck(name="lag:RewardProcessor", ok=True, detail="2 event(s) behind"),
    ]
    line.add(3.8, OPS_HEALTH, HealthChecked(healthy=False, checks=checks, checked_at=line.at(3.8)))
    line.health = health_samples(checks, line.at(3.8))


async def _tasks(store: EventStore) -> None:
    """Three reward credits waiting, one dead letter (a handler that gave up)."""
    types = TaskTypes()
    types.register(
        REWARD_DISTRIBUTION, RewardDistribution, retry=RetryPolicy(max_attempts=1), timeout=60
    )

    async def refuse(payload: RewardDistribution, context: TaskContext) -> None:
        raise I3laniError(f"user {payload.user_id} has no TON wallet on file")

    queue = TaskQueue(store, types)
    doomed = await queue.add_task(
        REWARD_DISTRIBUTION,
        RewardDistribution(reward_id=uuid.uuid4(), user_id=58_131_002, amount_nanotons=10**8),
    )
    processor = TaskProcessor(queue, node=NODE, poll_interval=0.05)
    processor.register_handler(REWARD_DISTRIBUTION, refuse)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        for _ in range(400):  # 20 s at most
            info = await queue.get(doomed)
            if info is not None and info.status == "dead":
                break
            await anyio.sleep(0.05)
        processor.stop()
    real = TaskQueue(store, task_types())
    for user, delay in ((58_160_057, 40), (58_171_016, 95), (58_177_730, 230)):
        await real.add_task(
            REWARD_DISTRIBUTION,
            RewardDistribution(reward_id=uuid.uuid4(), user_id=user, amount_nanotons=10**8),
            delay_seconds=delay,
        )


async def _flow(store: EventStore) -> None:
    """The shared rate limits as a busy minute leaves them: the bot's overall scope and
    TonAPI's granted all along, a group's scope part used and paused by a 429, a chat's, and
    the admin alerts kept to two at once on every node (about two seconds: the grants wait
    their turn as they would live)."""
    limiter = RateLimiter(flow_table(store))
    telegram = Scope("telegram", Limit(30, 1.0))
    group = Scope("telegram-group:-1001987654321", Limit(20, 60.0))
    tonapi = Scope("tonapi", Limit(10, 1.0))
    for n in range(40):
        await limiter.acquire([telegram, group] if n in (0, 13, 26, 39) else [telegram])
        if n % 4 == 0:
            await limiter.acquire([tonapi])
    await limiter.acquire([telegram, Scope("telegram-chat:58131002", Limit(1, 1.0))])
    await limiter.pause([group], 45.0)
    await TaskQueue(store, task_types()).table.set_concurrency({"admin_alert": 2}, node=NODE)


async def seed_showcase(store: EventStore, dsn: str, now: datetime | None = None) -> None:
    """Fill an empty scratch database with an hour of a small bot's life: the five actors (two
    crashes of PaymentMonitor, one of ChannelAnalytics, an operator restart), wallet scans,
    sign-ups and referral rewards, eleven payments in every state, a failing health check, a
    dead letter and queued tasks, and the shared rate limits in use (one scope paused).

    Every event goes through the store; then, in this scratch database only, each one's
    ``recorded_at`` is set to the moment it tells of (the append-only trigger is switched off
    for that one statement), so the event rate and the ages read as they would have live."""
    line = _Timeline(now or datetime.now(UTC), [])
    _lifecycle(line)
    _activity(line)
    _payments(line)
    _health(line)
    line.entries.sort(key=lambda entry: entry[0])
    positions: list[int] = []
    moments: list[datetime] = []
    for moment, stream, event in line.entries:
        result = await store.append(stream, [event])
        positions.append(result.last_position)
        moments.append(moment)
    for actor, moment in line.ticks.items():
        await store.save_tick(actor, moment, moment)
    await record_health_samples(store, line.health)
    await _tasks(store)
    await _flow(store)
    await backdate_events(dsn, positions, moments)


# -- the screenshots ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str) -> AsyncIterator[str]:
    """A new, migrated database on the server of ``server_dsn``, dropped on exit."""
    name = f"i3lani_screenshot_{uuid.uuid4().hex[:10]}"
    server = with_database(server_dsn, "postgres")
    await create_database(server, name)
    try:
        dsn = with_database(server_dsn, name)
        await migrate(dsn)
        yield dsn
    finally:
        with anyio.CancelScope(shield=True):
            await drop_database(server, name)


async def take_screenshots(server_dsn: str, out: Path, executable: str | None = None) -> list[Path]:
    """Seed a scratch database, serve the dashboard, write the three PNGs into ``out``."""
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    written: list[Path] = []
    async with (
        scratch_database(server_dsn) as dsn,
        EventStore.open(dsn, node="screenshot") as store,
    ):
        await seed_showcase(store, dsn)
        async with (
            serve_admin_app(store, token=token) as base,
            Chromium.start(executable) as browser,
        ):
            for name, (width, height), full in (
                ("dashboard.png", PHONE, False),
                ("dashboard-desktop.png", (DESKTOP_WIDTH, 900), True),
            ):
                page = await browser.new_page(width, height)
                await page.goto(f"{base}/dashboard?token={token}")
                await page.wait_for(READY)
                png = await page.screenshot(full_page=full)
                target = out / name
                await anyio.Path(target).write_bytes(png)
                written.append(target)
            written.append(await _confirmation(browser, base, token, out / CONFIRM_PNG))
    return written


CONFIRM_PNG: Final = "dashboard-confirm.png"
_RESTART: Final = '[data-actor="PaymentMonitor"] button[data-action="restart"]'


async def _confirmation(browser: Chromium, base: str, token: str, target: Path) -> Path:
    """The dialog an operator confirms an action in (a restart, its reason typed), at desktop
    width; nothing is confirmed."""
    page = await browser.new_page(DESKTOP_WIDTH, 900)
    await page.goto(f"{base}/dashboard?token={token}")
    await page.wait_for(READY)
    await page.evaluate(f"document.querySelector({_RESTART!r}).click()")
    await page.wait_for("document.getElementById('confirm').open")
    await page.evaluate(
        "document.querySelector('#confirm input[name=reason]').value = "
        "'TonAPI timeouts since the last deploy'"
    )
    await anyio.Path(target).write_bytes(await page.screenshot())
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.screenshot",
        description="Screenshots of the dashboard (phone, desktop, a confirmation) for the docs.",
    )
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder (default docs)")
    parser.add_argument("--chromium", default=None, help="browser executable (default chromium)")
    args = parser.parse_args(argv)

    async def run() -> list[Path]:
        async with database_url() as server_dsn:
            return await take_screenshots(server_dsn, args.out, args.chromium)

    try:
        written = anyio.run(run, backend="asyncio")
    except I3laniError as exc:
        print(f"ops.screenshot: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
