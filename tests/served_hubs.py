"""Hubs of the federation as separate `exchange serve` processes, each with its own home, CA and store.

Used by the process tests and the federation benchmark. Each hub serves its main port and its federation
listener on loopback; its operator drives it over the main port (``running``: the same helpers as for an
in-process hub, over RPCs only). Peering goes through the operators' own RPC (``RegisterPeer``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import grpc
from sqlalchemy import create_engine, text

from exchange import models as m
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.server.app import Hub
from exchange.services.rights import MAX_DAILY_CALLS, MAX_RATE
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import registry_pb2 as regpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import HUBS, PROVINCE_MARKET, Peerable, register_peer
from tests.harness import AUTHORITY, RunningHub, base_settings, identity_spec
from tests.hub_process import free_port

PROJECT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # a bound on waiting for a process, never a claim about speed
# The items of the people entries the process tests publish over ``people_table``.
PEOPLE_ITEMS = (
    m.DataItem("name", "姓名", m.FieldType.STRING),
    m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
    m.DataItem("address", "住所", m.FieldType.STRING),
)


def until(check: Callable[[], bool], what: str, wait: float = WAIT) -> None:
    """Returns once ``check()`` holds; fails naming ``what`` after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while not check():
        assert time.monotonic() < deadline, f"not seen: {what}"
        time.sleep(0.1)


@dataclass
class Served:
    """One hub process: its level, its operator's view (``running``), its federation address and process."""

    level: str
    running: RunningHub
    federation: str
    process: subprocess.Popen[bytes]
    log: Path
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str:
        return self.running.settings.hub_code

    @property
    def address(self) -> str:
        """Its federation listener, where its peers call it."""
        return self.federation

    @property
    def pid(self) -> int:
        return self.process.pid

    def peer(self, code: str) -> fpb.Peer:
        with self.running.client() as hub:
            return hub.call(hub.federation.GetPeer, fpb.GetPeerRequest(code=code)).peer

    def register(self, other: Peerable, relation: fpb.PeerRelation.ValueType) -> fpb.Peer:
        """This hub's operator registers ``other`` with the CA certificate ``other``'s operator handed over."""
        return register_peer(self.running, other, relation)

    def stop(self) -> int:
        """SIGTERM, as an operator stops a hub; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=WAIT)

    def restart(self) -> None:
        """Stops the hub and serves it again from the same home and ports (e.g. after its CA changed)."""
        assert self.stop() == 0
        self.process = _launch(self.environment, self.log)
        until(lambda: _answers(self), f"the {self.level} hub serving again")


def _launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:  # a file, not a pipe: a full pipe would block the hub
        command = [sys.executable, "-m", "exchange.cli.main", "serve"]
        return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=sink, stderr=sink)


def _environment(
    settings_home: Path, level: str, port: int, federation: int, timing: tuple[float, float]
) -> dict[str, str]:
    code, name = HUBS[level]
    return {
        **os.environ,
        "EXCHANGE_HOME": str(settings_home),
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": "",
        "EXCHANGE_HUB_CODE": code,
        "EXCHANGE_HUB_NAME": name,
        "EXCHANGE_HUB_LEVEL": level,
        "EXCHANGE_AUDIT_ORIGIN": f"{code}.hub.example/audit",
        "EXCHANGE_FEDERATION_LISTEN": f"127.0.0.1:{federation}",
        "EXCHANGE_FEDERATION_SYNC_SECONDS": str(timing[0]),
        "EXCHANGE_CHECKPOINT_SECONDS": str(timing[1]),
        "EXCHANGE_FEDERATION_CALL_SECONDS": "5",
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_BACKEND_HOSTS": "127.0.0.0/8,::1,.example",
    }


@contextmanager
def serve(
    root: Path,
    level: str,
    sync_seconds: float = 0.5,
    checkpoint_seconds: float = 2.0,
    extra: Mapping[str, str] | None = None,
    *,
    database_url: str = "",
) -> Iterator[Served]:
    """The hub of ``level`` initialized in ``root``/``level`` and served in its own process until the block ends
    (sync rounds and signed checkpoints every ``sync_seconds`` and ``checkpoint_seconds``; ``extra``: more
    ``EXCHANGE_*`` settings, e.g. EXCHANGE_WORKERS; ``database_url``: its store, "" for a SQLite file in its
    home)."""
    code, name = HUBS[level]
    port, federation = free_port(), free_port()
    settings = replace(
        base_settings(root / level, database_url),
        hub_code=code,
        hub_name=name,
        hub_level=level,
        audit_origin=f"{code}.hub.example/audit",
        hub_address=f"localhost:{port}",
    )
    operator = initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维")).directory
    env = {**_environment(settings.home, level, port, federation, (sync_seconds, checkpoint_seconds)), **(extra or {})}
    if database_url:
        env["EXCHANGE_DATABASE_URL"] = database_url
    log = root / f"{level}.log"
    log.write_bytes(b"")
    process = _launch(env, log)
    # The operator's helpers work over RPCs only: no in-process Hub behind them.
    running = RunningHub(settings, operator, cast(Hub, None))
    served = Served(level, running, f"localhost:{federation}", process, log, env)
    try:
        until(lambda: _answers(served), f"the {level} hub serving")
        yield served
    finally:
        served.stop()


def _answers(served: Served) -> bool:
    assert served.process.poll() is None, served.log.read_text()[-3000:]
    try:
        with served.running.client() as hub:
            hub.call(hub.registry.WhoAmI, regpb.WhoAmIRequest())
    except grpc.RpcError:
        return False
    return True


def peer_pair(child: Peerable, parent: Peerable) -> None:
    """Both operators register the peering (either hub served or in this process); returns once both sides hold
    it active."""
    register_peer(child.running, parent, fpb.PEER_RELATION_PARENT)
    register_peer(parent.running, child, fpb.PEER_RELATION_CHILD)
    active = fpb.PEER_STATE_ACTIVE
    until(lambda: _state(child, parent.code) == active == _state(parent, child.code), "the peering active")


def _state(side: Peerable, code: str) -> fpb.PeerState.ValueType:
    with side.running.client() as hub:
        return hub.call(hub.federation.GetPeer, fpb.GetPeerRequest(code=code)).peer.state


def audit_records(
    node: Peerable, auditor: Path, outcome: str, resource: str = "", exchange_id: str = ""
) -> list[dict[str, object]]:
    """``node``'s audit records (integrated under a checkpoint) of ``outcome`` ("": any), of ``resource`` ("":
    any) and ``exchange_id`` ("": any), read by ``auditor`` over its AuditService."""
    request = apb.SearchRecordsRequest(page_size=100, resource_code=resource, outcome=outcome, exchange_id=exchange_id)
    with node.running.client(auditor) as hub:
        found = hub.call(hub.audit.SearchRecords, request)
    return [json.loads(e.record) for e in found.entries]


def remote_codes(node: Served, home: str) -> list[str]:
    """The codes of the entries homed at ``home`` that ``node``'s catalog lists."""
    with node.running.client() as hub:
        found = hub.call(hub.catalog.ListResources, cpb.ListResourcesRequest(home_hub_code=home))
    return [r.code for r in found.resources]


