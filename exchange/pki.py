"""The hub's own certificate authority and the identities it issues.

Every caller holds a client certificate signed by the hub's CA; the private
key of a caller is made on the caller's side and only a signing request
(CSR) reaches the hub. Keys are EC P-256. Private keys are written with
mode 0600 in directories of mode 0700 and never enter the database.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument
from exchange.models import PrincipalKind, PrincipalRef

PrivateKey = ec.EllipticCurvePrivateKey
URI_PREFIX = "urn:exchange:"
HUB_URI = f"{URI_PREFIX}hub"
# Provider names live under this domain (a reserved top-level name: never resolved, only checked).
PROVIDER_DOMAIN = "provider.exchange.invalid"
_ORG = "Exchange hub"


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def create_ca(common_name: str, days: int = 3650) -> tuple[PrivateKey, x509.Certificate]:
    key = new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san_entries(hostnames: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _leaf(
    ca_key: PrivateKey,
    *,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    san: list[x509.GeneralName],
    usage: list[x509.ObjectIdentifier],
    days: int,
) -> x509.Certificate:
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def issue_server_certificate(
    ca_key: PrivateKey, ca_cert: x509.Certificate, hostnames: tuple[str, ...], days: int = 825
) -> tuple[PrivateKey, x509.Certificate]:
    key = new_key()
    cert = _leaf(
        ca_key,
        ca_cert=ca_cert,
        subject=_name(hostnames[0]),
        public_key=key.public_key(),
        # The hub also presents this certificate to providers, which know it by HUB_URI.
        san=[*_san_entries(hostnames), x509.UniformResourceIdentifier(HUB_URI)],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    return key, cert


def hub_uri(hub_code: str) -> str:
    """The URI a hub certificate names its hub by: never a department's principal (see ``hub_code_of``)."""
    return f"{HUB_URI}:{hub_code}"


def issue_hub_certificate(
    ca_key: PrivateKey, ca_cert: x509.Certificate, hub_code: str, hostnames: tuple[str, ...], days: int = 825
) -> tuple[PrivateKey, x509.Certificate]:
    """The certificate this hub presents to its peers and serves its federation listener with."""
    key = new_key()
    cert = _leaf(
        ca_key,
        ca_cert=ca_cert,
        subject=_name(f"hub {hub_code}"),
        public_key=key.public_key(),
        san=[*_san_entries(hostnames), x509.UniformResourceIdentifier(hub_uri(hub_code))],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )
    return key, cert


def hub_code_of(cert: x509.Certificate) -> str | None:
    """The hub a certificate names (its ``urn:exchange:hub:<code>`` URI); "" for a hub's server certificate
    (plain ``urn:exchange:hub``); None for any other certificate."""
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in uris.get_values_for_type(x509.UniformResourceIdentifier):
        if uri == HUB_URI:
            return ""
        if uri.startswith(HUB_URI + ":"):
            return uri[len(HUB_URI) + 1 :]
    return None


@functools.lru_cache(maxsize=1024)
def hub_code_of_presented(pem: bytes) -> str | None:
    """``hub_code_of`` a certificate a caller presents, remembered like its fingerprint."""
    return hub_code_of(x509.load_pem_x509_certificate(pem))


def provider_hostname(system_code: str) -> str:
    """The name a system's certificate carries for serving as a provider; the hub checks it on connecting."""
    return f"{system_code}.{PROVIDER_DOMAIN}"


def principal_uri(ref: PrincipalRef) -> str:
    return f"{URI_PREFIX}{ref.kind.value}:{ref.code}"


