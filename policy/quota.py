"""Daily quotas counted hub-wide: each process leases blocks of a grant's day from a shared counter.

The shared counter (the store, in the hub) hands out calls in blocks with one atomic update, so the
request path touches it once per block, not once per call. A leased call counts as used until it is
given back. If the counter cannot answer, its error goes to the caller and no data leaves.

A crashed process must not keep its leases for the rest of the day. So every few seconds each process
beats (``beat``): it renews its holder record, whose expiry is set on the counter's clock (the
database's, so skew between processes does not matter), and parks the calls it leased and has not
used under that record. A parked call is one the process promised not to use: to use it again it
takes it back with one write that succeeds only while its record stands (``unpark``). When a process
stops beating, any other process's beat returns its parked calls to the pool once its record expired.
What a crash still keeps from the pool is the calls taken into use since the last beat and not used
(at most one block per grant in use, two while the next is leased ahead): they stay counted as used for
that day, so a crash can only end a grant's day a little early, never let it run over (it fails closed).

A block starts at the configured size and doubles while a grant's blocks last under a second, up to
sixteen times that size and never more than a tenth of the quota, so a busy grant costs the counter a write
every few hundred calls rather than every twenty, and a quiet one still keeps little out of the pool.

The beat also counts the live holders, ``processes``: the decision point gives each process an equal
share of a grant's rate per second, so the rate holds hub-wide without asking the store per call.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Protocol


class Leases(Protocol):
    """Where the calls of a grant's day are counted, and which holders park unused calls there."""

    def lease(self, grant_id: str, day: dt.date, want: int, quota: int) -> int: ...

    def release(self, grant_id: str, day: dt.date, unused: int) -> None: ...

    def leased(self, grant_id: str, day: dt.date) -> int: ...

    def beat(self, holder: str, ttl: float, park: dict[tuple[str, dt.date], int]) -> tuple[bool, int]: ...

    def unpark(self, holder: str, grant_id: str, day: dt.date, calls: int) -> bool: ...

    def reclaim(self) -> int: ...

    def retire(self, holder: str) -> None: ...


