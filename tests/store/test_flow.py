"""Flow control: the shared rate limits (``store.flow``).

Contract tests (taking ``log``) run the table on PostgreSQL (``i3lani.rate_limits``) and in
memory (:class:`store.flow.memory.MemoryFlowTable`); the limiter's tests run on the memory log
(its fallback is made by the log's fault hook) and on PostgreSQL where it is the SQL that
matters (several sessions at once)."""

from __future__ import annotations

import itertools
import logging
import random
from datetime import UTC, datetime

import anyio
import pytest

from bench.broadcast import most_in_any_window
from events import environment
from events.errors import StoreUnavailable
from store import EventStore
from store.flow import (
    DEFAULT_MARGIN,
    FlowTable,
    Grant,
    Limit,
    RateLimiter,
    Scope,
    next_schedule,
    parse_limit,
    schedule_wait,
    spacing_interval,
    window_wait,
)
from store.flow.memory import MemoryFlowTable
from store.flow.postgres import PostgresFlowTable
from store.memory import MemoryLog
from store.port import EventLog

CALLERS = 20
"""Callers per node in the jitter model below: more than the limit, as when notices queue."""

MINUTE = Limit(3, 60.0)
"""Three grants a minute: nothing frees up during a test."""


def table_of(log: EventLog) -> FlowTable:
    if isinstance(log, MemoryLog):
        return MemoryFlowTable.of(log)
    assert isinstance(log, EventStore)
    return PostgresFlowTable(log)


@pytest.fixture
def table(log: EventLog) -> FlowTable:
    return table_of(log)


# -- the rule ---------------------------------------------------------------------------------


def test_window_wait_counts_the_latest_grants() -> None:
    limit = Limit(2, 1.0)
    assert window_wait([], limit, None, 0.0, 10.0) == 0
    assert window_wait([9.5], limit, None, 0.0, 10.0) == 0
    # Two in the window: the older of them must be 1 s (+ margin) old.
    assert window_wait([9.5, 9.8], limit, None, 0.0, 10.0) == pytest.approx(0.5)
    assert window_wait([9.5, 9.8], limit, None, 0.1, 10.0) == pytest.approx(0.6)
    assert window_wait([8.0, 9.5, 9.8], limit, None, 0.0, 10.0) == pytest.approx(0.5)
    # A pause wins when it is longer.
    assert window_wait([], limit, 13.0, 0.0, 10.0) == pytest.approx(3.0)
    assert window_wait([9.5, 9.8], limit, 10.2, 0.0, 10.0) == pytest.approx(0.5)


def test_the_schedule_spaces_grants_and_saves_up_no_burst() -> None:
    limit = Limit(30, 1.0)
    interval = spacing_interval(limit, 0.02)
    assert interval == pytest.approx(1.02 / 30)
    # Never granted: at once. Then one interval on, of which half may be taken early.
    assert schedule_wait(None, limit, 0.02, 10.0) == 0
    after = next_schedule(None, limit, 0.02, 10.0)
    assert after == pytest.approx(10.0 + interval)
    assert schedule_wait(after, limit, 0.02, 10.0) == pytest.approx(interval / 2)
    # Asked for half an interval early, granted a quarter late for that (a sleep, a round
    # trip): the schedule is kept, no rate lost.
    late = after - interval / 4
    assert next_schedule(after, limit, 0.02, late) == pytest.approx(after + interval)
    # An idle scope: the schedule starts afresh from the grant, one interval on, no burst.
    assert next_schedule(after, limit, 0.02, 100.0) == pytest.approx(100.0 + interval)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("30/s", Limit(30, 1.0)),
        ("1/s", Limit(1, 1.0)),
        ("20/min", Limit(20, 60.0)),
        ("5/h", Limit(5, 3600.0)),
        ("1/4s", Limit(1, 4.0)),
        ("3/0.5s", Limit(3, 0.5)),
        (" 10/sec ", Limit(10, 1.0)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_limits_read_as_written(text: str, limit: Limit | None) -> None:
    assert parse_limit(text) == limit
    if limit is not None:
        assert parse_limit(limit.text()) == limit


@pytest.mark.parametrize("text", ["", "30", "30/", "/s", "30/day", "0/s", "-1/s", "1/0s", "x/s"])
def test_malformed_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"30/s|count|window"):
        parse_limit(text)


