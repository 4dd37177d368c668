"""What every connector to a departmental backend offers the hub, and how it fails.

An adapter fetches rows of one catalog resource for declared filters. It returns only declared
fields, with values of the declared types, or raises one of the errors below, which name the
provider and never its internals. The hub then removes what was not granted and masks the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Literal, NoReturn, TypeVar

from exchange import values
from exchange.backend import (
    Backend,
    Batch,
    BlockingBackend,
    BlockingDocument,
    Change,
    ChangeBatch,
    ChangeRequest,
    Document,
    FetchRequest,
    OnThreads,
    Records,
    Row,
)
from exchange.errors import DeadlineExceeded, FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from exchange.models import FieldType, ResourceSpec
from exchange.v1 import data_pb2

__all__ = [
    "Backend",
    "Batch",
    "BlockingBackend",
    "BlockingDocument",
    "Change",
    "ChangeBatch",
    "ChangeRequest",
    "ChangesSkipped",
    "Document",
    "FetchRequest",
    "OnThreads",
    "ProviderContractError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Records",
    "Row",
    "SourceWentBack",
    "Unsupported",
    "checked_change_filters",
    "checked_filters",
    "checked_records",
    "checked_rows",
]


class ProviderUnavailable(Unavailable):
    """The provider cannot be reached or failed; retrying later may help."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"the provider {provider} is unavailable")
        self.provider = provider


class ProviderTimeout(DeadlineExceeded):
    def __init__(self, provider: str) -> None:
        super().__init__(f"the provider {provider} did not answer in time")
        self.provider = provider


class ProviderContractError(FailedPrecondition):
    """The provider answered outside the resource's declaration; nothing of it is passed on."""

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(
            f"the provider {provider} answered outside its declaration: {detail}", provider, kind="PROVIDER_CONTRACT"
        )
        self.provider = provider


_ACCEPTED: dict[FieldType, tuple[type, ...]] = {
    FieldType.STRING: (str,),
    FieldType.INTEGER: (int,),
    FieldType.DECIMAL: (Decimal, int, float),
    FieldType.BOOLEAN: (bool,),
    FieldType.DATE: (dt.date,),
    FieldType.TIMESTAMP: (dt.datetime,),
    FieldType.BYTES: (bytes,),
}


# For each type, the exact Python types of values that need no further check: null, or exactly an accepted type
# (an int may be beyond 64 bits, a subclass may be a bool or a datetime in disguise: those get the full check).
_PLAINLY: dict[FieldType, frozenset[type]] = {
    kind: frozenset({type(None), *(t for t in accepted if t is not int)}) for kind, accepted in _ACCEPTED.items()
}


def checked_rows(provider: str, resource: ResourceSpec, fields: tuple[str, ...], rows: list[Row]) -> list[Row]:
    """The rows, if every value is a declared field of its declared type (None allowed); else a contract error."""
    types = {i.name: i.type for i in resource.data_items}
    asked = set(fields)
    for n, row in enumerate(rows):
        if not asked.issuperset(row):
            extra = set(row) - asked
            raise ProviderContractError(provider, f"row {n} has fields not asked for: {', '.join(sorted(extra))}")
        for name, value in row.items():
            kind = types.get(name)
            if kind is None:
                raise ProviderContractError(provider, f"row {n}: {name} is not a field of {resource.code}")
            if type(value) in _PLAINLY[kind]:  # null, or exactly a type the item takes with nothing more to check
                continue
            wrong_bool = isinstance(value, bool) and kind is not FieldType.BOOLEAN
            is_date_only = kind is FieldType.DATE and isinstance(value, dt.datetime)
            if value is not None and (not isinstance(value, _ACCEPTED[kind]) or wrong_bool or is_date_only):
                raise ProviderContractError(provider, f"row {n}: {name} is {type(value).__name__}, not {kind.value}")
            if isinstance(value, int) and not wrong_bool and not values.INT64_MIN <= value <= values.INT64_MAX:
                raise ProviderContractError(provider, f"row {n}: {name} is beyond a 64-bit integer")
    return rows


