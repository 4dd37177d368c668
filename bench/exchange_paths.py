"""The cost of the hub: one consumer, one provider, three paths to the same records, measured in one run.

Run: .venv/bin/python bench/exchange_paths.py [--quick] [--seconds 5] [--json FILE] [--profile DIR] [--check]

- direct: the consumer calls the provider's ProviderService (the provider kit, ``adapters.provider``)
  over mutual TLS, presenting the hub's certificate (the provider admits only the hub);
- proxy: the same calls through a bare pass-through gRPC proxy (grpc.aio, a generic handler that
  forwards the request's bytes and relays the response's bytes; mutual TLS on both legs);
- hub: the consumer system bdc-djxt calls the hub's ExchangeService (Query, StreamQuery) with a grant
  that masks two personal fields; the hub authenticates, decides, fetches through its gRPC backend
  from the same provider, masks, digests and commits the audit records, as in production.

Each runs in its own process (provider, proxy, load generator; the hub in this one), one path at a
time, each warmed up first. Measured per path: calls/s with 64 calls in flight (one record per call;
for direct and proxy a call is one Lookup, the call the hub makes), latency at a fixed 300 calls/s (open
loop: calls start on schedule, latency counts from the scheduled time), and MiB/s of one stream of
50,000 records of ~1 KiB. The hub is held to issue 17's targets (GOALS); --check makes a missed one
the exit status (1; 2 when a path had errors or a target could not be measured). Also shown:
the CPU time the process in the middle (proxy or hub) and the provider used per call and per GiB
streamed, read from /proc while measuring, and the share of the machine's CPU the host gave other guests
(steal; over 5% the run says the host is oversubscribed). --profile DIR records the hub with py-spy (if installed)
during its measurements, sampling only the thread holding the GIL, and prints the top functions.
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
import collections
import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from adapters.provider import Provider, ProviderQuery, Row, serve
from exchange import models as m
from exchange import pki
from exchange.paging import DEFAULT_PAGE_SIZE
from exchange.server import heap
from exchange.services.exchange import MAX_BATCH_SIZE
from exchange.services.rights import MAX_DAILY_CALLS, MAX_RATE
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import provider_pb2
from exchange.v1 import rights_pb2 as rpb
from exchange.values import record_to_wire, to_wire
from tests.exchange_world import PURPOSE, World, make_world
from tests.harness import HOUSING, base_settings, identity_spec, running_hub

SYSTEM = "zj-wqba"
RESOURCE = "20301/350200000001"
FIELDS = (
    "contract_no",
    "property_address",
    "seller_name",
    "buyer_name",
    "buyer_id_number",
    "price",
    "filed_on",
    "remarks",
)
MASKS = (("buyer_name", rpb.MASK_KIND_NAME), ("buyer_id_number", rpb.MASK_KIND_ID_NUMBER))
ONE = "XM2026-000123"  # the contract a unary call asks for
BULK = "BULK-"  # BULK-<n>: n contracts, for streams
POOL = 1000  # distinct rows the provider cycles through
PAGE_LIMIT = DEFAULT_PAGE_SIZE + 1  # what the hub asks a provider for on a Query of the default page (and one more)
MAX_MESSAGE = 16 << 20
CALL_TIMEOUT = 60.0
FETCH = "/exchange.v1.ProviderService/Fetch"
LOOKUP = "/exchange.v1.ProviderService/Lookup"
QUERY = "/exchange.v1.ExchangeService/Query"
STREAM_QUERY = "/exchange.v1.ExchangeService/StreamQuery"
PATHS = ("direct", "proxy", "hub")
LINE_NUMBER = re.compile(r":\d+\)$")
PROJECT_FRAME = re.compile(r"\((exchange|audit|policy|adapters)/")

log = logging.getLogger("bench.exchange")


# The provider (own process)


def contract(n: int, remarks: str) -> dict[str, object]:
    """The n-th filed sale contract, as the department's function returns it."""
    return {
        "contract_no": f"XM2026-{n:06d}",
        "property_address": f"思明区湖滨南路{n % 300 + 1}号{n % 7 + 1}梯{n % 30 + 1:02d}03室",
        "seller_name": "陈美玲",
        "buyer_name": "林志强",
        "buyer_id_number": f"350203198507{n % 10000:04d}13"[:18],
        "price": Decimal(f"{3_000_000 + n * 37}.50"),
        "filed_on": dt.date(2026, 1, 1) + dt.timedelta(days=n % 300),
        "remarks": remarks,
    }


def sized_contract(n: int, size: int) -> dict[str, object]:
    """A contract whose wire record is ``size`` bytes or just under, padded by its remarks."""
    text = f"第{n}号合同：买卖双方已签订网签合同，资金监管协议编号 ZJ-{n:08d}，房屋无查封、无抵押。" * 40
    low, high = 0, len(text)
    while low < high:  # the longest prefix of the text that fits
        middle = (low + high + 1) // 2
        if record_to_wire(contract(n, text[:middle])).ByteSize() <= size:
            low = middle
        else:
            high = middle - 1
    return contract(n, text[:low])


