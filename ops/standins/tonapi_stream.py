"""The TonAPI stand-in's TON Streaming API: ``POST /streaming/v2/sse``, and its faults.

What the real endpoint does (DOMAIN.md, "TON Streaming API v2"), this one does too: a POST
(GET gets 405) with ``{"types": [...], "addresses": [...], "min_finality": ...}`` opens a
``text/event-stream``; the first message is ``{"status": "subscribed"}``; a ``: keepalive``
comment comes every :attr:`StreamHub.keepalive` seconds (15, as TonAPI's); each transaction
put on the stand-in's chain for a subscribed account is notified as a trace whose finality
rises, ``pending`` then ``confirmed`` then ``finalized`` (each level sent to the subscribers
that asked for it or less), :attr:`StreamHub.finality_delay` seconds apart (0: at once, in
that order). Notices are shaped as the streaming API sends them (TON Center v3 transactions:
``account`` in upper-case raw form, ``hash`` in base64, ``lt`` as a string, an
``address_book``). :meth:`StreamHub.phantom` notifies a pending trace that never reaches the
chain, then withdraws it with ``trace_invalidated``.

A transfer is on the chain (the REST endpoint shows it) from the moment it is added, before
its first notice: "visible at the stand-in" is that moment.

Faults (methods, and ``/_standin/stream/*`` for other processes):

* :meth:`StreamHub.refuse`: the next ``times`` connections get **429** (``Retry-After`` when
  given);
* :meth:`StreamHub.drop`: every open stream is **closed** now; with ``cooldown``, connections in
  the following seconds get 429, as TonAPI still counts the old one;
* :meth:`StreamHub.stall`: every stream, open or new, goes **silent** (no status, no keepalive,
  no notice; what happens meanwhile is never sent) while the connection stays open; a stream
  opened during the stall says ``subscribed`` once it ends;
* :meth:`StreamHub.garbage`: **garbage lines** around every message (a line with no field, a
  ``data:`` that is not JSON, JSON of the wrong shape, bytes that are not UTF-8, an event
  field), and a notice of an unknown finality;
* :meth:`StreamHub.leak_levels`: a server that sends **every finality level** whatever was
  asked (the client must still never act on ``pending``);
* :meth:`StreamHub.heal`: none of these any more.

Nothing here draws from the stand-in's random source or schedules anything while no stream is
open, so a simulation that never subscribes is not changed by it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from actors.ton import Address, InvalidAddress
from ops.standins.server import ControlError, check_times, control_body, json_response

__all__ = ["StreamHub", "StreamConnection", "STREAM_PATH", "FINALITIES"]

logger = logging.getLogger(__name__)

STREAM_PATH: Final = "/streaming/v2/sse"
Level = Literal["pending", "confirmed", "finalized"]
FINALITIES: Final[tuple[Level, ...]] = ("pending", "confirmed", "finalized")
_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(FINALITIES)}
_TYPES: Final = frozenset(
    {"transactions", "actions", "trace", "account_state_change", "jettons_change"}
)
_DROP: Final = object()
GARBAGE_LINES: Final[tuple[bytes, ...]] = (
    b"this line has no field name at all\n",
    b"data: {not json at all\n\n",
    b'data: {"type": "transactions", "finality": "finalized", "transactions": "nope"}\n\n',
    b"data: [1, 2, 3]\n\n",
    b"\xff\xfe\x00 binary \xc3\x28 junk\n\n",
    b"event: message\nid: 7\nretry: 1000\n",
    b'data: {"type": "transactions", "finality": "final-ish", "transactions": []}\n\n',
)


class StreamRequest(msgspec.Struct, frozen=True):
    """A subscription request the stand-in received, as it was asked."""

    addresses: list[str]
    min_finality: str
    types: list[str]
    authorization: str | None
    answered: int  # the HTTP status it got
    at: float = 0.0  # when it came (time.monotonic())


class _Body(msgspec.Struct, forbid_unknown_fields=False):
    types: list[str] = msgspec.field(default_factory=list)
    addresses: list[str] = msgspec.field(default_factory=list)
    min_finality: str = "finalized"


@dataclass(eq=False)
class StreamConnection:
    """One open stream: whom it listens for, and what waits to be written to it."""

    accounts: frozenset[Address]
    min_rank: int
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


class _RefuseBody(msgspec.Struct, forbid_unknown_fields=True):
    times: int | None = 1
    retry_after: float | None = None


class _DropBody(msgspec.Struct, forbid_unknown_fields=True):
    cooldown: float = 0.0
    retry_after: float | None = None


class _SwitchBody(msgspec.Struct, forbid_unknown_fields=True):
    on: bool = True


class _PhantomBody(msgspec.Struct, forbid_unknown_fields=True):
    wallet: str
    source: str
    value: int
    comment: str | None = None


class _SettingsBody(msgspec.Struct, forbid_unknown_fields=True):
    keepalive: float | None = None
    finality_delay: float | None = None


class StreamHub:
    """The streams of one TonAPI stand-in (see the module docstring)."""

    def __init__(self, *, keepalive: float = 15.0, finality_delay: float = 0.0) -> None:
        self.keepalive = keepalive
        """Seconds between ``: keepalive`` comments."""
        self.finality_delay = finality_delay
        """Seconds between a trace's finality levels."""
        self.requests: list[StreamRequest] = []
        """Every subscription request received, in order."""
        self.connections: set[StreamConnection] = set()
        """The streams open now."""
        self.most_open = 0
        """The most streams ever open at once."""
        self.notified: list[tuple[float, str, str]] = []
        """``(time.time(), finality, tx hash)`` of every notice written to a stream."""
        self._refusals: int | None = 0  # None: until healed
        self._retry_after: float | None = None
        self._cooldown_until = 0.0
        self._stalled = False
        self._garbage = False
        self._leak = False
        self._timers: set[asyncio.TimerHandle] = set()

    # -- faults ---------------------------------------------------------------------------------

    def refuse(self, times: int | None = 1, *, retry_after: float | None = None) -> None:
        """The next ``times`` connections (``None``: all, until :meth:`heal`) get 429."""
        check_times(times)
        self._refusals = None if times is None else (self._refusals or 0) + times
        self._retry_after = retry_after

    def drop(self, *, cooldown: float = 0.0, retry_after: float | None = None) -> int:
        """Close every open stream now; connections within ``cooldown`` seconds get 429.
        Returns how many were closed."""
        if cooldown < 0:
            raise ValueError(f"cooldown must not be negative, got {cooldown}")
        self._cooldown_until = time.monotonic() + cooldown
        self._retry_after = retry_after
        closed = len(self.connections)
        for connection in list(self.connections):
            connection.queue.put_nowait(_DROP)
        return closed

    def stall(self, on: bool = True) -> None:
        """Every stream, open or new, goes silent (``on=False``: talks again)."""
        self._stalled = on

    def garbage(self, on: bool = True) -> None:
        """Garbage lines around every message written (``on=False``: none)."""
        self._garbage = on

    def leak_levels(self, on: bool = True) -> None:
        """Send every finality level to every stream, whatever it asked for."""
        self._leak = on

    def heal(self) -> None:
        """No refusal, cooldown, stall, garbage or leak any more."""
        self._refusals = 0
        self._retry_after = None
        self._cooldown_until = 0.0
        self._stalled = self._garbage = self._leak = False

    def close(self) -> None:
        """End every stream (the stand-in is closing) and forget pending notices."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for connection in list(self.connections):
            connection.queue.put_nowait(_DROP)

    # -- notices --------------------------------------------------------------------------------

    def publish(self, account: Address, tx: dict[str, Any]) -> None:
        """Notify the transaction ``tx`` of ``account`` (just put on the chain), its finality
        rising. Nothing at all when no stream listens for ``account``."""
        if not any(account in c.accounts for c in self.connections):
            return
        trace = _trace_hash(tx)
        for rank, finality in enumerate(FINALITIES):
            message = _notice(account, tx, finality, trace)
            self._later(rank * self.finality_delay, account, rank, message)

    def phantom(self, wallet: str, *, source: str, value: int, comment: str | None = None) -> str:
        """A pending trace for ``wallet`` that never reaches the chain: notified ``pending``,
        then withdrawn by ``trace_invalidated`` (:attr:`finality_delay` later). Returns the
        transaction's hash (hex)."""
        account = Address.parse(wallet)
        sender = Address.parse(source)
        digest = hashlib.sha256(
            f"phantom/{wallet}/{source}/{value}/{comment}/{time.time_ns()}".encode()
        )
        tx_hash = digest.hexdigest()
        tx = {
            "hash": tx_hash,
            "lt": 0,
            "utime": int(time.time()),
            "in_msg": {
                "value": value,
                "source": {"address": sender.to_raw()},
                "destination": {"address": account.to_raw()},
                "decoded_body": {"text": comment} if comment is not None else None,
            },
            "out_msgs": [],
        }
        trace = _trace_hash(tx)
        self._later(0.0, account, 0, _notice(account, tx, "pending", trace))
        withdrawn = {"type": "trace_invalidated", "trace_external_hash_norm": trace}
        self._later(self.finality_delay, account, 0, withdrawn)
        return tx_hash

    def _later(self, delay: float, account: Address, rank: int, message: dict[str, Any]) -> None:
        if delay <= 0:
            self._send(account, rank, message)
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._send(account, rank, message)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    def _send(self, account: Address, rank: int, message: dict[str, Any]) -> None:
        for connection in list(self.connections):
            if account in connection.accounts and (self._leak or rank >= connection.min_rank):
                connection.queue.put_nowait(message)

    # -- HTTP -----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application, control: Any) -> None:
        """The endpoint and its control routes (``control`` wraps a control handler)."""
        app.router.add_post(STREAM_PATH, self._serve)
        app.router.add_get(STREAM_PATH, _get_refused)
        app.router.add_post("/_standin/stream/refuse", control(self._control_refuse))
        app.router.add_post("/_standin/stream/drop", control(self._control_drop))
        app.router.add_post("/_standin/stream/stall", control(self._control_stall))
        app.router.add_post("/_standin/stream/garbage", control(self._control_garbage))
        app.router.add_post("/_standin/stream/leak_levels", control(self._control_leak))
        app.router.add_post("/_standin/stream/heal", control(self._control_heal))
        app.router.add_post("/_standin/stream/phantom", control(self._control_phantom))
        app.router.add_post("/_standin/stream/settings", control(self._control_settings))
        app.router.add_get("/_standin/stream/requests", control(self._control_requests))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        try:
            body = msgspec.json.decode(await request.read(), type=_Body)
        except msgspec.MsgspecError as exc:
            return self._answer([], "", [], authorization, 400, f"invalid request body: {exc}")
        accounts: set[Address] = set()
        for text in body.addresses:
            try:
                accounts.add(Address.parse(text))
            except InvalidAddress as exc:
                return self._answer(
                    body.addresses,
                    body.min_finality,
                    body.types,
                    authorization,
                    400,
                    f"can't decode address {text}: {exc}",
                )
        problem = None
        if not body.types or not set(body.types) <= _TYPES:
            problem = f"types must be some of {', '.join(sorted(_TYPES))}, got {body.types}"
        elif not accounts:
            problem = "addresses must name at least one account"
        elif body.min_finality not in _RANK:
            problem = f"min_finality must be one of {', '.join(FINALITIES)}"
        if problem is not None:
            return self._answer(
                body.addresses, body.min_finality, body.types, authorization, 400, problem
            )
        refused = time.monotonic() < self._cooldown_until
        if not refused and (self._refusals is None or self._refusals > 0):
            refused = True
            if self._refusals is not None:
                self._refusals -= 1
        if refused:
            headers = {}
            if self._retry_after is not None:
                headers["Retry-After"] = f"{self._retry_after:g}"
            return self._answer(
                body.addresses,
                body.min_finality,
                body.types,
                authorization,
                429,
                "too many connections: one stream per key",
                headers,
            )
        self.requests.append(
            StreamRequest(
                body.addresses, body.min_finality, body.types, authorization, 200, time.monotonic()
            )
        )
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        connection = StreamConnection(frozenset(accounts), _RANK[body.min_finality])
        self.connections.add(connection)
        self.most_open = max(self.most_open, len(self.connections))
        try:
            # Opened during a stall: the status comes once the stall ends, as from a slow
            # server (and what was notified meanwhile is lost).
            greeted = await self._write(response, {"status": "subscribed"})
            while True:
                try:
                    item = await asyncio.wait_for(connection.queue.get(), self.keepalive)
                except TimeoutError:
                    if not self._stalled:
                        if not greeted:
                            greeted = await self._write(response, {"status": "subscribed"})
                        await response.write(b": keepalive\n\n")
                    continue
                if item is _DROP:
                    break
                assert isinstance(item, dict)
                await self._write(response, item)
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            self.connections.discard(connection)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _write(self, response: web.StreamResponse, message: dict[str, Any]) -> bool:
        """Write ``message`` (with garbage around it, in that mode); False: stalled, not
        written."""
        if self._stalled:
            return False
        payload = b"data: " + msgspec.json.encode(message) + b"\n\n"
        if self._garbage:
            payload = b"".join(GARBAGE_LINES[:4]) + payload + b"".join(GARBAGE_LINES[4:])
        await response.write(payload)
        if message.get("type") == "transactions":
            for tx in message.get("transactions", ()):
                self.notified.append((time.time(), message["finality"], _hex(tx.get("hash", ""))))
        return True

    def _answer(
        self,
        addresses: list[str],
        min_finality: str,
        types: list[str],
        authorization: str | None,
        status: int,
        error: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.requests.append(
            StreamRequest(addresses, min_finality, types, authorization, status, time.monotonic())
        )
        response = json_response({"error": error}, status)
        response.headers.update(headers or {})
        return response

    async def _control_refuse(self, request: web.Request) -> object:
        body = await control_body(request, _RefuseBody)
        self.refuse(body.times, retry_after=body.retry_after)
        return {"ok": True}

    async def _control_drop(self, request: web.Request) -> object:
        body = await control_body(request, _DropBody)
        return {"closed": self.drop(cooldown=body.cooldown, retry_after=body.retry_after)}

    async def _control_stall(self, request: web.Request) -> object:
        self.stall((await control_body(request, _SwitchBody)).on)
        return {"ok": True}

    async def _control_garbage(self, request: web.Request) -> object:
        self.garbage((await control_body(request, _SwitchBody)).on)
        return {"ok": True}

    async def _control_leak(self, request: web.Request) -> object:
        self.leak_levels((await control_body(request, _SwitchBody)).on)
        return {"ok": True}

    async def _control_heal(self, request: web.Request) -> object:
        self.heal()
        return {"ok": True}

    async def _control_phantom(self, request: web.Request) -> object:
        body = await control_body(request, _PhantomBody)
        return {
            "hash": self.phantom(
                body.wallet, source=body.source, value=body.value, comment=body.comment
            )
        }

    async def _control_settings(self, request: web.Request) -> object:
        body = await control_body(request, _SettingsBody)
        for name, value in (("keepalive", body.keepalive), ("finality_delay", body.finality_delay)):
            if value is not None:
                if value < 0 or (name == "keepalive" and value == 0):
                    raise ControlError(f"{name} must be positive, got {value}")
                setattr(self, name, value)
        return {"keepalive": self.keepalive, "finality_delay": self.finality_delay}

    async def _control_requests(self, request: web.Request) -> object:
        return {
            "requests": [msgspec.to_builtins(r) for r in self.requests],
            "open": len(self.connections),
        }


async def _get_refused(request: web.Request) -> web.Response:
    return json_response({"error": "method not allowed: subscribe with POST"}, 405)


def _trace_hash(tx: dict[str, Any]) -> str:
    """The trace's normalized external hash: derived from the transaction (no randomness)."""
    seed = f"trace/{tx.get('hash')}/{tx.get('lt')}".encode()
    return base64.b64encode(hashlib.sha256(seed).digest()).decode()


def _b64(hex_hash: object) -> str:
    if isinstance(hex_hash, str) and len(hex_hash) == 64:
        with contextlib.suppress(ValueError):
            return base64.b64encode(bytes.fromhex(hex_hash)).decode()
    return str(hex_hash)


def _hex(b64_hash: str) -> str:
    with contextlib.suppress(ValueError):
        return base64.b64decode(b64_hash, validate=True).hex()
    return b64_hash


def _upper_raw(address: Address) -> str:
    workchain, _, hexpart = address.to_raw().partition(":")
    return f"{workchain}:{hexpart.upper()}"


def _message(msg: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(msg, dict):
        return None
    body = msg.get("decoded_body")
    content: dict[str, Any] = {"hash": _b64(msg.get("hash", "")), "body": None}
    if isinstance(body, dict) and "text" in body:
        content["decoded"] = {"type": "text_comment", "comment": body["text"]}
    return {
        "hash": _b64(msg.get("hash", "")),
        "source": _account_of(msg.get("source")),
        "destination": _account_of(msg.get("destination")),
        "value": str(msg.get("value", 0)),
        "fwd_fee": str(msg.get("fwd_fee", 0)),
        "created_lt": str(msg.get("created_lt", 0)),
        "created_at": str(msg.get("created_at", 0)),
        "bounce": msg.get("bounce"),
        "bounced": msg.get("bounced"),
        "message_content": content,
    }


def _account_of(account: object) -> str | None:
    if isinstance(account, dict) and isinstance(account.get("address"), str):
        with contextlib.suppress(InvalidAddress):
            return _upper_raw(Address.parse(account["address"]))
    return None


def _notice(
    account: Address,
    tx: dict[str, Any],
    finality: Literal["pending", "confirmed", "finalized"],
    trace: str,
) -> dict[str, Any]:
    """One ``transactions`` notification of ``tx``, as the streaming API shapes it."""
    found_out = tx.get("out_msgs")
    out_msgs: list[Any] = found_out if isinstance(found_out, list) else []
    found_compute = tx.get("compute_phase")
    compute: dict[str, Any] = found_compute if isinstance(found_compute, dict) else {}
    raw = _upper_raw(account)
    involved: Iterable[str | None] = [
        raw,
        *(_account_of(m.get("destination")) for m in out_msgs if isinstance(m, dict)),
        _account_of((tx.get("in_msg") or {}).get("source")),
    ]
    address_book = {
        a: {"user_friendly": Address.parse(a).to_friendly(bounceable=False), "domain": None}
        for a in dict.fromkeys(x for x in involved if x is not None)
    }
    return {
        "type": "transactions",
        "finality": finality,
        "trace_external_hash_norm": trace,
        "transactions": [
            {
                "account": raw,
                "hash": _b64(tx.get("hash", "")),
                "lt": str(tx.get("lt", 0)),
                "now": tx.get("utime", 0),
                "mc_block_seqno": None if finality == "pending" else 0,
                "trace_id": trace,
                "orig_status": tx.get("orig_status", "active"),
                "end_status": tx.get("end_status", "active"),
                "total_fees": str(tx.get("total_fees", 0)),
                "description": {
                    "aborted": bool(tx.get("aborted", False)),
                    "compute_ph": {
                        "skipped": bool(compute.get("skipped", False)),
                        "success": compute.get("success"),
                        "exit_code": compute.get("exit_code"),
                    },
                },
                "in_msg": _message(tx.get("in_msg")),
                "out_msgs": [_message(m) for m in out_msgs if isinstance(m, dict)],
            }
        ],
        "address_book": address_book,
    }
