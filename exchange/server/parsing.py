"""Reads and parses each request inside the call, so every refusal of a body is the hub's own, and recorded.

Left to gRPC, a body that is not the expected message ends as UNKNOWN with the parser's exception
text, and one over the size limit as RESOURCE_EXHAUSTED before any of the hub's code runs: neither
would be recorded. Here a unary request is read as a one-message stream: a body that does not parse
is INVALID_ARGUMENT naming the message expected, one over ``max_message_bytes`` RESOURCE_EXHAUSTED,
and both are recorded for an identified caller, with an exchange id in the status for it to quote.
The transport reads requests up to a margin over the limit (``max_message_headroom_bytes``); a larger
one gRPC refuses unread, and the hub, seeing no request arrive, still records the attempt.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc

from exchange import errors
from exchange.models import Principal
from exchange.server.rpc import Authenticator, abort_with, peer_of, principal_of

Context = grpc.aio.ServicerContext[Any, Any]
# What a call's read() answers after its last message (missing from the type stubs).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class Unread(Protocol):
    """Where calls refused before their request was read are recorded."""

    async def unread(self, identify: Callable[[], Principal], method: str, reason: str, message: str) -> str: ...

    def unread_later(
        self, identify: Callable[[], Principal], method: str, reason: str, message: str
    ) -> asyncio.Future[str]: ...


if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class RequestParsing(_Interceptor):
    """Reads, bounds and parses the request of every unary-request method; refusals recorded in ``refusals``."""

    def __init__(self, auth: Authenticator, insecure_dev: bool, refusals: Unread, limit: int) -> None:
        self.auth = auth
        self.insecure_dev = insecure_dev
        self._refusals = refusals
        self.limit = limit
        # Per method: the service's handler and its reading form, built once (the service's handler is the
        # same object on every call; one replaced is wrapped again).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # type: ignore[redundant-expr,unused-ignore]
            return handler
        return self.reading(str(handler_call_details.method), handler)

    def reading(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` of ``method`` in the form that reads its request itself; as it is if its request is a
        stream or not parsed. Built once per handler (the hub's method table applies it at registration, with
        no interceptor per call; ``intercept_service`` is the same as an interceptor)."""
        if handler.request_deserializer is None or handler.request_streaming:
            return handler
        held = self._wrapped.get(method)
        if held is not None and held[0] is handler:
            return held[1]
        wrapped = self._reading(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _reading(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` in the form that reads its request itself (a one-message stream)."""
        parse = handler.request_deserializer
        assert parse is not None  # reading passes on a handler without one as it is
        owner = getattr(parse, "__self__", None)
        expected = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request message")
        read = _Reader(self, parse, expected, method)
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _read_unary(handler.unary_unary, read), response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _read_stream(handler.unary_stream, read), response_serializer=handler.response_serializer
            )
        return handler

    async def refuse(self, context: Context, method: str, error: errors.ExchangeError, reason: str) -> None:
        """Ends the call with ``error``, recorded first when the caller is one the hub can identify."""
        # The caller is read off the call now: the recording may outlive the call, which must not be touched then.
        caller = partial(principal_of, self, peer_of(self, context))
        exchange_id = await self._refusals.unread(caller, method, reason, error.message)
        await abort_with(context, error.recorded_as(exchange_id) if exchange_id else error)

    def gone(self, context: Context, method: str, error: errors.ExchangeError, reason: str) -> None:
        """Records a call that gRPC cancelled before its request was read; there is no one left to answer."""
        caller = partial(principal_of, self, peer_of(self, context))
        self._refusals.unread_later(caller, method, reason, error.message)


class _Reader:
    """The one request of a call, read from its (one-message) stream and parsed; a refusal otherwise."""

    def __init__(self, gate: RequestParsing, parse: Callable[[bytes], Any], expected: str, method: str) -> None:
        self._gate = gate
        self._parse = parse
        self._expected = expected
        self._method = method

    async def __call__(self, context: Context) -> Any:
        try:
            body = await _first(context)
        except asyncio.CancelledError:
            # gRPC cancels the call when it refused the request unread (over the transport's limit) or the caller
            # went away; the cancellation can reach this task before the read's end does. Recorded all the same.
            self._gate.gone(context, self._method, *self._unreceived())
            raise
        refusal = self._refusal(body)
        if body is not None and refusal is None:
            try:
                return self._parse(body)
            except Exception:  # DecodeError, or a limit of the parser (nesting): the body is not the message
                message = f"the request is not a valid {self._expected}: check that the caller uses this hub's "
                refusal = errors.InvalidArgument(message + "exchange.v1 contract"), "unparseable_request"
        assert refusal is not None
        await self._gate.refuse(context, self._method, *refusal)
        raise AssertionError("unreachable: a refusal aborts the call")

    def _refusal(self, body: bytes | None) -> tuple[errors.ExchangeError, str] | None:
        """Why a body is refused before it is parsed, and the reason recorded; None if it may be parsed."""
        limit = self._gate.limit
        if body is None:  # gRPC refused it unread (over the transport's limit), or the caller sent none
            return self._unreceived()
        if len(body) > limit:
            message = f"the request is {len(body)} bytes, over this hub's limit of {limit}: send less per call"
            return errors.ResourceExhausted(message, "REQUEST_TOO_LARGE"), "request_too_large"
        return None

    def _unreceived(self) -> tuple[errors.ExchangeError, str]:
        """The refusal of a call whose request never arrived, and the reason recorded."""
        expected = f"a {self._expected} of at most {self._gate.limit} bytes is expected"
        return errors.InvalidArgument(f"no request was received: {expected}"), "request_not_received"


class _Readable(Protocol):
    """What the reader uses of a call: its next request message (gRPC's ``EOF`` after the last)."""

    async def read(self) -> object: ...


async def _first(call: _Readable) -> bytes | None:
    """The call's first message, read off the call itself (None if there is none).

    Not through the request iterator gRPC hands the handler: iterating it makes an async generator per call
    (registered with the event loop, then closed), and a suspended one forms a reference cycle with its call
    that only the collector's full pass would free. Read so, no generator is ever made.
    """
    body = await call.read()
    return None if body is _EOF else cast("bytes", body)


def _read_unary(behavior: Any, read: _Reader) -> Any:
    async def unary(bodies: AsyncIterator[bytes], context: Context) -> Any:  # bodies: unread (see ``_first``)
        return await behavior(await read(context), context)

    return unary


def _read_stream(behavior: Any, read: _Reader) -> Any:
    if not inspect.isasyncgenfunction(behavior):  # a coroutine that writes its messages (grpc health's Watch)

        async def writing(bodies: AsyncIterator[bytes], context: Context) -> None:
            await behavior(await read(context), context)

        return writing

    async def stream(bodies: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async for message in behavior(await read(context), context):
            yield message

    return stream