def test_a_share_of_a_limit_never_exceeds_it() -> None:
    assert Limit(30, 1.0).share(0.25) == Limit(7, 1.0)
    assert Limit(20, 60.0).share(0.25) == Limit(5, 60.0)
    assert Limit(1, 1.0).share(0.25) == Limit(1, 4.0)
    assert Limit(3, 1.0).share(0.25) == Limit(3, 4.0)


# -- the table (contract) -------------------------------------------------------------------


async def test_grants_up_to_the_limit_then_says_how_long_to_wait(table: FlowTable) -> None:
    scope = Scope("telegram", MINUTE)
    for _ in range(3):
        assert (await table.take([scope], margin=0.0)).granted
    refused = await table.take([scope], margin=0.5)
    assert not refused.granted
    assert refused.refused_by == "telegram"
    assert 59.0 < refused.wait <= 60.5


async def test_a_grant_takes_from_every_scope_or_from_none(table: FlowTable) -> None:
    overall = Scope("telegram", Limit(10, 60.0))
    chat = Scope("telegram-chat:7", Limit(1, 60.0))
    other = Scope("telegram-chat:8", Limit(1, 60.0))
    assert (await table.take([overall, chat], margin=0.0)).granted
    refused = await table.take([overall, chat], margin=0.0)
    assert (refused.granted, refused.refused_by) == (False, "telegram-chat:7")
    # The refused grant took nothing from the overall scope: nine are left for others.
    for _ in range(9):
        assert (await table.take([overall], margin=0.0)).granted
    assert not (await table.take([overall, other], margin=0.0)).granted
    usage = {s.scope: s for s in (await table.usage()).scopes}
    assert usage["telegram"].used == 10
    assert usage["telegram"].granted == 10
    assert usage["telegram-chat:7"].used == 1
    assert "telegram-chat:8" not in usage  # made, never granted: not in use


async def test_a_window_frees_up_as_it_slides(table: FlowTable) -> None:
    scope = Scope("tonapi", Limit(2, 0.3))
    assert (await table.take([scope], margin=0.0)).granted
    assert (await table.take([scope], margin=0.0)).granted
    refused = await table.take([scope], margin=0.0)
    assert not refused.granted
    assert 0 < refused.wait <= 0.3
    await anyio.sleep(refused.wait + 0.01)
    assert (await table.take([scope], margin=0.0)).granted


async def test_a_pause_refuses_every_grant_until_it_ends(table: FlowTable) -> None:
    scope = Scope("telegram", Limit(30, 1.0))
    assert (await table.take([scope], margin=0.0)).granted
    assert await table.pause([scope], 30.0) == pytest.approx(30.0, abs=0.5)
    refused = await table.take([scope], margin=0.0)
    assert (refused.granted, refused.refused_by) == (False, "telegram")
    assert 29.0 < refused.wait <= 30.0
    # A shorter pause later does not cut it short.
    assert await table.pause([scope], 1.0) == pytest.approx(30.0, abs=0.5)
    # A pause of a scope never met makes its row.
    new = Scope("telegram-group:-100", Limit(20, 60.0))
    assert await table.pause([new], 2.0) == pytest.approx(2.0, abs=0.5)
    usage = {s.scope: s for s in (await table.usage()).scopes}
    assert usage["telegram"].pauses == 2
    assert usage["telegram-group:-100"].paused_for == pytest.approx(2.0, abs=0.5)
    assert usage["telegram-group:-100"].limit == Limit(20, 60.0)


