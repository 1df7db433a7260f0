"""The Telegram side of the gateway: aiogram routing, the webhook app, polling, and the runner.

Handlers are thin: each takes the sender and the command's arguments and replies with what
:class:`~bot_gateway.service.Gateway` returns. Routing, in order:

1. a message longer than ``GatewayConfig.max_text_length`` is refused (nothing is parsed);
2. ``/start [ref_<id>]``, ``/subscribe``, ``/balance``, ``/addchannel``, ``/help``;
3. admin commands ``/actors``, ``/restart``, ``/health`` (others get a polite refusal);
4. any other ``/command`` is unknown; other text or media get a pointer to ``/help``.

An exception in a handler (the database unreachable...) is logged and answered with a
"try again" line, so Telegram gets its 200 and does not redeliver the update forever.

Webhook mode (:func:`build_app`, :func:`run_webhook`) serves the updates on aiohttp with a
handler of its own on aiogram's public API (``Dispatcher.feed_webhook_update``; no private
method of aiogram's is used or overridden) and checks ``X-Telegram-Bot-Api-Secret-Token``: a
wrong or missing secret gets 401 and the update is not processed. A body that is not a
Telegram Update (not JSON, JSON nested too deep to parse, JSON of another shape, an id
outside Telegram's 52 bits, a username Telegram would not send) gets 400 with one line, and
nothing is processed; it is logged without its content. Polling mode is :func:`run_polling`.
:func:`run_gateway` runs either one plus the payment notifier until cancelled.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import anyio
from aiogram import Bot, Dispatcher, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.methods import TelegramMethod
from aiogram.types import ErrorEvent, Message, TelegramObject, Update
from aiogram.webhook.aiohttp_server import setup_application
from aiohttp import web
from anyio.abc import TaskStatus

from actors.clients import telegram_bot
from actors.config import Settings
from actors.runtime import tracing
from actors.telegram import TelegramClient
from bot_gateway.config import GatewayConfig, check_webhook_secret, load_gateway_config
from bot_gateway.notifier import run_notifier
from bot_gateway.service import Gateway, TelegramUser
from events.base import TELEGRAM_ID_LIMIT
from store import EventStore

__all__ = [
    "Mode",
    "AddRoutes",
    "HEALTH_PATH",
    "build_router",
    "build_dispatcher",
    "build_app",
    "run_webhook",
    "run_polling",
    "run_gateway",
]

logger = logging.getLogger(__name__)

Mode = Literal["webhook", "polling"]

AddRoutes = Callable[[web.Application], None]
"""A hook that mounts more routes on the gateway's app (the admin API, from ``ops``)."""
HEALTH_PATH: Final = "/healthz"

_NOT_TEXT: Final = "I only understand text commands. See /help."
_SORRY: Final = "Sorry, something went wrong on our side. Please try again in a minute."

_Reply = Callable[[Message, CommandObject], Awaitable[str]]


def _sender(message: Message) -> TelegramUser | None:
    user = message.from_user
    if user is None or user.is_bot or not 1 <= user.id < TELEGRAM_ID_LIMIT:
        return None  # the webhook refuses such ids; polling gets only Telegram's own
    return TelegramUser(user.id, user.username)


