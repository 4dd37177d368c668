"""Applications across hubs in the store, on SQLite and PostgreSQL: statements accepted once, requests from
another hub's department with their link and change sequence, and this hub's applications homed elsewhere."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from exchange import models as m
from exchange.errors import FailedPrecondition
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.applications import REFUSED, SUBMITTED, WAITING, HomeStatus, Incoming, OutgoingFilter
from exchange.store.rights import RequestStep
from tests.federation_support import SIMING_MARKET
from tests.harness import POLICE, TEST_RECORD, identity_spec

ENTRY = "10101/350200000001"
NOW = dt.datetime.now(dt.UTC)
APPLICANT = m.PrincipalRef(m.PrincipalKind.PERSON, "sm-clerk@350203")


def _request(request_id: str, resource: str = ENTRY) -> m.ShareRequest:
    app = m.Application(
        resource, SIMING_MARKET.code, ("sm-djxt",), "企业登记核验", "依法", ("name",), NOW.date(),
        NOW.date() + dt.timedelta(days=30), 10,
    )  # fmt: skip
    return m.ShareRequest(request_id, app, m.ShareRequestStatus.PENDING, APPLICANT, NOW, NOW.date())


def _incoming(store: Store) -> m.ShareRequest:
    """A published entry here, and a request for it from the county's market regulator through hub 350203."""
    store.registry.add_department(POLICE, audit=TEST_RECORD)
    store.catalog.create(identity_spec(ENTRY), m.ResourceStatus.PUBLISHED, APPLICANT, "", audit=TEST_RECORD)
    came = Incoming("350203", "SR-20261204-0000abcd", "350203", SIMING_MARKET.name)
    applied = m.ShareEvent("applied", APPLICANT, NOW, "企业登记核验")
    return store.applications.add_incoming(
        RequestStep(_request("SR-20261204-11111111"), applied), came, audit=TEST_RECORD
    )


def test_a_request_from_another_hub_names_its_department_and_hub_and_moves_its_sequence(store: Store) -> None:
    stored = _incoming(store)
    assert stored.cross_hub is not None and stored.cross_hub.consumer_hub == "350203"
    assert store.registry.get_department(SIMING_MARKET.code).division_code == "350203"
    assert store.applications.received("350203", "SR-20261204-0000abcd") == stored.id
    assert store.applications.received("350200", "SR-20261204-0000abcd") is None
    [(found, first)] = store.applications.incoming_after("350203", 0, 10)
    assert found == stored.id and first == store.applications.change_sequence(stored.id)
    assert store.applications.incoming_after("350203", first, 10) == []
    assert store.applications.incoming_after("350000", 0, 10) == []

    def approve(current: m.ShareRequest) -> RequestStep:
        approved = replace(current, status=m.ShareRequestStatus.APPROVED)
        return RequestStep(approved, m.ShareEvent("approved", APPLICANT, NOW, "同意"))

    store.rights.change_request(stored.id, approve, audit=TEST_RECORD)
    [(_, second)] = store.applications.incoming_after("350203", first, 10)
    assert second > first
    again = store.rights.get_request(stored.id)
    assert again.cross_hub is not None and again.cross_hub.consumer_request_id == "SR-20261204-0000abcd"


