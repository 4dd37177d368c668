"""The integrator reads a round's staged records before it takes the write lock (exchange.store.audit_integrate):
if another process integrates some of them meanwhile, the round is rolled back and read again, so each record
becomes exactly one entry, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest

from audit.note import Signer
from exchange.auditlog.log import AuditLog
from exchange.store import Store, audit_integrate
from exchange.store.audit import AuditStore
from tests.test_audit import ORIGIN, _record


def test_records_integrated_by_another_process_meanwhile_are_not_integrated_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    AuditLog(store.audit, Signer.generate(ORIGIN), ORIGIN, checkpoint_seconds=3600)  # the log's key seals
    other = AuditStore(store.db)  # another process's integrator on the same store
    other.sealer = store.audit.sealer
    store.audit.stage([_record(i) for i in range(5)])
    prepare = audit_integrate.prepare
    reads: list[int] = []

    def read_then_overtaken(*args: Any) -> audit_integrate.Prepared:
        prepared = prepare(*args)
        reads.append(len(prepared.ids))
        if len(reads) == 1:  # after this round read its records, before it takes the lock
            assert len(other.integrate()) == 5
            store.audit.stage([_record(5), _record(6)])
        return prepared

    monkeypatch.setattr(audit_integrate, "prepare", read_then_overtaken)
    done, size = store.audit.integrate_sized()
    assert reads == [5, 5, 2]  # this round's read, the other's, and this round's again: only what was staged since
    assert [seq for seq, _ in done] == [5, 6] and size == 7
    assert store.audit.staged_count() == 0
    entries = store.audit.entries(0, 7)
    assert [json.loads(e.record or "{}")["exchange_id"] for e in entries] == [f"EX-{i}" for i in range(7)]


def test_a_round_with_nothing_staged_reads_the_size(store: Store) -> None:
    AuditLog(store.audit, Signer.generate(ORIGIN), ORIGIN, checkpoint_seconds=3600)
    store.audit.stage([_record(1), _record(2)])
    assert store.audit.integrate_sized()[1] == 2
    assert store.audit.integrate_sized() == ([], 2)


def test_a_record_staged_under_a_reused_id_meanwhile_is_neither_lost_nor_doubled(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite gives a new row the id after the largest left: once the staging table is empty, the next record
    staged takes the id of one just integrated. A round that read the old record under that id must not delete
    the new one in its place (and log the old one twice): it is rolled back and reads again."""
    AuditLog(store.audit, Signer.generate(ORIGIN), ORIGIN, checkpoint_seconds=3600)
    other = AuditStore(store.db)
    other.sealer = store.audit.sealer
    store.audit.stage([_record(0)])
    prepare = audit_integrate.prepare
    reads: list[list[int]] = []

    def read_then_overtaken(*args: Any) -> audit_integrate.Prepared:
        prepared = prepare(*args)
        reads.append(prepared.ids)
        if len(reads) == 1:
            assert len(other.integrate()) == 1  # the staging table is empty again
            store.audit.stage([_record(1)])  # on SQLite under the id just freed
        return prepared

    monkeypatch.setattr(audit_integrate, "prepare", read_then_overtaken)
    done, size = store.audit.integrate_sized()
    assert [seq for seq, _ in done] == [1] and size == 2
    assert store.audit.staged_count() == 0
    entries = store.audit.entries(0, 2)
    assert [json.loads(e.record or "{}")["exchange_id"] for e in entries] == ["EX-0", "EX-1"]