class Unsupported(FailedPrecondition):
    """The backend does not serve this kind of call (records from a file store, say)."""

    def __init__(self, provider: str, what: str) -> None:
        super().__init__(f"the provider {provider} does not serve {what}", provider, kind="BACKEND_MISMATCH")


def checked_filters(request: FetchRequest) -> None:
    """Refuses filters on items the resource does not declare filterable, or no filter at all.

    The hub checks this before any backend is called; adapters check again, so no backend is ever
    asked to filter on what its owner did not open to lookups.
    """
    filterable = {i.name for i in request.resource.data_items if i.filterable}
    unknown = sorted(set(request.filters) - filterable)
    if unknown or not request.filters:
        allowed = ", ".join(sorted(filterable)) or "none"
        detail = f"{', '.join(unknown)} cannot be filtered on" if unknown else "at least one filter is needed"
        raise InvalidArgument.of([FieldViolation("filters", f"{detail}; declared filters: {allowed}")])


def checked_change_filters(request: ChangeRequest) -> None:
    """``checked_filters`` for changes: only filterable items, but none at all is allowed (every change)."""
    filterable = {i.name for i in request.resource.data_items if i.filterable}
    unknown = sorted(set(request.filters) - filterable)
    if unknown:
        allowed = ", ".join(sorted(filterable)) or "none"
        detail = f"{', '.join(unknown)} cannot be filtered on; declared filters: {allowed}"
        raise InvalidArgument.of([FieldViolation("filters", detail)])
    if request.limit <= 0:
        raise InvalidArgument.of([FieldViolation("limit", "must be at least 1")])


class SourceWentBack(FailedPrecondition):
    """A change source is behind a position it handed out (a table restored, a provider repeating itself).

    Nothing is delivered and nothing restarts on its own: the source's owner must look.
    """

    def __init__(self, provider: str, resource: str, detail: str) -> None:
        super().__init__(
            f"the changes of {resource} from the provider {provider} went backwards: {detail}",
            provider,
            kind="CHANGES_BACKWARDS",
        )
        self.provider = provider


class ChangesSkipped(FailedPrecondition):
    """A provider that numbers its changes jumped over some: they would be lost, so none of the page is taken."""

    def __init__(self, provider: str, resource: str, first: int, last: int) -> None:
        missing = f"change {first}" if first == last else f"changes {first} to {last}"
        super().__init__(
            f"the provider {provider} skipped {missing} of {resource}: nothing after them is delivered until it "
            "sends them",
            provider,
            kind="CHANGES_SKIPPED",
        )
        self.provider = provider


# Records in wire form: a list, or a message's repeated field (checked where they are).
Rs = TypeVar("Rs", bound=Sequence[data_pb2.Record])

# The wire kind (``exchange.v1.Value`` oneof) each declared type must arrive as.
WireKind = Literal[
    "string_value", "integer_value", "decimal_value", "boolean_value", "date_value", "timestamp_value", "bytes_value"
]
_WIRE_KIND: dict[FieldType, WireKind] = {
    FieldType.STRING: "string_value",
    FieldType.INTEGER: "integer_value",
    FieldType.DECIMAL: "decimal_value",
    FieldType.BOOLEAN: "boolean_value",
    FieldType.DATE: "date_value",
    FieldType.TIMESTAMP: "timestamp_value",
    FieldType.BYTES: "bytes_value",
}


# A Value's HasField and WhichOneof taken from the class: called so, they skip the instance's attribute lookup
# (which looks for a field of that name first), about half their cost when asked of every streamed value.
_has = data_pb2.Value.HasField
_kind = data_pb2.Value.WhichOneof


