"""Certificate lifecycle on a running hub: renew, revoke, expire, a CA key kept apart, CA rotation, impersonation."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange import ca, pki
from exchange import models as m
from exchange.cli.client import HubClient
from exchange.cli.main import main
from exchange.errors import ConfigError
from exchange.server.app import Hub
from exchange.server.rpc import DEV_PRINCIPAL_HEADER
from exchange.services.registry import record_of
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as gpb
from tests.exchange_world import World, fails, lookup, make_world, serve_lookup
from tests.harness import POLICE, TEST_RECORD, RunningHub, base_settings, reason_of, running_hub

SYSTEM = m.PrincipalRef(m.PrincipalKind.SYSTEM, "bdc-djxt")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_hub(base_settings(tmp_path / "hub")) as hub:
        yield make_world(hub)


def _cli(hub: RunningHub, identity: Path | None, *argv: str) -> int:
    head = ["--home", str(hub.settings.home), "--hub", hub.settings.hub_address]
    return main([*head, *(["--identity", str(identity)] if identity else []), *argv])


def _whoami(hub: RunningHub, identity: Path) -> rpb.WhoAmIResponse:
    with hub.client(identity) as c:
        return c.call(c.registry.WhoAmI, rpb.WhoAmIRequest())


def _certificates(hub: RunningHub, ref: m.PrincipalRef) -> dict[str, rpb.Certificate]:
    with hub.client() as c:
        request = rpb.ListCertificatesRequest(
            principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_SYSTEM, code=ref.code), page_size=100
        )
        return {x.fingerprint_sha256: x for x in c.call(c.registry.ListCertificates, request).certificates}


def _copy_identity(source: Path, target: Path) -> Path:
    files = pki.IdentityFiles(source)
    pki.write_secret(target / "key.pem", files.key.read_bytes())
    pki.write_public(target / "cert.pem", files.cert.read_bytes())
    pki.write_public(target / "ca.pem", files.ca.read_bytes())
    return target


# --- Renewal -------------------------------------------------------------------------------------------------


def test_a_holder_renews_its_own_certificate_and_revoking_the_old_one_revokes_the_new(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, system = world.hub, world.consumer_system
    before = _copy_identity(system, tmp_path / "before")  # a second copy of the identity, still on the old key
    old = _whoami(hub, system).certificate_fingerprint_sha256
    assert _cli(hub, system, "cert", "renew") == 0, capsys.readouterr().err
    assert "previous pair is kept" in capsys.readouterr().out
    new = _whoami(hub, system).certificate_fingerprint_sha256
    assert new != old and _whoami(hub, before).certificate_fingerprint_sha256 == old  # both hold for the overlap
    assert (system / "key.pem.previous").exists() and oct((system / "key.pem").stat().st_mode & 0o777) == "0o600"
    listed = _certificates(hub, SYSTEM)
    assert listed[new].renewed_from_sha256 == old
    assert listed[new].issuer_fingerprint_sha256 == pki.fingerprint(pki.load_cert(hub.files.ca_cert))
    # The key was stolen, say: revoking the old certificate revokes the one renewed from it too.
    with hub.client() as c:
        c.call(c.registry.RevokeCertificate, rpb.RevokeCertificateRequest(fingerprint_sha256=old, reason="key leak"))
    for identity in (system, before):
        with HubClient(hub.settings, identity) as c:
            fails(grpc.StatusCode.UNAUTHENTICATED, c.registry.WhoAmI, rpb.WhoAmIRequest())
    assert "renewed from" in _certificates(hub, SYSTEM)[new].revoke_reason


def test_a_holder_retires_its_renewed_certificate_and_a_thiefs_renewal_goes_with_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, system = world.hub, world.consumer_system
    stolen = _copy_identity(system, tmp_path / "stolen")  # a copy of the key, taken before the owner renews
    old = _whoami(hub, system).certificate_fingerprint_sha256
    with hub.client(stolen) as thief:
        ask = rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), SYSTEM))
        thiefs = thief.call(thief.registry.RenewCertificate, ask).certificate.fingerprint_sha256
    assert _cli(hub, system, "cert", "renew") == 0
    owners = _whoami(hub, system).certificate_fingerprint_sha256
    # Without keep_renewals the owner would revoke its own new certificate too: refused, with the way out.
    with hub.client(system) as c:
        plain = rpb.RevokeCertificateRequest(fingerprint_sha256=old, reason="renewed")
        error = fails(grpc.StatusCode.FAILED_PRECONDITION, c.registry.RevokeCertificate, plain)
    assert "keep_renewals" in (error.details() or "")
    capsys.readouterr()
    assert _cli(hub, system, "cert", "revoke", old, "--keep-renewals", "--reason", "renewed") == 0
    listed = _certificates(hub, SYSTEM)
    assert listed[old].HasField("revoke_time") and not listed[owners].HasField("revoke_time")
    assert listed[thiefs].HasField("revoke_time")  # kept are only the renewals leading to the caller's own
    assert _whoami(hub, system).certificate_fingerprint_sha256 == owners


def test_renewal_needs_a_new_key_and_names_only_the_caller(world: World) -> None:
    hub, system = world.hub, world.consumer_system
    files = pki.IdentityFiles(system)
    key = pki.load_key(files.key)
    with hub.client(system) as c:
        same_key = rpb.RenewCertificateRequest(csr_pem=pki.make_csr(key, SYSTEM))
        error = fails(grpc.StatusCode.INVALID_ARGUMENT, c.registry.RenewCertificate, same_key)
        assert "newly generated key" in (error.details() or "")
        # A CSR that names the operator still gets a certificate for the caller: the hub decides who it names.
        other = m.PrincipalRef(m.PrincipalKind.PERSON, "op-admin")
        renewed = c.call(
            c.registry.RenewCertificate, rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), other))
        )
    assert renewed.certificate.principal.code == SYSTEM.code
    cert = x509.load_pem_x509_certificate(renewed.certificate.pem.encode())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.principal_uri(SYSTEM) in uris.get_values_for_type(x509.UniformResourceIdentifier)
    assert renewed.trust_bundle.pem == hub.files.ca_cert.read_text()


def test_a_stolen_key_cannot_mint_itself_a_stock_of_certificates(world: World) -> None:
    hub, system = world.hub, world.consumer_system
    with hub.client(system) as c:
        for _ in range(4):  # with the one it holds: five, the most one principal may hold
            c.call(
                c.registry.RenewCertificate, rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), SYSTEM))
            )
        error = fails(
            grpc.StatusCode.FAILED_PRECONDITION,
            c.registry.RenewCertificate,
            rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), SYSTEM)),
        )
    assert "revoke one" in (error.details() or "")


def test_a_holder_revokes_its_own_other_certificate_but_not_someone_elses(world: World) -> None:
    hub, system = world.hub, world.consumer_system
    with hub.client(system) as c:
        spare = c.call(
            c.registry.RenewCertificate, rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), SYSTEM))
        ).certificate.fingerprint_sha256
        c.call(c.registry.RevokeCertificate, rpb.RevokeCertificateRequest(fingerprint_sha256=spare, reason="unused"))
        operators = _whoami(hub, hub.operator).certificate_fingerprint_sha256
        ask = rpb.RevokeCertificateRequest(fingerprint_sha256=operators, reason="takeover")
        fails(grpc.StatusCode.PERMISSION_DENIED, c.registry.RevokeCertificate, ask)
        unknown = rpb.RevokeCertificateRequest(fingerprint_sha256="ab" * 32, reason="probe")
        fails(grpc.StatusCode.PERMISSION_DENIED, c.registry.RevokeCertificate, unknown)  # no probing for existence
    assert _whoami(hub, hub.operator).principal.code == "op-admin"


# --- Revocation and expiry reach open connections and streams ---------------------------------------------------


def _serve_many(world: World, directory: Path, rows: int = 3000) -> None:
    """A lookup of ~12 MB: more than gRPC's flow-control windows hold, so a slow reader holds the hub back."""
    serve_lookup(world, directory, names=[f"张{i}" + "户" * 1400 for i in range(rows)])