def make_csr(key: PrivateKey, ref: PrincipalRef) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(str(ref))).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def sign_csr(
    ca_key: PrivateKey, ca_cert: x509.Certificate, csr_pem: str, ref: PrincipalRef, days: int
) -> x509.Certificate:
    """Issues a client certificate for ``ref`` over the CSR's public key.

    The hub decides the identity: the CSR's own subject is ignored, and the
    certificate names the principal in its CN and a URI SAN.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, InvalidSignature, UnicodeError):
        raise InvalidArgument.of([FieldViolation("csr_pem", "is not a PEM certificate signing request")]) from None
    if not valid:
        raise InvalidArgument.of([FieldViolation("csr_pem", "its signature does not verify")])
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        acceptable = public_key.curve.name in {"secp256r1", "secp384r1"}
    else:
        acceptable = isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048
    if not acceptable or not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidArgument.of([FieldViolation("csr_pem", "key must be EC P-256/P-384 or RSA >= 2048 bits")])
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(principal_uri(ref))]
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if ref.kind is PrincipalKind.SYSTEM:  # a system may also serve as its department's provider
        san.append(x509.DNSName(provider_hostname(ref.code)))
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
    return _leaf(
        ca_key,
        ca_cert=ca_cert,
        subject=_name(str(ref)),
        public_key=public_key,
        san=san,
        usage=usage,
        days=days,
    )


def _spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_public_key_der(csr_pem: str) -> bytes:
    """The DER public key of a CSR ("" when it cannot be read; ``sign_csr`` gives the precise error)."""
    try:
        return _spki(x509.load_pem_x509_csr(csr_pem.encode()).public_key())
    except (ValueError, UnicodeError):
        return b""


def public_key_der_of(cert_pem_text: str) -> bytes:
    """The DER public key of a PEM certificate."""
    return _spki(x509.load_pem_x509_certificate(cert_pem_text.encode()).public_key())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_of_pem(pem: bytes) -> str:
    return fingerprint(x509.load_pem_x509_certificate(pem))


@functools.lru_cache(maxsize=4096)
def fingerprint_of_presented(pem: bytes) -> str:
    """The fingerprint of a certificate a caller presents, remembered: it presents the same one on every call
    (gRPC and the web console alike), and parsing it each time would cost more than the lookup it serves."""
    return fingerprint_of_pem(pem)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _private_directory(directory: Path) -> None:
    """Creates a missing directory as 0700; an existing one keeps its mode (it may be the user's own)."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)


def write_secret(path: Path, data: bytes) -> None:
    """Writes a new private key readable by its owner only (0600); never replaces or follows a link."""
    _private_directory(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise FailedPrecondition(f"{path} already exists; a key is never overwritten (choose another place)") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_public(path: Path, data: bytes) -> None:
    _private_directory(path.parent)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Replaces a file atomically (a new file, synced, renamed over the old): a reader sees old or new, never half."""
    _private_directory(path.parent)
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, path)


def check_private(path: Path) -> None:
    """Refuses a private key file that others could read or change, or that is a link."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise FailedPrecondition(f"{path} is missing") from None
    if not os.path.isfile(path) or os.path.islink(path):
        raise FailedPrecondition(f"{path} must be a regular file, not a link")
    if info.st_mode & 0o077:
        raise FailedPrecondition(
            f"{path} is readable or writable by others (mode {info.st_mode & 0o777:o}); run: chmod 600 {path}"
        )
    if info.st_uid != os.geteuid():
        raise FailedPrecondition(f"{path} belongs to another user (uid {info.st_uid}); the hub's user must own it")


def split_pems(bundle: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle, in order."""
    return x509.load_pem_x509_certificates(bundle) if bundle.strip() else []


def bundle_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in certs)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (name and signature both)."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class IdentityFiles:
    """A caller's identity directory: its key, its certificate and the hub's CA certificate."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def write(self, key: PrivateKey, cert_pem_bytes: bytes, ca_pem_bytes: bytes) -> None:
        write_secret(self.key, key_pem(key))
        write_public(self.cert, cert_pem_bytes)
        write_public(self.ca, ca_pem_bytes)


@dataclass(frozen=True)
class HubFiles:
    """Where the hub keeps its CA and server credentials under its home directory.

    The CA key may live elsewhere (``ca_key_file``), e.g. on a volume only the
    hub's user can read, apart from the rest of the home.
    """

    home: Path
    ca_key_file: Path | None = None

    @property
    def ca_key(self) -> Path:
        return self.ca_key_file or self.home / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate that signs new certificates."""
        return self.home / "ca" / "ca.pem"

    @property
    def trust_bundle(self) -> Path:
        """Every CA certificate the hub trusts: the signing one first, then older ones until they are retired."""
        return self.home / "ca" / "trust.pem"

    def trusted_pem(self) -> bytes:
        """The trust bundle; a hub whose CA was never rotated trusts its one CA."""
        return self.trust_bundle.read_bytes() if self.trust_bundle.exists() else self.ca_cert.read_bytes()

    def retired_key(self, ca_fingerprint: str) -> Path:
        """Where a rotated-out CA key waits until its CA is retired (then it is deleted)."""
        return self.ca_key.with_name(f"{self.ca_key.name}.{ca_fingerprint[:16]}.previous")

    @property
    def server_key(self) -> Path:
        return self.home / "server" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.home / "server" / "server.pem"

    @property
    def hub_key(self) -> Path:
        """The key of the hub certificate, which this hub presents to its peer hubs (federation)."""
        return self.home / "hub" / "hub.key"

    @property
    def hub_cert(self) -> Path:
        return self.home / "hub" / "hub.pem"

    @property
    def audit_key(self) -> Path:
        """The audit log's Ed25519 signing key (C2SP signer key text)."""
        return self.home / "audit" / "log.key"

    @property
    def witness_key(self) -> Path:
        """The key this hub cosigns its peers' checkpoints with, as their witness (federation)."""
        return self.home / "audit" / "witness.key"

    @property
    def audit_verifier(self) -> Path:
        """The audit log's public verifier key, for auditors."""
        return self.home / "audit" / "log.pub"

    @property
    def audit_subject_key(self) -> Path:
        """The secret key under which data subjects' identifiers are hashed in audit records."""
        return self.home / "audit" / "subject.key"

    def identity(self, ref: PrincipalRef) -> IdentityFiles:
        return IdentityFiles(self.home / "identities" / f"{ref.kind.value}-{ref.code}")
