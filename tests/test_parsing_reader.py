"""The request-parsing interceptor: each method's reading form built once; a unary call's one message read,
and the stream it was read from closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import grpc

from exchange.server.parsing import RequestParsing, _first
from exchange.v1 import exchange_pb2 as xpb


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _service_handler() -> grpc.RpcMethodHandler[Any, Any]:
    async def query(request: xpb.QueryRequest, context: object) -> xpb.QueryResponse:
        return xpb.QueryResponse()

    return grpc.unary_unary_rpc_method_handler(
        query, request_deserializer=xpb.QueryRequest.FromString, response_serializer=xpb.QueryResponse.SerializeToString
    )


def test_each_methods_reading_form_is_built_once_and_again_for_a_new_handler() -> None:
    gate = RequestParsing(cast(Any, None), False, cast(Any, None), 1024)  # reading forms only: nothing is refused
    handlers = {"/exchange.v1.ExchangeService/Query": _service_handler()}

    def continuation(details: grpc.HandlerCallDetails) -> Awaitable[grpc.RpcMethodHandler[Any, Any]]:
        async def found() -> grpc.RpcMethodHandler[Any, Any]:
            return handlers[str(details.method)]

        return found()

    def ask() -> Awaitable[grpc.RpcMethodHandler[Any, Any]]:
        return gate.intercept_service(continuation, _Details("/exchange.v1.ExchangeService/Query"))

    async def run() -> list[grpc.RpcMethodHandler[Any, Any]]:
        first, again = await ask(), await ask()
        handlers["/exchange.v1.ExchangeService/Query"] = _service_handler()  # the service replaced
        return [first, again, await ask()]

    first, again, replaced = asyncio.run(run())
    assert first.request_streaming and not first.response_streaming  # it reads its request itself
    assert again is first and replaced is not first and replaced.request_streaming


class _Call:
    """A call's reading side: its messages, then gRPC's EOF; how many reads were asked for."""

    def __init__(self, *bodies: bytes) -> None:
        self._bodies = list(bodies)
        self.reads = 0

    async def read(self) -> object:
        self.reads += 1
        return self._bodies.pop(0) if self._bodies else grpc.aio.EOF  # type: ignore[attr-defined]


def test_the_first_message_is_read_off_the_call_and_nothing_after_it() -> None:
    two, none = _Call(b"one", b"two"), _Call()  # a unary call has one: what follows is never read
    assert asyncio.run(_first(two)) == b"one" and two.reads == 1
    assert asyncio.run(_first(none)) is None


def test_a_unary_handler_reads_its_request_off_the_call_never_through_the_request_iterator() -> None:
    gate = RequestParsing(cast(Any, None), False, cast(Any, None), 1024)
    answered: list[xpb.QueryRequest] = []

    async def query(request: xpb.QueryRequest, context: object) -> xpb.QueryResponse:
        answered.append(request)
        return xpb.QueryResponse(exchange_id="EX1")

    handler = grpc.unary_unary_rpc_method_handler(
        query, request_deserializer=xpb.QueryRequest.FromString, response_serializer=xpb.QueryResponse.SerializeToString
    )
    reading = gate._reading(handler, "/exchange.v1.ExchangeService/Query")
    iterated: list[bool] = []

    class _Untouched:  # the request iterator gRPC hands the handler: iterating it would make a generator per call
        def __aiter__(self) -> AsyncIterator[bytes]:
            iterated.append(True)
            raise AssertionError("the request iterator was used")

    call = _Call(xpb.QueryRequest(resource_code="R1").SerializeToString())
    behavior = cast(Any, reading.stream_unary)  # the reading form: a coroutine of (requests, call)
    response = asyncio.run(behavior(_Untouched(), call))
    assert response.exchange_id == "EX1" and answered[0].resource_code == "R1"
    assert call.reads == 1 and not iterated
