"""``exchange backup`` and ``exchange restore``: a signed archive of the store, checked before anything is loaded."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text, update

from audit.merkle import leaf_hash
from audit.note import Signer
from exchange import backup
from exchange import models as m
from exchange.cli.main import main
from exchange.errors import InvalidArgument, Unavailable
from exchange.store import Database
from exchange.store.schema import AuditEntryRow, Base
from tests.harness import AUTHORITY, POLICE, RunningHub, base_settings, identity_spec, running_hub

REGISTRY = m.Department(
    "11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY, parent_code=AUTHORITY.code
)
Rows = dict[str, list[tuple[Any, ...]]]


def _quiet(*argv: str) -> tuple[int, str]:
    """Runs the command, returning its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _as(hub: RunningHub, identity: Path, *argv: str) -> str:
    code, out = _quiet("--hub", hub.settings.hub_address, "--identity", str(identity), *argv)
    assert code == 0, out
    return out


def _populate(hub: RunningHub) -> None:
    """Departments (one under another), people, a system, a published entry, a request, a grant, audit entries."""
    hub.add_department(POLICE)
    hub.add_department(REGISTRY)
    owner = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    clerk = hub.add_person("bdc-clerk", REGISTRY.code, m.Role.CONSUMER)
    manager = hub.add_person("sm-lin", AUTHORITY.code, m.Role.SHARE_MANAGER)
    hub.add_system("bdc-djxt", REGISTRY.code)
    hub.publish(owner, identity_spec())
    apply = ["request", "apply", "--resource", "10101/350200000001", "--purpose", "不动产转移登记"]
    apply += ["--legal-basis", "细则第十一条", "--field", "name", "--field", "id_number", "--system", "bdc-djxt"]
    request_id = json.loads(_as(hub, clerk, "--json", *apply))["id"]
    _as(hub, owner, "request", "approve", request_id, "--mask", "id_number=id_number", "--reason", "同意")
    _as(hub, manager, "grant", "issue", request_id, "--daily-quota", "50")


def _tables(url: str) -> Rows:
    """Every table's rows, in primary-key order."""
    db = Database(url)
    try:
        with db.read() as s:
            return {
                t.name: [
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in s.execute(select(t).order_by(*t.primary_key.columns))
                ]
                for t in Base.metadata.sorted_tables
            }
    finally:
        db.dispose()


def _row_count(url: str) -> int:
    return sum(len(rows) for rows in _tables(url).values())


@dataclass(frozen=True)
class Source:
    """A populated hub's home and database, its archives, and its rows when they were made."""

    home: Path
    url: str
    archive: Path
    with_keys: Path
    rows: Rows
    warning: str

    @property
    def key(self) -> Path:
        return self.home / "audit" / "log.pub"

    @property
    def signer(self) -> Signer:
        return Signer.parse((self.home / "audit" / "log.key").read_text())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    root = tmp_path_factory.mktemp("backup")
    settings = base_settings(root / "hub")
    with running_hub(settings) as hub:
        _populate(hub)
        hub.hub.audit.flush()
        archive, with_keys = root / "hub.tar", root / "hub-with-keys.tar"
        code, _ = _quiet("--home", str(settings.home), "backup", "--out", str(archive))  # while the hub runs
        assert code == 0
        rows = _tables(settings.effective_database_url)
        warning = io.StringIO()
        with contextlib.redirect_stderr(warning):
            code, _ = _quiet("--home", str(settings.home), "backup", "--out", str(with_keys), "--with-keys")
        assert code == 0
    yield Source(settings.home, settings.effective_database_url, archive, with_keys, rows, warning.getvalue())


def _fresh(tmp_path: Path, name: str = "restored") -> tuple[Path, str]:
    """A new home with a migrated, empty SQLite database."""
    home = tmp_path / name
    code, _ = _quiet("--home", str(home), "migrate")
    assert code == 0
    return home, f"sqlite:///{home / 'exchange.db'}"


def _restore(home: Path, archive: Path, key: Path, *flags: str) -> tuple[int, str]:
    return _quiet("--home", str(home), "restore", str(archive), "--key", str(key), *flags)


@pytest.fixture(autouse=True)
def _default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each home's own SQLite database unless a test says otherwise."""
    monkeypatch.delenv("EXCHANGE_DATABASE_URL", raising=False)


# --- Round trips ------------------------------------------------------------------------------


def test_round_trip_on_sqlite(source: Source, tmp_path: Path) -> None:
    home, url = _fresh(tmp_path)
    code, out = _restore(home, source.archive, source.key)
    assert code == 0, out
    assert "every part's SHA-256 matches" in out and "checkpoints match it" in out
    restored = _tables(url)
    assert restored == source.rows
    assert all(source.rows[t] for t in ("departments", "people", "systems", "resources", "grants", "share_events"))
    assert source.rows["audit_entries"] and source.rows["audit_checkpoints"]
    assert not (home / "ca").exists()  # no keys without --with-keys


