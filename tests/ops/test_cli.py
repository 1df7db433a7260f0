"""The ``i3lani`` console script, run as a real subprocess against a real database."""

from __future__ import annotations

import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from anyio.abc import ByteReceiveStream, Process

from actors.health import health_samples
from events import (
    AlertRaised,
    EventMetadata,
    HealthCheck,
    PaymentCreated,
    PaymentExpired,
    RewardEarned,
)
from store import AppendResult, Cursor, EventStore, migrations, views
from store.database import with_database
from tests.waiting import eventually

I3LANI = str(Path(sys.executable).parent / "i3lani")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
WALLET = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
SECRET = "s3cret"


# -- events ---------------------------------------------------------------------------------
def payment_created(payment_id: int, amount_nanotons: int = 5_440_000_000) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=42,
        plan="basic",
        amount_nanotons=amount_nanotons,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW,
    )


def payment_expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


def reward(user_id: int, amount_nanotons: int = 1_500_000_000) -> RewardEarned:
    return RewardEarned(
        reward_id=uuid.uuid4(),
        user_id=user_id,
        amount_nanotons=amount_nanotons,
        reason="referral",
        source="test",
        earned_at=NOW,
    )


# -- running the command ----------------------------------------------------------------------
@dataclass(frozen=True)
class Cli:
    """The console script with DATABASE_URL set to this test's database."""

    database_url: str
    env: dict[str, str]

    def environment(self, database_url: str | None = None) -> dict[str, str]:
        return {**self.env, "DATABASE_URL": database_url or self.database_url}

    async def __call__(
        self, *args: str, database_url: str | None = None
    ) -> CompletedProcess[bytes]:
        with anyio.fail_after(40):
            return await anyio.run_process(
                [I3LANI, *args], env=self.environment(database_url), check=False
            )


@pytest.fixture
def cli(dsn: str, clean_env: dict[str, str]) -> Cli:
    return Cli(dsn, clean_env)


