"""Share requests across hubs, as the store keeps them (docs/federation.md, "Applying across hubs").

At the consumer's hub, a request for a resource homed elsewhere is an *outgoing application*: the request as
its applicant sees it, with the home hub's word copied in as it is read back. At the home hub, a request from
another hub's department is an ordinary share request (decided and granted as any other) with a link naming
that hub and its request id; the department is entered here as a foreign department, so that the request and
the grant can name it. The ids of forwarded statements accepted are kept until they expire (replays refused).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.errors import NotFound
from exchange.models import (
    AdministrativeLevel,
    Application,
    CrossHubLink,
    GrantStatus,
    MaskKind,
    Page,
    PrincipalKind,
    PrincipalRef,
    ShareEvent,
    ShareRequest,
    ShareRequestStatus,
)
from exchange.paging import PageRequest
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.recorded import RecordedWrites
from exchange.store.rights import RequestStep, RightsStore
from exchange.store.schema import (
    DepartmentRow,
    ForeignDepartmentRow,
    IncomingApplicationRow,
    OutgoingApplicationRow,
    ShareEventRow,
    ShareRequestRow,
)

WAITING = "waiting"
SUBMITTED = "submitted"
REFUSED = "refused"  # a dispute the home, or a hub on the way, would not take
LIST_LIMIT = 500


@dataclass(frozen=True)
class OutgoingFilter:
    """Which of this hub's applications homed elsewhere a list shows: of one consuming department, for one
    resource, in some statuses; ``disputable`` keeps the refusals its department may still dispute (refused
    at home, known there, not disputed yet)."""

    consumer_department: str | None = None
    resource_code: str | None = None
    statuses: tuple[ShareRequestStatus, ...] = ()
    disputable: bool = False


@dataclass(frozen=True)
class HomeStatus:
    """An application's state as its home hub tells it; ``sequence`` is the home's change sequence.

    Once granted, ``grant_status`` is the grant's state at home, and ``grant_change`` its last change there
    ("suspended", "resumed" or "revoked"; "" while none) with that change's reason and time.
    """

    origin_request_id: str
    home_request_id: str
    status: ShareRequestStatus
    reason: str
    due: dt.date
    sequence: int
    grant_id: str = ""
    fields: tuple[str, ...] = ()
    masks: tuple[tuple[str, MaskKind], ...] = ()
    end: dt.date | None = None
    daily_quota: int = 0
    grant_status: GrantStatus | None = None
    grant_change: str = ""
    grant_reason: str = ""
    grant_changed_at: dt.datetime | None = None


@dataclass(frozen=True)
class OutgoingDispute:
    """A dispute of a refusal at home, kept at the consumer's hub until submitted there: the request (this
    hub's id and the home's), where it goes and through which peer, the department, why and who disputes."""

    request_id: str
    home_hub: str
    home_request_id: str
    via_peer: str
    resource_code: str
    consumer_department_code: str
    purpose: str
    reason: str
    disputer: str


@dataclass(frozen=True)
class Incoming:
    """Where a request from another hub came from: the origin hub, its request id, the adjacent peer."""

    origin_hub: str
    origin_request_id: str
    via_peer: str
    department_name: str


def _application_json(a: Application) -> dict[str, Any]:
    return {
        "system_codes": list(a.system_codes),
        "purpose": a.purpose,
        "legal_basis": a.legal_basis,
        "fields": list(a.fields),
        "start": a.start.isoformat(),
        "end": a.end.isoformat(),
        "expected_daily_calls": a.expected_daily_calls,
    }


def _outgoing_of(row: OutgoingApplicationRow) -> ShareRequest:
    a: dict[str, Any] = row.application
    application = Application(
        resource_code=row.resource_code,
        consumer_department_code=row.consumer_department_code,
        system_codes=tuple(a["system_codes"]),
        purpose=a["purpose"],
        legal_basis=a["legal_basis"],
        fields=tuple(a["fields"]),
        start=dt.date.fromisoformat(a["start"]),
        end=dt.date.fromisoformat(a["end"]),
        expected_daily_calls=int(a["expected_daily_calls"]),
    )
    kind, _, code = row.applicant.partition("/")
    history = tuple(
        ShareEvent(e["action"], _ref(e["actor"]), dt.datetime.fromisoformat(e["at"]).astimezone(dt.UTC), e["reason"])
        for e in row.history
    )
    link = CrossHubLink(
        home_hub=row.home_hub_code,
        home_request_id=row.home_request_id,
        submission=row.submission,
        problem=row.problem,
        daily_quota=row.daily_quota,
        grant_status=GrantStatus(row.grant_status) if row.grant_status else None,
        grant_reason=row.grant_reason,
        grant_changed_at=row.grant_changed_at,
        dispute=row.dispute,
        dispute_problem=row.dispute_problem,
    )
    return ShareRequest(
        id=row.id,
        application=application,
        status=ShareRequestStatus(row.status),
        applicant=PrincipalRef(PrincipalKind(kind), code),
        created_at=row.created_at,
        due=row.due_date,
        approved_fields=tuple(row.approved_fields),
        approved_end=row.approved_end,
        masks=tuple((f, MaskKind(k)) for f, k in row.masks),
        decision_reason=row.decision_reason,
        grant_id=row.grant_id,
        history=history,
        cross_hub=link,
    )


def _ref(text: str) -> PrincipalRef:
    kind, _, code = text.partition("/")
    return PrincipalRef(PrincipalKind(kind), code)


def _event_json(e: ShareEvent) -> dict[str, str]:
    return {"action": e.action, "actor": str(e.actor), "at": e.at.isoformat(), "reason": e.reason}


def _level_of(division: str) -> AdministrativeLevel:
    if division.endswith("0000"):
        return AdministrativeLevel.PROVINCE
    if division.endswith("00"):
        return AdministrativeLevel.CITY
    return AdministrativeLevel.COUNTY


class ApplicationStore:
    """Reads and writes applications across hubs; every method is one transaction."""

    def __init__(self, db: Database, recorded: RecordedWrites, rights: RightsStore) -> None:
        self._db = db
        self._recorded = recorded
        self._rights = rights

    # At the consumer's hub

    def add_outgoing(self, request: ShareRequest, via_peer: str, *, audit: AuditRecord) -> ShareRequest:
        link = request.cross_hub or CrossHubLink()
        with self._recorded.write(audit) as s:
            row = OutgoingApplicationRow(
                id=request.id,
                resource_code=request.application.resource_code,
                home_hub_code=link.home_hub,
                via_peer=via_peer,
                consumer_department_code=request.application.consumer_department_code,
                application=_application_json(request.application),
                applicant=str(request.applicant),
                created_at=request.created_at,
                status=request.status.value,
                submission=WAITING,
                problem="",
                home_request_id="",
                home_sequence=0,
                due_date=request.due,
                decision_reason="",
                grant_id="",
                approved_fields=[],
                approved_end=None,
                masks=[],
                daily_quota=0,
                history=[_event_json(e) for e in request.history],
            )
            s.add(row)
            s.flush()
            return _outgoing_of(row)

    def get_outgoing(self, request_id: str) -> ShareRequest:
        with self._db.read() as s:
            row = s.get(OutgoingApplicationRow, request_id)
            if row is None:
                raise NotFound("share request", request_id)
            return _outgoing_of(row)

    def outgoing_page(self, page: PageRequest, f: OutgoingFilter) -> Page[ShareRequest]:
        """One page of this hub's applications homed elsewhere, in id order (as local requests are paged, so a
        list merges the two page by page)."""
        with self._db.read() as s:
            stmt = select(OutgoingApplicationRow)
            if f.consumer_department is not None:
                stmt = stmt.where(OutgoingApplicationRow.consumer_department_code == f.consumer_department)
            if f.resource_code:
                stmt = stmt.where(OutgoingApplicationRow.resource_code == f.resource_code)
            if f.statuses:
                stmt = stmt.where(OutgoingApplicationRow.status.in_([x.value for x in f.statuses]))
            if f.disputable:  # refused at home, known there, and not disputed yet (see the dispute's check)
                stmt = stmt.where(
                    OutgoingApplicationRow.status == ShareRequestStatus.REFUSED.value,
                    OutgoingApplicationRow.dispute == "",
                    OutgoingApplicationRow.home_request_id != "",
                )
            return fetch_page(s, stmt, OutgoingApplicationRow.id, page, convert=_outgoing_of)

    def waiting(self) -> list[tuple[ShareRequest, str]]:
        """Applications not yet accepted by their home, with the peer to submit each through."""
        with self._db.read() as s:
            stmt = select(OutgoingApplicationRow).where(OutgoingApplicationRow.submission == WAITING)
            return [(_outgoing_of(r), r.via_peer) for r in s.scalars(stmt.order_by(OutgoingApplicationRow.id))]

    def homes(self) -> list[tuple[str, str, int]]:
        """Each home hub with submitted applications: (home, peer they went through, last change sequence read)."""
        with self._db.read() as s:
            stmt = (
                select(
                    OutgoingApplicationRow.home_hub_code,
                    func.min(OutgoingApplicationRow.via_peer),
                    func.max(OutgoingApplicationRow.home_sequence),
                )
                .where(OutgoingApplicationRow.submission == SUBMITTED)
                .group_by(OutgoingApplicationRow.home_hub_code)
            )
            return [(str(h), str(p), int(n or 0)) for h, p, n in s.execute(stmt).all()]

    def submission_failed(self, request_id: str, problem: str) -> None:
        """Notes why an application is still waiting (shown to its applicant); the next sync retries."""
        with self._db.write() as s:
            row = s.get(OutgoingApplicationRow, request_id)
            if row is not None:
                row.problem = problem[:2000]

    def record_status(
        self, request_id: str, home: HomeStatus, events: tuple[ShareEvent, ...], *, audit: AuditRecord
    ) -> bool:
        """Copies the home's word into the application, if newer than the one held; False if it was not.

        ``events`` are the changes it makes to what the applicant sees, added to the history with ``audit``;
        none (the same state read again: its first word came with the submission) moves the cursor only.
        """
        with self._db.write() if not events else self._recorded.write(audit) as s:
            row = s.scalar(
                select(OutgoingApplicationRow)
                .where(OutgoingApplicationRow.id == request_id)
                .with_for_update(of=OutgoingApplicationRow)
            )
            if row is None or (row.submission == SUBMITTED and home.sequence <= row.home_sequence):
                return False
            _copy_status(row, home)
            if events:
                row.history = [*row.history, *(_event_json(e) for e in events)]
            return True

    def dispute_outgoing(
        self, request_id: str, check: Callable[[ShareRequest], None], event: ShareEvent, *, audit: AuditRecord
    ) -> ShareRequest:
        """Keeps a dispute of the home's refusal as waiting to be submitted, if ``check`` (given the request as
        it stands, under a lock) does not refuse it; ``event`` (the disputer, time and reason) goes into the
        history."""
        with self._recorded.write(audit) as s:
            row = s.scalar(
                select(OutgoingApplicationRow)
                .where(OutgoingApplicationRow.id == request_id)
                .with_for_update(of=OutgoingApplicationRow)
            )
            if row is None:
                raise NotFound("share request", request_id)
            check(_outgoing_of(row))
            row.dispute = WAITING
            row.dispute_reason = event.reason
            row.disputer = str(event.actor)
            row.disputed_at = event.at
            row.dispute_problem = ""
            row.history = [*row.history, _event_json(event)]
            s.flush()
            return _outgoing_of(row)

    def disputes_waiting(self) -> list[OutgoingDispute]:
        """Disputes not yet taken by their home, oldest request first."""
        with self._db.read() as s:
            stmt = select(OutgoingApplicationRow).where(OutgoingApplicationRow.dispute == WAITING)
            return [
                OutgoingDispute(
                    request_id=r.id,
                    home_hub=r.home_hub_code,
                    home_request_id=r.home_request_id,
                    via_peer=r.via_peer,
                    resource_code=r.resource_code,
                    consumer_department_code=r.consumer_department_code,
                    purpose=str(r.application["purpose"]),
                    reason=r.dispute_reason,
                    disputer=r.disputer,
                )
                for r in s.scalars(stmt.order_by(OutgoingApplicationRow.id))
            ]

    def dispute_submitted(self, request_id: str) -> None:
        """The home took the dispute; its status (disputed, then decided) is read back as any other."""
        with self._db.write() as s:
            row = s.get(OutgoingApplicationRow, request_id)
            if row is not None and row.dispute == WAITING:
                row.dispute = SUBMITTED
                row.dispute_problem = ""

    def dispute_failed(self, request_id: str, problem: str) -> None:
        """Notes why a dispute is still waiting (shown to its department); the next sync retries."""
        with self._db.write() as s:
            row = s.get(OutgoingApplicationRow, request_id)
            if row is not None and row.dispute == WAITING:
                row.dispute_problem = problem[:2000]

    def dispute_refused(self, request_id: str, event: ShareEvent, *, audit: AuditRecord) -> bool:
        """A dispute the home, or a hub on the way, will not take: refused for good, with ``event`` (its
        reason) in the history; False if it was not waiting."""
        with self._recorded.write(audit) as s:
            row = s.scalar(
                select(OutgoingApplicationRow)
                .where(OutgoingApplicationRow.id == request_id)
                .with_for_update(of=OutgoingApplicationRow)
            )
            if row is None or row.dispute != WAITING:
                return False
            row.dispute = REFUSED
            row.dispute_problem = event.reason[:2000]
            row.history = [*row.history, _event_json(event)]
            return True

    # At the home hub

    def add_incoming(self, step: RequestStep, came: Incoming, *, audit: AuditRecord) -> ShareRequest:
        """A request from another hub's department, with its link; the department entered here if new."""
        with self._recorded.write(audit) as s:
            _foreign_department(s, step.request.application.consumer_department_code, came)
            stored = self._rights.insert_request(s, step)
            s.add(
                IncomingApplicationRow(
                    request_id=stored.id,
                    origin_hub_code=came.origin_hub,
                    origin_request_id=came.origin_request_id,
                    via_peer=came.via_peer,
                )
            )
            s.flush()
            return replace(
                stored, cross_hub=CrossHubLink(consumer_hub=came.origin_hub, consumer_request_id=came.origin_request_id)
            )

    def incoming_after(self, origin_hub: str, after: int, limit: int) -> list[tuple[str, int]]:
        """Requests from ``origin_hub`` changed after ``after``: (request id, change sequence), oldest first.

        The change sequence of a request is the number of its newest event or its grant's, so every decision,
        and every suspension, resumption or revocation of the grant, moves it on.
        """
        own = (
            select(IncomingApplicationRow.request_id, ShareEventRow.id.label("event"))
            .join(ShareEventRow, ShareEventRow.request_id == IncomingApplicationRow.request_id)
            .where(IncomingApplicationRow.origin_hub_code == origin_hub)
        )
        of_grant = (
            select(IncomingApplicationRow.request_id, ShareEventRow.id.label("event"))
            .join(ShareRequestRow, ShareRequestRow.id == IncomingApplicationRow.request_id)
            .join(ShareEventRow, ShareEventRow.grant_id == ShareRequestRow.grant_id)
            .where(IncomingApplicationRow.origin_hub_code == origin_hub)
        )
        events = own.union_all(of_grant).subquery()
        last = func.max(events.c.event)
        with self._db.read() as s:
            stmt = (
                select(events.c.request_id, last)
                .group_by(events.c.request_id)
                .having(last > after)
                .order_by(last)
                .limit(limit)
            )
            return [(str(i), int(n)) for i, n in s.execute(stmt).all()]

    def change_sequence(self, request_id: str) -> int:
        """A request's change sequence: the number of its newest event or its grant's."""
        grant = select(ShareRequestRow.grant_id).where(ShareRequestRow.id == request_id).scalar_subquery()
        newest = select(func.max(ShareEventRow.id)).where(
            or_(ShareEventRow.request_id == request_id, ShareEventRow.grant_id == grant)
        )
        with self._db.read() as s:
            return int(s.scalar(newest) or 0)

    def received(self, origin_hub: str, origin_request_id: str) -> str | None:
        """This hub's request id for an application already received from ``origin_hub``, if any."""
        with self._db.read() as s:
            return s.scalar(
                select(IncomingApplicationRow.request_id).where(
                    IncomingApplicationRow.origin_hub_code == origin_hub,
                    IncomingApplicationRow.origin_request_id == origin_request_id,
                )
            )


