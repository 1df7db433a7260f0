"""The fault tests' PostgreSQL proxy (:mod:`tests.faults.pgproxy`): pass-through, cut and heal,
the trigger before COMMIT, and a server that goes away during a cut."""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest
from anyio.abc import SocketStream

from tests.faults.pgproxy import PgProxy, _Frontend
from tests.waiting import eventually

CONNECTION_ERRORS = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)
LIMIT = 15  # seconds: each test takes well under one; a hang fails fast and closes the proxy
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def query(sql: str) -> bytes:
    """A simple-protocol Query message."""
    body = sql.encode() + b"\0"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


def startup(dsn: str) -> bytes:
    parts = urlsplit(dsn)
    params = f"user\0{parts.username or 'postgres'}\0database\0{parts.path[1:]}\0\0".encode()
    return (len(params) + 8).to_bytes(4, "big") + (196608).to_bytes(4, "big") + params


async def until_ready(stream: SocketStream, buffer: bytearray) -> list[bytes]:
    """Read server messages up to ReadyForQuery; return their type bytes (``Z`` + status last)."""
    kinds: list[bytes] = []
    while True:
        while len(buffer) < 5 or len(buffer) < 1 + int.from_bytes(buffer[1:5], "big"):
            buffer += await stream.receive()
        size = 1 + int.from_bytes(buffer[1:5], "big")
        message = bytes(buffer[:size])
        del buffer[:size]
        kinds.append(message[:1])
        if message[:1] == b"Z":
            return [*kinds, message[5:6]]


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_frontend_parser_keeps_message_boundaries_across_reads(step: int) -> None:
    stream = SSL_REQUEST + startup("postgresql://u@h/db")
    stream += query("BEGIN") + query("INSERT INTO t VALUES (1)") + query("  commit;")
    stream += b"X\0\0\0\4"
    parser = _Frontend()
    out = [m for i in range(0, len(stream), step) for m in parser.feed(stream[i : i + step])]
    assert b"".join(m for m, _ in out) == stream
    assert [m[:1] for m, _ in out][-4:] == [b"Q", b"Q", b"Q", b"X"]
    assert [c for _, c in out] == [False, False, False, False, True, False]


async def test_queries_pass_through(dsn: str) -> None:
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            # ssl="prefer" (asyncpg's default): the SSLRequest goes first, the server answers N.
            conn = await asyncpg.connect(proxy.dsn_for(dsn), ssl="prefer")
            try:
                assert await conn.fetchval("SELECT 1") == 1
                assert await conn.fetchval("SELECT $1::text", "x" * 100_000) == "x" * 100_000
            finally:
                await conn.close()
            assert proxy.connections == 1
            via, direct = urlsplit(proxy.dsn_for(dsn)), urlsplit(dsn)
            assert (via.hostname, via.port) == ("127.0.0.1", proxy.port)
            assert (via.username, via.path) == (direct.username, direct.path)
            assert "host=" not in via.query  # a Unix-socket DSN (the embedded server) goes via TCP


async def test_cut_holds_everything_and_heal_delivers_it(dsn: str) -> None:
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            target = proxy.dsn_for(dsn)
            lost, held = await asyncpg.connect(target), await asyncpg.connect(target)
            try:
                proxy.cut()
                with anyio.move_on_after(0.5) as scope:
                    await lost.fetchval("SELECT 1")
                assert scope.cancelled_caught
                lost.terminate()  # its protocol state is unknown after the cancel

                result: list[object] = []
                late: list[asyncpg.Connection] = []

                async def select() -> None:
                    result.append(await held.fetchval("SELECT 2"))

                async def connect() -> None:
                    late.append(await asyncpg.connect(target))

                with anyio.fail_after(5):
                    async with anyio.create_task_group() as group:
                        group.start_soon(select)
                        group.start_soon(connect)
                        await anyio.sleep(0.3)
                        assert result == []
                        assert late == []
                        assert proxy.held_bytes() > 0
                        assert proxy.connections >= 3  # accepted and connected, but nothing flows
                        proxy.heal()  # the group then waits for both
                assert result == [2]
                assert await late[0].fetchval("SELECT 3") == 3
                await late[0].close()
                assert proxy.held_bytes() == 0
            finally:
                held.terminate()  # not close(): that would wait forever on a cut proxy


