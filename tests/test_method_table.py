"""The hub's one table of methods (exchange.server.methods): every method is found by its full name, methods
added only as a generic handler are still served, an unknown one is UNIMPLEMENTED, and interceptors still run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from exchange.server.methods import MethodTable
from tests.harness import RunningHub

ECHO = "/test.Echo/Say"


class _Counting(grpc.aio.ServerInterceptor):  # type: ignore[type-arg,misc,unused-ignore]
    """Counts the calls it sees: an interceptor still sees every call, whatever table found its method."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        self.seen.append(str(details.method))
        return await continuation(details)


class _EchoOnly(grpc.GenericRpcHandler):  # type: ignore[type-arg,misc,unused-ignore]
    """A service added only as a generic handler, with no registration of its methods."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method != ECHO:
            return None

        async def say(request: bytes, context: Any) -> bytes:
            return b"echo:" + request

        return grpc.unary_unary_rpc_method_handler(say)


Served = tuple[list[str], list[str], health_pb2.HealthCheckResponse, bytes, grpc.StatusCode, set[str]]


async def _serve_and_call() -> Served:
    counting = _Counting()
    server = MethodTable(grpc.aio.server(interceptors=[counting]))
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    reflection.enable_server_reflection(("grpc.health.v1.Health", reflection.SERVICE_NAME), server)
    server.add_generic_rpc_handlers((_EchoOnly(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            echoed = await channel.unary_unary(ECHO, None, None)(b"hi", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/test.Echo/Nothing", None, None)(b"", timeout=5)
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            asking = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            listed = {s.name async for r in asking for s in r.list_services_response.service}
    finally:
        await server.stop(None)
    return counting.seen, list(server.methods()), checked, echoed, unknown.value.code(), listed


def test_every_method_is_served_through_one_table() -> None:
    seen, methods, checked, echoed, unknown, listed = asyncio.run(_serve_and_call())
    assert "/grpc.health.v1.Health/Check" in methods and "/grpc.health.v1.Health/Watch" in methods
    assert ECHO not in methods  # found through its generic handler, as added
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert echoed == b"echo:hi"
    assert unknown == grpc.StatusCode.UNIMPLEMENTED
    assert listed == {"grpc.health.v1.Health", reflection.SERVICE_NAME}  # the asyncio reflection servicer
    assert seen[:3] == ["/grpc.health.v1.Health/Check", ECHO, "/test.Echo/Nothing"]


def test_the_hubs_server_holds_its_methods_in_the_table(hub: RunningHub) -> None:
    server = hub.hub.server
    assert isinstance(server, MethodTable)
    methods = set(server.methods())
    assert {"/exchange.v1.ExchangeService/Query", "/exchange.v1.RegistryService/WhoAmI"} <= methods
    assert "/grpc.health.v1.Health/Check" in methods


async def _stream_sent_as_encoded() -> tuple[list[bytes], list[str]]:
    counting = _Counting()
    server = MethodTable(grpc.aio.server(interceptors=[counting]))

    async def parts(request: bytes, context: Any) -> Any:
        for n in range(3):
            yield health_pb2.HealthCheckResponse(status=n).SerializeToString()  # encoded by the servicer

    handler = grpc.unary_stream_rpc_method_handler(
        parts, response_serializer=health_pb2.HealthCheckResponse.SerializeToString
    )
    server.add_registered_method_handlers("test.Parts", {"Get": handler})
    server.send_encoded("/test.Parts/Get")
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            got = [m async for m in channel.unary_stream("/test.Parts/Get", None, None)(b"", timeout=5)]
    finally:
        await server.stop(None)
    return got, counting.seen


def test_a_method_told_to_send_encoded_sends_its_servicers_bytes_as_they_are() -> None:
    got, seen = asyncio.run(_stream_sent_as_encoded())
    assert [health_pb2.HealthCheckResponse.FromString(m).status for m in got] == [0, 1, 2]
    assert seen == ["/test.Parts/Get"]


def test_only_a_streaming_method_is_sent_encoded() -> None:
    async def tell() -> None:
        server = MethodTable(grpc.aio.server())
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        server.send_encoded("/grpc.health.v1.Health/Check")

    with pytest.raises(ValueError, match="not a server-streaming method"):
        asyncio.run(tell())


class _Marking:
    """A table's ``wrap``: each handler's answers marked, and every wrapping counted by method."""

    def __init__(self) -> None:
        self.wrapped: list[str] = []

    def __call__(self, method: str, handler: Any) -> Any:
        self.wrapped.append(method)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def marked(request: bytes, context: Any) -> bytes:
                answer: bytes = await inner(request, context)
                return b"wrapped:" + answer

            return grpc.unary_unary_rpc_method_handler(marked)
        inner_stream = handler.unary_stream

        async def marked_stream(request: bytes, context: Any) -> Any:
            async for part in inner_stream(request, context):
                yield b"wrapped:" + part

        return grpc.unary_stream_rpc_method_handler(marked_stream, response_serializer=handler.response_serializer)


async def _wrapped_calls() -> tuple[list[bytes], list[bytes], list[str]]:
    marking = _Marking()
    server = MethodTable(grpc.aio.server(), wrap=marking)

    async def say(request: bytes, context: Any) -> bytes:
        return b"said:" + request

    async def parts(request: bytes, context: Any) -> Any:
        for n in range(2):
            yield str(n).encode()

    server.add_registered_method_handlers("test.Said", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server.add_registered_method_handlers("test.Parts", {"Get": grpc.unary_stream_rpc_method_handler(parts)})
    server.send_encoded("/test.Parts/Get")
    server.add_generic_rpc_handlers((_EchoOnly(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = [await channel.unary_unary(m, None, None)(b"x", timeout=5) for m in ("/test.Said/Say", ECHO) * 2]
            streamed = [m async for m in channel.unary_stream("/test.Parts/Get", None, None)(b"", timeout=5)]
    finally:
        await server.stop(None)
    return unary, streamed, marking.wrapped


def test_a_tables_wrap_is_applied_once_per_handler_and_to_every_kind_of_method() -> None:
    unary, streamed, wrapped = asyncio.run(_wrapped_calls())
    # Registered, told to send encoded, and found only generically: every call is served wrapped.
    assert unary == [b"wrapped:said:x", b"wrapped:echo:x"] * 2
    assert streamed == [b"wrapped:0", b"wrapped:1"]
    # A registered method is wrapped when it enters the table, not per call; send_encoded's replacement is
    # wrapped again (it is a new handler); a generic one is wrapped as it is found (the wrap keeps its own cache).
    assert wrapped.count("/test.Said/Say") == 1
    assert wrapped.count("/test.Parts/Get") == 2
    assert wrapped.count(ECHO) == 2
