"""Separation of duties under attack: every caller tries what it must not, over mutual TLS and the CLI.

One hub serves the whole module. Its members: the police owns a resident lookup (bound to a front-end
database) and a document entry; the real-estate registry applied for the lookup four times (one request
left pending, one approved, one refused, one disputed) and holds a grant of it for its system.

``duties_rpc_cases.csv`` says, for every RPC of the hub and every kind of caller, whether the call is
allowed, hidden from a list, unauthenticated or refused and why; the RPCs come from the generated service
descriptors, so a new RPC fails ``test_the_table_covers_every_rpc_the_hub_serves`` until it is placed.
``duties_cli_cases.csv`` does the same for the privileged verbs of the ``exchange`` command. The
self-elevation tests at the end try to get rights by the side door.

What the hub records of a refusal: one audit record with outcome ``denied`` (the tests find it), for a
refused exchange and a refused change of the registry, the catalog or the rights alike; nothing else in
the store changes (the tests compare every table).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib
import json
import pkgutil
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from sqlalchemy import select

import exchange.v1
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.client import HubClient
from exchange.cli.demo import sample_id_number
from exchange.cli.main import main
from exchange.federation.model import Peer, PeerRelation
from exchange.server.rpc import DEV_PRINCIPAL_HEADER
from exchange.services.registry import CertificateAuthority
from exchange.store import Store
from exchange.store.schema import Base
from exchange.store.subscriptions import Subscription
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import console_pb2 as cnpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import objection_pb2 as opb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import subscription_pb2 as spb
from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, REGISTRY, every_caller, lookup, make_world, serve_lookup
from tests.harness import (
    AUTHORITY,
    HOUSING,
    POLICE,
    TEST_RECORD,
    RunningHub,
    audit_records,
    base_settings,
    identity_spec,
    reason_of,
    running_hub,
    today,
    violations,
)

HERE = Path(__file__).resolve().parent
DOCUMENTS = "10101/350200000006"
MARKET = m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY)
PEER = "350000"  # a peer hub the scene's store holds (federation; it need not run: it is only named)
# Services whose stubs are generated here but which departments serve, not the hub.
SERVED_BY_DEPARTMENTS = {"exchange.v1.ProviderService"}
# ...and those the hub's main port does not serve: those, and the one peer hubs call on the federation listener
# (tests/test_federation_peering.py, tests/test_federation_rights.py and tests/test_federation_exchange.py
# attack them there).
NOT_ON_THE_MAIN_PORT = SERVED_BY_DEPARTMENTS | {
    "exchange.v1.PeeringService",
    "exchange.v1.WitnessService",
    "exchange.v1.ReceiptService",
    "exchange.v1.CrossHubRightsService",
    "exchange.v1.ForwardingService",
}


def _rows(name: str) -> list[dict[str, str]]:
    with (HERE / name).open(encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


RPC_CASES = _rows("duties_rpc_cases.csv")
CLI_CASES = _rows("duties_cli_cases.csv")
CALLERS = [c for c in RPC_CASES[0] if c not in ("rpc", "kind")]
REGISTERED = [c for c in CALLERS if c != "stranger"]


def _generated_services() -> dict[str, descriptor.ServiceDescriptor]:
    """Every service of the generated modules, by full name."""
    found: dict[str, descriptor.ServiceDescriptor] = {}
    for module in pkgutil.iter_modules(exchange.v1.__path__):
        if module.name.endswith("_pb2"):
            generated = importlib.import_module(f"exchange.v1.{module.name}")
            found.update({s.full_name: s for s in generated.DESCRIPTOR.services_by_name.values()})
    return found


SERVICES = _generated_services()
METHODS = {
    f"{s.name}.{method.name}": method
    for name, s in SERVICES.items()
    if name not in NOT_ON_THE_MAIN_PORT
    for method in s.methods
}


# The module's hub and its members


@dataclass
class Scene:
    """The running hub, its members' identities, the matters they fight over, and a reader of its store."""

    hub: RunningHub
    identities: dict[str, Path]
    refs: dict[str, m.PrincipalRef]
    store: Store
    files: Path
    pending: str = ""
    approved: str = ""
    refused: str = ""
    disputed: str = ""
    granted: str = ""
    grant: str = ""
    objection: str = ""
    subscription: str = ""
    clients: dict[str, HubClient] = field(default_factory=dict)

    def client(self, caller: str) -> HubClient:
        if caller not in self.clients:
            self.clients[caller] = self.hub.client(self.identities[caller])
        return self.clients[caller]

    def matters(self) -> set[str]:
        return {self.pending, self.approved, self.refused, self.disputed, self.granted}

    def fingerprint(self, caller: str) -> str:
        return pki.fingerprint_of_pem(pki.IdentityFiles(self.identities[caller]).cert.read_bytes())

    def state(self) -> dict[str, str]:
        """A digest of every table of the store, and how many audit records there are (staged or logged)."""
        out: dict[str, str] = {}
        with self.store.db.read() as s:
            for table in Base.metadata.sorted_tables:
                # The audit log is counted below; the quota heartbeat renews a process's record by itself.
                if table.name.startswith("audit_") or table.name in LIVENESS_TABLES:
                    continue
                kept = [c for c in table.columns if c.name not in LIVENESS_COLUMNS.get(table.name, ())]
                rows = sorted(repr(tuple(r)) for r in s.execute(select(*kept)))
                out[table.name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        out["audit records"] = str(len(self.audit_records()))
        return out

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record, staged or logged."""
        return audit_records(self.store)


# Tables a hub process rewrites on its own schedule (its quota holder record and parked calls).
LIVENESS_TABLES = frozenset({"quota_holders", "quota_holds"})
# Columns a hub process rewrites on its own schedule: the poll lease of each subscription it polls.
LIVENESS_COLUMNS = {"subscriptions": frozenset({"poll_holder", "poll_expires"})}


def _application(resource: str = LOOKUP, systems: tuple[str, ...] = ("bdc-djxt",)) -> pb.ApplyRequest:
    app = m.Application(
        resource_code=resource,
        consumer_department_code="",
        system_codes=systems,
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name", "id_number"),
        start=today(),
        end=today() + dt.timedelta(days=30),
        expected_daily_calls=100,
    )
    return pb.ApplyRequest(request=w.application_to_wire(app))


def _apply(scene: Scene, caller: str = "consumer") -> str:
    c = scene.client(caller)
    return str(c.call(c.rights.Apply, _application()).id)


def _stranger(hub: RunningHub, directory: Path) -> Path:
    """An identity whose certificate the hub's CA signed but which no principal holds."""
    ca = CertificateAuthority.of(pki.load_key(hub.files.ca_key), pki.load_cert(hub.files.ca_cert))
    key = pki.new_key()
    ref = m.PrincipalRef(m.PrincipalKind.PERSON, "ghost")
    record = ca.issue(pki.make_csr(key, ref), ref, 30)
    pki.IdentityFiles(directory).write(key, record.pem.encode(), hub.ca_pem)
    return directory


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("duties")
    # A console address (port 0: any free one), so sign-in links are asked for and refused on their merits.
    # Every caller is refused hundreds of times here, each refusal expected in the log: no bound on their
    # records (tests/test_refusals.py tests the bound).
    settings = base_settings(root / "hub", console_listen="127.0.0.1:0", refusal_records_per_window=100_000)
    with running_hub(settings) as hub:
        world = make_world(hub)
        grant = serve_lookup(world, root)
        identities = {**every_caller(world), "stranger": _stranger(hub, root / "stranger")}
        usernames = {
            "operator": "op-admin",
            "owner_steward": "ga-steward",
            "foreign_steward": "zj-steward",
            "consumer": "bdc-clerk",
            "foreign_consumer": "zj-clerk",
            "share_manager": "sm-lin",
            "auditor": "au-chen",
            "no_role": "ga-idle",
            "stranger": "ghost",
        }
        refs = {k: m.PrincipalRef(m.PrincipalKind.PERSON, v) for k, v in usernames.items()}
        refs |= {
            "system": m.PrincipalRef(m.PrincipalKind.SYSTEM, "bdc-djxt"),
            "foreign_system": m.PrincipalRef(m.PrincipalKind.SYSTEM, "zj-zfxt"),
        }
        items = (m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),)
        documents = identity_spec(DOCUMENTS, name="户籍证明文件", share_method=m.ShareMethod.DOCUMENT, data_items=items)
        world.publish("police", documents)
        store = Store(hub.settings.effective_database_url)
        scene = Scene(hub, identities, refs, store, root / "files", grant=grant)
        scene.files.mkdir()
        try:
            _stage_matters(scene)
            hub.hub.audit.flush()  # a signed checkpoint, for the proof RPCs
            yield scene
        finally:
            for client in scene.clients.values():
                client.close()
            store.close()


