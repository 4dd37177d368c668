"""The share-request workflow end to end: a real hub, real certificates, every role in its place."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import update

from exchange import models as m
from exchange import wire as w
from exchange.store import Store
from exchange.store.schema import GrantRow, ShareEventRow, ShareRequestRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc
from exchange.workdays import WorkCalendar
from policy.decision import DenyReason, Question
from tests.harness import AUTHORITY, POLICE, RunningHub, identity_spec, reason_of, today, violations

REGISTRY = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
IDENTITY = "10101/350200000001"
LICENCE = "10101/350200000002"
RECORD = "10101/350200000003"


@pytest.fixture
def world(hub: RunningHub) -> dict[str, Path]:
    hub.add_department(POLICE)
    hub.add_department(REGISTRY)
    people = {
        "owner": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "two-hats": hub.add_person("ga-both", POLICE.code, m.Role.OWNER_STEWARD, m.Role.CONSUMER),
        "consumer": hub.add_person("bdc-clerk", REGISTRY.code, m.Role.CONSUMER),
        "registry-owner": hub.add_person("bdc-steward", REGISTRY.code, m.Role.OWNER_STEWARD),
        "manager": hub.add_person("sm-lin", AUTHORITY.code, m.Role.SHARE_MANAGER),
        "auditor": hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR),
        "system": hub.add_system("bdc-djxt", REGISTRY.code),
        "operator": hub.operator,
    }
    hub.add_system("ga-rkxx", POLICE.code)
    hub.publish(people["owner"], identity_spec(IDENTITY))
    hub.publish(
        people["owner"],
        identity_spec(
            LICENCE, name="户籍证明", share_type=m.ShareType.UNCONDITIONAL, share_conditions="", legal_basis=""
        ),
    )
    hub.publish(
        people["owner"],
        identity_spec(
            RECORD,
            name="违法犯罪记录",
            share_type=m.ShareType.NOT_SHARED,
            share_conditions="",
            legal_basis="《刑事诉讼法》第二百八十六条",
        ),
    )
    return people


def _application(resource: str = IDENTITY, **changes: Any) -> pb.ShareRequest:
    app = m.Application(
        resource_code=resource,
        consumer_department_code="",
        system_codes=("bdc-djxt",),
        purpose="不动产转移登记",
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name", "id_number"),
        start=today(),
        end=today() + dt.timedelta(days=365),
        expected_daily_calls=500,
    )
    return w.application_to_wire(m.Application(**{**app.__dict__, **changes}))


class Caller:
    """The rights service as one principal sees it."""

    def __init__(self, hub: RunningHub, identity: Path) -> None:
        self._client = hub.client(identity)
        self.stub = rights_pb2_grpc.RightsServiceStub(self._client.channel)

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=20)

    def fails(self, code: grpc.StatusCode, method: str, request: Any) -> grpc.Call:
        with pytest.raises(grpc.RpcError) as info:
            self(method, request)
        error = info.value
        assert isinstance(error, grpc.Call)
        assert error.code() == code, error.details()
        return error


@pytest.fixture
def as_(hub: RunningHub, world: dict[str, Path]) -> Any:
    callers: dict[str, Caller] = {}

    def get(who: str) -> Caller:
        if who not in callers:
            callers[who] = Caller(hub, world[who])
        return callers[who]

    return get


def test_conditional_request_is_decided_by_the_owner_then_granted_by_the_share_manager(as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    assert applied.status == pb.SHARE_REQUEST_STATUS_PENDING
    assert applied.consumer_department_code == REGISTRY.code and applied.applicant.code == "bdc-clerk"
    due = WorkCalendar.mainland().add_working_days(today(), 10)
    assert (applied.due_date.year, applied.due_date.month, applied.due_date.day) == (due.year, due.month, due.day)

    shorter = today() + dt.timedelta(days=90)
    approval = pb.ApproveRequest(
        id=applied.id,
        fields=["id_number"],
        end_date=w.date_to_wire(shorter),
        reason="仅核验身份号码",
        masks=[pb.FieldMask(field="id_number", mask=pb.MASK_KIND_ID_NUMBER)],
    )
    approved = as_("owner")("Approve", approval)
    assert approved.status == pb.SHARE_REQUEST_STATUS_APPROVED and list(approved.approved_fields) == ["id_number"]

    grant = as_("manager")("IssueGrant", pb.IssueGrantRequest(request_id=applied.id, daily_quota=200))
    assert (list(grant.fields), grant.daily_quota, grant.status) == (["id_number"], 200, pb.GRANT_STATUS_ACTIVE)
    assert w.date_from_wire(grant.end_date, "", [], required=True) == shorter
    assert [(x.field, x.mask) for x in grant.masks] == [("id_number", pb.MASK_KIND_ID_NUMBER)]
    assert grant.purpose == "不动产转移登记" and list(grant.system_codes) == ["bdc-djxt"]

    final = as_("consumer")("GetShareRequest", pb.GetShareRequestRequest(id=applied.id))
    assert final.status == pb.SHARE_REQUEST_STATUS_GRANTED and final.grant_id == grant.id
    assert [(e.action, e.actor.code) for e in final.history] == [
        ("applied", "bdc-clerk"),
        ("approved", "ga-steward"),
        ("granted", "sm-lin"),
    ]


def test_unconditional_is_granted_at_once_and_not_shared_refused_with_its_basis(as_: Any) -> None:
    granted = as_("consumer")("Apply", pb.ApplyRequest(request=_application(LICENCE)))
    assert granted.status == pb.SHARE_REQUEST_STATUS_GRANTED and granted.grant_id
    grant = as_("consumer")("GetGrant", pb.GetGrantRequest(id=granted.grant_id))
    assert grant.status == pb.GRANT_STATUS_ACTIVE and grant.daily_quota == 500

    refused = as_("consumer")("Apply", pb.ApplyRequest(request=_application(RECORD)))
    assert refused.status == pb.SHARE_REQUEST_STATUS_REFUSED
    assert "《刑事诉讼法》第二百八十六条" in refused.decision_reason and not refused.grant_id


def test_a_refusal_can_be_disputed_once_and_the_share_manager_decides(as_: Any) -> None:
    refused = as_("consumer")("Apply", pb.ApplyRequest(request=_application(RECORD)))
    disputed = as_("consumer")("Dispute", pb.DisputeRequest(id=refused.id, reason="办理登记确需核查"))
    assert disputed.status == pb.SHARE_REQUEST_STATUS_DISPUTED
    as_("owner").fails(
        grpc.StatusCode.PERMISSION_DENIED, "DecideDispute", pb.DecideDisputeRequest(id=refused.id, reason="x")
    )
    upheld = as_("manager")("DecideDispute", pb.DecideDisputeRequest(id=refused.id, grant=False, reason="依法封存"))
    assert upheld.status == pb.SHARE_REQUEST_STATUS_REFUSAL_UPHELD
    as_("consumer").fails(
        grpc.StatusCode.FAILED_PRECONDITION, "Dispute", pb.DisputeRequest(id=refused.id, reason="再议")
    )

    pending = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    as_("owner")("Refuse", pb.RefuseRequest(id=pending.id, reason="用途不明"))
    as_("consumer")("Dispute", pb.DisputeRequest(id=pending.id, reason="用途为不动产转移登记"))
    overturned = as_("manager")("DecideDispute", pb.DecideDisputeRequest(id=pending.id, grant=True, reason="用途正当"))
    assert overturned.status == pb.SHARE_REQUEST_STATUS_GRANTED and overturned.grant_id
    assert [e.action for e in overturned.history] == ["applied", "refused", "disputed", "refusal_overturned"]


def test_each_role_may_only_take_its_own_steps(hub: RunningHub, as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    approve = pb.ApproveRequest(id=applied.id)
    for who in ("consumer", "manager", "operator", "auditor", "registry-owner", "system"):
        as_(who).fails(grpc.StatusCode.PERMISSION_DENIED, "Approve", approve)
    for who in ("owner", "operator", "auditor", "manager", "system"):
        as_(who).fails(grpc.StatusCode.PERMISSION_DENIED, "Apply", pb.ApplyRequest(request=_application()))
    as_("owner")("Approve", approve)
    for who in ("owner", "consumer", "operator", "auditor"):
        as_(who).fails(grpc.StatusCode.PERMISSION_DENIED, "IssueGrant", pb.IssueGrantRequest(request_id=applied.id))
    assert hub.rows(GrantRow) == 0


def test_a_department_does_not_apply_for_its_own_data(as_: Any, hub: RunningHub) -> None:
    """So nobody can approve their own request, or their department's request to itself."""
    hub.add_system("ga-other", POLICE.code)
    request = pb.ApplyRequest(request=_application(system_codes=("ga-other",)))
    error = as_("two-hats").fails(grpc.StatusCode.FAILED_PRECONDITION, "Apply", request)
    assert "does not apply to itself" in (error.details() or "")
    assert hub.rows(ShareRequestRow) == 0


