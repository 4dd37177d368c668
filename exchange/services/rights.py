"""The share-request workflow: apply, decide, dispute, grant, suspend, resume, revoke.

Rules (国发〔2016〕51号, 国务院令第809号): unconditional resources are granted
on application; conditional ones are decided by their owner within 10
working days, then granted by the share manager; not-shared ones are
refused with their legal basis. A refusal may be disputed once; the share
manager's decision is final. Every step is an event with who, when and why.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from audit.records import AuditRecord
from exchange import validation
from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, PermissionDenied
from exchange.federation.model import RemoteEntry
from exchange.models import (
    Application,
    Grant,
    GrantStatus,
    GrantUsage,
    MaskKind,
    Page,
    Principal,
    PrincipalKind,
    PrincipalRef,
    Resource,
    ResourceStatus,
    ShareEvent,
    ShareRequest,
    ShareRequestStatus,
    ShareType,
    Tally,
)
from exchange.paging import PageRequest, page_request
from exchange.services.auditing import change_record
from exchange.services.federation.remote import refuse_if_remote
from exchange.services.verification import grant_scope
from exchange.store import Store
from exchange.store.applications import OutgoingFilter
from exchange.store.rights import GrantFilter, RequestFilter, RequestStep
from exchange.workdays import ANSWER_WITHIN_WORKING_DAYS, DUE_SOON_WORKING_DAYS, WorkCalendar
from policy import HUB_WIDE, Action, RightsPolicy
from policy.decision import Decision, DecisionPoint, Question

MAX_DAILY_CALLS = 10_000_000
MAX_RATE = 10_000
Masks = tuple[tuple[str, MaskKind], ...]


@dataclass(frozen=True)
class Approval:
    """The owner's terms: a subset of the requested fields, an end no later than asked, masks."""

    fields: tuple[str, ...] = ()
    end: dt.date | None = None
    masks: Masks = ()
    reason: str = ""
    # Masked items the consumer may filter on (a bounded verification of a value it holds).
    verify_masked: tuple[str, ...] = ()


class Forwarding(Protocol):
    """Where applications for entries homed at other hubs go (services/federation/rights.py)."""

    def apply(self, actor: Principal, app: Application, remote: RemoteEntry) -> ShareRequest: ...

    def dispute(self, actor: Principal, request_id: str, reason: str) -> ShareRequest: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _merged(page: PageRequest, local: Page[ShareRequest], outgoing: Page[ShareRequest]) -> Page[ShareRequest]:
    """One page of two lists paged from the same id: the first ``page.size`` of both, in id order."""
    both = sorted([*local.items, *outgoing.items], key=lambda r: r.id)
    shown = both[: page.size]
    more = len(both) > page.size or bool(local.next_page_token or outgoing.next_page_token)
    return Page(shown, page.token_after(shown[-1].id) if more and shown else "")


def _new_id(prefix: str, at: dt.datetime) -> str:
    return f"{prefix}-{at:%Y%m%d}-{secrets.token_hex(4)}"


