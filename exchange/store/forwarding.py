"""The replay guard of forwarded-call statements: each statement id is accepted once, by any hub process.

An id is kept until its statement expires (plus the clocks' allowed skew); the expired ones are dropped as
new ones come, so the table holds only the last minutes' statements.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete

from exchange.errors import AlreadyExists
from exchange.store.database import Database
from exchange.store.schema import ForwardedSeenRow

# Kept past its expiry as long as a receiving hub may still accept it (the clock skew it tolerates).
KEEP_PAST_EXPIRY = dt.timedelta(minutes=1)


class ForwardedStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def seen(self, statement_id: str, expires: dt.datetime) -> bool:
        """Records ``statement_id``; whether it was recorded before (a replay). One transaction."""
        now = dt.datetime.now(dt.UTC)
        try:
            with self._db.write() as s:
                s.execute(delete(ForwardedSeenRow).where(ForwardedSeenRow.expires < now - KEEP_PAST_EXPIRY))
                s.add(ForwardedSeenRow(id=statement_id[:64], expires=expires))
        except AlreadyExists:  # the store names a unique violation so
            return True
        return False
