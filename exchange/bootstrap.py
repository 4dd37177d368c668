"""``exchange init``: the hub's own CA, its server certificate, the schema and a first operator.

The first operator cannot be registered through the API (registering needs an
operator), so init writes it straight into the store and gives it an identity
directory; every later member is registered by an operator over gRPC.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from audit.cosignature import WitnessKey
from audit.note import NoteError, Signer
from audit.seal import Sealer
from exchange import pki, validation
from exchange.config import Settings
from exchange.errors import ConfigError, FailedPrecondition, FieldViolation
from exchange.models import Department, Person, Principal, PrincipalKind, PrincipalRef, Role
from exchange.services.auditing import change_record
from exchange.services.registry import CertificateAuthority, identity_key
from exchange.store import Store


@dataclass(frozen=True)
class OperatorSeed:
    """The department the first operator belongs to, and the operator."""

    department: Department
    username: str
    display_name: str
    # The operator's citizen identity number; "" leaves it unknown (see CreatePersonRequest.id_number).
    id_number: str = ""


def initialize(settings: Settings, seed: OperatorSeed) -> pki.IdentityFiles:
    """Creates the hub's keys and schema and its first operator; returns the operator's identity files."""
    files = pki.HubFiles(settings.home, settings.ca_key_file)
    if files.ca_key.exists():
        raise FailedPrecondition(f"the hub at {settings.home} is already initialized ({files.ca_key} exists)")
    validation.validate_department(seed.department)
    subject_key = secrets.token_bytes(32)  # also the secret people's identity numbers are hashed under
    key_of_person = identity_key(subject_key, seed.id_number) if seed.id_number else ""
    operator = Person(
        seed.username, seed.display_name, seed.department.code, frozenset({Role.OPERATOR}), identity_key=key_of_person
    )
    validation.validate_person(operator)
    if seed.id_number:
        out: list[FieldViolation] = []
        validation.check_id_number(out, "operator_id_number", seed.id_number)
        validation.raise_if(out)

    ca_key, ca_cert = pki.create_ca(f"Exchange hub CA ({seed.department.name})")
    server_key, server_cert = pki.issue_server_certificate(ca_key, ca_cert, settings.hostnames)
    ref = PrincipalRef(PrincipalKind.PERSON, seed.username)
    key = pki.new_key()
    record = CertificateAuthority.of(ca_key, ca_cert).issue(pki.make_csr(key, ref), ref, settings.certificate_days)

    # The store first, in one transaction: if it fails, no key is left behind and init can be run again.
    log_signer = Signer.generate(settings.audit_origin)
    store = Store(settings.effective_database_url)
    store.audit.sealer = Sealer.of(log_signer)
    try:
        store.db.migrate()
        first = Principal(ref, seed.display_name, seed.department.code, operator.roles)
        audit = change_record(first, "registry", "init", subject=seed.department.code, reason="first operator")
        store.registry.bootstrap(seed.department, operator, record, audit=audit)
    finally:
        store.close()
    pki.write_secret(files.ca_key, pki.key_pem(ca_key))
    pki.write_public(files.ca_cert, pki.cert_pem(ca_cert))
    pki.write_secret(files.server_key, pki.key_pem(server_key))
    pki.write_public(files.server_cert, pki.cert_pem(server_cert))
    if settings.hub_code:  # a federating hub's certificate for its peers (docs/federation.md)
        hub_key, hub_cert = pki.issue_hub_certificate(ca_key, ca_cert, settings.hub_code, settings.hostnames)
        pki.write_secret(files.hub_key, pki.key_pem(hub_key))
        pki.write_public(files.hub_cert, pki.cert_pem(hub_cert))
    pki.write_secret(files.audit_key, log_signer.encode().encode() + b"\n")
    pki.write_public(files.audit_verifier, log_signer.verifier().encode().encode() + b"\n")
    pki.write_secret(files.audit_subject_key, subject_key)
    identity = files.identity(ref)
    identity.write(key, record.pem.encode(), pki.cert_pem(ca_cert))
    return identity


def load_audit_signer(settings: Settings) -> Signer:
    """The audit log's signing key from the hub's home; it must sign for the configured ``audit_origin``."""
    path = pki.HubFiles(settings.home).audit_key
    try:
        signer = Signer.parse(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: the audit log's key is made by `exchange init` (give the hub's --home)"
        ) from None
    except NoteError as e:
        raise ConfigError(f"{path} is not the audit log's key: {e}") from None
    if signer.name != settings.audit_origin:
        raise ConfigError(f"{path} signs for {signer.name!r}, but audit_origin is {settings.audit_origin!r}")
    return signer


def load_witness_key(settings: Settings) -> WitnessKey:
    """The key this hub cosigns its peers' checkpoints with; made on first use (a hub that starts federating).

    It is never the audit log's own key: a witness's cosignature and a log's signature must not be confused.
    """
    path = pki.HubFiles(settings.home).witness_key
    try:
        return WitnessKey.parse(path.read_text())
    except FileNotFoundError:
        key = WitnessKey.generate(f"{settings.audit_origin}/witness")
        pki.write_secret(path, key.encode().encode() + b"\n")
        return key
    except NoteError as e:
        raise ConfigError(f"{path} is not a witness key: {e}") from None
