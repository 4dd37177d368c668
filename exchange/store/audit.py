"""Audit store: records staged with the changes they record, the sequenced log, checkpoints.

An entry is its record plus "logged", the time the integrator gave it its place; logged times never
decrease along the log (each batch takes the later of now and the last entry's), so a verifier can
check the order of time even though callers' own clocks and commit order differ a little.

Staging: a repository method that makes an administrative change takes its record from the caller
and writes through ``RecordedWrites`` (exchange.store.recorded), which inserts the record here
(``stage_in``) in that same transaction, so a change and its audit record commit together or not at all.
Integration: one process at a time (PostgreSQL advisory lock; SQLite's single writer) moves staged
records, oldest first, into ``audit_entries`` with the next sequence numbers, in one transaction,
so the log is one gap-free sequence whatever the number of hub processes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from audit.note import Signer
from audit.pruning import PruningStatement
from audit.records import AuditRecord, canonical
from audit.seal import Sealer
from exchange.errors import Aborted, AlreadyExists, Unavailable
from exchange.models import Page
from exchange.paging import PageRequest
from exchange.store import audit_integrate, schema
from exchange.store.database import Database
from exchange.store.driver import DriverStatement
from exchange.store.paging import fetch_page
from exchange.store.schema import (
    AuditCheckpointRow,
    AuditEntryRow,
    AuditHeadRow,
    AuditNodeRow,
    AuditStagedRow,
    AuditSubjectRow,
)

# Bulk paths use the tables directly: the ORM's per-row bookkeeping costs more than the writes.
_STAGED = cast(Table, AuditStagedRow.__table__)
_ENTRIES = cast(Table, AuditEntryRow.__table__)
_SUBJECTS = cast(Table, AuditSubjectRow.__table__)
# An arbitrary constant naming the audit integrator's PostgreSQL advisory lock.
INTEGRATOR_LOCK = 0x45584155  # "EXAU"
# The one row of audit_head.
HEAD_ID = 1
# Values bound in one statement when reading many nodes or leaf blocks (within every backend's limit).
BOUND_VALUES = 500

log = logging.getLogger(__name__)
# The staging inserts kept made, by number of rows: up to this many (a loop's turn rarely holds more records).
_KEPT_ROW_COUNTS = 64
# How often a round read ahead is read again when other processes keep integrating its records first.
_READS_AGAIN = 10


@dataclass(frozen=True)
class Entry:
    seq: int
    leaf_hash: bytes
    record: str | None


@dataclass(frozen=True)
class ExchangeSeen:
    """What the audit log says of one exchange: who made it, on what, which items, and how it ended."""

    actor_department: str
    resource: str
    fields: tuple[str, ...]
    outcomes: frozenset[str]


@dataclass(frozen=True)
class EntryFilter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    department: str | None = None
    actor: str | None = None
    resource: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    exchange_id: str | None = None
    subject_hash: str | None = None
    # Owners see entries on their resources; consumers their own department's entries.
    owner_resources: tuple[str, ...] | None = None


class LogView:
    """Reads of the sequenced log within one read transaction: what they return is one state of the log (an
    export's pruning statements cover every record it shows blank, even if a pruning commits meanwhile)."""

    def __init__(self, session: Session) -> None:
        self._s = session

    def entries(self, start: int, end: int) -> list[Entry]:
        rows = self._s.scalars(
            select(AuditEntryRow).where(AuditEntryRow.seq >= start, AuditEntryRow.seq < end).order_by(AuditEntryRow.seq)
        )
        return [Entry(r.seq, bytes(r.leaf_hash), r.record) for r in rows]

    def pruning_statements(self) -> list[str]:
        """The signed pruning statements, in the order they were made (each covering more)."""
        return list(self._s.scalars(select(schema.AuditPruningRow.note).order_by(schema.AuditPruningRow.up_to)))

    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self._s.scalar(select(AuditCheckpointRow).order_by(AuditCheckpointRow.size.desc()).limit(1))
        return None if row is None else (row.size, row.note)

    def checkpoints(self, start: int, end: int) -> list[tuple[int, str]]:
        """Checkpoints with sizes in [start, end], oldest first."""
        rows = self._s.scalars(
            select(AuditCheckpointRow)
            .where(AuditCheckpointRow.size >= start, AuditCheckpointRow.size <= end)
            .order_by(AuditCheckpointRow.size)
        )
        return [(r.size, r.note) for r in rows]


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Seals rows with the log's key (audit.seal); set once the key is known (AuditLog does).
        self.sealer: Sealer | None = None
        self._staged: DriverStatement | None = None
        self._staged_rows: dict[int, str] = {}  # the staging insert by its number of rows (``stage_now``)
        self._integrating: audit_integrate.Statements | None = None

    def _staged_row(self, record: AuditRecord) -> dict[str, object]:
        """A staged row without its time: its record's canonical text and seal."""
        data = canonical(record.as_dict())
        return {"record": data.decode(), "mac": self.sealer.staged(data) if self.sealer else None}

    def stage_in(self, session: Session, records: Sequence[AuditRecord]) -> None:
        """Inserts ``records``, sealed, in ``session``'s transaction: they commit with it or not at all."""
        now = dt.datetime.now(dt.UTC)
        session.execute(insert(_STAGED), [{**self._staged_row(r), "staged_at": now} for r in records])

    def stage(self, records: list[AuditRecord]) -> None:
        """Stages records in one transaction of their own (exchanges, which change nothing else), written
        through the driver: the group commit's batches are small, and a session's own cost would dominate."""
        rows = self._staged_values(records)
        with self._db.driver_write() as cursor:
            cursor.executemany(self._staging().sql, rows)

    @property
    def stages_now(self) -> bool:
        """Whether ``stage_now`` can ever stage (SQLite); on PostgreSQL it never does."""
        return self._db.backend == "sqlite"

    def stage_now(self, records: list[AuditRecord]) -> bool:
        """``stage``, for an event loop: only if the store's write turn is free at once (Database.write_now); False,
        with nothing staged, if it is not. Raises Unavailable as ``stage`` does. The records go in one statement (a
        row of values each), which SQLite commits on its own: all of them or none."""
        rows = self._staged_values(records)
        return self._db.write_now(self._staging_rows(len(rows)), [value for row in rows for value in row])

    def _staged_values(self, records: list[AuditRecord]) -> list[Any]:
        """The driver's parameters for staging ``records`` now, a row each (``stage`` and ``stage_now``)."""
        return self._staging().values([self._staged_row(r) for r in records], {"staged_at": dt.datetime.now(dt.UTC)})

    def _staging_rows(self, count: int) -> str:
        """The staging insert with ``count`` rows of values; those of the usual sizes made once."""
        sql = self._staged_rows.get(count)
        if sql is None:
            head, values, row = self._staging().sql.rpartition(" VALUES ")
            if not values or self._staging().named:
                raise AssertionError(f"not a positional single-row insert: {head}{values}{row}")
            sql = f"{head} VALUES {', '.join([row] * count)}"
            if count <= _KEPT_ROW_COUNTS:
                self._staged_rows[count] = sql
        return sql

    def _staging(self) -> DriverStatement:
        if self._staged is None:
            self._staged = DriverStatement.insert(_STAGED, ("record", "staged_at", "mac"), self._db.engine.dialect)
        return self._staged

    def probe(self) -> None:
        """Commits a write to the audit tables that leaves nothing behind: can records be staged now?

        The row is inserted and deleted in one transaction, so no reader, the integrator included, ever
        sees it; the commit still needs what a real one needs (the write lock, space for the journal).
        """
        with self._db.write() as s:
            s.execute(insert(_STAGED), [{"record": "", "staged_at": dt.datetime.now(dt.UTC)}])
            s.execute(delete(AuditStagedRow).where(AuditStagedRow.record == ""))

    def integrate(self, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Sequences up to ``limit`` staged records; returns their (seq, leaf hash), or [] if none.

        Each staged record's seal is checked first (one the hub did not write stops integration,
        named), and the new entries and the log's head are sealed in the same transaction
        (exchange.store.audit_integrate, on the driver's cursor).
        """
        return self.integrate_sized(limit)[0]

    def integrate_sized(self, limit: int = 1000) -> tuple[list[tuple[int, bytes]], int]:
        """``integrate``, and the log's size after it, read in the same transaction (the integrator's round)."""
        sealer, sql = self._require_sealer(), self._integration()
        for _ in range(_READS_AGAIN):
            # Read, checked and parsed before the write lock: a commit waiting for it waits for less.
            with self._db.driver_read() as cursor:
                prepared = audit_integrate.prepare(cursor, sql, sealer, limit)
            if prepared.size is not None:  # nothing staged: no write transaction (an idle round's poll)
                return [], prepared.size
            try:
                with self._db.driver_write() as cursor:
                    return audit_integrate.integrate_prepared(cursor, sql, sealer, prepared)
            except audit_integrate.Moved as e:  # another process integrated some of them: rolled back, read again
                log.info("audit integration read again: %s", e)
        raise Unavailable("the audit log's staged records kept being integrated by another process; retry later")

    def _integration(self) -> audit_integrate.Statements:
        """The integrator's statements for this store's dialect, compiled on first use."""
        if self._integrating is None:
            lock = INTEGRATOR_LOCK if self._db.backend == "postgresql" else None
            self._integrating = audit_integrate.Statements.of(self._db.engine.dialect, HEAD_ID, lock)
        return self._integrating

    def _require_sealer(self) -> Sealer:
        if self.sealer is None:
            raise Unavailable("the audit log's seal key is not loaded: nothing can be integrated")
        return self.sealer

    def head(self) -> tuple[int, bytes] | None:
        """The sealed head (size, seal) the integrator last left, or None before the first entry."""
        with self._db.read() as s:
            row = s.get(AuditHeadRow, HEAD_ID)
            return None if row is None else (row.size, bytes(row.mac))

    def sealed_leaves(self, start: int, end: int) -> list[tuple[int, bytes, bytes | None]]:
        """(seq, leaf hash, seal) of entries [start, end), in order."""
        with self._db.read() as s:
            rows = s.execute(
                select(AuditEntryRow.seq, AuditEntryRow.leaf_hash, AuditEntryRow.mac)
                .where(AuditEntryRow.seq >= start, AuditEntryRow.seq < end)
                .order_by(AuditEntryRow.seq)
            )
            return [(int(q), bytes(h), None if m is None else bytes(m)) for q, h, m in rows]

    def sealed_entries(self, start: int, end: int) -> list[tuple[Entry, bytes | None]]:
        """Entries [start, end) with their seals, in order."""
        with self._db.read() as s:
            rows = s.execute(
                select(AuditEntryRow.seq, AuditEntryRow.leaf_hash, AuditEntryRow.record, AuditEntryRow.mac)
                .where(AuditEntryRow.seq >= start, AuditEntryRow.seq < end)
                .order_by(AuditEntryRow.seq)
            )
            return [(Entry(int(q), bytes(h), r), None if m is None else bytes(m)) for q, h, r, m in rows]

    def add_seals(self, seals: list[tuple[int, bytes]]) -> None:
        """Seals entries written before seals existed: (seq, seal). The caller checked them against a
        signed checkpoint first; an entry that has a seal keeps it."""
        if not seals:
            return
        stmt = (
            update(_ENTRIES)
            .where(_ENTRIES.c.seq == bindparam("at"), _ENTRIES.c.mac.is_(None))
            .values(mac=bindparam("seal"))
        )
        with self._db.write() as s:
            s.execute(stmt, [{"at": seq, "seal": mac} for seq, mac in seals])

    def seal_head(self, size: int, last_leaf: bytes) -> None:
        """Seals the head of a log written before seals existed (the caller checked it)."""
        sealer = self._require_sealer()
        with self._db.driver_write() as cursor:
            audit_integrate.seal_head(cursor, self._integration(), sealer, size, last_leaf)

    def staged_count(self) -> int:
        with self._db.read() as s:
            return s.scalar(select(func.count()).select_from(AuditStagedRow)) or 0

    def size(self) -> int:
        with self._db.read() as s:
            return s.scalar(select(func.coalesce(func.max(AuditEntryRow.seq) + 1, 0))) or 0

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes of entries [start, end), in order."""
        with self._db.read() as s:
            rows = s.execute(
                select(AuditEntryRow.seq, AuditEntryRow.leaf_hash)
                .where(AuditEntryRow.seq >= start, AuditEntryRow.seq < end)
                .order_by(AuditEntryRow.seq)
            )
            return [bytes(h) for _, h in rows]

    def node_hashes(self, level: int, indexes: list[int]) -> dict[int, bytes]:
        """Kept subtree hashes of one level, by index (those not kept yet are absent)."""
        found: dict[int, bytes] = {}
        with self._db.read() as s:
            for at in range(0, len(indexes), BOUND_VALUES):
                rows = s.execute(
                    select(AuditNodeRow.idx, AuditNodeRow.hash).where(
                        AuditNodeRow.level == level, AuditNodeRow.idx.in_(indexes[at : at + BOUND_VALUES])
                    )
                )
                found.update((int(i), bytes(h)) for i, h in rows)
        return found

    def leaf_blocks(self, firsts: list[int], width: int) -> dict[int, list[bytes]]:
        """Leaf hashes of the blocks [first, first + width), by first, in one read transaction (a range scan
        of the primary key each: one statement with many ranges is planned as a scan of the whole log)."""
        blocks: dict[int, list[bytes]] = {}
        statement = (
            select(AuditEntryRow.leaf_hash)
            .where(AuditEntryRow.seq >= bindparam("first"), AuditEntryRow.seq < bindparam("end"))
            .order_by(AuditEntryRow.seq)
        )
        with self._db.read() as s:
            for first in firsts:
                rows = s.execute(statement, {"first": first, "end": first + width}).scalars()
                blocks[first] = [bytes(h) for h in rows]
        return blocks

    def add_nodes(self, nodes: list[tuple[int, int, bytes]]) -> None:
        """Keeps subtree hashes (level, index, hash); one another process kept already is left as it is."""
        if not nodes:
            return
        rows = [{"level": level, "idx": idx, "hash": h} for level, idx, h in nodes]
        insert_ignoring = pg_insert if self._db.backend == "postgresql" else sqlite_insert
        with self._db.write() as s:
            for start in range(0, len(rows), 300):  # within every database's limit of bound values
                s.execute(insert_ignoring(AuditNodeRow).values(rows[start : start + 300]).on_conflict_do_nothing())

    @contextmanager
    def view(self) -> Iterator[LogView]:
        """Reads of the log from one snapshot, for as long as the block lasts (an export holds one)."""
        with self._db.read() as s:
            yield LogView(s)

    def entries(self, start: int, end: int) -> list[Entry]:
        with self.view() as v:
            return v.entries(start, end)

    def exchange_seen(self, exchange_id: str) -> ExchangeSeen | None:
        """What the log says of exchange ``exchange_id``: its records, integrated or staged and not yet placed
        (a consumer may object to an answer moments after it arrives); None if the log holds none."""
        # One statement: the integrator moves records from staged to placed, and two reads could miss one.
        placed = select(AuditEntryRow.record).where(
            AuditEntryRow.exchange_id == exchange_id, AuditEntryRow.kind == "exchange"
        )
        staged = select(_STAGED.c.record).where(_STAGED.c.record.contains(exchange_id))
        with self._db.read() as s:
            texts = s.scalars(union_all(placed, staged)).all()
        records = [r for r in (json.loads(t) for t in texts if t) if r.get("exchange_id") == exchange_id]
        records = [r for r in records if r.get("kind") == "exchange"]
        if not records:
            return None
        first = records[0]
        return ExchangeSeen(
            actor_department=str(first.get("actor_department", "")),
            resource=str(first.get("resource", "")),
            fields=tuple(str(f) for f in first.get("fields", [])),
            outcomes=frozenset(str(r.get("outcome", "")) for r in records),
        )

    def search(self, page: PageRequest, f: EntryFilter) -> Page[Entry]:
        with self._db.read() as s:
            stmt = select(AuditEntryRow)
            for column, value in (
                (AuditEntryRow.actor_department, f.department),
                (AuditEntryRow.actor, f.actor),
                (AuditEntryRow.resource, f.resource),
                (AuditEntryRow.purpose, f.purpose),
                (AuditEntryRow.outcome, f.outcome),
                (AuditEntryRow.exchange_id, f.exchange_id),
            ):
                if value:
                    stmt = stmt.where(column == value)
            if f.since:
                stmt = stmt.where(AuditEntryRow.time >= f.since)
            if f.until:
                stmt = stmt.where(AuditEntryRow.time < f.until)
            if f.subject_hash:
                stmt = stmt.where(
                    AuditEntryRow.seq.in_(
                        select(AuditSubjectRow.seq).where(AuditSubjectRow.subject_hash == f.subject_hash)
                    )
                )
            if f.owner_resources is not None:
                stmt = stmt.where(AuditEntryRow.resource.in_(f.owner_resources))
            return fetch_page(s, stmt, AuditEntryRow.seq, page, convert=_entry_of, parse=int)

    def prune(self, signer: Signer, made: dt.datetime, retention_days: int) -> Pruned:
        """Drops the detail of entries logged more than ``retention_days`` before ``made``: records and subject
        hashes go, leaf hashes stay, so every proof and checkpoint still verifies. In the same transaction it
        keeps a pruning statement signed by ``signer`` (the log's key) covering every entry logged before the
        cutoff, when they reach past the newest statement (so a prefix pruned before statements existed is
        covered by the next run)."""
        cutoff = made - dt.timedelta(days=retention_days)
        with self._db.write() as s:
            # Locked (PostgreSQL) before their subject rows go: a repair of the indexes (check-index --repair)
            # locks its entries the same way, so neither writes back what the other removes.
            old = select(AuditEntryRow.seq).where(AuditEntryRow.time < cutoff, AuditEntryRow.record.is_not(None))
            seqs = list(s.scalars(old.with_for_update()))
            if seqs:
                s.execute(delete(AuditSubjectRow).where(AuditSubjectRow.seq.in_(seqs)))
                s.execute(update(AuditEntryRow).where(AuditEntryRow.seq.in_(seqs)).values(**_BLANK))
            up_to = s.scalar(
                select(func.coalesce(func.max(AuditEntryRow.seq) + 1, 0)).where(AuditEntryRow.time < cutoff)
            )
            covered = s.scalar(select(func.coalesce(func.max(schema.AuditPruningRow.up_to), 0))) or 0
            if not up_to or up_to <= covered:
                return Pruned(len(seqs), None)
            statement = PruningStatement(signer.name, up_to, made, retention_days, cutoff)
            s.add(schema.AuditPruningRow(up_to=up_to, made=made, note=statement.sign(signer)))
            return Pruned(len(seqs), statement)

    def pruning_statements(self) -> list[str]:
        """The signed pruning statements, in the order they were made (each covering more)."""
        with self.view() as v:
            return v.pruning_statements()

    def add_checkpoint(self, size: int, root: bytes, note: str) -> None:
        """Keeps a checkpoint; another process may have kept the same one first, which is fine.

        A different root for a size already checkpointed would be a fork: refused loudly.
        """
        try:
            with self._db.write() as s:
                if s.get(AuditCheckpointRow, size) is None:
                    s.add(AuditCheckpointRow(size=size, root=root, note=note, issued_at=dt.datetime.now(dt.UTC)))
        except (AlreadyExists, Aborted):
            pass
        with self._db.read() as s:
            kept = s.get(AuditCheckpointRow, size)
            if kept is None or bytes(kept.root) != root:
                raise Unavailable(f"the audit log's checkpoint of size {size} disagrees with this process's tree")

    def latest_checkpoint(self) -> tuple[int, str] | None:
        with self.view() as v:
            return v.latest_checkpoint()

    def checkpoint_roots(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """(size, root) of the checkpoints with sizes in [start, end], oldest first."""
        with self._db.read() as s:
            rows = s.execute(
                select(AuditCheckpointRow.size, AuditCheckpointRow.root)
                .where(AuditCheckpointRow.size >= start, AuditCheckpointRow.size <= end)
                .order_by(AuditCheckpointRow.size)
            )
            return [(int(n), bytes(r)) for n, r in rows]

    def checkpoints(self, start: int, end: int) -> list[tuple[int, str]]:
        """Checkpoints with sizes in [start, end], oldest first."""
        with self.view() as v:
            return v.checkpoints(start, end)


def _entry_of(row: AuditEntryRow) -> Entry:
    return Entry(row.seq, bytes(row.leaf_hash), row.record)


# What pruning leaves of an entry's columns besides its seq, leaf hash, time and kind.
_BLANK = {
    "record": None,
    "action": "",
    "actor": "",
    "actor_department": "",
    "resource": "",
    "purpose": "",
    "outcome": "",
    "exchange_id": "",
}


@dataclass(frozen=True)
class Pruned:
    """What one pruning did: how many records it dropped, and the statement it signed (None if none was due)."""

    entries: int
    statement: PruningStatement | None
