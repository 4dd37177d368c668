"""The hub's certificate authority over its lifetime: status, rotation, retirement, server renewal.

These run on the hub's machine against its home directory (``exchange ca ...``),
never over the network: whoever runs them holds the CA key already. A running
hub picks the new files up without a restart (see ``exchange.server.credentials``).

Rotation keeps both CAs trusted for an overlap: the new CA signs from now on,
the old one stays in the trust bundle until ``retire`` removes it, by which
time every holder has renewed under the new CA and every caller and provider
has the new bundle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from exchange import pki
from exchange.errors import FailedPrecondition, NotFound
from exchange.models import CertificateRecord


@dataclass(frozen=True)
class TrustedCa:
    """One CA certificate of the trust bundle, as ``exchange ca status`` shows it."""

    fingerprint: str
    subject: str
    not_after: dt.datetime
    signing: bool
    key_kept: bool


@dataclass(frozen=True)
class Authority:
    """The CA that signs now: its key and certificate, checked to belong together."""

    key: pki.PrivateKey
    cert: x509.Certificate


def load_authority(files: pki.HubFiles) -> Authority:
    """The signing CA from its files; the key file must be private and match the certificate."""
    pki.check_private(files.ca_key)
    key, cert = pki.load_key(files.ca_key), pki.load_cert(files.ca_cert)
    if key.public_key() != cert.public_key():
        raise FailedPrecondition(
            f"{files.ca_key} does not belong to {files.ca_cert}: a rotation was interrupted; "
            "put back the key and certificate of one CA (the previous key is kept beside the key file)"
        )
    return Authority(key, cert)


def trusted(files: pki.HubFiles) -> list[x509.Certificate]:
    return pki.split_pems(files.trusted_pem())


def status(files: pki.HubFiles) -> list[TrustedCa]:
    signing = pki.fingerprint(pki.load_cert(files.ca_cert))
    out = []
    for cert in trusted(files):
        fp = pki.fingerprint(cert)
        kept = files.ca_key.exists() if fp == signing else files.retired_key(fp).exists()
        out.append(TrustedCa(fp, cert.subject.rfc4514_string(), cert.not_valid_after_utc, fp == signing, kept))
    return out


def rotate(files: pki.HubFiles, common_name: str, days: int = 3650) -> tuple[str, str]:
    """Makes a new signing CA and trusts both; returns (old, new) fingerprints.

    The order keeps a crash harmless: the old key is copied aside first, then
    the bundle grows (trusting more never locks anyone out), then the key and
    certificate are replaced. ``load_authority`` notices a pair left half-replaced.
    """
    current = load_authority(files)
    old_fp = pki.fingerprint(current.cert)
    bundle = trusted(files)
    if not any(pki.fingerprint(c) == old_fp for c in bundle):
        bundle.insert(0, current.cert)
    key, cert = pki.create_ca(common_name, days)
    pki.write_secret(files.retired_key(old_fp), pki.key_pem(current.key))
    pki.replace_file(files.trust_bundle, pki.bundle_pem([cert, *bundle]), 0o644)
    pki.replace_file(files.ca_key, pki.key_pem(key), 0o600)
    pki.replace_file(files.ca_cert, pki.cert_pem(cert), 0o644)
    return old_fp, pki.fingerprint(cert)


def renew_server(files: pki.HubFiles, hostnames: tuple[str, ...], days: int = 825) -> x509.Certificate:
    """A new server key and certificate from the signing CA, replacing the old pair."""
    authority = load_authority(files)
    key, cert = pki.issue_server_certificate(authority.key, authority.cert, hostnames, days)
    # The key first: a hub that reloads between the two sees a mismatched pair and keeps its old one.
    pki.replace_file(files.server_key, pki.key_pem(key), 0o600)
    pki.replace_file(files.server_cert, pki.cert_pem(cert), 0o644)
    return cert


def issue_hub(files: pki.HubFiles, hub_code: str, hostnames: tuple[str, ...], days: int = 825) -> x509.Certificate:
    """A new hub certificate (``urn:exchange:hub:<code>``) from the signing CA, replacing any before it."""
    authority = load_authority(files)
    key, cert = pki.issue_hub_certificate(authority.key, authority.cert, hub_code, hostnames, days)
    pki.replace_file(files.hub_key, pki.key_pem(key), 0o600)
    pki.replace_file(files.hub_cert, pki.cert_pem(cert), 0o644)
    return cert


def still_issued_by(ca: x509.Certificate, certificates: Iterable[CertificateRecord], at: dt.datetime) -> list[str]:
    """The unrevoked, unexpired certificates ``ca`` signed (their fingerprints)."""
    out = []
    for record in certificates:
        if record.revoked_at is not None or record.not_after <= at:
            continue
        if pki.issued_by(x509.load_pem_x509_certificate(record.pem.encode()), ca):
            out.append(record.fingerprint_sha256)
    return out


def retire(files: pki.HubFiles, fingerprint: str, still_valid: list[str], force: bool = False) -> None:
    """Stops trusting a rotated-out CA and deletes its kept key.

    Refused for the signing CA, for the CA of the hub's own server certificate,
    and, unless forced, while certificates it signed are still valid: their
    holders would be locked out.
    """
    bundle = trusted(files)
    found = [c for c in bundle if pki.fingerprint(c) == fingerprint]
    if not found:
        raise NotFound("trusted CA", fingerprint)
    ca = found[0]
    if pki.fingerprint(pki.load_cert(files.ca_cert)) == fingerprint:
        raise FailedPrecondition("this CA signs new certificates; rotate to a new CA before retiring it")
    if pki.issued_by(pki.load_cert(files.server_cert), ca):
        raise FailedPrecondition(
            "the hub's server certificate is signed by this CA: run `exchange ca renew-server` first"
        )
    if still_valid and not force:
        raise FailedPrecondition(
            f"{len(still_valid)} certificate(s) signed by this CA are still valid and would stop working "
            f"(first: {still_valid[0][:16]}…); have their holders renew (`exchange cert renew`) "
            "or revoke them, or retire with --force"
        )
    kept = [c for c in bundle if pki.fingerprint(c) != fingerprint]
    pki.replace_file(files.trust_bundle, pki.bundle_pem(kept), 0o644)
    files.retired_key(fingerprint).unlink(missing_ok=True)
