"""The TON Streaming API (server-sent events): wake-up hints for the PaymentMonitor.

TonAPI serves the TON Streaming API v2: one ``POST {base}/streaming/v2/sse`` with
``{"types": ["transactions"], "addresses": [...], "min_finality": ...}`` opens a
``text/event-stream`` whose first message is ``{"status": "subscribed"}``, then a ``: keepalive``
comment every 15 s and one JSON object per notification. A trace is notified again as its
finality rises (``pending`` -> ``confirmed`` -> ``finalized``); ``trace_invalidated`` withdraws a
pending one. The stream recovers nothing it missed (a drop, a restart), and reconnecting at
once after a drop can be refused with 429 for about a minute.

So a notice here is only a **hint**: :class:`TonApiStream` hands the caller a
:class:`StreamNotice` (and says when it has (re)subscribed), and the caller scans the REST
transactions endpoint from its stored cursor, which stays the only source of truth. Nothing
in this module decides anything about money.

What the client does:

* **Parses the event stream itself** (:class:`SseParser`): ``:`` comments (keepalives) are
  ignored, ``data:`` lines are joined, a blank line ends an event; other fields and lines
  without a field name are ignored, as the SSE rules say. A line longer than
  :data:`MAX_LINE` bytes is dropped unread, so a broken server cannot fill the memory.
* **Filters by finality**: a ``transactions`` notice below ``min_finality`` is never handed on,
  even when the server sends it anyway; ``pending`` cannot be asked for at all;
  ``trace_invalidated`` and anything unreadable (garbage lines, wrong shapes) are counted and
  ignored: polling and the next hint cover whatever they were about.
* **Takes silence for a dead connection**: no byte (keepalives included) for ``silence``
  seconds (3 keepalives by default) ends the connection.
* **Reconnects forever, with backoff and jitter**: after any drop, refusal or failure it waits
  :func:`actors.tonapi.retry_delay` (exponential, full jitter from the injected ``rng``, a
  429's ``Retry-After`` believed up to a cap) through the injected ``sleep``, then tries again;
  a connection that stayed subscribed for ``stable_after`` seconds starts the backoff over.

:class:`StreamStatus` is what it reports as it goes: one object a process shares between the
PaymentMonitor that owns the stream and the HealthChecker that shows it (a stream that is down
is a health *warning*: polling alone still confirms every payment).

The API key is only ever in the ``Authorization`` header, never in a message or a log line.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, NoReturn

import anyio
import httpx
import msgspec

from actors.ton import Address, InvalidAddress
from actors.tonapi import retry_delay
from events import environment

__all__ = [
    "Finality",
    "FINALITY_RANK",
    "STREAM_PATH",
    "KEEPALIVE_INTERVAL",
    "MAX_LINE",
    "SseParser",
    "StreamNotice",
    "StreamStatus",
    "StreamState",
    "TonApiStream",
    "decode_message",
    "split_lines",
]

logger = logging.getLogger(__name__)

Finality = Literal["pending", "confirmed", "finalized"]
FINALITY_RANK: Final[dict[str, int]] = {"pending": 0, "confirmed": 1, "finalized": 2}
STREAM_PATH: Final = "/streaming/v2/sse"
KEEPALIVE_INTERVAL: Final = 15.0
"""Seconds between the server's ``: keepalive`` comments."""
MAX_LINE: Final = 1 << 20
"""Bytes: a longer line is dropped unread (a notice of a large trace is well under it)."""
_ERROR_BODY_LIMIT: Final = 2000  # bytes of a refusal's body read for its error text
_ERROR_TEXT_LIMIT: Final = 200


# -- the event-stream format ------------------------------------------------------------------


