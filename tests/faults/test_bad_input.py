"""Bad input, property-based: every surface that takes outside input answers malformed input with
the project's documented error, in one line, and writes nothing.

The surfaces, and what each promises:

* **stored events** (``EventRegistry.decode``, and the store reading a row it cannot decode):
  an :class:`~events.errors.EventError` naming the type (and the position, through the store);
  re-encoding what did decode gives it back. Encoding refuses what PostgreSQL cannot store
  (``InvalidEvent``) before any I/O, so an append of it writes nothing and breaks no other
  writer's group commit.
* **memos and addresses** (``actors.ton``, and TonAPI bodies): ``InvalidAddress`` /
  ``InvalidAmount`` / ``TonApiFormatError`` / ``ValueError`` for ``memo_for``; valid values
  round-trip. (``tests/actors/test_ton.py`` already covers round trips, one-character changes
  of a friendly address and comment matching; these add arbitrary and near-valid text.)
* **task payloads** (``TaskQueue.add_task``): ``UnknownTaskType`` / ``InvalidTaskPayload`` for
  the type and payload, ``TypeError`` / ``ValueError`` for the options; no task row and no
  event written. Accepted payloads are stored as given.
* **webhook bodies** (the real aiohttp app of ``build_app`` with the Bot API stand-in): any body
  with the right secret is answered below 500, garbage with a 400, and nothing is appended;
  neither the secret nor the bot token is echoed.
* **CLI arguments** (``ops.cli``): a usage error is one ``i3lani ...: error:`` line (exit 2);
  ``restart|stop|start`` with a bad actor or reason exits non-zero with one line and appends
  nothing; the database password never appears in the output.
* **deep nesting, NUL characters, out-of-range ids** (issue 16), on every input: a webhook body
  nested up to 100,000 levels, or with an id outside Telegram's 52 bits, is a 400; a NUL in
  any query parameter, path segment or JSON field of the admin API is a 4xx with one line, and
  its JSON bodies nested too deep a 400; a NUL in any word of any command's argv is a usage
  error (exit 2); ``ADMIN_IDS`` and ``audit --user`` refuse ids Telegram cannot have. Nothing
  is written in any case.

Examples are kept few (``max_examples`` 25 to 200) so the module runs in well under a minute.
Tests that share a database across examples assert on count deltas, never on absolute state.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import asyncpg
import httpx
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from actors.catalog import ACTOR_NAMES
from actors.config import Settings, load_settings
from actors.tasks import PAYMENT_VERIFICATION, REWARD_DISTRIBUTION, task_types
from actors.telegram import make_bot
from actors.ton import (
    Address,
    InvalidAddress,
    InvalidAmount,
    format_ton,
    memo_for,
    parse_ton,
    payment_id_from_comment,
)
from actors.tonapi_models import TonApiFormatError, decode_transactions
from bot_gateway import Gateway, GatewayConfig, build_app
from bot_gateway.commands import Refusal, parse_channel
from events import (
    DEFAULT_REGISTRY,
    ChannelPriceChanged,
    ChannelStatsUpdated,
    CleanupCompleted,
    Event,
    EventMetadata,
    HealthChecked,
    OperatorCommandIssued,
    PaymentConfirmed,
    PaymentCreated,
    RewardCredited,
    RewardEarned,
    SubscriptionActivated,
    UserRegistered,
)
from events import HealthCheck as Check
from events.errors import ConfigError, EventError, InvalidEvent, UnknownEventType, UpcastError
from ops import cli
from ops.admin import serve_admin_app
from ops.standins import BotApiStandIn
from store import EventStore
from store.leases import Leases
from store.tasks import InvalidTaskPayload, TaskError, TaskQueue, UnknownTaskType
from tests.bot_gateway.conftest import ADMIN, PATH, SECRET, WALLET, message_update

pytestmark = [pytest.mark.faults, pytest.mark.anyio]

MAX_MESSAGE = 600  # characters: a one-line error is short enough to read
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
RAW = "0:408da3b28b6c065a593e10391269baaa9c5f8caebc0c69d9f0aabbab2a99256b"
FRIENDLY = "EQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla9nE"
TX_HASH = "ab" * 32
PASSWORD = "pw-Sekr1t-d0-not-print"
I3LANI = str(Path(sys.executable).parent / "i3lani")

PURE = settings(max_examples=200, deadline=None)
WITH_DATABASE = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(WITH_DATABASE, max_examples=25)


def one_line(error: BaseException | str, *, secrets: tuple[str, ...] = ()) -> str:
    """The error's message, checked: not empty, one line, bounded, no secret in it."""
    message = str(error)
    assert message.strip(), f"empty message from {type(error).__name__}"
    assert len(message.splitlines()) == 1, f"not one line: {message!r}"
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:200]!r}..."
    for secret in secrets:
        assert secret not in message, f"a secret is echoed: {message!r}"
    return message


def refusal(error: BaseException, *kinds: type[BaseException]) -> str:
    """``one_line(error)``, once ``error`` is checked to be one of ``kinds``."""
    assert isinstance(error, kinds), repr(error)
    return one_line(error)


# -- strategies ----------------------------------------------------------------------------------

# Text as it comes from outside: any code point but surrogates (a Python str from UTF-8 has none).
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
long_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=300, max_size=2000)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)
    ),
    max_leaves=12,
)
# Values a near-valid payload gets in place of a correct one: edge cases of each field type.
near_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            0,
            -1,
            1,
            2**63,
            -(2**63) - 1,
            1.5,
            "",
            " ",
            "\x00",
            "a\x00b",
            "2026-11-29T10:00:00",
            "2026-11-29T10:00:00Z",
            "2026-11-29T10:00:00+01:00",
            "2026-13-45T99:00:00Z",
            "not a date",
            TX_HASH,
            TX_HASH.upper(),
            "0" * 63,
            "i3lani_7",
            RAW,
            FRIENDLY,
            "@ton_news",
            "@ab",
            "restart",
            "referral",
            str(uuid.UUID(int=7)),
            "x" * 5000,
        ]
    ),
)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """``valid`` with one to three changes: a field dropped, replaced or added."""
    out = dict(valid)
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["drop", "replace", "replace", "add"]))
        keys = sorted(out)
        if operation == "add" or not keys:
            out[draw(text)] = draw(json_values)
        elif operation == "drop":
            del out[draw(st.sampled_from(keys))]
        else:
            out[draw(st.sampled_from(keys))] = draw(near_values)
    return out


