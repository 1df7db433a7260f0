"""``i3lani seal``: the latest seal of the log, and its digest to keep outside the database.

    i3lani seal                 the latest seal: what it covers, its hash, its digest
    i3lani seal --export        the digest alone, one line (or --json): keep it somewhere the
                                database's administrators cannot rewrite

A digest is ``i3lani-seal-v1:<seal>:<position>:<events>:<sha256>``: the seal's number, the
global position of its last event, how many events are sealed up to there and the seal's hash,
which commits to every one of them (:mod:`store.sealing`). ``i3lani audit --verify-seals
--against DIGEST`` later recomputes the log from its rows and says whether it still leads
there. The Sealer sends every new digest to ``ADMIN_IDS`` by Telegram as well.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TextIO

import msgspec

from events import LogSealed
from events.errors import I3laniError
from events.streams import SEAL_LOG
from ops.format import format_time
from store import EventStore, migrate
from store.budget import COMMAND_MAX_CONNECTIONS
from store.sealing import SealDigest

__all__ = ["add_arguments", "seal_command", "ExportedDigest"]


class ExportedDigest(msgspec.Struct, kw_only=True):
    """``i3lani seal --export --json``."""

    digest: str
    seal: int
    position: int
    events: int
    hash: str
    sealed_at: datetime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--export",
        action="store_true",
        help="print only the latest seal's digest (one line), to keep outside the database",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document")


async def latest_seal(store: EventStore) -> LogSealed:
    """The newest seal; I3laniError (one line) when the log has none yet."""
    last = await store.last_event(SEAL_LOG)
    if last is None:
        raise I3laniError(
            "the log has no seal yet: the Sealer (in `i3lani run`) seals it every "
            "I3LANI_SEAL_INTERVAL seconds, the first time when it starts"
        )
    if not isinstance(last.event, LogSealed):
        raise I3laniError(f"{SEAL_LOG} v{last.version} is a {last.type}, not a seal")
    return last.event


async def seal_command(dsn: str, args: argparse.Namespace, out: TextIO) -> int:
    await migrate(dsn)
    async with EventStore.open(dsn, max_connections=COMMAND_MAX_CONNECTIONS) as store:
        seal = await latest_seal(store)
    digest = SealDigest.of(seal)
    if args.json:
        exported = ExportedDigest(
            digest=str(digest),
            seal=seal.seal,
            position=seal.last_position,
            events=seal.total,
            hash=seal.hash,
            sealed_at=seal.sealed_at,
        )
        print(msgspec.json.encode(exported).decode(), file=out)
        return 0
    if args.export:
        print(digest, file=out)
        return 0
    ago = (datetime.now(UTC) - seal.sealed_at).total_seconds()
    first = "the start of the log" if seal.after_position == 0 else f"#{seal.after_position}"
    rows = [
        ("sealed", f"{format_time(seal.sealed_at)} ({ago / 60:,.0f} min ago)"),
        ("covers", f"{seal.count:,} events after {first}, up to #{seal.last_position}"),
        ("in all", f"{seal.total:,} events sealed by seals 1 to {seal.seal}"),
        ("hash", seal.hash),
        ("previous", seal.previous_hash),
    ]
    print(f"seal {seal.seal}", file=out)
    for key, value in rows:
        print(f"  {key:<9} {value}", file=out)
    print("", file=out)
    print(
        "digest (keep it outside the database; `i3lani seal --export` prints it alone):", file=out
    )
    print(f"  {digest}", file=out)
    print(f"check the log against it: i3lani audit --verify-seals --against {digest}", file=out)
    return 0
