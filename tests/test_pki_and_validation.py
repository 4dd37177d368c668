"""Certificates and keys the hub makes, and the formats it checks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange import models as m
from exchange import pki, validation
from exchange.bootstrap import OperatorSeed, initialize
from exchange.errors import ExchangeError, FailedPrecondition, InvalidArgument
from exchange.store import Store
from tests.harness import AUTHORITY, base_settings, identity_spec

REF = m.PrincipalRef(m.PrincipalKind.SYSTEM, "ga-rkxx")


def test_uscc_check_character() -> None:
    # GB 32100-2015 check: a published example code, and the demo's codes.
    assert validation.is_uscc("91350100M000100Y43")
    assert validation.is_uscc("11350200MB0012345Y")
    assert not validation.is_uscc("11350200MB0012345X")
    assert not validation.is_uscc("11350200MB0012345I")  # I is not in the alphabet
    assert validation.uscc_check_character("11350200MB0023456") == "P"


def test_resource_spec_rules() -> None:
    validation.validate_resource_spec(identity_spec())
    with pytest.raises(InvalidArgument) as info:
        validation.validate_resource_spec(
            identity_spec(
                share_type=m.ShareType.NOT_SHARED, legal_basis="", related_resource_codes=("10101/350200000001",)
            )
        )
    fields = {v.field for v in info.value.violations}
    assert fields == {"resource.legal_basis", "resource.related_resource_codes[0]"}
    with pytest.raises(InvalidArgument, match="control characters"):
        validation.validate_resource_spec(identity_spec(name="居民\x00身份"))


def test_client_certificate_names_the_principal_not_the_csr_subject() -> None:
    ca_key, ca_cert = pki.create_ca("test CA")
    key = pki.new_key()
    liar = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "person/op-admin")]))
        .sign(key, hashes.SHA256())
    )
    csr = liar.public_bytes(serialization.Encoding.PEM).decode()
    cert = pki.sign_csr(ca_key, ca_cert, csr, REF, days=30)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system/ga-rkxx"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:exchange:system:ga-rkxx"]
    # A system may also serve as its department's provider, under a name the hub checks.
    assert san.get_values_for_type(x509.DNSName) == ["ga-rkxx.provider.exchange.invalid"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca_cert)
    person = pki.sign_csr(ca_key, ca_cert, csr, m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward"), days=30)
    assert list(person.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert not person.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def test_weak_or_broken_requests_are_refused() -> None:
    ca_key, ca_cert = pki.create_ca("test CA")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(weak, hashes.SHA256())
    with pytest.raises(InvalidArgument, match="RSA >= 2048"):
        pki.sign_csr(ca_key, ca_cert, csr.public_bytes(serialization.Encoding.PEM).decode(), REF, 30)
    with pytest.raises(InvalidArgument, match="not a PEM"):
        pki.sign_csr(ca_key, ca_cert, "hello", REF, 30)


def test_init_writes_keys_for_the_owner_only_and_no_secret_to_the_store(tmp_path: Path) -> None:
    settings = base_settings(tmp_path / "hub")
    identity = initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维"))
    files = pki.HubFiles(settings.home)
    for secret in (files.ca_key, files.server_key, identity.key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700, secret.parent
    for stored in settings.home.glob("exchange.db*"):  # the database and its write-ahead log
        assert b"PRIVATE KEY" not in stored.read_bytes()
    store = Store(settings.effective_database_url)
    try:
        principal = store.registry.principal(m.PrincipalRef(m.PrincipalKind.PERSON, "op-admin"))
    finally:
        store.close()
    assert principal.roles == frozenset({m.Role.OPERATOR})
    with pytest.raises(FailedPrecondition, match="already initialized"):
        initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维"))


def test_failed_init_leaves_no_key_and_can_be_retried(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").mkdir()
    broken = base_settings(tmp_path / "hub", f"sqlite:///{tmp_path / 'not-a-db'}")  # a directory: cannot open
    with pytest.raises(ExchangeError):
        initialize(broken, OperatorSeed(AUTHORITY, "op-admin", "王运维"))
    assert not (tmp_path / "hub" / "ca").exists()
    identity = initialize(base_settings(tmp_path / "hub"), OperatorSeed(AUTHORITY, "op-admin", "王运维"))
    assert identity.key.exists()


def test_a_key_is_never_overwritten_or_written_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "id" / "key.pem"
    pki.write_secret(target, b"first")
    with pytest.raises(FailedPrecondition, match="never overwritten"):
        pki.write_secret(target, b"second")
    assert target.read_bytes() == b"first"
    link = tmp_path / "id" / "link.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(FailedPrecondition):
        pki.write_secret(link, b"secret")
    assert not (tmp_path / "elsewhere.pem").exists()