def edits(valid: str) -> st.SearchStrategy[str]:
    """Near-valid text: ``valid`` with characters inserted, deleted or replaced, its case
    flipped, padded, cut or doubled."""

    @st.composite
    def edited(draw: st.DrawFn) -> str:
        value = valid
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(value)))
            operation = draw(
                st.sampled_from(["insert", "delete", "replace", "case", "pad", "cut", "double"])
            )
            char = draw(st.characters(blacklist_categories=["Cs"]))
            if operation == "insert":
                value = value[:at] + char + value[at:]
            elif operation == "delete":
                value = value[:at] + value[at + 1 :]
            elif operation == "replace":
                value = value[:at] + char + value[at + 1 :]
            elif operation == "case":
                value = value.swapcase()
            elif operation == "pad":
                value = draw(st.sampled_from([" ", "\t", "\n", "\u200b", "\xa0"])) + value
            elif operation == "cut":
                value = value[:at]
            else:
                value = value + value
        return value

    return edited()


# -- stored events: decoding ---------------------------------------------------------------------

REWARD_ID = uuid.UUID(int=42)
VALID_EVENTS: tuple[Event, ...] = (
    PaymentCreated(
        payment_id=7,
        user_id=42,
        plan="week",
        amount_nanotons=1_000_000_000,
        wallet=RAW,
        memo="i3lani_7",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    ),
    PaymentConfirmed(
        payment_id=7,
        tx_hash=TX_HASH,
        lt=47_600_000_000_001,
        amount_nanotons=1_000_000_000,
        payer=RAW,
        confirmed_at=NOW,
    ),
    SubscriptionActivated(
        payment_id=7, user_id=42, plan="week", starts_at=NOW, ends_at=NOW + timedelta(days=7)
    ),
    RewardEarned(
        reward_id=REWARD_ID,
        user_id=42,
        amount_nanotons=500_000_000,
        reason="referral",
        source="user:43",
        earned_at=NOW,
    ),
    RewardCredited(
        reward_id=REWARD_ID,
        user_id=42,
        amount_nanotons=500_000_000,
        balance_after_nanotons=500_000_000,
        credited_at=NOW,
    ),
    ChannelStatsUpdated(
        channel="@ton_news", subscribers=20_000, active_subscribers=9_000, measured_at=NOW
    ),
    ChannelPriceChanged(
        channel="@ton_news",
        new_price_nanotons=9_000_000_000,
        active_subscribers=9_000,
        changed_at=NOW,
    ),
    OperatorCommandIssued(
        command_id=uuid.UUID(int=9),
        action="restart",
        actor="PaymentMonitor",
        requested_by="cli:ops@host",
        requested_at=NOW,
        reason="stuck",
    ),
    HealthChecked(
        healthy=False,
        checks=[Check(name="database", ok=True, latency_ms=1.5)],
        checked_at=NOW,
    ),
    CleanupCompleted(removed={"tasks": 3}, started_at=NOW, finished_at=NOW),
    UserRegistered(user_id=42, registered_at=NOW, username="alice"),
)
VALID_PAYLOADS: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (tag, json.loads(payload))
    for tag, _, payload in (DEFAULT_REGISTRY.encode(event) for event in VALID_EVENTS)
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def stored_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """(tag, payload) as a row might hold them: random bytes, any JSON, or a near-valid object."""
    tag, valid = draw(st.sampled_from(VALID_PAYLOADS))
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "mutated", "other tag"]))
    if kind == "bytes":
        return tag, draw(st.binary(max_size=200))
    if kind == "json":
        return tag, _json_bytes(draw(json_values))
    if kind == "other tag":
        other, _ = draw(st.sampled_from(VALID_PAYLOADS))
        return other, _json_bytes(valid)
    return tag, _json_bytes(draw(mutated(valid)))


def check_decoded_or_refused(tag: str, version: int, payload: bytes) -> None:
    try:
        event = DEFAULT_REGISTRY.decode(tag, version, payload, position=12)
    except EventError as exc:
        message = refusal(exc, UpcastError, UnknownEventType)
        assert tag in message
        return
    assert isinstance(event, DEFAULT_REGISTRY.class_for(tag))
    # What decoded encodes again (or is refused as PostgreSQL could not store it) and reads
    # back the same.
    try:
        again = DEFAULT_REGISTRY.encode(event)
    except InvalidEvent as exc:
        one_line(exc)
        return
    assert DEFAULT_REGISTRY.decode(*again) == event


@PURE
@given(stored_payloads(), st.integers(min_value=1, max_value=3))
def test_a_stored_payload_decodes_or_is_refused_in_one_line(
    stored: tuple[str, bytes], version: int
) -> None:
    tag, payload = stored
    check_decoded_or_refused(tag, version, payload)


@PURE
@given(
    st.sampled_from(VALID_PAYLOADS),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.data(),
)
def test_any_schema_version_decodes_or_is_refused_in_one_line(
    valid: tuple[str, dict[str, Any]], version: int, data: st.DataObject
) -> None:
    tag, payload = valid
    body = data.draw(st.one_of(st.just(payload), mutated(payload)))
    check_decoded_or_refused(tag, version, _json_bytes(body))


