"""The one Telegram module: a Bot API client on aiogram 3's :class:`~aiogram.Bot`.

:func:`make_bot` builds the Bot, against the real Bot API or any server speaking it
(:class:`ops.standins.BotApiStandIn` in tests and the demo). :class:`TelegramClient` wraps it
with what the actors need, translating aiogram's exceptions once, here:

* :meth:`TelegramClient.get_me` is the health check: round-trip seconds, or
  :class:`TelegramUnavailable`.
* :meth:`TelegramClient.member_count` answers a count or a :class:`ChatProblem` (the chat is
  unknown, the bot is not a member, flood control, Telegram unreachable): a problem with one
  channel is data for the caller, never an exception.
* :meth:`TelegramClient.send_message` and :meth:`TelegramClient.notify_all` deliver best
  effort: flood control (429 ``retry_after``) is waited out, transient failures retried, and a
  chat that cannot be reached is logged and reported as ``False`` so that one admin who blocked
  the bot never stops the others from being told.

**Flow control.** A Bot made with a limiter (``make_bot(..., limiter=, rates=)``) waits its
turn in the rate limits every node shares (:mod:`store.flow`) before each call, through a
request middleware of its session (:class:`FlowControl`), so the gateway's replies count as
much as the actors' calls: every call takes from ``telegram`` (the bot's overall limit, about
30 a second), and a call about a chat from that chat's scope too (``telegram-chat:<id>``, one a
second; ``telegram-group:<id>`` for a group or channel, a negative id or an ``@username``, 20 a
minute). A 429's ``retry_after`` pauses, on every node, the scope it most likely came from
(:func:`pause_scopes`). :class:`TelegramClient` waits for its turn before its request timeout
starts: waiting for a busy limit is not Telegram being slow.

The token is a secret: it is part of every request URL, so any text that could carry it (an
aiohttp error quoting the URL) is redacted before it reaches a log line or a message, and this
module's exceptions are raised without chaining aiogram's.

Errors::

    I3laniError
    ├── ConfigError            (events.errors) a malformed token or API URL in make_bot
    └── TelegramUnavailable    the Bot API cannot be used right now (network, 5xx, token refused)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import quote

import anyio
import msgspec
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.base import BaseSession
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.utils.token import TokenValidationError

from events.errors import ConfigError, I3laniError
from store.flow import Limit, RateLimiter, Scope

__all__ = [
    "TelegramUnavailable",
    "ChatProblem",
    "TelegramClient",
    "TelegramRates",
    "FlowControl",
    "make_bot",
    "chat_problem",
    "call_scopes",
    "pause_scopes",
    "OVERALL_SCOPE",
]

logger = logging.getLogger(__name__)

_SEND_ATTEMPTS: Final = 3  # one send and up to two retries
_TRANSIENT_BACKOFF: Final = 1.0  # seconds, times the attempt number, after a 5xx or timeout
_REDACTED: Final = "<token>"

OVERALL_SCOPE: Final = "telegram"
"""The scope every Bot API call of every node takes from."""
_CHAT_PREFIX: Final = "telegram-chat:"
_GROUP_PREFIX: Final = "telegram-group:"


class TelegramUnavailable(I3laniError):
    """The Bot API cannot be used right now: unreachable, failing, or refusing the token."""


class ChatProblem(msgspec.Struct, frozen=True):
    """Why a request about one chat failed, as data.

    ``kind``: ``bad_request`` (400: chat not found, malformed id), ``forbidden`` (403: the bot
    is not a member, was kicked or blocked), ``rate_limited`` (429: wait ``retry_after``
    seconds), ``unavailable`` (network, timeout, 5xx, an unreadable answer, a refused token:
    try again later). ``error_code`` is Telegram's when it sent one.
    """

    kind: Literal["bad_request", "forbidden", "rate_limited", "unavailable"]
    error_code: int | None
    description: str
    retry_after: float | None = None


class TelegramRates(msgspec.Struct, frozen=True):
    """The Bot API's limits as configured (None: not limited): every call of the bot
    (``overall``), and per chat: a private chat's (``chat``, a positive id), a group's or
    channel's (``group``, a negative id or an ``@username``)."""

    overall: Limit | None = Limit(30, 1.0)
    chat: Limit | None = Limit(1, 1.0)
    group: Limit | None = Limit(20, 60.0)