class RightsService:
    def __init__(
        self,
        store: Store,
        policy: RightsPolicy,
        calendar: WorkCalendar,
        max_grant_days: int,
        *,
        decisions: DecisionPoint | None = None,
        clock: Callable[[], dt.datetime] = _now,
        miss_allowance: int = 5,
    ) -> None:
        self._miss_allowance = miss_allowance
        self._store = store
        self._policy = policy
        self._calendar = calendar
        self._max_days = max_grant_days
        self._decisions = decisions or DecisionPoint()
        self._clock = clock
        self._forwarding: Forwarding | None = None

    # Applying

    def forward_through(self, forwarding: Forwarding) -> None:
        """Applications for resources homed at other hubs go to ``forwarding`` (a federating hub's)."""
        self._forwarding = forwarding

    def apply(self, actor: Principal, app: Application) -> ShareRequest:
        self.require_applicant(actor)
        app = replace(app, consumer_department_code=actor.department_code)
        validation.validate_key("request.resource_code", app.resource_code, "resource")
        remote = self._store.federated.get(app.resource_code)
        if remote is not None and self._forwarding is not None:
            return self._forwarding.apply(actor, app, remote)
        resource = self._published(app.resource_code, actor)
        if resource.spec.department_code == actor.department_code:
            raise FailedPrecondition(
                "a department does not apply to itself through the hub: it holds this data already",
                app.resource_code,
            )
        now = self._clock()
        self.validate_application(app, resource, now.date())
        step = self.first_step(self.new_request(app, actor.ref, now), resource, actor.ref)
        record = change_record(
            actor,
            "rights",
            f"apply:{resource.spec.share_type.value}",
            subject=step.request.id,
            resource=app.resource_code,
            purpose=app.purpose,
            reason=step.request.decision_reason,
        )
        stored = self._store.rights.create_request(step, audit=record)
        self.granted(step)
        return stored

    def new_request(self, app: Application, applicant: PrincipalRef, now: dt.datetime) -> ShareRequest:
        """A new pending request, due in 10 working days."""
        return ShareRequest(
            id=_new_id("SR", now),
            application=app,
            status=ShareRequestStatus.PENDING,
            applicant=applicant,
            created_at=now,
            due=self._calendar.add_working_days(now.date(), ANSWER_WITHIN_WORKING_DAYS),
        )

    def granted(self, step: RequestStep) -> None:
        """After a step is stored: the data plane learns of the grant it issued, if any."""
        if step.grant is not None:
            self._decisions.refresh(step.grant.id, self._store.rights.get_grant)

    def first_step(self, request: ShareRequest, resource: Resource, actor: PrincipalRef) -> RequestStep:
        """What an application makes of a new request by the resource's share type: refused (not shared),
        granted (unconditional) or pending (conditional)."""
        app, now = request.application, request.created_at
        applied = ShareEvent("applied", actor, now, app.purpose)
        kind = resource.spec.share_type
        if kind is ShareType.NOT_SHARED:
            reason = f"the resource is classed not shared; legal basis: {resource.spec.legal_basis}"
            refused = replace(request, status=ShareRequestStatus.REFUSED, decision_reason=reason)
            return RequestStep(refused, applied, extra_events=(ShareEvent("refused", actor, now, reason),))
        if kind is ShareType.UNCONDITIONAL:
            grant = self._grant_for(
                request, fields=app.fields, end=app.end, masks=(), quota=app.expected_daily_calls, rate=0, now=now
            )
            granted = replace(
                request,
                status=ShareRequestStatus.GRANTED,
                approved_fields=app.fields,
                approved_end=app.end,
                grant_id=grant.id,
            )
            reason = "unconditional resource: granted on application"
            return RequestStep(granted, applied, grant, (ShareEvent("granted", actor, now, reason),))
        return RequestStep(request, applied)

    def _published(self, code: str, actor: Principal) -> Resource:
        validation.validate_key("request.resource_code", code, "resource")
        try:
            resource = self._visible_resource(code, actor)
        except NotFound as missing:
            raise refuse_if_remote(self._store, code, missing) from None
        if resource.status is not ResourceStatus.PUBLISHED:
            raise FailedPrecondition(f"resource {code!r} is {resource.status.value}, not published", code)
        return resource

    def validate_application(
        self, app: Application, resource: Resource, today: dt.date, *, local_systems: bool = True
    ) -> None:
        """Refuses an application this hub would not accept for ``resource``; ``local_systems`` False: the
        systems are another hub's (checked there), not this hub's registered ones."""
        out: list[FieldViolation] = []
        validation.check_text(out, "request.purpose", app.purpose, required=True, limit=validation.MAX_NAME)
        needs_basis = resource.spec.share_type is ShareType.CONDITIONAL
        validation.check_text(
            out, "request.legal_basis", app.legal_basis, required=needs_basis, limit=validation.MAX_TEXT
        )
        self._check_fields(
            out, "request.fields", app.fields, {i.name for i in resource.spec.data_items}, resource.spec.code
        )
        if not app.system_codes:
            out.append(FieldViolation("request.system_codes", "name at least one system that will use the data"))
        if app.start < today:
            out.append(FieldViolation("request.start_date", f"{app.start} is in the past"))
        if app.end <= app.start:
            out.append(FieldViolation("request.end_date", "must be after the start date"))
        elif (app.end - app.start).days > self._max_days:
            out.append(FieldViolation("request.end_date", f"the period may be at most {self._max_days} days"))
        if not 1 <= app.expected_daily_calls <= MAX_DAILY_CALLS:
            out.append(FieldViolation("request.expected_daily_calls", f"must be between 1 and {MAX_DAILY_CALLS}"))
        if len(set(app.system_codes)) != len(app.system_codes):
            out.append(FieldViolation("request.system_codes", "a system is named twice"))
        for n, code in enumerate(app.system_codes):
            if local_systems:
                self._check_system(out, f"request.system_codes[{n}]", code, app.consumer_department_code)
            elif not validation.SYSTEM_CODE.match(code):
                out.append(FieldViolation(f"request.system_codes[{n}]", f"{code[:80]!r} is not a system code"))
        validation.raise_if(out)

    def _check_system(self, out: list[FieldViolation], path: str, code: str, department: str) -> None:
        if not validation.SYSTEM_CODE.match(code):
            out.append(FieldViolation(path, f"{code[:80]!r} is not a system code"))
            return
        try:
            system = self._store.registry.get_system(code)
        except NotFound:
            out.append(FieldViolation(path, f"system {code!r} is not registered"))
            return
        if system.department_code != department:
            out.append(FieldViolation(path, f"system {code!r} belongs to another department"))

    @staticmethod
    def _check_fields(
        out: list[FieldViolation], path: str, fields: tuple[str, ...], allowed: set[str], resource_code: str
    ) -> None:
        if not fields:
            out.append(FieldViolation(path, "name the fields needed (minimum necessary: no wildcard)"))
        if len(set(fields)) != len(fields):
            out.append(FieldViolation(path, "a field is named twice"))
        unknown = [f for f in fields if f not in allowed]
        if unknown:
            out.append(FieldViolation(path, f"{', '.join(unknown)} not in resource {resource_code}"))

    # Deciding

    def _resource_owner(self, request: ShareRequest) -> str:
        return self._store.catalog.get(request.application.resource_code).spec.department_code

    def _owner_decides(self, actor: Principal, request: ShareRequest, doing: str) -> None:
        owner = self._resource_owner(request)
        self._policy.require(actor, Action.DECIDE_REQUEST, owner, doing)
        # apply() already refuses a department's request for its own data; this guards the rule itself.
        if request.applicant == actor.ref or request.application.consumer_department_code == owner:
            raise PermissionDenied(f"{actor.ref} may not decide its own department's request", reason="SELF_APPROVAL")
        if actor.identity_key and actor.identity_key == self._identity_of(request.applicant):
            raise PermissionDenied(
                f"{actor.ref} is the same person as the applicant {request.applicant}", reason="SELF_APPROVAL"
            )

    def _identity_of(self, ref: PrincipalRef) -> str:
        try:
            return self._store.registry.principal(ref).identity_key
        except NotFound:
            return ""

    @staticmethod
    def _require_status(request: ShareRequest, *allowed: ShareRequestStatus) -> None:
        if request.status not in allowed:
            wanted = " or ".join(s.value for s in allowed)
            raise FailedPrecondition(
                f"request {request.id} is {request.status.value}, not {wanted}", request.id, kind="STATUS"
            )

    def approve(self, actor: Principal, request_id: str, approval: Approval) -> ShareRequest:
        self.require_somewhere(actor, Action.DECIDE_REQUEST, "approve share requests")
        _require_id("id", request_id, "SR")
        validation.validate_free_text("reason", approval.reason)
        self._require_party(actor, request_id, Action.DECIDE_REQUEST, "approve share requests")

        def decide(request: ShareRequest) -> RequestStep:
            self._owner_decides(actor, request, "approve this request")
            self._require_status(request, ShareRequestStatus.PENDING)
            fields, end, masks = self._terms(request, approval)
            now = self._clock()
            approved = replace(
                request,
                status=ShareRequestStatus.APPROVED,
                approved_fields=fields,
                approved_end=end,
                masks=masks,
                decision_reason=approval.reason,
                verify_masked=approval.verify_masked,
            )
            return RequestStep(approved, ShareEvent("approved", actor.ref, now, approval.reason))

        record = self._request_record(actor, "approve", request_id, approval.reason)
        return self._store.rights.change_request(request_id, decide, audit=record)

    def _terms(self, request: ShareRequest, approval: Approval) -> tuple[tuple[str, ...], dt.date, Masks]:
        app = request.application
        out: list[FieldViolation] = []
        fields = approval.fields or app.fields
        self._check_fields(out, "fields", fields, set(app.fields), "the request")
        end = approval.end or app.end
        if end > app.end or end <= app.start:
            out.append(FieldViolation("end_date", f"must be after {app.start} and no later than {app.end}"))
        masked = [f for f, _ in approval.masks]
        if any(f not in fields for f in masked) or len(set(masked)) != len(masked):
            out.append(FieldViolation("masks", "each mask names one granted field, once"))
        hidden = {f for f, k in approval.masks if k is not MaskKind.NONE}
        verify = approval.verify_masked
        if any(f not in hidden for f in verify) or len(set(verify)) != len(verify):
            out.append(FieldViolation("verify_masked", "each item named is one this approval masks, named once"))
        validation.raise_if(out)
        return fields, end, approval.masks

    def _request_record(self, actor: Principal, action: str, request_id: str, reason: str) -> AuditRecord:
        """The audit record of a step on a request, naming its resource and purpose for owners' searches."""
        known = self._store.rights.get_request(request_id)
        return change_record(
            actor,
            "rights",
            action,
            subject=request_id,
            resource=known.application.resource_code,
            purpose=known.application.purpose,
            reason=reason,
        )

    def _require_published(self, request: ShareRequest) -> None:
        """A grant is issued only on a resource that is still published."""
        resource = self._store.catalog.get(request.application.resource_code)
        if resource.status is not ResourceStatus.PUBLISHED:
            raise FailedPrecondition(
                f"resource {resource.spec.code!r} is {resource.status.value}; no grant is issued on it",
                resource.spec.code,
            )

    def refuse(self, actor: Principal, request_id: str, reason: str) -> ShareRequest:
        self.require_somewhere(actor, Action.DECIDE_REQUEST, "refuse share requests")
        _require_id("id", request_id, "SR")
        _require_reason(reason)
        self._require_party(actor, request_id, Action.DECIDE_REQUEST, "refuse share requests")

        def decide(request: ShareRequest) -> RequestStep:
            self._owner_decides(actor, request, "refuse this request")
            self._require_status(request, ShareRequestStatus.PENDING)
            refused = replace(request, status=ShareRequestStatus.REFUSED, decision_reason=reason)
            return RequestStep(refused, ShareEvent("refused", actor.ref, self._clock(), reason))

        record = self._request_record(actor, "refuse", request_id, reason)
        return self._store.rights.change_request(request_id, decide, audit=record)

    def dispute(self, actor: Principal, request_id: str, reason: str) -> ShareRequest:
        """Disputes a refusal, once. A request refused at its resource's home hub is disputed through this
        hub: kept here until the federation submits the dispute there, where the share manager decides."""
        self.require_somewhere(actor, Action.DISPUTE_REFUSAL, "dispute refusals")
        _require_id("id", request_id, "SR")
        _require_reason(reason)
        found = self._require_party(actor, request_id, Action.DISPUTE_REFUSAL, "dispute refusals", outgoing=True)
        if found.cross_hub is not None and found.cross_hub.home_hub:
            consumer = found.application.consumer_department_code
            self._policy.require(actor, Action.DISPUTE_REFUSAL, consumer, "dispute this refusal")
            if self._forwarding is None:
                raise _decided_at_home(found)
            return self._forwarding.dispute(actor, request_id, reason)

        def decide(request: ShareRequest) -> RequestStep:
            consumer = request.application.consumer_department_code
            self._policy.require(actor, Action.DISPUTE_REFUSAL, consumer, "dispute this refusal")
            self._require_status(request, ShareRequestStatus.REFUSED)
            disputed = replace(request, status=ShareRequestStatus.DISPUTED)
            return RequestStep(disputed, ShareEvent("disputed", actor.ref, self._clock(), reason))

        record = self._request_record(actor, "dispute", request_id, reason)
        return self._store.rights.change_request(request_id, decide, audit=record)

    def decide_dispute(
        self, actor: Principal, request_id: str, *, grant: bool, reason: str, quota: int, rate: int
    ) -> ShareRequest:
        self._policy.require(actor, Action.DECIDE_DISPUTE, HUB_WIDE, "decide disputes")
        _require_id("id", request_id, "SR")
        _require_reason(reason)
        _check_limits(quota, rate)

        def decide(request: ShareRequest) -> RequestStep:
            self._require_status(request, ShareRequestStatus.DISPUTED)
            now = self._clock()
            if not grant:
                upheld = replace(request, status=ShareRequestStatus.REFUSAL_UPHELD, decision_reason=reason)
                return RequestStep(upheld, ShareEvent("refusal_upheld", actor.ref, now, reason))
            self._require_published(request)
            app = request.application
            issued = self._grant_for(
                request,
                fields=app.fields,
                end=app.end,
                masks=(),
                quota=quota or app.expected_daily_calls,
                rate=rate,
                now=now,
            )
            granted = replace(
                request,
                status=ShareRequestStatus.GRANTED,
                approved_fields=app.fields,
                approved_end=app.end,
                decision_reason=reason,
                grant_id=issued.id,
            )
            return RequestStep(granted, ShareEvent("refusal_overturned", actor.ref, now, reason), issued)

        record = self._request_record(actor, f"decide_dispute:{'grant' if grant else 'uphold'}", request_id, reason)
        changed = self._store.rights.change_request(request_id, decide, audit=record)
        if changed.grant_id:
            self._decisions.refresh(changed.grant_id, self._store.rights.get_grant)
        return changed

    # Grants

    def _grant_for(
        self,
        request: ShareRequest,
        *,
        fields: tuple[str, ...],
        end: dt.date,
        masks: Masks,
        quota: int,
        rate: int,
        now: dt.datetime,
        verify_masked: tuple[str, ...] = (),
    ) -> Grant:
        app = request.application
        return Grant(
            id=_new_id("GR", now),
            request_id=request.id,
            resource_code=app.resource_code,
            consumer_department_code=app.consumer_department_code,
            system_codes=app.system_codes,
            fields=fields,
            purpose=app.purpose,
            legal_basis=app.legal_basis,
            start=app.start,
            end=end,
            daily_quota=quota,
            rate_per_second=rate,
            masks=masks,
            status=GrantStatus.ACTIVE,
            issued_at=now,
            verify_masked=verify_masked,
        )

    def issue_grant(self, actor: Principal, request_id: str, quota: int, rate: int, reason: str) -> Grant:
        self._policy.require(actor, Action.ISSUE_GRANT, HUB_WIDE, "issue grants")
        _require_id("request_id", request_id, "SR")
        _check_limits(quota, rate)
        validation.validate_free_text("reason", reason)

        def decide(request: ShareRequest) -> RequestStep:
            self._require_status(request, ShareRequestStatus.APPROVED)
            self._require_published(request)
            now = self._clock()
            end = request.approved_end or request.application.end
            issued = self._grant_for(
                request,
                fields=request.approved_fields,
                end=end,
                masks=request.masks,
                quota=quota or request.application.expected_daily_calls,
                rate=rate,
                now=now,
                verify_masked=request.verify_masked,
            )
            granted = replace(request, status=ShareRequestStatus.GRANTED, grant_id=issued.id)
            return RequestStep(granted, ShareEvent("granted", actor.ref, now, reason), issued)

        record = self._request_record(actor, "issue_grant", request_id, reason)
        changed = self._store.rights.change_request(request_id, decide, audit=record)
        self._decisions.refresh(changed.grant_id, self._store.rights.get_grant)
        return self._store.rights.get_grant(changed.grant_id)

    def change_grant(self, actor: Principal, grant_id: str, action: Action, reason: str) -> Grant:
        self.require_somewhere(actor, action, f"{action.verb} grants")
        _require_id("id", grant_id, "GR")
        _require_reason(reason)
        moves = {
            Action.SUSPEND_GRANT: ((GrantStatus.ACTIVE,), GrantStatus.SUSPENDED, "suspended"),
            Action.RESUME_GRANT: ((GrantStatus.SUSPENDED,), GrantStatus.ACTIVE, "resumed"),
            Action.REVOKE_GRANT: ((GrantStatus.ACTIVE, GrantStatus.SUSPENDED), GrantStatus.REVOKED, "revoked"),
        }
        sources, target, verb = moves[action]
        self._require_grant_party(actor, grant_id, action, f"{action.verb} grants")

        def decide(grant: Grant) -> tuple[GrantStatus, ShareEvent]:
            owner = self._store.catalog.get(grant.resource_code).spec.department_code
            self._policy.require(actor, action, owner, f"{verb.removesuffix('d')} this grant")
            if grant.status not in sources:
                raise FailedPrecondition(f"grant {grant.id} is {grant.status.value}; it cannot be {verb}", grant.id)
            return target, ShareEvent(verb, actor.ref, self._clock(), reason)

        known = self._store.rights.get_grant(grant_id)
        record = change_record(
            actor,
            "rights",
            f"{verb}_grant",
            subject=grant_id,
            resource=known.resource_code,
            purpose=known.purpose,
            grant=grant_id,
            reason=reason,
        )
        changed = self._store.rights.change_grant(grant_id, decide, audit=record)
        self._decisions.refresh(grant_id, self._store.rights.get_grant)
        return changed

    # The data plane's question, as a dry run

    def check_access(self, actor: Principal, q: Question) -> Decision:
        out: list[FieldViolation] = []
        validation.check_pattern(out, "system_code", q.system, validation.SYSTEM_CODE, "a system code")
        validation.check_pattern(
            out, "resource_code", q.resource, validation.RESOURCE_CODE, validation.RESOURCE_CODE_FORMAT
        )
        validation.check_text(out, "purpose", q.purpose, required=True, limit=validation.MAX_NAME)
        if not q.fields:
            out.append(FieldViolation("fields", "name the fields to check"))
        validation.raise_if(out)
        system = self._store.registry.get_system(q.system)
        resource = self._visible_resource(q.resource, actor)
        involved = {system.department_code, resource.spec.department_code}
        if actor.department_code not in involved and not self._sees_everything(actor):
            raise PermissionDenied(
                f"{actor.ref} may check only its own department's systems or resources", reason="CHECK_DENIED"
            )
        question = replace(q, department=system.department_code)
        return self._decisions.decide(question, resource.status, self._clock().date(), consume=False)

    def _visible_resource(self, code: str, actor: Principal) -> Resource:
        """The resource, unless it is another department's draft (which does not exist for the caller)."""
        resource = self._store.catalog.get(code)
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            raise NotFound("resource", code)
        return resource

    # Who may see a request or grant: decided before the store is asked whether it exists

    def _sees_everything(self, actor: Principal) -> bool:
        return self._policy.allows(actor.ref, Action.ISSUE_GRANT, HUB_WIDE) or self._policy.allows(
            actor.ref, Action.READ_AUDIT, HUB_WIDE
        )

    # Asked first, by these methods and by the handlers before they translate a request: a caller without the
    # right learns nothing of the rules of a form it may not submit.

    def require_somewhere(self, actor: Principal, action: Action, doing: str) -> None:
        """Refuses a caller who may do ``action`` in no department."""
        self._policy.require_somewhere(actor, action, doing)

    def require_applicant(self, actor: Principal) -> None:
        self._policy.require(actor, Action.APPLY_FOR_DATA, actor.department_code, "apply for data")

    def require_request_reader(self, actor: Principal) -> None:
        self._require_reader(actor, "share requests", "REQUEST_READ_DENIED")

    def require_grant_reader(self, actor: Principal) -> None:
        self._require_reader(actor, "grants", "GRANT_READ_DENIED")

    def _require_reader(self, actor: Principal, what: str, reason: str) -> None:
        """Refuses a caller none of whose roles takes part in sharing: it reads no request or grant at all."""
        if not any(self._policy.allows(actor.ref, a, actor.department_code) for a in READER_RIGHTS):
            raise PermissionDenied(
                f"{actor.ref} may not read {what}: none of its roles takes part in sharing", reason=reason
            )

    def _require_party(
        self, actor: Principal, request_id: str, action: Action, doing: str, *, outgoing: bool = False
    ) -> ShareRequest:
        """Refuses, before saying whether the request exists, a caller who may not do ``action`` to it;
        ``outgoing``: the action may be taken on this hub's application homed elsewhere (a dispute)."""
        self._policy.require_somewhere(actor, action, doing)
        doing = f"{doing}: that takes the right {action}"
        return self._visible_request(actor, request_id, denied_reason(action), doing, outgoing=outgoing)

    def _require_grant_party(self, actor: Principal, grant_id: str, action: Action, doing: str) -> None:
        """Refuses, before saying whether the grant exists, a caller who may not do ``action`` to it."""
        self._policy.require_somewhere(actor, action, doing)
        self._visible_grant(actor, grant_id, denied_reason(action), f"{doing}: that takes the right {action}")

    def _visible_request(
        self, actor: Principal, request_id: str, reason: str, doing: str = "", *, outgoing: bool = False
    ) -> ShareRequest:
        """The request, if the caller sees every request or its department is party to this one.

        Another department's request and one that does not exist are refused alike: only a caller who
        would see any request is told that one does not exist. This hub's application homed elsewhere is
        read here, and changed only at its home (but for a dispute, sent there: ``outgoing``).
        """
        try:
            request = self._store.rights.get_request(request_id)
        except NotFound:
            request = self._outgoing(actor, request_id, reason, doing)
            if not doing or outgoing:  # read, or disputed through this hub; any other change is the home's
                return request
            raise _decided_at_home(request) from None
        parties = {request.application.consumer_department_code, self._resource_owner(request)}
        if not self._sees_everything(actor) and actor.department_code not in parties:
            raise PermissionDenied(not_party(actor, "share request", request_id, doing), reason=reason)
        return request

    def _outgoing(self, actor: Principal, request_id: str, reason: str, doing: str) -> ShareRequest:
        """This hub's application for a resource homed elsewhere, if the caller may see it (as requests)."""
        try:
            request = self._store.applications.get_outgoing(request_id)
        except NotFound:
            if self._sees_everything(actor):
                raise
            raise PermissionDenied(not_party(actor, "share request", request_id, doing), reason=reason) from None
        if not self._sees_everything(actor) and actor.department_code != request.application.consumer_department_code:
            raise PermissionDenied(not_party(actor, "share request", request_id, doing), reason=reason)
        return request

    def _visible_grant(self, actor: Principal, grant_id: str, reason: str, doing: str = "") -> Grant:
        """The grant, if the caller sees every grant or its department is party to this one (as requests)."""
        try:
            grant = self._store.rights.get_grant(grant_id)
        except NotFound:
            if self._sees_everything(actor):
                raise
            raise PermissionDenied(not_party(actor, "grant", grant_id, doing), reason=reason) from None
        owner = self._store.catalog.get(grant.resource_code).spec.department_code
        if not self._sees_everything(actor) and actor.department_code not in {grant.consumer_department_code, owner}:
            raise PermissionDenied(not_party(actor, "grant", grant_id, doing), reason=reason)
        return grant

    # Reading

    def get_request(self, actor: Principal, request_id: str) -> ShareRequest:
        self.require_request_reader(actor)
        _require_id("id", request_id, "SR")
        return self._visible_request(actor, request_id, "REQUEST_READ_DENIED")

    def list_requests(
        self, actor: Principal, size: int, token: str, f: RequestFilter, *, view: str, overdue_only: bool
    ) -> tuple[Page[ShareRequest], int]:
        self._require_reader(actor, "share requests", "REQUEST_READ_DENIED")
        today = self._clock().date()
        visible = None if self._sees_everything(actor) else actor.department_code
        disputer = False
        if view == "mine":
            f = replace(f, consumer_department=actor.department_code)
        elif view == "for_me":
            f, disputer = self._for_me(actor, f)
        f = replace(f, visible_to=visible, overdue_on=today if overdue_only else None)
        page = page_request(size, token, {**f.__dict__, "view": view})
        listed, overdue = self._store.rights.list_requests(page, f, today)
        # This hub's applications for resources homed at other hubs (decided there) are listed with the others,
        # in the same id order: none awaits an owner or the share manager here, and none has an owner here.
        if overdue_only or f.owner_department or (view == "for_me" and not disputer):
            return listed, overdue
        outgoing = OutgoingFilter(f.consumer_department or visible, f.resource_code, f.statuses, disputable=disputer)
        return _merged(page, listed, self._store.applications.outgoing_page(page, outgoing)), overdue

    def awaiting(self, actor: Principal) -> dict[ShareRequestStatus, Tally]:
        """What awaits the caller, counted by status with its deadlines (the console's notices).

        The share manager: approved requests to grant, disputes, and every pending request (whose overdue
        count shows owners who have not answered). An owner steward: the department's pending requests.
        "Due soon" is within DUE_SOON_WORKING_DAYS working days of today. The right to decide is the right
        to see what there is to decide, so no other check is made (the home page asks on every visit).
        """
        if self._policy.allows(actor.ref, Action.ISSUE_GRANT, HUB_WIDE):
            waiting = (ShareRequestStatus.APPROVED, ShareRequestStatus.DISPUTED, ShareRequestStatus.PENDING)
            f = RequestFilter(statuses=waiting)
        elif self._policy.allows(actor.ref, Action.DECIDE_REQUEST, actor.department_code):
            f = RequestFilter(owner_department=actor.department_code, statuses=(ShareRequestStatus.PENDING,))
        else:
            raise PermissionDenied(f"{actor.ref} decides no share requests, so none awaits it", reason="NO_DECISIONS")
        today = self._clock().date()
        return self._store.rights.tally_requests(
            f, today, self._calendar.add_working_days(today, DUE_SOON_WORKING_DAYS)
        )

    def _for_me(self, actor: Principal, f: RequestFilter) -> tuple[RequestFilter, bool]:
        """Requests awaiting the caller's move, and whether the caller is a consumer that may dispute.

        The share manager: approved ones to grant and disputes to settle. An owner steward: pending
        requests for the department's data. A consumer: the department's refusals, which it may dispute
        (those refused at another hub's home too, disputed through this hub, until they are).
        """
        if self._policy.allows(actor.ref, Action.ISSUE_GRANT, HUB_WIDE):
            return replace(f, statuses=(ShareRequestStatus.APPROVED, ShareRequestStatus.DISPUTED)), False
        if self._policy.allows(actor.ref, Action.DECIDE_REQUEST, actor.department_code):
            return replace(f, owner_department=actor.department_code, statuses=(ShareRequestStatus.PENDING,)), False
        if self._policy.allows(actor.ref, Action.DISPUTE_REFUSAL, actor.department_code):
            refused = (ShareRequestStatus.REFUSED,)
            return replace(f, consumer_department=actor.department_code, statuses=refused), True
        raise PermissionDenied(f"{actor.ref} decides nothing, so nothing awaits it", reason="NO_DECISIONS")

    def get_grant(self, actor: Principal, grant_id: str) -> Grant:
        self.require_grant_reader(actor)
        _require_id("id", grant_id, "GR")
        grant = self._visible_grant(actor, grant_id, "GRANT_READ_DENIED")
        return self._with_usage(actor, grant, self._store.catalog.get(grant.resource_code).spec.department_code)

    def list_grants(self, actor: Principal, size: int, token: str, f: GrantFilter) -> Page[Grant]:
        self._require_reader(actor, "grants", "GRANT_READ_DENIED")
        f = replace(f, visible_to=None if self._sees_everything(actor) else actor.department_code)
        page = self._store.rights.list_grants(page_request(size, token, dict(f.__dict__)), f)
        owners: dict[str, str] = {}
        grants = []
        for grant in page.items:
            if grant.resource_code not in owners:
                owners[grant.resource_code] = self._store.catalog.get(grant.resource_code).spec.department_code
            grants.append(self._with_usage(actor, grant, owners[grant.resource_code]))
        return replace(page, items=grants)

    def _with_usage(self, actor: Principal, grant: Grant, owner: str) -> Grant:
        """The grant with today's use, for whoever may suspend it (its owner's stewards, the share manager),
        and for the people of the consuming department, whose use it is.

        They see the calls and the masked-item verifications: lookups, misses and refusals.
        """
        consumer = actor.ref.kind is PrincipalKind.PERSON and actor.department_code == grant.consumer_department_code
        if not consumer and not self._policy.allows(actor.ref, Action.SUSPEND_GRANT, owner):
            return grant
        today = self._clock().date()
        counts = self._store.counters.counts(grant_scope(grant.id), today)
        usage = GrantUsage(
            day=today,
            calls=self._store.counters.leased(grant.id, today),
            verifications=counts.lookups,
            misses=counts.misses,
            refused=counts.refused,
            miss_allowance=self._miss_allowance,
        )
        return replace(grant, usage=usage)


