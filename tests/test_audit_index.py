"""The search indexes checked against the verified records, on a real store (SQLite and PostgreSQL),
and the client's checks of search hits and of omissions."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, event, insert, select, update

from audit.matching import PENDING, PROVED, HitError, RecordFilter, check_hit, compare, matches_in_log, mismatch
from audit.merkle import leaf_hash
from audit.note import Checkpoint, Signer, open_note
from audit.records import AuditRecord, record_leaf, subject_hash
from audit.verify import VerifyError
from exchange.auditlog import indexes
from exchange.auditlog.export import export_lines
from exchange.auditlog.indexes import Difference, LogDoesNotVerify, check_index
from exchange.auditlog.log import AuditLog
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.audit import EntryFilter
from exchange.store.schema import AuditEntryRow, AuditSubjectRow

ORIGIN = "test.exchange/audit"
KEY = b"subject-key"
CITIZEN = subject_hash(KEY, "350203198507154313")


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-11-22T08:00:00.{n:06d}Z",
        actor="system/bdc-djxt",
        actor_department="11350200MB0034567G",
        outcome="ok" if n % 2 == 0 else "denied",
        resource="10101/350200000001",
        purpose="不动产转移登记",
        exchange_id=f"EX-{n}",
        data_subjects=[CITIZEN, subject_hash(KEY, f"35020019800101{n:04d}")],
    )


@pytest.fixture
def log(store: Store) -> Iterator[AuditLog]:
    audit_log = AuditLog(store.audit, Signer.generate(ORIGIN), ORIGIN, checkpoint_seconds=3600)
    store.audit.stage([_record(n) for n in range(10)])
    audit_log.flush()
    yield audit_log


def _tamper(store: Store, *statements: object) -> None:
    with store.db.write() as s:
        for statement in statements:
            s.execute(statement)  # type: ignore[call-overload]


def _check(log: AuditLog, store: Store, repair: bool = False) -> list[str]:
    found: list[Difference] = []
    check_index(store, log.signer.verifier(), repair=repair, found=found.append)
    return [str(d) for d in found]


def _seqs(store: Store, f: EntryFilter) -> list[int]:
    return [e.seq for e in store.audit.search(page_request(100, "", {}), f).items]


@pytest.mark.parametrize("chunk", [2000, 3])
def test_changed_columns_and_subject_rows_are_reported_and_repaired(
    log: AuditLog, store: Store, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexes, "CHUNK", chunk)
    assert _check(log, store) == []
    later = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    _tamper(
        store,
        update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(outcome="ok"),
        update(AuditEntryRow).where(AuditEntryRow.seq == 6).values(actor="system/other", time=later),
        delete(AuditSubjectRow).where(AuditSubjectRow.seq.in_([1, 4]), AuditSubjectRow.subject_hash == CITIZEN),
        insert(AuditSubjectRow).values(seq=8, subject_hash="f" * 64),
    )
    # The attack works on search: the index, not the record, decides.
    assert 3 in _seqs(store, EntryFilter(outcome="ok"))
    assert _seqs(store, EntryFilter(subject_hash=CITIZEN)) == [0, 2, 3, 5, 6, 7, 8, 9]
    differences = _check(log, store)
    assert differences[:2] == [
        f"entry 1: subject row {CITIZEN} missing",
        "entry 3: column outcome says 'ok', the record says 'denied'",
    ]
    assert differences[2] == f"entry 4: subject row {CITIZEN} missing"
    assert differences[3] == "entry 6: column actor says 'system/other', the record says 'system/bdc-djxt'"
    assert differences[4].startswith("entry 6: column time says 2030-01-01 00:00:00+00:00, the record was logged at")
    assert differences[5:] == [f"entry 8: subject row {'f' * 64} extra (not in the record)"]

    report = check_index(store, log.signer.verifier(), repair=True)
    assert (report.differences, report.entries_differing, report.size) == (6, 5, 10)
    assert _check(log, store) == []
    assert _seqs(store, EntryFilter(outcome="ok")) == [0, 2, 4, 6, 8]
    assert _seqs(store, EntryFilter(subject_hash=CITIZEN)) == list(range(10))


def test_pruned_entries_must_stay_blank(log: AuditLog, store: Store) -> None:
    logged = json.loads(store.audit.entries(0, 1)[0].record or "")["logged"]
    made = dt.datetime.fromisoformat(logged) + dt.timedelta(days=180, microseconds=1)
    pruned = store.audit.prune(log.signer, made, 180).entries
    assert pruned >= 1
    report = check_index(store, log.signer.verifier())
    assert (report.pruned, report.differences) == (pruned, 0)
    _tamper(
        store,
        update(AuditEntryRow).where(AuditEntryRow.seq == 0).values(resource="10101/350200000001"),
        insert(AuditSubjectRow).values(seq=0, subject_hash=CITIZEN),
    )
    assert _check(log, store) == [
        "entry 0: column resource says '10101/350200000001', the record says ''",
        f"entry 0: subject row {CITIZEN} extra (not in the record)",
    ]
    _check(log, store, repair=True)
    assert _check(log, store) == []


def test_a_repair_and_a_pruning_at_once_leave_the_pruned_entries_blank(log: AuditLog, store: Store) -> None:
    """prune-audit commits while check-index --repair is between reading a chunk and writing it back: the repair
    must not restore the pruned entries' columns or subject rows (the pruning waits for it, or it sees the pruning)."""
    _tamper(store, delete(AuditSubjectRow).where(AuditSubjectRow.seq == 0, AuditSubjectRow.subject_hash == CITIZEN))
    logged = json.loads(store.audit.entries(9, 10)[0].record or "")["logged"]
    made = dt.datetime.fromisoformat(logged) + dt.timedelta(days=180, microseconds=1)  # every entry is old enough
    pruning: list[threading.Thread] = []

    def prune_after_the_read(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if not pruning and "audit_subjects" in statement and "JOIN" in statement.upper():
            pruning.append(threading.Thread(target=store.audit.prune, args=(log.signer, made, 180)))
            pruning[0].start()
            pruning[0].join(timeout=1.0)  # done by now, unless it waits for the repair's locks

    event.listen(store.db.engine, "after_cursor_execute", prune_after_the_read)
    try:
        check_index(store, log.signer.verifier(), repair=True)
    finally:
        event.remove(store.db.engine, "after_cursor_execute", prune_after_the_read)
    assert pruning, "the pruning ran while the repair read its chunk"
    pruning[0].join(timeout=30)
    assert not pruning[0].is_alive()
    with store.db.read() as s:
        assert s.scalars(select(AuditSubjectRow.seq)).all() == []
        assert set(s.scalars(select(AuditEntryRow.resource))) == {""}
    report = check_index(store, log.signer.verifier())
    assert (report.pruned, report.differences) == (10, 0)


def test_a_log_that_does_not_verify_cannot_vouch_for_the_indexes(log: AuditLog, store: Store) -> None:
    stored = json.loads(store.audit.entries(3, 4)[0].record or "")
    data, leaf = record_leaf({**stored, "outcome": "ok"})
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(record=data.decode()))
    with pytest.raises(LogDoesNotVerify, match="entry 3: its record does not hash to its leaf"):
        check_index(store, log.signer.verifier(), repair=True)
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(leaf_hash=leaf))
    with pytest.raises(LogDoesNotVerify, match="do not lead to the root"):
        check_index(store, log.signer.verifier())
    with pytest.raises(LogDoesNotVerify, match="does not verify with the log's key"):
        check_index(store, Signer.generate(ORIGIN).verifier())


