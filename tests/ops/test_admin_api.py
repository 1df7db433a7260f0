"""The admin HTTP API (ops/admin.py): served on 127.0.0.1 against a fresh database, driven with
httpx; plus the pure parts (exposition format, payment fold, query parsing) on their own."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.catalog import DEFAULT_ACTORS, UnknownActor
from actors.control import UnknownAction, operator_command
from actors.tasks import REWARD_DISTRIBUTION, RewardDistribution, task_types
from events import (
    ActorCrashed,
    ActorRestarted,
    ActorStarted,
    EventMetadata,
    HealthCheck,
    HealthChecked,
    OperatorCommandIssued,
    PaymentConfirmed,
    PaymentCreated,
    PaymentExpired,
    UserRegistered,
)
from ops import admin
from ops.admin import (
    COOKIE_NAME,
    EventQuery,
    MetricFamily,
    fold_payment,
    parse_event_query,
    render_metrics,
    serve_admin_app,
    ton_text,
)
from store import (
    EventStore,
    OpenTransaction,
    RecordedEvent,
    TaskProcessor,
    TaskQueue,
    TaskTypes,
)
from store.leases import Leases
from store.tasks import RetryPolicy, TaskContext
from tests.waiting import eventually

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TON = 1_000_000_000
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WALLET = "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8"

ADMIN_ROUTES = [
    ("GET", "/metrics"),
    ("GET", "/api/actors"),
    ("POST", "/api/actors/PaymentMonitor/restart"),
    ("GET", "/api/events"),
    ("GET", "/api/overview"),
    ("GET", "/api/stream"),
]


@pytest.fixture
async def client(store: EventStore) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_admin_app(store, token=TOKEN) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        yield http


def created(payment_id: int, user_id: int = 7, amount: int = 5_440_000_000) -> PaymentCreated:
    return PaymentCreated(
        payment_id=payment_id,
        user_id=user_id,
        plan="month",
        amount_nanotons=amount,
        wallet=WALLET,
        memo=f"i3lani_{payment_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def confirmed(payment_id: int, amount: int = 5_440_000_000) -> PaymentConfirmed:
    return PaymentConfirmed(
        payment_id=payment_id,
        tx_hash=f"{payment_id:064x}",
        lt=1000 + payment_id,
        amount_nanotons=amount,
        payer="0:" + "ab" * 32,
        confirmed_at=NOW + timedelta(minutes=5),
    )


def started(actor: str, generation: int = 1) -> ActorStarted:
    return ActorStarted(actor=actor, node="vm:1", generation=generation, started_at=NOW)


def server_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What the server side logged (the test's own HTTP client logs the URLs it asks for)."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )


async def ops_commands(store: EventStore) -> list[RecordedEvent]:
    return await store.read_stream("ops-commands")


# -- authentication ----------------------------------------------------------------------------


async def test_every_admin_route_answers_401_without_the_right_token(
    client: httpx.AsyncClient, store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_tokens = 0
    for method, path in ADMIN_ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer not-the-token-at-all"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Cookie": f"{COOKIE_NAME}={TOKEN}"},  # the token is not a session
        ):
            response = await client.request(method, path, headers=headers)
            if "Authorization" in headers:
                wrong_tokens += 1
                if wrong_tokens > admin.LOGIN_FAILURES_ALLOWED:
                    # Guessing is limited per client: past the limit, any token waits.
                    assert response.status_code == 429, (method, path, headers)
                    assert 590 <= int(response.headers["Retry-After"]) <= 600
                    assert "too many wrong admin tokens" in response.json()["error"]
                    continue
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = response.json()
            assert set(body) == {"error"}
            assert "\n" not in body["error"]
            assert "Bearer" in body["error"]
            assert TOKEN not in response.text
    assert await ops_commands(store) == []
    assert TOKEN not in server_logs(caplog)


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok"


async def test_the_dashboard_without_a_token_is_a_login_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert "/dashboard?token=" in response.text
    assert "Set-Cookie" not in response.headers
    wrong = await client.get("/dashboard", params={"token": "guess-guess-guess-guess"})
    assert wrong.status_code == 401
    assert "not this server's ADMIN_TOKEN" in wrong.text
    assert "guess-guess" not in wrong.text
    assert "Set-Cookie" not in wrong.headers


async def test_a_login_sets_a_session_cookie_for_the_browser_routes_only(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    login = await client.get("/dashboard", params={"token": TOKEN})
    assert login.status_code == 303
    assert login.headers["Location"] == "/dashboard"  # the token leaves the address bar
    set_cookie = login.headers["Set-Cookie"]
    assert TOKEN not in set_cookie
    assert "HttpOnly" in set_cookie
    assert "SameSite=Strict" in set_cookie
    session = login.cookies[COOKIE_NAME]
    issued, _, signature = session.partition(".")
    assert abs(int(issued) - datetime.now(UTC).timestamp()) < 60  # the login time...
    assert len(signature) == 64  # ...and its HMAC-SHA256, hex
    cookie = {"Cookie": f"{COOKIE_NAME}={session}"}

    page = await client.get("/dashboard", headers=cookie)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "EventSource" in page.text
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    overview = await client.get("/api/overview", headers=cookie)
    assert overview.status_code == 200
    async with client.stream("GET", "/api/stream", headers=cookie) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")

    # The cookie is for the dashboard: scripts need the bearer token, and the dashboard's
    # writes its CSRF checks (see the tests of the acting dashboard).
    for method, path in [r for r in ADMIN_ROUTES if r[1] not in ("/api/overview", "/api/stream")]:
        response = await client.request(method, path, headers=cookie)
        assert response.status_code == (403 if method == "POST" else 401), path
    for forged in (f"{'0' * 64}", f"{issued}.{'0' * 64}", f"{int(issued) + 1}.{signature}"):
        headers = {"Cookie": f"{COOKIE_NAME}={forged}"}
        assert (await client.get("/api/overview", headers=headers)).status_code == 401
    assert TOKEN not in server_logs(caplog)


async def test_the_bearer_token_opens_the_dashboard_too(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard", headers=AUTH)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


# -- /metrics ----------------------------------------------------------------------------------


async def dead_letter(store: EventStore) -> None:
    """One task of type ``ping`` that fails once and is dead-lettered."""

    class Ping(msgspec.Struct, frozen=True):
        n: int

    types = TaskTypes()
    types.register("ping", Ping, retry=RetryPolicy(max_attempts=1))

    async def fail(payload: Ping, context: TaskContext) -> None:
        raise RuntimeError("no wallet on file")

    queue = TaskQueue(store, types)
    task_id = await queue.add_task("ping", Ping(1))
    processor = TaskProcessor(queue, node="test-node", poll_interval=0.05)
    processor.register_handler("ping", fail)

    async def dead() -> bool:
        info = await queue.get(task_id)
        return info is not None and info.status == "dead"

    async with anyio.create_task_group() as tg:
        await tg.start(processor.run)
        await eventually(dead)
        processor.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    parsed: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


async def test_metrics_parse_and_reflect_the_log(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await store.append("payment-1", [created(1), confirmed(1)])
    await store.append("payment-2", [created(2), confirmed(2)])
    await store.append("payment-3", [created(3)])
    await store.append(
        "actor-PaymentMonitor",
        [
            started("PaymentMonitor"),
            ActorCrashed(
                actor="PaymentMonitor",
                node="vm:1",
                generation=1,
                error_type="TonApiUnavailable",
                message="502",
                traceback_digest="abc",
                uptime_seconds=3.0,
                crashed_at=NOW,
            ),
            ActorRestarted(
                actor="PaymentMonitor",
                cause="crash",
                attempt=1,
                delay_seconds=0.5,
                restarted_at=NOW,
            ),
            started("PaymentMonitor", 2),
        ],
    )
    await store.append("actor-RewardProcessor", [started("RewardProcessor")])
    # PaymentMonitor's checkpoint sits after payment-1: three payment events lie past it.
    first = (await store.read_stream("payment-1"))[-1]
    await store.save_checkpoint("actor-PaymentMonitor", first.cursor, expected=None)
    queue = TaskQueue(store, task_types())
    await queue.add_task(
        REWARD_DISTRIBUTION,
        RewardDistribution(reward_id=uuid.uuid4(), user_id=7, amount_nanotons=TON),
        delay_seconds=600,
    )
    await dead_letter(store)
    await readable(store, 5, category="payment")  # the lag counts readable events only

    response = await client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    for name, kind in [
        ("i3lani_events_total", "counter"),
        ("i3lani_actor_restarts_total", "counter"),
        ("i3lani_actor_state", "gauge"),
        ("i3lani_tasks", "gauge"),
        ("i3lani_dead_letters", "gauge"),
        ("i3lani_subscription_lag_events", "gauge"),
        ("i3lani_payments_confirmed_total", "counter"),
        ("i3lani_connections", "gauge"),
        ("i3lani_server_connections", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
        assert f"# HELP {name} " in text
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    # The admin API's own store holds connections too, and the server counts them.
    assert (
        value("i3lani_server_connections", kind="max")
        >= value("i3lani_server_connections", kind="in_use")
        >= 1
    )
    assert value("i3lani_events_total", type="PaymentConfirmed") == 2
    assert value("i3lani_events_total", type="PaymentCreated") == 3
    assert value("i3lani_events_total", type="ActorStarted") == 3
    assert value("i3lani_payments_confirmed_total") == 2
    assert value("i3lani_actor_restarts_total", actor="PaymentMonitor") == 1
    assert value("i3lani_actor_restarts_total", actor="RewardProcessor") == 0
    for actor in DEFAULT_ACTORS:
        states = {
            labels: v
            for (name, labels), v in got.items()
            if name == "i3lani_actor_state" and ("actor", actor) in labels
        }
        assert len(states) == 6  # one row per state, exactly one of them 1
        assert sum(states.values()) == 1
    assert value("i3lani_actor_state", actor="PaymentMonitor", state="running") == 1
    assert value("i3lani_actor_state", actor="Cleanup", state="never started") == 1
    assert value("i3lani_tasks", type=REWARD_DISTRIBUTION, state="queued") == 1
    assert value("i3lani_tasks", type="ping", state="dead") == 1
    assert value("i3lani_tasks", type="admin_alert", state="queued") == 0
    assert value("i3lani_dead_letters") == 1
    assert value("i3lani_subscription_lag_events", checkpoint="actor-PaymentMonitor") == 3
    assert not any(
        name == "i3lani_subscription_lag_events" and ("checkpoint", "actor-Cleanup") in labels
        for name, labels in got
    )  # no checkpoint, no lag

    await store.append("payment-3", [confirmed(3)])
    await readable(store, 6, category="payment")
    got = samples((await client.get("/metrics", headers=AUTH)).text)
    assert value("i3lani_payments_confirmed_total") == 3
    assert value("i3lani_subscription_lag_events", checkpoint="actor-PaymentMonitor") == 4


def test_the_exposition_escapes_label_values_and_help() -> None:
    awkward = 'a "quoted" back\\slash\nand a newline'
    text = render_metrics(
        [
            MetricFamily("x_total", "counter", "Help with a \\ and a\nnewline.", [({}, 3)]),
            MetricFamily("y", "gauge", "Labelled.", [({"k": awkward}, 1.5), ({"k": "b"}, 0)]),
        ]
    )
    assert text.endswith("\n")
    assert 'y{k="a \\"quoted\\" back\\\\slash\\nand a newline"} 1.5' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["x"].documentation == "Help with a \\ and a\nnewline."
    assert families["x"].samples[0].value == 3
    assert families["y"].samples[0].labels == {"k": awkward}
    with pytest.raises(ValueError, match="label name"):
        render_metrics([MetricFamily("z", "gauge", "h", [({"bad-label": "v"}, 1)])])


# -- /api/actors -------------------------------------------------------------------------------


async def test_actors_show_status_and_recent_history(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await store.append(
        "actor-PaymentMonitor",
        [
            started("PaymentMonitor"),
            ActorCrashed(
                actor="PaymentMonitor",
                node="vm:1",
                generation=1,
                error_type="TonApiUnavailable",
                message="TonAPI answered 502",
                traceback_digest="abc",
                uptime_seconds=3.0,
                crashed_at=NOW,
            ),
        ],
    )
    response = await client.get("/api/actors", headers=AUTH)
    assert response.status_code == 200
    actors = {a["actor"]: a for a in response.json()["actors"]}
    assert list(actors) == list(DEFAULT_ACTORS)  # demonstration actors only once they ran
    monitor = actors["PaymentMonitor"]
    assert monitor["state"] == "starting"
    assert monitor["last_error"] == "TonApiUnavailable: TonAPI answered 502"
    assert [h["type"] for h in monitor["history"]] == ["ActorCrashed", "ActorStarted"]
    assert monitor["history"][0]["error"] == "TonApiUnavailable: TonAPI answered 502"
    assert monitor["history"][1]["node"] == "vm:1"
    assert actors["Cleanup"]["state"] == "never started"
    assert actors["Cleanup"]["history"] == []

    await store.append("actor-Heartbeat", [started("Heartbeat")])
    shown = [a["actor"] for a in (await client.get("/api/actors", headers=AUTH)).json()["actors"]]
    assert "Heartbeat" in shown


async def test_a_command_appends_one_operator_command(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    # No node holds PaymentMonitor: nothing would act on a restart, so it is refused.
    response = await client.post("/api/actors/PaymentMonitor/restart", headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"].startswith("no node runs PaymentMonitor (never started)")
    assert await ops_commands(store) == []

    assert await Leases(store, "vm:1", ttl=60).acquire("PaymentMonitor") is not None
    response = await client.post(
        "/api/actors/PaymentMonitor/restart", headers=AUTH, json={"reason": "stuck on a poll"}
    )
    assert response.status_code == 202
    answer = response.json()
    [recorded] = await ops_commands(store)
    command = recorded.event
    assert isinstance(command, OperatorCommandIssued)
    assert command.action == "restart"
    assert command.actor == "PaymentMonitor"
    assert command.requested_by == "api:127.0.0.1"
    assert command.reason == "stuck on a poll"
    assert recorded.metadata.caused_by == "api:127.0.0.1"
    assert answer == {
        "command_id": str(command.command_id),
        "action": "restart",
        "actor": "PaymentMonitor",
        "requested_by": "api:127.0.0.1",
        "reason": "stuck on a poll",
        "position": recorded.position,
        "recorded": True,
        "message": "",
    }
    # Cleanup runs nowhere: a stop is recorded (it lasts), and says so; the start then undoes it.
    response = await client.post("/api/actors/Cleanup/stop", headers=AUTH)
    assert response.status_code == 202
    assert "it stays stopped" in response.json()["message"]
    response = await client.post("/api/actors/Cleanup/start", headers=AUTH)
    assert response.status_code == 202
    # A start with nothing to start is answered and not recorded.
    response = await client.post("/api/actors/RewardProcessor/start", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["recorded"] is False
    assert "nothing to start" in response.json()["message"]
    commands = [r.event for r in await ops_commands(store)]
    assert [
        (c.action, c.actor, c.reason) for c in commands if isinstance(c, OperatorCommandIssued)
    ][1:] == [("stop", "Cleanup", ""), ("start", "Cleanup", "")]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/actors/Nobody/restart", None, 404, "unknown actor 'Nobody'; valid names: "),
        ("/api/actors/PaymentMonitor/reboot", None, 400, "unknown action 'reboot'; valid "),
        ("/api/actors/PaymentMonitor/restart", b"{not json", 400, "the body is optional JSON"),
        ("/api/actors/PaymentMonitor/restart", b'{"why": "x"}', 400, "the body is optional"),
        ("/api/actors/PaymentMonitor/restart", b'{"reason": 5}', 400, "Expected `str`"),
        ("/api/actors/PaymentMonitor/restart", b'{"reason": "' + b"x" * 501 + b'"}', 400, "500"),
    ],
)
async def test_a_bad_command_appends_nothing(
    client: httpx.AsyncClient,
    store: EventStore,
    path: str,
    body: bytes | None,
    status: int,
    message: str,
) -> None:
    response = await client.post(path, headers=AUTH, content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error
    assert "\n" not in error
    assert await ops_commands(store) == []


def test_the_cli_and_the_api_build_the_same_command() -> None:
    command = operator_command("stop", "Cleanup", requested_by="cli:me@host", reason="r", now=NOW)
    assert (command.action, command.actor, command.requested_by, command.requested_at) == (
        "stop",
        "Cleanup",
        "cli:me@host",
        NOW,
    )
    with pytest.raises(UnknownActor, match="valid names"):
        operator_command("stop", "Nobody", requested_by="x")
    with pytest.raises(UnknownAction, match="valid actions: restart, stop, start"):
        operator_command("pause", "Cleanup", requested_by="x")


# -- /api/events -------------------------------------------------------------------------------


async def seed_log(store: EventStore) -> list[RecordedEvent]:
    await store.append("payment-1", [created(1)])
    await store.append("member-5", [UserRegistered(user_id=5, registered_at=NOW)])
    await store.append("payment-2", [created(2), confirmed(2)])
    await store.append("payment-1", [PaymentExpired(payment_id=1, expired_at=NOW)])
    await store.append("payment-10", [created(10)])
    await store.append("member-6", [UserRegistered(user_id=6, registered_at=NOW)])
    return await readable(store, 7)


async def readable(
    store: EventStore, count: int, category: str | None = None
) -> list[RecordedEvent]:
    """The log (or a category) once ``count`` events are readable: readers stop at the oldest
    write still open on the server (any database's), so an append may take a moment to show."""
    log: list[RecordedEvent] = []

    async def all_there() -> bool:
        log[:] = [r async for r in store.read_all(category=category)]
        return len(log) == count

    await eventually(all_there)
    return log


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/events", headers=AUTH, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_events_are_paged_in_reading_order(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    log = await seed_log(store)
    first = await page(client, limit=3)
    assert [e["position"] for e in first["events"]] == [r.position for r in log[:3]]
    assert first["next_after"] == log[2].position
    assert first["more"] is True
    event = first["events"][0]
    assert event["stream"] == "payment-1"
    assert event["type"] == "PaymentCreated"
    assert event["version"] == 1
    assert event["data"]["amount_nanotons"] == 5_440_000_000
    assert event["data"]["created_at"] == "2026-11-29T12:00:00Z"
    assert event["metadata"] == {"node": "test-node"}
    assert datetime.fromisoformat(event["recorded_at"]).tzinfo is not None

    seen: list[int] = []
    after, more = 0, True
    while more:
        body = await page(client, after=after, limit=2)
        seen += [e["position"] for e in body["events"]]
        after, more = body["next_after"], body["more"]
    assert seen == [r.position for r in log]
    assert (await page(client, after=log[-1].position)) == {
        "events": [],
        "next_after": log[-1].position,
        "more": False,
    }


async def test_events_are_filtered_by_stream_category_and_type(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    log = await seed_log(store)

    def positions(body: dict[str, Any]) -> list[int]:
        return [e["position"] for e in body["events"]]

    def expected(keep: Any) -> list[int]:
        return [r.position for r in log if keep(r)]

    assert positions(await page(client, stream="payment-1")) == expected(
        lambda r: r.stream == "payment-1"
    )
    assert positions(await page(client, category="member")) == expected(
        lambda r: r.category == "member"
    )
    assert positions(await page(client, type="PaymentCreated,PaymentExpired")) == expected(
        lambda r: r.type in ("PaymentCreated", "PaymentExpired")
    )
    body = await page(client, stream="payment-2", type="PaymentConfirmed")
    assert positions(body) == expected(
        lambda r: r.stream == "payment-2" and r.type == "PaymentConfirmed"
    )
    assert body["more"] is False
    one = await page(client, category="payment", limit=1)
    assert positions(one) == expected(lambda r: r.category == "payment")[:1]
    rest = await page(client, category="payment", after=one["next_after"])
    assert positions(rest) == expected(lambda r: r.category == "payment")[1:]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "-1"}, "after must be a whole number"),
        ({"after": "abc"}, "after must be a whole number"),
        ({"after": "999999"}, "no event at global position 999999"),
        ({"limit": "0"}, "limit must be between 1 and 500"),
        ({"limit": "501"}, "limit must be between 1 and 500"),
        ({"limit": "1.5"}, "limit must be a whole number"),
        ({"stream": "payment-1", "category": "payment"}, "stream or category, not both"),
        ({"category": "pay-ment"}, "no '-'"),
        ({"type": "Payment Created"}, "type must be event type names"),
        ({"type": ""}, "type must be event type names"),
        ({"colour": "red"}, "unknown parameter 'colour'; valid ones: after, limit"),
        ([("limit", "1"), ("limit", "2")], "give limit once"),
    ],
)
async def test_bad_event_parameters_get_a_one_line_400(
    client: httpx.AsyncClient, store: EventStore, params: Any, message: str
) -> None:
    await seed_log(store)
    response = await client.get("/api/events", headers=AUTH, params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error
    assert "\n" not in error


def test_event_query_defaults() -> None:
    assert parse_event_query({}) == EventQuery(after=0, limit=100)
    assert parse_event_query({"type": ["A, B"]}).types == frozenset({"A", "B"})


# -- the dashboard's snapshot ------------------------------------------------------------------


def test_ton_amounts_keep_two_to_nine_decimals() -> None:
    assert ton_text(5_440_000_000) == "5.44"
    assert ton_text(TON) == "1.00"
    assert ton_text(0) == "0.00"
    assert ton_text(1) == "0.000000001"
    assert ton_text(1_500_000) == "0.0015"
    assert ton_text(123 * TON + 456_789_123) == "123.456789123"


def recorded(stream: str, events: list[Any]) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            position=i + 1,
            transaction_id=1,
            event_id=uuid.uuid4(),
            stream=stream,
            version=i + 1,
            type=type(e).__struct_config__.tag,
            schema_version=1,
            event=e,
            metadata=EventMetadata(),
            recorded_at=NOW,
        )
        for i, e in enumerate(events)
    ]


