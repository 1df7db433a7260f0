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
from events.payments import RefundDue
from events.streams import payment_refund_stream
from ops.admin import serve_admin_app
from ops.screenshot import PHONE, READY, Chromium, Page, find_chromium, png_size
from store import EventStore
from store.leases import Leases
from tests.ops.test_admin_api import dead_letter

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
                    HealthCheck(
                        name="stream",
                        ok=True,
                        detail="warning: not subscribed for 90s (HTTP 429); polling every "
                        "30s confirms payments meanwhile",
                    ),
                ],
                checked_at=NOW,
            )
        ],
    )


async def logged_in(browser: Chromium, base: str, width: int = 1280, height: int = 900) -> Page:
    """A page of ``width`` x ``height`` logged in to the dashboard at ``base``, filled in."""
    page = await browser.new_page(width, height)
    await page.goto(f"{base}/dashboard?token={TOKEN}")
    await page.wait_for(READY)
    return page


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

            page = await logged_in(browser, base)
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
            assert await page.evaluate(text_of('[data-check="database"] .badge')) == "ok"
            assert await page.evaluate(text_of('[data-check="stream"] .badge')) == "warn"
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
        page = await logged_in(browser, base, *PHONE)
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
            page = await logged_in(browser, base)
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
            # The page's own one-second timer moves them (on a loaded machine a headless
            # page's timers run late: wait for the growth rather than sleep a fixed time).
            await page.wait_for(
                "(() => { const m = /open (\\d+)s/.exec("
                "document.getElementById('readers').textContent); "
                f"return m !== null && Number(m[1]) >= {before + 2}; }})()",
                within=15,
            )
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


# -- acting from the dashboard -----------------------------------------------------------------

REFUND_A, REFUND_B = "a1" * 32, "b2" * 32


async def owe(store: EventStore, refund_id: str, amount: int) -> None:
    await store.append(
        payment_refund_stream(refund_id),
        [
            RefundDue(
                refund_id=refund_id,
                wallet=WALLET,
                to="0:" + "ef" * 32,
                amount_nanotons=amount,
                category="overpaid",
                payment_id=42,
                due_at=NOW,
            )
        ],
    )


async def events_of(store: EventStore, *types: str) -> list[Any]:
    return [r async for r in store.read_all() if r.type in types]


class Operator:
    """An operator at the dashboard: clicks a button, reads and fills the dialog."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def click(self, selector: str) -> None:
        await self.page.wait_for(f"document.querySelector({selector!r}) !== null")
        await self.page.evaluate(f"document.querySelector({selector!r}).click()")

    async def asked(self) -> tuple[str, str]:
        """The open dialog's title and text."""
        await self.page.wait_for("document.getElementById('confirm').open")
        return (
            await self.page.evaluate(text_of("#confirm-title")),
            await self.page.evaluate(text_of("#confirm-text")),
        )

    async def fill(self, name: str, value: str) -> None:
        await self.page.evaluate(
            f"document.querySelector('#confirm input[name={name}]').value = {value!r}"
        )

    async def confirm(self) -> str:
        """Confirm; the notice the page then shows."""
        await self.page.evaluate("document.getElementById('notice').hidden = true")
        await self.click("#confirm-go")
        await self.page.wait_for(
            "!document.getElementById('confirm').open && !document.getElementById('notice').hidden"
        )
        return str(await self.page.evaluate(text_of("#notice")))

    async def refused(self) -> str:
        """Confirm, and the one line the dialog shows instead of closing."""
        await self.page.evaluate("document.getElementById('confirm-error').textContent = ''")
        await self.click("#confirm-go")
        await self.page.wait_for("document.getElementById('confirm-error').textContent !== ''")
        assert await self.page.evaluate("document.getElementById('confirm').open") is True
        return str(await self.page.evaluate(text_of("#confirm-error")))


