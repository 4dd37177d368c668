"""Checking the stored audit log against the hub's seals and its newest signed checkpoint.

A hub runs this when it starts, before it signs anything, and on a schedule. It reads the log once,
in chunks (memory stays flat), and requires of the store what the hub wrote into it:

- every record hashes to its entry's leaf, and every entry carries the seal of its place and leaf
  (audit.seal), so a row written or changed in the database by anyone without the key is named;
- the entries lead to the root of every stored checkpoint, the newest one's signature included;
- the kept subtree hashes that proofs are served from agree with the entries;
- the log ends where its sealed head says, so entries cut off its end show;
- a record is missing only where a signed pruning statement says retention dropped it.

Entries from before seals existed are accepted only under the newest signed checkpoint, whose root
they must lead to; they are sealed then. Anything else stops the hub: ``AuditTampered`` names the
first row that differs, and nothing is signed or served over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from audit.merkle import KEPT_LEVEL, CompactRange, leaf_hash
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.pruning import Coverage, PruningError, open_statement
from audit.seal import Sealer
from exchange.errors import AuditTampered
from exchange.store.audit import AuditStore

# Entries read at a time (records included).
CHUNK = 10_000


@dataclass(frozen=True)
class Checked:
    """What a check found sound: the log's size, the newest signed checkpoint's, and entries sealed now."""

    size: int
    signed: int
    newly_sealed: int


def newest_signed(store: AuditStore, verifier: Verifier) -> tuple[int, bytes]:
    """The newest stored checkpoint's size and root, its signature checked; (0, b"") when there is none."""
    latest = store.latest_checkpoint()
    if latest is None:
        return 0, b""
    size, note = latest
    try:
        checkpoint = Checkpoint.parse(open_note(note, verifier))
    except NoteError as e:
        raise AuditTampered(
            f"the newest stored checkpoint (size {size}) does not verify with the log's key: {e}"
        ) from None
    if checkpoint.size != size or checkpoint.origin != verifier.name:
        raise AuditTampered(
            f"the stored checkpoint of size {size} says size {checkpoint.size} of {checkpoint.origin!r}"
        )
    return size, checkpoint.root


def check_log(store: AuditStore, sealer: Sealer, verifier: Verifier) -> Checked:
    """Reads the whole stored log and checks it; raises AuditTampered naming the first bad row."""
    signed, signed_root = newest_signed(store, verifier)
    head = store.head()
    size = _sealed_size(store, head, signed)
    walk = _Walk(store, sealer, signed)
    last_leaf = walk.run(size, None if head is None else head[1])
    if signed and walk.root_at_signed != signed_root:
        raise AuditTampered(
            f"the entries before the newest signed checkpoint (size {signed}) lead to another root: "
            "entries under it were rewritten (with entries from before seals, the first cannot be named)"
        )
    if walk.last_pruned is not None:
        _check_pruned(store, verifier, walk.last_pruned)
    sealed = _seal_old_entries(store, sealer, size) if walk.unsealed else 0
    if head is None and size:
        store.seal_head(size, last_leaf)
    return Checked(size, signed, sealed)


def _sealed_size(store: AuditStore, head: tuple[int, bytes] | None, signed: int) -> int:
    """How many entries the log has by its sealed head (entries integrated meanwhile are left for later)."""
    stored = store.size()
    if head is None:
        # A log from before seals: no head yet. All of it must be under the newest signed checkpoint.
        if stored > signed:
            raise AuditTampered(
                f"entries {signed}..{stored - 1} are under no signed checkpoint and carry no seal: "
                "they were not written by this hub"
            )
        return stored
    size, _ = head
    if stored < size:
        raise AuditTampered(
            f"the log's sealed head says {size} entries but the store holds {stored}: "
            f"entries {stored}..{size - 1} were deleted from its end"
        )
    if size < signed:
        raise AuditTampered(f"the log's sealed head says {size} entries, fewer than its signed checkpoint's {signed}")
    return size


