"""Audit log benchmarks: append rate with group commit, inclusion proofs at scale, verification rate.

Run: .venv/bin/python bench/audit_log.py [--records 200000] [--proof-records 1000000] [--postgres URL]

- append: concurrent callers (threads) each append records through the group committer until
  --records are durable; then the integrator sequences them. Reported per backend: records/s
  staged (what callers wait for) and records/s integrated, against one-record-per-transaction
  appends measured in the same run as the baseline.
- proofs: a tree of --proof-records leaves in memory (as each hub process keeps it), inclusion
  proof generation and verification latency.
- verify: the offline verifier over an export of the appended log, records/s; and the hub's own
  whole check of the stored log (seals, records, checkpoint, kept subtrees: exchange.auditlog.integrity), which
  it runs at start and every audit_check_seconds, against that verifier in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from audit.merkle import MerkleTree, leaf_hash, verify_inclusion
from audit.note import Signer
from audit.records import AuditRecord, subject_hash
from audit.seal import Sealer
from audit.verify import verify_export
from exchange.auditlog.batch import GroupCommitter
from exchange.auditlog.export import export_lines
from exchange.auditlog.log import AuditLog
from exchange.store import Store

ORIGIN = "bench.exchange/audit"


def record(n: int) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=f"2026-11-22T08:{n // 60_000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}000Z",
        actor="system/bdc-djxt",
        actor_department="11350200MB00456789",
        outcome="allowed",
        resource="10101/350200000001",
        purpose="不动产转移登记",
        grant="GR-20261122-0000abcd",
        exchange_id=f"EX-{n}",
        fields=["name", "id_number"],
        masks=["id_number=id_number"],
        rows=1,
        bytes=312,
        request_sha256="a" * 64,
        response_sha256="b" * 64,
        data_subjects=[subject_hash(b"k", f"{n:018d}")],
        hub="bench:1",
        latency_us=850,
    )


def append_rate(store: Store, total: int, threads: int) -> tuple[float, float, int]:
    committer = GroupCommitter(store.audit)
    per_thread = total // threads

    def work(offset: int) -> None:
        for i in range(per_thread):
            committer.append(record(offset + i))

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t * per_thread,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    staged = time.perf_counter() - started
    committer.close()
    started = time.perf_counter()
    integrated = 0
    while batch := store.audit.integrate(limit=5000):
        integrated += len(batch)
    integrate_s = time.perf_counter() - started
    return per_thread * threads / staged, integrated / integrate_s, committer.batches


def async_append_rate(store: Store, total: int, callers: int) -> tuple[float, int]:
    """As a gRPC asyncio hub appends: ``callers`` coroutines, each awaiting its own record's commit."""
    committer = GroupCommitter(store.audit)
    per_caller = total // callers

    async def caller(offset: int) -> None:
        for i in range(per_caller):
            await committer.append_async(record(20_000_000 + offset + i))

    async def run() -> None:
        await asyncio.gather(*(caller(c * per_caller) for c in range(callers)))

    started = time.perf_counter()
    asyncio.run(run())
    took = time.perf_counter() - started
    committer.close()
    return per_caller * callers / took, committer.batches


def single_rate(store: Store, total: int) -> float:
    started = time.perf_counter()
    for i in range(total):
        store.audit.stage([record(10_000_000 + i)])
    return total / (time.perf_counter() - started)


def bench_backend(name: str, url: str, records: int, signer: Signer) -> Store:
    store = Store(url)
    store.db.migrate()
    store.audit.sealer = Sealer.of(signer)
    baseline = single_rate(store, min(2000, records // 10))
    while store.audit.integrate(limit=5000):
        pass
    grouped, integrated, batches = append_rate(store, records, threads=64)
    print(
        f"{name:<10} append, 64 threads, group commit: {grouped:>9,.0f} records/s ({batches} batches, "
        f"{records / batches:.0f} per batch); one transaction per record: {baseline:>7,.0f}/s "
        f"(x{grouped / baseline:.1f}); integration: {integrated:>9,.0f} records/s"
    )
    rate, batches = async_append_rate(store, records, callers=256)
    print(
        f"{name:<10} append, 256 asyncio callers, group commit: {rate:>9,.0f} records/s "
        f"({records / batches:.0f} per batch; x{rate / baseline:.1f} the baseline)"
    )
    while store.audit.integrate(limit=5000):
        pass
    return store


def bench_verify(store: Store, signer: Signer) -> None:
    log = AuditLog(store.audit, signer, ORIGIN)
    log.flush()
    lines = list(export_lines(store.audit, signer.verifier()))
    started = time.perf_counter()
    report = verify_export(lines, signer.verifier())
    took = time.perf_counter() - started
    print(f"verify     {report.entries:,} entries in {took:.2f} s: {report.entries / took:,.0f} records/s")
    started = time.perf_counter()
    checked = log.check()
    check_took = time.perf_counter() - started
    print(
        f"check      the hub's whole check of the stored log, {checked.size:,} entries in {check_took:.2f} s: "
        f"{checked.size / check_took:,.0f} entries/s (x{took / check_took:.2f} the offline verifier's rate)"
    )


def bench_proofs(n: int) -> None:
    started = time.perf_counter()
    tree = MerkleTree([leaf_hash(i.to_bytes(8, "big")) for i in range(n)])
    built = time.perf_counter() - started
    root = tree.root()
    samples = [int(i * 7919) % n for i in range(2000)]
    gen, ver = [], []
    for i in samples:
        t0 = time.perf_counter_ns()
        proof = tree.inclusion_proof(i, n)
        t1 = time.perf_counter_ns()
        verify_inclusion(tree.levels[0][i], i, n, proof, root)
        t2 = time.perf_counter_ns()
        gen.append((t1 - t0) / 1e6)
        ver.append((t2 - t1) / 1e6)
    gen.sort()
    ver.sort()
    print(
        f"proofs     tree of {n:,} leaves built in {built:.1f} s; inclusion proof p50 {statistics.median(gen):.3f} ms, "
        f"p99 {gen[int(len(gen) * 0.99)]:.3f} ms; verification p50 {statistics.median(ver):.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--proof-records", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        signer = Signer.generate(ORIGIN)
        sqlite = bench_backend("sqlite", f"sqlite:///{Path(scratch) / 'bench.db'}", options.records, signer)
        bench_verify(sqlite, signer)
        sqlite.close()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(options.postgres, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        pg = bench_backend("postgresql", options.postgres.rsplit("/", 1)[0] + f"/{name}", options.records, signer)
        bench_verify(pg, signer)
        pg.close()
    except Exception as e:
        print(f"postgresql skipped: {e}")
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    bench_proofs(options.proof_records)


if __name__ == "__main__":
    main()
