"""Payment notices: the follower of ``payment-*`` tells each payment's user what became of it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from aiogram import Bot

from actors.telegram import TelegramClient
from bot_gateway import NOTIFIER_CHECKPOINT, run_notifier
from events import (
    LatePaymentReceived,
    PaymentConfirmed,
    PaymentExpired,
    PaymentUnderpaid,
    SubscriptionActivated,
)
from ops.standins import BotApiStandIn
from store import EventStore
from tests.bot_gateway.conftest import Telegram
from tests.waiting import eventually

TON = 1_000_000_000
PAYER = "0:" + "c" * 64


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@pytest.fixture
async def notifier(store: EventStore, bot: Bot) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_notifier(
                store,
                TelegramClient(bot, sleep=no_sleep),
                poll_interval=0.1,
                retry_delay=0.01,
                task_status=task_status,
            )
        )
        yield
        tg.cancel_scope.cancel()


async def texts_to(bot_api: BotApiStandIn, chat_id: int, count: int) -> list[str]:
    async def arrived() -> bool:
        return len([m for m in bot_api.sent if m.chat_id == chat_id]) >= count

    await eventually(arrived)
    return [m.text for m in bot_api.sent if m.chat_id == chat_id]


async def test_the_user_is_told_when_the_payment_is_confirmed(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, notifier: None
) -> None:
    await telegram.say(5, "/subscribe week")
    now = datetime.now(UTC)
    await store.append(
        "payment-1",
        [
            PaymentConfirmed(
                payment_id=1,
                tx_hash="ab" * 32,
                lt=47_587_000_000_001,
                amount_nanotons=TON,
                payer=PAYER,
                confirmed_at=now,
            ),
            SubscriptionActivated(payment_id=1, user_id=5, plan="week", starts_at=now, ends_at=now),
        ],
    )
    texts = await texts_to(bot_api, 5, 3)
    assert texts[1] == "Payment #1 is confirmed: 1 TON received. Thank you!"
    assert texts[2].startswith("Your week plan is active until")

    # The notices go out before the follower commits its checkpoint past them, so the
    # checkpoint catches up with the head a moment after the last notice arrives.
    async def checkpointed() -> bool:
        return await store.load_checkpoint(NOTIFIER_CHECKPOINT) == await store.head()

    await eventually(checkpointed)


async def test_underpaid_and_expired_payments_are_told_too(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, notifier: None
) -> None:
    await telegram.say(5, "/subscribe week")
    await telegram.say(6, "/subscribe month")
    now = datetime.now(UTC)
    await store.append(
        "payment-1",
        [
            PaymentUnderpaid(
                payment_id=1,
                tx_hash="cd" * 32,
                lt=47_587_000_000_002,
                amount_nanotons=TON // 2,
                expected_nanotons=TON,
                payer=PAYER,
                detected_at=now,
            )
        ],
    )
    await store.append("payment-2", [PaymentExpired(payment_id=2, expired_at=now)])
    [_, underpaid] = await texts_to(bot_api, 5, 2)
    assert "Payment #1 is underpaid: 0.5 TON arrived, 1 TON is due" in underpaid
    [_, expired] = await texts_to(bot_api, 6, 2)
    assert "Payment #2 (month) expired" in expired


async def test_a_restarted_notifier_resumes_after_its_checkpoint(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, bot: Bot
) -> None:
    """Nothing sent twice across a restart; what happened while it was down is still told."""
    await telegram.say(5, "/subscribe week")
    await telegram.say(5, "/subscribe week")
    now = datetime.now(UTC)
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_notifier(
                store, TelegramClient(bot), poll_interval=0.1, task_status=task_status
            )
        )
        await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=now)])
        await texts_to(bot_api, 5, 3)

        async def saved() -> bool:
            return await store.load_checkpoint(NOTIFIER_CHECKPOINT) == await store.head()

        await eventually(saved)
        tg.cancel_scope.cancel()
    await store.append("payment-2", [PaymentExpired(payment_id=2, expired_at=now)])
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_notifier(
                store, TelegramClient(bot), poll_interval=0.1, task_status=task_status
            )
        )
        texts = await texts_to(bot_api, 5, 4)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    notices = [t for t in bot_api.sent if t.chat_id == 5 and "expired" in t.text]
    assert [n.text.split()[1] for n in notices] == ["#1", "#2"]
    assert len(texts) == 4


async def test_a_user_who_blocked_the_bot_does_not_stop_the_others(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, notifier: None
) -> None:
    await telegram.say(5, "/subscribe week")
    await telegram.say(6, "/subscribe week")
    bot_api.fail_chat(5, 403, "Forbidden: bot was blocked by the user")
    now = datetime.now(UTC)
    await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=now)])
    await store.append("payment-2", [PaymentExpired(payment_id=2, expired_at=now)])
    [_, expired] = await texts_to(bot_api, 6, 2)
    assert "Payment #2" in expired
    assert len([m for m in bot_api.sent if m.chat_id == 5]) == 1  # only the /subscribe reply


async def test_a_notice_the_bot_api_cannot_take_for_now_is_sent_once_it_can(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, notifier: None
) -> None:
    # Found by the simulation: three 5xx in a row used to drop the notice for good.
    await telegram.say(5, "/subscribe week")
    bot_api.fail("sendMessage", "500", times=7)  # more than one delivery's three attempts
    now = datetime.now(UTC)
    await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=now)])
    [_, expired] = await texts_to(bot_api, 5, 2)
    assert "Payment #1" in expired

    async def checkpointed() -> bool:
        return await store.load_checkpoint(NOTIFIER_CHECKPOINT) == await store.head()

    await eventually(checkpointed)


async def test_confirmed_underpaid_and_late_notices_go_out_within_the_second(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, bot: Bot
) -> None:
    """At the gateway's own settings (its poll interval of a second is only the fallback):
    the append's notification wakes the notifier, so each notice follows its event at once."""
    for user in (5, 6, 7):
        await telegram.say(user, "/subscribe week")
    async with anyio.create_task_group() as tg:
        await tg.start(run_notifier, store, TelegramClient(bot))
        now = datetime.now(UTC)
        events = {
            5: PaymentConfirmed(
                payment_id=1,
                tx_hash="ab" * 32,
                lt=47_587_000_000_001,
                amount_nanotons=TON,
                payer=PAYER,
                confirmed_at=now,
            ),
            6: PaymentUnderpaid(
                payment_id=2,
                tx_hash="cd" * 32,
                lt=47_587_000_000_002,
                amount_nanotons=TON // 2,
                expected_nanotons=TON,
                payer=PAYER,
                detected_at=now,
            ),
            7: LatePaymentReceived(
                payment_id=3,
                tx_hash="ef" * 32,
                lt=47_587_000_000_003,
                amount_nanotons=TON,
                payer=PAYER,
                detected_at=now,
            ),
        }
        for user, event in events.items():
            await anyio.sleep(0.3)  # apart: each notice timed on its own
            appended = time.monotonic()
            await store.append(f"payment-{event.payment_id}", [event])
            [_, text] = await texts_to(bot_api, user, 2)
            took = time.monotonic() - appended
            assert f"#{event.payment_id}" in text
            assert took < 1.0, f"{type(event).__name__}'s notice took {took:.2f}s"
        tg.cancel_scope.cancel()


