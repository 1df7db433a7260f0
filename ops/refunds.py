"""``i3lani refunds``: the money owed back, and the operator's two actions on it.

    i3lani refunds [--all] [--format table|json]        the open refunds (due, or sent and
                                                        awaiting the chain); --all: every one
    i3lani refunds mark-refunded ID TX_HASH [--note T]  the refund went out in the wallet's
                                                        transaction TX_HASH
    i3lani refunds decline ID --reason TEXT             it will not be sent back, and why

``ID`` is the refund's id (the hash of the transfer that left money owing) or its first 8 or
more hex digits, as the list shows them. The worker never sends TON: send the refund from the
wallet first, then mark it; the next wallet scans confirm it on chain. Each action is recorded
with who asked (``cli:<user>@<host>``). Bad input (an unknown id, a malformed hash, a refund
already marked or declined) is one line on stderr, exit 1 or 2, and nothing is recorded.
"""

from __future__ import annotations

import argparse
import getpass
import socket
from collections.abc import Sequence
from typing import TextIO

import msgspec

from actors.refunds import (
    Refund,
    RefundStatus,
    decline,
    list_refunds,
    mark_refunded,
    owed_for,
    totals,
)
from ops.format import format_time, format_ton
from store import EventStore, migrate
from store.budget import COMMAND_MAX_CONNECTIONS

__all__ = ["add_arguments", "refunds_command", "render_table", "detail"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all", action="store_true", help="every refund, settled ones too (default: open ones)"
    )
    parser.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format"
    )
    actions = parser.add_subparsers(dest="refund_action", metavar="ACTION")
    mark = actions.add_parser(
        "mark-refunded",
        help="the refund was sent from the wallet in transaction TX_HASH (the scans confirm it)",
    )
    mark.add_argument("refund_id", metavar="ID", help="the refund's id, or its first 8+ digits")
    mark.add_argument("tx_hash", metavar="TX_HASH", help="the wallet's outgoing transaction")
    mark.add_argument("--note", default="", help="recorded with the mark (200 characters)")
    refuse = actions.add_parser("decline", help="the refund will not be sent back")
    refuse.add_argument("refund_id", metavar="ID", help="the refund's id, or its first 8+ digits")
    refuse.add_argument("--reason", required=True, help="why (recorded, 200 characters)")


def detail(refund: Refund) -> str:
    """What became of a refund, or what to do with it, in a few words."""
    match refund.status:
        case RefundStatus.SENT:
            return (
                f"marked refunded by {refund.marked_by} with tx {refund.tx_hash}: waiting for "
                "the wallet scans to confirm it"
            )
        case RefundStatus.REFUNDED:
            sent = format_ton(refund.refunded_nanotons or 0)
            return f"refunded: {sent} sent in tx {refund.tx_hash}, confirmed on chain"
        case RefundStatus.DECLINED:
            return f"declined by {refund.declined_by}: {refund.reason}"
    todo = "send it from the wallet, then mark it refunded"
    if refund.problem:
        return f"the last mark was not confirmed ({refund.problem}); {todo}"
    return todo


def render_table(refunds: Sequence[Refund], *, everything: bool) -> str:
    """The refunds as a person reads them: two lines each (what, then to whom and its fate),
    and the totals of every refund."""
    shown = [r for r in refunds if everything or r.open]
    lines = []
    if not shown:
        lines.append(
            "no refunds" if everything else "no refund is due (`--all` shows settled ones too)"
        )
    else:
        lines.append(f"{'REFUND':<12}  {'STATUS':<8}  {'AMOUNT':>14}  {'OWED FOR':<46}  DUE SINCE")
        for r in shown:
            lines.append(
                f"{r.refund_id[:12]}  {r.status:<8}  {format_ton(r.amount_nanotons):>14}  "
                f"{owed_for(r.category, r.payment_id):<46}  {format_time(r.due_at)}"
            )
            lines.append(f"{'':<12}  to {r.to}; {detail(r)}")
    t = totals(refunds)
    lines.append("")
    lines.append(
        f"due {t.due} ({format_ton(t.due_nanotons)}), awaiting the chain {t.sent} "
        f"({format_ton(t.sent_nanotons)}), refunded {t.refunded} "
        f"({format_ton(t.refunded_nanotons)} sent), declined {t.declined} "
        f"({format_ton(t.declined_nanotons)})"
    )
    return "\n".join(lines) + "\n"


def _who() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


async def refunds_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    """``i3lani refunds``: list, or mark one refunded, or decline one. 0 when done."""
    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        action = getattr(args, "refund_action", None)
        if action is None:
            refunds = await list_refunds(store)
            if args.format == "json":
                shown = [r for r in refunds if args.all or r.open]
                document = {"refunds": shown, "totals": totals(refunds)}
                out.write(msgspec.json.encode(document).decode() + "\n")
            else:
                out.write(render_table(refunds, everything=args.all))
            return 0
        if action == "mark-refunded":
            refund = await mark_refunded(
                store, args.refund_id, args.tx_hash, requested_by=_who(), note=args.note
            )
            said = (
                f"refund {refund.refund_id[:12]} ({format_ton(refund.amount_nanotons)} to "
                f"{refund.to}) marked refunded with tx {refund.tx_hash}; the next wallet scans "
                "confirm it on chain (`i3lani refunds --all` shows it)"
            )
        else:
            refund = await decline(store, args.refund_id, args.reason, requested_by=_who())
            said = (
                f"refund {refund.refund_id[:12]} ({format_ton(refund.amount_nanotons)} to "
                f"{refund.to}) declined: {refund.reason}"
            )
    if args.format == "json":
        out.write(msgspec.json.encode(refund).decode() + "\n")
    else:
        print(said, file=out)
    return 0
