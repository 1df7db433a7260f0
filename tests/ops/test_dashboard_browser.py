"""The live dashboard in a real headless Chromium (Debian's ``chromium``).

The page is driven through the DevTools protocol (:class:`ops.screenshot.Chromium`): its event
stream never ends, so ``--dump-dom --virtual-time-budget`` would wait forever (virtual time
stands still while a request is open), and a plain ``--dump-dom`` dumps the page before the
first event arrives. The login page, which has no stream, is dumped with ``--dump-dom``.

Without Chromium these tests are skipped, except under ``CI``, where they fail.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from events import (
    ActorCrashed,
    ActorRestarted,
    ActorStarted,
    HealthCheck,
    HealthChecked,
    PaymentConfirmed,
    PaymentCreated,
)
from ops.admin import serve_admin_app
from ops.screenshot import PHONE, READY, Chromium, find_chromium, png_size
from store import EventStore
from store.leases import Leases

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token-0123456789"
NOW = datetime.now(UTC)
WALLET = "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8"


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        reason = "Debian chromium not installed: `make browser` installs it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the dashboard's browser tests must run)")
        pytest.skip(reason)
    return found


def payment(payment_id: int, amount: int) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=7000 + payment_id,
        plan="month",
        amount_nanotons=amount,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


async def seed(store: EventStore) -> None:
    await store.append(
        "actor-PaymentMonitor",
        [
            ActorStarted(actor="PaymentMonitor", node="vm:7", generation=1, started_at=NOW),
            ActorCrashed(
                actor="PaymentMonitor",
                node="vm:7",
                generation=1,
                error_type="TonApiUnavailable",
                message="TonAPI answered 502",
                traceback_digest="abc",
                uptime_seconds=30.0,
                crashed_at=NOW,
            ),
            ActorRestarted(
                actor="PaymentMonitor",
                cause="crash",
                attempt=1,
                delay_seconds=0.5,
                restarted_at=NOW,
            ),
            ActorStarted(actor="PaymentMonitor", node="vm:7", generation=2, started_at=NOW),
        ],
    )
    await store.append(
        "actor-RewardProcessor",
        [ActorStarted(actor="RewardProcessor", node="vm:7", generation=1, started_at=NOW)],
    )
    await store.append(
        "payment-42",
        [
            payment(42, 5_440_000_000),
            PaymentConfirmed(
                payment_id=42,
                tx_hash="ab" * 32,
                lt=1042,
                amount_nanotons=5_440_000_000,
                payer="0:" + "cd" * 32,
                confirmed_at=NOW,
            ),
        ],
    )
    await store.append("payment-43", [payment(43, 1_000_000_000)])
    await store.append(
        "ops-health",
        [
            HealthChecked(
                healthy=False,
                checks=[
                    HealthCheck(name="database", ok=True, latency_ms=1.2),
                    HealthCheck(name="tonapi", ok=False, detail="TonAPI answered 502"),
                ],
                checked_at=NOW,
            )
        ],
    )


def text_of(selector: str) -> str:
    """A page expression: the trimmed text of the first element matching ``selector``."""
    return f"(document.querySelector({selector!r})?.textContent ?? '').trim()"


async def test_the_dashboard_fills_in_from_the_live_stream(
    chromium: str, store: EventStore
) -> None:
    await seed(store)
    async with Chromium.start(chromium) as browser:
        async with serve_admin_app(store, token=TOKEN) as base:
            # What the server sends holds no data: whatever the page shows, its script put there.
            async with httpx.AsyncClient(base_url=base) as http:
                raw = await http.get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
            assert raw.status_code == 200
            assert "PaymentMonitor" not in raw.text
            assert "5.44" not in raw.text

            page = await browser.new_page(1280, 900)
            await page.goto(f"{base}/dashboard?token={TOKEN}")
            await page.wait_for(READY)
            assert await page.evaluate("location.pathname + location.search") == "/dashboard"
            # The session is HttpOnly, not for scripts: they see only the CSRF token.
            cookies = await page.evaluate("document.cookie")
            assert re.fullmatch(r"i3lani_csrf=[0-9a-f]{64}", cookies), cookies
            html = await page.html()
            assert 'data-actor="PaymentMonitor"' in html
            assert 'data-actor="Cleanup"' in html
            assert (
                await page.evaluate(text_of('[data-actor="PaymentMonitor"] [data-state]'))
                == "running"
            )
            monitor_error = await page.evaluate(text_of('[data-actor="PaymentMonitor"] .error'))
            assert monitor_error.startswith("TonApiUnavailable: TonAPI answered 502")
            assert "crashed" in await page.evaluate(
                text_of('[data-actor="PaymentMonitor"] .history')
            )
            row = await page.evaluate(
                "[...document.querySelectorAll('[data-payment=\"42\"] td')]"
                ".map((td) => td.textContent.trim())"
            )
            assert row[0] == "#42"
            assert row[1] == "7042"
            assert row[3] == "5.44 TON"
            assert row[4] == "confirmed"
            assert await page.evaluate(text_of('[data-payment="43"] .badge')) == "pending"
            assert await page.evaluate(text_of("#health-verdict")) == "FAILING"
            assert await page.evaluate(text_of('[data-check="tonapi"] .badge')) == "FAIL"
            assert await page.evaluate("document.getElementById('banner').hidden") is True

            # A new event reaches the open page by itself.
            await store.append("payment-44", [payment(44, 2_500_000_000)])
            await page.wait_for("document.querySelector('[data-payment=\"44\"]') !== null")
            assert await page.evaluate(text_of('[data-payment="44"] td.num')) == "2.50 TON"

        # The server is gone: the page says so, and keeps retrying.
        await page.wait_for(
            "!document.getElementById('banner').hidden && "
            "document.getElementById('banner').textContent.includes('Connection lost')"
        )
        assert await page.evaluate("document.getElementById('conn').textContent") == "offline"


async def test_the_dashboard_at_phone_width(
    chromium: str, store: EventStore, tmp_path: Path
) -> None:
    await seed(store)
    async with (
        Chromium.start(chromium) as browser,
        serve_admin_app(store, token=TOKEN) as base,
    ):
        page = await browser.new_page(*PHONE)
        await page.goto(f"{base}/dashboard?token={TOKEN}")
        await page.wait_for(READY)
        # Cards stack and wide tables scroll inside them: the page itself never scrolls sideways.
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
        widths = await page.evaluate(
            "[...document.querySelectorAll('.card')].map((c) => c.getBoundingClientRect().width)"
        )
        assert all(width <= PHONE[0] for width in widths)
        lefts = await page.evaluate(
            "new Set([...document.querySelectorAll('.card')]"
            ".map((c) => Math.round(c.getBoundingClientRect().left))).size"
        )
        assert lefts == 1  # one column
        png = await page.screenshot()
    shot = tmp_path / "dashboard-phone.png"
    await anyio.Path(shot).write_bytes(png)
    assert await anyio.Path(shot).exists()
    assert png_size(png) == PHONE


async def test_the_dashboard_warns_of_a_suspect_lease_and_held_back_readers(
    chromium: str, store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    await seed(store)
    leases = Leases(store, "vm:7", ttl=60)
    assert await leases.acquire("PaymentMonitor") is not None
    assert await leases.acquire("RewardProcessor") is not None
    # PaymentMonitor's node stopped renewing 70 s ago; its lease has 50 s left: suspect.
    await store._pool.execute(
        "UPDATE i3lani.leases SET renewed_at = now() - interval '70 s',"
        " expires_at = now() + interval '50 s' WHERE name = 'PaymentMonitor'"
    )
    # A frozen node's write transaction, open while another node commits an event.
    await raw.execute("SET application_name = 'i3lani:vm-9:work'")
    pid = await raw.fetchval("SELECT pg_backend_pid()")
    transaction = raw.transaction()
    await transaction.start()
    try:
        await raw.fetchval("SELECT pg_current_xact_id()")
        await store.append("payment-44", [payment(44, 2_500_000_000)])
        async with (
            Chromium.start(chromium) as browser,
            serve_admin_app(store, token=TOKEN) as base,
        ):
            page = await browser.new_page(1280, 900)
            await page.goto(f"{base}/dashboard?token={TOKEN}")
            await page.wait_for(READY)
            monitor = '[data-actor="PaymentMonitor"] [data-state]'
            state = await page.evaluate(text_of(monitor))
            assert re.fullmatch(r"suspect \((7\d|8\d)s unrenewed\)", state), state
            badge = await page.evaluate(f"document.querySelector('{monitor} .badge').className")
            assert "tone-warn" in badge.split()
            assert (
                await page.evaluate(text_of('[data-actor="RewardProcessor"] [data-state]'))
                == "running"
            )
            assert "1 suspect" in await page.evaluate(text_of("#actors-summary"))

            # Another test's older writer on this server may be the one shown for a while.
            await page.wait_for(f"document.getElementById('readers').dataset.pid === '{pid}'")
            assert await page.evaluate("document.getElementById('readers').hidden") is False
            warning = await page.evaluate(text_of("#readers"))
            assert warning.startswith("Readers held back: "), warning
            assert re.search(r"\b\d+ committed events? waits? behind an open write", warning)
            assert f"pid {pid} on database " in warning
            assert "(i3lani:vm-9:work), idle in transaction for " in warning
            assert await page.evaluate("document.getElementById('banner').hidden") is True

            # Its ages go on growing on the page, with no new snapshot from the server.
            def open_for(text: str) -> int:
                found = re.search(r"open (\d+)s", text)
                assert found, text
                return int(found.group(1))

            before = open_for(warning)
            await anyio.sleep(2.2)
            assert open_for(await page.evaluate(text_of("#readers"))) >= before + 2

            await transaction.rollback()
            await page.wait_for(
                "document.getElementById('readers').hidden || "
                f"document.getElementById('readers').dataset.pid !== '{pid}'"
            )
    finally:
        if raw.is_in_transaction():
            await transaction.rollback()


async def test_without_a_token_chromium_gets_the_login_page(
    chromium: str, store: EventStore, tmp_path: Path
) -> None:
    async with serve_admin_app(store, token=TOKEN) as base:
        result = await anyio.run_process(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                f"{base}/dashboard",
            ],
            check=False,
        )
    dom = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-500:]
    assert "i3lani admin: 401" in dom
    assert 'id="login-required"' in dom
    assert "/dashboard?token=" in dom
    assert "data-actor" not in dom
