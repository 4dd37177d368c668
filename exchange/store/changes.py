"""Telling every hub process of changes: PostgreSQL NOTIFY on commit, LISTEN in each process.

A change to a grant, a member, a certificate or a catalog entry sends a
notification in the same transaction, so other processes hear of it exactly
when it is committed. Each process keeps one listening connection; when it
(re)connects it resynchronises in full, so nothing committed while it was away
is missed. The committing process itself is also told, on every backend, by the
store's ``on_commit`` listeners (what it keeps in memory is dropped there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
CHANNEL = "exchange_policy"
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
# A half-open connection would stop notifications without an error: TCP keepalives end it within ~25 s.
_KEEPALIVE = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def session_conninfo(url: str) -> str:
    """libpq's connection string for ``url``, for a connection of its own that must notice it was cut (TCP
    keepalives): the listener's, and the session lock's (``exchange.store.session_lock``)."""
    return make_conninfo(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False), **_KEEPALIVE)


def announce(session: Session, payload: str) -> None:
    """Sends ``payload`` to every listening process when ``session`` commits, and to this process's listeners."""
    session.info.setdefault(_ANNOUNCED, []).append(payload)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


_ANNOUNCED = "exchange.announced"


def install_local_changes(sessions: sessionmaker[Session], listeners: list[Callable[[str], None]]) -> None:
    """After each commit of ``sessions``, hands what it announced to ``listeners`` (in this process)."""

    def committed(session: Session) -> None:
        for payload in session.info.pop(_ANNOUNCED, ()):
            for listener in listeners:
                listener(payload)

    def rolled_back(session: Session) -> None:
        session.info.pop(_ANNOUNCED, None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)


def certificate_changed(fingerprint: str) -> str:
    return f"certificate:{fingerprint}"


def resource_changed(code: str) -> str:
    return f"resource:{code}"


def grant_changed(grant_id: str) -> str:
    return f"grant:{grant_id}"


def principal_changed(principal: str) -> str:
    return f"principal:{principal}"


def peer_changed(code: str) -> str:
    """A peering registered, suspended, resumed or ended: every process re-reads its peers."""
    return f"peer:{code}"


# Asks the process that holds the federation's sync lock for a round now (docs/federation.md).
FEDERATION_SYNC = "federation:sync"


class ChangeListener:
    """A thread that hears committed policy changes and hands each payload to ``on_change``.

    ``on_resync`` runs after every (re)connection, before any payload: the
    caller reloads its whole state there.
    """

    def __init__(self, url: str, on_change: Callable[[str], None], on_resync: Callable[[], None]) -> None:
        self._conninfo = session_conninfo(url)
        self._on_change = on_change
        self._on_resync = on_resync
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-listener", daemon=True)

    def start(self, wait_seconds: float = 10.0) -> None:
        """Starts listening; returns once the first LISTEN and resync are done (or the wait ran out)."""
        self._thread.start()
        if not self._ready.wait(wait_seconds):
            log.warning("policy listener not connected after %.0fs; still trying", wait_seconds)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._on_resync()
                    self._ready.set()
                    failures = 0
                    self._listen(conn)
            except (psycopg.Error, OSError) as e:
                delay = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("policy listener lost its connection (%s); retrying in %.1fs", e, delay)
                self._stop.wait(delay)
            except Exception:
                log.exception("policy listener failed; resynchronising")
                self._stop.wait(1.0)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stop.is_set():
            for note in conn.notifies(timeout=0.5):
                self._on_change(note.payload)