BAD_APPLICATIONS: list[tuple[dict[str, Any], str]] = [
    ({"fields": ("name", "salary")}, "request.fields"),
    ({"fields": ()}, "request.fields"),
    ({"purpose": " "}, "request.purpose"),
    ({"legal_basis": ""}, "request.legal_basis"),
    ({"start": today() - dt.timedelta(days=1)}, "request.start_date"),
    ({"end": today() + dt.timedelta(days=5000)}, "request.end_date"),
    ({"end": today()}, "request.end_date"),
    ({"expected_daily_calls": 0}, "request.expected_daily_calls"),
    ({"system_codes": ()}, "request.system_codes"),
    ({"system_codes": ("ga-rkxx",)}, "request.system_codes[0]"),  # another department's system
    ({"system_codes": ("bdc-djxt", "bdc-none")}, "request.system_codes[1]"),  # not registered
    ({"system_codes": ("bdc-djxt", "bdc-djxt")}, "request.system_codes"),
]


@pytest.mark.parametrize(("change", "field"), BAD_APPLICATIONS)
def test_bad_applications_are_refused_and_change_nothing(
    hub: RunningHub, as_: Any, change: dict[str, Any], field: str
) -> None:
    error = as_("consumer").fails(
        grpc.StatusCode.INVALID_ARGUMENT, "Apply", pb.ApplyRequest(request=_application(**change))
    )
    assert field in violations(error)
    assert hub.rows(ShareRequestRow) == 0 and hub.rows(ShareEventRow) == 0