# Rights whose holders see share requests and grants: each those its own department is party to, or
# every one for a right held hub-wide (the share manager's, the auditor's).
READER_RIGHTS = (
    Action.APPLY_FOR_DATA,
    Action.DISPUTE_REFUSAL,
    Action.DECIDE_REQUEST,
    Action.SUSPEND_GRANT,
    Action.ISSUE_GRANT,
    Action.READ_AUDIT,
    Action.READ_DATA,
)


def denied_reason(action: Action) -> str:
    """The ErrorInfo reason of a refusal of ``action``, as the policy names it."""
    return f"{action.object.upper()}_{action.verb.upper()}_DENIED"


def not_party(actor: Principal, kind: str, name: str, doing: str = "") -> str:
    """The one message for another department's matter and for one that does not exist (``doing``: what
    was attempted and the right it takes; by default, seeing it)."""
    party = f"{actor.department_code} is party to no {kind} {name}"
    if doing:
        return f"{actor.ref} may not {doing} in a department party to the {kind}, and {party}"
    return f"{actor.ref} may not see {kind} {name}: {party}"


_ID = re.compile(r"^(SR|GR)-[0-9]{8}-[0-9a-f]{8}$")


def _require_id(field: str, value: str, prefix: str) -> None:
    """A request (SR-…) or grant (GR-…) id of the hub's form: a typo is INVALID_ARGUMENT, not NOT_FOUND."""
    if not _ID.match(value) or not value.startswith(prefix):
        raise InvalidArgument.of([FieldViolation(field, f"{value[:40]!r} is not a {prefix}-YYYYMMDD-xxxxxxxx id")])


def _home_of(request: ShareRequest) -> str:
    return request.cross_hub.home_hub if request.cross_hub else "?"


def _decided_at_home(request: ShareRequest) -> PermissionDenied:
    return PermissionDenied(
        f"request {request.id} is decided at its resource's home hub {_home_of(request)}, not here",
        reason="DECIDED_AT_HOME",
    )


def _require_reason(reason: str) -> None:
    out: list[FieldViolation] = []
    validation.check_text(out, "reason", reason, required=True, limit=validation.MAX_TEXT)
    validation.raise_if(out)


def _check_limits(quota: int, rate: int) -> None:
    out: list[FieldViolation] = []
    if not 0 <= quota <= MAX_DAILY_CALLS:
        out.append(FieldViolation("daily_quota", f"must be between 1 and {MAX_DAILY_CALLS} (0: the expected volume)"))
    if not 0 <= rate <= MAX_RATE:
        out.append(FieldViolation("rate_per_second", f"must be between 0 and {MAX_RATE} (0: the hub's default)"))
    validation.raise_if(out)
