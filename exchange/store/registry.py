"""Registry store: departments, systems, people and their certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.errors import AlreadyExists, FailedPrecondition, NotFound
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
from exchange.paging import PageRequest
from exchange.store.changes import announce, certificate_changed, principal_changed
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.recorded import RecordedWrites
from exchange.store.schema import CertificateRow, DepartmentRow, PersonRoleRow, PersonRow, SystemRow


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def department_of(row: DepartmentRow) -> Department:
    return Department(
        code=row.code,
        name=row.name,
        division_code=row.division_code,
        level=AdministrativeLevel(row.level),
        parent_code=row.parent.code if row.parent else None,
        created_at=row.created_at,
    )


def _system_of(row: SystemRow) -> System:
    return System(row.code, row.name, row.department.code, row.description, row.created_at)


def _person_of(row: PersonRow) -> Person:
    roles = frozenset(Role(r.role) for r in row.roles)
    return Person(row.username, row.display_name, row.department.code, roles, row.created_at, row.identity_key or "")


def _certificate_of(row: CertificateRow) -> CertificateRecord:
    return CertificateRecord(
        serial_number=row.serial_number,
        fingerprint_sha256=row.fingerprint_sha256,
        principal=PrincipalRef(PrincipalKind(row.principal_kind), row.principal_code),
        not_before=row.not_before,
        not_after=row.not_after,
        pem=row.pem,
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
        renewed_from=row.renewed_from or "",
        issued_by=row.issued_by or "",
    )


def department_row(session: Session, code: str) -> DepartmentRow:
    """The department with ``code``, or NotFound."""
    row = session.scalar(select(DepartmentRow).where(DepartmentRow.code == code))
    if row is None:
        raise NotFound("department", code)
    return row


class RegistryStore:
    """Reads and writes the registry; every method is one transaction."""

    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    # Departments

    def add_department(self, d: Department, *, audit: AuditRecord) -> Department:
        with self._recorded.write(audit) as s:
            return _add_department(s, d)

    def bootstrap(
        self, department: Department, operator: Person, certificate: CertificateRecord, *, audit: AuditRecord
    ) -> None:
        """The first department, its operator and the operator's certificate, all or nothing."""
        with self._recorded.write(audit) as s:
            _add_department(s, department)
            _add_person(s, operator)
            _add_certificate(s, certificate)

    def get_department(self, code: str) -> Department:
        with self._db.read() as s:
            return department_of(department_row(s, code))

    def list_departments(
        self, page: PageRequest, parent_code: str | None = None, level: AdministrativeLevel | None = None
    ) -> Page[Department]:
        with self._db.read() as s:
            stmt = select(DepartmentRow)
            if parent_code:
                stmt = stmt.where(DepartmentRow.parent_id == department_row(s, parent_code).id)
            if level is not None:
                stmt = stmt.where(DepartmentRow.level == level.value)
            return fetch_page(s, stmt, DepartmentRow.code, page, convert=department_of)

    # Systems

    def add_system(self, system: System, *, audit: AuditRecord) -> System:
        with self._recorded.write(audit) as s:
            announce(s, principal_changed(f"system/{system.code}"))
            if s.scalar(select(SystemRow.id).where(SystemRow.code == system.code)) is not None:
                raise AlreadyExists("system", system.code)
            dept = department_row(s, system.department_code)
            clash = select(SystemRow.id).where(SystemRow.department_id == dept.id, SystemRow.name == system.name)
            if s.scalar(clash) is not None:
                raise AlreadyExists("system name", system.name, f"the department {dept.name} has a system of that name")
            row = SystemRow(
                code=system.code, name=system.name, department=dept, description=system.description, created_at=_now()
            )
            s.add(row)
            s.flush()
            return _system_of(row)

    def get_system(self, code: str) -> System:
        with self._db.read() as s:
            row = s.scalar(select(SystemRow).where(SystemRow.code == code))
            if row is None:
                raise NotFound("system", code)
            return _system_of(row)

    def list_systems(self, page: PageRequest, department_code: str | None = None) -> Page[System]:
        with self._db.read() as s:
            stmt = select(SystemRow)
            if department_code:
                stmt = stmt.where(SystemRow.department_id == department_row(s, department_code).id)
            return fetch_page(s, stmt, SystemRow.code, page, convert=_system_of)

    # People

    def add_person(self, person: Person, *, audit: AuditRecord) -> Person:
        with self._recorded.write(audit) as s:
            return _add_person(s, person)

    def same_person(self, identity_key: str) -> list[Person]:
        """Every registration of the person with this identity key (none for "")."""
        if not identity_key:
            return []
        with self._db.read() as s:
            return [_person_of(r) for r in s.scalars(select(PersonRow).where(PersonRow.identity_key == identity_key))]

    def set_roles(self, username: str, change: Callable[[Person], frozenset[Role]], *, audit: AuditRecord) -> Person:
        """Sets a person's roles to what ``change`` makes of the current ones, under a row lock."""
        with self._recorded.write(audit) as s:
            row = s.scalar(select(PersonRow).where(PersonRow.username == username).with_for_update(of=PersonRow))
            if row is None:
                raise NotFound("person", username)
            roles = change(_person_of(row))
            row.roles = [PersonRoleRow(role=r.value) for r in sorted(roles)]
            s.flush()
            announce(s, principal_changed(f"person/{username}"))
            return _person_of(row)

    def get_person(self, username: str) -> Person:
        with self._db.read() as s:
            row = s.scalar(select(PersonRow).where(PersonRow.username == username))
            if row is None:
                raise NotFound("person", username)
            return _person_of(row)

    def list_people(
        self, page: PageRequest, department_code: str | None = None, role: Role | None = None
    ) -> Page[Person]:
        with self._db.read() as s:
            stmt = select(PersonRow)
            if department_code:
                stmt = stmt.where(PersonRow.department_id == department_row(s, department_code).id)
            if role is not None:
                stmt = stmt.where(PersonRow.roles.any(PersonRoleRow.role == role.value))
            return fetch_page(s, stmt, PersonRow.username, page, convert=_person_of)

    # Principals and certificates

    def principal(self, ref: PrincipalRef) -> Principal:
        """The registered principal ``ref`` names, or NotFound."""
        with self._db.read() as s:
            return _principal(s, ref)

    def add_certificate(self, record: CertificateRecord, *, audit: AuditRecord) -> CertificateRecord:
        with self._recorded.write(audit) as s:
            return _add_certificate(s, record)

    def list_certificates(self, page: PageRequest, principal: PrincipalRef | None = None) -> Page[CertificateRecord]:
        with self._db.read() as s:
            stmt = select(CertificateRow)
            if principal is not None:
                stmt = stmt.where(
                    CertificateRow.principal_kind == principal.kind.value,
                    CertificateRow.principal_code == principal.code,
                )
            return fetch_page(s, stmt, CertificateRow.fingerprint_sha256, page, convert=_certificate_of)

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        with self._db.read() as s:
            row = s.scalar(select(CertificateRow).where(CertificateRow.fingerprint_sha256 == fingerprint))
            if row is None:
                raise NotFound("certificate", fingerprint)
            return _certificate_of(row)

    def valid_certificates(self, at: dt.datetime) -> list[CertificateRecord]:
        """Every unrevoked certificate that has not expired at ``at``."""
        with self._db.read() as s:
            rows = s.scalars(
                select(CertificateRow).where(CertificateRow.revoked_at.is_(None), CertificateRow.not_after > at)
            )
            return [_certificate_of(r) for r in rows]

    def live_certificates(self, ref: PrincipalRef, at: dt.datetime) -> int:
        """How many unrevoked, unexpired certificates a principal holds."""
        with self._db.read() as s:
            found = s.scalar(
                select(func.count())
                .select_from(CertificateRow)
                .where(
                    CertificateRow.principal_kind == ref.kind.value,
                    CertificateRow.principal_code == ref.code,
                    CertificateRow.revoked_at.is_(None),
                    CertificateRow.not_after > at,
                )
            )
            return int(found or 0)

    def renewals_of(self, fingerprint: str) -> dict[str, str]:
        """Every certificate renewed, directly or not, from this one: fingerprint -> the one it renewed."""
        with self._db.read() as s:
            return _renewals(s, fingerprint)

    def revoke_certificate(
        self, fingerprint: str, reason: str, at: dt.datetime, *, spare: str = "", audit: AuditRecord
    ) -> CertificateRecord:
        """Revokes a certificate and every unrevoked one renewed from it, in one transaction.

        A key that leaked may have been renewed by whoever holds it: its successors go with it. Only the
        renewals leading to ``spare`` (the holder's own current certificate, when it retires an older
        one it renewed) are left. A certificate already revoked whose renewals are not is revoked again
        in that sense: its remaining renewals go.
        """
        with self._recorded.write(audit) as s:
            row = s.scalar(select(CertificateRow).where(CertificateRow.fingerprint_sha256 == fingerprint))
            if row is None:
                raise NotFound("certificate", fingerprint)
            renewed = _renewals(s, fingerprint)
            kept = _chain(renewed, spare, fingerprint)
            doomed = [fp for fp in renewed if fp not in kept]
            rows = [row] if row.revoked_at is None else []
            rows += [
                r
                for r in s.scalars(select(CertificateRow).where(CertificateRow.fingerprint_sha256.in_(doomed)))
                if r.revoked_at is None
            ]
            if not rows:
                raise FailedPrecondition(f"certificate {fingerprint[:16]}… was already revoked", fingerprint)
            for each in rows:
                each.revoked_at = at
                each.revoke_reason = reason if each is row else f"{reason} (renewed from {fingerprint[:16]}…)"
            s.flush()
            for each in rows:
                announce(s, certificate_changed(each.fingerprint_sha256))
            return _certificate_of(row)

    def roles_of(self, ref: PrincipalRef) -> tuple[PrincipalRef, str, frozenset[Role]]:
        """One member's (principal, department, roles), as role_assignments lists them."""
        found = self.principal(ref)
        return found.ref, found.department_code, found.roles

    def role_assignments(self) -> list[tuple[PrincipalRef, str, frozenset[Role]]]:
        """Every member that can hold rights: (principal, its department, its roles); systems hold none."""
        with self._db.read() as s:
            people = [
                (
                    PrincipalRef(PrincipalKind.PERSON, p.username),
                    p.department.code,
                    frozenset(Role(r.role) for r in p.roles),
                )
                for p in s.scalars(select(PersonRow))
            ]
            systems = [
                (PrincipalRef(PrincipalKind.SYSTEM, x.code), x.department.code, frozenset[Role]())
                for x in s.scalars(select(SystemRow))
            ]
            return people + systems

    def principal_for_certificate(self, fingerprint: str, at: dt.datetime) -> Principal | None:
        """The principal a presented certificate belongs to, if it is registered, valid and not revoked."""
        return holder_at(self.certificate_holder(fingerprint), at)

    def certificate_expiries(self) -> list[tuple[str, dt.datetime]]:
        """The latest expiry of each principal's unrevoked certificates ("system/<code>" or "person/<name>")."""
        with self._db.read() as s:
            rows = s.execute(
                select(CertificateRow.principal_kind, CertificateRow.principal_code, func.max(CertificateRow.not_after))
                .where(CertificateRow.revoked_at.is_(None))
                .group_by(CertificateRow.principal_kind, CertificateRow.principal_code)
            ).all()
            return [(f"{kind}/{code}", not_after) for kind, code, not_after in rows]

    def certificate_holder(self, fingerprint: str) -> Holder | None:
        """The principal of an unrevoked registered certificate, with the certificate's validity period."""
        with self._db.read() as s:
            cert = s.scalar(select(CertificateRow).where(CertificateRow.fingerprint_sha256 == fingerprint))
            if cert is None or cert.revoked_at is not None:
                return None
            ref = PrincipalRef(PrincipalKind(cert.principal_kind), cert.principal_code)
            try:
                found = _principal(s, ref)
            except NotFound:
                return None
            holder = Principal(
                found.ref,
                found.display_name,
                found.department_code,
                found.roles,
                fingerprint,
                found.identity_key,
                key_holder=(cert.issued_by or "") if ref.kind is PrincipalKind.SYSTEM else "",
            )
            return holder, cert.not_before, cert.not_after


