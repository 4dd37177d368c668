"""Peering between hubs: both operators must register it, either may suspend or end it, and only a registered
peer's hub certificate, from the CA registered for it, is let in; hub certificates never pass as departments."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from audit.cosignature import WitnessKey, WitnessVerifier
from audit.note import Verifier
from exchange import ca, errors, pki
from exchange import models as m
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.client import HubClient
from exchange.cli.main import main
from exchange.federation.model import HubKeys, Peer, PeerRelation, PeerState
from exchange.federation.tls import HubCertificate, channel_to, load_hub_certificate
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import federation_pb2_grpc as fpb_grpc
from exchange.v1 import registry_pb2 as rpb
from tests.federation_support import Node, hub_identity, hubs, peer_pair
from tests.harness import AUTHORITY, POLICE, TEST_RECORD, base_settings


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with hubs(tmp_path, "city", "province") as running:
        yield running


def _pull(node: Node, code: str) -> list[str]:
    """``node`` pulls ``code``'s offers whatever it holds of the peering (to see what the other side says)."""
    return node.federation.run(node.federation.pull(node.peer(code)))


def test_a_peering_is_active_only_once_both_operators_registered_it(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    registered = city.register(province, fpb.PEER_RELATION_PARENT)
    assert registered.state == fpb.PEER_STATE_REGISTERED
    assert "not have registered this hub yet" in city.peer(province.code).sync_problem
    city.sync()  # retrying changes nothing while the province's operator has not registered the city
    assert city.state_of(province.code) is PeerState.REGISTERED
    with pytest.raises(errors.Unavailable, match="peer hub 350000 at localhost:"):
        _pull(city, province.code)  # the province's listener does not even trust the city's CA yet

    answered = province.register(city, fpb.PEER_RELATION_CHILD)
    assert answered.state == fpb.PEER_STATE_ACTIVE
    assert city.state_of(province.code) is PeerState.ACTIVE
    assert any('"action":"register_peer"' in r for r in city.federation_records())
    assert any('"action":"peering_active"' in r and '"actor":"hub/350000"' in r for r in city.federation_records())
    assert any('"action":"register_peer"' in r for r in province.federation_records())


def test_peers_learn_each_others_log_and_witness_keys_when_the_peering_becomes_active(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    city.register(province, fpb.PEER_RELATION_PARENT)
    assert city.peer(province.code).log_key == ""  # nothing is learnt before the other side agreed
    province.register(city, fpb.PEER_RELATION_CHILD)
    for here, there in ((city, province), (province, city)):
        learnt = here.peer(there.code)
        own = there.federation.peering.keys
        assert (learnt.log_key, learnt.witness_key) == (own.log_key, own.witness_key)
        assert Verifier.parse(learnt.log_key).name == there.running.hub.settings.audit_origin
        assert WitnessVerifier.parse(learnt.witness_key).name.endswith("/witness")
    with city.running.client() as hub:
        shown = hub.call(hub.federation.GetPeer, fpb.GetPeerRequest(code=province.code)).peer
    assert shown.log_key == province.federation.peering.keys.log_key
    assert any('"action":"peer_keys"' in r for r in city.federation_records())
    other = WitnessKey.generate("impostor.example/witness").verifier().encode()
    told = HubKeys(province.federation.peering.keys.log_key, other)
    with pytest.raises(errors.FailedPrecondition, match="other audit log or witness keys") as e:
        city.federation.peering.confirmed(province.code, PeerState.ACTIVE, told)
    assert e.value.kind == "PEER_KEYS_CHANGED"
    with pytest.raises(errors.InvalidArgument, match="not valid"):
        city.federation.peering.confirmed(province.code, PeerState.ACTIVE, HubKeys("x", "y"))


def test_the_two_registrations_must_agree_on_who_is_the_parent(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    city.register(province, fpb.PEER_RELATION_PARENT)
    province.register(city, fpb.PEER_RELATION_PARENT)  # both call the other their parent
    assert city.state_of(province.code) is PeerState.REGISTERED
    assert province.state_of(city.code) is PeerState.REGISTERED
    assert "the operators must agree" in province.peer(city.code).sync_problem


def test_suspension_from_either_side_refuses_calls_both_ways_and_only_its_side_resumes(
    pair: dict[str, Node],
) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    with city.running.client() as hub:
        done = hub.call(hub.federation.SuspendPeer, fpb.SuspendPeerRequest(code=province.code, reason="安全检查"))
    assert done.peer_told and done.peer.state == fpb.PEER_STATE_SUSPENDED_HERE
    assert province.state_of(city.code) is PeerState.SUSPENDED_THERE
    # each side refuses the other, naming the hub whose operator suspended it
    with pytest.raises(errors.PermissionDenied, match=r"hub 350000 may not .*: hub 350200's operator suspended"):
        _pull(province, city.code)
    with pytest.raises(errors.PermissionDenied, match=r"hub 350200 may not .*: hub 350200's operator suspended"):
        _pull(city, province.code)

    with province.running.client() as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.federation.ResumePeer, fpb.ResumePeerRequest(code=city.code, reason="恢复"))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "only hub 350200's operator resumes it" in str(refused.value.details())

    with city.running.client() as hub:
        hub.call(hub.federation.ResumePeer, fpb.ResumePeerRequest(code=province.code, reason="检查完毕"))
    assert province.state_of(city.code) is PeerState.ACTIVE
    assert _pull(province, city.code) == []
    assert any('"action":"peer_suspended"' in r for r in province.federation_records())


def test_an_ended_peering_is_refused_on_both_sides(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    with province.running.client() as hub:
        done = hub.call(hub.federation.EndPeer, fpb.EndPeerRequest(code=city.code, reason="机构调整"))
    assert done.peer_told and done.peer.state == fpb.PEER_STATE_ENDED
    assert city.state_of(province.code) is PeerState.ENDED
    # A connection made before the end is refused by the handler; a new one at the handshake (the ended peer's
    # CA is no longer trusted). Either way the status names the hop.
    for caller, callee in ((province, city), (city, province)):
        with pytest.raises((errors.PermissionDenied, errors.Unavailable)) as refused:
            _pull(caller, callee.code)
        assert f"peer hub {callee.code} at localhost" in refused.value.message
        assert isinstance(refused.value, errors.Unavailable) or "the peering has ended" in refused.value.message
    assert any('"action":"peer_ended"' in r for r in city.federation_records())


def test_only_the_operator_manages_peers(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    city.running.add_department(POLICE)
    steward = city.running.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    with city.running.client(steward) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.federation.ListPeers, fpb.ListPeersRequest())
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "peering:manage" in str(refused.value.details())
    assert city.running.hub.store.peers.list() == []
    del province


def test_a_hub_certificate_is_never_taken_for_a_department(pair: dict[str, Node], tmp_path: Path) -> None:
    city = pair["city"]
    identity = hub_identity(city, tmp_path / "hub-identity")  # signed by the city's own CA: TLS lets it in
    with HubClient(city.running.settings, identity) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.registry.ListDepartments, rpb.ListDepartmentsRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "is a hub's (urn:exchange:hub:350200)" in str(refused.value.details())
    # its expiry is watched with the hub's other certificates (metrics, the console's health page)
    assert "hub/federation" in dict(city.running.hub.credentials.files.expiries())


def _offers_as(node: Node, cert: HubCertificate, code: str) -> grpc.aio.AioRpcError | None:
    """Calls ``node``'s federation listener as hub ``code`` with ``cert``; the error it answers, if any."""
    target = Peer(node.code, "", node.level, PeerRelation.CHILD, node.address, node.running.ca_pem.decode())

    async def call() -> grpc.aio.AioRpcError | None:
        channel = channel_to(target, cert)
        try:
            stub: fpb_grpc.PeeringServiceAsyncStub = fpb_grpc.PeeringServiceStub(channel)
            await stub.ListOfferedEntries(fpb.ListOfferedEntriesRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e
        finally:
            await channel.close(None)
        return None

    return node.federation.run(call())


def _certificate(ca_key: pki.PrivateKey, ca_cert: x509.Certificate, code: str) -> HubCertificate:
    key, cert = pki.issue_hub_certificate(ca_key, ca_cert, code, ("localhost",))
    return HubCertificate(pki.key_pem(key), pki.cert_pem(cert), code)


def test_a_hub_certificate_from_another_ca_than_the_registered_one_is_refused(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    # A county hub registered at the city (its CA trusted there) makes a certificate that claims the province:
    # what a changed CA, or a peer passing itself off as another, looks like to the city.
    county_key, county_ca = pki.create_ca("思明区 CA")
    county = fpb.Peer(
        code="350203",
        name="思明区",
        level="county",
        relation=fpb.PEER_RELATION_CHILD,
        address="localhost:1",
        ca_certificate_pem=pki.cert_pem(county_ca).decode(),
    )
    with city.running.client() as hub:
        hub.call(hub.federation.RegisterPeer, fpb.RegisterPeerRequest(peer=county, reason="test"))
    refused = _offers_as(city, _certificate(county_key, county_ca, province.code), province.code)
    assert refused is not None and refused.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "hub 350000's certificate is not issued by the CA registered for it" in str(refused.details())

    # the county's own certificate is let in, and refused for a peering not active yet
    refused = _offers_as(city, _certificate(county_key, county_ca, "350203"), "350203")
    assert refused is not None and refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "hub 350203 may not read the offered catalog entries: the peering is not active yet" in str(
        refused.details()
    )


def test_the_federation_listener_refuses_department_certificates_and_unknown_cas(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    # A system certificate from the province's CA (a registered peer's): through TLS, refused as no hub.
    files = pki.HubFiles(province.running.settings.home)
    authority_key, authority = pki.load_key(files.ca_key), pki.load_cert(files.ca_cert)
    key = pki.new_key()
    ref = m.PrincipalRef(m.PrincipalKind.SYSTEM, "scjg-djxt")
    system = pki.sign_csr(authority_key, authority, pki.make_csr(key, ref), ref, 30)
    refused = _offers_as(city, HubCertificate(pki.key_pem(key), pki.cert_pem(system), ""), "")
    assert refused is not None and refused.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not a hub certificate" in str(refused.details())

    # The city's own CA (which signs its departments' systems) is not among its federation listener's roots.
    own = pki.HubFiles(city.running.settings.home)
    mine = _certificate(pki.load_key(own.ca_key), pki.load_cert(own.ca_cert), city.code)
    refused = _offers_as(city, mine, city.code)
    assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE

    stranger_key, stranger_ca = pki.create_ca("unregistered CA")
    refused = _offers_as(city, _certificate(stranger_key, stranger_ca, "360000"), "360000")
    assert refused is not None and refused.code() is grpc.StatusCode.UNAVAILABLE


def _cli(node: Node, *argv: str) -> int:
    settings = node.running.settings
    return main(["--hub", settings.hub_address, "--identity", str(node.running.operator), "--json", *argv])


def test_operators_peer_two_hubs_from_the_command_line(
    pair: dict[str, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    city, province = pair["city"], pair["province"]
    for node, other, relation in ((city, province, "parent"), (province, city, "child")):
        ca_file = tmp_path / f"{other.level}-ca.pem"
        assert _cli(other, "peer", "identity", "--ca-out", str(ca_file)) == 0
        identity = json.loads(capsys.readouterr().out)
        assert identity["code"] == other.code and identity["level"] == other.level
        register = ["peer", "register", "--code", other.code, "--name", identity["name"], "--level", other.level]
        register += ["--relation", relation, "--address", other.address, "--ca-file", str(ca_file)]
        assert _cli(node, *register, "--reason", "省市共享协议") == 0
        capsys.readouterr()
    assert _cli(city, "peer", "list", "--state", "active") == 0
    listed = json.loads(capsys.readouterr().out)["peers"]
    assert [(p["code"], p["relation"]) for p in listed] == [("350000", "PEER_RELATION_PARENT")]
    assert _cli(province, "peer", "suspend", city.code, "--reason", "演练") == 0
    assert json.loads(capsys.readouterr().out)["peer"]["state"] == "PEER_STATE_SUSPENDED_HERE"
    assert _cli(city, "peer", "resume", province.code, "--reason", "演练") == 1
    assert "only hub 350000's operator resumes it" in capsys.readouterr().err


def test_a_peer_that_does_not_answer_is_unavailable_naming_the_hop(pair: dict[str, Node]) -> None:
    city = pair["city"]
    with socket.socket() as silent:  # accepts connections and never says a word: a hung peer
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"localhost:{silent.getsockname()[1]}"
        _, ca = pki.create_ca("a hung peer's CA")
        hung = Peer("350000", "福建省", "province", PeerRelation.PARENT, address, pki.cert_pem(ca).decode())
        city.running.hub.store.peers.register(hung, audit=TEST_RECORD)
        with pytest.raises(errors.Unavailable) as refused:
            _pull(city, "350000")
    assert refused.value.message == f"peer hub 350000 at {address} did not answer list offered entries within 5s"


def test_the_hub_certificate_is_issued_on_the_hubs_host_for_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    initialize(base_settings(home), OperatorSeed(AUTHORITY, "op-admin", "王运维"))  # initialized before federating
    files = pki.HubFiles(home)
    assert not files.hub_cert.exists()
    assert main(["--home", str(home), "ca", "hub-cert"]) == 2
    assert "set hub_code" in capsys.readouterr().err
    monkeypatch.setenv("EXCHANGE_HUB_CODE", "350200")
    assert main(["--home", str(home), "ca", "hub-cert"]) == 0
    cert = pki.load_cert(files.hub_cert)
    assert pki.hub_code_of(cert) == "350200"
    assert pki.issued_by(cert, pki.load_cert(files.ca_cert))
    assert load_hub_certificate(files, "350200").code == "350200"
    with pytest.raises(errors.ConfigError, match="names hub '350200', not hub_code '350203'"):
        load_hub_certificate(files, "350203")


def test_a_resumption_the_peer_did_not_hear_is_told_again_when_its_refusal_says_so(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    with city.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb.SuspendPeerRequest(code=province.code, reason="检查"))
    assert province.state_of(city.code) is PeerState.SUSPENDED_THERE
    # The city's operator resumes while the province cannot be told (as if it were down at that moment):
    city.running.hub.store.peers.change(
        province.code, lambda p: dataclasses.replace(p, state=PeerState.ACTIVE), audit=TEST_RECORD
    )
    city.sync()  # the province refuses the pull as suspended by the city: the city tells it again
    assert province.state_of(city.code) is PeerState.ACTIVE
    assert any('"action":"peer_resumed"' in r for r in province.federation_records())


def test_a_renewed_hub_certificate_is_presented_by_the_next_channel_and_a_half_written_one_is_not(
    pair: dict[str, Node],
) -> None:
    city, province = pair["city"], pair["province"]
    peer_pair(city, province)
    federation, peer = city.federation, city.peer(province.code)
    files = pki.HubFiles(city.running.settings.home, city.running.settings.ca_key_file)

    async def channel() -> grpc.aio.Channel:
        return federation.channel(peer)

    before = federation.run(channel())
    assert federation.run(channel()) is before  # kept while nothing changed
    renewed = ca.issue_hub(files, city.code, city.running.settings.hostnames)
    assert federation.hub.cert == pki.cert_pem(renewed)
    after = federation.run(channel())
    assert after is not before  # the old channel dropped: the next call connects presenting the new certificate
    assert _pull(city, province.code) == []  # the province's listener took the renewed certificate

    # Only the key written (a renewal cut short): the pair does not match, the renewed certificate stays.
    authority = ca.load_authority(files)
    key, _ = pki.issue_hub_certificate(authority.key, authority.cert, city.code, (), 30)
    pki.replace_file(files.hub_key, pki.key_pem(key), 0o600)
    with pytest.raises(errors.ConfigError, match="does not belong to"):
        load_hub_certificate(files, city.code)
    assert federation.hub.cert == pki.cert_pem(renewed)
    assert federation.run(channel()) is after
