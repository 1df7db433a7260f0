"""The gateway's work against the event log: each command appends events or reads the log.

:class:`Gateway` never calls an actor: actors learn about what it appends by subscription
(the PaymentMonitor about ``PaymentCreated``, the RewardProcessor about ``RewardEarned``, the
supervisor about ``OperatorCommandIssued``). Every method returns the reply text; bad input
and refusals append nothing.

Exactly-once rules, all enforced by the store rather than by reading first:

* a user registers once: ``UserRegistered`` goes to ``member-<id>`` with ``NO_STREAM``, and the
  referral ``RewardEarned`` is appended **in the same transaction**, with an event id derived
  from the referred user, so a repeat or a race earns nothing more (a transaction that lost
  the race for the *referrer's* next stream version to another writer is tried again: only a
  conflict on ``member-<id>`` means "already registered");
* a channel is added once: ``ChannelAdded`` goes to its channel stream with ``NO_STREAM``,
  together with its ``channel_addition`` reward;
* a payment id is used once: ``PaymentCreated`` goes to ``payment-<id>`` with ``NO_STREAM``;
  the id is the largest one in the log plus one, taken again after a conflict;
* a message is acted on once: Telegram delivers an update again when the webhook's answer did
  not reach it (a timeout, a deploy), so ``/subscribe`` and ``/restart`` take their event id
  from the message (:func:`request_event_id`, chat and message id). A redelivery finds that
  event already stored and is answered from it: the same payment, not a second one; the same
  command, not a second restart.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final, TypeVar

import anyio
import msgspec

from actors.config import Plan, Settings
from actors.control import command_outlook, issue_command, operator_command
from actors.health import last_verdict
from actors.names import ACTOR_NAMES, DEFAULT_ACTORS
from actors.runtime import tracing
from actors.runtime.status import actor_status
from actors.ton import format_ton, memo_for, transfer_link
from bot_gateway.commands import (
    ADMIN_HELP_TEXT,
    HELP_TEXT,
    Refusal,
    ago,
    parse_actor,
    parse_channel,
    parse_plan,
    parse_referral,
)
from bot_gateway.config import GatewayConfig
from bot_gateway.events import UserRegistered, member_stream
from events import (
    ChannelAdded,
    Event,
    EventMetadata,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    environment,
    utcnow,
)
from events.errors import ConcurrencyConflict, EventIdReused, StoreUnavailable
from events.streams import channel_stream, payment_stream, user_stream
from store import NO_STREAM, EventStore, NewEvent, views
from store.memory import MemoryLog

__all__ = [
    "Gateway",
    "TelegramUser",
    "reward_id_for",
    "request_event_id",
    "PAYMENT_ID_ATTEMPTS",
]

logger = logging.getLogger(__name__)

_NAMESPACE: Final = uuid.UUID("5d1f0b7e-4c7a-4a63-9a55-0f3b8e6c2d41")
PAYMENT_ID_ATTEMPTS: Final = 20
APPEND_ATTEMPTS: Final = 20
"""Tries of a registration whose reward's stream another writer keeps appending to."""


def reward_id_for(reason: str, source: str) -> uuid.UUID:
    """The one reward id (and event id) a reason and source can ever earn."""
    return uuid.uuid5(_NAMESPACE, f"reward/{reason}/{source}")


def request_event_id(kind: str, request: str) -> uuid.UUID:
    """The one event id a request (``"<chat id>/<message id>"``) can record as ``kind``."""
    return uuid.uuid5(_NAMESPACE, f"{kind}/{request}")


E = TypeVar("E", bound=Event)


class TelegramUser(msgspec.Struct, frozen=True):
    """Who sent a command: the Telegram id and, when set, the username."""

    user_id: int
    username: str | None = None


