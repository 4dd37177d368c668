"""The cost of one hop: the same query asked at its home hub (local) and through a peered hub (one hop).

Run: .venv/bin/python bench/federation_hop.py [--quick] [--seconds 5] [--concurrency 16] [--json FILE]

Two hubs, 思明区 (county, 350203) and 厦门市 (city, 350200), each an `exchange serve` process with its own
home, CA and store, peered by their operators. The city publishes an entry bound to a SQLite table and
grants it (name masked) to the county's market department and its system. The same query (one record, two
fields) is measured in one run, one path after the other, each warmed up first, with the same number of
calls in flight (closed loop):

- local: the system, registered at the city too, calls the city's ExchangeService;
- hop: the system calls the county's hub, which forwards the call to the city under a signed statement and
  checks the city's signed answer before passing it on.

Reported per path: calls/s, p50/p99 latency, and the CPU time each hub process used per query (from
/proc/<pid>/stat while measuring); then what the hop adds.
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
import json
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack

import grpc

from bench.exchange_paths import Outcome, _timed, cpu_seconds, machine, percentile
from exchange import models as m
from exchange.v1 import exchange_pb2 as xpb
from tests.federation_support import SIMING_MARKET, department
from tests.harness import identity_spec
from tests.served_hubs import Served, grant_locally, peer_pair, people_table, publish_sql, remote_codes, serve, until

ENTRY = "10101/350200000001"
CITY_MARKET = department("350200", "0077889", "厦门市市场监督管理局", m.AdministrativeLevel.CITY)
SYSTEM = "sm-djxt"
PURPOSE = "企业登记核查"
PERSON = "350203198001012345"
QUERY = "/exchange.v1.ExchangeService/Query"
PATHS = ("local", "hop")


@dataclasses.dataclass
class PathResult:
    calls_s: float
    p50_ms: float
    p99_ms: float
    county_cpu_ms: float  # CPU of the county's hub process per query
    city_cpu_ms: float  # CPU of the city's hub process per query
    errors: int
    first_error: str

    @property
    def cpu_ms(self) -> float:
        return self.county_cpu_ms + self.city_cpu_ms


def channel_for(address: str, identity: Path) -> grpc.aio.Channel:
    """A mutual-TLS channel to a hub's main port as the member whose identity directory is given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(identity / "ca.pem").read_bytes(),
        private_key=(identity / "key.pem").read_bytes(),
        certificate_chain=(identity / "cert.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(address, credentials)


async def closed_loop(channel: grpc.aio.Channel, seconds: float, concurrency: int) -> Outcome:
    """``concurrency`` callers asking the same query, each starting its next call when its last one ends."""
    query = channel.unary_unary(QUERY, request_serializer=None, response_deserializer=None)
    request = xpb.QueryRequest(
        resource_code=ENTRY, purpose=PURPOSE, filters={"id_number": PERSON}, fields=["name", "address"]
    ).SerializeToString()

    async def one() -> None:
        answer = xpb.QueryResponse.FromString(await query(request, timeout=60))
        if [r.fields["name"].string_value for r in answer.records] != ["张*"]:
            raise RuntimeError(f"unexpected answer: {answer.records}")

    out = Outcome()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def worker() -> None:
        while loop.time() < started + seconds:
            await _timed(one, out)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.elapsed = loop.time() - started
    return out


async def measure(address: str, identity: Path, hubs: dict[str, Served], args: argparse.Namespace) -> PathResult:
    """Warms up, then measures one path, reading each hub process's CPU time before and after."""
    channel = channel_for(address, identity)
    try:
        await closed_loop(channel, args.warmup, args.concurrency)
        before = {level: cpu_seconds(h.pid) for level, h in hubs.items()}
        out = await closed_loop(channel, args.seconds, args.concurrency)
        used = {level: cpu_seconds(h.pid) - before[level] for level, h in hubs.items()}
    finally:
        await channel.close(None)
    per = max(1, out.calls)
    return PathResult(
        calls_s=out.calls / out.elapsed,
        p50_ms=percentile(out.latencies_ms, 0.50),
        p99_ms=percentile(out.latencies_ms, 0.99),
        county_cpu_ms=used["county"] / per * 1000,
        city_cpu_ms=used["city"] / per * 1000,
        errors=out.errors,
        first_error=out.first_error,
    )


def prepare(root: Path, stack: ExitStack) -> tuple[dict[str, Served], dict[str, tuple[str, Path]]]:
    """The two hubs served and peered, the city's entry granted, the county's system registered at both."""
    county = stack.enter_context(serve(root, "county"))
    city = stack.enter_context(serve(root, "city"))
    peer_pair(county, city)
    url = f"sqlite:///{root / 'qy.db'}"
    people_table(url, [("张三", PERSON, "厦门市思明区湖滨南路1号")])
    city.running.add_department(CITY_MARKET)
    spec = identity_spec(ENTRY, CITY_MARKET.code, data_items=_items())
    publish_sql(city, city.running.certifier(CITY_MARKET.code), spec, url, "qy")
    fields = ("name", "id_number", "address")
    grant_locally(
        city, ENTRY, owner=CITY_MARKET.code, consumer=SIMING_MARKET, system=SYSTEM, fields=fields, purpose=PURPOSE
    )
    at_city = city.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    county.running.add_department(SIMING_MARKET)
    at_county = county.running.add_system(SYSTEM, SIMING_MARKET.code)
    until(lambda: remote_codes(county, city.code) == [ENTRY], "the city's entry in the county's catalog")
    targets = {
        "local": (city.running.settings.hub_address, at_city),
        "hop": (county.running.settings.hub_address, at_county),
    }
    return {"county": county, "city": city}, targets


def _items() -> tuple[m.DataItem, ...]:
    return (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
        m.DataItem("address", "住所", m.FieldType.STRING),
    )


def table(results: dict[str, PathResult], args: argparse.Namespace) -> str:
    lines = [
        f"Query of one record, {args.concurrency} calls in flight, {args.seconds:g} s per path; load average "
        f"{' '.join(f'{x:.2f}' for x in machine()['load_average'])}",  # type: ignore[attr-defined]
        f"{'path':<6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'county CPU ms':>14} {'city CPU ms':>12} "
        f"{'CPU ms/query':>13} {'errors':>7}",
    ]
    for path, r in results.items():
        lines.append(
            f"{path:<6} {r.calls_s:>8.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.county_cpu_ms:>14.2f} "
            f"{r.city_cpu_ms:>12.2f} {r.cpu_ms:>13.2f} {r.errors:>7}"
        )
    local, hop = results["local"], results["hop"]
    lines.append(
        f"one hop adds: p50 +{hop.p50_ms - local.p50_ms:.1f} ms, p99 +{hop.p99_ms - local.p99_ms:.1f} ms, "
        f"CPU +{hop.cpu_ms - local.cpu_ms:.2f} ms per query (county {hop.county_cpu_ms:.2f}, city "
        f"{hop.city_cpu_ms - local.city_cpu_ms:+.2f}); calls/s x{hop.calls_s / max(local.calls_s, 1e-9):.2f}"
    )
    for path, r in results.items():
        if r.errors:
            lines.append(f"{path}: {r.errors} errors, first: {r.first_error}")
    return "\n".join(lines)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1 s per path)")
    parser.add_argument("--seconds", type=float, help="length of each measurement (default 5; --quick 1)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each measurement, seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = options().parse_args(argv)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    with tempfile.TemporaryDirectory(prefix="exchange-hop-") as tmp, ExitStack() as stack:
        hubs, targets = prepare(Path(tmp), stack)
        results = {path: asyncio.run(measure(*targets[path], hubs, args)) for path in PATHS}
    print(table(results, args))
    if args.json:
        out = {"machine": machine(), "options": {"seconds": args.seconds, "concurrency": args.concurrency}}
        out["paths"] = {p: {**dataclasses.asdict(r), "cpu_ms": r.cpu_ms} for p, r in results.items()}
        args.json.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
    return 1 if any(r.errors for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