def provider_main(conn: Connection, identity: str, record_bytes: int, workers: int) -> None:
    """Serves the contracts with zj-wqba's identity until told to stop; sends the port first."""
    logging.basicConfig(level=logging.WARNING)
    pool = [sized_contract(n, record_bytes) for n in range(POOL)]
    one = contract(123, "合同已备案")
    provider = Provider()

    @provider.records(RESOURCE)
    def contracts(query: ProviderQuery) -> Iterator[Row]:
        wanted = str(query.filters.get("contract_no", ""))
        if not wanted.startswith(BULK):
            yield one
            return
        for n in range(int(wanted.removeprefix(BULK))):
            yield pool[n % POOL]

    server, port = serve(provider, "127.0.0.1:0", Path(identity), max_workers=workers)
    heap.settle()  # see load_main
    conn.send(port)
    conn.recv()
    server.stop(grace=1).wait()


# The pass-through proxy (own process)


def _shapes() -> dict[str, bool]:
    """Each ProviderService method's path, and whether it answers with a stream."""
    service = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"]
    return {f"/{service.full_name}/{method.name}": method.server_streaming for method in service.methods}


if TYPE_CHECKING:
    GenericHandler = grpc.GenericRpcHandler[bytes, bytes]
else:
    GenericHandler = grpc.GenericRpcHandler


class Forwarder(GenericHandler):
    """Forwards each call's request bytes to the upstream channel and relays the answer's bytes, unparsed."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        for method, streaming in _shapes().items():
            self._handlers[method] = (
                self._relay_stream(upstream, method) if streaming else self._relay(upstream, method)
            )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return self._handlers.get(handler_call_details.method)

    @staticmethod
    def _relay(upstream: grpc.aio.Channel, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        forward = upstream.unary_unary(method, request_serializer=None, response_deserializer=None)

        async def relay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            try:
                answer: bytes = await forward(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")
            return answer

        return grpc.unary_unary_rpc_method_handler(relay)

    @staticmethod
    def _relay_stream(upstream: grpc.aio.Channel, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        forward = upstream.unary_stream(method, request_serializer=None, response_deserializer=None)

        async def relay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
            call = forward(request, timeout=context.time_remaining())
            try:
                async for message in call:
                    yield message
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")
            finally:
                call.cancel()

        return grpc.unary_stream_rpc_method_handler(relay)


def proxy_main(conn: Connection, upstream: Target) -> None:
    """Serves the proxy with the hub's certificate, forwarding to ``upstream`` with it; sends the port first."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_proxy(conn, upstream))


