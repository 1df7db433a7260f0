"""TON values, pure: account addresses (TEP-2), amounts in nanotons, payment memos and links.

Nothing here does I/O; everything is exact (no floats) and strict (no guessing):

* :class:`Address` is an account, ``workchain`` + 32-byte ``hash``. It parses the raw form
  ``0:<64 hex>`` and the 48-character user-friendly forms (``EQ…``, ``UQ…``, ``kQ…``, ``0Q…``,
  base64url or standard base64) and compares by account only: the bounceable and testnet flags
  of a friendly string describe how to send, not who receives, so they live apart in
  :class:`FriendlyAddress`.
* :func:`parse_ton` / :func:`format_ton` turn ``"5.44"`` into ``5_440_000_000`` nanotons and
  back; :func:`transfer_link` builds the ``ton://transfer/...`` link a wallet opens.
* :func:`payment_id_from_comment` reads ``i3lani_<payment id>`` from a transfer comment and
  :func:`memo_for` writes it.

Errors derive from both ``ValueError`` and :class:`~events.errors.I3laniError`, and their
one-line messages say what is wrong::

    I3laniError, ValueError
    ├── InvalidAddress   text that is not a TON address (names the fault: CRC, tag, length...)
    └── InvalidAmount    text that is not a non-negative TON amount with at most 9 decimals
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final
from urllib.parse import quote

import msgspec

from events.base import NANOTONS_PER_TON
from events.errors import I3laniError, one_line

__all__ = [
    "InvalidAddress",
    "InvalidAmount",
    "Address",
    "FriendlyAddress",
    "crc16_xmodem",
    "parse_ton",
    "format_ton",
    "transfer_link",
    "MEMO_PREFIX",
    "memo_for",
    "payment_id_from_comment",
]

# -- errors -------------------------------------------------------------------------------------


class InvalidAddress(I3laniError, ValueError):
    """Text that is not a TON address; the message names what is wrong with it."""


class InvalidAmount(I3laniError, ValueError):
    """Text that is not a TON amount (a non-negative decimal with at most 9 decimals)."""


# -- addresses ----------------------------------------------------------------------------------

_TAG_BOUNCEABLE: Final = 0x11
_TAG_NON_BOUNCEABLE: Final = 0x51
_TAG_TESTNET: Final = 0x80
_FRIENDLY_LENGTH: Final = 48  # characters: 36 bytes in base64, no padding
_URL_SAFE_ONLY: Final = frozenset("-_")
_STANDARD_ONLY: Final = frozenset("+/")
_BASE64_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/"
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_CANONICAL_WORKCHAIN_RE: Final = re.compile(r"0|-?[1-9][0-9]{0,2}", re.ASCII)
_RAW_RE: Final = re.compile(r"(0|-?[1-9][0-9]{0,2}):([0-9a-fA-F]{64})", re.ASCII)


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection), as TEP-2 uses.

    ``binascii.crc_hqx`` is this very CRC (CCITT polynomial, MSB first) in C: about 150 times
    faster than a Python loop, which mattered when every recovery re-parses thousands of
    addresses. ``tests/actors/test_ton.py`` checks it against the bit-by-bit definition.
    """
    return binascii.crc_hqx(data, 0)


def _shown(text: str) -> str:
    """``text`` for an error message: quoted, escapes visible, cut when long."""
    return one_line(repr(text), 80)


