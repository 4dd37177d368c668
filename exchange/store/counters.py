"""Counters every hub process shares: daily quota leases and masked-filter verification counts.

They live in the store so that they survive a restart and hold hub-wide (every process on one
PostgreSQL counts into the same rows). Each change is one short write transaction that locks the
rows it changes, in a fixed order, so concurrent processes queue instead of losing counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from exchange.store.database import Database
from exchange.store.schema import MaskedFilterCountRow, QuotaLeaseRow


class Verdict(StrEnum):
    """What a masked-filter lookup may do: go ahead (a miss reserved), or be refused and why."""

    RESERVED = "reserved"
    MISSES_EXHAUSTED = "misses_exhausted"
    ENUMERATION = "enumeration"


@dataclass(frozen=True)
class Counts:
    """One scope's masked-filter lookups on a day: made, that found nothing, refused."""

    lookups: int = 0
    misses: int = 0
    refused: int = 0


def _insert_missing(s: Session, table: type[QuotaLeaseRow | MaskedFilterCountRow], rows: list[dict[str, Any]]) -> None:
    """Creates the rows that do not exist yet; one that another process created meanwhile is left as it is."""
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    s.execute(insert(table).values(rows).on_conflict_do_nothing())


class CountersStore:
    """Reads and changes the shared counters; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # Daily quotas

    def lease(self, grant_id: str, day: dt.date, want: int, quota: int) -> int:
        """Hands out up to ``want`` calls of the grant's ``quota`` for ``day``; how many (0: it is used up)."""
        with self._db.write() as s:
            _insert_missing(s, QuotaLeaseRow, [{"grant_id": grant_id, "day": day, "leased": 0}])
            row = s.scalars(
                select(QuotaLeaseRow)
                .where(QuotaLeaseRow.grant_id == grant_id, QuotaLeaseRow.day == day)
                .with_for_update()
            ).one()
            granted = max(0, min(want, quota - row.leased))
            row.leased += granted
            return granted

    def release(self, grant_id: str, day: dt.date, unused: int) -> None:
        """Gives back calls leased but not used (a process stopping cleanly)."""
        with self._db.write() as s:
            row = s.scalars(
                select(QuotaLeaseRow)
                .where(QuotaLeaseRow.grant_id == grant_id, QuotaLeaseRow.day == day)
                .with_for_update()
            ).one_or_none()
            if row is not None:
                row.leased = max(0, row.leased - unused)

    def leased(self, grant_id: str, day: dt.date) -> int:
        """Calls of the grant's quota handed out on ``day`` (used, or held by a running process)."""
        with self._db.read() as s:
            found = s.scalar(
                select(QuotaLeaseRow.leased).where(QuotaLeaseRow.grant_id == grant_id, QuotaLeaseRow.day == day)
            )
            return int(found or 0)

    # Masked-filter verifications

    def reserve_miss(
        self, day: dt.date, limited: Sequence[tuple[str, int]], patterns: Sequence[str], pattern_limit: int
    ) -> Verdict:
        """Counts a lookup as a miss in advance, unless a pattern or a scope has used up its misses.

        ``limited`` are (scope, misses allowed) pairs; ``patterns`` the masked patterns looked up,
        each allowed ``pattern_limit`` misses. A refusal is counted on every scope instead. The miss
        is given back (``refund_miss``) when the lookup finds a record; a crash keeps it (fails closed).
        """
        scopes = sorted({*(scope for scope, _ in limited), *patterns})
        with self._db.write() as s:
            rows = self._locked(s, scopes, day)
            if any(rows[p].misses >= pattern_limit for p in patterns):
                verdict = Verdict.ENUMERATION
            elif any(rows[scope].misses >= allowed for scope, allowed in limited):
                verdict = Verdict.MISSES_EXHAUSTED
            else:
                verdict = Verdict.RESERVED
            for row in rows.values():
                if verdict is Verdict.RESERVED:
                    row.lookups += 1
                    row.misses += 1
                else:
                    row.refused += 1
            return verdict

    def refund_miss(self, day: dt.date, scopes: Iterable[str]) -> None:
        """A reserved lookup found a record (or never reached the backend): it was no miss."""
        with self._db.write() as s:
            for row in self._locked(s, sorted(set(scopes)), day).values():
                row.misses = max(0, row.misses - 1)

    def count_refusal(self, day: dt.date, scopes: Iterable[str]) -> None:
        """A masked-filter lookup refused before any reservation (the grant does not allow the filter)."""
        with self._db.write() as s:
            for row in self._locked(s, sorted(set(scopes)), day).values():
                row.refused += 1

    def counts(self, scope: str, day: dt.date) -> Counts:
        with self._db.read() as s:
            row = s.get(MaskedFilterCountRow, (scope, day))
            return Counts(row.lookups, row.misses, row.refused) if row is not None else Counts()

    @staticmethod
    def _locked(s: Session, scopes: list[str], day: dt.date) -> dict[str, MaskedFilterCountRow]:
        """The rows of ``scopes`` on ``day``, created if missing, locked in scope order."""
        if not scopes:
            return {}
        fresh = [{"scope": x, "day": day, "lookups": 0, "misses": 0, "refused": 0} for x in scopes]
        _insert_missing(s, MaskedFilterCountRow, fresh)
        found = s.scalars(
            select(MaskedFilterCountRow)
            .where(MaskedFilterCountRow.scope.in_(scopes), MaskedFilterCountRow.day == day)
            .order_by(MaskedFilterCountRow.scope)
            .with_for_update()
        )
        return {row.scope: row for row in found}