# A certificate's holder, and the certificate's validity period.
Holder = tuple[Principal, dt.datetime, dt.datetime]


def holder_at(found: Holder | None, at: dt.datetime) -> Principal | None:
    """The holder, if the certificate is valid at ``at``."""
    if found is None or not found[1] <= at <= found[2]:
        return None
    return found[0]


def _principal(s: Session, ref: PrincipalRef) -> Principal:
    if ref.kind is PrincipalKind.SYSTEM:
        system = s.scalar(select(SystemRow).where(SystemRow.code == ref.code))
        if system is None:
            raise NotFound("system", ref.code)
        return Principal(ref, system.name, system.department.code)
    person = s.scalar(select(PersonRow).where(PersonRow.username == ref.code))
    if person is None:
        raise NotFound("person", ref.code)
    roles = frozenset(Role(r.role) for r in person.roles)
    return Principal(ref, person.display_name, person.department.code, roles, identity_key=person.identity_key or "")


def _add_department(s: Session, d: Department) -> Department:
    if s.scalar(select(DepartmentRow.id).where(DepartmentRow.code == d.code)) is not None:
        raise AlreadyExists("department", d.code)
    if s.scalar(select(DepartmentRow.id).where(DepartmentRow.name == d.name)) is not None:
        raise AlreadyExists("department name", d.name)
    parent = department_row(s, d.parent_code) if d.parent_code else None
    row = DepartmentRow(
        code=d.code,
        name=d.name,
        division_code=d.division_code,
        level=d.level.value,
        parent=parent,
        created_at=_now(),
    )
    s.add(row)
    s.flush()
    return department_of(row)


