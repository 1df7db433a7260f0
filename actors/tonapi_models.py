"""TonAPI's transaction list, decoded into typed, frozen Structs: the shapes payments rely on.

``GET /v2/blockchain/accounts/{account_id}/transactions`` answers ``{"transactions": [...]}``
(spec: tonkeeper/opentonapi ``api/openapi.yml``; samples in ``fixtures/tonapi/``). Only the
fields payment verification reads are declared; every other field TonAPI sends is ignored,
so new fields never break decoding. A declared field of the wrong type, or a required one
missing, is refused as a whole page with :class:`TonApiFormatError`, which names the JSON path:
a page we cannot read entirely is a page we must not half-trust.

Deliberately loose where TonAPI is open-ended: ``msg_type`` and ``decoded_op_name`` are plain
strings (a new message kind must not stop the monitor; matching simply ignores it), and
``decoded_body`` is whatever JSON TonAPI decoded (``{"text": "..."}`` for a text comment).

This module only decodes. Whether a transaction pays for something is decided in
:mod:`actors.payments`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

from events.base import Nanotons
from events.errors import I3laniError
from events.payments import TxHash

__all__ = [
    "TonApiFormatError",
    "AccountAddress",
    "ComputePhase",
    "Message",
    "Transaction",
    "TransactionsPage",
    "decode_transactions",
]

Lt = Annotated[int, msgspec.Meta(ge=0, description="logical time")]
UnixTime = Annotated[int, msgspec.Meta(ge=0, description="unix time, seconds")]


class TonApiFormatError(I3laniError, ValueError):
    """A TonAPI response that does not have the documented shape.

    ``path`` is the JSON path of the offending value (``$.transactions[0].lt``) when known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class AccountAddress(msgspec.Struct, frozen=True):
    """An account as TonAPI names it: ``{"address": "0:<64 hex>", ...}`` (raw form)."""

    address: str


class ComputePhase(msgspec.Struct, frozen=True, kw_only=True):
    """The compute phase: ``skipped`` with a ``skip_reason`` (``cskip_no_gas``...), or run."""

    skipped: bool
    skip_reason: str | None = None
    success: bool | None = None
    exit_code: int | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A message into or out of a transaction. ``value`` is in nanotons.

    ``source`` and ``destination`` are absent on external messages; ``op_code`` is
    ``"0x00000000"`` and ``decoded_op_name`` ``"text_comment"`` for a plain text comment.
    """

    msg_type: str
    bounce: bool
    bounced: bool
    value: Nanotons
    source: AccountAddress | None = None
    destination: AccountAddress | None = None
    op_code: str | None = None
    decoded_op_name: str | None = None
    decoded_body: object = None
    hash: str | None = None
    created_lt: int | None = None

    @property
    def body_text(self) -> str | None:
        """``decoded_body["text"]`` when the decoded body is an object with a text string.

        Structural only: whether the message *is* a text comment (its op) is for the caller
        to check; an encrypted comment, for one, may also decode to something with text.
        """
        body = self.decoded_body
        if isinstance(body, dict):
            text = body.get("text")
            if isinstance(text, str):
                return text
        return None


class Transaction(msgspec.Struct, frozen=True, kw_only=True):
    """One transaction of an account. ``hash`` is 64 lowercase hex digits; ``utime`` unix s."""

    hash: TxHash
    lt: Lt
    utime: UnixTime
    success: bool
    aborted: bool
    out_msgs: tuple[Message, ...]
    in_msg: Message | None = None
    compute_phase: ComputePhase | None = None
    account: AccountAddress | None = None


class TransactionsPage(msgspec.Struct, frozen=True):
    """The whole response body: ``{"transactions": [...]}``."""

    transactions: list[Transaction]


class _ErrorBody(msgspec.Struct, frozen=True):
    """What TonAPI sends instead when it fails: ``{"error": "...", "error_code"?: int}``."""

    error: str


_PAGE_DECODER: Final = msgspec.json.Decoder(TransactionsPage)
_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
_PATH_RE: Final = re.compile(r"^(?P<reason>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)


def decode_transactions(body: bytes) -> list[Transaction]:
    """The transactions in a TonAPI ``.../transactions`` response body, in the order sent.

    Raises :class:`TonApiFormatError` with a one-line message naming the path at fault, for
    instance ``TonAPI transactions response is malformed at $.transactions[0].lt: Expected
    `int`, got `str```, or quoting TonAPI's own error when the body is an error object.
    """
    try:
        return _PAGE_DECODER.decode(body).transactions
    except msgspec.ValidationError as exc:
        try:
            error = _ERROR_DECODER.decode(body).error
        except msgspec.MsgspecError:
            pass
        else:
            raise TonApiFormatError(
                f"TonAPI answered with an error instead of transactions: {error[:200]!r}", "$"
            ) from exc
        # msgspec appends " - at `$.path`" except for the top-level object itself.
        match = _PATH_RE.match(str(exc))
        reason, path = (match["reason"], match["path"]) if match else (str(exc), "$")
        raise TonApiFormatError(
            f"TonAPI transactions response is malformed at {path}: {reason}", path
        ) from exc
    except msgspec.DecodeError as exc:
        raise TonApiFormatError(f"TonAPI transactions response is not valid JSON: {exc}") from exc
