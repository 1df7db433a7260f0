"""Building blocks shared by every event: the base Struct, metadata, and field types.

An event is a frozen msgspec Struct with an explicit tag, the name it is stored under:

    class PaymentExpired(Event, frozen=True, tag="PaymentExpired"):
        payment_id: PaymentId
        expired_at: UtcDateTime

The tag is set by hand so that renaming the class never renames stored events. A class
may declare ``schema_version: ClassVar[int] = 2`` once its stored shape changed in a way
that needs an upcaster (see :mod:`events.registry`); adding a field with a default does not.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

from events import environment

__all__ = [
    "Event",
    "EventMetadata",
    "Nanotons",
    "PositiveNanotons",
    "UtcDateTime",
    "TelegramId",
    "TELEGRAM_ID_LIMIT",
    "check_telegram_id",
    "PaymentId",
    "NonEmptyStr",
    "utcnow",
    "NANOTONS_PER_TON",
]

NANOTONS_PER_TON = 1_000_000_000

Nanotons = Annotated[int, msgspec.Meta(ge=0, description="an amount of TON in nanotons")]
"""Money: a non-negative integer number of nanotons (1 TON = 10**9). Never a float."""

PositiveNanotons = Annotated[int, msgspec.Meta(ge=1, description="a positive amount in nanotons")]

UtcDateTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""A timezone-aware timestamp; i3lani writes UTC."""

TelegramId = Annotated[int, msgspec.Meta(ge=1)]
"""A Telegram user or chat id. Stored events keep this type as it was (a tighter bound would make
old events unreadable); new ids are bounded where they enter, with :func:`check_telegram_id`."""

TELEGRAM_ID_LIMIT = 2**52
"""Telegram's ids "have at most 52 significant bits" (Bot API, ``User.id``, ``Chat.id``): every
real id, a user's or a chat's (negative), lies strictly between minus this and this."""


def check_telegram_id(value: int, *, what: str = "a Telegram user id") -> int:
    """``value`` when it is a positive id Telegram could send; ValueError, one line, if not."""
    if not 1 <= value < TELEGRAM_ID_LIMIT:
        shown = str(value) if len(str(value)) <= 24 else f"{str(value)[:20]}..."
        raise ValueError(f"{what} is a whole number from 1 to 2**52 - 1, got {shown}")
    return value


PaymentId = Annotated[int, msgspec.Meta(ge=1)]
"""A payment's number, as in its memo ``i3lani_<payment id>``."""

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return environment.now()


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of every event. Subclasses must pass ``tag="StoredName"`` explicitly.

    Events are immutable values decoded from JSON, so they never form reference cycles:
    ``gc=False`` keeps the garbage collector from tracking them (it matters in long replays).
    """

    schema_version: ClassVar[int] = 1


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who and what caused an event: stored beside the payload, never part of it.

    ``correlation_id`` ties together everything one request set off;
    ``causation_id`` is the id of the event or command that directly caused this one;
    ``caused_by`` names the actor (``actor:PaymentMonitor``) or user (``user:42``);
    ``node`` is the process that wrote it; ``lease`` and ``generation`` the lease grant it
    was written under, for a write fenced by one (an actor's); ``traceparent``, with tracing
    on, the W3C trace context of the span that wrote it, which whoever acts on the event
    continues (see :mod:`actors.runtime.tracing`).
    """

    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    caused_by: str | None = None
    node: str | None = None
    lease: str | None = None
    generation: int | None = None
    traceparent: Annotated[str, msgspec.Meta(max_length=100)] | None = None
