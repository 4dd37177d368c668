"""Rights stay at home: a county department applies through its own hub for a resource homed at the province
(county → city → province); the province's steward decides and its share manager grants; the county's people
see the status as for a local request."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import update

from audit.forwarded import Forwarded, issue, request_digest
from exchange import models as m
from exchange import wire as w
from exchange.cli.main import main
from exchange.server.cross_rights import CrossHubClient
from exchange.store.applications import HomeStatus
from exchange.store.schema import OutgoingApplicationRow
from exchange.v1 import applications_pb2 as apb
from exchange.v1 import applications_pb2_grpc as apb_grpc
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc
from tests.console_support import console_url, csrf_of, new_page, screenshot, web_client
from tests.federation_support import PROVINCE_MARKET, SIMING_MARKET, Node, department, hubs, peer_pair
from tests.harness import POLICE, TEST_RECORD, identity_spec, today

ENTRY = "10101/350000000001"
CITY_ENTRY = "10101/350200000001"
PROVINCE_DATA = department("350000", "0099887", "福建省大数据管理局", m.AdministrativeLevel.PROVINCE)
HULI = department("350206", "0077889", "湖里区市场监督管理局", m.AdministrativeLevel.COUNTY)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """County ← city ← province, peered; the province's entry known at the county; the people of each side."""
    with hubs(tmp_path, "county", "city", "province", console=True) as running:
        county, city, province = running["county"], running["city"], running["province"]
        peer_pair(county, city)
        peer_pair(city, province)
        province.running.add_department(PROVINCE_MARKET)
        province.running.add_department(PROVINCE_DATA)
        steward = province.running.add_person("fj-steward", PROVINCE_MARKET.code, m.Role.OWNER_STEWARD)
        manager = province.running.add_person("fj-manager", PROVINCE_DATA.code, m.Role.SHARE_MANAGER)
        province.running.publish(steward, identity_spec(ENTRY, PROVINCE_MARKET.code))
        county.running.add_department(SIMING_MARKET)
        county.running.add_system("sm-djxt", SIMING_MARKET.code)
        applicant = county.running.add_person("sm-clerk", SIMING_MARKET.code, m.Role.CONSUMER)
        for node in (city, county):  # the entry travels down the tree
            node.sync()
        assert county.running.hub.store.federated.get(ENTRY) is not None
        yield {**running, "steward": steward, "manager": manager, "applicant": applicant}


def _rights(node: Node, identity: Path) -> Any:
    client = node.running.client(identity)
    return client, rights_pb2_grpc.RightsServiceStub(client.channel)


def _call(node: Node, identity: Path, method: str, request: Any) -> Any:
    client, stub = _rights(node, identity)
    with client:
        return getattr(stub, method)(request, timeout=30)


def _apply(tree: dict[str, Any], applicant: Path | None = None, **changes: Any) -> pb.ShareRequest:
    app = m.Application(
        resource_code=ENTRY,
        consumer_department_code="",
        system_codes=("sm-djxt",),
        purpose="企业登记核验",
        legal_basis="《市场主体登记管理条例》第十六条",
        fields=("name", "id_number"),
        start=today(),
        end=today() + dt.timedelta(days=365),
        expected_daily_calls=300,
    )
    wire = w.application_to_wire(replace(app, **changes))
    applied: pb.ShareRequest = _call(
        tree["county"], applicant or tree["applicant"], "Apply", pb.ApplyRequest(request=wire)
    )
    return applied


def _seen_at_county(tree: dict[str, Any], request_id: str) -> pb.ShareRequest:
    tree["county"].sync()
    seen: pb.ShareRequest = _call(
        tree["county"], tree["applicant"], "GetShareRequest", pb.GetShareRequestRequest(id=request_id)
    )
    return seen


