"""Checking an exported audit log offline, with nothing but the log's public key.

An export (see audit.export) is a JSON header with the slice's start and the prefix hashes before
it, the signed checkpoints that fall in the slice, then one tab-separated line per entry. The
verifier keeps only the tree's right frontier (O(log n) memory). The verifier
recomputes every leaf from its record, requires the sequence to have no gaps and the times the
entries were logged never to go back, checks every checkpoint's signature and origin, recomputes its root from the
leaves, and refuses two checkpoints of one size with different roots (a fork). It reports the first
problem found, naming the entry or checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from audit.merkle import CompactRange, ProofError, leaf_hash, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.records import ENTRY, parse_entry_line

_LOGGED = re.compile(r'"logged":"([^"]*)"')


class VerifyError(ValueError):
    """The export does not verify; the message names the first bad entry or checkpoint."""


@dataclass
class Report:
    entries: int = 0
    pruned: int = 0
    checkpoints: int = 0
    size: int = 0
    root: bytes = b""
    problems: list[str] = field(default_factory=list)


def verify_export(lines: Iterable[str], verifier: Verifier, progress: Callable[[int], None] | None = None) -> Report:
    """Verifies an export; raises VerifyError at the first problem, returns what was checked otherwise."""
    rows = iter(lines)
    header = _json(next(rows, ""), "header")
    if header.get("origin") != verifier.name:
        raise VerifyError(f"the export is of log {header.get('origin')!r}, the key is {verifier.name!r}")
    tree = _prefix(header)
    report, last_time = Report(), ""
    roots: dict[int, bytes] = {}
    for n, line in enumerate(rows, start=2):
        if line.startswith(ENTRY + "\t"):
            try:
                seq, leaf, record = parse_entry_line(line)
            except ValueError:
                raise VerifyError(f"line {n} is not an entry") from None
            last_time = _check_entry(seq, leaf, record, tree=tree, report=report, last_time=last_time)
            _check_root(tree, roots)
            if progress is not None and report.entries % 10000 == 0:
                progress(report.entries)
        elif report.entries:
            raise VerifyError(f"line {n}: checkpoints come before the entries")
        else:
            _check_checkpoint(str(_json(line, f"line {n}").get("checkpoint", "")), verifier, roots)
            report.checkpoints += 1
            if tree.size in roots and roots[tree.size] != tree.root():
                raise VerifyError(f"checkpoint of size {tree.size}: the prefix leads to another root")
    if tree.size != header.get("size"):
        raise VerifyError(
            f"the export is truncated: it ends at entry {tree.size}, the header says {header.get('size')}"
        )
    if tree.size not in roots:
        raise VerifyError(
            f"no signed checkpoint covers all {tree.size} entries (newest: {max(roots, default=0)}): "
            "entries after it are vouched for by nothing"
        )
    report.size, report.root = tree.size, tree.root()
    return report


def _prefix(header: dict[str, object]) -> CompactRange:
    start, prefix = header.get("start"), header.get("prefix", [])
    if not isinstance(start, int) or start < 0 or not isinstance(prefix, list):
        raise VerifyError("the header's start and prefix are malformed")
    try:
        return CompactRange(start, [bytes.fromhex(str(h)) for h in prefix])
    except (ValueError, ProofError) as e:
        raise VerifyError(f"the header's prefix is malformed: {e}") from None


def _check_root(tree: CompactRange, roots: dict[int, bytes]) -> None:
    want = roots.get(tree.size)
    if want is not None and tree.root() != want:
        raise VerifyError(f"checkpoint of size {tree.size}: the entries lead to another root (rewritten)")


def _json(line: str, where: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except ValueError:
        raise VerifyError(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise VerifyError(f"{where} is not an object")
    return value


def _check_entry(
    seq: int, leaf_hex: str, record: str | None, *, tree: CompactRange, report: Report, last_time: str
) -> str:
    if seq != tree.size:
        raise VerifyError(f"entry {seq}: expected entry {tree.size} (a gap, or entries out of order)")
    try:
        leaf = bytes.fromhex(leaf_hex)
    except ValueError:
        raise VerifyError(f"entry {seq}: its leaf hash is not hex") from None
    if len(leaf) != 32:
        raise VerifyError(f"entry {seq}: its leaf hash is not 32 bytes")
    if record is None:
        # Retention prunes the oldest entries first, and logged times never go back: only a prefix
        # of the log can be pruned. A gap in the middle hides records.
        if report.pruned != report.entries:
            raise VerifyError(f"entry {seq}: its record is missing after entries that have theirs (hidden)")
        report.pruned += 1
    else:
        # The record is its canonical bytes: the leaf is their hash, with no need to re-encode.
        if leaf_hash(record.encode()) != leaf:
            raise VerifyError(f"entry {seq}: its record does not hash to its leaf (edited)")
        found = _LOGGED.search(record)
        when = found.group(1) if found else ""
        if not when or when < last_time:
            raise VerifyError(
                f"entry {seq}: logged at {when or '?'}, before the previous entry's {last_time} (back-dated)"
            )
        last_time = when
    tree.append(leaf)
    report.entries += 1
    return last_time


def _check_checkpoint(note: str, verifier: Verifier, roots: dict[int, bytes]) -> None:
    try:
        checkpoint = Checkpoint.parse(open_note(note, verifier))
    except NoteError as e:
        raise VerifyError(f"checkpoint: {e}") from None
    if checkpoint.origin != verifier.name:
        raise VerifyError(f"checkpoint of size {checkpoint.size} names another log: {checkpoint.origin!r}")
    seen = roots.setdefault(checkpoint.size, checkpoint.root)
    if seen != checkpoint.root:
        raise VerifyError(f"two checkpoints of size {checkpoint.size} with different roots: the log was forked")


def verify_receipt(receipt: dict[str, object], verifier: Verifier) -> Checkpoint:
    """Checks a receipt for one record: its leaf, its inclusion in a checkpoint, the checkpoint's signature."""
    try:
        checkpoint = Checkpoint.parse(open_note(str(receipt["checkpoint"]), verifier))
        record = receipt["record"]
        if not isinstance(record, str) or not isinstance(receipt["proof"], list):
            raise TypeError("record must be text and proof a list")
        leaf = leaf_hash(record.encode())
        seq = int(str(receipt["seq"]))
        proof = [bytes.fromhex(str(h)) for h in receipt["proof"]]
    except (KeyError, TypeError, ValueError) as e:
        raise VerifyError(f"the receipt is malformed: {e}") from None
    if checkpoint.origin != verifier.name:
        raise VerifyError(f"the receipt's checkpoint names another log: {checkpoint.origin!r}")
    try:
        verify_inclusion(leaf, seq, checkpoint.size, proof, checkpoint.root)
    except ProofError as e:
        raise VerifyError(f"record {seq} is not in the signed log of {checkpoint.size} entries: {e}") from None
    return checkpoint
