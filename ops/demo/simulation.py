"""The simulated users at work: real Telegram ``Update`` JSON posted to the webhook, and
payments on the simulated chain with the ``ton://transfer`` link of the bot's reply; and an
operator who sends back what a second payment left owing, through the admin API.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import httpx

from actors.config import Settings
from actors.ton import payment_id_from_comment
from ops.demo.narration import Console, StreamView, short, short_wallet, ton
from ops.demo.scenario import LATE_MARGIN, REFUND_AFTER, FaultSwitch, Scenario, SimUser
from ops.standins import BotApiStandIn, TonApiStandIn

_SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
REFUND_PATIENCE: Final = 15.0
"""Seconds the operator keeps looking for the refund a second payment is owed (wall clock,
whatever the speed) before saying none is due yet."""


# -- the simulated users ------------------------------------------------------------------------
@dataclass(frozen=True)
class DoublePayment:
    """A payment the demo paid twice: which transfer came first, which second."""

    payment_id: int
    user_id: int
    first_tx: str
    second_tx: str
    second_lt: int


@dataclass(frozen=True)
class _Link:
    wallet: str
    amount: int
    memo: str
    payment_id: int


def _payment_link(reply: str) -> _Link | None:
    """The ``ton://transfer/<address>?amount=<nanotons>&text=<memo>`` link in a reply."""
    match = re.search(r"ton://transfer/(\S+)", reply)
    if match is None:
        return None
    parts = urlsplit(f"ton://transfer/{match[1]}")
    query = parse_qs(parts.query)
    try:
        address = unquote(parts.path.removeprefix("/"))
        amount = int(query["amount"][0])
        memo = query["text"][0]
    except (KeyError, IndexError, ValueError):
        return None
    payment_id = payment_id_from_comment(memo)
    if payment_id is None:
        return None
    return _Link(address, amount, memo, payment_id)


