"""A read-through cache for what every call reads and hardly ever changes (principals, catalog entries).

It is dropped whole whenever the hub hears of a change of what it holds, from this process or
another (see ``exchange.store.changes``). A generation counter keeps a read that raced a change from
storing what it read before the change: such a value is returned to its caller but not kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Set while a call is decided on the event loop: what is not held must not be read from the store there.
_HELD_ONLY: ContextVar[bool] = ContextVar("held_only", default=False)


class NotHeld(Exception):
    """What was asked for is not held in memory, and reading it (the store, a lock) may not wait here."""


def held_only() -> bool:
    """Whether only what is held may be used (the caller is on the event loop): nothing may wait."""
    return _HELD_ONLY.get()


class _HoldingOnly:
    """Within: a cache miss, or anything else that would wait on the store, raises ``NotHeld``.

    A class rather than a generator-based context manager: it is entered for every decision held on the event
    loop, and this costs no generator and no ``contextlib`` wrapper per entry.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _HELD_ONLY.set(True)

    def __exit__(self, *exc: object) -> None:
        _HELD_ONLY.reset(self._token)


# ``with holding_only():`` as before: each entry is a new instance (its own token), so entries may nest.
holding_only = _HoldingOnly


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
        if _HELD_ONLY.get():
            raise NotHeld(key)
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
