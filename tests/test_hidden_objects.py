"""Authorization before existence: a caller who may not see an object learns nothing of whether it exists.

Every RPC of the hub that names an existing object (by id, code, username or fingerprint) is asked, by
callers without the right, for one that exists and one that does not: both are PERMISSION_DENIED, with the
same reason and the same message but for the name asked. A caller who could see the object if it existed
is told NOT_FOUND of the missing one. Where what a caller sees depends on the object (another department's
request, grant or draft), the object it may not see and the missing one are answered alike.

The RPCs come from the generated service descriptors: a new one fails
``test_every_rpc_is_probed_or_names_no_object`` until it is placed here.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

import exchange.v1
from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.client import HubClient
from exchange.federation.model import Peer, PeerRelation
from exchange.store.subscriptions import Subscription
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import objection_pb2 as opb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import subscription_pb2 as spb
from exchange.validation import uscc_check_character
from tests.exchange_world import LOOKUP, PURPOSE, REGISTRY, every_caller, make_world, serve_lookup
from tests.harness import POLICE, TEST_RECORD, RunningHub, base_settings, identity_spec, reason_of, running_hub, today

DRAFT = "10101/350200000007"
MISSING_RESOURCE = "10101/350200000099"
MISSING_REQUEST = "SR-20000101-00000000"
MISSING_GRANT = "GR-20000101-00000000"
MISSING_OBJECTION = "OB-20000101-00000000"
MISSING_SUBSCRIPTION = "SB-20000101-000000000000"
MISSING_DEPARTMENT = "11350200MB0099999" + uscc_check_character("11350200MB0099999")
PEER, MISSING_PEER = "350000", "360000"


# Services the hub does not serve to its members: the departments' ProviderService, and what it serves to
# peer hubs only, on its federation listener.
NOT_FOR_MEMBERS = {
    "exchange.v1.ProviderService",
    "exchange.v1.WitnessService",
    "exchange.v1.ReceiptService",
    "exchange.v1.CrossHubRightsService",
    "exchange.v1.ForwardingService",
}


def _hub_methods() -> dict[str, descriptor.MethodDescriptor]:
    """Every method of every service the hub serves its members (NOT_FOR_MEMBERS are not)."""
    found: dict[str, descriptor.MethodDescriptor] = {}
    for module in pkgutil.iter_modules(exchange.v1.__path__):
        if module.name.endswith("_pb2"):
            generated = importlib.import_module(f"exchange.v1.{module.name}")
            for service in generated.DESCRIPTOR.services_by_name.values():
                if service.full_name not in NOT_FOR_MEMBERS:
                    found |= {f"{service.name}.{method.name}": method for method in service.methods}
    return found


METHODS = _hub_methods()


@dataclass
class Scene:
    hub: RunningHub
    identities: dict[str, Path]
    files: Path
    pending: str = ""
    grant: str = ""
    objection: str = ""
    subscription: str = ""
    clients: dict[str, HubClient] = field(default_factory=dict)

    def client(self, caller: str) -> HubClient:
        if caller not in self.clients:
            self.clients[caller] = self.hub.client(self.identities[caller])
        return self.clients[caller]

    def fingerprint(self, caller: str) -> str:
        return pki.fingerprint_of_pem(pki.IdentityFiles(self.identities[caller]).cert.read_bytes())


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("hidden")
    with running_hub(base_settings(root / "hub")) as hub:
        world = make_world(hub)
        grant = serve_lookup(world, root)
        identities = every_caller(world)
        hub.publish(world.people["police"], identity_spec(DRAFT, POLICE.code, name="草稿目录"), publish=False)
        scene = Scene(hub, identities, root / "files", grant=grant)
        scene.files.mkdir()
        try:
            c = scene.client("consumer")
            scene.pending = c.call(c.rights.Apply, _application()).id
            doubt = opb.RaiseObjectionRequest(resource_code=LOOKUP, fields=["name"], reason="姓名与户籍不符")
            scene.objection = c.call(c.objections.RaiseObjection, doubt).id
            scene.subscription = _subscription(hub, grant)
            yield scene
        finally:
            for client in scene.clients.values():
                client.close()


def _subscription(hub: RunningHub, grant: str) -> str:
    """The registry system's subscription to the lookup, written in the store (its SQL source tells no changes)."""
    sub = Subscription(
        id="SB-20261204-0123456789ab", resource_code=LOOKUP, owner_department=POLICE.code,
        consumer_department=REGISTRY.code, consumer_system="bdc-djxt", grant_id=grant, purpose=PURPOSE,
        filters={}, fields=("name",), created_by="system/bdc-djxt", created_at=dt.datetime.now(dt.UTC),
        source_cursor="",
    )  # fmt: skip
    return hub.hub.store.subscriptions.add(sub, audit=TEST_RECORD).id


