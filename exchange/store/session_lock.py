"""One hub process at a time does a job: a PostgreSQL advisory lock held on a connection of its own.

Several hub processes share one store (``exchange serve --workers N``, or hubs on several hosts). A job
that must run in one of them only (the federation's sync rounds) is done by whichever holds the lock.
The lock is a session-level advisory lock, so the database ends it with the holder's connection: a
holder that stops, crashes or is killed frees it at once (the kernel closes its socket), and one whose
host vanishes within the connection's TCP keepalive (about 25 s). A holder asks ``held`` before each
piece of the job; that checks the connection with a round trip, so a holder whose connection was cut
stops within one piece, and the others take the lock at their next try. No clock is compared across
processes and no row needs renewing.

On SQLite one process serves the store: ``Solo`` holds the lock whenever asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import psycopg

from exchange.store.changes import session_conninfo

log = logging.getLogger(__name__)


class Solo:
    """The lock where one process serves the store: always held."""

    def held(self) -> bool:
        return True

    @property
    def holding(self) -> bool:
        return True

    def release(self) -> None:
        pass


class SessionLock:
    """A PostgreSQL session advisory lock, taken when free and kept while its connection lives."""

    def __init__(self, url: str, key: int, what: str) -> None:
        self._conninfo = session_conninfo(url)
        self._key = key
        self._what = what
        self._guard = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._held = False

    def held(self) -> bool:
        """Whether this process holds the lock now: it takes it if free (blocking: a round trip or a connect)."""
        with self._guard:
            try:
                return self._check()
            except (psycopg.Error, OSError) as e:
                if self._held:
                    log.warning("no longer holding the %s: its connection failed (%s)", self._what, e)
                self._close()
                return False

    @property
    def holding(self) -> bool:
        """Whether this process held the lock at its last ``held`` (no round trip: for a metrics scrape)."""
        return self._held

    def _check(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
            self._held = False
        if self._held:
            self._conn.execute("SELECT 1")  # the lock lives as long as this session
            return True
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        self._held = bool(row and row[0])
        if self._held:
            log.info("process %d now holds the %s", os.getpid(), self._what)
        return self._held

    def release(self) -> None:
        """Gives the lock up (a clean stop): another process takes it at its next try."""
        with self._guard:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                self._conn.close()
        self._conn, self._held = None, False


def session_lock(url: str, backend: str, key: int, what: str) -> SessionLock | Solo:
    """The lock for a job on this store: a session lock on PostgreSQL, ``Solo`` on SQLite."""
    return SessionLock(url, key, what) if backend == "postgresql" else Solo()
