"""The cyclic garbage collector while the hub serves bench/exchange_paths.py: its pauses, and what it frees.

Run: .venv/bin/python bench/collector.py [--cycles] -- [exchange_paths options, e.g. --seconds 3 --paths hub]

The bench runs the hub in its own process, so this runs the bench in this one, with the collector's
callbacks timing every collection by generation (start-up included; the hub freezes its heap once it
serves, exchange/server/heap.py). With --cycles the collector keeps what it finds (``gc.DEBUG_SAVEALL``)
and the objects it would have freed are counted by type at the end: what each call leaves in reference
cycles, to be found and broken at its source. Only for measuring: kept garbage is never freed.
"""

# ruff: noqa: E402 - the path must be set before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse
import collections
import gc
import time
from collections.abc import Sequence

from bench.exchange_paths import main as bench_main


class Pauses:
    """Each collection's length, by generation, from the collector's own callbacks."""

    def __init__(self) -> None:
        self.by_generation: dict[int, list[float]] = collections.defaultdict(list)
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            self._started[generation] = time.perf_counter()
        elif generation in self._started:
            self.by_generation[generation].append((time.perf_counter() - self._started.pop(generation)) * 1000)

    def table(self) -> str:
        lines = ["| generation | collections | total ms | longest ms | over 10 ms |", "|---:|---:|---:|---:|---:|"]
        for generation, pauses in sorted(self.by_generation.items()):
            over = sum(1 for p in pauses if p > 10)
            lines.append(f"| {generation} | {len(pauses)} | {sum(pauses):.0f} | {max(pauses):.1f} | {over} |")
        return "\n".join(lines)


def cycles(top: int = 25) -> str:
    """What the collector found unreachable since --cycles set DEBUG_SAVEALL, by type, most first."""
    gc.collect()
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    lines = [f"{len(gc.garbage)} objects in cycles", *(f"{n:8d} {name}" for name, n in kinds.most_common(top))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", action="store_true", help="count what the collector finds in cycles, by type")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="options for bench/exchange_paths.py, after --")
    args = parser.parse_args(argv)
    bench_args = [a for a in args.bench if a != "--"]
    pauses = Pauses()
    gc.callbacks.append(pauses)
    if args.cycles:
        gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        status = bench_main(bench_args)
    finally:
        gc.callbacks.remove(pauses)
    print("\nthe collector in the bench's process (the hub's):\n" + pauses.table())
    if args.cycles:
        print("\n" + cycles())
    return status


if __name__ == "__main__":
    sys.exit(main())
