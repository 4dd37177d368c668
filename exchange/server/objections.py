"""ObjectionService handlers: translate, call the objection service, translate back."""

from __future__ import annotations

import datetime as dt

from exchange import validation
from exchange import wire as c
from exchange.errors import FieldViolation
from exchange.models import Principal
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.objections import Answer, ObjectionService, Raising
from exchange.store.objections import AnswerKind, Objection, ObjectionFilter, ObjectionState
from exchange.v1 import objection_pb2 as pb
from exchange.v1 import objection_pb2_grpc as pb_grpc
from exchange.validation import raise_if

STATE = c.EnumMap(ObjectionState, pb.ObjectionState, "OBJECTION_STATE_")
ANSWER = c.EnumMap(AnswerKind, pb.AnswerKind, "ANSWER_KIND_")
_VIEWS = {
    pb.OBJECTION_VIEW_UNSPECIFIED: "all",
    pb.OBJECTION_VIEW_MINE: "mine",
    pb.OBJECTION_VIEW_FOR_ME: "for_me",
}


def objection_to_wire(o: Objection, today: dt.date) -> pb.Objection:
    return pb.Objection(
        id=o.id,
        resource_code=o.resource_code,
        owner_department_code=o.owner_department,
        exchange_id=o.exchange_id,
        fields=list(o.fields),
        reason=o.reason,
        received_sha256=o.received_sha256,
        raised_by=o.raised_by,
        raiser_department_code=o.raiser_department,
        raised_at=c.timestamp(o.raised_at),
        due_date=c.date_to_wire(o.due),
        state=STATE.wire(o.state),
        overdue=o.overdue_on(today),
        answer_kind=ANSWER.optional(o.answer_kind),
        answer_text=o.answer_text,
        effective_time=c.timestamp(o.effective_at),
        answered_by=o.answered_by,
        answered_at=c.timestamp(o.answered_at),
        escalated_by=o.escalated_by,
        escalated_at=c.timestamp(o.escalated_at),
        escalation_reason=o.escalation_reason,
    )


class ObjectionServicer(pb_grpc.ObjectionServiceServicer):
    def __init__(
        self, service: ObjectionService, auth: Authenticator, insecure_dev: bool, refusals: Refusals | None = None
    ) -> None:
        self.refusals = refusals
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev

    def _wire(self, o: Objection) -> pb.Objection:
        return objection_to_wire(o, self.service.today())

    @unary
    def RaiseObjection(self, request: pb.RaiseObjectionRequest, actor: Principal) -> pb.Objection:
        self.service.require_raiser(actor)  # the right first, before the request is read
        raising = Raising(
            resource_code=request.resource_code.strip(),
            fields=tuple(f.strip() for f in request.fields),
            reason=request.reason.strip(),
            exchange_id=request.exchange_id.strip(),
            received_sha256=request.received_sha256.strip().lower(),
        )
        return self._wire(self.service.raise_objection(actor, raising))

    @unary
    def AnswerObjection(self, request: pb.AnswerObjectionRequest, actor: Principal) -> pb.Objection:
        self.service.require_answerer(actor)
        out: list[FieldViolation] = []
        kind = ANSWER.checked(request.kind, "kind", out)
        raise_if(out)
        effective = request.effective_time.ToDatetime(dt.UTC) if request.HasField("effective_time") else None
        answer = Answer(kind, request.text.strip(), effective)
        return self._wire(self.service.answer(actor, request.id.strip(), answer))

    @unary
    def EscalateObjection(self, request: pb.EscalateObjectionRequest, actor: Principal) -> pb.Objection:
        return self._wire(self.service.escalate(actor, request.id.strip(), request.reason.strip()))

    @unary
    def GetObjection(self, request: pb.GetObjectionRequest, actor: Principal) -> pb.Objection:
        return self._wire(self.service.get(actor, request.id.strip()))

    @unary
    def ListObjections(self, request: pb.ListObjectionsRequest, actor: Principal) -> pb.ListObjectionsResponse:
        out: list[FieldViolation] = []
        state = STATE.domain(request.state, "state", out, required=False)
        view = _VIEWS.get(request.view)
        if view is None:
            out.append(FieldViolation("view", f"{request.view} is not a known view"))
        raise_if(out)
        validation.validate_key("resource_code", request.resource_code, "resource", optional=True)
        query = ObjectionFilter(resource_code=request.resource_code or None, states=(state,) if state else ())
        today = self.service.today()
        if request.overdue_only:
            query = ObjectionFilter(query.resource_code, states=query.states, overdue_on=today)
        page, overdue = self.service.list(actor, request.page_size, request.page_token, query, view=view or "all")
        return pb.ListObjectionsResponse(
            objections=[objection_to_wire(o, today) for o in page.items],
            next_page_token=page.next_page_token,
            overdue_count=overdue,
        )
