"""The gRPC adapter: the hub's client of a department's provider service (see ``adapters.provider``).

Binding options: ``target`` (host:port) and ``system_code`` (the system whose certificate the
provider must present). The hub connects over mutual TLS with its own certificate, and checks
the provider's certificate against ``pki.provider_hostname(system_code)``, so only that system
can answer for the resource. Whatever the provider says on failure stays in the hub's log: the
caller learns only that the provider is unavailable, timed out, or answered outside its declaration.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Generator, Iterable, Iterator, Mapping
from functools import partial
from typing import Protocol, TypeVar, cast

import grpc

from adapters import options as opt
from adapters.base import (
    Document,
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Row,
    checked_filters,
    checked_records,
    checked_rows,
)
from adapters.factory import BackendContext, ClientTls
from exchange import pki
from exchange.backend import Backend
from exchange.errors import ExchangeError, FieldViolation, InvalidArgument, NotFound
from exchange.models import Binding
from exchange.v1 import data_pb2, provider_pb2, provider_pb2_grpc
from exchange.validation import SYSTEM_CODE
from exchange.values import BadValue, record_from_wire, to_wire

log = logging.getLogger(__name__)

MAX_RECEIVE = 16 << 20
MAX_SEND = 4 << 20
T = TypeVar("T")
# What a grpc.aio stream's read() answers at its end (missing from the type stubs).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


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
    return GrpcBackend(name, target, str(binding.options["system_code"]), context.tls)


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


def _cancel(call: _Cancellable) -> None:
    call.cancel()


class _Watchdog:
    """Cancels a call when no message arrives within ``seconds``; ``fired`` tells a timeout from other ends."""

    def __init__(self, call: _Cancellable, seconds: float) -> None:
        self._call = call
        self._seconds = seconds
        self.fired = threading.Event()

    def watch(self, messages: Iterable[T]) -> Iterator[T]:
        """The messages; the clock runs only while waiting for the next one, not while the caller works."""
        iterator = iter(messages)
        while True:
            timer = threading.Timer(self._seconds, self._expire)
            timer.daemon = True
            timer.start()
            try:
                message = next(iterator)
            except StopIteration:
                return
            finally:
                timer.cancel()
            yield message

    def _expire(self) -> None:
        self.fired.set()
        self._call.cancel()


class GrpcBackend:
    """One provider service, reached over one mutual-TLS channel that only the named system can answer."""

    def __init__(self, name: str, target: str, system_code: str, tls: ClientTls) -> None:
        self.name = name
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.certificate
        )
        options = [
            ("grpc.ssl_target_name_override", pki.provider_hostname(system_code)),
            ("grpc.max_receive_message_length", MAX_RECEIVE),
            ("grpc.max_send_message_length", MAX_SEND),
        ]
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = provider_pb2_grpc.ProviderServiceStub(self._channel)
        self._target, self._credentials, self._options = target, credentials, options
        # A grpc.aio channel for lookups from the hub's event loop, made there on first use.
        self._aio: tuple[asyncio.AbstractEventLoop, grpc.aio.Channel, provider_pb2_grpc.ProviderServiceStub] | None = (
            None
        )

    async def fetch_async(self, request: FetchRequest) -> list[Row]:
        """``fetch`` on the caller's event loop: no worker thread is held while the provider answers."""
        checked_filters(request)
        if request.limit <= 0:
            return []
        try:
            call = self._aio_stub().Lookup(self._wire(request, request.limit), timeout=request.timeout_seconds)
            answer = await cast("Awaitable[provider_pb2.ProviderBatch]", call)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        rows = [self._row(r) for r in answer.records[: request.limit]]
        return checked_rows(self.name, request.resource, request.fields, rows)

    def _aio_stub(self) -> provider_pb2_grpc.ProviderServiceStub:
        """The stub of the grpc.aio channel of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            self._aio = (loop, channel, provider_pb2_grpc.ProviderServiceStub(channel))
        return self._aio[2]

    async def stream_records_async(
        self, request: FetchRequest, batch_size: int
    ) -> AsyncGenerator[list[data_pb2.Record], None]:
        """``stream_records`` on the caller's event loop: no worker thread is held while the provider is awaited,
        however long it hangs; each message must come within ``request.timeout_seconds``."""
        checked_filters(request)
        types = {i.name: i.type for i in request.resource.data_items if i.name in request.fields}
        size = max(1, batch_size)
        call = cast(
            "grpc.aio.UnaryStreamCall[provider_pb2.ProviderFetchRequest, provider_pb2.ProviderBatch]",
            self._aio_stub().Fetch(self._wire(request, 0)),
        )
        pending: list[data_pb2.Record] = []
        try:
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), request.timeout_seconds)
                except TimeoutError:
                    log.warning("the provider %s sent nothing for %ss", self.name, request.timeout_seconds)
                    raise ProviderTimeout(self.name) from None
                if message is _EOF:
                    break
                pending.extend(cast(provider_pb2.ProviderBatch, message).records)
                while len(pending) >= size:
                    ready, pending = pending[:size], pending[size:]
                    yield await asyncio.to_thread(checked_records, self.name, types, ready)
            if pending:
                yield await asyncio.to_thread(checked_records, self.name, types, pending)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        finally:
            call.cancel()

    def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows, the whole call within ``request.timeout_seconds``."""
        checked_filters(request)
        if request.limit <= 0:
            return []
        try:
            answer = self._stub.Lookup(self._wire(request, request.limit), timeout=request.timeout_seconds)
        except grpc.RpcError as e:
            raise self._failure(e) from None
        rows = [self._row(r) for r in answer.records[: request.limit]]
        return checked_rows(self.name, request.resource, request.fields, rows)

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        """All matching rows in batches of ``batch_size``; closing the iterator cancels the provider's work."""
        checked_filters(request)
        return self._stream(request, max(1, batch_size))

    def _stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        for records in self._records(request, batch_size):
            yield checked_rows(self.name, request.resource, request.fields, [self._row(r) for r in records])

    def stream_records(self, request: FetchRequest, batch_size: int) -> Generator[list[data_pb2.Record], None, None]:
        """``stream`` without leaving the wire form: the provider's records, checked, for the hub to pass on."""
        checked_filters(request)
        types = {i.name: i.type for i in request.resource.data_items if i.name in request.fields}
        for records in self._records(request, max(1, batch_size)):
            yield checked_records(self.name, types, records)

    def _records(self, request: FetchRequest, batch_size: int) -> Generator[list[data_pb2.Record], None, None]:
        call = self._stub.Fetch(self._wire(request, 0))
        watchdog = _Watchdog(call, request.timeout_seconds)
        pending: list[data_pb2.Record] = []
        try:
            for batch in watchdog.watch(call):
                pending.extend(batch.records)
                while len(pending) >= batch_size:
                    ready, pending = pending[:batch_size], pending[batch_size:]
                    yield ready
            if pending:
                yield pending
        except grpc.RpcError as e:
            raise self._failure(e, watchdog.fired.is_set()) from None
        finally:
            _cancel(call)

    def document(self, request: FetchRequest) -> Document:
        """The document the filters name; each chunk within ``request.timeout_seconds``."""
        checked_filters(request)
        call = self._stub.FetchDocument(self._wire(request, 0))
        watchdog = _Watchdog(call, request.timeout_seconds)
        chunks = watchdog.watch(call)
        try:
            first = next(chunks)
        except StopIteration:
            raise ProviderContractError(self.name, "the document stream was empty") from None
        except grpc.RpcError as e:
            _cancel(call)
            raise self._failure(e, watchdog.fired.is_set(), request.resource.code) from None
        if not _is_file_name(first.name):
            _cancel(call)
            raise ProviderContractError(self.name, "the document's name is not a plain file name")
        data = self._data(first, chunks, call, watchdog, request.resource.code)
        return Document(first.name, first.media_type, max(first.size, 0), data, close=partial(_cancel, call))

    def _data(
        self,
        first: provider_pb2.ProviderChunk,
        rest: Iterator[provider_pb2.ProviderChunk],
        call: _Cancellable,
        watchdog: _Watchdog,
        code: str,
    ) -> Iterator[bytes]:
        try:
            if first.data:
                yield first.data
            for chunk in rest:
                if chunk.data:
                    yield chunk.data
        except grpc.RpcError as e:
            raise self._failure(e, watchdog.fired.is_set(), code) from None
        finally:
            _cancel(call)

    def close(self) -> None:
        self._channel.close()
        if self._aio is not None:
            loop, channel, _ = self._aio
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: loop.create_task(channel.close(None)))

    def _wire(self, request: FetchRequest, limit: int) -> provider_pb2.ProviderFetchRequest:
        try:
            filters = {name: to_wire(value) for name, value in request.filters.items()}
        except TypeError:
            raise InvalidArgument.of([FieldViolation("filters", "a value is not of a data item type")]) from None
        return provider_pb2.ProviderFetchRequest(
            resource_code=request.resource.code,
            filters=filters,
            fields=request.fields,
            limit=limit,
            offset=max(request.offset, 0),
            exchange_id=request.exchange_id,
        )

    def _row(self, record: data_pb2.Record) -> Row:
        try:
            return record_from_wire(record)
        except BadValue:
            raise ProviderContractError(self.name, "a record holds a malformed decimal or date") from None

    def _failure(self, error: grpc.RpcError, timed_out: bool = False, document: str = "") -> ExchangeError:
        """The caller's view of a failed call; the provider's own words go to the hub's log only."""
        code = error.code()
        log.warning("the provider %s answered %s: %s", self.name, code, error.details())
        if timed_out or code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return ProviderTimeout(self.name)
        if document and code is grpc.StatusCode.NOT_FOUND:
            return NotFound("document", document)
        return ProviderUnavailable(self.name)