def holder_id() -> str:
    """A name for this process's holder record: host and process id for an operator, and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LocalLeases:
    """Counts in this process only (a single process without a store, and the decision point's tests)."""

    def __init__(self) -> None:
        self._leased: dict[tuple[str, dt.date], int] = {}
        self._parked: dict[tuple[str, str, dt.date], int] = {}

    def lease(self, grant_id: str, day: dt.date, want: int, quota: int) -> int:
        cutoff = day - dt.timedelta(days=1)  # callers' days may differ by one; older days go
        self._leased = {k: v for k, v in self._leased.items() if k[1] >= cutoff}
        leased = self._leased.get((grant_id, day), 0)
        granted = max(0, min(want, quota - leased))
        self._leased[(grant_id, day)] = leased + granted
        return granted

    def release(self, grant_id: str, day: dt.date, unused: int) -> None:
        key = (grant_id, day)
        if key in self._leased:
            self._leased[key] = max(0, self._leased[key] - unused)

    def leased(self, grant_id: str, day: dt.date) -> int:
        return self._leased.get((grant_id, day), 0)

    def beat(self, holder: str, ttl: float, park: dict[tuple[str, dt.date], int]) -> tuple[bool, int]:
        for (grant_id, day), calls in park.items():
            key = (holder, grant_id, day)
            self._parked[key] = self._parked.get(key, 0) + calls
        return True, 1

    def unpark(self, holder: str, grant_id: str, day: dt.date, calls: int) -> bool:
        key = (holder, grant_id, day)
        if self._parked.get(key, 0) < calls:
            return False
        self._parked[key] -= calls
        return True

    def reclaim(self) -> int:
        return 0  # holders in one process stop together

    def retire(self, holder: str) -> None:
        for key in [k for k in self._parked if k[0] == holder]:
            self.release(key[1], key[2], self._parked.pop(key))


# A block used up sooner than this (seconds) makes the next one twice as large, up to _GROWTH times the setting.
_BUSY = 1.0
_GROWTH = 16
# Longest wait (seconds) at a time for this process's own calls being leased ahead or parked.
_WAIT = 1.0


class DailyQuota:
    """Takes calls from leased blocks; asks ``leases`` for another block when one is used up."""

    def __init__(self, leases: Leases | None = None, block: int = 20, holder: str | None = None) -> None:
        self._leases: Leases = leases or LocalLeases()
        self._block = max(1, block)
        self.holder = holder or holder_id()
        # Live hub processes, as last counted by a beat: each gets an equal share of a grant's rate.
        self.processes = 1
        # Per (grant, day): calls leased and free to use; calls parked in the counter; days found used up
        # since the last beat, with the calls the counter had handed out then.
        self._free: dict[tuple[str, dt.date], int] = {}
        self._parked: dict[tuple[str, dt.date], int] = {}
        self._spent: dict[tuple[str, dt.date], int] = {}
        self._lock = threading.Lock()
        # Notified when calls this process leased ahead or parked are back in hand (see ``take``).
        self._arrived = threading.Condition(self._lock)
        self._parking: set[tuple[str, dt.date]] = set()
        # Per (grant, day): the block and quota last leased with, and the keys whose next block is being leased.
        self._sizes: dict[tuple[str, dt.date], tuple[int, int]] = {}
        self._leasing: set[tuple[str, dt.date]] = set()
        # Per (grant, day): when its last block was leased (time.monotonic()), to grow the blocks of a busy grant.
        self._leased_at: dict[tuple[str, dt.date], float] = {}

    def spent(self, grant_id: str, day: dt.date) -> bool:
        """Whether this process knows the grant's quota for ``day`` to be used up (no store read)."""
        key = (grant_id, day)
        with self._lock:
            return key in self._spent and not self._free.get(key) and not self._parked.get(key)

    def used(self, grant_id: str, day: dt.date) -> int:
        """Calls of the grant's day the counter had handed out when this process found it used up."""
        with self._lock:
            return self._spent.get((grant_id, day), 0)

    def take(self, grant_id: str, quota: int, day: dt.date) -> bool:
        """Uses one call of the grant's quota for ``day``; False when none is left.

        When the pool is empty while this process's own calls of that day are on their way (a block leased
        ahead, free calls being parked by a beat), it waits for them rather than refuse a call the quota
        still allows.
        """
        key = (grant_id, day)
        with self._lock:
            while not self._free.get(key):
                want = self._next_block(key, quota)
                self._forget_before(day)
                got = self._unpark(key, want) or self._leases.lease(grant_id, day, want, quota)
                if got:
                    self._free[key] = got
                    self._sizes[key] = (want, quota)
                    self._leased_at[key] = time.monotonic()
                elif key in self._leasing or key in self._parking:
                    self._arrived.wait(_WAIT)
                else:
                    self._spent[key] = self._leases.leased(grant_id, day)
                    return False
            self._free[key] -= 1
            return True

    def take_held(self, grant_id: str, day: dt.date) -> bool:
        """Uses one call of a block this process holds, without waiting; False (nothing used) when that
        would need the shared counter, or the lock is held (by a thread writing to the counter)."""
        key = (grant_id, day)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not self._free.get(key):
                return False
            self._free[key] -= 1
            return True
        finally:
            self._lock.release()

    def ahead(self, grant_id: str, day: dt.date) -> Callable[[], None] | None:
        """When half a block is left: the work (to run off the event loop) that leases the next block ahead
        of need, so that calls taking from held blocks do not run out and wait; None otherwise, or if under way."""
        key = (grant_id, day)
        with self._lock:
            size = self._sizes.get(key)
            if size is None or key in self._leasing or self._free.get(key, 0) > size[0] // 2:
                return None
            self._leasing.add(key)
            size = self._sizes[key] = (self._next_block(key, size[1]), size[1])
            self._leased_at[key] = time.monotonic()
        return partial(self._lease_ahead, key, *size)

    def _next_block(self, key: tuple[str, dt.date], quota: int) -> int:
        """The size of the grant's next block: doubled when the last one lasted under a second, within a tenth
        of the quota (other processes are not starved by this one) and sixteen times the configured block."""
        first = max(1, min(self._block, quota // 10))
        last = self._sizes.get(key, (first, quota))[0]
        if time.monotonic() - self._leased_at.get(key, -_BUSY) >= _BUSY:
            return first
        return max(first, min(last * 2, self._block * _GROWTH, quota // 10))

    def _lease_ahead(self, key: tuple[str, dt.date], want: int, quota: int) -> None:
        """Leases a block outside the lock (the counter's update is atomic), then adds it to the free calls."""
        try:
            got = self._leases.lease(key[0], key[1], want, quota)
            with self._lock:
                self._free[key] = self._free.get(key, 0) + got
        finally:
            with self._lock:
                self._leasing.discard(key)
                self._arrived.notify_all()

    def beat(self, ttl: float) -> None:
        """Renews this process's holder record for ``ttl`` seconds and parks its free calls under it.

        Calls are held back while they are being parked (neither used nor taken back: a call needing
        one meanwhile leases a block, and waits for the beat if the pool is empty), so the quota lock is
        not held over the store's write. Then the parked calls of holders that stopped beating go back.
        """
        with self._lock:
            park = {k: n for k, n in self._free.items() if n}
            self._parking = set(park)
            self._free = {}
            self._spent = {}  # calls may have come back to the pool since (a stopped process's): ask again
        renewed = True
        try:
            renewed, self.processes = self._leases.beat(self.holder, ttl, park)
        finally:  # if the write failed they may be parked or not: kept as parked, taking them back will tell
            with self._lock:
                if not renewed:  # the record had expired: what was parked before went back to the pool
                    self._parked = {}
                for key, calls in park.items():
                    self._parked[key] = self._parked.get(key, 0) + calls
                self._parking = set()
                self._arrived.notify_all()
        self._leases.reclaim()

    def release_all(self) -> None:
        """Gives back every call leased and not used, free or parked (at a clean stop)."""
        with self._lock:
            free, self._free = self._free, {}
            self._parked = {}
        for (grant_id, day), unused in free.items():
            if unused:
                self._leases.release(grant_id, day, unused)
        self._leases.retire(self.holder)

    def _unpark(self, key: tuple[str, dt.date], want: int) -> int:
        """Takes up to ``want`` of this process's parked calls back into use; 0 if none (or they expired)."""
        parked = self._parked.get(key, 0)
        if not parked:
            return 0
        calls = min(parked, want)
        if not self._leases.unpark(self.holder, key[0], key[1], calls):
            del self._parked[key]  # the record expired while this process could not beat: they went back
            return 0
        self._parked[key] = parked - calls
        return calls

    def _forget_before(self, day: dt.date) -> None:
        """Drops what is known of days before yesterday (an old day's unused lease stays counted as used)."""
        cutoff = day - dt.timedelta(days=1)
        self._spent = {k: v for k, v in self._spent.items() if k[1] >= cutoff}
        self._free = {k: v for k, v in self._free.items() if k[1] >= cutoff}
        self._parked = {k: v for k, v in self._parked.items() if k[1] >= cutoff}
        self._sizes = {k: v for k, v in self._sizes.items() if k[1] >= cutoff}
        self._leased_at = {k: v for k, v in self._leased_at.items() if k[1] >= cutoff}
