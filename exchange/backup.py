"""Backups of the hub's store: one signed archive of every table (and, on request, the home's keys), and restore.

The archive is an uncompressed POSIX tar (pax) file holding, in this order:

- ``manifest.note``: a C2SP signed note, signed with the audit log's key (home ``audit/log.key``),
  whose text is the manifest as JSON: format and version, creation time, the store's schema
  revision (Alembic) and backend, the log's origin, and for every part its member name, SHA-256
  and (tables) its columns with their encodings and its row count;
- ``tables/<table>.jsonl``: one JSON array per row, values in the manifest's column order, rows in
  primary-key order, tables in dependency order (``Base.metadata.sorted_tables``); times are ISO 8601
  with their offset, dates ISO 8601, bytes base64, decimals text, JSON columns JSON;
- ``keys/<path>``: only when asked for, the hub's key files under its home (``ca/ca.key``...).

Every table is read in one read transaction (REPEATABLE READ on PostgreSQL), so the dump is
consistent while the hub runs. ``restore`` trusts nothing before the manifest's signature, every
part's SHA-256 and the audit log inside the archive check out; then it loads an empty database of
the same schema revision in one write transaction.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    Table,
    Time,
    TypeDecorator,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.orm import Session

from audit.merkle import CompactRange, leaf_hash
from audit.note import Checkpoint, NoteError, Signer, Verifier, open_note
from audit.pruning import Coverage, PruningError, open_statement
from audit.records import logged_of
from exchange import pki
from exchange.errors import FailedPrecondition, InvalidArgument
from exchange.store.database import MIGRATIONS, Database
from exchange.store.schema import Base

FORMAT = "exchange-hub-backup"
VERSION = 1
MANIFEST = "manifest.note"
_BATCH = 1000


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_list(items: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(f"  {_compact(i)}" for i in items) + "\n ]" if items else "[]"


# --- The manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TablePart:
    """One table's dump: its columns as (name, encoding), its row count and SHA-256."""

    table: str
    columns: tuple[tuple[str, str], ...]
    rows: int
    sha256: str

    @property
    def member(self) -> str:
        return f"tables/{self.table}.jsonl"


@dataclass(frozen=True)
class KeyPart:
    """One key file of the hub's home, by its path under the home."""

    path: str
    sha256: str

    @property
    def member(self) -> str:
        return f"keys/{self.path}"


@dataclass(frozen=True)
class Manifest:
    """What the archive holds; its text is what the audit key signs."""

    created: str
    schema_revision: str
    backend: str
    origin: str
    tables: tuple[TablePart, ...]
    keys: tuple[KeyPart, ...] = ()

    def text(self) -> str:
        """JSON, one field a line and one part a line (no blank line: the note's signatures follow one)."""
        head = (FORMAT, VERSION, self.created, self.schema_revision, self.backend, self.origin)
        names = ("format", "version", "created", "schema_revision", "backend", "origin")
        tables = [
            {"table": t.table, "columns": [list(c) for c in t.columns], "rows": t.rows, "sha256": t.sha256}
            for t in self.tables
        ]
        keys = [{"path": k.path, "sha256": k.sha256} for k in self.keys]
        lines = [f" {json.dumps(n)}: {_compact(v)}" for n, v in zip(names, head, strict=True)]
        lines += [f' "tables": {_json_list(tables)}', f' "keys": {_json_list(keys)}']
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def parse(cls, text_: str) -> Manifest:
        try:
            data = json.loads(text_)
            if (data["format"], data["version"]) != (FORMAT, VERSION):
                raise ValueError(f"it is {data['format']!r} version {data['version']!r}, not {FORMAT} {VERSION}")
            tables = tuple(
                TablePart(
                    str(t["table"]), tuple((str(n), str(k)) for n, k in t["columns"]), int(t["rows"]), str(t["sha256"])
                )
                for t in data["tables"]
            )
            keys = tuple(KeyPart(str(k["path"]), str(k["sha256"])) for k in data["keys"])
            created, revision = str(data["created"]), str(data["schema_revision"])
            return cls(created, revision, str(data["backend"]), str(data["origin"]), tables, keys)
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"the archive's manifest is malformed: {e}") from None

    def table(self, name: str) -> TablePart:
        return next(t for t in self.tables if t.table == name)