def test_a_county_application_is_decided_and_granted_at_the_province_and_its_status_reaches_the_county(
    tree: dict[str, Any],
) -> None:
    county, province = tree["county"], tree["province"]
    applied = _apply(tree)
    assert applied.status == pb.SHARE_REQUEST_STATUS_PENDING
    assert applied.cross_hub.home_hub_code == province.code

    submitted = _seen_at_county(tree, applied.id)
    assert submitted.cross_hub.submission == "submitted" and submitted.cross_hub.home_request_id
    home_id = submitted.cross_hub.home_request_id
    # At the province: an ordinary request for the county's department, with the consumer's hub, due as usual.
    for_me = pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_FOR_ME)
    waiting = _call(province, tree["steward"], "ListShareRequests", for_me)
    [there] = [r for r in waiting.requests if r.id == home_id]
    assert there.consumer_department_code == SIMING_MARKET.code
    assert (there.cross_hub.consumer_hub_code, there.cross_hub.consumer_request_id) == (county.code, applied.id)
    assert submitted.due_date == there.due_date
    assert any("relay:apply" in r for r in tree["city"].federation_records_of("rights"))

    approval = pb.ApproveRequest(
        id=home_id,
        fields=["id_number"],
        reason="仅核验身份号码",
        masks=[pb.FieldMask(field="id_number", mask=pb.MASK_KIND_ID_NUMBER)],
    )
    _call(province, tree["steward"], "Approve", approval)
    approved = _seen_at_county(tree, applied.id)
    assert approved.status == pb.SHARE_REQUEST_STATUS_APPROVED and list(approved.approved_fields) == ["id_number"]

    grant = _call(province, tree["manager"], "IssueGrant", pb.IssueGrantRequest(request_id=home_id, daily_quota=120))
    # The grant names the county's department, and its hub.
    assert (grant.consumer_department_code, grant.consumer_hub_code) == (SIMING_MARKET.code, county.code)
    granted = _seen_at_county(tree, applied.id)
    assert granted.status == pb.SHARE_REQUEST_STATUS_GRANTED and granted.grant_id == grant.id
    assert granted.cross_hub.daily_quota == 120
    assert [(x.field, x.mask) for x in granted.masks] == [("id_number", pb.MASK_KIND_ID_NUMBER)]
    assert [e.action for e in granted.history] == ["applied", "home_pending", "home_approved", "home_granted"]
    mine = pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_MINE)
    listed = _call(county, tree["applicant"], "ListShareRequests", mine)
    assert [r.id for r in listed.requests] == [applied.id]
    # The province knows the county department as one of the county hub's, for the grant to name it.
    foreign = province.running.hub.store.registry.get_department(SIMING_MARKET.code)
    assert (foreign.division_code, foreign.name) == ("350203", SIMING_MARKET.name)


def test_a_refusal_reaches_the_county_with_its_reasons(tree: dict[str, Any]) -> None:
    applied = _apply(tree)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    refusal = pb.RefuseRequest(id=home_id, reason="事项与数据用途不符")
    _call(tree["province"], tree["steward"], "Refuse", refusal)
    refused = _seen_at_county(tree, applied.id)
    assert refused.status == pb.SHARE_REQUEST_STATUS_REFUSED and refused.decision_reason == "事项与数据用途不符"


def test_an_application_waits_while_the_province_is_down_and_is_submitted_on_a_later_sync(
    tree: dict[str, Any],
) -> None:
    city, province = tree["city"], tree["province"]
    store = city.running.hub.store
    address = city.peer(province.code).address
    store.peers.change(province.code, lambda p: replace(p, address="127.0.0.1:9"), audit=TEST_RECORD)
    applied = _apply(tree)
    waiting = _seen_at_county(tree, applied.id)
    assert waiting.cross_hub.submission == "waiting" and waiting.status == pb.SHARE_REQUEST_STATUS_PENDING
    assert province.code in waiting.cross_hub.problem  # the hop that could not be reached is named
    store.peers.change(province.code, lambda p: replace(p, address=address), audit=TEST_RECORD)
    later = _seen_at_county(tree, applied.id)
    assert later.cross_hub.submission == "submitted" and later.cross_hub.home_request_id


def test_a_department_outside_the_county_hubs_division_is_refused(tree: dict[str, Any]) -> None:
    county = tree["county"]
    county.running.add_department(HULI)
    county.running.add_system("hl-djxt", HULI.code)
    clerk = county.running.add_person("hl-clerk", HULI.code, m.Role.CONSUMER)
    applied = _apply(tree, clerk, system_codes=("hl-djxt",))
    county.sync()
    seen = _call(county, clerk, "GetShareRequest", pb.GetShareRequestRequest(id=applied.id))
    assert seen.status == pb.SHARE_REQUEST_STATUS_REFUSED and "not within the division" in seen.decision_reason
    listed = _call(tree["province"], tree["steward"], "ListShareRequests", pb.ListShareRequestsRequest())
    assert not listed.requests


def _submit_raw(node: Node, to: Node, sign: CrossHubClient, times: int) -> list[grpc.StatusCode]:
    """Submits one application from ``node`` to ``to`` with a statement ``sign`` signs, ``times`` times."""
    client = node.federation.applications
    assert client is not None
    application = apb.CrossHubApplication(
        resource_code=ENTRY, consumer_department_code=SIMING_MARKET.code, consumer_department_name="x",
        system_codes=["sm-djxt"], purpose="企业登记核验", legal_basis="依法", fields=["name"],
        start_date=today().isoformat(), end_date=(today() + dt.timedelta(days=30)).isoformat(),
        expected_daily_calls=10, origin_request_id="SR-20261204-0000abcd", applicant="person/x",
    )  # fmt: skip
    statement = Forwarded(
        sender=node.code, receiver=to.code, home=to.code, resource=ENTRY, call="apply",
        department=SIMING_MARKET.code, system="person/x", purpose="企业登记核验", path=(node.code,),
        exchanges=("SR-20261204-0000abcd",), hops_left=3,
        request=request_digest(application.SerializeToString(deterministic=True)),
    )  # fmt: skip
    request = apb.SubmitApplicationRequest(
        statement=issue(sign.signer, statement, dt.datetime.now(dt.UTC)), application=application
    )
    return _sent(node, to, times, lambda stub: stub.SubmitApplication(request, timeout=20))


