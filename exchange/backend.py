"""What the hub asks of a departmental backend, whatever connects to it.

The exchange service talks to every backend through ``Backend``, on the hub's event loop: a page is
awaited, a stream is an async iterator of batches, a document an async iterator of chunks. The
connectors in ``adapters`` implement it (SQL front-end database, gRPC provider, HTTP/JSON endpoint,
file store). Those that can only block (a database driver, a file read) implement ``BlockingBackend``
instead and are put behind ``OnThreads``, which runs each blocking step on a worker thread of their
department's ``Lane``: a backend that hangs holds only its department's threads.

A backend returns only the fields asked for, with values of their declared types, or raises an
``ExchangeError`` that names the provider and never its internals (see ``adapters.base``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from exchange.errors import Unavailable
from exchange.models import ResourceSpec
from exchange.v1 import data_pb2, exchange_pb2

Row = dict[str, object]
T = TypeVar("T")


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


@dataclass(frozen=True)
class Records:
    """A batch of a stream still in wire form (a gRPC provider's), checked against the declaration.

    ``message`` is the very message the consumer will receive, its ``records`` parsed straight from the
    provider's bytes and nothing else set: the hub masks them in place, fills in its own fields and sends
    it as it is, instead of converting or copying the records.
    """

    message: exchange_pb2.QueryBatch

    @property
    def items(self) -> Sequence[data_pb2.Record]:
        """The batch's records (those of ``message``)."""
        return self.message.records


# One batch of a stream: rows, or records already in wire form.
Batch = list[Row] | Records


@dataclass(frozen=True)
class ChangeRequest:
    """Ask a source for the changes after a position, for a subscription.

    ``after`` is a cursor the same source returned before (opaque to the hub, stored as it is), ``""``
    for the source's first change, or ``None`` for "from now": no changes, only the current position.
    ``filters`` are typed values of filterable items the changes must match (may be empty: all rows).
    """

    resource: ResourceSpec
    filters: Mapping[str, object]
    fields: tuple[str, ...]
    after: str | None
    # Most changes to return in one batch.
    limit: int
    timeout_seconds: float


@dataclass(frozen=True)
class Change:
    """One change at the source: the row as it is after the change, and the position just after it.

    ``kind`` is ``"upsert"`` (a row added or changed) or ``"delete"`` (``row`` then holds at least the
    items that identify it). ``cursor`` resumes right after this change; cursors of one source only grow.
    """

    cursor: str
    row: Row
    kind: str = "upsert"


@dataclass(frozen=True)
class ChangeBatch:
    """Changes in the source's order, and the position after the last of them.

    ``cursor`` is the position to ask from next: the last change's cursor, or one past it when the source
    knows that no later change up to there matches the request's filters (so it is not read again); when
    there are no changes, the current position for ``after=None``, else the request's ``after`` or later.
    """

    changes: list[Change]
    cursor: str


def being_cancelled() -> bool:
    """Whether the running task is being cancelled (its consumer left, its deadline passed, the hub stopping).

    A CancelledError raised while it is not came from below, as when a backend's connection is closed under
    a call: a failure to answer with, never taken for the consumer's leaving (whose call would then wait
    unanswered for its own deadline, with no closing record)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _nothing() -> None:
    return None


@dataclass
class Document:
    """A document being read: what it is, and its bytes as an async iterator of chunks.

    ``aclose`` stops reading early (the consumer went away) and releases what the backend holds; the
    exchange calls it, after closing ``chunks``, however the document ends.
    """

    name: str
    media_type: str
    size: int  # 0 when the backend does not know it in advance
    chunks: AsyncGenerator[bytes, None]
    aclose: Callable[[], Coroutine[Any, Any, None]] = field(default=_nothing)


class Backend(Protocol):
    """A connector to one department's backend, made from a resource's binding; used on the event loop."""

    name: str

    async def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows after ``request.offset``, within ``request.timeout_seconds``."""
        ...

    def stream(self, request: FetchRequest, batch_size: int) -> AsyncGenerator[Batch, None]:
        """All matching rows in batches of at most ``batch_size``, each within ``request.timeout_seconds``.

        An async generator: ``aclose()`` on it cancels the backend's work.
        """
        ...

    async def document(self, request: FetchRequest) -> Document:
        """The one document the filters name."""
        ...

    async def changes(self, request: ChangeRequest) -> ChangeBatch:
        """At most ``request.limit`` changes after ``request.after``, in order, within the timeout.

        A backend that cannot tell its changes raises ``adapters.base.Unsupported``; one whose source
        went backwards (a position it handed out no longer exists) raises ``FailedPrecondition``.
        """
        ...

    async def aclose(self) -> None:
        """Releases connections; the backend is not used afterwards."""
        ...


def _close_nothing() -> None:
    return None


@dataclass
class BlockingDocument:
    """``Document`` for a blocking backend: chunks from a plain iterator, ``close`` a plain call."""

    name: str
    media_type: str
    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None] = field(default=_close_nothing)


