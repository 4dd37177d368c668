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


def test_the_first_message_is_read_and_the_stream_closed_behind_it() -> None:
    closed: list[bool] = []

    async def bodies() -> AsyncIterator[bytes]:
        try:
            yield b"one"
            yield b"two"  # a unary call has one: what follows is never read
        finally:
            closed.append(True)  # a suspended reader would keep its call in a reference cycle

    async def empty() -> AsyncIterator[bytes]:
        nothing: tuple[bytes, ...] = ()
        for body in nothing:
            yield body

    async def read() -> tuple[bytes | None, list[bool]]:  # what was closed before the loop ends (it closes the rest)
        return await _first(bodies()), list(closed)

    assert asyncio.run(read()) == (b"one", [True])
    assert asyncio.run(_first(empty())) is None
