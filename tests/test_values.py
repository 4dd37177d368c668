"""The fast paths of the answer side give what the plain forms give: wire records, canonical lines, checks.

``record_to_wire`` fills map entries in place by exact type and ``canonical_row`` reuses one JSON encoder;
both must agree with the plain formulations (``to_wire`` per value, ``json.dumps`` per line) for every
type a data item has, subclasses included, and fail the same way on what no data item holds.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from enum import IntEnum, StrEnum

import pytest

from adapters.base import ProviderContractError, checked_rows
from exchange import models as m
from exchange import values
from exchange.models import MaskKind
from exchange.services.exchange.answers import Disclosure, QueryResult, query_response
from exchange.v1 import data_pb2
from tests.harness import identity_spec


class Level(IntEnum):
    HIGH = 3


class Code(StrEnum):
    A = "a\u2028"


class Day(dt.date):
    pass


VALUES: list[object] = [
    None, "", "陈美玲 \"quoted\" \\ \n\t\x00\x7f\u2028", 0, -1, 2**63 - 1, -(2**63), True, False,
    Decimal("3004551.50"), Decimal("NaN"), Decimal("-0"), Decimal("1E+3"), 1.5, 0.1, float("inf"),
    dt.date(2026, 1, 2), Day(2026, 1, 2), dt.datetime(2026, 1, 2, 3, 4, 5, 6),
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=8))), b"\x00\xff", Level.HIGH, Code.A,
]  # fmt: skip


def plain_record(row: dict[str, object]) -> data_pb2.Record:
    record = data_pb2.Record()
    for name, value in row.items():
        record.fields[name].CopyFrom(values.to_wire(value))
    return record


def plain_line(row: dict[str, object]) -> bytes:
    data = {k: values._json_form(v) for k, v in row.items()}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_record_and_its_line_are_those_of_the_plain_forms(value: object) -> None:
    row = {"z": value, "a": "x", "m": 1}
    record = values.record_to_wire(row)
    assert record == plain_record(row)
    assert record.SerializeToString(deterministic=True) == plain_record(row).SerializeToString(deterministic=True)
    assert list(record.fields) == list(plain_record(row).fields)
    assert values.canonical_row(row) == plain_line(row)
    assert repr(values.record_from_wire(record)) == repr({n: values.from_wire(v) for n, v in record.fields.items()})


@pytest.mark.parametrize("value", [object(), dt.time(1), [1], 2**63])
def test_what_no_data_item_holds_fails_as_before(value: object) -> None:
    with pytest.raises((TypeError, ValueError)) as fast:
        values.record_to_wire({"k": value})
    with pytest.raises((TypeError, ValueError)) as plain:
        plain_record({"k": value})
    assert (type(fast.value), str(fast.value)) == (type(plain.value), str(plain.value))


def test_a_line_that_cannot_be_written_fails_as_json_does() -> None:
    with pytest.raises(TypeError, match="Object of type time is not JSON serializable"):
        values.canonical_row({"k": dt.time(1)})


def test_checked_rows_refuses_what_it_refused_with_the_same_words() -> None:
    items = tuple(m.DataItem(f"f_{kind.value}", "x", kind) for kind in m.FieldType)
    spec = identity_spec(data_items=items)
    fields = tuple(i.name for i in items)
    for item in items:
        for value in VALUES:
            row: dict[str, object] = {item.name: value}
            expected = _plain_check(item.type, value)
            if expected is None:
                assert checked_rows("p", spec, fields, [row]) == [row]
            else:
                with pytest.raises(ProviderContractError, match=expected):
                    checked_rows("p", spec, fields, [row])
    with pytest.raises(ProviderContractError, match="row 0 has fields not asked for: aa, zz"):
        checked_rows("p", spec, ("f_string",), [{"f_string": "x", "zz": 1, "aa": 2}])


def _plain_check(kind: m.FieldType, value: object) -> str | None:
    """What the full check says of ``value`` for an item of ``kind``: None if it passes."""
    accepted = {
        m.FieldType.STRING: (str,),
        m.FieldType.INTEGER: (int,),
        m.FieldType.DECIMAL: (Decimal, int, float),
        m.FieldType.BOOLEAN: (bool,),
        m.FieldType.DATE: (dt.date,),
        m.FieldType.TIMESTAMP: (dt.datetime,),
        m.FieldType.BYTES: (bytes,),
    }[kind]
    if value is None:
        return None
    wrong_bool = isinstance(value, bool) and kind is not m.FieldType.BOOLEAN
    if not isinstance(value, accepted) or wrong_bool or (kind is m.FieldType.DATE and isinstance(value, dt.datetime)):
        return f"is {type(value).__name__}, not {kind.value}"
    if isinstance(value, int) and not wrong_bool and not values.INT64_MIN <= value <= values.INT64_MAX:
        return "beyond a 64-bit integer"
    return None


def test_a_kept_disclosure_is_copied_into_each_answer_never_shared() -> None:
    disclosure = Disclosure(("name", "id_number"), (("id_number", MaskKind.ID_NUMBER),), "G-1")
    first = query_response(QueryResult("EX1", [{"name": "林志强"}], "", disclosure))
    first.disclosure.grant_id = "changed by a caller"
    again = query_response(QueryResult("EX2", [], "", Disclosure(disclosure.fields, disclosure.masks, "G-1")))
    assert again.disclosure.grant_id == "G-1"
    assert list(again.disclosure.fields) == ["name", "id_number"]
    assert dict(again.disclosure.masks) == {"id_number": "id_number"}
    other = query_response(QueryResult("EX3", [], "", Disclosure(("name",), (), "G-2")))
    assert (other.disclosure.grant_id, list(other.disclosure.fields), dict(other.disclosure.masks)) == (
        "G-2",
        ["name"],
        {},
    )
    assert first.records[0] == values.record_to_wire({"name": "林志强"})
