"""Crash safety: the hub is killed with SIGKILL under concurrent audited calls; after a restart the log
verifies and every change acknowledged to a client before the kill is in it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import Report, verify_export
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.client import HubClient
from exchange.cli.commands import issue_identity
from exchange.cli.demo import sample_id_number
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from tests.exchange_world import lookup, make_world, serve_lookup
from tests.harness import AUTHORITY, POLICE, base_settings, identity_spec, running_hub

PROJECT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(home),
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": "127.0.0.1:0",
    }
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "exchange.cli.main", "serve"], cwd=PROJECT, env=env, stderr=sink)


def _wait(client: HubClient, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.call(client.registry.WhoAmI, rpb.WhoAmIRequest())
            return
        except grpc.RpcError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.1)


def _kill_under_load(hub: subprocess.Popen[bytes], work: Callable[[int, threading.Event], None], workers: int) -> None:
    """Runs ``work(worker, stop)`` on threads, SIGKILLs the hub after 2.5 s, then stops and joins them."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(i, stop)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    hub.send_signal(signal.SIGKILL)
    hub.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)


def _log_after_restart(home: Path, port: int, log: Path, auditor: Path) -> tuple[Report, list[dict[str, object]]]:
    """Restarts the hub, exports the log as an auditor, verifies it offline: the report and the records."""
    settings = replace(base_settings(home), hub_address=f"localhost:{port}")
    hub = _serve(home, port, log)
    try:
        with HubClient(settings, auditor) as c:
            _wait(c, hub, log)
            lines = "".join(chunk.lines for chunk in c.audit.ExportLog(apb.ExportLogRequest(), timeout=60))
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    rows = lines.splitlines()
    report = verify_export(rows, Verifier.parse(pki.HubFiles(home).audit_verifier.read_text()))
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in rows[1:] if x.startswith("E\t")) if r]
    return report, records


def test_every_acknowledged_change_survives_a_sigkill(tmp_path: Path) -> None:
    home, port, log = tmp_path / "hub", _free_port(), tmp_path / "hub.log"
    settings = replace(base_settings(home), hub_address=f"localhost:{port}")
    operator = initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维")).directory
    hub = _serve(home, port, log)
    files = pki.HubFiles(home)
    with HubClient(settings, operator) as op:
        _wait(op, hub, log)
        op.call(op.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(POLICE)))
        for name, dept, role in (
            ("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
            ("au-chen", AUTHORITY.code, m.Role.AUDITOR),
        ):
            op.call(
                op.registry.CreatePerson,
                rpb.CreatePersonRequest(
                    person=w.person_to_wire(m.Person(name, name, dept, frozenset({role}))),
                    id_number=sample_id_number(name),
                ),
            )
            ref = m.PrincipalRef(m.PrincipalKind.PERSON, name)
            issue_identity(op, ref, files.identity(ref).directory, files.ca_cert.read_bytes())
    steward = files.identity(m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward")).directory
    acknowledged: list[str] = []

    def publish(worker: int, stop: threading.Event) -> None:
        with HubClient(settings, steward) as c:
            for n in range(10_000):
                if stop.is_set():
                    return
                code = f"10101/35020{worker}{n:06d}"
                spec = identity_spec(code, name=f"资源{worker}-{n}")
                try:
                    c.call(
                        c.catalog.CreateResource, cpb.CreateResourceRequest(resource=w.spec_to_wire(spec), publish=True)
                    )
                except grpc.RpcError:
                    return  # the hub died under this call: not acknowledged
                acknowledged.append(code)

    _kill_under_load(hub, publish, 4)
    assert len(acknowledged) > 20, "too few calls before the kill to show anything"
    auditor = files.identity(m.PrincipalRef(m.PrincipalKind.PERSON, "au-chen")).directory
    report, records = _log_after_restart(home, port, log, auditor)
    logged = {r["subject"] for r in records}
    missing = [code for code in acknowledged if code not in logged]
    assert missing == [], f"{len(missing)} acknowledged changes are not in the log"
    assert report.entries >= len(acknowledged)
    print(f"{len(acknowledged)} changes acknowledged before SIGKILL, all in the verified log of {report.entries}")


def test_every_acknowledged_exchange_survives_a_sigkill(tmp_path: Path) -> None:
    """Queries through the hub under load, SIGKILL, restart: each answered exchange is in the verified log."""
    home, port, log = tmp_path / "hub", _free_port(), tmp_path / "hub.log"
    with running_hub(base_settings(home)) as setup:
        world = make_world(setup)
        serve_lookup(world, tmp_path, quota=1_000_000, rate=10_000)
        consumer, auditor = world.consumer_system, world.people["auditor"]
    settings = replace(base_settings(home), hub_address=f"localhost:{port}")
    hub = _serve(home, port, log)
    acknowledged: list[str] = []

    def ask(worker: int, stop: threading.Event) -> None:
        with HubClient(settings, consumer) as c:
            while not stop.is_set():
                try:
                    acknowledged.append(c.call(c.exchange.Query, lookup()).exchange_id)
                except grpc.RpcError:
                    return

    with HubClient(settings, consumer) as c:
        _wait(c, hub, log)
    _kill_under_load(hub, ask, 8)
    assert len(acknowledged) > 50, "too few exchanges before the kill to show anything"
    _, records = _log_after_restart(home, port, log, auditor)
    answered = {r["exchange_id"] for r in records if r["kind"] == "exchange" and r["outcome"] == "ok"}
    missing = [x for x in acknowledged if x not in answered]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} answered exchanges are not in the log"
    print(f"{len(acknowledged)} exchanges answered before SIGKILL, all in the verified log")