def _sent(
    node: Node, to: Node, times: int, call: Callable[[apb_grpc.CrossHubRightsServiceAsyncStub], Awaitable[object]]
) -> list[grpc.StatusCode]:
    """The status of each of ``times`` calls ``node`` makes to ``to``'s CrossHubRightsService."""

    async def send() -> list[grpc.StatusCode]:
        stub = apb_grpc.CrossHubRightsServiceStub(node.federation.channel(node.peer(to.code)))
        codes = []
        for _ in range(times):
            try:
                await call(stub)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
        return codes

    return node.federation.run(send())


def test_a_forged_or_replayed_statement_is_refused(tree: dict[str, Any]) -> None:
    city, province, county = tree["city"], tree["province"], tree["county"]
    county_client = county.federation.applications
    city_client = city.federation.applications
    assert county_client is not None and city_client is not None
    # Signed with another hub's key than the calling city's: refused, nothing stored.
    assert _submit_raw(city, province, county_client, 1) == [grpc.StatusCode.PERMISSION_DENIED]
    # A statement used twice: the first is taken, the second refused as a replay.
    assert _submit_raw(city, province, city_client, 2) == [grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED]
    refusals = province.federation_records_of("rights")
    assert any("refused:apply" in r and "signed" in r for r in refusals)
    assert any("refused:apply" in r and "already used" in r for r in refusals)