def _stage_matters(scene: Scene) -> None:
    police, consumer, manager = scene.client("owner_steward"), scene.client("consumer"), scene.client("share_manager")
    scene.pending, scene.approved, scene.refused, scene.disputed = (_apply(scene) for _ in range(4))
    police.call(police.rights.Approve, pb.ApproveRequest(id=scene.approved, reason="符合条件"))
    for request in (scene.refused, scene.disputed):
        police.call(police.rights.Refuse, pb.RefuseRequest(id=request, reason="用途不明"))
    consumer.call(consumer.rights.Dispute, pb.DisputeRequest(id=scene.disputed, reason="有法定依据"))
    scene.granted = manager.call(manager.rights.GetGrant, pb.GetGrantRequest(id=scene.grant)).request_id
    _, ca = pki.create_ca("福建省 CA")  # a peer hub, registered in the store (the hub does not federate)
    peer = Peer(
        PEER, "福建省政务数据共享平台", "province", PeerRelation.PARENT, "localhost:1", pki.cert_pem(ca).decode()
    )
    scene.hub.hub.store.peers.register(peer, audit=TEST_RECORD)
    doubt = opb.RaiseObjectionRequest(resource_code=LOOKUP, fields=["name"], reason="姓名与户籍不符")
    scene.objection = consumer.call(consumer.objections.RaiseObjection, doubt).id
    scene.subscription = _subscription(scene)


def _subscription(scene: Scene) -> str:
    """The registry system's subscription to the lookup, written in the store (its SQL source tells no changes)."""
    sub = Subscription(
        id="SB-20261204-0123456789ab", resource_code=LOOKUP, owner_department=POLICE.code,
        consumer_department=REGISTRY.code, consumer_system="bdc-djxt", grant_id=scene.grant, purpose=PURPOSE,
        filters={}, fields=("name",), created_by="system/bdc-djxt", created_at=dt.datetime.now(dt.UTC),
        source_cursor="",
    )  # fmt: skip
    return scene.hub.hub.store.subscriptions.add(sub, audit=TEST_RECORD).id


# What each RPC is asked, by whom


def _lookup_spec() -> m.ResourceSpec:
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
    )
    return identity_spec(LOOKUP, POLICE.code, data_items=items)


def _csr_for_manager() -> str:
    return pki.make_csr(pki.new_key(), m.PrincipalRef(m.PrincipalKind.PERSON, "sm-lin"))


def _victim(caller: str) -> str:
    """Whose certificate a caller tries to revoke: someone else's (a holder may revoke its own other ones)."""
    return "auditor" if caller == "share_manager" else "share_manager"


def _rogue_peer() -> fpb.Peer:
    _, ca = pki.create_ca("a rogue hub's CA")
    return fpb.Peer(
        code="360000",
        name="外部平台",
        level="province",
        relation=fpb.PEER_RELATION_PARENT,
        address="localhost:1",
        ca_certificate_pem=pki.cert_pem(ca).decode(),
    )


def _own_username(scene: Scene, caller: str) -> str:
    ref = scene.refs[caller]
    return ref.code if ref.kind is m.PrincipalKind.PERSON else "bdc-clerk"