def test_round_trip_from_sqlite_into_postgresql(
    source: Source, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCHANGE_DATABASE_URL", postgres_url)
    code, out = _restore(tmp_path / "pg-home", source.archive, source.key)  # a new database: migrated first
    assert code == 0, out
    assert _tables(postgres_url) == source.rows
    db = Database(postgres_url)
    try:
        with db.write() as s:  # sequences continue after the restored rows (nextval writes)
            for table in ("departments", "people", "share_events"):
                top = max(row[0] for row in source.rows[table])
                after = s.scalar(text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"))
                assert after == top + 1, table
    finally:
        db.dispose()


def test_round_trip_from_postgresql_into_sqlite(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = base_settings(tmp_path / "pg-hub", postgres_url)
    archive = tmp_path / "pg.tar"
    with running_hub(settings) as hub:
        hub.add_department(POLICE)
        hub.publish(hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD), identity_spec())
        hub.hub.audit.flush()
        monkeypatch.setenv("EXCHANGE_DATABASE_URL", postgres_url)
        assert _quiet("--home", str(settings.home), "backup", "--out", str(archive))[0] == 0
        rows = _tables(postgres_url)
    monkeypatch.delenv("EXCHANGE_DATABASE_URL")
    home, url = _fresh(tmp_path)
    code, out = _restore(home, archive, settings.home / "audit" / "log.pub")
    assert code == 0, out
    assert _tables(url) == rows
    assert '"backend": "postgresql"' in _members(archive)[backup.MANIFEST].decode()


def test_backup_writes_a_private_file_and_never_replaces_one(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    assert source.archive.stat().st_mode & 0o777 == 0o600
    assert main(["--home", str(source.home), "backup", "--out", str(source.archive)]) == 2
    assert "already exists" in capsys.readouterr().err
    names = list(_members(source.archive))
    assert names[0] == backup.MANIFEST and not any(n.startswith("keys/") for n in names)
    assert names[1:] == [f"tables/{t.name}.jsonl" for t in Base.metadata.sorted_tables]


# --- Refusals ---------------------------------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = f.read()
        return out


def _pack(members: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _with_table(members: dict[str, bytes], table: str, data: bytes, signer: Signer | None) -> dict[str, bytes]:
    """``table`` replaced by ``data``, its hash and row count in the manifest updated; re-signed by ``signer``,
    or the old signature kept (which then no longer verifies)."""
    text_, _, signatures = members[backup.MANIFEST].decode().rpartition("\n\n")
    manifest = backup.Manifest.parse(text_ + "\n")
    digest = hashlib.sha256(data).hexdigest()
    rows = data.count(b"\n")
    tables = tuple(replace(t, sha256=digest, rows=rows) if t.table == table else t for t in manifest.tables)
    new_text = replace(manifest, tables=tables).text()
    note = signer.sign(new_text) if signer else f"{new_text}\n{signatures}"
    return {**members, backup.MANIFEST: note.encode(), f"tables/{table}.jsonl": data}


def _edit_record(data: bytes, *, rehash_leaf: bool) -> bytes:
    """The audit entries with one record changed (and, if asked, its leaf hash recomputed to match)."""
    lines = data.decode().splitlines(keepends=True)
    for n, line in enumerate(lines):
        row = json.loads(line)
        if row[2] and "create_department" in row[2]:
            row[2] = row[2].replace("create_department", "delete_department")
            if rehash_leaf:
                row[1] = base64.b64encode(leaf_hash(row[2].encode())).decode()
            lines[n] = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
            return "".join(lines).encode()
    raise AssertionError("no create_department record")


def _flip_byte(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = bytearray(members["tables/departments.jsonl"])
    data[data.index(b"city")] = ord("C")
    return {**members, "tables/departments.jsonl": bytes(data)}


def _rehashed_not_resigned(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = members["tables/departments.jsonl"].replace("厦门市公安局".encode(), "厦门市财政局".encode())
    return _with_table(members, "departments", data, None)


def _record_signed_by_another(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = _edit_record(members["tables/audit_entries.jsonl"], rehash_leaf=False)
    return _with_table(members, "audit_entries", data, Signer.generate("exchange.local/audit"))


def _record_signed_by_the_hub(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = _edit_record(members["tables/audit_entries.jsonl"], rehash_leaf=False)
    return _with_table(members, "audit_entries", data, src.signer)


def _record_and_leaf_signed_by_the_hub(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = _edit_record(members["tables/audit_entries.jsonl"], rehash_leaf=True)
    return _with_table(members, "audit_entries", data, src.signer)


def _blank_records(data: bytes, below: int) -> bytes:
    """The audit entries with the records of entries before ``below`` dropped, as pruning would."""
    rows = [json.loads(line) for line in data.decode().splitlines()]
    for row in rows:
        if row[0] < below:
            row[2] = None
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode()


def _records_blanked_signed_by_the_hub(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    data = _blank_records(members["tables/audit_entries.jsonl"], 2)
    return _with_table(members, "audit_entries", data, src.signer)


def _unlisted_member(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    return {**members, "tables/extra.jsonl": b"[]\n"}


def _missing_part(members: dict[str, bytes], src: Source) -> dict[str, bytes]:
    return {k: v for k, v in members.items() if k != "tables/grants.jsonl"}


TAMPERING: dict[str, tuple[Callable[[dict[str, bytes], Source], dict[str, bytes]], str]] = {
    "one byte of a table changed": (_flip_byte, "table departments: SHA-256 does not match the manifest"),
    "a row edited and its hash updated, not re-signed": (_rehashed_not_resigned, "signature does not verify"),
    "a record edited, re-signed by another key": (_record_signed_by_another, "signature does not verify"),
    "a record edited, re-signed by the hub's key": (
        _record_signed_by_the_hub,
        "audit log in the archive: entry 1: its record does not hash to its leaf hash",
    ),
    "a record and its leaf edited, re-signed by the hub's key": (
        _record_and_leaf_signed_by_the_hub,
        "audit log in the archive: checkpoint of size",
    ),
    "records blanked without a pruning statement, re-signed by the hub's key": (
        _records_blanked_signed_by_the_hub,
        "audit log in the archive: entry 0: its record is missing and no signed pruning statement covers it",
    ),
    "a member not in the manifest": (_unlisted_member, "tables/extra.jsonl, which its manifest does not list"),
    "a part missing": (_missing_part, "table grants: tables/grants.jsonl is missing from the archive"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_archive_is_refused_and_nothing_is_written(
    case: str, source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, message = TAMPERING[case]
    archive = _pack(tamper(_members(source.archive), source), tmp_path / "tampered.tar")
    home, url = _fresh(tmp_path)
    assert _restore(home, archive, source.key)[0] == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert _row_count(url) == 0


def test_the_leaf_and_root_mismatch_names_both_roots(source: Source, tmp_path: Path) -> None:
    members = _record_and_leaf_signed_by_the_hub(_members(source.archive), source)
    archive = _pack(members, tmp_path / "tampered.tar")
    with backup.open_archive(archive) as opened, pytest.raises(InvalidArgument) as refused:
        manifest = backup.read_manifest(opened, source.signer.verifier(), "log.pub")
        backup.check_parts(opened, manifest)
        backup.check_audit_log(opened, manifest, source.signer.verifier())
    assert " has root " in refused.value.message and " but the entries give " in refused.value.message


def test_a_wrong_public_key_is_refused(source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pub"
    other.write_text(Signer.generate("exchange.local/audit").verifier().encode() + "\n")
    home, url = _fresh(tmp_path)
    assert _restore(home, source.archive, other)[0] == 2
    assert f"the archive's signature does not verify with {other}" in capsys.readouterr().err
    assert _row_count(url) == 0


def test_a_file_that_is_no_archive_is_refused(
    tmp_path: Path, source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file" * 100)
    home, url = _fresh(tmp_path)
    assert _restore(home, junk, source.key)[0] == 2
    assert "is not a backup archive" in capsys.readouterr().err
    assert _row_count(url) == 0


def test_restore_refuses_a_database_that_is_not_empty(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, url = _fresh(tmp_path)
    assert _restore(home, source.archive, source.key)[0] == 0
    assert _restore(home, source.archive, source.key)[0] == 2
    assert "the database is not empty: table audit_checkpoints has rows" in capsys.readouterr().err
    assert _tables(url) == source.rows


def test_restore_refuses_a_database_at_another_schema_revision(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, url = _fresh(tmp_path)
    db = Database(url)
    try:
        with db.write() as s:
            s.execute(text("UPDATE alembic_version SET version_num = '0004'"))
    finally:
        db.dispose()
    assert _restore(home, source.archive, source.key)[0] == 2
    head = backup._head()
    assert f"the database is at schema revision 0004, the archive at {head}" in capsys.readouterr().err
    assert _row_count(url) == 0


# --- Keys -------------------------------------------------------------------------------------


def test_keys_round_trip_private_ones_0600_and_never_overwritten(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "PRIVATE KEYS" in source.warning
    home, url = _fresh(tmp_path)
    code, out = _restore(home, source.with_keys, source.key, "--with-keys")
    assert code == 0, out
    assert _tables(url) == source.rows
    for name, (path, private) in backup.key_files(home).items():
        if name in backup.OPTIONAL_KEY_FILES and not (source.home / name).exists():
            assert not path.exists(), name
            continue
        assert path.read_bytes() == (source.home / name).read_bytes(), name
        assert path.stat().st_mode & 0o777 == (0o600 if private else 0o644), name

    # Into the same home again (with a new, empty database): the key files are there already.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("EXCHANGE_DATABASE_URL", other)
    assert _quiet("--home", str(home), "migrate")[0] == 0
    assert _restore(home, source.with_keys, source.key, "--with-keys")[0] == 2
    assert "already exists; restore never overwrites a key file" in capsys.readouterr().err
    assert _row_count(other) == 0


def test_keys_are_written_only_when_asked_for_and_present(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, url = _fresh(tmp_path)
    assert _restore(home, source.archive, source.key, "--with-keys")[0] == 2
    assert "the archive holds no key files" in capsys.readouterr().err
    assert _row_count(url) == 0
    code, out = _restore(home, source.with_keys, source.key)
    assert code == 0 and "they were not written (add --with-keys)" in out
    assert not (home / "ca").exists() and not (home / "audit").exists()


def test_a_load_that_fails_leaves_no_key_behind(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys are written before the database is loaded, and taken back if loading fails: all or nothing."""
    home, url = _fresh(tmp_path)

    def disk_gone(*_: object) -> None:
        raise Unavailable("the store cannot be written: disk I/O error")

    monkeypatch.setattr(backup, "_load", disk_gone)
    assert _restore(home, source.with_keys, source.key, "--with-keys")[0] == 2
    assert "disk I/O error" in capsys.readouterr().err
    assert _row_count(url) == 0
    assert not [p for p in (home / "ca", home / "audit", home / "server") if p.exists() and any(p.iterdir())]


# --- Pieces -----------------------------------------------------------------------------------


def test_values_survive_their_encoding() -> None:
    values = {
        "datetime": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
        "date": dt.date(2026, 2, 29 - 1),
        "time": dt.time(23, 59, 59, 1),
        "bytes": bytes(range(256)),
        "decimal": Decimal("12345678901234567890.000000001"),
        "float": 0.1 + 0.2,
        "json": {"a": [1, "二", None, 1.5]},
        "plain": "文本\t\n",
    }
    for encoding, value in values.items():
        line = json.dumps(backup._encode(value), ensure_ascii=False)
        assert backup._decode(encoding, json.loads(line)) == value, encoding
    assert backup._decode("datetime", None) is None


def test_departments_are_loaded_parents_first() -> None:
    departments = Base.metadata.tables["departments"]
    rows: list[dict[str, Any]] = [{"id": 3, "parent_id": 2}, {"id": 2, "parent_id": 1}, {"id": 1, "parent_id": None}]
    assert [r["id"] for r in backup._parents_first(departments, rows)] == [1, 2, 3]


def test_restore_creates_nothing_in_a_database_that_is_not_the_hubs(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "other"
    home.mkdir()
    engine = create_engine(f"sqlite:///{home / 'exchange.db'}")  # the home's database, holding something else
    with engine.begin() as c:
        c.execute(text("CREATE TABLE someone_elses (x INTEGER)"))
    assert _restore(home, source.archive, source.key)[0] == 2
    assert "no schema revision of this hub" in capsys.readouterr().err
    assert inspect(engine).get_table_names() == ["someone_elses"]
    engine.dispose()


# --- Pruning statements ----------------------------------------------------------------------


def test_pruning_statements_travel_with_the_archive_and_are_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = base_settings(tmp_path / "pruned")
    with running_hub(settings) as hub:
        hub.add_department(POLICE)
        hub.hub.audit.flush()
        db = Database(settings.effective_database_url)
        try:
            with db.write() as s:
                old = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
                s.execute(update(AuditEntryRow).where(AuditEntryRow.seq < 2).values(time=old))
        finally:
            db.dispose()
        assert _quiet("--home", str(settings.home), "prune-audit")[0] == 0
        archive = tmp_path / "pruned.tar"
        assert _quiet("--home", str(settings.home), "backup", "--out", str(archive))[0] == 0
    key, signer = settings.home / "audit" / "log.pub", Signer.parse((settings.home / "audit" / "log.key").read_text())
    home, url = _fresh(tmp_path)
    code, out = _restore(home, archive, key)
    assert code == 0 and "(2 pruned, under 1 signed pruning statements)" in out
    assert [row[0] for row in _tables(url)["audit_prunings"]] == [2]
    # The statement taken out of the archive, the manifest re-signed by the hub's key: the pruning is bare.
    members = _with_table(_members(archive), "audit_prunings", b"", signer)
    home, url = _fresh(tmp_path, "without-statement")
    assert _restore(home, _pack(members, tmp_path / "bare.tar"), key)[0] == 2
    assert "entry 0: its record is missing and no signed pruning statement covers it" in capsys.readouterr().err
    assert _row_count(url) == 0
