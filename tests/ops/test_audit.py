"""``i3lani audit``: the pure replay and its invariants, then the command against PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from actors.channel_analytics import ChannelAnalytics, ChannelMeasured, active_subscribers
from actors.config import Settings, channel_price, load_settings
from events import (
    ChannelAdded,
    ChannelPriceChanged,
    ChannelStatsUpdated,
    Event,
    EventMetadata,
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    PaymentUnderpaid,
    RewardCredited,
    RewardEarned,
    RewardFailed,
    SubscriptionActivated,
)
from ops.audit import AsOf, AuditReport, Progress, Replay, parse_as_of, render, run_audit
from store import EventStore, RecordedEvent

I3LANI = str(Path(sys.executable).parent / "i3lani")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
WALLET = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
TON = 1_000_000_000
SETTINGS = Settings()


# -- events ---------------------------------------------------------------------------------
def tx(n: int) -> str:
    return f"{n:064x}"


def created(payment_id: int, user_id: int = 7, amount: int = TON) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=user_id,
        plan="week",
        amount_nanotons=amount,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def confirmed(payment_id: int, tx_hash: str, amount: int = TON) -> PaymentConfirmed:
    return PaymentConfirmed(
        payment_id=payment_id,
        tx_hash=tx_hash,
        lt=1,
        amount_nanotons=amount,
        payer="0:" + "1" * 64,
        confirmed_at=NOW,
    )


def expired(payment_id: int) -> PaymentExpired:
    return PaymentExpired(payment_id=payment_id, expired_at=NOW)


def activated(payment_id: int, user_id: int = 7) -> SubscriptionActivated:
    return SubscriptionActivated(
        payment_id=payment_id,
        user_id=user_id,
        plan="week",
        starts_at=NOW,
        ends_at=NOW + timedelta(days=7),
    )


def earned(reward_id: uuid.UUID, user_id: int, amount: int) -> RewardEarned:
    return RewardEarned(
        reward_id=reward_id,
        user_id=user_id,
        amount_nanotons=amount,
        reason="referral",
        source="test",
        earned_at=NOW,
    )


def credited(reward_id: uuid.UUID, user_id: int, amount: int, after: int) -> RewardCredited:
    return RewardCredited(
        reward_id=reward_id,
        user_id=user_id,
        amount_nanotons=amount,
        balance_after_nanotons=after,
        credited_at=NOW,
    )


def failed(reward_id: uuid.UUID, user_id: int) -> RewardFailed:
    return RewardFailed(
        reward_id=reward_id, user_id=user_id, error="over the cap", attempts=3, failed_at=NOW
    )


def stats(subscribers: int, active: int | None = None) -> ChannelStatsUpdated:
    share = SETTINGS.active_share
    return ChannelStatsUpdated(
        channel="@news_channel",
        subscribers=subscribers,
        active_subscribers=active_subscribers(subscribers, share) if active is None else active,
        measured_at=NOW,
    )


def price(active: int, old: int | None, new: int | None = None) -> ChannelPriceChanged:
    return ChannelPriceChanged(
        channel="@news_channel",
        new_price_nanotons=channel_price(active, SETTINGS) if new is None else new,
        active_subscribers=active,
        changed_at=NOW,
        old_price_nanotons=old,
    )


R1, R2, R3, R4 = (uuid.UUID(int=n) for n in (1, 2, 3, 4))
CLEAN_LOG: list[tuple[str, Event]] = [
    ("payment-1", created(1, user_id=7)),
    ("payment-2", created(2, user_id=8)),
    ("payment-1", confirmed(1, tx(1), amount=3 * TON // 2)),
    ("payment-1", activated(1, user_id=7)),
    ("payment-3", created(3, user_id=7)),
    ("payment-2", expired(2)),
    (
        "payment-3",
        PaymentUnderpaid(
            payment_id=3,
            tx_hash=tx(3),
            lt=2,
            amount_nanotons=TON // 2,
            expected_nanotons=TON,
            payer="0:" + "2" * 64,
            detected_at=NOW,
        ),
    ),
    ("payment-4", created(4, user_id=8)),
    ("payment-4", expired(4)),
    (
        "payment-4",
        LatePaymentReceived(
            payment_id=4,
            tx_hash=tx(4),
            lt=3,
            amount_nanotons=2 * TON,
            payer="0:" + "3" * 64,
            detected_at=NOW,
        ),
    ),
    ("user-7", earned(R1, 7, 3 * TON // 2)),
    ("user-7", credited(R1, 7, 3 * TON // 2, after=3 * TON // 2)),
    ("user-7", earned(R2, 7, TON // 4)),
    ("user-7", credited(R2, 7, TON // 4, after=7 * TON // 4)),
    ("user-7", earned(R3, 7, TON)),
    ("user-8", earned(R4, 8, TON)),
    ("user-8", failed(R4, 8)),
    ("channel-news_channel", ChannelAdded(channel="@news_channel", added_by=7, added_at=NOW)),
    ("channel-news_channel", stats(10_000)),
    ("channel-news_channel", price(4500, None)),
    ("channel-news_channel", stats(10_001)),  # same price: no change
    ("channel-news_channel", stats(20_000)),
    ("channel-news_channel", price(9000, channel_price(4500, SETTINGS))),
]


def recorded(position: int, stream: str, event: Event) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        transaction_id=position,
        event_id=uuid.uuid4(),
        stream=stream,
        version=1,
        type=type(event).__struct_config__.tag or "",
        schema_version=1,
        event=event,
        metadata=EventMetadata(),
        recorded_at=NOW,
    )


def replay(
    log: list[tuple[str, Event]],
    *,
    user: int | None = None,
    stream: str | None = None,
    settings: Settings = SETTINGS,
) -> AuditReport:
    """Replay ``log`` at positions 1, 2, ... (no database)."""
    audit = Replay(settings, user=user, stream=stream)
    audit.apply(recorded(i, stream, event) for i, (stream, event) in enumerate(log, start=1))
    audit.finish()
    return audit.report()


def found(report: AuditReport) -> list[tuple[str, list[int]]]:
    return [(d.check, d.positions) for d in report.discrepancies]


# -- the pure replay ------------------------------------------------------------------------
def test_a_clean_log_replays_to_the_right_totals() -> None:
    report = replay(CLEAN_LOG)
    assert report.clean, report.discrepancies
    s = report.summary
    assert s.events_replayed == len(CLEAN_LOG)
    assert (s.payments_created, s.payments_pending, s.payments_confirmed) == (4, 0, 1)
    assert (s.payments_underpaid, s.payments_expired, s.payments_late) == (1, 2, 1)
    assert s.received_nanotons == 3 * TON // 2
    assert s.late_received_nanotons == TON // 2 + 2 * TON
    assert s.subscriptions_activated == 1
    assert (s.rewards_earned, s.rewards_credited, s.rewards_failed, s.rewards_pending) == (
        4,
        2,
        1,
        1,
    )
    assert s.balances_total_nanotons == s.credited_nanotons == 7 * TON // 4
    assert (s.users_with_balance, s.channels_added, s.channels_priced, s.price_changes) == (
        1,
        1,
        1,
        2,
    )
    text = render(report, "table")
    assert "TON received" in text
    assert "1.5 TON" in text
    assert text.rstrip().endswith("clean")


def test_1_a_tx_hash_confirms_one_payment_only() -> None:
    log = [
        ("payment-1", created(1)),
        ("payment-2", created(2)),
        ("payment-1", confirmed(1, tx(9))),
        ("payment-2", confirmed(2, tx(9))),
    ]
    report = replay(log)
    assert found(report) == [("tx-hash-reused", [3, 4])]
    assert "payment 1" in report.discrepancies[0].message
    assert "payment 2" in report.discrepancies[0].message


def test_2_a_payment_is_confirmed_once() -> None:
    log = [
        ("payment-1", created(1)),
        ("payment-1", confirmed(1, tx(1))),
        ("payment-1", confirmed(1, tx(2))),
    ]
    assert found(replay(log)) == [("confirmed-twice", [2, 3])]


def test_2_the_same_confirmation_twice_breaks_both_rules() -> None:
    log = [
        ("payment-1", created(1)),
        ("payment-1", confirmed(1, tx(1))),
        ("payment-1", confirmed(1, tx(1))),
    ]
    assert sorted(found(replay(log))) == [
        ("confirmed-twice", [2, 3]),
        ("tx-hash-reused", [2, 3]),
    ]


def test_3_no_confirmation_after_expiry() -> None:
    log = [
        ("payment-1", created(1)),
        ("payment-1", expired(1)),
        ("payment-1", confirmed(1, tx(1))),
    ]
    report = replay(log)
    assert found(report) == [("confirmed-after-expiry", [2, 3])]


def test_4_every_credit_matches_one_earned_reward() -> None:
    a, b, c, d, e = (uuid.uuid4() for _ in range(5))
    log = [
        ("user-1", credited(a, 1, TON, after=TON)),  # 1: never earned
        ("user-2", earned(b, 2, TON)),  # 2
        ("user-2", credited(b, 2, 2 * TON, after=2 * TON)),  # 3: another amount
        ("user-3", earned(c, 3, TON)),  # 4
        ("user-3", credited(c, 3, TON, after=TON)),  # 5
        ("user-3", credited(c, 3, TON, after=2 * TON)),  # 6: credited twice
        ("user-4", earned(d, 4, TON)),  # 7
        ("user-4", failed(d, 4)),  # 8
        ("user-4", credited(d, 4, TON, after=TON)),  # 9: failed, then credited
        ("user-5", earned(e, 5, TON)),  # 10
        ("user-5", earned(e, 5, TON)),  # 11: earned twice
    ]
    assert found(replay(log)) == [
        ("reward-mismatch", [1]),
        ("reward-mismatch", [2, 3]),
        ("reward-mismatch", [5, 6]),
        ("reward-mismatch", [8, 9]),
        ("reward-mismatch", [10, 11]),
    ]


def test_4_a_credited_reward_cannot_fail_too() -> None:
    log = [
        ("user-1", earned(R1, 1, TON)),
        ("user-1", credited(R1, 1, TON, after=TON)),
        ("user-1", failed(R1, 1)),
    ]
    assert found(replay(log)) == [("reward-mismatch", [2, 3])]


def test_5_balance_after_is_the_sum_of_the_credits() -> None:
    log = [
        ("user-1", earned(R1, 1, TON)),
        ("user-1", credited(R1, 1, TON, after=TON)),
        ("user-1", earned(R2, 1, TON)),
        ("user-1", credited(R2, 1, TON, after=5 * TON)),  # should be 2 TON
    ]
    report = replay(log)
    assert found(report) == [("balance-mismatch", [2, 4])]
    assert "2 TON" in report.discrepancies[0].message
    assert report.summary.balances_total_nanotons == 2 * TON


def test_6_prices_follow_the_stats() -> None:
    added = ChannelAdded(channel="@news_channel", added_by=7, added_at=NOW)
    right = channel_price(4500, SETTINGS)
    log: list[tuple[str, Event]] = [
        ("channel-news_channel", added),  # 1
        ("channel-news_channel", price(4500, None)),  # 2: no stats before it
        ("channel-news_channel", stats(10_000)),  # 3
        ("channel-news_channel", price(4500, right, new=right + TON)),  # 4: wrong price
        ("channel-news_channel", stats(20_000)),  # 5: calls for 9 TON ...
        ("channel-news_channel", stats(20_000, active=1)),  # 6: ... never recorded; bad share
        ("channel-news_channel", price(1, old=right)),  # 7: old price is right + 1 TON
    ]
    assert found(replay(log)) == [
        ("price-mismatch", [2]),
        ("price-mismatch", [3, 4]),
        ("price-mismatch", [5]),
        ("price-mismatch", [6]),
        ("price-mismatch", [7]),
    ]


def test_6_stats_that_call_for_a_price_need_the_change_by_the_end() -> None:
    log: list[tuple[str, Event]] = [
        ("channel-news_channel", ChannelAdded(channel="@news_channel", added_by=7, added_at=NOW)),
        ("channel-news_channel", stats(10_000)),
    ]
    assert found(replay(log)) == [("price-mismatch", [2])]


def test_6_the_audit_prices_as_the_actor_does_under_another_share() -> None:
    """Issue 19: at a share of 0.29, 2 TON per 1,000 and a 0.5 TON minimum, 2,900 subscribers
    are exactly 841 active, priced 1.682 TON rounded up to 1.69. ChannelAnalytics and the
    audit call the same functions: the audit accepts what the actor wrote, and flags what the
    float rule wrote (840 active, 1.68 TON) and a price off the rule."""
    settings = load_settings(
        {"I3LANI_ACTIVE_SHARE": "0.29", "I3LANI_PRICE_PER_1000": "2", "I3LANI_MIN_PRICE": "0.5"}
    )
    stream = "channel-news_channel"
    added = ChannelAdded(channel="@news_channel", added_by=7, added_at=NOW)
    actor = ChannelAnalytics(settings, telegram=None)
    state = actor.evolve(actor.initial_state(), recorded(1, stream, added))
    measured = ChannelMeasured(
        channel="@news_channel", subscribers=2_900, problem=None, measured_at=NOW
    )
    written = [(emit.stream, emit.event) for emit in actor.decide(state, measured)]
    new_stats, new_price = (event for _, event in written)
    assert isinstance(new_stats, ChannelStatsUpdated)
    assert isinstance(new_price, ChannelPriceChanged)
    assert (new_stats.active_subscribers, new_price.new_price_nanotons) == (841, 1_690_000_000)
    assert replay([(stream, added), *written], settings=settings).clean

    def measured_as(active: int, new: int) -> list[tuple[str, Event]]:
        return [
            (stream, added),
            (stream, msgspec.structs.replace(new_stats, active_subscribers=active)),
            (
                stream,
                msgspec.structs.replace(
                    new_price, active_subscribers=active, new_price_nanotons=new
                ),
            ),
        ]

    float_rule = replay(measured_as(840, 1_680_000_000), settings=settings)
    assert found(float_rule) == [("price-mismatch", [2])]
    assert "the active share 0.29 gives 841" in float_rule.discrepancies[0].message
    under_charged = replay(measured_as(841, 1_680_000_000), settings=settings)
    assert found(under_charged) == [("price-mismatch", [2, 3])]
    assert "give 1.69 TON" in under_charged.discrepancies[0].message
    # The audit prices with the configured settings, not the defaults: under those (45 %,
    # 1 TON per 1,000, 1 TON at least) the actor's record is the wrong one.
    assert found(replay([(stream, added), *written])) == [
        ("price-mismatch", [2]),  # 45 % of 2,900 is 1,305, not 841
        ("price-mismatch", [2, 3]),  # 841 active at 1 TON per 1,000 is 1 TON, not 1.69
    ]


def test_7_a_subscription_follows_its_confirmation_once() -> None:
    log = [
        ("payment-1", created(1)),
        ("payment-1", activated(1)),  # 2: not confirmed yet
        ("payment-1", confirmed(1, tx(1))),
        ("payment-2", created(2)),
        ("payment-2", confirmed(2, tx(2))),
        ("payment-2", activated(2)),  # 6
        ("payment-2", activated(2)),  # 7: twice
    ]
    assert found(replay(log)) == [
        ("subscription-without-payment", [2]),
        ("subscription-without-payment", [6, 7]),
    ]


def test_user_and_stream_views_show_only_what_was_asked() -> None:
    report = replay(CLEAN_LOG, user=7, stream="payment-1")
    assert report.user is not None
    assert report.user.balance_nanotons == 7 * TON // 4
    assert (report.user.rewards_earned, report.user.rewards_credited) == (3, 2)
    assert report.user.rewards_pending == 1
    assert [(p.payment_id, p.status) for p in report.user.payments] == [
        (1, "confirmed"),
        (3, "underpaid"),
    ]
    assert report.user.payments[0].tx_hash == tx(1)
    assert report.stream is not None
    assert report.stream.events == 3
    assert report.stream.payment is not None
    assert report.stream.payment.subscription_activated
    text = render(report, "table")
    assert "TON received" not in text  # the global summary is not shown
    assert "payment 1: confirmed" in text


def test_a_user_stream_shows_that_users_state() -> None:
    report = replay(CLEAN_LOG, stream="user-8")
    assert report.user is None
    assert report.stream is not None
    assert report.stream.user is not None
    assert (report.stream.user.rewards_earned, report.stream.user.rewards_failed) == (1, 1)
    assert report.stream.types == {"RewardEarned": 1, "RewardFailed": 1}


def test_parse_as_of() -> None:
    assert parse_as_of("42") == AsOf(position=42)
    assert parse_as_of("2026-11-29T10:00:00Z") == AsOf(time=NOW)
    assert parse_as_of("2026-11-29T12:00:00+02:00").time == NOW
    with pytest.raises(ValueError, match="no timezone"):
        parse_as_of("2026-11-29T10:00:00")
    with pytest.raises(ValueError, match="global position"):
        parse_as_of("yesterday")


def test_progress_is_a_line_at_most_every_second_off_a_terminal() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress(out, 1000, tty=False, clock=lambda: now[0])
    for moment, position in ((0.5, 100), (1.2, 300), (1.9, 500), (2.3, 700)):
        now[0] = moment
        bar.update(position, position)
    bar.close(1000, 1000)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "audit: 30% (300 events, 250 events/s)",
        "audit: 70% (700 events, 304 events/s)",
    ]
    assert lines[2].startswith("audit: 100%")


def test_progress_on_a_terminal_is_a_bar() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress(out, 100, tty=True, clock=lambda: now[0])
    now[0] = 1.0
    bar.update(50, 50)
    assert out.getvalue().startswith("\raudit [")
    assert "50.0%" in out.getvalue()
    assert "events/s" in out.getvalue()


# -- against PostgreSQL -----------------------------------------------------------------------
async def put(store: EventStore, log: list[tuple[str, Event]]) -> list[int]:
    """Append each event on its own; the global position of each."""
    return [(await store.append(stream, [event])).last_position for stream, event in log]


async def test_the_replay_reads_the_log_in_batches(store: EventStore) -> None:
    positions = await put(store, CLEAN_LOG)
    report = await run_audit(store, SETTINGS, batch_size=5)
    assert report.clean
    assert report.summary.events_replayed == len(CLEAN_LOG)
    assert report.summary.last_position == positions[-1]
    expected = msgspec.structs.replace(
        replay(CLEAN_LOG).summary,
        last_position=positions[-1],
        seconds=report.summary.seconds,
        events_per_second=report.summary.events_per_second,
    )
    assert report.summary == expected


async def test_violations_name_the_stored_positions(store: EventStore) -> None:
    positions = await put(
        store,
        [
            ("payment-1", created(1)),
            ("payment-1", expired(1)),
            ("payment-1", confirmed(1, tx(1))),
            ("user-1", earned(R1, 1, TON)),
            ("user-1", credited(R1, 1, TON, after=3 * TON)),
        ],
    )
    report = await run_audit(store, SETTINGS, batch_size=2)
    assert found(report) == [
        ("confirmed-after-expiry", [positions[1], positions[2]]),
        ("balance-mismatch", [positions[4]]),
    ]


async def test_as_of_a_position_stops_there(store: EventStore) -> None:
    positions = await put(store, [*CLEAN_LOG, ("payment-1", confirmed(1, tx(77)))])
    broken = await run_audit(store, SETTINGS)
    assert found(broken) == [("confirmed-twice", [positions[2], positions[-1]])]
    before = await run_audit(store, SETTINGS, as_of=AsOf(position=positions[-2]), batch_size=4)
    assert before.clean
    assert before.summary.events_replayed == len(CLEAN_LOG)
    early = await run_audit(store, SETTINGS, as_of=AsOf(position=positions[2]))
    assert early.summary.events_replayed == 3
    assert (early.summary.payments_created, early.summary.payments_confirmed) == (2, 1)
    with pytest.raises(ValueError, match="no event at that global position"):
        await run_audit(store, SETTINGS, as_of=AsOf(position=positions[-1] + 100))


# -- the command ------------------------------------------------------------------------------
async def audit_cli(
    dsn: str, env: dict[str, str], *args: str
) -> tuple[CompletedProcess[bytes], str]:
    with anyio.fail_after(40):
        result = await anyio.run_process(
            [I3LANI, "audit", *args], env={**env, "DATABASE_URL": dsn}, check=False
        )
    return result, result.stdout.decode()


def words(text: str) -> str:
    """``text`` with every run of whitespace made one space (table columns vary in width)."""
    return " ".join(text.split())


async def test_cli_clean_log_exits_0_with_a_summary(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    await put(store, CLEAN_LOG)
    result, out = await audit_cli(dsn, clean_env)
    assert result.returncode == 0, result.stderr
    assert f"audit of {len(CLEAN_LOG)} events" in out
    assert "payments confirmed 1" in words(out)
    assert "TON received 1.5 TON" in words(out)
    assert "balances total 1.75 TON" in words(out)
    assert out.rstrip().endswith("clean")


async def test_cli_lists_discrepancies_and_exits_1(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    positions = await put(
        store,
        [*CLEAN_LOG, ("payment-5", created(5, user_id=9)), ("payment-5", confirmed(5, tx(1)))],
    )
    result, out = await audit_cli(dsn, clean_env, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(out)
    assert report["clean"] is False
    assert report["discrepancies"] == [
        {
            "check": "tx-hash-reused",
            "message": f"tx {tx(1)} confirmed payment 1 (#{positions[2]}) and then payment 5 "
            f"(#{positions[-1]})",
            "positions": [positions[2], positions[-1]],
        }
    ]
    assert report["summary"]["payments_confirmed"] == 2
    # --user narrows the output, not the checks.
    result, out = await audit_cli(dsn, clean_env, "--user", "7", "--format", "json")
    assert result.returncode == 1
    report = json.loads(out)
    assert report["user"]["balance_nanotons"] == 7 * TON // 4
    assert [p["payment_id"] for p in report["user"]["payments"]] == [1, 3]
    assert len(report["discrepancies"]) == 1


async def test_cli_as_of_a_time(store: EventStore, dsn: str, clean_env: dict[str, str]) -> None:
    first = [await store.append(stream, [event]) for stream, event in CLEAN_LOG[:4]]
    await anyio.sleep(0.05)
    await put(store, CLEAN_LOG[4:])
    cut = first[-1].recorded_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    result, out = await audit_cli(dsn, clean_env, "--as-of", cut, "--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(out)["summary"]
    assert summary["events_replayed"] == 4
    assert summary["as_of"] is not None
    assert (summary["payments_created"], summary["subscriptions_activated"]) == (2, 1)


async def test_cli_as_of_a_position_and_a_stream(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    positions = await put(store, CLEAN_LOG)
    at = str(positions[19])  # the first price change
    result, out = await audit_cli(dsn, clean_env, "--as-of", at, "--stream", "channel-news_channel")
    assert result.returncode == 0, result.stderr
    assert "price 4.5 TON" in words(out)
    assert "ChannelStatsUpdated events 1" in words(out)
    result, out = await audit_cli(dsn, clean_env, "--stream", "channel-news_channel")
    assert "price 9 TON" in words(out)


async def test_cli_csv_to_a_file(
    store: EventStore, dsn: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    await put(store, CLEAN_LOG)
    target = tmp_path / "audit.csv"
    result, out = await audit_cli(dsn, clean_env, "--format", "csv", "--out", str(target))
    assert result.returncode == 0, result.stderr
    assert out == f"audit report written to {target}: clean\n"
    rows = list(csv.reader(target.read_text().splitlines()))
    assert rows[0] == ["section", "name", "value", "positions"]
    assert ["summary", "payments expired", "2", ""] in rows
    assert rows[-1] == ["result", "clean", "", ""]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yesterday", "global position"),
        ("2026-11-29T10:00:00", "no timezone"),
        ("999999", "no event at that global position"),
    ],
)
async def test_cli_bad_as_of_is_one_line_exit_2(
    store: EventStore, dsn: str, clean_env: dict[str, str], value: str, expected: str
) -> None:
    await put(store, CLEAN_LOG[:2])
    result, out = await audit_cli(dsn, clean_env, "--as-of", value)
    assert result.returncode == 2
    assert out == ""
    [message] = result.stderr.decode().splitlines()
    assert message.startswith("i3lani audit: ")
    assert expected in message


async def test_events_held_back_by_an_open_transaction_are_waited_for_or_noted(
    store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    """A committed event behind a write transaction still open elsewhere is not readable yet:
    the audit waits a little for it, and otherwise says that it was left out."""
    await put(store, CLEAN_LOG[:2])
    other = raw.transaction()
    await other.start()
    try:
        await raw.fetchval("SELECT pg_current_xact_id()")  # an open writer
        await put(store, CLEAN_LOG[2:4])
        short = await run_audit(store, SETTINGS, held_back_patience=0.2)
        assert short.summary.events_replayed == 2
        [note] = short.notes
        assert "held back" in note
        assert "note: " in render(short, "table")
        async with anyio.create_task_group() as tg:

            async def commit_soon() -> None:
                await anyio.sleep(0.3)
                await other.commit()

            tg.start_soon(commit_soon)
            waited = await run_audit(store, SETTINGS, held_back_patience=10)
        assert waited.summary.events_replayed == 4
        assert waited.notes == []
    finally:
        if raw.is_in_transaction():
            await other.rollback()
