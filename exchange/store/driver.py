"""Statements compiled once and run on the driver's own cursor (``Database.driver_write``).

For the audit log's hot writes, where SQLAlchemy's work per statement costs more than the database's.
Values are converted as SQLAlchemy would (each column type's bind processor for this dialect), so a row
written here reads back exactly like one written through a session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Dialect, Table, insert
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement


@dataclass(frozen=True)
class DriverStatement:
    """A statement as the driver takes it: its SQL, its parameters' order, and conversions by parameter."""

    sql: str
    keys: tuple[str, ...]
    named: bool
    binds: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> DriverStatement:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        return cls(str(compiled), tuple(compiled.positiontup or ()), not compiled.positional)

    @classmethod
    def insert(cls, table: Table, columns: Iterable[str], dialect: Dialect) -> DriverStatement:
        """An insert of ``columns`` of ``table``, converting each as its column type does on this dialect."""
        names = tuple(columns)
        plain = cls.of(insert(table).values(dict.fromkeys(names)), dialect)
        binds = {n: p for n in names if (p := table.c[n].type.dialect_impl(dialect).bind_processor(dialect))}
        return cls(plain.sql, plain.keys or names, plain.named, binds)

    def params(self, row: Mapping[str, Any]) -> Any:
        """One row of parameters (a dict for named parameters, else a tuple in the statement's order)."""
        if self.binds:
            row = {**row, **{k: bind(row[k]) for k, bind in self.binds.items()}}
        return row if self.named else tuple(row[k] for k in self.keys)

    def values(self, rows: Iterable[Mapping[str, Any]], shared: Mapping[str, Any] | None = None) -> list[Any]:
        """Rows of parameters for the driver's executemany; ``shared``: values that every row takes (a batch's
        time, say), converted once for all rows, which then need not hold them."""
        if not shared:
            return [self.params(row) for row in rows]
        fixed = {k: self.binds[k](v) if k in self.binds else v for k, v in shared.items()}
        binds = [(k, bind) for k, bind in self.binds.items() if k not in fixed]
        out: list[Any] = []
        for row in rows:
            full = {**row, **fixed}
            for k, bind in binds:
                full[k] = bind(full[k])
            out.append(full if self.named else tuple(full[k] for k in self.keys))
        return out