Build = Callable[[Scene, str], Message]
REQUESTS: dict[str, Build] = {
    "RegistryService.WhoAmI": lambda s, c: rpb.WhoAmIRequest(),
    "RegistryService.CreateDepartment": lambda s, c: rpb.CreateDepartmentRequest(
        department=w.department_to_wire(MARKET)
    ),
    "RegistryService.GetDepartment": lambda s, c: rpb.GetDepartmentRequest(code=POLICE.code),
    "RegistryService.ListDepartments": lambda s, c: rpb.ListDepartmentsRequest(),
    "RegistryService.CreateSystem": lambda s, c: rpb.CreateSystemRequest(
        system=w.system_to_wire(m.System("sc-zfxt", "执法系统", HOUSING.code))
    ),
    "RegistryService.GetSystem": lambda s, c: rpb.GetSystemRequest(code="bdc-djxt"),
    "RegistryService.ListSystems": lambda s, c: rpb.ListSystemsRequest(),
    "RegistryService.CreatePerson": lambda s, c: rpb.CreatePersonRequest(
        person=w.person_to_wire(m.Person("new-steward", "新人", POLICE.code, frozenset({m.Role.OWNER_STEWARD}))),
        id_number=sample_id_number("new-steward"),
    ),
    "RegistryService.GetPerson": lambda s, c: rpb.GetPersonRequest(username="sm-lin"),
    "RegistryService.ListPeople": lambda s, c: rpb.ListPeopleRequest(),
    # Each tries to make itself an operator.
    "RegistryService.AssignRole": lambda s, c: rpb.ChangeRoleRequest(
        username=_own_username(s, c), role=w.ROLE.wire(m.Role.OPERATOR), reason="提权"
    ),
    "RegistryService.UnassignRole": lambda s, c: rpb.ChangeRoleRequest(
        username="ga-steward", role=w.ROLE.wire(m.Role.OWNER_STEWARD), reason="调岗"
    ),
    # Each tries to get a certificate for a key of its own in the share manager's name.
    "RegistryService.IssueCertificate": lambda s, c: rpb.IssueCertificateRequest(
        principal=w.principal_ref_to_wire(s.refs["share_manager"]), csr_pem=_csr_for_manager()
    ),
    "RegistryService.ListCertificates": lambda s, c: rpb.ListCertificatesRequest(),
    "RegistryService.RevokeCertificate": lambda s, c: rpb.RevokeCertificateRequest(
        fingerprint_sha256=s.fingerprint(_victim(c)), reason="密钥泄露"
    ),
    "RegistryService.RenewCertificate": lambda s, c: rpb.RenewCertificateRequest(csr_pem=_csr_for_manager()),
    "RegistryService.GetTrustBundle": lambda s, c: rpb.GetTrustBundleRequest(),
    "ConsoleService.CreateSignInLink": lambda s, c: cnpb.CreateSignInLinkRequest(),
    "CatalogService.CreateResource": lambda s, c: cpb.CreateResourceRequest(
        resource=w.spec_to_wire(identity_spec("10101/350200000009")), publish=True, reason="新增"
    ),
    "CatalogService.UpdateResource": lambda s, c: cpb.UpdateResourceRequest(
        resource=w.spec_to_wire(_lookup_spec()), expected_version=0, reason="改写"
    ),
    "CatalogService.PublishResource": lambda s, c: cpb.ChangeResourceStatusRequest(code=DOCUMENTS, reason="发布"),
    "CatalogService.SuspendResource": lambda s, c: cpb.ChangeResourceStatusRequest(code=LOOKUP, reason="停用"),
    "CatalogService.RetireResource": lambda s, c: cpb.ChangeResourceStatusRequest(code=LOOKUP, reason="停用"),
    "CatalogService.GetResource": lambda s, c: cpb.GetResourceRequest(code=LOOKUP),
    "CatalogService.ListResources": lambda s, c: cpb.ListResourcesRequest(),
    "CatalogService.ListResourceVersions": lambda s, c: cpb.ListResourceVersionsRequest(code=LOOKUP),
    "CatalogService.SetBinding": lambda s, c: cpb.SetBindingRequest(
        binding=cpb.Binding(resource_code=LOOKUP, sql=cpb.SqlBackend(url=f"sqlite:///{s.files}/x.db", table="rk")),
        reason="改接入",
    ),
    "CatalogService.GetBinding": lambda s, c: cpb.GetBindingRequest(resource_code=LOOKUP),
    "RightsService.Apply": lambda s, c: _application(),
    "RightsService.GetShareRequest": lambda s, c: pb.GetShareRequestRequest(id=s.pending),
    "RightsService.ListShareRequests": lambda s, c: pb.ListShareRequestsRequest(),
    "RightsService.Approve": lambda s, c: pb.ApproveRequest(id=s.pending, reason="同意"),
    "RightsService.Refuse": lambda s, c: pb.RefuseRequest(id=s.pending, reason="不同意"),
    "RightsService.Dispute": lambda s, c: pb.DisputeRequest(id=s.refused, reason="有依据"),
    "RightsService.DecideDispute": lambda s, c: pb.DecideDisputeRequest(id=s.disputed, grant=True, reason="改判"),
    "RightsService.IssueGrant": lambda s, c: pb.IssueGrantRequest(request_id=s.approved),
    "RightsService.SuspendGrant": lambda s, c: pb.ChangeGrantRequest(id=s.grant, reason="核查"),
    "RightsService.ResumeGrant": lambda s, c: pb.ChangeGrantRequest(id=s.grant, reason="恢复"),
    "RightsService.RevokeGrant": lambda s, c: pb.ChangeGrantRequest(id=s.grant, reason="撤销"),
    "RightsService.GetGrant": lambda s, c: pb.GetGrantRequest(id=s.grant),
    "RightsService.ListGrants": lambda s, c: pb.ListGrantsRequest(),
    "RightsService.CheckAccess": lambda s, c: pb.CheckAccessRequest(
        system_code="bdc-djxt", resource_code=LOOKUP, purpose=PURPOSE, fields=["name"]
    ),
    "ObjectionService.RaiseObjection": lambda s, c: opb.RaiseObjectionRequest(
        resource_code=LOOKUP, fields=["name"], reason="姓名有误"
    ),
    "ObjectionService.AnswerObjection": lambda s, c: opb.AnswerObjectionRequest(
        id=s.objection, kind=opb.ANSWER_KIND_REJECTED, text="数据无误"
    ),
    "ObjectionService.EscalateObjection": lambda s, c: opb.EscalateObjectionRequest(id=s.objection, reason="督办"),
    "ObjectionService.GetObjection": lambda s, c: opb.GetObjectionRequest(id=s.objection),
    "ObjectionService.ListObjections": lambda s, c: opb.ListObjectionsRequest(),
    "SubscriptionService.CreateSubscription": lambda s, c: spb.CreateSubscriptionRequest(
        resource_code=LOOKUP, purpose=PURPOSE, fields=["name"]
    ),
    "SubscriptionService.GetSubscription": lambda s, c: spb.GetSubscriptionRequest(id=s.subscription),
    "SubscriptionService.ListSubscriptions": lambda s, c: spb.ListSubscriptionsRequest(),
    "SubscriptionService.CancelSubscription": lambda s, c: spb.CancelSubscriptionRequest(
        id=s.subscription, reason="停止"
    ),
    "SubscriptionService.Follow": lambda s, c: spb.FollowRequest(id=s.subscription),
    "SubscriptionService.Acknowledge": lambda s, c: spb.AcknowledgeRequest(id=s.subscription, sequence=0),
    "AuditService.GetCheckpoint": lambda s, c: apb.GetCheckpointRequest(),
    "AuditService.GetInclusionProof": lambda s, c: apb.GetInclusionProofRequest(seq=0),
    "AuditService.GetConsistencyProof": lambda s, c: apb.GetConsistencyProofRequest(from_size=1),
    "AuditService.SearchRecords": lambda s, c: apb.SearchRecordsRequest(),
    "AuditService.ExportLog": lambda s, c: apb.ExportLogRequest(),
    # Auditors only; the allowed call needs peered hubs (tests/test_federation_witness.py makes it): kind "write".
    "AuditService.GetCrossHubReceipt": lambda s, c: apb.GetCrossHubReceiptRequest(exchange_id="EX-1"),
    "AuditService.GetReport": lambda s, c: apb.GetReportRequest(
        from_date=(today() - dt.timedelta(days=7)).isoformat(),
        to_date=(today() + dt.timedelta(days=1)).isoformat(),
    ),
    "ExchangeService.Query": lambda s, c: lookup(),
    "ExchangeService.StreamQuery": lambda s, c: lookup(),
    "ExchangeService.FetchDocument": lambda s, c: xpb.FetchDocumentRequest(
        resource_code=DOCUMENTS, purpose=PURPOSE, filters={"id_number": PERSON_ID}
    ),
    "FederationService.GetHubIdentity": lambda s, c: fpb.GetHubIdentityRequest(),
    # Each tries to make the hub peer with a hub of its own making.
    "FederationService.RegisterPeer": lambda s, c: fpb.RegisterPeerRequest(peer=_rogue_peer(), reason="私下对接"),
    "FederationService.ListPeers": lambda s, c: fpb.ListPeersRequest(),
    "FederationService.GetPeer": lambda s, c: fpb.GetPeerRequest(code=PEER),
    "FederationService.SuspendPeer": lambda s, c: fpb.SuspendPeerRequest(code=PEER, reason="停用"),
    "FederationService.ResumePeer": lambda s, c: fpb.ResumePeerRequest(code=PEER, reason="恢复"),
    "FederationService.EndPeer": lambda s, c: fpb.EndPeerRequest(code=PEER, reason="终止"),
}


