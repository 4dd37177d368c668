"""Search answers checked by the client, against a real hub: the attacks on the search indexes, which no
leaf covers (a changed outcome column, deleted subject rows), are caught by the checked search, by
``search --verify``, by ``audit check-index`` and by the hub's scheduled check."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from audit.records import AuditRecord, subject_hash
from exchange import models as m
from exchange.cli.main import main
from exchange.store.schema import AuditEntryRow, AuditSubjectRow
from tests.harness import AUTHORITY, HOUSING, RunningHub, base_settings, running_hub

CITIZEN = "350203198507154313"
RESOURCE = "10101/350200000001"


def _run(hub: RunningHub, identity: Path, *argv: str) -> int:
    return main(["--hub", hub.settings.hub_address, "--identity", str(identity), *argv])


def _exchange(n: int, key: bytes, outcome: str) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-11-22T08:00:00.{n:06d}Z",
        actor="system/bdc-djxt",
        actor_department=HOUSING.code,
        outcome=outcome,
        resource=RESOURCE,
        purpose="不动产转移登记",
        exchange_id=f"EX-{n}",
        data_subjects=[subject_hash(key, CITIZEN)],
    )


def _logged(hub: RunningHub, count: int) -> list[int]:
    """``count`` exchanges about CITIZEN, alternately ok and denied, in the signed log; their entries."""
    key = hub.files.audit_subject_key.read_bytes()
    first = hub.hub.audit.flush()  # what earlier calls staged is in the log before these
    hub.hub.store.audit.stage([_exchange(n, key, "ok" if n % 2 == 0 else "denied") for n in range(count)])
    hub.hub.audit.flush()
    return list(range(first, first + count))


def _tamper(hub: RunningHub, statement: object) -> None:
    with hub.hub.store.db.write() as s:
        s.execute(statement)  # type: ignore[call-overload]


@pytest.fixture
def auditor(hub: RunningHub) -> Path:
    return hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR)


def test_a_changed_outcome_column_fails_the_checked_search(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seqs = _logged(hub, 6)
    key = str(hub.files.audit_verifier)
    assert _run(hub, auditor, "audit", "search", "--resource", RESOURCE, "--outcome", "ok", "--key", key) == 0
    out = capsys.readouterr().out
    assert "every record matches the search; 3 proved in the signed log" in out

    denied = seqs[1]
    _tamper(hub, update(AuditEntryRow).where(AuditEntryRow.seq == denied).values(outcome="ok"))
    assert _run(hub, auditor, "audit", "search", "--resource", RESOURCE, "--outcome", "ok", "--key", key) == 1
    err = capsys.readouterr().err
    assert f"entry {denied} does not match the search: its outcome is 'denied', not 'ok'" in err
    # Without the key the record is still checked against the filter; only the proofs are not.
    assert _run(hub, auditor, "audit", "search", "--resource", RESOURCE, "--outcome", "ok") == 1
    assert f"entry {denied} does not match" in capsys.readouterr().err


def test_a_checkpoint_or_proof_from_elsewhere_fails(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _logged(hub, 2)
    stranger = tmp_path / "other-hub"
    with running_hub(base_settings(stranger)) as other:
        other_key = str(other.files.audit_verifier)
    assert _run(hub, auditor, "audit", "search", "--resource", RESOURCE, "--key", other_key) == 1
    assert "the answer's checkpoint does not verify with the log's key" in capsys.readouterr().err


def test_deleted_subject_rows_are_reported_by_search_verify(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seqs = _logged(hub, 8)
    key = str(hub.files.audit_verifier)
    who = ("--subject", CITIZEN, "--key", key)
    assert _run(hub, auditor, "audit", "search", *who, "--verify") == 0
    assert "8 records in the answer" in capsys.readouterr().out

    cut = seqs[2:7]
    _tamper(hub, delete(AuditSubjectRow).where(AuditSubjectRow.seq.in_(cut)))
    # Each answer that is given still checks: the attack is what it leaves out.
    assert _run(hub, auditor, "audit", "search", *who) == 0
    assert _run(hub, auditor, "audit", "search", *who, "--verify") == 1
    captured = capsys.readouterr()
    assert "3 records in the answer" in captured.out and "5 left out, 0 extra" in captured.out
    for seq in cut:
        assert f"entry {seq} matches the search in the verified log, but the answer left it out" in captured.err

    # The same with an export the auditor made earlier, and for a resource.
    export = tmp_path / "log.jsonl"
    assert _run(hub, auditor, "audit", "export", "--out", str(export)) == 0
    assert _run(hub, auditor, "audit", "search", *who, "--verify", "--log", str(export)) == 1
    assert f"entry {cut[0]} matches the search" in capsys.readouterr().err
    _tamper(hub, update(AuditEntryRow).where(AuditEntryRow.seq == seqs[0]).values(resource="10101/350200000009"))
    resource = ("--resource", RESOURCE, "--key", key, "--verify")
    assert _run(hub, auditor, "audit", "search", *resource) == 1
    assert f"entry {seqs[0]} matches the search in the verified log" in capsys.readouterr().err


def test_search_verify_needs_the_key_and_a_subject_or_resource(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(hub, auditor, "audit", "search", "--subject", CITIZEN, "--verify") == 2
    assert "--key" in capsys.readouterr().err
    key = str(hub.files.audit_verifier)
    assert _run(hub, auditor, "audit", "search", "--outcome", "ok", "--verify", "--key", key) == 2
    assert "needs --subject or --resource" in capsys.readouterr().err


@pytest.fixture
def slow_hub(tmp_path: Path) -> Iterator[RunningHub]:
    """A hub that signs a checkpoint only when flushed."""
    with running_hub(base_settings(tmp_path / "hub", checkpoint_seconds=3600)) as h:
        yield h


def test_a_hit_newer_than_the_signed_checkpoint_is_marked_not_yet_provable(
    slow_hub: RunningHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = slow_hub
    auditor = hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR)
    seqs = _logged(hub, 2)
    key = hub.files.audit_subject_key.read_bytes()
    hub.hub.store.audit.stage([_exchange(9, key, "ok")])
    while not hub.hub.store.audit.integrate():  # sequenced here or already by the hub's thread
        if hub.hub.store.audit.staged_count() == 0:
            break
    verifier = str(hub.files.audit_verifier)
    assert _run(hub, auditor, "audit", "search", "--subject", CITIZEN, "--key", verifier) == 0
    out = capsys.readouterr().out
    assert "2 proved in the signed log, 1 newer than the signed checkpoint (not yet provable)" in out
    assert str(seqs[-1] + 1) in out


def test_check_index_reports_each_difference_and_repair_restores(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seqs = _logged(hub, 6)
    home = ["--home", str(hub.settings.home), "audit", "check-index"]
    assert main(home) == 0
    assert "the search indexes match the records" in capsys.readouterr().out
    _tamper(hub, update(AuditEntryRow).where(AuditEntryRow.seq == seqs[1]).values(outcome="ok"))
    _tamper(hub, delete(AuditSubjectRow).where(AuditSubjectRow.seq.in_(seqs[3:5])))
    assert main(home) == 1
    captured = capsys.readouterr()
    h = subject_hash(hub.files.audit_subject_key.read_bytes(), CITIZEN)
    assert f"entry {seqs[1]}: column outcome says 'ok', the record says 'denied'" in captured.out
    assert f"entry {seqs[3]}: subject row {h} missing" in captured.out
    assert f"entry {seqs[4]}: subject row {h} missing" in captured.out
    assert "3 differences in 3 entries" in captured.err
    assert main([*home, "--repair"]) == 0
    assert "rewrote the indexes of 3 entries" in capsys.readouterr().out
    assert main(home) == 0
    key = str(hub.files.audit_verifier)
    assert _run(hub, auditor, "audit", "search", "--subject", CITIZEN, "--key", key, "--verify") == 0


def _metric(hub: RunningHub, name: str) -> float | None:
    port = hub.hub.metrics_server.port if hub.hub.metrics_server else 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_the_scheduled_check_sets_the_metric(tmp_path: Path) -> None:
    with running_hub(base_settings(tmp_path / "hub", audit_index_check_seconds=0.05)) as hub:
        seqs = _logged(hub, 4)
        _tamper(hub, update(AuditEntryRow).where(AuditEntryRow.seq == seqs[0]).values(outcome="denied"))
        _tamper(hub, delete(AuditSubjectRow).where(AuditSubjectRow.seq == seqs[1]))
        # The second check to end from now started after the tampering (the hub checks every 0.05 s).
        _next_check(hub)
        _next_check(hub)
        assert _metric(hub, "exchange_audit_index_mismatches") == 2


def _next_check(hub: RunningHub) -> None:
    """Waits (a minute at most) until the hub's scheduled index check completes once more."""
    name = "exchange_audit_index_checked_timestamp_seconds"
    before = _metric(hub, name)
    deadline = time.monotonic() + 60
    while _metric(hub, name) == before:
        assert time.monotonic() < deadline, "the scheduled index check did not run"
        time.sleep(0.01)
