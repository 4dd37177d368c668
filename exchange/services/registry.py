"""Registering departments, systems and people, and issuing their certificates."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import replace

from cryptography import x509

from exchange import ca, pki, validation
from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, PermissionDenied
from exchange.models import (
    AdministrativeLevel,
    CertificateRecord,
    Department,
    Page,
    Person,
    Principal,
    PrincipalKind,
    PrincipalRef,
    Role,
    System,
)
from exchange.paging import page_request
from exchange.services.auditing import change_record
from exchange.services.cache import Cache, NotHeld, held_only
from exchange.store import Store
from exchange.store.registry import Holder, holder_at
from policy import HUB_WIDE, Action, RightsPolicy, assignments_of, require_compatible_roles

MAX_CERTIFICATE_DAYS = 825
# Unrevoked, unexpired certificates one principal may hold: enough for a renewal overlap and a
# few hosts of one system, few enough that a stolen key cannot mint itself a stock of successors.
MAX_LIVE_CERTIFICATES = 5
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class CertificateAuthority:
    """The hub's signing CA and trust bundle; the server's follow their files (rotation needs no restart)."""

    def __init__(self, current: Callable[[], ca.Authority], trust: Callable[[], bytes]) -> None:
        """A CA read through callables: the server's follow files that may be rotated while it runs."""
        self._current = current
        self._trust = trust

    @classmethod
    def of(cls, key: pki.PrivateKey, cert: x509.Certificate) -> CertificateAuthority:
        """A CA that never changes, trusting only itself (``exchange init``, tests)."""
        fixed, bundle = ca.Authority(key, cert), pki.cert_pem(cert)
        return cls(lambda: fixed, lambda: bundle)

    def issue(self, csr_pem: str, ref: PrincipalRef, days: int, renewed_from: str = "") -> CertificateRecord:
        signing = self._current()
        return record_of(pki.sign_csr(signing.key, signing.cert, csr_pem, ref, days), ref, renewed_from)

    def trust_bundle(self) -> tuple[str, str]:
        """(the trusted CA certificates as PEM, the signing CA's fingerprint)."""
        return self._trust().decode(), pki.fingerprint(self._current().cert)

    def with_issuer(self, record: CertificateRecord) -> CertificateRecord:
        """The record with the fingerprint of the trusted CA that signed it ("" if none trusted now does)."""
        cert = x509.load_pem_x509_certificate(record.pem.encode())
        for candidate in pki.split_pems(self._trust()):
            if pki.issued_by(cert, candidate):
                return replace(record, issuer_fingerprint=pki.fingerprint(candidate))
        return record


def record_of(cert: x509.Certificate, ref: PrincipalRef, renewed_from: str = "") -> CertificateRecord:
    """What the registry keeps of a certificate issued to ``ref``."""
    return CertificateRecord(
        serial_number=format(cert.serial_number, "x"),
        fingerprint_sha256=pki.fingerprint(cert),
        principal=ref,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        pem=pki.cert_pem(cert).decode(),
        renewed_from=renewed_from,
    )


def identity_key(secret: bytes, id_number: str) -> str:
    """The keyed hash that tells two registrations of one person apart from two people."""
    message = b"exchange person identity\x00" + id_number.strip().upper().encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _check_days(days: int) -> None:
    if days < 0 or days > MAX_CERTIFICATE_DAYS:
        raise InvalidArgument.of(
            [FieldViolation("validity_days", f"must be between 1 and {MAX_CERTIFICATE_DAYS} (0: the default)")]
        )


