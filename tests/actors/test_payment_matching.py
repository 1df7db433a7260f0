"""Payment matching against real TonAPI responses (DOMAIN.md fixtures) and variants of them.

The successful fixture is a 5.44 TON transfer to the DOMAIN.md vector account, but its comment
is not an i3lani memo: each test builds a variant of its JSON (comment, value, destination...)
and decodes it the way the monitor will, through :func:`decode_transactions`.
"""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.payments import (
    Confirm,
    Decision,
    Ignore,
    IgnoreReason,
    Late,
    PaymentStatus,
    PendingPayment,
    Underpaid,
    decision_event,
    match_all,
    match_transaction,
)
from actors.ton import Address
from actors.tonapi_models import TonApiFormatError, Transaction, decode_transactions
from events import DEFAULT_REGISTRY
from events.payments import LatePaymentReceived, PaymentConfirmed, PaymentUnderpaid

# Real TonAPI responses (copied from the team's shared fixtures into the repo, so that a
# fresh clone tests against them too).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tonapi"

WALLET_RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
WALLET = Address.parse(WALLET_RAW)
PAYER_RAW = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
OTHER_RAW = "0:ca6e321c7cce9ecedf0a8ca2492ec8592494aa5fb5ce0387dff96ef6af982a3e"
OTHER_BOUNCEABLE = "EQDKbjIcfM6ezt8KjKJJLshZJJSqX7XOA4ff-W72r5gqPrHF"

INCOMING_HASH = "1bb443f1ca90d6f4d9ab7bc62fea6b133d49bbffba040964ba858beb632656a8"
INCOMING_LT = 43458908000003
UTIME = 1703503059
PAID_AT = datetime.fromtimestamp(UTIME, UTC)
EXPIRES = PAID_AT + timedelta(minutes=30)
PRICE = 5_440_000_000
NOW = PAID_AT + timedelta(seconds=20)

DELETE = object()  # a change that removes the key


@functools.cache
def fixture_body(name: str) -> bytes:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"TonAPI fixture {path} is missing from the repo")
    return path.read_bytes()


def fixture_tx(name: str) -> dict[str, Any]:
    page: dict[str, Any] = json.loads(fixture_body(name))
    tx: dict[str, Any] = page["transactions"][0]
    return tx


