"""Payments and subscriptions: a TON payment from creation to confirmation or expiry.

Stream: ``payment-<payment id>``. Amounts are integer nanotons.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.base import (
    Event,
    Nanotons,
    NonEmptyStr,
    PaymentId,
    PositiveNanotons,
    TelegramId,
    UtcDateTime,
)

__all__ = [
    "TxHash",
    "PaymentCreated",
    "PaymentConfirmed",
    "PaymentUnderpaid",
    "PaymentExpired",
    "LatePaymentReceived",
    "SubscriptionActivated",
    "WalletScanned",
]

TxHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
"""A TON transaction hash, 64 lowercase hex digits."""

Lt = Annotated[int, msgspec.Meta(ge=0)]


class PaymentCreated(Event, frozen=True, tag="PaymentCreated"):
    """A user asked to pay for a plan; we now wait for a transfer with this memo."""

    payment_id: PaymentId
    user_id: TelegramId
    plan: NonEmptyStr
    amount_nanotons: PositiveNanotons
    wallet: NonEmptyStr
    memo: NonEmptyStr
    created_at: UtcDateTime
    expires_at: UtcDateTime


class PaymentConfirmed(Event, frozen=True, tag="PaymentConfirmed"):
    """A transaction paid at least the expected amount before expiry."""

    payment_id: PaymentId
    tx_hash: TxHash
    lt: Lt
    amount_nanotons: PositiveNanotons
    payer: NonEmptyStr
    confirmed_at: UtcDateTime
    overpaid_nanotons: Nanotons = 0


class PaymentUnderpaid(Event, frozen=True, tag="PaymentUnderpaid"):
    """A matching transaction carried less than expected: recorded, not confirmed."""

    payment_id: PaymentId
    tx_hash: TxHash
    lt: Lt
    amount_nanotons: Nanotons
    expected_nanotons: PositiveNanotons
    payer: NonEmptyStr
    detected_at: UtcDateTime


class PaymentExpired(Event, frozen=True, tag="PaymentExpired"):
    """No sufficient transfer arrived within the payment window."""

    payment_id: PaymentId
    expired_at: UtcDateTime


class LatePaymentReceived(Event, frozen=True, tag="LatePaymentReceived"):
    """A matching transfer arrived after expiry: kept for manual review, never dropped."""

    payment_id: PaymentId
    tx_hash: TxHash
    lt: Lt
    amount_nanotons: Nanotons
    payer: NonEmptyStr
    detected_at: UtcDateTime


class SubscriptionActivated(Event, frozen=True, tag="SubscriptionActivated"):
    """The plan a confirmed payment bought is now active."""

    payment_id: PaymentId
    user_id: TelegramId
    plan: NonEmptyStr
    starts_at: UtcDateTime
    ends_at: UtcDateTime


class WalletScanned(Event, frozen=True, tag="WalletScanned"):
    """The PaymentMonitor read the wallet's transactions up to ``last_lt`` (its cursor).

    Stream ``payment-scan-<workchain>_<hash hex>``: the next scan asks TonAPI for what came
    after ``last_lt``. Recorded only when the cursor moves, in the same transaction as the
    payment events the scan decided.
    """

    wallet: NonEmptyStr
    last_lt: Lt
    transactions: Annotated[int, msgspec.Meta(ge=0)]
    scanned_at: UtcDateTime
