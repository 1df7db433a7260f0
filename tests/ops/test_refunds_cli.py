"""``i3lani refunds`` and ``i3lani reconcile``: run in-process on a real database (their
output as a person reads it), and a few times as the console script (one-line errors, exit
codes, nothing recorded)."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from ops import reconcile, refunds
from ops.cli import build_parser
from store import EventStore
from tests.actors.test_payment_monitor import PAYER, PRICE, WALLET, WALLET_RAW
from tests.actors.test_transfers_recorded import FORGED, forge, second_payment

I3LANI = str(Path(sys.executable).parent / "i3lani")


async def run(dsn: str, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    command = refunds.refunds_command if args.command == "refunds" else reconcile.reconcile_command
    code = await command(dsn, args, out)
    return code, out.getvalue()


async def console(dsn: str, *argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    with anyio.fail_after(40):
        done = await anyio.run_process(
            [I3LANI, *argv], env={**env, "DATABASE_URL": dsn}, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_refunds_lists_what_is_owed_and_records_who_marked_it(
    store: EventStore, dsn: str
) -> None:
    async with second_payment(store) as (tonapi, refund):
        code, text = await run(dsn, "refunds")
        assert code == 0
        lines = text.splitlines()
        assert lines[0].split() == ["REFUND", "STATUS", "AMOUNT", "OWED", "FOR", "DUE", "SINCE"]
        assert lines[1].startswith(f"{refund.refund_id[:12]}  due")
        assert "1.5 TON" in lines[1]
        assert "second payment of payment 1, already paid" in lines[1]
        assert lines[2].strip() == f"to {PAYER}; send it from the wallet, then mark it refunded"
        assert lines[-1].startswith("due 1 (1.5 TON), awaiting the chain 0 (0 TON)")

        out = tonapi.send(WALLET_RAW, destination=PAYER, value=PRICE)
        code, said = await run(
            dsn, "refunds", "mark-refunded", refund.refund_id[:8], out["hash"], "--note", "app"
        )
        assert code == 0
        assert said.startswith(f"refund {refund.refund_id[:12]} (1.5 TON to {PAYER}) marked")
        assert "the next wallet scans confirm it on chain" in said
        code, text = await run(dsn, "refunds", "--format", "json")
        document = json.loads(text)
        (listed,) = document["refunds"]
        assert listed["status"] == "sent"
        assert listed["tx_hash"] == out["hash"]
        assert listed["note"] == "app"
        assert listed["marked_by"].startswith("cli:")
        assert document["totals"]["sent"] == 1


async def test_refunds_refuses_bad_input_in_one_line_and_records_nothing(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    async with second_payment(store) as (_, refund):
        head = await store.head()
        cases = [
            (["mark-refunded", "nope", "ab" * 32], 2, "a refund id is the hash"),
            (["mark-refunded", refund.refund_id, "abc"], 2, "a transaction hash is 64"),
            (["mark-refunded", "0" * 12, "ab" * 32], 1, "no refund 000000000000"),
            (["decline", refund.refund_id, "--reason", " "], 2, "say why"),
        ]
        for argv, exit_code, message in cases:
            code, out, err = await console(dsn, "refunds", *argv, env=clean_env)
            assert (code, out) == (exit_code, ""), err
            assert err.startswith(f"i3lani refunds: {message}"), err
            assert err.count("\n") == 1, err
        assert await store.head() == head
        code, _, _ = await console(
            dsn, "refunds", "decline", refund.refund_id[:8], "--reason", "kept", env=clean_env
        )
        assert code == 0
        code, _, err = await console(
            dsn, "refunds", "decline", refund.refund_id[:8], "--reason", "again", env=clean_env
        )
        assert code == 1
        assert "cannot decline refund" in err
        assert "nothing changed" in err
        code, text = await run(dsn, "refunds")
        assert "no refund is due" in text
        code, text = await run(dsn, "refunds", "--all")
        assert "declined by cli:" in text
        assert ": kept" in text


async def test_reconcile_says_clean_then_names_what_differs(
    store: EventStore, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with second_payment(store) as (tonapi, _):
        monkeypatch.setenv("TONAPI_URL", tonapi.url)
        monkeypatch.setenv("WALLET_ADDRESS", WALLET)
        code, text = await run(dsn, "reconcile")
        assert code == 0, text
        assert "TonAPI lists 2 transactions, 2 of them moving TON; the log records 2" in text
        assert "clean: every transfer TonAPI lists is recorded once" in text
        rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:5]}
        assert rows == {
            "confirmed": ["1", "1.5", "TON", "1"],
            "second-payment": ["1", "1.5", "TON", "1"],
        }
        await forge(store, tonapi)
        code, text = await run(dsn, "reconcile")
        assert code == 1
        assert "2 discrepancies:" in text
        assert f"not-on-chain     tx {FORGED}" in text
        assert "missing-from-log" in text
        code, text = await run(dsn, "reconcile", "--format", "json")
        document = json.loads(text)
        assert document["clean"] is False
        assert {d["kind"] for d in document["discrepancies"]} == {
            "not-on-chain",
            "missing-from-log",
        }
        code, text = await run(dsn, "reconcile", "--since", "1h")
        assert code == 1  # the forged range was scanned within the hour
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        code, text = await run(dsn, "reconcile", "--since", future)
        assert code == 0
        assert "nothing to reconcile" in text


async def test_reconcile_refuses_bad_arguments(dsn: str, clean_env: dict[str, str]) -> None:
    code, out, err = await console(dsn, "reconcile", "--since", "yesterday", env=clean_env)
    assert (code, out) == (2, "")
    assert err.startswith("i3lani reconcile: --since takes an ISO time with a zone")
    code, _, err = await console(dsn, "reconcile", env={**clean_env, "WALLET_ADDRESS": ""})
    assert code == 2
    assert (
        err
        == "i3lani reconcile: no wallet to reconcile: set WALLET_ADDRESS or give --wallet ADDRESS\n"
    )


def test_since_takes_an_age_or_a_time_with_a_zone() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert reconcile.parse_since("24h", now) == now - timedelta(hours=24)
    assert reconcile.parse_since("7d", now) == now - timedelta(days=7)
    assert reconcile.parse_since("2026-11-28T10:00:00Z", now) == datetime(
        2026, 11, 28, 10, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="has no timezone"):
        reconcile.parse_since("2026-11-28T10:00:00", now)
