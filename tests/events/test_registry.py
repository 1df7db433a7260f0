"""The event registry: explicit tags, validation before writing, unknown tags, upcasting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
import pytest

from events import (
    BUILTIN_EVENTS,
    DEFAULT_REGISTRY,
    Event,
    EventRegistry,
    PaymentConfirmed,
    PaymentCreated,
    RewardEarned,
)
from events.errors import EventRegistrationError, InvalidEvent, UnknownEventType, UpcastError
from events.registry import same_payload

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def payment(**changes: Any) -> PaymentCreated:
    fields: dict[str, Any] = {
        "payment_id": 7,
        "user_id": 42,
        "plan": "basic",
        "amount_nanotons": 5_440_000_000,
        "wallet": "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b",
        "memo": "i3lani_7",
        "created_at": NOW,
        "expires_at": NOW,
    }
    fields.update(changes)
    return PaymentCreated(**fields)


def test_every_builtin_event_is_registered_under_its_explicit_tag() -> None:
    expected = {
        "PaymentCreated", "PaymentConfirmed", "PaymentUnderpaid", "PaymentExpired",
        "SubscriptionActivated", "RewardEarned", "RewardCredited", "RewardFailed",
        "ChannelAdded", "ChannelStatsUpdated", "ChannelPriceChanged", "CleanupCompleted",
        "HealthChecked", "ActorStarted", "ActorCrashed", "ActorRestarted", "ActorParked",
        "ActorStopped",
    }  # fmt: skip
    assert expected <= set(DEFAULT_REGISTRY.tags())
    for cls in BUILTIN_EVENTS:
        assert cls.__struct_config__.frozen, cls
        assert DEFAULT_REGISTRY.class_for(DEFAULT_REGISTRY.tag_of(cls)) is cls


def test_events_are_frozen() -> None:
    event = payment()
    field = "amount_nanotons"
    with pytest.raises(AttributeError):
        setattr(event, field, 1)


def test_encode_round_trips_through_decode() -> None:
    event = payment()
    tag, version, payload = DEFAULT_REGISTRY.encode(event)
    assert (tag, version) == ("PaymentCreated", 1)
    assert DEFAULT_REGISTRY.decode(tag, version, payload) == event


def test_the_tag_is_stored_in_the_type_column_not_in_the_payload() -> None:
    event = payment()
    tag, version, payload = DEFAULT_REGISTRY.encode(event)
    assert b'"type"' not in payload  # the tag field msgspec writes first is left out
    assert payload.startswith(b'{"payment_id":')
    # As earlier releases stored it, with the tag: it decodes all the same.
    tagged = msgspec.json.encode(event)
    assert tagged.startswith(b'{"type":"PaymentCreated",')
    assert DEFAULT_REGISTRY.decode(tag, version, tagged) == event
    assert same_payload(tagged, payload, "PaymentCreated")
    assert not same_payload(tagged, payload.replace(b'"payment_id":7', b'"payment_id":8'), tag)
    assert not same_payload(b'{"type":"Other","x":1}', b'{"x":1}', "Mine")


def test_an_application_registers_its_own_event_the_same_way() -> None:
    registry = EventRegistry(BUILTIN_EVENTS)

    @registry.register
    class CouponRedeemed(Event, frozen=True, tag="CouponRedeemed"):
        code: str

    tag, version, payload = registry.encode(CouponRedeemed(code="WELCOME"))
    assert tag == "CouponRedeemed"
    assert registry.decode(tag, version, payload) == CouponRedeemed(code="WELCOME")


def test_a_class_without_an_explicit_tag_is_refused() -> None:
    class Untagged(Event, frozen=True):
        x: int

    with pytest.raises(EventRegistrationError, match=r'class Untagged\(Event, tag="Untagged"\)'):
        EventRegistry().register(Untagged)


def test_two_classes_cannot_claim_one_tag() -> None:
    class First(Event, frozen=True, tag="Same"):
        x: int

    class Second(Event, frozen=True, tag="Same"):
        y: int

    registry = EventRegistry([First])
    with pytest.raises(EventRegistrationError, match="already registered to"):
        registry.register(Second)


def test_renaming_a_class_keeps_its_stored_tag() -> None:
    class RenamedInCode(Event, frozen=True, tag="OriginalName"):
        x: int

    registry = EventRegistry([RenamedInCode])
    assert registry.encode(RenamedInCode(x=1))[0] == "OriginalName"


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"amount_nanotons": 0}, "amount_nanotons", ">= 1"),
        ({"amount_nanotons": -5}, "amount_nanotons", ">= 1"),
        ({"payment_id": 0}, "payment_id", ">= 1"),
        ({"plan": ""}, "plan", "length >= 1"),
        ({"created_at": datetime(2026, 11, 29, 10, 0)}, "created_at", "timezone"),
        ({"amount_nanotons": "5"}, "amount_nanotons", "Expected `int`"),
    ],
)
def test_invalid_payload_names_the_type_and_the_field(
    changes: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        DEFAULT_REGISTRY.encode(payment(**changes))
    assert caught.value.event_type == "PaymentCreated"
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert "PaymentCreated" in str(caught.value)
    assert field in str(caught.value)


def test_pattern_constraints_apply_to_hashes() -> None:
    bad = PaymentConfirmed(
        payment_id=1,
        tx_hash="not-a-hash",
        lt=1,
        amount_nanotons=1,
        payer="0:ab",
        confirmed_at=NOW,
    )
    with pytest.raises(InvalidEvent, match="tx_hash"):
        DEFAULT_REGISTRY.encode(bad)


def test_unregistered_event_cannot_be_encoded() -> None:
    class Stray(Event, frozen=True, tag="Stray"):
        x: int

    with pytest.raises(UnknownEventType, match="Stray"):
        DEFAULT_REGISTRY.encode(Stray(x=1))


def test_unknown_tag_on_read_names_tag_and_position() -> None:
    with pytest.raises(UnknownEventType) as caught:
        DEFAULT_REGISTRY.decode("FromTheFuture", 1, b"{}", position=1234)
    assert caught.value.tag == "FromTheFuture"
    assert caught.value.position == 1234
    assert "FromTheFuture" in str(caught.value)
    assert "1234" in str(caught.value)
    assert not isinstance(caught.value, KeyError)


def test_new_fields_with_defaults_just_work() -> None:
    # A payload stored before `overpaid_nanotons` existed decodes with the default.
    stored = msgspec.json.encode(
        {
            "payment_id": 3,
            "tx_hash": "ab" * 32,
            "lt": 10,
            "amount_nanotons": 100,
            "payer": "0:" + "cd" * 32,
            "confirmed_at": "2026-11-29T10:00:00Z",
        }
    )
    decoded = DEFAULT_REGISTRY.decode("PaymentConfirmed", 1, stored)
    assert isinstance(decoded, PaymentConfirmed)
    assert decoded.overpaid_nanotons == 0


def test_a_newer_writers_extra_fields_are_ignored() -> None:
    tag, version, payload = DEFAULT_REGISTRY.encode(payment())
    newer = msgspec.json.decode(payload)
    newer["added_by_a_later_release"] = True
    decoded = DEFAULT_REGISTRY.decode(tag, version + 1, msgspec.json.encode(newer))
    assert decoded == payment()


class RewardV3(Event, frozen=True, tag="LegacyReward"):
    """v1 had `amount_ton` as a float string; v2 renamed `user` to `user_id`; v3 is this."""

    schema_version: ClassVar[int] = 3
    reward_id: uuid.UUID
    user_id: int
    amount_nanotons: int


def legacy_registry() -> EventRegistry:
    registry = EventRegistry([RewardV3])

    @registry.upcaster("LegacyReward", from_version=1)
    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        whole, _, frac = raw.pop("amount_ton").partition(".")
        raw["amount_nanotons"] = int(whole) * 10**9 + int(frac.ljust(9, "0"))
        return raw

    @registry.upcaster("LegacyReward", from_version=2)
    def v2_to_v3(raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        raw["user_id"] = raw.pop("user")
        return raw

    return registry


def test_upcaster_chain_turns_v1_into_the_current_struct() -> None:
    reward_id = uuid.uuid4()
    v1 = msgspec.json.encode({"reward_id": str(reward_id), "user": 9, "amount_ton": "1.5"})
    decoded = legacy_registry().decode("LegacyReward", 1, v1)
    assert decoded == RewardV3(reward_id=reward_id, user_id=9, amount_nanotons=1_500_000_000)


def test_a_missing_upcaster_step_is_a_clear_error() -> None:
    registry = EventRegistry([RewardV3])
    with pytest.raises(UpcastError, match=r"no upcaster turns v1 into v2 \(global position 5\)"):
        registry.decode("LegacyReward", 1, b'{"user": 1}', position=5)


def test_an_upcaster_that_can_never_run_is_refused() -> None:
    registry = EventRegistry([RewardEarned])
    with pytest.raises(EventRegistrationError, match="would never run"):
        registry.upcaster("RewardEarned", from_version=1)(lambda raw: raw)