# --- Values -----------------------------------------------------------------------------------


def _encoding(column: Column[Any]) -> str:
    """How a column's values are written: by its SQL type (a TypeDecorator by the type it wraps)."""
    kind = column.type.impl_instance if isinstance(column.type, TypeDecorator) else column.type
    for cls, name in ((JSON, "json"), (DateTime, "datetime"), (Date, "date"), (Time, "time"), (LargeBinary, "bytes")):
        if isinstance(kind, cls):
            return name
    if isinstance(kind, Float | Numeric):  # Float is no Numeric in SQLAlchemy 2.1
        return "decimal" if kind.asdecimal else "float"
    return "plain"


def _columns(table: Table) -> tuple[tuple[str, str], ...]:
    return tuple((c.name, _encoding(c)) for c in table.columns)


def _encode(value: object) -> object:
    """A value as JSON, losslessly (decoded by the column's encoding)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "bytes": _b64,
    "decimal": Decimal,
    "float": float,
}


def _decode(encoding: str, value: Any) -> Any:
    if value is None:
        return None
    decoder = _DECODERS.get(encoding)
    return value if decoder is None else decoder(value)


# --- Backup -----------------------------------------------------------------------------------


def _head() -> str | None:
    """The newest schema revision this version of the hub knows."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _revision(session: Session) -> str | None:
    return MigrationContext.configure(session.connection()).get_current_revision()


def key_files(home: Path) -> dict[str, tuple[Path, bool]]:
    """The hub's key files: path under home -> (file, private)."""
    f = pki.HubFiles(home)
    files = (
        (f.ca_key, True),
        (f.ca_cert, False),
        (f.server_key, True),
        (f.server_cert, False),
        (f.audit_key, True),
        (f.audit_verifier, False),
        (f.audit_subject_key, True),
        (f.trust_bundle, False),
    )
    return {path.relative_to(home).as_posix(): (path, private) for path, private in files}


# Key files a hub may lack: the trust bundle exists only once the CA has been rotated, and the CA key
# lives elsewhere when `ca_key_file` keeps it apart (it is then backed up with whatever keeps it).
OPTIONAL_KEY_FILES = frozenset({"ca/trust.pem", "ca/ca.key"})


def _dump_table(session: Session, table: Table, out: Path) -> TablePart:
    """Writes a table's rows, in primary-key order, one JSON array a line."""
    digest, rows = hashlib.sha256(), 0
    stmt = select(table).order_by(*table.primary_key.columns)
    with out.open("wb") as f:
        for row in session.execute(stmt, execution_options={"yield_per": _BATCH}):
            values = [_encode(v) for v in row]
            line = (_compact(values) + "\n").encode()
            digest.update(line)
            f.write(line)
            rows += 1
    return TablePart(table.name, _columns(table), rows, digest.hexdigest())


def _dump(db: Database, work: Path) -> tuple[str, list[TablePart]]:
    """The schema revision and every table, read in one transaction (a consistent snapshot)."""
    with db.read() as session:  # one snapshot (REPEATABLE READ on PostgreSQL)
        revision, head = _revision(session), _head()
        if revision is None or revision != head:
            raise FailedPrecondition(
                f"the store is at schema revision {revision or '(none)'}, this hub's is {head}: run `exchange migrate`"
            )
        return revision, [_dump_table(session, t, work / f"{t.name}.jsonl") for t in Base.metadata.sorted_tables]


def _read_keys(home: Path) -> dict[str, bytes]:
    out = {}
    for name, (path, _) in key_files(home).items():
        try:
            out[name] = path.read_bytes()
        except FileNotFoundError:
            if name in OPTIONAL_KEY_FILES:
                continue
            raise FailedPrecondition(f"{path} is missing: a backup with keys needs all the hub's key files") from None
    return out


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o600
    tar.addfile(info, data)


