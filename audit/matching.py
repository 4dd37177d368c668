"""Checking search answers from the records' own bytes: does a record match the filter, is it in the
signed log, and did the answer leave out a record the log holds.

The hub finds records by columns and subject rows that no leaf covers, so an answer is only as good as
those indexes. A client checks each hit here: its record hashes to its leaf, the leaf is in the tree
of a signed checkpoint (an RFC 9162 inclusion proof), and the record itself matches the filter. Given
the log itself (an export, verified by audit.verify), it also finds the records that match but were
not returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields

from audit.merkle import ProofError, leaf_hash, verify_inclusion
from audit.note import Checkpoint, Verifier
from audit.records import ENTRY, parse_entry_line
from audit.verify import verify_export

# The filter's fields and the record's keys they compare with.
_KEYS = {
    "department": "actor_department",
    "actor": "actor",
    "resource": "resource",
    "purpose": "purpose",
    "outcome": "outcome",
    "exchange_id": "exchange_id",
}

PROVED = "proved"
PENDING = "not yet provable"
UNCHECKED = "proof not checked"


class HitError(ValueError):
    """A search hit that is not what it claims; the message names the entry."""


@dataclass(frozen=True)
class RecordFilter:
    """A search filter as the client asked it; empty fields and None times match anything."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    department: str = ""
    actor: str = ""
    resource: str = ""
    purpose: str = ""
    outcome: str = ""
    exchange_id: str = ""
    subject_hash: str = ""

    def narrows(self) -> bool:
        """Whether it asks for more than a time range (which a pruned entry, blanked, can never match)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name not in {"since", "until"})


def mismatch(record: object, f: RecordFilter) -> str | None:
    """Why ``record`` (a parsed record) does not match ``f``, or None when it does."""
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    for name, key in _KEYS.items():
        wanted = getattr(f, name)
        if wanted and record.get(key) != wanted:
            return f"its {key} is {record.get(key)!r}, not {wanted!r}"
    if f.subject_hash and f.subject_hash not in (record.get("data_subjects") or []):
        return "the data subject searched for is not among its data_subjects"
    if f.since is not None or f.until is not None:
        return _time_mismatch(record.get("logged"), f)
    return None


def _time_mismatch(logged: object, f: RecordFilter) -> str | None:
    try:
        when = dt.datetime.fromisoformat(str(logged))
    except ValueError:
        return f"its logged time {logged!r} is not a time"
    if f.since is not None and when < f.since:
        return f"it was logged at {logged}, before {f.since.isoformat()}"
    if f.until is not None and when >= f.until:
        return f"it was logged at {logged}, not before {f.until.isoformat()}"
    return None


def check_hit(
    seq: int, leaf: bytes, record: str, proof: list[bytes], *, head: Checkpoint | None, f: RecordFilter
) -> str:
    """Checks one hit: its record against its leaf and ``f``, and its proof when ``head`` (already
    verified with the log's key) is given. Returns PROVED, PENDING (newer than ``head``) or UNCHECKED
    (no head); raises HitError naming the entry otherwise."""
    if record:
        if leaf_hash(record.encode()) != leaf:
            raise HitError(f"entry {seq}: its record does not hash to its leaf")
        try:
            why = mismatch(json.loads(record), f)
        except ValueError:
            why = "its record is not JSON"
        if why:
            raise HitError(f"entry {seq} does not match the search: {why}")
    elif f.narrows():
        raise HitError(f"entry {seq}: its record is pruned, so nothing shows that it matches the search")
    if head is None:
        return UNCHECKED
    if seq >= head.size:
        return PENDING
    try:
        verify_inclusion(leaf, seq, head.size, proof, head.root)
    except ProofError as e:
        raise HitError(f"entry {seq} is not in the signed log of {head.size} entries: {e}") from None
    return PROVED


@dataclass(frozen=True)
class LogMatches:
    """What a verified export holds: entries [start, end), and those among them that match a filter."""

    start: int
    end: int
    seqs: frozenset[int]


def matches_in_log(lines: Iterable[str], verifier: Verifier, f: RecordFilter) -> LogMatches:
    """Verifies an export (raising VerifyError) and returns the entries in it that match ``f``."""
    found: set[int] = set()
    report = verify_export(_tap(lines, f, found), verifier)
    return LogMatches(report.size - report.entries, report.size, frozenset(found))


def _tap(lines: Iterable[str], f: RecordFilter, found: set[int]) -> Iterator[str]:
    """Passes ``lines`` on to the verifier, noting the entries that match ``f`` on the way."""
    for line in lines:
        if line.startswith(ENTRY + "\t"):
            try:
                seq, _, record = parse_entry_line(line)
                if record is not None and mismatch(json.loads(record), f) is None:
                    found.add(seq)
            except ValueError:
                pass  # the verifier names the malformed line
        yield line


@dataclass(frozen=True)
class Omissions:
    """The difference between a search answer and the log, over entries [start, end)."""

    start: int
    end: int
    missing: list[int]  # match in the log, not in the answer
    extra: list[int]  # in the answer, not matching in the log


def compare(log: LogMatches, answer: Iterable[int], end: int) -> Omissions:
    """Compares the hits of an answer with the log's matches, over the entries both cover (below ``end``)."""
    stop = min(end, log.end)
    hits = {seq for seq in answer if log.start <= seq < stop}
    wanted = {seq for seq in log.seqs if seq < stop}
    return Omissions(log.start, stop, sorted(wanted - hits), sorted(hits - wanted))
