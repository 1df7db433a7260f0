"""``i3lani reconcile``: the wallet's transfers as TonAPI lists them, against the log.

    i3lani reconcile [--since TIME|AGE] [--wallet ADDRESS] [--format table|json]

For the range of ``lt`` the PaymentMonitor has scanned since it records transfers (or, with
``--since``, what it scanned after that moment: an ISO time with a zone, or an age such as
``24h``, ``7d``, ``90m``), every transaction TonAPI lists for the wallet is compared with the
transfers recorded for it (:mod:`actors.transfers`): a transfer on chain missing from the log,
a record the chain does not have, or one whose amount, ``lt`` or category the chain rules out
is a discrepancy naming its transaction hash. Read-only: nothing is recorded (Cleanup's daily
pass records its own reconciliation and alerts the admins). Exit 0 when clean, 1 with
discrepancies (or when TonAPI cannot be read), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta
from typing import Final, TextIO

import msgspec

from actors.clients import tonapi_client
from actors.config import load_settings
from actors.ton import Address
from actors.transfers import Reconciliation, reconcile_wallet
from events import environment
from ops.format import format_ton
from store import EventStore, migrate
from store.budget import COMMAND_MAX_CONNECTIONS

__all__ = ["add_arguments", "parse_since", "render_table", "reconcile_command"]

_AGE: Final = re.compile(r"(\d{1,6})([mhd])")
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        metavar="TIME|AGE",
        help="only what was scanned after TIME (ISO, with a zone) or AGE ago (24h, 7d, 90m)",
    )
    parser.add_argument("--wallet", metavar="ADDRESS", help="the wallet (default: $WALLET_ADDRESS)")
    parser.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format"
    )


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO time with a zone, or an age (``24h``) before ``now``; ValueError
    (one line) otherwise. Pure."""
    cleaned = text.strip()
    age = _AGE.fullmatch(cleaned)
    if age is not None:
        return now - timedelta(**{_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"--since takes an ISO time with a zone (2026-11-29T10:00:00Z) or an age such as "
            f"24h, 7d or 90m, got {cleaned[:60]!r}"
        ) from None
    if moment.utcoffset() is None:
        raise ValueError(f"--since time {cleaned!r} has no timezone: add Z or an offset")
    return moment


def render_table(result: Reconciliation) -> str:
    lines = [
        f"reconciliation of wallet {result.wallet}, lt {result.from_lt} (excluded) to "
        f"{result.to_lt}: TonAPI lists {result.chain_transactions} transactions, "
        f"{result.chain_transfers} of them moving TON; the log records {result.recorded}",
        "",
        f"  {'CATEGORY':<16} {'IN THE LOG':>10} {'AMOUNT':>18} {'ON CHAIN':>9}",
    ]
    for line in result.categories:
        lines.append(
            f"  {line.category:<16} {line.recorded:>10} "
            f"{format_ton(line.recorded_nanotons):>18} {line.on_chain:>9}"
        )
    if not result.categories:
        lines.append("  (no transfer in this range)")
    lines.append("")
    if result.clean:
        lines.append(
            "clean: every transfer TonAPI lists is recorded once, in a category the chain "
            "allows, and the log records nothing else"
        )
    else:
        count = len(result.discrepancies)
        lines.append(f"{count} discrepanc{'y' if count == 1 else 'ies'}:")
        lines += [
            f"  {d.kind:<16} tx {d.tx_hash}  lt {d.lt}: {d.detail}" for d in result.discrepancies
        ]
    return "\n".join(lines) + "\n"


async def reconcile_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``i3lani reconcile``: 0 clean, 1 with discrepancies (ValueError: a usage error)."""
    settings = load_settings()
    since = parse_since(args.since, environment.now()) if args.since is not None else None
    if args.wallet is not None:
        wallet = Address.parse(args.wallet)
    elif settings.wallet:
        wallet = settings.wallet_address()
    else:
        raise ValueError("no wallet to reconcile: set WALLET_ADDRESS or give --wallet ADDRESS")
    await migrate(dsn)
    async with (
        EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store,
        tonapi_client(settings, store) as client,
    ):
        result = await reconcile_wallet(store, client, wallet, since=since)
    if result is None:
        message = (
            f"nothing to reconcile for {wallet.to_raw()}: no scan of it recorded its transfers"
            + (" after that time" if since is not None else "")
        )
        if args.format == "json":
            out.write(msgspec.json.encode({"clean": True, "note": message}).decode() + "\n")
        else:
            print(message, file=out)
        return 0
    if args.format == "json":
        document = {"clean": result.clean, **msgspec.structs.asdict(result)}
        out.write(msgspec.json.encode(document).decode() + "\n")
    else:
        out.write(render_table(result))
    return 0 if result.clean else 1
