"""Calls/s of the hub as 1, 2 and 4 worker processes (`exchange serve --workers N`), in one run.

Run: .venv/bin/python bench/workers.py [--workers 1,2,4] [--seconds 5] [--json FILE] [--postgres URL]

The hub path of bench/exchange_paths.py (its provider, certificates and world, reused by import): the
system bdc-djxt calls ExchangeService Query for one contract, on a grant that masks two personal fields;
the hub fetches it from the provider kit, masks it and commits the audit records. Here the hub is
`exchange serve --workers N` on a fresh PostgreSQL database (the store several workers need), started
once for each N. The load generator, a process of its own, keeps 64 calls in flight (closed loop) over
16 connections: SO_REUSEPORT hands each new connection to one worker, so one connection would reach
one worker only. Measured per N, after a warm-up: calls/s, latency, and the CPU time (all threads,
from /proc) of the hub's processes (each worker, and the supervisor), of the provider and of the load
generator itself, so the table shows what was left to whom on this machine.
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
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from multiprocessing.connection import Connection
from typing import Any

import grpc
from sqlalchemy import create_engine, text

from bench.exchange_paths import (
    SYSTEM,
    Caller,
    Outcome,
    Target,
    _timed,
    child,
    cpu_seconds,
    machine,
    percentile,
    provider_main,
    publish_contracts,
)
from exchange import pki
from tests.exchange_world import make_world
from tests.harness import HOUSING, base_settings, running_hub

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MAX_MESSAGE = 16 << 20
START_SECONDS = 120.0

log = logging.getLogger("bench.workers")


# The load generator (own process)


@dataclasses.dataclass(frozen=True)
class Load:
    """One measurement: ``concurrency`` calls in flight over ``connections`` connections for ``seconds``."""

    target: Target
    seconds: float
    warmup: float
    concurrency: int
    connections: int


def _channel(target: Target) -> grpc.aio.Channel:
    """A channel with its own connection (a local subchannel pool: channels of one process share none)."""
    credentials = grpc.ssl_channel_credentials(target.ca, target.key, target.cert)
    options = [
        ("grpc.ssl_target_name_override", target.hostname),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.aio.secure_channel(target.address, credentials, options=options)


async def _closed_loop(callers: list[Caller], seconds: float, concurrency: int) -> Outcome:
    """``concurrency`` callers spread over the connections, each calling again when its last call ends."""
    out = Outcome()
    started = time.perf_counter()
    stop = started + seconds

    async def worker(caller: Caller) -> None:
        while time.perf_counter() < stop:
            await _timed(caller.unary, out)

    await asyncio.gather(*(worker(callers[n % len(callers)]) for n in range(concurrency)))
    out.elapsed = time.perf_counter() - started
    return out


async def _run_load(load: Load, conn: Connection) -> Outcome:
    channels = [_channel(load.target) for _ in range(load.connections)]
    try:
        callers = [Caller(load.target, c, 0) for c in channels]
        await _closed_loop(callers, load.warmup, load.concurrency)
        conn.send("warm")
        return await _closed_loop(callers, load.seconds, load.concurrency)
    finally:
        for c in channels:
            await c.close(None)


def load_main(conn: Connection) -> None:
    """Runs each Load sent until None comes; sends "warm" after the warm-up, then the Outcome (or the error)."""
    logging.basicConfig(level=logging.WARNING)
    conn.send("ready")
    with asyncio.Runner() as runner:
        while (load := conn.recv()) is not None:
            try:
                conn.send(runner.run(_run_load(load, conn)))
            except Exception as e:  # reported by the parent
                conn.send(f"{type(e).__name__}: {e}")


# The hub: `exchange serve --workers N` (own processes)


def _free_port(count: int = 1) -> int:
    """A port with ``count`` free ports from it on (for the workers' metrics ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + count < 65536 and all(_port_free(port + i) for i in range(count)):
            return port
    raise RuntimeError("no run of free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ready(port: int) -> bool:
    with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
        return bool(answer.status == 200)
    return False


def _worker_pids(pid: int, workers: int) -> list[int]:
    """The hub's processes: the one that serves (1 worker), or the supervisor's spawned workers."""
    if workers == 1:
        return [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@contextmanager
def hub(home: Path, database_url: str, workers: int, log_file: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`exchange serve --workers N` on the bench's home and store until every worker is ready; its port."""
    port, metrics = _free_port(), _free_port(workers)
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(home),
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "EXCHANGE_BACKEND_HOSTS": "127.0.0.0/8",
        "EXCHANGE_LOG_LEVEL": "WARNING",  # as bench/exchange_paths.py's hub: no line per exchange
    }
    command = [sys.executable, "-m", "exchange.cli.main", "serve", "--workers", str(workers)]
    with log_file.open("ab") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=sink)  # noqa: S603 - this interpreter, our module
        try:
            deadline = time.monotonic() + START_SECONDS
            while not all(_ready(metrics + i) for i in range(workers)):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{workers} workers did not start; see {log_file}")
                time.sleep(0.2)
            yield port, process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# The run


@dataclasses.dataclass
class Result:
    workers: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str
    seconds: float
    # CPU seconds used while measuring: each hub process (workers, then the supervisor), provider, load generator.
    hub_cpu_s: list[float]
    provider_cpu_s: float
    load_cpu_s: float

    @property
    def hub_ms_per_call(self) -> float:
        return sum(self.hub_cpu_s) / max(1, self.calls_per_second * self.seconds) * 1000


def measure(load: Any, job: Load, pids: dict[str, list[int]]) -> tuple[Outcome, dict[str, list[float]]]:
    """Runs ``job`` on the load generator: its outcome, and the CPU seconds of each of ``pids`` while measuring."""
    load.conn.send(job)
    timeout = job.seconds * 20 + job.warmup + 120
    if not load.conn.poll(timeout) or (answer := load.conn.recv()) != "warm":
        raise RuntimeError("the load generator did not warm up")
    before = {name: [cpu_seconds(p) for p in group] for name, group in pids.items()}
    if not load.conn.poll(timeout):
        raise RuntimeError(f"no answer within {timeout:.0f}s")
    answer = load.conn.recv()
    used = {
        name: [cpu_seconds(p) - b for p, b in zip(group, before[name], strict=True)] for name, group in pids.items()
    }
    if not isinstance(answer, Outcome):
        raise RuntimeError(f"the load generator: {answer}")
    return answer, used


def run(ctx: Any, home: Path, database_url: str, args: argparse.Namespace) -> list[Result]:
    """Sets the world up once (with a hub in this process, stopped before measuring), then measures each N."""
    settings = base_settings(home / "hub", database_url)
    with ExitStack() as stack:
        with running_hub(settings) as running:
            world = make_world(running)
            identity = running.add_system(SYSTEM, HOUSING.code)
            provider = stack.enter_context(child(ctx, provider_main, str(identity), 1024, args.provider_workers))
            publish_contracts(world, provider.first)
        consumer = pki.IdentityFiles(world.consumer_system)
        files = pki.HubFiles(settings.home)
        load = stack.enter_context(child(ctx, load_main))
        results = []
        for workers in args.workers:
            with hub(settings.home, database_url, workers, home / "hub.log") as (port, process):
                target = Target(
                    "hub",
                    f"127.0.0.1:{port}",
                    "localhost",
                    consumer.key.read_bytes(),
                    consumer.cert.read_bytes(),
                    files.ca_cert.read_bytes(),
                    hub=True,
                )
                job = Load(target, args.seconds, args.warmup, args.concurrency, args.connections)
                pids = {"hub": _worker_pids(process.pid, workers), "provider": [provider.pid], "load": [load.pid]}
                if workers > 1:
                    pids["hub"].append(process.pid)  # the supervisor, last
                print(f"{workers} workers ...", end=" ", flush=True)
                out, cpu = measure(load, job, pids)
                print(f"{out.calls} calls, {out.errors} errors in {out.elapsed:.1f}s")
            results.append(
                Result(
                    workers,
                    out.calls / out.elapsed,
                    percentile(out.latencies_ms, 0.50),
                    percentile(out.latencies_ms, 0.99),
                    out.errors,
                    out.first_error,
                    out.elapsed,
                    [round(x, 2) for x in cpu["hub"]],
                    round(cpu["provider"][0], 2),
                    round(cpu["load"][0], 2),
                )
            )
        return results


def table(results: list[Result]) -> str:
    lines = [
        "| workers | calls/s, 64 in flight | p50 / p99 ms | hub CPU s (per worker) | hub CPU ms per call "
        "| provider CPU s | load generator CPU s | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_worker = " + ".join(f"{x:.1f}" for x in (r.hub_cpu_s[:-1] if r.workers > 1 else r.hub_cpu_s))
        lines.append(
            f"| {r.workers} | {r.calls_per_second:,.0f} | {r.p50_ms:,.0f} / {r.p99_ms:,.0f} "
            f"| {sum(r.hub_cpu_s):.1f} ({per_worker}) | {r.hub_ms_per_call:.1f} | {r.provider_cpu_s:.1f} "
            f"| {r.load_cpu_s:.1f} | {r.errors} |"
        )
    return "\n".join(lines)


@contextmanager
def database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the run, dropped afterwards."""
    name = f"bench_workers_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, in order (default 1,2,4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each measurement (default 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--connections", type=int, default=16, help="connections they are spread over (default 16)")
    parser.add_argument("--provider-workers", type=int, default=16, help="the provider kit's thread pool")
    parser.add_argument("--postgres", default=ADMIN_URL, help=f"a PostgreSQL server's admin URL (default {ADMIN_URL})")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = options().parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    if not args.workers or not all(1 <= n <= 64 for n in args.workers):
        raise SystemExit("--workers: counts between 1 and 64, e.g. 1,2,4")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    before = machine()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as home, database(args.postgres) as url:
        results = run(ctx, Path(home), url, args)
    after = machine()
    print(
        f"\n{args.seconds:g} s per measurement, {args.concurrency} calls in flight over {args.connections} "
        f"connections; load average before {before['load_average']}, after {after['load_average']}; "
        f"{before['cpus']} CPUs\n"
    )
    print(table(results))
    for r in results:
        if r.first_error:
            print(f"{r.workers} workers, first error: {r.first_error}")
    if args.json is not None:
        report = {
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine_before": before,
            "machine_after": after,
            "results": [{**dataclasses.asdict(r), "hub_ms_per_call": r.hub_ms_per_call} for r in results],
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
