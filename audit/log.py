"""The running audit log of one hub process: integrates staged records, keeps the tree, signs checkpoints.

Every hub process runs one ``AuditLog``. Its thread integrates what any process staged (one at a
time, by the store's lock), catches its in-memory tree up with the entries in the store, and every
few seconds, if the log grew, signs a checkpoint of the new size. Proofs are served from the tree.
"""

from __future__ import annotations

import logging
import threading
import time

from audit.merkle import MerkleTree, ProofError
from audit.note import Checkpoint, Signer
from exchange.errors import ExchangeError, InvalidArgument
from exchange.store.audit import AuditStore

log = logging.getLogger(__name__)
# Staged records sequenced per transaction.
INTEGRATE_BATCH = 1000


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
        self.tree = MerkleTree()
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
            if size > self.tree.size:
                for leaf in self.store.leaf_hashes(self.tree.size, size):
                    self.tree.append(leaf)

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

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        self.sync()
        with self._lock:
            try:
                return self.tree.consistency_proof(size1, size2)
            except ProofError as e:
                raise InvalidArgument(str(e)) from None
