"""Traces (actors/runtime/tracing.py): one Telegram update followed, through the events it caused
and the PaymentMonitor's decision, to the notice sent, as one trace in the SDK's in-memory
exporter. And tracing off: no span, no traceparent in any event.

The gateway runs on its webhook with the Bot API stand-in, the PaymentMonitor against the TonAPI
stand-in, the notifier as the gateway runs it: all in this process, on one event store.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.to_thread
import pytest
from aiogram import Bot
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.config import Settings
from actors.payment_monitor import PaymentMonitor
from actors.runtime import ActorRunner, tracing
from actors.runtime.clock import SystemClock
from actors.telegram import TelegramClient
from actors.ton import Address
from actors.tonapi import TonApiClient
from bot_gateway import run_notifier
from events.errors import ConfigError
from ops.standins import TonApiStandIn
from store import EventStore
from tests.bot_gateway.conftest import WALLET, Telegram
from tests.waiting import eventually

PAYER = "0:ef59caea6ebbee8542839162aa654b76f416e712ce22752da647d7e22cf1097f"
USER = 4242
TON = 1_000_000_000


@contextlib.contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span kept in memory as it ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


@contextlib.asynccontextmanager
async def worker(store: EventStore, bot: Bot, tonapi: TonApiStandIn) -> AsyncIterator[None]:
    """The PaymentMonitor and the gateway's notifier, running."""
    settings = Settings(tonapi_url=tonapi.url, wallet=WALLET, payment_interval=3600)
    async with (
        TonApiClient(tonapi.url, retries=1, timeout=5.0) as client,
        anyio.create_task_group() as tg,
    ):
        runner = ActorRunner(
            PaymentMonitor(settings, tonapi=client), store, SystemClock(), node="node-t"
        )
        await tg.start(lambda task_status: runner.run(task_status=task_status))
        await tg.start(
            lambda task_status: run_notifier(
                store, TelegramClient(bot), poll_interval=0.1, task_status=task_status
            )
        )
        yield
        tg.cancel_scope.cancel()


def hex_id(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


async def test_one_update_is_one_trace_to_the_notice_sent(
    telegram: Telegram, store: EventStore, bot: Bot
) -> None:
    with recorded_spans() as exporter:
        async with TonApiStandIn() as tonapi, worker(store, bot, tonapi):
            # The user pays before asking (the payment id is the first): the PaymentMonitor's
            # first check, set off by the update's PaymentCreated, finds the transfer.
            tonapi.transfer(
                Address.parse(WALLET).to_raw(), source=PAYER, value=TON, comment="i3lani_1"
            )
            reply = await telegram.say(USER, "/subscribe week")
            assert "i3lani_1" in reply

            def notice() -> list[str]:
                return [m.text for m in telegram.sent_to(USER) if " is confirmed:" in m.text]

            async def noticed() -> bool:
                ended = {s.name for s in exporter.get_finished_spans()}
                return {"notify PaymentConfirmed", "notify SubscriptionActivated"} <= ended

            await eventually(noticed, within=20)
            assert notice() == ["Payment #1 is confirmed: 1 TON received. Thank you!"]

    spans = exporter.get_finished_spans()
    [update] = [s for s in spans if s.name == "telegram update"]
    trace_id = update.context.trace_id
    trace = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in trace}

    def parent_of(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    [react] = [s for s in trace if s.name == "PaymentMonitor react PaymentCreated"]
    [perform] = [s for s in trace if s.name == "PaymentMonitor perform CheckPayments"]
    notified = [s for s in trace if s.name.startswith("notify ")]
    assert update.parent is None  # the root: one update, one trace
    assert parent_of(react) is update
    assert parent_of(perform) is react
    assert {s.name for s in notified} == {"notify PaymentConfirmed", "notify SubscriptionActivated"}
    assert all(parent_of(s) is perform for s in notified)
    assert update.attributes is not None
    assert update.attributes["telegram.type"] == "message"

    # The spans name the events they wrote, and the events carry the spans on.
    appended = [e.name for e in perform.events]
    assert {"appended PaymentConfirmed", "appended SubscriptionActivated"} <= set(appended)
    events = {r.type: r for r in await store.read_stream("payment-1")}
    created, confirmed = events["PaymentCreated"], events["PaymentConfirmed"]
    flags = hex_id(int(update.context.trace_flags), 2)
    assert created.metadata.traceparent == (
        f"00-{hex_id(trace_id, 32)}-{hex_id(update.context.span_id, 16)}-{flags}"
    )
    assert confirmed.metadata.traceparent == (
        f"00-{hex_id(trace_id, 32)}-{hex_id(perform.context.span_id, 16)}-{flags}"
    )
    assert confirmed.metadata.caused_by == "actor:PaymentMonitor"
    assert created.metadata.correlation_id is not None


async def test_tracing_off_records_no_span_and_no_traceparent(
    telegram: Telegram, store: EventStore, bot: Bot
) -> None:
    assert not tracing.enabled()
    async with TonApiStandIn() as tonapi, worker(store, bot, tonapi):
        tonapi.transfer(Address.parse(WALLET).to_raw(), source=PAYER, value=TON, comment="i3lani_1")
        await telegram.say(USER, "/subscribe week")

        async def noticed() -> bool:
            return any(" is confirmed:" in m.text for m in telegram.sent_to(USER))

        await eventually(noticed, within=20)
    traced = [r.type async for r in store.read_all() if r.metadata.traceparent is not None]
    assert traced == []


def test_tracing_is_off_unless_the_environment_asks(caplog: pytest.LogCaptureFixture) -> None:
    for env in (
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ):
        stop = tracing.configure(env)
        assert not tracing.enabled(), env
        stop()
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER must be one of otlp, console"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"})

    # Asked for, with the standard OTLP exporter: on until stopped.
    caplog.set_level(logging.INFO, logger="actors.runtime.tracing")
    stop = tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, service="t")
    assert tracing.enabled()
    stop()
    assert not tracing.enabled()
    assert "tracing on: service t, exporter otlp (http://127.0.0.1:9/v1/traces)" in caplog.text


