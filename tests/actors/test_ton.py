"""TON values: addresses (TEP-2 vectors from DOMAIN.md), nanoton amounts, links, memos."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.ton import (
    Address,
    FriendlyAddress,
    InvalidAddress,
    InvalidAmount,
    crc16_xmodem,
    format_ton,
    memo_for,
    parse_ton,
    payment_id_from_comment,
    transfer_link,
)
from events.errors import I3laniError

# DOMAIN.md, "TON addresses (TEP-2)": all the same account.
RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
BOUNCEABLE = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
NON_BOUNCEABLE = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
TESTNET = "kQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla2JO"
# ... and another.
OTHER_RAW = "0:ca6e321c7cce9ecedf0a8ca2492ec8592494aa5fb5ce0387dff96ef6af982a3e"
OTHER_BOUNCEABLE = "EQDKbjIcfM6ezt8KjKJJLshZJJSqX7XOA4ff-W72r5gqPrHF"

ACCOUNT = Address(0, bytes.fromhex(RAW[2:]))
OTHER = Address(0, bytes.fromhex(OTHER_RAW[2:]))

URL_TO_STANDARD = str.maketrans("-_", "+/")
TWIN = {"-": "+", "+": "-", "_": "/", "/": "_"}
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"


def with_tag(address: Address, tag: int) -> str:
    """A friendly string with any tag byte and a correct CRC (to test the tag check alone)."""
    body = bytes([tag, address.workchain & 0xFF]) + address.hash
    return base64.urlsafe_b64encode(body + crc16_xmodem(body).to_bytes(2, "big")).decode()


# -- addresses: the DOMAIN.md vectors ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [RAW, RAW.upper(), BOUNCEABLE, NON_BOUNCEABLE, TESTNET],
)
def test_every_form_of_the_vector_is_the_same_account(text: str) -> None:
    assert Address.parse(text) == ACCOUNT
    assert hash(Address.parse(text)) == hash(ACCOUNT)


def test_the_standard_base64_spelling_is_the_same_account() -> None:
    standard = BOUNCEABLE.translate(URL_TO_STANDARD)
    assert "+" in standard
    parsed = Address.parse_friendly(standard)
    assert parsed.address == ACCOUNT
    assert not parsed.url_safe
    assert parsed.to_friendly() == standard


def test_all_forms_collapse_to_one_set_member() -> None:
    forms = {Address.parse(t) for t in (RAW, BOUNCEABLE, NON_BOUNCEABLE, TESTNET)}
    assert forms == {ACCOUNT}
    assert Address.parse(OTHER_RAW) not in forms


@pytest.mark.parametrize(
    ("text", "bounceable", "testnet"),
    [(BOUNCEABLE, True, False), (NON_BOUNCEABLE, False, False), (TESTNET, True, True)],
)
def test_friendly_flags_are_parsed_and_rendered_back_exactly(
    text: str, bounceable: bool, testnet: bool
) -> None:
    parsed = Address.parse_friendly(text)
    assert parsed == FriendlyAddress(
        address=ACCOUNT, bounceable=bounceable, testnet=testnet, url_safe=True
    )
    assert parsed.to_friendly() == text
    assert ACCOUNT.to_friendly(bounceable=bounceable, testnet=testnet) == text


def test_raw_round_trip_is_lowercase() -> None:
    assert ACCOUNT.to_raw() == RAW
    assert Address.parse(RAW.upper()).to_raw() == RAW
    assert str(ACCOUNT) == RAW
    assert RAW in repr(ACCOUNT)


def test_the_other_vector() -> None:
    assert Address.parse(OTHER_BOUNCEABLE) == Address.parse(OTHER_RAW) == OTHER
    assert OTHER.to_friendly() == OTHER_BOUNCEABLE
    assert OTHER.to_raw() == OTHER_RAW
    assert OTHER != ACCOUNT


def test_masterchain_addresses_use_workchain_minus_one() -> None:
    # The elector contract, a well-known masterchain address.
    elector = Address.parse("Ef8zMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM0vF")
    assert elector == Address.parse("-1:" + "3" * 64)
    assert elector.to_raw() == "-1:" + "3" * 64
    assert Address(-1, ACCOUNT.hash) != ACCOUNT


def test_crc16_xmodem_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert crc16_xmodem(b"") == 0


def _crc16_by_definition(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


@given(st.binary(max_size=64))
def test_crc16_xmodem_is_the_bit_by_bit_definition(data: bytes) -> None:
    assert crc16_xmodem(data) == _crc16_by_definition(data)


# -- addresses: what is refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        (BOUNCEABLE[:-1] + "F", "checksum"),
        ("EQ" + BOUNCEABLE[3] + BOUNCEABLE[2] + BOUNCEABLE[4:], "checksum"),
        (with_tag(ACCOUNT, 0x22), "tag byte 0x22"),
        (with_tag(ACCOUNT, 0x00), "tag byte 0x00"),
        (BOUNCEABLE[:-1], "47 characters"),
        (BOUNCEABLE + "A", "49 characters"),
        (BOUNCEABLE[:-2] + "==", "'=' at position 46"),
        ("EQBAjaOyi2wGWlk-EDkSabqqnF.MrrwMadnwqrurKpkla9nE", "'.' at position 26"),
        (BOUNCEABLE[:10] + "\u200b" + BOUNCEABLE[10:], "'\\u200b' at position 10"),
        ("EQBAjaOyi2wGWlk+EDkSabqqnF-MrrwMadnwqrurKpkla9nE", "mixes base64url"),
        (" " + BOUNCEABLE, "whitespace"),
        (RAW + "\n", "whitespace"),
        ("", "0 characters"),
        ("0:" + "g" * 64, "'g' at position 2, which is not a hex digit"),
        ("0:" + RAW[2:-1], "63 hex digits"),
        (RAW + "0", "65 hex digits"),
        (RAW + ":1", "':' at position 66"),
        ("0x:" + RAW[2:], "workchain '0x'"),
        ("00:" + RAW[2:], "workchain '00'"),
        ("-0:" + RAW[2:], "workchain '-0'"),
        ("+0:" + RAW[2:], "workchain '+0'"),
        (":" + RAW[2:], "workchain ''"),
        ("128:" + RAW[2:], "outside the signed byte range"),
        ("-129:" + RAW[2:], "outside the signed byte range"),
        ("0:" + "\u0660" * 64, "not a hex digit"),
    ],
)
def test_invalid_addresses_say_what_is_wrong_in_one_line(text: str, fault: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        Address.parse(text)
    message = str(caught.value)
    assert fault in message
    assert "\n" not in message


def test_invalid_address_is_a_value_error_and_ours() -> None:
    with pytest.raises(ValueError, match="checksum"):
        Address.parse(BOUNCEABLE[:-1] + "F")
    assert issubclass(InvalidAddress, I3laniError)


def test_non_text_is_refused() -> None:
    with pytest.raises(InvalidAddress, match="must be text"):
        Address.parse(BOUNCEABLE.encode())  # type: ignore[arg-type]


def test_the_struct_itself_checks_workchain_and_hash_length() -> None:
    with pytest.raises(InvalidAddress, match="32 bytes"):
        Address(0, b"\x00" * 31)
    with pytest.raises(InvalidAddress, match=r"-128\.\.127"):
        Address(128, ACCOUNT.hash)


# -- addresses: properties --------------------------------------------------------------------

hashes = st.binary(min_size=32, max_size=32)
workchains = st.sampled_from([0, -1])


@given(workchains, hashes, st.booleans(), st.booleans(), st.booleans())
def test_raw_and_friendly_round_trip(
    workchain: int, account: bytes, bounceable: bool, testnet: bool, url_safe: bool
) -> None:
    address = Address(workchain, account)
    raw = address.to_raw()
    assert re.fullmatch(r"-?[0-9]+:[0-9a-f]{64}", raw)
    assert Address.parse(raw) == address
    friendly = address.to_friendly(bounceable=bounceable, testnet=testnet, url_safe=url_safe)
    assert len(friendly) == 48
    parsed = Address.parse_friendly(friendly)
    assert parsed.address == address
    assert (parsed.bounceable, parsed.testnet) == (bounceable, testnet)
    assert parsed.to_friendly() == friendly
    assert Address.parse(friendly) == address


@given(st.integers(-128, 127), hashes)
def test_any_signed_byte_workchain_round_trips(workchain: int, account: bytes) -> None:
    address = Address(workchain, account)
    assert Address.parse(address.to_raw()) == address
    assert Address.parse(address.to_friendly()) == address


@given(workchains, hashes, st.booleans(), st.data())
def test_one_changed_character_is_always_caught(
    workchain: int, account: bytes, bounceable: bool, data: st.DataObject
) -> None:
    address = Address(workchain, account)
    friendly = address.to_friendly(bounceable=bounceable)
    position = data.draw(st.integers(0, 47), label="position")
    replacement = data.draw(
        st.sampled_from(BASE64URL + "+/=. \u200b").filter(lambda c: c != friendly[position]),
        label="replacement",
    )
    changed = friendly[:position] + replacement + friendly[position + 1 :]
    try:
        parsed = Address.parse(changed)
    except InvalidAddress:
        return
    # Only the same character in the other base64 alphabet may be read, and then as the same
    # account: '-' and '+' are both 62, '_' and '/' both 63.
    assert TWIN.get(friendly[position]) == replacement
    assert parsed == address


def test_a_twin_character_reads_the_same_account_only_without_a_mix() -> None:
    # BOUNCEABLE has two '-': changing one to '+' mixes alphabets, changing both does not.
    assert BOUNCEABLE.count("-") == 2
    with pytest.raises(InvalidAddress, match="mixes"):
        Address.parse(BOUNCEABLE.replace("-", "+", 1))
    assert Address.parse(BOUNCEABLE.replace("-", "+")) == ACCOUNT


# -- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nanotons", "canonical"),
    [
        ("5.44", 5_440_000_000, "5.44"),
        ("5.440", 5_440_000_000, "5.44"),
        ("5", 5_000_000_000, "5"),
        ("5.0", 5_000_000_000, "5"),
        ("0", 0, "0"),
        ("0.000000001", 1, "0.000000001"),
        ("1.000000001", 1_000_000_001, "1.000000001"),
        ("0.1", 100_000_000, "0.1"),
        ("007", 7_000_000_000, "7"),
        ("123456789012345678901234567890.123456789", 123456789012345678901234567890123456789, None),
    ],
)
def test_parse_ton_is_exact(text: str, nanotons: int, canonical: str | None) -> None:
    assert parse_ton(text) == nanotons
    assert format_ton(nanotons) == (canonical or text)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "not a TON amount"),
        ("-1", "not a TON amount"),
        ("+1", "not a TON amount"),
        ("1e9", "not a TON amount"),
        ("5.", "not a TON amount"),
        (".5", "not a TON amount"),
        ("5,44", "not a TON amount"),
        ("5 ", "not a TON amount"),
        ("1_000", "not a TON amount"),
        ("NaN", "not a TON amount"),
        ("\u0665", "not a TON amount"),  # Arabic-Indic five
        ("5.4400000001", "10 decimals"),
    ],
)
def test_parse_ton_refuses_anything_but_a_plain_decimal(text: str, fault: str) -> None:
    with pytest.raises(InvalidAmount, match=fault):
        parse_ton(text)


@pytest.mark.parametrize("value", [5.44, 5, None])
def test_parse_ton_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidAmount, match="decimal string"):
        parse_ton(value)  # type: ignore[arg-type]


def test_format_ton_refuses_negatives_floats_and_bools() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_ton(-1)
    with pytest.raises(TypeError):
        format_ton(5.44)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_ton(True)


@given(st.integers(min_value=0, max_value=2**120))
def test_format_then_parse_round_trips(nanotons: int) -> None:
    text = format_ton(nanotons)
    assert parse_ton(text) == nanotons
    assert not text.endswith("0") or "." not in text
    assert not text.endswith(".")


@given(st.integers(0, 10**12), st.text("0123456789", min_size=1, max_size=9))
def test_parse_then_format_gives_the_canonical_text(whole: int, fraction: str) -> None:
    nanotons = parse_ton(f"{whole}.{fraction}")
    assert nanotons == whole * 10**9 + int(fraction.ljust(9, "0"))
    canonical = f"{whole}.{fraction}".rstrip("0").rstrip(".")
    assert format_ton(nanotons) == canonical


# -- links ------------------------------------------------------------------------------------


def test_transfer_link_matches_the_documented_shape() -> None:
    link = transfer_link(ACCOUNT, 5_440_000_000, "i3lani_12")
    assert link == f"ton://transfer/{BOUNCEABLE}?amount=5440000000&text=i3lani_12"


def test_transfer_link_encodes_the_whole_comment_and_takes_flags() -> None:
    link = transfer_link(ACCOUNT, 1, "a b&c=d/é?", bounceable=False)
    assert link == f"ton://transfer/{NON_BOUNCEABLE}?amount=1&text=a%20b%26c%3Dd%2F%C3%A9%3F"
    assert transfer_link(ACCOUNT, 1, "x", testnet=True).startswith(f"ton://transfer/{TESTNET}?")


@pytest.mark.parametrize("amount", [0, -1])
def test_transfer_link_needs_a_positive_integer_amount(amount: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        transfer_link(ACCOUNT, amount, "i3lani_1")
    with pytest.raises(TypeError):
        transfer_link(ACCOUNT, 5.44, "i3lani_1")  # type: ignore[arg-type]


# -- memos ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comment", "payment_id"),
    [
        ("i3lani_12", 12),
        ("i3lani_1", 1),
        ("I3LANI_12", 12),
        ("I3lAnI_12", 12),
        ("  i3lani_12 \n\t", 12),
        ("\u00a0i3lani_12\u3000", 12),  # no-break and ideographic spaces are whitespace too
        ("\u200bi3lani_\u200d12\ufeff", 12),
        ("\u2060i3\u200clani_1\u200b2", 12),
        ("\ufeff I3LANI_7 \u200b\n", 7),
        ("i3lani_" + "9" * 18, 10**18 - 1),
        ("i3lani_12x", None),
        ("xi3lani_12", None),
        ("pay i3lani_12", None),
        ("i3lani_12 thanks", None),
        ("i3lani_12\n\nRef#hR2ayqqP", None),
        ("i3lani_", None),
        ("i3lani", None),
        ("i3lani_0", None),
        ("i3lani_012", None),
        ("i3lani_00", None),
        ("i3lani_-1", None),
        ("i3lani_+1", None),
        ("i3lani_1 2", None),
        ("i3lani 12", None),
        ("i3lani-12", None),
        ("i3lani__12", None),
        ("i3lani_\u0661\u0662", None),  # Arabic-Indic digits: not ASCII
        ("i3lani_\uff11\uff12", None),  # fullwidth digits
        ("i3lani_12\x00", None),
        ("i3lani_1" + "0" * 18, None),  # 19 digits
        ("Telegram Premium for 3 months \n\nRef#hR2ayqqP", None),
        ("", None),
    ],
)
def test_payment_id_from_comment(comment: str, payment_id: int | None) -> None:
    assert payment_id_from_comment(comment) == payment_id


def test_a_memo_never_matches_a_longer_or_shorter_id() -> None:
    assert payment_id_from_comment(memo_for(1)) == 1
    assert payment_id_from_comment(memo_for(12)) == 12
    assert payment_id_from_comment(memo_for(1) + "2") == 12
    assert payment_id_from_comment(memo_for(12)[:-1]) == 1


def test_memo_for_writes_the_canonical_memo() -> None:
    assert memo_for(12) == "i3lani_12"
    for bad in (0, -1, 10**18):
        with pytest.raises(ValueError, match="payment id"):
            memo_for(bad)


def normalised(text: str) -> str:
    """DOMAIN.md rule 4, written independently of the code under test."""
    for char in ZERO_WIDTH:
        text = text.replace(char, "")
    return text.strip().casefold()


ids = st.integers(min_value=1, max_value=10**18 - 1)
near_memos = st.builds(
    lambda before, digits, after: before + "i3lani_" + digits + after,
    st.text(max_size=3),
    st.text("0123456789\u0661\u0662", max_size=20),
    st.text(max_size=3),
)


@given(st.one_of(st.text(), near_memos))
def test_only_exactly_the_memo_matches(comment: str) -> None:
    payment_id = payment_id_from_comment(comment)
    if payment_id is not None:
        assert normalised(comment) == memo_for(payment_id)


@given(
    ids,
    st.lists(st.sampled_from(ZERO_WIDTH), max_size=4),
    st.data(),
    st.text(" \t\n\u00a0", max_size=3),
    st.text(" \t\n\u00a0", max_size=3),
    st.lists(st.booleans(), min_size=32, max_size=32),
)
def test_our_memo_survives_invisible_characters_spaces_and_case(
    payment_id: int,
    invisible: list[str],
    data: st.DataObject,
    leading: str,
    trailing: str,
    upper: list[bool],
) -> None:
    memo = "".join(
        c.upper() if up else c for c, up in zip(memo_for(payment_id), upper, strict=False)
    )
    for char in invisible:
        at = data.draw(st.integers(0, len(memo)), label="at")
        memo = memo[:at] + char + memo[at:]
    assert payment_id_from_comment(leading + memo + trailing) == payment_id


@given(ids, ids)
def test_distinct_ids_never_match_each_others_memo(first: int, second: int) -> None:
    assert (payment_id_from_comment(memo_for(first)) == second) == (first == second)
