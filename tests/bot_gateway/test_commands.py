"""Pure parts: parsing what users type, wording notices, reading the gateway's settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.config import Settings
from bot_gateway import GatewayConfig, load_gateway_config, payment_notice
from bot_gateway.commands import (
    Refusal,
    ago,
    parse_actor,
    parse_channel,
    parse_plan,
    parse_referral,
)
from events import PaymentConfirmed, PaymentCreated, PaymentExpired, PaymentUnderpaid
from events.errors import ConfigError

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def test_referral_payloads() -> None:
    assert parse_referral(None) is None
    assert parse_referral("") is None
    assert parse_referral("ref_42") == 42
    for bad in ("ref_", "ref_0", "ref_042", "ref_12a", "promo", "ref_1 ref_2"):
        assert isinstance(parse_referral(bad), Refusal), bad


def test_channel_names() -> None:
    assert parse_channel("@ton_news") == "@ton_news"
    assert parse_channel(" https://t.me/ton_news ") == "@ton_news"
    for bad in (None, "", "ton_news", "@ab", "@1abc", "@has space", "@" + "a" * 40, "@bad-name"):
        refusal = parse_channel(bad)
        assert isinstance(refusal, Refusal), bad
        assert "/addchannel @my_channel" in refusal.text


def test_plans_are_matched_by_name_case_insensitively() -> None:
    settings = Settings()
    plan = parse_plan(" Week ", settings)
    assert not isinstance(plan, Refusal)
    assert plan.name == "week"
    missing = parse_plan("year", settings)
    assert isinstance(missing, Refusal)
    assert "week (7 days, 1 TON)" in missing.text
    assert "month (30 days, 3 TON)" in missing.text
    assert isinstance(parse_plan(None, settings), Refusal)


def test_actor_and_reason() -> None:
    names = ("PaymentMonitor", "Cleanup")
    assert parse_actor("paymentmonitor stuck on a cursor", names) == (
        "PaymentMonitor",
        "stuck on a cursor",
    )
    assert parse_actor("Cleanup", names) == ("Cleanup", "")
    refusal = parse_actor("Nope", names)
    assert isinstance(refusal, Refusal)
    assert "PaymentMonitor, Cleanup" in refusal.text


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("stuck\x00", "a NUL character (U+0000) cannot be stored"),
        ("stuck \ud801", "a lone surrogate is not valid Unicode"),
    ],
)
def test_a_reason_the_log_cannot_hold_is_refused_with_what_is_wrong(reason: str, why: str) -> None:
    # Before, the log refused it and the admin was told "something went wrong on our side".
    refusal = parse_actor(f"Cleanup {reason}", ("Cleanup",))
    assert isinstance(refusal, Refusal)
    assert refusal.text == (
        f"The reason cannot be recorded: {why}. Send /restart <actor> [reason]; actors: Cleanup."
    )


def test_ago() -> None:
    assert ago(NOW - timedelta(seconds=5), NOW) == "5s ago"
    assert ago(NOW - timedelta(minutes=3), NOW) == "3m ago"
    assert ago(NOW - timedelta(hours=2, minutes=5), NOW) == "2h ago"
    assert ago(NOW + timedelta(seconds=5), NOW) == "0s ago"


def created() -> PaymentCreated:
    return PaymentCreated(
        payment_id=7,
        user_id=11,
        plan="week",
        amount_nanotons=1_000_000_000,
        wallet="EQ...",
        memo="i3lani_7",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def test_payment_notices() -> None:
    confirmed = PaymentConfirmed(
        payment_id=7,
        tx_hash="a" * 64,
        lt=1,
        amount_nanotons=1_500_000_000,
        payer="0:" + "b" * 64,
        confirmed_at=NOW,
        overpaid_nanotons=500_000_000,
    )
    text = payment_notice(confirmed, created())
    assert text is not None
    assert "#7 is confirmed: 1.5 TON received" in text
    assert "0.5 TON more" in text
    underpaid = PaymentUnderpaid(
        payment_id=7,
        tx_hash="a" * 64,
        lt=1,
        amount_nanotons=400_000_000,
        expected_nanotons=1_000_000_000,
        payer="0:" + "b" * 64,
        detected_at=NOW,
    )
    text = payment_notice(underpaid, created())
    assert text is not None
    assert "underpaid: 0.4 TON arrived, 1 TON is due (0.6 TON missing)" in text
    text = payment_notice(PaymentExpired(payment_id=7, expired_at=NOW), created())
    assert text is not None
    assert "expired" in text
    assert "/subscribe week" in text
    assert payment_notice(created(), created()) is None


def test_gateway_config_from_environment() -> None:
    config = load_gateway_config(
        {
            "WEBHOOK_SECRET": "abc_DEF-123",
            "RENDER_EXTERNAL_URL": "https://i3lani.onrender.com/",
            "I3LANI_REFERRAL_REWARD": "0.25",
            "ADMIN_TOKEN": "tok_Admin-0123456789.~",
        }
    )
    assert config.webhook_secret == "abc_DEF-123"
    assert config.admin_token == "tok_Admin-0123456789.~"
    assert "tok_Admin" not in repr(config)
    assert config.webhook_url == "https://i3lani.onrender.com"
    assert config.referral_reward_nanotons == 250_000_000
    assert config.channel_reward_nanotons == 100_000_000
    assert "abc_DEF" not in repr(config)
    assert load_gateway_config({}) == GatewayConfig()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"WEBHOOK_SECRET": "c2VjcmV0+/=="}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": "x" * 257}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_URL": "http://plain.example"}, "WEBHOOK_URL"),
        ({"I3LANI_REFERRAL_REWARD": "-1"}, "I3LANI_REFERRAL_REWARD"),
        ({"I3LANI_CHANNEL_REWARD": "0"}, "I3LANI_CHANNEL_REWARD"),
        ({"I3LANI_WEBHOOK_PATH": "hook"}, "I3LANI_WEBHOOK_PATH"),
        ({"ADMIN_TOKEN": "c2VjcmV0short"}, "ADMIN_TOKEN"),
        ({"ADMIN_TOKEN": "c2VjcmV0 with spaces in it"}, "ADMIN_TOKEN"),
    ],
)
def test_malformed_gateway_settings_are_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as caught:
        load_gateway_config(env)
    assert "\n" not in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
