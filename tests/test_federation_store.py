"""The federation's store on SQLite and PostgreSQL: peers and their changes, offers in commit order, remote
entries kept with their home and the peer's cursor, and an ended peer's entries forgotten."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, select

from exchange import models as m
from exchange import pki
from exchange.errors import AlreadyExists, NotFound
from exchange.federation.model import HubRef, Offer, Peer, PeerRelation, PeerState
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.catalog import Transition
from exchange.store.database import MIGRATIONS
from exchange.store.federated import RemoteFilter
from exchange.store.schema import AuditStagedRow
from tests.federation_support import SIMING_MARKET
from tests.harness import POLICE, TEST_RECORD, identity_spec

STEWARD = m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward")
COUNTY = HubRef("350203", "思明区", "county")


def _peer(code: str = "350203", relation: PeerRelation = PeerRelation.CHILD) -> Peer:
    _, ca = pki.create_ca(f"CA {code}")
    return Peer(code, "思明区", "county", relation, "localhost:7445", pki.cert_pem(ca).decode(), "f" * 64)


def test_a_peer_is_registered_once_changed_under_its_record_and_registered_anew_once_ended(store: Store) -> None:
    peer = store.peers.register(_peer(), audit=TEST_RECORD)
    assert (peer.state, peer.offer_sequence) == (PeerState.REGISTERED, 0)
    with pytest.raises(AlreadyExists):
        store.peers.register(_peer(), audit=TEST_RECORD)
    with pytest.raises(NotFound):
        store.peers.change("350206", lambda p: p, audit=TEST_RECORD)
    ended = store.peers.change("350203", lambda p: dataclasses.replace(p, state=PeerState.ENDED), audit=TEST_RECORD)
    assert ended.state is PeerState.ENDED
    again = store.peers.register(_peer(), audit=TEST_RECORD)
    assert again.state is PeerState.REGISTERED
    assert [p.code for p in store.peers.list((PeerState.REGISTERED,))] == ["350203"]
    assert store.peers.list((PeerState.ACTIVE,)) == []


def _change(store: Store, code: str, status: m.ResourceStatus, change: m.ResourceChange) -> None:
    def decide(current: m.Resource) -> Transition:
        return Transition(current.spec, status, change)

    store.catalog.change(code, 0, STEWARD, "test", decide, audit=TEST_RECORD)


def test_offers_follow_published_changes_in_commit_order_and_skip_drafts(store: Store) -> None:
    store.registry.add_department(POLICE, audit=TEST_RECORD)
    codes = [f"10101/35020000000{i}" for i in range(1, 7)]
    draft = identity_spec("10101/350200000000", name="草稿")
    store.catalog.create(draft, m.ResourceStatus.DRAFT, STEWARD, "", audit=TEST_RECORD)
    failed: list[BaseException] = []

    def publish(code: str) -> None:
        try:
            spec = identity_spec(code, name=f"条目 {code}")
            store.catalog.create(spec, m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
        except BaseException as e:  # a thread's failure is the test's
            failed.append(e)

    threads = [threading.Thread(target=publish, args=(code,)) for code in codes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    _change(store, codes[0], m.ResourceStatus.SUSPENDED, m.ResourceChange.SUSPENDED)
    offers, last = store.federated.offers(0, 100, "350203")
    assert sorted(o.resource.spec.code for o in offers[:6]) == codes  # the draft is not offered
    assert [o.sequence for o in offers] == sorted(o.sequence for o in offers) and last == offers[-1].sequence
    assert offers[-1].resource.status is m.ResourceStatus.SUSPENDED and offers[-1].home is None
    later, _ = store.federated.offers(offers[2].sequence, 100, "350203")
    assert later == offers[3:]


def test_an_offer_committed_while_a_page_is_read_is_in_that_page_or_after_its_last(store: Store) -> None:
    """A peer moves its cursor to the page's last sequence when the page is empty: an offer committed while the
    page was being read must not fall behind that last (the peer would never pull it)."""
    store.registry.add_department(POLICE, audit=TEST_RECORD)
    published: list[bool] = []

    def publish_after_the_first_read(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if not published and "catalog_offers" in statement:
            published.append(False)  # once
            spec = identity_spec("10101/350200000001", name="居民身份信息")
            args = (spec, m.ResourceStatus.PUBLISHED, STEWARD, "")
            writer = threading.Thread(target=store.catalog.create, args=args, kwargs={"audit": TEST_RECORD})
            writer.start()
            writer.join()
            published[0] = True

    event.listen(store.db.engine, "after_cursor_execute", publish_after_the_first_read)
    try:
        offers, last = store.federated.offers(0, 100, "350203")
    finally:
        event.remove(store.db.engine, "after_cursor_execute", publish_after_the_first_read)
    assert published == [True], "the entry was published while the page was read"
    assert all(o.sequence <= last for o in offers)
    after = max((o.sequence for o in offers), default=last)  # where the peer's cursor goes (FederationClient.pull)
    later, _ = store.federated.offers(after, 100, "350203")
    assert [o.resource.spec.code for o in [*offers, *later]] == ["10101/350200000001"]


def _offer(code: str, sequence: int, version: int = 1) -> Offer:
    now = dt.datetime.now(dt.UTC)
    spec = identity_spec(code, SIMING_MARKET.code, name=f"条目 {code}")
    resource = m.Resource(spec, m.ResourceStatus.PUBLISHED, version, now, now, now)
    return Offer(sequence, resource, COUNTY)


def test_received_entries_keep_their_home_move_the_cursor_and_are_relayed_to_other_peers(store: Store) -> None:
    store.peers.register(_peer(), audit=TEST_RECORD)
    store.peers.register(_peer("350000", PeerRelation.PARENT), audit=TEST_RECORD)
    first, second = _offer("10101/350203000001", 4), _offer("10101/350203000002", 9)
    store.federated.receive("350203", [(first, COUNTY), (second, COUNTY)], 9)
    store.federated.receive("350203", [(first, COUNTY)], 9)  # a page seen again after a crash: nothing new
    assert store.peers.get("350203").offer_sequence == 9
    kept = store.federated.get("10101/350203000001")
    assert kept is not None and kept.home == COUNTY and kept.via_peer == "350203"
    to_parent, _ = store.federated.offers(0, 100, "350000")
    assert [(o.resource.spec.code, o.home) for o in to_parent] == [
        (first.resource.spec.code, COUNTY),
        (second.resource.spec.code, COUNTY),
    ]
    assert store.federated.offers(0, 100, "350203")[0] == []  # never back to the peer it came from
    found = store.federated.list(page_request(50, "", {}), RemoteFilter(home_level="county", field_name="id_number"))
    assert [e.resource.spec.code for e in found.items] == ["10101/350203000001", "10101/350203000002"]
    assert store.federated.list(page_request(50, "", {}), RemoteFilter(home_hub_code="350206")).items == []
    assert store.federated.held_elsewhere("10101/350203000001", "350000") == "it is known already via peer 350203"
    assert store.federated.forget("350203") == 2
    assert store.federated.get("10101/350203000001") is None


def test_the_home_hubs_log_keys_relayed_with_entries_are_listed_once_each(store: Store) -> None:
    store.peers.register(_peer(), audit=TEST_RECORD)
    keyed = dataclasses.replace(COUNTY, log_key="350203.hub.example/audit+0a1b2c3d+AX")
    city = HubRef("350200", "厦门市", "city")  # relayed before its home's key was: none known
    offers = [_offer("10101/350203000001", 1), _offer("10101/350203000002", 2), _offer("10101/350200000003", 3)]
    assert store.federated.home_log_keys() == []
    store.federated.receive("350203", [(offers[0], keyed), (offers[1], keyed), (offers[2], city)], 3)
    assert store.federated.home_log_keys() == [keyed.log_key]


def test_the_refusals_of_a_page_are_recorded_with_it(store: Store) -> None:
    store.peers.register(_peer(), audit=TEST_RECORD)
    kept = _offer("10101/350203000001", 3)
    said = "entry 10101/350200000001 (offer 4): its department is not held by its home hub 350203"
    refusal = dataclasses.replace(TEST_RECORD, kind="federation", action="refuse_offer", outcome="denied",
                                  resource="10101/350200000001", reason=said)  # fmt: skip
    store.federated.receive("350203", [(kept, COUNTY)], 4, said, [refusal])
    assert store.peers.get("350203").offer_sequence == 4 and store.federated.get(kept.resource.spec.code) is not None
    with store.db.read() as s:
        staged = [json.loads(t) for t in s.scalars(select(AuditStagedRow.record)) if t]
    assert [(r["action"], r["resource"]) for r in staged if r["kind"] == "federation"] == [
        ("refuse_offer", "10101/350200000001")
    ]


def test_owner_names_go_with_offers_are_kept_relayed_and_searched(store: Store) -> None:
    store.registry.add_department(POLICE, audit=TEST_RECORD)
    store.catalog.create(
        identity_spec("10101/350200000001"), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD
    )
    [own], _ = store.federated.offers(0, 100, "350203")
    assert own.department_name == POLICE.name  # this hub's registry names its own
    store.peers.register(_peer(), audit=TEST_RECORD)
    named = dataclasses.replace(_offer("10101/350203000001", 4), department_name=SIMING_MARKET.name)
    store.federated.receive("350203", [(named, COUNTY), (_offer("10101/350203000002", 5), COUNTY)], 5)
    kept = store.federated.get("10101/350203000001")
    assert kept is not None and kept.department_name == SIMING_MARKET.name
    relayed = [o.department_name for o in store.federated.offers(0, 100, "350000")[0] if o.home is not None]
    assert relayed == [SIMING_MARKET.name, ""]  # as it came: a hub older than owner names sends none
    found = store.federated.list(page_request(50, "", {}), RemoteFilter(text="思明区市场"))
    assert [e.resource.spec.code for e in found.items] == ["10101/350203000001"]


def test_migration_0022_names_the_owners_of_this_hubs_earlier_offers(store: Store) -> None:
    store.registry.add_department(POLICE, audit=TEST_RECORD)
    store.catalog.create(
        identity_spec("10101/350200000001"), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD
    )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0021")  # offers made before owner names
        command.upgrade(config, "head")
    [own], _ = store.federated.offers(0, 100, "350203")
    assert own.department_name == POLICE.name
