"""Exact arithmetic from configuration to nanotons, held to a rational reference (issue 19).

Each function on the way from a configured number to money or an audience is compared with a
plain :class:`~fractions.Fraction` implementation of the rule ``actors/config.py`` documents,
over generated settings written as an operator writes them (decimal text): every share with
up to 4 decimals, audiences up to 10**9, every price per 1,000 and minimum price the
configuration accepts. The reference builds its values from integers, never from the text, so
it shares no parsing with the code under test.

Hypothesis runs derandomized and without its example database: CI sees the same examples on
every run, and the whole module takes a few seconds.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from actors.channel_analytics import AnalyticsState, ChannelAnalytics, ChannelMeasured, ChannelView
from actors.config import (
    PRICE_STEP,
    SHARE_DECIMALS,
    Settings,
    active_subscribers,
    channel_price,
    load_settings,
    share_text,
)
from bot_gateway.config import load_gateway_config
from events import ChannelPriceChanged, ChannelStatsUpdated
from events.errors import ConfigError
from events.streams import channel_stream

NANOTONS = 10**9
CENT = Fraction(1, 100)  # TON
MAX_AUDIENCE = 10**9
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)

EXACT = hypothesis_settings(derandomize=True, database=None, deadline=None, max_examples=600)


# -- the reference: the documented rules, in Fractions of a TON ------------------------------
def reference_active(subscribers: int, share: Fraction) -> int:
    """Rule 2: the active audience is ``subscribers x share``, rounded down."""
    return math.floor(subscribers * share)


def reference_price(active: int, per_1000: Fraction, minimum: Fraction) -> Fraction:
    """Rule 3, in TON: ``max(minimum, active x per_1000 / 1000)``, the second rounded up to a
    hundredth of a TON."""
    return max(minimum, math.ceil(active * per_1000 / 1000 / CENT) * CENT)


# -- decimal text as an operator writes it, and its exact value ------------------------------
def written(units: int, places: int) -> str:
    """``units / 10**places`` written with exactly ``places`` decimals (``"0.2900"`` too)."""
    if places == 0:
        return str(units)
    whole, fraction = divmod(units, 10**places)
    return f"{whole}.{fraction:0{places}d}"


@st.composite
def decimals(
    draw: st.DrawFn, *, most: int, positive: bool = False, high: int | None = None
) -> tuple[str, Fraction]:
    """``(text, value)``: a decimal with 0 to ``most`` decimals, from 0 (or its smallest
    positive value) to ``high`` (None: unbounded), and its value as an exact Fraction."""
    places = draw(st.integers(0, most))
    scale = 10**places
    units = draw(st.integers(1 if positive else 0, None if high is None else high * scale))
    return written(units, places), Fraction(units, scale)


SHARES = decimals(most=SHARE_DECIMALS, high=1)
"""Every share the configuration accepts: 0 to 1, up to 4 decimals."""
AUDIENCES = st.integers(0, MAX_AUDIENCE)
TON_AMOUNTS = decimals(most=9, positive=True)
"""Every TON amount the configuration accepts: any positive amount, to the nanoton."""
PRICES_PER_1000 = TON_AMOUNTS
MINIMUM_PRICES = decimals(most=2, positive=True)
"""Every I3LANI_MIN_PRICE accepted: any positive whole number of 0.01 TON."""


def pricing(share: str = "0.45", per_1000: str = "1", minimum: str = "1") -> Settings:
    return load_settings(
        {
            "I3LANI_ACTIVE_SHARE": share,
            "I3LANI_PRICE_PER_1000": per_1000,
            "I3LANI_MIN_PRICE": minimum,
        }
    )


# -- the issue's cases --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("share", "subscribers", "active"),
    [
        ("0.29", 2_900, 841),  # 840 through a float
        ("0.29", 100_000, 29_000),  # 28,999 through a float
        ("0.7", 90, 63),  # 62 through a float
        ("0.35", 180, 63),
        ("0.57", 100, 57),
        ("0.58", 50, 29),
        ("0.45", 2_223, 1_000),  # 1,000.35: rounded down
        ("0.45", 2_222, 999),  # 999.9: rounded down, not to the nearest
        ("1", 2_223, 2_223),
        ("0", 2_223, 0),
    ],
)
def test_the_issues_audiences(share: str, subscribers: int, active: int) -> None:
    assert active_subscribers(subscribers, pricing(share=share).active_share) == active


def test_the_issues_channel_is_priced_1_69_ton() -> None:
    settings = pricing(share="0.29", per_1000="2", minimum="0.5")
    active = active_subscribers(2_900, settings.active_share)
    assert active == 841
    assert channel_price(active, settings) == 1_690_000_000  # 1.682 TON, rounded up


def test_the_float_rule_it_replaces_fails_the_reference() -> None:
    """The reference has teeth: ``floor(subscribers * float(share))``, the old rule, misses
    every case of the issue."""
    for text, subscribers in [("0.29", 2_900), ("0.29", 100_000), ("0.7", 90), ("0.35", 180)]:
        share = Fraction(text)
        assert math.floor(subscribers * float(text)) != reference_active(subscribers, share)
        assert active_subscribers(subscribers, share) == reference_active(subscribers, share)


# -- every share with up to 4 decimals --------------------------------------------------------
def test_every_four_decimal_share_is_read_exactly() -> None:
    """All 10,001 shares from 0.0000 to 1.0000 (and their shorter forms: 0.29, 0.290 ...)."""
    scale = 10**SHARE_DECIMALS
    for units in range(scale + 1):
        exact = Fraction(units, scale)
        text = written(units, SHARE_DECIMALS)
        share = pricing(share=text).active_share
        assert share == exact, text
        assert pricing(share=share_text(share)).active_share == exact
        assert active_subscribers(2_900, share) == reference_active(2_900, exact)


@EXACT
@given(share=SHARES, subscribers=AUDIENCES)
@example(share=("0.29", Fraction(29, 100)), subscribers=MAX_AUDIENCE)
@example(share=("1.0000", Fraction(1)), subscribers=MAX_AUDIENCE)
@example(share=("0.0001", Fraction(1, 10_000)), subscribers=9_999)
def test_active_audience_matches_the_reference(
    share: tuple[str, Fraction], subscribers: int
) -> None:
    text, exact = share
    configured = pricing(share=text).active_share
    assert configured == exact
    assert active_subscribers(subscribers, configured) == reference_active(subscribers, exact)


# -- every price setting ----------------------------------------------------------------------
@EXACT
@given(active=AUDIENCES, per_1000=PRICES_PER_1000, minimum=MINIMUM_PRICES)
@example(active=841, per_1000=("2", Fraction(2)), minimum=("0.5", Fraction(1, 2)))
@example(active=5_000, per_1000=("0.002", Fraction(2, 1000)), minimum=("0.01", CENT))  # 0.01
@example(active=5_001, per_1000=("0.002", Fraction(2, 1000)), minimum=("0.01", CENT))  # 0.02
@example(active=1, per_1000=("0.000000001", Fraction(1, NANOTONS)), minimum=("0.01", CENT))
@example(active=0, per_1000=("1", Fraction(1)), minimum=("1", Fraction(1)))
def test_channel_price_matches_the_reference(
    active: int, per_1000: tuple[str, Fraction], minimum: tuple[str, Fraction]
) -> None:
    settings = pricing(per_1000=per_1000[0], minimum=minimum[0])
    price = channel_price(active, settings)
    assert Fraction(price, NANOTONS) == reference_price(active, per_1000[1], minimum[1])
    assert price % PRICE_STEP == 0


@hypothesis_settings(EXACT, max_examples=300)
@given(
    share=SHARES,
    subscribers=AUDIENCES,
    per_1000=PRICES_PER_1000,
    minimum=MINIMUM_PRICES,
)
def test_the_actor_records_the_references_audience_and_price(
    share: tuple[str, Fraction],
    subscribers: int,
    per_1000: tuple[str, Fraction],
    minimum: tuple[str, Fraction],
) -> None:
    """ChannelAnalytics, from the configuration's text to the events it appends."""
    actor = ChannelAnalytics(pricing(share[0], per_1000[0], minimum[0]), telegram=None)
    state = AnalyticsState(channels={channel_stream("@news"): ChannelView(channel="@news")})
    measured = ChannelMeasured(
        channel="@news", subscribers=subscribers, problem=None, measured_at=NOW
    )
    stats, priced = (emit.event for emit in actor.decide(state, measured))
    active = reference_active(subscribers, share[1])
    assert isinstance(stats, ChannelStatsUpdated)
    assert isinstance(priced, ChannelPriceChanged)
    assert stats.active_subscribers == priced.active_subscribers == active
    assert Fraction(priced.new_price_nanotons, NANOTONS) == reference_price(
        active, per_1000[1], minimum[1]
    )


