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

The token is a secret: it is part of every request URL, so any text that could carry it (an
aiohttp error quoting the URL) is redacted before it reaches a log line or a message, and this
module's exceptions are raised without chaining aiogram's.

Errors::

    I3laniError
    ├── ConfigError            (events.errors) a malformed token or API URL in make_bot
    └── TelegramUnavailable    the Bot API cannot be used right now (network, 5xx, token refused)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import quote

import anyio
import msgspec
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.base import BaseSession
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
from aiogram.utils.token import TokenValidationError

from events.errors import ConfigError, I3laniError

__all__ = [
    "TelegramUnavailable",
    "ChatProblem",
    "TelegramClient",
    "make_bot",
    "chat_problem",
]

logger = logging.getLogger(__name__)

_SEND_ATTEMPTS: Final = 3  # one send and up to two retries
_TRANSIENT_BACKOFF: Final = 1.0  # seconds, times the attempt number, after a 5xx or timeout
_REDACTED: Final = "<token>"


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


def make_bot(token: str, api_url: str | None = None, *, session: BaseSession | None = None) -> Bot:
    """An aiogram Bot for ``token``, against ``api_url`` when given (a Bot API server's base).

    Requests then go to ``{api_url}/bot{token}/{method}``. ``session`` replaces aiogram's
    HTTP session (a simulation's in-process one, which knows its own server: give it instead
    of ``api_url``). Raises :class:`~events.errors.ConfigError` (without the token) when the
    token or URL is malformed.
    """
    if session is not None and api_url is not None:
        raise ValueError("give make_bot an api_url or a session, not both: a session has its own")
    if api_url is not None and not api_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"the Telegram Bot API URL {api_url!r} must start with http:// or https://"
        )
    try:
        if session is not None:
            return Bot(token, session=session)
        if api_url is None:
            return Bot(token)
        return Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(api_url)))
    except TokenValidationError:
        # aiogram's message does not quote the token, but its traceback frames would.
        raise ConfigError(
            "the Telegram bot token is malformed: it must look like <digits>:<text> without "
            "spaces, as @BotFather gives it"
        ) from None


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

    # -- calls ----------------------------------------------------------------------------------

    async def get_me(self) -> float:
        """Round-trip seconds of ``getMe``: the cheap token and reachability check.

        Raises :class:`TelegramUnavailable` on any failure, including a refused token.
        """
        started = anyio.current_time()
        try:
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
