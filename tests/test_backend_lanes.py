"""Blocking backends behind ``OnThreads``: each step on a thread of its department's lane, never more threads
than the lane holds, a step that waits too long for one refused with a reason, streams and documents closed
in the backend when the caller stops early; and the pool that keeps one lane per department."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import pytest

from exchange import models as m
from exchange.backend import (
    Backend,
    BlockingDocument,
    Change,
    ChangeBatch,
    ChangeRequest,
    FetchRequest,
    Lane,
    OnThreads,
    Row,
)
from exchange.errors import Unavailable
from exchange.services.exchange import BackendPool
from tests.harness import POLICE, identity_spec

SPEC = identity_spec()


def _request(timeout: float = 5.0) -> FetchRequest:
    return FetchRequest(SPEC, {"id_number": "1"}, ("name",), 10, timeout)


@dataclass
class Blocking:
    """A department's blocking backend (a fake: what it does is under the test's control)."""

    name: str = "of department P (R1)"
    gate: threading.Event = field(default_factory=threading.Event)
    running: int = 0
    most: int = 0
    threads: set[str] = field(default_factory=set)
    closed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fetch(self, request: FetchRequest) -> list[Row]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            assert self.gate.wait(10)
            return [{"name": "张三"}]
        finally:
            with self.lock:
                self.running -= 1

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        try:
            for n in range(1000):
                self.threads.add(threading.current_thread().name)
                yield [{"name": f"{n}"}] * batch_size
        finally:
            self.closed.append("stream")

    def document(self, request: FetchRequest) -> BlockingDocument:
        def chunks() -> Iterator[bytes]:
            yield from (b"x" * 10 for _ in range(1000))

        return BlockingDocument("a.pdf", "application/pdf", 0, chunks(), lambda: self.closed.append("document"))

    def changes(self, request: ChangeRequest) -> ChangeBatch:
        self.threads.add(threading.current_thread().name)
        start = int(request.after or 0)
        found = [Change(str(n), {"name": f"{n}"}) for n in range(start + 1, start + 1 + request.limit)]
        return ChangeBatch(found, found[-1].cursor if found else request.after or "0")

    def close(self) -> None:
        self.closed.append("backend")


def test_a_lane_holds_at_most_its_threads_and_refuses_a_step_that_waits_too_long() -> None:
    async def run() -> None:
        blocking, lane = Blocking(), Lane(2)
        backend: Backend = OnThreads(blocking, lane)
        held = [asyncio.ensure_future(backend.fetch(_request())) for _ in range(3)]
        while blocking.running < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert blocking.running == 2  # the third waits for a slot on the loop, holding no thread
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not keeping up: 2 calls have held it") as refused:
            await backend.fetch(_request(timeout=0.3))
        assert 0.25 < time.monotonic() - started < 3
        assert blocking.name in refused.value.message
        other = OnThreads(Blocking(gate=_open()), Lane(2))  # another department's lane is not touched
        assert await other.fetch(_request()) == [{"name": "张三"}]
        blocking.gate.set()
        assert [await h for h in held] == [[{"name": "张三"}]] * 3
        assert blocking.most == 2 and threading.main_thread().name not in blocking.threads

    asyncio.run(run())


def test_a_caller_that_leaves_gives_the_slot_back_only_when_the_thread_is_done() -> None:
    async def run() -> None:
        blocking, lane = Blocking(), Lane(1)
        backend = OnThreads(blocking, lane)
        leaving = asyncio.ensure_future(backend.fetch(_request()))
        while blocking.running < 1:
            await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        with pytest.raises(Unavailable):  # the thread is still in the backend: its slot is still taken
            await backend.fetch(_request(timeout=0.2))
        blocking.gate.set()
        assert await backend.fetch(_request()) == [{"name": "张三"}]

    asyncio.run(run())


def test_a_stream_closed_early_closes_the_backends_generator_in_a_worker_thread() -> None:
    async def run() -> None:
        blocking = Blocking()
        stream = OnThreads(blocking, Lane(2)).stream(_request(), 5)
        first = await anext(stream)
        assert first == [{"name": "0"}] * 5
        await stream.aclose()
        assert blocking.closed == ["stream"]
        assert threading.main_thread().name not in blocking.threads

    asyncio.run(run())


def test_a_document_is_read_on_the_lane_and_closed_in_the_backend() -> None:
    async def run() -> None:
        blocking = Blocking()
        document = await OnThreads(blocking, Lane(2)).document(_request())
        assert (document.name, document.media_type) == ("a.pdf", "application/pdf")
        assert [await anext(document.chunks) for _ in range(3)] == [b"x" * 10] * 3
        await document.chunks.aclose()
        await document.aclose()
        assert blocking.closed == ["document"]

    asyncio.run(run())


def test_the_pool_keeps_one_lane_per_department_and_closes_a_replaced_backend() -> None:
    opened: list[tuple[str, Lane, Blocking]] = []

    def opener(name: str, binding: m.Binding, lane: Lane) -> Backend:
        blocking = Blocking(name=name)
        opened.append((name, lane, blocking))
        return OnThreads(blocking, lane)

    async def run() -> None:
        pool = BackendPool(opener, threads_per_department=3)
        first = _resource(SPEC)
        second = _resource(identity_spec("10101/350200000002"))
        binding = m.Binding(SPEC.code, m.BackendKind.SQL, {}, timeout_seconds=0.1, version=1)
        backend = pool.get(first, binding)
        assert pool.get(first, binding) is backend  # one open backend per binding version
        pool.get(second, m.Binding(second.spec.code, m.BackendKind.SQL, {}, version=1))
        assert opened[0][1] is opened[1][1] and opened[0][1].threads == 3  # the department's one lane
        assert POLICE.code in opened[0][0]
        newer = pool.get(first, m.Binding(SPEC.code, m.BackendKind.SQL, {}, version=2))
        assert pool.get(first, binding) is newer and len(opened) == 3  # a plan of the old version: the open one
        pool.close_retired()
        assert opened[0][2].closed == []  # its calls in flight have their timeout (0.1 s) first
        await _eventually(lambda: opened[0][2].closed == ["backend"])
        assert opened[2][2].closed == []
        await pool.aclose()
        assert all(b.closed == ["backend"] for _, _, b in opened)

    asyncio.run(run())


def test_calls_that_open_one_binding_at_once_share_one_backend_and_none_is_cut() -> None:
    """Calls that find a binding not yet open open it each, at once (worker threads); the first one installed
    is the one every call uses, and the others, never used, are the only ones closed."""
    opened: list[Blocking] = []
    together = threading.Barrier(4)

    def opener(name: str, binding: m.Binding, lane: Lane) -> Backend:
        blocking = Blocking(name=name)
        opened.append(blocking)
        together.wait(5)  # every call has missed the pool before any installs its backend
        return OnThreads(blocking, lane)

    async def run() -> None:
        pool = BackendPool(opener, default_timeout=0.1)
        binding = m.Binding(SPEC.code, m.BackendKind.SQL, {}, version=1)
        got = await asyncio.gather(*(asyncio.to_thread(pool.get, _resource(SPEC), binding) for _ in range(4)))
        assert len(opened) == 4 and len({id(b) for b in got}) == 1
        pool.close_retired()
        await _eventually(lambda: sum(b.closed == ["backend"] for b in opened) == 3)
        assert pool.get(_resource(SPEC), binding) is got[0] and len(opened) == 4
        await pool.aclose()

    asyncio.run(run())


def test_a_retired_backend_still_waiting_is_closed_when_the_pool_is() -> None:
    opened: list[Blocking] = []

    def opener(name: str, binding: m.Binding, lane: Lane) -> Backend:
        opened.append(Blocking(name=name))
        return OnThreads(opened[-1], lane)

    async def run() -> None:
        pool = BackendPool(opener, default_timeout=600)
        pool.get(_resource(SPEC), m.Binding(SPEC.code, m.BackendKind.SQL, {}, version=1))
        pool.get(_resource(SPEC), m.Binding(SPEC.code, m.BackendKind.SQL, {}, version=2))
        pool.close_retired()
        await asyncio.sleep(0.05)
        assert opened[0].closed == []  # waiting for its calls (up to 600 s)
        await pool.aclose()  # the hub stopping does not wait for them
        assert [b.closed for b in opened] == [["backend"], ["backend"]]

    asyncio.run(run())


async def _eventually(check: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "not seen in time"
        await asyncio.sleep(0.02)


def _resource(spec: m.ResourceSpec) -> m.Resource:
    now = dt.datetime.now(dt.UTC)
    return m.Resource(spec, m.ResourceStatus.PUBLISHED, 1, now, now)


def _open() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


def test_changes_are_read_on_a_lane_thread() -> None:
    backend = Blocking()

    async def read() -> ChangeBatch:
        on_threads: Backend = OnThreads(backend, Lane(2))
        return await on_threads.changes(ChangeRequest(SPEC, {}, ("name",), "5", 3, 5.0))

    batch = asyncio.run(read())
    assert [c.cursor for c in batch.changes] == ["6", "7", "8"] and batch.cursor == "8"
    assert threading.current_thread().name not in backend.threads