def _copy_status(row: OutgoingApplicationRow, home: HomeStatus) -> None:
    row.submission = SUBMITTED
    row.problem = ""
    row.home_request_id = home.home_request_id
    row.home_sequence = home.sequence
    row.status = home.status.value
    row.decision_reason = home.reason
    row.due_date = home.due
    row.grant_id = home.grant_id
    row.approved_fields = list(home.fields)
    row.approved_end = home.end
    row.masks = [[f, k.value] for f, k in home.masks]
    row.daily_quota = home.daily_quota
    row.grant_status = home.grant_status.value if home.grant_status else ""
    row.grant_reason = home.grant_reason
    row.grant_changed_at = home.grant_changed_at


def _foreign_department(s: Session, code: str, came: Incoming) -> None:
    found = s.scalar(select(DepartmentRow).where(DepartmentRow.code == code))
    if found is not None:
        return
    name = came.department_name or code
    if s.scalar(select(DepartmentRow.id).where(DepartmentRow.name == name)) is not None:
        name = f"{name} ({came.origin_hub})"
    division = code[2:8]
    row = DepartmentRow(
        code=code,
        name=name[:200],
        division_code=division,
        level=_level_of(division).value,
        parent_id=None,
        created_at=dt.datetime.now(dt.UTC),
    )
    s.add(row)
    s.flush()
    s.add(ForeignDepartmentRow(department_id=row.id, hub_code=came.origin_hub))
    s.flush()
