"""The audit integrator's transaction, on the driver's cursor: staged records become the log's next entries.

Exchanges' records arrive staged by the group commit, a few per transaction; the integrator sequences them in
batches every few hundred milliseconds, under the write lock (SQLite) or the integrator's advisory lock
(PostgreSQL). Written through SQLAlchemy's session, its own bookkeeping per row cost more than the database's
work, and every call waiting for its record's commit waited for that too. A round is read, its seals checked
and its records parsed before the write lock is taken (``prepare``); under it only what needs the log's next
sequence and time is done (``integrate_prepared``), so the group commit, with calls waiting on it, waits for
less. The rules are unchanged: staged records are taken oldest first and must carry this hub's seal; logged
times never go back; each entry and the log's head are sealed in the same transaction; exactly the rows read
are removed from the staging table, each matched by id and seal (if another process integrated some meanwhile,
even if a newer record took a freed id, the round is rolled back).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import Dialect, Table, bindparam, delete, func, select, update

from audit.merkle import leaf_hash
from audit.records import with_logged
from audit.seal import Sealer
from exchange.errors import AuditTampered
from exchange.store.driver import DriverStatement
from exchange.store.schema import AuditEntryRow, AuditHeadRow, AuditStagedRow, AuditSubjectRow

_STAGED = cast(Table, AuditStagedRow.__table__)
_ENTRIES = cast(Table, AuditEntryRow.__table__)
_SUBJECTS = cast(Table, AuditSubjectRow.__table__)
_HEAD = cast(Table, AuditHeadRow.__table__)
# The columns an entry keeps of its record, for searches.
INDEXED = ("kind", "action", "actor", "actor_department", "resource", "purpose", "outcome", "exchange_id")
# Their widths (None: unbounded). A record keeps whatever it says; its search columns are cut to fit, so that a
# record quoting a caller's overlong resource code can never stop the log on a backend that enforces widths.
_WIDTHS = {k: getattr(_ENTRIES.c[k].type, "length", None) for k in INDEXED}
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Statements:
    """The integrator's statements, compiled once for one dialect."""

    head_id: int
    lock: str | None
    oldest: str
    last: str
    size: str
    read_time: Any
    entries: DriverStatement
    subjects: DriverStatement
    unstage: DriverStatement
    head_update: DriverStatement
    head_insert: DriverStatement

    @classmethod
    def of(cls, dialect: Dialect, head_id: int, lock: int | None) -> Statements:
        # Two subqueries: SQLite answers a lone max() from an index, but scans the table for two in one select.
        last = select(
            select(func.coalesce(func.max(_ENTRIES.c.seq) + 1, 0)).scalar_subquery(),
            select(func.max(_ENTRIES.c.time)).scalar_subquery(),
        )
        head = update(_HEAD).where(_HEAD.c.id == bindparam("head")).values(size=bindparam("size"), mac=bindparam("mac"))
        oldest = select(_STAGED.c.id, _STAGED.c.record, _STAGED.c.mac).order_by(_STAGED.c.id)
        size = select(func.coalesce(func.max(_ENTRIES.c.seq) + 1, 0))
        return cls(
            head_id,
            None if lock is None else f"SELECT pg_advisory_xact_lock({int(lock)})",
            str(oldest.compile(dialect=dialect)),
            str(last.compile(dialect=dialect, compile_kwargs={"literal_binds": True})),
            str(size.compile(dialect=dialect, compile_kwargs={"literal_binds": True})),
            _ENTRIES.c.time.type.dialect_impl(dialect).result_processor(dialect, None),
            _entries(dialect),
            DriverStatement.insert(_SUBJECTS, ("seq", "subject_hash"), dialect),
            DriverStatement.of(
                delete(_STAGED).where(_STAGED.c.id == bindparam("staged"), _STAGED.c.mac == bindparam("seal")),
                dialect,
            ),
            DriverStatement.of(head, dialect),
            DriverStatement.insert(_HEAD, ("id", "size", "mac"), dialect),
        )

    def staged(self, limit: int) -> str:
        """The oldest ``limit`` staged records (LIMIT reads the same on SQLite and PostgreSQL)."""
        return f"{self.oldest} LIMIT {int(limit)}"


def _entries(dialect: Dialect) -> DriverStatement:
    """The insert of a round's entries. On SQLite, their hashes and seals go to the driver as the bytes they are:
    sqlite3 stores bytes as a BLOB itself, and SQLAlchemy's conversion for them only wraps each in a memoryview
    (the same stored value, without a Python call for each)."""
    statement = DriverStatement.insert(_ENTRIES, ("seq", "leaf_hash", "record", "time", *INDEXED, "mac"), dialect)
    if dialect.name != "sqlite":
        return statement
    return replace(statement, binds={k: b for k, b in statement.binds.items() if k not in ("leaf_hash", "mac")})


class Moved(Exception):
    """Rows read for a round were integrated meanwhile by another process: the round is rolled back, read again."""


@dataclass(frozen=True)
class Prepared:
    """A round's staged records, read and checked before the write lock is taken: all an entry keeps of each
    but its place in the log (its sequence, logged time, leaf hash and seal, which are chosen under the lock)."""

    ids: list[int]
    # Their seals: a row is removed only if it still holds the record read (SQLite reuses a freed id).
    seals: list[bytes]
    records: list[bytes]
    indexed: list[dict[str, object]]
    subjects: list[list[str]]
    # With nothing staged, the log's size as read with the staged records (else None: read under the lock).
    size: int | None = None


