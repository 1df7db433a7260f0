"""The in-memory log's own parts: the hooks a simulation drives it by (clock, scheduling,
faults) and its model of concurrent writers. Its guarantees as an event log are the contract
suite's (every test taking ``log`` in this folder)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from events import PaymentExpired
from events.errors import ConcurrencyConflict, StoreError, StoreUnavailable
from store import NO_STREAM, START, AppendResult, NewEvent
from store.memory import OPERATIONS, MemoryLog
from store.tasks.memory import MemoryTaskTable

pytestmark = pytest.mark.memory

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


async def test_the_clock_stamps_recorded_at() -> None:
    now = [NOW]
    log = MemoryLog(clock=lambda: now[0])
    first = await log.append("payment-1", [expired(1)])
    now[0] += timedelta(seconds=5)
    second = await log.append("payment-1", [expired(1)])
    assert (first.recorded_at, second.recorded_at) == (NOW, NOW + timedelta(seconds=5))
    assert [r.recorded_at for r in await log.read_stream("payment-1")] == [
        NOW,
        NOW + timedelta(seconds=5),
    ]


async def test_every_operation_passes_the_yield_point_by_name() -> None:
    seen: list[str] = []

    async def record(operation: str) -> None:
        seen.append(operation)

    log = MemoryLog(yield_point=record)
    async with log.transaction() as tx:
        await tx.append("payment-1", [expired(1)])
    await log.append("payment-2", [expired(2)])
    _ = [r async for r in log.read_all()]
    assert seen == ["begin", "append", "commit", "append", "read_page"]
    assert set(seen) <= OPERATIONS


async def test_a_store_that_is_down_refuses_and_writes_nothing_until_it_is_back() -> None:
    down = True

    def faults(operation: str) -> None:
        if down:
            raise StoreUnavailable(f"simulated outage during {operation}")

    log = MemoryLog(faults=faults)
    item = NewEvent(event=expired(1))
    with pytest.raises(StoreUnavailable, match="append"):
        await log.append("payment-1", [item])
    with pytest.raises(StoreUnavailable):
        await log.read_stream("payment-1")
    down = False
    assert await log.read_stream("payment-1") == []
    first = await log.append("payment-1", [item])
    assert not first.duplicate


async def test_a_fault_loses_the_listening_of_the_caller_it_hits_and_only_theirs() -> None:
    # As on PostgreSQL, where a process's followers listen on one connection that an outage
    # takes with it: they hear nothing until they listen again.
    who = ["a"]
    down: set[str] = set()

    def faults(operation: str) -> None:
        if who[0] in down:
            raise StoreUnavailable(f"{who[0]} is cut off during {operation}")

    log = MemoryLog(faults=faults, caller=lambda: who[0])
    table = MemoryTaskTable.of(log)
    heard: dict[str, list[str]] = {"a": [], "b": []}
    tasks, leases, subscriptions = {}, {}, {}
    for name in ("a", "b"):
        who[0] = name
        tasks[name] = table.listener(on_notify=heard[name].append, who=name, poll_interval=1)
        assert await tasks[name].listen()
        leases[name] = log.lease_listener(lambda lease: None)
        assert await leases[name].listen()
        subscriptions[name] = log.subscribe()
        await subscriptions[name]._listen()
    down.add("a")
    who[0] = "a"
    with pytest.raises(StoreUnavailable):
        await log.ping()
    assert not leases["a"].listening
    assert leases["b"].listening
    assert subscriptions["a"] not in log._subscriptions
    assert subscriptions["a"]._wake.is_set()  # woken, as on_lost wakes it on PostgreSQL
    assert subscriptions["b"] in log._subscriptions
    assert not subscriptions["b"]._wake.is_set()
    assert not await tasks["b"].listen()  # still listening
    down.clear()
    assert await tasks["a"].listen()  # it listens again only when it asks to


async def test_without_a_caller_a_fault_loses_no_listening() -> None:
    down = [True]

    def faults(operation: str) -> None:
        if down[0]:
            raise StoreUnavailable(f"simulated outage during {operation}")

    log = MemoryLog(faults=faults)
    listener = log.lease_listener(lambda lease: None)
    assert await listener.listen()
    with pytest.raises(StoreUnavailable):
        await log.ping()
    assert listener.listening


async def test_a_failed_commit_keeps_nothing_of_the_transaction() -> None:
    def faults(operation: str) -> None:
        if operation == "commit":
            raise StoreUnavailable("the connection was lost before the commit")

    log = MemoryLog(faults=faults)

    async def write_and_checkpoint() -> None:
        async with log.transaction() as tx:
            await tx.append("payment-1", [expired(1)])
            await tx.save_checkpoint("reader", START, expected=None)

    with pytest.raises(StoreUnavailable):
        await write_and_checkpoint()
    assert await log.read_stream("payment-1") == []
    assert await log.load_checkpoint("reader") is None
    assert [r async for r in log.read_all()] == []
    # Nothing is left held back behind it either.
    assert not await log.held_back(START)


async def test_a_lost_acknowledgement_reports_a_failure_for_a_write_that_committed() -> None:
    acknowledged: list[str] = []

    def lost_ack(operation: str) -> bool:
        acknowledged.append(operation)
        return True

    log = MemoryLog(lost_ack=lost_ack)
    item = NewEvent(event=expired(1))
    with pytest.raises(StoreUnavailable, match="before the commit was acknowledged"):
        await log.append("payment-1", [item])
    with pytest.raises(StoreUnavailable):
        async with log.transaction() as tx:
            await tx.append("payment-2", [expired(2)])
    with pytest.raises(StoreUnavailable):
        await log.save_checkpoint("reader", START, expected=None)
    # Every write happened: the caller that retries with the same ids changes nothing.
    assert [r.stream for r in [r async for r in log.read_all()]] == ["payment-1", "payment-2"]
    assert await log.load_checkpoint("reader") == START
    with pytest.raises(StoreUnavailable):
        await log.append("payment-1", [item])
    assert len(await log.read_stream("payment-1")) == 1
    assert acknowledged == ["append", "commit", "save_checkpoint", "append"]


async def test_a_write_refused_before_its_commit_asks_no_acknowledgement() -> None:
    asked: list[str] = []
    log = MemoryLog(lost_ack=lambda operation: asked.append(operation) is None)
    with pytest.raises(ConcurrencyConflict):
        async with log.transaction() as tx:
            await tx.append("payment-1", [expired(1)], expected_version=1)
    assert asked == []


async def test_an_append_waits_for_an_open_transaction_on_its_stream() -> None:
    log = MemoryLog()
    order: list[str] = []
    async with anyio.create_task_group() as tg, log.transaction() as tx:
        await tx.append("payment-1", [expired(1)], expected_version=NO_STREAM)

        async def racer() -> None:
            result = await log.append("payment-1", [expired(2)])
            order.append(f"racer at {result.last_version}")

        tg.start_soon(racer)
        await anyio.wait_all_tasks_blocked()
        order.append("commit")
    assert order == ["commit", "racer at 2"]
    assert [r.version for r in await log.read_stream("payment-1")] == [1, 2]


async def test_an_exact_expectation_fails_once_the_open_transaction_commits() -> None:
    log = MemoryLog()
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as tg, log.transaction() as tx:
        await tx.append("payment-1", [expired(1)])

        async def racer() -> None:
            try:
                await log.append("payment-1", [expired(2)], expected_version=NO_STREAM)
            except ConcurrencyConflict as exc:
                outcome.append(exc)

        tg.start_soon(racer)
        await anyio.wait_all_tasks_blocked()
    [conflict] = outcome
    assert isinstance(conflict, ConcurrencyConflict)
    assert conflict.actual == 1


async def test_an_event_id_claimed_by_an_open_transaction_is_a_retry_once_it_commits() -> None:
    log = MemoryLog()
    item = NewEvent(event=expired(1), event_id=uuid.uuid4())
    results: list[AppendResult] = []
    async with anyio.create_task_group() as tg, log.transaction() as tx:
        first = await tx.append("payment-1", [item])
        tg.start_soon(lambda: _append_into(log, results, item))
        await anyio.wait_all_tasks_blocked()
    [retry] = results
    assert retry.duplicate
    assert retry.first_position == first.first_position


async def _append_into(log: MemoryLog, results: list[AppendResult], item: NewEvent) -> None:
    results.append(await log.append("payment-1", [item]))


async def test_two_transactions_waiting_on_each_other_are_refused() -> None:
    log = MemoryLog()
    errors: list[BaseException] = []
    both_wrote = anyio.Event()
    wrote = 0

    async def writer(first: str, second: str) -> None:
        nonlocal wrote
        try:
            async with log.transaction() as tx:
                await tx.append(first, [expired(1)])
                wrote += 1
                if wrote == 2:
                    both_wrote.set()
                await both_wrote.wait()
                await tx.append(second, [expired(1)])
        except StoreError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, "payment-1", "payment-2")
        tg.start_soon(writer, "payment-2", "payment-1")
    # One of them is refused (and rolled back); the other then goes ahead and commits.
    assert len(errors) == 1
    assert "deadlock" in str(errors[0])
    streams = {r.stream for r in [r async for r in log.read_all()]}
    assert streams == {"payment-1", "payment-2"}
    assert len([r async for r in log.read_all()]) == 2


async def test_a_transaction_cannot_be_used_after_its_block() -> None:
    log = MemoryLog()
    async with log.transaction() as tx:
        await tx.append("payment-1", [expired(1)])
    with pytest.raises(StoreError, match="transaction is over"):
        await tx.append("payment-1", [expired(2)])


async def test_a_closed_log_refuses_operations() -> None:
    async with MemoryLog() as log:
        await log.append("payment-1", [expired(1)])
    with pytest.raises(StoreError, match="closed"):
        await log.read_stream("payment-1")


class _Side:
    """Side writes that record what happened to them."""

    def __init__(self, seen: list[str], name: str) -> None:
        self.seen = seen
        self.name = name

    def commit(self) -> None:
        self.seen.append(f"{self.name} committed")

    def discard(self) -> None:
        self.seen.append(f"{self.name} discarded")


async def test_side_writes_commit_and_roll_back_with_the_transaction() -> None:
    log = MemoryLog()
    seen: list[str] = []
    async with log.transaction() as tx:
        writes = tx.side_writes("table", lambda: _Side(seen, "first"))
        assert tx.side_writes("table", lambda: _Side(seen, "other")) is writes  # one per key
        await tx.append("payment-1", [expired(1)])
        assert seen == []
    assert seen == ["first committed"]

    async def roll_back() -> None:
        async with log.transaction() as tx:
            tx.side_writes("table", lambda: _Side(seen, "second"))
            raise ValueError("rolled back")

    with pytest.raises(ValueError, match="rolled back"):
        await roll_back()
    assert seen == ["first committed", "second discarded"]
    assert log.side_table(list, list) is log.side_table(list, lambda: ["not made"])


async def test_row_locks_skip_or_wait_until_the_holder_ends() -> None:
    log = MemoryLog()
    order: list[str] = []
    async with anyio.create_task_group() as tg, log.transaction() as holder:
        assert holder.lock_now(("row", 1))

        async def other() -> None:
            async with log.transaction() as tx:
                assert not tx.lock_now(("row", 1))  # SKIP LOCKED
                assert tx.locked_elsewhere(("row", 1))
                await tx.lock(("row", 1))  # FOR UPDATE: waits for the holder
                order.append("locked")

        tg.start_soon(other)
        await anyio.sleep(0.05)
        order.append("holder ends")
    assert order == ["holder ends", "locked"]
