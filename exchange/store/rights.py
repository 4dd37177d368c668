"""Rights store: share requests, grants, and the append-only events of both.

Every change runs under a row lock on the request or grant it changes, with
a function that checks rights and state on the current row and says what
the change is; a refusal writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from audit.records import AuditRecord
from exchange.errors import NotFound
from exchange.models import (
    Application,
    CrossHubLink,
    Grant,
    GrantStatus,
    MaskKind,
    Page,
    PrincipalKind,
    PrincipalRef,
    ShareEvent,
    ShareRequest,
    ShareRequestStatus,
    Tally,
)
from exchange.paging import PageRequest
from exchange.store.changes import announce, grant_changed
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.recorded import RecordedWrites
from exchange.store.registry import department_row
from exchange.store.schema import (
    DepartmentRow,
    GrantRow,
    IncomingApplicationRow,
    ResourceRow,
    ShareEventRow,
    ShareRequestRow,
)
from exchange.store.tally import tally_columns

# The 10-working-day rule binds the owner's answer: only requests awaiting it can be overdue.
_AWAITING_OWNER = (ShareRequestStatus.PENDING.value,)


@dataclass(frozen=True)
class RequestFilter:
    consumer_department: str | None = None
    resource_code: str | None = None
    owner_department: str | None = None
    statuses: tuple[ShareRequestStatus, ...] = ()
    overdue_on: dt.date | None = None
    # Restrict to requests this department applied for or owns the resource of (None: no restriction).
    visible_to: str | None = None


@dataclass(frozen=True)
class GrantFilter:
    consumer_department: str | None = None
    resource_code: str | None = None
    status: GrantStatus | None = None
    visible_to: str | None = None


@dataclass(frozen=True)
class RequestStep:
    """What a decision makes of a request: its new state, the event, and a grant to issue if any."""

    request: ShareRequest
    event: ShareEvent
    grant: Grant | None = None
    extra_events: tuple[ShareEvent, ...] = field(default=())


def _masks(raw: list[list[str]]) -> tuple[tuple[str, MaskKind], ...]:
    return tuple((f, MaskKind(k)) for f, k in raw)


def _events(s: Session, column: InstrumentedAttribute[str | None], key: str) -> tuple[ShareEvent, ...]:
    rows = s.scalars(select(ShareEventRow).where(column == key).order_by(ShareEventRow.id))
    return tuple(
        ShareEvent(r.action, PrincipalRef(PrincipalKind(r.actor_kind), r.actor_code), r.at, r.reason) for r in rows
    )


def _histories(s: Session, request_ids: list[str]) -> dict[str, tuple[ShareEvent, ...]]:
    """The histories of several requests in one query (a page of them would otherwise take one each)."""
    found: dict[str, list[ShareEvent]] = {i: [] for i in request_ids}
    rows = s.scalars(select(ShareEventRow).where(ShareEventRow.request_id.in_(request_ids)).order_by(ShareEventRow.id))
    for r in rows:
        event = ShareEvent(r.action, PrincipalRef(PrincipalKind(r.actor_kind), r.actor_code), r.at, r.reason)
        found[str(r.request_id)].append(event)
    return {i: tuple(events) for i, events in found.items()}


def _request_of(s: Session, row: ShareRequestRow, with_history: bool = True) -> ShareRequest:
    application = Application(
        resource_code=row.resource.code,
        consumer_department_code=row.consumer.code,
        system_codes=tuple(row.system_codes),
        purpose=row.purpose,
        legal_basis=row.legal_basis,
        fields=tuple(row.fields),
        start=row.start_date,
        end=row.end_date,
        expected_daily_calls=row.expected_daily_calls,
    )
    return ShareRequest(
        id=row.id,
        application=application,
        status=ShareRequestStatus(row.status),
        applicant=PrincipalRef(PrincipalKind(row.applicant_kind), row.applicant_code),
        created_at=row.created_at,
        due=row.due_date,
        approved_fields=tuple(row.approved_fields),
        approved_end=row.approved_end,
        masks=_masks(row.masks),
        decision_reason=row.decision_reason,
        grant_id=row.grant_id or "",
        history=_events(s, ShareEventRow.request_id, row.id) if with_history else (),
        verify_masked=tuple(row.verify_masked or ()),
        cross_hub=_incoming_link(s, row.id),
    )


def _incoming_link(s: Session, request_id: str) -> CrossHubLink | None:
    """For a request from another hub's department: that hub and its request id."""
    link = s.get(IncomingApplicationRow, request_id)
    if link is None:
        return None
    return CrossHubLink(consumer_hub=link.origin_hub_code, consumer_request_id=link.origin_request_id)


