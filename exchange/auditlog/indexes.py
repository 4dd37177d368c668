"""The audit log's search indexes checked against its verified records, and rewritten from them.

Search finds records by columns of ``audit_entries`` (actor, outcome, resource...) and by the rows
of ``audit_subjects``; no leaf covers them, so a changed column or a deleted subject row would change
answers while the log still verifies. The check first verifies the log: the newest signed
checkpoint's signature, and that the entries' leaves lead to its root. Then, chunk by chunk, each
record must hash to its leaf, and the index values it implies are compared with those stored. Entries
after the newest checkpoint are vouched for by nothing yet and wait for the next check. Memory stays
bounded: the tree's right frontier and one chunk of entries.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from audit.merkle import CompactRange, leaf_hash
from audit.note import Verifier
from exchange.auditlog.integrity import newest_signed
from exchange.errors import AuditTampered, FailedPrecondition
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, AuditSubjectRow

# Entries read and compared per transaction; leaf hashes read per query while checking the tree.
CHUNK = 2000
LEAF_CHUNK = 50_000
# The columns derived from a record (besides its logged time), and those pruning blanks.
COLUMNS = ("kind", "action", "actor", "actor_department", "resource", "purpose", "outcome", "exchange_id")
BLANKED = COLUMNS[1:]


class LogDoesNotVerify(FailedPrecondition):
    """The log itself does not verify, so its records cannot vouch for the indexes."""


@dataclass(frozen=True)
class Difference:
    """One way the indexes disagree with a verified record."""

    seq: int
    what: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.what}"


@dataclass
class IndexReport:
    size: int = 0  # entries checked: those the newest signed checkpoint covers
    pruned: int = 0
    differences: int = 0
    entries_differing: int = 0
    repaired: bool = False


@dataclass(frozen=True)
class _Index:
    """The index values of one entry: its columns, its logged time, its subject hashes."""

    columns: dict[str, str]
    time: dt.datetime | None
    subjects: frozenset[str]


def check_index(
    store: Store, verifier: Verifier, *, repair: bool = False, found: Callable[[Difference], None] | None = None
) -> IndexReport:
    """Compares (and with ``repair`` rewrites) the search indexes with the verified records.

    Each difference goes to ``found`` as it is met; raises LogDoesNotVerify if the log does not verify.
    """
    size = _verified_size(store, verifier)
    report = IndexReport(size=size, repaired=repair)
    for start in range(0, size, CHUNK):
        with store.db.write() if repair else store.db.read() as s:
            differences = _check_chunk(s, start, min(size, start + CHUNK), report, repair)
        report.differences += len(differences)
        report.entries_differing += len({d.seq for d in differences})
        if found is not None:
            for difference in differences:
                found(difference)
    return report


def _verified_size(store: Store, verifier: Verifier) -> int:
    """The newest signed checkpoint's size, once its signature and the leaves' root check out."""
    try:
        size, root = newest_signed(store.audit, verifier)
    except AuditTampered as e:
        raise LogDoesNotVerify(e.message) from None
    tree = CompactRange()
    for start in range(0, size, LEAF_CHUNK):
        for leaf in store.audit.leaf_hashes(start, min(size, start + LEAF_CHUNK)):
            tree.append(leaf)
    if tree.size != size or (size and tree.root() != root):
        raise LogDoesNotVerify(
            f"the entries do not lead to the root of the signed checkpoint of size {size}: "
            "the log itself was changed (`exchange audit verify` on an export names the entry)"
        )
    return size


def _check_chunk(s: Session, start: int, end: int, report: IndexReport, repair: bool) -> list[Difference]:
    chunk = (AuditEntryRow.seq >= start, AuditEntryRow.seq < end)
    # A repair locks its entries first (PostgreSQL), as prune-audit locks those it blanks: a pruning waits for the
    # repair, or the repair reads what the pruning left; it never writes a pruned entry's index back.
    if repair:
        s.execute(select(AuditEntryRow.seq).where(*chunk).with_for_update())
    # One statement (entries joined with their subject rows) sees one state of both tables, even at
    # PostgreSQL's READ COMMITTED while prune-audit or the integrator commit meanwhile.
    rows = s.execute(
        select(AuditEntryRow.seq, AuditEntryRow.leaf_hash, AuditEntryRow.record, AuditEntryRow.time, *_columns())
        .add_columns(AuditSubjectRow.subject_hash)
        .outerjoin(AuditSubjectRow, AuditSubjectRow.seq == AuditEntryRow.seq)
        .where(*chunk)
        .order_by(AuditEntryRow.seq)
    ).all()
    out: list[Difference] = []
    for _, group in itertools.groupby(rows, key=lambda r: int(r.seq)):
        entry = list(group)
        row = entry[0]
        subjects = frozenset(str(r.subject_hash) for r in entry if r.subject_hash is not None)
        stored = _Index({c: str(getattr(row, c)) for c in COLUMNS}, row.time, subjects)
        wanted = _wanted(int(row.seq), bytes(row.leaf_hash), row.record, stored, report)
        differences = _compare(row.seq, stored, wanted)
        if differences and repair:
            _rewrite(s, row.seq, stored, wanted)
        out += differences
    return out


def _columns() -> list[object]:
    return [getattr(AuditEntryRow, c) for c in COLUMNS]


def _wanted(seq: int, leaf: bytes, record: str | None, stored: _Index, report: IndexReport) -> _Index:
    """The index values the entry's record implies (a pruned entry's: blanked columns, no subjects)."""
    if record is None:
        report.pruned += 1
        return _Index({**stored.columns, **dict.fromkeys(BLANKED, "")}, stored.time, frozenset())
    if leaf_hash(record.encode()) != leaf:
        raise LogDoesNotVerify(f"entry {seq}: its record does not hash to its leaf (the record was edited)")
    data = json.loads(record)
    logged = dt.datetime.strptime(str(data.get("logged", "")), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return _Index(
        {c: str(data.get(c, "")) for c in COLUMNS}, logged, frozenset(str(h) for h in data.get("data_subjects", []))
    )


def _compare(seq: int, stored: _Index, wanted: _Index) -> list[Difference]:
    out = [
        Difference(seq, f"column {c} says {stored.columns[c]!r}, the record says {wanted.columns[c]!r}")
        for c in COLUMNS
        if stored.columns[c] != wanted.columns[c]
    ]
    if stored.time != wanted.time:
        out.append(Difference(seq, f"column time says {stored.time}, the record was logged at {wanted.time}"))
    out += [Difference(seq, f"subject row {h} missing") for h in sorted(wanted.subjects - stored.subjects)]
    out += [
        Difference(seq, f"subject row {h} extra (not in the record)") for h in sorted(stored.subjects - wanted.subjects)
    ]
    return out


def _rewrite(s: Session, seq: int, stored: _Index, wanted: _Index) -> None:
    """Makes the entry's index values those its record implies."""
    s.execute(update(AuditEntryRow).where(AuditEntryRow.seq == seq).values(**wanted.columns, time=wanted.time))
    extra = stored.subjects - wanted.subjects
    if extra:
        s.execute(delete(AuditSubjectRow).where(AuditSubjectRow.seq == seq, AuditSubjectRow.subject_hash.in_(extra)))
    missing = wanted.subjects - stored.subjects
    if missing:
        s.execute(insert(AuditSubjectRow), [{"seq": seq, "subject_hash": h} for h in sorted(missing)])