def test_unknown_or_unpublished_resources(hub: RunningHub, as_: Any, world: dict[str, Path]) -> None:
    as_("consumer").fails(
        grpc.StatusCode.NOT_FOUND, "Apply", pb.ApplyRequest(request=_application("10101/350200000099"))
    )
    with hub.client(world["owner"]) as c:
        c.call(c.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=IDENTITY, reason="维护"))
    error = as_("consumer").fails(grpc.StatusCode.FAILED_PRECONDITION, "Apply", pb.ApplyRequest(request=_application()))
    assert "suspended" in (error.details() or "")
    undated = _application()
    undated.ClearField("start_date")
    assert "request.start_date" in violations(
        as_("consumer").fails(grpc.StatusCode.INVALID_ARGUMENT, "Apply", pb.ApplyRequest(request=undated))
    )
    assert hub.rows(ShareRequestRow) == 0


def test_decisions_only_on_pending_requests_and_only_once(hub: RunningHub, as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    as_("owner").fails(grpc.StatusCode.INVALID_ARGUMENT, "Refuse", pb.RefuseRequest(id=applied.id))
    wider = pb.ApproveRequest(id=applied.id, fields=["name", "address"])
    assert "fields" in violations(as_("owner").fails(grpc.StatusCode.INVALID_ARGUMENT, "Approve", wider))
    later = pb.ApproveRequest(id=applied.id, end_date=w.date_to_wire(today() + dt.timedelta(days=400)))
    assert "end_date" in violations(as_("owner").fails(grpc.StatusCode.INVALID_ARGUMENT, "Approve", later))
    stray_mask = pb.ApproveRequest(
        id=applied.id, fields=["name"], masks=[pb.FieldMask(field="id_number", mask=pb.MASK_KIND_ID_NUMBER)]
    )
    assert "masks" in violations(as_("owner").fails(grpc.StatusCode.INVALID_ARGUMENT, "Approve", stray_mask))
    as_("owner")("Approve", pb.ApproveRequest(id=applied.id))
    as_("owner").fails(grpc.StatusCode.FAILED_PRECONDITION, "Approve", pb.ApproveRequest(id=applied.id))
    as_("owner").fails(grpc.StatusCode.FAILED_PRECONDITION, "Refuse", pb.RefuseRequest(id=applied.id, reason="晚了"))
    as_("consumer").fails(grpc.StatusCode.FAILED_PRECONDITION, "Dispute", pb.DisputeRequest(id=applied.id, reason="x"))
    as_("manager").fails(grpc.StatusCode.INVALID_ARGUMENT, "IssueGrant", pb.IssueGrantRequest(request_id="SR-nope"))
    unknown = pb.IssueGrantRequest(request_id="SR-20000101-00000000")
    as_("manager").fails(grpc.StatusCode.NOT_FOUND, "IssueGrant", unknown)
    assert hub.rows(ShareEventRow) == 2


def test_grants_are_suspended_resumed_and_revoked_by_owner_or_share_manager(hub: RunningHub, as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application(LICENCE)))
    gid = applied.grant_id
    as_("consumer").fails(grpc.StatusCode.PERMISSION_DENIED, "SuspendGrant", pb.ChangeGrantRequest(id=gid, reason="x"))
    as_("registry-owner").fails(
        grpc.StatusCode.PERMISSION_DENIED, "SuspendGrant", pb.ChangeGrantRequest(id=gid, reason="x")
    )
    as_("owner").fails(grpc.StatusCode.INVALID_ARGUMENT, "SuspendGrant", pb.ChangeGrantRequest(id=gid))
    assert (
        as_("owner")("SuspendGrant", pb.ChangeGrantRequest(id=gid, reason="核查")).status == pb.GRANT_STATUS_SUSPENDED
    )
    as_("owner").fails(grpc.StatusCode.FAILED_PRECONDITION, "SuspendGrant", pb.ChangeGrantRequest(id=gid, reason="x"))
    assert (
        as_("manager")("ResumeGrant", pb.ChangeGrantRequest(id=gid, reason="核查完毕")).status == pb.GRANT_STATUS_ACTIVE
    )
    revoked = as_("manager")("RevokeGrant", pb.ChangeGrantRequest(id=gid, reason="事项办结"))
    assert revoked.status == pb.GRANT_STATUS_REVOKED
    as_("owner").fails(grpc.StatusCode.FAILED_PRECONDITION, "ResumeGrant", pb.ChangeGrantRequest(id=gid, reason="x"))
    assert [(e.action, e.actor.code) for e in revoked.history] == [
        ("issued", "bdc-clerk"),
        ("suspended", "ga-steward"),
        ("resumed", "sm-lin"),
        ("revoked", "sm-lin"),
    ]


