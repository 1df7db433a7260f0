"""``python -m ops.standins``: both stand-ins in a process of their own, until SIGTERM or
Ctrl-C, their URLs printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence

import anyio

from ops.standins.telegram import DEFAULT_BOT_TOKEN, BotApiStandIn
from ops.standins.tonapi import TonApiStandIn

# -- running them as a process ------------------------------------------------------------------


async def serve_standins(
    *,
    host: str = "127.0.0.1",
    tonapi_port: int = 0,
    bot_api_port: int = 0,
    token: str = DEFAULT_BOT_TOKEN,
    on_ready: Callable[[TonApiStandIn, BotApiStandIn], None] | None = None,
) -> None:
    """Run both stand-ins until cancelled; ``on_ready`` is called once both listen."""
    async with (
        TonApiStandIn(host=host, port=tonapi_port) as tonapi,
        BotApiStandIn(token, host=host, port=bot_api_port) as bot_api,
    ):
        if on_ready is not None:
            on_ready(tonapi, bot_api)
        await anyio.sleep_forever()


def _announce(tonapi: TonApiStandIn, bot_api: BotApiStandIn) -> None:
    print(json.dumps({"tonapi_url": tonapi.url, "bot_api_url": bot_api.url}), flush=True)


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await serve_standins(
            host=args.host,
            tonapi_port=args.tonapi_port,
            bot_api_port=args.bot_api_port,
            token=args.token,
            on_ready=_announce,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ops.standins``: both stand-ins until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.standins",
        description="Run local TonAPI and Telegram Bot API stand-ins; print their URLs as JSON.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tonapi-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--bot-api-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--token", default=DEFAULT_BOT_TOKEN, help="the bot token to accept")
    args = parser.parse_args(argv)
    try:
        anyio.run(_serve_until_signalled, args, backend="asyncio")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen: {exc}; choose other ports", file=sys.stderr)
        return 1
    return 0
