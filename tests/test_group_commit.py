"""The group committer: a loop's turn committed in the loop when nothing else writes, else by its thread without the
loop waiting; one timer per event loop, and a record not confirmed in time fails its caller."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import Context
from pathlib import Path
from typing import Any

import pytest

from audit.records import AuditRecord
from exchange.auditlog.batch import GroupCommitter
from exchange.errors import Unavailable
from exchange.store import Store
from exchange.store.audit import AuditStore
from exchange.store.database import WRITERS_SUFFIX


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-11-22T08:00:00.{n:06d}Z",
        actor="system/bdc-djxt",
        actor_department="bdc",
        outcome="ok",
        exchange_id=f"EX-{n}",
    )


class HeldStore(AuditStore):
    """A real audit store whose commits wait until ``release`` is set: a log that does not confirm for a while."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db)
        self.release = threading.Event()

    def stage(self, records: list[AuditRecord]) -> None:
        self.release.wait()
        super().stage(records)

    def stage_now(self, records: list[AuditRecord]) -> bool:
        return self.release.is_set() and super().stage_now(records)


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the timers set on it."""

    timers = 0

    def call_at(  # type: ignore[override]  # the stub's generic signature, counted and passed on as it is
        self, when: float, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.db.migrate()
    yield store
    store.close()


def test_a_loops_turns_share_one_timer_for_their_timeout(sqlite: Store) -> None:
    """Each turn's records are confirmed long before their timeout: no turn sets a timer of its own."""
    committer = GroupCommitter(sqlite.audit, in_loop=False)  # every turn through the thread

    async def one_by_one() -> int:
        for i in range(100):
            await committer.append_async(_record(i))  # each in a turn of its own
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        return loop.timers

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        timers = runner.run(one_by_one())
    committer.close()
    assert sqlite.audit.staged_count() == 100 and timers == 1


def test_records_not_confirmed_in_time_fail_their_callers_turn_by_turn(sqlite: Store) -> None:
    """Two turns appended at different times, neither confirmed within its timeout: both callers fail with
    Unavailable; once the log confirms again, a later caller succeeds (its timeout set anew)."""
    held = HeldStore(sqlite)
    committer = GroupCommitter(held)

    async def callers() -> tuple[BaseException | None, BaseException | None]:
        first = asyncio.ensure_future(committer.append_async(_record(1), timeout=0.05))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(committer.append_async(_record(2), timeout=0.05))
        outcomes = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        held.release.set()
        await asyncio.wait_for(committer.append_async(_record(3), timeout=30), 10)
        return outcomes

    outcomes = asyncio.run(callers())
    committer.close()
    assert all(isinstance(e, Unavailable) and "did not confirm in time" in e.message for e in outcomes)
    # Committed later, as a timed-out record may be: its caller was told nothing was released.
    assert sqlite.audit.staged_count() == 3


