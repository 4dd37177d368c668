"""Subscriptions under faults: a real departmental table whose changes a writer makes, and a consumer that follows.

The police front end is a SQL table ``hj`` (SQLite file or PostgreSQL database) bound with an integer change
column ``bb`` and key ``hh``: the writer gives every insert or update the next number (one writer, so they
commit in order, as the binding requires). It updates only rows whose current version the consumer already
received, so every one of its changes can be seen at the source and must be delivered.

The consumer is a real gRPC client on its own connection; from a seeded random it disconnects after a few
batches, acknowledges or not, and reconnects; it checks as it goes that each follow starts right after what
was acknowledged (duplicates only of unacknowledged changes) and runs on without a hole.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import Engine, create_engine, event, text

from exchange import models as m
from exchange import pki, values
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import subscription_pb2 as spb
from exchange.v1 import subscription_pb2_grpc
from tests.exchange_world import PURPOSE, World
from tests.harness import POLICE, identity_spec

CHANGES = "10101/350200000007"
FIELDS = ("record_no", "name", "version")


def retried(error: grpc.RpcError) -> bool:
    """Whether a follower retries after ``error``: the hub process gone (UNAVAILABLE), or the reader lease of a
    killed process (or of its own last follow, not yet released) still standing (FOLLOWED_ELSEWHERE)."""
    if not isinstance(error, grpc.Call):
        return False
    code = error.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.FAILED_PRECONDITION and "FOLLOWED_ELSEWHERE" in _violations(error)
    )


def _violations(error: grpc.Call) -> set[str]:
    """The types a PreconditionFailure detail of the status names."""
    status = rpc_status.from_call(error)
    found: set[str] = set()
    for detail in status.details if status else []:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found |= {v.type for v in failure.violations}
    return found


def create_table(url: str) -> Engine:
    """The front end's table (SQLite in WAL mode, so the hub reads while the writer writes)."""
    engine = create_engine(url)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA busy_timeout = 10000"))
        with engine.connect() as c:
            c.exec_driver_sql("PRAGMA journal_mode = WAL")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE hj (hh TEXT PRIMARY KEY, xm TEXT NOT NULL, bb INTEGER NOT NULL)"))
    return engine


def publish_changes(world: World, url: str) -> str:
    """Publishes the resource, binds it to ``url``'s table ``hj`` by its change column, grants it: the grant id."""
    items = (
        m.DataItem("record_no", "户号", m.FieldType.STRING, filterable=True),
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("version", "版本", m.FieldType.INTEGER),
    )
    world.publish("police", identity_spec(CHANGES, POLICE.code, name="户籍变更", data_items=items))
    columns = {"record_no": "hh", "name": "xm", "version": "bb"}
    sql = cpb.SqlBackend(url=url, table="hj", columns=columns, change_column="bb", change_key="hh")
    world.bind("police", cpb.Binding(resource_code=CHANGES, sql=sql))
    return world.grant(CHANGES, FIELDS, "police", quota=1_000_000, rate=10_000)


def subscribe(world: World, identity: Path | None = None) -> str:
    """A subscription of the consumer system to every change from the first: its id."""
    request = spb.CreateSubscriptionRequest(
        resource_code=CHANGES, purpose=PURPOSE, fields=list(FIELDS), start=spb.SUBSCRIPTION_START_FIRST
    )
    with world.hub.client(identity or world.consumer_system) as c:
        return str(c.subscriptions.CreateSubscription(request, timeout=20).subscription.id)


@dataclass
class Writer:
    """Writes ``total`` changes to ``hj`` (or until stopped), ``chunk`` per transaction; ``written[v]`` is change
    v's (key, name), noted before its transaction commits."""

    engine: Engine
    total: int
    seen: set[int]  # versions the consumer received (read only here)
    rng: random.Random
    chunk: int = 25
    updates: float = 0.25  # the share of writes that update a row (one whose version ``seen`` holds)
    written: dict[int, tuple[str, str]] = field(default_factory=dict)
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self._write()
        except BaseException as e:  # reported by the test, which joins this thread
            self.failure = e

    def _write(self) -> None:
        current: dict[str, int] = {}
        keys: list[str] = []
        version = 0
        while version < self.total and not self.stop.is_set():
            with self.engine.begin() as c:
                for _ in range(min(self.chunk, self.total - version)):
                    version += 1
                    key = self.rng.choice(keys) if keys and self.rng.random() < self.updates else ""
                    name = f"名{version}"
                    if key and current[key] in self.seen:
                        c.execute(
                            text("UPDATE hj SET xm = :n, bb = :v WHERE hh = :k"), {"n": name, "v": version, "k": key}
                        )
                    else:
                        key = f"R{version:05d}"
                        c.execute(text("INSERT INTO hj VALUES (:k, :n, :v)"), {"k": key, "n": name, "v": version})
                        keys.append(key)
                    current[key] = version
                    self.written[version] = (key, name)
            time.sleep(0.01)  # a front end writing steadily, not all at once


@dataclass(frozen=True)
class Got:
    change_id: str
    version: int
    key: str
    name: str


