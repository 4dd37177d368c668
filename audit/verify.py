"""Checking an exported audit log offline, with nothing but the log's public key.

An export (see exchange.auditlog.export) is a JSON header with the slice's start and the prefix hashes before
it, the hub's signed pruning statements and the signed checkpoints that fall in the slice, then one
tab-separated line per entry. The verifier keeps only the tree's right frontier (O(log n) memory).
It recomputes every leaf from its record, requires the sequence to have no gaps and the times the
entries were logged never to go back, checks every checkpoint's signature and origin, recomputes its
root from the leaves, refuses two checkpoints of one size with different roots (a fork) and a
checkpoint larger than the entries the export holds (cut short), accepts a missing record only under
a signed pruning statement (audit.pruning), and, given a checkpoint the auditor already holds, that
the export reaches it and agrees with it. It reports the first problem found, naming the entry,
checkpoint or statement; otherwise a ``Report`` of what was proved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from audit.merkle import CompactRange, ProofError, leaf_hash, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.pruning import Coverage, PruningError, PruningStatement, format_time, open_statement
from audit.records import ENTRY, logged_of, parse_entry_line


class VerifyError(ValueError):
    """The export does not verify; the message names the first bad entry, checkpoint or statement."""


@dataclass
class Report:
    """What a verified export proved: entries [start, size) checked, the rest only through the prefix hashes."""

    start: int = 0
    entries: int = 0
    pruned: int = 0
    checkpoints: int = 0
    size: int = 0
    root: bytes = b""
    # The newest signed pruning statement (None when nothing was pruned under one) and how many there were.
    pruning: PruningStatement | None = None
    statements: int = 0
    # The size of the checkpoint the auditor held, which the export was found to reach and agree with.
    held: int | None = None
    problems: list[str] = field(default_factory=list)

    def verdict(self) -> list[str]:
        """What was proved, one sentence a line."""
        last = self.size - 1
        if self.size == 0:
            lines = ["the log is empty: no entries to verify"]
        elif self.start == 0:
            lines = [f"entries 0 to {last} verified: the whole log, from its first entry (entry 0)"]
        elif self.start == self.size:
            lines = [
                f"no entries verified: the export begins at the log's end (entry {self.start}); "
                f"entries 0 to {self.start - 1} are represented only by the header's prefix hashes"
            ]
        else:
            lines = [
                f"entries {self.start} to {last} verified ({self.entries} entries); the export does not begin at "
                f"the log's start: entries 0 to {self.start - 1} are represented only by the header's prefix "
                "hashes, which the signed checkpoints vouch for only as a whole"
            ]
        if self.pruned and self.pruning is not None:
            p = self.pruning
            lines.append(
                f"{self.pruned} of them pruned (entries {self.start} to {self.start + self.pruned - 1}) under "
                f"{self.statements} signed pruning statements; the newest covers entries before {p.up_to}, made "
                f"{format_time(p.made)} with a retention of {p.retention_days} days (cutoff {format_time(p.cutoff)})"
            )
        if self.size:
            lines.append(
                f"{self.checkpoints} signed checkpoints; the newest, of size {self.size}, has root {self.root.hex()}"
            )
        if self.held is not None:
            lines.append(f"consistent with the held checkpoint of size {self.held}")
        return lines

    def as_dict(self) -> dict[str, object]:
        p = self.pruning
        return {
            "start": self.start,
            "end": self.size,
            "entries": self.entries,
            "pruned": self.pruned,
            "checkpoints": self.checkpoints,
            "size": self.size,
            "root": self.root.hex(),
            "from_log_start": self.start == 0,
            "prefix_only": {"start": 0, "end": self.start} if self.start else None,
            "pruning": None
            if p is None
            else {
                "statements": self.statements,
                "up_to": p.up_to,
                "made": format_time(p.made),
                "retention_days": p.retention_days,
                "cutoff": format_time(p.cutoff),
            },
            "held_checkpoint": self.held,
            "verdict": self.verdict(),
        }


def open_checkpoint(note: str, verifier: Verifier, what: str = "checkpoint") -> Checkpoint:
    """The checkpoint in ``note`` if the log's key signed it and it is of that log."""
    try:
        checkpoint = Checkpoint.parse(open_note(note, verifier))
    except NoteError as e:
        raise VerifyError(f"{what}: {e}") from None
    if checkpoint.origin != verifier.name:
        raise VerifyError(f"{what} of size {checkpoint.size} names another log: {checkpoint.origin!r}")
    return checkpoint


def verify_export(
    lines: Iterable[str],
    verifier: Verifier,
    progress: Callable[[int], None] | None = None,
    held: Checkpoint | None = None,
) -> Report:
    """Verifies an export; raises VerifyError at the first problem, returns what was proved otherwise.

    ``held`` is a checkpoint the auditor already holds: the export must reach its size and have its
    root there.
    """
    rows = iter(lines)
    header = _json(next(rows, ""), "header")
    if header.get("origin") != verifier.name:
        raise VerifyError(f"the export is of log {header.get('origin')!r}, the key is {verifier.name!r}")
    walk = _Walk(_prefix(header), verifier, held)
    for n, line in enumerate(rows, start=2):
        if line.startswith(ENTRY + "\t"):
            walk.entry(n, line)
            if progress is not None and walk.report.entries % 10000 == 0:
                progress(walk.report.entries)
        elif walk.report.entries:
            raise VerifyError(f"line {n}: checkpoints come before the entries, as do pruning statements")
        else:
            walk.signed(n, _json(line, f"line {n}"))
    return walk.finish(header.get("size"))


