"""How the REST adapter reads JSON values as the declared types, and writes filters into a query.

Values are read strictly: a whole number is not a string of digits, a decimal never passes through a
binary float, a date is ISO 8601 and a time RFC 3339 with its offset, bytes are base64.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal

from exchange.models import FieldType


def no_constant(name: str) -> object:
    """Refuses NaN and Infinity, which JSON does not have (Python's parser would accept them)."""
    raise ValueError(f"{name} is not a JSON number")


def query_text(value: object) -> str:
    """A filter's text form in a query: ISO dates, RFC 3339 UTC times, true/false, base64 bytes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        utc = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return utc.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError


def _decimal(value: object) -> Decimal:
    """A JSON number (parsed as Decimal) or a numeric string; never through a binary float."""
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return Decimal(value)
    raise ValueError


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError


def _date(value: object) -> dt.date:
    if isinstance(value, str) and _DATE.fullmatch(value):
        return dt.date.fromisoformat(value)
    raise ValueError


def _timestamp(value: object) -> dt.datetime:
    """An RFC 3339 time with its offset, as an aware UTC datetime (fractions past microseconds are dropped)."""
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        return dt.datetime.fromisoformat(value.upper()).astimezone(dt.UTC)
    raise ValueError


def _bytes(value: object) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError from None
    raise ValueError


READERS: dict[FieldType, Callable[[object], object]] = {
    FieldType.STRING: _string,
    FieldType.INTEGER: _integer,
    FieldType.DECIMAL: _decimal,
    FieldType.BOOLEAN: _boolean,
    FieldType.DATE: _date,
    FieldType.TIMESTAMP: _timestamp,
    FieldType.BYTES: _bytes,
}
