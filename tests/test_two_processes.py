"""Two hub processes on one PostgreSQL: a change made through one is enforced by the other within a second."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import verify_export
from exchange import models as m
from exchange import wire as w
from exchange.auditlog.export import export_lines
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc, rights_pb2_grpc
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as pb
from exchange.validation import uscc_check_character
from tests.exchange_world import lookup, make_world, serve_lookup
from tests.harness import POLICE, RunningHub, base_settings, identity_spec, running_hub

PROJECT = Path(__file__).resolve().parent.parent
REGISTRY = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
IDENTITY = "10101/350200000001"
PROPAGATION_LIMIT = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _hub_b(a: RunningHub, postgres_url: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Hub B in another process, sharing hub A's home (CA, keys) and PostgreSQL store."""
    port = _free_port()
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(a.settings.home),
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_DATABASE_URL": postgres_url,
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": "127.0.0.1:0",
    }
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block hub B
        b = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli.main", "serve"], cwd=PROJECT, env=env, stderr=sink, text=True
        )
        try:
            address = f"localhost:{port}"
            _wait_until_serving(a, address, b, log)
            yield address, b
        finally:
            if b.poll() is None:
                b.terminate()
            b.wait(timeout=30)


@pytest.fixture
def two_hubs(tmp_path: Path, postgres_url: str) -> Iterator[tuple[RunningHub, str]]:
    """Hub A in this process and hub B in another, sharing the home (CA) and the PostgreSQL store."""
    with (
        running_hub(base_settings(tmp_path / "hub", postgres_url)) as a,
        _hub_b(a, postgres_url, tmp_path / "b.log") as b,
    ):
        yield a, b[0]


