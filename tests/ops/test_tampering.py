"""Tampering with a copy of a log as a superuser, and what finds it (issue 14).

Each test gets its own database, cloned from the migrated template: a copy of a log that an
administrator with every right edits behind the store's back (a careful one turns the
append-only triggers off for the edit and back on after it). What was done must show: in the
audit's invariants, in its check of the triggers, or, once the log is sealed, in the
verification of its seals, which names the first position where the log differs; and a
rewrite whose seals were recomputed too, against the digest exported before it.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from actors.config import Settings
from actors.runtime import ActorRunner
from actors.runtime.clock import SystemClock
from actors.sealer import SEAL_STREAM, Sealer
from events import (
    DEFAULT_REGISTRY,
    Event,
    LogSealed,
    PaymentConfirmed,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
    SubscriptionActivated,
    UserRegistered,
)
from ops.audit import AuditReport, run_audit
from store import Cursor, EventStore, NewEvent
from store.sealing import SealBuilder, SealDigest, next_seals
from store.stored import StoredEvent
from tests.waiting import eventually

I3LANI = str(Path(sys.executable).parent / "i3lani")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TON = 1_000_000_000
WALLET = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
SETTINGS = Settings()
R1, R2 = uuid.UUID(int=1), uuid.UUID(int=2)


def created(payment_id: int, amount: int = 3 * TON) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=7,
        plan="month",
        amount_nanotons=amount,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def confirmed(payment_id: int, amount: int = 3 * TON, tx: int = 1) -> PaymentConfirmed:
    return PaymentConfirmed(
        payment_id=payment_id,
        tx_hash=f"{tx:064x}",
        lt=tx,
        amount_nanotons=amount,
        payer="0:" + "1" * 64,
        confirmed_at=NOW,
    )


def earned(reward_id: uuid.UUID, amount: int) -> RewardEarned:
    return RewardEarned(
        reward_id=reward_id,
        user_id=7,
        amount_nanotons=amount,
        reason="referral",
        source="user:8",
        earned_at=NOW,
    )


def credited(reward_id: uuid.UUID, amount: int, after: int) -> RewardCredited:
    return RewardCredited(
        reward_id=reward_id,
        user_id=7,
        amount_nanotons=amount,
        balance_after_nanotons=after,
        credited_at=NOW,
    )


LOG: list[tuple[str, Event]] = [
    ("member-7", UserRegistered(user_id=7, registered_at=NOW)),
    ("payment-1", created(1)),
    ("payment-1", confirmed(1)),
    (
        "payment-1",
        SubscriptionActivated(
            payment_id=1, user_id=7, plan="month", starts_at=NOW, ends_at=NOW + timedelta(30)
        ),
    ),
    ("payment-2", created(2)),
    ("user-7", earned(R1, TON // 10)),
    ("user-7", credited(R1, TON // 10, after=TON // 10)),
    ("user-7", earned(R2, TON // 10)),
    ("user-7", credited(R2, TON // 10, after=2 * TON // 10)),
    ("payment-3", created(3, amount=TON)),
]


async def put(store: EventStore) -> dict[tuple[str, int], int]:
    """The log above, each event on its own; the position of each by (stream, version)."""
    where = {}
    for stream, event in LOG:
        result = await store.append(stream, [event])
        where[(stream, result.version)] = result.last_position
    return where


async def seal(store: EventStore) -> LogSealed:
    """Seal what the log holds now, as the Sealer does (the same computation, the same
    expected version); the newest seal."""
    last = await store.last_event(SEAL_STREAM)
    previous = None if last is None else last.event
    assert previous is None or isinstance(previous, LogSealed)
    made, more = await next_seals(store, previous, sealed_at=datetime.now(UTC))
    assert made
    assert not more
    await store.append(
        SEAL_STREAM,
        [NewEvent(event=s, event_id=uuid.uuid4()) for s in made],
        expected_version=0 if last is None else last.version,
    )
    return made[-1]


@asynccontextmanager
async def tampering(raw: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """The append-only triggers off for an edit, then back on as they were (ALWAYS): the
    trigger check alone shows nothing afterwards."""
    if not await raw.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("tampering needs a superuser (the embedded test server's user is one)")
    await raw.execute("ALTER TABLE i3lani.events DISABLE TRIGGER events_append_only_row")
    try:
        yield raw
    finally:
        await raw.execute("ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_row")


async def audit(store: EventStore, **options: Any) -> AuditReport:
    return await run_audit(store, SETTINGS, held_back_patience=0.5, **options)


def found(report: AuditReport) -> list[tuple[str, list[int]]]:
    return [(d.check, d.positions) for d in report.discrepancies]


async def set_payload(raw: asyncpg.Connection, position: int, path: str, value: str) -> None:
    await raw.execute(
        f"UPDATE i3lani.events SET payload = jsonb_set(payload::jsonb, '{{{path}}}', $2::jsonb) "
        "WHERE global_position = $1",
        position,
        value,
    )


# -- the audit's own invariants -----------------------------------------------------------------
async def test_the_untouched_log_is_clean_sealed_or_not(store: EventStore) -> None:
    await put(store)
    assert (await audit(store)).clean
    last = await seal(store)
    report = await audit(store, against=SealDigest.of(last))
    assert report.clean, report.discrepancies
    assert report.seals is not None
    assert (report.seals.seals_verified, report.seals.events_verified) == (1, len(LOG))
    assert report.seals.digest_matched is True
    assert report.seals.first_difference is None


async def test_a_confirmation_below_the_price(store: EventStore, raw: asyncpg.Connection) -> None:
    where = await put(store)
    async with tampering(raw):
        await set_payload(raw, where[("payment-1", 2)], "amount_nanotons", str(TON))
    report = await audit(store)
    assert found(report) == [
        ("confirmed-below-price", [where[("payment-1", 1)], where[("payment-1", 2)]])
    ]
    assert "for 1 TON, below its price of 3 TON" in report.discrepancies[0].message


async def test_a_confirmation_of_a_payment_never_created(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    await put(store)
    # An INSERT needs no trigger turned off: the forged row is an append like any other.
    tag, version, payload = DEFAULT_REGISTRY.encode(confirmed(99, tx=99))
    forged = await raw.fetchval(
        "INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version, "
        "payload) VALUES ($1, 'payment-99', 1, $2, $3, $4::jsonb) RETURNING global_position",
        uuid.uuid4(),
        tag,
        version,
        payload.decode(),
    )
    report = await audit(store)
    assert found(report) == [("confirmed-without-payment", [forged])]
    assert "payment 99 confirmed" in report.discrepancies[0].message


async def test_a_type_renamed_to_an_unknown_one_is_found_not_skipped(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    where = await put(store)
    renamed = where[("payment-1", 2)]
    async with tampering(raw):
        await raw.execute(
            "UPDATE i3lani.events SET type = 'PaymentConfirmedV9' WHERE global_position = $1",
            renamed,
        )
    report = await audit(store)
    checks = found(report)
    assert ("unknown-event-type", [renamed]) in checks
    assert any("'PaymentConfirmedV9'" in d.message for d in report.discrepancies)
    # What the missing confirmation leaves behind is found too: a subscription without it.
    assert ("subscription-without-payment", [where[("payment-1", 3)]]) in checks
    assert report.summary.events_unreadable == 1
    assert report.summary.events_replayed == len(LOG) - 1


async def test_an_undecodable_row_is_one_json_document_naming_it(
    store: EventStore, raw: asyncpg.Connection, dsn: str, clean_env: dict[str, str]
) -> None:
    where = await put(store)
    broken = where[("user-7", 2)]
    async with tampering(raw):
        await set_payload(raw, broken, "amount_nanotons", '"a lot"')
    result = await cli(dsn, clean_env, "audit", "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # one document, and only one
    assert report["clean"] is False
    [undecodable] = [d for d in report["discrepancies"] if d["check"] == "undecodable-event"]
    assert undecodable["positions"] == [broken]
    assert "amount_nanotons" in undecodable["message"]
    assert report["summary"]["events_unreadable"] == 1


async def test_an_audit_that_cannot_run_still_prints_one_json_document(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    await put(store)
    result = await cli(dsn, clean_env, "audit", "--format", "json", "--against", "not-a-digest")
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["clean"] is False
    assert document["exit_code"] == 2
    assert "a seal digest looks like i3lani-seal-v1:" in document["error"]
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("i3lani audit: a seal digest looks like")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "ALTER TABLE i3lani.events ENABLE TRIGGER events_append_only_row",
            "events_append_only_row is enabled only in the default session_replication_role",
        ),
        (
            "ALTER TABLE i3lani.events DISABLE TRIGGER events_append_only_truncate",
            "events_append_only_truncate is disabled",
        ),
        ("DROP TRIGGER events_append_only_row ON i3lani.events", "is missing"),
        (
            "CREATE OR REPLACE FUNCTION i3lani.refuse_event_change() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END; $$",
            "was replaced",
        ),
    ],
)
async def test_append_only_triggers_missing_or_not_always(
    store: EventStore, raw: asyncpg.Connection, change: str, expected: str
) -> None:
    await put(store)
    await raw.execute(change)
    report = await audit(store)
    [(check, positions)] = found(report)
    assert (check, positions) == ("append-only-triggers", [])
    assert expected in report.discrepancies[0].message


async def test_an_ordinary_trigger_lets_a_replica_session_delete_and_the_audit_says_so(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    """What migration 0006 closed, shown open again: with the row trigger back to ENABLE
    (not ALWAYS), session_replication_role = replica deletes unseen; the audit flags it."""
    where = await put(store)
    if not await raw.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("needs a superuser (the embedded test server's user is one)")
    await raw.execute("ALTER TABLE i3lani.events ENABLE TRIGGER events_append_only_row")
    await raw.execute("SET session_replication_role = replica")
    gone = where[("payment-3", 1)]
    assert await raw.execute("DELETE FROM i3lani.events WHERE global_position = $1", gone) == (
        "DELETE 1"
    )
    await raw.execute("RESET session_replication_role")
    report = await audit(store)
    assert ("append-only-triggers", []) in found(report)


# -- after a seal -------------------------------------------------------------------------------
async def sealed_log(store: EventStore) -> tuple[dict[tuple[str, int], int], LogSealed]:
    where = await put(store)
    return where, await seal(store)


def seal_findings(report: AuditReport) -> list[tuple[str, list[int]]]:
    return [c for c in found(report) if c[0] in ("seal-mismatch", "seal-chain", "digest-mismatch")]


def assert_named(report: AuditReport, position: int, words: str) -> None:
    """Seal verification found one difference, first at ``position``, in these words."""
    assert report.seals is not None
    assert report.seals.first_difference == position
    [(check, positions)] = seal_findings(report)
    assert check == "seal-mismatch"
    assert position in positions
    assert any(words in d.message for d in report.discrepancies), report.discrepancies


async def test_a_deleted_row_after_a_seal(store: EventStore, raw: asyncpg.Connection) -> None:
    where, sealed = await sealed_log(store)
    gone = where[("payment-2", 1)]
    async with tampering(raw):
        await raw.execute("DELETE FROM i3lani.events WHERE global_position = $1", gone)
    report = await audit(store, verify_seals=True)
    assert_named(report, gone, f"the event at #{gone} sealed by seal 1 is gone from the log")
    assert sealed.count == len(LOG)


async def test_an_inserted_row_after_a_seal(store: EventStore, raw: asyncpg.Connection) -> None:
    where, _ = await sealed_log(store)
    # Forged to look old: the transaction id of a sealed event puts it inside the sealed range
    # in the log's reading order. Its audit invariants hold (a second payment, created).
    old = await raw.fetchval(
        "SELECT transaction_id FROM i3lani.events WHERE global_position = $1",
        where[("payment-2", 1)],
    )
    tag, version, payload = DEFAULT_REGISTRY.encode(created(4, amount=TON))
    forged = await raw.fetchval(
        "INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version, "
        "payload, transaction_id) VALUES ($1, 'payment-4', 1, $2, $3, $4::jsonb, $5) "
        "RETURNING global_position",
        uuid.uuid4(),
        tag,
        version,
        payload.decode(),
        old,
    )
    report = await audit(store, verify_seals=True)
    assert_named(report, forged, f"the event at #{forged} (payment-4 v1, PaymentCreated) was not")


async def test_a_changed_payload_byte_after_a_seal(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    where, _ = await sealed_log(store)
    changed = where[("payment-3", 1)]
    async with tampering(raw):
        # One character of the memo: i3lani_3 -> i3lani_8.
        await set_payload(raw, changed, "memo", '"i3lani_8"')
    report = await audit(store, verify_seals=True)
    assert_named(report, changed, "is not what seal 1 sealed: a stored byte changed")


async def test_a_deleted_stream_after_a_seal(store: EventStore, raw: asyncpg.Connection) -> None:
    where, _ = await sealed_log(store)
    async with tampering(raw):
        deleted = await raw.execute("DELETE FROM i3lani.events WHERE stream = 'payment-1'")
    assert deleted == "DELETE 3"
    report = await audit(store, verify_seals=True)
    assert_named(report, where[("payment-1", 1)], "is gone from the log (deleted)")


async def rewrite_rewards(raw: asyncpg.Connection, where: dict[tuple[str, int], int]) -> None:
    """User 7's two rewards become 50 TON each, earned, credited and balances alike: every
    invariant of the replay still holds."""
    async with tampering(raw):
        for version, value in ((1, 50 * TON), (3, 50 * TON)):
            await set_payload(raw, where[("user-7", version)], "amount_nanotons", str(value))
        await set_payload(raw, where[("user-7", 2)], "amount_nanotons", str(50 * TON))
        await set_payload(raw, where[("user-7", 2)], "balance_after_nanotons", str(50 * TON))
        await set_payload(raw, where[("user-7", 4)], "amount_nanotons", str(50 * TON))
        await set_payload(raw, where[("user-7", 4)], "balance_after_nanotons", str(100 * TON))


async def reseal(store: EventStore, raw: asyncpg.Connection) -> None:
    """What a thorough forger does next: recompute every seal over the rewritten rows, in
    order (each seal event is itself a row of the next seal's range), and write them over the
    old ones."""
    previous = bytes(32)
    for recorded in await store.read_stream(SEAL_STREAM):
        old = recorded.event
        assert isinstance(old, LogSealed)
        after = Cursor(old.after_transaction_id, old.after_position)
        builder = SealBuilder(old.seal, previous, after, old.total - old.count)
        cursor = after
        while builder.last.position != old.last_position:
            page = await store.read_stored(cursor, limit=100)
            rows: list[StoredEvent] = [
                r
                for r in page.rows
                if (r.transaction_id, r.position) <= (old.last_transaction_id, old.last_position)
            ]
            builder.add(rows)
            cursor = page.cursor
        new = builder.seal(old.sealed_at)
        _, _, payload = DEFAULT_REGISTRY.encode(new)
        async with tampering(raw):
            await raw.execute(
                "UPDATE i3lani.events SET payload = $2::jsonb WHERE global_position = $1",
                recorded.position,
                payload.decode(),
            )
        previous = bytes.fromhex(new.hash)


async def test_a_consistent_rewrite_of_a_users_rewards_after_a_seal(
    store: EventStore, raw: asyncpg.Connection
) -> None:
    where, _ = await sealed_log(store)
    await rewrite_rewards(raw, where)
    report = await audit(store)
    assert report.clean  # the replay alone sees a consistent history
    assert report.summary.balances_total_nanotons == 100 * TON
    sealed = await audit(store, verify_seals=True)
    assert_named(sealed, where[("user-7", 1)], "(user-7 v1, RewardEarned) is not what seal 1")


async def test_a_rewrite_with_recomputed_seals_is_found_against_the_exported_digest(
    store: EventStore, raw: asyncpg.Connection, dsn: str, clean_env: dict[str, str]
) -> None:
    where = await put(store)
    await seal(store)
    await store.append("payment-5", [created(5)])
    await seal(store)  # two seals: the rewrite falls in the first, the chain carries it
    exported = await cli(dsn, clean_env, "seal", "--export")
    assert exported.returncode == 0, exported.stderr
    digest = exported.stdout.decode().strip()
    assert SealDigest.parse(digest).seal == 2

    await rewrite_rewards(raw, where)
    await reseal(store, raw)

    alone = await audit(store, verify_seals=True)
    assert alone.clean, alone.discrepancies  # consistent in itself: replay and seals agree
    result = await cli(dsn, clean_env, "audit", "--verify-seals", "--against", digest)
    assert result.returncode == 1
    text = result.stdout.decode()
    assert "seals: the log does NOT lead to the digest kept outside: it was rewritten" in text
    assert "digest-mismatch" in text
    result = await cli(dsn, clean_env, "audit", "--against", digest, "--format", "json")
    report = json.loads(result.stdout)
    assert report["seals"]["digest_matched"] is False
    assert [d["check"] for d in report["discrepancies"]] == ["digest-mismatch"]


async def test_the_sealer_actor_seals_a_postgresql_log(store: EventStore) -> None:
    await put(store)
    runner = ActorRunner(Sealer(SETTINGS), store, SystemClock(), node="n1")
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)

        async def sealed() -> bool:
            last = await store.last_event(SEAL_STREAM)
            return last is not None

        await eventually(sealed)
        tg.cancel_scope.cancel()
    report = await audit(store, verify_seals=True)
    assert report.clean, report.discrepancies
    assert report.seals is not None
    assert report.seals.events_verified == len(LOG)


# -- the commands -------------------------------------------------------------------------------
async def cli(dsn: str, env: dict[str, str], *args: str) -> Any:
    with anyio.fail_after(40):
        return await anyio.run_process(
            [I3LANI, *args], env={**env, "DATABASE_URL": dsn}, check=False
        )


async def test_seal_export_prints_the_latest_digest_and_says_when_there_is_none(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    none = await cli(dsn, clean_env, "seal", "--export")
    assert none.returncode == 1
    assert none.stdout == b""
    [line] = none.stderr.decode().splitlines()
    assert line.startswith("i3lani seal: the log has no seal yet")
    await put(store)
    last = await seal(store)
    exported = await cli(dsn, clean_env, "seal", "--export")
    assert exported.stdout.decode() == f"{SealDigest.of(last)}\n"
    shown = await cli(dsn, clean_env, "seal", "--json")
    document = msgspec.json.decode(shown.stdout)
    assert document["digest"] == str(SealDigest.of(last))
    assert (document["position"], document["events"]) == (last.last_position, len(LOG))
    summary = (await cli(dsn, clean_env, "seal")).stdout.decode()
    assert summary.startswith("seal 1\n")
    assert f"{len(LOG)} events after the start of the log" in summary
    assert str(SealDigest.of(last)) in summary
