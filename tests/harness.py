"""Test harness: a real hub on a loopback port, real certificates, real clients.

The hub runs its asyncio gRPC server on a background thread's event loop;
tests call it with the same synchronous client the CLI uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export import SpanExporter
from sqlalchemy import func, select, union_all, update

from audit.records import AuditRecord
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.client import HubClient
from exchange.cli.commands import issue_identity
from exchange.cli.demo import sample_id_number
from exchange.config import Settings
from exchange.server.app import Hub
from exchange.server.loop import new_loop
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, AuditStagedRow, Base, ObjectionRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from policy import assignments_of

# The audit record a test hands a store method that writes a change straight in the store (each such method
# takes one: the change and its record commit together).
TEST_RECORD = AuditRecord("registry", "test", "2026-11-22T00:00:00.000000Z", "person/test", "", "ok", subject="test")

D = TypeVar("D", bound=Message)  # a status detail
AUTHORITY = m.Department("11350200MB0012345Y", "厦门市大数据管理局", "350200", m.AdministrativeLevel.CITY)
POLICE = m.Department("11350200MB0023456P", "厦门市公安局", "350200", m.AdministrativeLevel.CITY)
HOUSING = m.Department("11350200MB0034567G", "厦门市住房和建设局", "350200", m.AdministrativeLevel.CITY)


def identity_spec(code: str = "10101/350200000001", department: str = POLICE.code, **changes: object) -> m.ResourceSpec:
    """A valid conditional catalog entry, with any field changed."""
    spec = m.ResourceSpec(
        code=code,
        name="居民身份信息",
        department_code=department,
        data_items=(
            m.DataItem(
                "name", "姓名", m.FieldType.STRING, sensitivity=m.SensitivityGrade.IMPORTANT, personal_information=True
            ),
            m.DataItem(
                "id_number",
                "公民身份号码",
                m.FieldType.STRING,
                sensitivity=m.SensitivityGrade.IMPORTANT,
                personal_information=True,
            ),
            m.DataItem("address", "户籍地址", m.FieldType.STRING),
        ),
        share_type=m.ShareType.CONDITIONAL,
        share_method=m.ShareMethod.QUERY,
        update_cycle=m.UpdateCycle.REAL_TIME,
        summary="身份核验信息",
        classification="基础信息资源/人口信息",
        share_conditions="按事项申请",
        legal_basis="《中华人民共和国居民身份证法》第十五条",
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


class RunningHub:
    """A started hub and the identities made for it."""

    def __init__(
        self, settings: Settings, operator: Path, hub: Hub, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.operator = operator
        self.loop = loop  # the event loop serving the hub, where it runs in this process
        self.files = pki.HubFiles(settings.home)
        self.ca_pem = self.files.ca_cert.read_bytes()
        # Per department, a person who may certify its systems (its first owner steward).
        self.certifiers: dict[str, Path] = {}

    def client(self, identity: Path | None = None) -> HubClient:
        return HubClient(self.settings, identity or self.operator)

    def identity(self, kind: m.PrincipalKind, code: str, issuer: Path | None = None) -> Path:
        """The identity directory of a member, certified on first use (by ``issuer``, else the operator)."""
        ref = m.PrincipalRef(kind, code)
        out = self.files.identity(ref).directory
        if not out.exists():
            with self.client(issuer) as hub:
                issue_identity(hub, ref, out, self.ca_pem)
        return out

    def certifier(self, department: str) -> Path:
        """Someone of ``department`` who may certify its systems (an owner steward made for it if there is none)."""
        if department not in self.certifiers:
            self.add_person(f"it-{department[-8:].lower()}", department, m.Role.OWNER_STEWARD)
        return self.certifiers[department]

    def rows(self, table: type[Base]) -> int:
        """Rows in one of the store's tables, read directly: to show a refusal changed nothing."""
        store = Store(self.settings.effective_database_url)
        try:
            with store.db.read() as s:
                return s.scalar(select(func.count()).select_from(table)) or 0
        finally:
            store.close()

    def add_department(self, d: m.Department) -> None:
        with self.client() as hub:
            hub.call(hub.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(d)))

    def add_person(self, username: str, department: str, *roles: m.Role, id_number: str = "") -> Path:
        """Registers a person (with a made-up identity number unless one is given) and certifies it."""
        person = m.Person(username, username.upper(), department, frozenset(roles))
        with self.client() as hub:
            number = id_number or sample_id_number(username)
            request = rpb.CreatePersonRequest(person=w.person_to_wire(person), id_number=number)
            hub.call(hub.registry.CreatePerson, request)
        identity = self.identity(m.PrincipalKind.PERSON, username)
        if m.Role.OWNER_STEWARD in roles:
            self.certifiers.setdefault(department, identity)
        return identity

    def add_system(self, code: str, department: str) -> Path:
        with self.client() as hub:
            system = w.system_to_wire(m.System(code, f"系统 {code}", department))
            hub.call(hub.registry.CreateSystem, rpb.CreateSystemRequest(system=system))
        return self.identity(m.PrincipalKind.SYSTEM, code, self.certifier(department))

    def take_every_role(self, username: str) -> None:
        """Leaves a person with no role, as no RPC may (a person keeps at least one): straight in the store.

        The hub is told as it is told of any committed change: it forgets the cached holder and re-reads
        the person's roles into its policy.
        """
        ref = m.PrincipalRef(m.PrincipalKind.PERSON, username)
        registry = self.hub.store.registry
        registry.set_roles(username, lambda person: frozenset(), audit=TEST_RECORD)
        self.hub.holders.clear()
        self.hub.policy.refresh_roles(ref, lambda: assignments_of(*registry.roles_of(ref)))

    def publish(self, steward: Path, spec: m.ResourceSpec, publish: bool = True) -> cpb.Resource:
        with self.client(steward) as hub:
            request = cpb.CreateResourceRequest(resource=w.spec_to_wire(spec), publish=publish, reason="test")
            return hub.call(hub.catalog.CreateResource, request)


