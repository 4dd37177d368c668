"""Nothing unsigned is trusted at restart: the stored audit log is checked against the hub's seals and its
newest signed checkpoint, and a hub signs and serves nothing over rows it did not write (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import delete, insert, update

from audit.merkle import leaf_hash
from audit.note import Signer
from audit.records import AuditRecord
from audit.verify import verify_export
from exchange.auditlog.batch import GroupCommitter
from exchange.auditlog.export import export_lines
from exchange.auditlog.log import AuditLog
from exchange.errors import AuditTampered, Unavailable
from exchange.server.app import Hub
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, AuditHeadRow, AuditNodeRow, AuditStagedRow
from tests.harness import POLICE, base_settings, running_hub

ORIGIN = "test.exchange/audit"


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-12-04T08:00:{n // 1000:02d}.{n % 1000:03d}000Z",
        actor="system/bdc-djxt",
        actor_department=POLICE.code,
        outcome="ok",
        resource="10101/350200000001",
        exchange_id=f"EX-{n}",
    )


def _log(store: Store, signer: Signer) -> AuditLog:
    return AuditLog(store.audit, signer, ORIGIN, checkpoint_seconds=3600)


def _signed_log(store: Store, signer: Signer, signed: int, waiting: int = 0) -> AuditLog:
    """A log of ``signed`` entries under a checkpoint, then ``waiting`` integrated but not yet signed (a crash)."""
    log = _log(store, signer)
    store.audit.stage([_record(i) for i in range(signed)])
    log.flush()
    if waiting:
        store.audit.stage([_record(signed + i) for i in range(waiting)])
        while store.audit.integrate():
            pass
    return log


def _write(store: Store, statement: object) -> None:
    with store.db.write() as s:
        s.execute(statement)  # type: ignore[call-overload]


def _forge(store: Store, seq: int, outcome: str) -> None:
    """What someone with the database but not the key does: a new record, its leaf recomputed, its column too."""
    record = json.loads(store.audit.entries(seq, seq + 1)[0].record or "")
    text = json.dumps({**record, "outcome": outcome}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    values = {"record": text, "leaf_hash": leaf_hash(text.encode()), "outcome": outcome}
    _write(store, update(AuditEntryRow).where(AuditEntryRow.seq == seq).values(**values))


def _signed_size(store: Store) -> int:
    latest = store.audit.latest_checkpoint()
    return latest[0] if latest else 0


def test_entries_rewritten_before_their_checkpoint_are_not_signed_at_restart(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10, waiting=5)
    _forge(store, 12, "denied")
    restarted = _log(store, signer)
    with pytest.raises(AuditTampered, match="entry 12 does not carry this hub's seal"):
        restarted.start()
    assert _signed_size(store) == 10 and restarted.broken
    with pytest.raises(AuditTampered):
        restarted.flush()
    assert _signed_size(store) == 10


def test_an_entry_under_a_checkpoint_rewritten_while_entries_wait_is_named(store: Store) -> None:
    """The attack that passed: ok -> denied under a signed checkpoint, signed into a larger one at restart."""
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10, waiting=5)
    _forge(store, 3, "denied")
    restarted = _log(store, signer)
    with pytest.raises(AuditTampered, match="entry 3 does not carry"):
        restarted.start()
    assert _signed_size(store) == 10


def test_a_record_edited_without_its_leaf_is_named(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=6, waiting=2)
    record = (store.audit.entries(7, 8)[0].record or "").replace('"ok"', '"denied"')
    _write(store, update(AuditEntryRow).where(AuditEntryRow.seq == 7).values(record=record))
    with pytest.raises(AuditTampered, match="entry 7: its record does not hash to its leaf"):
        _log(store, signer).start()


def test_staged_records_changed_or_added_while_down_are_not_integrated(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=5)
    store.audit.stage([_record(5), _record(6)])
    with store.db.read() as s:
        first = min(r.id for r in s.query(AuditStagedRow))
    edited = json.dumps({**json.loads(_staged_text(store, first)), "outcome": "denied"}, sort_keys=True)
    _write(store, update(AuditStagedRow).where(AuditStagedRow.id == first).values(record=edited))
    restarted = _log(store, signer)
    with pytest.raises(AuditTampered, match=f"staged audit record {first} does not carry this hub's seal"):
        restarted.start()
    assert store.audit.size() == 5 and _signed_size(store) == 5
    # One slipped in with no seal at all is refused the same way.
    _write(store, delete(AuditStagedRow))
    row = {"record": json.dumps(_record(9).as_dict(), sort_keys=True), "staged_at": _now(), "mac": None}
    _write(store, insert(AuditStagedRow).values(**row))
    with pytest.raises(AuditTampered, match="staged audit record"):
        _log(store, signer).start()
    assert store.audit.size() == 5


def _staged_text(store: Store, row_id: int) -> str:
    with store.db.read() as s:
        row = s.get(AuditStagedRow, row_id)
        assert row is not None
        return row.record


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_entries_cut_off_the_end_are_found(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10, waiting=4)
    _write(store, delete(AuditEntryRow).where(AuditEntryRow.seq >= 12))
    with pytest.raises(AuditTampered, match=r"entries 12\.\.13 were deleted from its end"):
        _log(store, signer).start()
    # The head moved back with them: its seal no longer fits.
    _write(store, update(AuditHeadRow).values(size=12))
    with pytest.raises(AuditTampered, match=r"the log's head \(size 12\) does not carry this hub's seal"):
        _log(store, signer).start()


def test_a_changed_kept_subtree_is_found(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=300)
    _write(store, update(AuditNodeRow).where(AuditNodeRow.level == 8, AuditNodeRow.idx == 0).values(hash=b"\1" * 32))
    with pytest.raises(AuditTampered, match=r"kept subtree of entries 0\.\.255"):
        _log(store, signer).start()


def test_a_log_from_before_seals_is_checked_against_its_checkpoint_then_sealed(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=12)
    _write(store, update(AuditEntryRow).values(mac=None))
    _write(store, delete(AuditHeadRow))
    upgraded = _log(store, signer)
    upgraded.start()
    upgraded.stop()
    assert store.audit.head() is not None
    assert all(mac is not None for _, _, mac in store.audit.sealed_leaves(0, 12))
    verify_export(export_lines(store.audit, signer.verifier()), signer.verifier())
    # Rewritten before it was sealed: its checkpoint's root gives it away, though it cannot name it.
    _write(store, update(AuditEntryRow).values(mac=None))
    _write(store, delete(AuditHeadRow))
    _forge(store, 4, "denied")
    with pytest.raises(AuditTampered, match="lead to another root"):
        _log(store, signer).start()


def test_unsealed_entries_beyond_the_checkpoint_are_refused(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10, waiting=3)
    _write(store, update(AuditEntryRow).values(mac=None))
    _write(store, delete(AuditHeadRow))
    with pytest.raises(AuditTampered, match=r"entries 10\.\.12 are under no signed checkpoint"):
        _log(store, signer).start()


def test_a_running_log_signs_nothing_over_an_entry_changed_under_it(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    log = _signed_log(store, signer, signed=10)
    _forge(store, 3, "denied")
    store.audit.stage([_record(10), _record(11)])
    with pytest.raises(AuditTampered, match=r"not consistent with the newest signed checkpoint \(size 10\)"):
        log.flush()
    assert _signed_size(store) == 10 and log.broken
    with pytest.raises(AuditTampered, match="entry 3 does not carry"):
        log.check()
    committer = GroupCommitter(store.audit, halted=lambda: log.broken)
    try:
        with pytest.raises(Unavailable, match="failed its integrity check"):
            committer.append(_record(12), timeout=5)
    finally:
        committer.close()


def test_an_untouched_log_passes_and_restarts(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=300, waiting=7)
    restarted = _log(store, signer)
    restarted.start()
    restarted.stop()
    assert _signed_size(store) == 307 and restarted.broken is None
    checked = _log(store, signer).check()
    assert (checked.size, checked.signed, checked.newly_sealed) == (307, 307, 0)


# The hub


def test_a_hub_turns_not_serving_when_its_log_is_changed_under_it_and_will_not_start(tmp_path: Path) -> None:
    settings = base_settings(tmp_path / "hub", audit_check_seconds=1, health_check_seconds=0.2)
    with running_hub(settings) as h:
        assert h.hub.audit.flush() > 0
        store = Store(settings.effective_database_url)
        try:
            _forge(store, 0, "denied")
        finally:
            store.close()
        with h.client() as c:
            stub = health_pb2_grpc.HealthStub(c.channel)
            deadline = time.monotonic() + 30
            status = health_pb2.HealthCheckResponse.SERVING
            while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.2)
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert b"exchange_audit_log_intact 0.0" in h.hub.metrics.exposition()
            assert "entry 0 does not carry" in (h.hub.audit.broken or "")
            committer = h.hub.committer
            assert committer is not None
            with pytest.raises(Unavailable):
                committer.append(_record(1), timeout=5)
    with pytest.raises(AuditTampered, match="entry 0 does not carry"):
        asyncio.run(Hub(settings).start())


def test_records_are_missing_only_where_a_signed_pruning_statement_says_so(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10)
    # Blanked in the database, as if pruned: no statement covers them.
    _write(store, update(AuditEntryRow).where(AuditEntryRow.seq < 3).values(record=None))
    with pytest.raises(AuditTampered, match="entry 2: its record is missing and no signed pruning statement"):
        _log(store, signer).check()


def test_a_real_pruning_passes_the_check(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    _signed_log(store, signer, signed=10)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
    _write(store, update(AuditEntryRow).where(AuditEntryRow.seq < 4).values(time=old))
    pruned = store.audit.prune(signer, dt.datetime.now(dt.UTC), 180)
    assert pruned.statement is not None and pruned.statement.up_to == 4
    assert _log(store, signer).check().size == 10
