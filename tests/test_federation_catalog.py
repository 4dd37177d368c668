"""One catalog across hubs: entries catalogued once at their home hub reach every peered hub incrementally,
keep their home wherever they are relayed, follow their home's changes, and are refused when a peer may not
offer them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.main import main
from exchange.federation.model import HubRef, Offer, Peer, PeerRelation
from exchange.server.federation import readable_offers
from exchange.server.federation_wire import offer_to_wire
from exchange.store.schema import CatalogOfferRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import PROVINCE_MARKET, SIMING_MARKET, Node, department, hubs, peer_pair
from tests.harness import POLICE, TEST_RECORD, identity_spec

HULI = department("350206", "0077889", "湖里区市场监督管理局", m.AdministrativeLevel.COUNTY)
COUNTY_ENTRY = "10101/350203000001"
CITY_ENTRY = "10101/350200000001"
PROVINCE_ENTRY = "10101/350000000001"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """County ← city ← province, peered, each with one published entry of a department it holds."""
    with hubs(tmp_path, "county", "city", "province") as running:
        peer_pair(running["county"], running["city"])
        peer_pair(running["city"], running["province"])
        for level, department, code in (
            ("county", SIMING_MARKET, COUNTY_ENTRY),
            ("city", POLICE, CITY_ENTRY),
            ("province", PROVINCE_MARKET, PROVINCE_ENTRY),
        ):
            _publish(running[level], department, code)
        yield running


def _publish(node: Node, department: m.Department, code: str) -> None:
    hub = node.running
    if department.code not in hub.certifiers:
        hub.add_department(department)
    hub.publish(hub.certifier(department.code), identity_spec(code, department.code))


def _sync_all(tree: dict[str, Node]) -> None:
    """Rounds enough for an entry to cross the tree: up to the province, then down to the county."""
    for level in ("county", "city", "province", "city", "county"):
        tree[level].sync()


def _listed(node: Node, home_hub_code: str = "", home_level: str = "") -> dict[str, tuple[str, str, str]]:
    """ListResources at ``node``: code → (home hub code, name, level), every page."""
    out: dict[str, tuple[str, str, str]] = {}
    token = ""
    with node.running.client() as hub:
        while True:
            request = cpb.ListResourcesRequest(
                page_size=1, page_token=token, home_hub_code=home_hub_code, home_level=home_level
            )
            page = hub.call(hub.catalog.ListResources, request)
            out.update({r.code: (r.home_hub_code, r.home_hub_name, r.home_level) for r in page.resources})
            token = page.next_page_token
            if not token:
                return out


def test_entries_reach_every_hub_of_the_tree_with_their_home_and_filters_find_them(
    tree: dict[str, Node],
) -> None:
    _sync_all(tree)
    county_home = ("350203", "思明区政务数据共享平台", "county")
    city_home = ("350200", "厦门市政务数据共享平台", "city")
    province_home = ("350000", "福建省政务数据共享平台", "province")
    # the county's entry reached the province through the city, keeping its home
    assert _listed(tree["province"]) == {
        COUNTY_ENTRY: county_home,
        CITY_ENTRY: city_home,
        PROVINCE_ENTRY: ("", "", ""),
    }
    assert _listed(tree["county"]) == {COUNTY_ENTRY: ("", "", ""), CITY_ENTRY: city_home, PROVINCE_ENTRY: province_home}
    assert tree["county"].running.hub.store.federated.get(COUNTY_ENTRY) is None  # never came back home

    province = tree["province"]
    assert set(_listed(province, home_hub_code="350203")) == {COUNTY_ENTRY}
    assert set(_listed(province, home_level="city")) == {CITY_ENTRY}
    assert set(_listed(province, home_hub_code="350000")) == {PROVINCE_ENTRY}
    assert set(_listed(province, home_level="province")) == {PROVINCE_ENTRY}
    with province.running.client() as hub:
        found = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=COUNTY_ENTRY))
    assert (found.home_hub_code, found.home_level, found.department_code) == ("350203", "county", SIMING_MARKET.code)


def test_a_remote_entry_carries_its_owner_name_from_home_and_a_search_finds_it_by_that_name(
    tree: dict[str, Node], capsys: pytest.CaptureFixture[str]
) -> None:
    _sync_all(tree)
    province = tree["province"]
    with province.running.client() as hub:
        relayed = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=COUNTY_ENTRY))
        own = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=PROVINCE_ENTRY))
        # the county's department is not in the province's registry: its name came with the entry, via the city
        assert (relayed.home_hub_code, relayed.home_department_name) == ("350203", SIMING_MARKET.name)
        assert own.home_department_name == ""  # this hub's registry names its own departments
        found = hub.call(hub.catalog.ListResources, cpb.ListResourcesRequest(text="思明区市场"))
        assert [r.code for r in found.resources] == [COUNTY_ENTRY]
        both = hub.call(hub.catalog.ListResources, cpb.ListResourcesRequest(text="市场监督管理局"))
        assert [r.code for r in both.resources] == [PROVINCE_ENTRY, COUNTY_ENTRY]  # local and remote, by owner
    with tree["county"].running.client() as hub:
        city = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=CITY_ENTRY))
    assert city.home_department_name == POLICE.name
    capsys.readouterr()
    address = ["--hub", province.running.settings.hub_address, "--identity", str(province.running.operator)]
    assert main([*address, "catalog", "list", "--text", "思明区市场"]) == 0
    shown = capsys.readouterr().out
    assert "department at home" in shown and SIMING_MARKET.name in shown and "350203 思明区政务数据共享平台" in shown


def _offers_from(node: Node, peer: str) -> int:
    with node.running.hub.store.db.read() as s:
        return s.scalar(select(func.count()).where(CatalogOfferRow.via_peer == peer)) or 0


def test_sync_is_incremental_resumes_after_its_cursor_and_carries_a_suspension(tmp_path: Path) -> None:
    with hubs(tmp_path, "county", "city") as running:
        county, city = running["county"], running["city"]
        peer_pair(county, city)
        _publish(county, SIMING_MARKET, COUNTY_ENTRY)
        city.sync()
        first = city.peer(county.code).offer_sequence
        assert first > 0 and _offers_from(city, county.code) == 1
        city.sync()  # nothing new: nothing fetched again, the cursor stays
        assert city.peer(county.code).offer_sequence == first and _offers_from(city, county.code) == 1

        steward = county.running.certifier(SIMING_MARKET.code)
        with county.running.client(steward) as hub:
            request = cpb.ChangeResourceStatusRequest(code=COUNTY_ENTRY, reason="数据核查")
            hub.call(hub.catalog.SuspendResource, request)
        city.sync()
        assert city.peer(county.code).offer_sequence > first
        assert _offers_from(city, county.code) == 2  # only the change after the cursor
        with city.running.client() as hub:
            seen = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=COUNTY_ENTRY))
        assert seen.status == cpb.RESOURCE_STATUS_SUSPENDED and seen.version == 2
        assert seen.home_hub_code == county.code

        # the county ends the peering: its entries leave the city's catalog
        with county.running.client() as hub:
            hub.call(hub.federation.EndPeer, fpb.EndPeerRequest(code=city.code, reason="机构调整"))
        assert set(_listed(city)) == set()


def test_a_peer_offering_an_entry_of_a_department_its_home_does_not_hold_is_refused(tmp_path: Path) -> None:
    with hubs(tmp_path, "county", "city") as running:
        county, city = running["county"], running["city"]
        peer_pair(county, city)
        _publish(county, POLICE, CITY_ENTRY)  # a city department's entry, catalogued at the county
        _publish(county, SIMING_MARKET, COUNTY_ENTRY)
        city.sync()
        problem = city.peer(county.code).sync_problem
        assert f"entry {CITY_ENTRY}" in problem and "is not held by its home hub 350203" in problem
        assert set(_listed(city)) == {COUNTY_ENTRY}  # its own entry is kept; the cursor moved past both
        assert city.peer(county.code).offer_sequence >= 2
        # the refusal outlives the next round's sync problem: it is in the city's audit log, naming the peer
        (refusal,) = [json.loads(t) for t in city.federation_records() if '"refuse_offer"' in t]
        assert (refusal["actor"], refusal["outcome"], refusal["resource"]) == ("hub/350203", "denied", CITY_ENTRY)
        assert "is not held by its home hub 350203" in refusal["reason"]


def _offer(code: str, department: str, home: HubRef, sequence: int = 1) -> Offer:
    now = dt.datetime.now(dt.UTC)
    resource = m.Resource(identity_spec(code, department), m.ResourceStatus.PUBLISHED, 1, now, now, now)
    return Offer(sequence, resource, home)


def test_offers_a_peer_may_not_make_are_refused_and_the_rest_kept(tmp_path: Path) -> None:
    with hubs(tmp_path, "county", "city") as running:
        county, city = running["county"], running["city"]
        peer_pair(county, city)
        _publish(city, POLICE, CITY_ENTRY)
        as_child = city.peer(county.code)
        accept = city.federation.catalog.accept
        fine = _offer(COUNTY_ENTRY, SIMING_MARKET.code, HubRef("350203", "思明区", "county"))
        refusals = accept(
            as_child,
            [
                _offer("10101/350200000009", POLICE.code, HubRef("350200", "厦门市", "city"), 2),
                _offer("10101/350206000001", HULI.code, HubRef("350206", "湖里区", "county"), 3),
                _offer(CITY_ENTRY, SIMING_MARKET.code, HubRef("350203", "思明区", "county"), 4),
                replace(fine, sequence=5, resource=replace(fine.resource, spec=replace(fine.resource.spec, name=""))),
                fine,
            ],
            5,
        )
        assert len(refusals) == 4
        assert "its home hub is this hub (350200): a routing loop" in refusals[0]
        assert "a child, may offer only entries homed within its division, not at 350206" in refusals[1]
        assert "an entry of this hub has that code" in refusals[2]
        assert "its entry is malformed" in refusals[3]
        assert set(_listed(city, home_hub_code="350203")) == {COUNTY_ENTRY}

        # from its parent, the county takes no entry homed within its own division
        as_parent = county.peer(city.code)
        refusals = county.federation.catalog.accept(
            as_parent, [_offer("10101/350203000077", SIMING_MARKET.code, HubRef("350203", "思明区", "county"))], 1
        )
        assert refusals and "its home hub is this hub (350203)" in refusals[0]
        held = _offer("10101/350203000078", SIMING_MARKET.code, HubRef("350200", "厦门市", "city"))
        assert county.federation.catalog.accept(as_parent, [replace(held, sequence=2)], 2) == []  # the city holds it

        # from its parent, the city takes no entry homed within its division (those come from its children)
        _, ca = pki.create_ca("福建省 CA")
        parent = Peer("350000", "福建省", "province", PeerRelation.PARENT, "localhost:1", pki.cert_pem(ca).decode())
        parent = city.running.hub.store.peers.register(parent, audit=TEST_RECORD)
        looped = _offer("10101/350203000079", SIMING_MARKET.code, HubRef("350203", "思明区", "county"))
        refusals = city.federation.catalog.accept(parent, [looped], 1)
        assert refusals and "come from its children, not its parent" in refusals[0]
        assert city.running.hub.store.federated.get("10101/350203000079") is None


def test_an_application_for_a_remote_entry_is_checked_here_first(tmp_path: Path) -> None:
    with hubs(tmp_path, "county", "city") as running:
        county, city = running["county"], running["city"]
        peer_pair(county, city)
        _publish(county, SIMING_MARKET, COUNTY_ENTRY)
        city.sync()
        city.running.add_department(POLICE)
        city.running.add_system("ga-rkxt", POLICE.code)
        clerk = city.running.add_person("ga-clerk", POLICE.code, m.Role.CONSUMER)
        today = dt.date.today()
        ask = rpb.ShareRequest(
            resource_code=COUNTY_ENTRY,
            system_codes=["ga-rkxt"],
            purpose="户籍核验",
            legal_basis="《中华人民共和国居民身份证法》第十五条",
            fields=["name"],
            start_date=w.date_to_wire(today),
            end_date=w.date_to_wire(today + dt.timedelta(days=30)),
        )
        # Applications go to the home hub (tests/test_federation_rights.py), once this hub finds nothing wrong.
        with city.running.client(clerk) as hub, pytest.raises(grpc.RpcError) as applied:
            hub.call(hub.rights.Apply, rpb.ApplyRequest(request=ask))
        assert applied.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "expected_daily_calls" in str(applied.value.details())
        assert not city.running.hub.store.applications.waiting()


def test_an_offer_that_cannot_be_read_is_refused_and_the_cursor_moves_past_it(tmp_path: Path) -> None:
    with hubs(tmp_path, "county", "city") as running:
        county, city = running["county"], running["city"]
        peer_pair(county, city)
        fine = _offer(COUNTY_ENTRY, SIMING_MARKET.code, HubRef("350203", "思明区政务数据共享平台", "county"), 7)
        garbled = offer_to_wire(replace(fine, sequence=6))
        garbled.resource.code = "10101/350203000002"
        garbled.resource.share_type = 99  # type: ignore[assignment]  # a value no hub sends
        page = fpb.ListOfferedEntriesResponse(entries=[garbled, offer_to_wire(fine)], last_sequence=9)
        offers, unreadable = readable_offers(page)
        assert [o.sequence for o in offers] == [7] and len(unreadable) == 1
        refusals = city.federation.catalog.accept(city.peer(county.code), offers, 9, unreadable)
        assert refusals == unreadable and "entry '10101/350203000002' (offer 6): malformed" in refusals[0]
        assert city.peer(county.code).offer_sequence == 9
        assert "malformed" in city.peer(county.code).sync_problem
        assert set(_listed(city)) == {COUNTY_ENTRY}
