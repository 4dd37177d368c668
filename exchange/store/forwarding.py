"""The replay guard of forwarded-call statements: each statement id is accepted once, by any hub process.

An id is kept until its statement expires (plus the clocks' allowed skew); the expired ones are dropped as
new ones come, at most every ``PURGE_SECONDS`` in each process (one delete per call cost as much as a third of
the guard's write), so the table holds only the last minutes' statements. Keeping an expired id a little
longer is harmless: a replay of an expired statement is refused for its expiry anyway.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from sqlalchemy import delete

from exchange.errors import AlreadyExists
from exchange.store.database import Database
from exchange.store.schema import ForwardedSeenRow

# Kept past its expiry as long as a receiving hub may still accept it (the clock skew it tolerates).
KEEP_PAST_EXPIRY = dt.timedelta(minutes=1)
# How often a process drops the expired ids, at most (with the write of a new one).
PURGE_SECONDS = 10.0


class ForwardedStore:
    def __init__(self, db: Database, purge_seconds: float = PURGE_SECONDS) -> None:
        self._db = db
        self.purge_seconds = purge_seconds
        self._lock = threading.Lock()
        self._purged = -float("inf")  # monotonic time of this process's last purge

    def seen(self, statement_id: str, expires: dt.datetime) -> bool:
        """Records ``statement_id``; whether it was recorded before (a replay). One transaction."""
        now = dt.datetime.now(dt.UTC)
        purge = self._purge_due()
        try:
            with self._db.write() as s:
                if purge:
                    s.execute(delete(ForwardedSeenRow).where(ForwardedSeenRow.expires < now - KEEP_PAST_EXPIRY))
                s.add(ForwardedSeenRow(id=statement_id[:64], expires=expires))
        except AlreadyExists:  # the store names a unique violation so
            return True
        return False

    def _purge_due(self) -> bool:
        """Whether this call drops the expired ids (the first call, then one every ``purge_seconds``)."""
        with self._lock:
            now = time.monotonic()
            if now - self._purged < self.purge_seconds:
                return False
            self._purged = now
            return True
