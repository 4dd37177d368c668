"""Witness state: what this hub cosigned for each peer log, forks it refused, cosignatures it received.

As a witness the hub keeps, per peer origin, the last checkpoint it cosigned. It moves on only by
compare-and-set on the (size, root) it decided from, so two hub processes sharing the store cannot
both cosign different trees grown from the same one: the second finds the row changed and decides
again from the new one. Forks are kept with both checkpoints for auditors. As a log, the hub keeps the
cosignatures its witnesses returned for its own checkpoints, served with them (AuditService.GetCheckpoint).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from audit.records import AuditRecord
from audit.witnessing import Fork, Seen
from exchange.errors import AlreadyExists
from exchange.store.database import Database
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import WitnessCosignatureRow, WitnessForkRow, WitnessSeenRow


class WitnessStore:
    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def seen(self, origin: str) -> Seen | None:
        """The last checkpoint cosigned for ``origin``, or None before the first."""
        with self._db.read() as s:
            row = s.get(WitnessSeenRow, origin)
            return None if row is None else Seen(row.size, bytes(row.root), row.note)

    def advance(self, origin: str, old: Seen | None, size: int, root: bytes, note: str) -> bool:
        """Records checkpoint (size, root, note) for ``origin`` if what was seen is still ``old``.

        False when another process moved it first (the caller reads it again and decides anew).
        """
        now = dt.datetime.now(dt.UTC)
        if old is None:
            try:
                with self._db.write() as s:
                    s.add(WitnessSeenRow(origin=origin, size=size, root=root, note=note, updated_at=now))
            except AlreadyExists:
                return False
            return True
        statement = (
            update(WitnessSeenRow)
            .where(WitnessSeenRow.origin == origin, WitnessSeenRow.size == old.size, WitnessSeenRow.root == old.root)
            .values(size=size, root=root, note=note, updated_at=now)
        )
        with self._db.write() as s:
            return bool(s.execute(statement).rowcount == 1)  # type: ignore[attr-defined]

    def keep_fork(self, fork: Fork, audit: AuditRecord) -> None:
        """Keeps the evidence of ``fork``, with its audit record in the same transaction."""
        with self._recorded.write(audit) as s:
            s.add(
                WitnessForkRow(
                    origin=fork.origin,
                    seen_note=fork.seen_note,
                    offered_note=fork.offered_note,
                    detail=fork.detail,
                    detected_at=dt.datetime.now(dt.UTC),
                )
            )

    def forks(self, origin: str | None = None) -> list[Fork]:
        """The forks refused, oldest first (of one origin, when given)."""
        statement = select(WitnessForkRow).order_by(WitnessForkRow.id)
        if origin is not None:
            statement = statement.where(WitnessForkRow.origin == origin)
        with self._db.read() as s:
            return [Fork(r.origin, r.seen_note, r.offered_note, r.detail) for r in s.scalars(statement)]

    def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keeps witness ``witness``'s cosignature line on this hub's checkpoint of ``size`` (the newest wins)."""
        insert = pg_insert if self._db.backend == "postgresql" else sqlite_insert
        values = {"size": size, "witness": witness, "line": line, "received_at": dt.datetime.now(dt.UTC)}
        statement = insert(WitnessCosignatureRow).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["size", "witness"], set_={"line": line, "received_at": values["received_at"]}
        )
        with self._db.write() as s:
            s.execute(statement)

    def cosignatures(self, size: int) -> list[str]:
        """The cosignature lines received for this hub's checkpoint of ``size``, by witness name."""
        with self._db.read() as s:
            rows = s.scalars(
                select(WitnessCosignatureRow.line)
                .where(WitnessCosignatureRow.size == size)
                .order_by(WitnessCosignatureRow.witness)
            )
            return list(rows)

    def newest_cosigned(self) -> int:
        """The largest size of this hub's checkpoints that any witness cosigned (0 if none)."""
        with self._db.read() as s:
            return int(s.scalar(select(func.coalesce(func.max(WitnessCosignatureRow.size), 0))) or 0)

    def last_cosigned(self, witness: str) -> int:
        """The largest size of this hub's checkpoints that ``witness`` cosigned (0 if none): its old size."""
        with self._db.read() as s:
            found = s.scalar(
                select(func.coalesce(func.max(WitnessCosignatureRow.size), 0)).where(
                    WitnessCosignatureRow.witness == witness
                )
            )
            return int(found or 0)