async def test_the_limit_is_the_last_callers(table: FlowTable) -> None:
    assert (await table.take([Scope("tonapi", Limit(5, 60.0))], margin=0.0)).granted
    assert (await table.take([Scope("tonapi", Limit(5, 60.0))], margin=0.0)).granted
    # Configured lower now: two are in the window already, so the next waits.
    assert not (await table.take([Scope("tonapi", Limit(2, 60.0))], margin=0.0)).granted
    assert (await table.take([Scope("tonapi", Limit(3, 60.0))], margin=0.0)).granted
    (use,) = (await table.usage()).scopes
    assert (use.limit, use.used) == (Limit(3, 60.0), 3)


async def test_usage_shows_the_shared_scopes_and_the_chats_in_use(table: FlowTable) -> None:
    await table.take([Scope("telegram-chat:1", Limit(1, 0.05))], margin=0.0)
    for chat in (2, 3):
        await table.take([Scope(f"telegram-chat:{chat}", MINUTE)], margin=0.0)
    await table.take([Scope("tonapi", Limit(1, 0.05))], margin=0.0)
    await anyio.sleep(0.1)
    usage = await table.usage()
    assert [s.scope for s in usage.scopes] == ["tonapi", "telegram-chat:2", "telegram-chat:3"]
    assert usage.scopes[0].used == 0  # a shared scope is shown even when idle
    assert usage.chat_scopes == 3
    assert [s.scope for s in (await table.usage(limit=2)).scopes] == [
        "tonapi",
        "telegram-chat:2",
    ]


async def test_prune_forgets_idle_chats_only(table: FlowTable) -> None:
    await table.take([Scope("telegram", MINUTE), Scope("telegram-chat:1", MINUTE)], margin=0.0)
    await table.pause([Scope("telegram-chat:2", MINUTE)], 60.0)
    await anyio.sleep(0.2)
    assert await table.prune(0.1) == 1  # chat 1; chat 2 is still paused
    usage = await table.usage()
    assert usage.chat_scopes == 1
    assert {s.scope for s in usage.scopes} == {"telegram", "telegram-chat:2"}
    assert await table.prune(3600) == 0


async def test_takers_at_once_never_get_more_than_the_limit(table: FlowTable) -> None:
    scope = Scope("telegram", Limit(5, 60.0))
    granted: list[Grant] = []

    async def taker() -> None:
        for _ in range(4):
            granted.append(await table.take([scope], margin=0.0))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(taker)
    assert sum(g.granted for g in granted) == 5
    assert len(granted) == 24


async def test_smoothed_grants_come_one_by_one(table: FlowTable) -> None:
    """A smoothed grant keeps to its scope's schedule as well as to the window: an idle scope
    grants at once, the next grant waits about half an interval, and a refusal by the schedule
    takes from no scope (all or none, as for the window)."""
    scope = Scope("telegram", Limit(3, 60.0))  # an interval of 20 s: nothing frees up
    chat = Scope("telegram-chat:7", Limit(20, 60.0))  # an interval of 3 s
    assert (await table.take([scope, chat], margin=0.0, smooth=True)).granted
    refused = await table.take([scope, chat], margin=0.0, smooth=True)
    assert (refused.granted, refused.refused_by) == (False, "telegram")
    assert 9.0 < refused.wait <= 10.0  # half of 20 s
    other = Scope("telegram-chat:8", Limit(20, 60.0))
    refused = await table.take([scope, other], margin=0.0, smooth=True)
    assert (refused.granted, refused.refused_by) == (False, "telegram")
    # A grant not asking for the schedule is judged by the window alone, as before 0009: it
    # takes the two left in this window at once, and moves the schedule on.
    assert (await table.take([scope], margin=0.0)).granted
    assert (await table.take([scope], margin=0.0)).granted
    refused = await table.take([scope], margin=0.0, smooth=True)
    assert (refused.granted, refused.refused_by) == (False, "telegram")
    assert refused.wait > 50.0  # the window's (about 60 s), longer than the schedule's
    usage = {s.scope: s for s in (await table.usage()).scopes}
    assert (usage["telegram"].used, usage["telegram"].granted) == (3, 3)
    assert usage["telegram-chat:7"].granted == 1
    assert "telegram-chat:8" not in usage  # refused: nothing taken