def apply(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value


def incoming_json(
    text: str | None = "i3lani_12", *, tx: dict[str, Any] | None = None, **msg: Any
) -> dict[str, Any]:
    """The successful fixture with its comment set to ``text`` and other changes applied."""
    data = copy.deepcopy(fixture_tx("transactions_incoming_comment.json"))
    if text is not None:
        data["in_msg"]["decoded_body"] = {"text": text}
    apply(data["in_msg"], msg)
    apply(data, tx or {})
    return data


def decode_one(data: dict[str, Any]) -> Transaction:
    (decoded,) = decode_transactions(msgspec.json.encode({"transactions": [data]}))
    return decoded


def incoming(
    text: str | None = "i3lani_12", *, tx: dict[str, Any] | None = None, **msg: Any
) -> Transaction:
    return decode_one(incoming_json(text, tx=tx, **msg))


def payment(
    payment_id: int = 12,
    expected: int = PRICE,
    *,
    expires_at: datetime = EXPIRES,
    status: PaymentStatus = PaymentStatus.PENDING,
) -> PendingPayment:
    return PendingPayment(
        payment_id=payment_id, expected_nanotons=expected, expires_at=expires_at, status=status
    )


PENDING = {1: payment(1, 1_000_000_000), 12: payment(12)}


def decide(
    tx: Transaction,
    pending: dict[int, PendingPayment] | None = None,
    used: frozenset[str] = frozenset(),
    wallet: Address = WALLET,
) -> Decision:
    return match_transaction(wallet, PENDING if pending is None else pending, used, tx)


def ignored(decision: Decision) -> IgnoreReason:
    assert isinstance(decision, Ignore), decision
    assert decision.detail
    assert "\n" not in decision.detail
    return decision.reason


# -- decoding the fixtures --------------------------------------------------------------------


def test_the_incoming_fixture_decodes() -> None:
    (tx,) = decode_transactions(fixture_body("transactions_incoming_comment.json"))
    assert (tx.hash, tx.lt, tx.utime) == (INCOMING_HASH, INCOMING_LT, UTIME)
    assert tx.success
    assert not tx.aborted
    assert tx.out_msgs == ()
    assert tx.compute_phase is not None
    assert not tx.compute_phase.skipped
    assert tx.account is not None
    assert Address.parse(tx.account.address) == WALLET
    msg = tx.in_msg
    assert msg is not None
    assert (msg.msg_type, msg.bounce, msg.bounced, msg.value) == ("int_msg", False, False, PRICE)
    assert msg.source is not None
    assert msg.source.address == PAYER_RAW
    assert msg.destination is not None
    assert msg.destination.address == WALLET_RAW
    assert (msg.op_code, msg.decoded_op_name) == ("0x00000000", "text_comment")
    assert msg.body_text == "Telegram Premium for 3 months \n\nRef#hR2ayqqP"


def test_the_aborted_fixture_decodes() -> None:
    (tx,) = decode_transactions(fixture_body("transaction_aborted_comment.json"))
    assert not tx.success
    assert tx.aborted
    assert tx.compute_phase is not None
    assert tx.compute_phase.skipped
    assert tx.compute_phase.skip_reason == "cskip_no_gas"
    assert tx.in_msg is not None
    assert tx.in_msg.value == 0


def test_unknown_fields_are_ignored_and_any_decoded_body_is_kept() -> None:
    data = incoming_json(None, decoded_body=["not", "an", "object"], brand_new={"x": 1})
    data["another_new_field"] = 7
    tx = decode_one(data)
    assert tx.in_msg is not None
    assert tx.in_msg.decoded_body == ["not", "an", "object"]
    assert tx.in_msg.body_text is None


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        ({"lt": "43458908000003"}, "$.transactions[0].lt", "Expected `int`, got `str`"),
        ({"hash": INCOMING_HASH.upper()}, "$.transactions[0].hash", "matching regex"),
        ({"utime": -1}, "$.transactions[0].utime", ">= 0"),
        ({"success": DELETE}, "$.transactions[0]", "missing required field `success`"),
        ({"out_msgs": None}, "$.transactions[0].out_msgs", "Expected `array`, got `null`"),
        ({"in_msg": "x"}, "$.transactions[0].in_msg", "Expected `object | null`"),
    ],
)
def test_a_wrong_shape_is_refused_with_its_path(
    change: dict[str, Any], path: str, reason: str
) -> None:
    data = incoming_json()
    apply(data, change)
    with pytest.raises(TonApiFormatError) as caught:
        decode_transactions(msgspec.json.encode({"transactions": [data]}))
    assert caught.value.path == path
    assert path in str(caught.value)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("msg", "path", "reason"),
    [
        ({"value": "5440000000"}, "$.transactions[0].in_msg.value", "Expected `int`"),
        ({"value": -1}, "$.transactions[0].in_msg.value", ">= 0"),
        ({"value": DELETE}, "$.transactions[0].in_msg", "missing required field `value`"),
        ({"bounced": "no"}, "$.transactions[0].in_msg.bounced", "Expected `bool`"),
        ({"source": {"name": "x"}}, "$.transactions[0].in_msg.source", "`address`"),
    ],
)
def test_a_wrong_message_shape_is_refused_with_its_path(
    msg: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(TonApiFormatError) as caught:
        decode_one(incoming_json(**msg))
    assert caught.value.path == path
    assert reason in str(caught.value)


def test_other_bodies_are_refused_in_one_line() -> None:
    with pytest.raises(TonApiFormatError, match="not valid JSON"):
        decode_transactions(b'{"transactions": [')
    with pytest.raises(TonApiFormatError, match=r"answered with an error.*rate limit"):
        decode_transactions(b'{"error": "rate limit exceeded", "error_code": 429}')
    with pytest.raises(TonApiFormatError, match="missing required field `transactions`") as e:
        decode_transactions(fixture_body("events_ton_transfer.json"))
    assert e.value.path == "$"
    assert issubclass(TonApiFormatError, ValueError)


def test_an_empty_page_is_no_transactions() -> None:
    assert decode_transactions(b'{"transactions": []}') == []


# -- the happy paths and amounts --------------------------------------------------------------


def test_the_fixture_itself_is_not_one_of_our_payments() -> None:
    (tx,) = decode_transactions(fixture_body("transactions_incoming_comment.json"))
    assert ignored(decide(tx)) is IgnoreReason.MEMO_MISMATCH


def test_exact_payment_confirms() -> None:
    assert decide(incoming()) == Confirm(
        payment_id=12,
        tx_hash=INCOMING_HASH,
        lt=INCOMING_LT,
        amount=PRICE,
        payer_raw=PAYER_RAW,
        overpaid=0,
        paid_at=PAID_AT,
    )


def test_overpayment_confirms_and_records_the_excess() -> None:
    decision = decide(incoming(value=PRICE + 123))
    assert isinstance(decision, Confirm)
    assert (decision.amount, decision.overpaid) == (PRICE + 123, 123)


def test_underpayment_by_one_nanoton_is_recorded_not_confirmed() -> None:
    assert decide(incoming(value=PRICE - 1)) == Underpaid(
        payment_id=12,
        tx_hash=INCOMING_HASH,
        lt=INCOMING_LT,
        amount=PRICE - 1,
        expected=PRICE,
        payer_raw=PAYER_RAW,
        paid_at=PAID_AT,
    )


def test_a_zero_value_comment_is_underpaid() -> None:
    assert isinstance(decide(incoming(value=0)), Underpaid)


@given(st.integers(min_value=0, max_value=2**63))
def test_confirmed_exactly_when_value_is_at_least_expected(value: int) -> None:
    decision = decide(incoming(value=value))
    if value >= PRICE:
        assert isinstance(decision, Confirm)
        assert decision.overpaid == value - PRICE
    else:
        assert isinstance(decision, Underpaid)
        assert decision.amount == value


# -- memos ------------------------------------------------------------------------------------


def test_i3lani_1_and_i3lani_12_are_different_payments() -> None:
    first = decide(incoming("i3lani_1", value=1_000_000_000))
    twelfth = decide(incoming("i3lani_12"))
    assert isinstance(first, Confirm)
    assert isinstance(twelfth, Confirm)
    assert (first.payment_id, twelfth.payment_id) == (1, 12)
    only_first = {1: payment(1, 1_000_000_000)}
    assert ignored(decide(incoming("i3lani_12"), only_first)) is IgnoreReason.UNKNOWN_PAYMENT
    only_twelfth = {12: payment(12)}
    assert ignored(decide(incoming("i3lani_1"), only_twelfth)) is IgnoreReason.UNKNOWN_PAYMENT


@pytest.mark.parametrize(
    "text",
    [
        " i3lani_12 \n\n",
        "I3LANI_12",
        "\u200bi3lani_12\ufeff",
        "\u2060 I3lani_\u200c12\u200d ",
    ],
)
def test_untidy_memos_still_confirm(text: str) -> None:
    decision = decide(incoming(text))
    assert isinstance(decision, Confirm)
    assert decision.payment_id == 12


@pytest.mark.parametrize(
    "text",
    [
        "i3lani_12 thanks",
        "Payment i3lani_12",
        "i3lani_012",
        "i3lani_1 2",
        "Telegram Premium for 3 months \n\ni3lani_12",
        "",
    ],
)
def test_memos_that_are_not_exactly_ours_are_ignored(text: str) -> None:
    assert ignored(decide(incoming(text))) is IgnoreReason.MEMO_MISMATCH


def test_a_memo_for_an_unknown_payment_is_ignored() -> None:
    assert ignored(decide(incoming("i3lani_99"))) is IgnoreReason.UNKNOWN_PAYMENT


# -- the transaction must be a successful incoming internal message to our wallet -------------


def test_the_aborted_fixture_never_confirms_even_with_our_memo() -> None:
    data = fixture_tx("transaction_aborted_comment.json")
    data["in_msg"]["decoded_body"] = {"text": "i3lani_12"}
    data["in_msg"]["value"] = PRICE * 10
    own = decode_one(data)
    assert own.in_msg is not None
    assert own.in_msg.destination is not None
    its_wallet = Address.parse(own.in_msg.destination.address)
    assert ignored(decide(own, wallet=its_wallet)) is IgnoreReason.FAILED
    assert ignored(decide(own)) is IgnoreReason.NOT_OUR_WALLET
    data["success"] = True  # even if TonAPI said success, aborted wins
    assert ignored(decide(decode_one(data), wallet=its_wallet)) is IgnoreReason.ABORTED


@pytest.mark.parametrize(
    ("tx", "msg", "reason"),
    [
        ({"success": False}, {}, IgnoreReason.FAILED),
        ({"aborted": True}, {}, IgnoreReason.ABORTED),
        ({}, {"bounced": True}, IgnoreReason.BOUNCED),
        (
            {"compute_phase": {"skipped": True, "skip_reason": "cskip_no_state"}},
            {},
            IgnoreReason.COMPUTE_SKIPPED,
        ),
    ],
)
def test_unsuccessful_transactions_never_confirm(
    tx: dict[str, Any], msg: dict[str, Any], reason: IgnoreReason
) -> None:
    assert ignored(decide(incoming(tx=tx, **msg))) is reason


def test_a_transaction_that_sent_messages_out_never_confirms() -> None:
    refund = copy.deepcopy(fixture_tx("transactions_incoming_comment.json")["in_msg"])
    refund["source"], refund["destination"] = refund["destination"], refund["source"]
    decision = decide(incoming(tx={"out_msgs": [refund]}))
    assert ignored(decision) is IgnoreReason.HAS_OUT_MESSAGES


@given(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_any_failure_flag_prevents_confirmation(
    success: bool, aborted: bool, bounced: bool, has_out: bool, skipped: bool
) -> None:
    refund = {"msg_type": "int_msg", "bounce": False, "bounced": False, "value": 1}
    tx = incoming(
        tx={
            "success": success,
            "aborted": aborted,
            "out_msgs": [refund] if has_out else [],
            "compute_phase": {"skipped": skipped},
        },
        bounced=bounced,
    )
    all_good = success and not aborted and not bounced and not has_out and not skipped
    assert isinstance(decide(tx), Confirm) == all_good


def test_an_external_message_is_not_a_payment() -> None:
    tx = incoming(msg_type="ext_in_msg", source=DELETE, value=0)
    assert ignored(decide(tx)) is IgnoreReason.NOT_INCOMING_INTERNAL


@pytest.mark.parametrize(
    ("tx", "msg"),
    [
        ({"in_msg": DELETE}, {}),
        ({}, {"source": DELETE}),
        ({}, {"msg_type": "ext_out_msg"}),
        ({}, {"msg_type": "some_future_kind"}),
    ],
)
def test_only_incoming_internal_messages_with_a_source_count(
    tx: dict[str, Any], msg: dict[str, Any]
) -> None:
    data = incoming_json(**msg)
    apply(data, tx)
    assert ignored(decide(decode_one(data))) is IgnoreReason.NOT_INCOMING_INTERNAL


def test_a_transfer_to_another_wallet_is_ignored() -> None:
    tx = incoming(destination={"address": OTHER_RAW}, tx={"account": DELETE})
    assert ignored(decide(tx)) is IgnoreReason.NOT_OUR_WALLET
    assert ignored(decide(incoming(destination=DELETE))) is IgnoreReason.NOT_OUR_WALLET
    # The same hash on the masterchain is another account.
    masterchain = {"address": "-1:" + WALLET_RAW[2:]}
    assert ignored(decide(incoming(destination=masterchain))) is IgnoreReason.NOT_OUR_WALLET


def test_a_transaction_of_another_account_is_ignored() -> None:
    tx = incoming(tx={"account": {"address": OTHER_RAW}})
    assert ignored(decide(tx)) is IgnoreReason.NOT_OUR_WALLET


def test_the_other_vector_as_our_wallet() -> None:
    tx = incoming(destination={"address": OTHER_RAW}, tx={"account": {"address": OTHER_RAW}})
    assert isinstance(decide(tx, wallet=Address.parse(OTHER_BOUNCEABLE)), Confirm)
    assert ignored(decide(tx)) is IgnoreReason.NOT_OUR_WALLET


@pytest.mark.parametrize(
    "configured",
    [
        WALLET_RAW,
        WALLET_RAW.upper(),
        "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE",
        "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB",
        "kQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla2JO",
        "EQBAjaOyi2wGWlk+EDkSabqqnF+MrrwMadnwqrurKpkla9nE",
    ],
)
def test_the_configured_wallet_form_does_not_matter(configured: str) -> None:
    assert isinstance(decide(incoming(), wallet=Address.parse(configured)), Confirm)


def test_a_friendly_destination_from_tonapi_matches_a_raw_configured_wallet() -> None:
    friendly = {"address": "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"}
    assert isinstance(decide(incoming(destination=friendly)), Confirm)


def test_unparseable_addresses_from_tonapi_are_ignored() -> None:
    bad = {"address": WALLET_RAW[:-1]}
    assert ignored(decide(incoming(destination=bad))) is IgnoreReason.MALFORMED_ADDRESS
    assert ignored(decide(incoming(source=bad))) is IgnoreReason.MALFORMED_ADDRESS


# -- TON with a plain text comment only -------------------------------------------------------


def test_a_jetton_notification_never_matches() -> None:
    tx = incoming(
        None,
        op_code="0x7362d09c",
        decoded_op_name="jetton_notify",
        decoded_body={
            "query_id": 0,
            "amount": "5440000000",
            "sender": PAYER_RAW,
            "forward_payload": {"is_right": False, "value": {"text": "i3lani_12"}},
        },
        value=50_000_000_000,
    )
    assert ignored(decide(tx)) is IgnoreReason.NOT_TEXT_COMMENT


def test_an_encrypted_comment_never_matches() -> None:
    tx = incoming(
        "i3lani_12",  # even a body with our text in it
        op_code="0x2167da4b",
        decoded_op_name="encrypted_text_comment",
    )
    assert ignored(decide(tx)) is IgnoreReason.NOT_TEXT_COMMENT
    named_only = incoming("i3lani_12", decoded_op_name="encrypted_text_comment", op_code=DELETE)
    assert ignored(decide(named_only)) is IgnoreReason.NOT_TEXT_COMMENT


@pytest.mark.parametrize(
    ("msg", "confirms"),
    [
        ({"decoded_op_name": DELETE}, True),  # op_code 0x00000000 alone is enough
        ({"op_code": DELETE}, True),  # decoded_op_name text_comment alone is enough
        ({"op_code": "0x0"}, True),
        ({"op_code": "0x00000001"}, False),  # the two disagree: not trusted
        ({"op_code": "zero"}, False),
    ],
)
def test_a_text_comment_is_recognised_by_name_or_op_code(
    msg: dict[str, Any], confirms: bool
) -> None:
    decision = decide(incoming(**msg))
    if confirms:
        assert isinstance(decision, Confirm)
    else:
        assert ignored(decision) is IgnoreReason.NOT_TEXT_COMMENT


@pytest.mark.parametrize(
    "msg",
    [
        {"decoded_body": DELETE},
        {"decoded_body": {"text": 12}},
        {"decoded_op_name": DELETE, "op_code": DELETE},  # a plain transfer with no body
    ],
)
def test_a_transfer_without_a_readable_comment_is_ignored(msg: dict[str, Any]) -> None:
    assert ignored(decide(incoming(**msg))) is IgnoreReason.NO_COMMENT


# -- idempotency and the payment window -------------------------------------------------------


def test_a_used_hash_never_pays_again() -> None:
    decision = decide(incoming(), used=frozenset({INCOMING_HASH}))
    assert ignored(decision) is IgnoreReason.ALREADY_USED


def test_the_same_transaction_on_two_polls_confirms_once() -> None:
    page = [incoming()]
    (first,) = match_all(WALLET, PENDING, frozenset(), page)
    assert isinstance(first, Confirm)
    # The monitor records it (the hash is used, the payment confirmed) and polls again: TonAPI
    # may return the same transaction if after_lt turns out to be inclusive.
    used = frozenset({first.tx_hash})
    recorded = {**PENDING, 12: payment(status=PaymentStatus.CONFIRMED)}
    (again,) = match_all(WALLET, recorded, used, page)
    assert ignored(again) is IgnoreReason.ALREADY_USED
    # Even if only the hash was recorded, not the status, it does not pay twice.
    (once_more,) = match_all(WALLET, PENDING, used, page)
    assert ignored(once_more) is IgnoreReason.ALREADY_USED


def test_a_second_transfer_for_a_confirmed_payment_is_ignored_with_a_refund_hint() -> None:
    confirmed = {12: payment(status=PaymentStatus.CONFIRMED)}
    decision = decide(incoming(), confirmed)
    assert ignored(decision) is IgnoreReason.ALREADY_CONFIRMED
    assert isinstance(decision, Ignore)
    assert "refund" in decision.detail


def test_a_transfer_after_expiry_is_late_not_dropped() -> None:
    expired_before = PAID_AT - timedelta(seconds=1)
    assert decide(incoming(), {12: payment(expires_at=expired_before)}) == Late(
        payment_id=12,
        tx_hash=INCOMING_HASH,
        lt=INCOMING_LT,
        amount=PRICE,
        expected=PRICE,
        payer_raw=PAYER_RAW,
        paid_at=PAID_AT,
        expires_at=expired_before,
    )


def test_late_wins_over_underpaid() -> None:
    late = decide(incoming(value=1), {12: payment(expires_at=PAID_AT - timedelta(hours=1))})
    assert isinstance(late, Late)
    assert late.amount == 1


def test_paying_at_the_expiry_instant_is_in_time() -> None:
    assert isinstance(decide(incoming(), {12: payment(expires_at=PAID_AT)}), Confirm)


def test_expiry_is_compared_as_instants_whatever_the_time_zone() -> None:
    riyadh = timezone(timedelta(hours=3))
    just_before = (PAID_AT - timedelta(seconds=1)).astimezone(riyadh)
    assert isinstance(decide(incoming(), {12: payment(expires_at=just_before)}), Late)
    same_instant = PAID_AT.astimezone(riyadh)
    assert isinstance(decide(incoming(), {12: payment(expires_at=same_instant)}), Confirm)


def test_a_payment_already_marked_expired_is_late_even_if_paid_in_time() -> None:
    decision = decide(incoming(), {12: payment(status=PaymentStatus.EXPIRED)})
    assert isinstance(decision, Late)
    assert decision.paid_at <= decision.expires_at  # the reviewer can see it was in time


def test_pending_payment_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        payment(expires_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="expected_nanotons must be positive"):
        payment(expected=0)
    with pytest.raises(ValueError, match="payment_id must be positive"):
        payment(0)


# -- a whole page -----------------------------------------------------------------------------


def tx_at(lt: int, text: str = "i3lani_12", value: int = PRICE) -> Transaction:
    return incoming(text, value=value, tx={"lt": lt, "hash": f"{lt:064x}"})


def test_a_page_is_decided_in_lt_order() -> None:
    page = [tx_at(30, "hello"), tx_at(10), tx_at(20, "i3lani_1", 1_000_000_000)]
    decisions = match_all(WALLET, PENDING, frozenset(), page)
    assert [d.lt for d in decisions] == [10, 20, 30]
    assert [type(d) for d in decisions] == [Confirm, Confirm, Ignore]


def test_a_payment_is_confirmed_once_per_page() -> None:
    decisions = match_all(WALLET, PENDING, frozenset(), [tx_at(11), tx_at(10)])
    first, second = decisions
    assert isinstance(first, Confirm)
    assert first.lt == 10
    assert ignored(second) is IgnoreReason.ALREADY_CONFIRMED


def test_a_hash_repeated_in_a_page_is_decided_once() -> None:
    decisions = match_all(WALLET, PENDING, frozenset(), [tx_at(10), tx_at(10)])
    assert isinstance(decisions[0], Confirm)
    assert ignored(decisions[1]) is IgnoreReason.DUPLICATE_IN_PAGE


def test_underpaid_then_paid_in_full_confirms_on_the_second() -> None:
    decisions = match_all(WALLET, PENDING, frozenset(), [tx_at(10, value=1), tx_at(11)])
    assert [type(d) for d in decisions] == [Underpaid, Confirm]


def test_match_all_leaves_its_arguments_alone() -> None:
    pending = dict(PENDING)
    used: set[str] = set()
    match_all(WALLET, pending, used, [tx_at(10), tx_at(11)])
    assert pending == PENDING
    assert used == set()


def test_used_hashes_apply_to_the_whole_page() -> None:
    page = [tx_at(10), tx_at(11)]
    decisions = match_all(WALLET, PENDING, frozenset({f"{10:064x}"}), page)
    assert ignored(decisions[0]) is IgnoreReason.ALREADY_USED
    assert isinstance(decisions[1], Confirm)
    assert decisions[1].lt == 11


# -- decisions to events ----------------------------------------------------------------------


def test_decisions_become_valid_events() -> None:
    confirm = decide(incoming(value=PRICE + 5))
    underpaid = decide(incoming(value=PRICE - 5))
    late = decide(incoming(), {12: payment(status=PaymentStatus.EXPIRED)})
    confirmed = decision_event(confirm, detected_at=NOW)
    assert confirmed == PaymentConfirmed(
        payment_id=12,
        tx_hash=INCOMING_HASH,
        lt=INCOMING_LT,
        amount_nanotons=PRICE + 5,
        payer=PAYER_RAW,
        confirmed_at=NOW,
        overpaid_nanotons=5,
    )
    assert isinstance(decision_event(underpaid, detected_at=NOW), PaymentUnderpaid)
    assert isinstance(decision_event(late, detected_at=NOW), LatePaymentReceived)
    for decision in (confirm, underpaid, late):
        event = decision_event(decision, detected_at=NOW)
        assert event is not None
        DEFAULT_REGISTRY.encode(event)  # passes the registry's validation
    assert decision_event(decide(incoming("hello")), detected_at=NOW) is None