def _invoke(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Message, metadata: tuple[tuple[str, str], ...]
) -> list[Message]:
    """Calls ``method`` by its descriptor (consuming a stream); the answers."""
    assert request.DESCRIPTOR is method.input_type, f"{method.full_name} takes {method.input_type.full_name}"
    path = f"/{method.containing_service.full_name}/{method.name}"
    answer_type = message_factory.GetMessageClass(method.output_type)
    serialize, parse = (lambda r: r.SerializeToString()), answer_type.FromString
    if method.server_streaming:
        stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=parse)
        return list(stream(request, timeout=20, metadata=metadata))
    unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=parse)
    return [unary(request, timeout=20, metadata=metadata)]


def _attempt(
    scene: Scene, caller: str, rpc: str, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[list[Message], grpc.Call | None]:
    request = REQUESTS[rpc](scene, caller)
    try:
        return _invoke(scene.client(caller).channel, METHODS[rpc], request, metadata), None
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return [], e


def _mentions(answers: list[Message], ids: set[str]) -> set[str]:
    text = "".join(str(a) for a in answers)
    return {i for i in ids if i in text}


def _text(record: dict[str, Any]) -> str:
    """A record as canonical text, the same staged or logged (logging adds when it was logged)."""
    return json.dumps({k: v for k, v in record.items() if k != "logged"}, sort_keys=True)


def _only_refusals_recorded(scene: Scene, before: dict[str, str], refused: int) -> None:
    """Nothing in the store changed but the audit log, which gained one record per refusal (``refused``):
    by the policy (PERMISSION_DENIED) or for what was asked (a role conflict, a request in the wrong state)."""
    after = scene.state()
    added = int(after.pop("audit records")) - int(before["audit records"])
    assert added == refused, f"{added} audit records for {refused} refusal(s)"
    assert after == {k: v for k, v in before.items() if k != "audit records"}, "a refused call changed the store"


def _seen(scene: Scene) -> set[str]:
    """Every audit record so far: what a later call adds is what is not in here."""
    return {_text(r) for r in scene.audit_records()}


def _denied_records(scene: Scene, caller: str, known: set[str]) -> list[dict[str, Any]]:
    """The refusals of ``caller`` recorded since the records ``known`` were."""
    actor = str(scene.refs[caller])
    return [
        r
        for r in scene.audit_records()
        if _text(r) not in known and r.get("actor") == actor and r.get("outcome") == "denied"
    ]


# The tables


def test_the_table_covers_every_rpc_the_hub_serves() -> None:
    assert len({c["rpc"] for c in RPC_CASES}) == len(RPC_CASES), "an RPC has two rows"
    assert {c["rpc"] for c in RPC_CASES} == set(METHODS), "every RPC of the hub has a row, and no other"
    assert set(REQUESTS) == set(METHODS), "every RPC has a request to attack it with"
    for case in RPC_CASES:
        assert case["kind"] in {"read", "write", "data"}, case["rpc"]
        assert all(case[c] for c in CALLERS), case["rpc"]
        assert case["stranger"] == "unauthenticated", case["rpc"]


def test_services_the_hub_does_not_serve_are_unimplemented_there(scene: Scene) -> None:
    """The departments' provider API is in the generated code, but nobody reaches it through the hub."""
    assert set(SERVICES) >= NOT_ON_THE_MAIN_PORT
    for name in NOT_ON_THE_MAIN_PORT:
        for method in SERVICES[name].methods:
            request = message_factory.GetMessageClass(method.input_type)()
            with pytest.raises(grpc.RpcError) as info:
                _invoke(scene.client("operator").channel, method, request, ())
            assert isinstance(info.value, grpc.Call)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.full_name


CELLS = [(case, caller) for case in RPC_CASES for caller in CALLERS]


@pytest.mark.parametrize(("case", "caller"), CELLS, ids=[f"{c['rpc']}-{who}" for c, who in CELLS])
def test_rpc(scene: Scene, case: dict[str, str], caller: str) -> None:
    expected, kind, rpc = case[caller], case["kind"], case["rpc"]
    if expected == "allow" and kind != "read":
        pytest.skip("an allowed change or data call: the workflow tests make it")
    before, known = scene.state(), _seen(scene)
    answers, error = _attempt(scene, caller, rpc)
    if expected == "allow":
        assert error is None, f"{error.code() if error else ''}: {error.details() if error else ''}"
    elif expected == "hidden":
        # Only a list hides: asked for one by its id, a caller who may not see it is refused (below).
        assert rpc.split(".")[1].startswith("List"), f"{rpc}: a Get or change refuses what it hides"
        assert error is None and not _mentions(answers, scene.matters() | {scene.grant})
    elif expected == "unauthenticated":
        assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    else:
        assert error is not None, f"{caller} may {rpc}: the attack succeeded"
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, f"{error.code()}: {error.details()}"
        assert reason_of(error) == expected, error.details()
        if kind != "data":  # the control plane names the caller and the right it lacks
            assert str(scene.refs[caller]) in (error.details() or "")
    after = scene.state()
    if expected not in ("allow", "unauthenticated", "hidden"):
        # A refusal is audited, with who asked and why not, and changes nothing else.
        (record,) = _denied_records(scene, caller, known)
        assert expected.lower() in record["reason"].lower()
        if kind != "data":
            assert record["action"] == f"denied:{rpc.rpartition('.')[2]}"
        assert int(after.pop("audit records")) == int(before.pop("audit records")) + 1
    assert after == before, "a refused or read-only call changed the store"


# Permission before validation: every administrative RPC, asked wrongly by a caller without the right

# The same RPCs asked with a request that is wrong in every way the handler or the service would check.
INVALID: dict[str, Build] = {
    "RegistryService.CreateDepartment": lambda s, c: rpb.CreateDepartmentRequest(department=rpb.Department(code="x")),
    "RegistryService.CreateSystem": lambda s, c: rpb.CreateSystemRequest(system=rpb.System(code="Bad Code!")),
    "RegistryService.CreatePerson": lambda s, c: rpb.CreatePersonRequest(
        person=rpb.Person(username="X"), id_number="1"
    ),
    "RegistryService.GetPerson": lambda s, c: rpb.GetPersonRequest(username="NOT A USERNAME"),
    "RegistryService.ListPeople": lambda s, c: rpb.ListPeopleRequest(role=99, department_code="bad"),  # type: ignore[arg-type]
    "RegistryService.AssignRole": lambda s, c: rpb.ChangeRoleRequest(username="BAD NAME", role=99),  # type: ignore[arg-type]
    "RegistryService.UnassignRole": lambda s, c: rpb.ChangeRoleRequest(username="BAD NAME", role=99),  # type: ignore[arg-type]
    "RegistryService.IssueCertificate": lambda s, c: rpb.IssueCertificateRequest(
        principal=w.principal_ref_to_wire(s.refs["share_manager"]), csr_pem="not a CSR", validity_days=-1
    ),
    "RegistryService.RevokeCertificate": lambda s, c: rpb.RevokeCertificateRequest(fingerprint_sha256="zz"),
    "CatalogService.CreateResource": lambda s, c: cpb.CreateResourceRequest(resource=cpb.Resource(code="bad")),
    "CatalogService.UpdateResource": lambda s, c: cpb.UpdateResourceRequest(resource=cpb.Resource(code="bad")),
    "CatalogService.PublishResource": lambda s, c: cpb.ChangeResourceStatusRequest(code="bad"),
    "CatalogService.SuspendResource": lambda s, c: cpb.ChangeResourceStatusRequest(code="bad"),
    "CatalogService.RetireResource": lambda s, c: cpb.ChangeResourceStatusRequest(code="bad"),
    "CatalogService.SetBinding": lambda s, c: cpb.SetBindingRequest(binding=cpb.Binding(resource_code="bad")),
    "CatalogService.GetBinding": lambda s, c: cpb.GetBindingRequest(resource_code="bad"),
    "RightsService.Apply": lambda s, c: pb.ApplyRequest(request=pb.ShareRequest(resource_code="bad")),
    "RightsService.GetShareRequest": lambda s, c: pb.GetShareRequestRequest(id="bad"),
    "RightsService.ListShareRequests": lambda s, c: pb.ListShareRequestsRequest(status=99, view=99),  # type: ignore[arg-type]
    "RightsService.Approve": lambda s, c: pb.ApproveRequest(id="bad", masks=[pb.FieldMask(field="", mask=99)]),  # type: ignore[arg-type]
    "RightsService.Refuse": lambda s, c: pb.RefuseRequest(id="bad"),
    "RightsService.Dispute": lambda s, c: pb.DisputeRequest(id="bad"),
    "RightsService.DecideDispute": lambda s, c: pb.DecideDisputeRequest(id="bad", daily_quota=-1),
    "RightsService.IssueGrant": lambda s, c: pb.IssueGrantRequest(request_id="bad", daily_quota=-1),
    "RightsService.SuspendGrant": lambda s, c: pb.ChangeGrantRequest(id="bad"),
    "RightsService.ResumeGrant": lambda s, c: pb.ChangeGrantRequest(id="bad"),
    "RightsService.RevokeGrant": lambda s, c: pb.ChangeGrantRequest(id="bad"),
    "RightsService.GetGrant": lambda s, c: pb.GetGrantRequest(id="bad"),
    "RightsService.ListGrants": lambda s, c: pb.ListGrantsRequest(status=99, resource_code="bad"),  # type: ignore[arg-type]
    "AuditService.SearchRecords": lambda s, c: apb.SearchRecordsRequest(department_code="bad", resource_code="bad"),
    "ObjectionService.RaiseObjection": lambda s, c: opb.RaiseObjectionRequest(
        resource_code="bad", exchange_id="bad", received_sha256="zz"
    ),
    "ObjectionService.AnswerObjection": lambda s, c: opb.AnswerObjectionRequest(id="bad", kind=99),  # type: ignore[arg-type]
    "ObjectionService.EscalateObjection": lambda s, c: opb.EscalateObjectionRequest(id="bad"),
    "SubscriptionService.GetSubscription": lambda s, c: spb.GetSubscriptionRequest(id="bad"),
    "SubscriptionService.ListSubscriptions": lambda s, c: spb.ListSubscriptionsRequest(resource_code="bad"),
    "SubscriptionService.CancelSubscription": lambda s, c: spb.CancelSubscriptionRequest(id="bad"),
    "AuditService.ExportLog": lambda s, c: apb.ExportLogRequest(from_seq=10**12),
    "AuditService.GetCrossHubReceipt": lambda s, c: apb.GetCrossHubReceiptRequest(exchange_id=" " * 300),
    "AuditService.GetReport": lambda s, c: apb.GetReportRequest(from_date="2026-13-01", to_date="1900-01-01"),
    "FederationService.RegisterPeer": lambda s, c: fpb.RegisterPeerRequest(peer=fpb.Peer(code="x", relation=99)),  # type: ignore[arg-type]
    "FederationService.ListPeers": lambda s, c: fpb.ListPeersRequest(state=99),  # type: ignore[arg-type]
    "FederationService.GetPeer": lambda s, c: fpb.GetPeerRequest(code="bad"),
    "FederationService.SuspendPeer": lambda s, c: fpb.SuspendPeerRequest(code="bad"),
    "FederationService.ResumePeer": lambda s, c: fpb.ResumePeerRequest(code="bad"),
    "FederationService.EndPeer": lambda s, c: fpb.EndPeerRequest(code="bad"),
}
# Refusals that depend on what the request names: the caller holds the right in its own department, so the
# request is checked first (a bad one is INVALID_ARGUMENT) and the named target refused after. A steward or
# consumer of another department, and a reader not party to a share request or grant, are such callers.
ELSEWHERE = {
    *{(f"CatalogService.{m}", "foreign_steward") for m in ("CreateResource", "UpdateResource", "PublishResource")},
    *{(f"CatalogService.{m}", "foreign_steward") for m in ("SuspendResource", "RetireResource")},
    *{(f"CatalogService.{m}", "foreign_steward") for m in ("SetBinding", "GetBinding")},
    *{(f"RightsService.{m}", "foreign_steward") for m in ("Approve", "Refuse")},
    *{(f"RightsService.{m}Grant", "foreign_steward") for m in ("Suspend", "Resume", "Revoke")},
    ("RightsService.Dispute", "foreign_consumer"),
    ("ObjectionService.AnswerObjection", "foreign_steward"),
    *{(f"RightsService.{rpc}", who) for rpc in ("GetShareRequest", "GetGrant") for who in ("foreign_steward",)},
    *{(f"RightsService.{rpc}", who) for rpc in ("GetShareRequest", "GetGrant") for who in ("foreign_consumer",)},
    *{(f"RightsService.{rpc}", "foreign_system") for rpc in ("GetShareRequest", "GetGrant")},
    *{
        ("SubscriptionService.GetSubscription", who)
        for who in ("foreign_steward", "foreign_consumer", "foreign_system")
    },
    *{("SubscriptionService.CancelSubscription", who) for who in ("foreign_consumer", "foreign_system")},
}
# Administrative RPCs refused to some callers but not asked wrongly here, and why.
NOT_ASKED_WRONGLY = {
    "RightsService.CheckAccess": "its right is the caller's own department's systems or resources, named in it",
    "ConsoleService.CreateSignInLink": "its request has no field to get wrong",
    "FederationService.GetHubIdentity": "its request has no field to get wrong",
}
DENIED_CELLS = [
    (case, caller)
    for case in RPC_CASES
    for caller in REGISTERED
    if case["kind"] != "data"
    and case[caller] not in ("allow", "hidden", "unauthenticated")
    and case["rpc"] not in NOT_ASKED_WRONGLY
    and (case["rpc"], caller) not in ELSEWHERE
]


def test_every_administrative_rpc_refused_to_someone_is_asked_wrongly() -> None:
    refused = {case["rpc"] for case, _ in DENIED_CELLS}
    assert refused | set(NOT_ASKED_WRONGLY) == {
        c["rpc"]
        for c in RPC_CASES
        if c["kind"] != "data" and any(c[who] not in ("allow", "hidden") for who in REGISTERED)
    }
    assert set(INVALID) == refused, "every RPC refused to someone has a wrong request to try"


@pytest.mark.parametrize(("case", "caller"), DENIED_CELLS, ids=[f"{c['rpc']}-{who}" for c, who in DENIED_CELLS])
def test_the_right_is_decided_before_the_request_is_checked(scene: Scene, case: dict[str, str], caller: str) -> None:
    """A caller without the right learns nothing of the rules of a form it may not submit."""
    rpc = case["rpc"]
    before = scene.state()
    try:
        _invoke(scene.client(caller).channel, METHODS[rpc], INVALID[rpc](scene, caller), ())
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, f"{e.code()}: {e.details()}"
        assert reason_of(e) == case[caller], e.details()
    else:
        pytest.fail(f"{caller} was answered a wrong {rpc}")
    after = scene.state()
    assert int(after.pop("audit records")) == int(before.pop("audit records")) + 1  # the refusal, recorded
    assert after == before


@pytest.mark.parametrize("caller", ["operator", "consumer", "auditor", "system", "no_role"])
def test_a_caller_who_certifies_no_system_is_refused_before_its_system_request_is_checked(
    scene: Scene, caller: str
) -> None:
    """The system form of IssueCertificate (the table's request names a person): the system right first."""
    wrong = rpb.IssueCertificateRequest(
        principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_SYSTEM, code="Not A Code!"), csr_pem="x", validity_days=-1
    )
    c = scene.client(caller)
    with pytest.raises(grpc.RpcError) as info:
        c.call(c.registry.IssueCertificate, wrong)
    error = info.value
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert reason_of(error) == "SYSTEM_CERTIFICATE_ISSUE_DENIED"