async def test_bad_scope_lists_are_refused(table: FlowTable) -> None:
    scope = Scope("tonapi", MINUTE)
    with pytest.raises(ValueError, match="each scope once"):
        await table.take([scope, scope], margin=0.0)
    with pytest.raises(ValueError, match="1 to 8 scopes"):
        await table.take([], margin=0.0)


async def test_a_grants_asynchronous_commit_stays_in_its_transaction(store: EventStore) -> None:
    """rate_take commits a grant without waiting for its WAL flush (migration 0009): for its
    own transaction only, never for the pooled session that runs other statements next."""
    async with store._pool.acquire() as conn:
        await conn.execute("SET synchronous_commit TO on")  # the test server's default is off
        row = await conn.fetchrow(
            "SELECT * FROM i3lani.rate_take($1::text[], $2::integer[], $3::float8[], $4, $5)",
            ["telegram"],
            [30],
            [1.0],
            0.02,
            True,
        )
        assert row is not None
        assert row["granted"]
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.execute("RESET synchronous_commit")
        # A node of the previous version calls it with four arguments: the window alone.
        row = await conn.fetchrow(
            "SELECT * FROM i3lani.rate_take($1::text[], $2::integer[], $3::float8[], $4)",
            ["telegram"],
            [30],
            [1.0],
            0.02,
        )
        assert row is not None
        assert row["granted"]  # the schedule would have said to wait


# -- the limiter ------------------------------------------------------------------------------


async def test_the_limiter_waits_its_turn(log: EventLog) -> None:
    """Callers wait for the window, in turn, and never get more than it allows."""
    assert isinstance(log, EventStore | MemoryLog)
    limiter = RateLimiter(table_of(log), margin=0.0)
    scope = Scope("telegram", Limit(3, 0.25))
    times: list[float] = []

    async def caller() -> None:
        await limiter.acquire([scope])
        times.append(environment.monotonic())

    started = environment.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(9):
            tg.start_soon(caller)
    elapsed = environment.monotonic() - started
    assert elapsed >= 0.45, times  # three windows: at least two waits
    times.sort()
    for i in range(3, 9):
        assert times[i] - times[i - 3] >= 0.24, times  # no 4 in any 0.25 s
    stats = limiter.statistics()
    assert (stats.grants, stats.local_grants, stats.shared) == (9, 0, True)
    assert stats.refusals >= 2


@pytest.mark.memory
async def test_one_busy_chat_does_not_hold_up_the_others() -> None:
    log = MemoryLog()
    limiter = RateLimiter(MemoryFlowTable.of(log), margin=0.0)
    overall = Scope("telegram", Limit(100, 1.0))
    busy = Scope("telegram-chat:1", Limit(1, 60.0))
    await limiter.acquire([overall, busy])
    waiting = anyio.Event()

    async def second_to_busy() -> None:
        waiting.set()
        await limiter.acquire([overall, busy])

    async with anyio.create_task_group() as tg:
        tg.start_soon(second_to_busy)
        await waiting.wait()
        await anyio.sleep(0.01)
        with anyio.fail_after(30):  # the busy chat's wait is a minute
            for chat in range(2, 12):
                await limiter.acquire([overall, Scope(f"telegram-chat:{chat}", busy.limit)])
        tg.cancel_scope.cancel()


