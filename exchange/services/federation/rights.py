"""Rights stay at home: share requests across hubs (docs/federation.md, "Applying across hubs").

At the consumer's hub, an application for an entry homed at another hub is checked as a local one would be
where this hub can (purpose, legal basis, fields among the entry's items, period, volume, the department's own
systems), kept as a request waiting to be submitted, and submitted by the federation towards the home. At the
home hub, an application a peer submits becomes an ordinary share request for the foreign department, decided
by the owner's steward and granted by the share manager; the consumer's hub reads back its status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace

from audit.forwarded import Forwarded
from audit.records import AuditRecord
from exchange import validation
from exchange.errors import FailedPrecondition, FieldViolation, NotFound, PermissionDenied
from exchange.federation.model import HubRef, RemoteEntry, department_division, within
from exchange.models import (
    Application,
    CrossHubLink,
    GrantStatus,
    Principal,
    PrincipalKind,
    PrincipalRef,
    ResourceStatus,
    ShareEvent,
    ShareRequest,
    ShareRequestStatus,
)
from exchange.services.auditing import change_record, hub_instance, now_text
from exchange.services.rights import RightsService
from exchange.store import Store
from exchange.store.applications import HomeStatus, Incoming
from exchange.store.rights import RequestStep


@dataclass(frozen=True)
class DisputeSubmission:
    """A dispute as a peer submits it: the origin hub's request and the home's, who disputes and why, the
    statement that came with it, who sent it."""

    origin_request_id: str
    home_request_id: str
    resource_code: str
    consumer_department_code: str
    reason: str
    disputer: str
    statement: Forwarded
    via_peer: str


@dataclass(frozen=True)
class Submission:
    """An application as a peer submits it: the request, the statement that came with it, who sent it."""

    application: Application
    origin_request_id: str
    applicant: str
    department_name: str
    statement: Forwarded
    via_peer: str


def hub_record(peer: str, action: str, *, subject: str, resource: str = "", reason: str = "") -> AuditRecord:
    """The audit record of a step a peer hub's call made here (or this hub's step on a peer's word)."""
    return AuditRecord(
        kind="rights",
        action=action,
        time=now_text(),
        actor=f"hub/{peer}",
        actor_department="",
        outcome="ok",
        reason=reason,
        subject=subject,
        resource=resource,
        hub=hub_instance(),
    )