@PURE
@given(st.one_of(text, long_text.map(lambda t: t[:200])), st.binary(max_size=50))
def test_an_unknown_stored_type_names_itself_in_one_line(tag: str, payload: bytes) -> None:
    assume(tag not in DEFAULT_REGISTRY)
    with pytest.raises(UnknownEventType) as caught:
        DEFAULT_REGISTRY.decode(tag, 1, payload, position=3)
    assert "global position 3" in one_line(caught.value)


@PURE
@given(st.sampled_from(VALID_EVENTS))
def test_valid_events_round_trip(event: Event) -> None:
    assert DEFAULT_REGISTRY.decode(*DEFAULT_REGISTRY.encode(event)) == event


# -- stored events: through the store ------------------------------------------------------------

_INSERT_RAW = """
INSERT INTO i3lani.events (event_id, stream, stream_version, type, schema_version, payload)
VALUES ($1, $2, 1, $3, 1, $4::jsonb)
RETURNING global_position
"""


@WITH_DATABASE
@given(stored_payloads())
@example(stored=("PaymentCreated", b"{}"))  # regression: a bare msgspec.ValidationError
async def test_the_store_names_the_position_of_a_row_it_cannot_decode(
    store: EventStore, raw: asyncpg.Connection, stored: tuple[str, bytes]
) -> None:
    tag, payload = stored
    try:
        value = json.loads(payload)
        body = json.dumps(value, allow_nan=False)
    except ValueError:
        assume(False)  # PostgreSQL's jsonb would refuse it: it cannot be in the log
    assume(isinstance(value, dict) and "\\u0000" not in body)
    stream = f"junk-{uuid.uuid4().hex}"
    position = await raw.fetchval(_INSERT_RAW, uuid.uuid4(), stream, tag, body)
    try:
        [recorded] = await store.read_stream(stream)
    except EventError as exc:
        message = refusal(exc, UpcastError, UnknownEventType)
        assert f"global position {position}" in message
    else:
        assert isinstance(recorded.event, DEFAULT_REGISTRY.class_for(tag))


# -- stored events: encoding refuses what PostgreSQL cannot store -------------------------------


async def counts(store: EventStore) -> tuple[int, int]:
    """(events, task rows) in the database right now."""
    events = await store._pool.fetchval("SELECT count(*) FROM i3lani.events")
    tasks = await store._pool.fetchval("SELECT count(*) FROM i3lani.tasks")
    return int(events), int(tasks)


free_text = st.one_of(
    text,
    st.text(st.characters(), max_size=20),  # surrogates included: not encodable as UTF-8
    st.sampled_from(["\x00", "stuck\x00", "\ud800", "ok"]),
)


@WITH_DATABASE
@given(free_text)
@example(reason="a\x00b")  # regression: PostgreSQL refused it inside the append statement
@example(reason="\ud800")  # regression: UnicodeEncodeError, not InvalidEvent
async def test_an_event_is_stored_as_given_or_refused_before_any_write(
    store: EventStore, reason: str
) -> None:
    command = OperatorCommandIssued(
        command_id=uuid.uuid4(),
        action="restart",
        actor="Cleanup",
        requested_by="cli:ops@host",
        requested_at=NOW,
        reason=reason,
    )
    stream = f"ops-{uuid.uuid4().hex}"
    before = await counts(store)
    try:
        await store.append(stream, [command], metadata=EventMetadata(caused_by="cli:ops@host"))
    except InvalidEvent as exc:
        one_line(exc)
        assert await counts(store) == before
        return
    [recorded] = await store.read_stream(stream)
    assert recorded.event == command


async def test_a_refused_event_does_not_break_the_writers_beside_it(store: EventStore) -> None:
    """Regression: a NUL in one concurrent append made PostgreSQL refuse the group commit's
    combined statement, which failed every writer in it and stopped the store's flusher."""
    good = [
        OperatorCommandIssued(
            command_id=uuid.uuid4(),
            action="restart",
            actor="Cleanup",
            requested_by="cli:ops@host",
            requested_at=NOW,
            reason=f"ok {i}",
        )
        for i in range(20)
    ]
    bad = msgspec.structs.replace(good[0], command_id=uuid.uuid4(), reason="a\x00b")
    refused: list[BaseException] = []

    async def write(event: OperatorCommandIssued) -> None:
        try:
            await store.append(f"ops-{uuid.uuid4().hex}", [event])
        except InvalidEvent as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for event in [*good[:10], bad, *good[10:]]:
            tg.start_soon(write, event)
    assert len(refused) == 1
    assert "NUL" in one_line(refused[0])
    assert await counts(store) == (len(good), 0)
    await store.append(f"ops-{uuid.uuid4().hex}", [good[0]])  # the store still writes


# -- memos and addresses -------------------------------------------------------------------------

address_texts = st.one_of(
    text,
    long_text,
    edits(RAW),
    edits(FRIENDLY),
    edits(RAW.upper()),
    st.builds(lambda w, h: f"{w}:{h}", st.integers(-300, 300), st.text("0123456789abcdefABCDEF")),
)


@PURE
@given(address_texts)
def test_any_text_is_an_address_or_one_invalid_address_line(value: str) -> None:
    try:
        address = Address.parse(value)
    except InvalidAddress as exc:
        refusal(exc, ValueError)
        return
    # Whatever parses renders to forms that parse back to the same account.
    assert Address.parse(address.to_raw()) == address
    assert Address.parse(address.to_friendly()) == address
    if ":" not in value:
        assert Address.parse_friendly(value).to_friendly() == value


@PURE
@given(st.one_of(st.binary(max_size=48), st.integers(), st.none(), st.lists(text, max_size=2)))
def test_an_address_that_is_not_text_is_refused_in_one_line(value: object) -> None:
    with pytest.raises(InvalidAddress) as caught:
        Address.parse(cast(Any, value))
    one_line(caught.value)


amount_texts = st.one_of(
    text,
    long_text,
    edits("5.44"),
    edits("0.000000001"),
    st.from_regex(r"[0-9]{1,30}(\.[0-9]{0,12})?", fullmatch=True),
)


