"""Fault scenario 4: Telegram misbehaving: 429 with ``retry_after``, 403, timeouts.

A worker (``i3lani run``, the five product actors) prices channels that users added through
the gateway (``/addchannel``: ``ChannelAdded`` and a reward) and alerts two admins, while the
Bot API stand-in misbehaves:

* one channel throttled: 429 with ``retry_after`` twice in a row (ChannelAnalytics waits it out,
  asks once more, then records the 429 and measures at its next tick);
* one channel forbidden: 403 every time (the bot was removed from it);
* one ``getChatMemberCount`` and one ``getMe`` hang past the client's timeout;
* admin 222 blocked the bot (403 on every message); admin 111 is throttled once (429 with
  ``retry_after``) when the first alert goes out.

Verdicts: the waits were honoured (measured on the stand-in's call log: the retried request
came ``retry_after`` seconds later); the forbidden channel has ``ChannelStatsFailed`` (403) and
no price, the throttled one a ``ChannelStatsFailed`` (429) then its price, the timed-out one a
``ChannelStatsFailed`` (unavailable) then a fresh measurement, the others their prices at once;
the health check recorded Telegram failing, then recovered, and admin 111 received both alerts
though admin 222 never did; no actor crashed; ``i3lani audit`` is clean.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TypeVar

import pytest

from actors.catalog import PRODUCT_ACTORS
from actors.channel_analytics import channel_stream
from actors.health import HEALTH_STREAM
from events import (
    ActorCrashed,
    ActorParked,
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsFailed,
    ChannelStatsUpdated,
    Event,
    HealthChecked,
)
from events.streams import actor_stream
from ops.standins import BotApiCall
from store import EventStore, RecordedEvent
from tests.e2e.processes import running_workers, wait_for
from tests.faults.harness import (
    FAULTS,
    PRODUCT,
    Seeder,
    assert_audit_clean,
    assert_exactly_once,
    fault_env,
    fault_seed,
    standins,
    stop,
    wait_until_done,
)
from tests.faults.stamps import Stamped, stamped

pytestmark = [*FAULTS]

E = TypeVar("E", bound=Event)

ADMINS = (111, 222)
BLOCKED = 222
"""The admin who blocked the bot: every message to them is refused with 403."""
THROTTLED_ADMIN = 111
CHANNEL_RETRY_AFTER = 2
"""Seconds the throttled channel's 429 asks to wait."""
ADMIN_RETRY_AFTER = 1
"""Seconds the throttled admin's 429 asks to wait."""
CLIENT_TIMEOUT = 10.0
"""TelegramClient's request timeout (its default, as the worker builds it)."""
MEMBERS = (40_000, 20_000, 5_000, 1_000, 12_345)
"""Member counts of the channels: throttled, forbidden, then the well-behaved ones."""
NANOTONS = 1_000_000_000