def test_entries_after_the_newest_checkpoint_wait_for_it(log: AuditLog, store: Store) -> None:
    store.audit.stage([_record(10)])
    store.audit.integrate()
    _tamper(store, delete(AuditSubjectRow).where(AuditSubjectRow.seq == 10))
    report = check_index(store, log.signer.verifier())
    assert (report.size, report.differences) == (10, 0)
    log.flush()
    assert len(_check(log, store)) == 2


# The client's side: hits and omissions, from the records' own bytes.


def _head(log: AuditLog) -> Checkpoint:
    _, note = log.store.latest_checkpoint() or (0, "")
    return Checkpoint.parse(open_note(note, log.signer.verifier()))


def test_a_hit_is_checked_from_its_bytes_and_its_proof(log: AuditLog, store: Store) -> None:
    head = _head(log)
    entry = store.audit.entries(3, 4)[0]
    record, proof = entry.record or "", log.inclusion_proof(3, head.size)
    ok = RecordFilter(outcome="denied", subject_hash=CITIZEN, since=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    assert check_hit(3, entry.leaf_hash, record, proof, head=head, f=ok) == PROVED
    assert check_hit(10, entry.leaf_hash, record, [], head=head, f=ok) == PENDING
    with pytest.raises(HitError, match="entry 3 does not match the search: its outcome is 'denied', not 'ok'"):
        check_hit(3, entry.leaf_hash, record, proof, head=head, f=RecordFilter(outcome="ok"))
    with pytest.raises(HitError, match="entry 3 is not in the signed log"):
        check_hit(3, entry.leaf_hash, record, proof[1:], head=head, f=ok)
    with pytest.raises(HitError, match="does not hash to its leaf"):
        check_hit(3, leaf_hash(b"other"), record, proof, head=head, f=ok)
    with pytest.raises(HitError, match="pruned"):
        check_hit(3, entry.leaf_hash, "", proof, head=head, f=RecordFilter(actor="system/bdc-djxt"))
    data = json.loads(record)
    until = dt.datetime.fromisoformat(data["logged"])
    assert "not before" in (mismatch(data, RecordFilter(until=until)) or "")
    assert "before" in (mismatch(data, RecordFilter(since=until + dt.timedelta(microseconds=1))) or "")
    assert mismatch(data, RecordFilter(subject_hash="0" * 64)) is not None


def test_omissions_are_found_in_the_verified_log(log: AuditLog, store: Store) -> None:
    verifier = log.signer.verifier()
    lines = list(export_lines(store.audit, verifier))
    found = matches_in_log(lines, verifier, RecordFilter(outcome="denied"))
    assert (found.start, found.end, sorted(found.seqs)) == (0, 10, [1, 3, 5, 7, 9])
    omissions = compare(found, [1, 3, 4, 11], end=10)
    assert (omissions.missing, omissions.extra) == ([5, 7, 9], [4])
    assert compare(found, [1], end=4).missing == [3]  # only entries both cover are compared
    tampered = [line.replace('"outcome":"denied"', '"outcome":"ok"', 1) for line in lines]
    with pytest.raises(VerifyError):
        matches_in_log(tampered, verifier, RecordFilter(outcome="denied"))
