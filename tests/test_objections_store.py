"""The objection store on SQLite and PostgreSQL: kept as given, changed once under its lock, listed by filter."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from exchange.errors import FailedPrecondition, NotFound
from exchange.models import Tally
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.objections import UNANSWERED, AnswerKind, Objection, ObjectionFilter, ObjectionState
from tests.harness import TEST_RECORD, move_objection_due

RAISED = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)


def _objection(n: int, owner: str = "police", raiser: str = "registry") -> Objection:
    return Objection(
        id=f"OB-20261201-0000000{n}",
        resource_code="10101/350200000001",
        owner_department=owner,
        exchange_id="",
        fields=("name", "amount"),
        reason="金额有误",
        received_sha256="a" * 64,
        raised_by="system/bdc-djxt",
        raiser_department=raiser,
        raised_at=RAISED,
        due=dt.date(2026, 12, 8),
    )


def test_an_objection_is_kept_as_given_and_answered_once(store: Store) -> None:
    first = store.objections.add(_objection(1), audit=TEST_RECORD)
    assert store.objections.get(first.id) == first
    at = RAISED + dt.timedelta(days=1)

    def answer(o: Objection) -> Objection:
        if o.state is not ObjectionState.OPEN:
            raise FailedPrecondition("answered already", o.id)
        return replace(o, state=ObjectionState.ANSWERED, answer_kind=AnswerKind.CORRECTED, effective_at=at)

    answered = store.objections.change(first.id, answer, audit=TEST_RECORD)
    assert (answered.state, answered.answer_kind, answered.effective_at) == (
        ObjectionState.ANSWERED,
        AnswerKind.CORRECTED,
        at,
    )
    with pytest.raises(FailedPrecondition):
        store.objections.change(first.id, answer, audit=TEST_RECORD)
    assert store.objections.get(first.id) == answered
    with pytest.raises(NotFound):
        store.objections.get("OB-20000101-00000000")


def test_lists_filter_by_owner_raiser_state_and_overdue(store: Store) -> None:
    for n, owner in ((1, "police"), (2, "police"), (3, "housing")):
        store.objections.add(_objection(n, owner), audit=TEST_RECORD)
    move_objection_due(store, _objection(2).id, dt.date(2026, 11, 1))
    page = page_request(2, "", {})
    police = store.objections.list(page, ObjectionFilter(owner_department="police"))
    assert [o.id for o in police.items] == [_objection(1).id, _objection(2).id] and not police.next_page_token
    overdue = ObjectionFilter(overdue_on=dt.date(2026, 12, 1))
    assert [o.id for o in store.objections.list(page, overdue).items] == [_objection(2).id]
    assert store.objections.count(overdue) == 1
    assert store.objections.count(ObjectionFilter(states=(ObjectionState.ESCALATED,))) == 0
    every = store.objections.list(page_request(2, "", {}), ObjectionFilter(raiser_department="registry"))
    assert len(every.items) == 2 and every.next_page_token


def test_tallies_count_unanswered_due_soon_and_overdue(store: Store) -> None:
    """Per filter and per owner: answered ones count in the total only, deadlines only for unanswered ones."""
    today, soon = dt.date(2026, 12, 7), dt.date(2026, 12, 9)
    for n, owner, due in (
        (1, "police", dt.date(2026, 12, 8)),  # due soon
        (2, "police", dt.date(2026, 12, 1)),  # overdue
        (3, "police", dt.date(2026, 12, 10)),  # after soon
        (4, "housing", dt.date(2026, 12, 7)),  # due today: soon, not overdue
        (5, "police", dt.date(2026, 12, 1)),  # answered: neither
    ):
        store.objections.add(replace(_objection(n, owner), due=due), audit=TEST_RECORD)
    store.objections.change(_objection(5).id, lambda o: replace(o, state=ObjectionState.ANSWERED), audit=TEST_RECORD)
    police = store.objections.tally(ObjectionFilter(owner_department="police"), today, soon)
    assert police == Tally(4, due_soon=1, overdue=1)
    assert store.objections.tally(ObjectionFilter(states=UNANSWERED), today, soon) == Tally(4, 2, 1)
    assert store.objections.tally(ObjectionFilter(owner_department="tax"), today, soon) == Tally()
    assert store.objections.unanswered_by_owner(today, soon) == {"police": Tally(3, 1, 1), "housing": Tally(1, 1, 0)}