# -- every other TON amount: to the nanoton, as written ----------------------------------------
@EXACT
@given(amount=TON_AMOUNTS)
@example(amount=("5.44", Fraction(544, 100)))
@example(amount=("0.000000001", Fraction(1, NANOTONS)))
def test_every_configured_ton_amount_is_exact_nanotons(amount: tuple[str, Fraction]) -> None:
    text, exact = amount
    nanotons = exact * NANOTONS
    assert nanotons.denominator == 1
    settings = load_settings(
        {
            "I3LANI_PLANS": f"week:7:{text},month:30:3",
            "I3LANI_MAX_BALANCE": text,
            "I3LANI_PRICE_PER_1000": text,
        }
    )
    assert settings.plans[0].price_nanotons == nanotons
    assert settings.max_balance_nanotons == nanotons
    assert settings.price_per_1000_nanotons == nanotons
    config = load_gateway_config({"I3LANI_REFERRAL_REWARD": text, "I3LANI_CHANNEL_REWARD": text})
    assert config.referral_reward_nanotons == config.channel_reward_nanotons == nanotons


# -- what cannot be used as written is refused, in one line naming the variable ---------------
TON_VARIABLES = ("I3LANI_PRICE_PER_1000", "I3LANI_MIN_PRICE", "I3LANI_MAX_BALANCE")
NOT_TON = ("1.0000000001", "0.0000000001", "nan", "inf", "-1", "1e3", "1E-3", "0x10", "1,5", "")
REFUSED: list[tuple[str, str]] = [
    *((name, text) for name in TON_VARIABLES for text in NOT_TON if text),
    *(("I3LANI_PLANS", f"week:7:{text}") for text in NOT_TON),
    ("I3LANI_PLANS", "week:²:1"),  # a digit to str.isdigit, not to int
    ("ADMIN_IDS", "1,²"),
    ("I3LANI_PLANS", "week:0:1"),
    ("I3LANI_PLANS", "week:7:0"),
    ("I3LANI_MIN_PRICE", "0.005"),  # prices are whole hundredths of a TON
    ("I3LANI_MIN_PRICE", "1.001"),
    ("I3LANI_MIN_PRICE", "0"),
    *(
        ("I3LANI_ACTIVE_SHARE", text)
        for text in (
            "0.12345",
            "0.45000",
            "1.0001",
            "2",
            "-0.1",
            "nan",
            "NaN",
            "inf",
            "4.5e-1",
            "45%",
            "0,45",
            ".45",
            "1.",
            "9/20",
            "\u0660.\u0664\u0665",  # Arabic-Indic digits for 0.45: float() reads them
        )
    ),
]


@pytest.mark.parametrize(("name", "text"), REFUSED)
def test_a_value_that_cannot_be_used_as_written_is_refused(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: text})
    message = str(caught.value)
    assert message.startswith(name)
    assert "\n" not in message


@pytest.mark.parametrize("name", ["I3LANI_REFERRAL_REWARD", "I3LANI_CHANNEL_REWARD"])
@pytest.mark.parametrize("text", [t for t in NOT_TON if t] + ["0"])
def test_a_reward_that_cannot_be_paid_as_written_is_refused(name: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config({name: text})
    message = str(caught.value)
    assert message.startswith(name)
    assert "\n" not in message


def test_a_float_share_never_reaches_the_rule() -> None:
    with pytest.raises(AttributeError):
        active_subscribers(2_900, 0.29)
