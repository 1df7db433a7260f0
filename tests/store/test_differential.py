"""The in-memory log against PostgreSQL, operation by operation: one seeded random script
(appends with every kind of expectation, retries and reused ids, transactions kept or
abandoned, checkpoints, snapshots, reads) runs on both, and every outcome must be the same.

Positions and transaction ids are left out of the comparison: PostgreSQL spends a position
on an insert that fails on a unique index, and its transaction ids are the server's. What is
compared is what callers rely on: results (versions, duplicates), errors (type, stream,
expectation, actual version), and what reads return, in order.

PostgreSQL and memory both run here, so it is marked ``postgres``; the contract suite checks
each guarantee on its own, this checks that the two logs agree on long mixed histories."""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from events import PaymentExpired
from events.errors import StoreError
from store import ANY, NO_STREAM, STREAM_EXISTS, Append, EventStore, Expected, Fence, NewEvent
from store.leases import Leases
from store.memory import MemoryLog
from store.port import EventLog

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


class Tally(msgspec.Struct, frozen=True):
    count: int


class Abandoned(Exception):
    """The script gives a transaction up."""


def outcome_of(exc: BaseException) -> tuple[Any, ...]:
    """An error as the comparison sees it: its type and the attributes callers read."""
    attributes = ("stream", "expected", "actual", "name", "lease", "generation")
    return (
        type(exc).__name__,
        *(str(getattr(exc, name)) for name in attributes if hasattr(exc, name)),
    )


async def run(
    log: EventLog, seed: int, steps: int, grant: Callable[[str], Awaitable[Fence]]
) -> list[Any]:
    rng = random.Random(seed)
    fences: list[Fence] = []  # every grant so far, the current one last
    trace: list[Any] = []
    earlier: list[tuple[str, list[NewEvent]]] = []
    checkpoint: list[Any] = [None]  # the cursor this script last stored

    def new_id() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    def expectation() -> Expected:
        return rng.choice([ANY, NO_STREAM, STREAM_EXISTS, rng.randint(0, 6)])

    def planned() -> tuple[str, list[NewEvent]]:
        if earlier and rng.random() < 0.25:
            stream, items = rng.choice(earlier)  # a retry...
            if rng.random() < 0.3:
                stream = f"payment-{rng.randint(1, 4)}"  # ...or an id reused elsewhere
            if rng.random() < 0.2:
                items = [*items, NewEvent(event=expired(rng), event_id=new_id())]
            return stream, items
        items = [NewEvent(event=expired(rng), event_id=new_id()) for _ in range(rng.randint(1, 3))]
        stream = f"payment-{rng.randint(1, 4)}"
        earlier.append((stream, items))
        return stream, items

    def fence() -> Fence | None:
        return rng.choice(fences) if fences and rng.random() < 0.3 else None

    async def append(target: Any) -> None:
        """One append; an error is recorded, and raised on inside a transaction (which a
        caller then gives up, as it must on PostgreSQL)."""
        stream, items = planned()
        try:
            result = await target.append(
                stream, items, expected_version=expectation(), fence=fence()
            )
        except StoreError as exc:
            trace.append(outcome_of(exc))
            if target is not log:
                raise
            return
        trace.append(("ok", result.stream, result.first_version, result.last_version))
        trace.append(("duplicate", result.duplicate))

    for _ in range(steps):
        op = rng.choice(
            ["append"] * 4 + ["transaction", "many", "grant", "checkpoint", "snapshot", "read"]
        )
        if op == "append":
            await append(log)
        elif op == "grant":
            fences.append(await grant("Script"))
            trace.append(("granted", fences[-1].generation))
        elif op == "many":
            streams = rng.sample([f"payment-{n}" for n in range(1, 5)], rng.randint(1, 3))
            appends = []
            for stream in streams:
                _, items = planned()
                appends.append(Append(stream, items, expectation(), fence=fence()))
            try:
                async with log.transaction() as tx:
                    landed = await tx.append_many(appends)
                trace.append(("many", [[p.version for p in events] for events in landed]))
            except StoreError as exc:
                trace.append(("many failed", *outcome_of(exc)))
        elif op == "transaction":
            give_up = rng.random() < 0.3
            appends = rng.randint(1, 3)
            try:
                async with log.transaction() as tx:
                    for _ in range(appends):
                        await append(tx)
                    if give_up:
                        raise Abandoned
                trace.append("committed")
            except Abandoned:
                trace.append("abandoned")
            except StoreError:
                trace.append("transaction failed")
        elif op == "checkpoint":
            head = await log.head()
            expected = checkpoint[0] if rng.random() < 0.8 else None
            try:
                await log.save_checkpoint("script", head, expected=expected)
                checkpoint[0] = head
                trace.append("checkpoint saved")
            except StoreError as exc:
                trace.append(("checkpoint", type(exc).__name__))
            trace.append(("checkpoint is head", await log.load_checkpoint("script") == head))
        elif op == "snapshot":
            stream = f"payment-{rng.randint(1, 4)}"
            version = rng.randint(1, 8)
            await log.save_snapshot(stream, version, Tally(count=version))
            trace.append(("snapshot", stream, await log.load_snapshot(stream, Tally)))
        else:
            stream = f"payment-{rng.randint(1, 4)}"
            trace.append(("version", stream, await log.stream_version(stream)))
            trace.append(
                (
                    "stream",
                    stream,
                    [(r.version, r.event_id, r.event) for r in await log.read_stream(stream)],
                )
            )
            last = await log.last_event(stream)
            trace.append(("last", None if last is None else last.event_id))
    trace.append(
        (
            "everything",
            [
                (r.stream, r.version, r.event_id, r.event, r.metadata)
                async for r in log.read_all(batch_size=7)
            ],
        )
    )
    return trace


def expired(rng: random.Random) -> PaymentExpired:
    return PaymentExpired(payment_id=rng.randint(1, 5), expired_at=NOW)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_memory_and_postgres_agree_on_a_random_history(dsn: str, seed: int) -> None:
    async with EventStore.open(dsn, node="test-node") as store:
        leases = Leases(store, "test-node", ttl=60)

        async def grant_on_postgres(name: str) -> Fence:
            lease = await leases.acquire(name)
            assert lease is not None
            return Fence(lease.name, lease.generation)

        on_postgres = await run(store, seed, steps=200, grant=grant_on_postgres)
    memory = MemoryLog(node="test-node")

    async def grant_in_memory(name: str) -> Fence:
        return Fence(name, memory.grant(name))

    on_memory = await run(memory, seed, steps=200, grant=grant_in_memory)
    for step, (pg, mem) in enumerate(zip(on_postgres, on_memory, strict=True)):
        assert mem == pg, f"step {step}: the logs disagree"
    assert any(item[0] == "ConcurrencyConflict" for item in on_postgres if type(item) is tuple)
    assert any(item[0] == "EventIdReused" for item in on_postgres if type(item) is tuple)
    assert any(item[0] == "StaleGeneration" for item in on_postgres if type(item) is tuple)
    assert any(item[0] == "many" for item in on_postgres if type(item) is tuple)