def _chat_scope(rates: TelegramRates, chat: object) -> Scope | None:
    """The scope of the chat a call is about, or None (no chat, or not limited)."""
    if chat is None or isinstance(chat, bool):
        return None
    key = str(chat).strip()
    if key.startswith("@"):
        name, limit = _GROUP_PREFIX + key.lower(), rates.group
    else:
        try:
            number = int(key)
        except ValueError:
            return None
        name, limit = (_GROUP_PREFIX, rates.group) if number < 0 else (_CHAT_PREFIX, rates.chat)
        name += str(number)
    if limit is None or len(name) > 200:
        return None
    return Scope(name, limit)


def call_scopes(rates: TelegramRates, chat: object = None) -> list[Scope]:
    """What a Bot API call about ``chat`` (None: about no chat) takes from: the bot's overall
    scope, then the chat's. Pure."""
    scopes = [] if rates.overall is None else [Scope(OVERALL_SCOPE, rates.overall)]
    own = _chat_scope(rates, chat)
    return scopes if own is None else [*scopes, own]


def pause_scopes(rates: TelegramRates, chat: object = None) -> list[Scope]:
    """What a 429 on a call about ``chat`` pauses, on every node. Pure.

    A group's or channel's own scope: its 20 messages a minute is the usual cause there, and
    the rest of the bot may go on. Otherwise the whole bot (and the chat): the limiter already
    keeps each private chat to its one message a second, so a 429 there says the bot as a
    whole is over Telegram's limit."""
    own = _chat_scope(rates, chat)
    if own is not None and own.name.startswith(_GROUP_PREFIX):
        return [own]
    return call_scopes(rates, chat)


_ADMITTED: ContextVar[bool] = ContextVar("i3lani_telegram_admitted", default=False)
"""Set while a :class:`TelegramClient` call that already waited its turn is on the wire."""


class FlowControl(BaseRequestMiddleware):
    """An aiogram request middleware: each call of the Bot waits its turn in the shared rate
    limits first (:meth:`admit`), and a 429 pauses its scopes on every node."""

    def __init__(self, limiter: RateLimiter, rates: TelegramRates) -> None:
        self.limiter = limiter
        self.rates = rates

    async def admit(self, chat: object = None) -> None:
        """Wait until a call about ``chat`` may go."""
        await self.limiter.acquire(call_scopes(self.rates, chat))

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        chat = getattr(method, "chat_id", None)
        if not _ADMITTED.get():
            await self.admit(chat)
        try:
            return await make_request(bot, method)
        except TelegramRetryAfter as exc:
            await self.limiter.pause(pause_scopes(self.rates, chat), float(exc.retry_after))
            raise


def flow_control(bot: Bot) -> FlowControl | None:
    """The :class:`FlowControl` of ``bot``'s session, if it has one."""
    return next((m for m in bot.session.middleware if isinstance(m, FlowControl)), None)


def make_bot(
    token: str,
    api_url: str | None = None,
    *,
    session: BaseSession | None = None,
    limiter: RateLimiter | None = None,
    rates: TelegramRates | None = None,
) -> Bot:
    """An aiogram Bot for ``token``, against ``api_url`` when given (a Bot API server's base).

    Requests then go to ``{api_url}/bot{token}/{method}``. ``session`` replaces aiogram's
    HTTP session (a simulation's in-process one, which knows its own server: give it instead
    of ``api_url``). With ``limiter``, every call waits its turn in the shared rate limits
    first, kept to ``rates`` (default: Telegram's), see :class:`FlowControl`. Raises
    :class:`~events.errors.ConfigError` (without the token) when the token or URL is
    malformed.
    """
    if session is not None and api_url is not None:
        raise ValueError("give make_bot an api_url or a session, not both: a session has its own")
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"the Telegram Bot API URL {api_url!r} must start with http:// or https://"
        )
    try:
        if session is not None:
            bot = Bot(token, session=session)
        elif api_url is None:
            bot = Bot(token)
        else:
            bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(api_url)))
    except TokenValidationError:
        # aiogram's message does not quote the token, but its traceback frames would.
        raise ConfigError(
            "the Telegram bot token is malformed: it must look like <digits>:<text> without "
            "spaces, as @BotFather gives it"
        ) from None
    if limiter is not None:
        kept_to = rates if rates is not None else TelegramRates()
        bot.session.middleware(FlowControl(limiter, kept_to))
    return bot


