"""Objections to shared data: kept, changed under a row lock, listed; and the exchange records they cite.

A change goes through ``change``: the row is locked, the caller's ``decide`` sees the objection as stored
and returns it changed (or refuses), so two stewards answering at once cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select

from audit.records import AuditRecord
from exchange.errors import NotFound
from exchange.models import Page, Tally
from exchange.paging import PageRequest
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import ObjectionRow
from exchange.store.tally import tally_columns

S = TypeVar("S", bound=Select[Any])


class ObjectionState(StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    ESCALATED = "escalated"


class AnswerKind(StrEnum):
    CORRECTED = "corrected"
    NO_CORRECTION = "no_correction"
    REJECTED = "rejected"


# Awaiting the owner's answer: an escalated objection still is.
UNANSWERED = (ObjectionState.OPEN, ObjectionState.ESCALATED)


@dataclass(frozen=True)
class Objection:
    """A consumer's objection and, once given, the owner's answer and the share manager's escalation."""

    id: str
    resource_code: str
    owner_department: str
    exchange_id: str
    fields: tuple[str, ...]
    reason: str
    received_sha256: str
    raised_by: str
    raiser_department: str
    raised_at: dt.datetime
    due: dt.date
    state: ObjectionState = ObjectionState.OPEN
    answer_kind: AnswerKind | None = None
    answer_text: str = ""
    effective_at: dt.datetime | None = None
    answered_by: str = ""
    answered_at: dt.datetime | None = None
    escalated_by: str = ""
    escalated_at: dt.datetime | None = None
    escalation_reason: str = ""

    def overdue_on(self, today: dt.date) -> bool:
        return self.state in UNANSWERED and self.due < today


@dataclass(frozen=True)
class ObjectionFilter:
    resource_code: str | None = None
    owner_department: str | None = None
    raiser_department: str | None = None
    states: tuple[ObjectionState, ...] = ()
    overdue_on: dt.date | None = None


class ObjectionStore:
    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def add(self, objection: Objection, *, audit: AuditRecord) -> Objection:
        with self._recorded.write(audit) as s:
            row = ObjectionRow(id=objection.id)
            _write(row, objection)
            s.add(row)
            s.flush()
            return _objection_of(row)

    def get(self, objection_id: str) -> Objection:
        with self._db.read() as s:
            row = s.get(ObjectionRow, objection_id)
            if row is None:
                raise NotFound("objection", objection_id)
            return _objection_of(row)

    def change(self, objection_id: str, decide: Callable[[Objection], Objection], *, audit: AuditRecord) -> Objection:
        with self._recorded.write(audit) as s:
            row = s.scalar(select(ObjectionRow).where(ObjectionRow.id == objection_id).with_for_update())
            if row is None:
                raise NotFound("objection", objection_id)
            _write(row, decide(_objection_of(row)))
            s.flush()
            return _objection_of(row)

    def list(self, page: PageRequest, f: ObjectionFilter) -> Page[Objection]:
        with self._db.read() as s:
            return fetch_page(s, _filtered(select(ObjectionRow), f), ObjectionRow.id, page, convert=_objection_of)

    def count(self, f: ObjectionFilter) -> int:
        with self._db.read() as s:
            return int(s.scalar(_filtered(select(func.count()).select_from(ObjectionRow), f)) or 0)

    def tally(self, f: ObjectionFilter, today: dt.date, soon: dt.date) -> Tally:
        """How many objections ``f`` finds, and of the unanswered ones how many fall due from ``today`` to ``soon``
        and how many are overdue on ``today`` (one query)."""
        with self._db.read() as s:
            stmt = select(*_tally(today, soon)).select_from(ObjectionRow)
            row = s.execute(_filtered(stmt, f)).one()
            return Tally(int(row[0]), int(row[1]), int(row[2]))

    def unanswered_by_owner(self, today: dt.date, soon: dt.date) -> dict[str, Tally]:
        """Unanswered objections by the owning department's code: how many, due soon, overdue."""
        with self._db.read() as s:
            stmt = _filtered(select(ObjectionRow.owner_department, *_tally(today, soon)), _UNANSWERED)
            rows = s.execute(stmt.group_by(ObjectionRow.owner_department)).all()
            return {str(code): Tally(int(n), int(due), int(late)) for code, n, due, late in rows}


_UNANSWERED = ObjectionFilter(states=UNANSWERED)


def _filtered(stmt: S, f: ObjectionFilter) -> S:
    for column, value in (
        (ObjectionRow.resource_code, f.resource_code),
        (ObjectionRow.owner_department, f.owner_department),
        (ObjectionRow.raiser_department, f.raiser_department),
    ):
        if value:
            stmt = stmt.where(column == value)
    if f.states:
        stmt = stmt.where(ObjectionRow.state.in_([s.value for s in f.states]))
    if f.overdue_on is not None:
        stmt = stmt.where(
            ObjectionRow.due_date < f.overdue_on,
            or_(*(ObjectionRow.state == s.value for s in UNANSWERED)),
        )
    return stmt


def _write(row: ObjectionRow, o: Objection) -> None:
    row.resource_code = o.resource_code
    row.owner_department = o.owner_department
    row.exchange_id = o.exchange_id
    row.fields = list(o.fields)
    row.reason = o.reason
    row.received_sha256 = o.received_sha256
    row.raised_by = o.raised_by
    row.raiser_department = o.raiser_department
    row.raised_at = o.raised_at
    row.due_date = o.due
    row.state = o.state.value
    row.answer_kind = o.answer_kind.value if o.answer_kind else ""
    row.answer_text = o.answer_text
    row.effective_at = o.effective_at
    row.answered_by = o.answered_by
    row.answered_at = o.answered_at
    row.escalated_by = o.escalated_by
    row.escalated_at = o.escalated_at
    row.escalation_reason = o.escalation_reason


def _objection_of(row: ObjectionRow) -> Objection:
    return Objection(
        id=row.id,
        resource_code=row.resource_code,
        owner_department=row.owner_department,
        exchange_id=row.exchange_id,
        fields=tuple(row.fields),
        reason=row.reason,
        received_sha256=row.received_sha256,
        raised_by=row.raised_by,
        raiser_department=row.raiser_department,
        raised_at=row.raised_at,
        due=row.due_date,
        state=ObjectionState(row.state),
        answer_kind=AnswerKind(row.answer_kind) if row.answer_kind else None,
        answer_text=row.answer_text,
        effective_at=row.effective_at,
        answered_by=row.answered_by,
        answered_at=row.answered_at,
        escalated_by=row.escalated_by,
        escalated_at=row.escalated_at,
        escalation_reason=row.escalation_reason,
    )


def _tally(today: dt.date, soon: dt.date) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    return tally_columns(ObjectionRow.state.in_([s.value for s in UNANSWERED]), ObjectionRow.due_date, today, soon)