async def test_one_chat_under_flood_control_holds_back_no_one_else(
    telegram: Telegram, store: EventStore, bot_api: BotApiStandIn, bot: Bot
) -> None:
    """Each user's notices have a lane of their own: a flood wait on one chat (Telegram's
    one message a second per chat) leaves the next user's confirmation on time."""
    await telegram.say(5, "/subscribe week")
    await telegram.say(6, "/subscribe week")
    bot_api.fail_chat(5, 429, "Too Many Requests: retry after 2", retry_after=2, times=1)
    async with anyio.create_task_group() as tg:
        await tg.start(run_notifier, store, TelegramClient(bot))
        now = datetime.now(UTC)
        await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=now)])
        appended = time.monotonic()
        await store.append(
            "payment-2",
            [
                PaymentConfirmed(
                    payment_id=2,
                    tx_hash="ab" * 32,
                    lt=47_587_000_000_001,
                    amount_nanotons=TON,
                    payer=PAYER,
                    confirmed_at=now,
                )
            ],
        )
        [_, confirmed] = await texts_to(bot_api, 6, 2)
        assert "Payment #2 is confirmed" in confirmed
        assert time.monotonic() - appended < 1.0  # not behind user 5's two-second wait
        [_, expired] = await texts_to(bot_api, 5, 2)  # user 5's, once the wait is over
        assert "Payment #1" in expired

        async def checkpointed() -> bool:
            return await store.load_checkpoint(NOTIFIER_CHECKPOINT) == await store.head()

        await eventually(checkpointed)
        tg.cancel_scope.cancel()
    assert len([m for m in bot_api.sent if m.chat_id == 6]) == 2  # nothing sent twice
