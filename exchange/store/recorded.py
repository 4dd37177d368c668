"""Recorded writes: an administrative change and its audit record, written in one transaction.

A repository method that makes an administrative change (a member, a certificate, a catalog entry, a
right, an objection, a console session) takes the change's audit record from its caller as a required
``audit=`` argument and opens ``RecordedWrites.write(audit)`` where a plain write would be: the record
is inserted, sealed, in that transaction just before it commits (``AuditStore.stage_in``), so the
change and its record commit together or not at all, and the change's log line is written once the
commit succeeded. Nothing is staged out of sight: the call site hands the record to the write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.store.audit import AuditStore
from exchange.store.database import Database

log = logging.getLogger(__name__)


class RecordedWrites:
    """Write transactions that carry the audit record of the change made in them."""

    def __init__(self, db: Database, audit: AuditStore) -> None:
        self._db = db
        self._audit = audit

    @contextmanager
    def write(self, audit: AuditRecord) -> Iterator[Session]:
        """A write transaction whose change commits with ``audit``; rolled back, neither is kept.

        The record is checked before anything is written: a change without its record is a bug, refused
        loudly, never a change the log does not know of.
        """
        if not isinstance(audit, AuditRecord):
            raise TypeError(f"an administrative change must carry its audit record, not {type(audit).__name__}")
        with self._db.write() as session:
            yield session
            self._audit.stage_in(session, [audit])
        log.info("%s %s %s", audit.kind, audit.action, audit.subject, extra={"event": audit.as_dict()})
