"""Tracing: OpenTelemetry spans for calls through the hub and on to departments' providers.

Off by default: the tracer is then OpenTelemetry's no-op one, nothing is exported and no thread runs.
With ``tracing = "otlp"`` the hub owns a TracerProvider that batches spans to an OTLP (gRPC) collector
in a background thread, so a slow or absent collector never holds up a call; it is flushed and shut
down when the hub stops. Nothing here sets OpenTelemetry's process-wide provider or propagator: many
hubs (and a provider) may share one process, each with its own tracer, handed to whoever needs it.

Trace context crosses processes as a W3C ``traceparent`` in gRPC metadata or HTTP headers.

What goes on a span is chosen by the hub's code, never taken from a request: names of RPCs and steps,
status codes, exchange ids and catalog codes, but no filter values, identity numbers or record contents.
Exceptions are not recorded on spans either (their text may quote data): only their type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from exchange.config import Settings

Context = otel_context.Context
INSTRUMENTATION = "exchange"
# The span attribute naming the exchange (its audit record's exchange id).
EXCHANGE_ID = "exchange.id"
# Longest one export of a batch may take, retries included: also the most a stop waits for a collector that is down.
EXPORT_TIMEOUT_SECONDS = 5.0
# Server-side gRPC codes that mark a span as failed (OpenTelemetry's conventions for RPC servers):
# the others are the caller's doing (a refusal, a bad argument), not a fault of this process.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER: DefaultGetter = DefaultGetter()


@dataclass(frozen=True)
class Tracing:
    """A tracer and the provider behind it (None when tracing is off: nothing to flush or shut down)."""

    tracer: Tracer
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Exports the spans ended so far; False if that did not finish in time."""
        return self.provider is None or self.provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        """Exports what is left and stops the export thread; the tracer makes no more spans after this."""
        if self.provider is not None:
            self.provider.shutdown()


def off() -> Tracing:
    """No tracing: a no-op tracer, no exporter, no thread."""
    return Tracing(trace.NoOpTracer())


def open_tracing(
    service_name: str, *, endpoint: str = "", exporter: SpanExporter | None = None, sample_ratio: float = 1.0
) -> Tracing:
    """A tracer of its own for ``service_name``, exporting in batches to ``exporter`` or an OTLP collector.

    ``endpoint`` is the collector's OTLP/gRPC address (``http://host:4317`` plaintext, ``https://`` TLS).
    A trace a caller started keeps the caller's sampling decision; one started here is kept with
    probability ``sample_ratio``. For a department's provider process as much as for the hub.
    """
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=EXPORT_TIMEOUT_SECONDS
        )
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider.get_tracer(INSTRUMENTATION), provider)


def hub_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
    """The hub's tracing as configured; ``exporter`` (tests) takes the OTLP exporter's place when it is on."""
    if settings.tracing == "off":
        return off()
    return open_tracing(
        settings.tracing_service_name,
        endpoint=settings.tracing_endpoint,
        exporter=exporter,
        sample_ratio=settings.tracing_sample_ratio,
    )


def current_context() -> Context:
    """The trace context here, to hand to work that does not inherit it (``loop.run_in_executor``)."""
    return otel_context.get_current()


@contextmanager
def step(tracer: Tracer, name: str, parent: Context | None = None, **attrs: AttributeValue) -> Iterator[Span]:
    """A child span named ``name`` around a block, current inside it; ``attrs`` become ``exchange.<key>``.

    Under the current span, or under ``parent`` (from ``current_context()``) in a thread that did not
    inherit it. An exception marks the span failed with its type only, and goes on.
    """
    attributes = {f"exchange.{key}": value for key, value in attrs.items()}
    span = tracer.start_span(name, context=parent, attributes=attributes)
    try:
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as e:
        span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        raise
    finally:
        span.end()


def note_exchange_id(exchange_id: str, span: Span | None = None) -> None:
    """Puts the exchange id on ``span`` (the current one by default) once it is known."""
    if exchange_id:
        (span or trace.get_current_span()).set_attribute(EXCHANGE_ID, exchange_id)


def outgoing_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying the current (or ``context``'s) span as a W3C traceparent; empty without one."""
    return tuple(outgoing_headers(context).items())


def outgoing_headers(context: Context | None = None) -> dict[str, str]:
    """HTTP headers carrying the current (or ``context``'s) span as a W3C traceparent; empty without one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def incoming_context(metadata: Sequence[tuple[str, str | bytes]] | Mapping[str, str] | None) -> Context | None:
    """The trace context a caller sent in its metadata or headers; None when it sent none (or a malformed one)."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    carrier = {str(k).lower(): v for k, v in pairs if isinstance(v, str)}
    if "traceparent" not in carrier:
        return None
    extracted = _PROPAGATOR.extract(carrier, getter=_GETTER)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


def start_rpc_span(tracer: Tracer, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Span:
    """A SERVER span for a gRPC call of ``method`` (``/package.Service/Method``), under the caller's trace if any."""
    service, _, name = method.lstrip("/").partition("/")
    return tracer.start_span(
        f"{service}/{name}",
        context=incoming_context(metadata),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def end_rpc_span(span: Span, code: grpc.StatusCode) -> None:
    """Ends an RPC's span with the call's status code (``rpc.grpc.status_code``), failed for server faults."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def log_ids() -> dict[str, str]:
    """The current span's trace and span ids (hex), for a log line; empty when no span is current."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}