async def split_lines(chunks: AsyncIterator[bytes], *, limit: int = MAX_LINE) -> AsyncIterator[str]:
    """The lines of a byte stream (ended by ``\\n``, ``\\r\\n`` or ``\\r``), decoded as UTF-8
    with undecodable bytes replaced. A line longer than ``limit`` bytes is skipped whole
    (``None`` is never yielded; the skip is logged)."""
    buffer = bytearray()
    skipping = False
    pending_cr = False
    async for chunk in chunks:
        start = 0
        if pending_cr and chunk.startswith(b"\n"):
            start = 1  # the \n of a \r\n split across chunks
        pending_cr = False
        view = chunk[start:]
        while view:
            cut = _line_end(view)
            if cut < 0:
                if not skipping:
                    buffer += view
                    if len(buffer) > limit:
                        logger.warning(
                            "TON stream: a line over %d bytes, skipped",
                            limit,
                            extra={"action": "tonapi_stream_long_line"},
                        )
                        buffer.clear()
                        skipping = True
                break
            end = cut + 1
            if view[cut : cut + 1] == b"\r":
                if cut + 1 < len(view):
                    if view[cut + 1 : cut + 2] == b"\n":
                        end = cut + 2
                else:
                    pending_cr = True
            if skipping:
                skipping = False
            else:
                buffer += view[:cut]
                if len(buffer) <= limit:
                    yield buffer.decode("utf-8", errors="replace")
            buffer.clear()
            view = view[end:]
    if buffer and not skipping:
        yield buffer.decode("utf-8", errors="replace")


def _line_end(data: bytes) -> int:
    """Index of the first ``\\r`` or ``\\n`` in ``data``, -1 when none."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


class SseParser:
    """Server-sent events, one line at a time (the parts of the format the stream uses).

    :meth:`feed` returns the data of the event a blank line completes, else ``None``.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None  # a comment: ": keepalive"
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        # event, id, retry, and any other field (or a line of garbage): ignored
        return None


# -- the messages -------------------------------------------------------------------------------


class _StreamTx(msgspec.Struct, frozen=True):
    account: str = ""
    lt: int | str | None = None
    hash: str = ""


class _Message(msgspec.Struct, frozen=True):
    status: str | None = None
    type: str | None = None
    finality: str | None = None
    trace_external_hash_norm: str | None = None
    transactions: list[_StreamTx] = msgspec.field(default_factory=list)


_DECODER: Final = msgspec.json.Decoder(_Message)


class StreamNotice(msgspec.Struct, frozen=True, kw_only=True):
    """A ``transactions`` notification at or above the finality asked for: a hint."""

    finality: Finality
    trace: str
    transactions: tuple[tuple[str, int], ...] = ()
    """``(account, lt)`` of each transaction of the trace that could be read (raw accounts)."""


Decoded = StreamNotice | Literal["subscribed", "invalidated", "ignored", "garbage"]


def decode_message(data: str, min_finality: Finality) -> Decoded:
    """What one event's data is. Pure.

    ``"subscribed"`` for the status message; a :class:`StreamNotice` for a transactions
    notice at or above ``min_finality``; ``"invalidated"`` for ``trace_invalidated``;
    ``"ignored"`` for a notice below ``min_finality`` or of another type; ``"garbage"`` for
    anything that is not a JSON object of the expected shape.
    """
    try:
        message = _DECODER.decode(data)
    except msgspec.MsgspecError:
        return "garbage"
    if message.status is not None and message.type is None:
        return "subscribed" if message.status == "subscribed" else "ignored"
    if message.type == "trace_invalidated":
        return "invalidated"
    if message.type != "transactions":
        return "garbage" if message.type is None else "ignored"
    rank = FINALITY_RANK.get(message.finality or "")
    if rank is None:
        return "garbage"
    if rank < FINALITY_RANK[min_finality] or rank == FINALITY_RANK["pending"]:
        return "ignored"  # pending is speculative: never a hint, whatever was asked
    seen: list[tuple[str, int]] = []
    for tx in message.transactions:
        lt = _int(tx.lt)
        account = _raw(tx.account)
        if lt is not None and account is not None:
            seen.append((account, lt))
    finality: Finality = "finalized" if message.finality == "finalized" else "confirmed"
    return StreamNotice(
        finality=finality,
        trace=message.trace_external_hash_norm or "",
        transactions=tuple(seen),
    )


def _int(value: int | str | None) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _raw(account: str) -> str | None:
    try:
        return Address.parse(account).to_raw()
    except InvalidAddress:
        return None


# -- its status -----------------------------------------------------------------------------------


StreamState = Literal["off", "connecting", "subscribed", "down", "stopped"]


