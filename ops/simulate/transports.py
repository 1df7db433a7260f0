"""The stand-ins without sockets: TonAPI and the Bot API answered in-process, for simulation.

A deterministic simulation runs everything in one process on a loop that forbids sockets,
threads and subprocesses. The product's clients still talk HTTP to the stand-ins
(:mod:`ops.standins`), unchanged, through two adapters that hand each request to the
stand-in's aiohttp application in the same process::

    async with InProcessServer(tonapi.application(), host="tonapi.invalid") as tonapi_server:
        async with TonApiClient(tonapi_server.url, transport=InProcessTransport(tonapi_server)):
            ...
    async with InProcessServer(bot_api.application(), host="bot-api.invalid") as bot_server:
        bot = make_bot(token, session=InProcessSession(bot_server))

:class:`InProcessServer` plays the aiohttp server: it runs the application's startup and
shutdown, builds an ``aiohttp.web.Request`` for each request (the parsed request line and
headers, the body as its payload, on a stand-in connection reporting no peer address and the
local address ``127.0.0.1:80``), resolves the route through the application's router, runs
its middlewares and the handler as aiohttp's ``Application._handle`` does, and takes the
``web.Response`` back as status, reason, headers and body. :class:`InProcessTransport` (an
``httpx.AsyncBaseTransport``) and :class:`InProcessSession` (an aiogram ``BaseSession``) are
the two clients' ends of it.

What is faithful to the wire
    The URL path and query (percent-encoding included), the method, every request header the
    client sets, the body bytes (aiogram's form built by aiohttp's ``FormData``, as its
    ``AiohttpSession`` sends it), and the answer's status, reason, headers and body bytes
    (aiohttp's ``Content-Type`` as it would send it, plus ``Content-Length``, ``Server`` and a
    ``Date`` from :func:`events.environment.now`). The clients' own code (httpx's response
    handling, aiogram's ``check_response``, the product's retries and error translation) runs
    as in production. A stand-in's ``"timeout"`` fault holds its request with ``anyio``, so a
    simulated clock drives it and the client's timeout fires as it would.

What is not
    No HTTP/1.1 bytes are written or parsed: no keep-alive, chunking, compression, ``Expect:
    100-continue`` or request size limits other than aiohttp's ``client_max_size``. Only
    ``web.Response`` answers (a streamed ``StreamResponse`` raises ``TypeError``) and
    new-style middlewares; a sub-application's handlers see the root as ``request.app``.
    Connection-level failures are not reproduced but mapped to the exception the client
    raises on the wire (below). aiogram file uploads work but are not deterministic
    (aiogram's ``attach://`` keys and aiohttp's multipart boundary are random).

Fault mapping (what the client sees, in-process and on the wire)::

    on the wire                          httpx (InProcessTransport)  aiogram (InProcessSession)
    any HTTP answer: 5xx, 429 with       the same httpx.Response     the same check_response:
      Retry-After / retry_after, a                                   TelegramRetryAfter,
      truncated or mistyped body, 4xx                                TelegramServerError...
    "timeout" fault longer than the      httpx.ReadTimeout after     TelegramNetworkError
      client's timeout                   the read timeout            "Request timeout error"
    nothing listening (server closed     httpx.ConnectError          TelegramNetworkError
      or never opened), another host                                 "ClientConnectorError: ..."
    handler raised                       500 text/plain, as aiohttp's server answers
    handler raised TimeoutError          504 text/plain, as aiohttp's server answers

No socket, thread or wall clock is used: time comes only from ``anyio`` and
:mod:`events.environment`. Messages never quote a request's path (a Bot API path carries the
bot token).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import functools
import logging
import math
from collections.abc import AsyncGenerator, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self, cast

import anyio
import httpx
from aiogram.client.session.base import DEFAULT_TIMEOUT, BaseSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods.base import Response, TelegramType
from aiohttp import ClientResponseError, FormData, RequestInfo, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from events import environment

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod
    from aiogram.types import InputFile
    from aiohttp.web_protocol import RequestHandler

__all__ = [
    "InProcessConnectError",
    "InProcessServer",
    "InProcessTransport",
    "InProcessSession",
    "ServedResponse",
]

logger = logging.getLogger(__name__)

_READ_LIMIT: Final = 2**16  # aiohttp's StreamReader buffer limit, as its server uses
_USER_AGENT: Final = f"{SERVER_SOFTWARE} aiogram"  # AiohttpSession's, without its version
_CLIENT_MAX_SIZE: Final = 1024**2  # web.Request's default body limit
_CLIENT_MAX_FIELDS: Final = 1000  # and its default form field limit
_RESPONSE_TYPES: Final[dict[object, type[Response[Any]]]] = {}
"""``Response[T]`` of each Bot API result type answered so far, kept alive for the process.