class CrossHubRights:
    """Applications across hubs: sent from the consumer's hub, decided at the home hub, status read back."""

    def __init__(
        self,
        store: Store,
        rights: RightsService,
        own: HubRef,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._rights = rights
        self.own = own
        self._clock = clock
        self.wake: Callable[[], None] = lambda: None  # the federation's sync loop, to submit at once

    # At the consumer's hub

    def apply(self, actor: Principal, app: Application, remote: RemoteEntry) -> ShareRequest:
        """Keeps the application as waiting to be submitted to ``remote``'s home; the sync loop submits it."""
        resource = remote.resource
        if resource.status is not ResourceStatus.PUBLISHED:
            raise FailedPrecondition(f"resource {app.resource_code!r} is {resource.status.value}, not published")
        if resource.spec.department_code == actor.department_code:
            raise FailedPrecondition("a department does not apply for its own data", app.resource_code)
        now = self._clock()
        self._rights.validate_application(app, resource, now.date())
        request = self._rights.new_request(app, actor.ref, now)
        request = replace(
            request,
            history=(ShareEvent("applied", actor.ref, now, app.purpose),),
            cross_hub=CrossHubLink(home_hub=remote.home.code, submission="waiting"),
        )
        record = change_record(
            actor,
            "rights",
            "apply:forwarded",
            subject=request.id,
            resource=app.resource_code,
            purpose=app.purpose,
            reason=f"homed at hub {remote.home.code}; submitted through peer {remote.via_peer}",
        )
        stored = self._store.applications.add_outgoing(request, remote.via_peer, audit=record)
        self.wake()
        return stored

    def home_said(self, home_hub: str, status: HomeStatus) -> bool:
        """Copies the home's word on one of this hub's applications; False if it was known already.

        A new state of the request, and a new state of its grant at home (suspended, resumed, revoked: the
        home's reason and time), each add an event to the history and are audit-recorded here; the same state
        read again only moves the cursor.
        """
        try:
            known = self._store.applications.get_outgoing(status.origin_request_id)
        except NotFound:
            return False
        link = known.cross_hub or CrossHubLink()
        home = PrincipalRef(PrincipalKind.SYSTEM, f"hub-{home_hub}")
        events: list[ShareEvent] = []
        actions: list[str] = []
        said = f"home request {status.home_request_id}, change {status.sequence}"
        if status.grant_id:
            said += f", grant {status.grant_id}"
        if link.submission != "submitted" or known.status is not status.status:
            # A dispute's reason is the disputer's, told here already; the home's refusal reason is not its.
            why = "" if status.status is ShareRequestStatus.DISPUTED else status.reason
            events.append(ShareEvent(f"home_{status.status.value}", home, self._clock(), why))
            actions.append(f"home_status:{status.status.value}")
        if status.grant_change and status.grant_status is not None and status.grant_status is not link.grant_status:
            at = status.grant_changed_at or self._clock()
            events.append(ShareEvent(f"home_grant_{status.grant_change}", home, at, status.grant_reason))
            actions.append(f"home_grant:{status.grant_change}")
            said += f" {status.grant_change} at home at {at.isoformat()}: {status.grant_reason}"
        record = hub_record(
            home_hub, ",".join(actions) or f"home_status:{status.status.value}", subject=status.origin_request_id,
            reason=said,
        )  # fmt: skip
        return self._store.applications.record_status(status.origin_request_id, status, tuple(events), audit=record)

    def refused_on_the_way(self, home_hub: str, request_id: str, why: str) -> None:
        """An application the home, or a hub on the way, refused to take: refused here with its reason."""
        request = self._store.applications.get_outgoing(request_id)
        status = HomeStatus(request_id, "", ShareRequestStatus.REFUSED, why, request.due, 0)
        self.home_said(home_hub, status)

    def dispute(self, actor: Principal, request_id: str, reason: str) -> ShareRequest:
        """Keeps a dispute of the home's refusal as waiting to be submitted there; the sync loop submits it.

        The caller's right to dispute for the department was checked (RightsService.dispute); here, under the
        store's lock: the home refused the request (its id there known) and it was not disputed before.
        """

        def check(request: ShareRequest) -> None:
            link = request.cross_hub or CrossHubLink()
            if request.status is not ShareRequestStatus.REFUSED:
                raise FailedPrecondition(
                    f"request {request.id} is {request.status.value}, not refused", request.id, kind="STATUS"
                )
            if link.dispute:
                raise FailedPrecondition(
                    f"request {request.id} was disputed already ({link.dispute}); a refusal is disputed once",
                    request.id,
                    kind="STATUS",
                )
            if not link.home_request_id:
                raise FailedPrecondition(
                    f"request {request.id} was refused before it reached hub {link.home_hub}: there is nothing "
                    "there to dispute; apply again once the reason is mended",
                    request.id,
                    kind="STATUS",
                )

        known = self._store.applications.get_outgoing(request_id)
        home = known.cross_hub.home_hub if known.cross_hub else ""
        record = change_record(
            actor, "rights", "dispute:forwarded", subject=request_id, resource=known.application.resource_code,
            purpose=known.application.purpose, reason=f"{reason} (refused at home hub {home}; submitted from here)",
        )  # fmt: skip
        event = ShareEvent("disputed", actor.ref, self._clock(), reason)
        disputed = self._store.applications.dispute_outgoing(request_id, check, event, audit=record)
        self.wake()
        return disputed

    def dispute_refused_on_the_way(self, home_hub: str, request_id: str, why: str) -> None:
        """A dispute the home, or a hub on the way, refused to take: refused for good here, with its reason."""
        home = PrincipalRef(PrincipalKind.SYSTEM, f"hub-{home_hub}")
        event = ShareEvent("dispute_refused", home, self._clock(), why)
        record = hub_record(home_hub, "refused:dispute", subject=request_id, reason=why)
        self._store.applications.dispute_refused(request_id, event, audit=record)

    # At the home hub

    def accept_dispute(self, sub: DisputeSubmission) -> HomeStatus:
        """Disputes, as its department would here, a refusal of a request that ``sub``'s origin hub submitted
        (again: its status, if this very dispute was taken before)."""
        statement = sub.statement
        if (statement.resource, statement.department) != (sub.resource_code, sub.consumer_department_code):
            raise PermissionDenied("the forwarded statement names another dispute", reason="FORWARD_REQUEST")
        if statement.home != self.own.code:
            raise FailedPrecondition(f"the dispute is for hub {statement.home}, not this hub {self.own.code}")
        require_within(sub.consumer_department_code, statement.origin)
        out: list[FieldViolation] = []
        validation.check_text(out, "dispute.reason", sub.reason, required=True, limit=validation.MAX_TEXT)
        validation.raise_if(out)
        request_id = self._store.applications.received(statement.origin, sub.origin_request_id)
        request = self._store.rights.get_request(request_id) if request_id == sub.home_request_id else None
        if request is None or request.application.consumer_department_code != sub.consumer_department_code:
            raise PermissionDenied(
                f"hub {statement.origin} submitted no request {sub.home_request_id} of department "
                f"{sub.consumer_department_code} here: it may not dispute it",
                reason="FOREIGN_REQUEST",
            )
        if statement.purpose != request.application.purpose:
            raise PermissionDenied("the forwarded statement names another purpose", reason="FORWARD_REQUEST")
        disputer = PrincipalRef(PrincipalKind.PERSON, f"{sub.disputer.partition('/')[2]}@{statement.origin}"[:63])
        if any(e.action == "disputed" and (e.actor, e.reason) == (disputer, sub.reason) for e in request.history):
            return self._status_of(request.id, 0)  # this dispute, submitted again (the answer was lost)

        def decide(current: ShareRequest) -> RequestStep:
            if current.status is not ShareRequestStatus.REFUSED:
                raise FailedPrecondition(
                    f"request {current.id} is {current.status.value} at hub {self.own.code}, not refused: "
                    "only a refusal may be disputed, once",
                    current.id,
                    kind="STATUS",
                )
            disputed = replace(current, status=ShareRequestStatus.DISPUTED)
            return RequestStep(disputed, ShareEvent("disputed", disputer, self._clock(), sub.reason))

        record = AuditRecord(
            kind="rights",
            action="dispute:from_hub",
            time=now_text(),
            actor=f"hub/{sub.via_peer}",
            actor_department=sub.consumer_department_code,
            outcome="ok",
            reason=f"{sub.reason} (disputed at hub {statement.origin} as {sub.origin_request_id} by {sub.disputer}; "
            f"path {' → '.join(statement.path)}; exchanges {','.join(statement.exchanges)})",
            subject=request.id,
            resource=request.application.resource_code,
            purpose=request.application.purpose,
            hub=hub_instance(),
        )
        self._store.rights.change_request(request.id, decide, audit=record)
        return self._status_of(request.id, 0)

    def accept(self, sub: Submission) -> HomeStatus:
        """Stores a peer's submission as a share request for the foreign department (again: its status)."""
        app, statement = sub.application, sub.statement
        self._check_statement(statement, app)
        try:
            resource = self._store.catalog.get(app.resource_code)
        except NotFound:
            raise FailedPrecondition(f"resource {app.resource_code} is not homed at hub {self.own.code}") from None
        if resource.status is not ResourceStatus.PUBLISHED:
            raise FailedPrecondition(f"resource {app.resource_code!r} is {resource.status.value}, not published")
        if resource.spec.department_code == app.consumer_department_code:
            raise FailedPrecondition("a department does not apply for its own data", app.resource_code)
        now = self._clock()
        self._rights.validate_application(app, resource, now.date(), local_systems=False)
        applicant = PrincipalRef(PrincipalKind.PERSON, f"{sub.applicant.partition('/')[2]}@{statement.origin}"[:63])
        step = self._rights.first_step(self._rights.new_request(app, applicant, now), resource, applicant)
        came = Incoming(statement.origin, sub.origin_request_id, sub.via_peer, sub.department_name)
        record = AuditRecord(
            kind="rights",
            action=f"apply:{resource.spec.share_type.value}:from_hub",
            time=now_text(),
            actor=f"hub/{sub.via_peer}",
            actor_department=app.consumer_department_code,
            outcome="ok",
            reason=f"applied at hub {statement.origin} as {sub.origin_request_id} by {sub.applicant}; "
            f"path {' → '.join(statement.path)}; exchanges {','.join(statement.exchanges)}",
            subject=step.request.id,
            resource=app.resource_code,
            purpose=app.purpose,
            hub=hub_instance(),
        )
        stored = self._store.applications.add_incoming(step, came, audit=record)
        self._rights.granted(step)
        return self._status_of(stored.id, 0)

    def _check_statement(self, statement: Forwarded, app: Application) -> None:
        """The statement speaks for this application, and its origin hub for this department."""
        if (statement.resource, statement.department, statement.purpose) != (
            app.resource_code,
            app.consumer_department_code,
            app.purpose,
        ):
            raise PermissionDenied("the forwarded statement names another application", reason="FORWARD_REQUEST")
        if statement.home != self.own.code:
            raise FailedPrecondition(f"the application is for hub {statement.home}, not this hub {self.own.code}")
        validation.validate_key("application.consumer_department_code", app.consumer_department_code, "department")
        require_within(app.consumer_department_code, statement.origin)

    def known(self, origin_hub: str, origin_request_id: str) -> HomeStatus | None:
        """The status of an application already accepted from that hub (a submission retried)."""
        request_id = self._store.applications.received(origin_hub, origin_request_id)
        return None if request_id is None else self._status_of(request_id, 0)

    def statuses(self, origin_hub: str, after: int, limit: int) -> list[HomeStatus]:
        """The applications ``origin_hub`` submitted here that changed after ``after``, oldest change first."""
        changed = self._store.applications.incoming_after(origin_hub, after, limit)
        return [self._status_of(request_id, sequence) for request_id, sequence in changed]

    def _status_of(self, request_id: str, sequence: int) -> HomeStatus:
        """The request's status as of change ``sequence`` or later (0: its latest change, read here)."""
        # The sequence before the state: a decision committed between the two reads is then sent again with its
        # own sequence; read after, the origin would keep the older state under the newer sequence for good.
        if not sequence:
            sequence = self._store.applications.change_sequence(request_id)
        request = self._store.rights.get_request(request_id)
        grant = self._store.rights.get_grant(request.grant_id) if request.grant_id else None
        change = next((e for e in reversed(grant.history) if e.action in GRANT_CHANGES), None) if grant else None
        link = request.cross_hub or CrossHubLink()
        return HomeStatus(
            origin_request_id=link.consumer_request_id,
            home_request_id=request.id,
            status=request.status,
            reason=request.decision_reason,
            due=request.due,
            sequence=sequence,
            grant_id=request.grant_id,
            fields=request.approved_fields,
            masks=request.masks,
            end=request.approved_end,
            daily_quota=grant.daily_quota if grant else 0,
            grant_status=grant.status if grant else None,
            grant_change=change.action if change else "",
            grant_reason=change.reason if change else "",
            grant_changed_at=change.at if change else None,
        )


def require_within(department: str, origin_hub: str) -> None:
    """A hub speaks only for departments within its own division."""
    if not within(department_division(department), origin_hub):
        raise PermissionDenied(
            f"department {department} is not within the division of hub {origin_hub}, which may not apply for it",
            reason="FOREIGN_DEPARTMENT",
        )


STATUSES = {s.value: s for s in ShareRequestStatus}
GRANT_STATUSES = {s.value: s for s in GrantStatus}
# The changes of a grant at home that its consumer's hub copies (RightsService.change_grant's verbs).
GRANT_CHANGES = ("suspended", "resumed", "revoked")