def checked_records(provider: str, types: Mapping[str, FieldType], records: Rs) -> Rs:  # noqa: PLR0912 - per kind, inline
    """``checked_rows`` for records still in wire form: only the fields in ``types``, each of its type or null.

    Decimals and dates are also checked to be what they claim, since a consumer would parse them.
    This runs for every streamed record, so the fields are checked kind by kind, each value looked up once
    with the cheapest test that settles the common case: a decimal's text is read once and parsed (it is
    empty unless a decimal is set), a date's parts are read once and made a date (an unset date's are all
    zero, which no calendar date is), and only values failing those are asked their kind. A record found
    wrong is checked again the plain way (``_record_fault``) to say what is wrong.
    """
    count = len(types)
    plain = tuple((name, _WIRE_KIND[kind]) for name, kind in types.items() if kind not in _INLINE)
    decimals = tuple(name for name, kind in types.items() if kind is FieldType.DECIMAL)
    dates = tuple(name for name, kind in types.items() if kind is FieldType.DATE)
    for n, record in enumerate(records):
        fields = record.fields
        absent = 0
        for name, wire_kind in plain:
            if name not in fields:
                absent += 1
                continue
            value = fields[name]
            # HasField is cheaper than WhichOneof, which is asked only of other values (a null, or a fault)
            if not _has(value, wire_kind) and _kind(value, "kind") is not None:
                _record_fault(provider, types, n, record)
        for name in decimals:
            if name not in fields:
                absent += 1
                continue
            value = fields[name]
            text = value.decimal_value
            if text:
                try:
                    Decimal(text)  # as _is_decimal, inline: this runs for every decimal streamed
                    continue
                except InvalidOperation:
                    pass
            elif _kind(value, "kind") is None:
                continue
            _record_fault(provider, types, n, record)  # not a decimal, an empty one, or another kind
        for name in dates:
            if name not in fields:
                absent += 1
                continue
            value = fields[name]
            d = value.date_value
            try:
                dt.date(d.year, d.month, d.day)  # as _is_date, inline
                continue
            except ValueError:
                pass
            if _kind(value, "kind") is not None:  # not a calendar date, or another kind; else a null
                _record_fault(provider, types, n, record)
        if count - absent != len(fields):  # a field not asked for
            _record_fault(provider, types, n, record)
    return records


def _record_fault(provider: str, types: Mapping[str, FieldType], n: int, record: data_pb2.Record) -> NoReturn:
    """Raises the contract error for the ``n``-th record, which ``checked_records`` found wrong.

    The first fault in the order of ``types`` is named, then a field not asked for.
    """
    fields = record.fields
    for name, kind in types.items():
        if name not in fields:
            continue
        value = fields[name]
        which = value.WhichOneof("kind")
        if which is None:
            continue
        if which != _WIRE_KIND[kind]:
            raise ProviderContractError(provider, f"record {n}: {name} is not {kind.value}")
        parses = _PARSES.get(kind)
        if parses is not None and not parses(value):
            raise ProviderContractError(provider, f"record {n}: {name} is not a valid {kind.value}")
    extra = sorted(set(fields) - set(types))
    raise ProviderContractError(provider, f"record {n} has a field not asked for: {extra[0][:40]}")


def _is_decimal(value: data_pb2.Value) -> bool:
    """Whether a decimal_value reads as a decimal, as ``values.from_wire`` reads it."""
    try:
        Decimal(value.decimal_value)
    except InvalidOperation:
        return False
    return True


def _is_date(value: data_pb2.Value) -> bool:
    """Whether a date_value is a calendar date, as ``values.from_wire`` reads it."""
    d = value.date_value
    try:
        dt.date(d.year, d.month, d.day)
    except ValueError:
        return False
    return True


# The wire kinds whose text or parts must also read as their type, and how to tell.
_PARSES: dict[FieldType, Callable[[data_pb2.Value], bool]] = {
    FieldType.DECIMAL: _is_decimal,
    FieldType.DATE: _is_date,
}
# The kinds ``checked_records`` parses inline, each in its own loop: a kind added to _PARSES needs one there.
_INLINE = frozenset({FieldType.DECIMAL, FieldType.DATE})