def _original_description(exc: TelegramAPIError) -> str:
    """Telegram's own description: aiogram rewrites a few (flood control, migration)."""
    _, marker, original = exc.message.partition("\nOriginal description: ")
    return original if marker else exc.message


def chat_problem(exc: Exception) -> ChatProblem:
    """The :class:`ChatProblem` an aiogram or timeout exception stands for. Pure.

    The description is not redacted here; :class:`TelegramClient` does that before use.
    """
    if isinstance(exc, TelegramRetryAfter):
        return ChatProblem(
            "rate_limited", 429, _original_description(exc), retry_after=float(exc.retry_after)
        )
    if isinstance(exc, TelegramForbiddenError):
        return ChatProblem("forbidden", 403, exc.message)
    if isinstance(exc, TelegramMigrateToChat):
        return ChatProblem("bad_request", 400, exc.message)
    if isinstance(exc, TelegramBadRequest):
        return ChatProblem("bad_request", 400, exc.message)
    if isinstance(exc, TelegramEntityTooLarge):
        return ChatProblem("bad_request", 413, exc.message)
    if isinstance(exc, TelegramUnauthorizedError):
        return ChatProblem("unavailable", 401, exc.message)
    if isinstance(exc, TelegramNotFound):  # the method itself: a wrong API URL
        return ChatProblem("unavailable", 404, exc.message)
    if isinstance(exc, TelegramAPIError):  # 5xx, network, conflict...
        return ChatProblem("unavailable", None, exc.message)
    if isinstance(exc, ClientDecodeError):
        return ChatProblem("unavailable", None, f"unreadable answer: {exc.message}")
    if isinstance(exc, TimeoutError):
        return ChatProblem("unavailable", None, "request timed out")
    raise TypeError(f"not a Telegram failure: {type(exc).__name__}")


_FAILURES: Final = (TelegramAPIError, ClientDecodeError, TimeoutError)
"""What a Bot API call raises when Telegram (not our code) failed."""