@PURE
@given(amount_texts)
def test_any_text_is_an_amount_or_one_invalid_amount_line(value: str) -> None:
    try:
        nanotons = parse_ton(value)
    except InvalidAmount as exc:
        one_line(exc)
        return
    assert nanotons >= 0
    assert parse_ton(format_ton(nanotons)) == nanotons


@PURE
@given(st.one_of(st.integers(), st.integers(min_value=-(2**80), max_value=2**80), text, st.none()))
def test_memo_for_takes_payment_ids_only(value: object) -> None:
    try:
        memo = memo_for(cast(Any, value))
    except ValueError as exc:
        one_line(exc)
        return
    assert isinstance(value, int)
    assert payment_id_from_comment(memo) == value


@PURE
@given(st.one_of(text, long_text, edits("i3lani_42"), edits("I3LANI_42 ")))
def test_reading_a_memo_never_fails(comment: str) -> None:
    payment_id = payment_id_from_comment(comment)
    assert payment_id is None or memo_for(payment_id) == f"i3lani_{payment_id}"


TRANSACTIONS = {
    "transactions": [
        {
            "hash": TX_HASH,
            "lt": 47_600_000_000_001,
            "account": {"address": RAW, "is_scam": False, "is_wallet": True},
            "success": True,
            "utime": 1_764_410_400,
            "orig_status": "active",
            "end_status": "active",
            "total_fees": 0,
            "end_balance": 1,
            "transaction_type": "TransOrd",
            "state_update_old": "",
            "state_update_new": "",
            "in_msg": None,
            "out_msgs": [],
            "block": "(0,8000000000000000,1)",
            "aborted": False,
            "destroyed": False,
            "raw": "",
        }
    ]
}


@PURE
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(_json_bytes),
        mutated(TRANSACTIONS).map(_json_bytes),
        mutated(TRANSACTIONS["transactions"][0]).map(
            lambda tx: _json_bytes({"transactions": [tx]})
        ),
    )
)
def test_a_tonapi_body_of_the_wrong_shape_is_one_format_error_line(body: bytes) -> None:
    try:
        decode_transactions(body)
    except TonApiFormatError as exc:
        one_line(exc)


# -- task payloads -------------------------------------------------------------------------------

VALID_TASKS: dict[str, dict[str, Any]] = {
    PAYMENT_VERIFICATION: {"payment_id": 42},
    REWARD_DISTRIBUTION: {
        "reward_id": str(REWARD_ID),
        "user_id": 42,
        "amount_nanotons": 500_000_000,
    },
}


@st.composite
def task_payloads(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(VALID_TASKS)))
    valid = VALID_TASKS[name]
    payload = draw(st.one_of(mutated(valid), mutated(valid), json_values))
    return name, payload


@WITH_DATABASE
@given(task_payloads())
@example(task=(PAYMENT_VERIFICATION, {"payment_id": 42, "\x00": 1}))
@example(task=(REWARD_DISTRIBUTION, {**VALID_TASKS[REWARD_DISTRIBUTION], "\n": 1}))
async def test_a_task_payload_that_does_not_fit_is_refused_and_nothing_is_written(
    store: EventStore, task: tuple[str, Any]
) -> None:
    name, payload = task
    queue = TaskQueue(store, task_types())
    before = await counts(store)
    try:
        task_id = await queue.add_task(name, payload)
    except TaskError as exc:
        refusal(exc, InvalidTaskPayload)
        assert await counts(store) == before
        return
    # Accepted: stored as given, with its TaskEnqueued event.
    assert await counts(store) == (before[0] + 1, before[1] + 1)
    info = await queue.get(task_id)
    assert info is not None
    assert info.payload == payload


@WITH_DATABASE
@given(st.one_of(text, long_text, edits(PAYMENT_VERIFICATION)))
async def test_an_unknown_task_type_is_refused_and_nothing_is_written(
    store: EventStore, name: str
) -> None:
    assume(name not in VALID_TASKS and name != "admin_alert")
    queue = TaskQueue(store, task_types())
    before = await counts(store)
    with pytest.raises(UnknownTaskType) as caught:
        await queue.add_task(name, {"payment_id": 42})
    one_line(caught.value)
    assert await counts(store) == before


@WITH_DATABASE
@given(
    st.one_of(st.none(), free_text, long_text),
    st.one_of(st.integers(), st.floats(), st.booleans(), st.just("1")),
    st.one_of(st.integers(), st.floats(), st.booleans(), st.just("1")),
)
@example(dedupe_key="key\x00", priority=0, delay=0)  # regression: PostgreSQL refused it
@example(dedupe_key="\udcff", priority=0, delay=0)  # regression: UnicodeEncodeError in asyncpg
async def test_task_options_are_checked_before_anything_is_written(
    store: EventStore, dedupe_key: str | None, priority: Any, delay: Any
) -> None:
    queue = TaskQueue(store, task_types())
    before = await counts(store)
    try:
        task_id = await queue.add_task(
            PAYMENT_VERIFICATION,
            {"payment_id": 42},
            dedupe_key=dedupe_key,
            priority=priority,
            delay_seconds=delay,
        )
    except (TaskError, TypeError, ValueError) as exc:
        one_line(exc)
        assert await counts(store) == before
        return
    info = await queue.get(task_id)
    assert info is not None
    assert info.dedupe_key == dedupe_key
    if await counts(store) == before:  # the key was taken by an earlier example's task
        assert dedupe_key is not None
    else:
        assert await counts(store) == (before[0] + 1, before[1] + 1)
        assert info.priority == priority


@PURE
@given(st.one_of(st.binary(max_size=100), json_values.map(_json_bytes)))
def test_a_stored_task_payload_that_no_longer_fits_is_one_line(data: bytes) -> None:
    task_type = task_types().get(REWARD_DISTRIBUTION)
    try:
        task_type.decode(data)
    except InvalidTaskPayload as exc:
        one_line(exc)