class _Walk:
    """One pass over entries [0, size): seals, leaves, checkpoint roots and kept subtrees."""

    def __init__(self, store: AuditStore, sealer: Sealer, signed: int) -> None:
        self._store = store
        self._sealer = sealer
        self._signed = signed
        self._tree = CompactRange()
        self.unsealed = 0
        # The last entry found without its record (pruned, if a statement says so).
        self.last_pruned: int | None = None
        self.root_at_signed = b""

    def run(self, size: int, head_seal: bytes | None) -> bytes:
        last = b""
        for start in range(0, size, CHUNK):
            end = min(size, start + CHUNK)
            roots = dict(self._store.checkpoint_roots(start + 1, end))
            kept: dict[int, dict[int, bytes]] = {}
            for seq, leaf in self._leaves(start, end):
                last = leaf
                for level, digest in self._tree.append(leaf):
                    if level >= KEPT_LEVEL:
                        kept.setdefault(level, {})[seq >> level] = digest
                self._check_root(roots)
            self._check_kept(kept)
        if head_seal is not None and size and not Sealer.same(head_seal, self._sealer.head(size, last)):
            raise AuditTampered(f"the log's head (size {size}) does not carry this hub's seal: it was changed")
        return last

    def _leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for entry, mac in self._store.sealed_entries(start, end):
            seq, leaf = entry.seq, entry.leaf_hash
            if seq != self._tree.size:
                raise AuditTampered(f"entry {self._tree.size} is missing from the stored log (next is {seq})")
            if entry.record is None:
                self.last_pruned = seq
            elif leaf_hash(entry.record.encode()) != leaf:
                raise AuditTampered(f"entry {seq}: its record does not hash to its leaf (the record was edited)")
            if mac is None:
                if seq >= self._signed:
                    raise AuditTampered(
                        f"entry {seq} carries no seal and no signed checkpoint covers it: the hub did not write it"
                    )
                self.unsealed += 1
            elif not Sealer.same(mac, self._sealer.entry(seq, leaf)):
                raise AuditTampered(
                    f"entry {seq} does not carry this hub's seal: its leaf or place was changed outside the hub"
                )
            yield seq, leaf
        if self._tree.size != end:
            raise AuditTampered(f"entry {self._tree.size} is missing from the stored log")

    def _check_root(self, roots: dict[int, bytes]) -> None:
        size = self._tree.size
        want = roots.get(size)
        if want is not None or size == self._signed:
            root = self._tree.root()
            if size == self._signed:
                self.root_at_signed = root
            if want is not None and want != root:
                raise AuditTampered(
                    f"the entries before the stored checkpoint of size {size} lead to another root than it holds: "
                    "entries under it were rewritten"
                )

    def _check_kept(self, kept: dict[int, dict[int, bytes]]) -> None:
        for level, made in kept.items():
            for index, digest in self._store.node_hashes(level, list(made)).items():
                if digest != made[index]:
                    raise AuditTampered(
                        f"the kept subtree of entries {index << level}..{((index + 1) << level) - 1} "
                        "disagrees with them: audit_nodes was changed outside the hub"
                    )


def _check_pruned(store: AuditStore, verifier: Verifier, last_pruned: int) -> None:
    """Records are missing up to ``last_pruned``: the signed pruning statements must cover it.

    Read after the entries: statements only grow, so one made while the log was read still counts."""
    coverage = Coverage()
    try:
        for note in store.pruning_statements():
            coverage.add(open_statement(note, verifier))
        coverage.check_pruned(last_pruned)
    except PruningError as e:
        raise AuditTampered(f"{e} (records were blanked outside the hub's pruning)") from None


def _seal_old_entries(store: AuditStore, sealer: Sealer, size: int) -> int:
    """Seals the entries from before seals, now that they are known to lead to the signed root."""
    sealed = 0
    for start in range(0, size, CHUNK):
        seals = [
            (seq, sealer.entry(seq, leaf))
            for seq, leaf, mac in store.sealed_leaves(start, min(size, start + CHUNK))
            if mac is None
        ]
        store.add_seals(seals)
        sealed += len(seals)
    return sealed
