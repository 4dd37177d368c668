"""Quota leases held under expiring holder records, on SQLite and PostgreSQL.

Two processes racing for a grant's last calls never get more than the quota between them; a holder
that stops beating has its parked calls returned to the pool once its record expired (the database's
clock), and cannot take them back afterwards; the refusal names the grant, the use and the reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from exchange.store import Store
from policy.decision import DecisionPoint, DenyReason
from policy.quota import DailyQuota
from tests.test_decision import PUBLISHED, TODAY, _ask, _grant

DAY = TODAY
# Seconds a test waits for something the store must do by itself (a record's expiry); never a measure.
DEADLINE = 30.0


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "not seen before the deadline"
        time.sleep(0.05)


def _race(stores: list[Store], grant: str, quota: int) -> list[int]:
    """Each store (a process) leases one call of ``grant`` at the same moment; what each got."""
    got: list[int] = []
    start = threading.Barrier(len(stores))

    def grab(s: Store) -> None:
        start.wait()
        got.append(s.counters.lease(grant, DAY, 1, quota))

    threads = [threading.Thread(target=grab, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_two_processes_racing_for_the_last_calls_get_the_quota_exactly(store: Store) -> None:
    other = Store(store.db.url)  # a second hub process on the same database
    try:
        for quota in (1, 2, 7):  # the last unit alone, and a few
            grant = f"GR-RACE-{quota}"
            got = _race([store, other, store, other], grant, quota)
            assert sum(got) == min(quota, 4) and store.counters.leased(grant, DAY) == min(quota, 4)
            assert store.counters.lease(grant, DAY, 1, quota) == (1 if quota == 7 else 0)
    finally:
        other.close()


def test_a_holder_that_stops_beating_gives_its_parked_calls_back(store: Store) -> None:
    killed = DailyQuota(store.counters, block=10, holder="killed")
    alive = DailyQuota(store.counters, block=10, holder="alive")
    assert killed.take("GR-1", 100, DAY)  # leased 10, used 1
    killed.beat(ttl=0.5)  # parks the 9 unused calls, then stops beating (as if killed)
    alive.beat(ttl=60)
    assert store.counters.parked("killed") == 9 and store.counters.leased("GR-1", DAY) == 10
    assert alive.processes == 2  # the killed one still counts until its record expires
    _until(lambda: store.counters.reclaim() > 0)
    assert store.counters.leased("GR-1", DAY) == 1  # only the call used stays counted
    assert store.counters.parked() == 0 and store.counters.live_holders() == 1
    alive.beat(ttl=60)
    assert alive.processes == 1


def test_an_expired_holder_cannot_take_its_parked_calls_back(store: Store) -> None:
    late = DailyQuota(store.counters, block=5, holder="late")
    assert late.take("GR-2", 5, DAY)  # leased all 5, used 1
    late.beat(ttl=0.5)
    _until(lambda: store.counters.reclaim() > 0)  # its record expired before it could beat again
    others = DailyQuota(store.counters, block=5, holder="others")
    assert [others.take("GR-2", 5, DAY) for _ in range(4)] == [True] * 4  # the 4 returned calls
    assert not late.take("GR-2", 5, DAY)  # its unpark fails: the 4 are not used twice
    assert not others.take("GR-2", 5, DAY) and store.counters.leased("GR-2", DAY) == 5
    late.beat(ttl=60)  # a new record: nothing parked under it
    assert store.counters.parked("late") == 0


def test_a_live_holder_uses_its_parked_calls_and_gives_them_back_when_it_stops(store: Store) -> None:
    quota = DailyQuota(store.counters, block=4, holder="hub-a")
    assert quota.take("GR-3", 40, DAY)
    quota.beat(ttl=60)
    assert store.counters.parked("hub-a") == 3
    assert [quota.take("GR-3", 40, DAY) for _ in range(3)] == [True] * 3  # taken back with one write
    assert store.counters.parked("hub-a") == 0 and store.counters.leased("GR-3", DAY) == 4
    assert quota.take("GR-3", 40, DAY)  # a new block
    quota.beat(ttl=60)
    quota.release_all()
    assert store.counters.leased("GR-3", DAY) == 5 and store.counters.live_holders() == 0


def test_live_processes_share_a_grants_rate(store: Store) -> None:
    """Two decision points on one store, a grant of 10 calls a second: 10 at once between them, not 20."""
    now = [1000.0]
    quotas = [DailyQuota(store.counters, block=50, holder=f"hub-{n}") for n in (1, 2)]
    for quota in quotas:
        quota.beat(ttl=60)
    quotas[0].beat(ttl=60)  # the first learns of the second
    grant = replace(_grant(), daily_quota=1000, rate_per_second=10)
    points = [DecisionPoint([grant], clock=lambda: now[0], quota=q) for q in quotas]
    allowed = [sum(p.decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(20)) for p in points]
    assert allowed == [5, 5]
    assert points[0].decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.RATE_LIMITED
    now[0] += 1.0  # a second later each has its share again
    assert sum(points[1].decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(20)) == 5
    quotas[1].release_all()  # one stops: the other takes the whole rate at its next beat
    quotas[0].beat(ttl=60)
    now[0] += 1.0
    assert sum(points[0].decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(20)) == 10


def test_calls_back_in_the_pool_are_seen_by_a_process_that_found_it_empty(store: Store) -> None:
    killed = DailyQuota(store.counters, block=5, holder="killed")
    alive = DailyQuota(store.counters, block=5, holder="alive")
    assert killed.take("GR-4", 50, DAY)  # leases 5 of 50, uses 1
    assert [alive.take("GR-4", 50, DAY) for _ in range(46)] == [True] * 45 + [False]
    assert alive.spent("GR-4", DAY)  # the decision point refuses from this, without asking the store
    killed.beat(ttl=0.5)  # parks its 4 unused calls, then stops beating
    _until(lambda: store.counters.reclaim() > 0)
    alive.beat(ttl=60)  # its next heartbeat: the pool may have calls again
    assert not alive.spent("GR-4", DAY)
    assert [alive.take("GR-4", 50, DAY) for _ in range(5)] == [True] * 4 + [False]


class _Paused:
    """The store's counters, with one kind of write (``beat`` or ``lease``) held until released, at its start
    or once done: a process whose own write is under way while another thread of it needs a call."""

    def __init__(self, store: Store, method: str, *, done: bool = False) -> None:
        self._counters = store.counters
        self._method = method
        self._done = done
        self.entered = threading.Event()
        self.release = threading.Event()
        self.pause = False

    def __getattr__(self, name: str) -> object:
        real = getattr(self._counters, name)
        if name != self._method or not self.pause:
            return real

        def paused(*args: object) -> object:
            self.pause = False
            result = real(*args) if self._done else None
            self.entered.set()
            assert self.release.wait(DEADLINE)
            return result if self._done else real(*args)

        return paused


def _take_in_thread(quota: DailyQuota, grant: str, limit: int) -> tuple[threading.Thread, list[bool]]:
    took: list[bool] = []
    thread = threading.Thread(target=lambda: took.append(quota.take(grant, limit, DAY)))
    thread.start()
    return thread, took


def test_a_call_waits_for_its_own_calls_being_parked_rather_than_be_refused(store: Store) -> None:
    counters = _Paused(store, "beat")
    quota = DailyQuota(counters, block=5, holder="hub-a")  # type: ignore[arg-type]
    assert store.counters.lease("GR-5", DAY, 45, 50) == 45  # other processes hold all but 5
    assert quota.take("GR-5", 50, DAY)  # the pool's last 5 leased, 4 free
    counters.pause = True
    beat = threading.Thread(target=quota.beat, args=(60,))
    beat.start()
    assert counters.entered.wait(DEADLINE)  # the 4 free calls are on their way to being parked
    thread, took = _take_in_thread(quota, "GR-5", 50)
    thread.join(0.2)
    assert thread.is_alive() and took == []  # the pool is empty: it waits, it does not refuse
    counters.release.set()
    beat.join(DEADLINE)
    thread.join(DEADLINE)
    assert took == [True]  # taken back from the parked calls
    assert [quota.take("GR-5", 50, DAY) for _ in range(4)] == [True] * 3 + [False]
    assert store.counters.leased("GR-5", DAY) == 50


def test_a_call_waits_for_the_block_being_leased_ahead_rather_than_be_refused(store: Store) -> None:
    counters = _Paused(store, "lease", done=True)
    quota = DailyQuota(counters, block=4, holder="hub-a")  # type: ignore[arg-type]
    assert store.counters.lease("GR-6", DAY, 72, 80) == 72  # other processes hold all but 8
    assert [quota.take("GR-6", 80, DAY) for _ in range(3)] == [True] * 3  # 1 of the first block of 4 free
    ahead = quota.ahead("GR-6", DAY)
    assert ahead is not None
    counters.pause = True
    leasing = threading.Thread(target=ahead)
    leasing.start()
    assert counters.entered.wait(DEADLINE)  # the pool's last 4 leased as the next block, not yet in hand
    assert quota.take("GR-6", 80, DAY)  # the first block's last call
    thread, took = _take_in_thread(quota, "GR-6", 80)
    thread.join(0.2)
    assert thread.is_alive() and took == []  # the pool is empty, the block on its way: it waits
    counters.release.set()
    leasing.join(DEADLINE)
    thread.join(DEADLINE)
    assert took == [True]
    assert [quota.take("GR-6", 80, DAY) for _ in range(4)] == [True] * 3 + [False]
    assert store.counters.leased("GR-6", DAY) == 80
