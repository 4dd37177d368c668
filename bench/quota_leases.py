"""The cost of hub-wide quotas on the request path and in the background, on one store.

Run: .venv/bin/python bench/quota_leases.py [--url URL] [--samples 2000] [--grants 100]

Without --url it uses a fresh SQLite file; give a PostgreSQL URL of an empty database to measure there
(its tables are made by the migrations). Measured on this machine, p50 and p99 in microseconds:
- take (block 20): calls served from blocks of 20 (19 in 20 from memory, the 20th leases a block);
- lease: a call that leases a new block (one write transaction, the grant's row locked);
- unpark: a call that takes parked calls back after a heartbeat (one write to its own hold row);
- beat: one heartbeat parking the unused calls of --grants grants, and the reclaim after it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from exchange.store import Store
from policy.quota import DailyQuota

DAY = dt.date(2026, 12, 4)


def _timed(samples: int, step: Callable[[int], object]) -> list[float]:
    took = []
    for n in range(samples):
        started = time.perf_counter()
        step(n)
        took.append((time.perf_counter() - started) * 1e6)
    return took


def _show(name: str, took: list[float]) -> None:
    ordered = sorted(took)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{name:<16} p50 {statistics.median(ordered):>9.1f} µs   p99 {p99:>9.1f} µs   (n={len(ordered)})")


def measure(store: Store, samples: int, grants: int) -> None:
    quota = DailyQuota(store.counters, block=20, holder="bench")
    quota.beat(ttl=600)
    _show("take (block 20)", _timed(samples, lambda n: quota.take("GR-HOT", 10**9, DAY)))
    fresh = DailyQuota(store.counters, block=1, holder="bench-lease")
    _show("lease", _timed(samples, lambda n: fresh.take("GR-LEASE", 10**9, DAY)))
    parker = DailyQuota(store.counters, block=2, holder="bench-park")
    rounds = max(1, samples // 10)

    def unpark(n: int) -> None:
        parker.take(f"GR-P{n}", 10**9, DAY)

    for n in range(rounds):
        parker.take(f"GR-P{n}", 10**9, DAY)  # leases 2, uses 1
    parker.beat(ttl=600)  # parks 1 of each
    _show("unpark", _timed(rounds, unpark))
    many = DailyQuota(store.counters, block=2, holder="bench-beat")

    def beat(n: int) -> None:
        for g in range(grants):
            many.take(f"GR-B{g}", 10**9, DAY)  # from what was parked at the last beat, or a new block
        started = time.perf_counter()
        many.beat(ttl=600)
        beats.append((time.perf_counter() - started) * 1e6)

    beats: list[float] = []
    for n in range(min(rounds, 50)):
        beat(n)
    _show(f"beat, {grants} grants", beats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--grants", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        store.db.migrate()
        print(f"store: {store.db.backend}")
        try:
            measure(store, args.samples, args.grants)
        finally:
            store.close()


if __name__ == "__main__":
    main()