class Address(msgspec.Struct, frozen=True):
    """A TON account: equal to another exactly when workchain and hash are equal.

    ``workchain`` is a signed byte (-128..127; 0 is the basechain, -1 the masterchain) and
    ``hash`` the 32-byte account id. Build one with :meth:`parse`; render it with
    :meth:`to_raw` or :meth:`to_friendly`. Hashable, so it can key a dict or fill a set.
    """

    workchain: int
    hash: bytes

    def __post_init__(self) -> None:
        if not -128 <= self.workchain <= 127:
            raise InvalidAddress(
                f"workchain {self.workchain} is out of range: it must fit a signed byte, -128..127"
            )
        if len(self.hash) != 32:
            raise InvalidAddress(
                f"account hash must be 32 bytes, got {len(self.hash)}: check the address"
            )

    @classmethod
    def parse(cls, text: str) -> Address:
        """The address in ``text``: raw ``<workchain>:<64 hex>`` or 48-character friendly.

        Any case of hex is accepted in the raw form; a friendly form must carry a valid tag and
        CRC. Nothing is trimmed: surrounding whitespace is an error, so a config value pasted
        with a stray newline is reported instead of half-trusted.

        Raises :class:`InvalidAddress` naming what is wrong.
        """
        if not isinstance(text, str):
            raise InvalidAddress(f"an address must be text, got {type(text).__name__}")
        if text != text.strip():
            raise InvalidAddress(
                f"{_shown(text)} has leading or trailing whitespace: remove it and try again"
            )
        if ":" in text:
            return cls._parse_raw(text)
        return cls.parse_friendly(text).address

    @classmethod
    def _parse_raw(cls, text: str) -> Address:
        fast = _RAW_RE.fullmatch(text)
        if fast is not None:  # the common, valid case; the checks below explain what is wrong
            workchain = int(fast[1])
            if -128 <= workchain <= 127:
                return cls(workchain, bytes.fromhex(fast[2]))
        workchain_text, _, hex_text = text.partition(":")
        if _CANONICAL_WORKCHAIN_RE.fullmatch(workchain_text) is None:
            raise InvalidAddress(
                f"{_shown(text)} has workchain {_shown(workchain_text)}: a raw TON address starts "
                "with a signed number without leading zeros (0 or -1 in practice), then a colon"
            )
        offset = len(workchain_text) + 1
        for position, char in enumerate(hex_text, start=offset):
            if char not in _HEX_DIGITS:
                raise InvalidAddress(
                    f"{_shown(text)} has {char!r} at position {position}, which is not a hex "
                    "digit: a raw TON address is <workchain>:<64 hex digits>"
                )
        if len(hex_text) != 64:
            raise InvalidAddress(
                f"{_shown(text)} has {len(hex_text)} hex digits after the colon; a raw TON "
                "address needs exactly 64"
            )
        workchain = int(workchain_text)
        if not -128 <= workchain <= 127:
            raise InvalidAddress(
                f"{_shown(text)} has workchain {workchain}, outside the signed byte range -128..127"
            )
        return cls(workchain, bytes.fromhex(hex_text))

    @classmethod
    def parse_friendly(cls, text: str) -> FriendlyAddress:
        """The 48-character user-friendly address in ``text``, with its flags.

        Accepts base64url (``-`` and ``_``) or standard base64 (``+`` and ``/``), but not both
        in one string; checks the length, the tag byte (0x11 bounceable, 0x51 non-bounceable,
        plus 0x80 for testnet) and the CRC16-XMODEM of the first 34 bytes.

        Raises :class:`InvalidAddress` naming what is wrong.
        """
        if not isinstance(text, str):
            raise InvalidAddress(f"an address must be text, got {type(text).__name__}")
        for position, char in enumerate(text):
            if char not in _BASE64_CHARS:
                raise InvalidAddress(
                    f"{_shown(text)} has {char!r} at position {position}, which is not a "
                    "base64 character: a friendly TON address uses only A-Z a-z 0-9 - _ (or + /)"
                )
        if len(text) != _FRIENDLY_LENGTH:
            raise InvalidAddress(
                f"{_shown(text)} is {len(text)} characters long; a user-friendly TON address "
                f"is exactly {_FRIENDLY_LENGTH} (or use the raw form 0:<64 hex>)"
            )
        chars = set(text)
        if chars & _URL_SAFE_ONLY and chars & _STANDARD_ONLY:
            raise InvalidAddress(
                f"{_shown(text)} mixes base64url (- _) and standard base64 (+ /) characters: "
                "copy the address again from the wallet"
            )
        url_safe = not chars & _STANDARD_ONLY
        try:
            data = base64.b64decode(text, altchars=b"-_" if url_safe else None, validate=True)
        except (binascii.Error, ValueError) as exc:  # the checks above should leave none
            raise InvalidAddress(f"{_shown(text)} is not valid base64: {exc}") from exc
        tag, workchain_byte, account, checksum = data[0], data[1:2], data[2:34], data[34:36]
        expected_crc = crc16_xmodem(data[:34])
        if int.from_bytes(checksum, "big") != expected_crc:
            raise InvalidAddress(
                f"{_shown(text)} fails its checksum (CRC16 {checksum.hex()} != "
                f"{expected_crc:04x}): a character is mistyped; copy the address again"
            )
        if tag & ~_TAG_TESTNET not in (_TAG_BOUNCEABLE, _TAG_NON_BOUNCEABLE):
            raise InvalidAddress(
                f"{_shown(text)} has tag byte 0x{tag:02x}; a TON address starts with 0x11 "
                "(bounceable) or 0x51 (non-bounceable), plus 0x80 on testnet"
            )
        return FriendlyAddress(
            address=cls(int.from_bytes(workchain_byte, "big", signed=True), account),
            bounceable=tag & ~_TAG_TESTNET == _TAG_BOUNCEABLE,
            testnet=bool(tag & _TAG_TESTNET),
            url_safe=url_safe,
        )

    def to_raw(self) -> str:
        """``<workchain>:<64 lowercase hex>``, the form TonAPI answers with."""
        return f"{self.workchain}:{self.hash.hex()}"

    def to_friendly(
        self, *, bounceable: bool = True, testnet: bool = False, url_safe: bool = True
    ) -> str:
        """The 48-character user-friendly form (``EQ…`` by default)."""
        tag = _TAG_BOUNCEABLE if bounceable else _TAG_NON_BOUNCEABLE
        if testnet:
            tag |= _TAG_TESTNET
        body = bytes([tag]) + self.workchain.to_bytes(1, "big", signed=True) + self.hash
        data = body + crc16_xmodem(body).to_bytes(2, "big")
        encoded = base64.urlsafe_b64encode(data) if url_safe else base64.b64encode(data)
        return encoded.decode("ascii")

    def __str__(self) -> str:
        return self.to_raw()

    def __repr__(self) -> str:
        return f"Address({self.to_raw()!r})"


