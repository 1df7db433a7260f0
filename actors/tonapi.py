"""The one TonAPI client: an account's transactions, read page by page, and a health probe.

Everything the project asks TonAPI goes through :class:`TonApiClient` (one ``httpx``
client, owned by an ``async with`` block); tests swap its transport or point it at
:class:`ops.standins.TonApiStandIn`, never patch it.

Retries
    A request that meets a *transient* failure (HTTP 429, any 5xx, a timeout, a connection
    error) is sent again up to ``retries`` times; then :class:`TonApiUnavailable` is raised.
    Between attempts the client sleeps (through the injected ``sleep``) for a delay drawn by
    :func:`retry_delay`: exponential, with full jitter between ``backoff_min`` and a ceiling
    that doubles per retry up to ``backoff_max``. A 429 carrying ``Retry-After: <seconds>`` is
    believed instead, up to ``backoff_max * 4``. Any other non-2xx answer (400 for a bad
    address, 401 for a bad key...) is a mistake on our side that repeating will not fix:
    :class:`TonApiError` at once. A body of the wrong shape raises
    :class:`~actors.tonapi_models.TonApiFormatError` (never retried: a page that cannot be
    read whole is not half-trusted).

Flow control
    With a ``limiter`` and a ``rate`` (``I3LANI_TONAPI_RATE``), every attempt first waits its
    turn in the ``tonapi`` scope every node shares (:mod:`store.flow`); a 429 pauses that
    scope on every node, for its ``Retry-After`` or else for the backoff drawn.

Cursor
    :meth:`TonApiClient.transactions_since` reads ascending from an ``lt`` cursor that the
    *caller* keeps. TonAPI's ``after_lt`` is treated as exclusive, but whether it really is
    is unverified, so transactions are also deduplicated by hash and anything at or below the
    cursor is dropped. It either returns every transaction it read, sorted by ``(lt, hash)``,
    or raises and returns nothing: the caller advances its cursor to the last ``lt`` returned
    only after handling them, so a failure (429, 5xx, a malformed page) leaves the cursor
    where it was and the next poll reads the same transactions again.

Errors::

    I3laniError
    ├── TonApiError                  TonAPI refused a request (4xx other than 429)
    │   └── TonApiUnavailable        429/5xx/timeout/connection failure after every retry
    └── TonApiFormatError            (actors.tonapi_models) a body of the wrong shape

Messages are one line: what failed, the HTTP status and TonAPI's own ``error`` text when it
sent one. The API key is only ever in the ``Authorization`` header, never in a message or a
log line.
"""

from __future__ import annotations

import enum
import logging
import random
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import quote

import anyio
import httpx
import msgspec

from actors.tonapi_models import TonApiFormatError, Transaction, decode_transactions
from events import environment
from events.errors import I3laniError
from store.flow import Limit, RateLimiter, Scope

__all__ = [
    "TonApiError",
    "TonApiUnavailable",
    "TonApiStatistics",
    "TonApiClient",
    "retry_delay",
    "MAX_PAGE_SIZE",
    "TONAPI_SCOPE",
]

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE: Final = 1000
"""TonAPI's largest ``limit`` for the transactions endpoint."""
TONAPI_SCOPE: Final = "tonapi"
"""The shared rate limit every TonAPI request of every node takes from."""

_RETRY_AFTER_CAP_FACTOR: Final = 4  # a server's Retry-After is believed up to backoff_max * 4
_ERROR_TEXT_LIMIT: Final = 200  # characters of TonAPI's error text quoted in a message


class TonApiError(I3laniError):
    """TonAPI refused or failed a request; the message says which and why, in one line."""


class TonApiUnavailable(TonApiError):
    """TonAPI did not answer usably (429, 5xx, timeout, connection) after every retry.

    Transient by nature: keep the cursor and try again later.
    """


class TonApiStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a client's counters since it was created."""

    requests: int
    """HTTP requests sent, every attempt counted."""
    retries: int
    """Attempts that repeated an earlier one after a transient failure."""


class _State(enum.Enum):
    NEW = "new"  # built, no HTTP client yet: enter the `async with` block first
    OPEN = "open"  # inside `async with`: requests may be sent
    CLOSED = "closed"  # the block exited and the HTTP client is closed; cannot reopen


class _ErrorBody(msgspec.Struct, frozen=True):
    error: str


class _StatusBody(msgspec.Struct, frozen=True):
    rest_online: bool
    indexing_latency: int | None = None


