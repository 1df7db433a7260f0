"""A TCP proxy between a client and PostgreSQL that can cut the network without closing anything.

::

    async with PgProxy.for_dsn(dsn) as proxy:
        conn = await asyncpg.connect(proxy.dsn_for(dsn))
        proxy.cut()        # nothing flows either way; every socket stays open
        proxy.heal()       # what was held is delivered, in order; traffic flows again

What :meth:`PgProxy.cut` simulates is a network partition (a pulled cable, a dead switch): bytes
sent by either side are read and held in memory, as TCP retransmission would deliver them once
the path is back, and new connections are accepted and connected upstream but carry nothing. If
the server closes its side during the cut (``pg_terminate_backend``, a restart), the proxy
remembers it; at :meth:`PgProxy.heal` it delivers what the server sent before closing, drops
what the client sent meanwhile and closes the client's socket, which is what the client would
see once its retransmissions reached a server that has forgotten the connection.

:meth:`PgProxy.cut_before_commit` stops the world at "a client is about to COMMIT": the proxy
follows the frontend protocol on the client's side (SSLRequest/GSSENCRequest, which a local
server answers ``N``, the StartupMessage, then typed messages) and, on the first simple Query on
any connection whose text starts with ``COMMIT`` (what asyncpg's ``conn.transaction()`` sends),
holds that message, cuts, and calls the test's action (say, SIGSTOP to the client's process).
Everything before that message is forwarded.

Limits. This is a userspace proxy: both kernels see a live TCP peer (the proxy) that
acknowledges every byte, so TCP keepalives and ``tcp_user_timeout`` cannot notice the cut;
timeouts above TCP still run (the client's own, and the server's
``idle_in_transaction_session_timeout``). Bytes are held without limit. Only simple-protocol
COMMITs at the start of a Query are caught (not ``BEGIN; ...; COMMIT`` in one Query, nor COMMIT
through Parse/Execute), and only on unencrypted connections: once the client sends what cannot
be a startup packet (a TLS or GSS handshake after an ``S``/``G`` answer, or a CancelRequest), the
stream is forwarded as opaque bytes. The upstream may be a TCP host or, like the embedded
server's ``?host=/dir`` DSN, a Unix-socket directory. A query cancelled during a cut: asyncpg
sends its CancelRequest on a new connection to the same address, through the proxy, so that is
held too; drop such a connection with ``conn.terminate()``, not ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

__all__ = ["PgProxy"]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_STARTUP_MAX = 10_000  # bytes: a longer "startup packet" is not one (a TLS record, say)
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class _Stream(Protocol):
    """What the proxy does with a socket: anyio's TCP stream, or :class:`_UnixStream`."""

    async def receive(self) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def aclose(self) -> None: ...


