"""Values loaded from files and loaded again once the files change, so renewing them needs no restart.

The hub's TLS material (its server certificate for departments, its hub certificate for peer hubs) is held
as a ``Watched`` value: whoever needs it asks ``refresh`` first, which costs a ``stat`` per file unless a
file's (inode, size, mtime) changed. New files that do not load (a renewal half done: a new key beside the
old certificate) are logged and the last good value kept; the next ``refresh`` tries again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from exchange.errors import ExchangeError

log = logging.getLogger(__name__)
T = TypeVar("T")
Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    out = []
    for path in paths:
        try:
            info = os.stat(path)
            out.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            out.append((0, 0, 0))
    return tuple(out)


class Watched(Generic[T]):
    """A value loaded from files and loaded again once they change; a failed reload keeps the last good value."""

    def __init__(self, paths: Callable[[], tuple[Path, ...]], load: Callable[[], T], what: str) -> None:
        self._paths = paths
        self._load = load
        self._what = what
        self._lock = threading.Lock()
        self._stamp = _stamp(paths())
        self.value = load()  # the first load's errors are the caller's: the hub does not start

    def refresh(self) -> bool:
        """Reloads if the files changed; True when a new value was taken."""
        stamp = _stamp(self._paths())
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            try:
                value = self._load()
            except (OSError, ValueError, ExchangeError) as e:
                log.warning("keeping the current %s: its files changed but do not load yet: %s", self._what, e)
                return False
            self._stamp, self.value = stamp, value
            log.info("reloaded the %s from its changed files", self._what)
            return True
