"""The SQL adapter: reads a table or view of a department's front-end database (前置库).

Only the resource's filterable items can be filtered on, always as bound parameters; only the
fields asked for are selected; every query is read-only, limited in rows and bounded in time
(PostgreSQL statement_timeout; SQLite progress handler). Streams read with a server-side cursor
in batches, so a large result is never held whole. A table with a declared change column is also a
change source for subscriptions (``adapters.sql_changes``). Database errors become provider errors that
name the provider, never the database's own message.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Select, Table, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from adapters.base import (
    BlockingDocument,
    ChangeBatch,
    ChangeRequest,
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Row,
    Unsupported,
    checked_filters,
    checked_rows,
)
from adapters.sql_changes import ChangeColumns, TableChanges

DEFAULT_MAX_ROWS = 1000


@dataclass(frozen=True)
class SqlBinding:
    """Where a resource lives in a front-end database: its table and the column of each item."""

    url: str
    table: str
    columns: Mapping[str, str] = field(default_factory=dict)  # data item -> column; default: same name
    max_rows: int = DEFAULT_MAX_ROWS
    # The vetted address to connect to (PostgreSQL), so the name is not resolved again; "" resolves it.
    host_address: str = ""
    # The change column and its tie-breaking key (see ``adapters.sql_changes``); None: not a change source.
    changes: ChangeColumns | None = None

    def column(self, item: str) -> str:
        return self.columns.get(item, item)


class SqlAdapter:
    def __init__(self, name: str, binding: SqlBinding) -> None:
        self.name = name
        self.binding = binding
        self._engine = _read_only_engine(binding.url, binding.host_address)
        self._table: Table | None = None

    def _source(self) -> Table:
        if self._table is None:
            try:
                self._table = Table(self.binding.table, MetaData(), autoload_with=self._engine)
            except SQLAlchemyError:
                raise ProviderUnavailable(self.name) from None
        return self._table

    def _query(self, request: FetchRequest) -> Select[Any]:
        checked_filters(request)
        table = self._source()
        try:
            columns = [table.c[self.binding.column(f)].label(f) for f in request.fields]
            query = select(*columns)
            for name, value in request.filters.items():
                query = query.where(table.c[self.binding.column(name)] == value)
        except KeyError as e:
            raise ProviderContractError(self.name, f"the table has no column {e}") from None
        # A stable order, so that pages neither skip nor repeat rows.
        return query.order_by(*columns)

    def fetch(self, request: FetchRequest) -> list[Row]:
        query = self._query(request).limit(min(request.limit, self.binding.max_rows)).offset(request.offset)
        with self._connection(request.timeout_seconds) as connection:
            rows = self._rows(connection, query)
        return checked_rows(self.name, request.resource, request.fields, rows)

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        """Batches read through a server-side cursor; each batch within the timeout."""
        query = self._query(request)
        with self._connection(request.timeout_seconds) as connection:
            try:
                result = connection.execution_options(stream_results=True, yield_per=batch_size).execute(query)
                while True:
                    connection.info["deadline"] = time.monotonic() + request.timeout_seconds
                    batch = [dict(r._mapping) for r in result.fetchmany(batch_size)]
                    if not batch:
                        return
                    yield checked_rows(self.name, request.resource, request.fields, batch)
            except OperationalError as e:
                raise self._translate(e) from None
            except DBAPIError:
                raise ProviderUnavailable(self.name) from None

    def document(self, request: FetchRequest) -> BlockingDocument:
        raise Unsupported(self.name, "documents")

    def changes(self, request: ChangeRequest) -> ChangeBatch:
        """Rows changed after ``request.after``, by the binding's change column (``adapters.sql_changes``)."""
        if self.binding.changes is None:
            raise Unsupported(self.name, "changes")
        reader = TableChanges(self.name, self._source(), self.binding.column, self.binding.changes)
        with self._connection(request.timeout_seconds) as connection:
            try:
                return reader.read(connection, request, self.binding.max_rows)
            except OperationalError as e:
                raise self._translate(e) from None
            except DBAPIError:
                raise ProviderUnavailable(self.name) from None

    def close(self) -> None:
        self._engine.dispose()

    def _connection(self, timeout: float) -> _Bounded:
        return _Bounded(self, timeout)

    def _rows(self, connection: Connection, query: Select[Any]) -> list[Row]:
        try:
            return [dict(r._mapping) for r in connection.execute(query)]
        except OperationalError as e:
            raise self._translate(e) from None
        except DBAPIError:
            raise ProviderUnavailable(self.name) from None

    def _translate(self, e: OperationalError) -> Exception:
        if getattr(e.orig, "sqlstate", None) == "57014" or "interrupted" in str(e.orig):
            return ProviderTimeout(self.name)
        return ProviderUnavailable(self.name)


class _Bounded:
    """A read-only connection whose statements stop at the deadline; always rolled back."""

    def __init__(self, adapter: SqlAdapter, timeout: float) -> None:
        self._adapter = adapter
        self._timeout = timeout
        self._connection: Connection | None = None

    def __enter__(self) -> Connection:
        try:
            connection = self._connection = self._adapter._engine.connect()
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT set_config('statement_timeout', :ms, false)"),
                    {"ms": str(max(1, int(self._timeout * 1000)))},
                )
        except OperationalError as e:
            raise self._adapter._translate(e) from None
        except DBAPIError:
            raise ProviderUnavailable(self._adapter.name) from None
        connection.info["deadline"] = time.monotonic() + self._timeout
        return connection

    def __exit__(self, *exc: object) -> None:
        connection = self._connection
        if connection is None:
            return
        connection.info.pop("deadline", None)
        try:
            connection.rollback()
            connection.close()
        except SQLAlchemyError:
            connection.invalidate()


def _read_only_engine(url: str, host_address: str = "") -> Engine:
    """An engine whose every connection refuses to write (to ``host_address`` when given)."""
    if url.startswith("postgresql"):
        options: dict[str, object] = {"options": "-c default_transaction_read_only=on", "connect_timeout": 5}
        if host_address:
            options["hostaddr"] = host_address
        return create_engine(url, pool_pre_ping=True, connect_args=options)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_read_only)
    return engine


def _sqlite_read_only(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only = ON")

    def interrupt_after_deadline() -> int:
        deadline = record.info.get("deadline") if hasattr(record, "info") else None
        return 1 if deadline is not None and time.monotonic() > deadline else 0

    dbapi_connection.set_progress_handler(interrupt_after_deadline, 10_000)