class _UnixStream:
    """A Unix-socket connection on asyncio's streams. anyio's own (``connect_unix``) waits for
    readability with a future that a late reader callback may set after a cancellation
    cancelled it, which asyncio reports as InvalidStateError "in a callback": cancelling a
    read is routine here (every cut and heal does it), so it would fail the scenarios now and
    then. asyncio's stream reader is cancellation-safe."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, path: str) -> _UnixStream:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def receive(self) -> bytes:
        data = await self._reader.read(65536)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._writer.is_closing():
            raise anyio.ClosedResourceError
        self._writer.write(item)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        # A peer that reset the connection leaves it closed all the same.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1), contextlib.suppress(OSError):
            await self._writer.wait_closed()


_WRITE = re.compile(
    rb"\b(insert|update|delete|merge)\b|\bfor\s+(no\s+key\s+)?update\b|\bi3lani\.\w+\s*\(",
    re.IGNORECASE,
)
"""SQL that may write (and so give the transaction an xid and row locks): a DML statement, a
row lock, or a call of one of i3lani's functions (some of which write). Generous on purpose:
a transaction flagged by it is checked against the server (see tests/faults/hangs.py)."""


def _cstring(body: bytes, start: int) -> tuple[bytes, int]:
    end = body.find(b"\0", start)
    end = len(body) if end < 0 else end
    return body[start:end], end + 1


class _Frontend:
    """Splits the client->server stream into whole messages, flagging a ``COMMIT`` Query, and
    follows whether the transaction in progress ran a statement that may write (:data:`_WRITE`,
    through a simple Query, or a Bind of a statement whose Parse it saw)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._startup = True  # before the StartupMessage: packets have no type byte
        self._opaque = False  # encrypted or not understood: passed through as is
        self._statements: dict[bytes, bool] = {}  # prepared statement name -> may write
        self.wrote = False  # the transaction in progress ran a statement that may write

    def _follow(self, message: bytes) -> bool:
        """Note what ``message`` (a typed one) does to the transaction; True for a COMMIT."""
        kind, body = message[:1], message[5:]
        if kind == b"Q":
            sql = body.rstrip(b"\0").lstrip()
            head = sql[:20].upper()
            if _is_commit(body):
                return True
            if head.startswith((b"BEGIN", b"START TRANSACTION", b"ROLLBACK", b"ABORT")):
                self.wrote = False
            elif _WRITE.search(sql):
                self.wrote = True
        elif kind == b"P":
            name, at = _cstring(body, 0)
            query, _ = _cstring(body, at)
            self._statements[name] = bool(_WRITE.search(query))
        elif kind == b"B":
            _portal, at = _cstring(body, 0)
            statement, _ = _cstring(body, at)
            if self._statements.get(statement, False):
                self.wrote = True
        return False

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """Yield ``(bytes, is_commit)`` for every message completed by ``data``."""
        if self._opaque:
            yield data, False
            return
        self._buffer += data
        while True:
            start = 0 if self._startup else 1  # typed messages: 1 type byte, then the length
            if len(self._buffer) < start + 4:
                return
            length = int.from_bytes(self._buffer[start : start + 4], "big")
            if length < 4 or (self._startup and not 8 <= length <= _STARTUP_MAX):
                self._opaque = True
                yield bytes(self._buffer), False
                self._buffer.clear()
                return
            if len(self._buffer) < start + length:
                return
            message = bytes(self._buffer[: start + length])
            del self._buffer[: start + length]
            if self._startup:
                code = int.from_bytes(message[4:8], "big")
                if code >> 16 == 3:  # protocol 3.x: the StartupMessage itself
                    self._startup = False
                elif code not in (_SSL_REQUEST, _GSSENC_REQUEST):  # CancelRequest, or unknown
                    self._opaque = True
                yield message, False
            else:
                yield message, self._follow(message)


def _is_commit(sql: bytes) -> bool:
    return sql.rstrip(b"\0").decode(errors="replace").strip().upper().startswith("COMMIT")


