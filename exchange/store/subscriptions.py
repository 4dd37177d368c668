"""Subscriptions and their windows of pending changes: kept, leased, appended to, acknowledged, listed.

Every step that must not be split is one transaction: a poll's changes go into the window with their
consecutive sequence numbers and the source's new position together (so a process killed between fetching
and recording loses nothing and records nothing twice), and only while its poll lease and the position it
read from still stand. Leases are held until an expiry on the hub's clock; a renewed lease moves it on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.errors import FailedPrecondition, NotFound
from exchange.models import Page
from exchange.paging import PageRequest
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.poll_shares import taken_over
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import PendingChangeRow, SubscriptionRow


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Subscription:
    """A subscription as stored, with its window's size and age (``pending``, ``oldest_pending_at``)."""

    id: str
    resource_code: str
    owner_department: str
    consumer_department: str
    consumer_system: str
    grant_id: str
    purpose: str
    filters: dict[str, str]
    fields: tuple[str, ...]
    created_by: str
    created_at: dt.datetime
    source_cursor: str | None = None
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE
    next_sequence: int = 1
    acknowledged_sequence: int = 0
    delivered_sequence: int = 0
    dropped_through: int = 0
    cancelled_at: dt.datetime | None = None
    pending: int = 0
    oldest_pending_at: dt.datetime | None = None


@dataclass(frozen=True)
class NewChange:
    """A change taken from the source, shaped: its id, kind and the record's bytes."""

    change_id: str
    kind: str
    payload: bytes
    subjects: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Poll:
    """One poll of a subscription's source: by which holder of its poll lease, from which position."""

    subscription_id: str
    holder: str
    after: str | None


@dataclass(frozen=True)
class PendingChange:
    sequence: int
    change_id: str
    kind: str
    payload: bytes
    created_at: dt.datetime
    subjects: tuple[str, ...] = ()
    masks: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriptionFilter:
    resource_code: str | None = None
    consumer_department: str | None = None
    owner_department: str | None = None
    # A department that sees the subscriptions it holds or whose resources they follow.
    visible_to: str | None = None
    include_cancelled: bool = False


@dataclass(frozen=True)
class Lag:
    """One active subscription's window, for the metrics."""

    id: str
    resource_code: str
    consumer_department: str
    pending: int
    oldest_pending_at: dt.datetime | None


