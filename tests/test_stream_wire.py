"""The stream path's fast forms against the plain ones, on random valid and faulty batches.

A provider's records are read straight into the consumer's QueryBatch (``adapters.grpc_batches``), checked
there (``checked_records``) and masked in place (``record_masker``): each is held here to what the plain form
gives — ProviderBatch parsing, a walk of the declaration that names the first fault, ``masks.apply`` on rows.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

import pytest
from google.protobuf.message import DecodeError

import adapters.base as adapters_base
from adapters.base import ProviderContractError, checked_records
from adapters.grpc_batches import Cutter, received
from exchange import values
from exchange.models import FieldType, MaskKind
from exchange.services.exchange.answers import Batch, Disclosure, batch_bytes, batch_to_wire
from exchange.v1 import data_pb2, exchange_pb2, provider_pb2
from policy.masks import apply, record_masker, records_masker

TYPES = {
    "name": FieldType.STRING,
    "count": FieldType.INTEGER,
    "price": FieldType.DECIMAL,
    "ok": FieldType.BOOLEAN,
    "day": FieldType.DATE,
    "at": FieldType.TIMESTAMP,
    "blob": FieldType.BYTES,
}
KINDS = ("string_value", "integer_value", "decimal_value", "boolean_value", "date_value", "timestamp_value")
SAMPLES: dict[str, object] = {"string_value": "s", "integer_value": 7, "decimal_value": "1.5", "boolean_value": False}


def _value(rng: random.Random, kind: FieldType) -> object:
    makers: dict[FieldType, Callable[[], object]] = {
        FieldType.STRING: lambda: "".join(rng.choice("张三李四ab1 *-") for _ in range(rng.randrange(0, 25))),
        FieldType.INTEGER: lambda: rng.randrange(-(2**63), 2**63),
        FieldType.DECIMAL: lambda: Decimal(rng.randrange(-(10**9), 10**9)) / 100,
        FieldType.BOOLEAN: lambda: rng.random() < 0.5,
        FieldType.DATE: lambda: dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(20000)),
        FieldType.TIMESTAMP: lambda: (
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(10**8))
        ),
        FieldType.BYTES: lambda: rng.randbytes(rng.randrange(0, 40)),
    }
    return makers[kind]()


def _record(rng: random.Random, size: int = 0) -> data_pb2.Record:
    """A valid record: some fields absent, some null; ``size`` pads the name to about that many bytes."""
    record = data_pb2.Record()
    for name, kind in TYPES.items():
        roll = rng.random()
        if roll < 0.1:
            continue
        if roll < 0.2:
            record.fields[name].SetInParent()  # null
            continue
        values.set_wire(record.fields[name], _value(rng, kind))
    if size:
        record.fields["name"].string_value = "x" * size
    return record


def _spoiled(rng: random.Random, record: data_pb2.Record) -> data_pb2.Record:
    """The record with one to three faults: a wrong kind, an unreadable decimal or date, a field not asked for."""
    record = data_pb2.Record.FromString(record.SerializeToString())
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice([*TYPES, "secret"])
        value = record.fields[name]
        fault = rng.randrange(4)
        if fault == 0:  # any kind, the declared one included (then no fault)
            kind = rng.choice(KINDS[:4])
            value.Clear()
            setattr(value, kind, SAMPLES[kind])
        elif fault == 1:
            value.decimal_value = rng.choice(["1,000", "", "abc", "1e5", "NaN", " 1", "--1"])
        elif fault == 2:
            d = value.date_value
            d.year, d.month, d.day = rng.choice([(2026, 2, 29), (2024, 2, 29), (2026, 13, 1), (0, 1, 1), (2026, 4, 31)])
        else:
            record.fields[f"extra{rng.randrange(3)}"].string_value = "x"
    return record


def _plain_fault(types: Mapping[str, FieldType], records: list[data_pb2.Record]) -> str | None:
    """The plain check: per record, the declaration's fields in order, then a field not asked for."""
    wire = {
        FieldType.STRING: "string_value",
        FieldType.INTEGER: "integer_value",
        FieldType.DECIMAL: "decimal_value",
        FieldType.BOOLEAN: "boolean_value",
        FieldType.DATE: "date_value",
        FieldType.TIMESTAMP: "timestamp_value",
        FieldType.BYTES: "bytes_value",
    }
    for n, record in enumerate(records):
        for name, kind in types.items():
            if name not in record.fields:
                continue
            value = record.fields[name]
            which = value.WhichOneof("kind")
            if which is None:
                continue
            if which != wire[kind]:
                return f"record {n}: {name} is not {kind.value}"
            if kind is FieldType.DECIMAL:
                try:
                    Decimal(value.decimal_value)
                except InvalidOperation:
                    return f"record {n}: {name} is not a valid decimal"
            if kind is FieldType.DATE:
                d = value.date_value
                try:
                    dt.date(d.year, d.month, d.day)
                except ValueError:
                    return f"record {n}: {name} is not a valid date"
        extra = sorted(set(record.fields) - set(types))
        if extra:
            return f"record {n} has a field not asked for: {extra[0]}"
    return None