class _Pipe:
    """Bytes read from one side, waiting to be written to the other."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.release = 0  # bytes at the head of the buffer that go through even while cut
        self.eof = False  # the source side closed
        self._changed = anyio.Event()

    def drop(self) -> None:
        self.buffer.clear()
        self.release = 0

    def notify(self) -> None:
        self._changed.set()

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed = anyio.Event()


class _Link:
    """One client connection and its own upstream connection."""

    def __init__(self) -> None:
        self.to_server, self.to_client = _Pipe(), _Pipe()
        self.frontend = _Frontend()
        self.held = False  # this connection alone is cut (see cut_before_commit)


class PgProxy:
    """``async with PgProxy(host, port) as proxy``: a proxy on ``127.0.0.1:proxy.port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.port = 0
        self.connections = 0  # client connections accepted so far
        self.commit_caught = anyio.Event()  # set when the cut_before_commit trigger fires
        self._cut = False
        self._action: Callable[[], object] | None = None
        self._armed = False
        self._whole = True  # the trigger cuts every connection, not only the committing one
        self._writes_only = False  # the trigger ignores a transaction that wrote nothing
        self._links: set[_Link] = set()
        self._group: TaskGroup | None = None

    @classmethod
    def for_dsn(cls, dsn: str) -> Self:
        """A proxy to the server ``dsn`` names (``host:port``, or a ``?host=`` socket dir)."""
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "localhost"
        return cls(host, int(query.get("port") or parts.port or 5432))

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` with its server replaced by this proxy (same user, database, options)."""
        parts = urlsplit(dsn)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Forward nothing from now on, either way; keep reading, accepting, holding."""
        self._cut = True

    def heal(self) -> None:
        """Deliver everything held, in order, and forward normally again."""
        self._cut = False
        for link in self._links:
            link.held = False
            link.to_server.notify()
            link.to_client.notify()

    def cut_before_commit(
        self,
        action: Callable[[], object] | None = None,
        *,
        only_that_connection: bool = False,
        only_writes: bool = False,
    ) -> anyio.Event:
        """Arm a one-shot trigger: on a client's next ``COMMIT``, hold it, :meth:`cut`, then
        call ``action``. Returns the event set when it fired (also ``proxy.commit_caught``).

        With ``only_that_connection``, only the committing connection is cut (both ways): what
        simulates a client *paused* right before sending its COMMIT, whose other connections'
        bytes, already written, still reach the server as its kernel would deliver them.

        With ``only_writes``, only the COMMIT of a transaction that ran a statement that may
        write is caught (the proxy decides at once, with no round trip to the server: a check
        made afterwards can come too late, the server having ended the session)."""
        self._armed, self._action, self._whole = True, action, not only_that_connection
        self._writes_only = only_writes
        self.commit_caught = anyio.Event()
        return self.commit_caught

    def held_bytes(self) -> int:
        """Bytes read from either side and not yet forwarded."""
        return sum(len(link.to_server.buffer) + len(link.to_client.buffer) for link in self._links)

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(SocketAttribute.local_port)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()

        async def serve(group: TaskGroup) -> None:
            async with listener:
                await listener.serve(self._serve, group)

        self._group.start_soon(serve, self._group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        self._group.cancel_scope.cancel()  # closes every socket: each sits in an `async with`
        return await self._group.__aexit__(exc_type, exc, traceback)

    async def _connect(self) -> _Stream:
        if self.upstream_host.startswith("/"):
            path = f"{self.upstream_host}/.s.PGSQL.{self.upstream_port}"
            return await _UnixStream.connect(path)
        return await anyio.connect_tcp(self.upstream_host, self.upstream_port)

    async def _serve(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            try:
                upstream = await self._connect()
            except OSError:
                return
            try:
                link = _Link()
                self._links.add(link)
                try:
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._read, link, client, link.to_server)
                        group.start_soon(self._read, link, upstream, link.to_client)
                        group.start_soon(self._write, link, link.to_server, upstream)
                        group.start_soon(self._write, link, link.to_client, client)
                finally:
                    self._links.discard(link)
            finally:
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()

    async def _read(self, link: _Link, source: _Stream, pipe: _Pipe) -> None:
        try:
            while True:
                data = await source.receive()
                if pipe is link.to_client:
                    pipe.buffer += data
                else:
                    for message, is_commit in link.frontend.feed(data):
                        wanted = link.frontend.wrote or not self._writes_only
                        if is_commit and self._armed and wanted:
                            self._trigger(link, pipe)
                        if is_commit:
                            link.frontend.wrote = False
                        pipe.buffer += message
                pipe.notify()
        except _GONE:
            pipe.eof = True
            pipe.notify()

    def _trigger(self, link: _Link, pipe: _Pipe) -> None:
        self._armed = False
        if not self._cut and not link.held:
            pipe.release = len(pipe.buffer)  # what came before the COMMIT still goes through
        if self._whole:
            self.cut()
        else:
            link.held = True
        self.commit_caught.set()
        if self._action is not None:
            self._action()

    async def _write(self, link: _Link, pipe: _Pipe, target: _Stream) -> None:
        while True:
            cut = self._cut or link.held
            if pipe is link.to_server and link.to_client.eof and not cut:
                pipe.drop()  # the server is gone: what the client sent is lost
            size = pipe.release if cut else len(pipe.buffer)
            if size:
                chunk = bytes(pipe.buffer[:size])
                del pipe.buffer[:size]
                pipe.release = max(0, pipe.release - size)
                try:
                    await target.send(chunk)
                except _GONE:
                    pipe.drop()
                continue
            if pipe.eof and not cut and not pipe.buffer:
                await target.aclose()  # the other side then sees the close
                return
            await pipe.changed()
