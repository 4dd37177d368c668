"""Subscriptions: changes a second from a SQL source to one and to 20 subscribers, and the end-to-end lag.

Run: .venv/bin/python bench/subscriptions.py [--quick] [--subscribers 1,20] [--rate 200] [--seconds 10]
[--flat-rows 5000] [--store postgresql+psycopg://USER@HOST/EMPTY_DB] [--poll-seconds S] [--batch-size N] [--json F]

A real hub runs in this process (SQLite store by default; ``--store``: an empty database). Market regulation's
new companies live in a SQLite front-end table (WAL) with an integer change column, bound as subscribable and
granted (the representative's ID number masked) to 20 registry systems. Per number of subscribers, two phases:

- steady: a writer process inserts ``--rate`` rows a second, one per transaction, for ``--seconds``;
- flat-out: the writer inserts ``--flat-rows`` rows as fast as it can, 200 rows a transaction.

Each subscriber is its own system following its own subscription (created from now) over its own mutual-TLS
channel, all in one follower process; it acknowledges each batch once read. Measured: changes a second
delivered (per subscriber and in total: changes delivered over the time from the writer's start to the last
delivery), the lag from a row's insert (a time the writer puts in the row) to its receipt (p50, p99, max),
the hub's CPU per delivered change (this process, from /proc), the followers' CPU and the load average.
"""

# ruff: noqa: E402 - the path must be set before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

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
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import create_engine, text

from bench.exchange_paths import Target, child, cpu_seconds, machine, percentile, secure_channel
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.config import Settings
from exchange.services.rights import MAX_DAILY_CALLS, MAX_RATE
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import rights_pb2 as rpb
from exchange.v1 import subscription_pb2 as spb
from exchange.v1 import subscription_pb2_grpc
from tests.exchange_world import PURPOSE, REGISTRY, make_world
from tests.harness import RunningHub, base_settings, identity_spec, running_hub, today

MARKET = m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY)
RESOURCE = "10201/350200000003"
FIELDS = ("credit_code", "company_name", "legal_representative", "representative_id_number", "address", "written_us")
MASKED = "representative_id_number"
FLAT_OUT_ROWS = 200  # rows per transaction when writing flat out
DRAIN_SECONDS = 120.0  # how long the followers may take to catch up once the writer stopped


# The writer (own process)


def write_main(conn: Connection, url: str, rate: float, amount: float) -> None:
    """Inserts new companies when told to: ``rate`` rows a second one per transaction for ``amount`` seconds, or
    (rate 0) ``amount`` rows as fast as it can."""
    engine = create_engine(url)
    with engine.connect() as c:
        start = int(c.execute(text("SELECT COALESCE(MAX(seq), 0) FROM xsldj")).scalar_one())
    conn.send("ready")
    conn.recv()
    began = time.time()
    written = _steady(engine, start, rate, amount) if rate else _flat_out(engine, start, int(amount))
    conn.send({"began": began, "ended": time.time(), "written": written})
    conn.recv()
    engine.dispose()


def _row(n: int) -> dict[str, object]:
    return {
        "credit_code": f"91350200BENCH{n:05d}",
        "company_name": f"厦门基准测试第{n}号科技有限公司",
        "legal_representative": "蔡明辉",
        "representative_id_number": f"3502061988{n % 100000000:08d}"[:18],
        "address": f"厦门市湖里区火炬路{n % 500 + 1}号",
        "written_us": int(time.time() * 1e6),
    }


INSERT = text(
    "INSERT INTO xsldj (credit_code, company_name, legal_representative, representative_id_number, address, "
    "written_us) VALUES (:credit_code, :company_name, :legal_representative, :representative_id_number, :address, "
    ":written_us)"
)


def _steady(engine: Any, start: int, rate: float, seconds: float) -> int:
    """Open loop: row k is due at k/rate; a late writer does not wait (and shows in the achieved rate)."""
    began, n = time.monotonic(), 0
    while (due := began + n / rate) < began + seconds:
        if (ahead := due - time.monotonic()) > 0:
            time.sleep(ahead)
        with engine.begin() as c:
            c.execute(INSERT, _row(start + n + 1))
        n += 1
    return n