def test_spans_open_only_inside_a_trace() -> None:
    with recorded_spans() as exporter:
        with tracing.span("tick"):  # no trace open, no parent: none
            assert tracing.traceparent() is None
        with tracing.span("bad", parent="00-not-a-trace-01"):
            assert tracing.traceparent() is None
        with tracing.span("root", root=True), tracing.span("child"):
            child = tracing.traceparent()
        assert child is not None
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", child)
        with tracing.span("continued", parent=child):
            pass
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["child", "root", "continued"]


WITHOUT_OTEL = """
import logging, sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from actors.runtime import tracing
stop = tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"})
with tracing.span("telegram update", root=True):
    print("traceparent:", tracing.traceparent(), "enabled:", tracing.enabled())
stop()
"""


@pytest.mark.process
async def test_without_the_otel_extra_tracing_is_off_and_says_why() -> None:
    done = await anyio.run_process([sys.executable, "-c", WITHOUT_OTEL], check=False)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert done.stdout.decode().splitlines() == ["traceparent: None enabled: False"]
    assert done.stderr.decode().splitlines() == [
        "traces asked for (OTEL_* set) but the otel extra is not installed: "
        "pip install 'i3lani[otel]'; tracing is off"
    ]


async def test_the_standard_otlp_exporter_sends_the_spans_to_the_endpoint() -> None:
    """A collector stand-in on 127.0.0.1 receives what the OTLP/HTTP exporter sends: the
    protobuf ``ExportTraceServiceRequest`` any collector reads."""
    received: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.headers.get("Content-Type", ""), await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    async with TestServer(app, host="127.0.0.1") as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": str(collector.make_url("/")),
            "OTEL_SERVICE_NAME": "i3lani-test",
        }
        stop = tracing.configure(env)
        with tracing.span("telegram update", root=True, attributes={"telegram.update_id": 7}):
            pass
        await anyio.to_thread.run_sync(stop)  # flushes the batch: the collector is on this loop
    [(content_type, body)] = received
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    [resource] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "i3lani-test"
    [scope] = resource.scope_spans
    [exported] = scope.spans
    assert exported.name == "telegram update"
    assert scope.scope.name == "i3lani"