async def _proxy(conn: Connection, upstream: Target) -> None:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    channel = secure_channel(upstream)
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((Forwarder(channel),))
    credentials = grpc.ssl_server_credentials(
        [(upstream.key, upstream.cert)], root_certificates=upstream.ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    heap.settle()  # the baseline's heap set aside from full collections, as the hub's is
    conn.send(port)
    await asyncio.to_thread(conn.recv)
    await server.stop(grace=1)
    await channel.close(None)


# The load generator (own process)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a path's calls go and with which certificate; ``hub``: ExchangeService, else ProviderService."""

    path: str
    address: str
    hostname: str
    key: bytes
    cert: bytes
    ca: bytes
    hub: bool


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: ``closed`` (calls in flight), ``open`` (calls a second) or ``stream``."""

    target: Target
    kind: str
    seconds: float
    warmup: float
    concurrency: int = 64
    rate: float = 300.0
    records: int = 0
    batch_size: int = 0


@dataclasses.dataclass
class Outcome:
    calls: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    records: int = 0
    bytes: int = 0
    first_error: str = ""


class Caller:
    """The consumer's calls on one path, with requests serialized once and answers parsed as a consumer would."""

    def __init__(self, target: Target, channel: grpc.aio.Channel, batch_size: int) -> None:
        self.target = target
        self._batch_size = batch_size
        if target.hub:
            self._query = channel.unary_unary(QUERY, request_serializer=None, response_deserializer=None)
            self._stream = channel.unary_stream(STREAM_QUERY, request_serializer=None, response_deserializer=None)
            one = xpb.QueryRequest(resource_code=RESOURCE, purpose=PURPOSE, filters={"contract_no": ONE}, fields=FIELDS)
            self._one = one.SerializeToString()
        else:
            self._stream = channel.unary_stream(FETCH, request_serializer=None, response_deserializer=None)
            self._lookup = channel.unary_unary(LOOKUP, request_serializer=None, response_deserializer=None)
            self._one = self._fetch(ONE, PAGE_LIMIT)

    def _bulk(self, records: int) -> bytes:
        if not self.target.hub:
            return self._fetch(f"{BULK}{records}", 0)
        filters = {"contract_no": f"{BULK}{records}"}
        request = xpb.QueryRequest(
            resource_code=RESOURCE, purpose=PURPOSE, filters=filters, fields=FIELDS, batch_size=self._batch_size
        )
        return request.SerializeToString()

    @staticmethod
    def _fetch(contract_no: str, limit: int) -> bytes:
        request = provider_pb2.ProviderFetchRequest(
            resource_code=RESOURCE, filters={"contract_no": to_wire(contract_no)}, fields=FIELDS, limit=limit
        )
        return request.SerializeToString()

    async def unary(self) -> xpb.QueryResponse | provider_pb2.ProviderBatch:
        """One call for one record: Query on the hub, Lookup on the provider (the call the hub makes)."""
        if self.target.hub:
            raw: bytes = await self._query(self._one, timeout=CALL_TIMEOUT)
            answer = xpb.QueryResponse.FromString(raw)
            if len(answer.records) != 1:
                raise RuntimeError(f"expected one record, got {len(answer.records)}")
            return answer
        batch = provider_pb2.ProviderBatch.FromString(await self._lookup(self._one, timeout=CALL_TIMEOUT))
        if len(batch.records) != 1:
            raise RuntimeError(f"expected one record, got {len(batch.records)}")
        return batch

    async def stream(self, records: int) -> tuple[int, int]:
        """One stream of ``records`` records read to its end: (records, bytes received)."""
        count = size = 0
        async for raw in self._stream(self._bulk(records), timeout=CALL_TIMEOUT * 10):
            size += len(raw)
            if self.target.hub:
                batch = xpb.QueryBatch.FromString(raw)
                count += len(batch.records)
                if batch.last and batch.total_records != records:
                    raise RuntimeError(f"the hub counted {batch.total_records} records, not {records}")
            else:
                count += len(provider_pb2.ProviderBatch.FromString(raw).records)
        if count != records:
            raise RuntimeError(f"expected {records} records, got {count}")
        return count, size


def secure_channel(target: Target) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=target.ca, private_key=target.key, certificate_chain=target.cert
    )
    options = [
        ("grpc.ssl_target_name_override", target.hostname),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    return grpc.aio.secure_channel(target.address, credentials, options=options)


async def _timed(call: Callable[[], Awaitable[object]], out: Outcome, since: float | None = None) -> None:
    started = time.perf_counter() if since is None else since
    try:
        await call()
    except (grpc.aio.AioRpcError, RuntimeError) as e:
        out.errors += 1
        out.first_error = out.first_error or str(e)[:300]
        return
    out.calls += 1
    out.latencies_ms.append((time.perf_counter() - started) * 1000)


async def closed_loop(caller: Caller, seconds: float, concurrency: int) -> Outcome:
    """``concurrency`` callers, each starting its next call when its last one ends, for ``seconds``."""
    out = Outcome()
    started = time.perf_counter()
    stop = started + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            await _timed(caller.unary, out)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.elapsed = time.perf_counter() - started
    return out


async def open_loop(caller: Caller, seconds: float, rate: float) -> Outcome:
    """Calls started every 1/rate s whatever the answers; each latency counts from the call's scheduled time."""
    out = Outcome()
    interval, count = 1 / rate, max(1, int(seconds * rate))
    started = time.perf_counter() + 0.01
    calls: list[asyncio.Task[None]] = []
    for n in range(count):
        scheduled = started + n * interval
        wait = scheduled - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        calls.append(asyncio.create_task(_timed(caller.unary, out, scheduled)))
    await asyncio.gather(*calls)
    out.elapsed = time.perf_counter() - started
    return out


async def streams(caller: Caller, seconds: float, records: int) -> Outcome:
    """Streams of ``records`` records one after another, at least one, until ``seconds`` have passed."""
    out = Outcome()
    started = time.perf_counter()
    while out.calls == 0 or time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        count, size = await caller.stream(records)
        out.calls += 1
        out.records += count
        out.bytes += size
        out.latencies_ms.append((time.perf_counter() - begun) * 1000)
    out.elapsed = time.perf_counter() - started
    return out


async def run_job(job: Job, warm: Callable[[], None]) -> Outcome:
    """Warms up (streams: one stream of a tenth of the records), calls ``warm``, then measures."""
    channel = secure_channel(job.target)
    try:
        caller = Caller(job.target, channel, job.batch_size)
        if job.kind == "stream":
            await caller.stream(max(1, job.records // 10))
            warm()
            return await streams(caller, job.seconds, job.records)
        await closed_loop(caller, job.warmup, job.concurrency)
        warm()
        if job.kind == "open":
            return await open_loop(caller, job.seconds, job.rate)
        return await closed_loop(caller, job.seconds, job.concurrency)
    finally:
        await channel.close(None)


def load_main(conn: Connection) -> None:
    """Runs the jobs sent until None comes; sends "warm" after each warm-up, then its Outcome (or the error)."""
    logging.basicConfig(level=logging.WARNING)
    # What this process imported (the whole project, ~150,000 objects) is set aside from the collector's full
    # passes, as the hub sets aside its own: a full pass over it took 60-90 ms, and calls scheduled meanwhile
    # started late, so the pause counted as the path's latency at 300/s (one such pause was most of the hub's p99).
    heap.settle()
    conn.send("ready")
    with asyncio.Runner() as runner:
        while (job := conn.recv()) is not None:
            try:
                conn.send(runner.run(run_job(job, functools.partial(conn.send, "warm"))))
            except Exception as e:  # reported by the parent
                conn.send(f"{type(e).__name__}: {e}")


async def probe(target: Target) -> tuple[dict[str, object], ...]:
    """The one record a unary call returns on ``target``, as plain values."""
    channel = secure_channel(target)
    try:
        answer = await Caller(target, channel, 0).unary()
    finally:
        await channel.close(None)
    records = answer.records
    return tuple({name: plain(value) for name, value in r.fields.items()} for r in records)


def plain(value: Any) -> object:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


# The run (the hub in this process)


class Child:
    """A process started with one end of a pipe; its first message is its port (or 'ready'); None stops it."""

    def __init__(self, ctx: Any, target: Callable[..., None], *args: object) -> None:
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()
        theirs.close()
        if not self.conn.poll(60):
            self.process.kill()
            raise RuntimeError(f"{target.__name__} did not start")
        self.first: object = self.conn.recv()
        self.pid: int = self.process.pid

    def stop(self) -> None:
        with suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@contextmanager
def child(ctx: Any, target: Callable[..., None], *args: object) -> Iterator[Child]:
    started = Child(ctx, target, *args)
    try:
        yield started
    finally:
        started.stop()


class Profiler(Protocol):
    def __call__(self, name: str, seconds: float) -> subprocess.Popen[bytes] | None: ...


def py_spy(directory: Path | None) -> Profiler:
    """Records this process (the hub) with py-spy while a hub measurement runs, when asked to and installed."""
    binary = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if directory is not None and binary is None:
        print("--profile: py-spy is not installed (.venv/bin/pip install py-spy); not profiling", file=sys.stderr)

    def start(name: str, seconds: float) -> subprocess.Popen[bytes] | None:
        if directory is None or binary is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        command = [binary, "record", "--pid", str(os.getpid()), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "200", "--format", "raw", "--nonblocking", "--gil", "--output", str(directory / name)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603

    return start


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(share * len(ordered)))) - 1]


@dataclasses.dataclass
class PathResult:
    rps: float = float("nan")
    closed_p50_ms: float = float("nan")
    closed_p99_ms: float = float("nan")
    open_rate: float = float("nan")
    open_p50_ms: float = float("nan")
    open_p99_ms: float = float("nan")
    open_p999_ms: float = float("nan")
    open_max_ms: float = float("nan")
    stream_mib_s: float = float("nan")
    stream_records_s: float = float("nan")
    stream_seconds: float = float("nan")
    # CPU of the process in the middle (proxy or hub) and of the provider: ms per unary call, s per streamed GiB
    middle_ms_per_call: float = float("nan")
    provider_ms_per_call: float = float("nan")
    middle_s_per_gib: float = float("nan")
    provider_s_per_gib: float = float("nan")
    # The load generator's CPU ms per unary call, and the share of the machine's CPU left idle meanwhile:
    # with everything on one machine, calls/s at 64 in flight is bounded by the sum of all three processes.
    load_ms_per_call: float = float("nan")
    # The hub's audit integrator process (audit_integrator = "process"), ms per unary call; 0 when it is a
    # thread of the hub's process (counted in middle_ms_per_call then).
    integrator_ms_per_call: float = 0.0
    idle_share: float = float("nan")
    # The highest share of the machine's CPU taken by other guests of the host (steal) in any of the path's
    # measurements: over a few percent, the host is oversubscribed and its absolute numbers mean little.
    steal_share: float = 0.0
    errors: int = 0
    first_error: str = ""


def record(result: PathResult, kind: str, out: Outcome, cpu: dict[str, float]) -> None:
    result.errors += out.errors
    result.first_error = result.first_error or out.first_error
    result.steal_share = max(result.steal_share, cpu.get("steal", 0.0))
    nan = float("nan")
    if kind == "closed":
        result.middle_ms_per_call = cpu.get("middle", nan) / max(1, out.calls) * 1000
        result.provider_ms_per_call = cpu.get("provider", nan) / max(1, out.calls) * 1000
        result.load_ms_per_call = cpu.get("load", nan) / max(1, out.calls) * 1000
        result.integrator_ms_per_call = cpu.get("integrator", 0.0) / max(1, out.calls) * 1000
        result.idle_share = cpu.get("idle", nan)
        result.rps = out.calls / out.elapsed
        result.closed_p50_ms = percentile(out.latencies_ms, 0.50)
        result.closed_p99_ms = percentile(out.latencies_ms, 0.99)
    elif kind == "open":
        result.open_rate = out.calls / out.elapsed
        result.open_p50_ms = percentile(out.latencies_ms, 0.50)
        result.open_p99_ms = percentile(out.latencies_ms, 0.99)
        result.open_p999_ms = percentile(out.latencies_ms, 0.999)
        result.open_max_ms = max(out.latencies_ms, default=float("nan"))
    else:
        result.stream_mib_s = out.bytes / out.elapsed / (1 << 20)
        result.stream_records_s = out.records / out.elapsed
        result.stream_seconds = out.elapsed / max(1, out.calls)
        result.middle_s_per_gib = cpu.get("middle", nan) / max(1, out.bytes) * (1 << 30)
        result.provider_s_per_gib = cpu.get("provider", nan) / max(1, out.bytes) * (1 << 30)


def ratios(results: dict[str, PathResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for a, b in (("hub", "proxy"), ("proxy", "direct"), ("hub", "direct")):
        if a in results and b in results:
            out[f"{a}/{b} rps"] = _ratio(results[a].rps, results[b].rps)
            out[f"{a}/{b} stream"] = _ratio(results[a].stream_mib_s, results[b].stream_mib_s)
            out[f"{a}-{b} p99 ms"] = results[a].open_p99_ms - results[b].open_p99_ms
    return out


@dataclasses.dataclass(frozen=True)
class Goal:
    """One of issue 17's targets: a value computed from the hub's and the proxy's results, held to a bound.

    ``at_least``: the value must be >= ``threshold``, else <= it. ``stretch``: a further bound, shown, never
    enforced. ``name`` may hold ``{rate}``, the open-loop calls a second.
    """

    name: str
    how: str
    value: Callable[[PathResult, PathResult], float]
    threshold: float
    at_least: bool
    unit: str
    stretch: float | None = None

    def label(self, rate: float) -> str:
        return self.name.format(rate=f"{rate:g}")

    def bound(self, threshold: float) -> str:
        return f"{'>=' if self.at_least else '<='} {threshold:.2f} {self.unit}"

    def meets(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.at_least else value <= threshold


def _ratio(a: float, b: float) -> float:
    """a / b; NaN when b is zero (or either is NaN), so that a missing measurement never passes."""
    return a / b if b else float("nan")


GOALS: tuple[Goal, ...] = (
    Goal(
        "hub calls/s",
        "hub / proxy calls/s, closed loop",
        lambda hub, proxy: _ratio(hub.rps, proxy.rps),
        0.6,
        at_least=True,
        unit="x proxy",
        stretch=0.8,
    ),
    Goal(
        "hub CPU per query",
        "hub processes' CPU ms (serving + audit integrator) / calls, closed loop",
        lambda hub, proxy: hub.middle_ms_per_call + hub.integrator_ms_per_call,
        1.0,
        at_least=False,
        unit="ms",
    ),
    Goal(
        "hub p99 over proxy p99 at {rate}/s",
        "hub p99 - proxy p99, open loop",
        lambda hub, proxy: hub.open_p99_ms - proxy.open_p99_ms,
        5.0,
        at_least=False,
        unit="ms",
    ),
    Goal(
        "hub stream MiB/s",
        "hub / proxy MiB/s, one stream at a time",
        lambda hub, proxy: _ratio(hub.stream_mib_s, proxy.stream_mib_s),
        0.8,
        at_least=True,
        unit="x proxy",
    ),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A goal's value in one run; ``met`` is None when the value could not be measured (NaN)."""

    goal: Goal
    value: float

    @property
    def measured(self) -> bool:
        return not math.isnan(self.value)

    @property
    def met(self) -> bool | None:
        return self.goal.meets(self.value, self.goal.threshold) if self.measured else None

    @property
    def stretch_met(self) -> bool | None:
        if self.goal.stretch is None or not self.measured:
            return None
        return self.goal.meets(self.value, self.goal.stretch)

    def missed_by(self) -> str:
        """How far the value is on the wrong side of the threshold, e.g. "short by 0.24 x proxy"."""
        gap = abs(self.value - self.goal.threshold)
        return f"{'short' if self.goal.at_least else 'over'} by {gap:.2f} {self.goal.unit}"


def evaluate(results: dict[str, PathResult], goals: Sequence[Goal] = GOALS) -> list[Verdict]:
    """Each goal's verdict on the hub against the proxy; none when either path was not measured."""
    if "hub" not in results or "proxy" not in results:
        return []
    return [Verdict(goal, goal.value(results["hub"], results["proxy"])) for goal in goals]


def check_status(results: dict[str, PathResult], verdicts: Sequence[Verdict], rate: float) -> tuple[int, list[str]]:
    """--check's exit status and its reasons: 2 when a path is missing, had errors or a goal could not be
    measured; else 1 when a goal was missed; else 0. The stretch bounds never count."""
    problems = [f"{path}: not measured" for path in PATHS if path not in results]
    problems += [f"{path}: {r.errors} calls failed (first: {r.first_error})" for path, r in results.items() if r.errors]
    problems += [f"{v.goal.label(rate)}: could not be measured (NaN)" for v in verdicts if not v.measured]
    missed = [
        f"MISSED {v.goal.label(rate)}: {v.value:.2f} {v.goal.unit}, needs {v.goal.bound(v.goal.threshold)}; "
        f"{v.missed_by()}"
        for v in verdicts
        if v.met is False
    ]
    return (2 if problems else 1 if missed else 0), problems + missed


def _shown(value: float, unit: str) -> str:
    return "—" if math.isnan(value) else f"{value:.2f} {unit}"


def goals_table(verdicts: Sequence[Verdict], rate: float) -> str:
    """The verdicts as a table: value, threshold, stretch (shown, not enforced), result."""
    lines = ["| target | computed as | value | threshold | stretch | result |", "|---|---|---:|---:|---:|---|"]
    for v in verdicts:
        g = v.goal
        stretch = "" if g.stretch is None else f"{g.bound(g.stretch)}{' (not met)' if v.stretch_met is False else ''}"
        result = {True: "met", False: "MISSED", None: "not measured"}[v.met]
        lines.append(
            f"| {g.label(rate)} | {g.how} | {_shown(v.value, g.unit)} | {g.bound(g.threshold)} | {stretch} | {result} |"
        )
    return "\n".join(lines)


def goals_json(verdicts: Sequence[Verdict], rate: float) -> list[dict[str, object]]:
    """The verdicts for the JSON report (NaN as null)."""
    return [
        {
            "target": v.goal.label(rate),
            "how": v.goal.how,
            "unit": v.goal.unit,
            "value": _finite(v.value),
            "threshold": v.goal.threshold,
            "at_least": v.goal.at_least,
            "met": v.met,
            "stretch": v.goal.stretch,
            "stretch_met": v.stretch_met,
        }
        for v in verdicts
    ]


def table(results: dict[str, PathResult], args: argparse.Namespace) -> str:
    head = (
        f"| path | calls/s at {args.concurrency} in flight | p50 / p99 ms there | p50 ms at {args.rate:g}/s "
        f"| p99 ms at {args.rate:g}/s | p999 ms | max ms | stream MiB/s | records/s | s per stream | errors |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path, r in results.items():
        lines.append(
            f"| {path} | {r.rps:,.0f} | {r.closed_p50_ms:.1f} / {r.closed_p99_ms:.1f} | {r.open_p50_ms:.2f} "
            f"| {r.open_p99_ms:.2f} | {r.open_p999_ms:.2f} | {r.open_max_ms:.1f} | {r.stream_mib_s:.1f} "
            f"| {r.stream_records_s:,.0f} | {r.stream_seconds:.2f} | {r.errors} |"
        )
    lines += [
        "",
        "| path | CPU ms per call: proxy or hub | of which the audit integrator process | CPU ms per call: provider "
        "| CPU ms per call: load generator | machine idle at 64 in flight | CPU s per GiB streamed: proxy or hub "
        "| CPU s per GiB streamed: provider | CPU stolen by the host, worst measurement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, r in results.items():
        integrator = r.integrator_ms_per_call
        cells = (r.middle_ms_per_call + integrator, integrator, r.provider_ms_per_call, r.load_ms_per_call)
        shown = ["—" if math.isnan(x) else f"{x:.2f}" for x in cells]
        shown.append("—" if math.isnan(r.idle_share) else f"{r.idle_share:.0%}")
        shown += ["—" if math.isnan(x) else f"{x:.0f}" for x in (r.middle_s_per_gib, r.provider_s_per_gib)]
        shown.append(f"{r.steal_share:.0%}")
        lines.append(f"| {path} | {' | '.join(shown)} |")
    return "\n".join(lines)


def hot_functions(path: Path, top: int = 15, project: bool = False) -> list[tuple[str, float, float]]:
    """From py-spy's raw (collapsed) stacks: (function, share of samples on top, share anywhere in the stack).

    The ``top`` functions most often on top of the stack or, with ``project``, the project's functions
    most often anywhere in it.
    """
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        frames = [LINE_NUMBER.sub(")", frame) for frame in frames]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return []
    if project:
        names = [name for name, _ in anywhere.most_common() if PROJECT_FRAME.search(name)][:top]
    else:
        names = [name for name, _ in own.most_common(top)]
    return [(name, own[name] / total, anywhere[name] / total) for name in names]


def _finite(value: object) -> object:
    """JSON has no NaN: None instead."""
    return None if isinstance(value, float) and math.isnan(value) else value


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "grpc": grpc.__version__,
    }


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1 s measurements, 10,000 records)")
    parser.add_argument("--seconds", type=float, help="length of each measurement (default 5; --quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up before each measurement (default 1; --quick 0.3)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight for calls/s (default 64)")
    parser.add_argument("--rate", type=float, default=300.0, help="calls a second for latency (default 300)")
    parser.add_argument("--stream-records", type=int, help="records per stream (default 50,000; --quick 10,000)")
    parser.add_argument("--record-bytes", type=int, default=1024, help="wire size of a streamed record")
    parser.add_argument("--batch-size", type=int, default=2000, help="StreamQuery batch_size (hub path)")
    parser.add_argument("--provider-workers", type=int, default=16, help="the provider kit's thread pool")
    parser.add_argument("--paths", default=",".join(PATHS), help="which of direct,proxy,hub to measure")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--profile", type=Path, help="record the hub with py-spy during its measurements, here")
    parser.add_argument(
        "--audit-integrator",
        choices=("process", "thread"),
        default="process",
        help="where the hub integrates its audit log (default process, as `exchange serve`)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when one of issue 17's targets is missed, 2 when a path had errors or one was not measured",
    )
    return parser


def settle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Fills in the defaults that depend on --quick and checks the options; the paths to measure."""
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.stream_records = args.stream_records or (10_000 if args.quick else 50_000)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := set(paths) - set(PATHS):
        raise SystemExit(f"--paths: unknown {sorted(unknown)}; choose from {', '.join(PATHS)}")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise SystemExit(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    if args.check and set(paths) != set(PATHS):
        parser.error(f"--check compares the hub with the proxy in one run: it needs all of --paths {','.join(PATHS)}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the bench and prints (and with --json writes) the results; with --check, the goals' exit status."""
    parser = options()
    args = parser.parse_args(argv)
    paths = settle(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    before = machine()
    ctx = multiprocessing.get_context("spawn")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-exchange-") as home:
            results, audited = run(ctx, Path(home), args, paths)
    except RuntimeError as e:
        if not args.check:
            raise
        print(f"check: the run failed, nothing measured: {e}", file=sys.stderr)
        return 2
    after = machine()
    verdicts = evaluate(results)
    status, reasons = check_status(results, verdicts, args.rate)
    print(
        f"\n{args.seconds:g} s per measurement; load average before {before['load_average']}, after "
        f"{after['load_average']}; {before['cpus']} CPUs\n"
    )
    print(table(results, args))
    print()
    for name, value in ratios(results).items():
        print(f"{name}: {value:+.2f}" if "ms" in name else f"{name}: {value:.2f}")
    if verdicts:
        print(f"\n{goals_table(verdicts, args.rate)}\n")
    print(f"audit records committed by the hub: {audited}")
    stolen = max((r.steal_share for r in results.values()), default=0.0)
    if stolen > STEAL_WARNING:
        print(
            f"host: up to {stolen:.0%} of the machine's CPU was stolen by other guests during a measurement: the host "
            "is oversubscribed; ratios compare paths measured under it, absolute numbers (CPU per query, p99) mean "
            "little. Measure again when it is quiet."
        )
    if args.profile is not None:
        print_profile(args.profile)
    if args.json is not None:
        report = {
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine_before": before,
            "machine_after": after,
            "results": {k: {f: _finite(v) for f, v in dataclasses.asdict(r).items()} for k, r in results.items()},
            "ratios": {k: _finite(v) for k, v in ratios(results).items()},
            "targets": goals_json(verdicts, args.rate),
            "check": {"status": status, "reasons": reasons},
            "audit_records": audited,
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report_check(status, reasons) if args.check else 0


def report_check(status: int, reasons: Sequence[str]) -> int:
    """Prints --check's reasons, one a line, and its verdict; the exit status."""
    for reason in reasons:
        print(f"check: {reason}")
    print(f"check: {('all targets met', 'a target was missed', 'the run could not be judged')[status]} (exit {status})")
    return status


def print_profile(directory: Path) -> None:
    """The hottest functions py-spy saw in the hub, per measurement."""
    for name in ("closed", "open", "stream"):
        path = directory / f"hub-{name}.txt"
        if path.exists():
            print(f"\nhub, {name}: where the GIL is held (py-spy --gil; share on top / in the stack)")
            for function, own, stacked in hot_functions(path):
                print(f"  {own:6.1%} {stacked:6.1%}  {function}")
            print("  the project's functions:")
            for function, own, stacked in hot_functions(path, 12, project=True):
                print(f"  {own:6.1%} {stacked:6.1%}  {function}")


def run(ctx: Any, home: Path, args: argparse.Namespace, paths: list[str]) -> tuple[dict[str, PathResult], int]:
    """Sets up the hub, the provider and the proxy, then measures each path in turn; the audit size at the end."""
    profile = py_spy(args.profile)
    with running_hub(base_settings(home / "hub", audit_integrator=args.audit_integrator)) as running:
        world = make_world(running)
        identity = running.add_system(SYSTEM, HOUSING.code)
        files = pki.HubFiles(running.settings.home)
        key, cert, ca = files.server_key.read_bytes(), files.server_cert.read_bytes(), files.ca_cert.read_bytes()
        hostname = pki.provider_hostname(SYSTEM)
        with (
            child(ctx, provider_main, str(identity), args.record_bytes, args.provider_workers) as provider,
            child(
                ctx, proxy_main, Target("provider", f"127.0.0.1:{provider.first}", hostname, key, cert, ca, False)
            ) as proxy,
            child(ctx, load_main) as load,
        ):
            publish_contracts(world, provider.first)

            consumer = pki.IdentityFiles(world.consumer_system)
            targets = {
                "direct": Target("direct", f"127.0.0.1:{provider.first}", hostname, key, cert, ca, hub=False),
                "proxy": Target("proxy", f"127.0.0.1:{proxy.first}", "localhost", key, cert, ca, hub=False),
                "hub": Target(
                    "hub",
                    f"127.0.0.1:{running.hub.port}",
                    "localhost",
                    consumer.key.read_bytes(),
                    consumer.cert.read_bytes(),
                    consumer.ca.read_bytes(),
                    hub=True,
                ),
            }
            check_paths(targets)
            results = {path: PathResult() for path in paths}
            for kind in ("closed", "open", "stream"):
                for path in paths:
                    job = Job(
                        targets[path],
                        kind,
                        args.seconds,
                        args.warmup,
                        args.concurrency,
                        args.rate,
                        args.stream_records,
                        args.batch_size,
                    )
                    print(f"{path:6} {kind:6} ...", end=" ", flush=True)
                    hub_profile = functools.partial(profile, f"hub-{kind}.txt", args.seconds)
                    pids = {"provider": provider.pid, "load": load.pid}
                    if path != "direct":
                        pids["middle"] = os.getpid() if path == "hub" else proxy.pid
                    integrator = running.hub.integrator.pid if running.hub.integrator is not None else None
                    if path == "hub" and integrator is not None:
                        pids["integrator"] = integrator  # the machine pays it too: shown beside the hub's
                    waits_before = hub_waits(running.hub.metrics)
                    outcome, spy, cpu = _measure(load, job, hub_profile if path == "hub" else _no_profile, pids)
                    waits_after = hub_waits(running.hub.metrics)
                    if spy is not None:
                        spy.wait(timeout=args.seconds + 30)
                    record(results[path], kind, outcome, cpu)
                    print(f"{outcome.calls} calls, {outcome.errors} errors in {outcome.elapsed:.1f}s")
                    if path == "hub" and kind != "stream":
                        print_waits(waits_before, waits_after)
                    if "integrator" in cpu:
                        ms = cpu["integrator"] / max(1, outcome.calls) * 1000
                        print(f"       audit integrator process: {ms:.3f} ms CPU per call")
                    if outcome.first_error:
                        print(f"       first error: {outcome.first_error}")
        return results, running.hub.audit.flush()


# The hub's own histograms of where a call waits, read before and after a measurement (warm-up included).
_WAITS = {"audit commit": "audit_commit_seconds", "provider call": "provider_seconds"}
_OVER_MS = (2.5, 5.0, 10.0)


def hub_waits(metrics: object) -> dict[str, dict[float, float]]:
    """Per wait in ``_WAITS``: the hub's cumulative count of calls at or under each bucket bound (+inf: all)."""
    waits: dict[str, dict[float, float]] = {}
    for name, attribute in _WAITS.items():
        counts: dict[float, float] = collections.defaultdict(float)
        for family in getattr(metrics, attribute).collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    counts[float(sample.labels["le"])] += sample.value
        waits[name] = counts
    return waits


def print_waits(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> None:
    """How many of the measurement's calls waited over 2.5, 5 and 10 ms for their audit commit and their provider
    call (the hub's histograms): where the tail at 300/s comes from."""
    for name, counts in after.items():
        total = counts[math.inf] - before[name][math.inf]
        if total <= 0:
            continue
        shares = [1 - (counts[ms / 1000] - before[name][ms / 1000]) / total for ms in _OVER_MS]
        over = ", ".join(f"over {ms:g} ms {share:.2%}" for ms, share in zip(_OVER_MS, shares, strict=True))
        print(f"       {name}: {total:,.0f} waits; {over}")


def publish_contracts(world: World, provider_port: object) -> str:
    """Publishes the sale contracts as zj-wqba's (housing), binds them to the provider kit on ``provider_port``
    and grants them to bdc-djxt with two personal fields masked and no practical quota; the grant's id."""
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("property_address", "房屋坐落", m.FieldType.STRING),
        m.DataItem("seller_name", "出卖人姓名", m.FieldType.STRING, personal_information=True),
        m.DataItem("buyer_name", "买受人姓名", m.FieldType.STRING, personal_information=True),
        m.DataItem("buyer_id_number", "买受人证件号码", m.FieldType.STRING, personal_information=True),
        m.DataItem("price", "成交价格（元）", m.FieldType.DECIMAL),
        m.DataItem("filed_on", "备案日期", m.FieldType.DATE),
        m.DataItem("remarks", "备注", m.FieldType.STRING),
    )
    spec = identity_spec(
        RESOURCE, HOUSING.code, name="存量房买卖合同网签备案信息", data_items=items, share_method=m.ShareMethod.QUERY
    )
    world.publish("housing", spec)
    grpc_backend = cpb.GrpcBackend(target=f"127.0.0.1:{provider_port}", system_code=SYSTEM)
    world.bind("housing", cpb.Binding(resource_code=RESOURCE, grpc=grpc_backend))
    return world.grant(RESOURCE, FIELDS, "housing", MASKS, quota=MAX_DAILY_CALLS, rate=MAX_RATE)


def _no_profile() -> None:
    return None


def _measure(
    load: Child, job: Job, start_profile: Callable[[], subprocess.Popen[bytes] | None], pids: dict[str, int]
) -> tuple[Outcome, subprocess.Popen[bytes] | None, dict[str, float]]:
    """Runs ``job`` on the load generator: the outcome, the profiler started after the warm-up, and the CPU
    seconds each of ``pids`` used while measuring."""
    load.conn.send(job)
    timeout = job.seconds * 20 + job.warmup + 120
    answer = _answer(load, timeout, job)
    if answer != "warm":
        raise RuntimeError(f"{job.target.path} {job.kind}: {answer}")
    spy = start_profile()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    ticks_before = machine_ticks()
    answer = _answer(load, timeout, job)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    ticks_after = machine_ticks()
    total = max(1, ticks_after[2] - ticks_before[2])
    used["idle"] = (ticks_after[0] - ticks_before[0]) / total
    used["steal"] = (ticks_after[1] - ticks_before[1]) / total
    if not isinstance(answer, Outcome):
        raise RuntimeError(f"{job.target.path} {job.kind}: {answer}")
    return answer, spy, used


def _answer(load: Child, timeout: float, job: Job) -> object:
    if not load.conn.poll(timeout):
        raise RuntimeError(f"{job.target.path} {job.kind}: no answer within {timeout:.0f}s")
    return load.conn.recv()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (all its threads) so far, from /proc; NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """The machine's idle, stolen and total CPU ticks so far (all CPUs), from /proc/stat; zeros elsewhere.
    Stolen: time a virtual machine's CPUs were ready to run but the host ran other guests."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    steal = ticks[7] if len(ticks) > 7 else 0
    return ticks[3] + ticks[4], steal, sum(ticks[:8])  # idle + iowait; guest time is already in user


# Above this share of stolen CPU in a measurement, the run says the host was oversubscribed.
STEAL_WARNING = 0.05


def check_paths(targets: dict[str, Target]) -> None:
    """One unary call on each path: the same record everywhere, the personal fields masked only by the hub."""
    answers = {path: asyncio.run(probe(target)) for path, target in targets.items()}
    direct, proxied, hub = answers["direct"], answers["proxy"], answers["hub"]
    if direct != proxied or len(hub) != 1:
        raise RuntimeError(f"the paths disagree: {answers}")
    for name in FIELDS:
        masked = name in dict(MASKS)
        if (hub[0][name] != direct[0][name]) != masked:
            raise RuntimeError(f"{name}: direct {direct[0][name]!r}, hub {hub[0][name]!r}")
    print(f"same record on every path; the hub masked {', '.join(f'{n}={hub[0][n]}' for n, _ in MASKS)}")


if __name__ == "__main__":
    sys.exit(main())