# -- webhook bodies ------------------------------------------------------------------------------


@dataclass
class Webhook:
    client: TestClient[Any, Any]
    bot_api: BotApiStandIn
    logged: list[str]

    async def post(self, body: bytes, *, secret: str = SECRET) -> tuple[int, str]:
        response = await self.client.post(
            PATH,
            data=body,
            headers={
                "X-Telegram-Bot-Api-Secret-Token": secret,
                "Content-Type": "application/json",
            },
        )
        return response.status, await response.text()

    def secrets(self) -> tuple[str, ...]:
        return SECRET, self.bot_api.token, self.bot_api.token.partition(":")[2]


class _Collect(logging.Handler):
    """Every log record's message and exception, to check that no secret is written out."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.into.append(str(record.exc_info[1]))


@pytest.fixture
async def webhook(store: EventStore) -> AsyncIterator[Webhook]:
    logged: list[str] = []
    handler = _Collect(logged)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        async with BotApiStandIn() as bot_api:
            settings = Settings(
                wallet=WALLET,
                admin_ids=(ADMIN,),
                bot_token=bot_api.token,
                telegram_api_url=bot_api.url,
                payment_window=3600.0,
            )
            bot = make_bot(bot_api.token, bot_api.url)
            try:
                gateway = Gateway(store, settings, GatewayConfig(webhook_secret=SECRET))
                app = build_app(gateway, bot, secret=SECRET, path=PATH)
                async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                    yield Webhook(client, bot_api, logged)
            finally:
                await bot.session.close()
    finally:
        root.removeHandler(handler)


def _update_from(text: str, user_id: int) -> dict[str, Any]:
    return message_update(user_id, text)


@st.composite
def malformed_updates(draw: st.DrawFn) -> bytes:
    """Bodies that are not a Telegram Update: random bytes, other JSON, a broken Update."""
    kind = draw(st.sampled_from(["bytes", "json", "update", "message", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return draw(st.sampled_from([b"", b"{}", b"[]", b"null", b"{", b'"update"', b"\xff\xfe"]))
    if kind == "json":
        return _json_bytes(draw(json_values))
    valid = message_update(5, "/balance")  # if a change leaves it valid, it reads, never writes
    if kind == "update":
        return _json_bytes(draw(mutated(valid)))
    message = draw(mutated(valid["message"]))
    return _json_bytes({"update_id": valid["update_id"], "message": message})


@FEW
@given(malformed_updates())
async def test_a_body_that_is_not_an_update_is_refused_without_a_crash(
    webhook: Webhook, store: EventStore, body: bytes
) -> None:
    before = await counts(store)
    status, answer = await webhook.post(body)
    assert status < 500, (status, answer)
    if status >= 400:
        one_line(answer, secrets=webhook.secrets())
    assert await counts(store) == before
    for line in webhook.logged:
        for secret in webhook.secrets():
            assert secret not in line


async def test_garbage_is_a_400_and_the_next_update_is_served(
    webhook: Webhook, store: EventStore
) -> None:
    for body in (b"", b"not json", b"\xff\xfe", b"[1, 2]", b"{}", b'{"update_id": "x"}'):
        status, answer = await webhook.post(body)
        assert status == 400, (body, status, answer)
        assert "Update" in one_line(answer)
    assert await counts(store) == (0, 0)
    status, _ = await webhook.post(_json_bytes(_update_from("/start", 5)))
    assert status == 200
    assert (await counts(store))[0] == 1


# Header values an HTTP client can send: no control characters; non-ASCII arrives as UTF-8.
header_text = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=40)


@FEW
@given(malformed_updates(), st.one_of(header_text, edits(SECRET)).filter(str.isprintable))
@example(body=b"{}", secret="\x80")  # regression: aiogram's str compare_digest raised (a 500)
async def test_a_wrong_secret_is_refused_before_the_body_is_read(
    webhook: Webhook, store: EventStore, body: bytes, secret: str
) -> None:
    assume(secret != SECRET and secret.strip() == secret)
    before = await counts(store)
    status, answer = await webhook.post(body, secret=secret)
    assert status == 401
    assert SECRET not in answer
    assert await counts(store) == before


# Commands whose bad arguments must be refused with a reply, appending nothing.
bad_command_texts = st.one_of(
    st.builds(lambda a: f"/subscribe {a}", st.one_of(text, edits("week"))),
    st.builds(lambda a: f"/addchannel {a}", st.one_of(text, edits("@ton_news"))),
    st.builds(lambda a: f"/{a}", text),
    text,
)


@FEW
@given(bad_command_texts, st.sampled_from([5, ADMIN]))
async def test_a_command_with_bad_arguments_is_answered_and_appends_nothing(
    webhook: Webhook, store: EventStore, message: str, user_id: int
) -> None:
    assume(not message.lstrip().startswith(("/start", "/restart")))
    words = message.split(maxsplit=1)
    if words and words[0] in ("/subscribe", "/addchannel") and len(words) == 2:
        argument = words[1].strip()
        assume(argument.casefold() not in ("week", "month"))
        assume(not channel_accepted(argument))
    before = await counts(store)
    sent = len(webhook.bot_api.sent)
    status, _ = await webhook.post(_json_bytes(_update_from(message, user_id)))
    assert status == 200
    assert await counts(store) == before
    replies = webhook.bot_api.sent[sent:]
    assert len(replies) <= 1
    for reply in replies:
        for secret in webhook.secrets():
            assert secret not in reply.text


def channel_accepted(argument: str) -> bool:
    """Whether /addchannel would accept ``argument`` (then it appends, as it should)."""
    return not isinstance(parse_channel(argument), Refusal)


@FEW
@given(st.one_of(text, edits("PaymentMonitor"), edits("Cleanup stuck")))
async def test_restart_with_a_bad_actor_is_answered_and_appends_nothing(
    webhook: Webhook, store: EventStore, args: str
) -> None:
    first = args.strip().partition(" ")[0].casefold()
    assume(first not in {name.casefold() for name in ACTOR_NAMES})
    before = await counts(store)
    status, _ = await webhook.post(_json_bytes(_update_from(f"/restart {args}", ADMIN)))
    assert status == 200
    assert await counts(store) == before


@FEW
@given(st.one_of(free_text, long_text.map(lambda t: t[:200])))
async def test_a_restart_reason_is_recorded_as_given_or_refused(
    webhook: Webhook, store: EventStore, reason: str
) -> None:
    # A node runs Cleanup, so a restart is something it acts on (and is recorded).
    await Leases(store, "vm:1", ttl=600).acquire("Cleanup")
    before = await counts(store)
    sent = len(webhook.bot_api.sent)
    status, _ = await webhook.post(_json_bytes(_update_from(f"/restart Cleanup {reason}", ADMIN)))
    assert status == 200
    after = await counts(store)
    [reply] = webhook.bot_api.sent[sent:]
    if after == before:
        # Refused, with what is wrong: a NUL character, a lone surrogate (the log holds
        # neither) or a message too long; never the reply to an error on our side.
        assert not _storable(reason) or len(f"/restart Cleanup {reason}") > 256, reply.text
        assert "went wrong on our side" not in reply.text
        return
    assert after[0] == before[0] + 1
    [*_, recorded] = await store.read_stream("ops-commands")
    assert isinstance(recorded.event, OperatorCommandIssued)
    assert recorded.event.reason == reason.strip()


def _storable(text: str) -> bool:
    """Whether the log can hold ``text``: UTF-8 (no lone surrogate) without a NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


