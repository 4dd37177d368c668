"""Daily quotas counted hub-wide: each process leases blocks of a grant's day from a shared counter.

The shared counter (the store, in the hub) hands out calls in blocks with one atomic update, so the
request path touches it once per block, not once per call. A leased call counts as used: a process
that stops cleanly gives back what it did not use, one that crashes loses it, and the quota can only
run out early, never be exceeded (it fails closed). If the counter cannot answer, its error goes
to the caller and no data leaves.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol


class Leases(Protocol):
    """Where the calls of a grant's day are counted."""

    def lease(self, grant_id: str, day: dt.date, want: int, quota: int) -> int: ...

    def release(self, grant_id: str, day: dt.date, unused: int) -> None: ...


class LocalLeases:
    """Counts in this process only (a single process without a store, and the decision point's tests)."""

    def __init__(self) -> None:
        self._leased: dict[tuple[str, dt.date], int] = {}

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


class DailyQuota:
    """Takes calls from leased blocks; asks ``leases`` for another block when one is used up."""

    def __init__(self, leases: Leases | None = None, block: int = 20) -> None:
        self._leases: Leases = leases or LocalLeases()
        self._block = max(1, block)
        # Per (grant, day): calls leased and not yet used; and days found used up.
        self._held: dict[tuple[str, dt.date], int] = {}
        self._spent: set[tuple[str, dt.date]] = set()
        self._lock = threading.Lock()

    def spent(self, grant_id: str, day: dt.date) -> bool:
        """Whether this process knows the grant's quota for ``day`` to be used up (no store read)."""
        key = (grant_id, day)
        with self._lock:
            return key in self._spent and not self._held.get(key)

    def take(self, grant_id: str, quota: int, day: dt.date) -> bool:
        """Uses one call of the grant's quota for ``day``; False when none is left."""
        key = (grant_id, day)
        with self._lock:
            if not self._held.get(key):
                # A block small against the quota, so that other processes are not starved by this one.
                want = max(1, min(self._block, quota // 10))
                self._forget_before(day)
                granted = self._leases.lease(grant_id, day, want, quota)
                if granted == 0:
                    self._spent.add(key)
                    return False
                self._held[key] = granted
            self._held[key] -= 1
            return True

    def release_all(self) -> None:
        """Gives back every call leased and not used (at a clean stop)."""
        with self._lock:
            held, self._held = self._held, {}
        for (grant_id, day), unused in held.items():
            if unused:
                self._leases.release(grant_id, day, unused)

    def _forget_before(self, day: dt.date) -> None:
        """Drops what is known of days before yesterday (an old day's unused lease stays counted as used)."""
        cutoff = day - dt.timedelta(days=1)
        self._spent = {k for k in self._spent if k[1] >= cutoff}
        self._held = {k: v for k, v in self._held.items() if k[1] >= cutoff}
