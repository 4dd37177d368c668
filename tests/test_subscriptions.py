"""Subscriptions through a real hub on loopback: a fake police backend produces changes, a consumer system
subscribes under its grant, follows, acknowledges, and is stopped when the grant or the resource is."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from audit.records import subject_hash
from exchange.cli.main import main
from exchange.errors import Unavailable
from exchange.store.schema import AuditEntryRow, AuditStagedRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import rights_pb2 as rpb
from exchange.v1 import subscription_pb2 as spb
from exchange.v1 import subscription_pb2_grpc
from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, REGISTRY
from tests.harness import HOUSING, RunningHub, base_settings, reason_of, running_hub
from tests.subscription_world import (
    FakeSource,
    Subscribing,
    another_hub,
    ends_with,
    read,
    sequences,
    subscribing,
)

OTHER_ID = "350203199002023456"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    with running_hub(base_settings(tmp_path / "hub", subscription_poll_seconds=0.05)) as h:
        yield h


@pytest.fixture
def subs(hub: RunningHub, tmp_path: Path) -> Subscribing:
    return subscribing(hub, tmp_path)


def follow(subs: Subscribing, sub_id: str, on: RunningHub | None = None) -> Any:
    """A Follow call (on ``on``, else the first hub): an iterator of its messages that ``cancel()`` ends."""
    client = (on or subs.hub).client(subs.world.consumer_system)
    return subscription_pb2_grpc.SubscriptionServiceStub(client.channel).Follow(
        spb.FollowRequest(id=sub_id), timeout=30
    )


def reason(error: grpc.RpcError) -> str:
    assert isinstance(error, grpc.Call)
    return reason_of(error)


def test_created_under_the_grant_and_refused_outside_it(subs: Subscribing) -> None:
    created = subs.subscribe()
    assert created.status == spb.SUBSCRIPTION_STATUS_ACTIVE
    assert created.grant_id == subs.grant_id and created.consumer_system_code == "bdc-djxt"
    stub = subs.stub()
    outside = spb.CreateSubscriptionRequest(resource_code=LOOKUP, purpose=PURPOSE, fields=["name", "address"])
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateSubscription(outside, timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not an item
    wrong_purpose = spb.CreateSubscriptionRequest(resource_code=LOOKUP, purpose="其他事项", fields=["name"])
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateSubscription(wrong_purpose, timeout=20)
    assert reason(info.value) == "WRONG_PURPOSE"
    foreign = subs.stub(subs.hub.add_system("zj-zfxt", HOUSING.code))
    with pytest.raises(grpc.RpcError) as info:
        foreign.CreateSubscription(
            spb.CreateSubscriptionRequest(resource_code=LOOKUP, purpose=PURPOSE, fields=["name"])
        )
    assert reason(info.value) == "NO_GRANT"
    person = subs.stub(subs.world.people["consumer"])
    with pytest.raises(grpc.RpcError) as info:
        person.CreateSubscription(spb.CreateSubscriptionRequest(resource_code=LOOKUP, purpose=PURPOSE, fields=["name"]))
    assert reason(info.value) == "NOT_A_SYSTEM"


def test_a_source_that_cannot_tell_its_changes_is_refused(hub: RunningHub, tmp_path: Path) -> None:
    subs = subscribing(hub, tmp_path, FakeSource(subscribable=False))
    with pytest.raises(grpc.RpcError) as info:
        subs.subscribe()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not tell its changes" in str(info.value.details())


def test_changes_arrive_in_order_and_resume_after_the_last_acknowledged(subs: Subscribing) -> None:
    subs.source.change("旧记录", PERSON_ID)  # before subscribing "from now": not delivered
    sub = subs.subscribe()
    for name in ("张三", "李四", "王五"):
        subs.source.change(name, PERSON_ID)
    stream = follow(subs, sub.id)
    first = read(stream, 3)
    assert sequences(first) == [1, 2, 3]
    names = [c.record.fields["name"].string_value for m in first for c in m.batch.changes]
    assert names == ["张三", "李四", "王五"]
    ids = {c.sequence: c.change_id for m in first for c in m.batch.changes}
    subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=2), timeout=20)
    stream.cancel()  # the consumer disconnects with 3 unacknowledged

    again = follow(subs, sub.id)
    resumed = read(again, 1)
    assert sequences(resumed) == [3]
    assert resumed[0].batch.changes[0].change_id == ids[3]  # the same id: the consumer deduplicates by it
    acked = subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=3), timeout=20)
    assert (acked.acknowledged_sequence, acked.pending) == (3, 0)
    subs.source.change("赵六", PERSON_ID)
    assert sequences(read(again, 1)) == [4]
    again.cancel()


def test_from_the_first_change_and_filtered(subs: Subscribing) -> None:
    subs.source.change("张三", PERSON_ID)
    subs.source.change("李四", OTHER_ID)
    subs.source.change("王五", PERSON_ID)
    sub = subs.subscribe(start=spb.SUBSCRIPTION_START_FIRST)
    sub.filters  # noqa: B018 - the plain subscription takes every change
    stream = follow(subs, sub.id)
    assert [c.record.fields["name"].string_value for m in read(stream, 3) for c in m.batch.changes] == [
        "张三",
        "李四",
        "王五",
    ]
    stream.cancel()
    request = spb.CreateSubscriptionRequest(
        resource_code=LOOKUP, purpose=PURPOSE, fields=["name"], filters={"id_number": OTHER_ID},
        start=spb.SUBSCRIPTION_START_FIRST,
    )  # fmt: skip
    only = subs.stub().CreateSubscription(request, timeout=20).subscription
    other = follow(subs, only.id)
    got = read(other, 1)
    assert [c.record.fields["name"].string_value for c in got[0].batch.changes] == ["李四"]
    assert set(got[0].batch.changes[0].record.fields) == {"name"}  # only the items subscribed to
    other.cancel()


def test_an_acknowledgement_of_a_change_never_delivered_is_refused(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    stream = follow(subs, sub.id)
    assert sequences(read(stream, 1)) == [1]
    with pytest.raises(grpc.RpcError) as info:
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=7), timeout=20)
    error = info.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sequence 7" in str(error.details()) and "last delivered is 1" in str(error.details())
    stream.cancel()


def test_one_follower_at_a_time(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    first = follow(subs, sub.id)
    assert sequences(read(first, 1)) == [1]
    error = ends_with(grpc.StatusCode.FAILED_PRECONDITION, follow(subs, sub.id))
    assert "only one follower at a time" in str(error.details())
    first.cancel()


def test_suspending_the_grant_stops_delivery_and_acknowledgement(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    stream = follow(subs, sub.id)
    assert sequences(read(stream, 1)) == [1]
    with subs.hub.client(subs.world.people["police"]) as c:
        c.call(c.rights.SuspendGrant, rpb.ChangeGrantRequest(id=subs.grant_id, reason="核查使用情况"))
    subs.source.change("李四", PERSON_ID)
    error = ends_with(grpc.StatusCode.PERMISSION_DENIED, stream)
    assert reason_of(error) == "GRANT_SUSPENDED"
    with pytest.raises(grpc.RpcError) as info:
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=1), timeout=20)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = subs.stub().GetSubscription(spb.GetSubscriptionRequest(id=sub.id), timeout=20).subscription
    assert listed.delivered_sequence == 1  # the second change was not sent


def test_suspending_the_resource_stops_delivery(subs: Subscribing) -> None:
    sub = subs.subscribe()
    stream = follow(subs, sub.id)
    subs.source.change("张三", PERSON_ID)
    assert sequences(read(stream, 1)) == [1]
    with subs.hub.client(subs.world.people["police"]) as c:
        current = c.call(c.catalog.GetResource, cpb.GetResourceRequest(code=LOOKUP))
        request = cpb.ChangeResourceStatusRequest(code=LOOKUP, expected_version=current.version, reason="数据核查")
        c.call(c.catalog.SuspendResource, request)
    subs.source.change("李四", PERSON_ID)
    error = ends_with(grpc.StatusCode.PERMISSION_DENIED, stream)
    assert reason_of(error) == "RESOURCE_SUSPENDED"


def test_changes_past_the_retention_window_are_announced_as_a_gap(subs: Subscribing) -> None:
    sub = subs.subscribe()
    for name in ("张三", "李四"):
        subs.source.change(name, PERSON_ID)
    store = subs.hub.hub.store
    for _ in range(2000):  # until the poller has taken both into the window
        if store.subscriptions.get(sub.id).pending == 2:
            break
        time.sleep(0.01)
    store.subscriptions.drop_older(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    subs.source.change("王五", PERSON_ID)
    stream = follow(subs, sub.id)
    messages = read(stream, 3)
    gap = messages[0].gap
    assert (gap.first_sequence, gap.last_sequence) == (1, 2)
    assert "re-read by query" in gap.message
    assert sequences(messages[1:]) == [3]
    subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=3), timeout=20)
    stream.cancel()


def test_every_delivered_batch_is_in_the_audit_log(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    subs.source.change("李四", PERSON_ID)
    stream = follow(subs, sub.id)
    batches = [m.batch for m in read(stream, 2)]
    stream.cancel()
    for batch in batches:
        seen = subs.hub.hub.store.audit.exchange_seen(batch.exchange_id)
        assert seen is not None, batch.exchange_id
        assert seen.resource == LOOKUP and "ok" in seen.outcomes
        assert seen.fields == ("name", "id_number")
        assert batch.disclosure.grant_id == subs.grant_id
    key = subs.hub.files.audit_subject_key.read_bytes()
    with subs.hub.hub.store.db.read() as session:
        texts = [*session.scalars(select(AuditStagedRow.record)), *session.scalars(select(AuditEntryRow.record))]
    records = [json.loads(t) for t in texts if t]
    (record,) = [r for r in records if r.get("exchange_id") == batches[0].exchange_id]
    assert (record["action"], record["subject"], record["rows"]) == ("subscription", sub.id, len(batches[0].changes))
    assert subject_hash(key, PERSON_ID) in record["data_subjects"]  # the data subject, keyed, never in clear
    assert PERSON_ID not in json.dumps(record, ensure_ascii=False)


def test_listed_for_the_owner_and_the_consumer_not_for_others(subs: Subscribing) -> None:
    sub = subs.subscribe()
    request = spb.ListSubscriptionsRequest()
    for who in ("police", "consumer", "manager"):
        listed = subs.stub(subs.world.people[who]).ListSubscriptions(request, timeout=20)
        assert [s.id for s in listed.subscriptions] == [sub.id], who
    listed = subs.stub(subs.world.people["housing"]).ListSubscriptions(request, timeout=20)
    assert list(listed.subscriptions) == []
    cancelled = subs.stub().CancelSubscription(spb.CancelSubscriptionRequest(id=sub.id, reason="业务调整"), timeout=20)
    assert cancelled.subscription.status == spb.SUBSCRIPTION_STATUS_CANCELLED
    ends_with(grpc.StatusCode.FAILED_PRECONDITION, follow(subs, sub.id))


def test_two_hubs_on_one_store_give_a_change_to_one_follower_and_resume_after_a_restart(subs: Subscribing) -> None:
    sub = subs.subscribe()
    for name in ("张三", "李四"):
        subs.source.change(name, PERSON_ID)
    with another_hub(subs.hub, subs.source) as second:
        on_first = follow(subs, sub.id)
        assert sequences(read(on_first, 2)) == [1, 2]
        # The same subscription followed through the other hub process while the first follower is live: refused.
        error = ends_with(grpc.StatusCode.FAILED_PRECONDITION, follow(subs, sub.id, on=second))
        assert "only one follower at a time" in str(error.details())
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=1), timeout=20)
        on_first.cancel()
        subs.source.change("王五", PERSON_ID)
        on_second = follow(subs, sub.id, on=second)
        assert sequences(read(on_second, 2)) == [2, 3]  # 2 again (never acknowledged), then the new one
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=2), timeout=20)
        on_second.cancel()
    # The second process stopped; a third starts over the same store and the consumer resumes there.
    subs.source.change("赵六", PERSON_ID)
    with another_hub(subs.hub, subs.source) as third:
        resumed = follow(subs, sub.id, on=third)
        assert sequences(read(resumed, 2)) == [3, 4]
        resumed.cancel()


def test_the_cli_follows_writes_json_lines_and_acknowledges(subs: Subscribing, tmp_path: Path) -> None:
    system = str(subs.world.consumer_system)
    base = ["--hub", subs.hub.settings.hub_address, "--identity", system, "subscribe"]
    assert main([*base, "create", "--resource", LOOKUP, "--purpose", PURPOSE, "--field", "name"]) == 0
    sub_id = subs.stub().ListSubscriptions(spb.ListSubscriptionsRequest(), timeout=20).subscriptions[0].id
    for name in ("张三", "李四"):
        subs.source.change(name, PERSON_ID)
    out = tmp_path / "changes.jsonl"
    assert main([*base, "follow", sub_id, "--out", str(out), "--max-changes", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(x["sequence"], x["record"]["name"]) for x in lines] == [(1, "张三"), (2, "李四")]
    assert all(x["change_id"] and x["exchange_id"] for x in lines)
    got = subs.stub().GetSubscription(spb.GetSubscriptionRequest(id=sub_id), timeout=20).subscription
    assert (got.acknowledged_sequence, got.pending) == (2, 0)
    assert main([*base, "cancel", sub_id, "--reason", "停止订阅"]) == 0


def test_a_fault_between_fetching_and_recording_loses_nothing_and_duplicates_only_the_unacknowledged(
    subs: Subscribing, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = subs.subscribe()
    window = subs.hub.hub.store.subscriptions
    appended, delivered = window.append, window.delivered
    faults = {"append": 1, "delivered": 1}

    def failing(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            if faults[name]:
                faults[name] -= 1
                raise Unavailable("the store failed to answer; retry later")  # as if the process died here
            return real(*args)

        return call

    monkeypatch.setattr(window, "append", failing("append", appended))
    monkeypatch.setattr(window, "delivered", failing("delivered", delivered))
    subs.source.change("张三", PERSON_ID)
    subs.source.change("李四", PERSON_ID)
    # The first poll's fetch is not recorded; a later poll fetches the same changes again, once each.
    first = follow(subs, sub.id)
    error = ends_with(grpc.StatusCode.UNAVAILABLE, first)  # the batch was audited, its delivery not recorded
    assert faults == {"append": 0, "delivered": 0}, error.details()
    again = follow(subs, sub.id)
    batch = read(again, 2)
    assert sequences(batch) == [1, 2]
    assert [c.record.fields["name"].string_value for m in batch for c in m.batch.changes] == ["张三", "李四"]
    subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=2), timeout=20)
    again.cancel()
    got = subs.stub().GetSubscription(spb.GetSubscriptionRequest(id=sub.id), timeout=20).subscription
    assert (got.last_sequence, got.acknowledged_sequence, got.pending) == (2, 2, 0)


def test_lag_and_deliveries_are_measured(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    subs.source.change("李四", PERSON_ID)
    store = subs.hub.hub.store
    for _ in range(2000):  # until the poller has taken both into the window
        if store.subscriptions.get(sub.id).pending == 2:
            break
        time.sleep(0.01)
    text = subs.hub.hub.metrics.exposition().decode()
    labels = f'consumer_department="{REGISTRY.code}",resource="{LOOKUP}",subscription="{sub.id}"'
    assert f"exchange_subscription_pending_changes{{{labels}}} 2.0" in text
    assert f"exchange_subscription_lag_seconds{{{labels}}}" in text
    stream = follow(subs, sub.id)
    read(stream, 2)
    stream.cancel()
    delivered = subs.hub.hub.metrics.exposition().decode()
    assert f'exchange_subscription_changes_delivered_total{{resource="{LOOKUP}"}} 2.0' in delivered


def test_on_postgresql_changes_arrive_in_order_and_resume(tmp_path: Path, postgres_url: str) -> None:
    settings = base_settings(tmp_path / "hub", postgres_url, subscription_poll_seconds=0.05)
    with running_hub(settings) as hub:
        subs = subscribing(hub, tmp_path)
        sub = subs.subscribe()
        for name in ("张三", "李四", "王五"):
            subs.source.change(name, PERSON_ID)
        stream = follow(subs, sub.id)
        assert sequences(read(stream, 3)) == [1, 2, 3]
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=1), timeout=20)
        stream.cancel()
        again = follow(subs, sub.id)
        assert sequences(read(again, 2)) == [2, 3]
        again.cancel()


def test_changes_taken_under_looser_masks_than_the_grant_now_in_force_are_not_sent(subs: Subscribing) -> None:
    sub = subs.subscribe()
    subs.source.change("张三", PERSON_ID)
    store = subs.hub.hub.store
    for _ in range(2000):  # until the poller has taken it, unmasked, under the first grant
        if store.subscriptions.get(sub.id).pending == 1:
            break
        time.sleep(0.01)
    with subs.hub.client(subs.world.people["police"]) as c:
        c.call(c.rights.RevokeGrant, rpb.ChangeGrantRequest(id=subs.grant_id, reason="改为脱敏提供"))
    with pytest.raises(grpc.RpcError) as info:  # an acknowledgement after the revocation
        subs.stub().Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=0), timeout=20)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    masked = subs.world.grant(LOOKUP, ("name", "id_number"), "police", masks=(("name", rpb.MASK_KIND_NAME),))
    subs.source.change("李四", PERSON_ID)
    stream = follow(subs, sub.id)
    messages = read(stream, 2)
    gap = messages[0].gap
    assert (gap.first_sequence, gap.last_sequence) == (1, 1) and "masks" in gap.message
    batch = messages[1].batch
    assert [c.record.fields["name"].string_value for c in batch.changes] == ["李*"]
    assert batch.disclosure.grant_id == masked and batch.disclosure.masks["name"] == "name"
    stream.cancel()


def test_changes_a_faulty_source_returns_outside_the_filters_are_not_taken(hub: RunningHub, tmp_path: Path) -> None:
    subs = subscribing(hub, tmp_path, FakeSource(filtering=False))
    subs.source.change("张三", PERSON_ID)
    subs.source.change("李四", OTHER_ID)
    subs.source.change("王五", PERSON_ID)
    request = spb.CreateSubscriptionRequest(
        resource_code=LOOKUP, purpose=PURPOSE, fields=["name"], filters={"id_number": OTHER_ID},
        start=spb.SUBSCRIPTION_START_FIRST,
    )  # fmt: skip
    sub = subs.stub().CreateSubscription(request, timeout=20).subscription
    stream = follow(subs, sub.id)
    got = read(stream, 1)
    assert [c.record.fields["name"].string_value for c in got[0].batch.changes] == ["李四"]
    stream.cancel()
    assert (
        subs.stub().GetSubscription(spb.GetSubscriptionRequest(id=sub.id), timeout=20).subscription.last_sequence == 1
    )
