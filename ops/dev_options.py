"""``i3lani dev``'s options: parsed without importing the gateway, aiogram or the stand-ins."""

from __future__ import annotations

import argparse
from typing import Final

from ops.demo_options import database_argument, whole_number

__all__ = ["DEV_DATABASE", "DESCRIPTION", "add_arguments"]

DEV_DATABASE: Final = "i3lani_dev"

DESCRIPTION: Final = """\
A local worker in one command: the TonAPI and Bot API stand-ins (a simulated chain), a worker
supervising the product actors, and the gateway in webhook mode with the admin API and the
dashboard, all on 127.0.0.1, until Ctrl-C. It prints the dashboard's address and what to type
in a second shell, where `i3lani status`, `events`, `restart` and `audit` act on it.

It runs in its own database (--database, default i3lani_dev), dropped and created afresh on
every run (the stand-ins' chain starts afresh too) and kept after it ends; on the embedded
PostgreSQL when DATABASE_URL is unset, else on DATABASE_URL's server, never in the database
DATABASE_URL names. The actors' settings come from the environment (I3LANI_PAYMENT_INTERVAL
and the others), but for the stand-ins' URLs, the bot's token and the wallet, made up for the
run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``i3lani dev``'s options."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535, "a port"),
        default=0,
        metavar="P",
        help="the gateway's (and dashboard's) port on 127.0.0.1 (default 0: a free one)",
    )
    parser.add_argument(
        "--database",
        type=database_argument,
        default=DEV_DATABASE,
        metavar="NAME",
        help=f"its own database, dropped and recreated (default {DEV_DATABASE})",
    )
