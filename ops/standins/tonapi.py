"""The TonAPI stand-in: a simulated chain served as TonAPI's transactions and status
endpoints, transactions shaped exactly like ``fixtures/tonapi/*.json``, and the TON Streaming
API that notifies them (:attr:`TonApiStandIn.stream`, :mod:`ops.standins.tonapi_stream`).
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple, get_args

import msgspec
from aiohttp import web

from actors.ton import Address, InvalidAddress
from events import environment
from ops.standins.server import (
    DEFAULT_HANG,
    JSON_TYPE,
    ControlError,
    Fault,
    StandIn,
    check_times,
    control_body,
    control_route,
    json_response,
    take_fault,
    truncated,
)
from ops.standins.tonapi_stream import StreamHub

logger = logging.getLogger(__name__)

TonApiFaultMode = Literal["500", "502", "429", "timeout", "garbage", "wrong_type", "error_body"]
TransferOp = Literal["text_comment", "jetton_notify", "encrypted_comment", "none"]

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


class _SendBody(msgspec.Struct, forbid_unknown_fields=True):
    wallet: str
    destination: str
    value: int
    comment: str | None = None
    lt: int | None = None
    utime: int | None = None
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


def _message_body(
    op: TransferOp, comment: str | None, sender: Address, rng: random.Random
) -> dict[str, Any]:
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
        body = {"cipher_text": rng.randbytes(48).hex()}
    return {"op_code": op_code, "decoded_op_name": name, "decoded_body": body}


class TonApiStandIn(StandIn):
    """TonAPI on 127.0.0.1: a simulated chain, its transactions endpoint and faults."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hang: float = DEFAULT_HANG,
        keepalive: float = 15.0,
        finality_delay: float = 0.0,
    ) -> None:
        """``keepalive`` and ``finality_delay``: the streaming endpoint's, see
        :class:`~ops.standins.tonapi_stream.StreamHub`."""
        super().__init__(host=host, port=port, hang=hang)
        self.stream = StreamHub(keepalive=keepalive, finality_delay=finality_delay)
        """``POST /streaming/v2/sse``: its subscriptions, notices and faults (they are apart
        from the REST faults :meth:`fail` queues: a stream fault never takes a REST request's
        turn, nor the other way round)."""
        self.requests: list[TonApiRequest] = []
        """Every TonAPI request received, in order."""
        self.rest_online = True
        """What ``/v2/status`` reports as ``rest_online``."""
        self.indexing_latency = 0
        self._chain: dict[Address, list[dict[str, Any]]] = {}
        self._balances: dict[Address, int] = {}
        self._faults: deque[Fault] = deque()
        self._next_lt = _FIRST_LT
        self._seqno = _FIRST_SEQNO
        # Hashes and ciphertexts are drawn from here, and utime defaults to the environment's
        # clock, so that a simulation's seed decides them too.
        self._rng = environment.new_rng()
        self.index_lag = 0.0
        """Seconds a new transaction stays off the REST endpoint after it is added (and
        notified on the stream): TonAPI's index a moment behind its stream. 0: none."""
        self._hidden_until: dict[int, float] = {}  # id() of a transaction -> monotonic time

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
        digits (clock and randomness from :mod:`events.environment`). ``comment=None`` (or
        ``op="none"``) sends no body; ``op`` picks what the body is: a text comment, a jetton
        transfer notification carrying the comment, or an encrypted comment. ``aborted`` also
        skips the compute phase (``cskip_no_gas``), and ``out_msgs`` adds that many outgoing
        messages back to ``source``. The flags are written as given, so contradictory ones can
        be tested too.
        """
        account = Address.parse(wallet)
        sender = Address.parse(source)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"value is a non-negative int of nanotons, got {value!r}")
        if out_msgs < 0:
            raise ValueError(f"out_msgs must not be negative, got {out_msgs}")
        if op not in get_args(TransferOp):
            raise ValueError(f"op must be one of {', '.join(get_args(TransferOp))}, got {op!r}")
        tx_hash = self._tx_hash(tx_hash)
        lt = self._allocate_lt(lt)
        utime = int(environment.now().timestamp()) if utime is None else utime
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
            "hash": self._rng.randbytes(32).hex(),
            **_message_body(op, comment, sender, self._rng),
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
                "hash": self._rng.randbytes(32).hex(),
            }
            for index in range(out_msgs)
        ]
        credited = value if success and not aborted and not bounced else 0
        return self._add(
            account,
            tx_hash,
            lt,
            utime,
            in_msg,
            outgoing,
            change=credited,
            success=success,
            aborted=aborted,
            compute_phase=compute_phase,
        )

    def send(
        self,
        wallet: str,
        *,
        destination: str,
        value: int,
        comment: str | None = None,
        lt: int | None = None,
        utime: int | None = None,
        tx_hash: str | None = None,
    ) -> dict[str, Any]:
        """Record an outgoing transfer: ``wallet``'s owner sends ``value`` nanotons to
        ``destination`` (a refund, say). As on chain, it is a transaction of ``wallet`` whose
        incoming message is the owner's signed external message and whose one outgoing
        message carries the TON (with ``comment`` as a text comment). Defaults as for
        :meth:`transfer`."""
        account = Address.parse(wallet)
        receiver = Address.parse(destination)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"value is a positive int of nanotons, got {value!r}")
        tx_hash = self._tx_hash(tx_hash)
        lt = self._allocate_lt(lt)
        utime = int(environment.now().timestamp()) if utime is None else utime
        in_msg: dict[str, Any] = {
            "msg_type": "ext_in_msg",
            "created_lt": 0,
            "ihr_disabled": False,
            "bounce": False,
            "bounced": False,
            "value": 0,
            "fwd_fee": 0,
            "ihr_fee": 0,
            "destination": _account_json(account),
            "import_fee": 0,
            "created_at": 0,
            "hash": self._rng.randbytes(32).hex(),
            "decoded_op_name": "wallet_signed_v4",
        }
        outgoing = {
            "msg_type": "int_msg",
            "created_lt": lt + 1,
            "ihr_disabled": True,
            "bounce": True,
            "bounced": False,
            "value": value,
            "fwd_fee": _FWD_FEE,
            "ihr_fee": 0,
            "destination": _account_json(receiver),
            "source": _account_json(account),
            "import_fee": 0,
            "created_at": utime,
            "hash": self._rng.randbytes(32).hex(),
            **_message_body("text_comment", comment, account, self._rng),
        }
        return self._add(
            account,
            tx_hash,
            lt,
            utime,
            in_msg,
            [outgoing],
            change=-value - _FWD_FEE,
            success=True,
            aborted=False,
            compute_phase={"skipped": False, "success": True, "exit_code": 0},
        )

    def _add(
        self,
        account: Address,
        tx_hash: str,
        lt: int,
        utime: int,
        in_msg: dict[str, Any],
        out_msgs: list[dict[str, Any]],
        *,
        change: int,
        success: bool,
        aborted: bool,
        compute_phase: dict[str, Any],
    ) -> dict[str, Any]:
        """Put a transaction of ``account`` on the chain, its balance moved by ``change`` (and
        the fees), chained to the one before it; returns a copy."""
        balance = max(self._balances.get(account, 0) + change - _FEES, 0)
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
            "out_msgs": out_msgs,
            "block": f"(0,8000000000000000,{self._seqno})",
            "prev_trans_hash": previous["hash"] if previous else "0" * 64,
            "prev_trans_lt": previous["lt"] if previous else 0,
            "compute_phase": compute_phase,
            "aborted": aborted,
            "destroyed": False,
        }
        self._insert(account, tx)
        return copy.deepcopy(tx)

    def _tx_hash(self, tx_hash: str | None) -> str:
        """``tx_hash`` checked, or 64 random hex digits."""
        if tx_hash is None:
            return self._rng.randbytes(32).hex()
        if len(tx_hash) != 64 or tx_hash.strip("0123456789abcdef"):
            raise ValueError(f"tx_hash must be 64 lowercase hex digits, got {tx_hash!r}")
        return tx_hash

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
        if self.index_lag > 0:
            self._hidden_until[id(tx)] = time.monotonic() + self.index_lag
        self.stream.publish(account, tx)  # on the chain first: then notified

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stream.close()
        await super()._on_shutdown(app)

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
        check_times(times)
        if status is not None and not 200 <= status <= 599:
            raise ValueError(f"status must be an HTTP status, got {status}")
        self._faults.append(
            Fault(mode, times, hang=hang, retry_after=retry_after, status=status, error=error)
        )

    def heal(self) -> None:
        """Forget every queued fault: requests are answered normally again."""
        self._faults.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/blockchain/accounts/{account_id}/transactions", self._transactions)
        app.router.add_get("/v2/status", self._status)
        app.router.add_post("/_standin/transfer", control_route(self._control_transfer))
        app.router.add_post("/_standin/send", control_route(self._control_send))
        app.router.add_post("/_standin/add_raw", control_route(self._control_add_raw))
        app.router.add_post("/_standin/fail", control_route(self._control_fail))
        app.router.add_post("/_standin/heal", control_route(self._control_heal))
        app.router.add_post("/_standin/rest_online", control_route(self._control_rest_online))
        app.router.add_get("/_standin/requests", control_route(self._control_requests))
        app.router.add_get("/_standin/transactions", control_route(self._control_transactions))
        self.stream.add_routes(app, control_route)

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
        fault = take_fault(self._faults)
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
                return json_response({"error": fault.error or "internal server error"}, 500)
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
                    content_type=JSON_TYPE,
                    headers=headers,
                )
            case "timeout":
                await self._hold(self.hang if fault.hang is None else fault.hang)
                return answer()
            case "garbage":
                return truncated(answer())
            case "wrong_type":
                return spoil(answer())
            case _:  # "error_body"
                return json_response(
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
            return json_response({"error": f"can't decode address {account_id}: {exc}"}, 400)
        query = request.query
        try:
            after_lt = _int_param(query, "after_lt", minimum=0)
            before_lt = _int_param(query, "before_lt", minimum=0)
            limit = _int_param(query, "limit", minimum=1, maximum=1000)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        sort_order = query.get("sort_order", "desc")
        if sort_order not in ("asc", "desc"):
            return json_response(
                {"error": f"decode params: query: sort_order: invalid value: {sort_order}"},
                400,
            )
        now = time.monotonic()
        selected = [
            tx
            for tx in self._chain.get(account, [])
            if (after_lt is None or tx["lt"] > after_lt)
            and (not before_lt or tx["lt"] < before_lt)  # 0 means "latest", as TonAPI does
            and self._hidden_until.get(id(tx), 0.0) <= now  # indexed by now
        ]
        if sort_order == "desc":
            selected.reverse()
        return json_response({"transactions": selected[: 100 if limit is None else limit]})

    async def _status(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._status_answer, _spoil_status)

    def _status_answer(self) -> web.Response:
        return json_response(
            {
                "rest_online": self.rest_online,
                "indexing_latency": self.indexing_latency,
                "last_known_masterchain_seqno": self._seqno,
            }
        )

    async def _control_transfer(self, request: web.Request) -> object:
        body = await control_body(request, _TransferBody)
        return self.transfer(**msgspec.structs.asdict(body))

    async def _control_send(self, request: web.Request) -> object:
        body = await control_body(request, _SendBody)
        return self.send(**msgspec.structs.asdict(body))

    async def _control_add_raw(self, request: web.Request) -> object:
        body = await control_body(request, _RawBody)
        try:
            self.add_raw(body.wallet, body.tx)
        except TypeError as exc:
            raise ControlError(str(exc)) from exc
        return {"ok": True}

    async def _control_fail(self, request: web.Request) -> object:
        body = await control_body(request, _TonFailBody)
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
        body = await control_body(request, _OnlineBody)
        self.rest_online = body.online
        if body.indexing_latency is not None:
            self.indexing_latency = body.indexing_latency
        return {"ok": True}

    async def _control_requests(self, request: web.Request) -> object:
        return [entry._asdict() for entry in self.requests]

    async def _control_transactions(self, request: web.Request) -> object:
        wallet = request.query.get("wallet")
        if wallet is None:
            raise ControlError("give the account as ?wallet=<address>")
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
    return json_response(payload)


def _spoil_status(response: web.Response) -> web.Response:
    payload = json.loads(response.body if isinstance(response.body, bytes) else b"{}")
    payload["rest_online"] = str(payload.get("rest_online")).lower()
    return json_response(payload)
