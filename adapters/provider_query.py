"""What a department's code and the provider kit share: the query, the document, the refusal and the limits.

A department's records function takes a ``ProviderQuery`` and yields rows (``Row``); a document
function returns a ``ProviderDocument`` or None; a changes function takes a ``ChangesQuery`` and
yields ``ProviderChange``s in order; any of them raises ``QueryRefused`` to refuse a query
with a message for the hub. The limits bound what one call reads and sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

Row = Mapping[str, object]
BATCH_RECORDS = 500
BATCH_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
DEFAULT_MAX_ROWS = 10_000


def _always() -> bool:
    return True


@dataclass(frozen=True)
class ProviderQuery:
    """What the hub asks of one resource: typed filters, the fields wanted, and paging (limit 0: no cap)."""

    resource_code: str
    filters: Mapping[str, object]
    fields: tuple[str, ...]
    limit: int = 0
    offset: int = 0
    exchange_id: str = ""
    alive: Callable[[], bool] = field(default=_always, repr=False, compare=False)

    def active(self) -> bool:
        """False once the hub has cancelled the call or its deadline passed: stop working then."""
        return self.alive()

    @property
    def cancelled(self) -> bool:
        return not self.alive()


@dataclass(frozen=True)
class ProviderDocument:
    """One document: its file name, media type, size in bytes (0 if unknown) and its bytes in pieces."""

    name: str
    media_type: str
    size: int
    chunks: Iterable[bytes]


class QueryRefused(Exception):
    """Raised by a department's function to refuse a query; its message is sent to the hub (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class ChangesQuery:
    """What the hub asks of a resource's changes: those after ``after`` ("" for the first), matching the filters.

    ``from_now``: the hub wants only the current position: yield the newest change (just its cursor and
    sequence are used, nothing is sent), or nothing when there is none yet.
    """

    resource_code: str
    filters: Mapping[str, object]
    fields: tuple[str, ...]
    after: str
    from_now: bool
    limit: int
    alive: Callable[[], bool] = field(default=_always, repr=False, compare=False)

    def active(self) -> bool:
        """False once the hub has cancelled the call or its deadline passed: stop working then."""
        return self.alive()


@dataclass(frozen=True)
class ProviderChange:
    """One change, in the department's order: the row after it, and the cursor that resumes right after it.

    ``cursor`` must be non-empty and new (never one handed out before); ``kind`` is "upsert" or "delete".
    ``sequence``, when the department numbers its changes 1, 2, 3... without gaps, lets the hub see one
    skipped; 0 leaves them unnumbered.
    """

    cursor: str
    row: Row
    kind: str = "upsert"
    sequence: int = 0


RecordsFunction = Callable[[ProviderQuery], Iterable[Row]]
ChangesFunction = Callable[[ChangesQuery], Iterable[ProviderChange]]
DocumentFunction = Callable[[ProviderQuery], ProviderDocument | None]