class SubscriptionStore:
    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    # Administrative changes, each with its audit record
    def add(self, subscription: Subscription, *, audit: AuditRecord) -> Subscription:
        with self._recorded.write(audit) as s:
            s.add(_row_of(subscription))
        return self.get(subscription.id)

    def cancel(self, subscription_id: str, at: dt.datetime, *, audit: AuditRecord) -> Subscription:
        """Cancels an active subscription and forgets its pending changes."""
        with self._recorded.write(audit) as s:
            row = _locked(s, subscription_id)
            if row.status != SubscriptionStatus.ACTIVE.value:
                raise FailedPrecondition(f"subscription {subscription_id} is {row.status} already", subscription_id)
            row.status, row.cancelled_at, row.updated_at = SubscriptionStatus.CANCELLED.value, at, at
            row.reader_holder = row.poll_holder = ""
            s.execute(delete(PendingChangeRow).where(PendingChangeRow.subscription_id == subscription_id))
        return self.get(subscription_id)

    # Reading

    def get(self, subscription_id: str) -> Subscription:
        with self._db.read() as s:
            row = s.get(SubscriptionRow, subscription_id)
            if row is None:
                raise NotFound("subscription", subscription_id)
            return _with_window(s, row)

    def find(self, page: PageRequest, f: SubscriptionFilter) -> Page[Subscription]:
        with self._db.read() as s:
            stmt = select(SubscriptionRow).where(*_conditions(f))
            return fetch_page(s, stmt, SubscriptionRow.id, page, convert=lambda row: _with_window(s, row))

    def pending(self, subscription_id: str, after: int, limit: int) -> list[PendingChange]:
        """At most ``limit`` pending changes after sequence ``after``, in order."""
        with self._db.read() as s:
            rows = s.scalars(
                select(PendingChangeRow)
                .where(PendingChangeRow.subscription_id == subscription_id, PendingChangeRow.sequence > after)
                .order_by(PendingChangeRow.sequence)
                .limit(limit)
            )
            return [
                PendingChange(
                    r.sequence, r.change_id, r.kind, r.payload, r.created_at, tuple(r.subjects), tuple(r.masks)
                )
                for r in rows
            ]

    def lag(self) -> list[Lag]:
        """Every active subscription's pending changes and the time the oldest was taken."""
        with self._db.read() as s:
            windows = dict(_windows(s, None))
            rows = s.scalars(select(SubscriptionRow).where(SubscriptionRow.status == SubscriptionStatus.ACTIVE.value))
            return [Lag(r.id, r.resource_code, r.consumer_department, *windows.get(r.id, (0, None))) for r in rows]

    # Polling

    def claim_polls(self, holder: str, now: dt.datetime, lease: dt.timedelta) -> list[Subscription]:
        """The active subscriptions whose poll lease ``holder`` holds: it takes the free and expired ones, and
        renews its own once half their lease has run (a write per lease, not per poll)."""
        due = _free(SubscriptionRow.poll_holder, SubscriptionRow.poll_expires, holder, now, now + lease / 2)
        active = SubscriptionRow.status == SubscriptionStatus.ACTIVE.value
        with self._db.read() as s:
            ids = list(s.scalars(select(SubscriptionRow.id).where(active, due)))
        for subscription_id in ids:
            with self._db.write() as s:
                taken = update(SubscriptionRow).where(SubscriptionRow.id == subscription_id, active, due)
                s.execute(taken.values(poll_holder=holder, poll_expires=now + lease))
        self._balance(holder, now, lease)
        with self._db.read() as s:
            held = SubscriptionRow.poll_holder == holder
            mine = list(s.scalars(select(SubscriptionRow.id).where(active, held, SubscriptionRow.poll_expires > now)))
        return [self.get(i) for i in mine]

    def _balance(self, holder: str, now: dt.datetime, lease: dt.timedelta) -> None:
        """Takes leases over from processes holding more than their share (``poll_shares``)."""
        live = and_(SubscriptionRow.status == SubscriptionStatus.ACTIVE.value, SubscriptionRow.poll_expires > now)
        with self._db.read() as s:
            active = s.scalar(select(func.count()).where(SubscriptionRow.status == SubscriptionStatus.ACTIVE.value))
            held = s.execute(select(SubscriptionRow.id, SubscriptionRow.poll_holder).where(live)).all()
        for subscription_id, other in taken_over([(str(i), str(h)) for i, h in held], holder, active or 0):
            mine = SubscriptionRow.id == subscription_id, SubscriptionRow.poll_holder == other, live
            with self._db.write() as s:
                s.execute(update(SubscriptionRow).where(*mine).values(poll_holder=holder, poll_expires=now + lease))

    def release_polls(self, holder: str) -> None:
        """Gives up ``holder``'s poll leases (a clean stop): other processes take them over at once."""
        with self._db.write() as s:
            s.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.poll_holder == holder)
                .values(poll_holder="", poll_expires=None)
            )

    def append(self, poll: Poll, changes: Sequence[NewChange], cursor: str, now: dt.datetime) -> int:
        """Puts ``changes`` in the window with the next sequence numbers and moves the position to ``cursor``,
        in one transaction; only while ``holder`` holds the poll lease and the position is still ``after``.

        Returns the last sequence number given, or 0 when nothing was written (the lease or position moved on).
        """
        subscription_id = poll.subscription_id
        with self._db.write() as s:
            row = s.scalar(select(SubscriptionRow).where(SubscriptionRow.id == subscription_id).with_for_update())
            if row is None or row.status != SubscriptionStatus.ACTIVE.value:
                return 0
            if row.poll_holder != poll.holder or row.source_cursor != poll.after:
                return 0
            sequence = row.next_sequence
            for change in changes:
                s.add(PendingChangeRow(
                    subscription_id=subscription_id, sequence=sequence, change_id=change.change_id,
                    kind=change.kind, payload=change.payload, subjects=list(change.subjects),
                    masks=list(change.masks), created_at=now,
                ))  # fmt: skip
                sequence += 1
            row.next_sequence, row.source_cursor, row.updated_at = sequence, cursor, now
            return sequence - 1

    def drop_older(self, before: dt.datetime) -> dict[str, int]:
        """Drops pending changes taken before ``before`` (unacknowledged past the retention window), keeping per
        subscription the highest sequence dropped, so that its follower is told of the gap; those, by id."""
        dropped: dict[str, int] = {}
        with self._db.read() as s:  # most rounds find nothing: no write transaction for them
            if s.scalar(select(PendingChangeRow.sequence).where(PendingChangeRow.created_at < before).limit(1)) is None:
                return dropped
        with self._db.write() as s:
            old = s.execute(
                select(PendingChangeRow.subscription_id, func.max(PendingChangeRow.sequence))
                .where(PendingChangeRow.created_at < before)
                .group_by(PendingChangeRow.subscription_id)
            ).all()
            for subscription_id, through in old:
                s.execute(
                    delete(PendingChangeRow).where(
                        PendingChangeRow.subscription_id == subscription_id, PendingChangeRow.sequence <= through
                    )
                )
                row = s.get(SubscriptionRow, subscription_id)
                if row is not None:
                    row.dropped_through = max(row.dropped_through, int(through))
                dropped[str(subscription_id)] = int(through)
        return dropped

    # Following and acknowledging

    def take_reader(self, subscription_id: str, holder: str, now: dt.datetime, lease: dt.timedelta) -> Subscription:
        """Takes (or renews) the one reader lease; refuses while another follower holds it."""
        with self._db.write() as s:
            row = _locked(s, subscription_id)
            if row.status != SubscriptionStatus.ACTIVE.value:
                raise FailedPrecondition(
                    f"subscription {subscription_id} is {row.status}: it delivers nothing", subscription_id,
                    kind="SUBSCRIPTION_CANCELLED",
                )  # fmt: skip
            expires = row.reader_expires
            if row.reader_holder not in ("", holder) and expires is not None and expires > now:
                raise FailedPrecondition(
                    f"subscription {subscription_id} is being followed by another connection until at least "
                    f"{expires.isoformat(timespec='seconds')}; only one follower at a time: stop the other, or "
                    "retry once its lease has run out",
                    subscription_id,
                    kind="FOLLOWED_ELSEWHERE",
                )
            row.reader_holder, row.reader_expires = holder, now + lease
            return _subscription_of(row)

    def release_reader(self, subscription_id: str, holder: str) -> None:
        with self._db.write() as s:
            s.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id, SubscriptionRow.reader_holder == holder)
                .values(reader_holder="", reader_expires=None)
            )

    def delivered(self, subscription_id: str, holder: str, through: int) -> None:
        """Notes that the follower holding the reader lease sent everything up to ``through``."""
        with self._db.write() as s:
            row = _locked(s, subscription_id)
            if row.reader_holder != holder:
                raise FailedPrecondition(
                    f"subscription {subscription_id} is followed by another connection now", subscription_id,
                    kind="FOLLOWED_ELSEWHERE",
                )  # fmt: skip
            row.delivered_sequence = max(row.delivered_sequence, through)

    def acknowledge(self, subscription_id: str, sequence: int, now: dt.datetime) -> Subscription:
        """Forgets the pending changes up to ``sequence``; one never sent is refused, naming both numbers."""
        with self._db.write() as s:
            row = _locked(s, subscription_id)
            if sequence > row.delivered_sequence:
                raise FailedPrecondition(
                    f"sequence {sequence} of subscription {subscription_id} was never delivered: the last "
                    f"delivered is {row.delivered_sequence}; acknowledge only what was received",
                    subscription_id,
                    kind="NOT_DELIVERED",
                )
            if sequence > row.acknowledged_sequence:
                row.acknowledged_sequence, row.updated_at = sequence, now
                s.execute(
                    delete(PendingChangeRow).where(
                        PendingChangeRow.subscription_id == subscription_id, PendingChangeRow.sequence <= sequence
                    )
                )
        return self.get(subscription_id)