@dataclass(slots=True)
class StreamStatus:
    """How the stream is doing, for the health check and the logs (shared, process-local).

    ``since`` is when ``state`` began (wall clock, UTC); the counters run from the start of
    the process.
    """

    state: StreamState = "off"
    since: datetime | None = None
    reason: str | None = None
    """Why it is down, or why it went down last."""
    connects: int = 0
    """Subscriptions made (the first one and every reconnection)."""
    drops: int = 0
    """Connections lost, refused or failed."""
    refusals: int = 0
    """Of which 429s."""
    notices: int = 0
    """Notices handed on as hints."""
    ignored: int = 0
    """Notices below the finality asked for, and ``trace_invalidated``."""
    garbage: int = 0
    """Events that could not be read."""

    def set(self, state: StreamState, reason: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = environment.now().astimezone(UTC)
        if reason is not None:
            self.reason = reason

    def down_for(self, now: datetime) -> float | None:
        """Seconds the stream has not been subscribed (down or connecting); None when it is
        subscribed, off or stopped."""
        if self.state not in ("down", "connecting") or self.since is None:
            return None
        return max((now - self.since).total_seconds(), 0.0)


# -- the client -----------------------------------------------------------------------------------


class _Dropped(Exception):
    """One connection ended: why, and the ``Retry-After`` a refusal gave."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        final: bool = False,
        throttled: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.throttled = throttled  # a 429
        self.final = final  # a refusal that repeating soon will not fix (400, 401...)


class TonApiStream:
    """A TON Streaming API subscription that reconnects forever (see the module docstring).

    ``addresses`` is called at every (re)connection: the accounts to subscribe to then.
    ``transport``, ``sleep``, ``rng`` and ``clock`` replace the network, the waits between
    attempts, the jitter and the monotonic clock, so tests and simulations drive it. ``turn``
    is awaited before every subscription attempt (:meth:`TonApiClient.turn
    <actors.tonapi.TonApiClient.turn>`: the TonAPI rate every node shares).
    """

    def __init__(
        self,
        base_url: str,
        addresses: Callable[[], Sequence[str]],
        *,
        api_key: str | None = None,
        min_finality: Literal["confirmed", "finalized"] = "finalized",
        silence: float = 3 * KEEPALIVE_INTERVAL,
        connect_timeout: float = 10.0,
        backoff_min: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        status: StreamStatus | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        turn: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if min_finality not in ("confirmed", "finalized"):
            raise ValueError(f"min_finality must be confirmed or finalized, got {min_finality!r}")
        if silence <= 0 or connect_timeout <= 0:
            raise ValueError("silence and connect_timeout must be positive")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(
                f"backoff needs 0 < backoff_min <= backoff_max, got {backoff_min}, {backoff_max}"
            )
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "i3lani",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._base_url = base_url.rstrip("/")
        self._headers = headers
        self._addresses = addresses
        self.min_finality: Literal["confirmed", "finalized"] = min_finality
        self.silence = silence
        self._connect_timeout = connect_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self.status = status if status is not None else StreamStatus()
        self._transport = transport
        self._sleep = sleep
        self._rng = rng if rng is not None else environment.new_rng()
        self._clock = clock
        self._turn = turn

    async def run(
        self,
        on_subscribed: Callable[[], None],
        on_notice: Callable[[StreamNotice], None],
    ) -> None:
        """Subscribe, hand on notices, reconnect after every drop; until cancelled.

        ``on_subscribed`` is called at every (re)subscription (the caller scans then: the
        stream recovers nothing it missed); ``on_notice`` for each hint. Both are called from
        the reading loop and must not block.
        """
        timeout = httpx.Timeout(
            connect=self._connect_timeout,
            read=self.silence,
            write=self._connect_timeout,
            pool=self._connect_timeout,
        )
        attempt = 0
        try:
            async with httpx.AsyncClient(
                base_url=self._base_url,
                headers=self._headers,
                timeout=timeout,
                transport=self._transport,
                verify=_tls(self._base_url),
            ) as client:
                while True:
                    if self._turn is not None:
                        # Each subscription is a request to the key: it waits its turn in
                        # the rate every node shares (a 429 of the stream's own, "the old
                        # connection still counts", pauses only the stream: see _Dropped).
                        await self._turn()
                    self.status.set("connecting")
                    started = self._clock()
                    subscribed_at: list[float] = []
                    try:
                        await self._connect(client, on_subscribed, on_notice, subscribed_at)
                    except _Dropped as dropped:
                        drop = dropped
                    self.status.drops += 1
                    self.status.refusals += drop.throttled
                    if subscribed_at and self._clock() - subscribed_at[0] >= self._stable_after:
                        attempt = 0  # it held: back off from the start
                    attempt += 1
                    if drop.final:
                        delay = self._rng.uniform(self._backoff_max / 2, self._backoff_max)
                    else:
                        delay = retry_delay(
                            attempt,
                            backoff_min=self._backoff_min,
                            backoff_max=self._backoff_max,
                            rng=self._rng,
                            retry_after=drop.retry_after,
                        )
                    self.status.set("down", drop.reason)
                    lived = self._clock() - started
                    logger.warning(
                        "TON stream down after %.1f s: %s; reconnecting in %.2f s (attempt %d); "
                        "polling goes on meanwhile",
                        lived,
                        drop.reason,
                        delay,
                        attempt,
                        extra={"action": "tonapi_stream_down"},
                    )
                    await self._sleep(delay)
        finally:
            self.status.set("stopped")

    async def _connect(
        self,
        client: httpx.AsyncClient,
        on_subscribed: Callable[[], None],
        on_notice: Callable[[StreamNotice], None],
        subscribed_at: list[float],
    ) -> NoReturn:
        """One connection, until it ends: always by raising :class:`_Dropped`."""
        body = msgspec.json.encode(
            {
                "types": ["transactions"],
                "addresses": list(self._addresses()),
                "min_finality": self.min_finality,
            }
        )
        try:
            async with client.stream("POST", STREAM_PATH, content=body) as response:
                if response.status_code != 200:
                    raise await _refusal(response)
                parser = SseParser()
                async for line in split_lines(response.aiter_bytes()):
                    data = parser.feed(line)
                    if data is None:
                        continue
                    decoded = decode_message(data, self.min_finality)
                    if isinstance(decoded, StreamNotice):
                        if not subscribed_at:  # a notice before the status: subscribed anyway
                            self._subscribed(subscribed_at, on_subscribed)
                        self.status.notices += 1
                        on_notice(decoded)
                    elif decoded == "subscribed":
                        if not subscribed_at:
                            self._subscribed(subscribed_at, on_subscribed)
                    elif decoded == "garbage":
                        self.status.garbage += 1
                        logger.info(
                            "TON stream: an event that is not a notice, ignored: %.80r",
                            data,
                            extra={"action": "tonapi_stream_garbage"},
                        )
                    else:
                        self.status.ignored += 1
                raise _Dropped("the server closed the stream")
        except httpx.ReadTimeout:
            raise _Dropped(
                f"silent for {self.silence:g} s (no keepalive): taken for a dead connection"
            ) from None
        except httpx.TimeoutException:
            raise _Dropped(f"no connection within {self._connect_timeout:g} s") from None
        except httpx.HTTPError as exc:  # connection refused, reset, a broken chunk...
            detail = " ".join(str(exc).split()) or "no detail"
            raise _Dropped(f"connection failed ({type(exc).__name__}: {detail})") from None

    def _subscribed(self, subscribed_at: list[float], on_subscribed: Callable[[], None]) -> None:
        subscribed_at.append(self._clock())
        self.status.connects += 1
        self.status.set("subscribed")
        logger.info(
            "TON stream subscribed (connection %d, min_finality %s)",
            self.status.connects,
            self.min_finality,
            extra={"action": "tonapi_stream_subscribed"},
        )
        on_subscribed()


async def _refusal(response: httpx.Response) -> _Dropped:
    """A non-200 answer to the subscription, as a drop."""
    status = response.status_code
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    said = _error_text(body)
    reason = f"HTTP {status}" + (f": {said}" if said else "")
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return _Dropped(reason, retry_after=retry_after, throttled=True)
    if status < 500 and status not in (408,):
        hint = "; check the API key" if status in (401, 403) else ""
        return _Dropped(f"refused: {reason}{hint}", final=True)
    return _Dropped(reason)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """httpx's default TLS verification, built once per process (about 0.15 s of CPU each
    time: an actor that restarts would pay it again at every incarnation)."""
    return httpx.create_ssl_context()


def _tls(base_url: str) -> ssl.SSLContext | bool:
    """TLS verification for ``base_url``: the default for https; none to build for plain
    http (a local stand-in), which never uses it."""
    return _default_tls() if base_url.lower().startswith("https:") else False


def _error_text(body: bytes) -> str | None:
    try:
        payload = msgspec.json.decode(body)
    except msgspec.MsgspecError:
        return None
    text = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text[:_ERROR_TEXT_LIMIT] or None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None
