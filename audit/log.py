"""The running audit log of one hub process: integrates staged records, keeps the tree, signs checkpoints.

Every hub process runs one ``AuditLog``. Its thread integrates what any process staged (one at a
time, by the store's lock), catches its in-memory tree up with the entries in the store, and every
few seconds, if the log grew, signs a checkpoint of the new size. Proofs are served from the tree.

The tree in memory is only its right edge (O(log n) hashes); the subtrees of 256 leaves and more are
kept in the store as they complete, and proofs and earlier roots read them, so a hub's memory does
not grow with its log.
"""

from __future__ import annotations

import logging
import threading
import time

from audit.merkle import KEPT_LEVEL, FrontierTree, ProofError
from audit.note import Checkpoint, Signer
from exchange.errors import ExchangeError, InvalidArgument
from exchange.store.audit import AuditStore

log = logging.getLogger(__name__)
# Staged records sequenced per transaction.
INTEGRATE_BATCH = 1000
# Leaf hashes read from the store at a time while catching the tree up.
SYNC_CHUNK = 50_000


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        signer: Signer,
        origin: str,
        *,
        checkpoint_seconds: float = 2.0,
        poll_seconds: float = 0.2,
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.tree = FrontierTree(store)
        self._checkpoint_seconds = checkpoint_seconds
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._signed_size = -1
        # When this process last signed a checkpoint (Unix time), for the checkpoint-age metric.
        self.signed_at: float | None = None

    def start(self) -> None:
        self.flush()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> int:
        """Integrates everything staged, catches the tree up and signs a checkpoint; returns the size."""
        while self.store.integrate():
            pass
        self.sync()
        self._sign(force=True)
        return self.tree.size

    def sync(self) -> None:
        """Brings the in-memory tree up to the entries in the store (other processes integrate too)."""
        with self._lock:
            size = self.store.size()
            if self.tree.size == 0 and size > 0:
                self._resume(size)
            try:
                while self.tree.size < size:
                    end = min(size, self.tree.size + SYNC_CHUNK)
                    leaves = self.store.leaf_hashes(self.tree.size, end)
                    self.store.add_nodes([node for leaf in leaves for node in self.tree.append(leaf)])
            except BaseException:
                # Kept subtrees that could not be written would be missing for good: start again from the store.
                self.tree = FrontierTree(self.store)
                raise

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

    def _sign(self, *, force: bool = False) -> None:
        with self._lock:
            size = self.tree.size
            if size == self._signed_size or (size == 0 and not force):
                return
            checkpoint = Checkpoint(self.origin, size, self.tree.root(size))
            note = self.signer.sign(checkpoint.text())
        self.store.add_checkpoint(size, checkpoint.root, note)
        self._signed_size = size
        self.signed_at = time.time()

    def _run(self) -> None:
        last_signed = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self._poll_seconds)
            self._wake.clear()
            try:
                while len(self.store.integrate(INTEGRATE_BATCH)) == INTEGRATE_BATCH:
                    pass  # a full batch: more may be waiting
                self.sync()
                if time.monotonic() - last_signed >= self._checkpoint_seconds:
                    self._sign()
                    last_signed = time.monotonic()
            except ExchangeError as e:  # the store is down or full: expected until it is back, no traceback
                log.warning("audit log integration failed: %s; retrying", e.message)
                self._stop.wait(1.0)
            except Exception:
                log.exception("audit log integration failed; retrying")
                self._stop.wait(1.0)

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
