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

Serving, the C allocator (glibc's) also keeps what it frees for reuse, up to ``FREED_KEPT`` bytes: by
default it hands every block over 128 KiB back to the system when freed, so each streamed batch's
encoding (a 2 MiB ``QueryBatch`` is encoded into fresh buffers, then copied by gRPC) touched new pages
and spent more CPU in the kernel's page faults than in encoding (issue 17, fifth round).
"""

from __future__ import annotations

import ctypes
import gc
import platform

# The collector's thresholds while serving (gen0 allocations, gen1 and gen2 collections), and Python's own.
SERVING_THRESHOLDS = (5000, 10, 10)
DEFAULT_THRESHOLDS = (700, 10, 10)

# glibc: blocks up to MMAPPED_FROM bytes come from the heap, and up to FREED_KEPT bytes free at its top are
# kept for reuse instead of given back (the largest message the hub receives is 16 MiB).
MMAPPED_FROM = 32 << 20
FREED_KEPT = 64 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def settle() -> None:
    """Once the hub is built, before it serves: collect what start-up left, then freeze the rest."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_THRESHOLDS[0], *SERVING_THRESHOLDS[1:])
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """glibc's allocator told to keep freed memory for reuse (see the module's text); False elsewhere.

    Left so when the hub stops: it only decides when memory goes back to the system, not what is used.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAPPED_FROM)) and bool(mallopt(_M_TRIM_THRESHOLD, FREED_KEPT))


def release() -> None:
    """When the hub stops: what was frozen is collectable again (a process may start another hub)."""
    gc.unfreeze()
    gc.set_threshold(DEFAULT_THRESHOLDS[0], *DEFAULT_THRESHOLDS[1:])
