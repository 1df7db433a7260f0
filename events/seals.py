"""Seals: the log's own tamper evidence. Stream: ``seal-log`` (see :mod:`store.sealing`).

The Sealer appends one ``LogSealed`` per range of the log it seals, with the stream's exact
expected version, so the seal stream's version *is* the seal's number and two sealers can
never both write seal ``n``. Each seal commits to every event of its range (a SHA-256 over
their canonical bytes, in the log's reading order) and to the seal before it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.base import Event, UtcDateTime

__all__ = ["LogSealed", "Sha256Hex", "PositionRun"]

Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest as 64 lowercase hex digits."""

_Count = Annotated[int, msgspec.Meta(ge=0)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]

PositionRun = tuple[_Positive, _Positive]
"""``(first position, how many)``: that many consecutive global positions, one after the other
in the log's reading order."""


class LogSealed(Event, frozen=True, tag="LogSealed"):
    """The events after cursor ``after_*`` up to and including cursor ``last_*``, in reading
    order (transaction id, global position), sealed.

    ``hash`` is defined in :mod:`store.sealing` (it covers ``seal``, ``previous_hash``, the
    range, ``count``, ``total`` and the hash of each event's canonical bytes); ``positions``
    and ``fingerprints`` (the first 4 bytes of each event's hash, base64) only let a verifier
    name the first event where the log no longer matches.
    """

    seal: _Positive  # its number: seal n is version n of the seal stream
    after_transaction_id: _Count  # the cursor the range starts after (0, 0: the log's start)
    after_position: _Count
    last_transaction_id: _Positive  # the cursor of the range's last event
    last_position: _Positive
    count: _Positive  # events in the range
    total: _Positive  # events sealed by this seal and every one before it
    hash: Sha256Hex
    previous_hash: Sha256Hex  # the hash of seal n - 1 (64 zeros for seal 1)
    positions: list[PositionRun]
    fingerprints: str
    sealed_at: UtcDateTime
