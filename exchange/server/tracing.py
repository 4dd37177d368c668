"""One SERVER span per call of the hub's own services, in the one place every call passes: an interceptor.

The span is named ``<service>/<method>`` (e.g. ``exchange.v1.ExchangeService/Query``), carries the
``rpc.*`` attributes and the call's status code, and joins the caller's trace when the call's metadata
has a ``traceparent``. It is the current span while the handler runs (and in the worker threads it
starts with ``asyncio.to_thread``), so the steps below it and the calls to providers hang under it.
The exchange id goes on it from the response (``exchange_id``; StreamQuery, which yields its batches
encoded, puts it there itself) or, for an error, where the error is turned into a status
(``exchange.server.rpc.abort_with``). Health checks and reflection are not traced:
a load balancer's probes every few seconds would bury the calls that matter.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from exchange import tracing

Context = grpc.aio.ServicerContext[Any, Any]
TRACED_PREFIX = "/exchange.v1."

if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class RpcTracing(_Interceptor):
    """Wraps the handler of every ``exchange.v1`` method in a SERVER span of ``tracer``."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or not method.startswith(TRACED_PREFIX):  # type: ignore[redundant-expr,unused-ignore]
            return handler
        metadata = [(str(k), v) for k, v in handler_call_details.invocation_metadata or ()]

        def start() -> Span:
            return tracing.start_rpc_span(self._tracer, method, metadata)

        parse, send = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_traced(handler.unary_unary, start), parse, send)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_traced(handler.stream_unary, start), parse, send)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_traced(handler.unary_stream, start), parse, send)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_traced(handler.stream_stream, start), parse, send)
        return handler


def _code_of(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: the one set on it (an abort sets it), else what ``error`` means."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def _note(span: Span, message: object) -> None:
    exchange_id = getattr(message, "exchange_id", "")
    if isinstance(exchange_id, str) and exchange_id:
        tracing.note_exchange_id(exchange_id, span)


def _traced(behavior: Any, start: Callable[[], Span]) -> Any:
    """``behavior`` inside a span: a coroutine (one answer, or one that writes its messages) or a stream."""
    if inspect.isasyncgenfunction(behavior):
        return _traced_stream(behavior, start)

    async def call(request: Any, context: Context) -> Any:
        span = start()
        error: BaseException | None = None
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                answer = await behavior(request, context)
            _note(span, answer)
            return answer
        except BaseException as e:
            error = e
            raise
        finally:
            tracing.end_rpc_span(span, _code_of(context, error))

    return call


def _traced_stream(behavior: Any, start: Callable[[], Span]) -> Any:
    """A streaming answer inside a span that is current only while the handler runs, one message at a time
    (a span attached across a ``yield`` would leak into whatever runs between two messages)."""

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        span = start()
        messages = behavior(request, context)
        error: BaseException | None = None
        try:
            while True:
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    try:
                        message = await anext(messages)
                    except StopAsyncIteration:
                        break
                _note(span, message)
                yield message
        except BaseException as e:
            error = e
            raise
        finally:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                await messages.aclose()
            tracing.end_rpc_span(span, _code_of(context, error))

    return stream