async def test_cut_before_commit(dsn: str, raw: asyncpg.Connection) -> None:
    await raw.execute("CREATE TABLE proxy_probe (n int)")
    calls: list[str] = []
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            conn = await asyncpg.connect(proxy.dsn_for(dsn))
            try:
                pid = conn.get_server_pid()
                caught = proxy.cut_before_commit(lambda: calls.append("action"))
                committed = anyio.Event()

                async def transaction() -> None:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO proxy_probe VALUES (1)")
                    committed.set()

                async with anyio.create_task_group() as group:
                    group.start_soon(transaction)
                    with anyio.fail_after(5):
                        await caught.wait()
                    assert caught is proxy.commit_caught
                    assert calls == ["action"]
                    assert proxy.is_cut
                    await anyio.sleep(0.3)
                    assert not committed.is_set()
                    state = await raw.fetchval(
                        "SELECT state FROM pg_stat_activity WHERE pid = $1", pid
                    )
                    assert state == "idle in transaction"
                    assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 0
                    assert proxy.held_bytes() == len(query("COMMIT;"))  # asyncpg's COMMIT
                    proxy.heal()
                    with anyio.fail_after(5):
                        await committed.wait()
                assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 1
                with anyio.fail_after(5):  # the trigger is one-shot: this COMMIT goes through
                    async with conn.transaction():
                        await conn.execute("INSERT INTO proxy_probe VALUES (2)")
                assert calls == ["action"]
            finally:
                conn.terminate()


async def test_cut_before_commit_of_writes_only_lets_read_only_transactions_through(
    dsn: str, raw: asyncpg.Connection
) -> None:
    """The proxy tells a transaction that may write (a prepared INSERT, seen through its Parse
    and Bind) from one that only read, without asking the server."""
    await raw.execute("CREATE TABLE proxy_probe (n int)")
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            conn = await asyncpg.connect(proxy.dsn_for(dsn))
            try:
                insert = await conn.prepare("INSERT INTO proxy_probe VALUES ($1)")
                caught = proxy.cut_before_commit(only_writes=True)
                for _ in range(2):  # read-only: their COMMITs go through
                    with anyio.fail_after(5):
                        async with conn.transaction():
                            await conn.fetchval("SELECT count(*) FROM proxy_probe")
                assert not caught.is_set()
                committed = anyio.Event()

                async def transaction() -> None:
                    async with conn.transaction():
                        await insert.fetchval(7)  # Bind of the statement prepared above
                    committed.set()

                async with anyio.create_task_group() as group:
                    group.start_soon(transaction)
                    with anyio.fail_after(5):
                        await caught.wait()
                    assert proxy.is_cut
                    await anyio.sleep(0.2)
                    assert not committed.is_set()
                    assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 0
                    proxy.heal()
                    with anyio.fail_after(5):
                        await committed.wait()
                assert await raw.fetchval("SELECT n FROM proxy_probe") == 7
            finally:
                conn.terminate()


def test_frontend_parser_follows_writes_through_parse_and_bind() -> None:
    def message(kind: bytes, body: bytes) -> bytes:
        return kind + (len(body) + 4).to_bytes(4, "big") + body

    parser = _Frontend()
    list(parser.feed(startup("postgresql://u@h/db")))
    steps = [
        (query("BEGIN"), False),
        (message(b"P", b"s1\0SELECT * FROM i3lani.events FOR UPDATE\0\0\0"), False),
        (message(b"P", b"s2\0SELECT 1\0\0\0"), False),
        (message(b"B", b"\0s2\0\0\0\0\0\0\0"), False),  # a read
        (message(b"B", b"\0s1\0\0\0\0\0\0\0"), True),  # a row lock: may write
        (query("ROLLBACK"), False),
        (query("BEGIN"), False),
        (query("SELECT i3lani.task_cycle(1)"), True),  # i3lani's functions may write
    ]
    for data, wrote in steps:
        list(parser.feed(data))
        assert parser.wrote is wrote, data


