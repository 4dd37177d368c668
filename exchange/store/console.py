"""The web console's sign-in links and sessions.

Every secret is kept as its SHA-256 only. A link is used by one conditional update (``used_at`` set where
it was null), so two hub processes opening the same link cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.store.database import Database
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import ConsoleLinkRow, ConsoleSessionRow

# Ended or expired sessions and used or expired links are kept this long (for support), then deleted.
KEEP_ENDED = dt.timedelta(days=7)


@dataclass(frozen=True)
class Link:
    username: str
    fingerprint: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored: whose, with which certificate, how opened, and its times."""

    secret_hash: str
    username: str
    fingerprint: str
    roles: frozenset[str]
    method: str
    csrf_token: str
    created_at: dt.datetime
    seen_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None


class ConsoleStore:
    """Links and sessions of the web console."""

    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def add_link(self, secret_hash: str, link: Link, now: dt.datetime, *, audit: AuditRecord) -> None:
        with self._recorded.write(audit) as s:
            s.add(
                ConsoleLinkRow(
                    secret_hash=secret_hash,
                    username=link.username,
                    fingerprint=link.fingerprint,
                    created_at=now,
                    expires_at=link.expires_at,
                )
            )

    def use_link(self, secret_hash: str, now: dt.datetime) -> tuple[Link | None, str]:
        """Marks a link used and returns it, or (None, why): "unknown", "used" or "expired"."""
        with self._db.write() as s:
            row = s.get(ConsoleLinkRow, secret_hash)
            if row is None:
                return None, "unknown"
            if row.used_at is not None:
                return None, "used"
            if row.expires_at <= now:
                return None, "expired"
            done = s.execute(
                update(ConsoleLinkRow)
                .where(ConsoleLinkRow.secret_hash == secret_hash, ConsoleLinkRow.used_at.is_(None))
                .values(used_at=now)
            )
            if getattr(done, "rowcount", 0) != 1:
                return None, "used"
            return Link(row.username, row.fingerprint, row.expires_at), ""

    def add_session(self, record: SessionRecord, *, audit: AuditRecord) -> None:
        with self._recorded.write(audit) as s:
            s.add(
                ConsoleSessionRow(
                    secret_hash=record.secret_hash,
                    username=record.username,
                    fingerprint=record.fingerprint,
                    roles=",".join(sorted(record.roles)),
                    method=record.method,
                    csrf_token=record.csrf_token,
                    created_at=record.created_at,
                    seen_at=record.seen_at,
                    expires_at=record.expires_at,
                )
            )

    def get_session(self, secret_hash: str) -> SessionRecord | None:
        with self._db.read() as s:
            row = s.get(ConsoleSessionRow, secret_hash)
            return None if row is None else _session_of(row)

    def touch(self, secret_hash: str, now: dt.datetime) -> None:
        """Records a request on the session (its idle expiry counts from here)."""
        with self._db.write() as s:
            s.execute(
                update(ConsoleSessionRow)
                .where(ConsoleSessionRow.secret_hash == secret_hash, ConsoleSessionRow.ended_at.is_(None))
                .values(seen_at=now)
            )

    def end(self, secret_hash: str, now: dt.datetime, *, audit: AuditRecord) -> bool:
        """Ends a session its holder signed out of, with that audit record; False if it had already ended."""
        with self._recorded.write(audit) as s:
            return _end(s, secret_hash, now)

    def expire(self, secret_hash: str, now: dt.datetime) -> bool:
        """Ends a session found over (too old, idle, its certificate or roles gone); False if it had ended.

        Housekeeping like ``touch`` and ``prune``, not a change anyone made: it carries no audit record.
        """
        with self._db.write() as s:
            return _end(s, secret_hash, now)

    def prune(self, now: dt.datetime) -> int:
        """Deletes links and sessions over for longer than ``KEEP_ENDED``; how many rows went."""
        before = now - KEEP_ENDED
        with self._db.write() as s:
            links = s.execute(delete(ConsoleLinkRow).where(ConsoleLinkRow.expires_at < before))
            sessions = s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at < before))
            return int(getattr(links, "rowcount", 0)) + int(getattr(sessions, "rowcount", 0))

    def sessions_of(self, username: str) -> list[SessionRecord]:
        with self._db.read() as s:
            rows = s.scalars(select(ConsoleSessionRow).where(ConsoleSessionRow.username == username))
            return [_session_of(r) for r in rows]


def _end(s: Session, secret_hash: str, now: dt.datetime) -> bool:
    done = s.execute(
        update(ConsoleSessionRow)
        .where(ConsoleSessionRow.secret_hash == secret_hash, ConsoleSessionRow.ended_at.is_(None))
        .values(ended_at=now)
    )
    return getattr(done, "rowcount", 0) == 1


def _session_of(row: ConsoleSessionRow) -> SessionRecord:
    return SessionRecord(
        secret_hash=row.secret_hash,
        username=row.username,
        fingerprint=row.fingerprint,
        roles=frozenset(r for r in row.roles.split(",") if r),
        method=row.method,
        csrf_token=row.csrf_token,
        created_at=row.created_at,
        seen_at=row.seen_at,
        expires_at=row.expires_at,
        ended_at=row.ended_at,
    )
