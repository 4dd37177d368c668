"""The SQL adapter: reads a table or view of a department's front-end database (前置库).

Only declared filter columns can be filtered on, always as bound parameters; only declared fields
are selected; every query is read-only, limited in rows and bounded in time (PostgreSQL
statement_timeout; SQLite progress handler). Database errors become provider errors that name the
provider, never the database's own message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from adapters.base import (
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Row,
    checked_rows,
)
from exchange.errors import FieldViolation, InvalidArgument


@dataclass(frozen=True)
class SqlBinding:
    """Where a resource lives in a front-end database: its table, field columns and filter columns."""

    url: str
    table: str
    columns: Mapping[str, str]  # resource field -> column
    filters: Mapping[str, str]  # filter parameter -> column
    max_rows: int = 1000


class SqlAdapter:
    def __init__(self, name: str, binding: SqlBinding) -> None:
        self.name = name
        self.binding = binding
        self._engine = _read_only_engine(binding.url)
        self._table: Table | None = None

    def _source(self) -> Table:
        if self._table is None:
            try:
                self._table = Table(self.binding.table, MetaData(), autoload_with=self._engine)
            except SQLAlchemyError:
                raise ProviderUnavailable(self.name) from None
        return self._table

    def fetch(self, request: FetchRequest) -> list[Row]:
        unknown = sorted(set(request.filters) - set(self.binding.filters))
        if unknown or not request.filters:
            allowed = ", ".join(sorted(self.binding.filters))
            detail = f"{', '.join(unknown)} cannot be filtered on" if unknown else "at least one filter is needed"
            raise InvalidArgument.of([FieldViolation("filters", f"{detail}; declared filters: {allowed}")])
        missing = [f for f in request.fields if f not in self.binding.columns]
        if missing:
            raise ProviderContractError(self.name, f"no column for {', '.join(missing)}")
        table = self._source()
        try:
            columns = [table.c[self.binding.columns[f]].label(f) for f in request.fields]
            query = select(*columns)
            for name, value in request.filters.items():
                query = query.where(table.c[self.binding.filters[name]] == value)
            query = query.limit(min(request.limit, self.binding.max_rows))
        except KeyError as e:
            raise ProviderContractError(self.name, f"the table has no column {e}") from None
        rows = self._run(query, request.timeout_seconds)
        return checked_rows(self.name, request.resource, request.fields, rows)

    def _run(self, query: Any, timeout: float) -> list[Row]:
        deadline = time.monotonic() + timeout
        try:
            with self._engine.connect() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT set_config('statement_timeout', :ms, true)"),
                        {"ms": str(max(1, int(timeout * 1000)))},
                    )
                connection.info["deadline"] = deadline
                try:
                    result = [dict(r._mapping) for r in connection.execute(query)]
                finally:
                    connection.info.pop("deadline", None)
                connection.rollback()
                return result
        except OperationalError as e:
            if getattr(e.orig, "sqlstate", None) == "57014" or "interrupted" in str(e.orig):
                raise ProviderTimeout(self.name) from None
            raise ProviderUnavailable(self.name) from None
        except DBAPIError:
            raise ProviderUnavailable(self.name) from None


def _read_only_engine(url: str) -> Engine:
    """An engine whose every connection refuses to write."""
    if url.startswith("postgresql"):
        options = {"options": "-c default_transaction_read_only=on", "connect_timeout": 5}
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
