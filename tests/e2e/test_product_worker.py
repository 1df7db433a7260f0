"""``i3lani run`` with the product's five actors, as a real process, against the TonAPI and
Bot API stand-ins: payments confirmed, rewards credited, channels priced, health watched and
the admins alerted when TonAPI fails and when it recovers; ``i3lani status`` shows it all."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from actors.catalog import PRODUCT_ACTORS
from actors.channel_analytics import channel_stream
from actors.health import ALERTS_STREAM
from actors.ton import Address, memo_for
from events import (
    AlertRaised,
    ChannelAdded,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
)
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore
from tests.e2e.processes import i3lani, running_workers, wait_for

pytestmark = pytest.mark.slow

WALLET = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"  # non-bounceable form on purpose
PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
ADMIN = 4242
PRICE = 2_000_000_000


@pytest.fixture
def env(dsn: str, clean_env: dict[str, str]) -> dict[str, str]:
    return {
        **clean_env,
        "DATABASE_URL": dsn,
        "WALLET_ADDRESS": WALLET,
        "ADMIN_IDS": str(ADMIN),
        "I3LANI_PAYMENT_INTERVAL": "0.5",
        "I3LANI_REWARD_INTERVAL": "0.5",
        "I3LANI_ANALYTICS_INTERVAL": "1",
        "I3LANI_HEALTH_INTERVAL": "1",
        "I3LANI_TASK_RETRY_DELAY": "0.2",
    }


async def test_the_five_actors_do_their_work(env: dict[str, str], store: EventStore) -> None:
    async with TonApiStandIn() as tonapi, BotApiStandIn() as bot_api:
        env = {
            **env,
            "TONAPI_URL": tonapi.url,
            "TELEGRAM_API_URL": bot_api.url,
            "BOT_TOKEN": bot_api.token,
        }
        now = datetime.now(UTC)
        for payment_id in (1, 2):
            await store.append(
                f"payment-{payment_id}",
                [
                    PaymentCreated(
                        payment_id=payment_id,
                        user_id=10 + payment_id,
                        plan="month",
                        amount_nanotons=PRICE,
                        wallet=WALLET,
                        memo=memo_for(payment_id),
                        created_at=now,
                        expires_at=now + timedelta(hours=1),
                    )
                ],
            )
        tonapi.transfer(
            Address.parse(WALLET).to_raw(), source=PAYER, value=PRICE, comment=memo_for(1)
        )
        rewards = [uuid.uuid4() for _ in range(3)]
        for reward_id in rewards:
            await store.append(
                "user-11",
                [
                    RewardEarned(
                        reward_id=reward_id,
                        user_id=11,
                        amount_nanotons=100_000_000,
                        reason="referral",
                        source="user:12",
                        earned_at=now,
                    )
                ],
            )
        bot_api.set_member_count("@ton_news", 20_000)
        await store.append(
            channel_stream("@ton_news"),
            [ChannelAdded(channel="@ton_news", added_by=11, added_at=now)],
        )

        async with running_workers(env) as workers:
            worker = await workers.start("node-a", ",".join(PRODUCT_ACTORS))

            async def confirmed() -> bool:
                types = [r.type for r in await store.read_stream("payment-1")]
                return "SubscriptionActivated" in types

            await wait_for(confirmed, 20, "payment 1 confirmed")

            async def credited() -> int | None:
                events = await store.read_stream("user-11")
                done = [r for r in events if isinstance(r.event, RewardCredited)]
                return len(done) if len(done) == len(rewards) else None

            await wait_for(credited, 20, "the three rewards credited")

            async def priced() -> bool:
                types = [r.type for r in await store.read_stream(channel_stream("@ton_news"))]
                return "ChannelPriceChanged" in types

            await wait_for(priced, 20, "@ton_news priced")

            # TonAPI goes down: health fails and the admin hears it once; then it recovers.
            tonapi.fail("500", times=None)

            async def alerted(subject: str) -> bool:
                raised = [
                    r.event
                    for r in await store.read_stream(ALERTS_STREAM)
                    if isinstance(r.event, AlertRaised)
                ]
                return any(a.subject == subject for a in raised) and any(
                    subject.upper() in m.text for m in bot_api.sent if m.chat_id == ADMIN
                )

            async def failing() -> bool:
                return await alerted("failing")

            await wait_for(failing, 30, "admins alerted: failing")
            tonapi.heal()

            async def recovered() -> bool:
                return await alerted("recovered")

            await wait_for(recovered, 30, "admins alerted: recovered")

            status = await i3lani(env, "status")
            assert status.returncode == 0, status.stderr.decode()
            table = status.stdout.decode()
            for name in PRODUCT_ACTORS:
                line = next(row for row in table.splitlines() if row.startswith(name))
                assert "running" in line, table
            assert "TASKS: none queued, running or dead" in table, table  # all work done

            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            code = await worker.exited(30)
            assert code == 0, worker.output()
            assert time.monotonic() - started < 30

        credits = [
            r.event
            for r in await store.read_stream("user-11")
            if isinstance(r.event, RewardCredited)
        ]
        assert sorted(c.reward_id for c in credits) == sorted(rewards)
        assert [r.type for r in await store.read_stream("payment-2")] == ["PaymentCreated"]
        # Alerts come on changes only: failing and recovered alternate, each delivered once.
        # (On a loaded machine a slow database round trip can make a second, real failing
        # period; what may never happen is an alert per check or one delivered twice.)
        raised = [
            r.event.subject
            for r in await store.read_stream(ALERTS_STREAM)
            if isinstance(r.event, AlertRaised)
        ]
        assert raised[:2] == ["failing", "recovered"], raised
        assert all(a != b for a, b in itertools.pairwise(raised)), raised
        alerts_sent = [m for m in bot_api.sent if m.chat_id == ADMIN]
        assert sum("FAILING" in m.text for m in alerts_sent) == raised.count("failing")
        assert sum("RECOVERED" in m.text for m in alerts_sent) == raised.count("recovered")
