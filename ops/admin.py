"""The admin HTTP API and the live dashboard, on aiohttp.

The gateway's web app serves them when ``ADMIN_TOKEN`` is set (:func:`add_admin_routes`);
:func:`build_admin_app` is the same routes in an app of their own, with ``/healthz``.

=====================================  ===============  ========================================
route                                  who may          answer
=====================================  ===============  ========================================
``GET /metrics``                       bearer           Prometheus text format 0.0.4
``GET /api/actors``                    bearer           ``{"actors": [status + history, ...]}``
``POST /api/actors/{name}/{action}``   bearer, write    202 ``{"command_id": ..., ...}``
``POST /api/tasks/{id}/retry``          bearer, write    200 ``{"task_id": ..., "requeued": true}``
``GET /api/events``                    bearer           ``{"events": [...], "next_after": N,
                                                        "more": bool}``
``GET /api/refunds``                   bearer           ``{"refunds": [...], "totals": {...}}``
``POST /api/refunds/{id}/refunded``     bearer, write    200 ``{"refund": ...}`` (the operator
                                                        sent it: ``{"tx_hash": ..., "note"?}``)
``POST /api/refunds/{id}/decline``      bearer, write    200 ``{"refund": ...}``
                                                        (``{"reason": ...}``)
``GET /api/overview``                  bearer, cookie   the dashboard's snapshot
``GET /api/stream``                    bearer, cookie   Server-Sent Events: ``overview`` at
                                                        once and on every change
``GET /dashboard``                     bearer, cookie   the live dashboard (one HTML page)
=====================================  ===============  ========================================

**Authentication.** Every route above goes through one check (:class:`AdminAuth`): the header
``Authorization: Bearer <ADMIN_TOKEN>``, compared in constant time; or, on the three read-only
routes a browser uses, the session cookie. ``GET /dashboard?token=<ADMIN_TOKEN>`` sets that
cookie (HttpOnly, SameSite=Strict: the login time and an HMAC of it under the token, never the
token itself) and redirects to ``/dashboard``, so the token leaves the address bar at once.
The server reads the login time back and refuses a session older than 7 days, whatever the
browser keeps. Anything else gets 401: JSON with ``WWW-Authenticate: Bearer`` from the API, a
short page saying how to log in from ``/dashboard``. Changing ``ADMIN_TOKEN`` invalidates every
cookie. The token is never logged nor sent back; a runner serving these routes should not log
request lines either (the gateway passes ``access_log=None``), since a login's query string
carries the token.

**Writes from the dashboard** ("write" above) take the cookie too, with two checks against
cross-site requests (:meth:`AdminAuth.csrf_problem`): the ``Origin`` header must name this
server, and the header ``X-I3lani-CSRF`` must carry the session's CSRF token, which the login
sets in a cookie the page's script reads (another site can neither read it nor send the
header); otherwise 403 with one line. Each write is recorded with who made it:
``api:<address>`` for a bearer, ``dashboard:<address>/<session id>`` for a session.

**Limits.** A client that sent :data:`LOGIN_FAILURES_ALLOWED` wrong tokens (bearer or login) in
:data:`LOGIN_FAILURE_WINDOW` seconds gets 429 with ``Retry-After`` for any token it sends until
the oldest failure leaves the window; its valid session keeps working. A client may hold
:data:`STREAMS_PER_CLIENT` event streams open at once; one more gets 429. A client is its
address as the server sees it (behind a proxy, the proxy's: the limits then hold for all).

**Cost.** ``/metrics`` and the snapshot run a handful of indexed queries, however long the log
(see the ``admin_*`` queries in ``store/sql/queries.sql``). The snapshot is computed at most
once per second whatever the number of dashboards open; each stream checks it every
:data:`REFRESH_SECONDS` and sends it when it changed, with a ``: keepalive`` comment after
:data:`KEEPALIVE_SECONDS` of silence (proxies close idle connections).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import time
import typing
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Final, Literal

import anyio
import msgspec
from aiohttp import web

from actors.control import ACTIONS, UnknownAction, command_outlook, issue_command, operator_command
from actors.health import LAG_LIMIT, checkpoint_lag, last_verdict
from actors.names import ACTOR_NAMES, CATEGORIES, DEFAULT_ACTORS, UnknownActor
from actors.refunds import (
    REFUND_EVENTS,
    Refund,
    RefundRefused,
    RefundStatus,
    RefundTotals,
    UnknownRefund,
    decline,
    fold_refund,
    mark_refunded,
    owed_for,
    totals,
)
from actors.runtime.status import ActorStatus, StatusState, actor_status
from actors.tasks import task_types
from events import (
    DEFAULT_REGISTRY,
    NANOTONS_PER_TON,
    ActorBackoffScheduled,
    ActorCrashed,
    ActorParked,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    HealthCheck,
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
)
from events.errors import InvalidEvent, StoreUnavailable
from events.streams import actor_stream
from store import EventStore, OpenTransaction, RecordedEvent, views
from store.flow import flow_table
from store.tasks import DeadTask, DuplicateTask, TaskNotDead, TaskNotFound, TaskQueue
from store.views import MinuteCount

__all__ = [
    "add_admin_routes",
    "admin_routes",
    "build_admin_app",
    "serve_admin_app",
    "AdminAuth",
    "COOKIE_NAME",
    "REFRESH_SECONDS",
    "KEEPALIVE_SECONDS",
    # metrics
    "MetricFamily",
    "render_metrics",
    "collect_metrics",
    # the dashboard's snapshot
    "Overview",
    "build_overview",
    "PaymentRow",
    "fold_payment",
    "RefundRow",
    "RefundsView",
    "refunds_view",
    "LifecycleEntry",
    "lifecycle_entry",
    "ton_text",
    # /api/events
    "EventQuery",
    "parse_event_query",
    "read_events",
]

logger = logging.getLogger(__name__)

COOKIE_NAME: Final = "i3lani_admin"
COOKIE_MAX_AGE: Final = 7 * 24 * 3600
REFRESH_SECONDS: Final = 2.0
KEEPALIVE_SECONDS: Final = 15.0
HISTORY_LENGTH: Final = 10
RATE_MINUTES: Final = 10
RATE_SCAN_LIMIT: Final = 20_000
PAYMENTS_SHOWN: Final = 10
PAYMENTS_SCAN_LIMIT: Final = 500
REFUNDS_SHOWN: Final = 20
EVENTS_PAGE_MAX: Final = 500
EVENTS_SCAN_BUDGET: Final = 5_000
REASON_MAX: Final = 500
LOGIN_FAILURES_ALLOWED: Final = 10
LOGIN_FAILURE_WINDOW: Final = 600.0
STREAMS_PER_CLIENT: Final = 4
STREAM_RETRY_AFTER: Final = 10
_CLIENTS_TRACKED: Final = 10_000
_CLOCK_SKEW: Final = 60
_SESSION_PURPOSE: Final = b"i3lani admin dashboard session v2"
_CSRF_PURPOSE: Final = b"i3lani admin dashboard csrf v1"
CSRF_COOKIE: Final = "i3lani_csrf"
CSRF_HEADER: Final = "X-I3lani-CSRF"
_DATABASE_DOWN: Final[tuple[type[BaseException], ...]] = (StoreUnavailable, OSError)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Access = Literal["api", "browser", "page", "write"]
"""Who may call a route: ``api`` bearer only; ``browser`` bearer or cookie; ``page`` also logs
in with ``?token=``; ``write`` bearer, or cookie with the CSRF checks (same Origin, and the
header :data:`CSRF_HEADER` carrying the session's CSRF token)."""


class FailureWindow:
    """At most ``allowed`` failures per client in any ``window`` seconds: the client's next
    attempt waits until the oldest one leaves the window. Pure but for the clock; at most
    :data:`_CLIENTS_TRACKED` clients are remembered (the quietest are forgotten first)."""

    def __init__(
        self,
        allowed: int = LOGIN_FAILURES_ALLOWED,
        window: float = LOGIN_FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed, self.window, self.clock = allowed, window, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float] | None:
        found = self._failures.get(client)
        if found is None:
            return None
        horizon = self.clock() - self.window
        while found and found[0] <= horizon:
            found.popleft()
        if not found:
            del self._failures[client]
            return None
        return found

    def retry_after(self, client: str) -> int | None:
        """Whole seconds ``client`` must wait before its next attempt; None: it may try."""
        found = self._recent(client)
        if found is None or len(found) < self.allowed:
            return None
        return max(1, math.ceil(found[0] + self.window - self.clock()))

    def failed(self, client: str) -> None:
        found = self._recent(client)
        if found is None:
            if len(self._failures) >= _CLIENTS_TRACKED:
                del self._failures[next(iter(self._failures))]
            found = self._failures[client] = deque()
        found.append(self.clock())


# -- authentication ----------------------------------------------------------------------------
class AdminAuth:
    """The one check in front of every admin route (see the module docstring)."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        if len(token) < 16:
            raise ValueError("the admin token must have at least 16 characters")
        self._token = token.encode()
        self.clock = clock
        self.failures = FailureWindow()

    def __repr__(self) -> str:
        return "AdminAuth(<token>)"

    def token_matches(self, candidate: str) -> bool:
        # A header with undecodable bytes arrives with surrogates: encode it as it came
        # (it simply does not match) rather than fail with a 500.
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), self._token)

    def bearer_ok(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(credentials.strip())

    def _sign(self, purpose: bytes, text: str) -> str:
        message = purpose + b"|" + text.encode("utf-8", "surrogatepass")
        return hmac.new(self._token, message, hashlib.sha256).hexdigest()

    def session_for(self, issued_at: int) -> str:
        """The session cookie's value for a login at ``issued_at`` (Unix seconds):
        ``<issued_at>.<HMAC of it under the token>``. The server reads the time back from it,
        so the session ends after :data:`COOKIE_MAX_AGE` whatever the browser keeps."""
        return f"{issued_at}.{self._sign(_SESSION_PURPOSE, str(issued_at))}"

    def session_valid(self, value: str, now: float) -> bool:
        """Whether ``value`` is a session this token signed, issued within
        :data:`COOKIE_MAX_AGE` before ``now`` (and not after it, but for clock skew). Pure."""
        issued, dot, _ = value.partition(".")
        if not dot or not issued.isascii() or not issued.isdigit() or len(issued) > 12:
            return False
        if not hmac.compare_digest(
            value.encode("utf-8", "surrogatepass"), self.session_for(int(issued)).encode()
        ):
            return False
        return -_CLOCK_SKEW <= now - int(issued) < COOKIE_MAX_AGE

    def csrf_for(self, session: str) -> str:
        """The CSRF token of ``session``: what a cookie-authenticated write sends in
        :data:`CSRF_HEADER` (the page reads it from the :data:`CSRF_COOKIE` cookie)."""
        return self._sign(_CSRF_PURPOSE, session)

    def session(self, request: web.Request) -> str | None:
        """The request's session cookie when it is valid now, else None."""
        value = request.cookies.get(COOKIE_NAME)
        if value is None or not self.session_valid(value, self.clock()):
            return None
        return value

    def cookie_ok(self, request: web.Request) -> bool:
        return self.session(request) is not None

    def csrf_problem(self, request: web.Request) -> str | None:
        """Why a cookie-authenticated write is refused (one line), or None: it comes from this
        dashboard. Its ``Origin`` (browsers send one with every POST) must name this host, and
        it must carry the session's CSRF token, which another site cannot read."""
        session = self.session(request)
        if session is None:
            return "authentication required: log in at /dashboard or send a bearer token"
        origin = request.headers.get("Origin")
        host = request.headers.get("X-Forwarded-Host", request.host)
        if origin is None or origin.partition("://")[2] != host:
            return "cross-site request refused: the Origin header must name this server"
        given = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, self.csrf_for(session).encode()):
            return f"cross-site request refused: send the {CSRF_HEADER} header the page sends"
        return None

    def who(self, request: web.Request) -> str:
        """Who made a write, as it is recorded: the bearer's ``api:<address>``, or the
        dashboard session's ``dashboard:<address>/<session id>``."""
        remote = request.remote or "unknown"
        if self.bearer_ok(request):
            return f"api:{remote}"
        session = self.session(request) or ""
        return f"dashboard:{remote}/{session.partition('.')[2][:8]}"

    def guard(self, handler: Handler, access: Access = "api") -> Handler:
        """``handler`` behind the check; database outages become a one-line 503."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            client = request.remote or "unknown"
            logging_in = access == "page" and "token" in request.query
            if logging_in or "Authorization" in request.headers:
                wait = self.failures.retry_after(client)
                if wait is not None:
                    return _too_many(
                        f"too many wrong admin tokens from {client}; try again in {wait}s", wait
                    )
            if logging_in:
                return self._login(request)
            bearer = self.bearer_ok(request)
            if not bearer and "Authorization" in request.headers:
                self.failures.failed(client)
            if not bearer and access == "write" and self.cookie_ok(request):
                problem = self.csrf_problem(request)
                if problem is not None:
                    return _error(403, problem)
            elif not bearer and not (access != "api" and self.cookie_ok(request)):
                if access == "page":
                    return _login_page(wrong=False)
                return _unauthorized(request)
            try:
                return await handler(request)
            except _DATABASE_DOWN as exc:
                logger.warning(
                    "admin %s: database unavailable: %s",
                    request.path,
                    _one_line(exc),
                    extra={"action": "admin_database_unavailable"},
                )
                return _error(503, f"database unavailable ({_one_line(exc)}); try again shortly")

        return guarded

    def _login(self, request: web.Request) -> web.StreamResponse:
        if not self.token_matches(request.query.get("token", "")):
            self.failures.failed(request.remote or "unknown")
            logger.warning(
                "dashboard login with a wrong token from %s",
                request.remote,
                extra={"action": "admin_login_refused"},
            )
            return _login_page(wrong=True)
        response = web.Response(status=303, headers={**_PAGE_HEADERS, "Location": request.path})
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
        session = self.session_for(int(self.clock()))
        response.set_cookie(
            COOKIE_NAME,
            session,
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )
        # Readable by the page's script, which sends it back in a header: a page of another
        # site can neither read it nor set that header.
        response.set_cookie(
            CSRF_COOKIE,
            self.csrf_for(session),
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=False,
            samesite="Strict",
            secure=secure,
        )
        return response


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def _too_many(message: str, retry_after: int) -> web.Response:
    response = _error(429, message)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _unauthorized(request: web.Request) -> web.Response:
    given = "Authorization" in request.headers
    message = (
        "wrong admin token: send Authorization: Bearer <ADMIN_TOKEN>"
        if given
        else "authentication required: send Authorization: Bearer <ADMIN_TOKEN>"
    )
    response = _error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="i3lani admin"'
    return response


_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_LOGIN_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>i3lani admin: log in</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem}}
code{{background:rgba(127,127,127,.18);padding:.1rem .3rem;border-radius:4px;word-break:break-all}}
</style></head>
<body><h1>i3lani admin: 401</h1>
<p id="login-required">{problem}</p>
<p>To log in, open <code>/dashboard?token=&lt;ADMIN_TOKEN&gt;</code> once: this browser then
keeps a session cookie for 7 days, and the token leaves the address bar at once.</p>
<p>Scripts send <code>Authorization: Bearer &lt;ADMIN_TOKEN&gt;</code> instead.</p>
</body></html>
"""