class Simulation:
    """The simulated users: Telegram updates to the webhook, transfers on the chain."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        speed: float,
        settings: Settings,
        console: Console,
        view: StreamView,
        client: httpx.AsyncClient,
        webhook_path: str,
        secret: str,
        tonapi: TonApiStandIn,
        bot_api: BotApiStandIn,
        switch: FaultSwitch,
        admin_token: str,
    ) -> None:
        self.scenario = scenario
        self.speed = speed
        self.settings = settings
        self.console = console
        self.view = view
        self.client = client
        self.webhook_path = webhook_path
        self.secret = secret
        self.tonapi = tonapi
        self.bot_api = bot_api
        self.switch = switch
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.started_at = anyio.current_time()
        self.registered = {user.user_id: anyio.Event() for user in scenario.users}
        self.doubles: list[DoublePayment] = []
        self.done = False
        self._update_ids = itertools.count(1)

    async def run(self) -> None:
        self.started_at = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fault)
            for user in self.scenario.users:
                tg.start_soon(self._user, user)
                if user.channel is not None and user.channel_public_at is not None:
                    tg.start_soon(self._publish, user, user.channel, user.channel_public_at)
        await self._at(self.scenario.end_at)
        self.done = True

    async def _at(self, demo_seconds: float) -> None:
        await anyio.sleep_until(self.started_at + demo_seconds / self.speed)

    async def _fault(self) -> None:
        await self._at(self.scenario.crash_at)
        self.console.act(
            "demo",
            "arming a fault: PaymentMonitor's next tick raises an exception, as a bug would",
        )
        self.switch.arm()

    async def _user(self, user: SimUser) -> None:
        await self._at(user.arrive_at)
        start = "/start"
        if user.referrer is not None:
            await self.registered[user.referrer].wait()  # a friend shares their link once in
            start = f"/start ref_{user.referrer}"
        await self._say(user, start, expect="")
        self.registered[user.user_id].set()
        if user.channel is not None:
            await self._at(user.channel_at)
            if user.channel_public_at is None:
                self.bot_api.set_member_count(user.channel, user.channel_members)
            await self._say(user, f"/addchannel {user.channel}", expect="")
        await self._at(user.subscribe_at)
        reply = await self._say(user, f"/subscribe {user.plan}", expect="ton://transfer/")
        link = _payment_link(reply)
        if link is None:
            self.console.note(f"user {user.user_id} got no payment link: {reply[:80]!r}", "warn")
        else:
            await self._pay(user, link)
        await self._at(user.balance_at)
        balance = await self._say(user, "/balance", expect="balance")
        if balance:
            self.console.line(datetime.now(UTC), f"user {user.user_id}", f"bot: {balance}")

    async def _publish(self, user: SimUser, channel: str, at: float) -> None:
        await self._at(at)
        self.console.act(
            f"user {user.user_id}", f"makes {channel} public: the bot can count it now"
        )
        self.bot_api.set_member_count(channel, user.channel_members)

    async def _pay(self, user: SimUser, link: _Link) -> None:
        if user.role == "abandon":
            self.console.act(
                f"user {user.user_id}", f"will not pay payment {link.payment_id}: it will expire"
            )
            return
        if user.role == "late":
            # The window, from the reply, plus a margin the chain's whole-second utime needs.
            wait = self.settings.payment_window + max(LATE_MARGIN / self.speed, 1.5)
        else:
            wait = user.pay_after / self.speed
        await anyio.sleep(wait)
        value = link.amount * user.amount_percent // 100
        what = {
            "late": f"pays {ton(value)} for payment {link.payment_id}, after it expired",
            "underpay": f"pays {ton(value)} of {ton(link.amount)} for payment {link.payment_id}",
            "overpay": f"pays {ton(value)} for payment {link.payment_id} ({ton(link.amount)} "
            "asked)",
        }.get(user.role, f"pays {ton(value)} to {short_wallet(link.wallet)} with memo {link.memo}")
        self._transfer(user, link, value, user.tx_hashes[0], what)
        if user.second_pay_after is None:
            return
        await anyio.sleep(user.second_pay_after / self.speed)
        second = self._transfer(
            user,
            link,
            value,
            user.tx_hashes[1],
            f"pays payment {link.payment_id} AGAIN: {ton(value)}, same memo",
        )
        self.doubles.append(
            DoublePayment(
                payment_id=link.payment_id,
                user_id=user.user_id,
                first_tx=user.tx_hashes[0],
                second_tx=user.tx_hashes[1],
                second_lt=second,
            )
        )
        await anyio.sleep(REFUND_AFTER / self.speed)
        await self._refund(link.wallet, link.payment_id)

    async def _refund(self, wallet: str, payment_id: int) -> None:
        """The operator's round: the refunds the log says are due (``GET /api/refunds``); the
        one for a second payment of ``payment_id`` is sent back from the wallet (on the
        simulated chain: the worker holds no key) and marked refunded with the transaction's
        hash (``POST /api/refunds/{id}/refunded``). The next wallet scan confirms it."""
        owed: list[dict[str, Any]] = []
        # The scan that records the second payment may still be coming: a few scans later on
        # a busy machine, or once the crashed PaymentMonitor is back.
        give_up_at = anyio.current_time() + max(5 * self.settings.payment_interval, REFUND_PATIENCE)
        while True:
            try:
                listed = await self.client.get("/api/refunds", headers=self.admin)
                owed = [
                    r
                    for r in listed.json()["refunds"]
                    if r["category"] == "second-payment" and r["payment_id"] == payment_id
                ]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self.console.note(f"the operator could not list the refunds: {exc}", "warn")
                return
            if owed or anyio.current_time() >= give_up_at:
                break
            await anyio.sleep(self.settings.payment_interval)
        if not owed:
            self.console.note(f"no refund is due for payment {payment_id} yet", "warn")
            return
        refund = owed[0]
        short_id = refund["refund_id"][:12]
        self.console.act(
            "operator",
            f"sends the {ton(refund['amount_nanotons'])} owed for payment {payment_id}'s "
            f"second payment back to {short_wallet(refund['to'])}, from the wallet app",
        )
        tx = self.tonapi.send(wallet, destination=refund["to"], value=refund["amount_nanotons"])
        self.console.act(
            "operator", f"marks refund {short_id} refunded with tx {short(tx['hash'])} (admin API)"
        )
        answer = await self.client.post(
            f"/api/refunds/{short_id}/refunded",
            json={"tx_hash": tx["hash"], "note": "sent back from the wallet app"},
            headers=self.admin,
        )
        if answer.status_code != 200:
            self.console.note(f"the admin API refused the mark: {answer.text[:200]}", "warn")

    def _transfer(self, user: SimUser, link: _Link, value: int, tx_hash: str, what: str) -> int:
        self.console.act(f"user {user.user_id}", f"{what} (tx {short(tx_hash)})")
        tx = self.tonapi.transfer(
            link.wallet, source=user.wallet, value=value, comment=link.memo, tx_hash=tx_hash
        )
        return int(tx["lt"])

    async def _say(self, user: SimUser, text: str, *, expect: str) -> str:
        """Post ``text`` from ``user`` as Telegram would; the bot's reply containing ``expect``
        (the bot replies before the webhook answers)."""
        self.console.act(f"user {user.user_id}", text)
        before = len(self.bot_api.sent)
        try:
            response = await self.client.post(
                self.webhook_path,
                json=self._update(user, text),
                headers={_SECRET_HEADER: self.secret},
            )
        except httpx.HTTPError as exc:
            self.console.note(f"the webhook did not answer user {user.user_id}: {exc}", "warn")
            return ""
        if response.status_code != 200:
            self.console.note(
                f"the webhook answered {response.status_code} to user {user.user_id}", "warn"
            )
            return ""
        replies = [
            m.text
            for m in self.bot_api.sent[before:]
            if m.chat_id == user.user_id and expect in m.text
        ]
        return replies[0] if replies else ""

    def _update(self, user: SimUser, text: str) -> dict[str, Any]:
        """A Telegram Update carrying a private message, shaped as Telegram sends it."""
        update_id = next(self._update_ids)
        sender = {
            "id": user.user_id,
            "is_bot": False,
            "first_name": user.username.capitalize(),
            "username": user.username,
            "language_code": "en",
        }
        message: dict[str, Any] = {
            "message_id": update_id,
            "from": sender,
            "chat": {"id": user.user_id, "first_name": sender["first_name"], "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        command = text.split(maxsplit=1)[0]
        message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
        return {"update_id": update_id, "message": message}
