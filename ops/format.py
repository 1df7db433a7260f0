"""How events and summaries look to a person: one readable line per event, TON amounts as TON."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from events import NANOTONS_PER_TON
from store import RecordedEvent

__all__ = ["format_ton", "format_bytes", "format_time", "event_line", "event_json"]


def format_ton(nanotons: int) -> str:
    """``5_440_000_000`` -> ``'5.44 TON'``; exact, never through a float."""
    value = (Decimal(nanotons) / NANOTONS_PER_TON).normalize()
    text = format(value, "f")
    return f"{text} TON"


def format_bytes(size: float) -> str:
    """A size for people: ``812 bytes``, ``48.0 kB``, ``2.1 MB``, ``1.30 GB`` (powers of 1024)."""
    if size < 1024:
        return f"{size:,.0f} bytes"
    for unit, scale in (("kB", 1024), ("MB", 1024**2)):
        if size < 1024 * scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1024**3:.2f} GB"


def format_time(moment: datetime) -> str:
    """UTC, to the second, with a Z: ``2026-11-29 10:15:55Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith("_nanotons"):
        return format_ton(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return value if value and " " not in value and "=" not in value else repr(value)
    if isinstance(value, msgspec.Struct | list | dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def event_line(recorded: RecordedEvent) -> str:
    """``#12  2026-11-29 10:15:55Z  payment-42 v2  PaymentExpired  payment_id=42 ...``"""
    fields = msgspec.structs.asdict(recorded.event)
    body = " ".join(
        f"{name.removesuffix('_nanotons')}={_value(name, value)}"
        for name, value in fields.items()
        if value is not None
    )
    who = f"  [{recorded.metadata.caused_by}]" if recorded.metadata.caused_by else ""
    return (
        f"#{recorded.position:<7} {format_time(recorded.recorded_at)}  "
        f"{recorded.stream} v{recorded.version}  {recorded.type}  {body}{who}"
    )


def event_json(recorded: RecordedEvent) -> bytes:
    """The whole envelope as one JSON object (for ``--json``: one object per line)."""
    return msgspec.json.encode(
        {
            "position": recorded.position,
            "transaction_id": recorded.transaction_id,
            "event_id": recorded.event_id,
            "stream": recorded.stream,
            "version": recorded.version,
            "type": recorded.type,
            "schema_version": recorded.schema_version,
            "payload": recorded.event,
            "metadata": recorded.metadata,
            "recorded_at": recorded.recorded_at,
        }
    )
