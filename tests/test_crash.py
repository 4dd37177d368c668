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
from dataclasses import replace
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import verify_export
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.client import HubClient
from exchange.cli.commands import issue_identity
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from tests.exchange_world import make_world, query
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
                rpb.CreatePersonRequest(person=w.person_to_wire(m.Person(name, name, dept, frozenset({role})))),
            )
            ref = m.PrincipalRef(m.PrincipalKind.PERSON, name)
            issue_identity(op, ref, files.identity(ref).directory, files.ca_cert.read_bytes())
    steward = files.identity(m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward")).directory
    acknowledged: list[str] = []
    stop = threading.Event()

    def publish(worker: int) -> None:
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

    workers = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    time.sleep(2.0)
    hub.send_signal(signal.SIGKILL)
    hub.wait(timeout=10)
    stop.set()
    for t in workers:
        t.join(timeout=30)
    assert len(acknowledged) > 20, "too few calls before the kill to show anything"

    hub = _serve(home, port, log)
    auditor = files.identity(m.PrincipalRef(m.PrincipalKind.PERSON, "au-chen")).directory
    try:
        with HubClient(settings, auditor) as c:
            _wait(c, hub, log)
            lines = "".join(chunk.lines for chunk in c.audit.ExportLog(apb.ExportLogRequest(), timeout=60))
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    rows = lines.splitlines()
    verifier = Verifier.parse(files.audit_verifier.read_text())
    report = verify_export(rows, verifier)
    records = [parse_entry_line(r)[2] for r in rows[1:] if r.startswith("E\t")]
    logged = {json.loads(r)["subject"] for r in records if r}
    missing = [code for code in acknowledged if code not in logged]
    assert missing == [], f"{len(missing)} acknowledged changes are not in the log"
    assert report.entries >= len(acknowledged)
    print(f"{len(acknowledged)} changes acknowledged before SIGKILL, all in the verified log of {report.entries}")


def test_every_acknowledged_exchange_survives_a_sigkill(tmp_path: Path) -> None:
    """Queries through the hub under load, SIGKILL, restart: each answered exchange is in the verified log."""
    frontend = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_engine(frontend)
    with engine.begin() as db:
        db.execute(text("CREATE TABLE rk (name TEXT, id_number TEXT)"))
        db.execute(text("INSERT INTO rk VALUES ('张三', '350203198001012345')"))
    engine.dispose()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
    )
    home, port, log = tmp_path / "hub", _free_port(), tmp_path / "hub.log"
    with running_hub(base_settings(home)) as setup:
        world = make_world(setup)
        world.publish("police", identity_spec(data_items=items))
        world.bind(
            "police", cpb.Binding(resource_code="10101/350200000001", sql=cpb.SqlBackend(url=frontend, table="rk"))
        )
        world.grant("10101/350200000001", ("name", "id_number"), "police", quota=1_000_000, rate=10_000)
        consumer, auditor = world.consumer_system, world.people["auditor"]
    settings = replace(base_settings(home), hub_address=f"localhost:{port}")
    hub = _serve(home, port, log)
    acknowledged: list[str] = []
    stop = threading.Event()

    def ask(worker: int) -> None:
        with HubClient(settings, consumer) as c:
            request = query("10101/350200000001", {"id_number": "350203198001012345"}, ["name"])
            while not stop.is_set():
                try:
                    acknowledged.append(c.call(c.exchange.Query, request).exchange_id)
                except grpc.RpcError:
                    return

    with HubClient(settings, consumer) as c:
        _wait(c, hub, log)
    workers = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in workers:
        t.start()
    time.sleep(2.5)
    hub.send_signal(signal.SIGKILL)
    hub.wait(timeout=10)
    stop.set()
    for t in workers:
        t.join(timeout=30)
    assert len(acknowledged) > 50, "too few exchanges before the kill to show anything"
    hub = _serve(home, port, log)
    try:
        with HubClient(settings, auditor) as c:
            _wait(c, hub, log)
            lines = "".join(chunk.lines for chunk in c.audit.ExportLog(apb.ExportLogRequest(), timeout=60))
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    rows = lines.splitlines()
    verify_export(rows, Verifier.parse(pki.HubFiles(home).audit_verifier.read_text()))
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in rows[1:] if x.startswith("E\t")) if r]
    answered = {r["exchange_id"] for r in records if r["kind"] == "exchange" and r["outcome"] == "ok"}
    missing = [x for x in acknowledged if x not in answered]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} answered exchanges are not in the log"
    print(f"{len(acknowledged)} exchanges answered before SIGKILL, all in the verified log")
