"""A hub whose resident lookup is served, for subscriptions, by a fake police backend that records changes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from adapters.base import Unsupported
from exchange.backend import Batch, Change, ChangeBatch, ChangeRequest, Document, FetchRequest, Lane, Row
from exchange.models import Binding
from exchange.server.app import Hub
from exchange.server.loop import new_loop
from exchange.v1 import subscription_pb2 as spb
from exchange.v1 import subscription_pb2_grpc
from tests.exchange_world import LOOKUP, PURPOSE, World, make_world, serve_lookup
from tests.harness import RunningHub


class FakeSource:
    """A department's backend that keeps a change log (cursors: zero-padded positions, so they only grow)."""

    name = "fake-police"

    def __init__(self, subscribable: bool = True, *, filtering: bool = True) -> None:
        self.subscribable = subscribable
        self.filtering = filtering  # False: a faulty source that returns every change whatever the filters
        self.log: list[Change] = []
        self._lock = threading.Lock()

    def change(self, name: str, id_number: str, kind: str = "upsert") -> None:
        with self._lock:
            self.log.append(Change(f"{len(self.log) + 1:08d}", {"name": name, "id_number": id_number}, kind))

    async def changes(self, request: ChangeRequest) -> ChangeBatch:
        if not self.subscribable:
            raise Unsupported("of department police", "changes")
        with self._lock:
            log = list(self.log)
        if request.after is None:
            return ChangeBatch([], f"{len(log):08d}")
        start = int(request.after or "0")
        filters = request.filters if self.filtering else {}
        wanted = [c for c in log[start:] if all(c.row.get(k) == v for k, v in filters.items())]
        taken = wanted[: request.limit]
        cursor = taken[-1].cursor if taken else (log[-1].cursor if log and not wanted else request.after)
        return ChangeBatch(taken, cursor)

    async def fetch(self, request: FetchRequest) -> list[Row]:
        raise Unsupported("of department police", "queries")

    async def stream(self, request: FetchRequest, batch_size: int) -> AsyncGenerator[Batch, None]:
        raise Unsupported("of department police", "streams")
        yield []  # pragma: no cover - makes this an async generator

    async def document(self, request: FetchRequest) -> Document:
        raise Unsupported("of department police", "documents")

    async def aclose(self) -> None:
        return None


@dataclass
class Subscribing:
    world: World
    source: FakeSource
    grant_id: str

    @property
    def hub(self) -> RunningHub:
        return self.world.hub

    def stub(self, identity: Path | None = None) -> subscription_pb2_grpc.SubscriptionServiceStub:
        client = self.hub.client(identity or self.world.consumer_system)
        return subscription_pb2_grpc.SubscriptionServiceStub(client.channel)

    def subscribe(self, **changes: object) -> spb.Subscription:
        request = spb.CreateSubscriptionRequest(resource_code=LOOKUP, purpose=PURPOSE, fields=["name", "id_number"])
        for key, value in changes.items():
            setattr(request, key, value)
        return self.stub().CreateSubscription(request, timeout=20).subscription


def plug(hub: RunningHub, source: FakeSource) -> None:
    """Every backend the hub opens from now on is ``source`` (the fake stands for the police front end)."""

    def opener(name: str, binding: Binding, lane: Lane) -> FakeSource:
        return source

    hub.hub.backends._opener = opener


def subscribing(hub: RunningHub, directory: Path, source: FakeSource | None = None) -> Subscribing:
    world = make_world(hub)
    grant_id = serve_lookup(world, directory)
    fake = source or FakeSource()
    plug(hub, fake)
    return Subscribing(world, fake, grant_id)


def read(stream: Iterator[spb.FollowResponse], changes: int) -> list[spb.FollowResponse]:
    """Messages of a Follow until ``changes`` changes came (gaps count their sequences)."""
    got: list[spb.FollowResponse] = []
    count = 0
    while count < changes:
        message = next(stream)
        got.append(message)
        part = message.batch if message.HasField("batch") else message.gap
        count += part.last_sequence - part.first_sequence + 1
    return got


def sequences(messages: list[spb.FollowResponse]) -> list[int]:
    return [c.sequence for m in messages if m.HasField("batch") for c in m.batch.changes]


def ends_with(code: grpc.StatusCode, stream: Iterator[spb.FollowResponse]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, f"{error.code()}: {error.details()}"
    return error


@contextmanager
def another_hub(first: RunningHub, source: FakeSource) -> Iterator[RunningHub]:
    """A second hub process over ``first``'s home and store (its own event loop and port), the fake plugged in."""
    settings = replace(first.settings, hub_address="")
    loop = new_loop(settings)
    thread = threading.Thread(target=loop.run_forever, name="hub-loop-2", daemon=True)
    thread.start()
    hub = Hub(settings)
    port = asyncio.run_coroutine_threadsafe(hub.start(), loop).result(timeout=30)
    running = RunningHub(replace(settings, hub_address=f"localhost:{port}"), first.operator, hub)
    plug(running, source)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(hub.stop(grace=1), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