async def test_cut_before_commit_of_one_connection_leaves_the_others_flowing(
    dsn: str, raw: asyncpg.Connection
) -> None:
    # A client paused right before its COMMIT: that connection is held, the others are not.
    await raw.execute("CREATE TABLE proxy_probe (n int)")
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            first = await asyncpg.connect(proxy.dsn_for(dsn))
            other = await asyncpg.connect(proxy.dsn_for(dsn))
            try:
                caught = proxy.cut_before_commit(only_that_connection=True)
                committed = anyio.Event()

                async def transaction() -> None:
                    async with first.transaction():
                        await first.execute("INSERT INTO proxy_probe VALUES (1)")
                    committed.set()

                async with anyio.create_task_group() as group:
                    group.start_soon(transaction)
                    with anyio.fail_after(5):
                        await caught.wait()
                    assert not proxy.is_cut
                    with anyio.fail_after(5):  # another connection is not held
                        assert await other.fetchval("SELECT 41 + 1") == 42
                    await anyio.sleep(0.2)
                    assert not committed.is_set()
                    assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 0
                    proxy.heal()
                    with anyio.fail_after(5):
                        await committed.wait()
                assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 1
            finally:
                first.terminate()
                other.terminate()


async def test_messages_before_commit_in_the_same_read_go_through(
    dsn: str, raw: asyncpg.Connection
) -> None:
    await raw.execute("CREATE TABLE proxy_probe (n int)")
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
            async with stream:
                buffer = bytearray()
                await stream.send(SSL_REQUEST)
                assert await stream.receive(1) == b"N"
                await stream.send(startup(dsn))
                assert (await until_ready(stream, buffer))[-2:] == [b"Z", b"I"]

                caught = proxy.cut_before_commit()
                commit = query("COMMIT;")
                batch = query("BEGIN") + query("INSERT INTO proxy_probe VALUES (1)") + commit
                batch += query("SELECT 1")
                middle = len(query("BEGIN")) + 5  # inside the INSERT
                with anyio.fail_after(5):
                    await stream.send(batch[:10])
                    await anyio.sleep(0.05)  # a separate read on the proxy's side
                    await stream.send(batch[10:middle])
                    assert (await until_ready(stream, buffer))[-1] == b"T"  # BEGIN, answered
                    # The INSERT's end, the COMMIT and a SELECT: one write, most likely one read.
                    await stream.send(batch[middle:])
                    await caught.wait()

                async def insert_ran() -> bool:
                    # The INSERT came in the same read as the COMMIT, and still reached the server
                    # (whose answer the cut now holds).
                    sql = "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
                    sql += " AND query LIKE 'INSERT INTO proxy_probe%'"
                    return bool(await raw.fetchval(sql) == "idle in transaction")

                await eventually(insert_ran, within=2)
                assert proxy.held_bytes() > len(commit) + len(query("SELECT 1"))
                assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 0
                proxy.heal()
                with anyio.fail_after(5):
                    assert (await until_ready(stream, buffer))[-1] == b"T"  # INSERT
                    assert (await until_ready(stream, buffer))[-1] == b"I"  # COMMIT
                    assert (await until_ready(stream, buffer))[-1] == b"I"  # SELECT 1
                assert await raw.fetchval("SELECT count(*) FROM proxy_probe") == 1
                await stream.send(b"X\0\0\0\4")


async def test_server_gone_during_cut_closes_client_at_heal(
    dsn: str, raw: asyncpg.Connection
) -> None:
    with anyio.fail_after(LIMIT):
        async with PgProxy.for_dsn(dsn) as proxy:
            conn = await asyncpg.connect(proxy.dsn_for(dsn))
            try:
                pid = conn.get_server_pid()
                proxy.cut()
                assert await raw.fetchval("SELECT pg_terminate_backend($1)", pid)

                async def backend_gone() -> bool:
                    sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
                    return bool(await raw.fetchval(sql, pid) == 0)

                await eventually(backend_gone, within=5)
                await anyio.sleep(0.2)
                assert not conn.is_closed()  # the client saw nothing: the proxy closes nothing
                assert proxy.held_bytes() > 0  # the server's FATAL message, held

                proxy.heal()

                async def client_closed() -> bool:
                    return conn.is_closed()

                await eventually(client_closed, within=5)
                with pytest.raises(CONNECTION_ERRORS), anyio.fail_after(5):
                    await conn.fetchval("SELECT 1")
            finally:
                conn.terminate()
