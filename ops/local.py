"""The whole system on this machine: the stand-ins, a worker and the gateway with its dashboard.

``i3lani demo`` and ``i3lani dev`` both run it, in-process, against a database of their own
(:func:`prepare_database`: dropped and recreated on each run, and kept after it ends so that
the operator commands can look at it with ``--database``):

* TonAPI and the Bot API: the stand-ins of :mod:`ops.standins` (a simulated chain; a bot token
  made up for the run);
* a worker: the real :class:`~supervisor.Supervisor` with the child specs given;
* the real gateway in webhook mode on 127.0.0.1, with a random webhook secret, serving the
  admin API and the dashboard behind an admin token.

Each long-running part is a :class:`Service` that can be stopped on its own, so a caller winds
down in the order it chooses (the gateway first, then the actors).
"""

from __future__ import annotations

import contextlib
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
from anyio.abc import TaskGroup, TaskStatus

from actors.config import Settings
from actors.runtime import ChildSpec
from bot_gateway import GatewayConfig, run_gateway
from events.errors import ConfigError, I3laniError
from ops.admin import admin_routes
from ops.demo_options import RESERVED_DATABASES, check_database_name
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore, migrate, redact_dsn
from store.admin import DatabaseRefused, create_database, database_exists, drop_database
from store.budget import COMMAND_MAX_CONNECTIONS
from store.database import with_database
from supervisor import Supervisor

__all__ = [
    "LocalSystem",
    "Service",
    "bot_token_for",
    "prepare_database",
    "single",
    "start_local_system",
    "tick_intervals_text",
    "wait_actors_started",
]


# -- the database -------------------------------------------------------------------------------
def _database_name(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.removeprefix("/"))


async def prepare_database(server_dsn: str, name: str, *, mark: str, made_by: str) -> str:
    """Drop and create ``name`` on ``server_dsn``'s server, migrate it; its DSN.

    Only a database made the same way before (its comment is ``mark``) is ever dropped: an
    existing database without that mark is refused (ConfigError), and so are the very
    database ``server_dsn`` names and PostgreSQL's own (ValueError). ``made_by`` (``i3lani
    demo``) names the maker in those messages.
    """
    if not check_database_name(name):
        raise ValueError(
            f"--database {name!r}: give a plain lower-case name other than "
            f"{', '.join(RESERVED_DATABASES)}"
        )
    if name == _database_name(server_dsn):
        raise ValueError(
            f"--database {name!r} is the database DATABASE_URL names: {made_by} drops and "
            "recreates its database, so it never uses that one; pick another name"
        )
    exists, found = await database_exists(server_dsn, name)
    if exists and found != mark:
        raise ConfigError(
            f"database {name!r} already exists on {redact_dsn(server_dsn)} and was not "
            f"created by {made_by}: it is never dropped; give another --database name"
        )
    try:
        await drop_database(server_dsn, name)
        await create_database(server_dsn, name, comment=mark)
    except DatabaseRefused as exc:
        if not exc.permission:
            raise
        raise ConfigError(
            f"cannot create the database {name!r} on {redact_dsn(server_dsn)}: "
            f"{exc.__cause__}; give a DATABASE_URL whose user may CREATE DATABASE, or unset it "
            "to use the embedded PostgreSQL"
        ) from exc
    dsn = with_database(server_dsn, name)
    await migrate(dsn)
    return dsn


# -- the services -------------------------------------------------------------------------------
@dataclass
class Service:
    """A long-running task that can be stopped on its own: its scope and its end."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.ended.wait()

    def wrap(self, run: Callable[..., Any]) -> Callable[..., Any]:
        """``run`` (which takes ``task_status``) as this service, for ``TaskGroup.start``."""

        async def wrapped(*, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                with self.scope:
                    await run(task_status=task_status)
            finally:
                self.ended.set()

        return wrapped


def bot_token_for(seed: int) -> str:
    """A token made up for the run, shaped as @BotFather's: ``<digits>:<text>``."""
    bot_id = random.Random(seed).randrange(10**9, 10**10)
    return f"{bot_id}:local-{secrets.token_urlsafe(24)}"


@dataclass
class LocalSystem:
    """What :func:`start_local_system` started: the stand-ins, the worker, the gateway."""

    tonapi: TonApiStandIn
    bot_api: BotApiStandIn
    settings: Settings
    supervisor: Supervisor
    config: GatewayConfig
    url: str
    """The gateway's base URL (``http://127.0.0.1:PORT``)."""
    actors: Service
    gateway: Service
    watch_store: EventStore
    """A third pool on the database, for the caller's own reading."""

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/dashboard?token={self.config.admin_token}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{self.config.webhook_path}"


