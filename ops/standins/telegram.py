"""The Telegram Bot API stand-in: ``/bot{token}/{method}`` for the methods i3lani calls,
reading aiogram's form bodies as well as JSON, with per-chat and global faults.

Every call is kept in :attr:`BotApiStandIn.calls` with the moment it arrived (the stand-in's
monotonic clock) and the status it was answered with, so a test or a benchmark can read from
the stand-in's own log how many requests came in any one second, and how many got a 429.
:meth:`BotApiStandIn.enforce_limits` makes it hold ``sendMessage`` to Telegram's limits itself
(about 30 a second for the bot, one a second per chat, 20 a minute per group or channel),
answering what goes over with 429 and ``retry_after``, as Telegram does.
"""

from __future__ import annotations

import bisect
import json
import math
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, NamedTuple, TypeAlias, get_args

import msgspec
from aiohttp import web

from events import environment
from ops.standins.server import (
    DEFAULT_HANG,
    JSON_TYPE,
    Fault,
    StandIn,
    check_times,
    control_body,
    control_route,
    json_response,
    take_fault,
    truncated,
)

BotApiFaultMode = Literal["500", "timeout", "garbage"]

DEFAULT_BOT_TOKEN: Final = "123456789:standin-token-not-a-secret"


# -- Telegram Bot API ---------------------------------------------------------------------------


class BotApiCall(NamedTuple):
    """A Bot API call the stand-in received with the right token.

    ``params`` merges the query string and the body (form or JSON); object-valued fields
    that aiogram sends as JSON strings (``reply_markup``...) are decoded. ``at`` is when it
    arrived, on the stand-in's monotonic clock (``events.environment.monotonic()``: the
    simulated one in a simulation); ``status`` the HTTP status it was answered with (0 while
    it is being answered).
    """

    method: str
    params: dict[str, Any]
    at: float = 0.0
    status: int = 0


class TelegramLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Telegram's limits on ``sendMessage``, as the stand-in holds them: at most ``overall``
    messages in any second for the bot, ``per_chat`` in any second for one private chat, and
    ``per_group`` in any minute for one group or channel (a negative id or an ``@username``).
    Messages refused do not count."""

    overall: int = 30
    per_chat: int = 1
    per_group: int = 20


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
        return json_response(payload, self.error_code)


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


TELEGRAM_LIMITS: Final = TelegramLimits()
"""Telegram's own: 30 messages a second, one a second per chat, 20 a minute per group."""


class _Window:
    """The arrival times of the messages a limit counts, within its window (kept in order:
    two requests' bodies may be read in the other order than they came)."""

    def __init__(self, count: int, per: float) -> None:
        self.count = count
        self.per = per
        self.times: list[float] = []

    def retry_after(self, now: float) -> int | None:
        """Whole seconds to wait (at least 1) when a message arriving at ``now`` would go
        over, else None."""
        inside = [at for at in self.times if now - self.per < at <= now]
        self.times = [at for at in self.times if at > now - self.per]
        if len(inside) < self.count:
            return None
        return max(1, math.ceil(inside[0] + self.per - now))

    def add(self, at: float) -> None:
        bisect.insort(self.times, at)


class _LimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    limits: TelegramLimits | None = None


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


