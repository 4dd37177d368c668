"""The group committer's timeouts: one timer per event loop, and a record not confirmed in time fails its caller."""

from __future__ import annotations

import asyncio
import threading
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
    committer = GroupCommitter(sqlite.audit)

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
