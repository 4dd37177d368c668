"""The audit log on a real store (SQLite and PostgreSQL): sequencing, checkpoints, proofs, export, tampering."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from sqlalchemy import delete, event, update

from audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from audit.note import Checkpoint, Signer, Verifier, open_note
from audit.pruning import PruningStatement, parse_time
from audit.records import (
    AuditRecord,
    RecordError,
    canonical,
    entry_line,
    parse_entry_line,
    record_leaf,
    subject_hash,
    with_logged,
)
from audit.verify import VerifyError, open_checkpoint, verify_export
from exchange import models as m
from exchange import wire as w
from exchange.auditlog.batch import GroupCommitter
from exchange.auditlog.export import export_lines
from exchange.auditlog.log import AuditLog
from exchange.errors import AlreadyExists, NotFound, Unavailable
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.audit import EntryFilter, Pruned
from exchange.store.database import Database
from exchange.store.schema import AuditEntryRow, AuditNodeRow, AuditSubjectRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import registry_pb2 as rpb
from tests.harness import POLICE, RunningHub, identity_spec

ORIGIN = "test.exchange/audit"
KEY = b"subject-key"


def _record(n: int, **changes: object) -> AuditRecord:
    base = AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-11-22T08:00:{n // 1000:02d}.{n % 1000:03d}000Z",
        actor="system/bdc-djxt",
        actor_department=POLICE.code,
        outcome="allowed" if n % 3 else "denied",
        resource="10101/350200000001",
        purpose="不动产转移登记",
        exchange_id=f"EX-{n}",
        fields=["id_number"],
        data_subjects=[subject_hash(KEY, f"35020019800101{n:04d}")],
    )
    return AuditRecord(**{**base.as_dict(), **changes})  # type: ignore[arg-type]


@pytest.fixture
def log(store: Store) -> Iterator[AuditLog]:
    audit_log = AuditLog(store.audit, Signer.generate(ORIGIN), ORIGIN, checkpoint_seconds=3600)
    yield audit_log


def _fill(log: AuditLog, n: int, checkpoint_every: int = 0) -> None:
    for i in range(n):
        log.store.stage([_record(i)])
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            log.flush()
    log.flush()


def _verify(log: AuditLog) -> None:
    verify_export(export_lines(log.store, log.signer.verifier()), log.signer.verifier())


def test_records_are_sequenced_without_gaps_and_checkpointed(log: AuditLog) -> None:
    _fill(log, 25, checkpoint_every=10)
    assert log.store.size() == 25 and log.store.staged_count() == 0
    entries = log.store.entries(0, 25)
    assert [e.seq for e in entries] == list(range(25))
    assert all(record_leaf(json.loads(e.record or ""))[1] == e.leaf_hash for e in entries)
    sizes = [size for size, _ in log.store.checkpoints(0, 25)]
    assert sizes == [10, 20, 25]
    _, note = log.store.latest_checkpoint() or (0, "")
    checkpoint = Checkpoint.parse(open_note(note, log.signer.verifier()))
    assert (checkpoint.size, checkpoint.origin) == (25, ORIGIN)
    for seq in (0, 7, 24):
        verify_inclusion(entries[seq].leaf_hash, seq, 25, log.inclusion_proof(seq, 25), checkpoint.root)
    first = Checkpoint.parse(open_note(log.store.checkpoints(10, 10)[0][1], log.signer.verifier()))
    verify_consistency(10, 25, log.consistency_proof(10, 25), first.root, checkpoint.root)
    report = verify_export(export_lines(log.store, log.signer.verifier()), log.signer.verifier())
    assert (report.entries, report.checkpoints, report.root) == (25, 3, checkpoint.root)


def test_search_by_department_resource_outcome_exchange_and_subject(log: AuditLog) -> None:
    _fill(log, 12)
    audit = log.store
    page = page_request(100, "", {})
    assert len(audit.search(page, EntryFilter(outcome="denied")).items) == 4
    assert [e.seq for e in audit.search(page, EntryFilter(exchange_id="EX-5")).items] == [5]
    who = subject_hash(KEY, "350200198001010007")
    assert [e.seq for e in audit.search(page, EntryFilter(subject_hash=who)).items] == [7]
    assert len(audit.search(page, EntryFilter(department=POLICE.code, resource="10101/350200000001")).items) == 12
    assert audit.search(page, EntryFilter(owner_resources=())).items == []


def _change(action: str, subject: str) -> AuditRecord:
    return AuditRecord(
        "registry", action, "2026-11-22T08:00:00.000000Z", "person/op-admin", POLICE.code, "ok", subject=subject
    )


def test_a_change_and_its_record_commit_together(log: AuditLog, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """The store method is handed the record: committed with the change, sealed, and logged once committed."""
    caplog.set_level(logging.INFO, logger="exchange.store.recorded")
    store.registry.add_department(POLICE, audit=_change("create_department", POLICE.code))
    assert store.audit.staged_count() == 1
    with pytest.raises(AlreadyExists):
        store.registry.add_department(POLICE, audit=_change("create_department", "again"))
    with pytest.raises(NotFound):
        store.registry.set_roles("nobody", lambda person: frozenset(), audit=_change("set_roles", "person/nobody"))
    assert store.audit.staged_count() == 1
    assert [r.event["subject"] for r in caplog.records if hasattr(r, "event")] == [POLICE.code]
    assert log.flush() == 1  # integration accepts the row: it carries the log's seal
    (entry,) = log.store.entries(0, 1)
    assert json.loads(entry.record or "")["action"] == "create_department"


def test_a_change_without_its_record_is_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(TypeError, match="must carry its audit record"):
        store.registry.add_department(POLICE, audit=None)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.registry.get_department(POLICE.code)
    assert store.audit.staged_count() == 0


def test_a_record_that_cannot_be_written_takes_its_change_back(store: Store) -> None:
    """The department is written first; its record, refused as it is staged, rolls it back."""
    unrecordable = replace(_change("create_department", POLICE.code), fields=[7])  # type: ignore[list-item]
    with pytest.raises(RecordError, match="lists hold strings only"):
        store.registry.add_department(POLICE, audit=unrecordable)
    with pytest.raises(NotFound):
        store.registry.get_department(POLICE.code)
    assert store.audit.staged_count() == 0


def _tamper(store: Store, statement: object) -> None:
    with store.db.write() as s:
        s.execute(statement)  # type: ignore[call-overload]


def test_an_exchange_is_seen_while_the_integrator_places_its_records(log: AuditLog, store: Store) -> None:
    """The records of an exchange are found staged or placed, even when the integrator moves them from one to the
    other mid-read (else a consumer's objection, moments after its answer, is refused: no such exchange)."""
    log.store.stage([_record(7)])
    placed_at: list[int] = []

    def integrate_after_the_first_read(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if not placed_at and "audit_" in statement:
            placed_at.append(0)  # once, before the integrator's own statements come through here
            mover = threading.Thread(target=log.flush)
            mover.start()
            mover.join()
            placed_at[0] = store.audit.size()

    event.listen(store.db.engine, "after_cursor_execute", integrate_after_the_first_read)
    try:
        seen = store.audit.exchange_seen("EX-7")
    finally:
        event.remove(store.db.engine, "after_cursor_execute", integrate_after_the_first_read)
    assert placed_at == [1], "the integrator placed the record while exchange_seen was reading"
    assert seen is not None and seen.actor_department == POLICE.code and seen.outcomes == frozenset({"allowed"})


def test_an_edited_record_is_found(log: AuditLog, store: Store) -> None:
    _fill(log, 8)
    edited = json.dumps(
        {**json.loads(store.audit.entries(3, 4)[0].record or ""), "outcome": "allowed"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(record=edited))
    with pytest.raises(VerifyError, match="entry 3: its record does not hash to its leaf"):
        _verify(log)


def test_a_rewritten_record_with_its_leaf_is_found_by_the_checkpoint(log: AuditLog, store: Store) -> None:
    _fill(log, 8)
    stored = json.loads(store.audit.entries(3, 4)[0].record or "")
    data, leaf = record_leaf({**stored, "outcome": "allowed", "reason": "covered up"})
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(record=data.decode(), leaf_hash=leaf))
    with pytest.raises(VerifyError, match="entries lead to another root"):
        _verify(log)


def test_a_deleted_entry_is_found(log: AuditLog, store: Store) -> None:
    _fill(log, 8)
    _tamper(store, delete(AuditSubjectRow).where(AuditSubjectRow.seq == 5))
    _tamper(store, delete(AuditEntryRow).where(AuditEntryRow.seq == 5))
    with pytest.raises(VerifyError, match="expected entry 5"):
        _verify(log)


def test_reordered_entries_are_found(log: AuditLog, store: Store) -> None:
    _fill(log, 8)
    second, third = store.audit.entries(2, 4)
    _tamper(
        store,
        update(AuditEntryRow).where(AuditEntryRow.seq == 2).values(record=third.record, leaf_hash=third.leaf_hash),
    )
    _tamper(
        store,
        update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(record=second.record, leaf_hash=second.leaf_hash),
    )
    with pytest.raises(VerifyError, match=r"another root|entry 3: logged at .* before"):
        _verify(log)


def test_forged_forked_or_truncated_exports_are_refused(log: AuditLog) -> None:
    _fill(log, 6)
    lines = list(export_lines(log.store, log.signer.verifier()))
    header, checkpoints = lines[0], [line for line in lines if '"checkpoint"' in line]
    entries = [line for line in lines if line.startswith("E\t")]
    verifier = log.signer.verifier()
    with pytest.raises(VerifyError, match="truncated"):
        verify_export([header, *checkpoints, *entries[:-1]], verifier)
    stranger = Signer.generate(ORIGIN)
    with pytest.raises(VerifyError, match="no signature"):
        verify_export(lines, stranger.verifier())
    bad = json.loads(checkpoints[-1])["checkpoint"].replace("\n6\n", "\n5\n")
    with pytest.raises(VerifyError, match="does not verify"):
        verify_export([header, json.dumps({"checkpoint": bad}), *checkpoints, *entries], verifier)
    other_root = Checkpoint(ORIGIN, 6, b"\x07" * 32).text()
    fork = json.dumps({"checkpoint": log.signer.sign(other_root)})
    with pytest.raises(VerifyError, match="forked"):
        verify_export([header, *checkpoints, fork, *entries], verifier)
    with pytest.raises(VerifyError, match="checkpoints come before"):
        verify_export([header, *entries, *checkpoints], verifier)


def test_every_change_through_the_hub_is_in_the_log_and_refusals_are_not(hub: RunningHub) -> None:
    hub.add_department(POLICE)
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.publish(steward, identity_spec())
    with hub.client() as c, pytest.raises(grpc.RpcError):
        c.call(c.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(POLICE)))
    audit_log = hub.hub.audit
    audit_log.flush()
    records = [json.loads(e.record or "") for e in audit_log.store.entries(0, audit_log.store.size())]
    actions = [(r["actor"], r["action"], r["subject"]) for r in records]
    assert ("person/op-admin", "create_department", POLICE.code) in actions
    assert ("person/op-admin", "create_person", "person/ga-steward") in actions
    assert ("person/ga-steward", "create:published", "10101/350200000001") in actions
    assert sum(1 for a in actions if a[1] == "create_department") == 1  # the refused duplicate left no record
    verifier = Verifier.parse(hub.files.audit_verifier.read_text())
    report = verify_export(export_lines(audit_log.store, verifier), verifier)
    assert report.entries == len(records)


def _logged(store: Store, seq: int) -> dt.datetime:
    return parse_time(json.loads(store.audit.entries(seq, seq + 1)[0].record or "")["logged"])


def test_pruned_detail_leaves_a_verifiable_log(log: AuditLog, store: Store) -> None:
    _fill(log, 10, checkpoint_every=5)
    cutoff = _logged(store, 5)
    assert _logged(store, 4) < cutoff  # two batches, logged one after the other
    # Made when entry 5 is exactly 180 days old (the verifier cannot know when it was made: the hub's word).
    done = store.audit.prune(log.signer, cutoff + dt.timedelta(days=180), 180)
    assert done.entries == 5 and done.statement is not None and done.statement.up_to == 5
    report = verify_export(export_lines(store.audit, log.signer.verifier()), log.signer.verifier())
    assert (report.entries, report.pruned, report.statements) == (10, 5, 1)
    assert report.pruning == done.statement
    who = subject_hash(KEY, "350200198001010000")
    assert store.audit.search(page_request(10, "", {}), EntryFilter(subject_hash=who)).items == []
    assert store.audit.prune(log.signer, cutoff + dt.timedelta(days=180), 180) == Pruned(0, None)
    assert len(store.audit.pruning_statements()) == 1


def test_an_export_is_one_state_of_the_log_even_when_a_pruning_commits_while_it_is_read(
    log: AuditLog, store: Store
) -> None:
    """Statements come before entries in an export: a pruning committed after they were written must not blank
    entries still to come (an honest export would then fail its check: records hidden without a statement)."""
    _fill(log, 10, checkpoint_every=5)
    cutoff = _logged(store, 5)
    lines = export_lines(store.audit, log.signer.verifier())
    written = [next(lines), next(lines)]  # the header, and the first checkpoint: the statements (none) are out
    assert "checkpoint" in written[1]
    assert store.audit.prune(log.signer, cutoff + dt.timedelta(days=180), 180).entries == 5
    report = verify_export([*written, *lines], log.signer.verifier())
    assert (report.entries, report.pruned, report.statements) == (10, 0, 0)  # the log as the export began
    again = verify_export(export_lines(store.audit, log.signer.verifier()), log.signer.verifier())
    assert (again.entries, again.pruned, again.statements) == (10, 5, 1)


def test_adding_the_logged_time_equals_re_encoding() -> None:
    for n in (0, 7, 123):
        data = _record(n).as_dict()
        assert with_logged(canonical(data), "2026-11-22T08:00:00.000001Z") == canonical(
            {**data, "logged": "2026-11-22T08:00:00.000001Z"}
        )
    assert with_logged(canonical({"a": "x"}), "t") == canonical({"a": "x", "logged": "t"})


def test_proofs_are_for_anyone_but_records_only_for_who_may_read_them(hub: RunningHub) -> None:
    hub.add_department(POLICE)
    auditor = hub.add_person("au-chen", "11350200MB0012345Y", m.Role.AUDITOR)
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.hub.audit.flush()
    request = apb.GetInclusionProofRequest(seq=1)
    answers = {}
    for who, identity in (("auditor", auditor), ("steward", steward), ("operator", hub.operator)):
        with hub.client(identity) as c:
            answers[who] = c.call(c.audit.GetInclusionProof, request)
    assert json.loads(answers["auditor"].entry.record)["action"] == "create_department"
    for who in ("steward", "operator"):
        assert answers[who].entry.record == ""  # not theirs to read
        assert answers[who].hashes == answers["auditor"].hashes and answers[who].entry.leaf_hash
    checkpoint = Checkpoint.parse(
        open_note(answers["steward"].checkpoint.note, Verifier.parse(answers["steward"].checkpoint.verifier_key))
    )
    verify_inclusion(
        answers["steward"].entry.leaf_hash, 1, checkpoint.size, list(answers["steward"].hashes), checkpoint.root
    )


def test_nothing_after_the_newest_checkpoint_and_no_hidden_records_are_accepted(log: AuditLog) -> None:
    _fill(log, 6, checkpoint_every=3)
    lines = list(export_lines(log.store, log.signer.verifier()))
    verifier = log.signer.verifier()
    entries = [line for line in lines if line.startswith("E\t")]
    checkpoints = [line for line in lines if '"checkpoint"' in line]
    header = json.loads(lines[0])
    # The newest checkpoint dropped, the last entries rewritten, the header made to match.
    record = (parse_entry_line(entries[5])[2] or "").replace("allowed", "denied")
    rewritten = entry_line(5, leaf_hash(record.encode()), record)
    forged = [json.dumps(header), checkpoints[0], *entries[:5], rewritten]
    with pytest.raises(VerifyError, match="no signed checkpoint covers all 6"):
        verify_export(forged, verifier)
    # Records appended after the newest checkpoint.
    appended = canonical({**_record(99).as_dict(), "logged": "2099-01-01T00:00:00.000000Z"}).decode()
    extra = entry_line(6, leaf_hash(appended.encode()), appended)
    grown = [json.dumps({**header, "size": 7}), *checkpoints, *entries, extra]
    with pytest.raises(VerifyError, match="no signed checkpoint covers all 7"):
        verify_export(grown, verifier)
    # A record blanked in the middle, passed off as pruned.
    seq, leaf, _ = parse_entry_line(entries[4])
    hidden = entry_line(seq, bytes.fromhex(leaf), None)
    with pytest.raises(VerifyError, match="entry 4: its record is missing"):
        verify_export([lines[0], *checkpoints, *entries[:4], hidden, entries[5]], verifier)


def test_processes_signing_the_same_checkpoint_at_once_agree(store: Store) -> None:
    signer = Signer.generate(ORIGIN)
    logs = [AuditLog(store.audit, signer, ORIGIN) for _ in range(4)]
    for i in range(20):
        store.audit.stage([_record(i)])
    errors: list[BaseException] = []

    def flush(one: AuditLog) -> None:
        try:
            one.flush()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=flush, args=(one,)) for one in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.audit.size() == 20 and [s for s, _ in store.audit.checkpoints(20, 20)] == [20]


