"""Payments and subscriptions: a TON payment from creation to confirmation or expiry; every
transfer a watched wallet receives or sends; the refunds owed back.

Streams: ``payment-<payment id>`` (one payment), ``payment-scan-<workchain>_<hash hex>`` (what
scanning one wallet found: each transfer once, and the cursor), ``payment-refund-<tx hash>``
(the money one incoming transfer left owing, and what became of it). Amounts are integer
nanotons.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

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
    "TransferCategory",
    "TRANSFER_CATEGORIES",
    "TransferReceived",
    "SentMessage",
    "TransferSent",
    "TransfersReconciled",
    "RefundDue",
    "RefundSent",
    "RefundConfirmed",
    "RefundUnconfirmed",
    "RefundDeclined",
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
    from_lt: Lt | None = None
    """The cursor this scan read after (0: from the wallet's first transaction). Every
    transaction in ``(from_lt, last_lt]`` is recorded in this stream as a ``TransferReceived``
    or ``TransferSent`` (or is no transfer at all); ``None`` on scans recorded before transfers
    were (those ranges are not reconciled)."""


TransferCategory = Literal[
    "confirmed",
    "overpaid",
    "underpaid",
    "second-payment",
    "late",
    "unknown-memo",
    "no-memo",
    "ignored",
]
"""What an incoming transfer was, for the books:

* ``confirmed``: it paid a payment, exactly;
* ``overpaid``: it paid a payment, with a surplus owed back;
* ``underpaid``: less than the price, in time: not confirmed, owed back whole;
* ``second-payment``: for a payment already paid: owed back whole;
* ``late``: after the payment expired: kept for review, owed back whole unless honoured;
* ``unknown-memo``: a comment that names no payment of this wallet: owed back whole;
* ``no-memo``: a plain transfer without a comment: owed back whole;
* ``ignored``: bounced, aborted, failed, not TON (a jetton notification, an encrypted
  comment...): nothing is owed by rule; ``reason`` says why (an ``IgnoreReason`` code).
"""

TRANSFER_CATEGORIES: Final[tuple[TransferCategory, ...]] = (
    "confirmed",
    "overpaid",
    "underpaid",
    "second-payment",
    "late",
    "unknown-memo",
    "no-memo",
    "ignored",
)

ShortText = Annotated[str, msgspec.Meta(max_length=200)]


class TransferReceived(Event, frozen=True, tag="TransferReceived"):
    """One incoming transfer to a watched wallet, recorded once whatever it matched.

    Stream ``payment-scan-<wallet>``, event id derived from the transaction hash, so a rescan,
    a retried commit or a second node never records it twice. Where its nanotons went:
    ``kept_nanotons`` paid a payment, ``refund_nanotons`` are owed back (a ``RefundDue`` with
    that amount), and the rest of ``amount_nanotons`` (all of an ``ignored`` transfer) is
    neither, for an operator to look at.
    """

    wallet: NonEmptyStr  # raw form
    tx_hash: TxHash
    lt: Lt
    received_at: UtcDateTime  # the chain's time (the transaction's utime)
    amount_nanotons: Nanotons
    payer: str  # the sender, raw form; "" when TonAPI gave none that parses
    category: TransferCategory
    detected_at: UtcDateTime
    payment_id: PaymentId | None = None
    kept_nanotons: Nanotons = 0
    refund_nanotons: Nanotons = 0
    reason: ShortText = ""  # the matching rule's code (actors.payments.IgnoreReason) if any
    memo: ShortText = ""  # the comment as sent (cut short, unprintable characters replaced)


class SentMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message an outgoing transaction of ours carried: to whom, how much."""

    destination: NonEmptyStr  # raw form
    amount_nanotons: Nanotons


class TransferSent(Event, frozen=True, tag="TransferSent"):
    """An outgoing transaction of a watched wallet (a refund an operator sent from it).

    Stream ``payment-scan-<wallet>``, event id derived from the transaction hash. The worker
    never sends TON: this only records what the wallet's owner sent.
    """

    wallet: NonEmptyStr
    tx_hash: TxHash
    lt: Lt
    sent_at: UtcDateTime  # the chain's time
    messages: list[SentMessage]
    detected_at: UtcDateTime
    success: bool = True


class TransfersReconciled(Event, frozen=True, tag="TransfersReconciled"):
    """The wallet's transactions in ``(from_lt, to_lt]`` as TonAPI lists them were compared
    with the transfers recorded for them (stream ``payment-scan-<wallet>``, by Cleanup's daily
    run). ``tx_hashes`` names the transactions of the discrepancies (the first 50)."""

    wallet: NonEmptyStr
    from_lt: Lt
    to_lt: Lt
    transactions: Annotated[int, msgspec.Meta(ge=0)]
    recorded: Annotated[int, msgspec.Meta(ge=0)]
    discrepancies: Annotated[int, msgspec.Meta(ge=0)]
    reconciled_at: UtcDateTime
    tx_hashes: list[TxHash] = msgspec.field(default_factory=list)


class RefundDue(Event, frozen=True, tag="RefundDue"):
    """Money an incoming transfer left owing to its sender (stream ``payment-refund-<tx
    hash>``): ``refund_id`` is that transfer's hash. An operator sends it from the wallet and
    marks it refunded, or declines it with a reason; the worker never sends TON."""

    refund_id: TxHash
    wallet: NonEmptyStr
    to: NonEmptyStr  # the sender of the transfer, raw form
    amount_nanotons: PositiveNanotons
    category: TransferCategory
    due_at: UtcDateTime
    payment_id: PaymentId | None = None


class RefundSent(Event, frozen=True, tag="RefundSent"):
    """An operator says the refund went out in transaction ``tx_hash`` (of the wallet); the
    next wallet scans confirm it on chain (``RefundConfirmed``) or not (``RefundUnconfirmed``)."""

    refund_id: TxHash
    tx_hash: TxHash
    requested_by: NonEmptyStr
    requested_at: UtcDateTime
    note: ShortText = ""


class RefundConfirmed(Event, frozen=True, tag="RefundConfirmed"):
    """The wallet's transaction ``tx_hash`` sent ``amount_nanotons`` to the refund's address."""

    refund_id: TxHash
    tx_hash: TxHash
    lt: Lt
    amount_nanotons: Nanotons
    confirmed_at: UtcDateTime


class RefundUnconfirmed(Event, frozen=True, tag="RefundUnconfirmed"):
    """The transaction an operator named does not show the refund (another destination, not
    an outgoing transaction of the wallet, or not on chain): the refund is due again."""

    refund_id: TxHash
    tx_hash: TxHash
    reason: NonEmptyStr
    detected_at: UtcDateTime


class RefundDeclined(Event, frozen=True, tag="RefundDeclined"):
    """An operator decided the money is not sent back (a late payment honoured by hand...)."""

    refund_id: TxHash
    reason: NonEmptyStr
    requested_by: NonEmptyStr
    requested_at: UtcDateTime