def _write_archive(out: Path, note: str, manifest: Manifest, work: Path, keys: dict[str, bytes]) -> None:
    """Writes the tar to ``out`` (a new file, 0600); removes it again if anything fails."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FailedPrecondition(f"{out} already exists; a backup never replaces a file") from None
    mtime = dt.datetime.fromisoformat(manifest.created).timestamp()
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = note.encode()
            _add(tar, MANIFEST, io.BytesIO(data), len(data), mtime)
            for part in manifest.tables:
                path = work / f"{part.table}.jsonl"
                with path.open("rb") as rows:
                    _add(tar, part.member, rows, path.stat().st_size, mtime)
            for key in manifest.keys:
                _add(tar, key.member, io.BytesIO(keys[key.path]), len(keys[key.path]), mtime)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def backup(db: Database, signer: Signer, out: Path, home: Path | None = None) -> Manifest:
    """Writes a signed archive of every table to ``out``; with ``home``, the hub's key files too."""
    if not out.parent.is_dir():
        raise FailedPrecondition(f"{out.parent} is not a directory")
    if out.exists():
        raise FailedPrecondition(f"{out} already exists; a backup never replaces a file")
    keys = _read_keys(home) if home is not None else {}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".exchange-backup-") as tmp:
        work = Path(tmp)
        created = dt.datetime.now(dt.UTC).isoformat()
        revision, tables = _dump(db, work)
        key_parts = tuple(KeyPart(name, hashlib.sha256(data).hexdigest()) for name, data in keys.items())
        manifest = Manifest(created, revision, db.backend, signer.name, tuple(tables), key_parts)
        _write_archive(out, signer.sign(manifest.text()), manifest, work, keys)
    return manifest


# --- Reading an archive -----------------------------------------------------------------------


class Archive:
    """A backup archive opened for reading: its members by name, never extracted."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for info in tar.getmembers():
            if info.name in self.members or not info.isfile():
                raise InvalidArgument(f"the archive's member {info.name!r} is repeated or not a file")
            self.members[info.name] = info

    def open(self, member: str, what: str) -> IO[bytes]:
        info = self.members.get(member)
        f = None if info is None else self._tar.extractfile(info)
        if f is None:
            raise InvalidArgument(f"{what}: {member} is missing from the archive")
        return f

    def read(self, member: str, what: str, limit: int = 64 << 20) -> bytes:
        """A whole member, refused when larger than ``limit`` (read before it is verified)."""
        with self.open(member, what) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"{what} is larger than {limit} bytes: not an archive of this hub")
        return data

    def rows(self, part: TablePart) -> Iterator[dict[str, Any]]:
        """A table part's rows, decoded; checks its SHA-256 again when the last is read."""
        what, digest = f"table {part.table}", hashlib.sha256()
        with self.open(part.member, what) as f:
            for n, line in enumerate(f, start=1):
                digest.update(line)
                yield _row(part, line, f"{what}, row {n}")
        if digest.hexdigest() != part.sha256:
            raise InvalidArgument(f"{what}: SHA-256 does not match the manifest (the archive changed while read)")


def _row(part: TablePart, line: bytes, where: str) -> dict[str, Any]:
    try:
        values = json.loads(line)
        if not isinstance(values, list) or len(values) != len(part.columns):
            raise ValueError(f"expected {len(part.columns)} values")
        return {name: _decode(enc, v) for (name, enc), v in zip(part.columns, values, strict=True)}
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{where}: {e}") from None


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InvalidArgument(f"{path} does not exist") from None
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"{path} is not a backup archive (not a tar file: {e})") from None
    try:
        yield Archive(tar)
    except tarfile.TarError as e:
        raise InvalidArgument(f"{path} is damaged: {e}") from None
    finally:
        tar.close()


def read_manifest(archive: Archive, verifier: Verifier, key_label: str) -> Manifest:
    """The manifest, if ``verifier`` signed it and it describes this hub's tables."""
    note = archive.read(MANIFEST, "the manifest").decode("utf-8", errors="replace")
    try:
        manifest = Manifest.parse(open_note(note, verifier))
    except NoteError as e:
        raise InvalidArgument(f"the archive's signature does not verify with {key_label}: {e}") from None
    _check_tables(manifest)
    unknown = sorted(({k.path for k in manifest.keys} ^ set(key_files(Path()))) - OPTIONAL_KEY_FILES)
    if manifest.keys and unknown:
        raise InvalidArgument(f"the archive's key files are not the hub's: {', '.join(unknown)}")
    return manifest


