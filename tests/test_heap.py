"""The hub's heap: what start-up built is frozen, and the collector runs less often while the hub serves."""

from __future__ import annotations

import gc
import platform
import resource

import pytest

from exchange.server import heap


def test_serving_thresholds_hold_between_settle_and_release() -> None:
    heap.settle()
    try:
        assert gc.get_threshold() == heap.SERVING_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        heap.release()
    assert gc.get_threshold() == heap.DEFAULT_THRESHOLDS and gc.get_freeze_count() == 0


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is glibc's allocator's"
)
def test_freed_memory_is_kept_for_reuse() -> None:
    """A large block freed and asked for again comes back without new pages (each one a page fault)."""
    assert heap.keep_freed_memory()
    size = 8 << 20
    b"x" * size  # every page of the block written once
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(5):
        b"x" * size
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    assert faults < size // 4096 // 4, f"{faults} page faults: the freed blocks went back to the system"