def _application() -> pb.ApplyRequest:
    return pb.ApplyRequest(request=w.application_to_wire(_app(LOOKUP)))


def _app(resource: str) -> m.Application:
    return m.Application(
        resource_code=resource,
        consumer_department_code="",
        system_codes=("bdc-djxt",),
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name",),
        start=today(),
        end=today() + dt.timedelta(days=30),
        expected_daily_calls=100,
    )


def _spec(code: str) -> m.ResourceSpec:
    return identity_spec(code, POLICE.code, data_items=(m.DataItem("name", "姓名", m.FieldType.STRING),))


def _csr(kind: m.PrincipalKind, code: str) -> str:
    return pki.make_csr(pki.new_key(), m.PrincipalRef(kind, code))


def _certify(kind: m.PrincipalKind) -> Callable[[Scene, str], Message]:
    def ask(s: Scene, code: str) -> Message:
        ref = w.principal_ref_to_wire(m.PrincipalRef(kind, code))
        return rpb.IssueCertificateRequest(principal=ref, csr_pem=_csr(kind, code))

    return ask


def _peer(s: Scene) -> str:
    """A peer hub registered in the scene's store (it need not run: it is only named)."""
    store = s.hub.hub.store
    if store.peers.find(PEER) is None:
        _, ca = pki.create_ca("福建省 CA")
        peer = Peer(PEER, "福建省", "province", PeerRelation.PARENT, "localhost:1", pki.cert_pem(ca).decode())
        store.peers.register(peer, audit=TEST_RECORD)
    return PEER


def _binding(s: Scene, code: str) -> Message:
    backend = cpb.SqlBackend(url=f"sqlite:///{s.files}/x.db", table="rk")
    return cpb.SetBindingRequest(binding=cpb.Binding(resource_code=code, sql=backend), reason="改接入")


@dataclass(frozen=True)
class Probe:
    """How to ask an RPC for one object by its name, an existing name and a missing one, and who asks.

    ``outsiders`` may not see (or change) such an object: PERMISSION_DENIED for both names, alike.
    ``insider`` could see it if it existed: NOT_FOUND for the missing one ("" where every caller with the
    right sees only some of them, so that it is answered as the outsiders are).
    """

    ask: Callable[[Scene, str], Message]
    existing: Callable[[Scene], str]
    missing: str
    outsiders: tuple[str, ...]
    insider: str


def _fixed(name: str) -> Callable[[Scene], str]:
    return lambda s: name


def _peer_probes(ask: Callable[[Scene, str], Message]) -> list[Probe]:
    """A peer hub, asked for by everyone but the operator (who alone manages peers)."""
    return [Probe(ask, _peer, MISSING_PEER, REGISTRAR_OUTSIDERS, "operator")]


CATALOG_OUTSIDERS = ("operator", "consumer", "share_manager", "auditor", "system", "no_role")
REQUEST_READ_OUTSIDERS = ("operator", "foreign_steward", "foreign_consumer", "foreign_system", "no_role")
DECIDER_OUTSIDERS = ("operator", "consumer", "foreign_steward", "share_manager", "system", "no_role")
GRANTER_OUTSIDERS = ("operator", "consumer", "owner_steward", "auditor", "system", "no_role")
GRANT_CHANGE_OUTSIDERS = ("operator", "consumer", "foreign_steward", "auditor", "system", "no_role")
REGISTRAR_OUTSIDERS = ("owner_steward", "consumer", "share_manager", "auditor", "system", "no_role")