def _add_person(s: Session, person: Person) -> Person:
    if s.scalar(select(PersonRow.id).where(PersonRow.username == person.username)) is not None:
        raise AlreadyExists("person", person.username)
    row = PersonRow(
        username=person.username,
        display_name=person.display_name,
        department=department_row(s, person.department_code),
        roles=[PersonRoleRow(role=r.value) for r in sorted(person.roles)],
        created_at=_now(),
        identity_key=person.identity_key or None,
    )
    s.add(row)
    s.flush()
    announce(s, principal_changed(f"person/{person.username}"))
    return _person_of(row)


def _renewals(s: Session, fingerprint: str) -> dict[str, str]:
    """The certificates renewed from ``fingerprint``, however indirectly: each with the one it renewed."""
    found: dict[str, str] = {}
    parents = [fingerprint]
    while parents:
        children = s.execute(
            select(CertificateRow.fingerprint_sha256, CertificateRow.renewed_from).where(
                CertificateRow.renewed_from.in_(parents)
            )
        ).all()
        found.update({child: str(parent) for child, parent in children})
        parents = [child for child, _ in children]
    return found


def _chain(renewed: dict[str, str], last: str, first: str) -> set[str]:
    """The renewals from ``first`` that lead to ``last`` (``last`` included); empty if it is not one of them."""
    chain: set[str] = set()
    while last in renewed:
        chain.add(last)
        last = renewed[last]
    return chain if last == first else set()


def _add_certificate(s: Session, record: CertificateRecord) -> CertificateRecord:
    _principal(s, record.principal)
    row = CertificateRow(
        serial_number=record.serial_number,
        fingerprint_sha256=record.fingerprint_sha256,
        principal_kind=record.principal.kind.value,
        principal_code=record.principal.code,
        not_before=record.not_before,
        not_after=record.not_after,
        pem=record.pem,
        created_at=_now(),
        renewed_from=record.renewed_from or None,
        issued_by=record.issued_by,
    )
    s.add(row)
    s.flush()
    return _certificate_of(row)
