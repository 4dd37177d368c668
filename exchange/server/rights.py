"""RightsService handlers: translate, call the rights service, translate back."""

from __future__ import annotations

import datetime as dt

from exchange import validation
from exchange import wire as c
from exchange.errors import FieldViolation
from exchange.models import Principal, ShareRequest, ShareRequestStatus
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.rights import Approval, RightsService
from exchange.store.rights import GrantFilter, RequestFilter
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc as pb_grpc
from exchange.validation import raise_if
from exchange.workdays import WorkCalendar
from policy import Action
from policy.decision import Question

_VIEWS = {
    pb.SHARE_REQUEST_VIEW_UNSPECIFIED: "all",
    pb.SHARE_REQUEST_VIEW_MINE: "mine",
    pb.SHARE_REQUEST_VIEW_FOR_ME: "for_me",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class RightsServicer(pb_grpc.RightsServiceServicer):
    def __init__(
        self,
        service: RightsService,
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
        *,
        calendar: WorkCalendar | None = None,
    ) -> None:
        self.refusals = refusals
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev
        # The hub's working-day calendar: a request awaiting its owner gets a note when its due date is not
        # the calendar's word (a year in no calendar, or reckoned on an earlier one). None: no notes.
        self.calendar = calendar

    def _request(self, r: ShareRequest, today: dt.date | None = None) -> pb.ShareRequest:
        note = ""
        if self.calendar is not None and r.status is ShareRequestStatus.PENDING:
            note = self.calendar.due_note(r.created_at.astimezone(dt.UTC).date(), r.due)
        return c.share_request_to_wire(r, today or _today(), note)

    @unary
    def Apply(self, request: pb.ApplyRequest, actor: Principal) -> pb.ShareRequest:
        self.service.require_applicant(actor)  # the right first, before the request is read
        created = self.service.apply(actor, c.application_from_wire(request.request))
        return self._request(created)

    @unary
    def GetShareRequest(self, request: pb.GetShareRequestRequest, actor: Principal) -> pb.ShareRequest:
        return self._request(self.service.get_request(actor, request.id.strip()))

    @unary
    def ListShareRequests(self, request: pb.ListShareRequestsRequest, actor: Principal) -> pb.ListShareRequestsResponse:
        self.service.require_request_reader(actor)
        out: list[FieldViolation] = []
        status = c.REQUEST_STATUS.domain(request.status, "status", out, required=False)
        view = _VIEWS.get(request.view)
        if view is None:
            out.append(FieldViolation("view", f"{request.view} is not a known view"))
        raise_if(out)
        validation.validate_key("resource_code", request.resource_code, "resource", optional=True)
        validation.validate_key(
            "consumer_department_code", request.consumer_department_code, "department", optional=True
        )
        query = RequestFilter(
            consumer_department=request.consumer_department_code or None,
            resource_code=request.resource_code or None,
            statuses=(status,) if status else (),
        )
        page, overdue = self.service.list_requests(
            actor, request.page_size, request.page_token, query, view=view or "all", overdue_only=request.overdue_only
        )
        today = _today()
        return pb.ListShareRequestsResponse(
            requests=[self._request(r, today) for r in page.items],
            next_page_token=page.next_page_token,
            overdue_count=overdue,
        )

    @unary
    def Approve(self, request: pb.ApproveRequest, actor: Principal) -> pb.ShareRequest:
        self.service.require_somewhere(actor, Action.DECIDE_REQUEST, "approve share requests")
        out: list[FieldViolation] = []
        end = c.date_from_wire(request.end_date, "end_date", out, required=False)
        masks = c.masks_from_wire(request.masks, out)
        raise_if(out)
        approval = Approval(
            tuple(f.strip() for f in request.fields),
            end,
            masks,
            request.reason.strip(),
            tuple(f.strip() for f in request.verify_masked),
        )
        return self._request(self.service.approve(actor, request.id.strip(), approval))

    @unary
    def Refuse(self, request: pb.RefuseRequest, actor: Principal) -> pb.ShareRequest:
        refused = self.service.refuse(actor, request.id.strip(), request.reason.strip())
        return self._request(refused)

    @unary
    def Dispute(self, request: pb.DisputeRequest, actor: Principal) -> pb.ShareRequest:
        disputed = self.service.dispute(actor, request.id.strip(), request.reason.strip())
        return self._request(disputed)

    @unary
    def DecideDispute(self, request: pb.DecideDisputeRequest, actor: Principal) -> pb.ShareRequest:
        decided = self.service.decide_dispute(
            actor,
            request.id.strip(),
            grant=request.grant,
            reason=request.reason.strip(),
            quota=request.daily_quota,
            rate=request.rate_per_second,
        )
        return self._request(decided)

    @unary
    def IssueGrant(self, request: pb.IssueGrantRequest, actor: Principal) -> pb.Grant:
        grant = self.service.issue_grant(
            actor, request.request_id.strip(), request.daily_quota, request.rate_per_second, request.reason.strip()
        )
        return c.grant_to_wire(grant)

    def _change(self, request: pb.ChangeGrantRequest, actor: Principal, action: Action) -> pb.Grant:
        return c.grant_to_wire(self.service.change_grant(actor, request.id.strip(), action, request.reason.strip()))

    @unary
    def SuspendGrant(self, request: pb.ChangeGrantRequest, actor: Principal) -> pb.Grant:
        return self._change(request, actor, Action.SUSPEND_GRANT)

    @unary
    def ResumeGrant(self, request: pb.ChangeGrantRequest, actor: Principal) -> pb.Grant:
        return self._change(request, actor, Action.RESUME_GRANT)

    @unary
    def RevokeGrant(self, request: pb.ChangeGrantRequest, actor: Principal) -> pb.Grant:
        return self._change(request, actor, Action.REVOKE_GRANT)

    @unary
    def GetGrant(self, request: pb.GetGrantRequest, actor: Principal) -> pb.Grant:
        return c.grant_to_wire(self.service.get_grant(actor, request.id.strip()))

    @unary
    def ListGrants(self, request: pb.ListGrantsRequest, actor: Principal) -> pb.ListGrantsResponse:
        self.service.require_grant_reader(actor)
        out: list[FieldViolation] = []
        status = c.GRANT_STATUS.domain(request.status, "status", out, required=False)
        raise_if(out)
        validation.validate_key("resource_code", request.resource_code, "resource", optional=True)
        validation.validate_key(
            "consumer_department_code", request.consumer_department_code, "department", optional=True
        )
        query = GrantFilter(
            consumer_department=request.consumer_department_code or None,
            resource_code=request.resource_code or None,
            status=status,
        )
        page = self.service.list_grants(actor, request.page_size, request.page_token, query)
        return pb.ListGrantsResponse(
            grants=[c.grant_to_wire(g) for g in page.items], next_page_token=page.next_page_token
        )

    @unary
    def CheckAccess(self, request: pb.CheckAccessRequest, actor: Principal) -> pb.AccessDecision:
        question = Question(
            system=request.system_code.strip(),
            department="",
            resource=request.resource_code.strip(),
            purpose=request.purpose.strip(),
            fields=tuple(f.strip() for f in request.fields),
        )
        d = self.service.check_access(actor, question)
        return pb.AccessDecision(
            allowed=d.allowed,
            grant_id=d.grant_id,
            fields=list(d.fields),
            masks=c.masks_to_wire(d.masks),
            reason=d.reason.value if d.reason else "",
            message=d.message,
        )