def _check_tables(manifest: Manifest) -> None:
    schema = {t.name: _columns(t) for t in Base.metadata.sorted_tables}
    archived = {t.table: t.columns for t in manifest.tables}
    for name in sorted(schema.keys() ^ archived.keys()):
        where = "the archive" if name in archived else "this hub's schema"
        raise InvalidArgument(f"table {name}: only {where} has it (schema {manifest.schema_revision})")
    for name, columns in archived.items():
        if columns != schema[name]:
            raise InvalidArgument(f"table {name}: the archive's columns differ from this hub's schema")


def _digest(f: IO[bytes]) -> tuple[str, int]:
    digest, lines = hashlib.sha256(), 0
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
        lines += chunk.count(b"\n")
    return digest.hexdigest(), lines


def check_parts(archive: Archive, manifest: Manifest) -> None:
    """Every part is there, with the SHA-256 (and tables the row count) the manifest says; nothing else is."""
    listed = {MANIFEST} | {t.member for t in manifest.tables} | {k.member for k in manifest.keys}
    extra = sorted(archive.members.keys() - listed)
    if extra:
        raise InvalidArgument(f"the archive holds {extra[0]}, which its manifest does not list")
    parts: list[tuple[str, str, str, int | None]] = [
        (f"table {t.table}", t.member, t.sha256, t.rows) for t in manifest.tables
    ]
    parts += [(f"key file {k.path}", k.member, k.sha256, None) for k in manifest.keys]
    for what, member, sha256, rows in parts:
        with archive.open(member, what) as f:
            digest, lines = _digest(f)
        if digest != sha256:
            raise InvalidArgument(f"{what}: SHA-256 does not match the manifest")
        if rows is not None and lines != rows:
            raise InvalidArgument(f"{what}: {lines} rows, the manifest says {rows}")


# --- The audit log inside the archive ---------------------------------------------------------


@dataclass(frozen=True)
class AuditCheck:
    """What was checked of the archived audit log."""

    entries: int
    pruned: int
    checkpoints: int
    # Size and root of the newest checkpoint, whose signature was verified (0 and b"" without one).
    signed_size: int
    signed_root: bytes
    # Signed pruning statements checked, under which the pruned entries were accepted.
    statements: int = 0


class _AuditWalk:
    """Recomputes the log's tree from its entries, checking each checkpoint's root at its size on the way."""

    WHERE = "audit log in the archive"

    def __init__(self, checkpoints: Iterator[dict[str, Any]], coverage: Coverage) -> None:
        self.tree = CompactRange()
        self.coverage = coverage
        self.pruned = 0
        self.checked = 0
        self.newest: dict[str, Any] | None = None
        self._checkpoints = checkpoints
        self._next = next(checkpoints, None)
        self._settle()

    def add(self, row: dict[str, Any]) -> None:
        seq, leaf, record = row["seq"], row["leaf_hash"], row["record"]
        where = f"{self.WHERE}: entry {seq}"
        if seq != self.tree.size:
            raise InvalidArgument(f"{where}: expected entry {self.tree.size} (a gap, or entries out of order)")
        if len(leaf) != 32:
            raise InvalidArgument(f"{where}: its leaf hash is not 32 bytes")
        if record is None:
            if self.pruned != self.tree.size:
                raise InvalidArgument(f"{where}: its record is missing after entries that have theirs (hidden)")
            self._pruning(lambda: self.coverage.check_pruned(seq))
            self.pruned += 1
        elif leaf_hash(record.encode()) != leaf:
            raise InvalidArgument(f"{where}: its record does not hash to its leaf hash (edited)")
        else:
            self._pruning(lambda: self.coverage.check_kept(seq, logged_of(record)))
        self.tree.append(leaf)
        self._settle()

    def _pruning(self, check: Callable[[], None]) -> None:
        try:
            check()
        except PruningError as e:
            raise InvalidArgument(f"{self.WHERE}: {e}") from None

    def _settle(self) -> None:
        """Checks the checkpoints of the tree's current size."""
        while self._next is not None and self._next["size"] <= self.tree.size:
            size, root = self._next["size"], bytes(self._next["root"])
            if size < self.tree.size:
                raise InvalidArgument(f"{self.WHERE}: checkpoint of size {size} is out of order")
            if root != self.tree.root():
                raise InvalidArgument(
                    f"{self.WHERE}: checkpoint of size {size} has root {root.hex()} "
                    f"but the entries give {self.tree.root().hex()}"
                )
            self.newest, self.checked = self._next, self.checked + 1
            self._next = next(self._checkpoints, None)

    def finish(self, verifier: Verifier) -> AuditCheck:
        if self._next is not None:
            raise InvalidArgument(
                f"{self.WHERE}: checkpoint of size {self._next['size']}, but the archive holds "
                f"only {self.tree.size} entries"
            )
        self._pruning(lambda: self.coverage.check_within(self.tree.size))
        size, root = _verify_checkpoint(self.newest, verifier) if self.newest is not None else (0, b"")
        statements = len(self.coverage.statements)
        return AuditCheck(self.tree.size, self.pruned, self.checked, size, root, statements)


