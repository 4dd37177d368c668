"""The hub's heap and the cyclic garbage collector: what is built at start is set aside from collection.

A hub builds most of what it keeps before it serves (modules, the store's metadata, the policy, the
gRPC server, the console's templates). Python's full collection scans all of it every time: measured
under load (bench/exchange_paths.py, the GC's own callbacks), six full collections in a few seconds took
up to 147 ms each, holding every call in flight: the tail of the hub's latency. ``gc.freeze`` moves what
exists at that moment out of the collector's sight, so a full collection scans only what was made since.
Objects frozen are still freed by reference counting; only cycles among them wait for ``release``.

Serving, the youngest generation is collected after 5,000 new objects instead of 700: most of a call's
objects die young, so fewer of them are scanned again, promoted, and carried into the full collections
that pause every call in flight (measured in docs/performance.md, "Issue 17, second round").
"""

from __future__ import annotations

import gc

# The collector's thresholds while serving (gen0 allocations, gen1 and gen2 collections), and Python's own.
SERVING_THRESHOLDS = (5000, 10, 10)
DEFAULT_THRESHOLDS = (700, 10, 10)


def settle() -> None:
    """Once the hub is built, before it serves: collect what start-up left, then freeze the rest."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_THRESHOLDS[0], *SERVING_THRESHOLDS[1:])


def release() -> None:
    """When the hub stops: what was frozen is collectable again (a process may start another hub)."""
    gc.unfreeze()
    gc.set_threshold(DEFAULT_THRESHOLDS[0], *DEFAULT_THRESHOLDS[1:])