def test_a_payment_is_folded_from_its_events() -> None:
    row = fold_payment(recorded("payment-4", [created(4, user_id=9)]))
    assert row is not None
    assert (row.payment_id, row.user_id, row.state, row.amount_ton) == (4, 9, "pending", "5.44")
    row = fold_payment(recorded("payment-4", [created(4), confirmed(4, amount=6 * TON)]))
    assert row is not None
    assert (row.state, row.amount_ton, row.paid_ton) == ("confirmed", "5.44", "6.00")
    row = fold_payment(
        recorded("payment-4", [created(4), PaymentExpired(payment_id=4, expired_at=NOW)])
    )
    assert row is not None
    assert row.state == "expired"
    assert fold_payment([]) is None


async def test_the_overview_holds_what_the_dashboard_shows(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await store.append("payment-42", [created(42, user_id=7), confirmed(42)])
    await store.append("actor-PaymentMonitor", [started("PaymentMonitor")])
    await store.append(
        "ops-health",
        [
            HealthChecked(
                healthy=False,
                checks=[
                    HealthCheck(name="database", ok=True, latency_ms=1.5),
                    HealthCheck(name="tonapi", ok=False, detail="502"),
                ],
                checked_at=NOW,
            )
        ],
    )
    await dead_letter(store)
    response = await client.get("/api/overview", headers=AUTH)
    assert response.status_code == 200
    overview = response.json()
    assert isinstance(overview["head"], int)
    actors = {a["actor"]: a for a in overview["actors"]}
    assert actors["PaymentMonitor"]["state"] == "running"
    assert actors["PaymentMonitor"]["history"][0]["type"] == "ActorStarted"
    [payment] = overview["payments"]
    assert payment["payment_id"] == 42
    assert payment["user_id"] == 7
    assert payment["amount_ton"] == "5.44"
    assert payment["state"] == "confirmed"
    assert overview["health"]["healthy"] is False
    assert [c["ok"] for c in overview["health"]["checks"]] == [True, False]
    assert overview["tasks"]["dead_total"] == 1
    assert overview["tasks"]["dead_letters"][0]["last_error"].endswith("no wallet on file")
    minutes = overview["event_rate"]["minutes"]
    assert len(minutes) == 10
    assert sum(m["events"] for m in minutes) >= 4  # everything above was just appended
    assert overview["event_rate"]["capped"] is False


# -- /api/stream -------------------------------------------------------------------------------


class Sse:
    """Reads Server-Sent Events from an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next_event(self, within: float = 10) -> tuple[str, str]:
        name, data = "message", []
        with anyio.fail_after(within):
            async for line in self.lines:
                if line == "":
                    if data:
                        return name, "\n".join(data)
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
        raise AssertionError("the stream ended")

    async def next_comment(self, within: float = 10) -> str:
        with anyio.fail_after(within):
            async for line in self.lines:
                if line.startswith(":"):
                    return line
        raise AssertionError("the stream ended")


async def test_the_stream_sends_a_snapshot_at_once_then_each_change(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await store.append("payment-1", [created(1)])
    async with client.stream("GET", "/api/stream", headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        sse = Sse(response)
        name, data = await sse.next_event(within=5)
        assert name == "overview"
        first = msgspec.json.decode(data)
        assert [p["payment_id"] for p in first["payments"]] == [1]

        await store.append("payment-2", [created(2, amount=TON)])
        name, data = await sse.next_event(within=10)
        assert name == "overview"
        second = msgspec.json.decode(data)
        assert [(p["payment_id"], p["amount_ton"]) for p in second["payments"]] == [
            (2, "1.00"),
            (1, "5.44"),
        ]


async def test_a_quiet_stream_sends_keepalive_comments(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "KEEPALIVE_SECONDS", 0.1)  # a shorter timer, not a fake result
    async with client.stream("GET", "/api/stream", headers=AUTH) as response:
        sse = Sse(response)
        await sse.next_event(within=5)
        assert await sse.next_comment(within=5) == ": keepalive"


async def test_a_stream_ends_when_the_server_stops(store: EventStore) -> None:
    stopped_within = 5.0
    async with serve_admin_app(store, token=TOKEN) as base:
        http = httpx.AsyncClient(base_url=base, timeout=10)
        request = http.build_request("GET", "/api/stream", headers=AUTH)
        response = await http.send(request, stream=True)
        assert response.status_code == 200
        await Sse(response).next_event(within=5)
        started_at = anyio.current_time()
    # Leaving serve_admin_app ran the app's shutdown: the open stream did not hold it.
    assert anyio.current_time() - started_at < stopped_within
    await response.aclose()
    await http.aclose()


async def test_an_unreachable_database_is_a_one_line_503(dsn: str) -> None:
    closing = EventStore.open(dsn)
    await closing.__aenter__()
    async with (
        serve_admin_app(closing, token=TOKEN) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        assert (await http.get("/api/overview", headers=AUTH)).status_code == 200
        await closing.__aexit__(None, None, None)
        for path in ("/metrics", "/api/actors", "/api/events"):
            response = await http.get(path, headers=AUTH)
            assert response.status_code == 503, path
            error = response.json()["error"]
            assert error.startswith("database unavailable")
            assert "\n" not in error

        async def overview_unavailable() -> bool:  # once the cached snapshot (1 s) is too old
            return (await http.get("/api/overview", headers=AUTH)).status_code == 503

        await eventually(overview_unavailable, within=5)


async def test_a_reason_the_log_cannot_hold_is_a_400_and_nothing_is_appended(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    assert await Leases(store, "vm:1", ttl=60).acquire("PaymentMonitor") is not None
    response = await client.post(
        "/api/actors/PaymentMonitor/restart",
        json={"reason": "stuck\u0000since noon"},
        headers=AUTH,
    )
    assert response.status_code == 400
    assert "\n" not in response.json()["error"]
    assert await store.read_stream("ops-commands") == []


async def test_a_bearer_header_with_undecodable_bytes_is_a_401(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/api/actors", headers={"Authorization": b"Bearer \xff\xfe-not-utf8"}
    )
    assert response.status_code == 401


# -- what holds readers and actors back --------------------------------------------------------

FROZEN_APP = "i3lani:frozen-node:work"


async def suspect_lease(store: EventStore) -> None:
    """PaymentMonitor and RewardProcessor running with live leases; PaymentMonitor's node has
    stopped renewing its lease (70 s ago, with 50 s left to live: suspect), RewardProcessor's
    renews as it should."""
    await store.append("actor-PaymentMonitor", [started("PaymentMonitor")])
    await store.append("actor-RewardProcessor", [started("RewardProcessor")])
    leases = Leases(store, "vm:1", ttl=60)
    assert await leases.acquire("PaymentMonitor") is not None
    assert await leases.acquire("RewardProcessor") is not None
    await store._pool.execute(
        "UPDATE i3lani.leases SET renewed_at = now() - interval '70 s',"
        " expires_at = now() + interval '50 s' WHERE name = 'PaymentMonitor'"
    )


@contextlib.asynccontextmanager
async def open_writer(raw: asyncpg.Connection[Any]) -> AsyncIterator[int]:
    """A write transaction held open on ``raw`` (as a frozen node's would be), named like one
    of ours; yields its backend pid. Rolled back when the block ends."""
    await raw.execute(f"SET application_name = '{FROZEN_APP}'")
    pid: int = await raw.fetchval("SELECT pg_backend_pid()")
    transaction = raw.transaction()
    await transaction.start()
    try:
        await raw.fetchval("SELECT pg_current_xact_id()")  # it has a transaction id: a writer
        yield pid
    finally:
        if raw.is_in_transaction():
            await transaction.rollback()


async def overview(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/overview", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_overview_shows_an_actor_whose_lease_is_suspect(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await suspect_lease(store)
    actors = {a["actor"]: a for a in (await overview(client))["actors"]}
    monitor = actors["PaymentMonitor"]
    assert monitor["state"] == "running"
    assert monitor["lease_live"] is True
    assert monitor["lease_suspect"] is True
    assert 70 <= monitor["lease_renewed_seconds_ago"] < 100
    healthy = actors["RewardProcessor"]
    assert (healthy["lease_live"], healthy["lease_suspect"]) == (True, False)
    assert healthy["lease_renewed_seconds_ago"] < 30
    assert actors["Cleanup"]["lease_suspect"] is None  # no lease at all


async def test_the_overview_shows_readers_held_back_by_an_open_write_transaction(
    client: httpx.AsyncClient, store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    await store.append("payment-1", [created(1)])
    database = await raw.fetchval("SELECT current_database()")
    async with open_writer(raw) as pid:
        # Two events committed after it began: readers cannot see them while it stays open.
        await store.append("payment-1", [confirmed(1)])
        await store.append("payment-2", [created(2)])
        shown: dict[str, Any] = {}

        async def ours_shown() -> bool:  # another test's older writer on this server comes first
            shown.update((await overview(client))["oldest_writer"] or {})
            return shown.get("pid") == pid

        await eventually(ours_shown)
        assert shown["database"] == database
        assert shown["application"] == FROZEN_APP
        assert shown["state"] == "idle in transaction"
        assert shown["events_waiting"] >= 2
        assert 0 <= shown["state_seconds"] <= shown["open_seconds"] < 60

    async def nothing_held_back() -> bool:
        writer = (await overview(client))["oldest_writer"]
        return writer is None or writer["events_waiting"] == 0

    await eventually(nothing_held_back)  # the snapshot may be a second old
    writer = (await overview(client))["oldest_writer"]
    assert writer is None or writer["pid"] != pid


async def test_the_metrics_show_held_back_readers_and_suspect_leases(
    client: httpx.AsyncClient, store: EventStore, raw: asyncpg.Connection[Any]
) -> None:
    await suspect_lease(store)
    async with open_writer(raw):
        await store.append("payment-1", [created(1), confirmed(1)])
        await anyio.sleep(0.05)
        text = (await client.get("/metrics", headers=AUTH)).text
    for name in (
        "i3lani_actor_lease_suspect",
        "i3lani_readers_held_back_events",
        "i3lani_oldest_write_transaction_seconds",
    ):
        assert f"# TYPE {name} gauge\n" in text
        assert f"# HELP {name} " in text
    got = samples(text)
    assert got[("i3lani_actor_lease_suspect", frozenset({("actor", "PaymentMonitor")}))] == 1
    assert got[("i3lani_actor_lease_suspect", frozenset({("actor", "RewardProcessor")}))] == 0
    assert got[("i3lani_actor_lease_suspect", frozenset({("actor", "Cleanup")}))] == 0
    assert got[("i3lani_readers_held_back_events", frozenset())] >= 2
    assert got[("i3lani_oldest_write_transaction_seconds", frozenset())] >= 0.05

    async def released() -> bool:
        after = samples((await client.get("/metrics", headers=AUTH)).text)
        return after[("i3lani_readers_held_back_events", frozenset())] == 0

    await eventually(released)


def test_growing_ages_alone_are_no_new_snapshot() -> None:
    """A stream sends a snapshot when its content() changes: ages that grow by themselves (an
    open transaction's, a lease's since its renewal) must not change it, or every check
    would resend the whole snapshot for as long as the situation lasts."""
    writer = OpenTransaction(
        pid=4242,
        database="i3lani",
        application=FROZEN_APP,
        state="idle in transaction",
        open_seconds=12.3,
        state_seconds=10.1,
        events_waiting=3,
    )
    monitor = {"actor": "PaymentMonitor", "state": "running", "lease_live": True}

    def snapshot(
        later: float,
        writer: OpenTransaction | None,
        suspect_for: float = 70.2,
        renewed: float = 0.4,
    ) -> admin.Overview:
        return admin.Overview(
            generated_at=NOW + timedelta(seconds=later),
            head=9,
            actors=[
                {**monitor, "lease_suspect": True, "lease_renewed_seconds_ago": suspect_for},
                {
                    **monitor,
                    "actor": "Cleanup",
                    "lease_suspect": False,
                    "lease_renewed_seconds_ago": renewed,
                },
            ],
            event_rate=admin.EventRate(minutes=[], capped=False),
            tasks=admin.TaskSummary(types=[], dead_letters=[], dead_total=0),
            health=None,
            payments=[],
            oldest_writer=writer,
        )

    def aged(writer: OpenTransaction, seconds: float) -> OpenTransaction:
        return msgspec.structs.replace(
            writer,
            open_seconds=writer.open_seconds + seconds,
            state_seconds=writer.state_seconds + seconds,
        )

    first = snapshot(0, writer).content()
    # Thirty seconds on: the same writer, older; a healthy lease renewed since.
    assert snapshot(30, aged(writer, 30), renewed=1.9).content() == first
    # Who holds readers back, its state, and how many events wait are news.
    assert snapshot(2, msgspec.structs.replace(writer, events_waiting=4)).content() != first
    assert snapshot(2, msgspec.structs.replace(writer, state="active")).content() != first
    assert snapshot(2, msgspec.structs.replace(writer, pid=4343)).content() != first
    assert snapshot(2, None).content() != first
    # A writer holding nothing back is not shown: it is no news either.
    idle = msgspec.structs.replace(writer, events_waiting=0)
    assert snapshot(2, idle).content() == snapshot(0, None).content()
    # A suspect lease shows its age in whole seconds.
    assert snapshot(1, writer, suspect_for=70.4).content() == first
    assert snapshot(1, writer, suspect_for=71.2).content() != first


async def test_an_open_writer_sends_no_snapshot_until_something_changes(
    client: httpx.AsyncClient,
    store: EventStore,
    raw: asyncpg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin, "REFRESH_SECONDS", 0.1)  # a check every 0.1 s: 20 in 2 s
    waiting: list[int] = []  # events_waiting in each snapshot sent

    async def read(response: httpx.Response) -> None:
        sse = Sse(response)
        while True:
            name, data = await sse.next_event(within=30)
            assert name == "overview"
            writer = msgspec.json.decode(data)["oldest_writer"]
            waiting.append(0 if writer is None else writer["events_waiting"])

    async with open_writer(raw):
        await store.append("payment-1", [created(1)])
        async with (
            client.stream("GET", "/api/stream", headers=AUTH) as response,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(read, response)

            async def shown(least: int) -> bool:
                return bool(waiting) and waiting[-1] >= least

            await eventually(lambda: shown(1))
            sent = len(waiting)
            await anyio.sleep(2)
            assert len(waiting) - sent <= 1  # a new minute (the event rate) may send one
            before = waiting[-1]
            await store.append("payment-2", [created(2)])
            await eventually(lambda: shown(before + 1))
            tg.cancel_scope.cancel()


# -- sessions and limits -----------------------------------------------------------------------


class Clock:
    """A settable clock in Unix seconds, for the sessions' ages."""

    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


async def test_a_session_ends_on_the_server_after_seven_days(store: EventStore) -> None:
    clock = Clock()
    async with (
        serve_admin_app(store, token=TOKEN, clock=clock) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        login = await http.get("/dashboard", params={"token": TOKEN})
        session = login.cookies[COOKIE_NAME]
        assert session.partition(".")[0] == str(int(clock.now))
        cookie = {"Cookie": f"{COOKIE_NAME}={session}"}
        assert (await http.get("/api/overview", headers=cookie)).status_code == 200

        clock.now += admin.COOKIE_MAX_AGE - 1
        assert (await http.get("/api/overview", headers=cookie)).status_code == 200
        clock.now += 1  # a browser that kept the cookie past its Max-Age gains nothing
        assert (await http.get("/api/overview", headers=cookie)).status_code == 401
        page = await http.get("/dashboard", headers=cookie)
        assert page.status_code == 401
        assert "/dashboard?token=" in page.text

        # A session dated in the future (a clock set back, or a forgery) is no session either.
        auth = admin.AdminAuth(TOKEN, clock=clock)
        ahead = auth.session_for(int(clock.now) + 3600)
        response = await http.get("/api/overview", headers={"Cookie": f"{COOKIE_NAME}={ahead}"})
        assert response.status_code == 401


def test_a_session_is_valid_for_its_token_and_age_only() -> None:
    auth = admin.AdminAuth(TOKEN)
    other = admin.AdminAuth(TOKEN + "x")
    issued = int(NOW.timestamp())
    session = auth.session_for(issued)
    assert auth.session_valid(session, issued + 10)
    assert not other.session_valid(session, issued + 10)
    assert not auth.session_valid(session, issued + admin.COOKIE_MAX_AGE)
    assert not auth.session_valid(session, issued - 3600)
    for bad in ("", ".", session.partition(".")[2], f"x{session}", f"{session}0", "1\x00.ab"):
        assert not auth.session_valid(bad, issued)


def test_the_failure_window_forgets_failures_as_they_age() -> None:
    now = [0.0]
    window = admin.FailureWindow(allowed=3, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert window.retry_after("a") is None
        window.failed("a")
        now[0] += 10
    assert window.retry_after("a") == 30  # the first failure leaves the window at 60 s
    assert window.retry_after("b") is None  # per client
    now[0] = 60.0
    assert window.retry_after("a") is None


async def test_wrong_tokens_are_limited_per_client_and_a_session_still_works(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    login = await client.get("/dashboard", params={"token": TOKEN})
    cookie = {"Cookie": f"{COOKIE_NAME}={login.cookies[COOKIE_NAME]}"}
    for attempt in range(admin.LOGIN_FAILURES_ALLOWED):
        guess = await client.get("/dashboard", params={"token": f"guess-{attempt:02d}-guess-guess"})
        assert guess.status_code == 401
    for request in (
        client.get("/dashboard", params={"token": "one-more-guess-guess"}),
        client.get("/dashboard", params={"token": TOKEN}),  # the right one waits too
        client.get("/api/actors", headers=AUTH),
    ):
        response = await request
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= admin.LOGIN_FAILURE_WINDOW
        assert response.json()["error"].startswith("too many wrong admin tokens from 127.0.0.1")
    assert (await client.get("/api/overview", headers=cookie)).status_code == 200
    assert await ops_commands(store) == []


async def test_event_streams_are_limited_per_client(client: httpx.AsyncClient) -> None:
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(admin.STREAMS_PER_CLIENT):
            opened = await streams.enter_async_context(
                client.stream("GET", "/api/stream", headers=AUTH)
            )
            assert opened.status_code == 200
        refused = await client.get("/api/stream", headers=AUTH)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == str(admin.STREAM_RETRY_AFTER)
        assert "event streams are open from 127.0.0.1 already" in refused.json()["error"]

    async def another_opens() -> bool:
        async with client.stream("GET", "/api/stream", headers=AUTH) as again:
            return again.status_code == 200

    await eventually(another_opens)  # a closed stream frees its place (once the server sees it)


# -- the dashboard's writes: session cookie plus CSRF checks -----------------------------------


async def logged_in(client: httpx.AsyncClient) -> dict[str, str]:
    """The headers of the dashboard's writes: its cookies, its Origin, its CSRF header."""
    login = await client.get("/dashboard", params={"token": TOKEN})
    session, csrf = login.cookies[COOKIE_NAME], login.cookies[admin.CSRF_COOKIE]
    csrf_cookie = next(c for c in login.headers.get_list("Set-Cookie") if "csrf" in c)
    assert "HttpOnly" not in csrf_cookie  # the page's script reads it
    return {
        "Cookie": f"{COOKIE_NAME}={session}; {admin.CSRF_COOKIE}={csrf}",
        "Origin": str(client.base_url).rstrip("/"),
        admin.CSRF_HEADER: csrf,
    }


async def test_a_dashboard_write_needs_its_origin_and_csrf_token(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    good = await logged_in(client)
    assert await Leases(store, "vm:1", ttl=60).acquire("PaymentMonitor") is not None
    path = "/api/actors/PaymentMonitor/restart"
    for name, headers, problem in (
        ("no Origin", {k: v for k, v in good.items() if k != "Origin"}, "Origin"),
        ("another site", {**good, "Origin": "https://evil.example"}, "Origin"),
        ("a look-alike", {**good, "Origin": f"{good['Origin']}.evil.example"}, "Origin"),
        ("no CSRF header", {k: v for k, v in good.items() if k != admin.CSRF_HEADER}, "CSRF"),
        ("a wrong CSRF header", {**good, admin.CSRF_HEADER: "0" * 64}, "CSRF"),
    ):
        response = await client.post(path, headers=headers, json={"reason": "from a page"})
        assert response.status_code == 403, name
        error = response.json()["error"]
        assert error.startswith("cross-site request refused"), (name, error)
        assert problem in error, (name, error)
    assert await ops_commands(store) == []

    response = await client.post(path, headers=good, json={"reason": "stuck"})
    assert response.status_code == 202
    session_id = good["Cookie"].split(";")[0].partition(".")[2][:8]
    assert response.json()["requested_by"] == f"dashboard:127.0.0.1/{session_id}"
    [recorded] = await ops_commands(store)
    assert isinstance(recorded.event, OperatorCommandIssued)
    assert recorded.event.requested_by == f"dashboard:127.0.0.1/{session_id}"
    assert recorded.event.reason == "stuck"
    assert recorded.metadata.caused_by == recorded.event.requested_by


async def test_a_dead_task_is_retried_by_whoever_asked(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    await dead_letter(store)
    [dead] = await TaskQueue(store, task_types()).dead_letters(limit=5)
    response = await client.post(f"/api/tasks/{dead.id}/retry", headers=AUTH)
    assert response.status_code == 200, response.text
    answer = {"task_id": dead.id, "requeued": True, "requested_by": "api:127.0.0.1"}
    assert response.json() == answer
    requeued = [
        r
        async for r in store.read_all()
        if r.type == "TaskRequeued" and r.event.requested_by == "api:127.0.0.1"
    ]
    assert len(requeued) == 1

    # Again: it is no longer dead. An unknown task: 404. Neither writes anything.
    before = await store.head()
    again = await client.post(f"/api/tasks/{dead.id}/retry", headers=AUTH)
    assert again.status_code == 409
    assert str(dead.id) in again.json()["error"]
    missing = await client.post("/api/tasks/987654/retry", headers=AUTH)
    assert missing.status_code == 404
    word = await client.post("/api/tasks/seven/retry", headers=AUTH)
    assert word.status_code == 404
    assert "whole number" in word.json()["error"]
    assert await store.head() == before


async def test_a_path_no_api_route_matches_is_a_json_404_and_nothing_is_appended(
    client: httpx.AsyncClient, store: EventStore
) -> None:
    # An actor name holding "{" matches no route at all (aiohttp's own 404 was plain text).
    for method, path in (("POST", "/api/actors/%00%7B/restart"), ("GET", "/api/nothing")):
        response = await client.request(method, path, headers=AUTH)
        assert response.status_code == 404, path
        assert response.json()["error"].startswith("no such route in the admin API"), path
    response = await client.request("DELETE", "/api/actors", headers=AUTH)
    assert response.status_code == 405
    assert "allowed: GET" in response.json()["error"]
    assert await ops_commands(store) == []
