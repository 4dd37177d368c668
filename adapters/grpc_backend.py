"""The gRPC adapter: the hub's client of a department's provider service (see ``adapters.provider``).

Binding options: ``target`` (host:port), ``system_code`` (the system whose certificate the
provider must present) and ``changes`` (true: the provider serves ListChanges for the resource,
which can then be subscribed to; its answers are checked by ``adapters.grpc_changes``). The hub
connects over mutual TLS with its own certificate, and checks the provider's certificate against
``pki.provider_hostname(system_code)``, so only that system can answer for the resource. Whatever
the provider says on failure stays in the hub's log: the caller learns only that the provider is
unavailable, timed out, or answered outside its declaration.
Every call carries the hub's trace context (a W3C ``traceparent`` in its metadata) when a span is
current, so a provider that traces (``adapters.provider.serve(..., tracer=...)``) joins the hub's trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Protocol, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context

from adapters import options as opt
from adapters.base import (
    Batch,
    Document,
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Records,
    Row,
    Unsupported,
    checked_change_filters,
    checked_filters,
    checked_records,
    checked_rows,
)
from adapters.factory import BackendContext, ClientTls
from adapters.grpc_batches import Cutter, Received, received
from adapters.grpc_changes import checked_changes, current, position
from exchange import pki, tracing
from exchange.backend import Backend, ChangeBatch, ChangeRequest, being_cancelled
from exchange.errors import ExchangeError, FieldViolation, InvalidArgument, NotFound
from exchange.models import Binding, FieldType
from exchange.v1 import data_pb2, exchange_pb2, provider_pb2, provider_pb2_grpc
from exchange.validation import SYSTEM_CODE
from exchange.values import BadValue, record_from_wire, set_wire, to_wire

log = logging.getLogger(__name__)

MAX_RECEIVE = 16 << 20
MAX_SEND = 4 << 20
FETCH = "/exchange.v1.ProviderService/Fetch"
M_co = TypeVar("M_co", covariant=True)
# What a grpc.aio stream's read() answers at its end (missing from the type stubs).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


M = TypeVar("M")


def _trace() -> tuple[tuple[str, str], ...] | None:
    """The call's trace context for the provider (its ``traceparent``), so the provider's spans join the hub's.

    An empty context (tracing off, the common case) carries no span: nothing to look up or send."""
    if not otel_context.get_current():
        return None
    return tracing.outgoing_metadata() or None


class _Stream(Protocol[M_co]):
    """What the hub uses of a grpc.aio server-streaming call."""

    async def read(self) -> M_co | object: ...

    def cancel(self) -> bool: ...


def check(options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]:
    """The problems with a binding's options {target, system_code}; empty when it can be opened."""
    out: list[FieldViolation] = []
    target = opt.text(options, "target", out)
    code = opt.text(options, "system_code", out)
    if target.strip() and not _is_target(target):
        out.append(
            FieldViolation("binding.target", "must be host:port (a name or address, IPv6 in brackets), port 1 to 65535")
        )
    elif target.strip():
        host = target.rpartition(":")[0].strip("[]")
        out += [FieldViolation("binding.target", d) for d in context.host_problems(host)]
    if code.strip() and not SYSTEM_CODE.match(code):
        out.append(
            FieldViolation("binding.system_code", f"{code[:80]!r} is not a system code (e.g. zj-wqba: a-z, 0-9, -)")
        )
    if options.get("changes") not in (None, True, False, "true", "false"):
        out.append(FieldViolation("binding.changes", "must be true (the provider serves ListChanges) or false"))
    if context.tls is None:
        out.append(
            FieldViolation("binding", "the hub has no client certificate to present to providers; configure its TLS")
        )
    return out


def _is_target(target: str) -> bool:
    """host:port, where host is a name, an IPv4 address or a bracketed IPv6 one: no scheme, socket or path."""
    host, colon, port = target.rpartition(":")
    if not colon or not host or any(c.isspace() for c in target) or "/" in target:
        return False
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return False  # "unix:...", "dns:...", "ipv4:..." and bare IPv6 are gRPC's own addressing, not a host
    return port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


def _is_file_name(name: str) -> bool:
    """A name a consumer can save a file under: no directories, no control characters."""
    plain = not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)
    return plain and 0 < len(name) <= 255 and name not in {".", ".."}


def open(name: str, binding: Binding, context: BackendContext) -> Backend:
    """A backend for a checked binding; ``name`` (the providing department) names it in every error.

    With a host policy the target's host is resolved and vetted once, and the channel dials that address
    (the provider's certificate is still checked by the system's name).
    """
    if context.tls is None:
        log.error("cannot connect to the provider %s: the hub has no client certificate", name)
        raise ProviderUnavailable(name)
    target = str(binding.options["target"])
    if context.hosts is not None:
        host, _, port = target.rpartition(":")
        try:
            address = context.hosts.vetted(host.strip("[]"), int(port))[0][1]
        except (OSError, IndexError, ValueError):  # refused by the policy, or not resolvable
            log.warning("the provider %s at %s is not reachable under the host policy", name, target)
            raise ProviderUnavailable(name) from None
        target = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    return GrpcBackend(name, target, str(binding.options["system_code"]), context.tls, changes=binding.subscribable)