def _closing_record(world: World, exchange_id: str) -> dict[str, object]:
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(exchange_id=exchange_id))
    records = [json.loads(e.record) for e in found.entries]
    return next(r for r in records if str(r.get("action", "")).endswith("_end"))


def test_a_revoked_certificate_stops_its_open_stream_and_its_connection(world: World, tmp_path: Path) -> None:
    _serve_many(world, tmp_path)
    hub = world.hub
    fingerprint = _whoami(hub, world.consumer_system).certificate_fingerprint_sha256
    with hub.client(world.consumer_system) as c:  # one connection: the stream and the call after it
        stream = c.exchange.StreamQuery(lookup(batch_size=10), timeout=60)
        first = next(iter(stream))
        with hub.client() as operator:
            ask = rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="system decommissioned")
            operator.call(operator.registry.RevokeCertificate, ask)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:  # the consumer reads on: within a couple of seconds the hub stops the stream
                time.sleep(0.02)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The same connection, open before the revocation: the next call on it is refused too.
        fails(grpc.StatusCode.UNAUTHENTICATED, c.registry.WhoAmI, rpb.WhoAmIRequest())
    closing = _closing_record(world, first.exchange_id)
    assert closing["outcome"] != "ok" and "revoked" in json.dumps(closing, ensure_ascii=False)


