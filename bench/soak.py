"""Soak: a fixed rate of audited exchanges through a hub in its own process, for minutes; memory, latency and
errors window by window, and the audit log checked against every answered call at the end.

Run: .venv/bin/python bench/soak.py [--seconds 600] [--rate 100] [--window 60] [--warmup 60] [--out FILE]
     [--database-url URL [--create-database]]

- The hub runs as the ``serve`` command does in production (policy decisions, masking, audit group
  commit and integration, signed checkpoints), in its own process, on the default SQLite store in a
  temporary home or on ``--database-url`` (an empty PostgreSQL database; ``--create-database`` creates
  it first and drops it after).
- The department backend is the provider kit of bench/exchange_paths.py (zj-wqba's sale contracts over
  mutual TLS, its own process); the consumer is the system bdc-djxt with a grant that masks two personal
  fields (the same world as that benchmark).
- The load generator (its own process, grpc.aio on one channel) starts calls on a fixed schedule,
  ``--rate`` a second whatever the answers (open loop): every ``--stream-every``-th call is a StreamQuery
  of ``--stream-records`` records, the others are Query for one contract. Each call's latency counts from
  its scheduled start, so queueing shows; each call's status and exchange id are kept.
- Every ``--sample`` seconds the hub's resident memory (VmRSS), open file descriptors and threads, its CPU
  time, the load generator's own RSS, the audit log's size in the store and the load average are read.
- Per window: achieved calls/s, p50 / p99 / max latency, errors by status, and those readings at the
  window's end. At the end: totals, the hub's RSS after the warm-up against the end, the slope (MiB per
  hour, least squares over the samples after the warm-up), the audit log exported as an auditor and
  verified offline, and its answered exchanges compared with the calls acknowledged to the consumer.

The exit status is 0 when no call failed, memory stayed within bounds and every acknowledged exchange is
in the verified log; 1 otherwise.
"""

# ruff: noqa: E402 - the path must be set before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: put the project's root on the path for its packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

import grpc
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import VerifyError, verify_export
from bench.exchange_paths import (
    BULK,
    FIELDS,
    ONE,
    QUERY,
    RESOURCE,
    STREAM_QUERY,
    SYSTEM,
    Target,
    child,
    cpu_seconds,
    percentile,
    provider_main,
    publish_contracts,
    secure_channel,
)
from exchange import pki
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.store.schema import AuditEntryRow, AuditStagedRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import registry_pb2 as regpb
from tests.exchange_world import PURPOSE, make_world
from tests.harness import HOUSING, base_settings, running_hub

MIB = 1 << 20
WRONG_ANSWER = "WRONG_ANSWER"  # the call succeeded but its answer was not the one asked for

log = logging.getLogger("bench.soak")


# The load generator (own process)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the load generator does: ``rate`` calls a second for ``seconds``, reported per ``window``."""

    target: Target
    rate: float
    seconds: float
    window: float
    stream_every: int
    stream_records: int
    batch_size: int
    timeout: float
    distinct: int


@dataclasses.dataclass(frozen=True)
class Call:
    """One call: when it was due (seconds from the start), how long it took from then, and how it ended."""

    due: float
    ms: float
    stream: bool
    status: str  # "OK", a gRPC status name, or WRONG_ANSWER
    exchange_id: str


