"""Local stand-ins for TonAPI and the Telegram Bot API, speaking their real wire formats.

Tests, the demo and separate processes reach TonAPI and Telegram through these instead of the
internet: small aiohttp servers on ``127.0.0.1`` (a free port unless told otherwise)::

    async with TonApiStandIn() as tonapi, BotApiStandIn(token=TOKEN) as bot_api:
        tonapi.transfer(WALLET, source=PAYER, value=5_440_000_000, comment="i3lani_42")
        tonapi.fail("429", times=2, retry_after=1)      # the next two requests are throttled
        bot_api.set_member_count("@channel", 1234)
        bot_api.fail_chat(ADMIN, 403)                   # this admin blocked the bot
        ...  # point TonApiClient at tonapi.url and make_bot(TOKEN, bot_api.url) at bot_api.url

:class:`TonApiStandIn` holds a simulated chain (per account, transactions shaped exactly like
``fixtures/tonapi/*.json``) and serves ``GET /v2/blockchain/accounts/{id}/transactions`` and
``GET /v2/status``. :class:`BotApiStandIn` serves ``/bot{token}/{method}`` for ``getMe``,
``getChatMemberCount``, ``sendMessage`` and the update plumbing (``getUpdates``,
``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``), reading aiogram's form bodies as well
as JSON.

Faults are queued and consumed first in, first out, one per API request: ``times=1`` by
default, ``times=None`` for every request until :meth:`heal`. A ``"timeout"`` fault holds the
request for ``hang`` seconds (or until the stand-in closes) before answering normally.

Other processes drive them over HTTP, under ``/_standin/`` (JSON bodies, the same arguments
as the Python methods)::

    TonAPI:   POST transfer, add_raw, fail, heal, rest_online;  GET requests, transactions
    Bot API:  POST member_count, fail_chat, fail, heal;          GET sent, calls

``python -m ops.standins`` runs both until interrupted and prints their URLs as one JSON line.
"""

from __future__ import annotations

import abc
import argparse
import bisect
import copy
import json
import logging
import secrets
import signal
import sys
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Self, TypeAlias, TypeVar, get_args

import anyio
import msgspec
from aiohttp import web

from actors.ton import Address, InvalidAddress

__all__ = [
    "TonApiFaultMode",
    "BotApiFaultMode",
    "TransferOp",
    "TonApiRequest",
    "BotApiCall",
    "SentMessage",
    "TonApiStandIn",
    "BotApiStandIn",
    "DEFAULT_BOT_TOKEN",
    "serve_standins",
    "main",
]

logger = logging.getLogger(__name__)

TonApiFaultMode = Literal["500", "502", "429", "timeout", "garbage", "wrong_type", "error_body"]
BotApiFaultMode = Literal["500", "timeout", "garbage"]
TransferOp = Literal["text_comment", "jetton_notify", "encrypted_comment", "none"]

DEFAULT_BOT_TOKEN: Final = "123456789:standin-token-not-a-secret"
DEFAULT_HANG: Final = 30.0  # seconds a "timeout" fault holds a request, unless told otherwise

_JSON: Final = "application/json"
_FIRST_LT: Final = 47_587_000_000_001  # plausible mainnet logical times
_LT_STEP: Final = 1_000
_FIRST_SEQNO: Final = 40_834_551
_FEES: Final = 100_002  # nanotons, as in the fixture
_FWD_FEE: Final = 1_056_009
_OP_CODES: Final[dict[str, tuple[str, str]]] = {
    "text_comment": ("0x00000000", "text_comment"),
    "jetton_notify": ("0x7362d09c", "jetton_notify"),
    "encrypted_comment": ("0x2167da4b", "encrypted_text_comment"),
}


# -- shared server plumbing ---------------------------------------------------------------------


