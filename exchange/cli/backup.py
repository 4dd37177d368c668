"""``exchange backup`` and ``exchange restore``: the operator's verbs, run on the hub's host with its settings.

``backup`` reads the store directly (it works while the hub runs) and signs the archive with the
audit log's key in the home; ``restore`` checks an archive with the log's public key (``log.pub``)
before loading it into the configured, empty database. The format is described in exchange.backup.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from audit.note import NoteError, Signer
from exchange import backup as archive
from exchange import pki
from exchange.cli import report, userfiles
from exchange.cli.audit import read_verifier
from exchange.config import Settings
from exchange.errors import FailedPrecondition, InvalidArgument
from exchange.store import Database

KEYS_WARNING = (
    "WARNING: --with-keys puts the hub's PRIVATE KEYS in the archive (CA key, server key, audit log signing\n"
    "key, data-subject hashing key). Whoever reads it can issue certificates, impersonate the hub and sign\n"
    "its audit log. The file is written readable by its owner only (0600): keep it so, encrypt it at rest,\n"
    "and store it apart from backups made without keys."
)


def _signer(settings: Settings) -> Signer:
    path = pki.HubFiles(settings.home).audit_key
    try:
        return Signer.parse(path.read_text())
    except FileNotFoundError:
        raise FailedPrecondition(
            f"{path} is missing: a backup is signed with the audit log's key; run it with the hub's --home"
        ) from None
    except NoteError as e:
        raise InvalidArgument(f"{path} is not the audit log's key: {e}") from None


def _where(settings: Settings) -> str:
    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


def backup(args: argparse.Namespace, settings: Settings) -> int:
    """Writes a signed archive of the store (and, with --with-keys, the home's key files)."""
    userfiles.check_writable(args.out, "the archive")
    signer = _signer(settings)
    if args.with_keys:
        print(KEYS_WARNING, file=sys.stderr)
    db = Database(settings.effective_database_url)
    try:
        manifest = archive.backup(db, signer, args.out, home=settings.home if args.with_keys else None)
    finally:
        db.dispose()
    rows = sum(t.rows for t in manifest.tables)
    key = pki.HubFiles(settings.home).audit_verifier
    lines = [
        f"backup of {_where(settings)} written to {args.out}: {len(manifest.tables)} tables, {rows} rows, "
        f"schema revision {manifest.schema_revision}, signed by {signer.name}"
    ]
    if manifest.keys:
        lines.append(f"it holds {len(manifest.keys)} key files of {settings.home}, private keys among them: protect it")
    lines.append(f"check and restore it with `exchange restore {args.out} --key {key}`")
    data = {"written_to": args.out, "tables": len(manifest.tables), "rows": rows, "key_files": len(manifest.keys)}
    report.emit(args, {**data, "schema_revision": manifest.schema_revision, "signed_by": signer.name}, *lines)
    return 0


def restore(args: argparse.Namespace, settings: Settings) -> int:
    """Checks an archive (signature, parts, audit log), then loads it into the configured, empty database."""
    verifier = read_verifier(args.key)
    db = Database(settings.effective_database_url)
    try:
        done = archive.restore(
            args.file, verifier, db, home=settings.home if args.with_keys else None, key_label=str(args.key)
        )
    finally:
        db.dispose()
    manifest, audit = done.manifest, done.audit
    signed = f"the newest (size {audit.signed_size}) signed" if audit.checkpoints else "none signed yet"
    rows = sum(t.rows for t in manifest.tables)
    lines = [
        f"archive of {manifest.created} checked: signed by {verifier.name}, every part's SHA-256 matches; "
        f"audit log of {audit.entries} entries ({audit.pruned} pruned, under {audit.statements} signed pruning "
        f"statements) recomputed, {audit.checkpoints} checkpoints match it, {signed}",
        f"restored into {_where(settings)}: {len(manifest.tables)} tables, "
        f"{rows} rows (schema revision {manifest.schema_revision})",
        *(f"  wrote {path}" for path in done.keys),
    ]
    if manifest.keys and not args.with_keys:
        lines.append("the archive also holds the hub's key files; they were not written (add --with-keys)")
    data = {"created": manifest.created, "signed_by": verifier.name, "audit_entries": audit.entries}
    data |= {"tables": len(manifest.tables), "rows": rows, "keys_written": [str(p) for p in done.keys]}
    report.emit(args, data, *lines)
    return 0


def add_verbs(top: Any, verb: Any) -> None:
    """``backup`` and ``restore``, added to the top-level parser with the CLI's ``_verb`` helper."""
    p = verb(top, "backup", backup, "write a signed archive of the store (operator, on the hub's host)")
    p.add_argument("--out", type=Path, required=True, help="the archive to write (a new .tar file)")
    p.add_argument("--with-keys", action="store_true", help="include the home's key files, PRIVATE KEYS among them")
    p = verb(top, "restore", restore, "check an archive, then load it into the configured, empty database")
    p.add_argument("file", type=Path, help="an archive written by `exchange backup`")
    p.add_argument("--key", type=Path, required=True, help="the audit log's public key file (log.pub)")
    p.add_argument("--with-keys", action="store_true", help="also write the archive's key files into the home")