class FriendlyAddress(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed user-friendly address: the account plus the flags its string carried."""

    address: Address
    bounceable: bool
    testnet: bool
    url_safe: bool

    def to_friendly(self) -> str:
        """The string again, in the same flags and alphabet it was parsed from."""
        return self.address.to_friendly(
            bounceable=self.bounceable, testnet=self.testnet, url_safe=self.url_safe
        )


# -- money --------------------------------------------------------------------------------------

_DECIMALS: Final = 9
_AMOUNT_RE: Final = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?", re.ASCII)


def parse_ton(text: str) -> int:
    """The exact number of nanotons in a decimal TON amount: ``"5.44"`` -> ``5_440_000_000``.

    Accepts plain ASCII decimals only (``"5"``, ``"5.44"``, ``"0.000000001"``): no sign, no
    exponent, no thousands separators, no surrounding spaces, at most 9 decimals (a nanoton is
    the smallest unit). Floats are refused outright: ``5.44`` as a float is not 5.44.

    The arithmetic is on integers, digit by digit, so it is exact at any size (``Decimal``
    would be too, but only inside a context wide enough for the input).

    Raises :class:`InvalidAmount` naming what is wrong.
    """
    if not isinstance(text, str):
        raise InvalidAmount(
            f"a TON amount must be a decimal string such as '5.44', got {type(text).__name__} "
            f"{text!r}: floats cannot hold TON amounts exactly"
        )
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise InvalidAmount(
            f"{_shown(text)} is not a TON amount: write a non-negative decimal such as 5 or "
            "5.44, with a dot, no sign, no spaces"
        )
    fraction = match["fraction"] or ""
    if len(fraction) > _DECIMALS:
        raise InvalidAmount(
            f"{_shown(text)} has {len(fraction)} decimals; TON has at most {_DECIMALS} "
            "(1 nanoton = 0.000000001 TON)"
        )
    return int(match["whole"]) * NANOTONS_PER_TON + int(fraction.ljust(_DECIMALS, "0"))


def format_ton(nanotons: int) -> str:
    """A nanoton amount as a TON decimal: ``5_440_000_000`` -> ``"5.44"``, ``10**9`` -> ``"1"``.

    The shortest exact form, without trailing zeros; ``parse_ton`` reads it back unchanged.
    """
    if isinstance(nanotons, bool) or not isinstance(nanotons, int):
        raise TypeError(f"nanotons must be an int, got {type(nanotons).__name__}")
    if nanotons < 0:
        raise ValueError(f"nanotons must not be negative, got {nanotons}")
    whole, fraction = divmod(nanotons, NANOTONS_PER_TON)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:09d}".rstrip("0")


def transfer_link(
    address: Address,
    amount_nanotons: int,
    comment: str,
    *,
    bounceable: bool = True,
    testnet: bool = False,
) -> str:
    """``ton://transfer/<address>?amount=<nanotons>&text=<url-encoded comment>``.

    The address is written in its url-safe friendly form (bounceable unless told otherwise);
    the comment is percent-encoded entirely (spaces as ``%20``, UTF-8 for non-ASCII).
    """
    if isinstance(amount_nanotons, bool) or not isinstance(amount_nanotons, int):
        raise TypeError(f"amount_nanotons must be an int, got {type(amount_nanotons).__name__}")
    if amount_nanotons < 1:
        raise ValueError(f"a payment link needs a positive amount, got {amount_nanotons}")
    friendly = address.to_friendly(bounceable=bounceable, testnet=testnet, url_safe=True)
    return f"ton://transfer/{friendly}?amount={amount_nanotons}&text={quote(comment, safe='')}"


# -- memos --------------------------------------------------------------------------------------

MEMO_PREFIX: Final = "i3lani_"
_MAX_ID_DIGITS: Final = 18  # below 2**63: fits a PostgreSQL bigint
_ZERO_WIDTH: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_MEMO_RE: Final = re.compile(rf"i3lani_(?P<id>[1-9][0-9]{{0,{_MAX_ID_DIGITS - 1}}})", re.ASCII)


def memo_for(payment_id: int) -> str:
    """The comment a payer must send: ``i3lani_<payment id>``."""
    if isinstance(payment_id, bool) or not isinstance(payment_id, int) or payment_id < 1:
        raise ValueError(f"a payment id is a positive int, got {payment_id!r}")
    if len(str(payment_id)) > _MAX_ID_DIGITS:
        raise ValueError(f"payment id {payment_id} has more than {_MAX_ID_DIGITS} digits")
    return f"{MEMO_PREFIX}{payment_id}"


def payment_id_from_comment(text: str) -> int | None:
    """The payment id in a transfer comment that is exactly ``i3lani_<id>``, else ``None``.

    Normalisation, then a full match, never a substring test:

    1. zero-width characters (U+200B..U+200D, U+2060, U+FEFF) are removed wherever they are:
       invisible, so never what the payer meant;
    2. whitespace is stripped from both ends only (``"i3lani_1 2"`` stays ambiguous and does
       not match);
    3. the rest is casefolded (``I3LANI_12`` matches);
    4. it must then be ``i3lani_`` followed by the id in canonical decimal form: ASCII digits,
       1 to 18 of them, no leading zero. ``i3lani_012`` and ``i3lani_0`` do not match, because
       :func:`memo_for` never writes them, so such a comment was not copied from our link.

    So ``i3lani_1`` never matches a comment for payment 12, and a comment with anything
    around the memo (``"pay i3lani_12"``) does not match at all.
    """
    normalised = text.translate(_ZERO_WIDTH).strip().casefold()
    match = _MEMO_RE.fullmatch(normalised)
    return int(match["id"]) if match else None
