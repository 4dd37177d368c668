"""The provider kit: what a department runs next to its own system so that the hub can fetch from it.

A department registers one function per catalog resource and serves them over mutual TLS::

    provider = Provider()

    @provider.records("20301/350200000001")
    def contracts(q: ProviderQuery) -> Iterable[Row]:
        ...

    provider.table("20301/350200000002", "postgresql+psycopg://...", "wq_ht", columns=(...), filters=("contract_no",))
    server, port = serve(provider, "0.0.0.0:7443", Path("identity"))

The kit does the rest: only the hub (a certificate carrying ``pki.HUB_URI``) may call; rows are
projected onto the fields asked for, converted to typed wire values and sent in bounded batches;
a cancelled call stops and closes the department's iterator; a function's failure is logged here
and reported to the hub as a generic INTERNAL error, so no internals leave the department.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from opentelemetry.trace import Tracer
from sqlalchemy import Engine, MetaData, Select, Table, create_engine, event, select

from adapters.provider_tracing import ProviderTracing
from exchange import pki
from exchange.errors import ConfigError
from exchange.v1 import data_pb2, provider_pb2, provider_pb2_grpc
from exchange.values import BadValue, from_wire, record_to_wire

log = logging.getLogger(__name__)

Row = Mapping[str, object]
BATCH_RECORDS = 500
BATCH_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
MAX_MESSAGE = 16 << 20
DEFAULT_MAX_ROWS = 10_000
_FAILED = "the provider could not answer; see its own log"
_END = object()
T = TypeVar("T")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class ProviderQuery:
    """What the hub asks of one resource: typed filters, the fields wanted, and paging (limit 0: no cap)."""

    resource_code: str
    filters: Mapping[str, object]
    fields: tuple[str, ...]
    limit: int = 0
    offset: int = 0
    exchange_id: str = ""
    alive: Callable[[], bool] = field(default=_always, repr=False, compare=False)

    def active(self) -> bool:
        """False once the hub has cancelled the call or its deadline passed: stop working then."""
        return self.alive()

    @property
    def cancelled(self) -> bool:
        return not self.alive()


@dataclass(frozen=True)
class ProviderDocument:
    """One document: its file name, media type, size in bytes (0 if unknown) and its bytes in pieces."""

    name: str
    media_type: str
    size: int
    chunks: Iterable[bytes]


class QueryRefused(Exception):
    """Raised by a department's function to refuse a query; its message is sent to the hub (INVALID_ARGUMENT)."""


RecordsFunction = Callable[[ProviderQuery], Iterable[Row]]
DocumentFunction = Callable[[ProviderQuery], ProviderDocument | None]
R = TypeVar("R", bound=RecordsFunction)
D = TypeVar("D", bound=DocumentFunction)


@dataclass(frozen=True)
class _Records:
    function: RecordsFunction
    handles_paging: bool


class Provider:
    """The resources a department serves: a records or document function per resource code."""

    def __init__(self) -> None:
        self._records: dict[str, _Records] = {}
        self._documents: dict[str, DocumentFunction] = {}
        self._engines: list[Engine] = []

    def records(self, code: str, *, handles_paging: bool = False) -> Callable[[R], R]:
        """Registers a records function; unless ``handles_paging``, the kit applies offset and limit itself."""

        def register(function: R) -> R:
            self._claim(code)
            self._records[code] = _Records(function, handles_paging)
            return function

        return register

    def document(self, code: str) -> Callable[[D], D]:
        """Registers a document function; returning None tells the hub there is no such document."""

        def register(function: D) -> D:
            self._claim(code)
            self._documents[code] = function
            return function

        return register

    def table(
        self,
        code: str,
        url: str,
        table: str,
        *,
        columns: Mapping[str, str] | Sequence[str],
        filters: Collection[str] = (),
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> RecordsFunction:
        """Serves ``code`` from a database table, read-only; ``columns`` maps data items to columns.

        Only the items in ``filters`` may be filtered on, always as bound parameters.
        """
        mapped = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
        source = _TableSource(_read_only_engine(url), table, mapped, frozenset(filters), max_rows)
        self._engines.append(source.engine)
        self.records(code, handles_paging=True)(source)
        return source

    def close(self) -> None:
        """Releases the database connections of the tables served."""
        for engine in self._engines:
            engine.dispose()

    def _claim(self, code: str) -> None:
        if code in self._records or code in self._documents:
            raise ValueError(f"{code} is already registered")


class _TableSource:
    """A records function over one table, selecting only mapped columns, in a stable order."""

    def __init__(self, engine: Engine, name: str, columns: dict[str, str], filters: frozenset[str], max_rows: int):
        self.engine = engine
        self._name = name
        self._columns = columns
        self._filters = filters
        self._max_rows = max_rows
        self._table: Table | None = None
        self._lock = threading.Lock()

    def __call__(self, query: ProviderQuery) -> Iterator[Row]:
        statement = self._select(query)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=BATCH_RECORDS).execute(statement)
            for row in result:
                yield dict(row._mapping)

    def _select(self, query: ProviderQuery) -> Select[Any]:
        refused = sorted(set(query.filters) - self._filters)
        unknown = sorted(set(query.fields) - set(self._columns))
        if refused or unknown:
            raise QueryRefused(f"cannot filter on {refused}" if refused else f"no column for {unknown}")
        table = self._source()
        wanted = [table.c[self._columns[f]].label(f) for f in query.fields]
        statement = select(*wanted).where(*(table.c[self._columns[k]] == v for k, v in query.filters.items()))
        order = list(table.primary_key.columns) or wanted
        statement = statement.order_by(*order).offset(max(query.offset, 0))
        # A page is capped at max_rows; a stream (limit 0) is not: it is sent in batches as it is read.
        return statement.limit(min(query.limit, self._max_rows)) if query.limit else statement

    def _source(self) -> Table:
        with self._lock:
            if self._table is None:
                self._table = Table(self._name, MetaData(), autoload_with=self.engine)
            return self._table


