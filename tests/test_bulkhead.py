"""A department whose backend hangs takes only its share of the hub's worker threads; the others go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from exchange import models as m
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from tests.exchange_world import PERSON_ID, World, fails, lookup, make_world, query, serve_lookup
from tests.harness import HOUSING, base_settings, identity_spec, running_hub
from tests.test_http_adapter import Endpoint, answer_json, serving

HANGING = "10102/350200000031"
IMPATIENT = "10102/350200000032"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = replace(
        base_settings(tmp_path / "hub"), worker_threads=4, backend_threads_per_department=2, call_timeout_seconds=30
    )
    with running_hub(settings) as hub:
        yield make_world(hub)


def _hanging_resource(world: World, endpoint: Endpoint, code: str, timeout: float) -> None:
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "证件号码", m.FieldType.STRING, filterable=True),
    )
    world.publish("housing", identity_spec(code, HOUSING.code, data_items=items, name=f"住房保障对象 {code}"))
    binding = cpb.Binding(resource_code=code, http=cpb.HttpBackend(url=endpoint.url), timeout_seconds=timeout)
    world.bind("housing", binding)
    world.grant(code, ("name", "id_number"), "housing")


def test_a_hanging_department_holds_only_its_share_of_threads(world: World, tmp_path: Path) -> None:
    serve_lookup(world, tmp_path)  # the police's lookup: a healthy department
    gate = threading.Event()

    def hang_then_answer(handler: object) -> None:
        gate.wait(25)
        answer_json([{"name": "王五", "id_number": PERSON_ID}])(handler)  # type: ignore[arg-type]

    with serving(Endpoint(answer=hang_then_answer)) as endpoint:
        _hanging_resource(world, endpoint, HANGING, 20)
        _hanging_resource(world, endpoint, IMPATIENT, 1)
        stub = world.exchange()
        ask = query(HANGING, {"id_number": PERSON_ID}, ["name"])
        with ThreadPoolExecutor(4) as pool:
            calls: list[Future[xpb.QueryResponse]] = [pool.submit(stub.Query, ask, timeout=30) for _ in range(4)]
            # Two hold the department's two threads, waiting on the endpoint; two wait for a thread, holding none.
            _until(lambda: len(endpoint.paths) >= 2)
            # The police's lookup is answered meanwhile: the housing calls took only the housing share.
            assert stub.Query(lookup(), timeout=10).records
            assert not any(c.done() for c in calls) and len(endpoint.paths) == 2
            # A housing call whose backend allows 1 s gives up waiting for a thread after that, and says why.
            impatient = query(IMPATIENT, {"id_number": PERSON_ID}, ["name"])
            error = fails(grpc.StatusCode.UNAVAILABLE, stub.Query, impatient)
            assert "not keeping up" in (error.details() or "") and HOUSING.code in (error.details() or "")
            gate.set()
            answered = [c.result(timeout=20) for c in calls]
        assert all(a.records for a in answered) and len(endpoint.paths) == 4


def _until(check: Callable[[], bool], limit: float = 20.0) -> None:
    """Waits for ``check`` (a liveness bound, not a measurement)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "the condition did not come about"
        time.sleep(0.02)