class _StandIn(abc.ABC):
    """An aiohttp server on ``host:port`` (port 0: a free one), run by ``async with``."""

    def __init__(self, *, host: str, port: int, hang: float) -> None:
        if hang < 0:
            raise ValueError(f"hang must not be negative, got {hang}")
        self._host = host
        self._port = port
        self.hang = hang
        """Default seconds a ``"timeout"`` fault holds a request."""
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._closing: anyio.Event | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not running: use `async with`")
        return self._url

    @abc.abstractmethod
    def _add_routes(self, app: web.Application) -> None:
        """Register this stand-in's API and control routes on ``app``."""

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._closing = anyio.Event()
        app = web.Application()
        self._add_routes(app)
        # No access log: Bot API paths carry the token. Handlers are cancelled when their
        # client goes away, so a hanging "timeout" fault never outlives its request.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            host, port = runner.addresses[0][:2]
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._url = f"http://{host}:{port}"
        logger.debug(
            "%s listening on %s",
            type(self).__name__,
            self._url,
            extra={"action": "standin_started"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if self._closing is not None:
            self._closing.set()
        self._url = None
        if runner is not None:
            await runner.cleanup()

    async def _hold(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the stand-in closes meanwhile."""
        closing = self._closing
        if closing is None:
            return
        with anyio.move_on_after(seconds):
            await closing.wait()


def _json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status, content_type=_JSON)


def _truncated(response: web.Response) -> web.Response:
    """The same answer with its body cut in half: valid HTTP, invalid JSON."""
    body = response.body if isinstance(response.body, bytes) else b"{}"
    return web.Response(body=body[: max(len(body) // 2, 1)], status=200, content_type=_JSON)


_T = TypeVar("_T")


class _ControlError(Exception):
    """A bad request to the ``/_standin/`` control API: answered 400 with the message."""


async def _control_body(request: web.Request, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.MsgspecError as exc:
        raise _ControlError(f"bad body for {request.path}: {exc}") from exc


def _control(
    handler: Callable[[web.Request], Awaitable[object]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A control endpoint: its result as JSON, a bad request as 400 ``{"error": ...}``."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            result = await handler(request)
        except (_ControlError, ValueError) as exc:  # ValueError: refused arguments
            return _json_response({"error": str(exc)}, status=400)
        return _json_response(result)

    return wrapped


class _Fault(msgspec.Struct):
    """One queued fault; ``remaining`` ``None`` means until healed."""

    mode: str
    remaining: int | None
    hang: float | None = None
    retry_after: float | None = None
    status: int | None = None
    error: str | None = None


def _take(queue: deque[_Fault]) -> _Fault | None:
    """The fault for this request, consumed from the front of ``queue``."""
    if not queue:
        return None
    fault = queue[0]
    if fault.remaining is not None:
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
    return fault


def _check_times(times: int | None) -> None:
    if times is not None and (isinstance(times, bool) or times < 1):
        raise ValueError(f"times must be 1 or more, or None for until healed; got {times!r}")


# -- TonAPI -------------------------------------------------------------------------------------


class TonApiRequest(NamedTuple):
    """A request TonAPI stand-in received (control requests are not recorded)."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


class _TransferBody(msgspec.Struct, forbid_unknown_fields=True):
    wallet: str
    source: str
    value: int
    comment: str | None
    lt: int | None = None
    utime: int | None = None
    success: bool = True
    aborted: bool = False
    bounced: bool = False
    out_msgs: int = 0
    op: TransferOp = "text_comment"
    tx_hash: str | None = None


class _RawBody(msgspec.Struct, forbid_unknown_fields=True):
    wallet: str
    tx: dict[str, Any]


class _TonFailBody(msgspec.Struct, forbid_unknown_fields=True):
    mode: TonApiFaultMode
    times: int | None = 1
    retry_after: float | None = None
    hang: float | None = None
    status: int | None = None
    error: str | None = None


class _OnlineBody(msgspec.Struct, forbid_unknown_fields=True):
    online: bool
    indexing_latency: int | None = None


def _account_json(address: Address, *, is_wallet: bool = True) -> dict[str, Any]:
    return {"address": address.to_raw(), "is_scam": False, "is_wallet": is_wallet}


def _message_body(op: TransferOp, comment: str | None, sender: Address) -> dict[str, Any]:
    """``op_code``, ``decoded_op_name`` and ``decoded_body`` as TonAPI decodes them."""
    if op == "none" or (op == "text_comment" and comment is None):
        return {}
    op_code, name = _OP_CODES[op]
    body: dict[str, Any]
    if op == "text_comment":
        body = {"text": comment}
    elif op == "jetton_notify":
        body = {
            "query_id": 0,
            "amount": "1000000000",
            "sender": sender.to_raw(),
            "forward_payload": {
                "is_right": False,
                "value": {"sum_type": "TextComment", "op_code": 0, "value": {"text": comment}},
            },
        }
    else:  # an encrypted comment: only ciphertext on the wire
        body = {"cipher_text": secrets.token_hex(48)}
    return {"op_code": op_code, "decoded_op_name": name, "decoded_body": body}


class TonApiStandIn(_StandIn):
    """TonAPI on 127.0.0.1: a simulated chain, its transactions endpoint and faults."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, hang: float = DEFAULT_HANG
    ) -> None:
        super().__init__(host=host, port=port, hang=hang)
        self.requests: list[TonApiRequest] = []
        """Every TonAPI request received, in order."""
        self.rest_online = True
        """What ``/v2/status`` reports as ``rest_online``."""
        self.indexing_latency = 0
        self._chain: dict[Address, list[dict[str, Any]]] = {}
        self._balances: dict[Address, int] = {}
        self._faults: deque[_Fault] = deque()
        self._next_lt = _FIRST_LT
        self._seqno = _FIRST_SEQNO

    # -- the chain ------------------------------------------------------------------------------

    def transfer(
        self,
        wallet: str,
        *,
        source: str,
        value: int,
        comment: str | None,
        lt: int | None = None,
        utime: int | None = None,
        success: bool = True,
        aborted: bool = False,
        bounced: bool = False,
        out_msgs: int = 0,
        op: TransferOp = "text_comment",
        tx_hash: str | None = None,
    ) -> dict[str, Any]:
        """Record an incoming transfer of ``value`` nanotons from ``source`` to ``wallet``.

        Returns the transaction, in TonAPI's shape (raw lowercase addresses). ``lt`` defaults
        to the next one of the simulated chain, ``utime`` to now, ``tx_hash`` to 64 random hex
        digits. ``comment=None`` (or ``op="none"``) sends no body; ``op`` picks what the body
        is: a text comment, a jetton transfer notification carrying the comment, or an
        encrypted comment. ``aborted`` also skips the compute phase (``cskip_no_gas``), and
        ``out_msgs`` adds that many outgoing messages back to ``source``. The flags are
        written as given, so contradictory ones can be tested too.
        """
        account = Address.parse(wallet)
        sender = Address.parse(source)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"value is a non-negative int of nanotons, got {value!r}")
        if out_msgs < 0:
            raise ValueError(f"out_msgs must not be negative, got {out_msgs}")
        if op not in get_args(TransferOp):
            raise ValueError(f"op must be one of {', '.join(get_args(TransferOp))}, got {op!r}")
        if tx_hash is None:
            tx_hash = secrets.token_hex(32)
        elif len(tx_hash) != 64 or tx_hash.strip("0123456789abcdef"):
            raise ValueError(f"tx_hash must be 64 lowercase hex digits, got {tx_hash!r}")
        lt = self._allocate_lt(lt)
        utime = int(time.time()) if utime is None else utime
        in_msg: dict[str, Any] = {
            "msg_type": "int_msg",
            "created_lt": max(lt - 1, 0),
            "ihr_disabled": True,
            "bounce": False,
            "bounced": bounced,
            "value": value,
            "fwd_fee": _FWD_FEE,
            "ihr_fee": 0,
            "destination": _account_json(account),
            "source": _account_json(sender),
            "import_fee": 0,
            "created_at": utime,
            "hash": secrets.token_hex(32),
            **_message_body(op, comment, sender),
        }
        if aborted:
            compute_phase: dict[str, Any] = {"skipped": True, "skip_reason": "cskip_no_gas"}
        else:
            compute_phase = {
                "skipped": False,
                "success": success,
                "exit_code": 0 if success else 33,
            }
        outgoing = [
            {
                "msg_type": "int_msg",
                "created_lt": lt + 1 + index,
                "ihr_disabled": True,
                "bounce": False,
                "bounced": False,
                "value": max(value // (out_msgs + 1), 1),
                "fwd_fee": _FWD_FEE,
                "ihr_fee": 0,
                "destination": _account_json(sender),
                "source": _account_json(account),
                "import_fee": 0,
                "created_at": utime,
                "hash": secrets.token_hex(32),
            }
            for index in range(out_msgs)
        ]
        credited = value if success and not aborted and not bounced else 0
        balance = max(self._balances.get(account, 0) + credited - _FEES, 0)
        self._balances[account] = balance
        previous = self._previous(account, lt)
        self._seqno += 1
        tx: dict[str, Any] = {
            "hash": tx_hash,
            "lt": lt,
            "account": _account_json(account),
            "success": success,
            "utime": utime,
            "orig_status": "active",
            "end_status": "active",
            "total_fees": _FEES,
            "end_balance": balance,
            "transaction_type": "TransOrd",
            "in_msg": in_msg,
            "out_msgs": outgoing,
            "block": f"(0,8000000000000000,{self._seqno})",
            "prev_trans_hash": previous["hash"] if previous else "0" * 64,
            "prev_trans_lt": previous["lt"] if previous else 0,
            "compute_phase": compute_phase,
            "aborted": aborted,
            "destroyed": False,
        }
        self._insert(account, tx)
        return copy.deepcopy(tx)

    def add_raw(self, wallet: str, tx: dict[str, Any]) -> None:
        """Add ``tx`` to ``wallet``'s account exactly as given (a fixture, a duplicate...).

        It needs an int ``lt`` (to be ordered); nothing else is checked, so malformed
        transactions can be served on purpose.
        """
        lt = tx.get("lt")
        if isinstance(lt, bool) or not isinstance(lt, int):
            raise TypeError(f"a raw transaction needs an int 'lt', got {lt!r}")
        account = Address.parse(wallet)
        self._next_lt = max(self._next_lt, lt + _LT_STEP)
        self._insert(account, copy.deepcopy(tx))

    def transactions(self, wallet: str) -> list[dict[str, Any]]:
        """``wallet``'s transactions, ascending by lt (copies)."""
        return copy.deepcopy(self._chain.get(Address.parse(wallet), []))

    def _allocate_lt(self, lt: int | None) -> int:
        if lt is None:
            lt = self._next_lt
        elif isinstance(lt, bool) or lt < 0:
            raise ValueError(f"lt must be a non-negative int, got {lt!r}")
        self._next_lt = max(self._next_lt, lt + _LT_STEP)
        return lt

    def _previous(self, account: Address, lt: int) -> dict[str, Any] | None:
        txs = self._chain.get(account, [])
        index = bisect.bisect_left(txs, lt, key=lambda tx: tx["lt"])
        return txs[index - 1] if index else None

    def _insert(self, account: Address, tx: dict[str, Any]) -> None:
        txs = self._chain.setdefault(account, [])
        bisect.insort_right(txs, tx, key=lambda item: item["lt"])

    # -- faults ---------------------------------------------------------------------------------

    def fail(
        self,
        mode: TonApiFaultMode,
        times: int | None = 1,
        *,
        retry_after: float | None = None,
        hang: float | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        """Queue a fault for the next ``times`` API requests (``None``: until :meth:`heal`).

        ``"500"``/``"502"``: a server error (502 with an HTML body, as a proxy sends);
        ``"429"``: throttled, with ``Retry-After: <retry_after>`` when given; ``"timeout"``: the
        request is held ``hang`` seconds (default :attr:`hang`) then answered; ``"garbage"``:
        200 with the real body cut in half; ``"wrong_type"``: 200, valid JSON, the first
        transaction's ``lt`` (or ``rest_online``) a string; ``"error_body"``: ``status``
        (default 400) with ``{"error": error}``.
        """
        if mode not in get_args(TonApiFaultMode):
            raise ValueError(
                f"mode must be one of {', '.join(get_args(TonApiFaultMode))}; got {mode!r}"
            )
        _check_times(times)
        if status is not None and not 200 <= status <= 599:
            raise ValueError(f"status must be an HTTP status, got {status}")
        self._faults.append(
            _Fault(mode, times, hang=hang, retry_after=retry_after, status=status, error=error)
        )

    def heal(self) -> None:
        """Forget every queued fault: requests are answered normally again."""
        self._faults.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/blockchain/accounts/{account_id}/transactions", self._transactions)
        app.router.add_get("/v2/status", self._status)
        app.router.add_post("/_standin/transfer", _control(self._control_transfer))
        app.router.add_post("/_standin/add_raw", _control(self._control_add_raw))
        app.router.add_post("/_standin/fail", _control(self._control_fail))
        app.router.add_post("/_standin/heal", _control(self._control_heal))
        app.router.add_post("/_standin/rest_online", _control(self._control_rest_online))
        app.router.add_get("/_standin/requests", _control(self._control_requests))
        app.router.add_get("/_standin/transactions", _control(self._control_transactions))

    async def _serve(
        self,
        request: web.Request,
        answer: Callable[[], web.Response],
        spoil: Callable[[web.Response], web.Response],
    ) -> web.Response:
        """Record ``request``, then answer it, through the next queued fault if any."""
        self.requests.append(
            TonApiRequest(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Authorization"),
            )
        )
        fault = _take(self._faults)
        if fault is None:
            return answer()
        logger.debug(
            "TonAPI stand-in: fault %s on %s",
            fault.mode,
            request.path,
            extra={"action": "standin_fault"},
        )
        match fault.mode:
            case "500":
                return _json_response({"error": fault.error or "internal server error"}, 500)
            case "502":
                return web.Response(
                    text="<html><head><title>502 Bad Gateway</title></head><body>"
                    "<center><h1>502 Bad Gateway</h1></center></body></html>",
                    status=502,
                    content_type="text/html",
                )
            case "429":
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                body = {"error": fault.error or "rate limit: 1 request per 4 seconds"}
                return web.Response(
                    body=msgspec.json.encode(body),
                    status=429,
                    content_type=_JSON,
                    headers=headers,
                )
            case "timeout":
                await self._hold(self.hang if fault.hang is None else fault.hang)
                return answer()
            case "garbage":
                return _truncated(answer())
            case "wrong_type":
                return spoil(answer())
            case _:  # "error_body"
                return _json_response(
                    {"error": fault.error or "invalid request"}, fault.status or 400
                )

    async def _transactions(self, request: web.Request) -> web.Response:
        return await self._serve(
            request, lambda: self._transactions_answer(request), _spoil_transactions
        )

    def _transactions_answer(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        try:
            account = Address.parse(account_id)
        except InvalidAddress as exc:
            return _json_response({"error": f"can't decode address {account_id}: {exc}"}, 400)
        query = request.query
        try:
            after_lt = _int_param(query, "after_lt", minimum=0)
            before_lt = _int_param(query, "before_lt", minimum=0)
            limit = _int_param(query, "limit", minimum=1, maximum=1000)
        except ValueError as exc:
            return _json_response({"error": str(exc)}, 400)
        sort_order = query.get("sort_order", "desc")
        if sort_order not in ("asc", "desc"):
            return _json_response(
                {"error": f"decode params: query: sort_order: invalid value: {sort_order}"},
                400,
            )
        selected = [
            tx
            for tx in self._chain.get(account, [])
            if (after_lt is None or tx["lt"] > after_lt)
            and (not before_lt or tx["lt"] < before_lt)  # 0 means "latest", as TonAPI does
        ]
        if sort_order == "desc":
            selected.reverse()
        return _json_response({"transactions": selected[: 100 if limit is None else limit]})

    async def _status(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._status_answer, _spoil_status)

    def _status_answer(self) -> web.Response:
        return _json_response(
            {
                "rest_online": self.rest_online,
                "indexing_latency": self.indexing_latency,
                "last_known_masterchain_seqno": self._seqno,
            }
        )

    async def _control_transfer(self, request: web.Request) -> object:
        body = await _control_body(request, _TransferBody)
        return self.transfer(**msgspec.structs.asdict(body))

    async def _control_add_raw(self, request: web.Request) -> object:
        body = await _control_body(request, _RawBody)
        try:
            self.add_raw(body.wallet, body.tx)
        except TypeError as exc:
            raise _ControlError(str(exc)) from exc
        return {"ok": True}

    async def _control_fail(self, request: web.Request) -> object:
        body = await _control_body(request, _TonFailBody)
        self.fail(
            body.mode,
            body.times,
            retry_after=body.retry_after,
            hang=body.hang,
            status=body.status,
            error=body.error,
        )
        return {"ok": True}

    async def _control_heal(self, request: web.Request) -> object:
        self.heal()
        return {"ok": True}

    async def _control_rest_online(self, request: web.Request) -> object:
        body = await _control_body(request, _OnlineBody)
        self.rest_online = body.online
        if body.indexing_latency is not None:
            self.indexing_latency = body.indexing_latency
        return {"ok": True}

    async def _control_requests(self, request: web.Request) -> object:
        return [entry._asdict() for entry in self.requests]

    async def _control_transactions(self, request: web.Request) -> object:
        wallet = request.query.get("wallet")
        if wallet is None:
            raise _ControlError("give the account as ?wallet=<address>")
        return self.transactions(wallet)


def _int_param(
    query: Mapping[str, str], name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    """An integer query parameter, ``None`` when absent; ``ValueError`` in TonAPI's words."""
    text = query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"decode params: query: {name}: invalid integer: {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"decode params: query: {name}: value {value} out of range {bounds}")
    return value


def _spoil_transactions(response: web.Response) -> web.Response:
    """A valid JSON answer with a field of the wrong type: the first ``lt`` as a string."""
    payload = json.loads(response.body if isinstance(response.body, bytes) else b"{}")
    if response.status == 200 and payload.get("transactions"):
        first = payload["transactions"][0]
        first["lt"] = str(first["lt"])
    else:
        payload = {"transactions": {"error": "not a list"}}
    return _json_response(payload)


def _spoil_status(response: web.Response) -> web.Response:
    payload = json.loads(response.body if isinstance(response.body, bytes) else b"{}")
    payload["rest_online"] = str(payload.get("rest_online")).lower()
    return _json_response(payload)


# -- Telegram Bot API ---------------------------------------------------------------------------


class BotApiCall(NamedTuple):
    """A Bot API call the stand-in received with the right token.

    ``params`` merges the query string and the body (form or JSON); object-valued fields
    that aiogram sends as JSON strings (``reply_markup``...) are decoded.
    """

    method: str
    params: dict[str, Any]


class SentMessage(NamedTuple):
    """A message delivered by ``sendMessage``: ``chat_id`` an int, or ``@username`` text."""

    chat_id: int | str
    text: str


class _ApiError(Exception):
    """A Bot API error answer: ``{"ok": false, "error_code", "description"[, "parameters"]}``."""

    def __init__(self, error_code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after

    def response(self) -> web.Response:
        payload: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.retry_after is not None:
            payload["parameters"] = {"retry_after": self.retry_after}
        return _json_response(payload, self.error_code)


class _ChatFault(msgspec.Struct):
    error_code: int
    description: str
    retry_after: int | None
    remaining: int | None


class _MemberCountBody(msgspec.Struct, forbid_unknown_fields=True):
    chat: int | str
    count: int


class _FailChatBody(msgspec.Struct, forbid_unknown_fields=True):
    chat: int | str
    error_code: int
    description: str | None = None
    retry_after: int | None = None
    times: int | None = None


class _BotFailBody(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    mode: BotApiFaultMode
    times: int | None = 1
    hang: float | None = None


_DEFAULT_DESCRIPTIONS: Final = {
    400: "Bad Request: chat not found",
    403: "Forbidden: bot is not a member of the channel chat",
    404: "Not Found",
    500: "Internal Server Error",
}
_OBJECT_FIELDS: Final = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "allowed_updates",
    }
)
_MAX_TEXT: Final = 4096
_MAX_POLL_WAIT: Final = 50.0


def _chat_key(chat: object) -> str:
    """How the stand-in keys a chat: the id as text, or ``@username`` in lower case."""
    text = str(chat).strip()
    return text.lower() if text.startswith("@") else text


def _chat_id(chat: object) -> int | str:
    key = _chat_key(chat)
    try:
        return int(key)
    except ValueError:
        return key


_Handler: TypeAlias = Callable[[dict[str, Any]], Awaitable[object]]


class BotApiStandIn(_StandIn):
    """The Telegram Bot API on 127.0.0.1 for one bot ``token``, with per-chat faults."""

    def __init__(
        self,
        token: str = DEFAULT_BOT_TOKEN,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hang: float = DEFAULT_HANG,
        username: str = "i3lani_standin_bot",
    ) -> None:
        bot_id, colon, secret = token.partition(":")
        if not (colon and bot_id.isdigit() and secret) or any(c.isspace() for c in token):
            raise ValueError("a bot token looks like <digits>:<text>, without spaces")
        super().__init__(host=host, port=port, hang=hang)
        self._token = token
        self.me: dict[str, Any] = {
            "id": int(bot_id),
            "is_bot": True,
            "first_name": "i3lani (stand-in)",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        """What ``getMe`` answers (a User object)."""
        self.sent: list[SentMessage] = []
        """Messages delivered by ``sendMessage``, in order."""
        self.calls: list[BotApiCall] = []
        """Every call received with the right token, in order."""
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self._member_counts: dict[str, int] = {}
        self._chat_faults: dict[str, deque[_ChatFault]] = {}
        self._method_faults: dict[str, deque[_Fault]] = {}
        self._message_ids: dict[str, int] = {}
        self._handlers: dict[str, tuple[str, _Handler]] = {
            name.lower(): (name, handler)
            for name, handler in (
                ("getMe", self._get_me),
                ("getChatMemberCount", self._get_chat_member_count),
                ("sendMessage", self._send_message),
                ("getUpdates", self._get_updates),
                ("setWebhook", self._set_webhook),
                ("deleteWebhook", self._delete_webhook),
                ("getWebhookInfo", self._get_webhook_info),
            )
        }

    @property
    def token(self) -> str:
        """The bot token this stand-in accepts (any other gets 401)."""
        return self._token

    # -- set-up and faults ----------------------------------------------------------------------

    def set_member_count(self, chat: int | str, count: int) -> None:
        """Make ``chat`` (an id or ``@username``) known, with ``count`` members."""
        if isinstance(count, bool) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        self._member_counts[_chat_key(chat)] = count

    def fail_chat(
        self,
        chat: int | str,
        error_code: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int | None = None,
    ) -> None:
        """Answer requests about ``chat`` with an error, ``times`` times (``None``: until healed).

        Applies to every method given that ``chat_id``. ``description`` defaults to Telegram's
        usual text for the code: 400 ``Bad Request: chat not found``, 403 ``Forbidden: bot is
        not a member of the channel chat``, 429 ``Too Many Requests: retry after N`` (with
        ``parameters.retry_after`` when ``retry_after`` is given).
        """
        if not 400 <= error_code <= 599:
            raise ValueError(f"error_code must be a 4xx or 5xx, got {error_code}")
        _check_times(times)
        if retry_after is not None and (isinstance(retry_after, bool) or retry_after < 0):
            raise ValueError(f"retry_after is whole seconds, >= 0; got {retry_after!r}")
        if description is None:
            if error_code == 429:
                description = (
                    f"Too Many Requests: retry after {retry_after}"
                    if retry_after is not None
                    else "Too Many Requests"
                )
            else:
                description = _DEFAULT_DESCRIPTIONS.get(error_code, f"Error {error_code}")
        self._chat_faults.setdefault(_chat_key(chat), deque()).append(
            _ChatFault(error_code, description, retry_after, times)
        )

    def fail(
        self,
        method: str,
        mode: BotApiFaultMode,
        times: int | None = 1,
        *,
        hang: float | None = None,
    ) -> None:
        """Queue a fault for ``method`` (any case; ``"*"`` for every method).

        ``"500"``: ``Internal Server Error``; ``"timeout"``: held ``hang`` seconds (default
        :attr:`hang`) then answered; ``"garbage"``: 200 with the real body cut in half.
        """
        if mode not in get_args(BotApiFaultMode):
            raise ValueError(
                f"mode must be one of {', '.join(get_args(BotApiFaultMode))}; got {mode!r}"
            )
        _check_times(times)
        self._method_faults.setdefault(method.lower(), deque()).append(
            _Fault(mode, times, hang=hang)
        )

    def heal(self) -> None:
        """Forget every chat and method fault."""
        self._chat_faults.clear()
        self._method_faults.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_post("/_standin/member_count", _control(self._control_member_count))
        app.router.add_post("/_standin/fail_chat", _control(self._control_fail_chat))
        app.router.add_post("/_standin/fail", _control(self._control_fail))
        app.router.add_post("/_standin/heal", _control(self._control_heal))
        app.router.add_get("/_standin/sent", _control(self._control_sent))
        app.router.add_get("/_standin/calls", _control(self._control_calls))

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self._token:
            return _ApiError(401, "Unauthorized").response()
        name = request.match_info["method"]
        try:
            params = await _read_params(request)
        except _ApiError as exc:
            return exc.response()
        known = self._handlers.get(name.lower())
        method, handler = known if known else (name, None)
        self.calls.append(BotApiCall(method, params))
        fault = _take(self._method_faults.get(name.lower(), deque())) or _take(
            self._method_faults.get("*", deque())
        )
        if fault is not None and fault.mode == "500":
            return _ApiError(500, "Internal Server Error").response()
        if fault is not None and fault.mode == "timeout":
            await self._hold(self.hang if fault.hang is None else fault.hang)
        response = await self._answer(handler, params)
        if fault is not None and fault.mode == "garbage":
            return _truncated(response)
        return response

    async def _answer(self, handler: _Handler | None, params: dict[str, Any]) -> web.Response:
        try:
            result = await self._call(handler, params)
        except _ApiError as exc:
            return exc.response()
        if isinstance(result, _WithDescription):
            return _json_response({"ok": True, "result": result.result, "description": result.text})
        return _json_response({"ok": True, "result": result})

    async def _call(self, handler: _Handler | None, params: dict[str, Any]) -> object:
        """The method's result; raises :class:`_ApiError` for an error answer."""
        if handler is None:
            raise _ApiError(404, "Not Found: method not found")
        if "chat_id" in params:
            fault = _take_chat_fault(self._chat_faults.get(_chat_key(params["chat_id"])))
            if fault is not None:
                raise fault
        return await handler(params)

    # -- methods --------------------------------------------------------------------------------

    async def _get_me(self, params: dict[str, Any]) -> object:
        return self.me

    async def _get_chat_member_count(self, params: dict[str, Any]) -> object:
        chat = _required(params, "chat_id", "Bad Request: chat_id is empty")
        count = self._member_counts.get(_chat_key(chat))
        if count is None:
            raise _ApiError(400, "Bad Request: chat not found")
        return count

    async def _send_message(self, params: dict[str, Any]) -> object:
        chat = _required(params, "chat_id", "Bad Request: chat_id is empty")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > _MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        chat_id = _chat_id(chat)
        key = _chat_key(chat)
        message_id = self._message_ids.get(key, 0) + 1
        self._message_ids[key] = message_id
        self.sent.append(SentMessage(chat_id, text))
        chat_object = self._chat_object(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat_object,
            "text": text,
        }
        if chat_object["type"] == "channel":
            message["sender_chat"] = chat_object
        else:
            message["from"] = {
                key: self.me[key] for key in ("id", "is_bot", "first_name", "username")
            }
        return message

    def _chat_object(self, chat_id: int | str) -> dict[str, Any]:
        if isinstance(chat_id, str):  # @username: a public channel
            numeric = -(1_000_000_000_000 + zlib.crc32(chat_id.encode()) % 1_000_000_000)
            return {"id": numeric, "title": chat_id[1:], "username": chat_id[1:], "type": "channel"}
        if chat_id > 0:
            return {"id": chat_id, "first_name": "Admin", "type": "private"}
        if str(chat_id).startswith("-100"):
            return {"id": chat_id, "title": f"Channel {chat_id}", "type": "channel"}
        return {"id": chat_id, "title": f"Group {chat_id}", "type": "group"}

    async def _get_updates(self, params: dict[str, Any]) -> object:
        if self.webhook_url:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        try:
            wait = float(params.get("timeout", 0) or 0)
        except (TypeError, ValueError):
            raise _ApiError(400, "Bad Request: invalid timeout specified") from None
        if wait > 0:  # long polling: nothing will come, so hold the request like Telegram
            await self._hold(min(wait, _MAX_POLL_WAIT))
        return []

    async def _set_webhook(self, params: dict[str, Any]) -> object:
        url = params.get("url")
        if not isinstance(url, str):
            raise _ApiError(400, "Bad Request: bad webhook: an HTTPS URL must be provided")
        secret = params.get("secret_token")
        self.webhook_url = url
        self.webhook_secret = secret if isinstance(secret, str) and secret else None
        if not url:
            return _WithDescription(True, "Webhook was deleted")
        return _WithDescription(True, "Webhook was set")

    async def _delete_webhook(self, params: dict[str, Any]) -> object:
        existed = bool(self.webhook_url)
        self.webhook_url = ""
        self.webhook_secret = None
        return _WithDescription(
            True, "Webhook was deleted" if existed else "Webhook is already deleted"
        )

    async def _get_webhook_info(self, params: dict[str, Any]) -> object:
        return {"url": self.webhook_url, "has_custom_certificate": False, "pending_update_count": 0}

    # -- control --------------------------------------------------------------------------------

    async def _control_member_count(self, request: web.Request) -> object:
        body = await _control_body(request, _MemberCountBody)
        self.set_member_count(body.chat, body.count)
        return {"ok": True}

    async def _control_fail_chat(self, request: web.Request) -> object:
        body = await _control_body(request, _FailChatBody)
        self.fail_chat(body.chat, body.error_code, body.description, body.retry_after, body.times)
        return {"ok": True}

    async def _control_fail(self, request: web.Request) -> object:
        body = await _control_body(request, _BotFailBody)
        self.fail(body.method, body.mode, body.times, hang=body.hang)
        return {"ok": True}

    async def _control_heal(self, request: web.Request) -> object:
        self.heal()
        return {"ok": True}

    async def _control_sent(self, request: web.Request) -> object:
        return [entry._asdict() for entry in self.sent]

    async def _control_calls(self, request: web.Request) -> object:
        return [entry._asdict() for entry in self.calls]


class _WithDescription(NamedTuple):
    """A successful result that Telegram accompanies with a ``description``."""

    result: object
    text: str


def _take_chat_fault(queue: deque[_ChatFault] | None) -> _ApiError | None:
    if not queue:
        return None
    fault = queue[0]
    if fault.remaining is not None:
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
    return _ApiError(fault.error_code, fault.description, fault.retry_after)


def _required(params: dict[str, Any], name: str, description: str) -> object:
    value = params.get(name)
    if value is None or value == "":
        raise _ApiError(400, description)
    return value


async def _read_params(request: web.Request) -> dict[str, Any]:
    """The call's parameters: query string, then a form or JSON body on top."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == _JSON:
            raw = await request.read()
            try:
                data = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise _ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(data, dict):
                raise _ApiError(400, "Bad Request: JSON body must be an object")
            params.update(data)
        else:  # application/x-www-form-urlencoded or multipart/form-data, as aiogram sends
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    params[key] = value.filename
                elif isinstance(value, bytes | bytearray):
                    params[key] = bytes(value).decode("utf-8", "replace")
                else:
                    params[key] = value
    for key in _OBJECT_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str):
            try:
                params[key] = json.loads(value)
            except ValueError:
                raise _ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
    return params


# -- running them as a process ------------------------------------------------------------------


async def serve_standins(
    *,
    host: str = "127.0.0.1",
    tonapi_port: int = 0,
    bot_api_port: int = 0,
    token: str = DEFAULT_BOT_TOKEN,
    on_ready: Callable[[TonApiStandIn, BotApiStandIn], None] | None = None,
) -> None:
    """Run both stand-ins until cancelled; ``on_ready`` is called once both listen."""
    async with (
        TonApiStandIn(host=host, port=tonapi_port) as tonapi,
        BotApiStandIn(token, host=host, port=bot_api_port) as bot_api,
    ):
        if on_ready is not None:
            on_ready(tonapi, bot_api)
        await anyio.sleep_forever()


def _announce(tonapi: TonApiStandIn, bot_api: BotApiStandIn) -> None:
    print(json.dumps({"tonapi_url": tonapi.url, "bot_api_url": bot_api.url}), flush=True)


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await serve_standins(
            host=args.host,
            tonapi_port=args.tonapi_port,
            bot_api_port=args.bot_api_port,
            token=args.token,
            on_ready=_announce,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ops.standins``: both stand-ins until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.standins",
        description="Run local TonAPI and Telegram Bot API stand-ins; print their URLs as JSON.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tonapi-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--bot-api-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--token", default=DEFAULT_BOT_TOKEN, help="the bot token to accept")
    args = parser.parse_args(argv)
    try:
        anyio.run(_serve_until_signalled, args, backend="asyncio")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen: {exc}; choose other ports", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