@dataclass
class Consumer:
    """Follows ``subscription`` through ``address`` until it has received and acknowledged ``total`` changes."""

    address: str
    identity: Path
    subscription: str
    total: int
    rng: random.Random
    most_batches: int = 4  # a follow is left after 1..most_batches batches
    ack_rate: float = 0.6  # the share of batches acknowledged
    by_sequence: dict[int, Got] = field(default_factory=dict)
    versions: set[int] = field(default_factory=set)
    batches: list[tuple[str, int, int]] = field(default_factory=list)  # exchange id, first, last
    acknowledged: int = 0  # answered by the hub
    asked: int = 0  # the highest acknowledgement sent, answered or not
    duplicates: int = 0
    follows: int = 0
    retried: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return len(self.versions) >= self.total and self.acknowledged >= max(self.by_sequence, default=0)

    def run(self) -> None:
        try:
            while not self.done and not self.stop.is_set():
                try:
                    self._follow_once()
                except grpc.RpcError as e:
                    if not retried(e):
                        raise
                    assert isinstance(e, grpc.Call)
                    self.retried[f"{e.code().name}: {str(e.details())[:60]}"] += 1
                    time.sleep(0.05)
        except BaseException as e:  # reported by the test, which joins this thread
            self.failure = e

    def _follow_once(self) -> None:
        with channel(self.address, self.identity) as opened:
            stub = subscription_pb2_grpc.SubscriptionServiceStub(opened)
            request = spb.FollowRequest(id=self.subscription, batch_size=self.rng.choice((0, 50, 100, 250)))
            stream: Any = stub.Follow(request, timeout=120)  # an iterator that cancel() ends
            self.follows += 1
            leave_after, previous = self.rng.randint(1, self.most_batches), -1
            try:
                for message in stream:
                    previous = self._take(message, previous)
                    if self.rng.random() < self.ack_rate or len(self.versions) >= self.total:
                        self._acknowledge(stub, previous)
                    leave_after -= 1
                    if leave_after == 0 or self.done:
                        return
            finally:
                stream.cancel()

    def _take(self, message: spb.FollowResponse, previous: int) -> int:
        """Checks and keeps one batch; its last sequence. ``previous``: the follow's last one (-1: none yet)."""
        if not message.HasField("batch"):
            self.problems.append(f"a gap where none may be: {message}")
            return message.gap.last_sequence
        batch = message.batch
        first = batch.first_sequence
        if previous < 0 and not self.acknowledged <= first - 1 <= max(self.asked, self.acknowledged):
            self.problems.append(f"a follow began at {first}, acknowledged {self.acknowledged} (asked {self.asked})")
        if previous >= 0 and first != previous + 1:
            self.problems.append(f"batch {first}..{batch.last_sequence} after {previous}: a hole or a repeat")
        self.batches.append((batch.exchange_id, first, batch.last_sequence))
        for change in batch.changes:
            row = values.record_from_wire(change.record)
            got = Got(change.change_id, int(str(row["version"])), str(row["record_no"]), str(row["name"]))
            kept = self.by_sequence.setdefault(change.sequence, got)
            if kept is not got:
                self.duplicates += 1
                if kept != got:
                    self.problems.append(f"sequence {change.sequence} came as {kept} and as {got}")
            self.versions.add(got.version)
        return int(batch.last_sequence)

    def _acknowledge(self, stub: subscription_pb2_grpc.SubscriptionServiceStub, sequence: int) -> None:
        self.asked = max(self.asked, sequence)
        answer = stub.Acknowledge(spb.AcknowledgeRequest(id=self.subscription, sequence=sequence), timeout=20)
        self.acknowledged = max(self.acknowledged, int(answer.acknowledged_sequence))


@contextmanager
def channel(address: str, identity: Path) -> Iterator[grpc.Channel]:
    """A channel of its own (a follow after a kill does not wait out an older channel's reconnection backoff)."""
    files = pki.IdentityFiles(identity)
    credentials = grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_reconnect_backoff_ms", 500)]
    with grpc.secure_channel(address, credentials, options) as channel:
        yield channel


def check_delivery(consumer: Consumer, written: dict[int, tuple[str, str]]) -> list[str]:
    """What went wrong over the whole run: holes, disorder, changes never written, changes never received."""
    problems = list(consumer.problems)
    sequences = sorted(consumer.by_sequence)
    if sequences != list(range(1, len(sequences) + 1)):
        problems.append(f"sequences are not 1..{len(sequences)} without a hole")
    in_order = [consumer.by_sequence[s].version for s in sequences]
    if in_order != sorted(set(in_order)):
        problems.append("changes came out of the source's order, or one change under two sequences")
    for got in consumer.by_sequence.values():
        if written.get(got.version) != (got.key, got.name):
            problems.append(f"change {got.version} came as {got.key}/{got.name}, written as {written.get(got.version)}")
    missing = sorted(set(written) - consumer.versions)
    if missing:
        problems.append(f"{len(missing)} changes never received, e.g. {missing[:5]}")
    return problems
