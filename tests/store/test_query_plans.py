"""The plans PostgreSQL picks for the statements every reader runs often, under the generic
plan a prepared statement goes to after five runs: a reader's check must walk the reading
order from its cursor, never the whole log.

PostgreSQL only (not in the contract suite): plans are the server's."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest

from events import PaymentExpired
from store import EventStore
from store.queries import query

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def _scans(plan: object) -> list[tuple[str, str | None]]:
    """Every scan node of an EXPLAIN (FORMAT JSON) plan: (node type, index name)."""
    found: list[tuple[str, str | None]] = []
    if isinstance(plan, dict):
        if "Scan" in str(plan.get("Node Type", "")):
            found.append((plan["Node Type"], plan.get("Index Name")))
        for value in plan.values():
            found.extend(_scans(value))
    elif isinstance(plan, list):
        for value in plan:
            found.extend(_scans(value))
    return found


@pytest.mark.parametrize(
    ("name", "arguments"),
    [("held_back", ()), ("held_back_category", ("payment",))],
)
async def test_held_back_walks_the_reading_order_under_the_generic_plan(
    dsn: str, name: str, arguments: tuple[str, ...]
) -> None:
    async with EventStore.open(dsn) as store:
        for n in range(1, 301):
            stream = f"payment-{n}" if n % 50 == 0 else f"other-{n}"
            await store.append(stream, [PaymentExpired(payment_id=n, expired_at=NOW)])
        head = await store.head()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE i3lani.events")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE checked AS {query(name).strip().rstrip(';')}")
        values = ", ".join(
            [f"'{head.transaction_id}'::xid8", str(head.position), *(f"'{a}'" for a in arguments)]
        )
        plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE checked({values})"))
        answer = await conn.fetchval(f"EXECUTE checked({values})")
    finally:
        await conn.close()
    scans = _scans(plan)
    assert scans, plan
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    assert ("Index Only Scan", "events_reading_order_idx") in scans or (
        "Index Scan",
        "events_reading_order_idx",
    ) in scans, scans
    assert answer is False  # nothing past the head
