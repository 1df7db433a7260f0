"""What users type, parsed; what the bot answers, worded. Pure: no I/O, no clock.

Each parser returns the parsed value or a :class:`Refusal` whose ``text`` is the one-line reply
(what was wrong and what to do), so a handler never appends anything for bad input.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

import msgspec

from actors.config import Plan, Settings
from actors.ton import format_ton
from events.registry import unstorable_text

__all__ = [
    "Refusal",
    "parse_referral",
    "parse_channel",
    "parse_plan",
    "parse_actor",
    "HELP_TEXT",
    "ADMIN_HELP_TEXT",
    "ago",
]

_REFERRAL_RE: Final = re.compile(r"ref_([1-9][0-9]{0,18})", re.ASCII)
_CHANNEL_RE: Final = re.compile(r"@([A-Za-z][A-Za-z0-9_]{3,31})", re.ASCII)
_LINK_RE: Final = re.compile(r"(?:https?://)?t\.me/([A-Za-z][A-Za-z0-9_]{3,31})/?", re.ASCII)


class Refusal(msgspec.Struct, frozen=True):
    """Input the bot will not act on; ``text`` is the reply."""

    text: str


def parse_referral(payload: str | None) -> int | Refusal | None:
    """The referrer's id from a ``/start`` payload ``ref_<id>``; ``None`` for a plain start."""
    if payload is None or not payload.strip():
        return None
    match = _REFERRAL_RE.fullmatch(payload.strip())
    if match is None:
        return Refusal(
            "That start link is not one I know (referral links look like "
            "https://t.me/<bot>?start=ref_123)."
        )
    return int(match[1])


def parse_channel(args: str | None) -> str | Refusal:
    """``@name`` from ``/addchannel @name`` (or a ``t.me/name`` link)."""
    usage = (
        "Give the channel's public username, for example /addchannel @my_channel "
        "(5-32 letters, digits or _, starting with a letter)."
    )
    if args is None or not args.strip():
        return Refusal(usage)
    text = args.strip()
    match = _CHANNEL_RE.fullmatch(text) or _LINK_RE.fullmatch(text)
    if match is None:
        return Refusal(f"{_quoted(text)} is not a channel username. {usage}")
    return f"@{match[1]}"


def parse_plan(args: str | None, settings: Settings) -> Plan | Refusal:
    """The plan named by ``/subscribe <plan>`` (case-insensitive)."""
    choices = ", ".join(
        f"{p.name} ({p.days} days, {format_ton(p.price_nanotons)} TON)" for p in settings.plans
    )
    if args is None or not args.strip():
        return Refusal(f"Which plan? Send /subscribe <plan>; plans: {choices}.")
    name = args.strip().casefold()
    plan = next((p for p in settings.plans if p.name.casefold() == name), None)
    if plan is None:
        return Refusal(f"There is no plan {_quoted(args.strip())}. Plans: {choices}.")
    return plan


def parse_actor(args: str | None, names: tuple[str, ...]) -> tuple[str, str] | Refusal:
    """``(actor, reason)`` from ``/restart <actor> [reason...]``; actor names ignore case."""
    usage = f"Send /restart <actor> [reason]; actors: {', '.join(names)}."
    if args is None or not args.strip():
        return Refusal(usage)
    first, _, rest = args.strip().partition(" ")
    actor = next((n for n in names if n.casefold() == first.casefold()), None)
    if actor is None:
        return Refusal(f"There is no actor {_quoted(first)}. {usage}")
    reason = rest.strip()
    unstorable = unstorable_text(reason)
    if unstorable is not None:
        # Refused here with what is wrong, not by the log with an error on our side.
        return Refusal(f"The reason cannot be recorded: {unstorable[1]}. {usage}")
    return actor, reason


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def ago(moment: datetime, now: datetime) -> str:
    """``"12s ago"``, ``"5m ago"``, ``"3h ago"``, ``"2d ago"``."""
    seconds = max(int((now - moment).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


HELP_TEXT: Final = (
    "i3lani: advertising in Telegram channels, paid in TON.\n"
    "/start - register (a friend's referral link earns them a reward)\n"
    "/subscribe <plan> - pay for a plan; I send the amount, wallet and memo\n"
    "/balance - your reward balance in TON\n"
    "/addchannel @channel - register your channel for advertising\n"
    "/help - this list"
)

ADMIN_HELP_TEXT: Final = (
    "\nAdmins: /actors - actor status; /restart <actor> [reason]; /health - last health check"
)
