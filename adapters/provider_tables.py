"""The provider kit's table source: a records function over one table of a department's database, read-only.

Only mapped columns are selected, filters are bound parameters on the items allowed, rows come in
a stable order, and the connections refuse to write (PostgreSQL and SQLite only).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, MetaData, Select, Table, create_engine, event, select

from adapters.provider_query import BATCH_RECORDS, ProviderQuery, QueryRefused, Row
from exchange.errors import ConfigError


class TableSource:
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


def read_only_engine(url: str) -> Engine:
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