# The command line


def _cli_cells() -> list[tuple[dict[str, str], str]]:
    return [(case, who) for case in CLI_CASES for who in REGISTERED if who not in case["holders"].split()]


def _catalog_file(scene: Scene) -> Path:
    path = scene.files / "catalog.yaml"
    path.write_text(
        f"""resources:
  - code: {LOOKUP}
    name: 居民身份信息
    department: {POLICE.code}
    summary: 改写的摘要
    classification: 基础信息资源/人口信息
    share_type: conditional
    share_conditions: 按事项申请
    legal_basis: 《中华人民共和国居民身份证法》第十五条
    share_method: query
    update_cycle: real_time
    data_items:
      - {{name: name, title: 姓名, type: string}}
      - {{name: id_number, title: 公民身份号码, type: string, filterable: true}}
""",
        encoding="utf-8",
    )
    return path


def _binding_file(scene: Scene) -> Path:
    path = scene.files / "binding.yaml"
    path.write_text(f"resource_code: {LOOKUP}\nsql: {{url: 'sqlite:///{scene.files}/x.db', table: rk}}\n")
    return path


@pytest.mark.parametrize(
    ("case", "caller"), _cli_cells(), ids=[f"{c['argv'].split(' {')[0]}-{who}" for c, who in _cli_cells()]
)
def test_cli(
    scene: Scene, case: dict[str, str], caller: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    values = {
        "self": _own_username(scene, caller),
        "police": POLICE.code,
        "housing": HOUSING.code,
        "registry": REGISTRY.code,
        "lookup": LOOKUP,
        "pending": scene.pending,
        "approved": scene.approved,
        "refused": scene.refused,
        "disputed": scene.disputed,
        "grant": scene.grant,
        "objection": scene.objection,
        "out": str(tmp_path / "out"),
        "victim_fingerprint": scene.fingerprint(_victim(caller)),
        "catalog_file": str(_catalog_file(scene)),
        "binding_file": str(_binding_file(scene)),
    }
    argv = [part.format(**values) for part in shlex.split(case["argv"])]
    before = scene.state()
    capsys.readouterr()
    code = main(["--hub", scene.hub.settings.hub_address, "--identity", str(scene.identities[caller]), *argv])
    err = capsys.readouterr().err
    assert code != 0, f"{caller} ran `exchange {' '.join(argv)}`: the attack succeeded"
    assert "PERMISSION_DENIED" in err and case["message"].format(**values) in err, err
    assert str(scene.refs[caller]) in err
    after = scene.state()
    # The refusal is audited; nothing else changes.
    assert int(after.pop("audit records")) == int(before.pop("audit records")) + 1
    assert after == before, "a refused command changed the store"
    assert not (tmp_path / "out" / "key.pem").exists(), "a refused certificate left a key behind"


# Rights by the side door


def _refused(method: Callable[..., Any], request: Message) -> grpc.Call:
    """Calls a stub's ``method``, expecting a refusal; the error."""
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=20)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