async def test_an_operator_acts_from_the_dashboard_after_confirming(
    chromium: str, store: EventStore
) -> None:
    await seed(store)
    # A node runs the two seeded actors: a restart or stop is something it acts on.
    leases = Leases(store, "vm:7", ttl=60)
    assert await leases.acquire("PaymentMonitor") is not None
    assert await leases.acquire("RewardProcessor") is not None
    await dead_letter(store)
    await owe(store, REFUND_A, 1_500_000_000)
    await owe(store, REFUND_B, 250_000_000)
    async with (
        Chromium.start(chromium) as browser,
        serve_admin_app(store, token=TOKEN) as base,
    ):
        page = await logged_in(browser, base)
        operator = Operator(page)
        restart = '[data-actor="PaymentMonitor"] button[data-action="restart"]'

        # Cancelled: nothing is recorded.
        await operator.click(restart)
        assert await operator.asked() == (
            "Restart PaymentMonitor?",
            "The node running it stops it and starts it again at once.",
        )
        await operator.fill("reason", "never mind")
        await operator.click("#confirm-cancel")
        await page.wait_for("!document.getElementById('confirm').open")
        assert await events_of(store, "OperatorCommandIssued") == []

        # Confirmed: one command, recorded with who asked and why.
        await operator.click(restart)
        await operator.asked()
        await operator.fill("reason", "stuck since noon")
        said = await operator.confirm()
        [command] = await events_of(store, "OperatorCommandIssued")
        who = command.event.requested_by
        assert re.fullmatch(r"dashboard:127\.0\.0\.1/[0-9a-f]{8}", who), who
        assert (command.event.action, command.event.actor) == ("restart", "PaymentMonitor")
        assert command.event.reason == "stuck since noon"
        assert command.metadata.caused_by == who
        assert said.startswith("restart PaymentMonitor: requested (command ")
        assert said.endswith(f"by {who}")

        # Stop and start: the buttons follow the actor's state.
        await operator.click('[data-actor="RewardProcessor"] button[data-action="stop"]')
        assert (await operator.asked())[0] == "Stop RewardProcessor?"
        assert (await operator.confirm()).startswith("stop RewardProcessor: requested")
        # Cleanup was never started and is not stopped: the page says there is nothing to
        # start, and nothing is recorded (actors.control.command_outlook, rule 5).
        await operator.click('[data-actor="Cleanup"] button[data-action="start"]')
        assert (await operator.asked())[0] == "Start Cleanup?"
        assert (await operator.confirm()).startswith("Cleanup is not stopped (never started)")
        commands = await events_of(store, "OperatorCommandIssued")
        assert [(c.event.action, c.event.actor) for c in commands[1:]] == [
            ("stop", "RewardProcessor"),
        ]
        assert {c.event.requested_by for c in commands} == {who}

        # A dead letter retried.
        await operator.click("button[data-act='retry']")
        title, text = await operator.asked()
        assert title.startswith("Retry task ")
        assert "Fix what made it fail first." in text
        assert (await operator.confirm()).endswith(f"requeued by {who}")
        [requeued] = await events_of(store, "TaskRequeued")
        assert requeued.event.requested_by == who

        # A refund declined: the reason is required, and recorded.
        decline = f"[data-refund='{REFUND_A}'] button[data-act='decline']"
        await operator.click(decline)
        title, text = await operator.asked()
        assert title == f"Decline refund {REFUND_A[:12]}?"
        assert text.startswith("1.50 TON owed to 0:efef")
        assert await operator.refused() == "reason is required"
        await operator.fill("reason", "the sender asked us to keep it")
        assert (await operator.confirm()) == f"refund {REFUND_A[:12]} declined by {who}"
        [declined] = await events_of(store, "RefundDeclined")
        assert declined.event.requested_by == who
        assert declined.event.reason == "the sender asked us to keep it"

        # A refund marked sent: a malformed hash is the server's one line, in the dialog.
        await operator.click(f"[data-refund='{REFUND_B}'] button[data-act='refunded']")
        assert "the worker never sends TON" in (await operator.asked())[1]
        await operator.fill("tx_hash", "not-a-hash")
        problem = await operator.refused()
        assert "hash" in problem
        assert "\n" not in problem
        assert await events_of(store, "RefundSent") == []
        await operator.fill("tx_hash", "cd" * 32)
        assert (await operator.confirm()).endswith("awaiting the chain")
        [sent] = await events_of(store, "RefundSent")
        assert (sent.event.tx_hash, sent.event.requested_by) == ("cd" * 32, who)
        await page.wait_for(f"document.querySelector(\"[data-refund='{REFUND_A}']\") === null")
        assert (
            await page.evaluate(
                f"document.querySelectorAll(\"[data-refund='{REFUND_B}'] button\").length"
            )
            == 0
        )  # sent, awaiting the chain: nothing to do


async def test_a_page_of_another_site_cannot_act_with_the_session(
    chromium: str, store: EventStore
) -> None:
    """A write with the session but without the page's CSRF token, or from a page of another
    origin, records nothing."""
    await seed(store)
    async with (
        Chromium.start(chromium) as browser,
        serve_admin_app(store, token=TOKEN) as base,
        serve_admin_app(store, token=TOKEN + "-other") as other,
    ):
        page = await logged_in(browser, base)
        # The same session, from the right origin but without the CSRF header: refused.
        status = await page.evaluate(
            "fetch('/api/actors/PaymentMonitor/restart', {method: 'POST', "
            "credentials: 'same-origin', body: '{}'}).then((r) => r.status)"
        )
        assert status == 403
        # A page of another origin posting to this one. Another port is the same *site*, so
        # SameSite lets the cookie go along: the Origin check and the CSRF token refuse it.
        await page.goto(f"{other}/healthz")
        status = await page.evaluate(
            f"fetch('{base}/api/actors/PaymentMonitor/restart', {{method: 'POST', "
            "mode: 'no-cors', credentials: 'include', body: '{}'})"
            ".then(() => 'sent', () => 'failed')"
        )
        assert status == "sent"  # answered (opaquely): the server has dealt with it
        assert await events_of(store, "OperatorCommandIssued") == []