def _flat_out(engine: Any, start: int, rows: int) -> int:
    n = 0
    while n < rows:
        size = min(FLAT_OUT_ROWS, rows - n)
        with engine.begin() as c:
            c.execute(INSERT, [_row(start + n + i + 1) for i in range(size)])
        n += size
    return n


# The followers (own process)


@dataclasses.dataclass
class Received:
    """What one follower got: how many changes, each one's lag (ms), its last receipt, whether masks held."""

    count: int = 0
    lags_ms: list[float] = dataclasses.field(default_factory=list)
    last: float = float("nan")
    masked: bool = True
    error: str = ""


def follow_main(conn: Connection, address: str, followers: list[tuple[str, str]]) -> None:
    """Follows each (identity directory, subscription id) until told how many changes to expect and all came."""
    asyncio.run(_follow_all(conn, address, followers))


async def _follow_all(conn: Connection, address: str, followers: list[tuple[str, str]]) -> None:
    got = [Received() for _ in followers]
    tasks = [
        asyncio.create_task(_follow(address, Path(d), sid, out)) for (d, sid), out in zip(followers, got, strict=True)
    ]
    conn.send("ready")
    expected = await asyncio.to_thread(conn.recv)
    deadline = time.monotonic() + DRAIN_SECONDS
    while any(r.count < expected and not r.error for r in got) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(got)
    conn.recv()


async def _follow(address: str, identity: Path, sid: str, out: Received) -> None:
    files = pki.IdentityFiles(identity)
    target = Target("hub", address, "localhost", files.key.read_bytes(), files.cert.read_bytes(),
                    files.ca.read_bytes(), hub=True)  # fmt: skip
    async with secure_channel(target) as channel:
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        try:
            async for message in stub.Follow(spb.FollowRequest(id=sid)):
                _take(message.batch, out)
                await stub.Acknowledge(spb.AcknowledgeRequest(id=sid, sequence=message.batch.last_sequence))
        except Exception as e:  # reported in the results, not raised in the follower process
            out.error = str(e)[:200]


def _take(batch: spb.ChangeBatch, out: Received) -> None:
    now = time.time()
    for change in batch.changes:
        fields = change.record.fields
        out.lags_ms.append((now * 1e6 - fields["written_us"].integer_value) / 1000)
        out.masked = out.masked and "*" in fields[MASKED].string_value
    out.count += len(batch.changes)
    out.last = now


# The run (the hub in this process)


def prepare(running: RunningHub, source: str, subscribers: int) -> list[Path]:
    """Publishes the new companies as market regulation's, bound to ``source`` with its change column, and grants
    them to ``subscribers`` systems of the registry (the ID number masked); the systems' identities."""
    world = make_world(running)
    running.add_department(MARKET)
    steward = running.add_person("sj-steward", MARKET.code, m.Role.OWNER_STEWARD)
    systems = [running.add_system(f"djxt-{i:02d}", REGISTRY.code) for i in range(1, subscribers + 1)]
    items = (
        m.DataItem("credit_code", "统一社会信用代码", m.FieldType.STRING, filterable=True),
        m.DataItem("company_name", "企业名称", m.FieldType.STRING),
        m.DataItem("legal_representative", "法定代表人", m.FieldType.STRING, personal_information=True),
        m.DataItem(MASKED, "法定代表人证件号码", m.FieldType.STRING, personal_information=True),
        m.DataItem("address", "住所", m.FieldType.STRING),
        m.DataItem("written_us", "写入时间（微秒）", m.FieldType.INTEGER),
    )
    spec = identity_spec(RESOURCE, MARKET.code, name="新设立企业登记信息", data_items=items)
    running.publish(steward, spec)
    binding = cpb.Binding(resource_code=RESOURCE, sql=cpb.SqlBackend(url=source, table="xsldj", change_column="seq"))
    with running.client(steward) as c:
        c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入前置库"))
    codes = tuple(f"djxt-{i:02d}" for i in range(1, subscribers + 1))
    basis = "《不动产登记暂行条例》第二十五条"
    app = m.Application(RESOURCE, "", codes, PURPOSE, basis, FIELDS, today(), today() + dt.timedelta(days=30), 1000)
    with running.client(world.people["consumer"]) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    with running.client(steward) as c:
        mask = [rpb.FieldMask(field=MASKED, mask=rpb.MASK_KIND_ID_NUMBER)]
        c.call(c.rights.Approve, rpb.ApproveRequest(id=applied.id, masks=mask, reason="同意"))
    with running.client(world.people["manager"]) as c:
        issue = rpb.IssueGrantRequest(request_id=applied.id, daily_quota=MAX_DAILY_CALLS, rate_per_second=MAX_RATE)
        c.call(c.rights.IssueGrant, issue)
    return systems


