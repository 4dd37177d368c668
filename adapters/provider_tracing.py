"""The provider kit's spans: one SERVER span per call from the hub, joined to the hub's trace.

The hub sends its trace context (a W3C ``traceparent``) with every call; the span opened here is its
child, so a trace shows the department's work under the hub's exchange. The span carries the
``rpc.*`` attributes, the status code and the exchange id the hub sent (``exchange.id``), and is
current while the department's function runs (its own spans, if it makes any, hang under it).
Nothing of the query's filters or the rows goes on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from exchange import tracing

if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class ProviderTracing(_Interceptor):
    """Wraps every ProviderService call (one answer or a stream) in a SERVER span of ``tracer``."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)
        metadata = [(str(k), v) for k, v in handler_call_details.invocation_metadata or ()]

        def start(request: object) -> Span:
            span = tracing.start_rpc_span(self._tracer, method, metadata)
            tracing.note_exchange_id(str(getattr(request, "exchange_id", "") or ""), span)
            return span

        parse, send = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_traced(handler.unary_unary, start), parse, send)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_traced_stream(handler.unary_stream, start), parse, send)
        return handler  # the provider service has no request streams


def _code_of(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, GeneratorExit):  # the stream was closed before its end: the hub cancelled
        return grpc.StatusCode.CANCELLED
    code = context.code()  # type: ignore[attr-defined]  # set by an abort; missing from the type stubs
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _traced(behavior: Any, start: Callable[[object], Span]) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        span = start(request)
        error: BaseException | None = None
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                return behavior(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            tracing.end_rpc_span(span, _code_of(context, error))

    return call


def _traced_stream(behavior: Any, start: Callable[[object], Span]) -> Any:
    """A stream whose span is current while each message is made, and ends with the stream."""

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        span = start(request)
        error: BaseException | None = None
        messages: Iterator[Any] = iter(())
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                messages = iter(behavior(request, context))
            while True:
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    message = next(messages, _END)
                if message is _END:
                    return
                yield message
        except BaseException as e:
            error = e
            raise
        finally:
            close = getattr(messages, "close", None)
            if callable(close):  # the hub cancelled: the department's iterator is closed, as without tracing
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    close()
            tracing.end_rpc_span(span, _code_of(context, error))

    return stream


_END = object()