PROBES: dict[str, list[Probe]] = {
    "RegistryService.GetDepartment": [
        Probe(lambda s, n: rpb.GetDepartmentRequest(code=n), _fixed(POLICE.code), MISSING_DEPARTMENT, (), "system")
    ],
    "RegistryService.GetSystem": [
        Probe(lambda s, n: rpb.GetSystemRequest(code=n), _fixed("bdc-djxt"), "no-such-sys", (), "foreign_system")
    ],
    "RegistryService.GetPerson": [
        Probe(
            lambda s, n: rpb.GetPersonRequest(username=n),
            _fixed("sm-lin"),
            "no-such-one",
            ("system", "foreign_system"),
            "consumer",
        )
    ],
    "RegistryService.AssignRole": [
        Probe(
            lambda s, n: rpb.ChangeRoleRequest(username=n, role=w.ROLE.wire(m.Role.AUDITOR), reason="调岗"),
            _fixed("zj-clerk"),
            "no-such-one",
            REGISTRAR_OUTSIDERS,
            "operator",
        )
    ],
    "RegistryService.UnassignRole": [
        Probe(
            lambda s, n: rpb.ChangeRoleRequest(username=n, role=w.ROLE.wire(m.Role.CONSUMER), reason="调岗"),
            _fixed("zj-clerk"),
            "no-such-one",
            REGISTRAR_OUTSIDERS,
            "operator",
        )
    ],
    "RegistryService.IssueCertificate": [
        Probe(_certify(m.PrincipalKind.PERSON), _fixed("zj-clerk"), "no-such-one", REGISTRAR_OUTSIDERS, "operator"),
        # A system is certified by its own department only: an unknown one is refused as another's is.
        Probe(
            _certify(m.PrincipalKind.SYSTEM),
            _fixed("bdc-djxt"),
            "no-such-sys",
            ("operator", "owner_steward", "foreign_steward", "foreign_consumer", "share_manager", "foreign_system"),
            "",
        ),
    ],
    "RegistryService.RevokeCertificate": [
        Probe(
            lambda s, n: rpb.RevokeCertificateRequest(fingerprint_sha256=n, reason="密钥泄露"),
            lambda s: s.fingerprint("foreign_consumer"),
            "0" * 64,
            REGISTRAR_OUTSIDERS,
            "operator",
        )
    ],
    "CatalogService.UpdateResource": [
        Probe(
            lambda s, n: cpb.UpdateResourceRequest(resource=w.spec_to_wire(_spec(n)), reason="改写"),
            _fixed(LOOKUP),
            MISSING_RESOURCE,
            CATALOG_OUTSIDERS,
            "owner_steward",
        )
    ],
    **{
        f"CatalogService.{verb}Resource": [
            Probe(
                lambda s, n: cpb.ChangeResourceStatusRequest(code=n, reason="变更"),
                _fixed(LOOKUP),
                MISSING_RESOURCE,
                CATALOG_OUTSIDERS,
                "owner_steward",
            )
        ]
        for verb in ("Publish", "Suspend", "Retire")
    },
    "CatalogService.GetResource": [
        Probe(lambda s, n: cpb.GetResourceRequest(code=n), _fixed(LOOKUP), MISSING_RESOURCE, (), "consumer")
    ],
    "CatalogService.ListResourceVersions": [
        Probe(lambda s, n: cpb.ListResourceVersionsRequest(code=n), _fixed(LOOKUP), MISSING_RESOURCE, (), "system")
    ],
    "CatalogService.SetBinding": [
        Probe(_binding, _fixed(LOOKUP), MISSING_RESOURCE, CATALOG_OUTSIDERS, "owner_steward")
    ],
    "CatalogService.GetBinding": [
        Probe(
            lambda s, n: cpb.GetBindingRequest(resource_code=n),
            _fixed(LOOKUP),
            MISSING_RESOURCE,
            CATALOG_OUTSIDERS,
            "owner_steward",
        )
    ],
    "RightsService.Apply": [
        Probe(
            lambda s, n: pb.ApplyRequest(request=w.application_to_wire(_app(n))),
            _fixed(LOOKUP),
            MISSING_RESOURCE,
            ("operator", "owner_steward", "share_manager", "auditor", "system", "no_role"),
            "consumer",
        )
    ],
    "RightsService.GetShareRequest": [
        Probe(
            lambda s, n: pb.GetShareRequestRequest(id=n),
            lambda s: s.pending,
            MISSING_REQUEST,
            REQUEST_READ_OUTSIDERS,
            "share_manager",
        )
    ],
    "RightsService.Approve": [
        Probe(lambda s, n: pb.ApproveRequest(id=n), lambda s: s.pending, MISSING_REQUEST, DECIDER_OUTSIDERS, "")
    ],
    "RightsService.Refuse": [
        Probe(
            lambda s, n: pb.RefuseRequest(id=n, reason="用途不明"),
            lambda s: s.pending,
            MISSING_REQUEST,
            DECIDER_OUTSIDERS,
            "",
        )
    ],
    "RightsService.Dispute": [
        Probe(
            lambda s, n: pb.DisputeRequest(id=n, reason="有依据"),
            lambda s: s.pending,
            MISSING_REQUEST,
            ("operator", "owner_steward", "foreign_consumer", "share_manager", "system", "no_role"),
            "",
        )
    ],
    "RightsService.DecideDispute": [
        Probe(
            lambda s, n: pb.DecideDisputeRequest(id=n, grant=False, reason="维持"),
            lambda s: s.pending,
            MISSING_REQUEST,
            GRANTER_OUTSIDERS,
            "share_manager",
        )
    ],
    "RightsService.IssueGrant": [
        Probe(
            lambda s, n: pb.IssueGrantRequest(request_id=n),
            lambda s: s.pending,
            MISSING_REQUEST,
            GRANTER_OUTSIDERS,
            "share_manager",
        )
    ],
    **{
        f"RightsService.{verb}Grant": [
            Probe(
                lambda s, n: pb.ChangeGrantRequest(id=n, reason="核查"),
                lambda s: s.grant,
                MISSING_GRANT,
                GRANT_CHANGE_OUTSIDERS,
                "share_manager",
            )
        ]
        for verb in ("Suspend", "Resume", "Revoke")
    },
    "RightsService.GetGrant": [
        Probe(
            lambda s, n: pb.GetGrantRequest(id=n), lambda s: s.grant, MISSING_GRANT, REQUEST_READ_OUTSIDERS, "auditor"
        )
    ],
    "ObjectionService.RaiseObjection": [
        Probe(
            lambda s, n: opb.RaiseObjectionRequest(resource_code=n, fields=["name"], reason="姓名有误"),
            _fixed(LOOKUP),
            MISSING_RESOURCE,
            ("operator", "owner_steward", "share_manager", "auditor", "no_role"),
            "consumer",
        )
    ],
    "ObjectionService.AnswerObjection": [
        Probe(
            lambda s, n: opb.AnswerObjectionRequest(id=n, kind=opb.ANSWER_KIND_REJECTED, text="数据无误"),
            lambda s: s.objection,
            MISSING_OBJECTION,
            ("operator", "consumer", "foreign_steward", "share_manager", "system", "no_role"),
            "",
        )
    ],
    "ObjectionService.EscalateObjection": [
        Probe(
            lambda s, n: opb.EscalateObjectionRequest(id=n, reason="督办"),
            lambda s: s.objection,
            MISSING_OBJECTION,
            ("operator", "consumer", "owner_steward", "auditor", "system", "no_role"),
            "share_manager",
        )
    ],
    "SubscriptionService.GetSubscription": [
        Probe(
            lambda s, n: spb.GetSubscriptionRequest(id=n),
            lambda s: s.subscription,
            MISSING_SUBSCRIPTION,
            ("operator", "foreign_steward", "foreign_consumer", "foreign_system", "no_role"),
            "share_manager",
        )
    ],
    "SubscriptionService.CancelSubscription": [
        Probe(
            lambda s, n: spb.CancelSubscriptionRequest(id=n, reason="停止"),
            lambda s: s.subscription,
            MISSING_SUBSCRIPTION,
            ("operator", "owner_steward", "foreign_steward", "foreign_consumer", "share_manager", "foreign_system"),
            "",
        )
    ],
    "SubscriptionService.Acknowledge": [
        Probe(
            lambda s, n: spb.AcknowledgeRequest(id=n, sequence=0),
            lambda s: s.subscription,
            MISSING_SUBSCRIPTION,
            ("operator", "owner_steward", "consumer", "share_manager", "foreign_system", "no_role"),
            "",
        )
    ],
    "ObjectionService.GetObjection": [
        Probe(lambda s, n: opb.GetObjectionRequest(id=n), lambda s: s.objection, MISSING_OBJECTION, (), "consumer")
    ],
    # Peer hubs are the operator's business (federation): to anyone else they do not exist.
    "FederationService.GetPeer": _peer_probes(lambda s, n: fpb.GetPeerRequest(code=n)),
    "FederationService.SuspendPeer": _peer_probes(lambda s, n: fpb.SuspendPeerRequest(code=n, reason="检查")),
    "FederationService.ResumePeer": _peer_probes(lambda s, n: fpb.ResumePeerRequest(code=n, reason="恢复")),
    "FederationService.EndPeer": _peer_probes(lambda s, n: fpb.EndPeerRequest(code=n, reason="终止")),
}