def test_group_commit_from_threads_and_coroutines_loses_nothing(store: Store) -> None:
    committer = GroupCommitter(store.audit)

    def twenty(k: int) -> None:
        for i in range(20):
            committer.append(_record(k * 100 + i))

    threads = [threading.Thread(target=twenty, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def callers() -> None:
        await asyncio.gather(*(committer.append_async(_record(1000 + i)) for i in range(50)))

    asyncio.run(callers())
    committer.close()
    assert store.audit.staged_count() == 130 and committer.records == 130 and committer.batches < 130
    broken = GroupCommitter(store.audit)
    with pytest.raises(Unavailable):
        broken.append(_record(1, latency_us=1.5))  # a float cannot be recorded
    broken.append(_record(2))  # and the committer lives on
    broken.close()


def test_a_loops_turn_is_committed_in_batches_of_at_most_max_batch_and_close_commits_one_pending(store: Store) -> None:
    """The records one event loop appends in a turn go to the committer together: still no batch over max_batch,
    every record committed once, and a turn not handed over yet when the committer closes is committed too."""
    sizes: list[int] = []
    committer = GroupCommitter(store.audit, max_batch=10, on_batch=lambda n, failed: sizes.append(n))

    async def callers() -> None:
        await asyncio.gather(*(committer.append_async(_record(2000 + i)) for i in range(35)))
        pending = asyncio.ensure_future(committer.append_async(_record(3000)))
        await asyncio.sleep(0)  # appended; its turn is not handed over yet
        committer.close()
        await asyncio.wait_for(pending, 5)

    asyncio.run(callers())
    assert sizes[:4] == [10, 10, 10, 5] and sum(sizes) == 36 and store.audit.staged_count() == 36


def test_a_record_quoting_an_overlong_code_is_placed_whole_and_its_search_columns_cut_to_fit(log: AuditLog) -> None:
    """A refused call's record quotes what the caller sent (a 64-character resource code, say): the record keeps it
    whole; the entry's search columns are cut to their widths, so no backend refuses the row and stops the log."""
    overlong = _record(1, resource="R" * 64, actor="system/" + "x" * 90)
    log.store.stage([overlong, _record(2)])
    log.flush()
    assert log.store.size() == 2
    [entry, _] = log.store.entries(0, 2)
    assert json.loads(entry.record or "")["resource"] == "R" * 64
    found = log.store.search(page_request(10, "", {}), EntryFilter(resource="R" * 32))
    assert [e.seq for e in found.items] == [0]
    log.check()
    _verify(log)


def test_a_driver_write_that_fails_part_way_leaves_nothing_and_the_next_one_commits(store: Store) -> None:
    """The group commit's driver transaction: a failure after an insert rolls the insert back, is Unavailable,
    and releases the connection and this process's turn to write."""
    store.audit.stage([_record(1)])
    with pytest.raises(Unavailable), store.db.driver_write() as cursor:
        cursor.execute("DELETE FROM audit_staged")
        cursor.execute("SELECT no_such_column FROM audit_staged")
    assert store.audit.staged_count() == 1
    store.audit.stage([_record(2), _record(3)])
    assert store.audit.staged_count() == 3


def test_a_driver_write_to_a_store_that_cannot_be_reached_is_unavailable() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    with pytest.raises(Unavailable, match="cannot be reached"), db.driver_write():
        pass
    db.dispose()


def test_writers_of_one_process_take_turns_without_the_busy_handler(store: Store) -> None:
    """A write waiting for another thread's transaction proceeds as soon as it ends, whatever its length."""
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.db.write() as s:
            store.audit.stage_in(s, [_record(1)])
            entered.set()
            release.wait(10)

    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(10)
    waiting = threading.Thread(target=lambda: store.audit.stage([_record(2)]))
    waiting.start()
    if store.db.backend == "sqlite":  # one writer at a time: it waits (PostgreSQL lets both insert)
        waiting.join(0.3)
        assert waiting.is_alive()
    release.set()
    first.join(10)
    waiting.join(10)
    assert store.audit.staged_count() == 2


def test_a_slice_of_the_log_verifies_from_its_prefix_and_a_forged_prefix_does_not(log: AuditLog) -> None:
    _fill(log, 30, checkpoint_every=10)
    verifier = log.signer.verifier()
    log.sync()
    for start in (0, 10, 17, 30):
        lines = list(export_lines(log.store, verifier, start, log.tree.prefix(start)))
        report = verify_export(lines, verifier)
        assert (report.entries, report.size) == (30 - start, 30)
    lines = list(export_lines(log.store, verifier, 17, log.tree.prefix(17)))
    header = json.loads(lines[0])
    header["prefix"][0] = leaf_hash(b"forged").hex()
    with pytest.raises(VerifyError, match="another root"):
        verify_export([json.dumps(header), *lines[1:]], verifier)


def test_bad_ranges_and_missing_rights_get_precise_errors(hub: RunningHub) -> None:
    auditor = hub.add_person("au-chen", "11350200MB0012345Y", m.Role.AUDITOR)
    hub.hub.audit.flush()
    with hub.client(auditor) as c:
        for call, request in (
            (c.audit.GetInclusionProof, apb.GetInclusionProofRequest(seq=999)),
            (c.audit.GetInclusionProof, apb.GetInclusionProofRequest(seq=-1)),
            (c.audit.GetConsistencyProof, apb.GetConsistencyProofRequest(from_size=0)),
            (c.audit.GetConsistencyProof, apb.GetConsistencyProofRequest(from_size=5, to_size=2)),
            (c.audit.GetCheckpoint, apb.GetCheckpointRequest(size=-3)),
            (c.audit.SearchRecords, apb.SearchRecordsRequest(resource_code="bad")),
            (c.audit.SearchRecords, apb.SearchRecordsRequest(page_size=5000)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                c.call(call, request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        with pytest.raises(grpc.RpcError) as info:
            c.call(c.audit.GetCheckpoint, apb.GetCheckpointRequest(size=12345))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with hub.client() as c, pytest.raises(grpc.RpcError) as info:
        list(c.audit.ExportLog(apb.ExportLogRequest(), timeout=10))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_kept_subtrees_that_could_not_be_written_are_written_later(
    log: AuditLog, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails while the tree catches up: the tree starts again from the store, and no subtree goes missing."""
    _fill(log, 100)

    def full(nodes: object) -> None:
        raise Unavailable("database or disk is full")

    for i in range(100, 400):
        store.audit.stage([_record(i)])
    while store.audit.integrate():
        pass
    with monkeypatch.context() as patched:
        patched.setattr(store.audit, "add_nodes", full)
        with pytest.raises(Unavailable):
            log.sync()
    log.sync()
    reference = MerkleTree(store.audit.leaf_hashes(0, 400))
    assert log.tree.root() == reference.root() and log.tree.root(300) == reference.root(300)
    assert log.inclusion_proof(10, 400) == reference.inclusion_proof(10, 400)


def test_a_restarted_log_resumes_from_its_kept_subtrees_or_rebuilds_them(log: AuditLog, store: Store) -> None:
    """Memory stays flat: a process holds only the tree's right edge, and the store keeps the rest."""
    _fill(log, 600)
    kept = store.audit.node_hashes(8, [0, 1])
    assert set(kept) == {0, 1} and store.audit.node_hashes(9, [0])
    reference = MerkleTree(store.audit.leaf_hashes(0, 600))
    restarted = AuditLog(store.audit, log.signer, ORIGIN, checkpoint_seconds=3600)
    restarted.sync()
    assert restarted.tree.root() == reference.root()
    assert restarted.inclusion_proof(300, 600) == reference.inclusion_proof(300, 600)
    assert restarted.consistency_proof(100, 600) == reference.consistency_proof(100, 600)
    # A log from before subtrees were kept (or restored without them): read once, and kept on the way.
    _tamper(store, delete(AuditNodeRow))
    rebuilt = AuditLog(store.audit, log.signer, ORIGIN, checkpoint_seconds=3600)
    rebuilt.sync()
    assert rebuilt.tree.root() == reference.root() and store.audit.node_hashes(9, [0])
    _verify(rebuilt)


# --- What a verified export proves (issue 20) ------------------------------------------------------


def _parts(lines: list[str]) -> tuple[dict[str, object], list[str], list[str]]:
    """An export's header, its checkpoint and statement lines, and its entry lines."""
    signed = [line for line in lines[1:] if not line.startswith("E\t")]
    return json.loads(lines[0]), signed, [line for line in lines if line.startswith("E\t")]


def _note(line: str) -> str:
    return str(json.loads(line)["checkpoint"])


def _blanked(entry: str) -> str:
    seq, leaf, _ = parse_entry_line(entry)
    return entry_line(seq, bytes.fromhex(leaf), None)


def test_an_export_cut_back_to_an_earlier_checkpoint_is_refused_while_a_later_one_is_in_it(log: AuditLog) -> None:
    _fill(log, 6, checkpoint_every=3)
    verifier = log.signer.verifier()
    header, checkpoints, entries = _parts(list(export_lines(log.store, verifier)))
    assert len(checkpoints) == 2  # sizes 3 and 6
    cut = [json.dumps({**header, "size": 3}), *checkpoints, *entries[:3]]
    with pytest.raises(VerifyError, match="truncated: it holds a signed checkpoint of size 6 but ends at entry 3"):
        verify_export(cut, verifier)
    # Cut back honestly, without the later checkpoint, it is a true account of the log at size 3.
    assert verify_export([json.dumps({**header, "size": 3}), checkpoints[0], *entries[:3]], verifier).size == 3


def test_an_export_is_checked_against_a_checkpoint_the_auditor_holds(log: AuditLog) -> None:
    _fill(log, 6, checkpoint_every=3)
    verifier = log.signer.verifier()
    lines = list(export_lines(log.store, verifier))
    header, checkpoints, entries = _parts(lines)
    held3, held6 = (open_checkpoint(_note(c), verifier) for c in checkpoints)
    assert verify_export(lines, verifier, held=held3).held == 3
    assert verify_export(lines, verifier, held=held6).held == 6
    # A held checkpoint of the same size, or an earlier one, with another root: another history.
    for size in (3, 6):
        other = open_checkpoint(log.signer.sign(Checkpoint(ORIGIN, size, b"\x07" * 32).text()), verifier)
        with pytest.raises(VerifyError, match=f"not consistent with the held checkpoint of size {size}"):
            verify_export(lines, verifier, held=other)
    # An export that stops before what the auditor already holds.
    short = [json.dumps({**header, "size": 3}), checkpoints[0], *entries[:3]]
    with pytest.raises(VerifyError, match=r"stops short of the held checkpoint: it ends at entry 3, .* size 6"):
        verify_export(short, verifier, held=held6)
    # A tail export cannot vouch for a checkpoint before its first entry.
    log.sync()
    tail = list(export_lines(log.store, verifier, 4, log.tree.prefix(4)))
    with pytest.raises(VerifyError, match="held checkpoint of size 3 is before the export's first entry 4"):
        verify_export(tail, verifier, held=held3)
    assert verify_export(tail, verifier, held=held6).held == 6
    with pytest.raises(VerifyError, match="no signature"):
        open_checkpoint(Signer.generate(ORIGIN).sign(held6.text()), verifier)


def test_records_blanked_without_a_pruning_statement_are_refused(log: AuditLog, store: Store) -> None:
    _fill(log, 8)
    verifier = log.signer.verifier()
    header, signed, entries = _parts(list(export_lines(log.store, verifier)))
    blanked = [json.dumps(header), *signed, *(_blanked(e) for e in entries[:3]), *entries[3:]]
    with pytest.raises(VerifyError, match=r"entry 0: its record is missing and no signed pruning statement"):
        verify_export(blanked, verifier)
    # The same in the store: records dropped behind the hub's back, without its statement.
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq < 2).values(record=None))
    with pytest.raises(VerifyError, match=r"entry 0: its record is missing and no signed pruning statement"):
        _verify(log)


def _pruned_log(log: AuditLog, store: Store) -> tuple[list[str], dt.datetime]:
    """A log of 10 entries whose first 5 were pruned by the store under a statement; its export, and the cutoff."""
    _fill(log, 10, checkpoint_every=5)
    cutoff = _logged(store, 5)
    assert _logged(store, 4) < cutoff
    assert store.audit.prune(log.signer, cutoff + dt.timedelta(days=180), 180).entries == 5
    return list(export_lines(store.audit, log.signer.verifier())), cutoff


def _with_statement(lines: list[str], note: str) -> list[str]:
    header, signed, entries = _parts(lines)
    others = [line for line in signed if '"pruning"' not in line]
    return [json.dumps(header), json.dumps({"pruning": note}), *others, *entries]


def test_a_pruning_statement_covers_only_what_it_says_and_must_be_lawful(log: AuditLog, store: Store) -> None:
    lines, cutoff = _pruned_log(log, store)
    verifier, signer = log.signer.verifier(), log.signer
    header, signed, entries = _parts(lines)
    statement = next(json.loads(line)["pruning"] for line in signed if '"pruning"' in line)
    assert verify_export(lines, verifier).pruned == 5
    # One more record blanked than the statement covers: named.
    more = [json.dumps(header), *signed, *entries[:5], _blanked(entries[5]), *entries[6:]]
    with pytest.raises(VerifyError, match=r"entry 5: its record is missing .* \(statements cover entries before 5\)"):
        verify_export(more, verifier)
    # The statement edited, or signed by another key.
    edited = statement.replace("up-to 5", "up-to 6")
    with pytest.raises(VerifyError, match="does not verify"):
        verify_export(_with_statement(lines, edited), verifier)
    text = PruningStatement(ORIGIN, 5, cutoff + dt.timedelta(days=180), 180, cutoff).text()
    with pytest.raises(VerifyError, match="no signature"):
        verify_export(_with_statement(lines, Signer.generate(ORIGIN).sign(text)), verifier)
    # Signed by the log's key but unlawful or inconsistent with the entries.
    made = cutoff + dt.timedelta(days=180)
    cases = {
        "below the minimum of 180": PruningStatement(ORIGIN, 5, made, 30, made - dt.timedelta(days=30)),
        "less than 180 days before": PruningStatement(ORIGIN, 5, made - dt.timedelta(seconds=1), 180, cutoff),
        "entry 5: the first record kept .* before its cutoff": PruningStatement(
            ORIGIN, 5, made + dt.timedelta(days=1), 180, cutoff + dt.timedelta(days=1)
        ),
        "entry 5: the pruning statement up to entry 6 says it was pruned, but its record is here": PruningStatement(
            ORIGIN, 6, made, 180, cutoff
        ),
    }
    for message, forged in cases.items():
        with pytest.raises(VerifyError, match=message):
            verify_export(_with_statement(lines, forged.sign(signer)), verifier)
    # Every record gone, under a statement that claims entries the log does not have.
    beyond = PruningStatement(ORIGIN, 11, made, 180, cutoff).sign(signer)
    bare = [json.dumps(header), *signed, *(_blanked(e) for e in entries)]
    with pytest.raises(VerifyError, match="pruning statement up to entry 11 reaches beyond the log's 10 entries"):
        verify_export(_with_statement(bare, beyond), verifier)
    # A second statement must extend the first.
    older = PruningStatement(ORIGIN, 3, made + dt.timedelta(days=1), 180, cutoff).sign(signer)
    with pytest.raises(VerifyError, match="up to entry 3 does not extend the pruning statement up to entry 5"):
        verify_export([json.dumps(header), *signed, json.dumps({"pruning": older}), *entries], verifier)


def test_a_later_pruning_covers_a_prefix_pruned_before_statements_existed(log: AuditLog, store: Store) -> None:
    _fill(log, 10, checkpoint_every=5)
    cutoff = _logged(store, 5)
    _tamper(store, update(AuditEntryRow).where(AuditEntryRow.seq < 3).values(record=None))  # an earlier, bare pruning
    with pytest.raises(VerifyError, match="entry 0: its record is missing"):
        _verify(log)
    done = store.audit.prune(log.signer, cutoff + dt.timedelta(days=181), 181)
    assert (done.entries, done.statement is not None and done.statement.up_to) == (2, 5)
    assert verify_export(export_lines(store.audit, log.signer.verifier()), log.signer.verifier()).pruned == 5


def test_the_report_says_which_entries_it_proved_and_what_rests_on_the_prefix(log: AuditLog) -> None:
    _fill(log, 30, checkpoint_every=10)
    verifier = log.signer.verifier()
    log.sync()
    full = verify_export(export_lines(log.store, verifier), verifier)
    assert (full.start, full.size) == (0, 30)
    assert full.verdict()[0] == "entries 0 to 29 verified: the whole log, from its first entry (entry 0)"
    assert full.as_dict()["from_log_start"] is True and full.as_dict()["prefix_only"] is None
    tail = verify_export(export_lines(log.store, verifier, 17, log.tree.prefix(17)), verifier)
    assert (tail.start, tail.entries, tail.size) == (17, 13, 30)
    assert tail.verdict()[0] == (
        "entries 17 to 29 verified (13 entries); the export does not begin at the log's start: entries 0 to 16 "
        "are represented only by the header's prefix hashes, which the signed checkpoints vouch for only as a whole"
    )
    summary = tail.as_dict()
    assert (summary["start"], summary["end"], summary["from_log_start"]) == (17, 30, False)
    assert summary["prefix_only"] == {"start": 0, "end": 17}


def test_a_record_without_a_key_holder_keeps_its_bytes() -> None:
    """``key_holder`` is left out when empty: every record made before it existed hashes as it did."""
    record = AuditRecord("exchange", "query", "2026-11-22T08:00:00.000000Z", "system/bdc-djxt", "D", "ok")
    before = (
        '{"action":"query","actor":"system/bdc-djxt","actor_department":"D","bytes":0,"data_subjects":[],'
        '"exchange_id":"","fields":[],"grant":"","hub":"","kind":"exchange","latency_us":0,"masks":[],'
        '"outcome":"ok","purpose":"","reason":"","request_sha256":"","resource":"","response_sha256":"",'
        '"rows":0,"subject":"","time":"2026-11-22T08:00:00.000000Z"}'
    )
    assert canonical(record.as_dict()) == before.encode()
    held = canonical(replace(record, key_holder="person/bdc-steward").as_dict())
    assert held == before.replace('"kind"', '"key_holder":"person/bdc-steward","kind"').encode()
