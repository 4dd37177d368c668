"""What a forwarded exchange reads on every call, held in memory: the peers by code, and the remote entries.

A call forwarded through this hub needs the peer towards the entry's home and the entry itself (its route,
its home's log key, its fields); a call of a peer on the federation listener needs that peer. Reading them
from the store on every call cost the hub on the way more than any other step of its own (docs/performance.md).

- Peers (``HeldPeers``) are read all at once and kept until a peering changes: every change this process
  makes goes through ``PeeringService``, which forgets them once it committed (a suspension refuses the next
  call at once); a change another process made reaches this one by its notice, or its next sync round at the
  latest, where ``Federation.peers_changed`` forgets them too (as it re-reads the listener's trust).
- Remote entries (``HeldEntries``) are kept one by one, each at most ``ENTRY_SECONDS``: the sync round that
  stores offers in this process forgets them all, an ended peering too. An entry another process stored (the
  holder of the sync lock) is seen here within ``ENTRY_SECONDS``. That is safe: the entry is a copy a sync
  round late already (``federation_sync_seconds``), and the home decides every call by its own catalog and its
  own grant whatever the copy here says; the peering towards it is checked on every call from ``HeldPeers``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from exchange.errors import NotFound
from exchange.federation.model import Peer, RemoteEntry
from exchange.store import Store

# The longest a remote entry stored by another hub process stays unseen here (this process's own rounds: none).
ENTRY_SECONDS = 5.0
# Entries held at most; past that the held ones are dropped and read again (a catalog is far smaller).
ENTRY_LIMIT = 10_000


class HeldPeers:
    """This process's peers by code, read at once after each change (thread-safe)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._held: dict[str, Peer] | None = None
        self._generation = 0  # moved by every forget: a read that started before one is not kept

    def find(self, code: str) -> Peer | None:
        """The peer ``code`` as last read; one not held (registered in another process a moment ago) is read."""
        held = self._held
        if held is None:
            held = self._load()
        peer = held.get(code)
        return peer if peer is not None else self._store.peers.find(code)

    def get(self, code: str) -> Peer:
        """As ``find``; NOT_FOUND when there is no such peer."""
        peer = self.find(code)
        if peer is None:
            raise NotFound("peer", code)
        return peer

    def forget(self) -> None:
        """A peering changed: the next call reads them all again."""
        with self._lock:
            self._generation += 1
            self._held = None

    def _load(self) -> dict[str, Peer]:
        with self._lock:
            generation = self._generation
        peers = {p.code: p for p in self._store.peers.list()}
        with self._lock:
            if generation == self._generation:
                self._held = peers
        return peers


class HeldEntries:
    """The remote entries this process read lately, each kept ``seconds`` at most (thread-safe)."""

    def __init__(
        self, store: Store, seconds: float = ENTRY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, tuple[RemoteEntry, float]] = {}
        self._generation = 0

    def peek(self, code: str) -> RemoteEntry | None:
        """The remote entry ``code`` if it is held (and fresh), without reading the store: callable on the loop."""
        held = self._held.get(code)
        return held[0] if held is not None and self._clock() - held[1] < self.seconds else None

    def get(self, code: str) -> RemoteEntry | None:
        """The remote entry ``code`` (None: no entry homed elsewhere has it, which is never kept)."""
        held = self.peek(code)
        if held is not None:
            return held
        now = self._clock()
        with self._lock:
            generation = self._generation
        entry = self._store.federated.get(code)
        if entry is not None:
            with self._lock:
                if generation == self._generation:
                    if len(self._held) >= ENTRY_LIMIT:
                        self._held.clear()
                    self._held[code] = (entry, now)
        return entry

    def forget(self) -> None:
        """Entries were stored or dropped in this process: the next call of each reads it again."""
        with self._lock:
            self._generation += 1
            self._held.clear()