_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
_STATUS_DECODER: Final = msgspec.json.Decoder(_StatusBody)
_PATH_RE: Final = re.compile(r"^(?P<reason>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)


def retry_delay(
    retry: int,
    *,
    backoff_min: float,
    backoff_max: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry). Pure.

    With ``retry_after`` (a 429's ``Retry-After`` in seconds) that value is used, capped at
    ``backoff_max * 4`` so that a confused server cannot park the caller for an hour.
    Otherwise: full jitter, uniform between ``backoff_min`` and a ceiling of
    ``backoff_min * 2**retry`` capped at ``backoff_max``, so that several workers throttled at
    the same moment do not come back in step.
    """
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    if retry_after is not None:
        return min(max(retry_after, 0.0), backoff_max * _RETRY_AFTER_CAP_FACTOR)
    ceiling = min(backoff_max, backoff_min * 2.0 ** min(retry, 64))
    return rng.uniform(backoff_min, max(ceiling, backoff_min))


def _error_text(body: bytes) -> str | None:
    """TonAPI's ``error`` text from an error body, on one line and cut short; else ``None``."""
    try:
        text = _ERROR_DECODER.decode(body).error
    except msgspec.MsgspecError:
        return None
    text = " ".join(text.split())
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[: _ERROR_TEXT_LIMIT - 3] + "..."
    return text or None


def _parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; ``None`` when absent or not a number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:  # the HTTP-date form: fall back to our own backoff
        return None
    return seconds if seconds >= 0 and seconds == seconds else None  # NaN != NaN


class TonApiClient:
    """TonAPI over HTTP, with retries and a transaction cursor. Use as ``async with``::

        async with TonApiClient("https://tonapi.io", api_key=key) as tonapi:
            new = await tonapi.transactions_since(wallet, cursor)

    ``transport`` replaces the network (``httpx.MockTransport`` in unit tests); ``sleep``
    and ``rng`` are the clock and the jitter, injected so backoff is tested instantly;
    ``limiter`` and ``rate`` keep every request to the rate every node shares (see "Flow
    control" above; without both, this client keeps to nothing but its own backoff).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_min: float = 0.5,
        backoff_max: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
        rate: Limit | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(
                f"backoff needs 0 < backoff_min <= backoff_max, got {backoff_min}, {backoff_max}"
            )
        headers = {"Accept": "application/json", "User-Agent": "i3lani"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._base_url = base_url.rstrip("/")
        self._headers = headers
        self._transport = transport
        self._timeout = timeout
        self._retries = retries
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._rng = rng if rng is not None else environment.new_rng()
        self._limiter = limiter if rate is not None else None
        self._scopes = [Scope(TONAPI_SCOPE, rate)] if rate is not None else []
        self._client: httpx.AsyncClient | None = None
        self._state = _State.NEW
        self._request_count = 0
        self._retry_count = 0

    async def turn(self) -> None:
        """Wait for a turn in the ``tonapi`` scope every node shares, as each request of this
        client does (at once without a shared rate): for a request made by other means to
        the same key, the TON stream's (re)connections."""
        if self._limiter is not None:
            await self._limiter.acquire(self._scopes)

    async def __aenter__(self) -> Self:
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"a TonApiClient can be entered once; this one is {self._state.value}"
            )
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout),
            transport=self._transport,
        )
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        self._state = _State.CLOSED
        if client is not None:
            await client.aclose()

    def statistics(self) -> TonApiStatistics:
        """The request and retry counters, as a frozen snapshot."""
        return TonApiStatistics(requests=self._request_count, retries=self._retry_count)

    # -- endpoints ------------------------------------------------------------------------------

    async def transactions_page(
        self,
        account: str,
        *,
        after_lt: int | None = None,
        limit: int = 100,
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> list[Transaction]:
        """One page of ``account``'s transactions, as TonAPI sent them (``limit`` 1..1000).

        ``account`` is raw (``0:<hex>``) or user-friendly; it is URL-quoted. Retries transient
        failures; raises :class:`TonApiUnavailable`, :class:`TonApiError` or
        :class:`~actors.tonapi_models.TonApiFormatError`.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
        if after_lt is not None and after_lt < 0:
            raise ValueError(f"after_lt must not be negative, got {after_lt}")
        params: dict[str, str | int] = {"limit": limit, "sort_order": sort_order}
        if after_lt is not None:
            params["after_lt"] = after_lt
        path = f"/v2/blockchain/accounts/{quote(account, safe='')}/transactions"
        body, _ = await self._get(path, params)
        return decode_transactions(body)

    async def transactions_since(
        self,
        account: str,
        after_lt: int | None,
        *,
        page_size: int = 100,
        max_pages: int = 100,
    ) -> list[Transaction]:
        """Every transaction of ``account`` after ``after_lt`` (all of them for ``None``).

        Reads ascending pages of ``page_size``, each after the highest ``lt`` of the one
        before, until a short page or ``max_pages`` pages (then the rest is left for the next
        call: what is returned is always a gap-free run from the cursor). Deduplicated by hash,
        nothing at or below ``after_lt``, sorted by ``(lt, hash)``. On any exception nothing is
        returned, so the caller's cursor stays where it was.
        """
        if max_pages < 1:
            raise ValueError(f"max_pages must be 1 or more, got {max_pages}")
        found: dict[str, Transaction] = {}
        cursor = after_lt
        for _ in range(max_pages):
            page = await self.transactions_page(
                account, after_lt=cursor, limit=page_size, sort_order="asc"
            )
            for tx in page:
                if after_lt is None or tx.lt > after_lt:
                    found.setdefault(tx.hash, tx)
            if len(page) < page_size:
                break
            highest = max(tx.lt for tx in page)
            if cursor is not None and highest <= cursor:
                # A full page that does not move forward (all at the cursor): asking again
                # would return the same page forever.
                logger.warning(
                    "TonAPI returned a full page for %s without passing lt %s; stopping here",
                    account,
                    cursor,
                    extra={"action": "tonapi_page_stuck"},
                )
                break
            cursor = highest
        else:
            logger.info(
                "read %s pages of %s for %s; the rest waits for the next call (after lt %s)",
                max_pages,
                page_size,
                account,
                cursor,
                extra={"action": "tonapi_max_pages"},
            )
        return sorted(found.values(), key=lambda tx: (tx.lt, tx.hash))

    async def status(self) -> float:
        """TonAPI's health, for the health check: the round trip of ``GET /v2/status``, in s.

        Retried like every request (a lone 429 from the shared rate limit is not an outage);
        the time returned is that of the attempt that succeeded. Raises
        :class:`TonApiUnavailable` when every attempt failed or TonAPI reports
        ``rest_online: false``; :class:`TonApiError` when it refuses (a bad API key).
        """
        body, elapsed = await self._get("/v2/status", {})
        try:
            status = _STATUS_DECODER.decode(body)
        except msgspec.ValidationError as exc:
            match = _PATH_RE.match(str(exc))
            reason, path = (match["reason"], match["path"]) if match else (str(exc), "$")
            raise TonApiFormatError(
                f"TonAPI status response is malformed at {path}: {reason}", path
            ) from exc
        except msgspec.DecodeError as exc:
            raise TonApiFormatError(f"TonAPI status response is not valid JSON: {exc}") from exc
        if not status.rest_online:
            raise TonApiUnavailable(
                "TonAPI reports rest_online=false (indexing latency "
                f"{status.indexing_latency} s): its REST API is down, try again later"
            )
        return elapsed

    # -- the request loop -----------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, str | int]) -> tuple[bytes, float]:
        """The body of a 2xx answer to ``GET path`` and that attempt's round trip in seconds.

        Retries transient failures; see the module docstring.
        """
        if self._state is not _State.OPEN or self._client is None:
            raise RuntimeError(
                f"TonApiClient is {self._state.value}: use it inside `async with TonApiClient(...)`"
            )
        client = self._client
        retries = self._retries
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                await self._limiter.acquire(self._scopes)
            self._request_count += 1
            retry_after: float | None = None
            throttled = False
            cause: Exception
            started = anyio.current_time()
            try:
                response = await client.get(path, params=params)
            except httpx.TimeoutException as exc:
                failure, cause = f"timed out after {self._timeout:g} s", exc
            except httpx.TransportError as exc:
                detail = " ".join(str(exc).split()) or "no detail"
                failure, cause = f"connection failed ({type(exc).__name__}: {detail})", exc
            else:
                elapsed = anyio.current_time() - started
                status = response.status_code
                logger.debug(
                    "GET %s -> %s in %.3f s",
                    path,
                    status,
                    elapsed,
                    extra={"action": "tonapi_request"},
                )
                if 200 <= status < 300:
                    return response.content, elapsed
                error = _error_text(response.content)
                said = f": {error}" if error else ""
                if status != 429 and status < 500:
                    raise TonApiError(
                        f"TonAPI refused GET {path}: HTTP {status}{said}"
                        + ("; check the API key" if status in (401, 403) else "")
                    )
                failure = f"HTTP {status}{said}"
                cause = httpx.HTTPStatusError(failure, request=response.request, response=response)
                if status == 429:
                    throttled = True
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            if attempt > retries:
                if throttled and self._limiter is not None:
                    await self._limiter.pause(
                        self._scopes, self._backoff_min if retry_after is None else retry_after
                    )
                raise TonApiUnavailable(
                    f"TonAPI is unavailable: GET {path} failed {attempt} time(s), "
                    f"last with {failure}; try again later"
                ) from cause
            self._retry_count += 1
            delay = retry_delay(
                attempt,
                backoff_min=self._backoff_min,
                backoff_max=self._backoff_max,
                rng=self._rng,
                retry_after=retry_after,
            )
            if throttled and self._limiter is not None:
                # Every node holds back, not only this one (its Retry-After, else our backoff).
                await self._limiter.pause(self._scopes, delay)
            logger.warning(
                "TonAPI GET %s: %s; retry %s of %s in %.2f s",
                path,
                failure,
                attempt,
                retries,
                delay,
                extra={"action": "tonapi_retry"},
            )
            await self._sleep(delay)