def test_an_application_homed_elsewhere_waits_then_follows_its_homes_word_in_order(store: Store) -> None:
    store.registry.add_department(SIMING_MARKET, audit=TEST_RECORD)
    request = replace(
        _request("SR-20261204-22222222", "10101/350000000001"),
        cross_hub=m.CrossHubLink(home_hub="350000"),
        history=(m.ShareEvent("applied", APPLICANT, NOW, "企业登记核验"),),
    )
    store.applications.add_outgoing(request, "350200", audit=TEST_RECORD)
    [(waiting, via)] = store.applications.waiting()
    assert (waiting.id, via, waiting.cross_hub.submission if waiting.cross_hub else "") == (
        request.id,
        "350200",
        WAITING,
    )
    store.applications.submission_failed(request.id, "peer hub 350200 cannot be reached")
    assert store.applications.get_outgoing(request.id).cross_hub.problem  # type: ignore[union-attr]
    event = m.ShareEvent("home_pending", APPLICANT, NOW)
    pending = HomeStatus(request.id, "SR-20261204-33333333", m.ShareRequestStatus.PENDING, "", NOW.date(), 0)
    assert store.applications.record_status(request.id, pending, (event,), audit=TEST_RECORD)
    assert store.applications.homes() == [("350000", "350200", 0)]
    granted = replace(pending, status=m.ShareRequestStatus.GRANTED, sequence=9, grant_id="GR-20261204-44444444")
    assert store.applications.record_status(request.id, granted, (event,), audit=TEST_RECORD)
    stale = replace(pending, sequence=5)
    assert not store.applications.record_status(request.id, stale, (event,), audit=TEST_RECORD)
    seen = store.applications.get_outgoing(request.id)
    assert (seen.status, seen.grant_id, seen.cross_hub.submission) == (  # type: ignore[union-attr]
        m.ShareRequestStatus.GRANTED,
        "GR-20261204-44444444",
        SUBMITTED,
    )
    assert store.applications.homes() == [("350000", "350200", 9)]
    page = page_request(10, "", {})
    assert [r.id for r in store.applications.outgoing_page(page, OutgoingFilter(SIMING_MARKET.code)).items] == [
        request.id
    ]
    assert store.applications.outgoing_page(page, OutgoingFilter(POLICE.code)).items == []
    granted_only = OutgoingFilter(SIMING_MARKET.code, statuses=(m.ShareRequestStatus.GRANTED,), disputable=True)
    assert store.applications.outgoing_page(page, granted_only).items == []  # not refused: nothing to dispute


def test_a_change_of_the_grant_moves_the_requests_sequence_and_reaches_the_outgoing_application(store: Store) -> None:
    """At the home, suspending the grant of a request from another hub moves that request's change sequence (the
    consumer's hub reads it); at the consumer's hub, the grant's state, reason and time are kept as read."""
    stored = _incoming(store)
    grant = m.Grant(
        "GR-20261204-55555555", stored.id, ENTRY, SIMING_MARKET.code, ("sm-djxt",), ("name",), "企业登记核验",
        "依法", NOW.date(), NOW.date() + dt.timedelta(days=30), 10, 0, (), m.GrantStatus.ACTIVE, NOW,
    )  # fmt: skip

    def issue(current: m.ShareRequest) -> RequestStep:
        granted = replace(current, status=m.ShareRequestStatus.GRANTED, grant_id=grant.id)
        return RequestStep(granted, m.ShareEvent("granted", APPLICANT, NOW), grant)

    store.rights.change_request(stored.id, issue, audit=TEST_RECORD)
    [(_, granted)] = store.applications.incoming_after("350203", 0, 10)
    assert granted == store.applications.change_sequence(stored.id)

    suspension = m.ShareEvent("suspended", APPLICANT, NOW, "核查")
    store.rights.change_grant(grant.id, lambda g: (m.GrantStatus.SUSPENDED, suspension), audit=TEST_RECORD)
    [(found, suspended)] = store.applications.incoming_after("350203", granted, 10)
    assert found == stored.id and suspended > granted
    assert store.applications.change_sequence(stored.id) == suspended
    assert store.applications.incoming_after("350203", suspended, 10) == []

    # At the consumer's hub (the same store stands for it): the grant's state read back, with the home's reason
    # and time.
    request = replace(
        _request("SR-20261204-0000abcd", "10101/350000000001"), cross_hub=m.CrossHubLink(home_hub="350000")
    )
    store.applications.add_outgoing(request, "350200", audit=TEST_RECORD)
    at = NOW - dt.timedelta(hours=1)
    home = HomeStatus(
        request.id, stored.id, m.ShareRequestStatus.GRANTED, "", NOW.date(), suspended, grant.id,
        grant_status=m.GrantStatus.SUSPENDED, grant_change="suspended", grant_reason="核查", grant_changed_at=at,
    )  # fmt: skip
    event = m.ShareEvent("home_grant_suspended", APPLICANT, at, "核查")
    assert store.applications.record_status(request.id, home, (event,), audit=TEST_RECORD)
    link = store.applications.get_outgoing(request.id).cross_hub
    assert link is not None
    assert (link.grant_status, link.grant_reason, link.grant_changed_at) == (m.GrantStatus.SUSPENDED, "核查", at)
    assert store.applications.get_outgoing(request.id).history[-1] == event