def build_router(gateway: Gateway) -> Router:
    """Every handler of the bot, bound to ``gateway``."""
    router = Router(name="i3lani-gateway")
    limit = gateway.config.max_text_length

    def too_long(message: Message) -> bool:
        return message.text is not None and len(message.text) > limit

    async def refuse_long(message: Message) -> None:
        text = message.text or ""
        await message.answer(
            f"That message is too long ({len(text)} characters; at most {limit}). "
            "Commands are short, for example /subscribe week. See /help."
        )

    def replying(reply: _Reply, *, admin: bool = False) -> Callable[..., Awaitable[None]]:
        # aiogram passes the parsed command by the parameter's name: `command`.
        async def handle(message: Message, command: CommandObject) -> None:
            user = _sender(message)
            if user is None:
                return
            if admin:
                refusal = gateway.refuse_admin(user.user_id)
                if refusal is not None:
                    await message.answer(refusal)
                    return
            await message.answer(await reply(message, command))

        return handle

    def uid(message: Message) -> int:
        user = _sender(message)
        assert user is not None  # checked by `replying` before any reply runs
        return user.user_id

    async def start(message: Message, cmd: CommandObject) -> str:
        user = _sender(message)
        assert user is not None
        return await gateway.start(user, cmd.args)

    def request(message: Message) -> str:
        # Telegram delivers an update again when our answer did not reach it; the chat and
        # message id name the request, so a redelivery is answered without acting twice.
        return f"{message.chat.id}/{message.message_id}"

    async def subscribe(message: Message, cmd: CommandObject) -> str:
        return await gateway.subscribe(uid(message), cmd.args, request=request(message))

    async def balance(message: Message, cmd: CommandObject) -> str:
        return await gateway.balance(uid(message))

    async def add_channel(message: Message, cmd: CommandObject) -> str:
        return await gateway.add_channel(uid(message), cmd.args)

    async def help_(message: Message, cmd: CommandObject) -> str:
        return gateway.help(uid(message))

    async def actors(message: Message, cmd: CommandObject) -> str:
        return await gateway.actors()

    async def restart(message: Message, cmd: CommandObject) -> str:
        return await gateway.restart(uid(message), cmd.args, request=request(message))

    async def health(message: Message, cmd: CommandObject) -> str:
        return await gateway.health()

    def is_command(message: Message) -> bool:
        return message.text is not None and message.text.startswith("/")

    async def unknown_command(message: Message) -> None:
        name = (message.text or "/").split()[0].split("@")[0]
        await message.answer(f"Unknown command {name[:40]}. See /help for what I can do.")

    def is_text(message: Message) -> bool:
        return message.text is not None

    async def plain_text(message: Message) -> None:
        await message.answer("I answer commands only, for example /balance. See /help.")

    async def not_text(message: Message) -> None:
        await message.answer(_NOT_TEXT)

    async def on_error(event: ErrorEvent) -> None:
        logger.error(
            "update %s failed: %s: %s",
            event.update.update_id,
            type(event.exception).__name__,
            event.exception,
            extra={"action": "gateway_update_failed"},
        )
        message = event.update.message
        if message is not None:
            try:
                await message.answer(_SORRY)
            except Exception as exc:  # the reply is best effort; the error is logged above
                logger.warning(
                    "could not tell chat %s about the failure: %s",
                    message.chat.id,
                    type(exc).__name__,
                    extra={"action": "gateway_error_reply_failed"},
                )

    router.message.register(refuse_long, too_long)
    router.message.register(replying(start), CommandStart())
    router.message.register(replying(subscribe), Command("subscribe"))
    router.message.register(replying(balance), Command("balance"))
    router.message.register(replying(add_channel), Command("addchannel"))
    router.message.register(replying(help_), Command("help"))
    router.message.register(replying(actors, admin=True), Command("actors"))
    router.message.register(replying(restart, admin=True), Command("restart"))
    router.message.register(replying(health, admin=True), Command("health"))
    router.message.register(unknown_command, is_command)
    router.message.register(plain_text, is_text)
    router.message.register(not_text)
    router.errors.register(on_error)
    return router


def build_dispatcher(gateway: Gateway) -> Dispatcher:
    dispatcher = Dispatcher()
    dispatcher.update.outer_middleware(_traced)
    dispatcher.include_router(build_router(gateway))
    return dispatcher


async def _traced(
    handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
    update: TelegramObject,
    data: dict[str, Any],
) -> Any:
    """Each update handled in a trace of its own (when tracing is on): the events it appends
    carry the trace on (see :mod:`actors.runtime.tracing`)."""
    attributes: dict[str, str | int] = {}
    if isinstance(update, Update):
        attributes = {"telegram.update_id": update.update_id, "telegram.type": update.event_type}
    with tracing.span("telegram update", root=True, attributes=attributes):
        return await handler(update, data)


_SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"