class BlockingBackend(Protocol):
    """A connector that blocks (a database driver, a file read): run by ``OnThreads``, never on the loop."""

    name: str

    def fetch(self, request: FetchRequest) -> list[Row]: ...

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        """Closing the generator cancels the backend's work."""
        ...

    def document(self, request: FetchRequest) -> BlockingDocument: ...

    def changes(self, request: ChangeRequest) -> ChangeBatch: ...

    def close(self) -> None: ...


class Lane:
    """The worker threads one department's blocking backends may hold at once (a bulkhead).

    A step beyond the limit waits for a slot on the event loop, holding no thread, for at most the
    backend's own timeout, then fails with UNAVAILABLE naming the provider.
    """

    def __init__(self, threads: int = 16) -> None:
        self.threads = max(1, threads)
        self._slots = asyncio.Semaphore(self.threads)

    async def run(self, provider: str, wait: float, work: Callable[[], T]) -> T:
        """``work`` on a worker thread, on one of this lane's slots."""
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise Unavailable(
                f"the backend {provider} is not keeping up: {self.threads} calls have held it "
                f"for over {wait:g} s; try again shortly"
            ) from None
        # The slot is the thread's: it is given back when the thread is done, not when a caller that left
        # stops waiting for it (the thread may still be blocked in the backend).
        running = asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, work)
        running.add_done_callback(self._release)
        return await asyncio.shield(running)

    def _release(self, finished: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not finished.cancelled():
            finished.exception()  # looked at: a caller that left does not want it logged as unretrieved


class OnThreads:
    """A ``BlockingBackend`` as a ``Backend``: each blocking step on a thread of its department's lane."""

    def __init__(self, backend: BlockingBackend, lane: Lane) -> None:
        self._backend = backend
        self._lane = lane
        self.name = backend.name

    @property
    def blocking(self) -> BlockingBackend:
        """The connector this wraps."""
        return self._backend

    async def fetch(self, request: FetchRequest) -> list[Row]:
        return await self._lane.run(self.name, request.timeout_seconds, lambda: self._backend.fetch(request))

    async def stream(self, request: FetchRequest, batch_size: int) -> AsyncGenerator[Batch, None]:
        wait = request.timeout_seconds
        batches = await self._lane.run(self.name, wait, lambda: self._backend.stream(request, batch_size))
        try:
            while (batch := await self._lane.run(self.name, wait, lambda: next(batches, None))) is not None:
                yield batch
        finally:
            await _close_quietly(batches.close)

    async def document(self, request: FetchRequest) -> Document:
        wait = request.timeout_seconds
        opened = await self._lane.run(self.name, wait, lambda: self._backend.document(request))
        return Document(
            opened.name,
            opened.media_type,
            opened.size,
            self._chunks(opened, wait),
            partial(_close_quietly, opened.close),
        )

    async def changes(self, request: ChangeRequest) -> ChangeBatch:
        return await self._lane.run(self.name, request.timeout_seconds, lambda: self._backend.changes(request))

    async def _chunks(self, opened: BlockingDocument, wait: float) -> AsyncGenerator[bytes, None]:
        while (data := await self._lane.run(self.name, wait, lambda: next(opened.chunks, None))) is not None:
            yield data

    async def aclose(self) -> None:
        await asyncio.to_thread(self._backend.close)


async def _close_quietly(close: Callable[[], object]) -> None:
    """Closes a blocking iterator or document; one still running a step in a worker thread is left to finish."""
    try:
        await asyncio.to_thread(close)
    except ValueError:  # "generator already executing": the worker thread's step ends it when it returns
        return