def test_a_dispute_of_a_refusal_at_home_waits_then_is_submitted_or_refused_once(store: Store) -> None:
    """At the consumer's hub: a dispute is kept as waiting only if the check (under the lock) lets it, with its
    event; a problem on the way keeps it waiting; the home's taking it, or refusing it for good, ends the wait."""
    store.registry.add_department(SIMING_MARKET, audit=TEST_RECORD)
    history = (m.ShareEvent("applied", APPLICANT, NOW, "企业登记核验"),)
    for request_id in ("SR-20261205-66666666", "SR-20261205-77777777"):
        request = replace(
            _request(request_id, "10101/350000000001"), cross_hub=m.CrossHubLink(home_hub="350000"), history=history
        )
        store.applications.add_outgoing(request, "350200", audit=TEST_RECORD)
        home_id = "SR-20261205-1" + request_id[-7:]
        refused = HomeStatus(request_id, home_id, m.ShareRequestStatus.REFUSED, "用途不符", NOW.date(), 3)
        assert store.applications.record_status(request_id, refused, (), audit=TEST_RECORD)
    first, second = "SR-20261205-66666666", "SR-20261205-77777777"
    disputer = m.PrincipalRef(m.PrincipalKind.PERSON, "sm-clerk")
    event = m.ShareEvent("disputed", disputer, NOW, "确需核验")

    def refuse(request: m.ShareRequest) -> None:
        raise FailedPrecondition(f"{request.id} may not be disputed")

    with pytest.raises(FailedPrecondition):
        store.applications.dispute_outgoing(first, refuse, event, audit=TEST_RECORD)
    assert store.applications.disputes_waiting() == []
    seen: list[m.ShareRequest] = []
    disputed = store.applications.dispute_outgoing(first, seen.append, event, audit=TEST_RECORD)
    assert seen[0].status is m.ShareRequestStatus.REFUSED and seen[0].cross_hub.dispute == ""  # type: ignore[union-attr]
    assert disputed.cross_hub is not None and disputed.cross_hub.dispute == WAITING
    assert disputed.history[-1] == event and disputed.status is m.ShareRequestStatus.REFUSED
    store.applications.dispute_outgoing(second, seen.append, event, audit=TEST_RECORD)
    waiting = store.applications.disputes_waiting()
    assert [(d.request_id, d.home_request_id, d.via_peer, d.home_hub) for d in waiting] == [
        (first, "SR-20261205-16666666", "350200", "350000"),
        (second, "SR-20261205-17777777", "350200", "350000"),
    ]
    assert (waiting[0].reason, waiting[0].disputer, waiting[0].purpose) == (
        "确需核验",
        "person/sm-clerk",
        "企业登记核验",
    )

    store.applications.dispute_failed(first, "hub 350000 cannot be reached")
    assert store.applications.get_outgoing(first).cross_hub.dispute_problem == "hub 350000 cannot be reached"  # type: ignore[union-attr]
    store.applications.dispute_submitted(first)
    link = store.applications.get_outgoing(first).cross_hub
    assert link is not None and (link.dispute, link.dispute_problem) == (SUBMITTED, "")
    no = m.ShareEvent("dispute_refused", disputer, NOW, "request is granted, not refused")
    assert not store.applications.dispute_refused(first, no, audit=TEST_RECORD)  # submitted: not refused after
    assert store.applications.dispute_refused(second, no, audit=TEST_RECORD)
    refused_link = store.applications.get_outgoing(second)
    assert refused_link.cross_hub is not None and refused_link.cross_hub.dispute == REFUSED
    assert refused_link.cross_hub.dispute_problem == no.reason and refused_link.history[-1] == no
    assert store.applications.disputes_waiting() == []
    store.applications.dispute_failed(second, "late")  # a refused dispute keeps its reason
    assert store.applications.get_outgoing(second).cross_hub.dispute_problem == no.reason  # type: ignore[union-attr]
