"""Subscriptions under faults, with real hub processes and a real departmental table (issue 16).

10,000 changes written to a front-end table while a consumer follows with random disconnections and the hub
is SIGKILLed twice and started again on the same store: every change arrives, in order, without a hole,
repeated only when unacknowledged, and every batch sent is in the verified audit log. On SQLite and on
PostgreSQL (hub store and front end alike). The random choices are seeded; the seed is printed (a failing
run shows it; set SUBSCRIPTION_FAULT_SEED to replay one).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.v1 import subscription_pb2 as spb
from tests.change_follower import Consumer, Writer, check_delivery, create_table, publish_changes, subscribe
from tests.exchange_world import make_world
from tests.harness import base_settings, running_hub
from tests.hub_process import HubProcess, free_port, hub_process, private_cluster, verified_log

TOTAL = 10_000
RESTARTED = 3_000  # changes written while PostgreSQL is restarted
STUCK_LIMIT = 300.0  # seconds without reaching the next step: a hang, not a slow machine
SUBSCRIPTION_ENV = {
    "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
    "EXCHANGE_BACKEND_HOSTS": "127.0.0.0/8,::1",
    "EXCHANGE_SUBSCRIPTION_POLL_SECONDS": "0.05",
    "EXCHANGE_SUBSCRIPTION_BATCH_SIZE": "500",
    # A killed process's poll and reader leases run out after 2 s: the next process takes over then.
    "EXCHANGE_SUBSCRIPTION_LEASE_SECONDS": "2",
}


def seed() -> int:
    chosen = int(os.environ.get("SUBSCRIPTION_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"SUBSCRIPTION_FAULT_SEED={chosen}")
    return chosen


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """Another empty PostgreSQL database (the department's front end beside the hub's store), dropped after."""
    name = f"exchange_frontend_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The hub's store ("": the home's SQLite file) and the police front end, both of the parameter's kind."""
    if request.param == "sqlite":
        yield "", f"sqlite:///{tmp_path / 'ga-qzk.db'}"
        return
    store: str = request.getfixturevalue("postgres_url")
    with fresh_database(request.getfixturevalue("postgres_admin")) as frontend:
        yield store, frontend


