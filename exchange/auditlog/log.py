"""The running audit log of one hub process: integrates staged records, keeps the tree, signs checkpoints.

Every hub process runs one ``AuditLog``. Its thread integrates what any process staged (one at a
time, by the store's lock), catches its in-memory tree up with the entries in the store, and every
few seconds, if the log grew, signs a checkpoint of the new size. Proofs are served from the tree.
A hub whose integrator runs in a process of its own (exchange.auditlog.integrator) keeps an
``AuditLog`` that does not integrate in the background: it checks the log at start, integrates only
when asked (``flush``), and catches its tree up from the store when it serves proofs.

The tree in memory is only its right edge (O(log n) hashes); the subtrees of 256 leaves and more are
kept in the store as they complete, and proofs and earlier roots read them, so a hub's memory does
not grow with its log.

Nothing unsigned is trusted: the log checks the whole stored log against its seals and newest signed
checkpoint when it starts (exchange.auditlog.integrity) and whenever ``check`` is called, checks the seal of every
entry it reads into its tree, and signs a checkpoint only over a tree consistent with the newest one
signed before. A failed check leaves the log ``broken``: it signs and integrates nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from audit.merkle import KEPT_LEVEL, FrontierTree, ProofError, verify_consistency
from audit.note import Checkpoint, Signer
from audit.seal import Sealer
from exchange.auditlog.integrity import Checked, check_log, newest_signed
from exchange.errors import AuditTampered, ExchangeError, InvalidArgument
from exchange.store.audit import AuditStore

log = logging.getLogger(__name__)
# Staged records sequenced per transaction.
INTEGRATE_BATCH = 1000
# Leaf hashes read from the store at a time while catching the tree up.
SYNC_CHUNK = 50_000
# A log that does not integrate in the background and is this many entries behind the store starts its tree
# again from the kept subtrees (as at start) rather than reading every leaf since it last caught up.
REBASE_LEAVES = 4096


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        signer: Signer,
        origin: str,
        *,
        checkpoint_seconds: float = 2.0,
        poll_seconds: float = 0.05,
        integrating: bool = True,
        between_rounds: Callable[[], None] | None = None,
    ) -> None:
        """``integrating``: whether a thread of this process integrates and signs (False: another process
        does, exchange.auditlog.integrator; this one integrates only in ``start`` and ``flush``)."""
        # Integrating every 50 ms keeps each round's transaction short (about 15 records at 300 calls/s), so a
        # group commit waiting for SQLite's write lock behind it waits a millisecond, not several (the p99 at
        # 300 calls/s in bench/exchange_paths.py: 11-14 ms with 200 ms rounds, 8 ms with these).
        self.store = store
        self.signer = signer
        self.sealer = Sealer.of(signer)
        store.sealer = self.sealer
        # Why the stored log failed its check, once it has: nothing is signed or integrated after.
        self.broken: str | None = None
        # When the last whole check passed (Unix time), for its metric.
        self.checked_at: float | None = None
        self.origin = origin
        self.tree = FrontierTree(store)
        self._checkpoint_seconds = checkpoint_seconds
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.integrating = integrating
        # Called by the integrating thread after each round, when it holds no transaction (the integrator
        # process collects garbage there: exchange.auditlog.collection).
        self._between_rounds = between_rounds
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._signed_size = -1
        # When this process last signed a checkpoint (Unix time), for the checkpoint-age metric.
        self.signed_at: float | None = None

    def start(self) -> None:
        """Checks the stored log, integrates what waits and signs; raises AuditTampered over a bad log."""
        self.check()
        self.flush()
        if self.integrating:
            self._thread.start()

    def check(self) -> Checked:
        """Checks the whole stored log (exchange.auditlog.integrity); a failure marks the log broken and is raised."""
        try:
            checked = check_log(self.store, self.sealer, self.signer.verifier())
        except AuditTampered as e:
            self._break(e)
            raise
        self.checked_at = time.time()
        return checked

    def mark_broken(self, reason: str) -> None:
        """Another process (this hub's integrator) found the stored log broken: this one halts too."""
        self._break(AuditTampered(reason))

    def _break(self, error: AuditTampered) -> None:
        if self.broken is None:
            log.error("the stored audit log failed its check: %s; nothing more is signed or served", error.message)
        self.broken = error.message

    def stop(self) -> None:
        """Stops the integrating thread, if any, then integrates and signs what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> int:
        """Integrates everything staged, catches the tree up and signs a checkpoint; returns the size."""
        self._refuse_if_broken()
        try:
            while self.store.integrate():
                pass
            self.sync()
            self._sign(force=True)
        except AuditTampered as e:
            self._break(e)
            raise
        return self.tree.size

    def _refuse_if_broken(self) -> None:
        if self.broken is not None:
            raise AuditTampered(self.broken)

    def sync(self, size: int | None = None, integrated: list[tuple[int, bytes]] | None = None) -> None:
        """Brings the in-memory tree up to the entries in the store (other processes integrate too).

        ``size``: the store's size as just read in the integrator's own transaction (else it is read here).
        ``integrated``: the (seq, leaf) this process just sequenced and sealed itself, in order; when they are
        the tree's next entries they are taken as they are, not read back with their seals (which would only
        check the seal this process made over the leaf it computed).
        """
        with self._lock:
            if size is None:
                size = self.store.size()
            if self.tree.size == 0 and size > 0:
                self._resume(size)
            elif not self.integrating and integrated is None and size - self.tree.size >= REBASE_LEAVES:
                self._rebase(size)
            try:
                if integrated and integrated[0][0] == self.tree.size and integrated[-1][0] < size:
                    leaves = _in_order(integrated, self.tree.size)
                    self.store.add_nodes([node for leaf in leaves for node in self.tree.append(leaf)])
                while self.tree.size < size:
                    end = min(size, self.tree.size + SYNC_CHUNK)
                    leaves = self._sealed_leaves(self.tree.size, end)
                    self.store.add_nodes([node for leaf in leaves for node in self.tree.append(leaf)])
            except BaseException:
                # Kept subtrees that could not be written would be missing for good: start again from the store.
                self.tree = FrontierTree(self.store)
                raise

    def _sealed_leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes of entries [start, end), each checked against its seal before the tree takes it."""
        leaves: list[bytes] = []
        for seq, leaf, mac in self.store.sealed_leaves(start, end):
            if seq != start + len(leaves):
                raise AuditTampered(f"entry {start + len(leaves)} is missing from the stored log")
            if not Sealer.same(mac, self.sealer.entry(seq, leaf)):
                raise AuditTampered(
                    f"entry {seq} does not carry this hub's seal: it was written or changed outside the hub"
                )
            leaves.append(leaf)
        return leaves

    def _resume(self, size: int) -> None:
        """Starts the tree at the store's size from the kept subtrees, when they are all there.

        A log written before subtrees were kept (or restored without them) is read leaf by leaf
        instead, once, in chunks; the subtrees it completes are kept on the way.
        """
        kept = size >> KEPT_LEVEL << KEPT_LEVEL
        wanted = [
            (k, (kept >> (k + 1)) << 1) for k in range(kept.bit_length() - 1, KEPT_LEVEL - 1, -1) if kept >> k & 1
        ]
        found = [self.store.node_hashes(level, [index]).get(index) for level, index in wanted]
        if all(h is not None for h in found):
            self.tree.start_at(kept, [h for h in found if h is not None])

    def _rebase(self, size: int) -> None:
        """Starts the tree again at the store's kept subtrees when they reach past it (else keeps it)."""
        behind = self.tree
        self.tree = FrontierTree(self.store)
        self._resume(size)
        if self.tree.size <= behind.size:
            self.tree = behind

    def _sign(self, *, force: bool = False) -> None:
        self._refuse_if_broken()
        with self._lock:
            size = self.tree.size
            if size == self._signed_size or (size == 0 and not force):
                return
            root = self.tree.root(size)
            self._check_consistent(size, root)
            checkpoint = Checkpoint(self.origin, size, root)
            note = self.signer.sign(checkpoint.text())
        self.store.add_checkpoint(size, checkpoint.root, note)
        self._signed_size = size
        self.signed_at = time.time()

    def _check_consistent(self, size: int, root: bytes) -> None:
        """Refuses to sign a tree that is not an extension of the newest checkpoint signed before."""
        signed, signed_root = newest_signed(self.store, self.signer.verifier())
        if signed == 0 or signed > size:  # none yet, or another process signed a larger one (it checked)
            return
        try:
            proof = self.tree.consistency_proof(signed, size) if signed < size else []
            verify_consistency(signed, size, proof, signed_root, root)
        except ProofError:
            raise AuditTampered(
                f"the stored tree of {size} entries is not consistent with the newest signed checkpoint "
                f"(size {signed}): entries under it were changed"
            ) from None

    def _run(self) -> None:
        last_signed = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self._poll_seconds)
            self._wake.clear()
            if self.broken is not None:
                continue
            try:
                integrated: list[tuple[int, bytes]] = []
                while True:
                    done, size = self.store.integrate_sized(INTEGRATE_BATCH)
                    integrated += done
                    if len(done) < INTEGRATE_BATCH:
                        break  # else a full batch: more may be waiting
                self.sync(size, integrated)
                if time.monotonic() - last_signed >= self._checkpoint_seconds:
                    self._sign()
                    last_signed = time.monotonic()
            except AuditTampered as e:
                self._break(e)
            except ExchangeError as e:  # the store is down or full: expected until it is back, no traceback
                log.warning("audit log integration failed: %s; retrying", e.message)
                self._stop.wait(1.0)
            except Exception:
                log.exception("audit log integration failed; retrying")
                self._stop.wait(1.0)
            if self._between_rounds is not None:
                self._between_rounds()

    def prefix(self, size: int) -> list[bytes]:
        """The compact range standing for entries [0, size), for exports that start there."""
        with self._lock:
            return self.tree.prefix(size)

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        self.sync()
        with self._lock:
            try:
                return self.tree.inclusion_proof(seq, size)
            except ProofError as e:
                raise InvalidArgument(str(e)) from None

    def inclusion_proofs(self, seqs: list[int], size: int) -> dict[int, list[bytes]]:
        """The proofs of several entries (a page of search hits), reading what they share once."""
        self.sync()
        with self._lock:
            try:
                return self.tree.inclusion_proofs(seqs, size)
            except ProofError as e:
                raise InvalidArgument(str(e)) from None

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self.sync()
        with self._lock:
            try:
                return self.tree.consistency_proof(size1, size2)
            except ProofError as e:
                raise InvalidArgument(str(e)) from None


def _in_order(integrated: list[tuple[int, bytes]], start: int) -> list[bytes]:
    """The leaves of ``integrated`` while their seqs run on from ``start`` without a gap (another process's
    entries between two of this process's batches are read from the store instead)."""
    leaves: list[bytes] = []
    for seq, leaf in integrated:
        if seq != start + len(leaves):
            break
        leaves.append(leaf)
    return leaves