# -- CLI arguments -------------------------------------------------------------------------------

COMMAND_WORDS = [
    "migrate",
    "summary",
    "events",
    "run",
    "status",
    "health",
    "retry-task",
    "restart",
    "stop",
    "start",
    "audit",
    "demo",
    "gateway",
]
OPTION_WORDS = [
    "--log-level",
    "DEBUG",
    "--stream",
    "--category",
    "--after",
    "--limit",
    "--follow",
    "--json",
    "--actors",
    "--now",
    "--reason",
    "--no-wait",
    "--as-of",
    "--user",
    "--format",
    "--out",
    "--mode",
    "--port",
    "--host",
    "--duration",
    "--speed",
    "--users",
    "--seed",
    "--database",
    "-1",
    "0",
    "12",
    "1e3",
    "PaymentMonitor",
    "Cleanup,Nobody",
]
# What an argv can hold: no NUL; undecodable bytes arrive as lone surrogates (surrogateescape).
argv_text = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=30
)
argv_words = st.one_of(
    st.sampled_from(COMMAND_WORDS),
    st.sampled_from(OPTION_WORDS),
    argv_text,
    st.sampled_from(["\udcff", "caf\udce9", "a\nb", "--reason=x\ny"]),
)


def parse_only(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of parsing ``argv`` as the console script does."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as exit_:
            return int(exit_.code or 0), err.getvalue()
    return 0, err.getvalue()


@PURE
@given(st.lists(argv_words, max_size=6))
@example(argv=["migrate", "\n0"])  # regression: "unrecognized arguments" split the line
def test_a_usage_error_ends_in_one_error_line(argv: list[str]) -> None:
    code, err = parse_only(argv)
    assert code in (0, 2)
    if code == 2:
        last = err.rstrip("\n").rsplit("\n", 1)[-1]
        assert last.startswith("i3lani"), err
        assert ": error: " in one_line(last)


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with a password added (a trusting test server ignores it)."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", *parts[2:]))


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Run:
    """The console script's ``main`` in this process (in a worker thread, its own event loop)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv, out=out)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_env(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], Run]:
    """``run_cli`` against this test's database, its URL carrying a password."""
    monkeypatch.setenv("DATABASE_URL", with_password(dsn, PASSWORD))
    return run_cli


def check_failed_run(run: Run) -> str:
    assert run.code in (1, 2), run
    assert PASSWORD not in run.out + run.err
    [line] = [line for line in run.err.splitlines() if line.strip()][-1:]
    assert line.startswith("i3lani"), run.err
    return one_line(line, secrets=(PASSWORD,))


actor_names = st.one_of(
    argv_text.filter(lambda t: not t.startswith("-")),
    st.sampled_from(ACTOR_NAMES).flatmap(edits).filter(lambda t: not t.startswith("-")),
    st.sampled_from(["\udcff", "Clean\udcffup", "x" * 5000]),
)


@FEW
@given(st.sampled_from(["restart", "stop", "start"]), actor_names)
async def test_an_operator_command_for_a_bad_actor_appends_nothing(
    store: EventStore, cli_env: Callable[[list[str]], Run], action: str, actor: str
) -> None:
    assume(actor not in ACTOR_NAMES)
    before = await counts(store)
    run = await anyio.to_thread.run_sync(cli_env, [action, actor, "--no-wait"])
    check_failed_run(run)
    assert await counts(store) == before


@FEW
@given(st.one_of(argv_text, st.sampled_from(["\udcff", "caf\udce9", "ok\udc80"]), long_text))
async def test_an_operator_command_reason_is_recorded_as_given_or_refused(
    store: EventStore, cli_env: Callable[[list[str]], Run], reason: str
) -> None:
    before = await counts(store)
    run = await anyio.to_thread.run_sync(
        cli_env, ["restart", "Cleanup", f"--reason={reason}", "--no-wait"]
    )
    if run.code != 0:
        assert "InvalidEvent" not in run.err
        check_failed_run(run)
        assert await counts(store) == before
        return
    assert PASSWORD not in run.out + run.err
    assert await counts(store) == (before[0] + 1, before[1])
    [*_, recorded] = await store.read_stream("ops-commands")
    assert isinstance(recorded.event, OperatorCommandIssued)
    assert recorded.event.reason == reason


