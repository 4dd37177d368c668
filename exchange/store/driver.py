"""Statements compiled once and run on the driver's own cursor (``Database.driver_write``).

For the few hot writes where SQLAlchemy's per-statement work costs more than the database's: the audit
log's group commit. The values are converted as SQLAlchemy would (each column type's bind processor for
this dialect), so a row written here reads back exactly like one written through a session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Table, insert


@dataclass(frozen=True)
class DriverInsert:
    """An insert of some columns of a table: its SQL, the parameters' order, and their conversions."""

    sql: str
    keys: tuple[str, ...]
    named: bool
    binds: Mapping[str, Callable[[Any], Any]]

    @classmethod
    def of(cls, table: Table, columns: Iterable[str], dialect: Dialect) -> DriverInsert:
        names = tuple(columns)
        compiled = insert(table).values(dict.fromkeys(names)).compile(dialect=dialect)
        binds = {
            n: p for n in names if (p := table.c[n].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        return cls(str(compiled), tuple(compiled.positiontup or names), not compiled.positional, binds)

    def values(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        """``rows`` as the driver's executemany takes them (dicts for named parameters, else tuples)."""
        converted = [{**row, **{k: bind(row[k]) for k, bind in self.binds.items()}} for row in rows]
        return converted if self.named else [tuple(row[k] for k in self.keys) for row in converted]