# RPCs that name no existing object of a department, and why.
NAMES_NO_OBJECT = {
    "RegistryService.WhoAmI": "the caller itself",
    "RegistryService.CreateDepartment": "creates",
    "RegistryService.ListDepartments": "lists",
    "RegistryService.CreateSystem": "creates",
    "RegistryService.ListSystems": "lists",
    "RegistryService.CreatePerson": "creates",
    "RegistryService.ListPeople": "lists",
    "RegistryService.ListCertificates": "lists",
    "RegistryService.RenewCertificate": "the caller's own certificate",
    "RegistryService.GetTrustBundle": "the hub's own",
    "CatalogService.CreateResource": "creates",
    "CatalogService.ListResources": "lists",
    "RightsService.ListShareRequests": "lists (each caller sees what it may)",
    "RightsService.ListGrants": "lists (each caller sees what it may)",
    "RightsService.CheckAccess": "names a system and a resource, which every member may read (GetSystem, GetResource)",
    "AuditService.GetCheckpoint": "the log's public checkpoints",
    "AuditService.GetInclusionProof": "a position in the public log (the record itself only to who may read it)",
    "AuditService.GetConsistencyProof": "sizes of the public log",
    "AuditService.SearchRecords": "searches (each caller sees what it may)",
    "AuditService.ExportLog": "the whole log",
    "AuditService.GetReport": "figures per department for a period, for auditors and the share manager",
    "AuditService.GetCrossHubReceipt": "an exchange id, for auditors, who read the whole log",
    "ExchangeService.Query": "the data plane, decided by the grant",
    "ExchangeService.StreamQuery": "the data plane, decided by the grant",
    "ExchangeService.FetchDocument": "the data plane, decided by the grant",
    "ConsoleService.CreateSignInLink": "the caller's own sign-in link",
    "ObjectionService.ListObjections": "lists (an objection's state is public to whoever may see its resource)",
    "SubscriptionService.CreateSubscription": "the data plane, decided by the grant (as Query)",
    "SubscriptionService.ListSubscriptions": "lists (each caller sees what it may)",
    "SubscriptionService.Follow": "a stream of the data plane; refused as Acknowledge is, whether it exists or not",
    "FederationService.GetHubIdentity": "the hub's own",
    "FederationService.RegisterPeer": "creates",
    "FederationService.ListPeers": "lists (the operator's)",
    "PeeringService.Introduce": "served on the federation listener only, to peer hubs (the caller itself)",
    "PeeringService.NotifyPeering": "served on the federation listener only, to peer hubs (the caller itself)",
    "PeeringService.ListOfferedEntries": "served on the federation listener only, to peer hubs (offers to the caller)",
}


