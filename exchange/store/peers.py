"""Peer hubs: registered, changed under a row lock with their audit record, listed; and each one's sync cursor.

Every change of a peering is announced to the other hub processes on its commit (``changes.peer_changed``):
they re-read their peers for the federation listener's trust at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import select

from audit.records import AuditRecord
from exchange.errors import AlreadyExists, NotFound
from exchange.federation.model import Peer, PeerRelation, PeerState
from exchange.store.changes import FEDERATION_SYNC, announce, peer_changed
from exchange.store.database import Database
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import PeerRow


def _peer_of(row: PeerRow) -> Peer:
    return Peer(
        code=row.code,
        name=row.name,
        level=row.level,
        relation=PeerRelation(row.relation),
        address=row.address,
        ca_pem=row.ca_pem,
        ca_fingerprint=row.ca_fingerprint,
        state=PeerState(row.state),
        reason=row.reason,
        registered_at=row.registered_at,
        changed_at=row.changed_at,
        offer_sequence=row.offer_sequence,
        synced_at=row.synced_at,
        sync_problem=row.sync_problem,
        log_key=row.log_key,
        witness_key=row.witness_key,
    )


def _write(row: PeerRow, peer: Peer) -> None:
    row.name, row.level, row.relation, row.address = peer.name, peer.level, peer.relation.value, peer.address
    row.ca_pem, row.ca_fingerprint, row.state, row.reason = peer.ca_pem, peer.ca_fingerprint, peer.state, peer.reason
    row.log_key, row.witness_key = peer.log_key, peer.witness_key


class PeerStore:
    """Reads and writes peers; every change of a peering commits with its audit record."""

    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def register(self, peer: Peer, *, audit: AuditRecord) -> Peer:
        """Adds a peer; an ended peering is registered afresh (its sync cursor starts again), any other refused."""
        now = dt.datetime.now(dt.UTC)
        with self._recorded.write(audit) as s:
            row = s.get(PeerRow, peer.code, with_for_update=True)
            if row is not None and row.state != PeerState.ENDED:
                raise AlreadyExists("peer", peer.code, f"it is {row.state}; end it before registering it again")
            if row is None:
                row = PeerRow(code=peer.code)
                s.add(row)
            _write(row, peer)
            row.registered_at = row.changed_at = now
            row.offer_sequence, row.synced_at, row.sync_problem = 0, None, ""
            announce(s, peer_changed(peer.code))
            s.flush()
            return _peer_of(row)

    def change(self, code: str, decide: Callable[[Peer], Peer], *, audit: AuditRecord) -> Peer:
        """Applies ``decide`` to the peer under a row lock; it raises to refuse, and nothing is written then."""
        with self._recorded.write(audit) as s:
            row = s.get(PeerRow, code, with_for_update=True)
            if row is None:
                raise NotFound("peer", code)
            _write(row, decide(_peer_of(row)))
            row.changed_at = dt.datetime.now(dt.UTC)
            announce(s, peer_changed(code))
            s.flush()
            return _peer_of(row)

    def get(self, code: str) -> Peer:
        with self._db.read() as s:
            row = s.get(PeerRow, code)
            if row is None:
                raise NotFound("peer", code)
            return _peer_of(row)

    def find(self, code: str) -> Peer | None:
        with self._db.read() as s:
            row = s.get(PeerRow, code)
            return None if row is None else _peer_of(row)

    def list(self, states: tuple[PeerState, ...] = ()) -> list[Peer]:
        with self._db.read() as s:
            stmt = select(PeerRow).order_by(PeerRow.code)
            if states:
                stmt = stmt.where(PeerRow.state.in_([x.value for x in states]))
            return [_peer_of(r) for r in s.scalars(stmt)]

    def sync_failed(self, code: str, problem: str) -> None:
        """Notes why the last pull from a peer failed (shown by `exchange peer show`); not a peering change."""
        with self._db.write() as s:
            row = s.get(PeerRow, code)
            if row is not None:
                row.sync_problem = problem[:2000]

    def ask_sync(self) -> None:
        """Asks the hub process holding the federation's sync lock for a round now (a notice; none on SQLite,
        where the one process asks itself)."""
        with self._db.write() as s:
            announce(s, FEDERATION_SYNC)