def _verify_checkpoint(row: dict[str, Any], verifier: Verifier) -> tuple[int, bytes]:
    """Checks a checkpoint row's signed note: by ``verifier``, of its log, of the row's size and root."""
    size, root = row["size"], bytes(row["root"])
    where = f"{_AuditWalk.WHERE}: checkpoint of size {size}"
    try:
        checkpoint = Checkpoint.parse(open_note(row["note"], verifier))
    except NoteError as e:
        raise InvalidArgument(f"{where}: {e}") from None
    if checkpoint.origin != verifier.name:
        raise InvalidArgument(f"{where}: it is of log {checkpoint.origin!r}, the key is {verifier.name!r}")
    if checkpoint.size != size or checkpoint.root != root:
        raise InvalidArgument(
            f"{where}: its signed note says size {checkpoint.size} and root {checkpoint.root.hex()}, "
            f"but the entries give {root.hex()}"
        )
    return size, root


def _statements(rows: Iterator[dict[str, Any]], verifier: Verifier) -> Coverage:
    """The archived pruning statements: each signed by the log's key, of its row's range, each covering more."""
    coverage = Coverage()
    for row in rows:
        where = f"{_AuditWalk.WHERE}: pruning statement of row up to {row['up_to']}"
        try:
            statement = open_statement(row["note"], verifier)
            if statement.up_to != row["up_to"]:
                raise PruningError(f"its signed note says up to {statement.up_to}")
            coverage.add(statement)
        except PruningError as e:
            raise InvalidArgument(f"{where}: {e}") from None
    return coverage


def check_audit_log(archive: Archive, manifest: Manifest, verifier: Verifier) -> AuditCheck:
    """Recomputes the archived log's Merkle tree and checks it against its checkpoints, the newest signed,
    accepting entries without their records only under the archived signed pruning statements."""
    coverage = _statements(archive.rows(manifest.table("audit_prunings")), verifier)
    walk = _AuditWalk(archive.rows(manifest.table("audit_checkpoints")), coverage)
    for row in archive.rows(manifest.table("audit_entries")):
        walk.add(row)
    return walk.finish(verifier)


# --- Restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    audit: AuditCheck
    keys: tuple[Path, ...]


def _keys_to_write(
    archive: Archive, manifest: Manifest, verifier: Verifier, home: Path
) -> list[tuple[Path, bytes, bool]]:
    """The key files to write into ``home``: all absent there, the log's key the one the archive is checked with."""
    if not manifest.keys:
        raise InvalidArgument("the archive holds no key files (it was made without --with-keys)")
    known, out = key_files(home), []
    for key in manifest.keys:
        path, private = known[key.path]
        if path.exists() or path.is_symlink():
            raise FailedPrecondition(f"{path} already exists; restore never overwrites a key file")
        out.append((path, archive.read(key.member, f"key file {key.path}"), private))
    log_key = next(data for path, data, _ in out if path == known["audit/log.key"][0])
    try:
        same = Signer.parse(log_key.decode()).verifier().encode() == verifier.encode()
    except (NoteError, ValueError):
        same = False
    if not same:
        raise InvalidArgument("key file audit/log.key: it is not the key of the log the archive was checked with")
    return out


