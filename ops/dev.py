"""``i3lani dev``: a local worker in one command.

The stand-ins, a worker supervising the product actors and the gateway with its dashboard
(:mod:`ops.local`, as the demo runs them), in a database of its own (``i3lani_dev`` unless
``--database`` says otherwise), until SIGINT / SIGTERM; no simulated users. It prints the
dashboard's address and what to type in a second shell, where the operator commands act on
it: ``i3lani status``, ``events``, ``restart``, ``audit``.

The actors' settings come from the environment (their intervals, prices, plans), except what
the stand-ins replace: TonAPI's and the Bot API's URLs, the bot's token and the wallet, made
up for the run. The database is dropped and recreated on every run, as the stand-ins' chain
starts afresh (a wallet cursor from an earlier chain would skip the new one's transactions),
and kept after the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
from typing import Final, TextIO
from urllib.parse import urlsplit

import anyio
import msgspec

from actors.catalog import child_specs
from actors.config import Settings, load_settings
from actors.names import DEFAULT_ACTORS
from actors.ton import Address
from ops import local
from ops.demo.narration import Console
from ops.demo.scenario import ADMIN_ID
from ops.standins import BotApiStandIn, TonApiStandIn
from store import redact_dsn
from store.database import configured_database_url, with_database

__all__ = ["DEV_MARK", "dev_command", "second_shell"]

DEV_MARK: Final = "i3lani dev: dropped and recreated by every `i3lani dev` run"
"""The comment on a database ``i3lani dev`` created: the only kind it drops."""
EXIT_OK: Final = 0


def second_shell(dsn: str, database: str, *, venv: str | None) -> list[str]:
    """What to type in a second shell so that the operator commands act on ``dsn``'s database
    ``database``. Pure.

    The whole DSN when it holds no password (the embedded server's never does: it is reached
    over its Unix socket); otherwise the operator's own ``DATABASE_URL`` with ``--database``,
    since a password is never printed."""
    lines = [f"source {venv}/bin/activate"] if venv else []
    if urlsplit(dsn).password:
        lines += [
            "export DATABASE_URL=...   # the same as here",
            *(f"i3lani {c} --database {database}" for c in _COMMANDS),
        ]
    else:
        lines += [
            f"export DATABASE_URL='{with_database(dsn, database)}'",
            *(f"i3lani {c}" for c in _COMMANDS),
        ]
    return lines


_COMMANDS: Final = ("status", "events --follow", "restart PaymentMonitor", "audit")


def _settings(base: Settings, tonapi: TonApiStandIn, bot_api: BotApiStandIn) -> Settings:
    return msgspec.structs.replace(
        base,
        tonapi_url=tonapi.url,
        tonapi_key=None,
        telegram_api_url=bot_api.url,
        bot_token=bot_api.token,
        wallet=Address(0, secrets.token_bytes(32)).to_friendly(),
        admin_ids=base.admin_ids or (ADMIN_ID,),
    )


async def dev_command(server_dsn: str, args: argparse.Namespace, out: TextIO, *, node: str) -> int:
    """``i3lani dev`` as node ``node``: runs until SIGINT / SIGTERM, then stops the gateway and
    the actors gracefully; 0."""
    base = load_settings()
    embedded = configured_database_url() is None
    where = "the embedded PostgreSQL" if embedded else f"the server of {redact_dsn(server_dsn)}"
    console = Console(out, color=out.isatty() and not os.environ.get("NO_COLOR"))
    dsn = await local.prepare_database(
        server_dsn, args.database, mark=DEV_MARK, made_by="i3lani dev"
    )
    async with contextlib.AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        system = await local.start_local_system(
            stack,
            tg,
            dsn,
            bot_token=local.bot_token_for(secrets.randbits(32)),
            settings_for=lambda tonapi, bot_api: _settings(base, tonapi, bot_api),
            specs_for=lambda settings: child_specs(DEFAULT_ACTORS, settings),
            node=node,
            port=args.port,
            admin_token=os.environ.get("ADMIN_TOKEN") or None,
        )
        await local.wait_actors_started(
            system.supervisor, hint="`I3LANI_LOG_LEVEL=INFO i3lani dev`"
        )
        _header(console, system, args.database, where, server_dsn)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        console.say("i3lani dev: stopping the gateway, then the actors (each finishes its work)")
        await system.gateway.stop()
        await system.actors.stop()
    console.say(
        f"i3lani dev: stopped. Its log stays in database {args.database} until the next "
        f"`i3lani dev`: `i3lani audit --database {args.database}` reads it."
    )
    return EXIT_OK


def _header(
    console: Console, system: local.LocalSystem, database: str, where: str, server_dsn: str
) -> None:
    s = system.settings
    intervals = local.tick_intervals_text(s, seals=True)
    console.say("i3lani dev: a worker, the gateway and its dashboard, on the stand-ins", "note")
    for label, text in (
        ("database", f"{database}, created afresh for this run on {where}; kept after it"),
        ("dashboard", system.dashboard_url),
        ("webhook", f"{system.webhook_url} (secret {system.config.webhook_secret})"),
        ("TonAPI", f"stand-in at {system.tonapi.url}; the bot's wallet {s.wallet}"),
        ("Bot API", f"stand-in at {system.bot_api.url}; token {s.bot_token}"),
        ("actors", f"{', '.join(system.supervisor.names)}, ticking every: {intervals}"),
    ):
        console.say(f"  {label:<10} {text}")
    console.say()
    console.say("From a second shell:", "note")
    venv = sys.prefix if sys.prefix != sys.base_prefix else None
    for line in second_shell(server_dsn, database, venv=venv):
        console.say(f"  {line}")
    console.say()
    console.say(
        "A payment on the stand-in's chain (it confirms a payment whose memo is i3lani_<id>):",
        "note",
    )
    body = (
        f'{{"wallet": "{s.wallet}", "source": "0:{"ab" * 32}", '
        f'"value": 1000000000, "comment": "i3lani_1"}}'
    )
    console.say(f"  curl -X POST {system.tonapi.url}/_standin/transfer -d '{body}'")
    console.say()
    console.say("Ctrl-C stops it.", "note")