def _call(scene: Scene, caller: str, rpc: str, request: Message) -> grpc.Call:
    """Calls ``rpc`` by its descriptor as ``caller``, expecting a refusal; the error."""
    method = METHODS[rpc]
    assert request.DESCRIPTOR is method.input_type, f"{rpc} takes {method.input_type.full_name}"
    path = f"/{method.containing_service.full_name}/{method.name}"
    parse = message_factory.GetMessageClass(method.output_type).FromString
    stub = scene.client(caller).channel.unary_unary(path, lambda r: r.SerializeToString(), parse)
    with pytest.raises(grpc.RpcError) as info:
        stub(request, timeout=20)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


def _answer(error: grpc.Call, name: str) -> tuple[grpc.StatusCode, str, str]:
    """What a refusal tells: its code, its reason and its message with the name asked taken out."""
    return error.code(), reason_of(error), (error.details() or "").replace(name, "<name>")


def test_every_rpc_is_probed_or_names_no_object() -> None:
    assert set(PROBES).isdisjoint(NAMES_NO_OBJECT)
    assert set(PROBES) | set(NAMES_NO_OBJECT) == set(METHODS), "place every RPC of the hub here"


CELLS = [(rpc, n, who) for rpc, probes in PROBES.items() for n, p in enumerate(probes) for who in p.outsiders]