def test_lists_views_and_overdue_requests(hub: RunningHub, as_: Any) -> None:
    first = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    as_("consumer")("Apply", pb.ApplyRequest(request=_application(LICENCE)))
    store = Store(hub.settings.effective_database_url)
    try:  # ten working days pass without an answer
        with store.db.write() as s:
            s.execute(
                update(ShareRequestRow)
                .where(ShareRequestRow.id == first.id)
                .values(due_date=today() - dt.timedelta(days=1))
            )
    finally:
        store.close()
    mine = as_("consumer")("ListShareRequests", pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_MINE))
    assert len(mine.requests) == 2 and mine.overdue_count == 1
    for_owner = as_("owner")("ListShareRequests", pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_FOR_ME))
    assert [r.id for r in for_owner.requests] == [first.id] and for_owner.requests[0].overdue
    overdue = as_("manager")("ListShareRequests", pb.ListShareRequestsRequest(overdue_only=True))
    assert [r.id for r in overdue.requests] == [first.id]
    assert not as_("registry-owner")(
        "ListShareRequests", pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_FOR_ME)
    ).requests
    for view in (pb.SHARE_REQUEST_VIEW_FOR_ME, pb.SHARE_REQUEST_VIEW_UNSPECIFIED):
        refused = as_("operator").fails(
            grpc.StatusCode.PERMISSION_DENIED, "ListShareRequests", pb.ListShareRequestsRequest(view=view)
        )
        assert reason_of(refused) == "REQUEST_READ_DENIED"
    grants = as_("auditor")("ListGrants", pb.ListGrantsRequest(resource_code=LICENCE))
    assert len(grants.grants) == 1
    error = as_("operator").fails(
        grpc.StatusCode.PERMISSION_DENIED, "GetShareRequest", pb.GetShareRequestRequest(id=first.id)
    )
    assert reason_of(error) == "REQUEST_READ_DENIED"