@pytest.mark.memory
async def test_a_pause_reaches_every_limiter_of_the_table() -> None:
    log = MemoryLog()
    one, two = (RateLimiter(MemoryFlowTable.of(log), margin=0.0) for _ in range(2))
    scope = Scope("tonapi", Limit(100, 1.0))
    await one.pause([scope], 0.3)
    started = environment.monotonic()
    await two.acquire([scope])
    assert environment.monotonic() - started >= 0.28


@pytest.mark.memory
async def test_without_the_table_a_node_keeps_to_a_quarter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL unreachable: the limiter falls back to a quarter of each limit on its own,
    says so once, and goes back to the table once it answers again."""
    down = True

    def faults(operation: str) -> None:
        if down and operation.startswith("flow_"):
            raise StoreUnavailable("the database is down (test)")

    log = MemoryLog(faults=faults)
    limiter = RateLimiter(MemoryFlowTable.of(log), margin=0.0, retry_shared=0.2)
    scope = Scope("telegram", Limit(8, 0.2))  # a quarter: 2 per 0.2 s
    caplog.set_level(logging.WARNING, logger="store.flow.limiter")
    started = environment.monotonic()
    for _ in range(6):
        await limiter.acquire([scope])
    assert environment.monotonic() - started >= 0.38  # 2, 2 after 0.2 s, 2 after 0.4 s
    stats = limiter.statistics()
    assert (stats.local_grants, stats.shared) == (6, False)
    warnings = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "25 %" in warnings[0]
    assert "the database is down" in warnings[0]
    # Back: the next grant after the retry interval comes from the table.
    down = False
    await anyio.sleep(0.25)
    await limiter.acquire([scope])
    assert limiter.statistics().shared
    assert limiter.statistics().local_grants == 6
    assert any("answer again" in r.getMessage() for r in caplog.records)


@pytest.mark.memory
async def test_a_pause_is_kept_locally_when_the_table_is_down() -> None:
    def faults(operation: str) -> None:
        if operation.startswith("flow_"):
            raise StoreUnavailable("down")

    limiter = RateLimiter(MemoryFlowTable.of(MemoryLog(faults=faults)), margin=0.0)
    scope = Scope("telegram", Limit(30, 1.0))
    await limiter.pause([scope], 0.3)
    started = environment.monotonic()
    await limiter.acquire([scope])
    assert environment.monotonic() - started >= 0.28
    assert limiter.statistics().pauses == 1


@pytest.mark.memory
async def test_a_table_that_hangs_is_given_up_on() -> None:
    async def hang(operation: str) -> None:
        if operation == "flow_take":
            await anyio.sleep(3600)

    limiter = RateLimiter(
        MemoryFlowTable.of(MemoryLog(yield_point=hang)), margin=0.0, grant_timeout=0.1
    )
    with anyio.fail_after(60):  # the hang is an hour
        await limiter.acquire([Scope("tonapi", Limit(10, 1.0))])
    assert limiter.statistics().local_grants == 1


@pytest.mark.memory
async def test_one_limiter_per_log() -> None:
    log = MemoryLog()
    assert RateLimiter.of(log) is RateLimiter.of(log)
    assert RateLimiter.of(log) is not RateLimiter.of(MemoryLog())


async def test_without_a_table_a_node_keeps_to_the_whole_limit_alone() -> None:
    limiter = RateLimiter(None, margin=0.0, smooth=False)  # the whole window at once
    scope = Scope("telegram", Limit(4, 0.2))
    for _ in range(4):
        await limiter.acquire([scope])
    started = environment.monotonic()
    await limiter.acquire([scope])
    assert environment.monotonic() - started >= 0.15
    assert limiter.statistics().local_grants == 5


# -- spacing against jitter (deterministic, on the memory table's own clock) ------------------


def _asked_and_granted(seed: int, *, smooth: bool) -> tuple[list[float], list[float]]:
    """Three nodes with :data:`CALLERS` callers each, all busy, ask a 30/s scope for grants at
    moments jittered by up to 5 ms (each asks again when told, a little late, as a node's sleep
    and round trip make it); the grant times, by the table's clock, and the moments their
    requests reach Telegram: a node sends its requests one after the other (4 ms each, as
    through one event loop and connection), each then takes 2 to 12 ms more on the way. On a
    clock of its own: no sleep, no timing, the same for a seed."""
    now = 1_000_000.0
    log = MemoryLog(clock=lambda: datetime.fromtimestamp(now, UTC))
    table = MemoryFlowTable.of(log)
    scope = Scope("telegram", Limit(30, 1.0))
    rng = random.Random(seed)
    # (when the caller asks next, node, caller) for every caller; the earliest asks first.
    asks = sorted(
        (now + rng.uniform(0, 0.005), node, caller)
        for node in range(3)
        for caller in range(CALLERS)
    )
    wire_free = [now] * 3  # when each node's connection is free again
    grants: list[float] = []
    arrivals: list[float] = []

    async def drive() -> None:
        nonlocal now
        while len(grants) < 600:
            at, node, caller = asks.pop(0)
            now = at
            grant = await table.take([scope], margin=DEFAULT_MARGIN, smooth=smooth)
            if grant.granted:
                grants.append(log.clock().timestamp())  # the table's: to the microsecond
                sent = max(now, wire_free[node]) + 0.004
                wire_free[node] = sent
                arrivals.append(sent + rng.uniform(0.002, 0.012))
                again = sent + rng.uniform(0.001, 0.005)  # the reply, then the next notice
            else:
                again = now + grant.wait + rng.uniform(0.0005, 0.005)  # overslept, a round trip
            asks.append((again, node, caller))
            asks.sort()

    anyio.run(drive)
    return grants, arrivals


@pytest.mark.memory
@pytest.mark.parametrize("seed", range(8))
def test_spaced_grants_keep_every_window_with_jittered_arrivals(seed: int) -> None:
    """Grants on the schedule: no two closer than half an interval, at most 30 in any window of
    the limit (+ margin) by the table's clock, and at most 30 requests in any second where they
    arrive, though each arrives 6 to 16 ms after its grant; and as fast as the limit allows."""
    grants, arrivals = _asked_and_granted(seed, smooth=True)
    interval = spacing_interval(Limit(30, 1.0), DEFAULT_MARGIN)
    assert min(b - a for a, b in itertools.pairwise(grants)) >= interval / 2 - 1e-6
    assert most_in_any_window(grants, 1.0 + DEFAULT_MARGIN - 1e-6) <= 30
    assert most_in_any_window(arrivals, 1.0) <= 30
    took = grants[-1] - grants[0]
    assert 599 * interval * 0.97 <= took <= 599 * interval * 1.03  # about 34 ms a grant


@pytest.mark.memory
def test_grants_in_bursts_leave_the_margin_too_small() -> None:
    """Why the schedule: the same callers judged by the window alone are granted 30 at once.
    The grant times still keep the window exactly, but the requests queue on their way out and
    reach Telegram 6 to over 50 ms after their grants: more apart than the margin covers, so
    whether one of Telegram's seconds holds 31 depends only on the order the callers happen to
    come in (the broadcast bench met one such second in a thousand notices)."""
    for seed in range(8):
        grants, arrivals = _asked_and_granted(seed, smooth=False)
        assert most_in_any_window(grants, 1.0 + DEFAULT_MARGIN - 1e-6) <= 30
        assert _spread(grants, arrivals) > 2 * DEFAULT_MARGIN
        smoothed = _asked_and_granted(seed, smooth=True)
        assert _spread(*smoothed) < DEFAULT_MARGIN


def _spread(grants: list[float], arrivals: list[float]) -> float:
    """How much longer the slowest request took from its grant to Telegram than the fastest."""
    took = [arrived - granted for granted, arrived in zip(grants, arrivals, strict=True)]
    return max(took) - min(took)