def _roles(scene: Scene, username: str) -> set[int]:
    c = scene.client("operator")
    return set(c.call(c.registry.GetPerson, rpb.GetPersonRequest(username=username)).roles)


@pytest.mark.parametrize("role", list(m.Role))
def test_nobody_assigns_itself_a_role(scene: Scene, role: m.Role) -> None:
    before = scene.state()
    for caller in ("operator", "owner_steward", "consumer", "share_manager", "auditor", "no_role"):
        username = scene.refs[caller].code
        held = _roles(scene, username)
        c = scene.client(caller)
        change = rpb.ChangeRoleRequest(username=username, role=w.ROLE.wire(role), reason="自己给自己")
        method = c.registry.UnassignRole if w.ROLE.wire(role) in held else c.registry.AssignRole
        error = _refused(method, change)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        expected = "SELF_ELEVATION" if caller == "operator" else "REGISTRY_REGISTER_DENIED"
        assert reason_of(error) == expected, error.details()
        assert _roles(scene, username) == held
    _only_refusals_recorded(scene, before, refused=6)


def test_an_operator_gets_no_separated_right_through_a_colleague(scene: Scene) -> None:
    """A second operator (the first one's accomplice) may not give it a role joined to the operator's."""
    accomplice = scene.hub.add_person("op-second", AUTHORITY.code, m.Role.OPERATOR)
    scene.identities["accomplice"] = accomplice
    before = scene.state()
    for role in (m.Role.OWNER_STEWARD, m.Role.SHARE_MANAGER, m.Role.CONSUMER, m.Role.AUDITOR):
        c = scene.client("accomplice")
        change = rpb.ChangeRoleRequest(username="op-admin", role=w.ROLE.wire(role), reason="兼任")
        error = _refused(c.registry.AssignRole, change)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "cannot be held together" in (error.details() or ""), error.details()
    # Nor take the operator's role away, to make room for another: a person keeps at least one role.
    change = rpb.ChangeRoleRequest(username="op-admin", role=w.ROLE.wire(m.Role.OPERATOR), reason="腾位置")
    assert _refused(c.registry.UnassignRole, change).code() == grpc.StatusCode.FAILED_PRECONDITION
    _only_refusals_recorded(scene, before, refused=5)