class _WebhookHandler:
    """``POST`` of Telegram's updates, on aiogram's public API only.

    aiogram's own ``SimpleRequestHandler`` is not used: its secret check and its parsing of the
    body sit in methods that raise on bad input (a 500 with a traceback in the log, for a
    request that can never succeed), and changing that meant overriding a private method that
    any aiogram release may reshape. So this handler does the three steps itself, each on a
    public, documented interface:

    * the secret, compared as bytes with :func:`secrets.compare_digest` (``str`` comparison
      raises TypeError for non-ASCII characters): wrong or missing, 401 and nothing else;
    * the body, parsed as JSON and validated as an ``Update`` (pydantic's ``model_validate``,
      as aiogram does): not JSON, bad UTF-8, JSON nested deeper than the parser recurses
      (``RecursionError``), JSON of another shape, an ``id`` no Telegram user or chat can
      have (:data:`~events.base.TELEGRAM_ID_LIMIT`), or a ``username`` Telegram would not
      send, 400 with one line;
    * ``Dispatcher.feed_webhook_update``: the update is handled before the answer, in arrival
      order. A handler that returns a Bot API method instead of calling it has the method
      called (``Dispatcher.silent_call_request``, as aiogram does for updates it handles in
      the background); the answer is ``{}`` either way.
    """

    def __init__(self, dispatcher: Dispatcher, bot: Bot, *, secret: str) -> None:
        self.dispatcher = dispatcher
        self.bot = bot
        self.secret = secret.encode()

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(_SECRET_HEADER, "").encode("utf-8", "surrogatepass")
        if not secrets.compare_digest(given, self.secret):
            return web.Response(status=401, text="Unauthorized")
        try:
            body = await request.json(loads=self.bot.session.json_loads)
            update = Update.model_validate(body, context={"bot": self.bot})
        except (ValueError, RecursionError) as exc:
            # ValueError: bad UTF-8, bad JSON, or pydantic's ValidationError; RecursionError:
            # JSON nested deeper than the parser goes.
            return _not_an_update(type(exc).__name__)
        impossible = _impossible(body)
        if impossible is not None:
            return _not_an_update(impossible)
        result: TelegramMethod[Any] | None = await self.dispatcher.feed_webhook_update(
            self.bot, update
        )
        if result is not None:
            await self.dispatcher.silent_call_request(self.bot, result)
        return web.json_response({})


def _not_an_update(why: str) -> web.Response:
    logger.warning(
        "webhook body refused: not a Telegram Update (%s)",
        why,
        extra={"action": "gateway_bad_update"},
    )
    return web.Response(status=400, text="Bad Request: the body is not a Telegram Update")


_USERNAME: Final = re.compile(r"[A-Za-z0-9_]{1,64}")


def _impossible(body: Any) -> str | None:
    """What in ``body`` Telegram never sends, or None: an ``"id"`` (a user's, a chat's...)
    that is an integer of 2**52 or more, either sign; a ``"username"`` that is not letters,
    digits and underscores (a NUL in one, stored, would fail the append). Walked without
    recursion: the parser bounded the depth, but a walk of our own needs no stack either."""
    pending: list[Any] = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found = value.get("id")
            if isinstance(found, int) and not -TELEGRAM_ID_LIMIT < found < TELEGRAM_ID_LIMIT:
                return "an id outside Telegram's 52 bits"
            username = value.get("username")
            if isinstance(username, str) and not _USERNAME.fullmatch(username):
                return "a username Telegram would not send"
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return None


WEBHOOK_SET: Final = web.AppKey("webhook_set", anyio.Event)
"""Set once ``setWebhook`` has been answered (:func:`run_webhook`); an app built without it
(polling, tests) has nothing to register and is ready as soon as it listens."""


async def _healthz(request: web.Request) -> web.Response:
    registered = request.app.get(WEBHOOK_SET)
    if registered is not None and not registered.is_set():
        # Render switches traffic to an instance once this answers 200: not before Telegram
        # has been told where to deliver updates.
        return web.Response(status=503, text="starting: the webhook is not registered yet")
    return web.Response(text="ok")


def build_app(
    gateway: Gateway,
    bot: Bot,
    *,
    secret: str,
    path: str = "/telegram/webhook",
    dispatcher: Dispatcher | None = None,
    add_routes: AddRoutes | None = None,
) -> web.Application:
    """The aiohttp app: ``POST path`` takes Telegram's updates (secret checked), ``GET
    /healthz`` answers ``ok``. Updates are handled before the answer, in arrival order.

    ``add_routes`` mounts more routes on the same app: the composition root (``i3lani
    gateway``, the demo) passes the admin API and the dashboard this way, so the gateway never
    imports what sits above it."""
    secret = check_webhook_secret(secret)
    dispatcher = dispatcher or build_dispatcher(gateway)
    app = web.Application()
    app.router.add_post(path, _WebhookHandler(dispatcher, bot, secret=secret).handle)
    app.router.add_get(HEALTH_PATH, _healthz)
    if add_routes is not None:
        add_routes(app)
    setup_application(app, dispatcher, bot=bot)
    return app


