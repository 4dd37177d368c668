"""Typed values of data items: on the wire, as filter text, and in the digest the hub signs.

The domain form of a value is a Python object of the item's declared type (str, int, Decimal,
bool, date, datetime in UTC, bytes) or None. The wire form is ``exchange.v1.Value``. The digest of
records (``RowsDigest``) is SHA-256 over one canonical JSON line per record, so a consumer can
recompute it from the records it received (see ``audit.provenance``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from google.type import date_pb2

from audit.records import canonical_text
from exchange.models import FieldType
from exchange.v1 import data_pb2


class BadValue(ValueError):
    """A value that is not of the type it should be."""


def to_wire(value: object) -> data_pb2.Value:  # noqa: PLR0911 - one branch per type
    """The wire form of a domain value; TypeError for a type no data item has."""
    if value is None:
        return data_pb2.Value()
    if isinstance(value, bool):
        return data_pb2.Value(boolean_value=value)
    if isinstance(value, str):
        return data_pb2.Value(string_value=value)
    if isinstance(value, int):
        return data_pb2.Value(integer_value=value)
    if isinstance(value, Decimal | float):
        return data_pb2.Value(decimal_value=str(value))
    if isinstance(value, dt.datetime):
        wire = data_pb2.Value()
        wire.timestamp_value.FromDatetime(_utc(value))
        return wire
    if isinstance(value, dt.date):
        return data_pb2.Value(date_value=date_pb2.Date(year=value.year, month=value.month, day=value.day))
    if isinstance(value, bytes):
        return data_pb2.Value(bytes_value=value)
    raise TypeError(f"{type(value).__name__} is not a data item type")


def from_wire(value: data_pb2.Value) -> object:
    """The domain form of a wire value; BadValue for a decimal or date that is not one."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "decimal_value":
        try:
            return Decimal(value.decimal_value)
        except InvalidOperation:
            raise BadValue(f"{value.decimal_value[:40]!r} is not a decimal") from None
    if kind == "date_value":
        d = value.date_value
        try:
            return dt.date(d.year, d.month, d.day)
        except ValueError:
            raise BadValue(f"{d.year}-{d.month}-{d.day} is not a date") from None
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=dt.UTC)
    return getattr(value, kind)


def set_wire(target: data_pb2.Value, value: object) -> None:
    """Writes ``value``'s wire form into ``target`` (a fresh Value, e.g. a record's map entry), as ``to_wire``
    would make it: the common types set in place, without building and copying a Value; TypeError as there."""
    setter = _SETTERS.get(type(value))
    if setter is None:  # a datetime, bytes, a subclass of a common type: to_wire's checks decide
        target.CopyFrom(to_wire(value))
    else:
        setter(target, value)


def _set_nothing(target: data_pb2.Value, value: object) -> None:
    return None  # a null: the entry stays an empty Value


def _set_string(target: data_pb2.Value, value: str) -> None:
    target.string_value = value


def _set_integer(target: data_pb2.Value, value: int) -> None:
    target.integer_value = value


def _set_boolean(target: data_pb2.Value, value: bool) -> None:
    target.boolean_value = value


def _set_decimal(target: data_pb2.Value, value: Decimal | float) -> None:
    target.decimal_value = str(value)


def _set_date(target: data_pb2.Value, value: dt.date) -> None:
    date = target.date_value
    date.year, date.month, date.day = value.year, value.month, value.day


# The exact types most values have (bool is not taken for int here: the type must match exactly).
_SETTERS: dict[type, Callable[[data_pb2.Value, Any], None]] = {
    type(None): _set_nothing,
    str: _set_string,
    int: _set_integer,
    bool: _set_boolean,
    Decimal: _set_decimal,
    float: _set_decimal,
    dt.date: _set_date,
}


def record_to_wire(row: Mapping[str, object]) -> data_pb2.Record:
    record = data_pb2.Record()
    fill_record(record, row)
    return record


def fill_record(record: data_pb2.Record, row: Mapping[str, object]) -> None:
    """Writes ``row`` into an empty ``record`` (one added to a response, say, instead of one built and copied)."""
    fields = record.fields
    for name, value in row.items():
        set_wire(fields[name], value)  # the map entry, made empty on first access, is filled in place


def record_from_wire(record: data_pb2.Record) -> dict[str, object]:
    fields = record.fields  # read by key: a message map's items() is a generator written in Python
    return {name: from_wire(fields[name]) for name in fields}


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def parse_text(text: str, kind: FieldType) -> object:  # noqa: PLR0911 - one branch per type
    """A filter value given as text, read as the item's type; BadValue saying what was expected."""
    try:
        if kind is FieldType.STRING:
            return text
        if kind is FieldType.INTEGER:
            whole = int(text, 10)
            if not INT64_MIN <= whole <= INT64_MAX:  # what the contract's int64 and every backend can hold
                raise ValueError
            return whole
        if kind is FieldType.DECIMAL:
            number = Decimal(text)
            if not number.is_finite():
                raise ValueError
            return number
        if kind is FieldType.BOOLEAN:
            return _BOOLEANS[text.lower()]
        if kind is FieldType.DATE:
            return dt.date.fromisoformat(text)
        if kind is FieldType.TIMESTAMP:
            return _utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        return base64.b64decode(text, validate=True)
    except (ValueError, KeyError, InvalidOperation, ArithmeticError):
        raise BadValue(f"{text[:40]!r} is not {EXPECTED[kind]}") from None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

EXPECTED = {  # how a value of each type is described in errors
    FieldType.STRING: "a string",
    FieldType.INTEGER: "a whole number (64-bit)",
    FieldType.DECIMAL: "a decimal number",
    FieldType.BOOLEAN: "true or false",
    FieldType.DATE: "a date (YYYY-MM-DD)",
    FieldType.TIMESTAMP: "a time (RFC 3339)",
    FieldType.BYTES: "base64",
}


def _json_form(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float):
        return str(Decimal(str(value)))
    return value


# The exact types whose JSON form is themselves (text, whole numbers, true/false, null), or made by one call.
_JSON_FORMS: dict[type, Callable[[Any], object] | None] = {
    str: None,
    int: None,
    bool: None,
    type(None): None,
    Decimal: str,
    dt.date: dt.date.isoformat,
}


def canonical_row(row: Mapping[str, object]) -> bytes:
    """One record's canonical line: JSON, keys sorted, compact, UTF-8, then a newline."""
    forms = _JSON_FORMS
    data = {}
    for k, v in row.items():
        form = forms.get(type(v), _json_form)
        data[k] = v if form is None else form(v)
    return canonical_text(data).encode() + b"\n"


class RowsDigest:
    """SHA-256 over the canonical lines of records, in order, fed a batch at a time."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def update(self, rows: Iterable[Mapping[str, object]]) -> None:
        for row in rows:
            self._hash.update(canonical_row(row))
            self.rows += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