def prepare(cursor: Any, sql: Statements, sealer: Sealer, limit: int) -> Prepared:
    """The oldest ``limit`` staged records, their seals checked, parsed for their search columns and subjects.

    Done outside the write transaction: this is most of a round's Python, and a writer waiting for the lock
    (the group commit, with calls waiting on it) should not wait for it too.
    """
    staged: Sequence[tuple[int, str, bytes | None]] = cursor.execute(sql.staged(limit)).fetchall()
    # Each record encoded once, for its seal and its entry; every seal is checked before any record is parsed.
    encoded = [record.encode() for _, record, _ in staged]
    check_staged(sealer, [(i, e, mac) for (i, _, mac), e in zip(staged, encoded, strict=True)])
    prepared = Prepared([], [], encoded, [], [])
    if not staged:
        # Nothing waits: the log's size for the tree, read here, spares the round its write transaction.
        cursor.execute(sql.size)
        return Prepared([], [], [], [], [], int(cursor.fetchone()[0] or 0))
    for staged_id, record, mac in staged:
        data = json.loads(record)
        prepared.ids.append(staged_id)
        prepared.seals.append(bytes(cast(bytes, mac)))  # check_staged refused a row without one
        prepared.indexed.append({k: str(data[k])[: _WIDTHS[k]] for k in INDEXED})
        prepared.subjects.append(sorted(set(data["data_subjects"])))
    return prepared


def integrate_prepared(
    cursor: Any, sql: Statements, sealer: Sealer, prepared: Prepared
) -> tuple[list[tuple[int, bytes]], int]:
    """Sequences ``prepared`` on ``cursor`` (a write transaction under way): their (seq, leaf), and the log's size
    once it is done, read in the same transaction, under the integrator's lock. Raises ``Moved`` (the caller rolls
    back) if not every row read is still staged: exactly the rows read are removed, each integrated once.
    """
    if sql.lock is not None:
        cursor.execute(sql.lock)
    if not prepared.ids:
        cursor.execute(sql.size)
        return [], int(cursor.fetchone()[0] or 0)
    cursor.execute(sql.last)
    first, previous = cursor.fetchone()
    if previous is not None and sql.read_time is not None:
        previous = sql.read_time(previous)
    logged = max(dt.datetime.now(dt.UTC), previous or _EARLIEST)
    stamp = logged.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out: list[tuple[int, bytes]] = []
    entries: list[dict[str, object]] = []
    subjects: list[dict[str, object]] = []
    for n, (record, indexed, hashes) in enumerate(
        zip(prepared.records, prepared.indexed, prepared.subjects, strict=True)
    ):
        seq, text = first + n, with_logged(record, stamp)
        leaf = leaf_hash(text)
        entries.append(
            {
                **indexed,
                "seq": seq,
                "leaf_hash": leaf,
                "record": text.decode(),
                "mac": sealer.entry(seq, leaf),
            }
        )
        subjects += [{"seq": seq, "subject_hash": h} for h in hashes]
        out.append((seq, leaf))
    # By id and seal: on SQLite a row staged after the table emptied takes the id of one integrated meanwhile,
    # and deleting by id alone would drop that new record and log the old one twice.
    unstage = ({"staged": i, "seal": m} for i, m in zip(prepared.ids, prepared.seals, strict=True))
    cursor.executemany(sql.unstage.sql, sql.unstage.values(unstage))
    if cursor.rowcount != len(prepared.ids):
        gone = len(prepared.ids) - cursor.rowcount
        raise Moved(f"{gone} of the {len(prepared.ids)} staged records read were integrated meanwhile")
    # The round's time is the same for every entry: converted for the driver once.
    cursor.executemany(sql.entries.sql, sql.entries.values(entries, shared={"time": logged}))
    if subjects:
        cursor.executemany(sql.subjects.sql, sql.subjects.values(subjects))
    seal_head(cursor, sql, sealer, first + len(out), out[-1][1])
    return out, first + len(out)


def check_staged(sealer: Sealer, staged: Sequence[tuple[int, bytes, bytes | None]]) -> None:
    """Refuses staged records (their encoded text) that do not carry this hub's seal: written or changed outside
    the hub."""
    for staged_id, record, mac in staged:
        if not Sealer.same(mac, sealer.staged(record)):
            raise AuditTampered(
                f"staged audit record {staged_id} does not carry this hub's seal: it was written or changed "
                "outside the hub; nothing is integrated or signed until an operator has looked"
            )


def seal_head(cursor: Any, sql: Statements, sealer: Sealer, size: int, last_leaf: bytes) -> None:
    """Sets the log's sealed head (size and last leaf) in the transaction that changed it."""
    row = {"head": sql.head_id, "id": sql.head_id, "size": size, "mac": sealer.head(size, last_leaf)}
    cursor.execute(sql.head_update.sql, sql.head_update.params(row))
    if cursor.rowcount == 0:
        cursor.execute(sql.head_insert.sql, sql.head_insert.params(row))