@FEW
@given(
    st.one_of(
        st.lists(argv_words, min_size=1, max_size=3).map(lambda a: ["retry-task", *a]),
        st.builds(lambda a: ["audit", f"--as-of={a}"], st.one_of(argv_text, edits("12"))),
        st.builds(lambda a: ["audit", f"--user={a}"], st.one_of(argv_text, st.just("-5"))),
    )
)
async def test_bad_arguments_to_commands_are_one_line_and_write_nothing(
    store: EventStore, cli_env: Callable[[list[str]], Run], argv: list[str]
) -> None:
    before = await counts(store)
    run = await anyio.to_thread.run_sync(cli_env, argv)
    if run.code == 0:  # an audit of the empty log, as of a time that parses: fine
        assert argv[0] == "audit"
    else:
        check_failed_run(run)
    assert await counts(store) == before


async def test_undecodable_argv_bytes_are_one_line_in_a_real_process(
    store: EventStore, dsn: str, clean_env: dict[str, str]
) -> None:
    """The console script itself, given bytes that are not UTF-8 (lone surrogates inside)."""
    env = {**clean_env, "DATABASE_URL": with_password(dsn, PASSWORD)}
    for argv in (
        [b"restart", b"Clean\xffup", b"--no-wait"],
        [b"restart", b"Cleanup", b"--reason", b"caf\xe9", b"--no-wait"],
    ):
        before = await counts(store)
        with anyio.fail_after(40):
            done = await anyio.run_process([I3LANI.encode(), *argv], env=env, check=False)
        run = Run(done.returncode, done.stdout.decode(), done.stderr.decode("utf-8", "replace"))
        check_failed_run(run)
        assert await counts(store) == before


# -- deep nesting, NUL characters and out-of-range ids on every HTTP and CLI input ---------------

DEEP_SHAPES = ("[{}]", '{{"a": {}}}', '{{"update_id": 1, "message": {}}}', '{{"reason": {}}}')


def deep_json(depth: int, shape: str) -> bytes:
    """``shape`` around a value nested ``depth`` levels deep (arrays or objects, alternating
    with the depth's parity): what a hostile client sends to exhaust a recursive parser."""
    opening, closing = ("[", "]") if depth % 2 else ('{"a":', "}")
    inner = opening * depth + "1" + closing * depth
    return shape.format(inner).encode()


deep_bodies = st.builds(
    deep_json,
    st.one_of(st.integers(min_value=1_000, max_value=100_000), st.just(100_000)),
    st.sampled_from(DEEP_SHAPES),
)
# Any text with at least one NUL character in it.
with_nul = st.builds(lambda a, b: f"{a}\x00{b}", text, text)


@FEW
@given(deep_bodies)
@example(body=deep_json(100_000, "[{}]"))  # regression: a RecursionError was a 500
async def test_a_webhook_body_nested_too_deep_is_a_400_and_nothing_is_written(
    webhook: Webhook, store: EventStore, body: bytes
) -> None:
    before = await counts(store)
    status, answer = await webhook.post(body)
    assert status == 400, (status, answer[:200])
    assert "not a Telegram Update" in one_line(answer, secrets=webhook.secrets())
    assert await counts(store) == before


out_of_range_ids = st.one_of(
    st.integers(min_value=2**52, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**52)),
    st.sampled_from([2**52, 2**63, 2**64, -(2**64)]),
)


@FEW
@given(out_of_range_ids, st.sampled_from(["from", "chat"]))
@example(user_id=2**64, where="from")  # regression: accepted, and a user-18446744073709551616
async def test_an_id_telegram_cannot_send_is_a_400_and_nothing_is_written(
    webhook: Webhook, store: EventStore, user_id: int, where: str
) -> None:
    update = message_update(5, "/start")
    update["message"][where]["id"] = user_id
    before = await counts(store)
    sent = len(webhook.bot_api.sent)
    status, answer = await webhook.post(_json_bytes(update))
    assert status == 400, (status, answer)
    one_line(answer, secrets=webhook.secrets())
    assert await counts(store) == before
    assert len(webhook.bot_api.sent) == sent


@FEW
@given(st.one_of(with_nul, st.sampled_from(["a b", "ä", "", "x" * 65])))
@example(username="a\x00b")  # regression: the append failed: "something went wrong" (a 500)
async def test_a_username_telegram_would_not_send_is_a_400_and_nothing_is_written(
    webhook: Webhook, store: EventStore, username: str
) -> None:
    before = await counts(store)
    sent = len(webhook.bot_api.sent)
    status, answer = await webhook.post(_json_bytes(message_update(5, "/start", username=username)))
    assert status == 400, (status, answer)
    one_line(answer, secrets=webhook.secrets())
    assert await counts(store) == before
    assert len(webhook.bot_api.sent) == sent


async def test_the_largest_id_telegram_can_send_is_served(
    webhook: Webhook, store: EventStore
) -> None:
    status, _ = await webhook.post(_json_bytes(message_update(2**52 - 1, "/start")))
    assert status == 200
    [recorded] = [r async for r in store.read_all()]
    assert isinstance(recorded.event, UserRegistered)
    assert recorded.event.user_id == 2**52 - 1


