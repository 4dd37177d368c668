"""The hub's heap and the cyclic garbage collector: what is built at start is set aside from collection.

A hub builds most of what it keeps before it serves (modules, the store's metadata, the policy, the
gRPC server, the console's templates). Python's full collection scans all of it every time: measured
under load (bench/exchange_paths.py, the GC's own callbacks), six full collections in a few seconds took
up to 147 ms each, holding every call in flight: the tail of the hub's latency. ``gc.freeze`` moves what
exists at that moment out of the collector's sight, so a full collection scans only what was made since.
Objects frozen are still freed by reference counting; only cycles among them wait for ``release``.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Once the hub is built, before it serves: collect what start-up left, then freeze the rest."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """When the hub stops: what was frozen is collectable again (a process may start another hub)."""
    gc.unfreeze()