def base_settings(home: Path, database_url: str = "", **changes: object) -> Settings:
    settings = Settings(
        home=home,
        database_url=database_url,
        listen="127.0.0.1:0",
        call_timeout_seconds=20,
        metrics_listen="127.0.0.1:0",
        # The tests' department backends run on this machine (or are named under .example); REST ones speak http.
        backend_hosts=("127.0.0.0/8", "::1", ".example"),
        allow_plain_http=True,
        allow_sqlite_backends=True,
        # Each hub's integrator in its own interpreter would cost a spawn (about 1.2 s of CPU) per hub started, a
        # few thousand times a suite: the tests' hubs integrate in a thread, tests/test_integrator.py the process.
        audit_integrator="thread",
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


@contextmanager
def running_hub(settings: Settings, span_exporter: SpanExporter | None = None) -> Iterator[RunningHub]:
    """Initializes a hub in ``settings.home`` and serves it on a loopback port until the block ends.

    ``span_exporter`` receives the hub's spans when its settings turn tracing on.
    """
    operator = initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维")).directory
    loop = new_loop(settings)
    thread = threading.Thread(target=loop.run_forever, name="hub-loop", daemon=True)
    thread.start()
    hub = Hub(settings, span_exporter=span_exporter)
    port = asyncio.run_coroutine_threadsafe(hub.start(), loop).result(timeout=30)
    try:
        yield RunningHub(replace(settings, hub_address=f"localhost:{port}"), operator, hub, loop)
    finally:
        asyncio.run_coroutine_threadsafe(hub.stop(grace=1), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def audit_records(store: Store) -> list[dict[str, Any]]:
    """Every audit record, staged or integrated, read in one statement.

    One statement sees one snapshot on every backend; two (staged, then integrated) would, on PostgreSQL,
    see a record the integrator moves between them twice or not at all.
    """
    with store.db.read() as s:
        texts = s.scalars(union_all(select(AuditStagedRow.record), select(AuditEntryRow.record))).all()
    return [json.loads(t) for t in texts if t]


def today() -> dt.date:
    """The hub's today (it counts days in UTC), read when asked: a suite that runs past midnight stays right."""
    return dt.datetime.now(dt.UTC).date()


def _detail(error: grpc.Call, kind: type[D]) -> D | None:
    """The first detail of ``kind`` in a status, or None."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        found = kind()
        if detail.Unpack(found):
            return found
    return None


def exchange_id_of(error: grpc.Call) -> str:
    """The exchange id a refusal or failure names (google.rpc.RequestInfo.request_id), or ""."""
    info = _detail(error, error_details_pb2.RequestInfo)
    return str(info.request_id) if info else ""


def reason_of(error: grpc.Call) -> str:
    """The ErrorInfo reason of a status, e.g. FIELD_NOT_GRANTED."""
    info = _detail(error, error_details_pb2.ErrorInfo)
    return str(info.reason) if info else ""


def violations(error: grpc.Call) -> set[str]:
    """The fields a BadRequest detail names."""
    status = rpc_status.from_call(error)
    fields: set[str] = set()
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields |= {v.field for v in bad.field_violations}
    return fields


def move_objection_due(store: Store, objection_id: str, due: dt.date) -> None:
    """Sets an objection's due date straight in the store (as no RPC may): to test deadlines without waiting."""
    with store.db.write() as s:
        moved = s.execute(update(ObjectionRow).where(ObjectionRow.id == objection_id).values(due_date=due))
        assert getattr(moved, "rowcount", 0) == 1, f"no objection {objection_id}"


# An exchange id as the hub makes them (exchange.services.exchange.new_exchange_id): "EX", then hex digits. Matched
# whole, so that a random token on the same page that happens to contain "EX" is not taken for one.
_EXCHANGE_ID = re.compile(r"\bEX[0-9a-f]{26,27}\b")


def exchange_id_in(text: str) -> str | None:
    """The first exchange id quoted in ``text`` (a page, a message), or None."""
    found = _EXCHANGE_ID.search(text)
    return found.group(0) if found else None
