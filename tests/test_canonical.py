"""A record's canonical bytes: the fast encoder gives exactly the bytes the standard one gave, for every record.

Existing logs' seals and Merkle leaves rest on these bytes, so the reference here is the encoding as it was
before the fast path (json with sorted keys, compact separators, non-ASCII kept, after the same checks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.records import AuditRecord, RecordError, canonical, canonical_text, record_leaf, with_logged


def reference(record: Mapping[str, object]) -> bytes:
    """The canonical encoding as written before the fast path, kept here as the standard to compare with."""
    for key, value in record.items():
        if isinstance(value, float | bool) or value is None:
            raise RecordError(f"field {key!r}: only strings, integers and lists of strings are recorded")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise RecordError(f"field {key!r}: lists hold strings only")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def outcome(encode: object, record: Mapping[str, object]) -> bytes | type[BaseException]:
    """The bytes, or the kind of error, ``encode`` gives for ``record``."""
    assert callable(encode)
    try:
        return bytes(encode(record))
    except (RecordError, TypeError, ValueError, UnicodeError) as e:
        return type(e)


# Text of every kind: control characters, quotes and backslashes, Chinese, astral characters, and lone
# surrogates (which neither encoder can write as UTF-8: both must refuse).
TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
CJK = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=20)
STRINGS = st.one_of(TEXT, CJK, st.sampled_from(['"', "\\", "\n\t\r\b\f", "\x00\x1f\x7f", "\u2028\u2029", "😀"]))
INTS = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-(2**63) - 2, -(2**63) + 2), st.integers(2**64 - 2, 2**64 + 2)
)
# What a record may hold, and what it must not (each refused, or encoded, as before).
VALUES = st.one_of(
    STRINGS,
    INTS,
    st.lists(STRINGS, max_size=5),
    st.lists(st.one_of(STRINGS, INTS, st.none(), st.booleans()), max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.dictionaries(STRINGS, st.one_of(STRINGS, INTS, st.floats()), max_size=3),
)
KEYS = st.one_of(STRINGS, st.sampled_from(["time", "masks", "logged", "fields", "数据主体", "a", "A", "_"]))


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=12))
def test_any_mapping_has_the_bytes_or_the_error_it_had(record: dict[str, object]) -> None:
    assert outcome(canonical, record) == outcome(reference, record)


# Any JSON value (a request, a row of an answer): nested lists and dicts of all that a request or row may hold.
JSON = st.recursive(
    st.one_of(STRINGS, INTS, st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=2000, deadline=None)
@given(JSON)
def test_any_value_has_the_text_json_gives(value: object) -> None:
    def standard(v: object) -> bytes:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")

    assert canonical_text(value).encode("utf-8", "surrogatepass") == standard(value)


def test_what_json_cannot_encode_is_still_refused() -> None:
    with pytest.raises(TypeError):
        canonical_text({"a": object()})
    with pytest.raises(TypeError):
        canonical_text({1: "a", "b": "c"})  # keys of two kinds cannot be sorted


@settings(max_examples=1000, deadline=None)
@given(
    st.builds(
        AuditRecord,
        kind=st.sampled_from(["exchange", "rights", "catalog", "registry"]),
        action=STRINGS,
        time=st.just("2026-11-22T08:00:00.123456Z"),
        actor=STRINGS,
        actor_department=CJK,
        outcome=st.sampled_from(["ok", "allowed", "denied", "failed"]),
        reason=STRINGS,
        purpose=CJK,
        fields=st.lists(STRINGS, max_size=4),
        masks=st.lists(STRINGS, max_size=4),
        rows=st.integers(0, 2**40),
        bytes=st.integers(0, 2**40),
        latency_us=st.integers(0, 2**40),
        data_subjects=st.lists(st.text("0123456789abcdef", min_size=64, max_size=64), max_size=3),
        key_holder=st.one_of(st.just(""), STRINGS),
        peer_hub=st.one_of(st.just(""), STRINGS),
        hop=st.sampled_from(["", "in", "out"]),
    )
)
def test_every_audit_record_has_the_bytes_it_had(record: AuditRecord) -> None:
    assert outcome(canonical, record.as_dict()) == outcome(reference, record.as_dict())


def test_the_usual_records_have_the_bytes_they_had() -> None:
    record = AuditRecord(
        kind="exchange",
        action="query",
        time="2026-11-22T08:00:00.123456Z",
        actor="system/bdc-djxt",
        actor_department="bdc",
        outcome="ok",
        resource="house_trades",
        purpose='不动产登记审核 "复核"\\\n',
        fields=["buyer_name", "买方姓名"],
        masks=["buyer_name=name"],
        rows=2**63 - 1,
        data_subjects=["ab" * 32],
        key_holder="person/bdc-steward",
    )
    data = record.as_dict()
    assert canonical(data) == reference(data)
    assert record_leaf(record)[0] == reference(data)
    assert with_logged(canonical(data), "2026-11-22T08:00:00.000001Z") == reference(
        {**data, "logged": "2026-11-22T08:00:00.000001Z"}
    )
    # Past orjson's 64 bits, and text it refuses: the standard encoder answers, as it always did.
    assert canonical({**data, "rows": 2**64}) == reference({**data, "rows": 2**64})
    with pytest.raises(UnicodeError):
        canonical({**data, "reason": "\ud800"})
    with pytest.raises(RecordError):
        canonical({**data, "rows": 1.5})