class Gateway:
    """The bot's commands as store operations; each returns the reply text."""

    def __init__(
        self,
        store: EventStore | MemoryLog,
        settings: Settings,
        config: GatewayConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.config = config or GatewayConfig()
        self._clock = clock
        self._next_payment_id: int | None = None
        self._id_lock = anyio.Lock()

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.settings.admin_ids

    @staticmethod
    def _meta(user_id: int) -> EventMetadata:
        return EventMetadata(
            caused_by=f"user:{user_id}",
            correlation_id=environment.new_uuid(),
            traceparent=tracing.traceparent(),
        )

    # -- everyone ----------------------------------------------------------------------------

    def help(self, user_id: int) -> str:
        return HELP_TEXT + (ADMIN_HELP_TEXT if self.is_admin(user_id) else "")

    async def start(self, user: TelegramUser, payload: str | None) -> str:
        """Register ``user``; a referral payload earns the referrer one reward, once."""
        referral = parse_referral(payload)
        registered = await self.store.stream_version(member_stream(user.user_id)) > 0
        if registered:
            if isinstance(referral, int):
                return (
                    "Welcome back! You are already registered, so this referral link "
                    "earns nothing: referrals count for new users only. See /help."
                )
            return "Welcome back! See /help for what I can do."
        note = ""
        referrer: int | None = None
        if isinstance(referral, Refusal):
            note = f"\n{referral.text} You are registered anyway."
        elif referral == user.user_id:
            note = "\nYou cannot refer yourself, so that link earns nothing."
        elif referral is not None:
            if await self.store.stream_version(member_stream(referral)) > 0:
                referrer = referral
            else:
                note = "\nThat referral link names no registered user, so it earns nothing."
        now = self._clock()
        registration = UserRegistered(
            user_id=user.user_id,
            registered_at=now,
            referred_by=referrer,
            username=user.username,
        )
        reward: RewardEarned | None = None
        if referrer is not None:
            source = f"user:{user.user_id}"
            reward = RewardEarned(
                reward_id=reward_id_for("referral", source),
                user_id=referrer,
                amount_nanotons=self.config.referral_reward_nanotons,
                reason="referral",
                source=source,
                earned_at=now,
            )
        first = await self._append_first(
            member_stream(user.user_id), registration, reward, self._meta(user.user_id)
        )
        if not first:
            # A second /start racing the first (or a redelivered update): it already counted.
            return "Welcome back! See /help for what I can do."
        if referrer is not None:
            note = (
                f"\nYou joined through user {referrer}'s link: they earn "
                f"{format_ton(self.config.referral_reward_nanotons)} TON."
            )
        return f"Welcome to i3lani! You are registered.{note}\n\n{HELP_TEXT}"

    async def _append_first(
        self, stream: str, event: Event, reward: RewardEarned | None, meta: EventMetadata
    ) -> bool:
        """Append ``event`` as the first event of ``stream`` and, in the same transaction,
        ``reward`` (under its reward id) to its user's stream. False when ``stream`` exists
        already (or the reward id is stored): it counted before, nothing is written.

        Another append to the user's stream committed between our choice of its next version
        and our insert (a second referral through the same link, a channel added at the same
        time, a credit) aborts the transaction with nothing written: that one is tried again,
        never taken for "already registered"."""
        reward_stream = None if reward is None else user_stream(reward.user_id)
        for _ in range(APPEND_ATTEMPTS):
            try:
                async with self.store.transaction() as tx:
                    await tx.append(stream, [event], expected_version=NO_STREAM, metadata=meta)
                    if reward is not None:
                        await tx.append(
                            user_stream(reward.user_id),
                            [NewEvent(event=reward, event_id=reward.reward_id)],
                            metadata=meta,
                        )
            except ConcurrencyConflict as exc:
                if exc.stream == reward_stream:
                    continue
                return False
            except EventIdReused:
                return False
            return True
        raise StoreUnavailable(f"{reward_stream} kept changing during {APPEND_ATTEMPTS} attempts")

    async def subscribe(self, user_id: int, args: str | None, *, request: str | None = None) -> str:
        """Create a payment for the plan in ``args``; the reply says how to pay it. A
        ``request`` already answered (a redelivered message) gets the same payment again."""
        plan = parse_plan(args, self.settings)
        if isinstance(plan, Refusal):
            return plan.text
        if not self.settings.wallet:
            logger.error(
                "/subscribe refused: WALLET_ADDRESS is not set",
                extra={"action": "gateway_no_wallet"},
            )
            return "Payments are not available right now; please try again later."
        wallet = self.settings.wallet_address()
        created = await self.create_payment(user_id, plan, request=request)
        link = transfer_link(wallet, created.amount_nanotons, created.memo)
        minutes = max(round(self.settings.payment_window / 60), 1)
        return (
            f"Payment #{created.payment_id} for the {plan.name} plan ({plan.days} days).\n"
            f"Send exactly {format_ton(created.amount_nanotons)} TON\n"
            f"to {wallet.to_friendly(url_safe=True)}\n"
            f"with the comment (memo): {created.memo}\n"
            f"The memo must match exactly, or the payment cannot be matched.\n"
            f"Pay within {minutes} min (until {created.expires_at:%Y-%m-%d %H:%M} UTC).\n"
            f"One tap: {link}\n"
            "I will tell you when it is confirmed."
        )

    async def create_payment(
        self, user_id: int, plan: Plan, *, request: str | None = None
    ) -> PaymentCreated:
        """Append ``PaymentCreated`` under a fresh payment id and return it; for a ``request``
        that already created one, that one (nothing appended)."""
        event_id = request_event_id("PaymentCreated", request) if request is not None else None
        if event_id is not None:
            earlier = await self._recorded(event_id, PaymentCreated)
            if earlier is not None:
                return earlier
        wallet = self.settings.wallet or ""
        for _ in range(PAYMENT_ID_ATTEMPTS):
            payment_id = await self._allocate_payment_id()
            now = self._clock()
            created = PaymentCreated(
                payment_id=payment_id,
                user_id=user_id,
                plan=plan.name,
                amount_nanotons=plan.price_nanotons,
                wallet=wallet,
                memo=memo_for(payment_id),
                created_at=now,
                expires_at=now + timedelta(seconds=self.settings.payment_window),
            )
            try:
                await self.store.append(
                    payment_stream(payment_id),
                    [NewEvent(event=created, event_id=event_id or environment.new_uuid())],
                    expected_version=NO_STREAM,
                    metadata=self._meta(user_id),
                )
            except ConcurrencyConflict:
                # Another gateway took this id: read the largest again.
                self._next_payment_id = None
                continue
            except EventIdReused:
                # The same message, delivered twice at once: the other delivery won.
                assert event_id is not None  # a fresh uuid4 is never stored already
                earlier = await self._recorded(event_id, PaymentCreated)
                if earlier is None:
                    raise
                return earlier
            return created
        raise StoreUnavailable(
            f"no free payment id after {PAYMENT_ID_ATTEMPTS} attempts: too many gateways racing"
        )

    async def _recorded(self, event_id: uuid.UUID, kind: type[E]) -> E | None:
        """The ``kind`` event stored under ``event_id``, if any."""
        recorded = await self.store.read_event(event_id, skip_unknown=True)
        if recorded is None or not isinstance(recorded.event, kind):
            return None
        return recorded.event

    async def _allocate_payment_id(self) -> int:
        async with self._id_lock:
            if self._next_payment_id is None:
                # Once per process, and again after an id conflict.
                largest = await views.max_payload_int(
                    self.store, self.store.registry.tag_of(PaymentCreated), "payment_id"
                )
                self._next_payment_id = largest + 1
            payment_id = self._next_payment_id
            self._next_payment_id += 1
            return payment_id

    async def balance(self, user_id: int) -> str:
        """The sum of the user's credited rewards, and what is still pending."""
        credited = 0
        pending: dict[uuid.UUID, int] = {}
        for recorded in await self.store.read_stream(user_stream(user_id), skip_unknown=True):
            event = recorded.event
            if isinstance(event, RewardCredited):
                credited += event.amount_nanotons
                pending.pop(event.reward_id, None)
            elif isinstance(event, RewardEarned):
                pending[event.reward_id] = event.amount_nanotons
            elif isinstance(event, RewardFailed):
                pending.pop(event.reward_id, None)
        text = f"Your balance: {format_ton(credited)} TON."
        if pending:
            text += f" Pending credit: {format_ton(sum(pending.values()))} TON."
        return text

    async def add_channel(self, user_id: int, args: str | None) -> str:
        """Register a channel (once) and earn its ``channel_addition`` reward. The user who
        added it, adding it again (or the same update redelivered after its answer was lost),
        is told it is theirs already; anyone else that it is taken."""
        channel = parse_channel(args)
        if isinstance(channel, Refusal):
            return channel.text
        stream = channel_stream(channel)
        added = await views.first_event(self.store, stream, ChannelAdded)
        if added is not None:
            return self._already_added(channel, added, user_id)
        now = self._clock()
        source = f"channel:{stream.removeprefix('channel-')}"
        reward_id = reward_id_for("channel_addition", source)
        reward = RewardEarned(
            reward_id=reward_id,
            user_id=user_id,
            amount_nanotons=self.config.channel_reward_nanotons,
            reason="channel_addition",
            source=source,
            earned_at=now,
        )
        if not await self._append_first(
            stream,
            ChannelAdded(channel=channel, added_by=user_id, added_at=now),
            reward,
            self._meta(user_id),
        ):
            added = await views.first_event(self.store, stream, ChannelAdded)
            if added is None:  # the other writer's transaction was refused after all
                return f"{channel} could not be registered just now; please try again."
            return self._already_added(channel, added, user_id)
        return (
            f"{channel} is registered. Its audience is measured and priced within hours; "
            f"you earn {format_ton(self.config.channel_reward_nanotons)} TON for adding it. "
            "Make sure the bot can see the channel (public, or the bot is a member)."
        )

    def _already_added(self, channel: str, added: ChannelAdded, user_id: int) -> str:
        if added.added_by == user_id:
            return (
                f"{channel} is registered to you already; you earned its "
                f"{format_ton(self.config.channel_reward_nanotons)} TON reward when you added it."
            )
        return f"{channel} is already registered; each channel can be added once."

    # -- admins ------------------------------------------------------------------------------

    def refuse_admin(self, user_id: int) -> str | None:
        """The refusal for a non-admin, or ``None`` for an admin."""
        if self.is_admin(user_id):
            return None
        return "Sorry, that command is for administrators only. See /help for yours."

    async def actors(self) -> str:
        now = self._clock()
        lines = ["Actors:"]
        for name in DEFAULT_ACTORS:
            status = await actor_status(self.store, name, now)
            parts = [f"{name}: {status.state}"]
            if status.node:
                parts.append(f"on {status.node} (gen {status.generation})")
            if status.last_tick is not None:
                parts.append(f"last tick {ago(status.last_tick, now)}")
            if status.restarts_last_hour:
                parts.append(f"{status.restarts_last_hour} restart(s) in the last hour")
            if status.last_error:
                parts.append(f"last error: {status.last_error[:120]}")
            lines.append(", ".join(parts))
        return "\n".join(lines)

    async def restart(self, user_id: int, args: str | None, *, request: str | None = None) -> str:
        """Ask for a restart of the actor in ``args``; a ``request`` already answered (a
        redelivered message) is answered again without a second command."""
        parsed = parse_actor(args, ACTOR_NAMES)
        if isinstance(parsed, Refusal):
            return parsed.text
        actor, reason = parsed
        who = f"telegram:{user_id}"
        command = operator_command(
            "restart", actor, requested_by=who, reason=reason, now=self._clock()
        )
        event_id = environment.new_uuid()
        position = None
        if request is not None:
            event_id = request_event_id("OperatorCommandIssued", request)
            position = await self._position_of(event_id)  # a redelivery: already issued
        if position is None:
            # Judged as `i3lani restart` judges it: with no node holding the actor, nothing
            # would act on it, so it is refused and nothing is recorded.
            status = await actor_status(self.store, actor, self._clock())
            outlook = command_outlook("restart", status)
            if outlook.refused:
                return outlook.message
            try:
                result = await issue_command(self.store, command, event_id=event_id)
            except EventIdReused:
                position = await self._position_of(event_id)  # delivered twice at once
                if position is None:
                    raise
            else:
                position = result.last_position
        return (
            f"restart {actor}: requested (command #{position}). The node running "
            "it acts within seconds; /actors shows the result."
        )

    async def _position_of(self, event_id: uuid.UUID) -> int | None:
        recorded = await self.store.read_event(event_id, skip_unknown=True)
        return None if recorded is None else recorded.position

    async def health(self) -> str:
        checked = await last_verdict(self.store)
        if checked is None:
            return "No health check recorded yet: is the HealthChecker running? (/actors)"
        now = self._clock()
        verdict = "healthy" if checked.healthy else "FAILING"
        lines = [f"{verdict} (checked {ago(checked.checked_at, now)})"]
        for check in checked.checks:
            mark = "ok  " if check.ok else "FAIL"
            detail = f" {check.detail}" if check.detail else ""
            lines.append(f"{mark} {check.name}{detail}")
        return "\n".join(lines)