def _grant_of(s: Session, row: GrantRow, with_history: bool = True) -> Grant:
    return Grant(
        id=row.id,
        request_id=row.request_id,
        resource_code=row.resource.code,
        consumer_department_code=row.consumer.code,
        system_codes=tuple(row.system_codes),
        fields=tuple(row.fields),
        purpose=row.purpose,
        legal_basis=row.legal_basis,
        start=row.start_date,
        end=row.end_date,
        daily_quota=row.daily_quota,
        rate_per_second=row.rate_per_second,
        masks=_masks(row.masks),
        status=GrantStatus(row.status),
        issued_at=row.issued_at,
        history=_events(s, ShareEventRow.grant_id, row.id) if with_history else (),
        verify_masked=tuple(row.verify_masked or ()),
        consumer_hub=_consumer_hub(s, row.request_id) if with_history else "",
    )


def _consumer_hub(s: Session, request_id: str) -> str:
    link = s.get(IncomingApplicationRow, request_id)
    return link.origin_hub_code if link is not None else ""


def _resource_id(s: Session, code: str) -> int:
    found = s.scalar(select(ResourceRow.id).where(ResourceRow.code == code))
    if found is None:
        raise NotFound("resource", code)
    return found


def _write_request(row: ShareRequestRow, r: ShareRequest) -> None:
    row.status = r.status.value
    row.approved_fields = list(r.approved_fields)
    row.approved_end = r.approved_end
    row.masks = [[f, k.value] for f, k in r.masks]
    row.decision_reason = r.decision_reason
    row.grant_id = r.grant_id or None
    row.verify_masked = list(r.verify_masked)


def _add_grant(s: Session, g: Grant, resource_id: int, consumer_id: int) -> None:
    s.add(
        GrantRow(
            id=g.id,
            request_id=g.request_id,
            resource_id=resource_id,
            consumer_department_id=consumer_id,
            system_codes=list(g.system_codes),
            fields=list(g.fields),
            purpose=g.purpose,
            legal_basis=g.legal_basis,
            start_date=g.start,
            end_date=g.end,
            daily_quota=g.daily_quota,
            rate_per_second=g.rate_per_second,
            masks=[[f, k.value] for f, k in g.masks],
            status=g.status.value,
            issued_at=g.issued_at,
            verify_masked=list(g.verify_masked),
        )
    )
    s.flush()


def _add_event(s: Session, e: ShareEvent, request_id: str | None = None, grant_id: str | None = None) -> None:
    s.add(
        ShareEventRow(
            request_id=request_id,
            grant_id=grant_id,
            action=e.action,
            actor_kind=e.actor.kind.value,
            actor_code=e.actor.code,
            at=e.at,
            reason=e.reason,
        )
    )