def test_the_hubs_decisions_follow_grants_issued_and_revoked_through_it(hub: RunningHub, as_: Any) -> None:
    question = Question("bdc-djxt", REGISTRY.code, IDENTITY, "不动产转移登记", ("id_number",))
    assert hub.hub.decisions.decide(question, m.ResourceStatus.PUBLISHED, today()).reason is DenyReason.NO_GRANT
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    as_("owner")(
        "Approve",
        pb.ApproveRequest(id=applied.id, masks=[pb.FieldMask(field="id_number", mask=pb.MASK_KIND_ID_NUMBER)]),
    )
    grant = as_("manager")("IssueGrant", pb.IssueGrantRequest(request_id=applied.id))
    decision = hub.hub.decisions.decide(question, m.ResourceStatus.PUBLISHED, today())
    assert decision.allowed and decision.grant_id == grant.id
    assert decision.masks == (("id_number", m.MaskKind.ID_NUMBER),)
    as_("owner")("RevokeGrant", pb.ChangeGrantRequest(id=grant.id, reason="事项办结"))
    assert hub.hub.decisions.decide(question, m.ResourceStatus.PUBLISHED, today()).reason is DenyReason.NO_GRANT


def test_check_access_answers_like_the_data_plane_without_using_quota(hub: RunningHub, as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application(LICENCE, expected_daily_calls=1)))
    check = pb.CheckAccessRequest(
        system_code="bdc-djxt", resource_code=LICENCE, purpose="不动产转移登记", fields=["id_number"]
    )
    for _ in range(3):  # a quota of one call a day is not used up by checks
        answer = as_("system")("CheckAccess", check)
        assert answer.allowed and answer.grant_id == applied.grant_id
    wrong = as_("consumer")(
        "CheckAccess",
        pb.CheckAccessRequest(system_code="bdc-djxt", resource_code=LICENCE, purpose="企业开办", fields=["id_number"]),
    )
    assert (wrong.allowed, wrong.reason) == (False, "wrong_purpose")
    assert as_("owner")("CheckAccess", check).allowed  # the owner may look at who can read its data
    hub.add_department(m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY))
    outsider = Caller(hub, hub.add_person("sj-steward", "11350200MB0067890U", m.Role.OWNER_STEWARD))
    outsider.fails(grpc.StatusCode.PERMISSION_DENIED, "CheckAccess", check)
    as_("consumer").fails(
        grpc.StatusCode.INVALID_ARGUMENT, "CheckAccess", pb.CheckAccessRequest(system_code="bdc-djxt")
    )