class _Walk:
    """The state of one pass over an export: the tree's frontier, the signed roots, the pruning statements."""

    def __init__(self, tree: CompactRange, verifier: Verifier, held: Checkpoint | None) -> None:
        self.tree, self.verifier, self.held = tree, verifier, held
        self.report = Report(start=tree.size)
        self.roots: dict[int, bytes] = {}
        self.coverage = Coverage()
        self.last_time = ""
        if held is not None and held.size < tree.size:
            raise VerifyError(
                f"the held checkpoint of size {held.size} is before the export's first entry {tree.size}: "
                "export the log from an entry no later than it to check it"
            )
        self._check_held()

    def signed(self, n: int, line: dict[str, object]) -> None:
        """A checkpoint or pruning statement line."""
        if "pruning" in line:
            try:
                self.coverage.add(open_statement(str(line["pruning"]), self.verifier))
            except PruningError as e:
                raise VerifyError(f"line {n}: {e}") from None
            return
        checkpoint = open_checkpoint(str(line.get("checkpoint", "")), self.verifier)
        if checkpoint.size < self.tree.size:
            raise VerifyError(
                f"checkpoint of size {checkpoint.size} is before the export's first entry {self.tree.size}: "
                "it cannot be checked"
            )
        seen = self.roots.setdefault(checkpoint.size, checkpoint.root)
        if seen != checkpoint.root:
            raise VerifyError(f"two checkpoints of size {checkpoint.size} with different roots: the log was forked")
        self.report.checkpoints += 1
        if checkpoint.size == self.tree.size and checkpoint.root != self.tree.root():
            raise VerifyError(f"checkpoint of size {checkpoint.size}: the prefix leads to another root")

    def entry(self, n: int, line: str) -> None:
        try:
            seq, leaf, record = parse_entry_line(line)
        except ValueError:
            raise VerifyError(f"line {n} is not an entry") from None
        try:
            self._check_entry(seq, leaf, record)
        except PruningError as e:
            raise VerifyError(str(e)) from None
        want = self.roots.get(self.tree.size)
        if want is not None and self.tree.root() != want:
            raise VerifyError(f"checkpoint of size {self.tree.size}: the entries lead to another root (rewritten)")
        self._check_held()

    def _check_entry(self, seq: int, leaf_hex: str, record: str | None) -> None:
        report = self.report
        if seq != self.tree.size:
            raise VerifyError(f"entry {seq}: expected entry {self.tree.size} (a gap, or entries out of order)")
        try:
            leaf = bytes.fromhex(leaf_hex)
        except ValueError:
            raise VerifyError(f"entry {seq}: its leaf hash is not hex") from None
        if len(leaf) != 32:
            raise VerifyError(f"entry {seq}: its leaf hash is not 32 bytes")
        if record is None:
            # Retention prunes the oldest entries first, and logged times never go back: only a prefix
            # of the log can be pruned, and only under a signed statement. A gap in the middle hides records.
            if report.pruned != report.entries:
                raise VerifyError(f"entry {seq}: its record is missing after entries that have theirs (hidden)")
            self.coverage.check_pruned(seq)
            report.pruned += 1
        else:
            # The record is its canonical bytes: the leaf is their hash, with no need to re-encode.
            if leaf_hash(record.encode()) != leaf:
                raise VerifyError(f"entry {seq}: its record does not hash to its leaf (edited)")
            when = logged_of(record)
            if not when or when < self.last_time:
                raise VerifyError(
                    f"entry {seq}: logged at {when or '?'}, before the previous entry's {self.last_time} (back-dated)"
                )
            self.coverage.check_kept(seq, when)
            self.last_time = when
        self.tree.append(leaf)
        report.entries += 1

    def _check_held(self) -> None:
        held = self.held
        if held is not None and held.size == self.tree.size and held.root != self.tree.root():
            raise VerifyError(
                f"the export is not consistent with the held checkpoint of size {held.size}: "
                f"its entries lead to root {self.tree.root().hex()}, the held checkpoint says {held.root.hex()}"
            )

    def finish(self, header_size: object) -> Report:
        size, report = self.tree.size, self.report
        newest = max(self.roots, default=0)
        if newest > size:
            raise VerifyError(
                f"the export is truncated: it holds a signed checkpoint of size {newest} but ends at entry {size}"
            )
        if self.held is not None and self.held.size > size:
            raise VerifyError(
                f"the export stops short of the held checkpoint: it ends at entry {size}, "
                f"the held checkpoint is of size {self.held.size}"
            )
        if size != header_size:
            raise VerifyError(f"the export is truncated: it ends at entry {size}, the header says {header_size}")
        if size not in self.roots:
            raise VerifyError(
                f"no signed checkpoint covers all {size} entries (newest: {newest}): "
                "entries after it are vouched for by nothing"
            )
        try:
            self.coverage.check_within(size)
        except PruningError as e:
            raise VerifyError(str(e)) from None
        report.size, report.root = size, self.tree.root()
        report.statements = len(self.coverage.statements)
        report.pruning = self.coverage.statements[-1] if self.coverage.statements else None
        report.held = None if self.held is None else self.held.size
        return report


def _prefix(header: dict[str, object]) -> CompactRange:
    start, prefix = header.get("start"), header.get("prefix", [])
    if not isinstance(start, int) or start < 0 or not isinstance(prefix, list):
        raise VerifyError("the header's start and prefix are malformed")
    try:
        return CompactRange(start, [bytes.fromhex(str(h)) for h in prefix])
    except (ValueError, ProofError) as e:
        raise VerifyError(f"the header's prefix is malformed: {e}") from None


def _json(line: str, where: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except ValueError:
        raise VerifyError(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise VerifyError(f"{where} is not an object")
    return value


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