def test_a_requester_does_not_decide_its_own_request(scene: Scene) -> None:
    """A steward who is also its department's consumer applies, then tries to approve and to grant."""
    both = scene.hub.add_person("bdc-both", REGISTRY.code, m.Role.OWNER_STEWARD, m.Role.CONSUMER)
    scene.identities["both"] = both
    request = _apply(scene, "both")
    before = scene.state()
    c = scene.client("both")
    for method, message in (
        (c.rights.Approve, pb.ApproveRequest(id=request, reason="自批")),
        (c.rights.Refuse, pb.RefuseRequest(id=request, reason="自拒")),
        (c.rights.IssueGrant, pb.IssueGrantRequest(request_id=request)),
    ):
        error = _refused(method, message)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert reason_of(error) in {"REQUEST_DECIDE_DENIED", "GRANT_ISSUE_DENIED"}
    _only_refusals_recorded(scene, before, refused=3)
    # Nor does a department apply for its own data, so its steward never decides its own request.
    police_both = scene.hub.add_person("ga-both", POLICE.code, m.Role.OWNER_STEWARD, m.Role.CONSUMER)
    scene.identities["police_both"] = police_both
    c = scene.client("police_both")
    error = _refused(c.rights.Apply, _application())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "holds this data" in (error.details() or "")
    assert scene.state()["share_requests"] == before["share_requests"]