def test_roles_are_assigned_and_taken_away_by_operators_within_the_separation_rules(
    hub: RunningHub, as_: Any, world: dict[str, Path]
) -> None:
    def change(who: str, method: str, username: str, role: rpb.Role.ValueType) -> Any:
        with hub.client(world[who]) as c:
            return c.call(
                getattr(c.registry, method), rpb.ChangeRoleRequest(username=username, role=role, reason="调岗")
            )

    def refused(code: grpc.StatusCode, who: str, method: str, username: str, role: rpb.Role.ValueType) -> str:
        with pytest.raises(grpc.RpcError) as info:
            change(who, method, username, role)
        assert isinstance(info.value, grpc.Call) and info.value.code() == code, info.value
        return info.value.details() or ""

    assert "cannot be held together" in refused(
        grpc.StatusCode.FAILED_PRECONDITION, "operator", "AssignRole", "bdc-clerk", rpb.ROLE_SHARE_MANAGER
    )
    refused(grpc.StatusCode.PERMISSION_DENIED, "manager", "AssignRole", "bdc-clerk", rpb.ROLE_OWNER_STEWARD)
    assert "its own roles" in refused(
        grpc.StatusCode.PERMISSION_DENIED, "operator", "AssignRole", "op-admin", rpb.ROLE_SHARE_MANAGER
    )
    refused(grpc.StatusCode.FAILED_PRECONDITION, "operator", "UnassignRole", "bdc-clerk", rpb.ROLE_AUDITOR)
    refused(grpc.StatusCode.FAILED_PRECONDITION, "operator", "UnassignRole", "bdc-clerk", rpb.ROLE_CONSUMER)

    as_("registry-owner").fails(grpc.StatusCode.PERMISSION_DENIED, "Apply", pb.ApplyRequest(request=_application()))
    person = change("operator", "AssignRole", "bdc-steward", rpb.ROLE_CONSUMER)
    assert sorted(person.roles) == sorted([rpb.ROLE_CONSUMER, rpb.ROLE_OWNER_STEWARD])
    as_("registry-owner")("Apply", pb.ApplyRequest(request=_application()))  # the new role counts at once
    change("operator", "UnassignRole", "bdc-steward", rpb.ROLE_CONSUMER)
    as_("registry-owner").fails(grpc.StatusCode.PERMISSION_DENIED, "Apply", pb.ApplyRequest(request=_application()))


def test_concurrent_grant_changes_leave_decisions_as_the_store_says(hub: RunningHub, as_: Any) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application(LICENCE)))
    gid = applied.grant_id
    question = Question("bdc-djxt", REGISTRY.code, LICENCE, "不动产转移登记", ("id_number",))

    def flip(who: str, rounds: int) -> None:
        caller = Caller(hub, hub.identity(m.PrincipalKind.PERSON, who))
        for n in range(rounds):
            method = "SuspendGrant" if n % 2 == 0 else "ResumeGrant"
            with contextlib.suppress(grpc.RpcError):  # the other thread may have moved it first
                caller(method, pb.ChangeGrantRequest(id=gid, reason="并发"))

    threads = [threading.Thread(target=flip, args=(who, 12)) for who in ("ga-steward", "sm-lin", "ga-steward")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = as_("manager")("GetGrant", pb.GetGrantRequest(id=gid)).status
    allowed = hub.hub.decisions.decide(question, m.ResourceStatus.PUBLISHED, today(), consume=False).allowed
    assert allowed == (stored == pb.GRANT_STATUS_ACTIVE)


def test_owners_find_the_rights_records_on_their_resources(hub: RunningHub, as_: Any, world: dict[str, Path]) -> None:
    applied = as_("consumer")("Apply", pb.ApplyRequest(request=_application()))
    as_("owner")("Approve", pb.ApproveRequest(id=applied.id, reason="同意"))
    hub.hub.audit.flush()
    with hub.client(world["owner"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(resource_code=IDENTITY))
    actions = [json.loads(e.record)["action"] for e in found.entries]
    assert "apply:conditional" in actions and "approve" in actions