class TelegramClient:
    """The Bot API as the actors use it. ``async with`` closes the Bot's HTTP session.

    ``sleep`` waits out flood control and backoff (injected so tests run instantly);
    ``max_retry_after`` is the longest flood-control wait accepted before giving up;
    ``timeout`` bounds each request, in seconds.
    """

    def __init__(
        self,
        bot: Bot,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        max_retry_after: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._bot = bot
        self._flow = flow_control(bot)
        self._sleep = sleep
        self._max_retry_after = max_retry_after
        self._timeout = timeout
        token = bot.token
        secret = token.partition(":")[2]
        # Longest first, so that the token is replaced whole before its secret half is.
        self._secrets = tuple(
            sorted({token, quote(token, safe=""), secret, quote(secret, safe="")}, key=len)[::-1]
        )

    @property
    def bot(self) -> Bot:
        """The wrapped aiogram Bot (for the dispatcher; its calls bypass this client)."""
        return self._bot

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Bot's HTTP session (idempotent)."""
        await self._bot.session.close()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, _REDACTED)
        return " ".join(text.split())  # one line

    def _problem(self, exc: Exception) -> ChatProblem:
        problem = chat_problem(exc)
        return msgspec.structs.replace(problem, description=self._redact(problem.description))

    @contextlib.asynccontextmanager
    async def _admitted(self, chat: object = None) -> AsyncIterator[None]:
        """Wait this call's turn in the shared rate limits (when the Bot has them), then let
        the call inside go without waiting again: its request timeout counts only Telegram."""
        if self._flow is None:
            yield
            return
        await self._flow.admit(chat)
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)

    # -- calls ----------------------------------------------------------------------------------

    async def get_me(self) -> float:
        """Round-trip seconds of ``getMe``: the cheap token and reachability check.

        Raises :class:`TelegramUnavailable` on any failure, including a refused token.
        """
        try:
            async with self._admitted():
                started = anyio.current_time()
                with anyio.fail_after(self._timeout):
                    await self._bot.get_me()
        except _FAILURES as exc:
            problem = self._problem(exc)
            hint = (
                "the bot token was refused: check it with @BotFather"
                if problem.error_code == 401
                else "check the network and the Bot API URL, then try again"
            )
            raise TelegramUnavailable(
                f"Telegram getMe failed: {problem.description}; {hint}"
            ) from None
        return anyio.current_time() - started

    async def member_count(self, chat: str | int) -> int | ChatProblem:
        """How many members ``chat`` (an id or ``@username``) has, or why that is unknown.

        Never raises for Telegram's answers or the network: 400 ``bad_request``, 403
        ``forbidden``, 429 ``rate_limited`` (with ``retry_after``), anything else
        ``unavailable``. No retry here: the caller schedules the next attempt.
        """
        try:
            async with self._admitted(chat):
                with anyio.fail_after(self._timeout):
                    return await self._bot.get_chat_member_count(chat_id=chat)
        except _FAILURES as exc:
            problem = self._problem(exc)
            logger.debug(
                "getChatMemberCount %s: %s (%s)",
                chat,
                problem.kind,
                problem.description,
                extra={"action": "telegram_member_count_problem"},
            )
            return problem

    async def send_message(self, chat_id: int, text: str) -> bool:
        """Send ``text`` to ``chat_id``; ``True`` once delivered, ``False`` if it could not be
        (:meth:`deliver` says why)."""
        return await self.deliver(chat_id, text) is None

    async def deliver(self, chat_id: int, text: str) -> ChatProblem | None:
        """Send ``text`` to ``chat_id``: None once delivered, else the last problem.

        Flood control is waited out (``retry_after`` seconds, when at most
        ``max_retry_after``) and a 5xx, timeout or network failure retried after a short
        backoff, up to two retries in all. A refusal (400, 403, a refused token) is final.
        Every failure is logged here. A retry after a timeout may deliver the message twice:
        better than not at all. A caller that must not lose the message tries again later
        when the problem is ``unavailable`` or ``rate_limited`` (it passes).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._admitted(chat_id):
                    with anyio.fail_after(self._timeout):
                        await self._bot.send_message(chat_id=chat_id, text=text)
            except _FAILURES as exc:
                problem = self._problem(exc)
            else:
                return None
            delay = self._send_retry_delay(problem, attempt)
            if delay is None:
                logger.warning(
                    "could not send a message to chat %s after %s attempt(s): %s (%s)",
                    chat_id,
                    attempt,
                    problem.kind,
                    problem.description,
                    extra={"action": "telegram_send_failed"},
                )
                return problem
            logger.info(
                "sendMessage to chat %s: %s (%s); retrying in %.1f s",
                chat_id,
                problem.kind,
                problem.description,
                delay,
                extra={"action": "telegram_send_retry"},
            )
            await self._sleep(delay)

    def _send_retry_delay(self, problem: ChatProblem, attempt: int) -> float | None:
        """Seconds to wait before sending again after ``problem``; ``None``: give up."""
        if attempt >= _SEND_ATTEMPTS:
            return None
        if problem.kind == "rate_limited" and problem.retry_after is not None:
            return problem.retry_after if problem.retry_after <= self._max_retry_after else None
        if problem.kind == "unavailable" and problem.error_code not in (401, 404):
            return _TRANSIENT_BACKOFF * attempt
        return None  # refused (400, 403) or misconfigured (401, 404): trying again won't help

    async def notify_all(self, chat_ids: Sequence[int], text: str) -> dict[int, bool]:
        """Send ``text`` to each chat in turn (each once); whether each got it.

        One chat failing (blocked the bot, flood control too long) never stops the others.
        """
        delivered: dict[int, bool] = {}
        for chat_id in chat_ids:
            if chat_id not in delivered:
                delivered[chat_id] = await self.send_message(chat_id, text)
        return delivered
