"""One table of the hub's methods, so that accepting a call costs the same however many methods it serves.

The code protoc generates both adds a service's generic handler and *registers* each of its methods.
grpc.aio's server then waits for the next call of every registered method on a future of its own, and its
accept loop hands all of them to ``asyncio.wait`` for each call it accepts: with the hub's ~80 methods that
is tens of microseconds of the event loop per call (every future checked, called back and released again).
Served through ``MethodTable`` instead, the server registers no method: one accept is pending, and a
call's method is found by its full name in one dict. What a method does, and how it is intercepted, is
unchanged: the handlers are the very ones the generated code made.

A ``wrap`` given to the table (the hub's request parsing) is applied to each handler once, when it enters the
table, rather than by a server interceptor: grpc.aio runs its interceptors per call, through coroutines, and
that was microseconds of every call. A handler found only generically is wrapped when found (``wrap`` keeps its
own per-handler cache). Interceptors the server still has run outside the wrapped handler, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in the type stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Generic = grpc.GenericRpcHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _Generic = grpc.GenericRpcHandler

# A handler (and its method's full name) into the form the server serves: applied once per handler.
Wrap = Callable[[str, _Handler], _Handler]


class _Lookup(_Generic):
    """The server's one generic handler: a method by its full name, then any handler added only generically."""

    def __init__(self, wrap: Wrap | None) -> None:
        self.methods: dict[str, _Handler] = {}  # as the services made them
        self.served: dict[str, _Handler] = {}  # the same, wrapped: what calls get
        self.generic: list[_Generic] = []
        self._wrap = wrap

    def put(self, method: str, handler: _Handler) -> None:
        """``handler`` serves ``method`` (a full name) from now on, wrapped once here."""
        self.methods[method] = handler
        self.served[method] = handler if self._wrap is None else self._wrap(method, handler)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        found = self.served.get(handler_call_details.method)
        if found is not None:
            return found
        for handler in self.generic:  # a service added without registering its methods (or an unknown method)
            found = handler.service(handler_call_details)
            if found is not None:
                return found if self._wrap is None else self._wrap(str(handler_call_details.method), found)
        return None


class MethodTable(grpc.aio.Server):
    """``server`` as the generated ``add_*_to_server`` functions see it: methods go into one table, none is
    registered with gRPC; everything else is the server's own. ``wrap``, if given, is applied to every handler
    once (see the module's docstring)."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap | None = None) -> None:
        self._server = server
        self._lookup = _Lookup(wrap)
        server.add_generic_rpc_handlers((self._lookup,))

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[_Generic]) -> None:
        """Kept for the methods no registration names (the generated code's own handler is met only then)."""
        self._lookup.generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, _Handler]) -> None:
        """``service_name``'s methods into the table, by the full name a call carries (``/service/method``)."""
        for name, handler in method_handlers.items():
            self._lookup.put(f"/{service_name}/{name}", handler)

    def send_encoded(self, method: str) -> None:
        """``method`` (a full name; server-streaming) sends the bytes its servicer yields as they are: the
        servicer encodes its messages itself (once), gRPC does not encode them again. Interceptors and ``wrap``
        are unchanged: they pass the handler's (now absent) response serializer on as they found it."""
        handler = self._lookup.methods[method]
        if handler.unary_stream is None:
            raise ValueError(f"{method} is not a server-streaming method")
        self._lookup.put(
            method,
            grpc.unary_stream_rpc_method_handler(
                handler.unary_stream, request_deserializer=handler.request_deserializer, response_serializer=None
            ),
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
