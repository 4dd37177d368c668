"""The subscription store on SQLite and PostgreSQL: windows appended atomically under the poll lease, one reader,
acknowledgements bounded by what was delivered, retention, cancellation."""

from __future__ import annotations

import datetime as dt

import pytest

from exchange.errors import FailedPrecondition
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.subscriptions import NewChange, Poll, Subscription, SubscriptionFilter, SubscriptionStatus
from tests.harness import TEST_RECORD

NOW = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=15)


def _subscription(store: Store, number: int = 1, consumer: str = "11350200MB00456789") -> Subscription:
    sub = Subscription(
        id=f"SB-20261204-{number:012x}", resource_code="10101/350200000001", owner_department="11350200MB0023456P",
        consumer_department=consumer, consumer_system="bdc-djxt", grant_id="GR-20261204-00000001",
        purpose="不动产转移登记", filters={}, fields=("name",), created_by="system/bdc-djxt", created_at=NOW,
        source_cursor="",
    )  # fmt: skip
    return store.subscriptions.add(sub, audit=TEST_RECORD)


def _changes(*names: str) -> list[NewChange]:
    return [NewChange(f"c-{n}", "upsert", n.encode(), ("h",)) for n in names]


def test_a_poll_appends_with_consecutive_sequences_only_under_its_lease_and_position(store: Store) -> None:
    sub = _subscription(store)
    subs = store.subscriptions
    assert [s.id for s in subs.claim_polls("hub-a", NOW, LEASE)] == [sub.id]
    assert subs.claim_polls("hub-b", NOW, LEASE) == []  # held by hub-a until its lease runs out
    assert subs.append(Poll(sub.id, "hub-a", ""), _changes("a", "b"), "00000002", NOW) == 2
    # A second append from the same position (a poll that fetched again after a lost commit) writes nothing.
    assert subs.append(Poll(sub.id, "hub-a", ""), _changes("a", "b"), "00000002", NOW) == 0
    assert subs.append(Poll(sub.id, "hub-b", "00000002"), _changes("c"), "00000003", NOW) == 0
    assert subs.append(Poll(sub.id, "hub-a", "00000002"), _changes("c"), "00000003", NOW) == 3
    assert [p.sequence for p in subs.pending(sub.id, 0, 10)] == [1, 2, 3]
    assert [p.payload for p in subs.pending(sub.id, 1, 1)] == [b"b"]
    subs.release_polls("hub-a")  # a clean stop: hub-b takes over at once
    assert [s.id for s in subs.claim_polls("hub-b", NOW, LEASE)] == [sub.id]
    later = NOW + 2 * LEASE
    assert [s.id for s in subs.claim_polls("hub-a", later, LEASE)] == [sub.id]  # hub-b's lease expired
    got = subs.get(sub.id)
    assert (got.source_cursor, got.next_sequence, got.pending) == ("00000003", 4, 3)


def test_one_reader_and_acknowledgements_bounded_by_delivery(store: Store) -> None:
    sub = _subscription(store)
    subs = store.subscriptions
    subs.claim_polls("hub-a", NOW, LEASE)
    subs.append(Poll(sub.id, "hub-a", ""), _changes("a", "b", "c"), "3", NOW)
    subs.take_reader(sub.id, "reader-1", NOW, LEASE)
    with pytest.raises(FailedPrecondition, match="only one follower"):
        subs.take_reader(sub.id, "reader-2", NOW, LEASE)
    with pytest.raises(FailedPrecondition):
        subs.delivered(sub.id, "reader-2", 2)
    subs.delivered(sub.id, "reader-1", 2)
    with pytest.raises(FailedPrecondition, match=r"sequence 3 .* last delivered is 2"):
        subs.acknowledge(sub.id, 3, NOW)
    acked = subs.acknowledge(sub.id, 2, NOW)
    assert (acked.acknowledged_sequence, acked.pending) == (2, 1)
    assert subs.acknowledge(sub.id, 1, NOW).acknowledged_sequence == 2  # an older one changes nothing
    subs.release_reader(sub.id, "reader-1")
    assert subs.take_reader(sub.id, "reader-2", NOW, LEASE).delivered_sequence == 2
    subs.take_reader(sub.id, "reader-3", NOW + 2 * LEASE, LEASE)  # reader-2 went silent: its lease ran out


def test_retention_drops_old_changes_and_keeps_the_gap(store: Store) -> None:
    sub = _subscription(store)
    subs = store.subscriptions
    subs.claim_polls("hub-a", NOW, LEASE)
    subs.append(Poll(sub.id, "hub-a", ""), _changes("a", "b"), "2", NOW)
    subs.append(Poll(sub.id, "hub-a", "2"), _changes("c"), "3", NOW + dt.timedelta(hours=2))
    dropped = subs.drop_older(NOW + dt.timedelta(hours=1))
    assert dropped == {sub.id: 2}
    got = subs.get(sub.id)
    assert (got.dropped_through, got.pending) == (2, 1)
    assert [p.sequence for p in subs.pending(sub.id, 0, 10)] == [3]
    lag = {w.id: w for w in subs.lag()}
    assert lag[sub.id].pending == 1 and lag[sub.id].oldest_pending_at == NOW + dt.timedelta(hours=2)


def test_cancelled_subscriptions_keep_nothing_and_are_listed_only_when_asked(store: Store) -> None:
    sub = _subscription(store)
    other = _subscription(store, 2, consumer="11350200MB0034567G")
    subs = store.subscriptions
    subs.claim_polls("hub-a", NOW, LEASE)
    subs.append(Poll(sub.id, "hub-a", ""), _changes("a"), "1", NOW)
    cancelled = subs.cancel(sub.id, NOW, audit=TEST_RECORD)
    assert cancelled.status is SubscriptionStatus.CANCELLED and cancelled.pending == 0
    with pytest.raises(FailedPrecondition):
        subs.take_reader(sub.id, "reader-1", NOW, LEASE)
    assert subs.append(Poll(sub.id, "hub-a", "1"), _changes("b"), "2", NOW) == 0
    page = page_request(0, "", {})
    assert [s.id for s in subs.find(page, SubscriptionFilter()).items] == [other.id]
    everything = subs.find(page, SubscriptionFilter(include_cancelled=True)).items
    assert {s.id for s in everything} == {sub.id, other.id}
    owner = SubscriptionFilter(visible_to="11350200MB0023456P", include_cancelled=True)
    assert len(subs.find(page, owner).items) == 2
    consumer = SubscriptionFilter(visible_to="11350200MB0034567G")
    assert [s.id for s in subs.find(page, consumer).items] == [other.id]
