"""Faults injected for real, and what the hub does about them.

PostgreSQL stopped and started again under load (a private cluster, so nothing else loses its
database); providers that hang, reset connections or trickle; the SQLite store's disk filled up; a
SIGTERM under load. In each case calls end with a clear status (never INTERNAL), nothing is
released without its audit record, the hub recovers by itself, and afterwards the log verifies
with every acknowledged exchange in it.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.provider import Provider, ProviderQuery, serve
from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import Report, verify_export
from exchange import models as m
from exchange import pki
from exchange.auditlog.export import export_lines
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from tests.exchange_world import LOOKUP, World, lookup, make_world, query, serve_lookup
from tests.harness import HOUSING, POLICE, RunningHub, base_settings, identity_spec, running_hub
from tests.test_crash import _free_port, _wait

PROJECT = Path(__file__).resolve().parent.parent
OK = grpc.StatusCode.OK
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How long a fault-free hub may take to answer again once the fault is gone (liveness, not speed).
RECOVERY_LIMIT = 30.0
# What a caller is told while the store or the audit log cannot be written.
CLEAR_REFUSALS = {
    "the audit log cannot be written; nothing was released",
    "the store cannot be reached or is busy; retry later",
}

Record = dict[str, object]


# Calls and what they came to


@dataclass(frozen=True)
class Outcome:
    """How one call ended: its status, the hub's words, the exchange id (of an answer or a stream's batches)."""

    code: grpc.StatusCode
    details: str = ""
    exchange_id: str = ""
    batches: int = 0
    started: float = 0.0
    ended: float = field(default_factory=time.monotonic)


def ask(
    stub: exchange_pb2_grpc.ExchangeServiceStub,
    request: xpb.QueryRequest,
    *,
    stream: bool = False,
    timeout: float = 20,
    pace: float = 0.0,
    first: Callable[[], object] | None = None,
) -> Outcome:
    """A Query or a StreamQuery (read to its end, ``pace`` seconds per batch, ``first()`` called once the first
    batch is in), as an Outcome."""
    started, exchange_id, batches = time.monotonic(), "", 0
    try:
        if not stream:
            exchange_id = stub.Query(request, timeout=timeout).exchange_id
            return Outcome(OK, "", exchange_id, 0, started)
        for batch in stub.StreamQuery(request, timeout=timeout):
            exchange_id, batches = batch.exchange_id, batches + 1
            if batches == 1 and first is not None:
                first()
            time.sleep(pace)
        return Outcome(OK, "", exchange_id, batches, started)
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return Outcome(e.code(), e.details() or "", exchange_id, batches, started)


class Load:
    """Queries (and, if asked, streams) from several threads, each with its own channel, until stopped."""

    def __init__(
        self,
        settings: Settings,
        identity: Path,
        workers: int,
        *,
        streams: tuple[xpb.QueryRequest, ...] = (),
        pace: float = 0.0,
    ) -> None:
        self.outcomes: list[Outcome] = []
        self._settings, self._identity, self._streams, self._pace = settings, identity, streams, pace
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a call did not end"

    def _work(self, worker: int) -> None:
        # Odd workers stream, taking the streams in turn; even workers query.
        stream = self._streams[worker // 2 % len(self._streams)] if self._streams and worker % 2 else None
        with HubClient(self._settings, self._identity) as c:
            while not self._stop.is_set():
                if stream is not None:
                    outcome = ask(c.exchange, stream, stream=True, pace=self._pace)
                else:
                    outcome = ask(c.exchange, lookup())
                self.outcomes.append(outcome)
                if outcome.code is not OK:
                    time.sleep(0.05)

    def answered(self) -> list[str]:
        return [o.exchange_id for o in self.outcomes if o.code is OK]

    def codes(self) -> set[grpc.StatusCode]:
        return {o.code for o in self.outcomes}

    def since(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.ended >= moment]


class HealthWatch:
    """Samples the gRPC health service and /readyz every 0.1 s: (when, gRPC status or -1, HTTP status or -1)."""

    def __init__(self, settings: Settings, identity: Path, metrics_port: int) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._settings, self._identity, self._port = settings, identity, metrics_port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with HubClient(self._settings, self._identity) as c:
            stub = health_pb2_grpc.HealthStub(c.channel)
            while not self._stop.wait(0.1):
                try:
                    status = int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)
                except grpc.RpcError:
                    status = -1
                self.samples.append((time.monotonic(), status, _readyz(self._port)))

    def between(self, start: float, end: float) -> set[tuple[int, int]]:
        return {(g, h) for when, g, h in self.samples if start <= when <= end}

    def last(self) -> tuple[int, int]:
        return self.samples[-1][1:]


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return -1


def _until(limit: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` holds; fails after ``limit``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"not within {limit:.0f}s"
        time.sleep(0.05)
    return time.monotonic() - started


# A hub in a process of its own


def _refused_while_out(load: Load, health: HealthWatch, during: list[Outcome], out: float, back: float) -> float:
    """Only clear UNAVAILABLE refusals, all calls during the outage refused, health said so; seconds to SERVING."""
    assert load.codes() <= {OK, grpc.StatusCode.UNAVAILABLE}, load.codes()
    assert during and all(o.code is grpc.StatusCode.UNAVAILABLE for o in during), {o.code for o in during}
    assert {o.details for o in load.outcomes if o.code is not OK} <= CLEAR_REFUSALS
    assert (NOT_SERVING, 503) in health.between(out, back)
    return _until(RECOVERY_LIMIT, lambda: health.last() == (SERVING, 200))


@dataclass
class HubProcess:
    process: subprocess.Popen[bytes]
    settings: Settings
    metrics_port: int
    log: Path

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process.poll() is None


@contextmanager
def hub_process(home: Path, log: Path, identity: Path, **env: str) -> Iterator[HubProcess]:
    """``exchange serve`` on ``home`` with EXCHANGE_* settings from ``env``, answering; killed if left running."""
    port, metrics_port = _free_port(), _free_port()
    environment = {
        **os.environ,
        "EXCHANGE_HOME": str(home),
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        **{f"EXCHANGE_{k.upper()}": v for k, v in env.items()},
    }
    with log.open("ab") as sink:  # a file, not a pipe: a full pipe would block the hub
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli.main", "serve"], cwd=PROJECT, env=environment, stderr=sink
        )
    served = HubProcess(process, replace(base_settings(home), hub_address=f"localhost:{port}"), metrics_port, log)
    try:
        with HubClient(served.settings, identity) as c:
            _wait(c, process, log)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def exported_log(hub: HubProcess, auditor: Path) -> tuple[Report, list[Record]]:
    """The whole audit log, exported by an auditor and verified offline: the report and the records."""
    with HubClient(hub.settings, auditor) as c:
        lines = "".join(chunk.lines for chunk in c.audit.ExportLog(apb.ExportLogRequest(), timeout=60))
    rows = lines.splitlines()
    report = verify_export(rows, Verifier.parse(pki.HubFiles(hub.settings.home).audit_verifier.read_text()))
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in rows[1:] if x.startswith("E\t")) if r]
    return report, records


def answered_in(records: list[Record]) -> set[str]:
    """Exchange ids the log shows as answered: queries with outcome ok, streams with a closing ok."""
    return {
        str(r["exchange_id"])
        for r in records
        if r["kind"] == "exchange" and r["outcome"] == "ok" and r["action"] in {"query", "stream_end"}
    }


def unclosed_streams(records: list[Record]) -> list[str]:
    """Streams that got an ``allowed`` record but no closing ``stream_end``: half-written exchanges."""
    opened = {str(r["exchange_id"]) for r in records if r["action"] == "stream" and r["outcome"] == "allowed"}
    closed = {str(r["exchange_id"]) for r in records if r["action"] == "stream_end"}
    return sorted(opened - closed)


def integrity(database: Path) -> str:
    connection = sqlite3.connect(database)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


# A private PostgreSQL cluster


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own, on a free port, run as ``postgres`` when the test runs as root."""

    root: Path
    port: int
    user: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "exchange") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *command: str) -> None:
        # runuser rather than subprocess's user=: changing user forces a plain fork, which gRPC's threads
        # in this process do not survive.
        as_user = ("runuser", "-u", self.user, "--") if self.user else ()
        done = subprocess.run(
            (*as_user, *command),
            cwd=self.root,
            env={**os.environ, "HOME": str(self.root), "PGPORT": str(self.port)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(command[:2])} failed: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=60"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self, mode: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    user = "postgres" if os.geteuid() == 0 else None
    tools = ("initdb", "pg_ctl", "postgres", "psql", *(("runuser",) if user else ()))
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PostgreSQL fault test skipped: {', '.join(missing)} not on PATH")
    if user is not None:
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            pytest.skip("PostgreSQL fault test skipped: running as root and there is no postgres user to run it as")
    root = Path(tempfile.mkdtemp(prefix="exchange-pg-"))  # not under tmp_path: root's 0700 directories
    if user is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(root, _free_port(), user)
    try:
        cluster.run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        cluster.start()
        cluster.run("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", "CREATE DATABASE exchange")
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# 1. PostgreSQL stopped and started again


def _prepared(home: Path, url: str, directory: Path) -> tuple[Path, Path]:
    """A hub home with the flat-sale members and the granted lookup; (the consumer system's, the auditor's identity)."""
    with running_hub(base_settings(home, url)) as setup:
        world = make_world(setup)
        serve_lookup(world, directory, quota=1_000_000, rate=10_000)
        return world.consumer_system, world.people["auditor"]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_and_restarted_under_load(tmp_path: Path, cluster: Cluster, mode: str) -> None:
    """The store goes away for a few seconds under load (stopped cleanly, or as if it crashed): UNAVAILABLE
    meanwhile, NOT_SERVING, then by itself back to serving; every exchange answered before, during or after is
    in the verified log."""
    home, url = tmp_path / "hub", cluster.url()
    consumer, auditor = _prepared(home, url, tmp_path)
    with hub_process(home, tmp_path / "hub.log", consumer, database_url=url, health_check_seconds="0.2") as hub:
        with HealthWatch(hub.settings, consumer, hub.metrics_port) as health, Load(hub.settings, consumer, 6) as load:
            time.sleep(1.5)
            before = len(load.answered())
            stopped = time.monotonic()
            cluster.stop(mode)
            time.sleep(2.5)
            during = load.since(stopped + 0.5)
            started = time.monotonic()
            cluster.start()
            recovered = _until(RECOVERY_LIMIT, lambda: any(o.code is OK for o in load.since(started)))
            time.sleep(1)
        assert hub.alive(), "the hub exited when its store went away"
        serving = _refused_while_out(load, health, during, stopped, started)
        answered = load.answered()
        assert before > 20 and len(answered) > before
        assert hub.terminate() == 0
    with hub_process(home, tmp_path / "hub.log", consumer, database_url=url) as hub:
        report, records = exported_log(hub, auditor)
    missing = [x for x in answered if x not in answered_in(records)]
    assert missing == [], f"{len(missing)} of {len(answered)} answered exchanges are not in the log"
    refused = sum(o.code is not OK for o in load.outcomes)
    print(
        f"PostgreSQL stopped ({mode}) for 2.5 s: {refused} calls UNAVAILABLE, answering again {recovered:.1f} s "
        f"after it was back (health SERVING at most {1 + serving:.1f} s later); {len(answered)} answered exchanges, "
        f"all in the verified log of {report.entries}"
    )


def test_sigterm_while_the_store_is_down(tmp_path: Path, cluster: Cluster) -> None:
    """Stopped while PostgreSQL is away: a clean exit that says what it could not do, and nothing lost."""
    home, url, log = tmp_path / "hub", cluster.url(), tmp_path / "hub.log"
    consumer, auditor = _prepared(home, url, tmp_path)
    with hub_process(home, log, consumer, database_url=url, shutdown_grace_seconds="1") as hub:
        with Load(hub.settings, consumer, 3) as load:
            time.sleep(1.0)
            cluster.stop("fast")
            time.sleep(1.0)
        answered = load.answered()
        assert hub.terminate() == 0
    assert "the final audit flush failed" in log.read_text(errors="replace")
    assert answered and load.codes() <= {OK, grpc.StatusCode.UNAVAILABLE}
    cluster.start()
    with hub_process(home, log, consumer, database_url=url) as hub:
        _, records = exported_log(hub, auditor)
    missing = [x for x in answered if x not in answered_in(records)]
    assert missing == [], f"{len(missing)} of {len(answered)} answered exchanges are not in the log"


# 2. Providers that hang, reset connections or trickle


HANG = "20301/350200000011"  # the provider's function never returns
SILENT = "20301/350200000012"  # connections are accepted and never answered
RESET = "20301/350200000013"  # connections are reset at once
SLOW = "20301/350200000014"  # a record every half second
CUT = "20301/350200000015"  # connections are cut after some megabytes
TEXT = "合" * 340  # about 1 KiB a record


class Faulty:
    """The housing department's provider, which misbehaves as each resource's name says."""

    def __init__(self) -> None:
        self.hanging = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.provider = Provider()
        self.provider.records(HANG)(self.hang)
        self.provider.records(SLOW)(self.slow)
        self.provider.records(CUT)(self.many)

    def hang(self, q: ProviderQuery) -> Iterator[dict[str, object]]:
        with self._lock:
            self.hanging += 1
        while q.active() and not self.release.wait(0.1):
            pass
        return iter([])

    def slow(self, q: ProviderQuery) -> Iterator[dict[str, object]]:
        for n in range(1 if q.filters["batch"] == "one" else 100):
            if self.release.wait(0.5) or not q.active():
                return
            yield {"contract_no": f"XM{n:08d}", "text": "第一条"}

    def many(self, q: ProviderQuery) -> Iterator[dict[str, object]]:
        return ({"contract_no": f"XM{n:08d}", "text": TEXT} for n in range(20_000))


class Breaker:
    """A TCP proxy in front of a provider that breaks its connections.

    ``reset``: each connection is reset (RST) as soon as it is accepted; ``silent``: accepted and never
    answered; ``cut``: traffic passes until ``cut`` is set, then both sides are reset.
    """

    def __init__(self, mode: str, upstream: int = 0) -> None:
        self.mode, self._upstream = mode, upstream
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for held in self._held:
            held.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "reset":
                _reset(connection)
            elif self.mode == "silent":
                self._held.append(connection)
            else:
                threading.Thread(target=self._pipe, args=(connection,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        """Both directions on one thread, so that the reset at the end meets no recv() in another."""
        upstream = socket.create_connection(("127.0.0.1", self._upstream))
        try:
            while not self._closed.is_set() and not self.cut.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (client if source is upstream else upstream).sendall(data)
        except OSError:
            pass
        finally:
            _reset(client)
            _reset(upstream)


def _reset(connection: socket.socket) -> None:
    """Closes with SO_LINGER 0: the peer gets a RST, not an orderly end."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass


@dataclass(frozen=True)
class Case:
    """Calls of one kind to one faulty resource, and how each must end."""

    resource: str
    stream: bool
    calls: int
    code: grpc.StatusCode
    batch: str = "many"


CASES = (
    Case(HANG, False, 6, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(HANG, True, 4, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(SILENT, False, 3, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(SILENT, True, 2, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(RESET, False, 4, grpc.StatusCode.UNAVAILABLE),
    Case(RESET, True, 2, grpc.StatusCode.UNAVAILABLE),
    Case(SLOW, False, 3, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(SLOW, True, 2, grpc.StatusCode.DEADLINE_EXCEEDED),
    Case(SLOW, False, 1, OK, batch="one"),  # slow, but within its binding's timeout
    Case(CUT, True, 1, grpc.StatusCode.UNAVAILABLE),  # cut once its first batch arrived
)
# The hanging and silent providers are given long enough to be seen in flight while others are served.
LONG_TIMEOUT, SHORT_TIMEOUT = 6, 2


def _bind_faulty(world: World, provider_port: int, breakers: dict[str, Breaker]) -> None:
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING),
        m.DataItem("batch", "批次", m.FieldType.STRING, filterable=True),
        m.DataItem("text", "条款", m.FieldType.STRING),
    )
    for code in (HANG, SILENT, RESET, SLOW, CUT):
        world.publish("housing", identity_spec(code, HOUSING.code, data_items=items, name=f"合同 {code[-2:]}"))
        port = breakers[code].port if code in breakers else provider_port
        timeout = LONG_TIMEOUT if code in {HANG, SILENT} else SHORT_TIMEOUT
        target = cpb.GrpcBackend(target=f"127.0.0.1:{port}", system_code="zj-wqba")
        world.bind("housing", cpb.Binding(resource_code=code, grpc=target, timeout_seconds=timeout))
        world.grant(code, ("contract_no", "batch", "text"), "housing")


@pytest.fixture
def bounded_hub(tmp_path: Path) -> Iterator[RunningHub]:
    """A hub with few worker threads: calls that held one while a provider hangs would starve the others."""
    with running_hub(base_settings(tmp_path / "hub", worker_threads=4)) as hub:
        yield hub


def test_hanging_resetting_and_slow_providers_are_contained(bounded_hub: RunningHub, tmp_path: Path) -> None:
    world = make_world(bounded_hub)
    serve_lookup(world, tmp_path, quota=1_000_000, rate=10_000)
    faulty = Faulty()
    server, provider_port = serve(faulty.provider, "127.0.0.1:0", bounded_hub.add_system("zj-wqba", HOUSING.code), 64)
    breakers = {
        SILENT: Breaker("silent"),
        RESET: Breaker("reset"),
        CUT: Breaker("cut", provider_port),
    }
    pool = ThreadPoolExecutor(max_workers=64)
    try:
        _bind_faulty(world, provider_port, breakers)
        stub = world.exchange()
        calls: list[tuple[Case, Future[Outcome]]] = []
        for case in CASES:
            request = query(case.resource, {"batch": case.batch}, ["contract_no", "text"], batch_size=100)
            cut = breakers[CUT].cut.set if case.resource == CUT else None
            for _ in range(case.calls):
                calls.append((case, pool.submit(ask, stub, request, stream=case.stream, first=cut, pace=0.05)))
        hanging = [f for case, f in calls if case.resource in {HANG, SILENT}]
        _until(15, lambda: faulty.hanging == 10)
        # Meanwhile the healthy provider answers every call, while every hanging call is still in flight.
        healthy = [pool.submit(ask, world.exchange(), lookup()) for _ in range(24)]
        served = [f.result(timeout=60) for f in healthy]
        still_hanging = sum(not f.done() for f in hanging)
        outcomes = [(case, f.result(timeout=60)) for case, f in calls]
    finally:
        faulty.release.set()
        pool.shutdown(wait=True)
        for breaker in breakers.values():
            breaker.close()
        server.stop(0).wait()
    assert [o.code for o in served] == [OK] * len(served)
    assert still_hanging == len(hanging), "the healthy provider's calls waited for the hanging ones"
    for case, outcome in outcomes:
        assert outcome.code is case.code, (case, outcome)
        if case.code is not OK:
            assert HOUSING.code in outcome.details and case.resource in outcome.details, (case, outcome)
    assert all(o.batches > 0 for c, o in outcomes if c.resource == CUT), "the cut stream broke before any batch"
    records = _in_process_log(bounded_hub, sum(c.calls for c in CASES) + len(served))
    expected: Counter[tuple[str, str, str]] = Counter()
    for case in CASES:
        ending = ("stream_end" if case.stream else "query", "ok" if case.code is OK else "failed")
        expected[(case.resource, *ending)] += case.calls
    faulty_ends = [r for r in records if r["resource"] != LOOKUP and r["action"] in {"query", "stream_end"}]
    assert Counter((str(r["resource"]), str(r["action"]), str(r["outcome"])) for r in faulty_ends) == expected
    assert all(HOUSING.code in str(r["reason"]) for r in faulty_ends if r["outcome"] == "failed")
    assert unclosed_streams(records) == []
    assert {o.exchange_id for o in served} <= answered_in(records)
    print(
        f"{len(outcomes)} calls to faulty providers ended as expected, {still_hanging} hanging calls still in flight "
        f"while {len(served)} calls to the healthy provider were answered"
    )


def _in_process_log(hub: RunningHub, exchanges: int) -> list[Record]:
    """The verified log of an in-process hub, once it holds the final records of ``exchanges`` exchanges."""
    verifier = Verifier.parse(hub.files.audit_verifier.read_text())

    def records() -> list[Record]:
        hub.hub.audit.flush()
        lines = list(export_lines(hub.hub.store.audit, verifier))
        verify_export(lines, verifier)
        return [json.loads(r) for r in (parse_entry_line(x)[2] for x in lines[1:] if x.startswith("E\t")) if r]

    found: list[Record] = []

    def complete() -> bool:
        found[:] = records()
        final = {str(r["exchange_id"]) for r in found if r["kind"] == "exchange" and r["outcome"] != "allowed"}
        return len(final) >= exchanges

    _until(15, complete)
    return found


# 3. The SQLite store's disk filled up


@contextmanager
def small_disk(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``mountpoint`` for the block; skips the test where mounting is not allowed."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("disk-full test skipped: mounting a small file system needs root and mount")
    mountpoint.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"disk-full test skipped: cannot mount a tmpfs ({mounted.stderr.strip()})")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Writes a file in ``directory`` until its file system has no space left; the file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 64 << 10, 4 << 10, 512):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_a_full_disk_refuses_calls_until_space_is_freed(tmp_path: Path) -> None:
    """The SQLite store's file system fills up under load: UNAVAILABLE and NOT_SERVING meanwhile, then serving
    again by itself once space is freed; the database passes its integrity check and the log holds every
    answered exchange."""
    with small_disk(tmp_path / "hub", "32m") as home:  # room enough that what is freed is not refilled at once
        consumer, auditor = _prepared(home, "", tmp_path)
        with hub_process(home, tmp_path / "hub.log", consumer, health_check_seconds="0.2") as hub:
            with (
                HealthWatch(hub.settings, consumer, hub.metrics_port) as health,
                Load(hub.settings, consumer, 4) as load,
            ):
                time.sleep(1.5)
                before = len(load.answered())
                filled = time.monotonic()
                filler = fill(home)
                refused = _until(RECOVERY_LIMIT, lambda: any(o.code is not OK for o in load.since(filled)))
                time.sleep(3)
                full = load.since(filled + refused + 1)
                freed = time.monotonic()
                filler.unlink()
                recovered = _until(RECOVERY_LIMIT, lambda: any(o.code is OK for o in load.since(freed)))
                time.sleep(1)
            assert hub.alive(), "the hub exited when its disk filled up"
            serving = _refused_while_out(load, health, full, filled, freed)
            answered = load.answered()
            assert before > 20 and len(answered) > before
            assert hub.terminate() == 0
        with hub_process(home, tmp_path / "hub.log", consumer) as hub:
            report, records = exported_log(hub, auditor)
            assert hub.terminate() == 0
        assert integrity(home / "exchange.db") == "ok"
    missing = [x for x in answered if x not in answered_in(records)]
    assert missing == [], f"{len(missing)} of {len(answered)} answered exchanges are not in the log"
    print(
        f"disk full: refusing after {refused:.1f} s, {sum(o.code is not OK for o in load.outcomes)} calls "
        f"UNAVAILABLE; answering again {recovered:.1f} s after space was freed (health SERVING at most "
        f"{1 + serving:.1f} s later); {len(answered)} answered "
        f"exchanges, all in the verified log of {report.entries}; integrity_check ok"
    )


# 4. SIGTERM under load

BULK = "10101/350200000009"


def serve_bulk(world: World, directory: Path, short: int, long: int) -> tuple[xpb.QueryRequest, ...]:
    """A police resource of records of about 1 KiB in a front-end database, granted to the registry: requests
    to stream ``long`` of them (batch "long") and ``short`` of them (batch "short"), 200 a batch."""
    url = f"sqlite:///{directory / 'ga-bulk.db'}"
    with sqlite3.connect(directory / "ga-bulk.db") as c:
        c.execute("CREATE TABLE rk (name TEXT, batch TEXT)")
        rows = [(f"{n:06d}{TEXT}", "short" if n < short else "long") for n in range(short + long)]
        c.executemany("INSERT INTO rk VALUES (?, ?)", rows)
    c.close()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("batch", "批次", m.FieldType.STRING, filterable=True),
    )
    world.publish("police", identity_spec(BULK, POLICE.code, data_items=items, name="人口批量"))
    world.bind("police", cpb.Binding(resource_code=BULK, sql=cpb.SqlBackend(url=url, table="rk")))
    world.grant(BULK, ("name", "batch"), "police", quota=1_000_000, rate=10_000)
    return tuple(query(BULK, {"batch": size}, ["name"], batch_size=200) for size in ("long", "short"))


def test_sigterm_under_load_ends_calls_cleanly_and_leaves_a_complete_log(tmp_path: Path) -> None:
    """Queries and slowly read streams in flight when SIGTERM comes: each ends OK, UNAVAILABLE or CANCELLED, the
    process exits 0, and after a restart every answered exchange is in the verified log and every stream closed."""
    home = tmp_path / "hub"
    with running_hub(base_settings(home)) as setup:
        world = make_world(setup)
        serve_lookup(world, tmp_path, quota=1_000_000, rate=10_000)
        streams = serve_bulk(world, tmp_path, 1_000, 40_000)
        consumer, auditor = world.consumer_system, world.people["auditor"]
    grace = 1.5
    with (
        hub_process(home, tmp_path / "hub.log", consumer, shutdown_grace_seconds=str(grace)) as hub,
        Load(hub.settings, consumer, 6, streams=streams, pace=0.05) as load,
    ):
        time.sleep(2.5)
        signalled = time.monotonic()
        hub.process.send_signal(signal.SIGTERM)
        code = hub.process.wait(timeout=grace + 30)
        exited = time.monotonic() - signalled
    assert code == 0, hub.log.read_text()[-3000:]
    in_flight = [o for o in load.outcomes if o.started < signalled < o.ended]
    assert load.codes() <= {OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, load.codes()
    answered = load.answered()
    streamed = [o for o in load.outcomes if o.batches > 0]
    assert len(answered) > 20 and streamed and in_flight
    with hub_process(home, tmp_path / "hub.log", consumer) as hub:
        report, records = exported_log(hub, auditor)
        assert hub.terminate() == 0
    assert integrity(home / "exchange.db") == "ok"
    missing = [x for x in answered if x not in answered_in(records)]
    assert missing == [], f"{len(missing)} of {len(answered)} answered exchanges are not in the log"
    assert unclosed_streams(records) == []
    cut = [o for o in streamed if o.code is not OK]
    assert cut and any(o.code is OK for o in streamed), "no stream was cut short, or none finished"
    assert {o.exchange_id for o in cut} <= {str(r["exchange_id"]) for r in records if r["action"] == "stream_end"}
    print(
        f"SIGTERM with {len(in_flight)} calls in flight ({len([o for o in in_flight if o.code is OK])} finished OK): "
        f"exit 0 after {exited:.1f} s; {len(answered)} answered exchanges all in the verified log of "
        f"{report.entries}, every stream closed, {len(cut)} cut short"
    )