def _read_only_engine(url: str) -> Engine:
    """An engine whose connections refuse to write (PostgreSQL and SQLite)."""
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c default_transaction_read_only=on"})
    if not url.startswith("sqlite"):
        raise ConfigError(f"{url.split(':', 1)[0]} tables cannot be opened read-only; use PostgreSQL or SQLite")
    engine = create_engine(url, pool_pre_ping=True)
    event.listen(engine, "connect", _sqlite_query_only)
    return engine


def _sqlite_query_only(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only = ON")


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


def _fail(context: grpc.ServicerContext, query: ProviderQuery) -> NoReturn:
    log.exception("the function for %s failed (exchange %s)", query.resource_code, query.exchange_id or "-")
    context.abort(grpc.StatusCode.INTERNAL, _FAILED)


def _guarded(step: Callable[[], T], context: grpc.ServicerContext, query: ProviderQuery) -> T:
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


class _Servicer(provider_pb2_grpc.ProviderServiceServicer):
    """The ProviderService over a Provider's registered functions."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider

    def Fetch(  # noqa: N802 - the RPC's name
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderBatch]:
        _require_hub(context)
        registered = self._provider._records.get(request.resource_code)
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
        function = self._provider._documents.get(request.resource_code)
        if function is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this provider does not serve that resource")
        query = _query(request, context)
        opened = _guarded(partial(_document_of, function, query), context, query)
        if opened is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such document")
        return self._chunks(*opened, query, context)

    def _batches(
        self, rows: Iterator[Row], registered: _Records, query: ProviderQuery, context: grpc.ServicerContext
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
        self, rows: Iterator[Row], registered: _Records, query: ProviderQuery, context: grpc.ServicerContext
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


def serve(
    provider: Provider, listen: str, identity: Path, max_workers: int = 16, *, tracer: Tracer | None = None
) -> tuple[grpc.Server, int]:
    """Starts serving ``provider`` on ``listen`` with the system's identity directory; returns the server and port.

    The server presents the system's certificate, requires a client certificate signed by the
    identity's CA, and answers only the hub. With a ``tracer`` (``exchange.tracing.open_tracing``, the
    department's own exporter) each call gets a span joined to the hub's trace.
    """
    files = pki.IdentityFiles(identity)
    try:
        key, cert, ca = files.key.read_bytes(), files.cert.read_bytes(), files.ca.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the provider's identity in {identity}: {e.strerror}") from None
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    traced: list[grpc.ServerInterceptor[Any, Any]] = [ProviderTracing(tracer)] if tracer is not None else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options, interceptors=traced)
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(_Servicer(provider), server)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"the provider cannot listen on {listen}")
    server.start()
    return server, port


__all__ = [
    "DEFAULT_MAX_ROWS",
    "DocumentFunction",
    "Provider",
    "ProviderDocument",
    "ProviderQuery",
    "QueryRefused",
    "RecordsFunction",
    "Row",
    "is_hub_certificate",
    "serve",
]