def test_a_grant_suspended_during_a_stream_stops_it(world: World, tmp_path: Path) -> None:
    """A suspension counts from the next call, and for streams already open from their next batch."""
    grant = serve_lookup(world, tmp_path, names=[f"张{i}" + "户" * 1400 for i in range(3000)])
    stub = world.exchange()
    stream = stub.StreamQuery(lookup(batch_size=10), timeout=60)
    first = next(iter(stream))
    with world.hub.client(world.people["police"]) as steward:
        ask = gpb.ChangeGrantRequest(id=grant, reason="核查期间暂停")
        steward.call(steward.rights.SuspendGrant, ask)
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            time.sleep(0.02)
    error = info.value
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "GRANT_SUSPENDED"
    assert _closing_record(world, first.exchange_id)["outcome"] != "ok"


def _short_lived(hub: RunningHub, directory: Path, seconds: float) -> Path:
    """An identity for the consumer system whose certificate expires in ``seconds`` (made here with the CA key)."""
    authority = ca.load_authority(hub.files)
    key, now = pki.new_key(), dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(f"CN={SYSTEM}"))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(seconds=seconds))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(pki.principal_uri(SYSTEM))]), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )
    hub.hub.store.registry.add_certificate(record_of(cert, SYSTEM), audit=TEST_RECORD)
    pki.IdentityFiles(directory).write(key, pki.cert_pem(cert), hub.ca_pem)
    return directory


def test_an_expiring_certificate_stops_its_stream_and_is_refused_on_new_connections(
    world: World, tmp_path: Path
) -> None:
    _serve_many(world, tmp_path)
    hub = world.hub
    identity = _short_lived(hub, tmp_path / "short", seconds=3)
    stub = world.exchange(identity)
    stream = stub.StreamQuery(lookup(batch_size=10), timeout=60)
    first = next(iter(stream))
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            time.sleep(0.05)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _closing_record(world, first.exchange_id)["outcome"] != "ok"
    with HubClient(hub.settings, identity) as c:  # a new connection: the TLS handshake itself refuses it
        fails(grpc.StatusCode.UNAVAILABLE, c.registry.WhoAmI, rpb.WhoAmIRequest())


# --- The CA key kept apart ------------------------------------------------------------------------------------