def _locked(s: Session, subscription_id: str) -> SubscriptionRow:
    row = s.scalar(select(SubscriptionRow).where(SubscriptionRow.id == subscription_id).with_for_update())
    if row is None:
        raise NotFound("subscription", subscription_id)
    return row


def _free(
    holder_col: Any, expires_col: Any, holder: str, now: dt.datetime, renew_by: dt.datetime
) -> ColumnElement[bool]:
    """Free, expired, or ``holder``'s own and expiring before ``renew_by``."""
    mine = and_(holder_col == holder, or_(expires_col.is_(None), expires_col < renew_by))
    return or_(mine, holder_col == "", expires_col.is_(None), expires_col < now)


def _conditions(f: SubscriptionFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for column, value in (
        (SubscriptionRow.resource_code, f.resource_code),
        (SubscriptionRow.consumer_department, f.consumer_department),
        (SubscriptionRow.owner_department, f.owner_department),
    ):
        if value:
            out.append(column == value)
    if f.visible_to:
        out.append(
            or_(SubscriptionRow.consumer_department == f.visible_to, SubscriptionRow.owner_department == f.visible_to)
        )
    if not f.include_cancelled:
        out.append(SubscriptionRow.status == SubscriptionStatus.ACTIVE.value)
    return out


def _windows(s: Session, subscription_id: str | None) -> list[tuple[str, tuple[int, dt.datetime | None]]]:
    stmt = select(PendingChangeRow.subscription_id, func.count(), func.min(PendingChangeRow.created_at)).group_by(
        PendingChangeRow.subscription_id
    )
    if subscription_id is not None:
        stmt = stmt.where(PendingChangeRow.subscription_id == subscription_id)
    out: list[tuple[str, tuple[int, dt.datetime | None]]] = []
    for sid, n, oldest in s.execute(stmt).all():
        at = oldest.replace(tzinfo=dt.UTC) if oldest is not None and oldest.tzinfo is None else oldest
        out.append((str(sid), (int(n), at)))
    return out


def _with_window(s: Session, row: SubscriptionRow) -> Subscription:
    pending, oldest = dict(_windows(s, row.id)).get(row.id, (0, None))
    subscription = _subscription_of(row)
    return Subscription(**{**subscription.__dict__, "pending": pending, "oldest_pending_at": oldest})


def _row_of(x: Subscription) -> SubscriptionRow:
    return SubscriptionRow(
        id=x.id, resource_code=x.resource_code, owner_department=x.owner_department,
        consumer_department=x.consumer_department, consumer_system=x.consumer_system, grant_id=x.grant_id,
        purpose=x.purpose, filters=dict(x.filters), fields=list(x.fields), source_cursor=x.source_cursor,
        next_sequence=x.next_sequence, acknowledged_sequence=x.acknowledged_sequence,
        delivered_sequence=x.delivered_sequence, dropped_through=x.dropped_through, status=x.status.value,
        reader_holder="", poll_holder="", created_by=x.created_by, created_at=x.created_at,
        updated_at=x.created_at, cancelled_at=x.cancelled_at,
    )  # fmt: skip


def _subscription_of(row: SubscriptionRow) -> Subscription:
    return Subscription(
        id=row.id, resource_code=row.resource_code, owner_department=row.owner_department,
        consumer_department=row.consumer_department, consumer_system=row.consumer_system, grant_id=row.grant_id,
        purpose=row.purpose, filters=dict(row.filters), fields=tuple(row.fields), created_by=row.created_by,
        created_at=row.created_at, source_cursor=row.source_cursor, status=SubscriptionStatus(row.status),
        next_sequence=row.next_sequence, acknowledged_sequence=row.acknowledged_sequence,
        delivered_sequence=row.delivered_sequence, dropped_through=row.dropped_through,
        cancelled_at=row.cancelled_at,
    )  # fmt: skip