TABLE = (
    "CREATE TABLE xsldj (seq INTEGER PRIMARY KEY, credit_code TEXT UNIQUE, company_name TEXT, "
    "legal_representative TEXT, representative_id_number TEXT, address TEXT, written_us INTEGER)"
)


def make_source(directory: Path) -> str:
    url = f"sqlite:///{directory / 'sj-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("PRAGMA journal_mode=WAL"))
        c.execute(text(TABLE))
    engine.dispose()
    return url


@dataclasses.dataclass
class Phase:
    """One measurement's results."""

    subscribers: int
    mode: str
    written: int = 0
    written_per_s: float = float("nan")
    delivered: int = 0
    per_subscriber_per_s: float = float("nan")
    total_per_s: float = float("nan")
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    lag_max_ms: float = float("nan")
    hub_cpu_us_per_change: float = float("nan")
    hub_cpu_share: float = float("nan")
    follower_cpu_share: float = float("nan")
    load_average: float = float("nan")
    masked: bool = True
    errors: list[str] = dataclasses.field(default_factory=list)


def subscribe(running: RunningHub, identity: Path) -> str:
    request = spb.CreateSubscriptionRequest(resource_code=RESOURCE, purpose=PURPOSE, fields=FIELDS)
    with running.client(identity) as c:
        return c.call(c.subscriptions.CreateSubscription, request).subscription.id


def cancel(running: RunningHub, identity: Path, sid: str) -> None:
    with running.client(identity) as c:
        c.call(c.subscriptions.CancelSubscription, spb.CancelSubscriptionRequest(id=sid, reason="bench"))


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every phase shares: the process context, the running hub and the source's URL."""

    ctx: Any
    running: RunningHub
    source: str


def measure(bench: Bench, systems: Sequence[Path], rate: float, amount: float) -> Phase:
    """One phase: subscribe each of ``systems``, follow, write, wait for every follower to have everything."""
    phase = Phase(len(systems), "steady" if rate else "flat-out")
    ctx, running, source = bench.ctx, bench.running, bench.source
    ids = [subscribe(running, identity) for identity in systems]
    pairs = [(str(s), sid) for s, sid in zip(systems, ids, strict=True)]
    address = f"127.0.0.1:{running.hub.port}"
    with child(ctx, follow_main, address, pairs) as followers, child(ctx, write_main, source, rate, amount) as writer:
        time.sleep(1.0)  # the follows are open and waiting
        hub_before, followers_before, began = cpu_seconds(os.getpid()), cpu_seconds(followers.pid), time.monotonic()
        writer.conn.send("go")
        wrote: dict[str, float] = writer.conn.recv()
        followers.conn.send(int(wrote["written"]))
        if not followers.conn.poll(DRAIN_SECONDS + 30):
            raise RuntimeError("the followers did not answer")
        got: list[Received] = followers.conn.recv()
        elapsed = time.monotonic() - began
        hub_cpu, follower_cpu = cpu_seconds(os.getpid()) - hub_before, cpu_seconds(followers.pid) - followers_before
    for identity, sid in zip(systems, ids, strict=True):
        cancel(running, identity, sid)
    summarize(phase, wrote, got, hub_cpu)
    phase.hub_cpu_share, phase.follower_cpu_share = hub_cpu / elapsed, follower_cpu / elapsed
    phase.load_average = os.getloadavg()[0]
    return phase


def summarize(phase: Phase, wrote: dict[str, float], got: Sequence[Received], hub_cpu: float) -> None:
    phase.written = int(wrote["written"])
    phase.written_per_s = phase.written / (wrote["ended"] - wrote["began"])
    phase.delivered = sum(r.count for r in got)
    rates = [r.count / (r.last - wrote["began"]) for r in got if r.count]
    phase.per_subscriber_per_s = sum(rates) / len(rates) if rates else float("nan")
    last = max((r.last for r in got if r.count), default=float("nan"))
    phase.total_per_s = phase.delivered / (last - wrote["began"])
    lags = [lag for r in got for lag in r.lags_ms]
    phase.lag_p50_ms, phase.lag_p99_ms = percentile(lags, 0.5), percentile(lags, 0.99)
    phase.lag_max_ms = max(lags, default=float("nan"))
    phase.hub_cpu_us_per_change = hub_cpu / phase.delivered * 1e6 if phase.delivered else float("nan")
    phase.masked = all(r.masked for r in got)
    phase.errors = [r.error for r in got if r.error]
    short = [f"{r.count}/{phase.written}" for r in got if r.count != phase.written]
    if short:
        phase.errors.append(f"followers short of the {phase.written} changes written: {', '.join(short[:5])}")