def test_an_application_for_a_remote_entry_is_checked_at_the_county_first(tree: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _apply(tree, fields=("name", "salary"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "salary" in str(info.value.details())
    assert not tree["county"].running.hub.store.applications.waiting()


def test_an_application_to_the_adjacent_hub_goes_one_hop(tree: dict[str, Any]) -> None:
    city, county = tree["city"], tree["county"]
    city.running.add_department(POLICE)
    steward = city.running.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    city.running.publish(steward, identity_spec(CITY_ENTRY, POLICE.code))
    county.sync()
    applied = _apply(tree, resource_code=CITY_ENTRY)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    assert home_id and not any("relay:apply" in r for r in city.federation_records_of("rights"))
    _call(city, steward, "Approve", pb.ApproveRequest(id=home_id, reason="同意"))
    approved = _seen_at_county(tree, applied.id)
    assert approved.status == pb.SHARE_REQUEST_STATUS_APPROVED and approved.cross_hub.home_hub_code == city.code
    # Nothing reached the province, which homes neither the entry nor the request.
    listed = _call(tree["province"], tree["steward"], "ListShareRequests", pb.ListShareRequestsRequest())
    assert not listed.requests


def test_the_consoles_show_the_other_hub_of_a_request_that_crosses_hubs(tree: dict[str, Any]) -> None:
    applied = _apply(tree)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    with web_client(tree["county"].running, tree["applicant"]) as county:
        page = county.get(f"/requests/{applied.id}")
        assert page.status_code == 200 and "@350000" in page.text and home_id in page.text
        assert applied.id in county.get("/requests").text
    with web_client(tree["province"].running, tree["steward"]) as province:
        inbox = province.get("/inbox")
        assert inbox.status_code == 200 and home_id in inbox.text and "@350203" in inbox.text
        assert "@350203" in province.get(f"/inbox/{home_id}").text


def test_the_pages_of_a_request_that_crosses_hubs_read_well_in_a_browser(tree: dict[str, Any], browser: Any) -> None:
    """Seen in Chromium (screenshots under build/screenshots): the county's request names its home, the
    province's inbox item names the county."""
    applied = _apply(tree)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    page = new_page(browser, tree["county"].running, tree["applicant"])
    page.goto(console_url(tree["county"].running) + f"/requests/{applied.id}")
    shown = page.inner_text("main")
    assert "@350000" in shown and home_id in shown and "归属平台已受理" in shown
    assert "requests." not in shown  # every event of the home's named in words, no message key left bare
    screenshot(page, "federation-request-at-the-county")
    page = new_page(browser, tree["province"].running, tree["steward"])
    page.goto(console_url(tree["province"].running) + f"/inbox/{home_id}")
    assert "@350203" in page.inner_text("main")
    screenshot(page, "federation-request-in-the-home-inbox")


def _granted(tree: dict[str, Any]) -> tuple[pb.ShareRequest, pb.Grant]:
    """An application from the county, approved and granted at the province (the county has read it)."""
    applied = _apply(tree)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    _call(tree["province"], tree["steward"], "Approve", pb.ApproveRequest(id=home_id, reason="同意"))
    grant = _call(tree["province"], tree["manager"], "IssueGrant", pb.IssueGrantRequest(request_id=home_id))
    return applied, grant


def _change_grant(tree: dict[str, Any], method: str, grant_id: str, reason: str) -> pb.Grant:
    changed: pb.Grant = _call(
        tree["province"], tree["steward"], method, pb.ChangeGrantRequest(id=grant_id, reason=reason)
    )
    return changed


def test_a_grant_suspended_resumed_and_revoked_at_the_province_is_seen_so_at_the_county(
    tree: dict[str, Any],
) -> None:
    """Each change of the grant at home reaches the county (two hops away, through the city) at its next sync:
    the state, the home's reason and time, an event in the request's history, an audit record."""
    county = tree["county"]
    applied, grant = _granted(tree)
    granted = _seen_at_county(tree, applied.id)
    assert granted.cross_hub.grant_status == pb.GRANT_STATUS_ACTIVE
    assert not granted.cross_hub.HasField("grant_change_time")  # no change yet: only issued

    steps = [
        ("SuspendGrant", "核查异常调用", pb.GRANT_STATUS_SUSPENDED, "home_grant_suspended"),
        ("ResumeGrant", "核查完毕", pb.GRANT_STATUS_ACTIVE, "home_grant_resumed"),
        ("RevokeGrant", "事项已办结", pb.GRANT_STATUS_REVOKED, "home_grant_revoked"),
    ]
    for method, reason, status, action in steps:
        at_home = _change_grant(tree, method, grant.id, reason)
        seen = _seen_at_county(tree, applied.id)
        assert seen.status == pb.SHARE_REQUEST_STATUS_GRANTED and seen.grant_id == grant.id
        assert (seen.cross_hub.grant_status, seen.cross_hub.grant_reason) == (status, reason)
        assert seen.cross_hub.grant_change_time == at_home.history[-1].time  # the home's time, not the county's
        assert (seen.history[-1].action, seen.history[-1].reason) == (action, reason)
        assert seen.history[-1].time == at_home.history[-1].time
    assert [e.action for e in seen.history][-4:] == [
        "home_granted",
        "home_grant_suspended",
        "home_grant_resumed",
        "home_grant_revoked",
    ]
    records = county.federation_records_of("rights")
    for change in ("suspended", "resumed", "revoked"):
        assert sum(f"home_grant:{change}" in r for r in records) == 1
    # Read again with nothing new at home: no second event, no second record.
    again = _seen_at_county(tree, applied.id)
    assert len(again.history) == len(seen.history)
    assert sum("home_grant:revoked" in r for r in county.federation_records_of("rights")) == 1


def test_a_grant_suspended_before_the_county_read_it_granted_shows_both_steps(
    tree: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    county = tree["county"]
    applied, grant = _granted(tree)
    _change_grant(tree, "SuspendGrant", grant.id, "核查异常调用")
    seen = _seen_at_county(tree, applied.id)
    assert seen.status == pb.SHARE_REQUEST_STATUS_GRANTED
    assert seen.cross_hub.grant_status == pb.GRANT_STATUS_SUSPENDED
    assert [e.action for e in seen.history][-2:] == ["home_granted", "home_grant_suspended"]
    assert any("home_status:granted,home_grant:suspended" in r for r in county.federation_records_of("rights"))
    # The applicant's CLI says it too, with the home's reason.
    capsys.readouterr()
    address = ["--hub", county.running.settings.hub_address, "--identity", str(tree["applicant"])]
    assert main([*address, "request", "get", applied.id]) == 0
    assert f"grant at hub {tree['province'].code}: suspended, since " in capsys.readouterr().out


def test_the_county_console_shows_the_grant_suspended_at_home_with_the_homes_reason(tree: dict[str, Any]) -> None:
    applied, grant = _granted(tree)
    _change_grant(tree, "SuspendGrant", grant.id, "核查异常调用")
    _seen_at_county(tree, applied.id)
    with web_client(tree["county"].running, tree["applicant"]) as county:
        page = county.get(f"/requests/{applied.id}")
    assert page.status_code == 200
    assert "已暂停" in page.text and "核查异常调用" in page.text and "归属平台暂停授权" in page.text
    assert "requests.event." not in page.text and "requests.one." not in page.text


def test_a_grant_past_its_end_date_at_home_shows_expired_at_the_consumers_hub() -> None:
    """Expiry is not a change at home (the grant stops at its end date): the consumer's hub tells it by the
    end date the home sent, as the home's policy does."""
    app = m.Application(ENTRY, SIMING_MARKET.code, ("sm-djxt",), "核验", "依法", ("name",), today(), today(), 1)
    link = m.CrossHubLink(home_hub="350000", grant_status=m.GrantStatus.ACTIVE)
    request = m.ShareRequest(
        "SR-1", app, m.ShareRequestStatus.GRANTED, m.PrincipalRef(m.PrincipalKind.PERSON, "x"), dt.datetime.now(dt.UTC),
        today(), approved_end=today(), grant_id="GR-1", cross_hub=link,
    )  # fmt: skip
    assert not m.home_grant_expired(request, today())  # valid through its end date
    assert m.home_grant_expired(request, today() + dt.timedelta(days=1))
    assert w.share_request_to_wire(request, today() + dt.timedelta(days=1)).cross_hub.grant_expired
    revoked = replace(request, cross_hub=replace(link, grant_status=m.GrantStatus.REVOKED))
    assert not m.home_grant_expired(revoked, today() + dt.timedelta(days=1))  # revoked says more than expired
    local = replace(request, cross_hub=None)
    assert not m.home_grant_expired(local, today() + dt.timedelta(days=1))  # a local grant is shown as a grant


def test_a_grant_revoked_at_home_reads_well_at_the_county_in_a_browser(tree: dict[str, Any], browser: Any) -> None:
    """Seen in Chromium (screenshot under build/screenshots): the county's request page names the grant revoked
    at home, with the home's reason and every step of the history in words."""
    applied, grant = _granted(tree)
    _change_grant(tree, "RevokeGrant", grant.id, "事项已办结")
    _seen_at_county(tree, applied.id)
    page = new_page(browser, tree["county"].running, tree["applicant"])
    page.goto(console_url(tree["county"].running) + f"/requests/{applied.id}")
    shown = page.inner_text("main")
    assert "已撤销" in shown and "事项已办结" in shown and "归属平台撤销授权" in shown
    assert "requests." not in shown
    screenshot(page, "federation-grant-revoked-at-home")


# Disputes across hubs: the county disputes, through its own hub, a refusal decided at the province.


def _refused(tree: dict[str, Any]) -> tuple[pb.ShareRequest, str]:
    """An application from the county refused at the province, the refusal read back at the county."""
    applied = _apply(tree)
    home_id = _seen_at_county(tree, applied.id).cross_hub.home_request_id
    _call(tree["province"], tree["steward"], "Refuse", pb.RefuseRequest(id=home_id, reason="事项与数据用途不符"))
    assert _seen_at_county(tree, applied.id).status == pb.SHARE_REQUEST_STATUS_REFUSED
    return applied, home_id


def _dispute(tree: dict[str, Any], request_id: str, reason: str = "登记办理确需核验") -> pb.ShareRequest:
    disputed: pb.ShareRequest = _call(
        tree["county"], tree["applicant"], "Dispute", pb.DisputeRequest(id=request_id, reason=reason)
    )
    return disputed


def _decide(tree: dict[str, Any], home_id: str, *, grant: bool, reason: str) -> pb.ShareRequest:
    decision = pb.DecideDisputeRequest(id=home_id, grant=grant, reason=reason, daily_quota=50 if grant else 0)
    decided: pb.ShareRequest = _call(tree["province"], tree["manager"], "DecideDispute", decision)
    return decided


def test_a_county_disputes_a_province_refusal_which_the_provinces_share_manager_upholds(
    tree: dict[str, Any],
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    applied, home_id = _refused(tree)
    disputed = _dispute(tree, applied.id)
    # Kept at the county until submitted: still the home's word (refused), the dispute waiting.
    assert disputed.status == pb.SHARE_REQUEST_STATUS_REFUSED and disputed.cross_hub.dispute == "waiting"
    assert (disputed.history[-1].action, disputed.history[-1].actor.code) == ("disputed", "sm-clerk")
    assert any("dispute:forwarded" in r for r in county.federation_records_of("rights"))

    seen = _seen_at_county(tree, applied.id)
    assert seen.status == pb.SHARE_REQUEST_STATUS_DISPUTED and seen.cross_hub.dispute == "submitted"
    assert any("relay:dispute" in r for r in city.federation_records_of("rights"))
    # At the province: an ordinary dispute in the share manager's queue, naming the disputer at the county.
    for_me = _call(
        province, tree["manager"], "ListShareRequests", pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_FOR_ME)
    )
    [there] = [r for r in for_me.requests if r.id == home_id]
    assert there.status == pb.SHARE_REQUEST_STATUS_DISPUTED
    assert (there.history[-1].action, there.history[-1].actor.code, there.history[-1].reason) == (
        "disputed",
        f"sm-clerk@{county.code}",
        "登记办理确需核验",
    )
    assert any("dispute:from_hub" in r and applied.id in r for r in province.federation_records_of("rights"))

    _decide(tree, home_id, grant=False, reason="用途不符，维持拒绝")
    upheld = _seen_at_county(tree, applied.id)
    assert upheld.status == pb.SHARE_REQUEST_STATUS_REFUSAL_UPHELD and upheld.decision_reason == "用途不符，维持拒绝"
    assert [e.action for e in upheld.history][-4:] == [
        "home_refused",
        "disputed",
        "home_disputed",
        "home_refusal_upheld",
    ]
    assert upheld.history[-1].reason == "用途不符，维持拒绝"
    # A refusal is disputed once: a second dispute is refused at the county, and nothing more goes out.
    with pytest.raises(grpc.RpcError) as info:
        _dispute(tree, applied.id, "再次异议")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not county.running.hub.store.applications.disputes_waiting()


def test_a_disputed_refusal_overturned_at_the_province_is_granted_at_the_county(tree: dict[str, Any]) -> None:
    applied, home_id = _refused(tree)
    _dispute(tree, applied.id)
    _seen_at_county(tree, applied.id)
    decided = _decide(tree, home_id, grant=True, reason="确属登记必需")
    granted = _seen_at_county(tree, applied.id)
    assert granted.status == pb.SHARE_REQUEST_STATUS_GRANTED and granted.grant_id == decided.grant_id
    assert granted.decision_reason == "确属登记必需" and granted.cross_hub.daily_quota == 50
    assert granted.cross_hub.grant_status == pb.GRANT_STATUS_ACTIVE
    assert granted.history[-1].action == "home_granted"
    # While disputed, the second dispute was already refused at the county, as one now is.
    with pytest.raises(grpc.RpcError) as info:
        _dispute(tree, applied.id, "再次异议")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_request_not_refused_is_not_disputed_and_other_changes_are_still_the_homes(tree: dict[str, Any]) -> None:
    applied = _apply(tree)
    _seen_at_county(tree, applied.id)
    with pytest.raises(grpc.RpcError) as info:
        _dispute(tree, applied.id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "pending, not refused" in str(
        info.value.details()
    )
    assert not tree["county"].running.hub.store.applications.disputes_waiting()
    with pytest.raises(grpc.RpcError) as info:
        _call(tree["county"], tree["applicant"], "Refuse", pb.RefuseRequest(id=applied.id, reason="x"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_dispute_the_home_will_not_take_is_refused_at_the_county_with_the_homes_reason(
    tree: dict[str, Any],
) -> None:
    """The county believes the request refused (a stale word), the province has it pending: the province
    refuses the dispute, and the county records that for good, with the province's reason."""
    county = tree["county"]
    applied = _apply(tree)
    submitted = _seen_at_county(tree, applied.id)
    store = county.running.hub.store
    stale = HomeStatus(
        applied.id, submitted.cross_hub.home_request_id, m.ShareRequestStatus.REFUSED, "过时的答复", today(), 10**9
    )
    assert store.applications.record_status(applied.id, stale, (), audit=TEST_RECORD)
    _dispute(tree, applied.id)
    seen = _seen_at_county(tree, applied.id)
    assert seen.cross_hub.dispute == "refused" and "not refused" in seen.cross_hub.dispute_problem
    assert (seen.history[-1].action, seen.history[-1].actor.code) == ("dispute_refused", "hub-350000")
    assert any("refused:dispute" in r for r in county.federation_records_of("rights"))
    assert not store.applications.disputes_waiting()  # not retried


def test_a_dispute_waits_while_the_province_is_down_and_is_submitted_on_a_later_sync(tree: dict[str, Any]) -> None:
    city, province = tree["city"], tree["province"]
    applied, home_id = _refused(tree)
    store = city.running.hub.store
    address = city.peer(province.code).address
    store.peers.change(province.code, lambda p: replace(p, address="127.0.0.1:9"), audit=TEST_RECORD)
    _dispute(tree, applied.id)
    waiting = _seen_at_county(tree, applied.id)
    assert waiting.cross_hub.dispute == "waiting" and waiting.status == pb.SHARE_REQUEST_STATUS_REFUSED
    assert province.code in waiting.cross_hub.dispute_problem  # the hop that could not be reached is named
    store.peers.change(province.code, lambda p: replace(p, address=address), audit=TEST_RECORD)
    later = _seen_at_county(tree, applied.id)
    assert later.cross_hub.dispute == "submitted" and later.status == pb.SHARE_REQUEST_STATUS_DISPUTED
    assert not later.cross_hub.dispute_problem
    at_home = _call(province, tree["manager"], "GetShareRequest", pb.GetShareRequestRequest(id=home_id))
    assert at_home.status == pb.SHARE_REQUEST_STATUS_DISPUTED


def _dispute_raw(
    node: Node, to: Node, sign: CrossHubClient, dispute: apb.CrossHubDispute, *, path: tuple[str, ...], times: int = 1
) -> list[grpc.StatusCode]:
    """Submits ``dispute`` from ``node`` to ``to`` with a statement ``sign`` signs (``path``, origin first, ending
    at ``node``), ``times`` times."""
    statement = Forwarded(
        sender=node.code, receiver=to.code, home=to.code, resource=dispute.resource_code, call="dispute",
        department=dispute.consumer_department_code, system=dispute.disputer, purpose="企业登记核验", path=path,
        exchanges=tuple(f"DS-{n}" for n in range(len(path))), hops_left=3,
        request=request_digest(dispute.SerializeToString(deterministic=True)),
    )  # fmt: skip
    request = apb.SubmitDisputeRequest(
        statement=issue(sign.signer, statement, dt.datetime.now(dt.UTC)), dispute=dispute
    )
    return _sent(node, to, times, lambda stub: stub.SubmitDispute(request, timeout=20))


def test_a_forged_replayed_or_foreign_dispute_statement_is_refused_at_the_home(tree: dict[str, Any]) -> None:
    city, province, county = tree["city"], tree["province"], tree["county"]
    applied, home_id = _refused(tree)
    county_client, city_client = county.federation.applications, city.federation.applications
    assert county_client is not None and city_client is not None
    dispute = apb.CrossHubDispute(
        origin_request_id=applied.id, home_request_id=home_id, resource_code=ENTRY,
        consumer_department_code=SIMING_MARKET.code, reason="登记办理确需核验", disputer="person/sm-clerk",
    )  # fmt: skip
    via_city = (county.code, city.code)
    # Signed with another hub's key than the calling city's: refused, the request still refused.
    assert _dispute_raw(city, province, county_client, dispute, path=via_city) == [grpc.StatusCode.PERMISSION_DENIED]
    # The city speaking for itself: it submitted no such request (the county did), so it may not dispute it.
    alone = _dispute_raw(city, province, city_client, dispute, path=(city.code,))
    assert alone == [grpc.StatusCode.PERMISSION_DENIED]
    at_home = _call(province, tree["manager"], "GetShareRequest", pb.GetShareRequestRequest(id=home_id))
    assert at_home.status == pb.SHARE_REQUEST_STATUS_REFUSED
    # A statement used twice: the first is taken, the second refused as a replay.
    codes = _dispute_raw(city, province, city_client, dispute, path=via_city, times=2)
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED]
    refusals = province.federation_records_of("rights")
    assert any("refused:dispute" in r and "signed" in r for r in refusals)
    assert any("refused:dispute" in r and "already used" in r for r in refusals)
    assert sum("dispute:from_hub" in r for r in refusals) == 1


def test_the_county_disputes_from_its_console_and_cli_as_locally(
    tree: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    county = tree["county"]
    applied, _ = _refused(tree)
    with web_client(county.running, tree["applicant"]) as web:
        page = web.get(f"/requests/{applied.id}")
        assert page.status_code == 200 and 'action="/requests/' in page.text and "归属平台" in page.text
        form = {"csrf": csrf_of(page.text), "reason": "登记办理确需核验"}
        posted = web.post(f"/requests/{applied.id}/dispute", data=form, follow_redirects=True)
        assert posted.status_code == 200 and "将随下一次同步转送至归属平台" in posted.text
        assert "尚未送达归属平台" in posted.text and 'action="/requests/' not in posted.text  # once only
    # The CLI shows the dispute's state; a second dispute through it is refused as locally.
    _seen_at_county(tree, applied.id)
    capsys.readouterr()
    address = ["--hub", county.running.settings.hub_address, "--identity", str(tree["applicant"])]
    assert main([*address, "request", "get", applied.id]) == 0
    assert f"dispute at hub {tree['province'].code}: submitted" in capsys.readouterr().out
    assert main([*address, "request", "dispute", applied.id, "--reason", "再次异议"]) != 0


def test_a_dispute_submitted_to_the_province_reads_well_at_the_county_in_a_browser(
    tree: dict[str, Any], browser: Any
) -> None:
    """Seen in Chromium (screenshot under build/screenshots): the county's request page, after its people
    disputed the province's refusal in the form and the dispute reached the province."""
    applied, _ = _refused(tree)
    page = new_page(browser, tree["county"].running, tree["applicant"])
    page.goto(console_url(tree["county"].running) + f"/requests/{applied.id}")
    page.fill("form.dispute textarea[name=reason]", "登记办理确需核验")
    page.click("form.dispute button[type=submit]")
    # Waiting for the next sync round; or already at the province, if one of the hub's own rounds ran in between
    # (the province's status, its "disputed" entry, may then reach the county only on the round after).
    submitted = page.inner_text("main")
    assert "将随下一次同步转送至归属平台" in submitted
    assert "尚未送达归属平台" in submitted or "已提交至归属平台 @350000" in submitted
    _seen_at_county(tree, applied.id)
    page.goto(console_url(tree["county"].running) + f"/requests/{applied.id}")
    shown = page.inner_text("main")
    assert "已提交至归属平台 @350000" in shown and "归属平台异议处理中" in shown and "异议处理中" in shown
    assert "requests." not in shown and "form.dispute" not in page.content()
    screenshot(page, "federation-dispute-submitted-at-the-county")


def test_a_dispute_submitted_again_after_its_answer_was_lost_is_taken_once(tree: dict[str, Any]) -> None:
    """The province took the dispute but the county did not learn it (its answer lost): the county submits it
    again on a later round, and the province answers with the status, disputing nothing twice."""
    county, province = tree["county"], tree["province"]
    applied, home_id = _refused(tree)
    _dispute(tree, applied.id)
    assert _seen_at_county(tree, applied.id).cross_hub.dispute == "submitted"
    with county.running.hub.store.db.write() as s:  # as if the answer had not come back
        s.execute(
            update(OutgoingApplicationRow).where(OutgoingApplicationRow.id == applied.id).values(dispute="waiting")
        )
    again = _seen_at_county(tree, applied.id)
    assert again.cross_hub.dispute == "submitted" and again.status == pb.SHARE_REQUEST_STATUS_DISPUTED
    at_home = _call(province, tree["manager"], "GetShareRequest", pb.GetShareRequestRequest(id=home_id))
    assert [e.action for e in at_home.history].count("disputed") == 1
    assert sum("dispute:from_hub" in r for r in province.federation_records_of("rights")) == 1


SIMING_POLICE = department("350203", "0033445", "厦门市公安局思明分局", m.AdministrativeLevel.COUNTY)
LOCAL_ENTRY = "10101/350203000001"


def _pages(tree: dict[str, Any], view: pb.ShareRequestView.ValueType) -> list[list[str]]:
    """The applicant's ListShareRequests at the county, one request a page: the ids of each page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        request = pb.ListShareRequestsRequest(view=view, page_size=1, page_token=token)
        page = _call(tree["county"], tree["applicant"], "ListShareRequests", request)
        pages.append([r.id for r in page.requests])
        token = page.next_page_token
        if not token:
            return pages


def test_a_refusal_homed_elsewhere_awaits_its_dispute_with_the_local_ones_page_by_page(
    tree: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    county = tree["county"]
    county.running.add_department(SIMING_POLICE)
    owner = county.running.certifier(SIMING_POLICE.code)
    county.running.publish(owner, identity_spec(LOCAL_ENTRY, SIMING_POLICE.code))
    applied, _ = _refused(tree)  # refused at the province
    local = [_apply(tree, resource_code=LOCAL_ENTRY, purpose=f"核验 {n}") for n in range(2)]
    _call(county, owner, "Refuse", pb.RefuseRequest(id=local[0].id, reason="事项与数据用途不符"))
    # The consumer's refusals to dispute: the local one and the one refused at the province, in id order.
    for_me = _pages(tree, pb.SHARE_REQUEST_VIEW_FOR_ME)
    assert all(len(p) <= 1 for p in for_me)
    assert [i for p in for_me for i in p] == sorted([applied.id, local[0].id])
    # Its whole list pages the requests homed elsewhere with its own, not all on the last page.
    mine = _pages(tree, pb.SHARE_REQUEST_VIEW_MINE)
    assert all(len(p) <= 1 for p in mine)
    assert [i for p in mine for i in p] == sorted([applied.id, *(r.id for r in local)])
    refused = pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_MINE, status=pb.SHARE_REQUEST_STATUS_REFUSED)
    listed = _call(county, tree["applicant"], "ListShareRequests", refused)
    assert sorted(r.id for r in listed.requests) == sorted([applied.id, local[0].id])
    capsys.readouterr()
    address = ["--hub", county.running.settings.hub_address, "--identity", str(tree["applicant"])]
    assert main([*address, "request", "list", "--view", "for-me"]) == 0
    assert applied.id in capsys.readouterr().out
    with web_client(county.running, tree["applicant"]) as web:  # the console's list of refusals, alike
        page = web.get("/requests", params={"status": "refused"})
        assert page.status_code == 200 and local[0].id in page.text and applied.id in page.text
    # Once disputed (through this hub; waiting, or submitted and read back), it no longer awaits the consumer.
    _dispute(tree, applied.id)
    assert [i for p in _pages(tree, pb.SHARE_REQUEST_VIEW_FOR_ME) for i in p] == [local[0].id]
