"""The provider kit's gRPC servicer: ProviderService over a ``Provider``'s registered functions.

Only the hub (a certificate carrying ``pki.HUB_URI``) may call. Rows are projected onto the fields
asked for, converted to typed wire values and sent in bounded batches; documents are sent as a
header chunk and bounded pieces; a cancelled call stops and closes the department's iterator. A
function's failure is logged here and reported to the hub as a generic INTERNAL error, so no
internals leave the department; a ``QueryRefused`` is sent as INVALID_ARGUMENT with its message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import NoReturn, TypeVar

import grpc
from cryptography import x509

from adapters.provider_changes import changes_of, message
from adapters.provider_query import (
    BATCH_BYTES,
    BATCH_RECORDS,
    CHUNK_BYTES,
    DEFAULT_MAX_ROWS,
    ChangesQuery,
    DocumentFunction,
    ProviderDocument,
    ProviderQuery,
    QueryRefused,
    RecordsFunction,
    Row,
)
from adapters.provider_registry import Provider, RegisteredRecords
from exchange import pki
from exchange.v1 import data_pb2, provider_pb2, provider_pb2_grpc
from exchange.values import BadValue, from_wire, record_to_wire

# The kit's public module names the log, so a department configures one logger for the whole kit.
log = logging.getLogger("adapters.provider")

_FAILED = "the provider could not answer; see its own log"
_END = object()
T = TypeVar("T")


def _peer_certificates(context: grpc.ServicerContext) -> list[bytes]:
    raw: object = context.auth_context().get("x509_pem_cert")
    if isinstance(raw, bytes):
        return [raw]
    if isinstance(raw, list | tuple):
        return [pem for pem in raw if isinstance(pem, bytes)]
    return []


def is_hub_certificate(pem: bytes) -> bool:
    """Whether a PEM certificate names the hub (URI SAN ``pki.HUB_URI``)."""
    try:
        san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return False
    return pki.HUB_URI in san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _require_hub(context: grpc.ServicerContext) -> None:
    """Refuses every caller but the hub: TLS proved the CA signed the certificate, this checks whose it is."""
    pems = _peer_certificates(context)
    if not pems or not is_hub_certificate(pems[0]):
        log.warning("refused a caller that is not the hub: %s", context.peer())
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the exchange hub may call this provider")


def _fail(context: grpc.ServicerContext, query: ProviderQuery | ChangesQuery) -> NoReturn:
    exchange = query.exchange_id if isinstance(query, ProviderQuery) else "changes"
    log.exception("the function for %s failed (exchange %s)", query.resource_code, exchange or "-")
    context.abort(grpc.StatusCode.INTERNAL, _FAILED)


def _guarded(step: Callable[[], T], context: grpc.ServicerContext, query: ProviderQuery | ChangesQuery) -> T:
    """Runs department code: a refusal is sent as it is, any other failure is logged and sent as INTERNAL."""
    try:
        return step()
    except QueryRefused as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:500])
    except Exception:
        _fail(context, query)


def _query(request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext) -> ProviderQuery:
    try:
        filters = {name: from_wire(value) for name, value in request.filters.items()}
    except BadValue:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a filter value is malformed")
    return ProviderQuery(
        request.resource_code,
        filters,
        tuple(request.fields),
        max(request.limit, 0),
        max(request.offset, 0),
        request.exchange_id,
        context.is_active,
    )


def _record(row: object, fields: tuple[str, ...]) -> data_pb2.Record:
    """The row projected onto the fields asked for (absent ones left out), as wire values."""
    if not isinstance(row, Mapping):
        raise TypeError(f"a row is {type(row).__name__}, not a mapping")
    return record_to_wire({f: row[f] for f in fields if f in row})


def _close(iterator: object) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """The ProviderService over a Provider's registered functions."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def Fetch(  # noqa: N802 - the RPC's name
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderBatch]:
        _require_hub(context)
        registered = self._provider.records_for(request.resource_code)
        if registered is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this provider does not serve that resource")
        query = _query(request, context)
        rows = _guarded(partial(_rows_of, registered.function, query), context, query)
        return self._batches(rows, registered, query, context)

    def Lookup(  # noqa: N802 - the RPC's name
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> provider_pb2.ProviderBatch:
        """``Fetch`` in one answer, for a page the hub bounds with ``limit``."""
        if request.limit <= 0 or request.limit > DEFAULT_MAX_ROWS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {DEFAULT_MAX_ROWS}")
        answer = provider_pb2.ProviderBatch()
        for batch in self.Fetch(request, context):
            answer.records.extend(batch.records)
        return answer

    def FetchDocument(  # noqa: N802 - the RPC's name
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderChunk]:
        _require_hub(context)
        function = self._provider.document_for(request.resource_code)
        if function is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this provider does not serve that resource")
        query = _query(request, context)
        opened = _guarded(partial(_document_of, function, query), context, query)
        if opened is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such document")
        return self._chunks(*opened, query, context)

    def ListChanges(  # noqa: N802 - the RPC's name
        self, request: provider_pb2.ProviderChangesRequest, context: grpc.ServicerContext
    ) -> provider_pb2.ProviderChanges:
        """One page of the resource's changes after ``request.after`` (for ``from_now``: only the position)."""
        _require_hub(context)
        function = self._provider.changes_for(request.resource_code)
        if function is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this provider does not serve the changes of that resource")
        if request.limit <= 0 or request.limit > DEFAULT_MAX_ROWS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {DEFAULT_MAX_ROWS}")
        filters = _query(provider_pb2.ProviderFetchRequest(filters=request.filters), context).filters
        query = ChangesQuery(
            request.resource_code,
            filters,
            tuple(request.fields),
            "" if request.from_now else request.after,
            request.from_now,
            request.limit,
            context.is_active,
        )
        changes = _guarded(partial(changes_of, function, query), context, query)
        try:
            return self._page(changes, query, context)
        finally:
            _close(changes)

    def _page(
        self, changes: Iterator[object], query: ChangesQuery, context: grpc.ServicerContext
    ) -> provider_pb2.ProviderChanges:
        """At most ``query.limit`` changes; for ``from_now`` the newest one's cursor and sequence, no change."""
        answer = provider_pb2.ProviderChanges()
        wanted = 1 if query.from_now else query.limit
        while len(answer.changes) < wanted and context.is_active():
            change: object = _guarded(partial(next, changes, _END), context, query)
            if change is _END:
                break
            answer.changes.append(_guarded(partial(message, change, query.fields), context, query))
        if query.from_now and answer.changes:
            newest = answer.changes[-1]
            answer.cursor, answer.sequence = newest.cursor, newest.sequence
            del answer.changes[:]
        return answer

    def _batches(
        self, rows: Iterator[Row], registered: RegisteredRecords, query: ProviderQuery, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderBatch]:
        """Batches of at most BATCH_RECORDS records or about BATCH_BYTES; the rows are closed in any case."""
        try:
            batch, size = provider_pb2.ProviderBatch(), 0
            for record in self._records(rows, registered, query, context):
                batch.records.append(record)
                size += record.ByteSize()
                if len(batch.records) >= BATCH_RECORDS or size >= BATCH_BYTES:
                    yield batch
                    batch, size = provider_pb2.ProviderBatch(), 0
            if batch.records and context.is_active():
                yield batch
        finally:
            _close(rows)

    def _records(
        self, rows: Iterator[Row], registered: RegisteredRecords, query: ProviderQuery, context: grpc.ServicerContext
    ) -> Iterator[data_pb2.Record]:
        """Wire records of the rows after the offset, up to the limit, while the call is active."""
        skip = 0 if registered.handles_paging else query.offset
        sent = 0
        while context.is_active() and not (query.limit and sent >= query.limit):
            row: object = _guarded(partial(next, rows, _END), context, query)
            if row is _END:
                return
            if skip:
                skip -= 1
                continue
            yield _guarded(partial(_record, row, query.fields), context, query)
            sent += 1

    def _chunks(
        self,
        header: provider_pb2.ProviderChunk,
        pieces: Iterator[object],
        query: ProviderQuery,
        context: grpc.ServicerContext,
    ) -> Iterator[provider_pb2.ProviderChunk]:
        """The header chunk (name, media type, size), then the bytes in pieces of at most CHUNK_BYTES."""
        try:
            yield header
            while context.is_active():
                piece = _guarded(partial(_next_piece, pieces), context, query)
                if piece is None:
                    return
                for start in range(0, len(piece), CHUNK_BYTES):
                    yield provider_pb2.ProviderChunk(data=piece[start : start + CHUNK_BYTES])
        finally:
            _close(pieces)


def _rows_of(function: RecordsFunction, query: ProviderQuery) -> Iterator[Row]:
    return iter(function(query))


def _document_of(
    function: DocumentFunction, query: ProviderQuery
) -> tuple[provider_pb2.ProviderChunk, Iterator[object]] | None:
    """The document's header chunk and its pieces; None when the function found no such document."""
    document: object = function(query)
    if document is None:
        return None
    if not isinstance(document, ProviderDocument):
        raise TypeError(f"a document function returned {type(document).__name__}, not a ProviderDocument")
    header = provider_pb2.ProviderChunk(name=document.name, media_type=document.media_type, size=max(document.size, 0))
    return header, iter(document.chunks)


def _next_piece(pieces: Iterator[object]) -> bytes | None:
    """The next piece of a document, None at its end; TypeError for a piece that is not bytes."""
    piece = next(pieces, _END)
    if piece is _END:
        return None
    if not isinstance(piece, bytes):
        raise TypeError(f"a document chunk is {type(piece).__name__}, not bytes")
    return piece
