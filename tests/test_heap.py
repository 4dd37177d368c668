"""The hub's heap: what start-up built is frozen, and the collector runs less often while the hub serves."""

from __future__ import annotations

import gc

from exchange.server import heap


def test_serving_thresholds_hold_between_settle_and_release() -> None:
    heap.settle()
    try:
        assert gc.get_threshold() == heap.SERVING_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        heap.release()
    assert gc.get_threshold() == heap.DEFAULT_THRESHOLDS and gc.get_freeze_count() == 0
