"""What a department's code and the provider kit share: the query, the document, the refusal and the limits.

A department's records function takes a ``ProviderQuery`` and yields rows (``Row``); a document
function returns a ``ProviderDocument`` or None; either raises ``QueryRefused`` to refuse a query
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


RecordsFunction = Callable[[ProviderQuery], Iterable[Row]]
DocumentFunction = Callable[[ProviderQuery], ProviderDocument | None]
