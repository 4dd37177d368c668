"""The audit integrator in a process of its own (audit_integrator = "process"), against a real hub and store.

The process integrates and signs what the hub's calls staged; killed, it is restarted and catches up, losing
nothing; it stops with its hub after a last round; a log it finds broken halts the hub's appends. The hub
in thread mode (the other tests' hubs) keeps integrating in its own thread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import insert

from audit.records import AuditRecord
from exchange import models as m
from exchange.config import Settings, load
from exchange.errors import ConfigError, DeadlineExceeded, Unavailable
from exchange.store import Store
from exchange.store.database import WRITERS_SUFFIX, Database, deadline
from exchange.store.schema import AuditStagedRow
from tests.harness import HOUSING, POLICE, base_settings, running_hub

# Long enough for a loaded machine to start an interpreter; a wait that reaches it fails its test.
PATIENCE_SECONDS = 60.0


def _settings(home: Path, **changes: object) -> Settings:
    settings = base_settings(home, audit_integrator="process", checkpoint_seconds=0.1)
    return replace(settings, **changes)  # type: ignore[arg-type]


def _until(what: str, done: Callable[[], bool]) -> None:
    """Waits for ``done`` (the integrator works on its own schedule); fails naming ``what`` if it never is."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _signed(store: Store) -> int:
    latest = store.audit.latest_checkpoint()
    return 0 if latest is None else latest[0]


def _all_signed(store: Store) -> bool:
    """Nothing staged waits, and the newest checkpoint covers the whole log."""
    return store.audit.staged_count() == 0 and _signed(store) == store.audit.size()


def _assert_all_signed(settings: Settings) -> None:
    """After the hub stopped: its log is not empty, nothing staged waits, the newest checkpoint covers it all."""
    store = Store(settings.effective_database_url)
    try:
        assert _all_signed(store) and store.audit.size() > 0
    finally:
        store.close()


def _integrator_said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """What the hub's side of the integrator logged: (level, message)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "exchange.auditlog.integrator"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reaped(pid: int) -> bool:
    """Whether ``pid`` is gone, not even a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_integrator_process_integrates_and_signs_what_the_hub_staged(tmp_path: Path) -> None:
    with running_hub(_settings(tmp_path / "hub")) as h:
        integrator = h.hub.integrator
        assert integrator is not None and integrator.pid is not None
        assert integrator.pid != os.getpid() and _alive(integrator.pid)
        assert not h.hub.audit.integrating
        store = h.hub.store
        _until("the start-up records signed", lambda: _all_signed(store))
        before, signed_at = store.audit.size(), h.hub.audit.signed_at
        h.add_department(POLICE)  # a real call through the hub: its record is staged by the hub's process
        _until("the call's record integrated and signed", lambda: store.audit.size() > before and _all_signed(store))
        # The hub heard of the new checkpoint (its checkpoint-age metric and health page read this).
        _until("the hub told of the checkpoint", lambda: (h.hub.audit.signed_at or 0) > (signed_at or 0))
        # Proofs are served by the hub's own tree, caught up from the store without integrating.
        size = store.audit.size()
        assert h.hub.audit.inclusion_proof(size - 1, size) is not None
        assert h.hub.audit.tree.size >= size


def test_a_killed_integrator_is_restarted_and_catches_up_losing_nothing(tmp_path: Path) -> None:
    with running_hub(_settings(tmp_path / "hub")) as h:
        integrator, store = h.hub.integrator, h.hub.store
        assert integrator is not None and integrator.pid is not None
        first = integrator.pid
        _until("the start-up records signed", lambda: _all_signed(store))
        before = store.audit.size()
        os.kill(first, signal.SIGKILL)
        _until("the killed integrator noticed", lambda: integrator.pid != first)
        # While it is down (or starting again) the hub keeps serving: records are durable once staged.
        h.add_department(POLICE)
        h.add_department(HOUSING)
        _until("a new integrator", lambda: integrator.pid is not None and integrator.restarts == 1)
        _until("the records staged meanwhile integrated and signed", lambda: _all_signed(store))
        assert store.audit.size() >= before + 2
        assert integrator.pid != first and _reaped(first)
        assert h.hub.audit.broken is None


def test_the_integrator_stops_with_its_hub_after_a_last_round(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "hub", checkpoint_seconds=3600)  # only the last round signs what follows
    with running_hub(settings) as h:
        integrator = h.hub.integrator
        assert integrator is not None and integrator.pid is not None
        pid = integrator.pid
        h.add_department(POLICE)
        h.add_person("zhang-wei", POLICE.code, m.Role.OWNER_STEWARD)
    assert integrator.pid is None and integrator.stopped_clean and _reaped(pid)
    _assert_all_signed(h.settings)