def test_ten_thousand_changes_through_random_disconnections_and_two_sigkills(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    rng = random.Random(seed())
    store, frontend = databases
    engine = create_table(frontend)
    settings = base_settings(tmp_path / "hub", store)
    with running_hub(settings) as setup:  # members, the bound resource, its grant and the subscription
        world = make_world(setup)
        publish_changes(world, frontend)
        subscription = subscribe(world)
    env = {**SUBSCRIPTION_ENV, **({"EXCHANGE_DATABASE_URL": store} if store else {})}
    hub = HubProcess(settings, free_port(), tmp_path / "hub.log", env)
    hub.start(world.consumer_system)
    consumer = Consumer(hub.address, world.consumer_system, subscription, TOTAL, random.Random(rng.random()))
    writer = Writer(engine, TOTAL, consumer.versions, random.Random(rng.random()))
    threads = [threading.Thread(target=writer.run), threading.Thread(target=consumer.run)]
    for t in threads:
        t.start()
    try:
        for at in sorted(rng.sample(range(1_500, 8_000), 2)):  # two SIGKILLs, at random points of the run
            _until(partial(_reached, consumer, at), consumer)
            hub.kill()
            hub.start(world.consumer_system)
        _until(partial(_reached, consumer, 0), consumer)
    finally:
        consumer.stop.set()
        for t in threads:
            t.join(timeout=120)
        got = _state(hub, world.consumer_system, subscription)
        hub.stop()
        engine.dispose()
    assert writer.failure is None and consumer.failure is None, (writer.failure, consumer.failure)
    assert check_delivery(consumer, writer.written) == []
    assert (got.last_sequence, got.acknowledged_sequence, got.pending) == (len(consumer.by_sequence),) * 2 + (0,)
    _assert_batches_audited(settings, consumer)
    print(
        f"{TOTAL} changes in {len(consumer.by_sequence)} sequences over {consumer.follows} follows and "
        f"{len(consumer.batches)} batches; {consumer.duplicates} sent again; retried: {dict(consumer.retried)}"
    )


def _reached(consumer: Consumer, changes: int) -> bool:
    """Whether the consumer received ``changes`` changes (0: all, acknowledged), or failed."""
    enough = len(consumer.versions) >= changes if changes else consumer.done
    return enough or consumer.failure is not None


def _until(check: Callable[[], bool], consumer: Consumer) -> None:
    """Waits for ``check()``; a run stuck for STUCK_LIMIT seconds fails, naming where the consumer stands."""
    deadline = time.monotonic() + STUCK_LIMIT
    while not check():
        assert time.monotonic() < deadline, f"stuck at {len(consumer.versions)} changes: {consumer.retried}"
        time.sleep(0.01)


def _state(hub: HubProcess, identity: Path, subscription: str) -> spb.Subscription:
    with HubClient(hub.client_settings, identity) as c:
        request = spb.GetSubscriptionRequest(id=subscription)
        return c.call(c.subscriptions.GetSubscription, request).subscription


def _assert_batches_audited(settings: Settings, consumer: Consumer) -> None:
    """Every batch the consumer received has its ok record, with its sequences and size, in the verified log."""
    report, records = verified_log(settings)
    by_id = {str(r["exchange_id"]): r for r in records if r["kind"] == "exchange" and r["outcome"] == "ok"}
    for exchange_id, first, last in consumer.batches:
        record = by_id.get(exchange_id)
        assert record is not None, f"batch {first}..{last} ({exchange_id}) is not in the verified log"
        assert record["rows"] == last - first + 1 and f"changes {first}..{last}" in str(record["reason"])
    assert report.entries >= len(set(consumer.batches))


def test_postgresql_restarted_while_a_subscription_is_followed_and_polled(tmp_path: Path) -> None:
    rng = random.Random(seed())
    frontend = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_table(frontend)
    with private_cluster() as cluster:
        settings = base_settings(tmp_path / "hub", cluster.url)
        with running_hub(settings) as setup:
            world = make_world(setup)
            publish_changes(world, frontend)
            subscription = subscribe(world)
        env = {**SUBSCRIPTION_ENV, "EXCHANGE_DATABASE_URL": cluster.url}
        with hub_process(settings, world.consumer_system, tmp_path / "hub.log", env) as hub:
            follower = random.Random(rng.random())
            consumer = Consumer(hub.address, world.consumer_system, subscription, RESTARTED, follower)
            writer = Writer(engine, RESTARTED, consumer.versions, random.Random(rng.random()))
            threads = [threading.Thread(target=writer.run), threading.Thread(target=consumer.run)]
            for t in threads:
                t.start()
            try:
                _until(partial(_reached, consumer, RESTARTED // 3), consumer)
                cluster.stop()
                down = _refusal_while_down(hub, world.consumer_system, subscription)
                cluster.start()
                _until(partial(_reached, consumer, 0), consumer)
            finally:
                consumer.stop.set()
                for t in threads:
                    t.join(timeout=120)
                engine.dispose()
            got = _state(hub, world.consumer_system, subscription)
    assert down.code() == grpc.StatusCode.UNAVAILABLE, f"{down.code()}: {down.details()}"
    assert writer.failure is None and consumer.failure is None, (writer.failure, consumer.failure)
    assert check_delivery(consumer, writer.written) == []
    assert (got.last_sequence, got.acknowledged_sequence, got.pending) == (len(consumer.by_sequence),) * 2 + (0,)
    print(f"while down: {down.details()}; retried: {dict(consumer.retried)}")


def _refusal_while_down(hub: HubProcess, identity: Path, subscription: str) -> grpc.Call:
    """The status of asking for the subscription while the store is down (it must not answer from memory)."""
    with pytest.raises(grpc.RpcError) as info:
        _state(hub, identity, subscription)
    assert isinstance(info.value, grpc.Call)
    return info.value


def test_a_hub_killed_between_fetching_changes_and_recording_them_loses_and_repeats_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    """The test holds the subscription's row locked, so the hub's poll fetches the new changes and then waits to
    append them; seen waiting (by PostgreSQL), the hub is SIGKILLed. The next process fetches them again, once."""
    frontend = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_table(frontend)
    settings = base_settings(tmp_path / "hub", postgres_url)
    with running_hub(settings) as setup:
        world = make_world(setup)
        publish_changes(world, frontend)
        subscription = subscribe(world)
    env = {**SUBSCRIPTION_ENV, "EXCHANGE_DATABASE_URL": postgres_url}
    store = create_engine(postgres_url)
    hub = HubProcess(settings, free_port(), tmp_path / "hub.log", env)
    hub.start(world.consumer_system)
    written: dict[int, tuple[str, str]] = {}
    try:
        with store.connect() as lock:
            _hold_until_append_waits(lock, subscription, engine, written)
            hub.kill()
            lock.rollback()
        hub.start(world.consumer_system)
        consumer = Consumer(hub.address, world.consumer_system, subscription, len(written), random.Random(2), 9, 1.0)
        consumer.run()
        got = _state(hub, world.consumer_system, subscription)
    finally:
        hub.stop()
        store.dispose()
        engine.dispose()
    assert consumer.failure is None and check_delivery(consumer, written) == []
    assert consumer.duplicates == 0 and (got.last_sequence, got.pending) == (len(written), 0)


def _hold_until_append_waits(
    lock: Connection, subscription: str, engine: Engine, written: dict[int, tuple[str, str]]
) -> None:
    """Locks the subscription's row, writes changes, and returns once the hub's append waits for the lock (its
    fetch done). Anything else caught by the lock first (a poll lease renewal) is let through and the lock taken
    again; changes appended meanwhile are followed by new ones."""
    deadline = time.monotonic() + STUCK_LIMIT
    while True:
        row = lock.execute(text(_LOCK), {"id": subscription}).one()
        if row.next_sequence > len(written):  # every change written so far is in the window: write more
            _insert(engine, written, 5)
        # PostgreSQL keeps the activity it read first in a transaction: read it afresh, or a wait that began
        # after the first look in this transaction is never seen.
        lock.execute(text("SELECT pg_stat_clear_snapshot()"))
        waiting = [str(q).lstrip().upper() for q in lock.execute(text(_WAITING)).scalars()]
        if any(q.startswith("SELECT SUBSCRIPTIONS.") and q.endswith("FOR UPDATE") for q in waiting):
            return
        if waiting or row.next_sequence > len(written):
            lock.rollback()
        assert time.monotonic() < deadline, f"the hub's append never waited for the lock: {waiting}"
        time.sleep(0.01)


def _insert(engine: Engine, written: dict[int, tuple[str, str]], count: int) -> None:
    with engine.begin() as c:
        for version in range(len(written) + 1, len(written) + count + 1):
            key, name = f"R{version:05d}", f"名{version}"
            c.execute(text("INSERT INTO hj VALUES (:k, :n, :v)"), {"k": key, "n": name, "v": version})
            written[version] = (key, name)


_LOCK = "SELECT next_sequence FROM subscriptions WHERE id = :id FOR UPDATE"
_WAITING = (
    "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
    "AND pid <> pg_backend_pid()"
)
