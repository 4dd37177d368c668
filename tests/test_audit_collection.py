"""Garbage collection in the integrator process happens between its rounds, never inside one."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from audit.note import Signer
from exchange.auditlog import collection
from exchange.auditlog.collection import Collector
from exchange.auditlog.log import AuditLog
from exchange.store import Store


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations collected while the test runs; the interpreter's collection is given back after it."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.unfreeze()
        gc.enable()


def test_the_collector_takes_over_and_collects_young_middle_and_all_by_its_schedule(collections: list[int]) -> None:
    now = [100.0]
    collector = Collector(full_seconds=30, clock=lambda: now[0])
    del collections[:]  # an automatic collection before start (another thread's allocations) is not its own
    collector.start()
    assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert collections == [2]
    del collections[:]
    for _ in range(collection.MIDDLE_EVERY):
        collector()
    assert collections == [0] * (collection.MIDDLE_EVERY - 1) + [1]
    del collections[:]
    now[0] += 30
    collector()
    collector()
    assert collections == [2, 0]
    assert not gc.isenabled(), "nothing turned automatic collection back on"


def test_the_integrating_thread_calls_between_rounds_after_each_round(store: Store) -> None:
    """After each round, when the thread holds no transaction: on SQLite a write there would wait for its own."""
    calls: list[bool] = []
    called = threading.Event()

    def between_rounds() -> None:
        with store.db.write():  # the write turn is free: a round in progress would hold it
            calls.append(True)
        called.set()

    audit_log = AuditLog(store.audit, Signer.generate("test.exchange/audit"), "test.exchange/audit",
                         poll_seconds=0.01, between_rounds=between_rounds)  # fmt: skip
    audit_log.start()
    try:
        assert called.wait(10), "between_rounds was never called"
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 3
    finally:
        audit_log.stop()