def test_an_integrator_signalled_with_its_hub_ends_in_order_and_is_not_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGTERM to the whole process group (systemd, ``timeout``) reaches the integrator and the hub: the
    integrator's last round is done, and the hub neither restarts it nor calls that a crash."""
    caplog.set_level(logging.INFO, logger="exchange.auditlog.integrator")
    with running_hub(_settings(tmp_path / "hub", checkpoint_seconds=3600)) as h:
        integrator = h.hub.integrator
        assert integrator is not None and integrator.pid is not None
        pid = integrator.pid
        h.add_department(POLICE)
        _until("the integrator ready", lambda: integrator.ready)
        os.kill(pid, signal.SIGTERM)  # the hub's own stop follows as the block ends
    assert integrator.restarts == 0 and integrator.pid is None and integrator.stopped_clean and _reaped(pid)
    said = _integrator_said(caplog)
    assert not [m for level, m in said if level >= logging.WARNING], said
    _assert_all_signed(h.settings)


def test_an_integrator_stopped_from_outside_is_restarted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exchange.auditlog.integrator")
    with running_hub(_settings(tmp_path / "hub")) as h:
        integrator, store = h.hub.integrator, h.hub.store
        assert integrator is not None and integrator.pid is not None
        first = integrator.pid
        _until("the integrator ready", lambda: integrator.ready)
        os.kill(first, signal.SIGTERM)  # to it alone: the hub goes on
        _until("a new integrator", lambda: integrator.pid is not None and integrator.restarts == 1)
        h.add_department(POLICE)
        _until("the record integrated and signed by the new one", lambda: _all_signed(store))
    said = _integrator_said(caplog)
    assert (
        [m for level, m in said if level >= logging.WARNING]
        == [m for _, m in said if "stopped from outside the hub" in m]
        != []
    ), said


def test_a_broken_log_found_by_the_integrator_halts_the_hubs_appends(tmp_path: Path) -> None:
    with running_hub(_settings(tmp_path / "hub", health_check_seconds=0.2)) as h:
        store = h.hub.store
        _until("the start-up records signed", lambda: _all_signed(store))
        # A record slipped in past the hub, with no seal: the integrator refuses it and the log is broken.
        record = AuditRecord("registry", "forged", "2026-12-04T08:00:00.000000Z", "person/x", "", "ok")
        row = {
            "record": json.dumps(record.as_dict(), sort_keys=True),
            "staged_at": dt.datetime.now(dt.UTC),
            "mac": None,
        }
        with store.db.write() as s:
            s.execute(insert(AuditStagedRow).values(**row))
        _until("the hub told the log is broken", lambda: h.hub.audit.broken is not None)
        assert "does not carry this hub's seal" in (h.hub.audit.broken or "")
        committer = h.hub.committer
        assert committer is not None
        with pytest.raises(Unavailable, match="failed its integrity check"):
            committer.append(record, timeout=5)
        _until("the hub reports NOT_SERVING", lambda: not h.hub.ready)


def test_the_thread_integrator_still_integrates_in_the_hubs_process(tmp_path: Path) -> None:
    with running_hub(base_settings(tmp_path / "hub", audit_integrator="thread", checkpoint_seconds=0.1)) as h:
        assert h.hub.integrator is None and h.hub.audit.integrating
        store = h.hub.store
        before = store.audit.size()
        h.add_department(POLICE)
        _until("the call's record integrated and signed", lambda: store.audit.size() > before and _all_signed(store))


def test_flush_integrates_in_the_hubs_process_beside_the_integrator(tmp_path: Path) -> None:
    """What needs its records integrated at once (the CLI, a proof right after a call) still has them."""
    with running_hub(_settings(tmp_path / "hub", checkpoint_seconds=3600)) as h:
        h.add_department(POLICE)
        size = h.hub.audit.flush()
        store = h.hub.store
        assert size == store.audit.size() and _signed(store) >= size
        assert h.hub.audit.inclusion_proof(size - 1, size) is not None


def test_the_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit_integrator must be process or thread"):
        load(None, {"EXCHANGE_AUDIT_INTEGRATOR": "fork", "EXCHANGE_HOME": str(tmp_path)})


def test_exchange_serve_integrates_in_a_process_by_default(tmp_path: Path) -> None:
    assert load(None, {"EXCHANGE_HOME": str(tmp_path)}).audit_integrator == "process"


def test_processes_take_turns_to_write_a_sqlite_store_on_its_lock_file(tmp_path: Path) -> None:
    """The integrator process and the hub's group commit queue on the file beside the database: a writer waits
    for the other's transaction, then writes, and a deadline that passes while it waits ends the wait."""
    url = f"sqlite:///{tmp_path / 'exchange.db'}"
    first, second = Database(url), Database(url)  # two open files: to flock, as two processes
    try:
        assert (tmp_path / f"exchange.db{WRITERS_SUFFIX}").exists()
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with first._one_writer():  # the turn alone, no SQLite transaction: only the lock file holds the second
                holding.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(30)
        with deadline(0.2), pytest.raises(DeadlineExceeded):
            second.check_writable()
        written = threading.Event()

        def write() -> None:
            second.check_writable()
            written.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not written.wait(0.3)  # still the first's turn
        release.set()
        holder.join(30)
        writer.join(30)
        assert written.is_set()
    finally:
        first.dispose()
        second.dispose()
