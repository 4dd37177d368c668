"""Counters every hub process shares: daily quota leases and masked-filter verification counts.

They live in the store so that they survive a restart and hold hub-wide (every process on one
PostgreSQL counts into the same rows). Each change is one short write transaction that locks the
rows it changes, in a fixed order (holder, then holds, then quota_leases), so concurrent processes
queue instead of losing counts. Holders' expiries are times on the database's clock, never a
process's, so clock skew between hub processes cannot make a live holder look expired.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, CursorResult, Table, Update, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from exchange.store.database import Database
from exchange.store.schema import MaskedFilterCountRow, QuotaHolderRow, QuotaHoldRow, QuotaLeaseRow

_LEASES = cast(Table, QuotaLeaseRow.__table__)

# Hold rows written by one statement of a heartbeat.
PARK_ROWS = 1000


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


class Beat(NamedTuple):
    """What a holder's heartbeat found: whether its holder record still stood, and how many processes live."""

    renewed: bool
    processes: int


def _db_time(s: Session, seconds: float = 0.0) -> ColumnElement[Any]:
    """The database's clock now, plus ``seconds``: the one clock every hub process agrees on."""
    if s.get_bind().dialect.name == "postgresql":
        return func.now() + dt.timedelta(seconds=seconds)
    return func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{seconds:+.3f} seconds")


def _changed(s: Session, statement: Update) -> int:
    """Rows an UPDATE changed."""
    result = s.execute(statement)
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _insert_missing(s: Session, table: type[QuotaLeaseRow | MaskedFilterCountRow], rows: list[dict[str, Any]]) -> None:
    """Creates the rows that do not exist yet; one that another process created meanwhile is left as it is."""
    upsert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    s.execute(upsert(table).values(rows).on_conflict_do_nothing())


def _add_parked(s: Session, holder: str, park: dict[tuple[str, dt.date], int]) -> None:
    """Adds ``park``'s calls to the holder's hold rows, made where missing: one statement for all grants."""
    upsert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    rows = [{"holder": holder, "grant_id": g, "day": d, "parked": n} for (g, d), n in sorted(park.items())]
    for start in range(0, len(rows), PARK_ROWS):  # within the drivers' bound on parameters
        statement = upsert(QuotaHoldRow).values(rows[start : start + PARK_ROWS])
        s.execute(
            statement.on_conflict_do_update(
                index_elements=[QuotaHoldRow.holder, QuotaHoldRow.grant_id, QuotaHoldRow.day],
                set_={"parked": QuotaHoldRow.parked + statement.excluded.parked},
            )
        )


