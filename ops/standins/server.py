"""Shared plumbing of the stand-ins: the aiohttp server run by ``async with``, queued
faults, and the ``/_standin/`` control routes' JSON bodies.
"""

from __future__ import annotations

import abc
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeVar

import anyio
import msgspec
from aiohttp import web

__all__ = [
    "DEFAULT_HANG",
    "JSON_TYPE",
    "StandIn",
    "Fault",
    "take_fault",
    "check_times",
    "ControlError",
    "control_body",
    "control_route",
    "json_response",
    "truncated",
]

logger = logging.getLogger(__name__)

DEFAULT_HANG: Final = 30.0  # seconds a "timeout" fault holds a request, unless told otherwise

JSON_TYPE: Final = "application/json"


# -- shared server plumbing ---------------------------------------------------------------------


class StandIn(abc.ABC):
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

    def application(self) -> web.Application:
        """A new aiohttp application answering as this stand-in, bound to no socket.

        ``async with`` serves one on ``host:port``; an in-process server
        (:mod:`ops.simulate.transports`) serves one without a socket. Either way the
        application's startup opens the stand-in (a ``"timeout"`` fault then holds its
        request) and its shutdown closes it, releasing every held request at once. One
        stand-in is open through one application at a time.
        """
        app = web.Application()
        self._add_routes(app)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self._closing is not None and not self._closing.is_set():
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._closing = anyio.Event()

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._closing is not None:
            self._closing.set()

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        app = self.application()
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


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status, content_type=JSON_TYPE)


def truncated(response: web.Response) -> web.Response:
    """The same answer with its body cut in half: valid HTTP, invalid JSON."""
    body = response.body if isinstance(response.body, bytes) else b"{}"
    return web.Response(body=body[: max(len(body) // 2, 1)], status=200, content_type=JSON_TYPE)


_T = TypeVar("_T")


class ControlError(Exception):
    """A bad request to the ``/_standin/`` control API: answered 400 with the message."""


async def control_body(request: web.Request, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.MsgspecError as exc:
        raise ControlError(f"bad body for {request.path}: {exc}") from exc


def control_route(
    handler: Callable[[web.Request], Awaitable[object]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A control endpoint: its result as JSON, a bad request as 400 ``{"error": ...}``."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            result = await handler(request)
        except (ControlError, ValueError) as exc:  # ValueError: refused arguments
            return json_response({"error": str(exc)}, status=400)
        return json_response(result)

    return wrapped


class Fault(msgspec.Struct):
    """One queued fault; ``remaining`` ``None`` means until healed."""

    mode: str
    remaining: int | None
    hang: float | None = None
    retry_after: float | None = None
    status: int | None = None
    error: str | None = None


def take_fault(queue: deque[Fault]) -> Fault | None:
    """The fault for this request, consumed from the front of ``queue``."""
    if not queue:
        return None
    fault = queue[0]
    if fault.remaining is not None:
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
    return fault


def check_times(times: int | None) -> None:
    if times is not None and (isinstance(times, bool) or times < 1):
        raise ValueError(f"times must be 1 or more, or None for until healed; got {times!r}")