async def run_webhook(
    gateway: Gateway,
    bot: Bot,
    *,
    host: str,
    port: int,
    secret: str,
    path: str = "/telegram/webhook",
    public_url: str | None = None,
    add_routes: AddRoutes | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the webhook on ``host:port`` until cancelled; started with the listening URL.

    With ``public_url`` (``https://...``), ``setWebhook`` points Telegram at
    ``public_url + path`` with the secret once the server listens; the health check answers
    503 until Telegram has answered it. ``add_routes``: as for :func:`build_app`.
    """
    dispatcher = build_dispatcher(gateway)
    app = build_app(
        gateway, bot, secret=secret, path=path, dispatcher=dispatcher, add_routes=add_routes
    )
    if public_url:
        app[WEBHOOK_SET] = anyio.Event()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if public_url:
            await bot.set_webhook(
                f"{public_url.rstrip('/')}{path}",
                secret_token=secret,
                allowed_updates=dispatcher.resolve_used_update_types(),
            )
            app[WEBHOOK_SET].set()
        logger.info(
            "gateway webhook listening on %s:%s%s",
            bound_host,
            bound_port,
            path,
            extra={"action": "gateway_webhook_started"},
        )
        task_status.started(f"http://{bound_host}:{bound_port}")
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


async def run_polling(
    gateway: Gateway,
    bot: Bot,
    *,
    polling_timeout: int = 10,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Long-poll ``getUpdates`` until cancelled (removes any webhook first).

    aiogram's polling loop is stopped through its own stop signal, never by cancelling it
    mid-request, so it finishes its in-flight updates and leaves no task behind.
    """
    dispatcher = build_dispatcher(gateway)
    await bot.delete_webhook(drop_pending_updates=False)
    polling_started = anyio.Event()

    async def on_startup() -> None:
        polling_started.set()

    dispatcher.startup.register(on_startup)

    async def poll() -> None:
        with anyio.CancelScope(shield=True):  # stopped by stop_polling below, not cancelled
            await dispatcher.start_polling(
                bot,
                polling_timeout=polling_timeout,
                handle_signals=False,
                close_bot_session=False,
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        try:
            await polling_started.wait()
            logger.info("gateway polling", extra={"action": "gateway_polling_started"})
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await polling_started.wait()
                await dispatcher.stop_polling()


async def run_gateway(
    settings: Settings,
    store: EventStore,
    *,
    mode: Mode,
    host: str = "0.0.0.0",
    port: int = 8080,
    config: GatewayConfig | None = None,
    bot: Bot | None = None,
    add_routes: AddRoutes | None = None,
    task_status: TaskStatus[str | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot gateway until cancelled: updates (webhook or polling) and payment notices.

    ``config`` defaults to :func:`~bot_gateway.config.load_gateway_config` (the environment);
    ``bot`` to one made from ``settings`` (``BOT_TOKEN``, ``TELEGRAM_API_URL``), closed on
    exit. Raises :class:`~events.errors.ConfigError` before serving anything when webhook mode
    lacks a valid ``WEBHOOK_SECRET`` or the bot token is missing. Started (``tg.start``) once
    the notifier follows the log and updates are served, with the webhook server's URL
    (``http://host:port``; useful with ``port=0``) or ``None`` in polling mode.
    ``add_routes`` mounts more routes on the webhook server (the admin API: see
    :func:`build_app`).
    """
    config = config or load_gateway_config()
    if mode == "webhook":
        secret = check_webhook_secret(config.webhook_secret)
    elif mode != "polling":
        raise ValueError(f"mode must be 'webhook' or 'polling', got {mode!r}")
    own_bot = bot is None
    if bot is None:
        bot = telegram_bot(settings, store)
    gateway = Gateway(store, settings, config)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(run_notifier, store, TelegramClient(bot))
            url: str | None = None
            if mode == "webhook":
                url = await tg.start(
                    lambda task_status: run_webhook(
                        gateway,
                        bot,
                        host=host,
                        port=port,
                        secret=secret,
                        path=config.webhook_path,
                        public_url=config.webhook_url,
                        add_routes=add_routes,
                        task_status=task_status,
                    )
                )
            else:
                await tg.start(
                    lambda task_status: run_polling(gateway, bot, task_status=task_status)
                )
            task_status.started(url)
    finally:
        if own_bot:
            with anyio.CancelScope(shield=True):
                await bot.session.close()
