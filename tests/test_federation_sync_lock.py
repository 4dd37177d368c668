"""Two processes of one federating hub on one PostgreSQL store (issue 15), in this test's process: the sync
rounds run in the holder of the sync lock only; the other asks it by a notice, and hears peerings changed.

Rounds come every hour here (``settings_for``), so whatever the holder does within the test it does because it
was asked: a round asked in the other process runs in the holder (a catalog pull, an application made there
submitted), and a peer registered through the other process is trusted by the holder's listener without
any round of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from exchange import models as m
from exchange import wire as w
from exchange.federation.model import PeerState
from exchange.server.app import Hub
from exchange.server.loop import new_loop
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import PROVINCE_MARKET, Node, department, peer_pair, register_peer, settings_for
from tests.harness import RunningHub, identity_spec, running_hub
from tests.served_hubs import until

CITY_MARKET = department("350200", "0077889", "厦门市市场监督管理局", m.AdministrativeLevel.CITY)
CITY_ENTRY = "10101/350200000001"


@contextmanager
def second_process(first: RunningHub) -> Iterator[RunningHub]:
    """Another process of ``first``'s hub: the same home and store, its own loop, ports and federation listener."""
    settings = replace(first.settings, hub_address="")
    loop = new_loop(settings)
    thread = threading.Thread(target=loop.run_forever, name="hub-loop-2", daemon=True)
    thread.start()
    hub = Hub(settings)
    port = asyncio.run_coroutine_threadsafe(hub.start(), loop).result(timeout=30)
    try:
        yield RunningHub(replace(settings, hub_address=f"localhost:{port}"), first.operator, hub)
    finally:
        asyncio.run_coroutine_threadsafe(hub.stop(grace=1), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _remote(at: RunningHub, home: str) -> list[str]:
    with at.client() as hub:
        found = hub.call(hub.catalog.ListResources, cpb.ListResourcesRequest(home_hub_code=home))
    return [r.code for r in found.resources]


def _holder(process: RunningHub) -> float:
    """exchange_federation_sync_holder as the process's metrics expose it."""
    exposed = process.hub.metrics.exposition().decode()
    [value] = re.findall(r"^exchange_federation_sync_holder (\S+)$", exposed, re.MULTILINE)
    return float(value)


def _received(city: Node, steward: Path, request_id: str) -> int:
    """How many of the city's share requests came from the province's request ``request_id``."""
    with city.running.client(steward) as hub:
        found = hub.call(hub.rights.ListShareRequests, rpb.ListShareRequestsRequest(resource_code=CITY_ENTRY))
    return sum(r.cross_hub.consumer_request_id == request_id for r in found.requests)


def test_the_rounds_run_in_the_lock_holder_which_the_other_process_asks_and_tells(
    tmp_path: Path, postgres_url: str
) -> None:
    with ExitStack() as stack:
        city = Node("city", stack.enter_context(running_hub(settings_for(tmp_path, "city"))))
        county = Node("county", stack.enter_context(running_hub(settings_for(tmp_path, "county"))))
        on_postgres = replace(settings_for(tmp_path, "province"), database_url=postgres_url)
        province = Node("province", stack.enter_context(running_hub(on_postgres)))
        peer_pair(city, province)  # the province's first process ran its rounds: it holds the lock
        other = stack.enter_context(second_process(province.running))
        asked = other.hub.federation
        assert asked is not None
        assert province.federation.lock.held() and not asked.lock.held()
        assert (_holder(province.running), _holder(other)) == (1.0, 0.0)  # what each process's metrics say

        # A round asked in the other process runs in the holder: it pulls the city's new entry.
        city.running.add_department(CITY_MARKET)
        steward = city.running.certifier(CITY_MARKET.code)
        city.running.publish(steward, identity_spec(CITY_ENTRY, CITY_MARKET.code))
        asked.sync_soon()
        until(lambda: _remote(other, city.code) == [CITY_ENTRY], "the city's entry, pulled by the holder")

        # An application made through the other process reaches the city: the holder submits it when asked.
        other.add_department(PROVINCE_MARKET)
        other.add_system("fj-system", PROVINCE_MARKET.code)
        clerk = other.add_person("fj-clerk", PROVINCE_MARKET.code, m.Role.CONSUMER)
        today = dt.datetime.now(dt.UTC).date()
        app = m.Application(CITY_ENTRY, "", ("fj-system",), "企业登记核查", "《市场主体登记管理条例》",
                            ("name", "id_number"), today, today + dt.timedelta(days=30), 100)  # fmt: skip
        with other.client(clerk) as hub:
            applied = hub.call(hub.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
        until(lambda: _received(city, steward, applied.id) == 1, "the application at the city")

        # A peer registered through the other process is trusted by the holder's listener at once (a notice):
        # the county's introduction to the holder's port passes the handshake, with no round at the holder.
        register_peer(other, county, fpb.PEER_RELATION_CHILD)

        def introduced() -> bool:
            county.sync()  # the county's own round introduces it again
            return county.state_of(province.code) is PeerState.ACTIVE

        register_peer(county.running, province, fpb.PEER_RELATION_PARENT)
        until(introduced, "the county's introduction taken at the holder's listener")

        # The lock given up (as a clean stop does), whichever process tries first takes it; the gauges follow:
        # exactly one process says it holds it.
        province.federation.lock.release()
        until(lambda: asked.lock.held() or province.federation.lock.held(), "a process taking the lock again")
        assert sorted([_holder(province.running), _holder(other)]) == [0.0, 1.0]