def _login_page(*, wrong: bool) -> web.Response:
    problem = (
        "That token is not this server's ADMIN_TOKEN."
        if wrong
        else "This dashboard needs the admin token."
    )
    return web.Response(
        text=_LOGIN_PAGE.format(problem=problem),
        status=401,
        content_type="text/html",
        headers={
            **_PAGE_HEADERS,
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


# -- Prometheus exposition ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric: its name, type, help text and samples (labels, value)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]]


_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_metrics(families: Sequence[MetricFamily]) -> str:
    """The text exposition format 0.0.4: ``# HELP``, ``# TYPE``, then one line per sample,
    label values escaped (backslash, double quote, newline). Pure."""
    lines: list[str] = []
    for family in families:
        if not _METRIC_NAME.fullmatch(family.name):
            raise ValueError(f"not a metric name: {family.name!r}")
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {family.name} {help_text}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            for label in labels:
                if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                    raise ValueError(f"not a label name: {label!r}")
            text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(
                f"{family.name}{{{text}}} {_number(value)}"
                if text
                else f"{family.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


STATES: Final[tuple[StatusState, ...]] = typing.get_args(StatusState)


async def shown_statuses(store: EventStore, now: datetime) -> list[ActorStatus]:
    """Each actor's status, as ``i3lani status`` shows them: the product's actors always, the
    demonstration actors once they have run somewhere."""
    statuses = [await actor_status(store, name, now) for name in ACTOR_NAMES]
    return [s for s in statuses if s.actor in DEFAULT_ACTORS or s.state != "never started"]


async def collect_metrics(store: EventStore, now: datetime) -> list[MetricFamily]:
    """Every metric of ``/metrics``, read from the log, the task queue and the checkpoints."""
    by_type = await views.events_by_type(store)
    restarted = await views.events_per_stream(store, store.registry.tag_of(ActorRestarted))
    restarts = {stream.removeprefix("actor-"): count for stream, count in restarted.items()}
    statuses = await shown_statuses(store, now)
    writer = await store.oldest_writer()
    connections = await views.connection_use(store)
    queue = TaskQueue(store, task_types())
    counts = await queue.counts()
    concurrency = await queue.concurrency()
    flow = await flow_table(store).usage()
    lags: list[tuple[Mapping[str, str], float]] = []
    for name, category in sorted(CATEGORIES.items()):
        behind = await checkpoint_lag(store, actor_stream(name), category)
        if behind is not None:
            lags.append(({"checkpoint": actor_stream(name)}, behind))
    actors = sorted({s.actor for s in statuses} | set(restarts))
    task_names = sorted(set(task_types().names()) | set(counts))
    task_samples: list[tuple[Mapping[str, str], float]] = []
    for name in task_names:
        found = counts.get(name)
        for state in ("queued", "running", "dead"):
            value = 0 if found is None else getattr(found, state)
            task_samples.append(({"type": name, "state": state}, value))
    return [
        MetricFamily(
            "i3lani_events_total",
            "counter",
            "Events in the log, by type.",
            [({"type": name}, count) for name, count in sorted(by_type.items())],
        ),
        MetricFamily(
            "i3lani_actor_restarts_total",
            "counter",
            "Actor restarts recorded (ActorRestarted events), by actor.",
            [({"actor": name}, restarts.get(name, 0)) for name in actors],
        ),
        MetricFamily(
            "i3lani_actor_state",
            "gauge",
            "1 for the actor's current state, 0 for the others.",
            [
                ({"actor": s.actor, "state": state}, int(s.state == state))
                for s in statuses
                for state in STATES
            ],
        ),
        MetricFamily(
            "i3lani_actor_lease_suspect",
            "gauge",
            "1 while the actor's lease is live but unrenewed for over half its time to live "
            "(its node frozen or cut off), else 0.",
            [({"actor": s.actor}, int(bool(s.lease_suspect))) for s in statuses],
        ),
        MetricFamily(
            "i3lani_readers_held_back_events",
            "gauge",
            "Committed events that gap-free readers cannot see yet: they wait behind the oldest "
            "open write transaction (counted up to 100000; 0 when none waits).",
            [({}, 0 if writer is None else writer.events_waiting)],
        ),
        MetricFamily(
            "i3lani_oldest_write_transaction_seconds",
            "gauge",
            "Age of the oldest write transaction open on the PostgreSQL server (0 when none).",
            [({}, 0 if writer is None else round(writer.open_seconds, 3))],
        ),
        MetricFamily(
            "i3lani_tasks",
            "gauge",
            "Tasks in the queue, by type and state (queued, running, dead).",
            task_samples,
        ),
        MetricFamily(
            "i3lani_dead_letters",
            "gauge",
            "Dead-lettered tasks waiting for an operator.",
            [({}, sum(c.dead for c in counts.values()))],
        ),
        MetricFamily(
            "i3lani_task_concurrency",
            "gauge",
            "Task types with a concurrency limit across nodes: the limit, and the tasks of the "
            "type running now (live).",
            [
                ({"type": c.task_type, "kind": kind}, value)
                for c in concurrency.values()
                for kind, value in (("limit", c.max_running), ("running", c.running))
            ],
        ),
        MetricFamily(
            "i3lani_rate_limit",
            "gauge",
            "Rate limits every node shares (the shared scopes, and the chats in use or paused): "
            "the most grants in a window (max), the window in seconds, the grants in the last "
            "window (used), the seconds it stays paused after a 429 (paused_seconds).",
            [
                ({"scope": u.scope, "kind": kind}, value)
                for u in flow.scopes
                for kind, value in (
                    ("max", u.limit.count),
                    ("window_seconds", u.limit.per),
                    ("used", u.used),
                    ("paused_seconds", round(u.paused_for, 3)),
                )
            ],
        ),
        MetricFamily(
            "i3lani_rate_limit_429_total",
            "counter",
            "429s (flood control) met by any node, by scope, since the scope's row was made.",
            [({"scope": u.scope}, u.pauses) for u in flow.scopes],
        ),
        MetricFamily(
            "i3lani_subscription_lag_events",
            "gauge",
            f"Events of its category past an actor's checkpoint (counted up to {LAG_LIMIT + 1}).",
            lags,
        ),
        MetricFamily(
            "i3lani_payments_confirmed_total",
            "counter",
            "Payments confirmed (PaymentConfirmed events).",
            [({}, by_type.get("PaymentConfirmed", 0))],
        ),
        MetricFamily(
            "i3lani_connections",
            "gauge",
            "Database connections each i3lani process holds, by node and purpose (listen, "
            "lease, work: pooled); each keeps to I3LANI_MAX_CONNECTIONS.",
            [
                ({"node": node.node or "", "purpose": purpose}, count)
                for node in connections.nodes
                for purpose, count in (
                    ("listen", node.listen),
                    ("lease", node.lease),
                    ("work", node.work),
                )
            ],
        ),
        MetricFamily(
            "i3lani_server_connections",
            "gauge",
            "The PostgreSQL server's client connections in use (every database) and its limit.",
            [
                ({"kind": "in_use"}, connections.server_in_use),
                ({"kind": "max"}, connections.server_max),
            ],
        ),
    ]


# -- the dashboard's snapshot ------------------------------------------------------------------
def ton_text(nanotons: int) -> str:
    """Nanotons as TON with 2 to 9 decimals, exact: ``5_440_000_000`` -> ``'5.44'``,
    ``1`` -> ``'0.000000001'``. Pure."""
    whole, fraction = divmod(nanotons, NANOTONS_PER_TON)
    digits = f"{fraction:09d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}"


class LifecycleEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One step of an actor's lifecycle, as the dashboard lists it."""

    position: int
    type: str
    at: datetime
    node: str | None = None
    error: str | None = None
    detail: str | None = None


def lifecycle_entry(recorded: RecordedEvent) -> LifecycleEntry:
    """``recorded`` (an event of an ``actor-<name>`` stream) as a history line. Pure."""
    event = recorded.event
    at, node, error, detail = recorded.recorded_at, None, None, None
    if isinstance(event, ActorStarted):
        at, node, detail = event.started_at, event.node, f"generation {event.generation}"
    elif isinstance(event, ActorCrashed):
        at, node = event.crashed_at, event.node
        error = f"{event.error_type}: {event.message}"
        detail = f"after {event.uptime_seconds:.1f}s"
    elif isinstance(event, ActorBackoffScheduled):
        at = event.scheduled_at
        detail = f"attempt {event.attempt}, waits {event.delay_seconds:g}s"
    elif isinstance(event, ActorRestarted):
        at = event.restarted_at
        detail = event.cause + (f" by {event.requested_by}" if event.requested_by else "")
        if event.reason:
            detail += f": {event.reason}"
    elif isinstance(event, ActorParked):
        at, detail = event.parked_at, event.reason
    elif isinstance(event, ActorStopped):
        at, node, detail = event.stopped_at, event.node, event.reason
    return LifecycleEntry(
        position=recorded.position,
        type=recorded.type,
        at=at,
        node=node,
        error=None if error is None else error[:300],
        detail=None if detail is None else detail[:300],
    )


PaymentState = Literal["pending", "confirmed", "underpaid", "expired", "late"]
_PAYMENT_EVENTS: Final = (
    PaymentCreated,
    PaymentConfirmed,
    PaymentUnderpaid,
    PaymentExpired,
    LatePaymentReceived,
    SubscriptionActivated,
)
PAYMENT_TYPES: Final = tuple(DEFAULT_REGISTRY.tag_of(cls) for cls in _PAYMENT_EVENTS)


class PaymentRow(msgspec.Struct, kw_only=True):
    """A payment as the dashboard shows it: folded from its stream's events."""

    payment_id: int
    stream: str
    state: PaymentState = "pending"
    user_id: int | None = None
    plan: str | None = None
    amount_nanotons: int | None = None
    amount_ton: str | None = None
    paid_nanotons: int | None = None
    paid_ton: str | None = None
    updated_at: datetime | None = None
    position: int = 0


def fold_payment(events: Sequence[RecordedEvent]) -> PaymentRow | None:
    """A ``payment-<id>`` stream's events folded into its row; None without payment events.
    Pure."""
    row: PaymentRow | None = None
    for recorded in events:
        event = recorded.event
        if not isinstance(event, _PAYMENT_EVENTS):
            continue
        if row is None:
            row = PaymentRow(payment_id=event.payment_id, stream=recorded.stream)
        row.updated_at, row.position = recorded.recorded_at, recorded.position
        if isinstance(event, PaymentCreated | SubscriptionActivated):
            row.user_id, row.plan = event.user_id, event.plan
        if isinstance(event, PaymentCreated):
            row.amount_nanotons = event.amount_nanotons
            row.amount_ton = ton_text(event.amount_nanotons)
        elif isinstance(event, PaymentExpired):
            row.state = "expired"
        elif isinstance(event, PaymentConfirmed | PaymentUnderpaid | LatePaymentReceived):
            row.state = _PAID_STATE[type(event)]
            row.paid_nanotons = event.amount_nanotons
            row.paid_ton = ton_text(event.amount_nanotons)
    return row


_PAID_STATE: Final[dict[type, PaymentState]] = {
    PaymentConfirmed: "confirmed",
    PaymentUnderpaid: "underpaid",
    LatePaymentReceived: "late",
}


class EventRate(msgspec.Struct, frozen=True, kw_only=True):
    """Events per minute, oldest minute first, the current (partial) minute last; ``capped``:
    the window held more events than were counted (the counts are lower bounds)."""

    minutes: list[MinuteCount]
    capped: bool


class TaskRow(msgspec.Struct, frozen=True, kw_only=True):
    task_type: str
    queued: int
    due: int
    running: int
    expired: int
    dead: int
    oldest_due_seconds: float | None


class TaskSummary(msgspec.Struct, frozen=True, kw_only=True):
    types: list[TaskRow]
    dead_letters: list[DeadTask]
    dead_total: int


class FlowScopeRow(msgspec.Struct, frozen=True, kw_only=True):
    """A rate limit every node shares, as the dashboard shows it: at most ``count`` grants in
    ``per`` seconds (``limit``, as configured), ``used`` of them in the last window, paused
    until ``paused_until`` after a 429 (the server's clock), and its totals."""

    scope: str
    limit: str
    count: int
    per: float
    used: int
    paused_until: datetime | None
    granted: int
    pauses: int


class ConcurrencyRow(msgspec.Struct, frozen=True, kw_only=True):
    task_type: str
    max_running: int
    running: int
    set_by: str | None


class FlowView(msgspec.Struct, frozen=True, kw_only=True):
    """Flow control: the shared scopes and the chats in use or paused (``chat_scopes``:
    every chat scope known), and the task types' concurrency limits."""

    scopes: list[FlowScopeRow]
    chat_scopes: int
    concurrency: list[ConcurrencyRow]


class HealthView(msgspec.Struct, frozen=True, kw_only=True):
    healthy: bool
    checked_at: datetime
    checks: list[HealthCheck]


class RefundRow(msgspec.Struct, frozen=True, kw_only=True):
    """An open refund as the dashboard lists it."""

    refund_id: str
    status: str
    amount_ton: str
    owed_for: str
    to: str
    due_at: datetime
    tx_hash: str | None = None
    problem: str = ""


class RefundsView(msgspec.Struct, frozen=True, kw_only=True):
    """The refunds still open (due, or sent and awaiting the chain; oldest first, at most
    :data:`REFUNDS_SHOWN`) and the totals of every refund."""

    open: list[RefundRow]
    open_total: int
    totals: RefundTotals


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    """What the dashboard shows, in one JSON document (``GET /api/overview``, the SSE
    ``overview`` event). ``generated_at`` is the server's clock: the page measures ages
    against it, not against the phone's. ``oldest_writer``: the oldest write transaction open
    on the server (:meth:`EventStore.oldest_writer`, ages to 0.1 s); readers of the log are
    held back while its ``events_waiting`` is above 0."""

    generated_at: datetime
    head: int
    actors: list[dict[str, Any]]
    event_rate: EventRate
    tasks: TaskSummary
    health: HealthView | None
    payments: list[PaymentRow]
    oldest_writer: OpenTransaction | None
    refunds: RefundsView | None = None
    flow: FlowView | None = None

    def content(self) -> bytes:
        """What the snapshot shows, without its time and without the ages that grow by
        themselves: equal for two snapshots that show the same situation.

        A stream sends a snapshot only when this changes (every :data:`REFRESH_SECONDS` at
        most), so a figure that changes every second must not be in it, or every check would
        send a whole snapshot to every dashboard for as long as the situation lasts (an idle
        client can hold a transaction open for hours):

        - the oldest writer counts only while it holds readers back (one that holds nothing
          back is not shown, and short ones come and go between any two snapshots); then
          who it is, its state and the events waiting count, not its ages. The page ages them
          itself from the last snapshot it got (the ages are fresh in every snapshot sent for
          any other change);
        - an actor's ``lease_renewed_seconds_ago`` grows and drops with every renewal (four
          per time to live): it counts only while the lease is suspect, in whole seconds, as
          the page shows it. That lasts half a time to live at most (4 s by default), until
          the lease is renewed or expires.
        """
        writer = self.oldest_writer
        steady_writer = (
            None
            if writer is None or not writer.holds_back_readers
            else msgspec.structs.replace(writer, open_seconds=0.0, state_seconds=0.0)
        )
        return msgspec.json.encode(
            msgspec.structs.replace(
                self,
                generated_at=_EPOCH,
                actors=[_steady_actor(actor) for actor in self.actors],
                oldest_writer=steady_writer,
            )
        )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _steady_actor(actor: dict[str, Any]) -> dict[str, Any]:
    """An actor view as :meth:`Overview.content` compares it."""
    renewed = actor.get("lease_renewed_seconds_ago")
    if renewed is None:
        return actor
    shown = round(renewed) if actor.get("lease_suspect") else None
    return {**actor, "lease_renewed_seconds_ago": shown}


def _writer_view(writer: OpenTransaction | None) -> OpenTransaction | None:
    if writer is None:
        return None
    return msgspec.structs.replace(
        writer,
        open_seconds=round(writer.open_seconds, 1),
        state_seconds=round(writer.state_seconds, 1),
    )


async def _actor_views(store: EventStore, now: datetime) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = []
    for status in await shown_statuses(store, now):
        stream = actor_stream(status.actor)
        version = await store.stream_version(stream)
        recent = await store.read_stream(
            stream, after_version=max(version - HISTORY_LENGTH, 0), skip_unknown=True
        )
        views.append(
            {
                **msgspec.structs.asdict(status),
                "history": [lifecycle_entry(r) for r in reversed(recent)],
            }
        )
    return views


async def _event_rate(store: EventStore) -> EventRate:
    minutes = await views.event_rate(store, RATE_MINUTES, RATE_SCAN_LIMIT)
    return EventRate(minutes=minutes, capped=sum(m.events for m in minutes) >= RATE_SCAN_LIMIT)


async def _tasks(store: EventStore) -> TaskSummary:
    queue = TaskQueue(store, task_types())
    counts = await queue.counts()
    rows = [
        TaskRow(
            task_type=c.task_type,
            queued=c.queued,
            due=c.due,
            running=c.running,
            expired=c.expired,
            dead=c.dead,
            oldest_due_seconds=(
                None if c.oldest_due_age is None else round(c.oldest_due_age.total_seconds(), 1)
            ),
        )
        for c in counts.values()
    ]
    dead_total = sum(c.dead for c in counts.values())
    dead = await queue.dead_letters(limit=10) if dead_total else []
    return TaskSummary(types=rows, dead_letters=dead, dead_total=dead_total)


async def _flow(store: EventStore) -> FlowView:
    usage = await flow_table(store).usage()
    concurrency = await TaskQueue(store, task_types()).concurrency()
    return FlowView(
        scopes=[
            FlowScopeRow(
                scope=u.scope,
                limit=u.limit.text(),
                count=u.limit.count,
                per=u.limit.per,
                used=u.used,
                paused_until=u.paused_until,
                granted=u.granted,
                pauses=u.pauses,
            )
            for u in usage.scopes
        ],
        chat_scopes=usage.chat_scopes,
        concurrency=[
            ConcurrencyRow(
                task_type=c.task_type,
                max_running=c.max_running,
                running=c.running,
                set_by=c.set_by,
            )
            for c in concurrency.values()
        ],
    )


async def _health(store: EventStore) -> HealthView | None:
    verdict = await last_verdict(store)
    if verdict is None:
        return None
    return HealthView(healthy=verdict.healthy, checked_at=verdict.checked_at, checks=verdict.checks)


class _PaymentCache:
    """Folded payments by stream, reused while the stream's last position is unchanged."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, PaymentRow | None]] = {}

    async def recent(self, store: EventStore) -> list[PaymentRow]:
        found = await views.recent_streams(
            store, "payment", PAYMENT_TYPES, shown=PAYMENTS_SHOWN, scan_limit=PAYMENTS_SCAN_LIMIT
        )
        rows: dict[str, tuple[int, PaymentRow | None]] = {}
        for recent in found:
            stream, last = recent.stream, recent.last_position
            cached = self._rows.get(stream)
            if cached is None or cached[0] != last:
                cached = (last, fold_payment(await store.read_stream(stream, skip_unknown=True)))
            rows[stream] = cached
        self._rows = rows
        return [row for _, row in rows.values() if row is not None]


class _RefundCache:
    """Every refund folded by stream, re-read only when its stream moved."""

    def __init__(self) -> None:
        self._refunds: dict[str, tuple[int, Refund | None]] = {}

    async def all(self, store: EventStore) -> list[Refund]:
        tags = [store.registry.tag_of(cls) for cls in REFUND_EVENTS]
        found: dict[str, tuple[int, Refund | None]] = {}
        for stream in await views.streams_with_types(store, tags):
            cached = self._refunds.get(stream.stream)
            if cached is None or cached[0] != stream.last_position:
                events = await store.read_stream(stream.stream, skip_unknown=True)
                cached = (stream.last_position, fold_refund(events))
            found[stream.stream] = cached
        self._refunds = found
        return [refund for _, refund in found.values() if refund is not None]


def refunds_view(refunds: list[Refund]) -> RefundsView:
    """The dashboard's refunds: the open ones, oldest first, and the totals. Pure."""
    still = [r for r in refunds if r.open]
    rows = [
        RefundRow(
            refund_id=r.refund_id,
            status=str(r.status),
            amount_ton=ton_text(r.amount_nanotons),
            owed_for=owed_for(r.category, r.payment_id),
            to=r.to,
            due_at=r.due_at,
            tx_hash=r.tx_hash,
            problem=r.problem,
        )
        for r in still[:REFUNDS_SHOWN]
    ]
    return RefundsView(open=rows, open_total=len(still), totals=totals(refunds))


async def build_overview(
    store: EventStore,
    now: datetime,
    payments: _PaymentCache | None = None,
    refunds: _RefundCache | None = None,
) -> Overview:
    """The dashboard's snapshot, now."""
    writer = await store.oldest_writer()  # first: its ages are as of ``now``, near enough
    head = await store.head()
    return Overview(
        generated_at=now,
        head=head.position,
        actors=await _actor_views(store, now),
        event_rate=await _event_rate(store),
        tasks=await _tasks(store),
        health=await _health(store),
        payments=await (payments or _PaymentCache()).recent(store),
        oldest_writer=_writer_view(writer),
        refunds=refunds_view(await (refunds or _RefundCache()).all(store)),
        flow=await _flow(store),
    )


class _OverviewSource:
    """One snapshot shared by every dashboard: computed at most once per ``max_age``."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._payments = _PaymentCache()
        self.refunds = _RefundCache()
        self._lock: anyio.Lock | None = None
        self._cached: tuple[float, Overview] | None = None

    async def get(self, max_age: float) -> Overview:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            now = anyio.current_time()
            if self._cached is None or now - self._cached[0] >= max_age:
                overview = await build_overview(
                    self.store, datetime.now(UTC), self._payments, self.refunds
                )
                self._cached = (anyio.current_time(), overview)
            return self._cached[1]


# -- /api/events -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EventQuery:
    """The parameters of ``GET /api/events``."""

    after: int = 0
    limit: int = 100
    stream: str | None = None
    category: str | None = None
    types: frozenset[str] | None = None

    def wants(self, recorded: RecordedEvent) -> bool:
        return (self.stream is None or recorded.stream == self.stream) and (
            self.types is None or recorded.type in self.types
        )


_EVENT_PARAMS: Final = ("after", "limit", "stream", "category", "type")
_TYPE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,199}")


def _whole_number(name: str, text: str, low: int, high: int | None = None) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(f"{name} must be a whole number, got {text[:40]!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def parse_event_query(params: Mapping[str, Sequence[str]]) -> EventQuery:
    """``params`` (each name to its values) as an EventQuery; ValueError with a one-line
    message for anything unexpected. Pure."""
    single: dict[str, str] = {}
    for name, values in params.items():
        if name not in _EVENT_PARAMS:
            raise ValueError(
                f"unknown parameter {name[:40]!r}; valid ones: {', '.join(_EVENT_PARAMS)}"
            )
        if len(values) != 1:
            raise ValueError(f"give {name} once")
        single[name] = values[0]
    after = _whole_number("after", single["after"], 0) if "after" in single else 0
    limit = (
        _whole_number("limit", single["limit"], 1, EVENTS_PAGE_MAX) if "limit" in single else 100
    )
    stream = single.get("stream")
    category = single.get("category")
    if stream is not None and category is not None:
        raise ValueError("give stream or category, not both")
    if stream is not None and not (1 <= len(stream) <= 200 and stream.isprintable()):
        raise ValueError("stream must be 1 to 200 printable characters (e.g. payment-42)")
    if category is not None and (
        not (1 <= len(category) <= 200 and category.isprintable()) or "-" in category
    ):
        raise ValueError("category must be 1 to 200 printable characters, no '-' (e.g. payment)")
    types: frozenset[str] | None = None
    if "type" in single:
        names = [name.strip() for name in single["type"].split(",")]
        for name in names:
            if not _TYPE_NAME.fullmatch(name):
                raise ValueError(
                    f"type must be event type names separated by commas, got {name[:40]!r}"
                )
        types = frozenset(names)
    return EventQuery(after=after, limit=limit, stream=stream, category=category, types=types)


def _event_json(recorded: RecordedEvent) -> dict[str, Any]:
    return {
        "position": recorded.position,
        "event_id": recorded.event_id,
        "stream": recorded.stream,
        "version": recorded.version,
        "type": recorded.type,
        "recorded_at": recorded.recorded_at,
        "data": msgspec.structs.asdict(recorded.event),
        "metadata": recorded.metadata,
    }


async def read_events(
    store: EventStore, wanted: EventQuery
) -> tuple[list[RecordedEvent], int, bool]:
    """One page for ``GET /api/events``: the events, the position to pass as ``after`` next,
    and whether the log may hold more. Filters by stream or type read the stream's category a
    page at a time and stop after :data:`EVENTS_SCAN_BUDGET` rows (``more`` is then true)."""
    cursor = await store.cursor_at(wanted.after)
    category = wanted.category
    if wanted.stream is not None:
        category = wanted.stream.split("-", 1)[0]
    filtered = wanted.stream is not None or wanted.types is not None
    batch = EVENTS_PAGE_MAX if filtered else wanted.limit
    found: list[RecordedEvent] = []
    scanned = 0
    while True:
        page = await store.read_page(cursor, category=category, limit=batch, skip_unknown=True)
        scanned += page.fetched
        for recorded in page.events:
            if wanted.wants(recorded):
                found.append(recorded)
                if len(found) == wanted.limit:
                    return found, recorded.position, True
        cursor = page.cursor
        if page.fetched < batch:
            return found, cursor.position, False
        if scanned >= EVENTS_SCAN_BUDGET:
            return found, cursor.position, True


# -- the routes --------------------------------------------------------------------------------
class _CommandBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX)] = ""


class _RefundedBody(msgspec.Struct, forbid_unknown_fields=True):
    tx_hash: str
    note: Annotated[str, msgspec.Meta(max_length=REASON_MAX)] = ""


class _DeclineBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX)]


_BAD_BODY: Final = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)
"""What decoding a JSON body raises for a body of the wrong shape; RecursionError: nested deeper
than the decoder goes."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deep"
    return _one_line(exc)


_REFUND_FILTERS: Final = ("open", "all", *(str(status) for status in RefundStatus))


def _dashboard_html() -> str:
    return resources.files("ops").joinpath("dashboard.html").read_text(encoding="utf-8")


def _csp(html: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script and style."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()) for b in bodies)
        return " ".join(f"'sha256-{d.decode()}'" for d in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class _Admin:
    def __init__(self, store: EventStore, auth: AdminAuth) -> None:
        self.store = store
        self.auth = auth
        self.source = _OverviewSource(store)
        self.html = _dashboard_html()
        self.page_headers = {**_PAGE_HEADERS, "Content-Security-Policy": _csp(self.html)}
        self.closing = False
        self.wakers: set[anyio.Event] = set()
        self.streams: dict[str, int] = {}

    async def on_shutdown(self, app: web.Application) -> None:
        """Streams end at once when the server stops (they would hold its shutdown)."""
        self.closing = True
        for waker in self.wakers:
            waker.set()

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        families = await collect_metrics(self.store, datetime.now(UTC))
        return web.Response(
            body=render_metrics(families).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def actors(self, request: web.Request) -> web.StreamResponse:
        return _json({"actors": await _actor_views(self.store, datetime.now(UTC))})

    async def command(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        if name not in ACTOR_NAMES:
            return _error(404, str(UnknownActor(name)))
        if action not in ACTIONS:
            return _error(400, str(UnknownAction(action)))
        body = await request.read()
        try:
            reason = msgspec.json.decode(body, type=_CommandBody).reason if body.strip() else ""
        except _BAD_BODY as exc:
            return _error(400, f'the body is optional JSON {{"reason": "..."}}: {_why(exc)}')
        who = self.auth.who(request)
        command = operator_command(action, name, requested_by=who, reason=reason)
        # The same judgement as `i3lani restart|stop|start`: a command that nothing would act
        # on is refused (409), one with nothing to do is not recorded (200), neither appends.
        outlook = command_outlook(
            command.action, await actor_status(self.store, name, datetime.now(UTC))
        )
        if outlook.refused:
            return _error(409, outlook.message)
        if not outlook.record:
            return _json({"recorded": False, "actor": name, "message": outlook.message})
        try:
            result = await issue_command(self.store, command)
        except InvalidEvent as exc:  # a reason the log cannot hold (a NUL character...)
            return _error(400, f"the reason cannot be recorded: {exc}")
        logger.info(
            "operator command %s %s by %s (position %s)",
            action,
            name,
            who,
            result.last_position,
            extra={"action": "admin_command"},
        )
        return _json(
            {
                "command_id": command.command_id,
                "action": command.action,
                "actor": command.actor,
                "requested_by": command.requested_by,
                "reason": command.reason,
                "position": result.last_position,
                "recorded": True,
                "message": outlook.message,
            },
            status=202,
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        params = {name: request.query.getall(name) for name in request.query}
        try:
            wanted = parse_event_query(params)
            found, next_after, more = await read_events(self.store, wanted)
        except ValueError as exc:
            return _error(400, str(exc))
        return _json(
            {"events": [_event_json(r) for r in found], "next_after": next_after, "more": more}
        )

    async def refunds(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("status", "open")
        if wanted not in _REFUND_FILTERS or set(request.query) - {"status"}:
            return _error(400, f"the one parameter is status, one of {', '.join(_REFUND_FILTERS)}")
        refunds = await self.source.refunds.all(self.store)
        shown = [
            r
            for r in refunds
            if wanted == "all" or (r.open if wanted == "open" else r.status == wanted)
        ]
        return _json({"refunds": shown, "totals": totals(refunds)})

    async def refund_action(self, request: web.Request) -> web.StreamResponse:
        refund_id, action = request.match_info["refund_id"], request.match_info["action"]
        if action not in ("refunded", "decline"):
            return _error(404, f"unknown refund action {action[:40]!r}: refunded or decline")
        who = self.auth.who(request)
        body = await request.read()
        try:
            if action == "refunded":
                given = msgspec.json.decode(body, type=_RefundedBody)
                refund = await mark_refunded(
                    self.store, refund_id, given.tx_hash, requested_by=who, note=given.note
                )
            else:
                reason = msgspec.json.decode(body, type=_DeclineBody).reason
                refund = await decline(self.store, refund_id, reason, requested_by=who)
        except _BAD_BODY as exc:
            shape = (
                '{"tx_hash": "...", "note": "..."}'
                if action == "refunded"
                else ('{"reason": "..."}')
            )
            return _error(400, f"the body is JSON {shape}: {_why(exc)}")
        except UnknownRefund as exc:
            return _error(404, str(exc))
        except RefundRefused as exc:
            return _error(409, str(exc))
        except ValueError as exc:
            return _error(400, str(exc))
        logger.info(
            "refund %s %s by %s",
            refund.refund_id,
            action,
            who,
            extra={"action": "admin_refund"},
        )
        return _json({"refund": refund})

    async def retry_task(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["task_id"]
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            return _error(404, f"no task {text[:40]!r}: a task id is a whole number")
        if (await request.read()).strip():
            return _error(400, "retry takes no body")
        task_id, who = int(text), self.auth.who(request)
        try:
            await TaskQueue(self.store, task_types()).retry_dead(task_id, requested_by=who)
        except TaskNotFound as exc:
            return _error(404, str(exc))
        except (TaskNotDead, DuplicateTask) as exc:
            return _error(409, str(exc))
        logger.info(
            "dead task %s requeued by %s", task_id, who, extra={"action": "admin_task_retry"}
        )
        return _json({"task_id": task_id, "requeued": True, "requested_by": who})

    async def overview(self, request: web.Request) -> web.StreamResponse:
        return _json(await self.source.get(REFRESH_SECONDS / 2))

    async def dashboard(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.html, content_type="text/html", headers=self.page_headers)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or "unknown"
        open_now = self.streams.get(client, 0)
        if open_now >= STREAMS_PER_CLIENT:
            return _too_many(
                f"{open_now} event streams are open from {client} already (at most "
                f"{STREAMS_PER_CLIENT}); close a dashboard tab",
                STREAM_RETRY_AFTER,
            )
        self.streams[client] = open_now + 1
        try:
            return await self._stream(request)
        finally:
            left = self.streams.pop(client) - 1
            if left:
                self.streams[client] = left

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # proxies must not hold the events back
            }
        )
        await response.prepare(request)
        waker = anyio.Event()
        self.wakers.add(waker)
        sent: bytes | None = None
        try:
            await response.write(b"retry: 3000\n\n")
            written = anyio.current_time()
            while not self.closing:
                message = await self._next_message(sent)
                if message is not None:
                    sent, frame = message
                    await response.write(frame)
                    written = anyio.current_time()
                elif anyio.current_time() - written >= KEEPALIVE_SECONDS:
                    await response.write(b": keepalive\n\n")
                    written = anyio.current_time()
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                with anyio.move_on_after(REFRESH_SECONDS):
                    await waker.wait()
        except ConnectionError:
            pass  # the dashboard went away
        finally:
            self.wakers.discard(waker)
        return response

    async def _next_message(self, sent: bytes | None) -> tuple[bytes, bytes] | None:
        """``(what it shows, the SSE frame)`` when there is something new to send."""
        try:
            overview = await self.source.get(REFRESH_SECONDS / 2)
        except _DATABASE_DOWN as exc:
            problem = msgspec.json.encode({"error": f"database unavailable ({_one_line(exc)})"})
            if problem == sent:
                return None
            return problem, b"event: problem\ndata: " + problem + b"\n\n"
        content = overview.content()
        if content == sent:
            return None
        return content, b"event: overview\ndata: " + msgspec.json.encode(overview) + b"\n\n"


@web.middleware
async def _api_route_not_found(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A path under ``/api/`` that no route matches (an actor name holding ``{``, say) answers
    like every other refusal of the API, a JSON ``error`` of one line, not aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if not request.path.startswith("/api/"):
            raise
        return _error(404, "no such route in the admin API (see docs/admin-api.md)")
    except web.HTTPMethodNotAllowed as exc:
        if not request.path.startswith("/api/"):
            raise
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(405, f"{request.method} is not allowed here; allowed: {allowed}")


def add_admin_routes(
    app: web.Application,
    store: EventStore,
    *,
    token: str,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve the admin API and the dashboard from ``app``, each route behind ``token``;
    ``clock`` (Unix seconds) dates and expires the sessions."""
    admin = _Admin(store, AdminAuth(token, clock=clock))
    guard = admin.auth.guard
    app.middlewares.append(_api_route_not_found)
    app.router.add_get("/metrics", guard(admin.metrics))
    app.router.add_get("/api/actors", guard(admin.actors))
    app.router.add_post("/api/actors/{name}/{action}", guard(admin.command, "write"))
    app.router.add_post("/api/tasks/{task_id}/retry", guard(admin.retry_task, "write"))
    app.router.add_get("/api/events", guard(admin.events))
    app.router.add_get("/api/refunds", guard(admin.refunds))
    app.router.add_post("/api/refunds/{refund_id}/{action}", guard(admin.refund_action, "write"))
    app.router.add_get("/api/overview", guard(admin.overview, "browser"))
    app.router.add_get("/api/stream", guard(admin.stream, "browser"))
    app.router.add_get("/dashboard", guard(admin.dashboard, "page"))
    app.on_shutdown.append(admin.on_shutdown)


def admin_routes(store: EventStore, token: str | None) -> Callable[[web.Application], None] | None:
    """The hook with which the gateway's app serves the admin API and the dashboard (see
    :func:`bot_gateway.build_app`); None without a token: no admin routes."""
    if token is None:
        return None
    return lambda app: add_admin_routes(app, store, token=token)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_admin_app(
    store: EventStore, *, token: str, clock: Callable[[], float] = time.time
) -> web.Application:
    """An app serving only the admin routes, and ``GET /healthz`` (no token) answering ok."""
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    add_admin_routes(app, store, token=token, clock=clock)
    return app


@contextlib.asynccontextmanager
async def serve_admin_app(
    store: EventStore,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[str]:
    """Serve :func:`build_admin_app` on ``host:port`` (0: a free port) until the block ends;
    yields the base URL. No access log: a login's query string carries the token."""
    runner = web.AppRunner(
        build_admin_app(store, token=token, clock=clock), access_log=None, handle_signals=False
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