def expected_price(members: int) -> int:
    """The README's pricing: 45 % active, 1 TON per 1,000 active, at least 1 TON, rounded up
    to 0.01 TON; in nanotons."""
    active = members * 45 // 100
    per_hundredth = -(-active * NANOTONS // 1000 // (NANOTONS // 100))
    return max(NANOTONS, per_hundredth * (NANOTONS // 100))


def _to(call: BotApiCall, chat: int | str) -> bool:
    return str(call.params.get("chat_id", "")).lower() == str(chat).lower()


def _times(calls: Stamped[BotApiCall], method: str, chat: int | str) -> list[float]:
    return [at for at, c in calls.since(0) if c.method == method and _to(c, chat)]


async def _channel(store: EventStore, channel: str) -> list[RecordedEvent]:
    return await store.read_stream(channel_stream(channel))


def _of(history: Sequence[RecordedEvent], kind: type[E]) -> list[E]:
    """The events of type ``kind`` in ``history``, in order."""
    return [r.event for r in history if isinstance(r.event, kind)]


async def _verdicts(store: EventStore) -> list[tuple[int, HealthChecked]]:
    return [
        (r.position, r.event)
        for r in await store.read_stream(HEALTH_STREAM)
        if isinstance(r.event, HealthChecked)
    ]


def _telegram_failed(verdict: HealthChecked) -> bool:
    return any(c.name == "telegram" and not c.ok for c in verdict.checks)


@pytest.mark.timeout(180)
async def test_telegram_misbehaving(dsn: str, store: EventStore, clean_env: dict[str, str]) -> None:
    rng = random.Random(fault_seed())
    async with standins() as (tonapi, bot_api):
        env = fault_env(
            dsn,
            clean_env,
            tonapi,
            bot_api,
            ADMIN_IDS=",".join(map(str, ADMINS)),
            I3LANI_ANALYTICS_INTERVAL="1",
        )
        calls: Stamped[BotApiCall] = stamped(bot_api, "calls")
        seeder = Seeder(store, tonapi, bot_api, rng=rng, concurrency=5)
        workload = seeder.workload
        await seeder.rewards(5)
        await seeder.channels(len(MEMBERS))

        async def channels_added() -> list[str] | None:
            # The log is read in commit order: what other transactions of the server still
            # hold back shows a moment later.
            found = [
                r.event.channel
                async for r in store.read_all(category="channel")
                if isinstance(r.event, ChannelAdded)
            ]
            return found if len(found) == len(MEMBERS) else None

        added = await wait_for(channels_added, 30, "the channels added, in the log")
        members = dict(zip(added, MEMBERS, strict=True))
        for channel, count in members.items():
            bot_api.set_member_count(channel, count)
        throttled, forbidden, *fine = added
        bot_api.fail_chat(throttled, 429, retry_after=CHANNEL_RETRY_AFTER, times=2)
        bot_api.fail_chat(forbidden, 403)
        bot_api.fail_chat(BLOCKED, 403)
        bot_api.fail_chat(THROTTLED_ADMIN, 429, retry_after=ADMIN_RETRY_AFTER, times=1)

        async with running_workers(env) as workers:
            worker = await workers.start("node-a", PRODUCT)
            started = time.monotonic()

            async def priced() -> bool:
                for channel in [throttled, *fine]:
                    prices = _of(await _channel(store, channel), ChannelPriceChanged)
                    if not prices:
                        return False
                failures = _of(await _channel(store, forbidden), ChannelStatsFailed)
                return bool(failures)

            await wait_for(priced, 60, "every channel priced but the forbidden one")
            priced_after = time.monotonic() - started
            await wait_until_done(store, workload, seconds=60)

            async def healthy() -> bool:
                found = await _verdicts(store)
                return bool(found) and found[-1][1].healthy

            await wait_for(healthy, 60, "a healthy verdict before the timeouts")

            # Timeouts: the next getMe (the health check) and the next getChatMemberCount.
            measured = {
                channel: len(_of(await _channel(store, channel), ChannelStatsUpdated))
                for channel in added
            }
            hang_from = calls.mark()
            hung = time.monotonic()
            bot_api.fail("getMe", "timeout", times=1, hang=CLIENT_TIMEOUT * 3)
            bot_api.fail("getChatMemberCount", "timeout", times=1, hang=CLIENT_TIMEOUT * 3)

            async def telegram_failing() -> tuple[int, HealthChecked] | None:
                failing = [(p, v) for p, v in await _verdicts(store) if _telegram_failed(v)]
                return failing[0] if failing else None

            failed_at, failing_verdict = await wait_for(
                telegram_failing, 60, "health: Telegram failing"
            )
            failing_seen = time.monotonic() - hung

            async def recovered() -> HealthChecked | None:
                later = [v for p, v in await _verdicts(store) if p > failed_at and v.healthy]
                return later[0] if later else None

            recovery = await wait_for(recovered, 60, "health: recovered")

            async def timed_out() -> tuple[str, ChannelStatsFailed] | None:
                for channel in added:
                    for failure in _of(await _channel(store, channel), ChannelStatsFailed):
                        if failure.kind == "unavailable":
                            return channel, failure
                return None

            late, timeout_failure = await wait_for(
                timed_out, 60, "a measurement given up after the client's timeout"
            )

            async def measured_again() -> bool:
                if late == forbidden:
                    failures = _of(await _channel(store, late), ChannelStatsFailed)
                    return failures[-1].kind == "forbidden"
                updates = _of(await _channel(store, late), ChannelStatsUpdated)
                return len(updates) > measured[late]

            await wait_for(measured_again, 60, f"{late} measured again after its timeout")

            async def alerted() -> bool:
                texts = [m.text for m in bot_api.sent if m.chat_id == THROTTLED_ADMIN]
                return any("FAILING" in t and "telegram" in t for t in texts) and any(
                    "RECOVERED" in t for t in texts
                )

            await wait_for(alerted, 60, f"admin {THROTTLED_ADMIN} told: FAILING, RECOVERED")
            effects = await wait_until_done(store, workload, seconds=60)
            lifecycle = {
                name: [r.event for r in await store.read_stream(actor_stream(name))]
                for name in PRODUCT_ACTORS
            }
            histories = {channel: await _channel(store, channel) for channel in added}
            assert worker.alive, worker.output()
            took = await stop(worker)

        # 429 on a channel: waited out (the retry came retry_after later), recorded, then the
        # channel measured and priced at a later tick.
        asked = _times(calls, "getChatMemberCount", throttled)
        assert len(asked) >= 3, asked
        channel_wait = asked[1] - asked[0]
        assert channel_wait >= CHANNEL_RETRY_AFTER * 0.95, asked
        history = histories[throttled]
        failures = _of(history, ChannelStatsFailed)
        assert failures[0].kind == "rate_limited"
        assert failures[0].error_code == 429
        assert failures[0].retry_after == CHANNEL_RETRY_AFTER
        first_failure = next(r.position for r in history if isinstance(r.event, ChannelStatsFailed))
        first_update = next(r.position for r in history if isinstance(r.event, ChannelStatsUpdated))
        assert first_failure < first_update
        # 403: recorded at every tick, never measured nor priced.
        history = histories[forbidden]
        forbidden_failures = _of(history, ChannelStatsFailed)
        assert {(f.kind, f.error_code) for f in forbidden_failures} <= {
            ("forbidden", 403),
            ("unavailable", None),
        }
        assert any(f.kind == "forbidden" for f in forbidden_failures)
        assert not _of(history, ChannelStatsUpdated)
        assert not _of(history, ChannelPriceChanged)
        # Every other channel: its count, its price.
        for channel in [throttled, *fine]:
            updates = _of(histories[channel], ChannelStatsUpdated)
            prices = _of(histories[channel], ChannelPriceChanged)
            assert {u.subscribers for u in updates} == {members[channel]}
            assert [p.new_price_nanotons for p in prices] == [expected_price(members[channel])]
        # Timeouts: one measurement given up after the client's timeout, for one tick only.
        unavailable = [
            (channel, f)
            for channel, h in histories.items()
            for f in _of(h, ChannelStatsFailed)
            if f.kind == "unavailable"
        ]
        assert [channel for channel, _ in unavailable] == [late]
        assert "timed out" in timeout_failure.description
        hang_calls = [at for at, c in calls.since(hang_from) if c.method == "getChatMemberCount"]
        assert len(hang_calls) >= 2
        # Health: Telegram failing while getMe hung, then recovered; the admin who could be
        # reached got both alerts (after waiting out its 429), the one who blocked the bot none.
        assert not failing_verdict.healthy
        assert recovery.healthy
        assert recovery.checked_at > failing_verdict.checked_at
        sends = _times(calls, "sendMessage", THROTTLED_ADMIN)
        admin_wait = sends[1] - sends[0]
        assert admin_wait >= ADMIN_RETRY_AFTER * 0.95, sends
        to_throttled = [m.text for m in bot_api.sent if m.chat_id == THROTTLED_ADMIN]
        assert sum("FAILING" in t for t in to_throttled) == 1, to_throttled
        assert sum("RECOVERED" in t for t in to_throttled) == 1
        assert not [m for m in bot_api.sent if m.chat_id == BLOCKED]
        assert len(_times(calls, "sendMessage", BLOCKED)) >= 2  # tried, refused, not retried
        # No actor crashed; rewards (referrals, channels) credited exactly once.
        crashes = {n: sum(isinstance(e, ActorCrashed) for e in h) for n, h in lifecycle.items()}
        assert not any(crashes.values()), crashes
        assert not [n for n, h in lifecycle.items() if any(isinstance(e, ActorParked) for e in h)]
        assert_exactly_once(workload, effects)
        # Counted again once the worker is gone (polled: the log is read in commit order).
        assert_exactly_once(workload, await wait_until_done(store, workload, seconds=60))
        report = await assert_audit_clean(env, workload)
        assert report.summary.channels_added == len(MEMBERS)
        assert report.summary.channels_priced == len(MEMBERS) - 1

        recovery_gap = (recovery.checked_at - failing_verdict.checked_at).total_seconds()
        print(
            f"telegram faults: channels priced {priced_after:.1f}s after start; 429 on a "
            f"channel: asked again after {channel_wait:.2f}s (retry_after "
            f"{CHANNEL_RETRY_AFTER}s), failure recorded, priced at a later tick; 403 channel: "
            f"{sum(f.kind == 'forbidden' for f in forbidden_failures)} ChannelStatsFailed, "
            "no price; "
            f"getChatMemberCount timeout: {late} recorded unavailable "
            f"({timeout_failure.description!r})\n"
            f"  health: Telegram failing seen {failing_seen:.1f}s after getMe hung, recovered "
            f"at the next check ({recovery_gap:.1f}s later); admin {THROTTLED_ADMIN}: 429 waited "
            f"{admin_wait:.2f}s (retry_after {ADMIN_RETRY_AFTER}s), both alerts delivered; "
            f"admin {BLOCKED}: {len(_times(calls, 'sendMessage', BLOCKED))} attempts refused "
            f"(403); crashes {crashes}; SIGTERM exit in {took:.1f}s"
        )