HEADERS = ("subscribers", "mode", "written/s", "per sub/s", "total/s", "lag p50 ms", "p99 ms", "max ms",
           "hub CPU µs/change", "hub CPU", "followers CPU", "load")  # fmt: skip


def table(phases: Sequence[Phase]) -> str:
    rows = [
        [str(p.subscribers), p.mode, f"{p.written_per_s:.0f}", f"{p.per_subscriber_per_s:.0f}", f"{p.total_per_s:.0f}",
         f"{p.lag_p50_ms:.0f}", f"{p.lag_p99_ms:.0f}", f"{p.lag_max_ms:.0f}", f"{p.hub_cpu_us_per_change:.0f}",
         f"{p.hub_cpu_share:.0%}", f"{p.follower_cpu_share:.0%}", f"{p.load_average:.2f}"]
        for p in phases
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.rjust(wd) for h, wd in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (2 s, 1,000 rows)")
    parser.add_argument("--seconds", type=float, help="how long the writer writes in steady phases (default 10)")
    parser.add_argument("--flat-rows", type=int, help="rows the writer writes flat out (default 5,000)")
    parser.add_argument("--rate", type=float, default=200.0, help="rows a second in the steady phases (default 200)")
    parser.add_argument("--subscribers", default="1,20", help="numbers of subscribers to measure (default 1,20)")
    parser.add_argument("--store", default="", help="the hub's store: an empty database's URL (default: SQLite)")
    parser.add_argument("--poll-seconds", type=float, help="the hub's subscription_poll_seconds (default: its own)")
    parser.add_argument("--batch-size", type=int, help="the hub's subscription_batch_size (default: its own)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return parser


def hub_settings(home: Path, args: argparse.Namespace) -> Settings:
    named = {"subscription_poll_seconds": args.poll_seconds, "subscription_batch_size": args.batch_size}
    return base_settings(home / "hub", args.store, **{k: v for k, v in named.items() if v})


def main(argv: Sequence[str] | None = None) -> int:
    args = options().parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.flat_rows = args.flat_rows or (1000 if args.quick else 5000)
    counts = sorted({int(n) for n in args.subscribers.split(",")})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    before, ctx, phases = machine(), multiprocessing.get_context("spawn"), []
    with tempfile.TemporaryDirectory(prefix="bench-subscriptions-") as home, \
            running_hub(hub_settings(Path(home), args)) as running:  # fmt: skip
        source = make_source(Path(home))
        systems = prepare(running, source, max(counts))
        settings = running.settings
        print(f"hub polls every {settings.subscription_poll_seconds:g} s, {settings.subscription_batch_size} changes "
              f"a poll at most; store {'SQLite' if not args.store else args.store.split('@')[-1]}")  # fmt: skip
        for n in counts:
            for rate, amount in ((args.rate, args.seconds), (0.0, args.flat_rows)):
                print(f"{n:3} subscriber(s), {'steady' if rate else 'flat-out'} ...", end=" ", flush=True)
                phases.append(measure(Bench(ctx, running, source), systems[:n], rate, amount))
                print(f"{phases[-1].delivered} changes delivered", *phases[-1].errors)
    after = machine()
    print(f"\nload average before {before['load_average']}, after {after['load_average']}; {before['cpus']} CPUs")
    print(table(phases))
    if not all(p.masked for p in phases):
        print("ERROR: a change arrived with the ID number unmasked")
    if args.json is not None:
        report = {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "machine_before": before, "machine_after": after,
                  "phases": [{k: _finite(v) for k, v in dataclasses.asdict(p).items()} for p in phases]}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0 if all(p.masked and not p.errors for p in phases) else 1


def _finite(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":
    sys.exit(main())
