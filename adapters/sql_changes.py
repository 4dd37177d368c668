"""Changes of a front-end database table, read by a declared change column (for subscriptions).

A table is a change source when its binding names ``change_column``: a column whose value grows
with every insert or update (an integer id or sequence, or an update time). Changes are read in
the order (change column, change key), the key being a unique column that breaks ties between rows
with the same change value, so a page boundary between two such rows neither skips nor repeats one::

    WHERE (c > v) OR (c = v AND k > key) ORDER BY c, k LIMIT n

The cursor is the last row's (value, key) as compact typed JSON, e.g. ``["i",42,"s","A-7"]``.

Out-of-order commits: a transaction that stamped its rows earlier may commit after one that stamped
later, and a reader past the later row would never see the earlier one. For a time column only rows
older than ``change_settle_seconds`` (by the database's own clock; default ``DEFAULT_SETTLE_SECONDS``)
are read, so such a late commit is still ahead of every cursor; set it above the longest write
transaction. An integer column has no age (settle 0): its writers must commit in order (one writer, or
a sequence assigned at commit).

A change column whose largest value is below a cursor's (a table restored from a backup, a sequence
reset) is reported as ``SourceWentBack``, never silently restarted. Deleted rows are not seen, nor
rows whose change value is null. The change column must be an integer, a number or a time (text
would be ordered by the database's collation, which the hub cannot compare with).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, Table, and_, func, or_, select, true
from sqlalchemy.sql import sqltypes

from adapters.base import (
    Change,
    ChangeBatch,
    ChangeRequest,
    ProviderContractError,
    Row,
    SourceWentBack,
    checked_change_filters,
    checked_rows,
)

DEFAULT_SETTLE_SECONDS = 30.0
_VALUE, _KEY = "_change_value", "_change_key"  # labels no data item can take (items start with a-z)


@dataclass(frozen=True)
class ChangeColumns:
    """A binding's change options: the column, the tie-breaking key column, and the settle delay.

    ``key`` empty: the column of the resource's first filterable item (the one it is looked up by).
    ``settle_seconds`` None: ``DEFAULT_SETTLE_SECONDS`` for a time column, 0 for any other.
    """

    column: str
    key: str = ""
    settle_seconds: float | None = None


def encode(value: object, key: object) -> str:
    """The cursor of a row: its change value and key, typed, as compact JSON."""
    return json.dumps([*_tagged(value), *_tagged(key)], separators=(",", ":"), ensure_ascii=False)


def decode(cursor: str) -> tuple[object, object]:
    """The (value, key) a cursor of ``encode`` holds; ValueError for anything else."""
    try:
        parts = json.loads(cursor)
    except json.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(parts, list) or len(parts) != 4:
        raise ValueError("not a change position")
    return _untagged(parts[0], parts[1]), _untagged(parts[2], parts[3])


def _tagged(value: object) -> list[object]:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"a change column or key holds {value!r}")
    if isinstance(value, int):
        return ["i", value]
    if isinstance(value, dt.datetime):
        return ["t", value.isoformat()]
    if isinstance(value, dt.date):
        return ["d", value.isoformat()]
    if isinstance(value, Decimal | float):
        return ["n", str(value)]
    if isinstance(value, str):
        return ["s", value]
    raise ValueError(f"a change column or key holds a {type(value).__name__}")


_READERS: dict[str, Callable[[Any], object]] = {
    "i": int,
    "t": dt.datetime.fromisoformat,
    "d": dt.date.fromisoformat,
    "n": Decimal,
    "s": str,
}


def _untagged(tag: object, raw: object) -> object:
    reader = _READERS.get(tag) if isinstance(tag, str) else None
    if reader is None or not isinstance(raw, int | str) or isinstance(raw, bool):
        raise ValueError("an unknown value kind")
    try:
        return reader(raw)
    except (TypeError, InvalidOperation):
        raise ValueError("a malformed value") from None


class TableChanges:
    """Reads one table's changes for one request; ``provider`` names the department in every error."""

    def __init__(self, provider: str, table: Table, columns: Callable[[str], str], options: ChangeColumns) -> None:
        self.provider = provider
        self._table = table
        self._column_of = columns
        self._options = options

    def read(self, connection: Connection, request: ChangeRequest, max_rows: int) -> ChangeBatch:
        checked_change_filters(request)
        value, key = self._columns(request)
        settled = self._settled(value, connection.dialect.name)
        if request.after is None:
            return ChangeBatch([], self._position(connection, value, key, settled))
        after = self._after(request, value, key)
        # With filters, the newest settled row bounds the read: when fewer rows than asked match, the position
        # moves to it, past the rows the filters left out, instead of reading them again at every poll.
        bound = self._position(connection, value, key, settled) if request.filters else ""
        labelled = [self._column(self._column_of(f)).label(f) for f in request.fields]
        query = select(*labelled, value.label(_VALUE), key.label(_KEY)).where(value.is_not(None), after, settled)
        if bound:
            query = query.where(self._not_after(bound, value, key))
        for name, wanted in request.filters.items():
            query = query.where(self._column(self._column_of(name)) == wanted)
        limit = max(1, min(request.limit, max_rows))
        found = [dict(r._mapping) for r in connection.execute(query.order_by(value, key).limit(limit))]
        changes = [self._change(row) for row in found]
        checked_rows(self.provider, request.resource, request.fields, [c.row for c in changes])
        if not changes and request.after:
            self._require_not_behind(connection, value, request)
        if len(changes) < limit and bound and bound != request.after:
            return ChangeBatch(changes, bound)
        return ChangeBatch(changes, changes[-1].cursor if changes else request.after)

    def _not_after(self, cursor: str, value: Column[Any], key: Column[Any]) -> ColumnElement[bool]:
        last_value, last_key = decode(cursor)
        return or_(value < last_value, and_(value == last_value, key <= last_key))

    def _columns(self, request: ChangeRequest) -> tuple[Column[Any], Column[Any]]:
        key = self._options.key
        if not key:
            first = next((i.name for i in request.resource.data_items if i.filterable), None)
            if first is None:
                raise ProviderContractError(self.provider, "set change_key: the resource has no filterable item")
            key = self._column_of(first)
        value = self._column(self._options.column)
        if not isinstance(value.type, sqltypes.Integer | sqltypes.Numeric | sqltypes.DateTime | sqltypes.Date):
            detail = f"the change column {value.name!r} is {value.type}, not an integer, a number or a time"
            raise ProviderContractError(self.provider, detail)
        return value, self._column(key)

    def _column(self, name: str) -> Column[Any]:
        try:
            column: Column[Any] = self._table.c[name]
        except KeyError:
            raise ProviderContractError(self.provider, f"the table has no column {name!r}") from None
        return column

    def _settled(self, value: Column[Any], dialect: str) -> ColumnElement[bool]:
        """Rows old enough that no transaction still open can commit one before them (time columns only)."""
        is_time = isinstance(value.type, sqltypes.DateTime | sqltypes.Date)
        settle = self._options.settle_seconds
        settle = (DEFAULT_SETTLE_SECONDS if is_time else 0.0) if settle is None else settle
        if settle <= 0:
            return true()
        if not is_time:
            raise ProviderContractError(
                self.provider, f"change_settle_seconds needs a time column, and {value.name!r} is not one"
            )
        if dialect == "sqlite":  # datetimes are text there, in SQLAlchemy's 'YYYY-MM-DD HH:MM:SS.ffffff'
            return value <= func.strftime("%Y-%m-%d %H:%M:%f", "now", f"-{settle:.3f} seconds")
        return value <= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, settle)

    def _position(self, connection: Connection, value: Column[Any], key: Column[Any], settled: Any) -> str:
        """The cursor of the newest settled row ("" for none): changes after it are the ones to come."""
        newest: Select[Any] = (
            select(value, key).where(value.is_not(None), settled).order_by(value.desc(), key.desc()).limit(1)
        )
        row = connection.execute(newest).first()
        return "" if row is None else self._cursor(row[0], row[1])

    def _after(self, request: ChangeRequest, value: Column[Any], key: Column[Any]) -> ColumnElement[bool]:
        if not request.after:
            return true()
        last_value, last_key = self._decoded(request)
        return or_(value > last_value, and_(value == last_value, key > last_key))

    def _decoded(self, request: ChangeRequest) -> tuple[object, object]:
        try:
            return decode(request.after or "")
        except ValueError as e:
            raise SourceWentBack(
                self.provider, request.resource.code, f"the position is not one this table handed out ({e})"
            ) from None

    def _change(self, row: Row) -> Change:
        value, key = row.pop(_VALUE), row.pop(_KEY)
        return Change(self._cursor(value, key), row)

    def _cursor(self, value: object, key: object) -> str:
        try:
            return encode(value, key)
        except ValueError as e:
            raise ProviderContractError(self.provider, str(e)) from None

    def _require_not_behind(self, connection: Connection, value: Column[Any], request: ChangeRequest) -> None:
        """Raises ``SourceWentBack`` when the column's largest value is below the cursor's."""
        last, _ = self._decoded(request)
        largest = connection.execute(select(func.max(value))).scalar()
        try:
            behind = largest is None or largest < last
        except TypeError:
            behind = True
        if behind:
            raise SourceWentBack(
                self.provider,
                request.resource.code,
                f"the column {value.name} is at most {largest}, below the last position's {last}",
            )