@pytest.mark.parametrize(("rpc", "n", "caller"), CELLS, ids=[f"{r}-{n}-{w}" for r, n, w in CELLS])
def test_a_caller_without_the_right_is_refused_alike_whether_it_exists_or_not(
    scene: Scene, rpc: str, n: int, caller: str
) -> None:
    probe = PROBES[rpc][n]
    existing = probe.existing(scene)
    present = _answer(_call(scene, caller, rpc, probe.ask(scene, existing)), existing)
    absent = _answer(_call(scene, caller, rpc, probe.ask(scene, probe.missing)), probe.missing)
    assert present[0] == grpc.StatusCode.PERMISSION_DENIED, present
    assert absent == present


INSIDERS = [(rpc, n) for rpc, probes in PROBES.items() for n, p in enumerate(probes) if p.insider]


@pytest.mark.parametrize(("rpc", "n"), INSIDERS, ids=[f"{r}-{n}" for r, n in INSIDERS])
def test_a_caller_who_could_see_it_is_told_it_does_not_exist(scene: Scene, rpc: str, n: int) -> None:
    probe = PROBES[rpc][n]
    error = _call(scene, probe.insider, rpc, probe.ask(scene, probe.missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND, f"{error.code()}: {error.details()}"


DRAFT_PROBES: dict[str, Callable[[Scene, str], Message]] = {
    "CatalogService.GetResource": lambda s, n: cpb.GetResourceRequest(code=n),
    "CatalogService.ListResourceVersions": lambda s, n: cpb.ListResourceVersionsRequest(code=n),
    "CatalogService.UpdateResource": lambda s, n: cpb.UpdateResourceRequest(
        resource=w.spec_to_wire(_spec(n)), reason="改写"
    ),
    "CatalogService.PublishResource": lambda s, n: cpb.ChangeResourceStatusRequest(code=n, reason="发布"),
    "CatalogService.RetireResource": lambda s, n: cpb.ChangeResourceStatusRequest(code=n, reason="停用"),
    "CatalogService.SetBinding": _binding,
    "CatalogService.GetBinding": lambda s, n: cpb.GetBindingRequest(resource_code=n),
}


@pytest.mark.parametrize("rpc", list(DRAFT_PROBES))
def test_another_departments_draft_is_answered_as_a_missing_entry(scene: Scene, rpc: str) -> None:
    """A steward of housing may write catalog entries, but the police's drafts do not exist for it."""
    ask = DRAFT_PROBES[rpc]
    draft = _answer(_call(scene, "foreign_steward", rpc, ask(scene, DRAFT)), DRAFT)
    missing = _answer(_call(scene, "foreign_steward", rpc, ask(scene, MISSING_RESOURCE)), MISSING_RESOURCE)
    assert draft == missing and draft[0] == grpc.StatusCode.NOT_FOUND, draft


def test_a_party_to_a_request_sees_it_and_the_steward_who_decides_is_not_told_which_ids_exist(
    scene: Scene,
) -> None:
    """The owner's steward reads the request for its data; asked for a missing one, it is refused as a
    steward of another department is for this one, since that is all it could tell the two apart by."""
    c = scene.client("owner_steward")
    assert c.call(c.rights.GetShareRequest, pb.GetShareRequestRequest(id=scene.pending)).id == scene.pending
    mine = _answer(
        _call(scene, "owner_steward", "RightsService.GetShareRequest", pb.GetShareRequestRequest(id=MISSING_REQUEST)),
        MISSING_REQUEST,
    )
    assert mine[:2] == (grpc.StatusCode.PERMISSION_DENIED, "REQUEST_READ_DENIED"), mine