class GrpcBackend:
    """One provider service, reached over one mutual-TLS channel that only the named system can answer.

    Every call is made on the hub's event loop (grpc.aio): no worker thread is held while a provider
    answers, however long it hangs; each message must come within ``request.timeout_seconds``.
    """

    def __init__(self, name: str, target: str, system_code: str, tls: ClientTls, *, changes: bool = False) -> None:
        self.name = name
        # The binding declares that the provider serves ListChanges for the resource.
        self._changes = changes
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.certificate
        )
        self._options = [
            ("grpc.ssl_target_name_override", pki.provider_hostname(system_code)),
            ("grpc.max_receive_message_length", MAX_RECEIVE),
            ("grpc.max_send_message_length", MAX_SEND),
        ]
        self._target = target
        # The channel of the event loop that uses it, made there on first use.
        self._aio: tuple[asyncio.AbstractEventLoop, grpc.aio.Channel, provider_pb2_grpc.ProviderServiceStub] | None = (
            None
        )
        # Fetch on that channel, its answers read straight into the consumer's messages.
        self._fetch_of: (
            tuple[grpc.aio.Channel, grpc.aio.UnaryStreamMultiCallable[provider_pb2.ProviderFetchRequest, Received]]
            | None
        ) = None

    async def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows, the whole call within ``request.timeout_seconds``."""
        checked_filters(request)
        if request.limit <= 0:
            return []
        try:
            call = self._stub().Lookup(
                self._wire(request, request.limit), timeout=request.timeout_seconds, metadata=_trace()
            )
            answer = await cast("Awaitable[provider_pb2.ProviderBatch]", call)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            raise self._closed_under_call() from None
        rows = [self._row(r) for r in answer.records[: request.limit]]
        return checked_rows(self.name, request.resource, request.fields, rows)

    def _stub(self) -> provider_pb2_grpc.ProviderServiceStub:
        """The stub of the channel of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            self._aio = (loop, channel, provider_pb2_grpc.ProviderServiceStub(channel))
        return self._aio[2]

    async def stream(self, request: FetchRequest, batch_size: int) -> AsyncGenerator[Batch, None]:
        """The provider's records in batches of ``batch_size``, checked and left in wire form for the hub.

        Each batch is the consumer's own message, its records parsed straight from the provider's bytes
        (``adapters.grpc_batches``).
        """
        checked_filters(request)
        types = {i.name: i.type for i in request.resource.data_items if i.name in request.fields}
        cutter = Cutter(batch_size)
        call = cast("_Stream[Received]", self._fetch()(self._wire(request, 0), metadata=_trace()))
        try:
            while (part := await self._next(call, request.timeout_seconds)) is not None:
                for message in self._cut(cutter, part):
                    yield await asyncio.to_thread(self._checked, types, message)
            if (rest := cutter.rest()) is not None:
                yield await asyncio.to_thread(self._checked, types, rest)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        finally:
            call.cancel()

    def _fetch(self) -> grpc.aio.UnaryStreamMultiCallable[provider_pb2.ProviderFetchRequest, Received]:
        """The provider's Fetch, its answers read by ``grpc_batches.received`` (on the running loop's channel)."""
        self._stub()
        assert self._aio is not None
        channel = self._aio[1]
        if self._fetch_of is None or self._fetch_of[0] is not channel:
            method = channel.unary_stream(
                FETCH,
                request_serializer=provider_pb2.ProviderFetchRequest.SerializeToString,
                response_deserializer=received,
            )
            self._fetch_of = (channel, method)
        return self._fetch_of[1]

    def _cut(self, cutter: Cutter, part: Received) -> list[exchange_pb2.QueryBatch]:
        """The batches a provider's message completes; a message or record that does not parse breaks the contract."""
        if part.bad:
            raise ProviderContractError(self.name, "a batch is not a ProviderBatch")
        try:
            return cutter.cut(part)
        except DecodeError:
            raise ProviderContractError(self.name, "a record is not a valid Record") from None

    def _checked(self, types: Mapping[str, FieldType], message: exchange_pb2.QueryBatch) -> Records:
        checked_records(self.name, types, message.records)
        return Records(message)

    async def _next(self, call: _Stream[M], timeout: float) -> M | None:
        """The stream's next message within ``timeout`` seconds; None at its end."""
        try:
            message = await asyncio.wait_for(call.read(), timeout)
        except TimeoutError:
            log.warning("the provider %s sent nothing for %ss", self.name, timeout)
            raise ProviderTimeout(self.name) from None
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            raise self._closed_under_call() from None
        return None if message is _EOF else cast("M", message)

    def _closed_under_call(self) -> ExchangeError:
        """A call gRPC cancelled while its caller was not cancelled: this backend's channel was closed under it (its
        binding replaced and the grace over, or the hub stopping). The consumer learns it as UNAVAILABLE, not as
        a cancellation it never made (its call would wait unanswered for its own deadline)."""
        log.warning("the connection to the provider %s was closed while a call was in flight", self.name)
        return ProviderUnavailable(self.name)

    async def document(self, request: FetchRequest) -> Document:
        """The document the filters name; each chunk within ``request.timeout_seconds``."""
        checked_filters(request)
        code, wait = request.resource.code, request.timeout_seconds
        call = cast(
            "_Stream[provider_pb2.ProviderChunk]", self._stub().FetchDocument(self._wire(request, 0), metadata=_trace())
        )
        try:
            first = await self._next(call, wait)
        except grpc.aio.AioRpcError as e:
            call.cancel()
            raise self._failure(e, code) from None
        except ExchangeError:
            call.cancel()
            raise
        if first is None:
            raise ProviderContractError(self.name, "the document stream was empty")
        if not _is_file_name(first.name):
            call.cancel()
            raise ProviderContractError(self.name, "the document's name is not a plain file name")

        async def aclose() -> None:
            call.cancel()

        data = self._data(first, call, wait, code)
        return Document(first.name, first.media_type, max(first.size, 0), data, aclose)

    async def _data(
        self, first: provider_pb2.ProviderChunk, call: _Stream[provider_pb2.ProviderChunk], wait: float, code: str
    ) -> AsyncGenerator[bytes, None]:
        try:
            if first.data:
                yield first.data
            while (chunk := await self._next(call, wait)) is not None:
                if chunk.data:
                    yield chunk.data
        except grpc.aio.AioRpcError as e:
            raise self._failure(e, code) from None
        finally:
            call.cancel()

    async def changes(self, request: ChangeRequest) -> ChangeBatch:
        """A page of changes from the provider's ListChanges, checked (``adapters.grpc_changes``)."""
        if not self._changes:
            raise Unsupported(self.name, "changes")
        checked_change_filters(request)
        _, after = position(self.name, request)
        asked = provider_pb2.ProviderChangesRequest(
            resource_code=request.resource.code,
            filters=self._wire_filters(request.filters),
            fields=request.fields,
            after=after,
            from_now=request.after is None,
            limit=request.limit,
        )
        try:
            call = self._stub().ListChanges(asked, timeout=request.timeout_seconds, metadata=_trace())
            answer = await cast("Awaitable[provider_pb2.ProviderChanges]", call)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            raise self._closed_under_call() from None
        if request.after is None:
            return ChangeBatch([], current(self.name, answer))
        page = list(answer.changes[: request.limit])
        types = {i.name: i.type for i in request.resource.data_items if i.name in request.fields}
        records = checked_records(self.name, types, [c.record for c in page])
        rows = checked_rows(self.name, request.resource, request.fields, [self._row(r) for r in records])
        return checked_changes(self.name, request, page, rows)

    async def aclose(self) -> None:
        if self._aio is not None:
            loop, channel, _ = self._aio
            self._aio = None
            if loop is asyncio.get_running_loop():
                await channel.close(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(lambda: loop.create_task(channel.close(None)))

    def _wire_filters(self, filters: Mapping[str, object]) -> dict[str, data_pb2.Value]:
        try:
            return {name: to_wire(value) for name, value in filters.items()}
        except TypeError:
            raise InvalidArgument.of([FieldViolation("filters", "a value is not of a data item type")]) from None

    def _wire(self, request: FetchRequest, limit: int) -> provider_pb2.ProviderFetchRequest:
        asked = provider_pb2.ProviderFetchRequest(
            resource_code=request.resource.code,
            fields=request.fields,
            limit=limit,
            offset=max(request.offset, 0),
            exchange_id=request.exchange_id,
        )
        filters = asked.filters
        try:
            for name, value in request.filters.items():  # each filled in place: no Value built and copied
                set_wire(filters[name], value)
        except TypeError:
            raise InvalidArgument.of([FieldViolation("filters", "a value is not of a data item type")]) from None
        return asked

    def _row(self, record: data_pb2.Record) -> Row:
        try:
            return record_from_wire(record)
        except BadValue:
            raise ProviderContractError(self.name, "a record holds a malformed decimal or date") from None

    def _failure(self, error: grpc.aio.AioRpcError, document: str = "") -> ExchangeError:
        """The caller's view of a failed call; the provider's own words go to the hub's log only."""
        code = error.code()
        log.warning("the provider %s answered %s: %s", self.name, code, error.details())
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return ProviderTimeout(self.name)
        if document and code is grpc.StatusCode.NOT_FOUND:
            return NotFound("document", document)
        return ProviderUnavailable(self.name)
