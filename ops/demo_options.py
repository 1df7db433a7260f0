"""``i3lani demo``'s options: parsed without importing the demo itself.

Every ``i3lani`` command builds the whole parser; the demo's module pulls in the gateway,
aiogram and the stand-ins, which the other commands never need. Its options live here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEMO_DATABASE",
    "DESCRIPTION",
    "RESERVED_DATABASES",
    "DemoOptions",
    "add_arguments",
    "check_database_name",
    "database_argument",
    "whole_number",
]

DEMO_DATABASE: Final = "i3lani_demo"
_DATABASE_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED: Final = frozenset({"postgres", "template0", "template1"})


def check_database_name(name: str) -> bool:
    """Whether ``name`` is a plain lower-case database name the demo may create and drop."""
    return _DATABASE_RE.fullmatch(name) is not None and name not in _RESERVED


RESERVED_DATABASES: Final = tuple(sorted(_RESERVED))


@dataclass(frozen=True)
class DemoOptions:
    """What ``i3lani demo`` was asked for (see :func:`add_arguments`)."""

    duration: float = 60.0
    speed: float = 1.0
    users: int = 8
    port: int = 0
    seed: int = 1
    database: str = DEMO_DATABASE


def _number(low: float, high: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected {what} between {low:g} and {high:g}, got {text}"
            )
        return value

    return parse


def whole_number(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} (a whole number), got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected {what} between {low} and {high}, got {value}"
            )
        return value

    return parse


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number, got {text!r}") from None


def database_argument(text: str) -> str:
    if not check_database_name(text):
        raise argparse.ArgumentTypeError(
            f"expected a plain lower-case database name (a-z, 0-9, _), not one of "
            f"{', '.join(RESERVED_DATABASES)}; got {text!r}"
        )
    return text


DESCRIPTION: Final = """\
The whole system on this machine, with simulated users: PostgreSQL, local TonAPI and Bot API
stand-ins (a simulated chain), the real supervisor with the five actors, and the real gateway
with its dashboard. Users start the bot, refer friends, add channels, subscribe and pay (some
too little, one late, one twice); rewards are credited; one actor is made to crash and the
supervisor restarts it. The event log is shown live; at the end the log is audited.

The demo never touches your data: it runs in its own database (--database, default
i3lani_demo), dropped and created afresh on every run, on the embedded PostgreSQL when
DATABASE_URL is unset, else on DATABASE_URL's server (whose user must be allowed to CREATE
DATABASE); never in the database DATABASE_URL names. Exit 0 when the audit is clean, 1 when
it is not."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``i3lani demo``'s options."""
    defaults = DemoOptions()
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--duration",
        type=_number(5, 86400, "seconds"),
        default=defaults.duration,
        metavar="SECONDS",
        help=f"how long the demo runs (default {defaults.duration:g}); the users need about "
        "40 s at --speed 1, then the system stays up for the dashboard",
    )
    parser.add_argument(
        "--speed",
        type=_number(0.25, 20, "a factor"),
        default=defaults.speed,
        metavar="FACTOR",
        help="how much faster the simulated world runs: the users, the actors' intervals and "
        f"the payment window (default {defaults.speed:g}; 0.25 to 20)",
    )
    parser.add_argument(
        "--users",
        type=whole_number(5, 100, "a number of users"),
        default=defaults.users,
        metavar="N",
        help=f"simulated users (default {defaults.users}; 5 to 100)",
    )
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535, "a port"),
        default=defaults.port,
        metavar="P",
        help="the gateway's (and dashboard's) port on 127.0.0.1 (default 0: a free one)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=defaults.seed,
        metavar="S",
        help=f"what the users do is reproducible from the seed (default {defaults.seed})",
    )
    parser.add_argument(
        "--database",
        type=database_argument,
        default=defaults.database,
        metavar="NAME",
        help=f"the demo's own database, dropped and recreated (default {defaults.database})",
    )