class CountersStore:
    """Reads and changes the shared counters; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # Daily quotas

    def lease(self, grant_id: str, day: dt.date, want: int, quota: int) -> int:
        """Hands out up to ``want`` calls of the grant's ``quota`` for ``day``; how many (0: it is used up)."""
        # Plain statements, no ORM object: this runs once per block of calls on the data plane's path.
        mine = (_LEASES.c.grant_id == grant_id) & (_LEASES.c.day == day)
        with self._db.write() as s:
            _insert_missing(s, QuotaLeaseRow, [{"grant_id": grant_id, "day": day, "leased": 0}])
            leased = int(s.execute(select(_LEASES.c.leased).where(mine).with_for_update()).scalar_one())
            granted = max(0, min(want, quota - leased))
            if granted:
                s.execute(update(_LEASES).where(mine).values(leased=_LEASES.c.leased + granted))
            return granted

    def release(self, grant_id: str, day: dt.date, unused: int) -> None:
        """Gives back calls leased but not used (a process stopping cleanly)."""
        with self._db.write() as s:
            self._give_back(s, {(grant_id, day): unused})

    def beat(self, holder: str, ttl: float, park: dict[tuple[str, dt.date], int]) -> Beat:
        """Renews ``holder`` until ``ttl`` seconds from now and parks ``park``'s leased calls under it.

        ``renewed`` is False when the holder's record was gone (its earlier parked calls went back to
        the pool). Holders whose time ran out are left to ``reclaim``, a transaction of its own.
        """
        with self._db.write() as s:
            renewed = _changed(
                s, update(QuotaHolderRow).where(QuotaHolderRow.holder == holder).values(expires=_db_time(s, ttl))
            )
            if not renewed:
                s.execute(insert(QuotaHolderRow).values(holder=holder, expires=_db_time(s, ttl)))
            if park:
                _add_parked(s, holder, park)
            live = s.scalar(
                select(func.count()).select_from(QuotaHolderRow).where(QuotaHolderRow.expires > _db_time(s))
            )
        return Beat(bool(renewed), max(1, int(live or 0)))

    def unpark(self, holder: str, grant_id: str, day: dt.date, calls: int) -> bool:
        """Takes ``calls`` parked calls back into use; False if the holder's record expired and they went back."""
        with self._db.write() as s:
            alive = select(QuotaHolderRow.holder).where(
                QuotaHolderRow.holder == holder, QuotaHolderRow.expires > _db_time(s)
            )
            taken = _changed(
                s,
                update(QuotaHoldRow)
                .where(
                    QuotaHoldRow.holder == holder,
                    QuotaHoldRow.grant_id == grant_id,
                    QuotaHoldRow.day == day,
                    QuotaHoldRow.parked >= calls,
                    alive.exists(),
                )
                .values(parked=QuotaHoldRow.parked - calls),
            )
            return bool(taken)

    def reclaim(self) -> int:
        """Returns the parked calls of every holder whose time ran out to the pool; how many holders."""
        with self._db.write() as s:
            gone = list(
                s.scalars(
                    select(QuotaHolderRow.holder)
                    .where(QuotaHolderRow.expires <= _db_time(s))
                    .order_by(QuotaHolderRow.holder)
                    .with_for_update(skip_locked=True)
                )
            )
            if gone:
                self._retire(s, gone)
            return len(gone)

    def retire(self, holder: str) -> None:
        """A holder stopping cleanly: its parked calls go back to the pool and its record goes."""
        with self._db.write() as s:
            s.scalars(select(QuotaHolderRow).where(QuotaHolderRow.holder == holder).with_for_update()).all()
            self._retire(s, [holder])

    def live_holders(self) -> int:
        """Holders whose time has not run out (hub processes sharing the counters)."""
        with self._db.read() as s:
            return int(
                s.scalar(select(func.count()).select_from(QuotaHolderRow).where(QuotaHolderRow.expires > _db_time(s)))
                or 0
            )

    def parked(self, holder: str | None = None) -> int:
        """Calls parked in the store (by ``holder``, or by all)."""
        with self._db.read() as s:
            query = select(func.coalesce(func.sum(QuotaHoldRow.parked), 0))
            if holder is not None:
                query = query.where(QuotaHoldRow.holder == holder)
            return int(s.scalar(query) or 0)

    def _retire(self, s: Session, holders: list[str]) -> None:
        holds = s.scalars(
            select(QuotaHoldRow)
            .where(QuotaHoldRow.holder.in_(holders))
            .order_by(QuotaHoldRow.holder, QuotaHoldRow.grant_id, QuotaHoldRow.day)
            .with_for_update()
        ).all()
        back: dict[tuple[str, dt.date], int] = {}
        for hold in holds:
            back[(hold.grant_id, hold.day)] = back.get((hold.grant_id, hold.day), 0) + hold.parked
        self._give_back(s, back)
        s.execute(delete(QuotaHoldRow).where(QuotaHoldRow.holder.in_(holders)))
        s.execute(delete(QuotaHolderRow).where(QuotaHolderRow.holder.in_(holders)))

    @staticmethod
    def _give_back(s: Session, calls: dict[tuple[str, dt.date], int]) -> None:
        """Lowers the leased count of each (grant, day) by its unused calls, rows locked in key order."""
        for (grant_id, day), unused in sorted(calls.items()):
            row = s.scalars(
                select(QuotaLeaseRow)
                .where(QuotaLeaseRow.grant_id == grant_id, QuotaLeaseRow.day == day)
                .with_for_update()
            ).one_or_none()
            if row is not None and unused:
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