@PURE
@given(st.one_of(out_of_range_ids.map(str), st.just(str(2**64))))
def test_admin_ids_outside_telegram_s_range_are_one_config_line(value: str) -> None:
    env = {"WALLET_ADDRESS": RAW, "ADMIN_IDS": f"7,{value}"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert "ADMIN_IDS" in one_line(caught.value)


ADMIN_TOKEN = "bad-input-admin-token-0123456789"


@dataclass
class Admin:
    http: httpx.AsyncClient

    async def send(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
        response = await self.http.request(
            method, url, content=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        return response.status_code, response.text


@pytest.fixture
async def admin_api(store: EventStore) -> AsyncIterator[Admin]:
    async with (
        serve_admin_app(store, token=ADMIN_TOKEN) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        yield Admin(http)


def check_refused(status: int, answer: str) -> str:
    """A 4xx whose reason is one line: the JSON ``error`` of the admin API, the reason of the
    login page (a page for a person, the reason in its ``login-required`` paragraph)."""
    assert 400 <= status < 500, (status, answer[:300])
    page = re.search(r'<p id="login-required">(.*?)</p>', answer)
    reason = page.group(1) if page else json.loads(answer)["error"]
    return one_line(reason, secrets=(ADMIN_TOKEN,))


def _quoted(value: str) -> str:
    return quote(value, safe="")


# Every input of the admin API, a value in it: (method, URL, body).
ADMIN_INPUTS: list[Callable[[str], tuple[str, str, bytes | None]]] = [
    lambda v: ("GET", f"/api/events?after={_quoted(v)}", None),
    lambda v: ("GET", f"/api/events?limit={_quoted(v)}", None),
    lambda v: ("GET", f"/api/events?stream={_quoted(v)}", None),
    lambda v: ("GET", f"/api/events?category={_quoted(v)}", None),
    lambda v: ("GET", f"/api/events?type={_quoted(v)}", None),
    lambda v: ("GET", f"/api/events?{_quoted(v)}=1", None),
    lambda v: ("GET", f"/api/refunds?status={_quoted(v)}", None),
    lambda v: ("POST", f"/api/actors/{_quoted(v)}/restart", None),
    lambda v: ("POST", f"/api/actors/Cleanup/{_quoted(v)}", None),
    lambda v: ("POST", "/api/actors/Cleanup/restart", json.dumps({"reason": v}).encode()),
    lambda v: ("POST", f"/api/tasks/{_quoted(v)}/retry", None),
    lambda v: ("POST", f"/api/refunds/{_quoted(v)}/decline", b'{"reason": "no"}'),
    lambda v: ("POST", f"/api/refunds/{'1' * 12}/{_quoted(v)}", b"{}"),
    lambda v: ("POST", f"/api/refunds/{'1' * 12}/decline", json.dumps({"reason": v}).encode()),
    lambda v: (
        "POST",
        f"/api/refunds/{'1' * 12}/refunded",
        json.dumps({"tx_hash": v, "note": v}).encode(),
    ),
    lambda v: ("GET", f"/dashboard?token={_quoted(v)}", None),
]


@FEW
@given(st.sampled_from(range(len(ADMIN_INPUTS))), with_nul)
@example(slot=2, value="\x00")  # regression: GET /api/events?stream=%00 reached PostgreSQL
@example(slot=3, value="pay\x00ment")
async def test_a_nul_in_any_admin_input_is_a_4xx_and_nothing_is_written(
    admin_api: Admin, store: EventStore, slot: int, value: str
) -> None:
    method, url, body = ADMIN_INPUTS[slot](value)
    before = await counts(store)
    status, answer = await admin_api.send(method, url, body)
    check_refused(status, answer)
    assert await counts(store) == before


ADMIN_BODIES = (
    "/api/actors/Cleanup/restart",
    f"/api/refunds/{'1' * 12}/refunded",
    f"/api/refunds/{'1' * 12}/decline",
    "/api/tasks/1/retry",
)


@FEW
@given(st.sampled_from(ADMIN_BODIES), deep_bodies)
@example(path="/api/actors/Cleanup/restart", body=deep_json(100_000, "[{}]"))
async def test_a_body_nested_too_deep_is_a_400_from_every_admin_write(
    admin_api: Admin, store: EventStore, path: str, body: bytes
) -> None:
    before = await counts(store)
    status, answer = await admin_api.send("POST", path, body)
    assert status == 400, (status, answer[:300])
    check_refused(status, answer)
    assert await counts(store) == before


# Each command with its inputs, as a valid argv: a NUL goes into one word of it.
CLI_INPUTS = [
    ["events", "--stream", "payment-1", "--after", "1", "--limit", "5"],
    ["events", "--category", "payment"],
    ["restart", "Cleanup", "--reason", "why", "--no-wait"],
    ["stop", "Cleanup", "--no-wait"],
    ["start", "Cleanup", "--no-wait"],
    ["retry-task", "1"],
    ["audit", "--user", "7", "--stream", "payment-1", "--as-of", "12", "--format", "json"],
    ["refunds", "mark", "111111111111", TX_HASH, "--note", "sent"],
    ["refunds", "decline", "111111111111", "--reason", "no"],
    ["run", "--actors", "Cleanup"],
    ["gateway", "--host", "127.0.0.1", "--port", "8080"],
    ["demo", "--seed", "1", "--users", "5", "--database", "demo"],
    ["status", "--json"],
    ["summary"],
    ["health", "--json"],
    ["migrate"],
    ["--log-level", "DEBUG", "status"],
]


@FEW
@given(
    st.sampled_from(CLI_INPUTS).flatmap(
        lambda argv: st.tuples(st.just(argv), st.integers(0, len(argv) - 1), with_nul)
    )
)
@example(case=(["events", "--stream", "payment-1"], 2, "\x00"))  # regression: reached PostgreSQL
async def test_a_nul_in_any_cli_argument_is_a_usage_error_and_nothing_is_written(
    store: EventStore,
    cli_env: Callable[[list[str]], Run],
    case: tuple[list[str], int, str],
) -> None:
    argv, index, value = case
    argv = [*argv[:index], argv[index] + value, *argv[index + 1 :]]
    before = await counts(store)
    run = await anyio.to_thread.run_sync(cli_env, argv)
    assert run.code == 2, run
    assert "NUL character" in check_failed_run(run)
    assert await counts(store) == before


@FEW
@given(out_of_range_ids.map(str))
async def test_an_audit_for_a_user_id_telegram_cannot_have_is_one_line(
    store: EventStore, cli_env: Callable[[list[str]], Run], user: str
) -> None:
    run = await anyio.to_thread.run_sync(cli_env, ["audit", f"--user={user}"])
    check_failed_run(run)
