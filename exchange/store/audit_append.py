"""Exchanges' records written straight into the log on SQLite: sequenced in the group commit's own transaction.

SQLite has one writer at a time, so a staged record would wait for the integrator's next round only to be
read back, checked, parsed, written again and deleted, under a second write transaction. Here the group
commit gives its records their places (the next sequence numbers, the logged time, leaf hashes, seals, the
sealed head) in the transaction that makes them durable, on the driver's cursor. The rules are the
integrator's (exchange.store.audit.AuditStore.integrate): logged times never go back, the head is sealed
with the entries. Records staged with administrative changes are still sequenced by the integrator; both
take SQLite's write lock, so their sequence numbers never meet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Dialect, Table, func, select, update

from audit.merkle import leaf_hash
from audit.records import AuditRecord, canonical, with_logged
from audit.seal import Sealer
from exchange.store.driver import DriverInsert
from exchange.store.schema import AuditEntryRow, AuditHeadRow, AuditSubjectRow

_ENTRIES = cast(Table, AuditEntryRow.__table__)
_SUBJECTS = cast(Table, AuditSubjectRow.__table__)
_HEAD = cast(Table, AuditHeadRow.__table__)
# The columns an entry keeps of its record, for searches.
INDEXED = ("kind", "action", "actor", "actor_department", "resource", "purpose", "outcome", "exchange_id")
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Statements:
    """The direct append's statements, compiled for one dialect."""

    last: str
    read_time: Any
    entries: DriverInsert
    subjects: DriverInsert
    head_update: str
    head_insert: DriverInsert

    @classmethod
    def of(cls, dialect: Dialect, head_id: int) -> Statements:
        last = select(func.coalesce(func.max(_ENTRIES.c.seq) + 1, 0), func.max(_ENTRIES.c.time))
        bound = update(_HEAD).where(_HEAD.c.id == head_id).values(size=0, mac=b"")
        return cls(
            str(last.compile(dialect=dialect, compile_kwargs={"literal_binds": True})),
            _ENTRIES.c.time.type.dialect_impl(dialect).result_processor(dialect, None),
            DriverInsert.of(_ENTRIES, ("seq", "leaf_hash", "record", "time", *INDEXED, "mac"), dialect),
            DriverInsert.of(_SUBJECTS, ("seq", "subject_hash"), dialect),
            str(bound.compile(dialect=dialect)),
            DriverInsert.of(_HEAD, ("id", "size", "mac"), dialect),
        )


def append(cursor: Any, sql: Statements, sealer: Sealer, head_id: int, records: Sequence[AuditRecord]) -> None:
    """Writes ``records`` as the next entries of the log on ``cursor`` (a SQLite write transaction under way)."""
    texts = [canonical(r.as_dict()) for r in records]
    first, previous = cursor.execute(sql.last).fetchone()
    if previous is not None and sql.read_time is not None:
        previous = sql.read_time(previous)
    logged = max(dt.datetime.now(dt.UTC), previous or _EARLIEST)
    stamp = logged.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    entries: list[dict[str, object]] = []
    subjects: list[dict[str, object]] = []
    leaf = b""
    for n, (record, text) in enumerate(zip(records, texts, strict=True)):
        seq, logged_text = first + n, with_logged(text, stamp)
        leaf = leaf_hash(logged_text)
        entry: dict[str, object] = {k: str(getattr(record, k)) for k in INDEXED}
        entry.update(seq=seq, leaf_hash=leaf, record=logged_text.decode(), time=logged, mac=sealer.entry(seq, leaf))
        entries.append(entry)
        subjects += [{"seq": seq, "subject_hash": h} for h in sorted(set(record.data_subjects))]
    cursor.executemany(sql.entries.sql, sql.entries.values(entries))
    if subjects:
        cursor.executemany(sql.subjects.sql, sql.subjects.values(subjects))
    size = first + len(records)
    _seal_head(cursor, sql, head_id, size, sealer.head(size, leaf))


def _seal_head(cursor: Any, sql: Statements, head_id: int, size: int, mac: bytes) -> None:
    cursor.execute(sql.head_update, (size, mac, head_id))
    if cursor.rowcount == 0:
        cursor.executemany(sql.head_insert.sql, sql.head_insert.values([{"id": head_id, "size": size, "mac": mac}]))