def _prepare(db: Database, revision: str) -> None:
    """Brings a new database to the archive's schema revision; refuses one at another revision."""
    with db.read() as session:
        current = _revision(session)
    if current is None:
        present = sorted(inspect(db.engine).get_table_names())
        if present:  # not a new database: nothing is created in it
            raise FailedPrecondition(
                f"the database has tables ({', '.join(present[:3])}) but no schema revision of this hub: "
                "restore only into a new database, or one migrated by this hub"
            )
        head = _head()
        if revision != head:
            raise FailedPrecondition(
                f"the archive is of schema revision {revision}, but this hub creates databases at {head}: "
                "restore with the hub version that made the archive"
            )
        db.migrate()
        current = head
    if current != revision:
        raise FailedPrecondition(
            f"the database is at schema revision {current}, the archive at {revision}: restore into a database "
            "migrated by the hub version that made the archive"
        )


def _check_empty(session: Session) -> None:
    for table in Base.metadata.sorted_tables:
        if session.execute(select(literal(1)).select_from(table).limit(1)).first() is not None:
            raise FailedPrecondition(
                f"the database is not empty: table {table.name} has rows; restore only into a new database"
            )


def _parents_first(table: Table, rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Rows of a table that refers to itself (departments' parent), each after the row it refers to."""
    refs = [(fk.parent.name, fk.column.name) for fk in table.foreign_keys if fk.column.table is table]
    if not refs:
        return rows
    pending, out = list(rows), list[dict[str, Any]]()
    placed: set[tuple[str, object]] = set()
    while pending:
        ready = [r for r in pending if all(r[c] is None or (ref, r[c]) in placed for c, ref in refs)]
        if not ready:  # a cycle or a dangling reference: the database will say which
            return out + pending
        placed.update((ref, r[ref]) for r in ready for _, ref in refs)
        out += ready
        chosen = {id(r) for r in ready}
        pending = [r for r in pending if id(r) not in chosen]
    return out


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _reset_sequences(session: Session) -> None:
    """PostgreSQL: moves each integer primary key's sequence past the restored rows."""
    for table in Base.metadata.sorted_tables:
        key = list(table.primary_key.columns)
        if len(key) != 1 or not isinstance(key[0].type, Integer):
            continue
        found = session.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": key[0].name})
        if found is not None:
            top = session.scalar(select(func.max(key[0])))
            session.execute(
                text("SELECT setval(CAST(:s AS regclass), :v, :called)"),
                {"s": found, "v": top or 1, "called": top is not None},
            )


def _load(db: Database, archive: Archive, manifest: Manifest) -> None:
    """Inserts every table, in dependency order, in one write transaction."""
    with db.write() as session:
        _check_empty(session)
        for table in Base.metadata.sorted_tables:
            for batch in _batches(_parents_first(table, archive.rows(manifest.table(table.name)))):
                session.execute(insert(table), batch)
        if db.backend == "postgresql":
            _reset_sequences(session)


def restore(
    path: Path, verifier: Verifier, db: Database, home: Path | None = None, key_label: str = "the given key"
) -> Restored:
    """Checks an archive fully, then loads it into ``db`` (new or migrated, and empty); with ``home``, its keys."""
    with open_archive(path) as archive:
        manifest = read_manifest(archive, verifier, key_label)
        check_parts(archive, manifest)
        audit = check_audit_log(archive, manifest, verifier)
        keys = _keys_to_write(archive, manifest, verifier, home) if home is not None else []
        _prepare(db, manifest.schema_revision)
        # Keys first, the database last: a failure on either side leaves neither (the keys written here are
        # new files, checked absent above, so removing them again touches nothing of anyone else's).
        written: list[Path] = []
        try:
            for key_path, data, private in keys:
                (pki.write_secret if private else pki.write_public)(key_path, data)
                written.append(key_path)
            _load(db, archive, manifest)
        except BaseException:
            for key_path in written:
                key_path.unlink(missing_ok=True)
            raise
    return Restored(manifest, audit, tuple(p for p, _, _ in keys))
