"""A read-through cache for what every call reads and hardly ever changes (principals, catalog entries).

It is dropped whole whenever the hub hears of a change of what it holds, from this process or
another (see ``exchange.store.changes``). A generation counter keeps a read that raced a change from
storing what it read before the change: such a value is returned to its caller but not kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Cache(Generic[K, V]):
    def __init__(self, limit: int = 10_000) -> None:
        self._items: dict[K, V] = {}
        self._generation = 0
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[K], V | None]) -> V | None:
        """The value for ``key``, loaded on a miss; None (from ``load``) is returned but never kept."""
        with self._lock:
            if key in self._items:
                return self._items[key]
            generation = self._generation
        value = load(key)
        if value is not None:
            with self._lock:
                if generation == self._generation:
                    if len(self._items) >= self._limit:
                        self._items.clear()
                    self._items[key] = value
        return value

    def peek(self, key: K) -> V | None:
        """The value for ``key`` if it is held, without loading it."""
        with self._lock:
            return self._items.get(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._generation += 1
