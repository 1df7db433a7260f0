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
"""A Telegram user or chat id."""

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
    was written under, for a write fenced by one (an actor's).
    """

    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    caused_by: str | None = None
    node: str | None = None
    lease: str | None = None
    generation: int | None = None
