"""What the hub asks of a departmental backend, whatever connects to it.

The exchange service talks to every backend through ``Backend``; the connectors in ``adapters``
implement it (SQL front-end database, gRPC provider, HTTP/JSON endpoint, file store). A backend
returns only the fields asked for, with values of their declared types, or raises an
``ExchangeError`` that names the provider and never its internals (see ``adapters.base``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from exchange.models import ResourceSpec

Row = dict[str, object]


@dataclass(frozen=True)
class FetchRequest:
    """One fetch: typed values of the resource's filterable items, and the fields wanted."""

    resource: ResourceSpec
    filters: Mapping[str, object]
    fields: tuple[str, ...]
    # Most rows to return (fetch); streams are not capped.
    limit: int
    # Longest wait for the backend: for a whole fetch, for each batch of a stream, for each chunk.
    timeout_seconds: float
    offset: int = 0
    exchange_id: str = ""


def _nothing() -> None:
    return None


@dataclass
class Document:
    """A document being read: what it is, and its bytes as an iterator of chunks.

    ``close`` stops reading early (the consumer went away) and releases what the backend holds.
    """

    name: str
    media_type: str
    size: int  # 0 when the backend does not know it in advance
    chunks: Iterator[bytes]
    close: Callable[[], None] = field(default=_nothing)


class Backend(Protocol):
    """A connector to one department's backend, made from a resource's binding.

    Two optional methods let a backend do better, and the exchange service uses them when present:
    ``async fetch_async(request)`` (a page fetched on the hub's event loop, holding no worker thread)
    and ``stream_records(request, batch_size)`` (batches of ``exchange.v1.Record`` passed on as they
    are, checked and masked in place, instead of rows converted twice). The gRPC backend has both.
    """

    name: str

    def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows after ``request.offset``."""
        ...

    def stream(self, request: FetchRequest, batch_size: int) -> Iterator[list[Row]]:
        """All matching rows in batches; closing the iterator cancels the backend's work."""
        ...

    def document(self, request: FetchRequest) -> Document:
        """The one document the filters name."""
        ...

    def close(self) -> None:
        """Releases connections; the backend is not used afterwards."""
        ...
