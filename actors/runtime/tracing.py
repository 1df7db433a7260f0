"""Traces in OpenTelemetry's format: from a Telegram update, through the events it caused, to an
actor's decision and the notice sent.

**Off unless configured.** :func:`configure` (called by ``i3lani`` at start) turns tracing on
when the standard variables ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``;
``none`` keeps it off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (then ``otlp``). Spans go through the SDK's batching
processor to the standard OTLP/HTTP exporter, which reads its own variables (endpoint,
headers, timeout...); ``OTEL_SERVICE_NAME`` names the service (default ``i3lani-<command>``).
``OTEL_SDK_DISABLED=true`` keeps it off. Without the ``otel`` extra installed, tracing is off:
every function here does nothing, and asking for traces logs one warning.

**How a trace crosses the log.** A span's context travels in the metadata of the events
written inside it (:attr:`events.EventMetadata.traceparent`, the value of W3C Trace Context's
``traceparent`` header). Whoever acts on such an event later, in any process, opens its span as
a child of that context::

    telegram update                            the gateway, one Telegram update
      PaymentMonitor react PaymentCreated      the actor, from the event's traceparent
        PaymentMonitor perform CheckPayments   its TonAPI scan and decision (PaymentConfirmed)
          notify PaymentConfirmed              the gateway's notifier: the notice sent

Spans open only inside a trace: an actor's tick, or an event without a traceparent, starts
none (a trace per tick would bury the ones that matter). Each span notes the events appended
inside it (:func:`note_appended`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from events.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = ["configure", "use", "span", "traceparent", "note_appended", "enabled"]

logger = logging.getLogger(__name__)

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing stays off
    _PROPAGATOR = None
else:
    _PROPAGATOR = TraceContextTextMapPropagator()

_EXPORTERS: Final = ("otlp", "console", "none")
Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


def use(provider: TracerProvider | None) -> None:
    """Record spans with ``provider`` (None: stop recording). :func:`configure` calls it; a
    test passes a provider with the SDK's in-memory exporter."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("i3lani")


def configure(
    env: Mapping[str, str] = os.environ, *, service: str = "i3lani"
) -> Callable[[], None]:
    """Turn tracing on when ``env`` asks for it (see the module docstring); the function
    returned flushes the spans still buffered and turns it off (call it before exiting).
    ConfigError, one line, for an exporter other than otlp, console or none."""
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name and exporter_name not in _EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER must be one of {', '.join(_EXPORTERS)}, got {exporter_name!r}"
        )
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or exporter_name == "none" or not (exporter_name or endpoint):
        return _nothing
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        logger.warning(
            "traces asked for (OTEL_* set) but the otel extra is not installed: "
            "pip install 'i3lani[otel]'; tracing is off",
            extra={"action": "tracing_unavailable"},
        )
        return _nothing
    exporter: SpanExporter
    if exporter_name == "console":
        exporter, where = ConsoleSpanExporter(), "stdout"
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The endpoint as the specification composes it (the base gets /v1/traces); headers,
        # timeout, compression and certificates the exporter reads itself.
        traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not traces and endpoint:
            traces = endpoint.rstrip("/") + "/v1/traces"
        exporter = OTLPSpanExporter(endpoint=traces)
        where = traces or "the exporter's default endpoint"
    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    logger.info(
        "tracing on: service %s, exporter %s (%s)",
        name,
        exporter_name or "otlp",
        where,
        extra={"action": "tracing_on"},
    )

    def stop() -> None:
        use(None)
        provider.shutdown()

    return stop


def _nothing() -> None:
    return None


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the span open now, for the metadata of the events written in
    it; None when tracing is off or no span is open."""
    if _tracer is None or _PROPAGATOR is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    root: bool = False,
    attributes: Attributes | None = None,
) -> Iterator[None]:
    """A span around the block: a new trace with ``root``; else a child of ``parent`` (an
    event's traceparent) or, without one, of the span open now. No span when tracing is off,
    or when there is nothing to be a child of (or ``parent`` is malformed). An exception
    leaving the block is recorded on the span and goes on."""
    tracer = _tracer
    if tracer is None or _PROPAGATOR is None:
        yield
        return
    context: Any
    if root:
        context = _context.Context()
    elif parent is not None:
        context = _PROPAGATOR.extract({"traceparent": parent})
        if not _trace.get_current_span(context).get_span_context().is_valid:
            yield
            return
    elif _trace.get_current_span().get_span_context().is_valid:
        context = None  # the span open now
    else:
        yield
        return
    with tracer.start_as_current_span(name, context=context, attributes=attributes):
        yield


def note_appended(stream: str, event_type: str, position: int) -> None:
    """Note on the span open now that it appended ``event_type`` to ``stream`` at
    ``position`` (nothing without a span)."""
    if _tracer is None or _PROPAGATOR is None:
        return
    current = _trace.get_current_span()
    if current.is_recording():
        current.add_event(
            f"appended {event_type}",
            {"i3lani.stream": stream, "i3lani.event.type": event_type, "i3lani.position": position},
        )