async def start_local_system(
    stack: contextlib.AsyncExitStack,
    tg: TaskGroup,
    dsn: str,
    *,
    bot_token: str,
    settings_for: Callable[[TonApiStandIn, BotApiStandIn], Settings],
    specs_for: Callable[[Settings], list[ChildSpec]],
    node: str,
    port: int = 0,
    admin_token: str | None = None,
    rng: random.Random | None = None,
) -> LocalSystem:
    """Start the stand-ins (entered into ``stack``), then the worker and the gateway (as
    services of ``tg``) on ``dsn``; returns once both run (the actors may still be starting:
    :meth:`Supervisor.wait_started`). ``settings_for`` makes the settings from the stand-ins,
    ``specs_for`` the worker's children from the settings. ValueError (one line) when
    ``port`` cannot be listened on."""
    tonapi = await stack.enter_async_context(TonApiStandIn())
    bot_api = await stack.enter_async_context(BotApiStandIn(bot_token))
    settings = settings_for(tonapi, bot_api)
    # Two stores, as the worker and the web service would have, and one for watching.
    worker_store = await stack.enter_async_context(EventStore.open(dsn, node=node))
    gateway_store = await stack.enter_async_context(EventStore.open(dsn, node=node))
    watch_store = await stack.enter_async_context(
        EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS)
    )
    supervisor = Supervisor(worker_store, specs_for(settings), node=node, rng=rng)
    config = GatewayConfig(
        webhook_secret=secrets.token_urlsafe(32),
        admin_token=admin_token or secrets.token_urlsafe(32),
    )
    actors, gateway = Service(), Service()
    await tg.start(actors.wrap(supervisor.run))
    url = await _start_gateway(tg, gateway, settings, gateway_store, config, port)
    return LocalSystem(
        tonapi=tonapi,
        bot_api=bot_api,
        settings=settings,
        supervisor=supervisor,
        config=config,
        url=url,
        actors=actors,
        gateway=gateway,
        watch_store=watch_store,
    )


def tick_intervals_text(settings: Settings, *, seals: bool = False) -> str:
    """``payments 30 s, rewards 300 s, ...``: how often each actor ticks, for a header."""
    intervals = [
        ("payments", settings.payment_interval),
        ("rewards", settings.reward_interval),
        ("channels", settings.analytics_interval),
        ("cleanup", settings.cleanup_interval),
        ("health", settings.health_interval),
    ]
    if seals:
        intervals.append(("seals", settings.seal_interval))
    return ", ".join(f"{name} {seconds:g} s" for name, seconds in intervals)


async def wait_actors_started(supervisor: Supervisor, *, hint: str, limit: float = 60.0) -> None:
    """Wait until every child of ``supervisor`` runs here; I3laniError (one line, naming the
    ones missing and ``hint``, the command that shows why) after ``limit`` seconds."""
    try:
        with anyio.fail_after(limit):
            for name in supervisor.names:
                await supervisor.wait_started(name)
    except TimeoutError:
        missing = [n for n in supervisor.names if n not in supervisor.running_here()]
        raise I3laniError(
            f"{', '.join(missing)} did not start within {limit:g} s; {hint} shows why"
        ) from None


def single(exc: BaseException) -> BaseException:
    """The one exception inside task-group wrappers, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _start_gateway(
    tg: TaskGroup,
    service: Service,
    settings: Settings,
    store: EventStore,
    config: GatewayConfig,
    port: int,
) -> str:
    """Start the gateway in webhook mode on 127.0.0.1; its URL."""

    async def serve(*, task_status: TaskStatus[str | None]) -> None:
        await run_gateway(
            settings,
            store,
            mode="webhook",
            host="127.0.0.1",
            port=port,
            config=config,
            add_routes=admin_routes(store, config.admin_token),
            task_status=task_status,
        )

    try:
        url = await tg.start(service.wrap(serve))
    except (OSError, BaseExceptionGroup) as exc:
        cause = single(exc)
        if not isinstance(cause, OSError):
            raise
        raise ValueError(
            f"--port {port}: cannot listen on 127.0.0.1 ({cause.strerror or cause}); "
            "give another port, or 0 for a free one"
        ) from None
    if not isinstance(url, str):
        raise TypeError("the gateway in webhook mode starts with its URL")
    return url
