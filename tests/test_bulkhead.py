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
from tests.exchange_world import PERSON_ID, World, lookup, make_world, query, serve_lookup
from tests.harness import HOUSING, base_settings, identity_spec, running_hub
from tests.test_http_adapter import Endpoint, answer_json, serving

HANGING = "10102/350200000031"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = replace(
        base_settings(tmp_path / "hub"), worker_threads=4, backend_threads_per_department=2, call_timeout_seconds=30
    )
    with running_hub(settings) as hub:
        yield make_world(hub)


def _hanging_resource(world: World, endpoint: Endpoint) -> None:
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "证件号码", m.FieldType.STRING, filterable=True),
    )
    world.publish("housing", identity_spec(HANGING, HOUSING.code, data_items=items, name="住房保障对象"))
    binding = cpb.Binding(resource_code=HANGING, http=cpb.HttpBackend(url=endpoint.url), timeout_seconds=20)
    world.bind("housing", binding)
    world.grant(HANGING, ("name", "id_number"), "housing")


def test_a_hanging_department_holds_only_its_share_of_threads(world: World, tmp_path: Path) -> None:
    serve_lookup(world, tmp_path)  # the police's lookup: a healthy department
    gate = threading.Event()

    def hang_then_answer(handler: object) -> None:
        gate.wait(25)
        answer_json([{"name": "王五", "id_number": PERSON_ID}])(handler)  # type: ignore[arg-type]

    with serving(Endpoint(answer=hang_then_answer)) as endpoint:
        _hanging_resource(world, endpoint)
        stub = world.exchange()
        ask = query(HANGING, {"id_number": PERSON_ID}, ["name"])
        with ThreadPoolExecutor(4) as pool:
            calls: list[Future[xpb.QueryResponse]] = [pool.submit(stub.Query, ask, timeout=30) for _ in range(4)]
            # Two get a thread and wait on the endpoint; the other two are refused at once.
            _until(lambda: sum(c.done() for c in calls) >= 2 and len(endpoint.paths) >= 2)
            refused = [c.exception() for c in calls if c.done()]
            hanging = [c for c in calls if not c.done()]
            assert len(refused) == 2 and len(hanging) == 2
            for error in refused:
                assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE
                assert "not keeping up" in (error.details() or "") and HOUSING.code in (error.details() or "")
            # The police's lookup is answered while the two housing calls still hang.
            assert stub.Query(lookup(), timeout=10).records
            assert not any(c.done() for c in hanging)
            gate.set()
            answered = [c.result(timeout=20) for c in hanging]
        assert all(a.records for a in answered)
        assert len(endpoint.paths) == 2  # the refused calls never reached the department


def _until(check: Callable[[], bool], limit: float = 20.0) -> None:
    """Waits for ``check`` (a liveness bound, not a measurement)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "the condition did not come about"
        time.sleep(0.02)
