"""Garbage collection in the audit integrator's process, kept out of the store's write turn.

The integrator integrates in a thread while it holds the store's write turn for a transaction. Left to the
interpreter, a full collection (73-104 ms in the integrator, measured in docs/performance.md) starts whenever an
allocation in any thread crosses a threshold, and if it starts inside that transaction every group commit of
the hub waits for it, and with it every call in flight. So the process freezes what start-up built (it is never
garbage), turns automatic collection off, and collects between rounds instead, when it holds nothing: the
young generation after every round, the middle one every ``MIDDLE_EVERY`` rounds, all of it every
``full_seconds``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

MIDDLE_EVERY = 10


class Collector:
    """Collects between the integrator's rounds; ``start`` hands collection over to it."""

    def __init__(self, full_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._full_seconds = full_seconds
        self._clock = clock
        self._rounds = 0
        self._full_at = clock()

    def start(self) -> None:
        """After start-up: what exists now is kept for good (frozen), and only this collector collects."""
        gc.collect()
        gc.freeze()
        gc.disable()
        self._full_at = self._clock()

    def __call__(self) -> None:
        """Called between rounds, outside any transaction."""
        self._rounds += 1
        if self._clock() - self._full_at >= self._full_seconds:
            gc.collect()
            self._full_at = self._clock()
        elif self._rounds % MIDDLE_EVERY == 0:
            gc.collect(1)
        else:
            gc.collect(0)