class RightsStore:
    """Reads and writes share requests and grants; every method is one transaction."""

    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def create_request(self, step: RequestStep, *, audit: AuditRecord) -> ShareRequest:
        """Stores a new request with its first event (and, for unconditional resources, its grant)."""
        with self._recorded.write(audit) as s:
            return self.insert_request(s, step)

    def insert_request(self, s: Session, step: RequestStep) -> ShareRequest:
        """Adds a new request in the caller's transaction ``s`` (create_request, or one that stores more)."""
        r = step.request
        resource_id = _resource_id(s, r.application.resource_code)
        consumer_id = department_row(s, r.application.consumer_department_code).id
        row = ShareRequestRow(
            id=r.id,
            resource_id=resource_id,
            consumer_department_id=consumer_id,
            system_codes=list(r.application.system_codes),
            purpose=r.application.purpose,
            legal_basis=r.application.legal_basis,
            fields=list(r.application.fields),
            start_date=r.application.start,
            end_date=r.application.end,
            expected_daily_calls=r.application.expected_daily_calls,
            applicant_kind=r.applicant.kind.value,
            applicant_code=r.applicant.code,
            created_at=r.created_at,
            due_date=r.due,
        )
        _write_request(row, r)
        s.add(row)
        s.flush()
        self._record(s, step, resource_id, consumer_id)
        s.flush()
        return _request_of(s, row)

    def change_request(
        self, request_id: str, decide: Callable[[ShareRequest], RequestStep], *, audit: AuditRecord
    ) -> ShareRequest:
        with self._recorded.write(audit) as s:
            row = s.scalar(
                select(ShareRequestRow).where(ShareRequestRow.id == request_id).with_for_update(of=ShareRequestRow)
            )
            if row is None:
                raise NotFound("share request", request_id)
            step = decide(_request_of(s, row))
            _write_request(row, step.request)
            self._record(s, step, row.resource_id, row.consumer_department_id)
            s.flush()
            return _request_of(s, row)

    @staticmethod
    def _record(s: Session, step: RequestStep, resource_id: int, consumer_id: int) -> None:
        if step.grant is not None:
            _add_grant(s, step.grant, resource_id, consumer_id)
            announce(s, grant_changed(step.grant.id))
        for event in (step.event, *step.extra_events):
            _add_event(s, event, request_id=step.request.id)
        if step.grant is not None:
            granting = (step.event, *step.extra_events)[-1]  # the step that granted: its who and why
            _add_event(s, ShareEvent("issued", granting.actor, granting.at, granting.reason), grant_id=step.grant.id)

    def get_request(self, request_id: str) -> ShareRequest:
        with self._db.read() as s:
            row = s.get(ShareRequestRow, request_id)
            if row is None:
                raise NotFound("share request", request_id)
            return _request_of(s, row)

    def _request_query(self, s: Session, f: RequestFilter) -> Select[ShareRequestRow]:
        stmt = select(ShareRequestRow).join(ShareRequestRow.resource)
        if f.consumer_department:
            stmt = stmt.where(ShareRequestRow.consumer_department_id == department_row(s, f.consumer_department).id)
        if f.owner_department:
            stmt = stmt.where(ResourceRow.department_id == department_row(s, f.owner_department).id)
        if f.resource_code:
            stmt = stmt.where(ResourceRow.code == f.resource_code)
        if f.statuses:
            stmt = stmt.where(ShareRequestRow.status.in_([x.value for x in f.statuses]))
        if f.overdue_on is not None:
            stmt = stmt.where(ShareRequestRow.status.in_(_AWAITING_OWNER), ShareRequestRow.due_date < f.overdue_on)
        if f.visible_to:
            department_id = department_row(s, f.visible_to).id
            stmt = stmt.where(
                or_(ShareRequestRow.consumer_department_id == department_id, ResourceRow.department_id == department_id)
            )
        return stmt

    def list_requests(self, page: PageRequest, f: RequestFilter, today: dt.date) -> tuple[Page[ShareRequest], int]:
        """One page of requests, and how many of all that match are overdue on ``today``."""
        with self._db.read() as s:
            stmt = self._request_query(s, f)
            listed = fetch_page(s, stmt, ShareRequestRow.id, page, convert=lambda row: _request_of(s, row, False))
            histories = _histories(s, [r.id for r in listed.items])
            listed = replace(listed, items=[replace(r, history=histories[r.id]) for r in listed.items])
            overdue_stmt = self._request_query(s, RequestFilter(**{**f.__dict__, "overdue_on": today}))
            overdue = s.scalar(select(func.count()).select_from(overdue_stmt.subquery())) or 0
            return listed, overdue

    def tally_requests(self, f: RequestFilter, today: dt.date, soon: dt.date) -> dict[ShareRequestStatus, Tally]:
        """The requests ``f`` finds, by status, in one query: how many, and of those awaiting their owner how
        many fall due from ``today`` to ``soon`` and how many are overdue on ``today``."""
        with self._db.read() as s:
            stmt = self._request_query(s, f).with_only_columns(ShareRequestRow.status, *_tally(today, soon))
            rows = s.execute(stmt.group_by(ShareRequestRow.status)).all()
            return {ShareRequestStatus(status): Tally(int(n), int(due), int(late)) for status, n, due, late in rows}

    def awaiting_owners(self, today: dt.date, soon: dt.date) -> dict[str, Tally]:
        """Requests awaiting their owner, by the owning department's code: how many, due soon, overdue."""
        with self._db.read() as s:
            stmt = (
                select(DepartmentRow.code, *_tally(today, soon))
                .select_from(ShareRequestRow)
                .join(ResourceRow, ShareRequestRow.resource_id == ResourceRow.id)
                .join(DepartmentRow, ResourceRow.department_id == DepartmentRow.id)
                .where(ShareRequestRow.status.in_(_AWAITING_OWNER))
                .group_by(DepartmentRow.code)
            )
            return {str(code): Tally(int(n), int(due), int(late)) for code, n, due, late in s.execute(stmt).all()}

    def change_grant(
        self, grant_id: str, decide: Callable[[Grant], tuple[GrantStatus, ShareEvent]], *, audit: AuditRecord
    ) -> Grant:
        with self._recorded.write(audit) as s:
            row = s.scalar(select(GrantRow).where(GrantRow.id == grant_id).with_for_update(of=GrantRow))
            if row is None:
                raise NotFound("grant", grant_id)
            status, event = decide(_grant_of(s, row))
            row.status = status.value
            _add_event(s, event, grant_id=grant_id)
            announce(s, grant_changed(grant_id))
            s.flush()
            return _grant_of(s, row)

    def get_grant(self, grant_id: str) -> Grant:
        with self._db.read() as s:
            row = s.get(GrantRow, grant_id)
            if row is None:
                raise NotFound("grant", grant_id)
            return _grant_of(s, row)

    def list_grants(self, page: PageRequest, f: GrantFilter) -> Page[Grant]:
        with self._db.read() as s:
            stmt = select(GrantRow).join(GrantRow.resource)
            if f.consumer_department:
                stmt = stmt.where(GrantRow.consumer_department_id == department_row(s, f.consumer_department).id)
            if f.resource_code:
                stmt = stmt.where(ResourceRow.code == f.resource_code)
            if f.status is not None:
                stmt = stmt.where(GrantRow.status == f.status.value)
            if f.visible_to:
                department_id = department_row(s, f.visible_to).id
                stmt = stmt.where(
                    or_(GrantRow.consumer_department_id == department_id, ResourceRow.department_id == department_id)
                )
            return fetch_page(s, stmt, GrantRow.id, page, convert=lambda row: _grant_of(s, row))

    def counts(self, today: dt.date) -> tuple[dict[str, int], int, int]:
        """Grants by status, share requests awaiting their owner, and how many of those are overdue on ``today``."""
        with self._db.read() as s:
            rows = s.execute(select(GrantRow.status, func.count()).group_by(GrantRow.status)).all()
            grants = {str(status): int(count) for status, count in rows}
            awaiting = select(func.count()).where(ShareRequestRow.status.in_(_AWAITING_OWNER))
            pending = s.scalar(awaiting) or 0
            overdue = s.scalar(awaiting.where(ShareRequestRow.due_date < today)) or 0
            return grants, pending, overdue

    def live_grants(self) -> list[Grant]:
        """Every grant not revoked, without history: what the decision index is built from."""
        with self._db.read() as s:
            rows = s.scalars(select(GrantRow).where(GrantRow.status != GrantStatus.REVOKED.value))
            return [_grant_of(s, r, with_history=False) for r in rows]


def _tally(today: dt.date, soon: dt.date) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    return tally_columns(ShareRequestRow.status.in_(_AWAITING_OWNER), ShareRequestRow.due_date, today, soon)
