"""One table of the hub's methods, so that accepting a call costs the same however many methods it serves.

The code protoc generates both adds a service's generic handler and *registers* each of its methods.
grpc.aio's server then waits for the next call of every registered method on a future of its own, and its
accept loop hands all of them to ``asyncio.wait`` for each call it accepts: with the hub's ~80 methods that
is tens of microseconds of the event loop per call (every future checked, called back and released again).
Served through ``MethodTable`` instead, the server registers no method: one accept is pending, and a
call's method is found by its full name in one dict. What a method does, and how it is intercepted, is
unchanged: the handlers are the very ones the generated code made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in the type stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Generic = grpc.GenericRpcHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _Generic = grpc.GenericRpcHandler


class _Lookup(_Generic):
    """The server's one generic handler: a method by its full name, then any handler added only generically."""

    def __init__(self) -> None:
        self.methods: dict[str, _Handler] = {}
        self.generic: list[_Generic] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        found = self.methods.get(handler_call_details.method)
        if found is not None:
            return found
        for handler in self.generic:  # a service added without registering its methods (or an unknown method)
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


class MethodTable(grpc.aio.Server):
    """``server`` as the generated ``add_*_to_server`` functions see it: methods go into one table, none is
    registered with gRPC; everything else is the server's own."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self._lookup = _Lookup()
        server.add_generic_rpc_handlers((self._lookup,))

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[_Generic]) -> None:
        """Kept for the methods no registration names (the generated code's own handler is met only then)."""
        self._lookup.generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, _Handler]) -> None:
        """``service_name``'s methods into the table, by the full name a call carries (``/service/method``)."""
        for name, handler in method_handlers.items():
            self._lookup.methods[f"/{service_name}/{name}"] = handler

    def send_encoded(self, method: str) -> None:
        """``method`` (a full name; server-streaming) sends the bytes its servicer yields as they are: the
        servicer encodes its messages itself (once), gRPC does not encode them again. Interceptors are unchanged:
        they pass the handler's (now absent) response serializer on as they found it."""
        handler = self._lookup.methods[method]
        if handler.unary_stream is None:
            raise ValueError(f"{method} is not a server-streaming method")
        self._lookup.methods[method] = grpc.unary_stream_rpc_method_handler(
            handler.unary_stream, request_deserializer=handler.request_deserializer, response_serializer=None
        )

    def methods(self) -> Iterable[str]:
        """The full names of the methods in the table."""
        return iter(self._lookup.methods)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)