class Consumer:
    """bdc-djxt's two calls on one channel, requests built here and answers parsed and checked."""

    def __init__(self, plan: Plan, channel: grpc.aio.Channel) -> None:
        self._plan = plan
        self._query = channel.unary_unary(QUERY, request_serializer=None, response_deserializer=None)
        self._stream = channel.unary_stream(STREAM_QUERY, request_serializer=None, response_deserializer=None)
        self._bulk = xpb.QueryRequest(
            resource_code=RESOURCE,
            purpose=PURPOSE,
            filters={"contract_no": f"{BULK}{plan.stream_records}"},
            fields=FIELDS,
            batch_size=plan.batch_size,
        ).SerializeToString()

    async def query(self, n: int) -> str:
        """A Query for one contract (one of ``distinct`` numbers); its exchange id."""
        wanted = ONE if self._plan.distinct <= 1 else f"XM2026-{n % self._plan.distinct:06d}"
        request = xpb.QueryRequest(
            resource_code=RESOURCE, purpose=PURPOSE, filters={"contract_no": wanted}, fields=FIELDS
        )
        raw: bytes = await self._query(request.SerializeToString(), timeout=self._plan.timeout)
        answer = xpb.QueryResponse.FromString(raw)
        if len(answer.records) != 1 or not answer.exchange_id:
            raise ValueError(f"expected one record and an exchange id, got {len(answer.records)} records")
        return answer.exchange_id

    async def stream(self) -> str:
        """A StreamQuery read to its end; its exchange id."""
        count, exchange_id, last = 0, "", False
        async for raw in self._stream(self._bulk, timeout=self._plan.timeout):
            batch = xpb.QueryBatch.FromString(raw)
            exchange_id = exchange_id or batch.exchange_id
            count += len(batch.records)
            last = last or batch.last
        if not last or count != self._plan.stream_records or not exchange_id:
            raise ValueError(f"expected {self._plan.stream_records} records and a last batch, got {count}, {last}")
        return exchange_id


async def _call(consumer: Consumer, n: int, stream: bool, due: float, started: float) -> Call:
    try:
        exchange_id = await (consumer.stream() if stream else consumer.query(n))
        status = "OK"
    except grpc.aio.AioRpcError as e:
        exchange_id, status = "", e.code().name
    except ValueError:
        exchange_id, status = "", WRONG_ANSWER
    return Call(due - started, (time.monotonic() - due) * 1000, stream, status, exchange_id)


async def drive(plan: Plan, conn: Connection) -> None:
    """Starts call n at start + n / rate, whatever the answers; sends each window's calls once they have ended."""
    channel = secure_channel(plan.target)
    consumer = Consumer(plan, channel)
    try:
        first = await consumer.query(0)  # the channel is connected before the clock starts
        started = time.monotonic() + 0.05
        conn.send(("start", started, first))
        total = max(1, round(plan.seconds * plan.rate))
        windows = math.ceil(plan.seconds / plan.window)
        reports: list[asyncio.Task[None]] = []
        pending: list[asyncio.Task[Call]] = []
        lag, window = 0.0, 0
        for n in range(total):
            due = started + n / plan.rate
            while due >= started + (window + 1) * plan.window and window < windows - 1:
                reports.append(asyncio.create_task(_report(conn, window, pending, lag)))
                pending, lag, window = [], 0.0, window + 1
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            lag = max(lag, time.monotonic() - due)
            stream = plan.stream_every > 0 and n % plan.stream_every == plan.stream_every - 1
            pending.append(asyncio.create_task(_call(consumer, n, stream, due, started)))
        reports.append(asyncio.create_task(_report(conn, window, pending, lag)))
        await asyncio.gather(*reports)
    finally:
        await channel.close(None)


async def _report(conn: Connection, window: int, calls: list[asyncio.Task[Call]], lag: float) -> None:
    ended = await asyncio.gather(*calls)
    conn.send(("window", window, ended, lag))


def load_main(conn: Connection) -> None:
    """Runs one Plan sent after "ready": ("start", monotonic time, first exchange id), ("window", n, calls, lag)...,
    ("done",); waits for None."""
    logging.basicConfig(level=logging.WARNING)
    conn.send("ready")
    plan = conn.recv()
    if plan is None:
        return
    try:
        asyncio.run(drive(plan, conn))
        conn.send(("done",))
    except Exception as e:  # reported by the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    conn.recv()


# The hub (own process) and what is read from it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def hub_process(settings: Settings, port: int, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``exchange serve`` on ``port`` with the server's part of ``settings`` (as EXCHANGE_* variables); SIGTERM
    at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}  # the hub refuses unknown ones
    env |= server_environment(settings)
    env |= {"PYTHONPATH": str(ROOT), "EXCHANGE_LISTEN": f"127.0.0.1:{port}", "EXCHANGE_METRICS_LISTEN": "127.0.0.1:0"}
    home = settings.home
    with log_file.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli.main", "serve"], cwd=home, env=env, stdout=sink, stderr=sink
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