async def _appended_while_ticking(committer: GroupCommitter, n: int, hold: float = 0.0) -> int:
    """Appends ``n`` records in one turn while a ticker runs every millisecond; the ticks it got in (the loop was
    free meanwhile) once every record is confirmed."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        await asyncio.wait_for(asyncio.gather(*(committer.append_async(_record(i)) for i in range(n))), 30)
    finally:
        ticking.cancel()
    return ticks


def test_a_loops_turn_is_committed_in_the_loop_when_nothing_else_writes(store: Store) -> None:
    """On SQLite with no other writer, each turn is committed in the loop (no thread); on PostgreSQL never."""
    committer = GroupCommitter(store.audit)

    async def turns() -> None:
        for t in range(5):
            await asyncio.gather(*(committer.append_async(_record(10 * t + i)) for i in range(10)))

    asyncio.run(turns())
    committer.close()
    assert store.audit.staged_count() == 50 and committer.records == 50
    in_loop = store.db.backend == "sqlite"
    assert committer.loop_batches == (committer.batches if in_loop else 0) and committer.batches >= 5


def test_while_another_process_holds_the_lock_file_the_thread_commits_and_the_loop_goes_on(
    sqlite: Store, tmp_path: Path
) -> None:
    committer = GroupCommitter(sqlite.audit)
    other = os.open(str(tmp_path / "store.db") + WRITERS_SUFFIX, os.O_RDWR)  # another open file: its own flock
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(0.3, fcntl.flock, (other, fcntl.LOCK_UN)).start()
    started = time.monotonic()
    try:
        ticks = asyncio.run(_appended_while_ticking(committer, 3))
    finally:
        committer.close()
        os.close(other)
    assert time.monotonic() - started >= 0.3  # confirmed only once the other writer was done
    assert committer.loop_batches == 0 and committer.records == 3 and sqlite.audit.staged_count() == 3
    assert ticks >= 10, "the loop waited for the other writer"


def test_a_writer_that_takes_no_turn_sends_the_turn_to_the_thread(sqlite: Store, tmp_path: Path) -> None:
    """A writer outside the hub's turn-taking (a migration, a tool) holds SQLite's lock: the loop does not wait
    for it, the thread does, and the records are committed once it is done."""
    committer = GroupCommitter(sqlite.audit)
    tool = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    tool.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, tool.execute, ("COMMIT",)).start()
    try:
        ticks = asyncio.run(_appended_while_ticking(committer, 2))
    finally:
        committer.close()
        tool.close()
    assert committer.loop_batches == 0 and committer.records == 2 and sqlite.audit.staged_count() == 2
    assert ticks >= 10, "the loop waited for SQLite's lock"


def test_a_commit_that_fails_in_the_loop_fails_its_callers_through_the_thread(sqlite: Store, tmp_path: Path) -> None:
    """Staging fails (the table is gone): tried in the loop, then by the thread, whose failure the callers get;
    once the table is back, records are committed in the loop again."""
    failures: list[bool] = []
    committer = GroupCommitter(sqlite.audit, on_batch=lambda size, failed: failures.append(failed))
    tool = sqlite3.connect(tmp_path / "store.db", isolation_level=None)

    async def calls() -> BaseException | None:
        tool.execute("ALTER TABLE audit_staged RENAME TO audit_staged_away")
        refused = await asyncio.gather(committer.append_async(_record(1)), return_exceptions=True)
        tool.execute("ALTER TABLE audit_staged_away RENAME TO audit_staged")
        await committer.append_async(_record(2))
        return refused[0]

    try:
        refused = asyncio.run(calls())
    finally:
        committer.close()
        tool.close()
    assert isinstance(refused, Unavailable) and "cannot be written" in refused.message
    assert failures == [True, False] and not committer.failing and committer.loop_batches == 1
    assert sqlite.audit.staged_count() == 1


def test_records_that_find_the_write_turn_taken_are_tried_again_in_the_loop_and_joined_by_later_turns(
    sqlite: Store, tmp_path: Path
) -> None:
    """Another process holds the lock file for a moment (an integrator's round): the loop does not wait and does
    not hand the records to the thread within its patience; it tries again, a turn appended meanwhile joins them,
    and both are committed in the loop in one batch once the turn is free."""
    committer = GroupCommitter(sqlite.audit, loop_patience=30.0)
    other = os.open(str(tmp_path / "store.db") + WRITERS_SUFFIX, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)

    async def two_turns() -> int:
        first = asyncio.ensure_future(_appended_while_ticking(committer, 2))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(committer.append_async(_record(100)))
        await asyncio.sleep(0.05)
        assert committer.batches == 0 and sqlite.audit.staged_count() == 0  # still waiting, in the loop
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.wait_for(second, 10)
        return await first

    try:
        ticks = asyncio.run(two_turns())
    finally:
        committer.close()
        os.close(other)
    assert committer.batches == committer.loop_batches == 1 and committer.records == 3
    assert sqlite.audit.staged_count() == 3 and ticks >= 10


def test_a_loop_connection_left_in_a_transaction_is_replaced_not_taken_for_a_busy_store(sqlite: Store) -> None:
    """Were the loop's connection ever left inside a transaction, its BEGIN would fail on every turn: that is not
    SQLite being busy (which would send every turn to the thread after waiting), so the connection is replaced."""
    committer = GroupCommitter(sqlite.audit)

    async def one() -> None:
        await committer.append_async(_record(1))

    asyncio.run(one())
    stuck = sqlite.db._now_connection
    assert stuck is not None and committer.loop_batches == 1
    stuck.cursor().execute("BEGIN")  # left open
    asyncio.run(one())  # the stuck connection is dropped; tried again a moment later, on a new one
    asyncio.run(one())
    committer.close()
    assert sqlite.db._now_connection is not stuck and committer.loop_batches == 3
    assert committer.records == 3 and sqlite.audit.staged_count() == 3


def test_under_load_a_turn_waits_for_company_and_a_lone_record_does_not(store: Store) -> None:
    """Records arriving close together (a burst, as under load) are committed a few turns at a time, each turn
    waiting ``gather`` for the others; a record after a pause is committed at once, never waiting for it. On both
    backends (PostgreSQL's turns go through the thread)."""
    gather = 0.05
    committer = GroupCommitter(store.audit, gather=gather)

    async def burst(count: int) -> None:
        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.0002)  # one record every 0.2 ms: far more often than one per ``gather``
            await committer.append_async(_record(i))

        await asyncio.gather(*(one(i) for i in range(count)))

    async def lone() -> float:
        started = time.monotonic()
        await committer.append_async(_record(10_000))
        return time.monotonic() - started

    try:
        asyncio.run(burst(300))
        assert committer.records == 300 and committer.gathered > 0
        # Before the mean came down, records went one turn each; after it, a few commits took all the rest.
        assert committer.batches < 150
        time.sleep(1)  # a pause: the next record is a lone one
        batches, gathered = committer.batches, committer.gathered
        waited = asyncio.run(lone())
        assert committer.gathered == gathered and committer.batches == batches + 1
        assert waited < 10 * gather or committer.loop_batches == 0  # PostgreSQL's thread may be slow on a busy CI
    finally:
        committer.close()
    assert store.audit.staged_count() == 301


def test_a_turn_waiting_for_company_is_committed_when_the_committer_closes(sqlite: Store) -> None:
    """A hub stopping while a turn waits for company: the turn is committed before the committer stops."""
    committer = GroupCommitter(sqlite.audit, gather=10.0)  # a wait no test would sit through

    async def burst_then_close() -> None:
        for i in range(200):  # one turn each, the mean of their gaps coming down until a turn waits
            task = asyncio.ensure_future(committer.append_async(_record(i)))
            await asyncio.sleep(0)
            if committer.gathered:
                break
        assert committer.gathered == 1 and not task.done()
        await asyncio.to_thread(committer.close)
        await asyncio.wait_for(task, 5)

    asyncio.run(burst_then_close())
    assert sqlite.audit.staged_count() == committer.records


def test_the_loops_statement_stages_a_turn_of_any_size_in_one_commit(sqlite: Store) -> None:
    """A loop's turn is one statement with a row of values per record: a large turn as a small one, every record
    readable after it; statements for the usual sizes are made once, a rare large one each time."""
    for size in (1, 3, 100):
        assert sqlite.audit.stage_now([_record(size * 1000 + i) for i in range(size)])
    assert sqlite.audit.staged_count() == 104
    assert set(sqlite.audit._staged_rows) == {1, 3}