aiogram's ``check_response`` builds ``Response[method.__returning__]`` on every call, and
pydantic caches such parametrised models only weakly: between two garbage collections the
cache keeps them, after one it rebuilds them (a new model and its validator, milliseconds
each; about twenty rebuilds a simulated hour, some 4% of a run's time). Holding them here
makes every call after the first a cache hit; the model is the same, so is what it parses."""
_SOCKNAME: Final = ("127.0.0.1", 80)  # the local address a request reports arriving on


class InProcessConnectError(Exception):
    """Nothing is listening where the request went: the in-process "connection refused".

    The message names the host only (never the path, which may carry a token).
    """


class ServedResponse(NamedTuple):
    """An answer as it would come off the wire: status line, headers, body bytes."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _State(enum.Enum):
    NEW = "new"  # built: enter `async with` to run the application's startup
    OPEN = "open"  # started: requests are answered
    CLOSED = "closed"  # shut down: requests are refused as by a closed port; cannot reopen


class InProcessServer:
    """An aiohttp application served in this process at ``http://<host>``, by ``async with``.

    ``host`` is a name of the caller's choosing (under ``.invalid``, say, so that a client
    given this URL by mistake never reaches a real server). Entering runs the application's
    startup, leaving its shutdown and cleanup (a stand-in then releases held requests).
    """

    def __init__(self, app: web.Application, *, host: str) -> None:
        if not host or any(c in host for c in "/:@?# "):
            raise ValueError(f"host must be a bare host name, got {host!r}")
        self._app = app
        self._host = host.lower()
        self._state = _State.NEW
        self._transport = _Transport()

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        """``http://<host>``: the base URL to give a client."""
        return f"http://{self._host}"

    async def __aenter__(self) -> Self:
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"an InProcessServer can be entered once; this one is {self._state.value}"
            )
        # As aiohttp's AppRunner does: startup, then freeze (routes and middlewares final).
        self._app.on_startup.freeze()
        await self._app.startup()
        self._app.freeze()
        self._state = _State.OPEN
        logger.debug(
            "in-process server at %s started", self.url, extra={"action": "inprocess_started"}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSED
        await self._app.shutdown()
        await self._app.cleanup()

    def check_reachable(self, scheme: str, host: str | None, port: int | None) -> None:
        """Raise :class:`InProcessConnectError` unless a request to ``scheme://host:port``
        would reach this server while it is open."""
        if scheme != "http" or (host or "").lower() != self._host or port not in (None, 80):
            raise InProcessConnectError(
                f"cannot connect to {scheme}://{host}:{port}: "
                f"the in-process server is at {self.url}"
            )
        if self._state is not _State.OPEN:
            raise InProcessConnectError(
                f"cannot connect to {self.url}: connection refused "
                f"(the in-process server is {self._state.value})"
            )

    async def handle(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> ServedResponse:
        """The answer to ``method target`` (path and query, percent-encoded) with ``body``.

        Raises :class:`InProcessConnectError` when the server is not open. A handler's
        exception becomes a 500 (a ``TimeoutError`` a 504), as aiohttp's server answers.
        """
        self.check_reachable("http", self._host, None)
        request = self._request(method, target, headers, body)
        # As aiohttp's server does (``Application._handle``): resolve the route against this
        # request, complete and freeze its match info, then run the middlewares around the
        # handler.
        match_info = await self._app.router.resolve(request)
        match_info.add_app(self._app)
        match_info.freeze()
        match_info.current_app = self._app  # for a sub-application's too (see the docstring)
        request._match_info = match_info
        handler = match_info.handler
        for app in reversed(match_info.apps):
            for middleware in reversed(app.middlewares):
                handler = functools.partial(middleware, handler=handler)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's server answers with the exception
            response = exc
        except TimeoutError:
            response = _server_error(504)
        except Exception:
            logger.exception(
                "in-process server at %s: error handling a request",
                self.url,
                extra={"action": "inprocess_handler_error"},
            )
            response = _server_error(500)
        return await _served(response, method)

    def _request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> web.Request:
        """The ``web.Request`` aiohttp's server would build for this request: the parsed
        request line and headers, ``body`` as its payload, on a :class:`_Connection`."""
        loop = asyncio.get_running_loop()
        payload: StreamReader = EMPTY_PAYLOAD
        if body:
            payload = StreamReader(BaseProtocol(loop), max(_READ_LIMIT, len(body)), loop=loop)
            payload.feed_data(body)
            payload.feed_eof()
        request_headers = CIMultiDictProxy(CIMultiDict(headers))
        message = RawRequestMessage(
            method=method.upper(),
            path=target,
            version=HttpVersion11,
            headers=request_headers,
            raw_headers=tuple((k.encode(), v.encode()) for k, v in request_headers.items()),
            should_close=False,
            compression=None,
            upgrade=(
                request_headers.get(hdrs.CONNECTION, "").lower() == "upgrade"
                and bool(request_headers.get(hdrs.UPGRADE))
            ),
            chunked="chunked" in request_headers.get(hdrs.TRANSFER_ENCODING, "").lower(),
            url=URL(target),
        )
        connection = _Connection(self._transport)
        return web.Request(
            message,
            payload,
            cast("RequestHandler", connection),
            connection.writer,
            cast("asyncio.Task[None]", asyncio.current_task()),
            loop,
            client_max_size=_CLIENT_MAX_SIZE,
            client_max_fields=_CLIENT_MAX_FIELDS,
        )


class _Transport(asyncio.Transport):
    """The connection's transport as a request sees it: its ``get_extra_info`` (no peer
    address, the local socket ``127.0.0.1:80``, no TLS) and open while the request is
    served. Nothing is ever written to it."""

    def __init__(self) -> None:
        super().__init__({"sockname": _SOCKNAME, "peername": None, "sslcontext": None})

    def is_closing(self) -> bool:
        return False


class _Writer(AbstractStreamWriter):
    """The response writer: discards what it is given (only a ``web.Response`` is served,
    from the object the handler returns, never from bytes written here)."""

    def __init__(self, transport: _Transport) -> None:
        self._transport = transport

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._transport

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        pass

    async def write_eof(self, chunk: bytes = b"") -> None:
        pass

    async def drain(self) -> None:
        pass

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        pass

    def enable_chunking(self) -> None:
        pass

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        pass


class _Connection:
    """What a ``web.Request`` reads of aiohttp's ``RequestHandler``, the protocol object of the
    connection the request came on: its parser limits (aiohttp's defaults), its transport and
    writer, and the addresses it took from the transport when the connection was made."""

    __slots__ = ("transport", "writer")

    max_field_size: Final = 8190
    max_line_length: Final = 8190
    max_headers: Final = 128
    peername: Final = None
    sockname: Final = _SOCKNAME
    ssl_context: Final = None

    def __init__(self, transport: _Transport) -> None:
        self.transport = transport
        self.writer = _Writer(transport)


def _server_error(status: int) -> web.Response:
    """aiohttp's own plain-text answer when a handler fails (``RequestHandler.handle_error``,
    without its HTML variant for browsers and its traceback in debug mode)."""
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        error = HTTPStatus.INTERNAL_SERVER_ERROR
        text = f"{error.value} {error.phrase}\n\n{error.description}"
        return web.Response(status=status, text=text, content_type="text/plain")
    return web.Response(status=status, content_type="text/plain")


async def _served(response: web.StreamResponse, method: str) -> ServedResponse:
    if not isinstance(response, web.Response):
        raise TypeError(
            f"the handler answered with a {type(response).__name__}: an in-process server "
            "serves only web.Response answers"
        )
    raw = response.body
    if raw is None:
        body = b""
    elif isinstance(raw, bytes | bytearray | memoryview):
        body = bytes(raw)
    else:  # a Payload (multipart, a file...)
        body = await raw.as_bytes()
    headers = CIMultiDict(response.headers)
    headers.setdefault(hdrs.CONTENT_LENGTH, str(len(body)))
    headers.setdefault(hdrs.DATE, email.utils.format_datetime(environment.now(), usegmt=True))
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if method.upper() == "HEAD" or response.status in (204, 304):
        body = b""
    return ServedResponse(response.status, response.reason, tuple(headers.items()), body)


class InProcessTransport(httpx.AsyncBaseTransport):
    """An httpx transport that hands every request to ``server``, in this process.

    Requests to another host, or while the server is not open, raise ``httpx.ConnectError``;
    an answer slower than the request's read timeout raises ``httpx.ReadTimeout`` (and the
    handler is cancelled, as aiohttp's server cancels it when the client goes away).
    Closing the transport leaves the server running: it is the server's owner's to close.
    """

    def __init__(self, server: InProcessServer) -> None:
        self._server = server

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            self._server.check_reachable(url.scheme, url.host, url.port)
        except InProcessConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        body = await request.aread()
        timeouts = cast(dict[str, float | None], request.extensions.get("timeout", {}))
        read_timeout = timeouts.get("read")
        with anyio.move_on_after(math.inf if read_timeout is None else read_timeout) as scope:
            try:
                served = await self._server.handle(
                    request.method,
                    url.raw_path.decode("ascii"),
                    request.headers.multi_items(),
                    body,
                )
            except InProcessConnectError as exc:  # the server closed meanwhile
                raise httpx.ConnectError(str(exc), request=request) from exc
        if scope.cancelled_caught:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(
            served.status,
            headers=list(served.headers),
            content=served.body,
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": served.reason.encode("ascii", "replace"),
            },
        )


class InProcessSession(BaseSession):
    """An aiogram session that sends every Bot API call to ``server``, in this process.

    The call is encoded as aiogram's ``AiohttpSession`` encodes it (aiogram's
    ``prepare_value``, then a form built by aiohttp's ``FormData``) and POSTed to
    ``/bot{token}/{method}``; the answer goes through aiogram's ``check_response``, so flood
    control, 4xx and 5xx raise the same exceptions as over the wire. ``timeout`` (seconds,
    per call unless the call gives its own) bounds the wait as aiohttp's total timeout does.
    """

    def __init__(self, server: InProcessServer, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(api=TelegramAPIServer.from_base(server.url), timeout=timeout)
        self._server = server

    async def close(self) -> None:
        """Nothing to release: the server is its owner's to close."""

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 (aiogram's signature)
    ) -> TelegramType:
        url = URL(self.api.api_url(token=bot.token, method=method.__api_method__))
        body, content_type = await self._form(bot, method)
        headers = [
            (hdrs.HOST, url.raw_authority),
            (hdrs.USER_AGENT, _USER_AGENT),
            (hdrs.ACCEPT, "*/*"),
            (hdrs.CONTENT_TYPE, content_type),
            (hdrs.CONTENT_LENGTH, str(len(body))),
        ]
        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.move_on_after(limit) as scope:
                self._server.check_reachable(url.scheme, url.host, url.explicit_port)
                served = await self._server.handle("POST", url.raw_path_qs, headers, body)
        except InProcessConnectError as exc:
            raise TelegramNetworkError(
                method=method, message=f"ClientConnectorError: {exc}"
            ) from exc
        if scope.cancelled_caught:
            raise TelegramNetworkError(method=method, message="Request timeout error")
        returning = method.__returning__
        if returning not in _RESPONSE_TYPES:
            _RESPONSE_TYPES[returning] = Response[returning]  # type: ignore[valid-type]
        response = self.check_response(
            bot=bot, method=method, status_code=served.status, content=_text(served)
        )
        return cast(TelegramType, response.result)

    async def _form(self, bot: Bot, method: TelegramMethod[TelegramType]) -> tuple[bytes, str]:
        """The body and its Content-Type, as ``AiohttpSession.build_form_data`` sends them."""
        form = FormData(quote_fields=False)
        files: dict[str, InputFile] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files)
            if not prepared:
                continue
            form.add_field(key, prepared)
        for key, file in files.items():
            content = b"".join([chunk async for chunk in file.read(bot)])
            form.add_field(key, content, filename=file.filename or key)
        payload = form()
        content_type = payload.headers.get(hdrs.CONTENT_TYPE, payload.content_type)
        return await payload.as_bytes(), content_type

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 (aiogram's signature)
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        """A file download (``GET url``) in chunks; raises as aiohttp's client would."""
        target = URL(url)
        request_headers = [(hdrs.HOST, target.raw_authority), *(headers or {}).items()]
        with anyio.fail_after(timeout):
            self._server.check_reachable(target.scheme, target.host, target.explicit_port)
            served = await self._server.handle("GET", target.raw_path_qs, request_headers, b"")
        if raise_for_status and served.status >= 400:
            raise ClientResponseError(
                RequestInfo(target.with_path("/"), "GET", CIMultiDictProxy(CIMultiDict())),
                (),
                status=served.status,
                message=served.reason,
            )
        for start in range(0, len(served.body), chunk_size):
            yield served.body[start : start + chunk_size]


def _text(served: ServedResponse) -> str:
    """The body as aiohttp's ``ClientResponse.text()`` decodes it: the declared charset, else
    UTF-8, strictly (a body cut inside a character fails as it would on the wire)."""
    content_type = dict(served.headers).get(hdrs.CONTENT_TYPE, "")
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    return served.body.decode(charset)
