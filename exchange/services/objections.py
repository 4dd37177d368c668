"""Objections to shared data (疑义、错误): a consumer raises, the owner answers, the share manager escalates.

Rules (国发〔2016〕51号: 快速校核; 国务院令第809号: 校核纠错): a consumer system, or a person of a consumer
department, objects to a resource it may see or to an exchange its department received, naming the items in
doubt and why, with a digest of what it received (never the values). The owning department's steward answers
within ``answer_days`` working days: corrected (from an effective time), no correction possible, or rejected.
The share manager sees open and overdue objections hub-wide and may escalate one still open. Each step is an
audit record staged with the change; each refusal is recorded by the caller's refusal log.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from exchange import validation
from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, PermissionDenied
from exchange.models import Page, Principal, PrincipalKind, Resource, ResourceStatus, Tally
from exchange.paging import page_request
from exchange.services.auditing import change_record
from exchange.store import Store
from exchange.store.objections import UNANSWERED, AnswerKind, Objection, ObjectionFilter, ObjectionState
from exchange.workdays import DUE_SOON_WORKING_DAYS, WorkCalendar
from policy import HUB_WIDE, Action, RightsPolicy

OBJECTION_ID = re.compile(r"^OB-[0-9]{8}-[0-9a-f]{8}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
EXCHANGE_ID = re.compile(r"^EX[0-9a-f]{20,40}$")
MAX_ITEMS = validation.MAX_DATA_ITEMS
# Outcomes of an exchange's records that mean its data reached the consumer.
RECEIVED = frozenset({"allowed", "ok"})
VIEWS = ("all", "mine", "for_me")


@dataclass(frozen=True)
class Raising:
    """What a consumer objects to: a resource, or one exchange of it; the items in doubt, why, and a digest."""

    resource_code: str
    fields: tuple[str, ...]
    reason: str
    exchange_id: str = ""
    received_sha256: str = ""


@dataclass(frozen=True)
class Answer:
    """The owner's answer; ``effective_at`` only for a correction (when the corrected data took effect)."""

    kind: AnswerKind
    text: str
    effective_at: dt.datetime | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ObjectionService:
    def __init__(
        self,
        store: Store,
        policy: RightsPolicy,
        calendar: WorkCalendar,
        answer_days: int,
        *,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._store = store
        self._policy = policy
        self._calendar = calendar
        self._answer_days = answer_days
        self._clock = clock

    # Who may do what: asked first, before anything the request names is looked up or checked.

    def require_raiser(self, actor: Principal) -> None:
        """A consumer department's person (APPLY_FOR_DATA) or one of its systems (READ_DATA) raises."""
        action = Action.READ_DATA if actor.ref.kind is PrincipalKind.SYSTEM else Action.APPLY_FOR_DATA
        if not self._policy.allows(actor.ref, action, actor.department_code):
            raise PermissionDenied(
                f"{actor.ref} may not raise objections: that takes the right {Action.APPLY_FOR_DATA.value} "
                f"(a consumer) or {Action.READ_DATA.value} (a consumer system) in its department",
                reason="OBJECTION_RAISE_DENIED",
            )

    def require_answerer(self, actor: Principal) -> None:
        """An owner steward (DECIDE_REQUEST in its department) answers; which objections, the owner decides."""
        if not self._policy.allows(actor.ref, Action.DECIDE_REQUEST, actor.department_code):
            raise PermissionDenied(
                f"{actor.ref} may not answer objections: that takes the right {Action.DECIDE_REQUEST.value} "
                "of the owning department, held by owner_steward",
                reason="OBJECTION_ANSWER_DENIED",
            )

    def require_escalator(self, actor: Principal) -> None:
        if not self._policy.allows(actor.ref, Action.DECIDE_DISPUTE, HUB_WIDE):
            raise PermissionDenied(
                f"{actor.ref} may not escalate objections: that takes the right {Action.DECIDE_DISPUTE.value} "
                "hub-wide, held by share_manager",
                reason="OBJECTION_ESCALATE_DENIED",
            )

    # Raising

    def raise_objection(self, actor: Principal, raising: Raising) -> Objection:
        self.require_raiser(actor)
        _validate_raising(raising)
        resource = self._objectable(actor, raising.resource_code)
        self._check_items(raising, resource)
        if raising.exchange_id:
            self._require_received(actor, raising)
        now = self._clock()
        objection = Objection(
            id=f"OB-{now:%Y%m%d}-{secrets.token_hex(4)}",
            resource_code=resource.spec.code,
            owner_department=resource.spec.department_code,
            exchange_id=raising.exchange_id,
            fields=raising.fields,
            reason=raising.reason,
            received_sha256=raising.received_sha256,
            raised_by=str(actor.ref),
            raiser_department=actor.department_code,
            raised_at=now,
            due=self._calendar.add_working_days(now.astimezone(dt.UTC).date(), self._answer_days),
        )
        record = change_record(
            actor, "objection", "raise", subject=objection.id, resource=objection.resource_code, reason=raising.reason
        )
        record = replace(record, exchange_id=raising.exchange_id, fields=list(raising.fields))
        return self._store.objections.add(objection, audit=record)

    def _objectable(self, actor: Principal, code: str) -> Resource:
        resource = self._store.catalog.get(code)
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            raise NotFound("resource", code)
        if resource.status is ResourceStatus.RETIRED:
            raise FailedPrecondition(
                f"resource {code!r} is retired: its data is no longer shared, so there is nothing to correct", code
            )
        if resource.spec.department_code == actor.department_code:
            raise FailedPrecondition(
                f"resource {code!r} is {actor.department_code}'s own: a department corrects its own data itself",
                code,
            )
        return resource

    @staticmethod
    def _check_items(raising: Raising, resource: Resource) -> None:
        known = {i.name for i in resource.spec.data_items}
        unknown = [f for f in raising.fields if f not in known]
        if unknown:
            raise InvalidArgument.of(
                [FieldViolation("fields", f"{', '.join(unknown)[:200]} not in resource {resource.spec.code}")]
            )

    def _require_received(self, actor: Principal, raising: Raising) -> None:
        """The exchange must be one the caller's department received, of this resource, with these items.

        Another department's exchange, one that was refused, and one that does not exist are refused alike.
        """
        seen = self._store.audit.exchange_seen(raising.exchange_id)
        if seen is None or seen.actor_department != actor.department_code or not seen.outcomes & RECEIVED:
            raise PermissionDenied(
                f"{actor.ref} may object only to an exchange its department received, and "
                f"{actor.department_code} received no exchange {raising.exchange_id}",
                reason="EXCHANGE_NOT_RECEIVED",
            )
        if seen.resource != raising.resource_code:
            raise FailedPrecondition(
                f"exchange {raising.exchange_id} was of resource {seen.resource}, not {raising.resource_code}",
                raising.exchange_id,
            )
        extra = [f for f in raising.fields if f not in seen.fields]
        if extra:
            raise InvalidArgument.of(
                [FieldViolation("fields", f"{', '.join(extra)[:200]} not received in {raising.exchange_id}")]
            )

    # Answering and escalating

    def answer(self, actor: Principal, objection_id: str, answer: Answer) -> Objection:
        self.require_answerer(actor)
        _require_id(objection_id)
        _validate_answer(answer)
        known = self._owned(actor, objection_id)

        def decide(o: Objection) -> Objection:
            if o.state not in UNANSWERED:
                raise FailedPrecondition(
                    f"objection {o.id} was answered already ({o.answer_kind.value if o.answer_kind else ''}, "
                    f"{o.answered_at:%Y-%m-%d} by {o.answered_by}); an answer is given once",
                    o.id,
                    kind="STATUS",
                )
            return replace(
                o,
                state=ObjectionState.ANSWERED,
                answer_kind=answer.kind,
                answer_text=answer.text,
                effective_at=answer.effective_at,
                answered_by=str(actor.ref),
                answered_at=self._clock(),
            )

        reason = answer.text
        if answer.kind is AnswerKind.CORRECTED and answer.effective_at is not None:
            reason = f"effective {_rfc3339(answer.effective_at)}; {answer.text}"
        record = change_record(
            actor,
            "objection",
            f"answer:{answer.kind.value}",
            subject=objection_id,
            resource=known.resource_code,
            reason=reason,
        )
        return self._store.objections.change(objection_id, decide, audit=record)

    def _owned(self, actor: Principal, objection_id: str) -> Objection:
        """The objection, if the caller's department owns its resource; another's and a missing one alike."""
        try:
            found = self._store.objections.get(objection_id)
        except NotFound:
            found = None
        if found is None or not self._policy.allows(actor.ref, Action.DECIDE_REQUEST, found.owner_department):
            raise PermissionDenied(
                f"{actor.ref} may not answer objection {objection_id}: only a steward of the department that "
                f"owns its resource answers, and {actor.department_code} owns none objected to as {objection_id}",
                reason="OBJECTION_ANSWER_DENIED",
            )
        return found

    def escalate(self, actor: Principal, objection_id: str, reason: str) -> Objection:
        self.require_escalator(actor)
        _require_id(objection_id)
        _require_text("reason", reason)
        known = self._store.objections.get(objection_id)

        def decide(o: Objection) -> Objection:
            if o.state is not ObjectionState.OPEN:
                raise FailedPrecondition(
                    f"objection {o.id} is {o.state.value}: only an open (or overdue) one is escalated",
                    o.id,
                    kind="STATUS",
                )
            return replace(
                o,
                state=ObjectionState.ESCALATED,
                escalated_by=str(actor.ref),
                escalated_at=self._clock(),
                escalation_reason=reason,
            )

        record = change_record(
            actor, "objection", "escalate", subject=objection_id, resource=known.resource_code, reason=reason
        )
        return self._store.objections.change(objection_id, decide, audit=record)

    # Reading: an objection's state is public to whoever may see its resource (a published one: every member).

    def get(self, actor: Principal, objection_id: str) -> Objection:
        _require_id(objection_id)
        return self._store.objections.get(objection_id)

    def list(
        self, actor: Principal, size: int, token: str, f: ObjectionFilter, *, view: str = "all"
    ) -> tuple[Page[Objection], int]:
        """A page of objections and how many of those the filter finds are overdue today."""
        if view not in VIEWS:
            raise InvalidArgument.of([FieldViolation("view", f"{view[:40]!r} is not one of {', '.join(VIEWS)}")])
        if f.resource_code:
            validation.validate_key("resource_code", f.resource_code, "resource")
        if view == "mine":
            f = replace(f, raiser_department=actor.department_code)
        elif view == "for_me":
            f = self._for_me(actor, f)
        page = page_request(size, token, {**f.__dict__, "view": view})
        overdue = self._store.objections.count(replace(f, overdue_on=self.today()))
        return self._store.objections.list(page, f), overdue

    def awaiting(self, actor: Principal) -> Tally:
        """The objections awaiting the caller (as the "for_me" view finds them), with how many are due within
        DUE_SOON_WORKING_DAYS working days and how many are overdue (the console's notices)."""
        today = self.today()
        soon = self._calendar.add_working_days(today, DUE_SOON_WORKING_DAYS)
        return self._store.objections.tally(self._for_me(actor, ObjectionFilter()), today, soon)

    def _for_me(self, actor: Principal, f: ObjectionFilter) -> ObjectionFilter:
        """The share manager: every open one (to watch and escalate). A steward: its department's unanswered."""
        if self._policy.allows(actor.ref, Action.DECIDE_DISPUTE, HUB_WIDE):
            return replace(f, states=(ObjectionState.OPEN,))
        if self._policy.allows(actor.ref, Action.DECIDE_REQUEST, actor.department_code):
            return replace(f, owner_department=actor.department_code, states=UNANSWERED)
        raise PermissionDenied(f"{actor.ref} answers no objections, so none awaits it", reason="NO_DECISIONS")

    def today(self) -> dt.date:
        return self._clock().astimezone(dt.UTC).date()


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_id(value: str) -> None:
    if not OBJECTION_ID.match(value):
        raise InvalidArgument.of([FieldViolation("id", f"{value[:40]!r} is not an OB-YYYYMMDD-xxxxxxxx id")])


def _require_text(path: str, value: str) -> None:
    out: list[FieldViolation] = []
    validation.check_text(out, path, value, required=True, limit=validation.MAX_TEXT)
    validation.raise_if(out)


def _validate_raising(r: Raising) -> None:
    out: list[FieldViolation] = []
    validation.check_pattern(
        out, "resource_code", r.resource_code, validation.RESOURCE_CODE, validation.RESOURCE_CODE_FORMAT
    )
    validation.check_text(out, "reason", r.reason, required=True, limit=validation.MAX_TEXT)
    if not r.fields:
        out.append(FieldViolation("fields", "name the data items in doubt"))
    elif len(r.fields) > MAX_ITEMS or len(set(r.fields)) != len(r.fields):
        out.append(FieldViolation("fields", f"name each item in doubt once, at most {MAX_ITEMS}"))
    if r.exchange_id and not EXCHANGE_ID.match(r.exchange_id):
        out.append(FieldViolation("exchange_id", f"{r.exchange_id[:40]!r} is not an exchange id (EX and hex digits)"))
    if r.received_sha256 and not SHA256_HEX.match(r.received_sha256):
        out.append(FieldViolation("received_sha256", "must be the SHA-256 of the values received, 64 hex digits"))
    if r.exchange_id and not r.received_sha256:
        out.append(
            FieldViolation("received_sha256", "an objection to an exchange carries the SHA-256 of the values received")
        )
    validation.raise_if(out)


def _validate_answer(a: Answer) -> None:
    out: list[FieldViolation] = []
    validation.check_text(out, "text", a.text, required=True, limit=validation.MAX_TEXT)
    if a.kind is AnswerKind.CORRECTED and a.effective_at is None:
        out.append(FieldViolation("effective_time", "a correction names when the corrected data took effect"))
    if a.kind is not AnswerKind.CORRECTED and a.effective_at is not None:
        out.append(FieldViolation("effective_time", "only a correction has an effective time"))
    validation.raise_if(out)
