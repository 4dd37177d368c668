"""Subscriptions across real hub processes on one PostgreSQL store (issue 16): a grant revoked through one
process stops delivery through another; subscriptions shared by two processes, one of them killed."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import verify_export
from exchange import values
from exchange.auditlog.export import export_lines
from exchange.models import ResourceStatus
from exchange.store.poll_shares import taken_over
from exchange.v1 import rights_pb2 as rpb
from exchange.v1 import subscription_pb2 as spb
from exchange.v1 import subscription_pb2_grpc
from policy.decision import Question
from tests.change_follower import (
    Consumer,
    Writer,
    channel,
    check_delivery,
    create_table,
    publish_changes,
    subscribe,
)
from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, REGISTRY, make_world
from tests.harness import RunningHub, base_settings, reason_of, running_hub
from tests.hub_process import hub_process
from tests.subscription_world import another_hub, ends_with, read, sequences, subscribing

ENV = {
    "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
    "EXCHANGE_SUBSCRIPTION_POLL_SECONDS": "0.05",
    "EXCHANGE_SUBSCRIPTION_LEASE_SECONDS": "2",
}
SHARED = 3_000  # changes each of the shared subscriptions receives
WAIT_LIMIT = 120.0  # seconds for a step that takes a few: a hang, not a slow machine


@dataclass
class Reader:
    """One follow of a subscription through ``address``, acknowledging each batch, until the hub ends it."""

    address: str
    identity: Path
    subscription: str
    batches: list[tuple[str, list[int]]] = field(default_factory=list)  # exchange id, versions
    error: grpc.RpcError | None = None

    @property
    def versions(self) -> list[int]:
        return [v for _, vs in self.batches for v in vs]

    def run(self) -> None:
        with channel(self.address, self.identity) as opened:
            stub = subscription_pb2_grpc.SubscriptionServiceStub(opened)
            try:
                for message in stub.Follow(spb.FollowRequest(id=self.subscription), timeout=WAIT_LIMIT):
                    batch = message.batch
                    versions = [int(str(values.record_from_wire(c.record)["version"])) for c in batch.changes]
                    self.batches.append((batch.exchange_id, versions))
                    stub.Acknowledge(spb.AcknowledgeRequest(id=self.subscription, sequence=batch.last_sequence))
            except grpc.RpcError as e:
                self.error = e


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_LIMIT}s"
        time.sleep(0.01)


def _records(a: RunningHub) -> list[dict[str, object]]:
    """The whole verified log (every process's records), in log order."""
    a.hub.audit.flush()
    verifier = Verifier.parse(a.files.audit_verifier.read_text())
    lines = list(export_lines(a.hub.store.audit, verifier))
    verify_export(lines, verifier)
    return [json.loads(r) for r in (parse_entry_line(x)[2] for x in lines[1:] if x.startswith("E\t")) if r]


def _refused(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    return error


def test_a_grant_revoked_through_one_process_stops_delivery_through_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    frontend = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_table(frontend)
    settings = base_settings(tmp_path / "hub", postgres_url, subscription_poll_seconds=0.05)
    with running_hub(settings) as a:
        world = make_world(a)
        grant = publish_changes(world, frontend)
        sub = subscribe(world)
        env = {**ENV, "EXCHANGE_DATABASE_URL": postgres_url}
        with hub_process(settings, world.consumer_system, tmp_path / "b.log", env) as b:
            writer = Writer(engine, 1_000_000, set(), random.Random(7))
            reader = Reader(b.address, world.consumer_system, sub)
            threads = [threading.Thread(target=writer.run), threading.Thread(target=reader.run)]
            for t in threads:
                t.start()
            try:
                _until(lambda: len(reader.versions) >= 500, "500 changes delivered through hub B")
                with a.client(world.people["police"]) as c:
                    c.call(c.rights.RevokeGrant, rpb.ChangeGrantRequest(id=grant, reason="事项办结"))
                revoked = max(writer.written)  # every change numbered above was written after the revocation
                revoked_at = dt.datetime.now(dt.UTC)
                _until(lambda: reader.error is not None, "the follow through hub B ended")
                _until(lambda: max(writer.written) > revoked + 200, "changes written after the revocation")
            finally:
                writer.stop.set()
                for t in threads:
                    t.join(timeout=60)
            with channel(b.address, world.consumer_system) as opened, a.client(world.consumer_system) as on_a:
                on_b = subscription_pb2_grpc.SubscriptionServiceStub(opened)
                again = _refused(lambda: list(on_b.Follow(spb.FollowRequest(id=sub), timeout=20)))
                late = _refused(lambda: on_b.Acknowledge(spb.AcknowledgeRequest(id=sub, sequence=1), timeout=20))
                _refused(lambda: on_a.subscriptions.Acknowledge(spb.AcknowledgeRequest(id=sub, sequence=1), timeout=20))
        records = _records(a)
    # Delivery through B ended with the grant's refusal, and so do a new follow and acknowledgements, on both.
    assert isinstance(reader.error, grpc.Call) and reader.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert {reason_of(e) for e in (reader.error, again, late)} == {"NO_GRANT"}
    # No change written after the revocation committed was sent.
    assert max(reader.versions) <= revoked, "a change written after the revocation was delivered"
    # Every batch sent was recorded before the revocation's commit (a batch record's time is taken before its
    # grant is read from the store), and the follow's refusal after it; nothing was sent after the refusal.
    batches = [r for r in records if r["kind"] == "exchange" and str(r["subject"]) == sub]
    sent = [r for r in batches if r["outcome"] == "ok"]
    refusals = [r for r in batches if r["outcome"] == "denied"]
    assert {x for x, _ in reader.batches} <= {str(r["exchange_id"]) for r in sent}
    assert refusals and all(_time(r) < revoked_at for r in sent), [r["time"] for r in sent[-3:]]
    assert max(_time(r) for r in sent) < min(_time(r) for r in refusals)
    assert any(r["action"] == "revoked_grant" and r["subject"] == grant for r in records)


def _time(record: dict[str, object]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["time"]))


def test_a_process_not_yet_told_of_a_revocation_sends_nothing_after_it(tmp_path: Path) -> None:
    """The second hub here shares the first's SQLite store but is never told of its changes (no notices between
    them): it stands for a process whose notice of the revocation has not arrived yet. It still refuses."""
    with running_hub(base_settings(tmp_path / "hub", subscription_poll_seconds=0.05)) as first:
        subs = subscribing(first, tmp_path)
        sub = subs.subscribe()
        with another_hub(first, subs.source) as second:
            stub = subscription_pb2_grpc.SubscriptionServiceStub(second.client(subs.world.consumer_system).channel)
            subs.source.change("张三", PERSON_ID)
            stream = _follow(stub, sub.id)
            assert sequences(read(stream, 1)) == [1]
            stub.Acknowledge(spb.AcknowledgeRequest(id=sub.id, sequence=1), timeout=20)
            stream.cancel()
            subs.source.change("李四", PERSON_ID)
            _until(lambda: first.hub.store.subscriptions.get(sub.id).pending == 1, "the second change taken")
            with first.client(subs.world.people["police"]) as c:
                c.call(c.rights.RevokeGrant, rpb.ChangeGrantRequest(id=subs.grant_id, reason="事项办结"))
            ask = Question("bdc-djxt", REGISTRY.code, LOOKUP, PURPOSE, ("name", "id_number"), ())
            today = dt.datetime.now(dt.UTC).date()
            stale = second.hub.decisions.decide(ask, ResourceStatus.PUBLISHED, today, consume=False)
            assert stale.allowed, "the second process was told after all: this test shows nothing"
            error = ends_with(grpc.StatusCode.PERMISSION_DENIED, _follow(stub, sub.id))
            assert reason_of(error) == "NO_GRANT"
        got = subs.stub().GetSubscription(spb.GetSubscriptionRequest(id=sub.id), timeout=20).subscription
        assert (got.delivered_sequence, got.last_sequence) == (1, 2)  # the change taken before it was never sent


def _follow(stub: subscription_pb2_grpc.SubscriptionServiceStub, subscription: str) -> Any:
    """A Follow call: an iterator of its messages that ``cancel()`` ends."""
    return stub.Follow(spb.FollowRequest(id=subscription), timeout=30)


def test_two_processes_share_subscriptions_and_a_killed_ones_polls_move_to_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    frontend = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_table(frontend)
    settings = base_settings(tmp_path / "hub", postgres_url)
    with running_hub(settings) as setup:
        world = make_world(setup)
        publish_changes(world, frontend)
        subs = [subscribe(world) for _ in range(4)]
    env = {**ENV, "EXCHANGE_DATABASE_URL": postgres_url}
    system = world.consumer_system
    with (
        hub_process(settings, system, tmp_path / "a.log", env) as a,
        hub_process(settings, system, tmp_path / "b.log", env) as b,
    ):
        pids = {a.pid: "a", b.pid: "b"}
        _until(lambda: set(_pollers(postgres_url, subs, pids).values()) == {"a", "b"}, "polls spread over both")
        rng = random.Random(11)
        readers = [  # one reader per subscription, half through each process; each acknowledges every batch
            Consumer((a, b)[n % 2].address, system, sub, SHARED, random.Random(rng.random()), 10**6, 1.0)
            for n, sub in enumerate(subs)
        ]
        writer = Writer(engine, SHARED, set(), random.Random(rng.random()), updates=0.0)
        threads = [threading.Thread(target=writer.run), *(threading.Thread(target=r.run) for r in readers)]
        for t in threads:
            t.start()
        try:
            _until(lambda: min(len(r.versions) for r in readers) >= SHARED // 3, "a third delivered to each")
            b.kill()
            for r in readers:
                r.address = a.address
            _until(lambda: set(_pollers(postgres_url, subs, pids).values()) == {"a"}, "B's polls taken over by A")
            _until(lambda: all(r.done or r.failure for r in readers), "every change delivered to every reader")
        finally:
            writer.stop.set()
            for r in readers:
                r.stop.set()
            for t in threads:
                t.join(timeout=60)
    assert writer.failure is None and [r.failure for r in readers] == [None] * 4
    for r in readers:
        assert check_delivery(r, writer.written) == []
    # Each change went once to each live reader: again only to those followed through B when it was killed.
    assert [r.duplicates for r in readers[::2]] == [0, 0]
    assert all(r.follows == 1 for r in readers[::2])


def _pollers(store: str, subs: list[str], pids: dict[int, str]) -> dict[str, str]:
    """Which process ("a", "b") holds each subscription's live poll lease, by the pid in its holder name."""
    engine = create_engine(store)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT id, poll_holder FROM subscriptions WHERE poll_expires > now() AT TIME ZONE 'UTC'")
            ).all()
    finally:
        engine.dispose()
    return {str(i): pids.get(int(str(h).split(":")[1]), "?") for i, h in rows if i in subs and h}


def test_a_process_takes_leases_over_only_from_processes_above_their_share() -> None:
    leases = [(f"SB-{n}", "a") for n in range(5)]
    assert taken_over(leases, "b", 5) == [("SB-0", "a"), ("SB-1", "a")]  # a keeps its share of 3
    assert taken_over([*leases[:3], ("SB-3", "b"), ("SB-4", "b")], "b", 5) == []  # balanced: nothing moves
    assert taken_over([*leases[:3], ("SB-3", "b"), ("SB-4", "b")], "a", 5) == []
    assert taken_over([("SB-0", "a"), ("SB-1", "a"), ("SB-2", "b")], "c", 4) == []  # share 2: c takes the free one
    assert taken_over([*leases[:4], ("SB-4", "b")], "c", 6) == [("SB-0", "a"), ("SB-1", "a")]  # share 2
    assert taken_over([], "a", 3) == []