class BotApiStandIn(StandIn):
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
        """Every call received with the right token, in order of arrival."""
        self.limits: TelegramLimits | None = None
        """The limits enforced on ``sendMessage`` (:meth:`enforce_limits`); None: none."""
        self._overall_window = _Window(1, 1.0)
        self._chat_windows: dict[str, _Window] = {}
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self._member_counts: dict[str, int] = {}
        self._chat_faults: dict[str, deque[_ChatFault]] = {}
        self._method_faults: dict[str, deque[Fault]] = {}
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
        check_times(times)
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
        check_times(times)
        self._method_faults.setdefault(method.lower(), deque()).append(
            Fault(mode, times, hang=hang)
        )

    def enforce_limits(self, limits: TelegramLimits | None = TELEGRAM_LIMITS) -> None:
        """Answer a ``sendMessage`` that would go over ``limits`` (default: Telegram's) with
        429 and ``retry_after``; None: enforce nothing again (as a new stand-in does). Starts
        the count afresh."""
        self.limits = limits
        self._overall_window = _Window(limits.overall if limits else 1, 1.0)
        self._chat_windows = {}

    def throttled(self) -> int:
        """How many calls were answered 429 (flood control, enforced or injected)."""
        return sum(1 for call in self.calls if call.status == 429)

    def heal(self) -> None:
        """Forget every chat and method fault."""
        self._chat_faults.clear()
        self._method_faults.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_post("/_standin/member_count", control_route(self._control_member_count))
        app.router.add_post("/_standin/fail_chat", control_route(self._control_fail_chat))
        app.router.add_post("/_standin/fail", control_route(self._control_fail))
        app.router.add_post("/_standin/heal", control_route(self._control_heal))
        app.router.add_post("/_standin/limits", control_route(self._control_limits))
        app.router.add_get("/_standin/sent", control_route(self._control_sent))
        app.router.add_get("/_standin/calls", control_route(self._control_calls))

    async def _api(self, request: web.Request) -> web.Response:
        arrived = environment.monotonic()  # before its body is read: when it came
        if request.match_info["token"] != self._token:
            return _ApiError(401, "Unauthorized").response()
        name = request.match_info["method"]
        try:
            params = await _read_params(request)
        except _ApiError as exc:
            return exc.response()
        known = self._handlers.get(name.lower())
        method, handler = known if known else (name, None)
        index = len(self.calls)
        self.calls.append(BotApiCall(method, params, arrived))
        response = await self._respond(name, handler, params, arrived)
        self.calls[index] = self.calls[index]._replace(status=response.status)
        return response

    async def _respond(
        self, name: str, handler: _Handler | None, params: dict[str, Any], arrived: float
    ) -> web.Response:
        fault = take_fault(self._method_faults.get(name.lower(), deque())) or take_fault(
            self._method_faults.get("*", deque())
        )
        if fault is not None and fault.mode == "500":
            return _ApiError(500, "Internal Server Error").response()
        if fault is not None and fault.mode == "timeout":
            await self._hold(self.hang if fault.hang is None else fault.hang)
        response = await self._answer(handler, params, arrived)
        if fault is not None and fault.mode == "garbage":
            return truncated(response)
        return response

    async def _answer(
        self, handler: _Handler | None, params: dict[str, Any], arrived: float
    ) -> web.Response:
        try:
            result = await self._call(handler, params, arrived)
        except _ApiError as exc:
            return exc.response()
        if isinstance(result, _WithDescription):
            return json_response({"ok": True, "result": result.result, "description": result.text})
        return json_response({"ok": True, "result": result})

    async def _call(
        self, handler: _Handler | None, params: dict[str, Any], arrived: float
    ) -> object:
        """The method's result; raises :class:`_ApiError` for an error answer."""
        if handler is None:
            raise _ApiError(404, "Not Found: method not found")
        if "chat_id" in params:
            fault = _take_chat_fault(self._chat_faults.get(_chat_key(params["chat_id"])))
            if fault is not None:
                raise fault
        if handler == self._send_message and self.limits is not None:
            self._hold_to_limits(params, arrived)
        return await handler(params)

    def _hold_to_limits(self, params: dict[str, Any], now: float) -> None:
        """Refuse (429) a message that would go over :attr:`limits`; count it otherwise."""
        assert self.limits is not None
        chat = params.get("chat_id")
        if chat is None or chat == "":
            return  # refused as a bad request by the method itself
        key = _chat_key(chat)
        window = self._chat_windows.get(key)
        if window is None:
            chat_id = _chat_id(chat)
            group = isinstance(chat_id, str) or chat_id < 0
            window = self._chat_windows[key] = (
                _Window(self.limits.per_group, 60.0)
                if group
                else _Window(self.limits.per_chat, 1.0)
            )
        for limit in (self._overall_window, window):
            wait = limit.retry_after(now)
            if wait is not None:
                raise _ApiError(429, f"Too Many Requests: retry after {wait}", wait)
        self._overall_window.add(now)
        window.add(now)

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
            "date": int(environment.now().timestamp()),
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
        body = await control_body(request, _MemberCountBody)
        self.set_member_count(body.chat, body.count)
        return {"ok": True}

    async def _control_fail_chat(self, request: web.Request) -> object:
        body = await control_body(request, _FailChatBody)
        self.fail_chat(body.chat, body.error_code, body.description, body.retry_after, body.times)
        return {"ok": True}

    async def _control_fail(self, request: web.Request) -> object:
        body = await control_body(request, _BotFailBody)
        self.fail(body.method, body.mode, body.times, hang=body.hang)
        return {"ok": True}

    async def _control_heal(self, request: web.Request) -> object:
        self.heal()
        return {"ok": True}

    async def _control_limits(self, request: web.Request) -> object:
        body = await control_body(request, _LimitsBody)
        self.enforce_limits(body.limits)
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
        if request.content_type == JSON_TYPE:
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