def _wait_until_serving(a: RunningHub, address: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    with HubClient(replace(a.settings, hub_address=address), a.operator) as c:
        while True:
            try:
                c.call(c.registry.WhoAmI, rpb.WhoAmIRequest())
                return
            except grpc.RpcError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "hub B did not start"
                time.sleep(0.2)


def _within(limit: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check`` holds, failing after ``limit``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"not seen within {limit}s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_grants_and_roles_made_through_one_hub_are_enforced_by_the_other(two_hubs: tuple[RunningHub, str]) -> None:
    a, b_address = two_hubs
    a.add_department(POLICE)
    a.add_department(REGISTRY)
    owner = a.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    clerk = a.add_person("bdc-clerk", REGISTRY.code, m.Role.CONSUMER)
    manager = a.add_person("sm-lin", POLICE.code, m.Role.SHARE_MANAGER)
    a.add_system("bdc-djxt", REGISTRY.code)
    a.publish(owner, identity_spec(IDENTITY))

    def on(address: str, identity: Path) -> rights_pb2_grpc.RightsServiceStub:
        return rights_pb2_grpc.RightsServiceStub(HubClient(replace(a.settings, hub_address=address), identity).channel)

    today = dt.datetime.now(dt.UTC).date()
    application = m.Application(
        IDENTITY,
        "",
        ("bdc-djxt",),
        "不动产转移登记",
        "细则第十一条",
        ("id_number",),
        today,
        today + dt.timedelta(days=30),
        10,
    )
    # The consumer's role, given through hub A, reaches hub B: the clerk may apply there.
    request = pb.ApplyRequest(request=w.application_to_wire(application))
    applied_on_b: list[pb.ShareRequest] = []

    def apply_on_b() -> bool:
        try:
            applied_on_b.append(on(b_address, clerk).Apply(request, timeout=10))
        except grpc.RpcError as e:
            assert isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.PERMISSION_DENIED, e
            return False
        return True

    _within(PROPAGATION_LIMIT, apply_on_b)
    applied = applied_on_b[0]
    on(b_address, owner).Approve(pb.ApproveRequest(id=applied.id), timeout=10)
    check = pb.CheckAccessRequest(
        system_code="bdc-djxt", resource_code=IDENTITY, purpose="不动产转移登记", fields=["id_number"]
    )
    on_b = on(b_address, clerk)
    assert not on_b.CheckAccess(check, timeout=10).allowed

    grant = on(a.settings.hub_address, manager).IssueGrant(pb.IssueGrantRequest(request_id=applied.id), timeout=10)
    seen = _within(PROPAGATION_LIMIT, lambda: on_b.CheckAccess(check, timeout=10).allowed)
    on(a.settings.hub_address, owner).RevokeGrant(pb.ChangeGrantRequest(id=grant.id, reason="事项办结"), timeout=10)
    gone = _within(PROPAGATION_LIMIT, lambda: not on_b.CheckAccess(check, timeout=10).allowed)
    assert on_b.CheckAccess(check, timeout=10).reason == "no_grant"

    # Taking the consumer role away through hub A stops the clerk applying through hub B.
    with HubClient(a.settings, a.operator) as op:
        op.call(op.registry.AssignRole, rpb.ChangeRoleRequest(username="bdc-clerk", role=rpb.ROLE_OWNER_STEWARD))
        op.call(op.registry.UnassignRole, rpb.ChangeRoleRequest(username="bdc-clerk", role=rpb.ROLE_CONSUMER))

    def refused_on_b() -> bool:
        try:
            on(b_address, clerk).Apply(request, timeout=10)
        except grpc.RpcError as e:
            return isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.PERMISSION_DENIED
        return False

    _within(PROPAGATION_LIMIT, refused_on_b)
    print(f"grant seen by hub B after {seen * 1000:.0f} ms, revocation after {gone * 1000:.0f} ms")


def test_both_hubs_append_to_one_gap_free_log(two_hubs: tuple[RunningHub, str]) -> None:
    a, b_address = two_hubs
    on_b = replace(a.settings, hub_address=b_address)
    for n in range(6):  # changes alternate between the two processes
        settings = a.settings if n % 2 else on_b
        with HubClient(settings, a.operator) as c:
            first17 = f"11350200MB00{n:05d}"
            code = first17 + uscc_check_character(first17)
            d = m.Department(code, f"部门{n}", "350200", m.AdministrativeLevel.CITY)
            c.call(c.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(d)))
    time.sleep(0.5)
    a.hub.audit.flush()
    verifier = Verifier.parse(a.files.audit_verifier.read_text())
    lines = list(export_lines(a.hub.store.audit, verifier))
    report = verify_export(lines, verifier)
    records = [parse_entry_line(line)[2] for line in lines[1:] if line.startswith("E\t")]
    hubs = {json.loads(r)["hub"] for r in records if r}
    assert report.entries >= 7 and len(hubs) == 2  # one sequence, written by both processes


def test_exchanges_spread_over_two_hubs_and_one_killed(tmp_path: Path, postgres_url: str) -> None:
    """Scale-out: exchanges over two processes; a grant suspended through one is refused by the other at once;
    one is killed mid-load and the other serves on; the audit log stays one verifiable sequence."""
    with running_hub(base_settings(tmp_path / "hub", postgres_url)) as a:
        world = make_world(a)
        grant = serve_lookup(world, tmp_path, quota=1_000_000, rate=10_000)
        ask = lookup()
        with _hub_b(a, postgres_url, tmp_path / "b.log") as (b_address, b):
            on_b = replace(a.settings, hub_address=b_address)
            stub_b = exchange_pb2_grpc.ExchangeServiceStub(HubClient(on_b, world.consumer_system).channel)
            assert len(stub_b.Query(ask, timeout=20).records) == 1
            with a.client(world.people["police"]) as c:
                c.call(c.rights.SuspendGrant, pb.ChangeGrantRequest(id=grant, reason="核查"))
            _within(PROPAGATION_LIMIT, lambda: _refused(stub_b, ask))
            with a.client(world.people["police"]) as c:
                c.call(c.rights.ResumeGrant, pb.ChangeGrantRequest(id=grant, reason="核查完毕"))
            _within(PROPAGATION_LIMIT, lambda: not _refused(stub_b, ask))
            answered, after_kill = _load(a.settings, on_b, world.consumer_system, ask, b)
        assert after_kill > 10, "hub A stopped serving when hub B was killed"
        time.sleep(0.5)
        a.hub.audit.flush()
        verifier = Verifier.parse(a.files.audit_verifier.read_text())
        lines = list(export_lines(a.hub.store.audit, verifier))
    verify_export(lines, verifier)
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in lines[1:] if x.startswith("E\t")) if r]
    logged = {r["exchange_id"] for r in records if r["kind"] == "exchange" and r["outcome"] == "ok"}
    assert [x for x in answered if x not in logged] == []
    assert len({r["hub"] for r in records if r["kind"] == "exchange"}) == 2  # one sequence, both processes in it


def _refused(stub: exchange_pb2_grpc.ExchangeServiceStub, ask: xpb.QueryRequest) -> bool:
    try:
        stub.Query(ask, timeout=20)
        return False
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        return True


def _load(
    on_a: Settings, on_b: Settings, identity: Path, ask: xpb.QueryRequest, b: subprocess.Popen[str]
) -> tuple[list[str], int]:
    """Queries on both hubs from 6 threads; hub B is killed after 1.5 s. The answered ids, and A's answers after."""
    answered: list[str] = []
    killed = threading.Event()
    after_kill = [0]
    stop = threading.Event()

    def ask_on(settings: Settings) -> None:
        with HubClient(settings, identity) as c:
            while not stop.is_set():
                try:
                    answered.append(c.call(c.exchange.Query, ask).exchange_id)
                except grpc.RpcError:
                    return  # hub B died under this call: not answered
                if killed.is_set() and settings is on_a:
                    after_kill[0] += 1

    workers = [threading.Thread(target=ask_on, args=(on_a if n % 2 else on_b,)) for n in range(6)]
    for t in workers:
        t.start()
    time.sleep(1.5)
    b.send_signal(signal.SIGKILL)
    b.wait(timeout=10)
    killed.set()
    time.sleep(1.5)
    stop.set()
    for t in workers:
        t.join(timeout=30)
    return answered, after_kill[0]
