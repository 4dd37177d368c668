"""A department whose blocking backend hangs takes only its share of the hub's worker threads; the others go on.

The hanging backend is a real one: a department's PostgreSQL front-end table held under an exclusive lock,
so the SQL adapter's reads wait in the database (backends that answer on the event loop, gRPC and REST,
hold no worker thread at all while they wait).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, create_engine, text

from exchange import models as m
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from tests.exchange_world import PERSON_ID, World, fails, lookup, make_world, query, serve_lookup
from tests.harness import HOUSING, base_settings, identity_spec, running_hub

HANGING = "10102/350200000031"
IMPATIENT = "10102/350200000032"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = replace(
        base_settings(tmp_path / "hub"),
        worker_threads=4,
        backend_threads_per_department=2,
        call_timeout_seconds=30,
        backend_hosts=("127.0.0.1",),
    )
    with running_hub(settings) as hub:
        yield make_world(hub)


def _hanging_resource(world: World, url: str, code: str, timeout: float) -> None:
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "证件号码", m.FieldType.STRING, filterable=True),
    )
    world.publish("housing", identity_spec(code, HOUSING.code, data_items=items, name=f"住房保障对象 {code}"))
    binding = cpb.Binding(resource_code=code, sql=cpb.SqlBackend(url=url, table="people"), timeout_seconds=timeout)
    world.bind("housing", binding)
    world.grant(code, ("name", "id_number"), "housing")


def test_a_hanging_department_holds_only_its_share_of_threads(world: World, tmp_path: Path, postgres_url: str) -> None:
    serve_lookup(world, tmp_path)  # the police's lookup: a healthy department
    engine = create_engine(postgres_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE people (name text, id_number text)"))
        c.execute(text("INSERT INTO people VALUES ('王五', :id)"), {"id": PERSON_ID})
    _hanging_resource(world, postgres_url, HANGING, 20)
    _hanging_resource(world, postgres_url, IMPATIENT, 1)
    stub = world.exchange()
    ask = query(HANGING, {"id_number": PERSON_ID}, ["name"])
    locker = engine.connect()
    locker.execute(text("LOCK TABLE people IN ACCESS EXCLUSIVE MODE"))  # held until the transaction ends
    with ThreadPoolExecutor(4) as pool:
        calls: list[Future[xpb.QueryResponse]] = [pool.submit(stub.Query, ask, timeout=30) for _ in range(4)]
        # Two hold the department's two threads, waiting in the database; two wait for a thread, holding none.
        _until(lambda: _waiting(engine) >= 2)
        # The police's lookup is answered meanwhile: the housing calls took only the housing share.
        assert stub.Query(lookup(), timeout=10).records
        assert not any(c.done() for c in calls) and _waiting(engine) == 2
        # A housing call whose backend allows 1 s gives up waiting for a thread after that, and says why.
        impatient = query(IMPATIENT, {"id_number": PERSON_ID}, ["name"])
        error = fails(grpc.StatusCode.UNAVAILABLE, stub.Query, impatient)
        assert "not keeping up" in (error.details() or "") and HOUSING.code in (error.details() or "")
        locker.rollback()  # the lock goes: every waiting read is answered
        answered = [c.result(timeout=20) for c in calls]
    locker.close()
    assert all(a.records for a in answered)
    engine.dispose()


def _waiting(engine: Engine) -> int:
    """Reads of the front-end table waiting for the lock."""
    with engine.connect() as c:
        found = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
        return int(found.scalar_one())


def _until(check: Callable[[], bool], limit: float = 20.0) -> None:
    """Waits for ``check`` (a liveness bound, not a measurement)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "the condition did not come about"
        time.sleep(0.02)
