"""What the audit log records, and the exact bytes it hashes.

A record is a flat mapping of strings, integers and lists of strings. Its canonical encoding is
JSON with keys sorted, no insignificant whitespace, UTF-8 without escaping non-ASCII, and no
floating-point numbers (durations are whole microseconds), so anyone can recompute a leaf hash
from a record: leaf = SHA-256(0x00 || canonical bytes), RFC 9162. Data subjects (an ID number,
a company code) appear only as keyed hashes, so "who looked at this citizen" can be answered
without storing the identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import cast

import orjson

from audit.merkle import leaf_hash

Value = str | int | list[str]


class RecordError(ValueError):
    """A record that cannot be encoded canonically."""


@dataclass(frozen=True)
class AuditRecord:
    """One audited event: an exchange (allowed, denied or failed) or a change of rights, catalog or registry."""

    kind: str  # "exchange", "rights", "catalog", "registry"
    action: str  # e.g. "query", "apply", "approve", "issue_grant", "publish"
    time: str  # RFC 3339 UTC with microseconds, e.g. 2026-11-22T08:00:00.123456Z
    actor: str  # principal, e.g. "system/bdc-djxt" or "person/ga-steward"
    actor_department: str
    outcome: str  # "ok", "allowed", "denied", "failed"
    reason: str = ""
    subject: str = ""  # what was acted on: a resource code, request id, grant id, person...
    resource: str = ""
    purpose: str = ""
    grant: str = ""
    exchange_id: str = ""
    fields: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)  # "field=kind"
    rows: int = 0
    bytes: int = 0
    request_sha256: str = ""
    response_sha256: str = ""
    data_subjects: list[str] = field(default_factory=list)  # keyed hashes, hex
    hub: str = ""
    latency_us: int = 0
    # An exchange by a system: the person who had its certificate issued ("person/<username>"), who holds its
    # key. Left out of the record when empty, so records made before it was kept keep their bytes.
    key_holder: str = ""
    # An exchange that crossed hubs (audit.receipt): the other hub's log origin, its id of the exchange, and
    # "out" at the hub that forwarded the call or "in" at the hub that served it. Left out when empty.
    peer_hub: str = ""
    peer_exchange_id: str = ""
    hop: str = ""
    # The forwarded-call statement (audit.forwarded, a signed note) the hub received with the call, if any.
    forwarded: str = ""

    def but(self, **changes: Value) -> AuditRecord:
        """This record with ``changes``: what ``dataclasses.replace`` gives (the same fields, the same objects),
        at a sixth of its cost, which matters as every exchange record is derived from the one before it."""
        if not _FIELDS.issuperset(changes):
            raise TypeError(f"AuditRecord has no field {sorted(changes.keys() - _FIELDS)[0]!r}")
        changed = object.__new__(AuditRecord)
        object.__setattr__(changed, "__dict__", {**self.__dict__, **changes})  # one dict, built at once
        return changed

    def as_dict(self) -> dict[str, Value]:
        # A shallow copy: dataclasses.asdict deep-copies and costs ten times as much on the hot path.
        out: dict[str, Value] = dict(vars(self))
        for optional in _OPTIONAL:
            if not out[optional]:
                del out[optional]
        return out


_FIELDS = frozenset(f.name for f in fields(AuditRecord))
# Fields left out of a record when empty, so records made before them keep their bytes.
_OPTIONAL = ("key_holder", "peer_hub", "peer_exchange_id", "hop", "forwarded")


# The canonical encoder, made once: json.dumps with these options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# A record's same bytes from orjson (sorted keys, compact, UTF-8 unescaped) at a sixth of the cost, for records
# whose values are all exactly str, int or lists of str: the types both encoders write alike. Anything else
# (floats, which orjson writes differently, bools, None, nested dicts, other types) and anything orjson refuses
# (keys that are not text, ints past 64 bits, lone surrogates) goes to the standard encoder, as before.
_SORTED = orjson.OPT_SORT_KEYS
_SCALARS = frozenset((str, int))
_FLAT = frozenset((str, int, list))
_STR = frozenset((str,))


def _one_shot_encoder() -> Callable[[object], str]:
    """``_CANONICAL.encode``, or the same text without what it makes anew on every call: the C encoder that
    ``json`` builds for each value (its circular-reference check left out: canonical values are trees)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _CANONICAL.encode
    try:
        chunks = make(None, _CANONICAL.default, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    except TypeError:  # another Python's C encoder, made differently
        return _CANONICAL.encode
    join = "".join
    return lambda value: join(chunks(value, 0))


_ENCODE = _one_shot_encoder()


def canonical_text(value: object) -> str:
    """``value`` as canonical JSON text (sorted keys, compact, non-ASCII kept): what records and requests hash."""
    return _ENCODE(value)


def canonical(record: Mapping[str, object]) -> bytes:
    """The deterministic bytes of a record (sorted keys, compact, UTF-8, no floats)."""
    if type(record) is dict and _flat(record):
        try:
            return orjson.dumps(record, option=_SORTED)
        except orjson.JSONEncodeError:
            pass  # a key that is not text, an int past 64 bits, a lone surrogate: as below, as before
    for key, value in record.items():
        kind = type(value)
        if kind is str or kind is int:
            continue  # the common case, told apart at a third of the cost of the checks below
        if kind is list and all(type(v) is str for v in cast(list[object], value)):
            continue
        if isinstance(value, float | bool) or value is None:
            raise RecordError(f"field {key!r}: only strings, integers and lists of strings are recorded")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise RecordError(f"field {key!r}: lists hold strings only")
    return _ENCODE(record).encode()


def _flat(record: dict[str, object]) -> bool:
    """True if every value of ``record`` is exactly a str, an int or a list of str (every record's form)."""
    values = record.values()
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        return True
    return kinds <= _FLAT and all(set(map(type, v)) <= _STR for v in values if type(v) is list)


def record_leaf(record: AuditRecord | Mapping[str, object]) -> tuple[bytes, bytes]:
    """The canonical bytes of a record and its RFC 9162 leaf hash."""
    data = canonical(record.as_dict() if isinstance(record, AuditRecord) else record)
    return data, leaf_hash(data)


def subject_hash(key: bytes, identifier: str) -> str:
    """The keyed hash (HMAC-SHA-256, hex) under which a data subject's identifier is recorded."""
    return SubjectHasher(key)(identifier)


class SubjectHasher:
    """``subject_hash`` under one key, the key's HMAC state made once and copied per identifier (same hashes)."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, identifier: str) -> str:
        mac = self._keyed.copy()
        mac.update(identifier.strip().upper().encode())
        return mac.hexdigest()


def with_logged(record: bytes, logged: str) -> bytes:
    """The canonical bytes of ``record`` (canonical bytes of an AuditRecord) with "logged" added.

    Keys are sorted, and every AuditRecord has "masks", the key that follows "logged": inserting
    before it gives the same bytes as re-encoding, without parsing and re-encoding the record.
    """
    anchor = record.find(b',"masks":')
    if anchor < 0:
        data = json.loads(record)
        return canonical({**data, "logged": logged})
    return record[:anchor] + b',"logged":' + json.dumps(logged).encode() + record[anchor:]


# Export lines (see exchange.auditlog.export): one tab-separated line per entry.
ENTRY = "E"


def entry_line(seq: int, leaf: bytes, record: str | None) -> str:
    return f"{ENTRY}\t{seq}\t{leaf.hex()}\t{record or ''}"


def parse_entry_line(line: str) -> tuple[int, str, str | None]:
    """(seq, leaf hash hex, record or None if pruned) of an entry line; ValueError if it is not one."""
    kind, seq, leaf, record = line.rstrip("\n").split("\t", 3)
    if kind != ENTRY:
        raise ValueError("not an entry line")
    return int(seq), leaf, record or None


_LOGGED = re.compile(r'"logged":"([^"]*)"')


def logged_of(record: str) -> str:
    """The time an entry's record was logged, from its canonical JSON ("" if it has none)."""
    found = _LOGGED.search(record)
    return found.group(1) if found else ""