def publish_sql(node: Served, steward: Path, spec: m.ResourceSpec, url: str, table: str) -> None:
    """Publishes ``spec`` at ``node`` and binds it to a table of a SQLite database."""
    node.running.publish(steward, spec)
    with node.running.client(steward) as hub:
        binding = cpb.Binding(resource_code=spec.code, sql=cpb.SqlBackend(url=url, table=table))
        hub.call(hub.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入前置库"))


def people_table(url: str, rows: list[tuple[str, str, str]]) -> None:
    """A table ``qy`` (name, id_number, address) with ``rows``: a department's backend."""
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE qy (name TEXT, id_number TEXT, address TEXT)"))
        for name, number, address in rows:
            c.execute(text("INSERT INTO qy VALUES (:n, :i, :a)"), {"n": name, "i": number, "a": address})
    engine.dispose()


def grant_locally(
    node: Served, entry: str, *, owner: str, consumer: m.Department, system: str, fields: tuple[str, ...], purpose: str
) -> str:
    """SEED: ``consumer`` and its ``system`` registered at ``node``, applying, approved with the name masked and
    granted through ``node``'s own services, as a local consumer would be. The grant's id."""
    hub = node.running
    hub.add_department(consumer)
    hub.add_system(system, consumer.code)
    clerk = hub.add_person("sm-clerk", consumer.code, m.Role.CONSUMER)
    manager = hub.add_person("fj-manager", AUTHORITY.code, m.Role.SHARE_MANAGER)
    today = dt.datetime.now(dt.UTC).date()
    app = m.Application(entry, "", (system,), purpose, "《市场主体登记管理条例》", fields, today,
                        today + dt.timedelta(days=30), 1000)  # fmt: skip
    with hub.client(clerk) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    masks = [rpb.FieldMask(field="name", mask=rpb.MASK_KIND_NAME)]
    with hub.client(hub.certifier(owner)) as c:
        c.call(c.rights.Approve, rpb.ApproveRequest(id=applied.id, masks=masks, reason="符合条件"))
    with hub.client(manager) as c:
        grant = rpb.IssueGrantRequest(request_id=applied.id, daily_quota=MAX_DAILY_CALLS, rate_per_second=MAX_RATE)
        return str(c.call(c.rights.IssueGrant, grant).id)


# The province's two entries of people, bound to one SQLite table, and the one person in it.
PROVINCE_ENTRY = "10101/350000000001"
PROVINCE_OTHER = "10101/350000000002"  # published beside PROVINCE_ENTRY (a test may suspend it)
PROVINCE_PERSON = "350203198001012345"


def publish_at_province(province: Served, root: Path) -> None:
    """The province's market department, its table of people (one row) and both entries published over it."""
    hub = province.running
    hub.add_department(PROVINCE_MARKET)
    url = f"sqlite:///{root / 'qy.db'}"
    people_table(url, [("张三", PROVINCE_PERSON, "厦门市思明区湖滨南路1号")])
    steward = hub.certifier(PROVINCE_MARKET.code)
    for code, name in ((PROVINCE_ENTRY, "企业人员身份信息"), (PROVINCE_OTHER, "企业人员住所信息")):
        spec = identity_spec(code, PROVINCE_MARKET.code, name=name, data_items=PEOPLE_ITEMS)
        publish_sql(province, steward, spec, url, "qy")