class RegistryService:
    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        policy: RightsPolicy,
        default_certificate_days: int,
        *,
        holders: Cache[str, Holder] | None = None,
        identity_secret: bytes = b"",
    ) -> None:
        self._store = store
        self._policy = policy
        # The hub secret under which people's identity numbers are hashed (never stored in clear).
        self._identity_secret = identity_secret
        self._ca = ca
        self._default_days = default_certificate_days
        # Certificate holders by fingerprint; the hub drops them on any member or certificate change.
        self._holders: Cache[str, Holder] = holders or Cache()

    # Each change below decides the caller's right before it checks the request: a caller without the right
    # learns nothing of the rules of a form it may not submit. The handlers ask first too, before translating.

    def require_registrar(self, actor: Principal, doing: str) -> None:
        """Refuses a caller who may not register members (``doing`` says what it tried)."""
        self._policy.require(actor, Action.REGISTER_MEMBERS, HUB_WIDE, doing)

    def create_department(self, actor: Principal, department: Department) -> Department:
        self.require_registrar(actor, "register departments")
        validation.validate_department(department)
        audit = change_record(actor, "registry", "create_department", subject=department.code)
        return self._store.registry.add_department(department, audit=audit)

    def get_department(self, actor: Principal, code: str) -> Department:
        validation.validate_key("code", code, "department")
        return self._store.registry.get_department(code)

    def list_departments(
        self, actor: Principal, size: int, token: str, parent_code: str, level: AdministrativeLevel | None
    ) -> Page[Department]:
        validation.validate_key("parent_code", parent_code, "department", optional=True)
        page = page_request(size, token, {"parent": parent_code, "level": level})
        return self._store.registry.list_departments(page, parent_code or None, level)

    def create_system(self, actor: Principal, system: System) -> System:
        self.require_registrar(actor, "register systems")
        validation.validate_system(system)
        audit = change_record(actor, "registry", "create_system", subject=f"system/{system.code}")
        created = self._store.registry.add_system(system, audit=audit)
        self._refresh_roles(PrincipalRef(PrincipalKind.SYSTEM, created.code))
        return created

    def get_system(self, actor: Principal, code: str) -> System:
        validation.validate_key("code", code, "system")
        return self._store.registry.get_system(code)

    def list_systems(self, actor: Principal, size: int, token: str, department_code: str) -> Page[System]:
        validation.validate_key("department_code", department_code, "department", optional=True)
        page = page_request(size, token, {"department": department_code})
        return self._store.registry.list_systems(page, department_code or None)

    def create_person(self, actor: Principal, person: Person, id_number: str) -> Person:
        self.require_registrar(actor, "register people")
        validation.validate_person(person)
        out: list[FieldViolation] = []
        validation.check_id_number(out, "id_number", id_number)
        validation.raise_if(out)
        require_compatible_roles(person.roles)
        person = replace(person, identity_key=identity_key(self._identity_secret, id_number))
        if person.identity_key == actor.identity_key:
            raise PermissionDenied(f"{actor.ref} may not register itself again", reason="SELF_ELEVATION")
        self._require_apart(person.username, person.identity_key, person.roles)
        roles = ",".join(sorted(r.value for r in person.roles))
        audit = change_record(actor, "registry", "create_person", subject=f"person/{person.username}", reason=roles)
        created = self._store.registry.add_person(person, audit=audit)
        self._refresh_roles(PrincipalRef(PrincipalKind.PERSON, created.username))
        return created

    def change_role(self, actor: Principal, username: str, role: Role, add: bool, reason: str) -> Person:
        self.require_registrar(actor, f"{'assign' if add else 'unassign'} roles")
        validation.validate_key("username", username, "person")
        validation.validate_free_text("reason", reason)
        if actor.ref == PrincipalRef(PrincipalKind.PERSON, username):
            raise PermissionDenied(f"{actor.ref} may not change its own roles", reason="SELF_ELEVATION")

        def change(person: Person) -> frozenset[Role]:
            if person.identity_key and person.identity_key == actor.identity_key:
                raise PermissionDenied(
                    f"{actor.ref} may not change the roles of another registration of itself", reason="SELF_ELEVATION"
                )
            roles = person.roles | {role} if add else person.roles - {role}
            if add and role in person.roles:
                raise FailedPrecondition(f"{username} already holds the role {role.value}", username)
            if not add and role not in person.roles:
                raise FailedPrecondition(f"{username} does not hold the role {role.value}", username)
            if not roles:
                raise FailedPrecondition(f"{username} would hold no role; a person holds at least one", username)
            try:
                require_compatible_roles(roles)
            except InvalidArgument as e:
                raise FailedPrecondition(e.violations[0].description, username, kind="SEPARATION_OF_DUTIES") from None
            if add:
                self._require_apart(username, person.identity_key, roles)
            return roles

        action = f"{'assign' if add else 'unassign'}_role:{role.value}"
        audit = change_record(actor, "registry", action, subject=f"person/{username}", reason=reason)
        changed = self._store.registry.set_roles(username, change, audit=audit)
        self._refresh_roles(PrincipalRef(PrincipalKind.PERSON, username))
        return changed

    def _require_apart(self, username: str, key: str, roles: frozenset[Role]) -> None:
        """Refuses roles that clash with those the same person holds under another registration."""
        for other in self._store.registry.same_person(key):
            if other.username == username:
                continue
            try:
                require_compatible_roles(roles | other.roles)
            except InvalidArgument as e:
                raise FailedPrecondition(
                    f"the same person is registered as {other.username}: {e.violations[0].description}",
                    username,
                    kind="SEPARATION_OF_DUTIES",
                ) from None

    def _refresh_roles(self, ref: PrincipalRef) -> None:
        """Tells the policy a member's committed roles, read from the store under the policy's lock."""
        self._policy.refresh_roles(ref, lambda: assignments_of(*self._store.registry.roles_of(ref)))

    @staticmethod
    def require_person_reader(actor: Principal, what: str) -> None:
        """Refuses a system any reading of people (``what``: what it tried), before its request is checked."""
        _require_person(actor, what)

    def get_person(self, actor: Principal, username: str) -> Person:
        _require_person(actor, "read a person")
        validation.validate_key("username", username, "person")
        return self._store.registry.get_person(username)

    def list_people(
        self, actor: Principal, size: int, token: str, department_code: str, role: Role | None
    ) -> Page[Person]:
        _require_person(actor, "list people")
        validation.validate_key("department_code", department_code, "department", optional=True)
        page = page_request(size, token, {"department": department_code, "role": role})
        return self._store.registry.list_people(page, department_code or None, role)

    def require_issuer(self, actor: Principal, kind: PrincipalKind | None, code: str = "") -> None:
        """Refuses, before anything it asked is checked, a caller who may not certify this kind of principal
        (a system: no system of its own department; a person, or a kind not known: no one at all)."""
        certifies_systems = self._policy.allows(actor.ref, Action.CERTIFY_SYSTEM, actor.department_code)
        if kind is PrincipalKind.SYSTEM and not certifies_systems:
            raise self._certify_refusal(actor, code)
        if kind is PrincipalKind.PERSON or not certifies_systems:
            self._policy.require(actor, Action.ISSUE_CERTIFICATE, HUB_WIDE, "issue certificates")

    def issue_certificate(self, actor: Principal, ref: PrincipalRef, csr_pem: str, days: int) -> CertificateRecord:
        self.require_issuer(actor, ref.kind, ref.code)
        if ref.kind is PrincipalKind.SYSTEM:
            # Whoever certifies a key can act as the system: its own department's steward does, never an operator.
            self._system_department(actor, ref.code)
        else:
            self._policy.require(actor, Action.ISSUE_CERTIFICATE, HUB_WIDE, "issue certificates")
            validation.validate_key("principal.code", ref.code, ref.kind.value)
        _check_days(days)
        self._store.registry.principal(ref)
        self._require_room(ref)
        record = replace(self._ca.issue(csr_pem, ref, days or self._default_days), issued_by=str(actor.ref))
        audit = change_record(
            actor, "registry", "issue_certificate", subject=str(ref), reason=record.fingerprint_sha256
        )
        return self._shown(self._store.registry.add_certificate(record, audit=audit))

    def _system_department(self, actor: Principal, code: str) -> str:
        """The department of a system its caller may certify; one it may not and an unknown one are refused
        alike (a system is certified by its own department's people, so no one may certify one that is not)."""
        refusal = self._certify_refusal(actor, code)
        if not self._policy.allows(actor.ref, Action.CERTIFY_SYSTEM, actor.department_code):
            raise refusal
        validation.validate_key("principal.code", code, PrincipalKind.SYSTEM.value)
        try:
            department = self._store.registry.principal(PrincipalRef(PrincipalKind.SYSTEM, code)).department_code
        except NotFound:
            raise refusal from None
        if not self._policy.allows(actor.ref, Action.CERTIFY_SYSTEM, department):
            raise refusal
        return department

    @staticmethod
    def _certify_refusal(actor: Principal, code: str) -> PermissionDenied:
        system = f"system {code[:63]}" if code else "systems"
        return PermissionDenied(
            f"{actor.ref} may not certify {system}: a system is certified by its own department's owner stewards"
            + (f", and this is not a system of department {actor.department_code}" if code else ""),
            reason="SYSTEM_CERTIFICATE_ISSUE_DENIED",
        )

    def renew_certificate(self, actor: Principal, csr_pem: str, days: int) -> CertificateRecord:
        """A new certificate for the caller itself, over a new key; the current one stays until it expires."""
        _check_days(days)
        if not actor.certificate_fingerprint:
            raise FailedPrecondition("renewal needs the caller's current client certificate (not development mode)")
        current = self._store.registry.get_certificate(actor.certificate_fingerprint)
        if pki.csr_public_key_der(csr_pem) == pki.public_key_der_of(current.pem):
            raise InvalidArgument.of(
                [FieldViolation("csr_pem", "is over the current key; renew with a newly generated key pair")]
            )
        self._require_room(actor.ref)
        renewed = self._ca.issue(
            csr_pem, actor.ref, days or self._default_days, renewed_from=current.fingerprint_sha256
        )
        # A system renewing its own key is still held by whoever had it certified.
        record = replace(renewed, issued_by=current.issued_by)
        audit = change_record(
            actor, "registry", "renew_certificate", subject=str(actor.ref), reason=record.fingerprint_sha256
        )
        return self._shown(self._store.registry.add_certificate(record, audit=audit))

    def trust_bundle(self) -> tuple[str, str]:
        return self._ca.trust_bundle()

    def _require_room(self, ref: PrincipalRef) -> None:
        if self._store.registry.live_certificates(ref, dt.datetime.now(dt.UTC)) >= MAX_LIVE_CERTIFICATES:
            raise FailedPrecondition(
                f"{ref} already holds {MAX_LIVE_CERTIFICATES} valid certificates; revoke one it no longer uses first",
                str(ref),
                kind="TOO_MANY_CERTIFICATES",
            )

    def _shown(self, record: CertificateRecord) -> CertificateRecord:
        return self._ca.with_issuer(record)

    def list_certificates(
        self, actor: Principal, size: int, token: str, principal: PrincipalRef | None
    ) -> Page[CertificateRecord]:
        if principal is not None:
            validation.validate_key("principal.code", principal.code, principal.kind.value)
        page = page_request(size, token, {"principal": str(principal) if principal else ""})
        found = self._store.registry.list_certificates(page, principal)
        return replace(found, items=[self._shown(r) for r in found.items])

    def revoke_certificate(
        self, actor: Principal, fingerprint: str, reason: str, *, keep_renewals: bool = False
    ) -> CertificateRecord:
        if not self._policy.allows(actor.ref, Action.REVOKE_CERTIFICATE, HUB_WIDE) and (
            self._holder_of(fingerprint) != actor.ref  # a holder may revoke its own other certificates
        ):
            self._policy.require(actor, Action.REVOKE_CERTIFICATE, HUB_WIDE, "revoke certificates")
        out: list[FieldViolation] = []
        validation.check_pattern(out, "fingerprint_sha256", fingerprint, FINGERPRINT, "a hex SHA-256 fingerprint")
        validation.check_text(out, "reason", reason, required=True, limit=validation.MAX_TEXT)
        validation.raise_if(out)
        if fingerprint == actor.certificate_fingerprint:
            raise FailedPrecondition("this is the certificate you are calling with; revoke it from another identity")
        if not keep_renewals and actor.certificate_fingerprint in self._store.registry.renewals_of(fingerprint):
            raise FailedPrecondition(
                "the certificate you are calling with was renewed from this one and would be revoked with it: "
                "to retire this one and keep yours, ask with keep_renewals; after a leak, revoke from another identity"
            )
        action = "revoke_certificate:keep_renewals" if keep_renewals else "revoke_certificate"
        # keep_renewals spares only the renewals that lead to the caller's own certificate.
        spare = actor.certificate_fingerprint if keep_renewals else ""
        audit = change_record(actor, "registry", action, subject=fingerprint, reason=reason)
        revoked = self._store.registry.revoke_certificate(
            fingerprint, reason, dt.datetime.now(dt.UTC), spare=spare, audit=audit
        )
        return self._shown(revoked)

    def _holder_of(self, fingerprint: str) -> PrincipalRef | None:
        """Whose certificate ``fingerprint`` is; None for a malformed or unknown one (read only if well formed)."""
        if not FINGERPRINT.match(fingerprint):
            return None
        try:
            return self._store.registry.get_certificate(fingerprint).principal
        except NotFound:
            return None

    def principal(self, ref: PrincipalRef) -> Principal:
        if held_only():  # not cached: read from the store, off the event loop
            raise NotHeld(ref)
        return self._store.registry.principal(ref)

    def authenticate(self, fingerprint: str) -> Principal | None:
        """The holder of a registered, unrevoked certificate within its validity period (cached until a change)."""
        return holder_at(
            self._holders.get(fingerprint, self._store.registry.certificate_holder), dt.datetime.now(dt.UTC)
        )


def _require_person(actor: Principal, what: str) -> None:
    """People are read by people: a system exchanges data and administers nothing, so it learns no one's
    name or roles, and cannot tell which usernames exist (refused before any lookup)."""
    if actor.ref.kind is PrincipalKind.SYSTEM:
        raise PermissionDenied(
            f"{actor.ref} may not {what}: the people registry is read by people, not by systems",
            reason="PEOPLE_READ_DENIED",
        )