def test_the_consumer_departments_steward_does_not_approve_its_departments_request(scene: Scene) -> None:
    steward = scene.hub.add_person("bdc-steward", REGISTRY.code, m.Role.OWNER_STEWARD)
    scene.identities["registry_steward"] = steward
    before = scene.state()
    c = scene.client("registry_steward")
    error = _refused(c.rights.Approve, pb.ApproveRequest(id=scene.pending, reason="同意"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(error) == "REQUEST_DECIDE_DENIED"
    assert f"for department {POLICE.code}" in (error.details() or "")
    _only_refusals_recorded(scene, before, refused=1)


def test_the_share_manager_does_not_pass_over_the_owner(scene: Scene) -> None:
    """A grant needs the owner's approval first, or a dispute of its refusal: never a pending request."""
    before = scene.state()
    c = scene.client("share_manager")
    for method, message in (
        (c.rights.IssueGrant, pb.IssueGrantRequest(request_id=scene.pending)),
        (c.rights.DecideDispute, pb.DecideDisputeRequest(id=scene.pending, grant=True, reason="直接给")),
        (c.rights.DecideDispute, pb.DecideDisputeRequest(id=scene.refused, grant=True, reason="直接给")),
    ):
        error = _refused(method, message)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    _only_refusals_recorded(scene, before, refused=3)


@pytest.mark.parametrize("caller", REGISTERED)
def test_nobody_revokes_the_certificate_it_calls_with(scene: Scene, caller: str) -> None:
    before = scene.state()
    c = scene.client(caller)
    revoke = rpb.RevokeCertificateRequest(fingerprint_sha256=scene.fingerprint(caller), reason="自己撤销")
    error = _refused(c.registry.RevokeCertificate, revoke)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "calling with" in (error.details() or "")
    _only_refusals_recorded(scene, before, refused=1)
    assert c.call(c.registry.WhoAmI, rpb.WhoAmIRequest()).principal.code == scene.refs[caller].code


def test_a_renewal_certifies_the_caller_whoever_the_request_names(scene: Scene, tmp_path: Path) -> None:
    """A consumer renews with a request naming the share manager: the new certificate is its own."""
    key = pki.new_key()
    csr = pki.make_csr(key, scene.refs["share_manager"])
    c = scene.client("consumer")
    renewed = c.call(c.registry.RenewCertificate, rpb.RenewCertificateRequest(csr_pem=csr)).certificate
    assert (renewed.principal.kind, renewed.principal.code) == (rpb.PRINCIPAL_KIND_PERSON, "bdc-clerk")
    pki.IdentityFiles(tmp_path / "renewed").write(key, renewed.pem.encode(), scene.hub.ca_pem)
    with scene.hub.client(tmp_path / "renewed") as renewed_client:
        me = renewed_client.call(renewed_client.registry.WhoAmI, rpb.WhoAmIRequest())
        assert me.principal.code == "bdc-clerk"
        error = _refused(renewed_client.rights.IssueGrant, pb.IssueGrantRequest(request_id=scene.approved))
    assert reason_of(error) == "GRANT_ISSUE_DENIED"


def test_a_system_cannot_act_for_another_through_the_development_header(scene: Scene) -> None:
    """Outside development mode the hub takes the caller from its certificate only, whatever the metadata says."""
    as_granted = ((DEV_PRINCIPAL_HEADER, "system/bdc-djxt"),)
    c = scene.client("foreign_system")
    me = c.registry.WhoAmI(rpb.WhoAmIRequest(), timeout=20, metadata=as_granted)
    assert me.principal.code == "zj-zfxt"
    before, known = scene.state(), _seen(scene)
    _, error = _attempt(scene, "foreign_system", "ExchangeService.Query", as_granted)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "NO_GRANT"
    (record,) = _denied_records(scene, "foreign_system", known)
    assert record["actor"] == "system/zj-zfxt"
    as_operator = ((DEV_PRINCIPAL_HEADER, "person/op-admin"),)
    _, error = _attempt(scene, "consumer", "RegistryService.CreateDepartment", as_operator)
    assert error is not None and reason_of(error) == "REGISTRY_REGISTER_DENIED"
    after = scene.state()
    assert int(after.pop("audit records")) == int(before.pop("audit records")) + 2  # the query and this one
    assert after == before


def test_a_consumer_does_not_apply_through_another_departments_system(scene: Scene) -> None:
    before = scene.state()
    c = scene.client("foreign_consumer")
    error = _refused(c.rights.Apply, _application(systems=("bdc-djxt",)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"request.system_codes[0]"}
    _only_refusals_recorded(scene, before, refused=1)


def test_an_operator_cannot_certify_a_key_of_its_own_for_a_system(scene: Scene) -> None:
    """The operator "reads no data": it may not certify a system, or it could act as one with its own key.

    A system is certified by its own department's people; another department's steward may not either.
    """
    system = scene.refs["system"]
    for caller in ("operator", "foreign_steward", "owner_steward"):  # the police steward is not bdc-djxt's
        c = scene.client(caller)
        issue = rpb.IssueCertificateRequest(
            principal=w.principal_ref_to_wire(system), csr_pem=pki.make_csr(pki.new_key(), system)
        )
        error = _refused(c.registry.IssueCertificate, issue)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert reason_of(error) == "SYSTEM_CERTIFICATE_ISSUE_DENIED"
    unknown = m.PrincipalRef(m.PrincipalKind.SYSTEM, "no-such-sys")
    c = scene.client("foreign_steward")
    probe = rpb.IssueCertificateRequest(
        principal=w.principal_ref_to_wire(unknown), csr_pem=pki.make_csr(pki.new_key(), unknown)
    )
    assert _refused(c.registry.IssueCertificate, probe).code() == grpc.StatusCode.PERMISSION_DENIED  # no probing
