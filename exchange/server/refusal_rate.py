"""The bound on refusal records: at most so many per caller per window, the rest counted by one record.

A caller that sends garbage as fast as it can would otherwise write one audit record per call. Past
the bound its refusals are counted instead; the count is written as one record when the caller's
window closes (at its next refusal after that, at a periodic sweep, or at shutdown), so a flood costs
the log one record a window and the fact of it is kept. Used on the hub's event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from exchange.models import Principal
from exchange.services.auditing import now_text
from exchange.services.exchange import new_exchange_id


@dataclass(frozen=True)
class Counted:
    """The refusals of one caller in one window that were not recorded one by one."""

    actor: Principal
    exchange_id: str  # what each of those callers was told to quote: the counting record's id
    count: int
    first: str  # RFC 3339 times of the first and the last of them
    last: str


@dataclass(frozen=True)
class Admission:
    """Whether to record a refusal on its own, the exchange id its caller quotes, and a window just closed."""

    record: bool
    exchange_id: str
    closed: Counted | None = None


@dataclass
class _Window:
    actor: Principal
    opened: float
    recorded: int = 0
    suppressed: int = 0
    counting_id: str = ""
    first: str = ""
    last: str = ""

    def counted(self) -> Counted | None:
        if not self.suppressed:
            return None
        return Counted(self.actor, self.counting_id, self.suppressed, self.first, self.last)


class RefusalRate:
    """Per caller, ``per_window`` refusal records every ``window_seconds``."""

    def __init__(self, per_window: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_window = per_window
        self._seconds = window_seconds
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, actor: Principal) -> Admission:
        """Counts one refusal of ``actor``: recorded on its own while the caller is within its bound."""
        now = self._clock()
        key = str(actor.ref)
        window = self._windows.get(key)
        closed = None
        if window is None or now - window.opened >= self._seconds:
            closed = window.counted() if window is not None else None
            window = self._windows[key] = _Window(actor, now)
        if window.recorded < self._per_window:
            window.recorded += 1
            return Admission(True, new_exchange_id(), closed)
        if not window.suppressed:
            window.counting_id, window.first = new_exchange_id(), now_text()
        window.suppressed += 1
        window.last = now_text()
        return Admission(False, window.counting_id, closed)

    def expired(self) -> list[Counted]:
        """Closes the windows that have run out: their counts, and the callers forgotten until they refuse again."""
        now = self._clock()
        ended = [k for k, w in self._windows.items() if now - w.opened >= self._seconds]
        return [c for c in (self._windows.pop(k).counted() for k in ended) if c is not None]

    def drain(self) -> list[Counted]:
        """Closes every window (at shutdown): the counts not yet written."""
        windows, self._windows = self._windows, {}
        return [c for c in (w.counted() for w in windows.values()) if c is not None]
