"""Stream names are stored: the helpers must keep spelling them exactly as before."""

from __future__ import annotations

from events import streams


def test_each_helper_spells_the_stored_name() -> None:
    assert streams.actor_stream("PaymentMonitor") == "actor-PaymentMonitor"
    assert streams.tick_stream("PaymentMonitor") == "tick-PaymentMonitor"
    assert streams.snapshot_stream("Cleanup") == "snapshot-actor-Cleanup"
    assert streams.payment_stream(42) == "payment-42"
    assert streams.payment_scan_stream("0_ab") == "payment-scan-0_ab"
    assert streams.task_stream(7) == "task-7"
    assert streams.user_stream(1001) == "user-1001"
    assert streams.member_stream(1001) == "member-1001"
    assert streams.channel_stream("@Crypto_News") == "channel-crypto_news"
    assert streams.channel_stream("-1001234") == "channel--1001234"


def test_ops_streams_are_in_the_ops_category() -> None:
    for stream in (streams.OPS_COMMANDS, streams.OPS_ALERTS, streams.OPS_HEALTH):
        assert stream.split("-", 1)[0] == streams.OPS
    assert streams.OPS_CLEANUP == "ops-cleanup"
    assert streams.OPS_COMMANDS == "ops-commands"