def test_the_ca_key_kept_apart_must_be_private(tmp_path: Path) -> None:
    apart = tmp_path / "secrets" / "ca.key"
    settings = base_settings(tmp_path / "hub", ca_key_file=apart)
    with running_hub(settings) as hub:
        assert apart.exists() and not (tmp_path / "hub" / "ca" / "ca.key").exists()
        assert oct(apart.stat().st_mode & 0o777) == "0o600"
        assert _whoami(hub, hub.operator).principal.code == "op-admin"
    os.chmod(apart, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        Hub(settings)
    os.chmod(apart, 0o600)
    Hub(settings).store.close()


# --- CA rotation ----------------------------------------------------------------------------------------------


def test_the_ca_rotates_with_an_overlap_and_the_old_one_is_retired(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, system = world.hub, world.consumer_system
    old_ca = pki.fingerprint(pki.load_cert(hub.files.ca_cert))
    assert _cli(hub, None, "ca", "rotate", "--name", "Exchange hub CA 2027") == 0, capsys.readouterr().err
    new_ca = pki.fingerprint(pki.load_cert(hub.files.ca_cert))
    assert new_ca != old_ca and hub.files.retired_key(old_ca).exists()
    # The running hub trusts both: callers on old-CA certificates go on working, without a restart.
    assert _whoami(hub, system).principal.code == SYSTEM.code
    # Holders fetch the bundle (both CAs) before the server certificate changes, and renew under the new CA.
    assert _cli(hub, system, "cert", "bundle") == 0
    assert _cli(hub, hub.operator, "cert", "bundle") == 0
    assert {pki.fingerprint(c) for c in pki.split_pems(pki.IdentityFiles(system).ca.read_bytes())} == {old_ca, new_ca}
    assert _cli(hub, system, "cert", "renew") == 0
    fingerprint = _whoami(hub, system).certificate_fingerprint_sha256
    assert _certificates(hub, SYSTEM)[fingerprint].issuer_fingerprint_sha256 == new_ca
    # Retiring the old CA is refused while the server certificate and other holders' certificates depend on it.
    capsys.readouterr()
    assert _cli(hub, None, "ca", "retire", old_ca) == 2
    assert "renew-server" in capsys.readouterr().err
    assert _cli(hub, None, "ca", "renew-server") == 0
    assert _cli(hub, system, "cert", "bundle") == 0
    assert _whoami(hub, system).principal.code == SYSTEM.code  # the new server certificate, by the bundle
    assert _cli(hub, None, "ca", "retire", old_ca) == 2
    assert "still valid" in capsys.readouterr().err  # the operator and the people still hold old-CA certificates
    old_operator = _copy_identity(hub.operator, tmp_path / "operator-old")
    assert _cli(hub, hub.operator, "cert", "renew") == 0
    assert _cli(hub, None, "ca", "retire", old_ca, "--force") == 0
    assert not hub.files.retired_key(old_ca).exists()
    # From now on the old CA's certificates are refused at the handshake; the renewed ones work.
    pki.replace_file(pki.IdentityFiles(old_operator).ca, pki.IdentityFiles(system).ca.read_bytes(), 0o644)
    with HubClient(hub.settings, old_operator) as c:
        fails(grpc.StatusCode.UNAVAILABLE, c.registry.WhoAmI, rpb.WhoAmIRequest())
    assert _whoami(hub, hub.operator).principal.code == "op-admin"
    assert [x.fingerprint for x in ca.status(hub.files)] == [new_ca]


def test_a_half_done_rotation_keeps_the_hub_on_its_last_good_material(world: World) -> None:
    hub = world.hub
    files = hub.files
    stray_key, _ = pki.create_ca("stray")
    pki.replace_file(files.server_key, pki.key_pem(stray_key), 0o600)  # a key that does not match the certificate
    assert _whoami(hub, world.consumer_system).principal.code == SYSTEM.code  # served with the material it had
    with pytest.raises(ConfigError, match="does not belong"):
        Hub(replace(hub.settings))


# --- Impersonation ---------------------------------------------------------------------------------------------


def test_one_system_cannot_act_as_another(world: World, tmp_path: Path) -> None:
    hub = world.hub
    other = hub.add_system("ga-qzk", POLICE.code)
    # The development header is ignored when the hub runs with mutual TLS.
    with hub.client(world.consumer_system) as c:
        metadata = ((DEV_PRINCIPAL_HEADER, "system/ga-qzk"),)
        who = c.registry.WhoAmI(rpb.WhoAmIRequest(), metadata=metadata, timeout=10)
    assert who.principal.code == SYSTEM.code
    # Another system's certificate with this system's key: TLS refuses a certificate whose key the caller lacks.
    mixed = tmp_path / "mixed"
    pki.write_secret(mixed / "key.pem", pki.IdentityFiles(world.consumer_system).key.read_bytes())
    pki.write_public(mixed / "cert.pem", pki.IdentityFiles(other).cert.read_bytes())
    pki.write_public(mixed / "ca.pem", hub.ca_pem)
    with pytest.raises((grpc.RpcError, ValueError)), HubClient(hub.settings, mixed) as c:
        c.call(c.registry.WhoAmI, rpb.WhoAmIRequest())
    # A certificate the caller made itself, naming the other system, signed by its own CA: refused.
    foreign_key, foreign_ca = pki.create_ca("Exchange hub CA")  # even with the hub CA's name
    key = pki.new_key()
    forged = pki.sign_csr(foreign_key, foreign_ca, pki.make_csr(key, SYSTEM), SYSTEM, 30)
    pki.IdentityFiles(tmp_path / "forged").write(key, pki.cert_pem(forged), hub.ca_pem)
    with HubClient(hub.settings, tmp_path / "forged") as c:
        fails(grpc.StatusCode.UNAVAILABLE, c.registry.WhoAmI, rpb.WhoAmIRequest())
    # The grant is the consumer system's: the police system's own certificate does not reach it.
    serve_lookup(world, tmp_path)
    assert world.exchange().Query(lookup(), timeout=20).records
    fails(grpc.StatusCode.PERMISSION_DENIED, world.exchange(other).Query, lookup())


# --- Who holds a system's key --------------------------------------------------------------------------------


def test_only_an_owner_steward_of_its_department_certifies_a_system(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A consumer clerk could once certify a key of its own for the department's system and act as it."""
    hub = world.hub
    clerk = world.people["consumer"]  # a consumer of the system's own department
    assert _cli(hub, clerk, "cert", "issue", "--system", SYSTEM.code, "--out", str(tmp_path / "clerk")) == 1
    said = capsys.readouterr().err
    assert "SYSTEM_CERTIFICATE_ISSUE_DENIED" in said or "may not certify system" in said, said
    steward = hub.add_person("bdc-steward", "11350200MB00456789", m.Role.OWNER_STEWARD)
    assert _cli(hub, steward, "cert", "issue", "--system", SYSTEM.code, "--out", str(tmp_path / "steward")) == 0
    issued = pki.fingerprint_of_pem(pki.IdentityFiles(tmp_path / "steward").cert.read_bytes())
    record = hub.hub.store.registry.get_certificate(issued)
    assert record.issued_by == "person/bdc-steward"
    # Whoever lists the system's certificates sees who had it issued, over gRPC and in the CLI's table.
    with hub.client() as operator:
        listed = operator.call(
            operator.registry.ListCertificates,
            rpb.ListCertificatesRequest(principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_SYSTEM, code=SYSTEM.code)),
        )
    assert {c.fingerprint_sha256: c.issued_by for c in listed.certificates}[issued] == "person/bdc-steward"
    capsys.readouterr()
    assert _cli(hub, hub.operator, "cert", "list", "--system", SYSTEM.code) == 0
    assert "person/bdc-steward" in capsys.readouterr().out


def test_each_exchange_of_a_system_names_who_holds_its_key(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = world.hub
    serve_lookup(world, tmp_path)
    fingerprint = _whoami(hub, world.consumer_system).certificate_fingerprint_sha256
    certifier = hub.hub.store.registry.get_certificate(fingerprint).issued_by
    assert certifier.startswith("person/") and certifier != "person/bdc-clerk"  # a steward, not the clerk
    answer = world.exchange().Query(lookup(), timeout=20)
    hub.hub.audit.flush()
    with hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(exchange_id=answer.exchange_id))
    (record,) = [json.loads(e.record) for e in found.entries]
    assert record["actor"] == "system/bdc-djxt" and record["key_holder"] == certifier
    capsys.readouterr()
    assert _cli(hub, world.people["auditor"], "audit", "search", "--exchange", answer.exchange_id) == 0
    assert f"system/bdc-djxt (key held by {certifier})" in capsys.readouterr().out
    # A change made by a person names no key holder: the person is the actor.
    with hub.client(world.people["auditor"]) as c:
        changes = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(actor="person/ga-steward"))
    assert changes.entries and all("key_holder" not in json.loads(e.record) for e in changes.entries)


def test_a_renewed_system_certificate_keeps_who_holds_its_key(world: World) -> None:
    hub = world.hub
    fingerprint = _whoami(hub, world.consumer_system).certificate_fingerprint_sha256
    with hub.client(world.consumer_system) as c:
        request = rpb.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key(), SYSTEM))
        renewed = c.call(c.registry.RenewCertificate, request).certificate
    registry = hub.hub.store.registry
    assert (
        registry.get_certificate(renewed.fingerprint_sha256).issued_by
        == registry.get_certificate(fingerprint).issued_by
    )