CLIENT_SETTINGS = {"sources", "hub_address", "identity", "call_timeout_seconds"}


def server_environment(settings: Settings) -> dict[str, str]:
    """The EXCHANGE_* variables that give a hub started with ``exchange serve`` the settings that differ from the
    defaults (the client's own settings left out)."""
    defaults = Settings()
    env: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if f.name in CLIENT_SETTINGS or value == getattr(defaults, f.name):
            continue
        if isinstance(value, tuple):
            text_value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text_value = "true" if value else "false"
        else:
            text_value = "" if value is None else str(value)
        env[f"EXCHANGE_{f.name.upper()}"] = text_value
    return env


def wait_until_serving(settings: Settings, identity: Path, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 60
    with HubClient(settings, identity) as client:
        while True:
            try:
                client.call(client.registry.WhoAmI, regpb.WhoAmIRequest())
                return
            except grpc.RpcError:
                if process.poll() is not None:
                    tail = log_file.read_text()[-3000:]
                    raise RuntimeError(f"the hub exited with {process.returncode}:\n{tail}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the hub did not start within 60 s") from None
                time.sleep(0.2)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes, Threads, and open file descriptors of a process; empty if it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in {"VmRSS", "VmHWM"}:
                out[name] = int(value.split()[0]) * 1024
            elif name == "Threads":
                out[name] = int(value)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return {}
    return out


class StoreReader:
    """The audit log's size (entries sequenced, records staged) and the store's size, read beside the hub."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine = create_engine(url, poolclass=NullPool)

    def audit(self) -> tuple[int, int]:
        with self._engine.connect() as c:
            entries = c.scalar(select(func.count()).select_from(AuditEntryRow)) or 0
            staged = c.scalar(select(func.count()).select_from(AuditStagedRow)) or 0
        return int(entries), int(staged)

    def size_bytes(self) -> int:
        if self._url.startswith("sqlite:///"):
            base = Path(self._url.removeprefix("sqlite:///"))
            return sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.exists())
        with self._engine.connect() as c:
            return int(c.scalar(text("SELECT pg_database_size(current_database())")) or 0)

    def close(self) -> None:
        self._engine.dispose()


@dataclasses.dataclass
class Sample:
    """Readings at ``at`` seconds from the start of the load."""

    at: float
    hub_rss: int
    hub_hwm: int
    hub_fds: int
    hub_threads: int
    hub_cpu_s: float
    client_rss: int
    provider_rss: int
    audit_entries: int
    audit_staged: int
    store_bytes: int
    load_1m: float


def take_sample(at: float, pids: dict[str, int], store: StoreReader) -> Sample:
    hub, client, provider = (proc_status(pids[name]) for name in ("hub", "client", "provider"))
    entries, staged = store.audit()
    return Sample(
        at=round(at, 2),
        hub_rss=hub.get("VmRSS", 0),
        hub_hwm=hub.get("VmHWM", 0),
        hub_fds=hub.get("fds", 0),
        hub_threads=hub.get("Threads", 0),
        hub_cpu_s=round(cpu_seconds(pids["hub"]), 2),
        client_rss=client.get("VmRSS", 0),
        provider_rss=provider.get("VmRSS", 0),
        audit_entries=entries,
        audit_staged=staged,
        store_bytes=store.size_bytes(),
        load_1m=round(os.getloadavg()[0], 2),
    )


# Summaries


@dataclasses.dataclass
class Window:
    index: int
    start: float
    seconds: float
    calls: int
    ok: int
    streams: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    stream_p99_ms: float
    errors: dict[str, int]
    start_lag_ms: float
    hub_cpu_share: float
    end: Sample


def summarize(
    index: int, span: tuple[float, float], calls: list[Call], lag: float, ends: tuple[Sample, Sample]
) -> Window:
    """Window ``index`` (start, seconds) from its calls, the longest start lag, and the readings at its ends."""
    (start, seconds), (before, end) = span, ends
    ok = [c.ms for c in calls if c.status == "OK"]
    streamed = [c.ms for c in calls if c.status == "OK" and c.stream]
    errors = Counter(c.status for c in calls if c.status != "OK")
    cpu = (end.hub_cpu_s - before.hub_cpu_s) / max(1e-9, end.at - before.at)
    return Window(
        index=index,
        start=start,
        seconds=seconds,
        calls=len(calls),
        ok=len(ok),
        streams=sum(c.stream for c in calls),
        calls_per_s=round(len(ok) / seconds, 2),
        p50_ms=round(percentile(ok, 0.50), 2),
        p99_ms=round(percentile(ok, 0.99), 2),
        max_ms=round(max(ok, default=float("nan")), 2),
        stream_p99_ms=round(percentile(streamed, 0.99), 2),
        errors=dict(sorted(errors.items())),
        start_lag_ms=round(lag * 1000, 2),
        hub_cpu_share=round(cpu, 3),
        end=end,
    )


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; NaN for fewer than two distinct times."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return float("nan")
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


@dataclasses.dataclass
class Memory:
    """The hub's RSS after the warm-up and at the end, the growth allowed between them, and the verdict."""

    idle_mib: float
    start_mib: float
    end_mib: float
    peak_mib: float
    growth_mib: float
    slope_mib_per_hour: float
    allowed_mib: float
    bounded: bool
    client_start_mib: float
    client_end_mib: float
    # The growth per audit entry sequenced after the warm-up: what a hub holding each entry in memory would show.
    bytes_per_audit_entry: float


def memory(samples: list[Sample], warmup: float, max_growth_mib: float, max_growth_share: float) -> Memory:
    """Growth is too much when it exceeds either limit: ``max_growth_mib``, or ``max_growth_share`` of the start."""
    after = [s for s in samples if s.at >= warmup - 0.5 and s.hub_rss] or samples[-1:]
    start, end = after[0], after[-1]
    growth = (end.hub_rss - start.hub_rss) / MIB
    allowed = min(max_growth_mib, max_growth_share * start.hub_rss / MIB)
    return Memory(
        idle_mib=round(samples[0].hub_rss / MIB, 1),
        start_mib=round(start.hub_rss / MIB, 1),
        end_mib=round(end.hub_rss / MIB, 1),
        peak_mib=round(max(s.hub_hwm for s in samples) / MIB, 1),
        growth_mib=round(growth, 1),
        slope_mib_per_hour=round(slope_per_hour([(s.at, s.hub_rss / MIB) for s in after]), 1),
        allowed_mib=round(allowed, 1),
        bounded=growth <= allowed,
        client_start_mib=round(start.client_rss / MIB, 1),
        client_end_mib=round(end.client_rss / MIB, 1),
        bytes_per_audit_entry=round((end.hub_rss - start.hub_rss) / max(1, end.audit_entries - start.audit_entries)),
    )


@dataclasses.dataclass
class AuditCheck:
    """The exported log verified offline, and its answered exchanges against the calls acknowledged."""

    verified: bool
    problem: str
    entries: int
    checkpoints: int
    exchange_records: dict[str, int]
    answered: int
    acknowledged: int
    missing: int
    unacknowledged: int


def export_and_verify(
    settings: Settings, auditor: Path, home: Path, acknowledged: set[str], sequenced: int
) -> AuditCheck:
    """Exports the log as the auditor once a signed checkpoint covers its first ``sequenced`` entries, verifies it
    with the hub's public key, and compares the exchanges recorded as answered ("ok") with ``acknowledged``."""
    verifier = Verifier.parse(pki.HubFiles(home).audit_verifier.read_text())
    deadline = time.monotonic() + 120
    with HubClient(settings, auditor) as client:
        while True:
            lines = "".join(chunk.lines for chunk in client.audit.ExportLog(apb.ExportLogRequest(), timeout=600))
            rows = lines.splitlines()
            try:
                report = verify_export(rows, verifier)
            except VerifyError as e:
                # Entries after the newest checkpoint are vouched for by the next one: wait for it.
                if "no signed checkpoint covers" not in str(e) or time.monotonic() > deadline:
                    return AuditCheck(False, str(e), 0, 0, {}, 0, len(acknowledged), len(acknowledged), 0)
                time.sleep(1)
                continue
            if report.entries >= sequenced or time.monotonic() > deadline:
                break
            time.sleep(1)  # the export ends at the newest checkpoint: wait for one over every entry
    outcomes: Counter[str] = Counter()
    answered: set[str] = set()
    for row in rows[1:]:
        if not row.startswith("E\t"):
            continue
        record = parse_entry_line(row)[2]
        if record is None:
            continue
        data = json.loads(record)
        if data.get("kind") != "exchange":
            continue
        outcomes[f"{data.get('action')}/{data.get('outcome')}"] += 1
        if data.get("outcome") == "ok":
            answered.add(str(data.get("exchange_id")))
    return AuditCheck(
        verified=True,
        problem="",
        entries=report.entries,
        checkpoints=report.checkpoints,
        exchange_records=dict(sorted(outcomes.items())),
        answered=len(answered),
        acknowledged=len(acknowledged),
        missing=len(acknowledged - answered),
        unacknowledged=len(answered - acknowledged),
    )


def wait_for_integration(store: StoreReader, seconds: float = 60) -> tuple[int, int]:
    """Waits until nothing is staged (or ``seconds`` pass): (entries, staged)."""
    deadline = time.monotonic() + seconds
    while True:
        entries, staged = store.audit()
        if staged == 0 or time.monotonic() > deadline:
            return entries, staged
        time.sleep(0.5)


# The run


@contextmanager
def database(url: str, create: bool) -> Iterator[str]:
    """``url``; with ``create``, a new PostgreSQL database of that name (a fresh one if it names none), dropped
    after."""
    if not url or not create:
        yield url
        return
    parsed = make_url(url)
    name = parsed.database if parsed.database not in {None, "", "postgres"} else f"exchange_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sample_times(seconds: float, window: float, every: float, warmup: float) -> list[float]:
    """When to read: every ``every`` s, at each window's end and at the end of the warm-up."""
    times = {round(k * every, 3) for k in range(int(seconds // every) + 1)}
    times |= {round(min(seconds, k * window), 3) for k in range(1, math.ceil(seconds / window) + 1)}
    times |= {min(warmup, seconds), seconds}
    return sorted(times)


class Monitor:
    """Reads the processes on schedule while the load runs, and turns each window's calls into its summary."""

    def __init__(self, args: argparse.Namespace, started: float, pids: dict[str, int], store: StoreReader) -> None:
        self._args = args
        self._started = started
        self._pids = pids
        self._store = store
        self._due = sample_times(args.seconds, args.window, args.sample, args.warmup)
        self._calls: dict[int, tuple[list[Call], float]] = {}
        self.samples: list[Sample] = []
        self.windows: list[Window] = []
        self.acknowledged: set[str] = set()

    def wait(self) -> float:
        """Seconds until the next reading, after taking those due."""
        while self._due and time.monotonic() >= self._started + self._due[0]:
            self.samples.append(take_sample(self._due.pop(0), self._pids, self._store))
        return self._started + self._due[0] - time.monotonic() if self._due else 5.0

    def ended(self, index: int, calls: list[Call], lag: float) -> None:
        """Window ``index``'s calls have all ended: summarized (and printed) once its closing reading is taken."""
        self._calls[index] = (calls, lag)
        self.acknowledged |= {c.exchange_id for c in calls if c.status == "OK"}
        self.wait()
        for n in sorted(self._calls):
            start, end = self._bounds(n)
            if not any(s.at >= end - 1e-6 for s in self.samples):
                break
            first = next(s for s in reversed(self.samples) if s.at <= start + 1e-6)
            last = next(s for s in self.samples if s.at >= end - 1e-6)
            self._summarize(n, first, last)

    def finish(self) -> None:
        """Takes the readings left and summarizes the windows left (after a failure)."""
        while self._due:
            self.samples.append(take_sample(self._due.pop(0), self._pids, self._store))
        for n in sorted(self._calls):
            self._summarize(n, self.samples[0], self.samples[-1])

    def reading(self) -> Sample:
        """A reading now (after the run)."""
        return take_sample(time.monotonic() - self._started, self._pids, self._store)

    def _bounds(self, index: int) -> tuple[float, float]:
        start = index * self._args.window
        return start, min(self._args.seconds, start + self._args.window)

    def _summarize(self, index: int, first: Sample, last: Sample) -> None:
        calls, lag = self._calls.pop(index)
        start, end = self._bounds(index)
        self.windows.append(summarize(index, (start, end - start), calls, lag, (first, last)))
        print(row(self.windows[-1]), flush=True)


@dataclasses.dataclass
class Cast:
    """What the run needs from the setup: who calls, who audits, and the provider's process."""

    consumer: Path
    auditor: Path
    provider_pid: int


def set_up(stack: ExitStack, ctx: Any, args: argparse.Namespace, settings: Settings) -> Cast:
    """Members, the provider (started on ``stack``), the contracts and the grant, through a hub in this process."""
    print("setting up: departments, people, the provider, the contracts and a grant ...", flush=True)
    with running_hub(settings) as setup:
        world = make_world(setup)
        identity = setup.add_system(SYSTEM, HOUSING.code)
        provider = stack.enter_context(
            child(ctx, provider_main, str(identity), args.record_bytes, args.provider_workers)
        )
        publish_contracts(world, provider.first)
        return Cast(world.consumer_system, world.people["auditor"], provider.pid)


def consumer_target(identity: Path, port: int) -> Target:
    files = pki.IdentityFiles(identity)
    key, cert, ca = files.key.read_bytes(), files.cert.read_bytes(), files.ca.read_bytes()
    return Target("hub", f"127.0.0.1:{port}", "localhost", key, cert, ca, hub=True)


def run(args: argparse.Namespace, home: Path, database_url: str) -> dict[str, Any]:
    """Sets up, serves the hub in its own process, drives the load while reading, then checks the audit log."""
    ctx = multiprocessing.get_context("spawn")
    # As `exchange serve` runs in production: the audit integrator in its own process (the tests' hubs keep a thread).
    settings = base_settings(home / "hub", database_url, audit_integrator="process")
    with ExitStack() as stack:
        world = set_up(stack, ctx, args, settings)
        port, log_file = free_port(), home / "hub.log"
        hub = stack.enter_context(hub_process(settings, port, log_file))
        settings = replace(settings, hub_address=f"localhost:{port}")
        wait_until_serving(settings, world.consumer, hub, log_file)
        store = StoreReader(settings.effective_database_url)
        stack.callback(store.close)
        load = stack.enter_context(child(ctx, load_main))
        plan = Plan(
            consumer_target(world.consumer, port),
            args.rate,
            args.seconds,
            args.window,
            args.stream_every,
            args.stream_records,
            args.batch_size,
            args.timeout,
            args.distinct,
        )
        print(f"hub pid {hub.pid} on port {port}; {args.rate:g} calls/s for {args.seconds:g} s", flush=True)
        before = machine()
        load.conn.send(plan)
        message: tuple[Any, ...] = load.conn.recv() if load.conn.poll(60) else ("error", "it did not start")
        if message[0] != "start":
            raise RuntimeError(f"load generator: {message}")
        pids = {"hub": hub.pid, "client": load.pid, "provider": world.provider_pid}
        monitor = Monitor(args, float(message[1]), pids, store)
        monitor.acknowledged.add(message[2])  # the call that connected the channel before the clock started
        print(f"\n{HEAD}")
        failure = ""
        while True:
            if hub.poll() is not None:
                failure = failure or f"the hub exited with {hub.returncode} during the run"
            if not load.conn.poll(max(0.0, monitor.wait())):
                if not load.process.is_alive():
                    failure = failure or "the load generator died"
                    break
                continue
            message = load.conn.recv()
            if message[0] != "window":
                failure = failure or ("" if message[0] == "done" else str(message[1:]))
                break
            monitor.ended(*message[1:])
        monitor.finish()
        load.conn.send(None)
        entries, staged = wait_for_integration(store)
        audit = export_and_verify(settings, world.auditor, settings.home, monitor.acknowledged, entries)
        after_run = monitor.reading()
        after = machine()
        exit_code = stop(hub)
    return {
        "before": before,
        "after": after,
        "samples": monitor.samples,
        "windows": monitor.windows,
        "after_run": after_run,
        "audit": audit,
        "integration": {"entries": entries, "staged_left": staged},
        "hub_exit_code": exit_code,
        "hub_log_errors": _log_errors(log_file),
        "failure": failure,
    }


def stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, and the exit status within a minute (None if it did not exit)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        return None


def _log_errors(log_file: Path) -> list[str]:
    """The hub's log lines at ERROR or above (JSON lines or text), the first 20."""
    found = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            level = str(json.loads(line).get("level", ""))
        except (ValueError, AttributeError):
            level = "ERROR" if " ERROR " in line or line.startswith(("ERROR", "CRITICAL", "Traceback")) else ""
        if level.upper() in {"ERROR", "CRITICAL"}:
            found.append(line[:500])
    return found[:20]


def machine() -> dict[str, object]:
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "grpc": grpc.__version__,
    }


HEAD = (
    "| window (s) | calls/s | p50 ms | p99 ms | max ms | stream p99 ms | errors | hub RSS MiB | client RSS MiB "
    "| hub fds | hub threads | hub CPU | audit entries (staged) | load 1m |\n"
    "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
)


def row(w: Window) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in w.errors.items()) or "0"
    e = w.end
    return (
        f"| {w.start:g}–{w.start + w.seconds:g} | {w.calls_per_s:.1f} | {w.p50_ms:.1f} | {w.p99_ms:.1f} "
        f"| {w.max_ms:.1f} | {w.stream_p99_ms:.1f} | {errors} | {e.hub_rss / MIB:.1f} | {e.client_rss / MIB:.1f} "
        f"| {e.hub_fds} | {e.hub_threads} | {w.hub_cpu_share:.0%} | {e.audit_entries:,} ({e.audit_staged:,}) "
        f"| {e.load_1m:.2f} |"
    )


def report(args: argparse.Namespace, result: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The run's totals and verdict, as JSON-ready data, and whether it passed."""
    windows: list[Window] = result["windows"]
    samples: list[Sample] = result["samples"]
    audit: AuditCheck = result["audit"]
    mem = memory(samples, args.warmup, args.max_growth_mib, args.max_growth_share)
    errors: Counter[str] = Counter()
    for w in windows:
        errors.update(w.errors)
    calls = sum(w.calls for w in windows)
    ok = sum(w.ok for w in windows)
    loads = [s.load_1m for s in samples]
    totals = {
        "calls": calls,
        "ok": ok,
        "streams": sum(w.streams for w in windows),
        "calls_per_s": round(ok / args.seconds, 2),
        "errors": dict(sorted(errors.items())),
        "worst_window_p99_ms": max((w.p99_ms for w in windows), default=float("nan")),
        "max_ms": max((w.max_ms for w in windows), default=float("nan")),
        "hub_fds": [min(s.hub_fds for s in samples), max(s.hub_fds for s in samples)],
        "hub_threads": [min(s.hub_threads for s in samples), max(s.hub_threads for s in samples)],
        "load_1m": [min(loads), round(sum(loads) / len(loads), 2), max(loads)],
    }
    audited = audit.verified and audit.missing == 0 and audit.unacknowledged == 0
    passed = not errors and not result["failure"] and mem.bounded and audited
    problems = " ".join(x for x in (f"errors {dict(errors)}" if errors else "", result["failure"]) if x) or "no errors"
    verdict = (
        f"{'PASS' if passed else 'FAIL'}: "
        f"{problems}; "
        f"hub RSS {mem.start_mib:.1f} → {mem.end_mib:.1f} MiB after the warm-up ({mem.growth_mib:+.1f} MiB, "
        f"allowed {mem.allowed_mib:.1f}: {'bounded' if mem.bounded else 'GREW'}), "
        f"slope {mem.slope_mib_per_hour:+.1f} MiB/h; "
        f"audit log {'verified' if audit.verified else 'NOT verified: ' + audit.problem}, "
        f"{audit.answered:,} answered exchanges recorded for {audit.acknowledged:,} acknowledged calls "
        f"({audit.missing} missing, {audit.unacknowledged} recorded but not acknowledged)"
    )
    data = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine_before": result["before"],
        "machine_after": result["after"],
        "windows": [_finite(dataclasses.asdict(w)) for w in windows],
        "samples": [dataclasses.asdict(s) for s in samples],
        "after_run": dataclasses.asdict(result["after_run"]),
        "totals": _finite(totals),
        "memory": _finite(dataclasses.asdict(mem)),
        "audit": dataclasses.asdict(audit),
        "integration": result["integration"],
        "hub_exit_code": result["hub_exit_code"],
        "hub_log_errors": result["hub_log_errors"],
        "failure": result["failure"],
        "passed": passed,
        "verdict": verdict,
    }
    return data, passed


def _finite(value: Any) -> Any:
    """JSON has no NaN: None instead, in nested dicts too."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the load (default 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="calls started a second (default 100)")
    parser.add_argument(
        "--window", type=float, help="seconds per reported window (default 60, or a sixth of a shorter run)"
    )
    parser.add_argument("--warmup", type=float, help="seconds before memory counts (default: one window)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between readings (default 10)")
    parser.add_argument("--stream-every", type=int, default=20, help="every n-th call is a StreamQuery (0: none)")
    parser.add_argument("--stream-records", type=int, default=100, help="records per StreamQuery (default 100)")
    parser.add_argument("--batch-size", type=int, default=50, help="StreamQuery batch_size (default 50)")
    parser.add_argument("--record-bytes", type=int, default=512, help="wire size of a streamed record")
    parser.add_argument("--distinct", type=int, default=10_000, help="distinct contract numbers asked for")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, s (default 30)")
    parser.add_argument("--provider-workers", type=int, default=16, help="the provider kit's thread pool")
    parser.add_argument("--max-growth-mib", type=float, default=20.0, help="hub RSS growth allowed after warm-up")
    parser.add_argument("--max-growth-share", type=float, default=0.10, help="... and as a share of its start")
    parser.add_argument("--database-url", default="", help="the hub's store (default: SQLite in a temporary home)")
    parser.add_argument(
        "--create-database", action="store_true", help="create the --database-url database (PostgreSQL), drop it after"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = options().parse_args(argv)
    args.window = args.window or min(60.0, args.seconds / 6)
    args.warmup = args.window if args.warmup is None else args.warmup
    if args.rate <= 0 or args.seconds <= 0 or args.window <= 0 or args.sample <= 0:
        raise SystemExit("--rate, --seconds, --window and --sample must be positive")
    if args.warmup >= args.seconds:
        raise SystemExit("--warmup must end before --seconds")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as home,
        database(args.database_url, args.create_database) as url,
    ):
        result = run(args, Path(home), url)
    data, passed = report(args, result)
    totals, mem = data["totals"], data["memory"]
    print()
    print(
        f"{totals['calls']:,} calls ({totals['streams']:,} streams) in {args.seconds:g} s: {totals['calls_per_s']} "
        f"answered a second; errors {totals['errors'] or 'none'}; worst window p99 {totals['worst_window_p99_ms']} ms, "
        f"max {totals['max_ms']} ms"
    )
    print(
        f"hub RSS: idle {mem['idle_mib']} MiB, after warm-up {mem['start_mib']} MiB, end {mem['end_mib']} MiB, "
        f"peak {mem['peak_mib']} MiB, slope {mem['slope_mib_per_hour']} MiB/h; client RSS {mem['client_start_mib']} "
        f"→ {mem['client_end_mib']} MiB; hub fds {totals['hub_fds']}, threads {totals['hub_threads']}; "
        f"growth per audit entry after the warm-up {mem['bytes_per_audit_entry']} bytes; hub RSS after the audit "
        f"export {data['after_run']['hub_rss'] / MIB:.1f} MiB"
    )
    print(f"load average (1 min) during the run: min / mean / max {totals['load_1m']}; {os.cpu_count()} CPUs")
    print(f"audit: {json.dumps(data['audit'], ensure_ascii=False)}")
    if data["hub_log_errors"]:
        print(f"hub log: {len(data['hub_log_errors'])} error lines, first: {data['hub_log_errors'][0]}")
    print(data["verdict"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
