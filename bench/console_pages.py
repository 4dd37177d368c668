"""The web console's pages that grow: server time per page with many audit records and share requests.

Usage: ``.venv/bin/python bench/console_pages.py [--records 100000] [--requests 10000] [--samples 200]``

A real hub (SQLite, the default store) serves its console on a loopback port. The store is filled
directly (the rights workflow and the audit log's own staging, not the RPCs, which would take hours):
``--requests`` pending share requests for one owner's resource, from one consumer department, and
``--records`` exchange records staged and integrated into the audit log, each naming a data subject.
Then each page is asked for ``--samples`` times by a signed-in person over HTTPS, and the hub's own
time per page (its Server-Timing header: from the request's arrival to the answer's start) is reported
as p50/p99/max, with the client's wall time beside it. The baseline in the same run is the home page,
which reads almost nothing: what a page costs beyond it is what its data costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime as dt
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

import httpx
from sqlalchemy import insert, select

from audit.records import AuditRecord, subject_hash
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.demo import sample_id_number
from exchange.store.schema import ShareRequestRow
from exchange.v1 import rights_pb2 as rpb
from tests.console_support import console_hub, csrf_of, web_client
from tests.harness import HOUSING, POLICE, RunningHub, identity_spec

PURPOSE = "不动产转移登记"
BATCH = 5000


def seed_requests(hub: RunningHub, consumer: Path, total: int) -> None:
    """``total`` pending requests: one made by the RPC, the rest copies of its row with their own ids."""
    today = dt.datetime.now(dt.UTC).date()
    app = m.Application(
        resource_code=identity_spec().code,
        consumer_department_code="",
        system_codes=("bench-system",),
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例》第二十七条",
        fields=("name", "id_number"),
        start=today,
        end=today + dt.timedelta(days=30),
        expected_daily_calls=1000,
    )
    with hub.client(consumer) as c:
        made = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    store = hub.hub.store
    with store.db.read() as s:
        row = s.scalars(select(ShareRequestRow).where(ShareRequestRow.id == made.id)).one()
        template = {c.key: getattr(row, c.key) for c in ShareRequestRow.__table__.columns}
    now = dt.datetime.now(dt.UTC)
    for start in range(1, total, BATCH):
        rows = []
        for n in range(start, min(start + BATCH, total)):
            created = now - dt.timedelta(hours=n % 500)
            rows.append({**template, "id": f"{made.id[:-8]}{n:08d}", "created_at": created})
        with store.db.write() as s:
            s.execute(insert(ShareRequestRow), rows)


def seed_records(hub: RunningHub, total: int, system: str) -> str:
    """``total`` exchange records naming data subjects; returns one subject's ID number to search for."""
    key = pki.HubFiles(hub.settings.home).audit_subject_key.read_bytes()
    day = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    wanted = sample_id_number("bench-subject-7")
    for start in range(0, total, BATCH):
        records = []
        for n in range(start, min(start + BATCH, total)):
            number = wanted if n % 1000 == 7 else sample_id_number(f"bench-subject-{n}")
            at = day + dt.timedelta(seconds=n * 25)
            records.append(
                AuditRecord(
                    kind="exchange",
                    action="query",
                    time=at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    actor=f"system/{system}",
                    actor_department=HOUSING.code,
                    outcome="allowed" if n % 10 else "denied",
                    resource=identity_spec().code,
                    purpose=PURPOSE,
                    exchange_id=f"EXBENCH{n:012d}",
                    fields=["name", "id_number"],
                    rows=1,
                    data_subjects=[subject_hash(key, number)],
                )
            )
        hub.hub.store.audit.stage(records)
    while hub.hub.store.audit.staged_count():
        time.sleep(0.5)
    return wanted


def measure(ask: Callable[[], httpx.Response], samples: int) -> tuple[list[float], list[float]]:
    """Server-Timing and wall milliseconds of ``samples`` answers, after a few to warm up."""
    for _ in range(5):
        ask().raise_for_status()
    server: list[float] = []
    wall: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        answer = ask()
        wall.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        found = re.search(r"dur=([0-9.]+)", answer.headers.get("server-timing", ""))
        server.append(float(found.group(1)) if found else float("nan"))
    return server, wall


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, server: list[float], wall: list[float]) -> None:
    print(
        f"| {name} | {statistics.median(server):.1f} | {pct(server, 0.99):.1f} | {max(server):.1f} "
        f"| {statistics.median(wall):.1f} | {pct(wall, 0.99):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed-only", action="store_true", help="fill the store and time the home page only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, console_hub(Path(tmp) / "hub") as hub:
        for department in (POLICE, HOUSING):
            hub.add_department(department)
        steward = hub.add_person("bench-steward", POLICE.code, m.Role.OWNER_STEWARD)
        consumer = hub.add_person("bench-consumer", HOUSING.code, m.Role.CONSUMER)
        auditor = hub.add_person("bench-auditor", POLICE.code, m.Role.AUDITOR)
        hub.add_system("bench-system", HOUSING.code)
        hub.publish(steward, replace(identity_spec(), department_code=POLICE.code))
        started = time.perf_counter()
        seed_requests(hub, consumer, args.requests)
        wanted = seed_records(hub, args.records, "bench-system")
        print(
            f"seeded {args.requests:,} requests and {args.records:,} records in {time.perf_counter() - started:.0f} s"
        )
        print("\n| page | server p50 (ms) | server p99 | server max | wall p50 | wall p99 |")
        print("|---|---:|---:|---:|---:|---:|")
        with web_client(hub, steward) as web:
            report("home (baseline)", *measure(lambda: web.get("/"), args.samples))
            if args.seed_only:
                return
            report("request inbox, first page", *measure(lambda: web.get("/inbox"), args.samples))
            report("request inbox, refused (none)", *measure(lambda: web.get("/inbox?status=refused"), args.samples))
        with web_client(hub, consumer) as web:
            report("my requests, first page", *measure(lambda: web.get("/requests"), args.samples))
        with web_client(hub, auditor) as web:
            token = csrf_of(web.get("/audit").text)
            searches = {
                "audit search, no filter": {},
                "audit search, by resource and outcome": {"resource": identity_spec().code, "outcome": "denied"},
                "audit search, by data subject": {"data_subject": wanted},
            }
            for name, fields in searches.items():
                form = {"csrf": token, **fields}
                report(name, *measure(lambda form=form: web.post("/audit", data=form), args.samples))  # type: ignore[misc]


if __name__ == "__main__":
    main()
