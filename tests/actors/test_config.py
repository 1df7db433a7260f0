"""Settings from the environment, and the channel price formula."""

from __future__ import annotations

from fractions import Fraction

import pytest

from actors.config import Plan, Settings, channel_price, load_settings
from actors.names import TASK_TYPES
from actors.tasks import task_types
from events.errors import ConfigError
from store.flow import Limit

WALLET = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
TON = 1_000_000_000


def test_defaults_are_the_products() -> None:
    settings = load_settings({})
    assert settings.payment_interval == 30
    assert settings.reward_interval == 300
    assert settings.analytics_interval == 6 * 3600
    assert settings.cleanup_interval == 24 * 3600
    assert settings.health_interval == 15 * 60
    assert settings.active_share == Fraction(45, 100)
    assert settings.tonapi_url == "https://tonapi.io"
    assert settings.telegram_api_url is None
    assert settings.admin_ids == ()
    assert settings.telegram_rate == Limit(30, 1.0)
    assert settings.telegram_chat_rate == Limit(1, 1.0)
    assert settings.telegram_group_rate == Limit(20, 60.0)
    assert settings.tonapi_rate == Limit(10, 1.0)
    assert settings.task_concurrency == ()


def test_everything_is_read_from_the_environment() -> None:
    settings = load_settings(
        {
            "TONAPI_URL": "http://127.0.0.1:9/",
            "TONAPI_KEY": "k",
            "TELEGRAM_API_URL": "http://127.0.0.1:8/",
            "BOT_TOKEN": "123:abc",
            "WALLET_ADDRESS": WALLET,
            "ADMIN_IDS": "1, 2,2;3",
            "I3LANI_PAYMENT_INTERVAL": "0.5",
            "I3LANI_ACTIVE_SHARE": "0.5",
            "I3LANI_PLANS": "day:1:0.25,year:365:30",
            "I3LANI_MIN_PRICE": "2",
            "I3LANI_TELEGRAM_RATE": "25/s",
            "I3LANI_TELEGRAM_CHAT_RATE": "1/2s",
            "I3LANI_TELEGRAM_GROUP_RATE": "off",
            "I3LANI_TONAPI_RATE": "1/4s",
            "I3LANI_TASK_CONCURRENCY": "admin_alert:2, reward_distribution:8",
        }
    )
    assert settings.tonapi_url == "http://127.0.0.1:9"
    assert settings.telegram_api_url == "http://127.0.0.1:8"
    assert settings.admin_ids == (1, 2, 3)
    assert settings.payment_interval == 0.5
    assert settings.active_share == Fraction(1, 2)
    assert settings.plans == (Plan("day", 1, TON // 4), Plan("year", 365, 30 * TON))
    assert settings.min_price_nanotons == 2 * TON
    assert settings.wallet_address().to_raw().startswith("0:408da3b2")
    assert settings.telegram_rate == Limit(25, 1.0)
    assert settings.telegram_chat_rate == Limit(1, 2.0)
    assert settings.telegram_group_rate is None
    assert settings.tonapi_rate == Limit(1, 4.0)
    assert settings.concurrency_limit("admin_alert") == 2
    assert settings.concurrency_limit("reward_distribution") == 8
    assert settings.concurrency_limit("payment_verification") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"I3LANI_PAYMENT_INTERVAL": "soon"}, "I3LANI_PAYMENT_INTERVAL must be a number"),
        ({"I3LANI_ACTIVE_SHARE": "1.5"}, "I3LANI_ACTIVE_SHARE must be between 0 and 1"),
        ({"ADMIN_IDS": "1,bob"}, "ADMIN_IDS must be Telegram user ids"),
        ({"WALLET_ADDRESS": "EQnot-an-address"}, "WALLET_ADDRESS"),
        ({"I3LANI_PLANS": "week:seven:1"}, "I3LANI_PLANS entries look like name:days:TON"),
        ({"I3LANI_MIN_PRICE": "1.0000000001"}, "I3LANI_MIN_PRICE"),
        ({"I3LANI_MIN_PRICE": "0"}, "I3LANI_MIN_PRICE must be a positive amount"),
        ({"I3LANI_TELEGRAM_RATE": "fast"}, "I3LANI_TELEGRAM_RATE: a rate looks like 30/s"),
        ({"I3LANI_TELEGRAM_CHAT_RATE": "0/s"}, "I3LANI_TELEGRAM_CHAT_RATE: '0/s'"),
        ({"I3LANI_TELEGRAM_GROUP_RATE": "20/day"}, "I3LANI_TELEGRAM_GROUP_RATE"),
        ({"I3LANI_TONAPI_RATE": "10"}, "I3LANI_TONAPI_RATE"),
        ({"I3LANI_TASK_CONCURRENCY": "admin_alert"}, "entries look like type:N"),
        ({"I3LANI_TASK_CONCURRENCY": "alerts:2"}, "'alerts', not a task type"),
        ({"I3LANI_TASK_CONCURRENCY": "admin_alert:0"}, "a limit is 1 to 10000"),
        ({"I3LANI_TASK_CONCURRENCY": "admin_alert:1,admin_alert:2"}, "twice"),
    ],
)
def test_a_malformed_setting_is_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(env)
    assert "\n" not in str(caught.value)


def test_every_task_type_may_be_given_a_concurrency_limit() -> None:
    assert sorted(TASK_TYPES) == sorted(task_types().names())


def test_secrets_never_show_in_repr() -> None:
    settings = load_settings({"BOT_TOKEN": "123:secret-token", "TONAPI_KEY": "secret-key"})
    shown = repr(settings)
    assert "secret" not in shown
    assert "bot_token='<set>'" in shown


def test_a_missing_wallet_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WALLET_ADDRESS is not set"):
        Settings().wallet_address()


@pytest.mark.parametrize(
    ("active", "expected"),
    [
        (0, TON),  # the minimum
        (999, TON),  # 0.999 TON rounds up to 1.00, still the minimum
        (1_000, TON),
        (1_001, 1_010_000_000),  # 1.001 TON rounds up to the next 0.01 TON
        (45_000, 45 * TON),
        (123_456, 123_460_000_000),
    ],
)
def test_channel_price_is_integer_nanotons_rounded_up_to_a_cent(active: int, expected: int) -> None:
    assert channel_price(active, Settings()) == expected