def lines(output: bytes) -> list[str]:
    return output.decode().splitlines()


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` in its user info (the test servers trust local users, so a
    password is accepted and ignored: it only has to stay out of the output)."""
    parts = urlsplit(dsn)
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else "postgres"
    netloc = f"{user}:{password}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database with no schema at all (the ``dsn`` fixture is already migrated)."""
    name = f"i3lani_e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_database(server_dsn, "postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def fill(store: EventStore) -> list[AppendResult]:
    """payment-1 v1, v2; user-42 v1; payment-10 v1 (a stream whose name extends payment-1)."""
    return [
        await store.append("payment-1", [payment_created(1)]),
        await store.append("payment-1", [payment_expired(1)]),
        await store.append(
            "user-42",
            [reward(42)],
            metadata=EventMetadata(caused_by="actor:ReferralTracker"),
        ),
        await store.append("payment-10", [payment_created(10, 2_000_000_001)]),
    ]


# -- migrate ----------------------------------------------------------------------------------
async def test_migrate_applies_once_then_reports_up_to_date(
    empty_dsn: str, clean_env: dict[str, str]
) -> None:
    cli = Cli(empty_dsn, clean_env)
    known = migrations()

    first = await cli("migrate")
    assert first.returncode == 0, first.stderr
    out = lines(first.stdout)
    assert out[: len(known)] == [f"applied {m.version:04d}_{m.name}" for m in known]
    assert out[-1] == f"schema is up to date ({len(known)} migrations)"

    second = await cli("migrate")
    assert second.returncode == 0, second.stderr
    assert lines(second.stdout) == [f"schema is up to date ({len(known)} migrations)"]
    assert second.stderr == b""

    conn = await asyncpg.connect(empty_dsn)
    try:
        versions = await conn.fetch("SELECT version FROM i3lani.schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    assert [row["version"] for row in versions] == [m.version for m in known]


# -- summary ----------------------------------------------------------------------------------
async def test_summary_of_an_empty_log(cli: Cli) -> None:
    result = await cli("summary")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "empty: 0 events" in text
    assert "no subscriber has stored a checkpoint yet" in text
    assert result.stderr == b""


async def test_summary_counts_events_per_type(cli: Cli, store: EventStore) -> None:
    appended = await fill(store)
    checkpoint = Cursor(appended[1].transaction_id, appended[1].last_position)
    await store.save_checkpoint("cli-test-subscriber", checkpoint, expected=None)

    result = await cli("summary")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    last = appended[-1].last_position
    assert f"4 events in 3 streams, last global position {last}" in text
    assert re.search(r"^\s+payment\s+PaymentCreated\s+2\s", text, re.MULTILINE), text
    assert re.search(r"^\s+payment\s+PaymentExpired\s+1\s", text, re.MULTILINE), text
    assert re.search(r"^\s+user\s+RewardEarned\s+1\s", text, re.MULTILINE), text
    # The subscriber is two events behind: user-42 and payment-10.
    at = appended[1].last_position
    assert re.search(rf"^\s+cli-test-subscriber\s+{at}\s+2\s", text, re.MULTILINE), text
    # The log's size on disk, indexes included, and how fast it grows.
    size = re.search(
        r"^  size +[\d.]+ kB on disk \(table [\d.]+ kB, indexes [\d.]+ kB\): ([\d,]+) bytes "
        r"per event; the database [\d.]+ MB in all$",
        text,
        re.MULTILINE,
    )
    assert size is not None, text
    growth = re.search(
        r"^  growth +about [\d.]+ [kM]B a day \(4 events in the last 24 h, 4 in the last 7 "
        r"days, from the \d+s the log has lived\); at this rate the log reaches 1 GB "
        r"(in [\d,]+ days|within a day)$",
        text,
        re.MULTILINE,
    )
    assert growth is not None, text


async def test_summary_does_not_print_the_password(cli: Cli, store: EventStore) -> None:
    await fill(store)
    result = await cli("summary", database_url=with_password(cli.database_url, SECRET))
    assert result.returncode == 0, result.stderr
    assert SECRET.encode() not in result.stdout + result.stderr
    assert b"***" in result.stdout
    assert b"4 events" in result.stdout


# -- events -----------------------------------------------------------------------------------
async def test_events_prints_one_readable_line_per_event(cli: Cli, store: EventStore) -> None:
    appended = await fill(store)
    result = await cli("events")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    out = lines(result.stdout)
    assert len(out) == 4

    expected = [
        ("payment-1 v1", "PaymentCreated", ["payment_id=1", "amount=5.44 TON", "plan=basic"]),
        ("payment-1 v2", "PaymentExpired", ["payment_id=1", "expired_at=2026-11-29T10:00:00Z"]),
        ("user-42 v1", "RewardEarned", ["amount=1.5 TON", "reason=referral"]),
        ("payment-10 v1", "PaymentCreated", ["payment_id=10", "amount=2.000000001 TON"]),
    ]
    for line, result_, (where, type_, fields) in zip(out, appended, expected, strict=True):
        assert line.startswith(f"#{result_.first_position} "), line
        assert f"  {where}  {type_}  " in line, line
        for field in fields:
            assert f" {field}" in line, line
        assert "_nanotons" not in line, line
        assert "5440000000" not in line, line
    assert out[2].endswith("[actor:ReferralTracker]")


async def test_events_json_is_one_object_per_line(cli: Cli, store: EventStore) -> None:
    appended = await fill(store)
    result = await cli("events", "--json")
    assert result.returncode == 0, result.stderr
    objects: list[dict[str, Any]] = [json.loads(line) for line in lines(result.stdout)]
    assert [o["position"] for o in objects] == [r.first_position for r in appended]
    assert [o["stream"] for o in objects] == ["payment-1", "payment-1", "user-42", "payment-10"]
    assert [o["version"] for o in objects] == [1, 2, 1, 1]
    assert [o["type"] for o in objects] == [
        "PaymentCreated",
        "PaymentExpired",
        "RewardEarned",
        "PaymentCreated",
    ]
    assert objects[0]["payload"]["amount_nanotons"] == 5_440_000_000
    assert objects[0]["payload"]["memo"] == "i3lani_1"
    assert objects[1]["payload"]["payment_id"] == 1
    assert objects[1]["payload"]["expired_at"] == "2026-11-29T10:00:00Z"
    assert objects[2]["metadata"]["caused_by"] == "actor:ReferralTracker"
    assert all(uuid.UUID(o["event_id"]) for o in objects)


async def test_events_of_one_stream(cli: Cli, store: EventStore) -> None:
    await fill(store)
    result = await cli("events", "--stream", "payment-1", "--json")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in lines(result.stdout)]
    assert [(o["stream"], o["version"]) for o in objects] == [("payment-1", 1), ("payment-1", 2)]


async def test_events_of_one_category(cli: Cli, store: EventStore) -> None:
    await fill(store)
    payments = await cli("events", "--category", "payment")
    assert payments.returncode == 0, payments.stderr
    streams = [line.split()[3] for line in lines(payments.stdout)]
    assert streams == ["payment-1", "payment-1", "payment-10"]

    users = await cli("events", "--category", "user")
    assert users.returncode == 0, users.stderr
    assert [line.split()[3] for line in lines(users.stdout)] == ["user-42"]

    nothing = await cli("events", "--category", "channel")
    assert nothing.returncode == 0
    assert nothing.stdout == b""
    assert lines(nothing.stderr) == ["no events"]


async def test_events_after_a_position(cli: Cli, store: EventStore) -> None:
    appended = await fill(store)
    after = appended[1].last_position
    result = await cli("events", "--after", str(after), "--json")
    assert result.returncode == 0, result.stderr
    positions = [json.loads(line)["position"] for line in lines(result.stdout)]
    assert positions == [r.first_position for r in appended[2:]]

    from_start = await cli("events", "--after", "0", "--json")
    assert len(lines(from_start.stdout)) == 4


async def test_events_limit(cli: Cli, store: EventStore) -> None:
    appended = await fill(store)
    two = await cli("events", "--limit", "2", "--json")
    assert two.returncode == 0, two.stderr
    positions = [json.loads(line)["position"] for line in lines(two.stdout)]
    assert positions == [r.first_position for r in appended[:2]]

    # "print at most 0 events" prints none.
    zero = await cli("events", "--limit", "0", "--json")
    assert zero.returncode == 0, zero.stderr
    assert zero.stdout == b""


async def test_events_after_a_position_that_does_not_exist(cli: Cli, store: EventStore) -> None:
    await fill(store)
    result = await cli("events", "--after", "999999")
    assert result.returncode == 2
    assert result.stdout == b""
    [message] = lines(result.stderr)
    assert message.startswith("i3lani events: ")
    assert "999999" in message


async def test_events_does_not_silently_omit_events_behind_an_open_transaction(
    cli: Cli, store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    """A one-shot ``events`` must show a committed event, or say why it cannot yet: an open
    write transaction elsewhere (here on ``raw``; it could be in any database of the server)
    is no reason to print the log as if the event did not exist."""
    first = await store.append("payment-1", [payment_created(1)])
    results: list[CompletedProcess[bytes]] = []
    finished = anyio.Event()

    async def run() -> None:
        results.append(await cli("events"))
        finished.set()

    other = raw.transaction()
    await other.start()
    try:
        await raw.fetchval("SELECT pg_current_xact_id()")  # an open writer, like any other
        second = await store.append("payment-1", [payment_expired(1)])
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.move_on_after(3):  # waiting for it is one acceptable answer
                await finished.wait()
            await other.commit()
    except BaseException:
        if raw.is_in_transaction():
            await other.rollback()
        raise
    [result] = results
    assert result.returncode == 0, result.stderr
    stdout, stderr = result.stdout.decode(), result.stderr.decode().lower()
    assert f"#{first.first_position} " in stdout
    shown = f"#{second.first_position} " in stdout
    explained = "held back" in stderr or "open transaction" in stderr
    assert shown or explained, (stdout, stderr)


# -- errors -----------------------------------------------------------------------------------
def _bad_urls(server_dsn: str) -> dict[str, str]:
    return {
        "not postgresql": "mysql://x",
        "connection refused": f"postgresql://user:{SECRET}@127.0.0.1:1/nope",
        "port out of range": f"postgresql://user:{SECRET}@127.0.0.1:99999/nope",
        "no such database": with_password(with_database(server_dsn, "i3lani_no_such_db"), SECRET),
    }


@pytest.mark.parametrize("command", ["migrate", "summary", "events"])
@pytest.mark.parametrize(
    "case", ["not postgresql", "connection refused", "port out of range", "no such database"]
)
async def test_a_bad_database_url_is_one_line_without_the_password(
    server_dsn: str, clean_env: dict[str, str], command: str, case: str
) -> None:
    url = _bad_urls(server_dsn)[case]
    result = await Cli(url, clean_env)(command)
    assert result.returncode != 0
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert SECRET not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"i3lani {command}: "), stderr


async def test_an_unknown_subcommand_is_a_usage_error(cli: Cli) -> None:
    result = await cli("frobnicate")
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"invalid choice: 'frobnicate'" in result.stderr


async def test_no_subcommand_is_a_usage_error(cli: Cli) -> None:
    result = await cli()
    assert result.returncode == 2
    assert b"usage: i3lani" in result.stderr


# -- events --follow ------------------------------------------------------------------------
class LineReader:
    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def until(self, needle: str) -> str:
        """Read lines until one contains ``needle``; return it."""
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode()
                self.seen.append(line)
                if needle in line:
                    return line
            self.buffer += await self.stream.receive()


async def drain(stream: ByteReceiveStream | None) -> bytes:
    data = b""
    if stream is None:
        return data
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return data


async def test_events_follow_prints_new_events_until_interrupted(
    cli: Cli, store: EventStore
) -> None:
    await store.append("payment-1", [payment_created(1)])
    process: Process = await anyio.open_process(
        [I3LANI, "events", "--follow"], env=cli.environment()
    )
    try:
        assert process.stdout is not None
        reader = LineReader(process.stdout)
        with anyio.fail_after(20):
            first = await reader.until("payment-1 v1")
        assert "PaymentCreated" in first
        assert "amount=5.44 TON" in first

        appended = await store.append("payment-1", [payment_expired(1)])
        with anyio.fail_after(20):
            live = await reader.until("payment-1 v2")
        assert live.startswith(f"#{appended.first_position} ")
        assert "PaymentExpired" in live

        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            code = await process.wait()
            stderr = await drain(process.stderr)
        assert code in (0, 130)
        assert b"Traceback" not in stderr, stderr.decode()
        assert len(reader.seen) == 2
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(5):
                await process.wait()
        await process.aclose()


# -- run: configuration errors, status: the task queue ------------------------------------------
async def test_run_without_a_wallet_is_one_clear_line(cli: Cli) -> None:
    result = await cli("run", "--actors", "PaymentMonitor")
    assert result.returncode == 1
    [line] = lines(result.stderr)
    assert line.startswith("i3lani run: WALLET_ADDRESS is not set")


async def test_run_with_a_malformed_setting_is_one_clear_line(cli: Cli) -> None:
    env = {
        **cli.environment(),
        "WALLET_ADDRESS": WALLET,
        "BOT_TOKEN": "1:x",
        "I3LANI_ACTIVE_SHARE": "lots",
    }
    with anyio.fail_after(40):
        result = await anyio.run_process([I3LANI, "run"], env=env, check=False)
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "i3lani run: I3LANI_ACTIVE_SHARE must be a decimal from 0 to 1 such as 0.45 (a dot, no "
        "sign, no exponent), got 'lots'"
    ]


async def test_every_problem_is_reported_at_once_before_any_server_starts(
    cli: Cli, tmp_path: Path
) -> None:
    """Five variables wrong: five lines, one each, and the embedded server never started (its
    data directory was not even made, and nothing of it reached the terminal)."""
    env = {k: v for k, v in cli.environment().items() if k != "DATABASE_URL"}
    env |= {
        "I3LANI_HOME": str(tmp_path / "home"),
        "WALLET_ADDRESS": "EQ-not-an-address",
        "I3LANI_LEASE_TTL": "soon",
        "I3LANI_PLANS": "week:7",
        "I3LANI_LOG_LEVEL": "LOUD",
    }
    env.pop("BOT_TOKEN", None)
    with anyio.fail_after(40):
        result = await anyio.run_process([I3LANI, "run"], env=env, check=False)
    assert result.returncode == 1
    assert result.stdout == b""
    found = lines(result.stderr)
    assert [line.split(":")[1].split()[0] for line in found] == [
        "I3LANI_LOG_LEVEL",
        "I3LANI_LEASE_TTL",
        "WALLET_ADDRESS",
        "I3LANI_PLANS",
        "BOT_TOKEN",
    ]
    assert all(line.startswith("i3lani run: ") for line in found)
    assert not (tmp_path / "home").exists()


async def test_database_names_another_database_of_the_server(cli: Cli, store: EventStore) -> None:
    await store.append("payment-7", [payment_created(7)])
    database = urlsplit(cli.database_url).path.removeprefix("/")
    other = with_database(cli.database_url, "postgres")
    shown = await cli("events", "--database", database, database_url=other)
    assert shown.returncode == 0, shown.stderr.decode()
    assert "PaymentCreated" in shown.stdout.decode()
    missing = await cli("status", "--database", "no_such_db", database_url=other)
    assert missing.returncode == 1
    assert missing.stdout == b""
    assert lines(missing.stderr) == [
        "i3lani status: --database no_such_db: the server has no such database (`i3lani demo` "
        "and `i3lani dev` make theirs: i3lani_demo, i3lani_dev)"
    ]


async def test_status_still_answers_when_the_workers_settings_are_malformed(cli: Cli) -> None:
    """An operator looking into a worker that refuses its settings can still look."""
    env = {**cli.environment(), "WALLET_ADDRESS": "EQ-oops", "I3LANI_PLANS": "week:7"}
    with anyio.fail_after(40):
        status = await anyio.run_process([I3LANI, "status"], env=env, check=False)
        run = await anyio.run_process([I3LANI, "run"], env=env, check=False)
    assert status.returncode == 0, status.stderr.decode()
    assert run.returncode == 1
    assert [line.split(":")[1].split()[0] for line in lines(run.stderr)] == [
        "WALLET_ADDRESS",
        "I3LANI_PLANS",
        "BOT_TOKEN",
    ]


@pytest.mark.process
async def test_the_embedded_servers_messages_go_to_a_file_not_the_terminal(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    """Even at INFO, a command on a fresh embedded server says only what i3lani does; the
    starter's pg_ctl and initdb output (some 70 lines) is in $I3LANI_HOME/embedded-postgres.log."""
    home = tmp_path / "home"
    env = {**clean_env, "I3LANI_HOME": str(home), "I3LANI_LOG_LEVEL": "INFO"}
    with anyio.fail_after(60):
        result = await anyio.run_process([I3LANI, "migrate"], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    said = lines(result.stderr)
    assert said, "INFO shows what i3lani itself does"
    assert all(" INFO store." in line for line in said), said
    assert "pg_ctl" in (home / "embedded-postgres.log").read_text()


async def test_status_lists_queued_work_and_dead_letters(cli: Cli, store: EventStore) -> None:
    import msgspec

    from actors.tasks import REWARD_DISTRIBUTION, task_types
    from store.tasks import RetryPolicy, TaskContext, TaskProcessor, TaskQueue

    class Refund(msgspec.Struct, frozen=True):
        user_id: int

    queue = TaskQueue(store, task_types())
    await queue.add_task(
        REWARD_DISTRIBUTION, {"reward_id": str(uuid.uuid4()), "user_id": 7, "amount_nanotons": 5}
    )
    # A task that fails on its only attempt, run by a real processor: dead-lettered.
    queue.types.register("refund", Refund, retry=RetryPolicy(max_attempts=1))
    dead = await queue.add_task("refund", Refund(user_id=8))
    processor = TaskProcessor(queue, node="test", types=["refund"])

    async def refuse(payload: Refund, context: TaskContext) -> None:
        raise RuntimeError(f"user {payload.user_id} has no wallet on file")

    processor.register_handler("refund", refuse)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)

        async def dead_lettered() -> bool:
            return bool(await queue.dead_letters())

        await eventually(dead_lettered)
        tg.cancel_scope.cancel()

    result = await cli("status")
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    [row] = [line for line in lines(result.stdout) if line.startswith("reward_distribution")]
    assert row.split()[1:5] == ["1", "1", "0", "0"]  # queued, due, running, dead
    [row] = [line for line in lines(result.stdout) if line.startswith("refund")]
    assert row.split()[1:5] == ["0", "0", "0", "1"]
    assert f"task {dead} refund, 1 attempt(s)" in text
    assert "user 8 has no wallet on file" in text
    report = json.loads((await cli("status", "--json")).stdout)
    assert {a["actor"] for a in report["actors"]} >= {"PaymentMonitor", "HealthChecker"}
    assert report["dead_letters"][0]["id"] == dead


async def test_retry_task_requeues_a_dead_letter_once(cli: Cli, store: EventStore) -> None:
    import msgspec

    from store.tasks import RetryPolicy, TaskContext, TaskProcessor, TaskQueue, TaskTypes

    class Refund(msgspec.Struct, frozen=True):
        user_id: int

    types = TaskTypes()
    types.register("refund", Refund, retry=RetryPolicy(max_attempts=1))
    queue = TaskQueue(store, types)
    dead = await queue.add_task("refund", Refund(user_id=8))
    processor = TaskProcessor(queue, node="test", types=["refund"])

    async def refuse(payload: Refund, context: TaskContext) -> None:
        raise RuntimeError("no wallet on file")

    processor.register_handler("refund", refuse)
    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)

        async def dead_lettered() -> bool:
            return bool(await queue.dead_letters())

        await eventually(dead_lettered)
        tg.cancel_scope.cancel()

    result = await cli("retry-task", str(dead))
    assert result.returncode == 0, result.stderr.decode()
    assert lines(result.stdout) == [
        f"task {dead} (refund) re-queued with 1 fresh attempt(s); `i3lani status` shows how it goes"
    ]
    info = await queue.get(dead)
    assert info is not None
    assert info.status == "queued"
    again = await cli("retry-task", str(dead))
    assert again.returncode == 1
    assert len(lines(again.stderr)) == 1
    missing = await cli("retry-task", "999999")
    assert missing.returncode == 1
    assert "999999" in missing.stderr.decode()
    bad = await cli("retry-task", "seven")
    assert bad.returncode == 2
    assert "a task id is a whole number" in bad.stderr.decode()


async def test_status_marks_a_suspect_lease_and_readers_held_back(
    cli: Cli, store: EventStore, raw: asyncpg.Connection
) -> None:
    from events import ActorStarted
    from store.leases import Leases

    lease = await Leases(store, "vm:9/abcd", ttl=60).acquire("PaymentMonitor")
    assert lease is not None
    await store.append(
        "actor-PaymentMonitor",
        [
            ActorStarted(
                actor="PaymentMonitor",
                node="vm:9",
                generation=lease.generation,
                started_at=datetime.now(UTC),
            )
        ],
    )
    # Held and live, but its last renewal was 70 s ago: the node stopped renewing.
    await raw.execute(
        "UPDATE i3lani.leases SET renewed_at = now() - interval '70 seconds',"
        " expires_at = now() + interval '30 seconds' WHERE name = 'PaymentMonitor'"
    )
    # A write transaction left open (a frozen client), and an event committed after it.
    async with raw.transaction():
        await raw.fetchval("SELECT pg_current_xact_id()")  # it has written: it has an xid
        pid = await raw.fetchval("SELECT pg_backend_pid()")
        await store.append(
            "note-1",
            [
                AlertRaised(
                    alert_id=uuid.uuid4(),
                    kind="probe",
                    subject="readers",
                    message="committed behind it",
                    raised_at=datetime.now(UTC),
                )
            ],
        )
        result = await cli("status")
        report = json.loads((await cli("status", "--json")).stdout)
    assert result.returncode == 0, result.stderr.decode()
    [row] = [line for line in lines(result.stdout) if line.startswith("PaymentMonitor")]
    assert "suspect (7" in row, row  # 70 s and counting
    [readers] = [line for line in lines(result.stdout) if line.startswith("READERS")]
    assert readers.startswith("READERS: held back: 1 committed event(s) wait behind"), readers
    assert f"pid {pid} " in readers
    assert "idle in transaction" in readers
    assert report["readers_held_back"] is True
    assert report["oldest_writer"]["pid"] == pid
    [monitor] = [a for a in report["actors"] if a["actor"] == "PaymentMonitor"]
    assert monitor["lease_suspect"] is True

    calm = await cli("status")
    [readers] = [line for line in lines(calm.stdout) if line.startswith("READERS")]
    assert readers.startswith("READERS: not held back"), readers


async def test_status_shows_each_process_connections(cli: Cli, dsn: str) -> None:
    # A worker-shaped store: its pool in use, and a follower on its LISTEN connection.
    async with (
        EventStore.open(dsn, node="vm:77") as worker,
        worker.subscribe(category="payment"),
    ):
        result = await cli("status")
        report = json.loads((await cli("status", "--json")).stdout)
    assert result.returncode == 0, result.stderr.decode()
    text = lines(result.stdout)
    [header] = [line for line in text if line.startswith("CONNECTIONS")]
    assert "of the server's" in header
    [row] = [line for line in text if line.strip().startswith("vm:77")]
    assert "1 LISTEN" in row, row
    assert "pooled" in row, row
    [node] = [n for n in report["connections"]["nodes"] if n["node"] == "vm:77"]
    assert node["listen"] == 1
    assert 1 <= node["work"] <= 6
    assert report["connections"]["server_in_use"] <= report["connections"]["server_max"]


async def test_run_refuses_a_budget_of_connections_that_cannot_work(cli: Cli) -> None:
    env = {**cli.environment(), "I3LANI_MAX_CONNECTIONS": "2"}
    with anyio.fail_after(40):
        result = await anyio.run_process(
            [I3LANI, "run", "--actors", "Heartbeat"], env=env, check=False
        )
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "i3lani run: I3LANI_MAX_CONNECTIONS must be between 3 and 1000 (one LISTEN connection, "
        "one for leases, at least one for the rest), got 2"
    ]


async def test_run_refuses_a_timeout_that_would_outlast_the_lease(cli: Cli) -> None:
    env = {**cli.environment(), "I3LANI_IDLE_TX_TIMEOUT": "9"}
    with anyio.fail_after(40):
        result = await anyio.run_process(
            [I3LANI, "run", "--actors", "Heartbeat"], env=env, check=False
        )
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "i3lani run: I3LANI_IDLE_TX_TIMEOUT (9s) must be shorter than I3LANI_LEASE_TTL (8s): "
        "a frozen node would hold its locks past its lease"
    ]


# -- health -----------------------------------------------------------------------------------
async def test_health_marks_a_warning_and_counts_it_in_a_healthy_verdict(
    cli: Cli, store: EventStore
) -> None:
    checks = [
        HealthCheck(name="database", ok=True, latency_ms=1.5),
        HealthCheck(
            name="stream",
            ok=True,
            detail="warning: not subscribed for 90s (HTTP 429); polling every 30s confirms "
            "payments meanwhile",
        ),
    ]
    await views.record_health_samples(store, health_samples(checks, datetime.now(UTC)))
    result = await cli("health")
    assert result.returncode == 0, result.stderr
    [verdict, database, stream] = lines(result.stdout)
    assert verdict.startswith("healthy, 1 warning (checked ")
    assert database.split()[:2] == ["ok", "database"]
    assert stream.split()[:3] == ["warn", "stream", "warning:"]