@pytest.mark.parametrize("seed", range(20))
def test_the_fast_check_agrees_with_the_plain_one(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        records = [_record(rng) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.7:
            n = rng.randrange(len(records))
            records[n] = _spoiled(rng, records[n])
        types = dict(rng.sample(list(TYPES.items()), rng.randrange(1, len(TYPES) + 1)))
        before = [r.SerializeToString() for r in records]
        expected = _plain_fault(types, records)
        if expected is None:
            assert checked_records("P", types, records) is records
        else:
            with pytest.raises(ProviderContractError) as raised:
                checked_records("P", types, records)
            assert raised.value.message == f"the provider P answered outside its declaration: {expected}"
        assert [r.SerializeToString() for r in records] == before  # checking leaves the records as they were


def test_the_fast_check_parses_every_kind_that_needs_parsing() -> None:
    """``checked_records`` parses decimals and dates in loops of their own; a kind that must parse needs one."""
    assert set(adapters_base._PARSES) == adapters_base._INLINE


MASKS = (
    ("name", MaskKind.NAME),
    ("count", MaskKind.ID_NUMBER),
    ("price", MaskKind.PHONE),
    ("day", MaskKind.FULL),
    ("blob", MaskKind.ID_NUMBER),
    ("ok", MaskKind.NONE),
)


@pytest.mark.parametrize("seed", range(10))
def test_masking_in_place_gives_what_masking_rows_gives(seed: int) -> None:
    rng = random.Random(seed)
    masked = record_masker(MASKS)
    for _ in range(200):
        record = _record(rng)
        if rng.random() < 0.2:
            record.fields["name"].string_value = ""  # an empty text is masked, unlike a null
        row = values.record_from_wire(record)
        expected = apply(row, tuple(row), MASKS)
        assert values.record_from_wire(masked(record)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_masking_a_batch_in_place_masks_each_record_as_rows_are(seed: int) -> None:
    rng = random.Random(seed)
    batch = exchange_pb2.QueryBatch(records=[_record(rng) for _ in range(100)])
    rows = [values.record_from_wire(r) for r in batch.records]
    records_masker(MASKS)(batch.records)
    assert [values.record_from_wire(r) for r in batch.records] == [apply(row, tuple(row), MASKS) for row in rows]


def _provider_messages(rng: random.Random) -> tuple[list[bytes], list[data_pb2.Record]]:
    records: list[data_pb2.Record] = []
    messages = []
    for _ in range(rng.randrange(1, 6)):
        batch = [_record(rng, rng.choice([0, 0, 0, 200, 20000])) for _ in range(rng.randrange(0, 30))]
        records += batch
        messages.append(provider_pb2.ProviderBatch(records=batch).SerializeToString())
    return messages, records


@pytest.mark.parametrize("seed", range(10))
def test_batches_read_straight_into_the_consumers_message_hold_the_providers_records(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        messages, records = _provider_messages(rng)
        size = rng.randrange(1, 40)
        cutter = Cutter(size)
        batches = [b for m in messages for b in cutter.cut(received(m))]
        rest = cutter.rest()
        assert all(len(b.records) == size for b in batches)
        assert rest is None or 0 < len(rest.records) < size
        got = [r for b in [*batches, *([rest] if rest else [])] for r in b.records]
        assert got == records
        assert all(b.ListFields()[0][0].name == "records" and len(b.ListFields()) == 1 for b in batches)


def test_a_provider_message_with_other_fields_is_read_the_slow_way() -> None:
    records = [data_pb2.Record(fields={"name": values.to_wire(f"r{n}")}) for n in range(3)]
    plain = provider_pb2.ProviderBatch(records=records).SerializeToString()
    first, rest = (provider_pb2.ProviderBatch(records=part).SerializeToString() for part in (records[:1], records[1:]))
    for message in (plain + b"\x10\x01", b"\x1a\x00" + plain, first + b"\x10\x01" + rest):
        expected = list(provider_pb2.ProviderBatch.FromString(message).records)
        part = received(message)
        assert not part.bad
        batch = exchange_pb2.QueryBatch.FromString(bytes(part.data))
        assert list(batch.records) == expected and len(part.ends) == len(expected)


@pytest.mark.parametrize("message", [b"\x0a", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\xff\x01", b"\x12\x80"])
def test_a_provider_message_that_does_not_parse_is_bad(message: bytes) -> None:
    with pytest.raises(DecodeError):
        provider_pb2.ProviderBatch.FromString(message)
    assert received(message).bad


def test_a_record_that_does_not_parse_fails_where_it_is_read() -> None:
    part = received(b"\x0a\x02\xff\xff")
    assert not part.bad
    with pytest.raises(DecodeError):
        Cutter(1).cut(part)


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_encoded_once_is_the_bytes_of_its_message_encoded(seed: int) -> None:
    """``batch_bytes`` around the records the shaping encoded: byte for byte what the whole message encodes to,
    for a first batch (disclosure), a middle one and a last one carrying a total and a provenance note."""
    rng = random.Random(seed)
    disclosure = Disclosure(("name", "price"), (("name", MaskKind.NAME),), f"G-{seed}")
    shapes = [(disclosure, False, 0, ""), (None, False, 0, ""), (None, True, 5, "provenance-note")]
    for shown, last, total, note in shapes:
        records = [_record(rng) for _ in range(rng.randrange(0, 5))]
        message = exchange_pb2.QueryBatch(records=records)
        encoded = message.SerializeToString()
        batch = Batch(f"EX{seed}", [], shown, last, total, note, message=message, encoded=encoded)
        sent = batch_bytes(batch)
        assert sent == batch_to_wire(batch).SerializeToString()
        parsed = exchange_pb2.QueryBatch.FromString(sent)
        assert (parsed.exchange_id, list(parsed.records), parsed.last, parsed.total_records) == (
            f"EX{seed}",
            records,
            last,
            total,
        )
        assert parsed.provenance.note == note and parsed.HasField("disclosure") is (shown is not None)


def test_a_batch_of_rows_is_encoded_whole() -> None:
    batch = Batch("EX1", [{"name": "张三", "price": Decimal("1.50")}], None, True, 1)
    assert batch_bytes(batch) == batch_to_wire(batch).SerializeToString()
