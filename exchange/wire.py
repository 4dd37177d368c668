"""Wire form <-> domain form, for the registry and catalog messages.

Reading a request collects every bad field as a ``FieldViolation`` (an enum
left unspecified or holding a number this hub does not know, say) and raises
them together, so the caller fixes a request in one round.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2

from exchange import models as m
from exchange.errors import FieldViolation
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as apb
from exchange.validation import raise_if

if TYPE_CHECKING:  # the generic wrapper type exists in the type stubs only
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

D = TypeVar("D", bound=StrEnum)
P = TypeVar("P", bound=int)


class EnumMap(Generic[D, P]):
    """Maps a domain enum to a proto enum whose names are PREFIX + the member's name."""

    def __init__(self, domain: type[D], wire: _EnumTypeWrapper[P], prefix: str) -> None:
        self._to_wire = {d: wire.Value(prefix + d.name) for d in domain}
        self._from_wire: dict[int, D] = {int(v): d for d, v in self._to_wire.items()}
        self._names = ", ".join(prefix + d.name for d in domain)

    def wire(self, value: D) -> P:
        return self._to_wire[value]

    def optional(self, value: D | None) -> P:
        """The wire number of an optional filter: 0 (unspecified) for None."""
        return self._to_wire[value] if value is not None else cast(P, 0)

    def checked(self, value: int, path: str, out: list[FieldViolation]) -> D:
        """The domain value of a required field, recording a violation when it is unset or unknown.

        After a violation the first member stands in, so a message can still be
        built; callers raise ``out`` before the value is used.
        """
        found = self.domain(value, path, out)
        return found if found is not None else next(iter(self._to_wire))

    def label(self, value: int) -> str:
        """The domain name of a wire number, for display ("-" when unset or unknown)."""
        found = self._from_wire.get(value)
        return "-" if found is None else str(found.value)

    def domain(self, value: int, path: str, out: list[FieldViolation], *, required: bool = True) -> D | None:
        """The domain value of a wire number; None (with a violation if required) when unspecified or unknown."""
        if value == 0 and not required:
            return None
        found = self._from_wire.get(value)
        if found is None:
            what = "is required" if value == 0 else f"{value} is not a known value"
            out.append(FieldViolation(path, f"{what}; one of {self._names}"))
        return found


LEVEL = EnumMap(m.AdministrativeLevel, rpb.AdministrativeLevel, "ADMINISTRATIVE_LEVEL_")
ROLE = EnumMap(m.Role, rpb.Role, "ROLE_")
KIND = EnumMap(m.PrincipalKind, rpb.PrincipalKind, "PRINCIPAL_KIND_")
SHARE_TYPE = EnumMap(m.ShareType, cpb.ShareType, "SHARE_TYPE_")
SHARE_METHOD = EnumMap(m.ShareMethod, cpb.ShareMethod, "SHARE_METHOD_")
SENSITIVITY = EnumMap(m.SensitivityGrade, cpb.SensitivityGrade, "SENSITIVITY_GRADE_")
FIELD_TYPE = EnumMap(m.FieldType, cpb.FieldType, "FIELD_TYPE_")
UPDATE_CYCLE = EnumMap(m.UpdateCycle, cpb.UpdateCycle, "UPDATE_CYCLE_")
STATUS = EnumMap(m.ResourceStatus, cpb.ResourceStatus, "RESOURCE_STATUS_")
CHANGE = EnumMap(m.ResourceChange, cpb.ResourceChange, "RESOURCE_CHANGE_")


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


# Registry


def department_to_wire(d: m.Department) -> rpb.Department:
    return rpb.Department(
        code=d.code,
        name=d.name,
        division_code=d.division_code,
        level=LEVEL.wire(d.level),
        parent_code=d.parent_code or "",
        create_time=timestamp(d.created_at),
    )


def department_from_wire(d: rpb.Department) -> m.Department:
    out: list[FieldViolation] = []
    level = LEVEL.checked(d.level, "department.level", out)
    raise_if(out)
    return m.Department(d.code.strip(), d.name.strip(), d.division_code.strip(), level, d.parent_code.strip() or None)


def system_to_wire(s: m.System) -> rpb.System:
    return rpb.System(
        code=s.code,
        name=s.name,
        department_code=s.department_code,
        description=s.description,
        create_time=timestamp(s.created_at),
    )


def system_from_wire(s: rpb.System) -> m.System:
    return m.System(s.code.strip(), s.name.strip(), s.department_code.strip(), s.description.strip())


def person_to_wire(p: m.Person) -> rpb.Person:
    return rpb.Person(
        username=p.username,
        display_name=p.display_name,
        department_code=p.department_code,
        roles=[ROLE.wire(r) for r in sorted(p.roles)],
        create_time=timestamp(p.created_at),
    )


def person_from_wire(p: rpb.Person) -> m.Person:
    out: list[FieldViolation] = []
    roles = [ROLE.domain(r, f"person.roles[{i}]", out) for i, r in enumerate(p.roles)]
    raise_if(out)
    return m.Person(
        p.username.strip(), p.display_name.strip(), p.department_code.strip(), frozenset(r for r in roles if r)
    )


def principal_ref_to_wire(ref: m.PrincipalRef) -> rpb.PrincipalRef:
    return rpb.PrincipalRef(kind=KIND.wire(ref.kind), code=ref.code)


def principal_ref_from_wire(ref: rpb.PrincipalRef, path: str) -> m.PrincipalRef:
    out: list[FieldViolation] = []
    kind = KIND.checked(ref.kind, f"{path}.kind", out)
    if not ref.code:
        out.append(FieldViolation(f"{path}.code", "is required"))
    raise_if(out)
    return m.PrincipalRef(kind, ref.code)


def certificate_to_wire(c: m.CertificateRecord) -> rpb.Certificate:
    return rpb.Certificate(
        serial_number=c.serial_number,
        fingerprint_sha256=c.fingerprint_sha256,
        principal=principal_ref_to_wire(c.principal),
        not_before=timestamp(c.not_before),
        not_after=timestamp(c.not_after),
        pem=c.pem,
        revoke_time=timestamp(c.revoked_at),
        revoke_reason=c.revoke_reason,
        renewed_from_sha256=c.renewed_from,
        issuer_fingerprint_sha256=c.issuer_fingerprint,
        issued_by=c.issued_by,
    )


# Catalog


def spec_to_wire(s: m.ResourceSpec) -> cpb.Resource:
    """The owner-written part of an entry as a message (output-only fields unset)."""
    return cpb.Resource(
        code=s.code,
        name=s.name,
        summary=s.summary,
        department_code=s.department_code,
        classification=s.classification,
        format=s.format,
        data_items=[
            cpb.DataItem(
                name=i.name,
                title=i.title,
                type=FIELD_TYPE.wire(i.type),
                description=i.description,
                sensitivity=SENSITIVITY.wire(i.sensitivity),
                personal_information=i.personal_information,
                filterable=i.filterable,
            )
            for i in s.data_items
        ],
        share_type=SHARE_TYPE.wire(s.share_type),
        share_conditions=s.share_conditions,
        legal_basis=s.legal_basis,
        share_method=SHARE_METHOD.wire(s.share_method),
        open_to_public=s.open_to_public,
        open_conditions=s.open_conditions,
        update_cycle=UPDATE_CYCLE.wire(s.update_cycle),
        related_resource_codes=list(s.related_resource_codes),
    )


def resource_to_wire(r: m.Resource) -> cpb.Resource:
    wire = spec_to_wire(r.spec)
    wire.status = STATUS.wire(r.status)
    wire.version = r.version
    wire.subscribable = r.subscribable
    wire.create_time.FromDatetime(r.created_at)
    wire.update_time.FromDatetime(r.updated_at)
    if r.published_at:
        wire.publish_time.FromDatetime(r.published_at)
    return wire


def _item_from_wire(i: cpb.DataItem, path: str, out: list[FieldViolation]) -> m.DataItem:
    return m.DataItem(
        name=i.name.strip(),
        title=i.title.strip(),
        type=FIELD_TYPE.checked(i.type, f"{path}.type", out),
        description=i.description.strip(),
        sensitivity=SENSITIVITY.checked(i.sensitivity, f"{path}.sensitivity", out),
        personal_information=i.personal_information,
        filterable=i.filterable,
    )


def resource_spec_from_wire(r: cpb.Resource) -> m.ResourceSpec:
    """The owner-written part of a resource message; output-only fields are ignored."""
    out: list[FieldViolation] = []
    spec = m.ResourceSpec(
        code=r.code.strip(),
        name=r.name.strip(),
        department_code=r.department_code.strip(),
        data_items=tuple(_item_from_wire(i, f"resource.data_items[{n}]", out) for n, i in enumerate(r.data_items)),
        share_type=SHARE_TYPE.checked(r.share_type, "resource.share_type", out),
        share_method=SHARE_METHOD.checked(r.share_method, "resource.share_method", out),
        update_cycle=UPDATE_CYCLE.checked(r.update_cycle, "resource.update_cycle", out),
        summary=r.summary.strip(),
        classification=r.classification.strip(),
        format=r.format.strip(),
        share_conditions=r.share_conditions.strip(),
        legal_basis=r.legal_basis.strip(),
        open_to_public=r.open_to_public,
        open_conditions=r.open_conditions.strip(),
        related_resource_codes=tuple(c.strip() for c in r.related_resource_codes),
    )
    raise_if(out)
    return spec


def version_to_wire(v: m.ResourceVersion) -> cpb.ResourceVersion:
    return cpb.ResourceVersion(
        version=v.version,
        change=CHANGE.wire(v.change),
        actor=principal_ref_to_wire(v.actor),
        reason=v.reason,
        change_time=timestamp(v.changed_at),
        resource=resource_to_wire(v.resource),
    )


# Rights

REQUEST_STATUS = EnumMap(m.ShareRequestStatus, apb.ShareRequestStatus, "SHARE_REQUEST_STATUS_")
GRANT_STATUS = EnumMap(m.GrantStatus, apb.GrantStatus, "GRANT_STATUS_")
MASK = EnumMap(m.MaskKind, apb.MaskKind, "MASK_KIND_")


def date_to_wire(value: dt.date | None) -> date_pb2.Date | None:
    return None if value is None else date_pb2.Date(year=value.year, month=value.month, day=value.day)


def date_from_wire(value: date_pb2.Date, path: str, out: list[FieldViolation], *, required: bool) -> dt.date | None:
    if value.year == 0 and value.month == 0 and value.day == 0:
        if required:
            out.append(FieldViolation(path, "is required"))
        return None
    try:
        return dt.date(value.year, value.month, value.day)
    except ValueError:
        out.append(FieldViolation(path, f"{value.year:04d}-{value.month:02d}-{value.day:02d} is not a date"))
        return None


def masks_to_wire(masks: tuple[tuple[str, m.MaskKind], ...]) -> list[apb.FieldMask]:
    return [apb.FieldMask(field=f, mask=MASK.wire(k)) for f, k in masks]


def masks_from_wire(masks: Iterable[apb.FieldMask], out: list[FieldViolation]) -> tuple[tuple[str, m.MaskKind], ...]:
    return tuple((x.field.strip(), MASK.checked(x.mask, f"masks[{i}].mask", out)) for i, x in enumerate(masks))


def _events_to_wire(events: tuple[m.ShareEvent, ...]) -> list[apb.ShareEvent]:
    return [
        apb.ShareEvent(action=e.action, actor=principal_ref_to_wire(e.actor), time=timestamp(e.at), reason=e.reason)
        for e in events
    ]


def application_from_wire(r: apb.ShareRequest) -> m.Application:
    out: list[FieldViolation] = []
    start = date_from_wire(r.start_date, "request.start_date", out, required=True)
    end = date_from_wire(r.end_date, "request.end_date", out, required=True)
    raise_if(out)
    assert start is not None and end is not None
    return m.Application(
        resource_code=r.resource_code.strip(),
        consumer_department_code=r.consumer_department_code.strip(),
        system_codes=tuple(c.strip() for c in r.system_codes),
        purpose=r.purpose.strip(),
        legal_basis=r.legal_basis.strip(),
        fields=tuple(f.strip() for f in r.fields),
        start=start,
        end=end,
        expected_daily_calls=r.expected_daily_calls,
    )


def application_to_wire(a: m.Application) -> apb.ShareRequest:
    return apb.ShareRequest(
        resource_code=a.resource_code,
        consumer_department_code=a.consumer_department_code,
        system_codes=list(a.system_codes),
        purpose=a.purpose,
        legal_basis=a.legal_basis,
        fields=list(a.fields),
        start_date=date_to_wire(a.start),
        end_date=date_to_wire(a.end),
        expected_daily_calls=a.expected_daily_calls,
    )


def share_request_to_wire(r: m.ShareRequest, today: dt.date, due_note: str = "") -> apb.ShareRequest:
    """``due_note``: why the due date is not the holiday calendars' word (WorkCalendar.due_note), if it is not."""
    wire = application_to_wire(r.application)
    wire.id = r.id
    wire.status = REQUEST_STATUS.wire(r.status)
    wire.applicant.CopyFrom(principal_ref_to_wire(r.applicant))
    wire.create_time.FromDatetime(r.created_at)
    wire.due_date.CopyFrom(date_to_wire(r.due))
    wire.overdue = r.status is m.ShareRequestStatus.PENDING and r.due < today
    wire.due_date_estimated = bool(due_note)
    wire.due_date_note = due_note
    wire.approved_fields.extend(r.approved_fields)
    if r.approved_end:
        wire.approved_end_date.CopyFrom(date_to_wire(r.approved_end))
    wire.masks.extend(masks_to_wire(r.masks))
    wire.decision_reason = r.decision_reason
    wire.grant_id = r.grant_id
    wire.history.extend(_events_to_wire(r.history))
    wire.verify_masked.extend(r.verify_masked)
    if r.cross_hub is not None:
        link = r.cross_hub
        wire.cross_hub.CopyFrom(
            apb.CrossHubLink(
                home_hub_code=link.home_hub,
                home_request_id=link.home_request_id,
                consumer_hub_code=link.consumer_hub,
                consumer_request_id=link.consumer_request_id,
                submission=link.submission,
                problem=link.problem,
                daily_quota=link.daily_quota,
                grant_reason=link.grant_reason,
                grant_expired=m.home_grant_expired(r, today),
                dispute=link.dispute,
                dispute_problem=link.dispute_problem,
            )
        )
        if link.grant_status is not None:
            wire.cross_hub.grant_status = GRANT_STATUS.wire(link.grant_status)
        if link.grant_changed_at is not None:
            wire.cross_hub.grant_change_time.FromDatetime(link.grant_changed_at)
    return wire


def grant_to_wire(g: m.Grant) -> apb.Grant:
    return apb.Grant(
        id=g.id,
        request_id=g.request_id,
        resource_code=g.resource_code,
        consumer_department_code=g.consumer_department_code,
        system_codes=list(g.system_codes),
        fields=list(g.fields),
        purpose=g.purpose,
        legal_basis=g.legal_basis,
        start_date=date_to_wire(g.start),
        end_date=date_to_wire(g.end),
        daily_quota=g.daily_quota,
        rate_per_second=g.rate_per_second,
        masks=masks_to_wire(g.masks),
        status=GRANT_STATUS.wire(g.status),
        issue_time=timestamp(g.issued_at),
        history=_events_to_wire(g.history),
        verify_masked=list(g.verify_masked),
        consumer_hub_code=g.consumer_hub,
        usage=usage_to_wire(g.usage) if g.usage is not None else None,
    )


def usage_to_wire(u: m.GrantUsage) -> apb.GrantUsage:
    return apb.GrantUsage(
        day=date_to_wire(u.day),
        calls=u.calls,
        verifications=u.verifications,
        misses=u.misses,
        refused=u.refused,
        miss_allowance=u.miss_allowance,
    )


_BACKENDS = {
    "sql": m.BackendKind.SQL,
    "grpc": m.BackendKind.GRPC,
    "http": m.BackendKind.HTTP,
    "files": m.BackendKind.FILES,
}


def binding_to_wire(b: m.Binding) -> cpb.Binding:
    wire = cpb.Binding(
        resource_code=b.resource_code, timeout_seconds=b.timeout_seconds, max_rows=b.max_rows, version=b.version
    )
    getattr(wire, b.kind.value).CopyFrom(_backend_message(b))
    return wire


def _backend_message(b: m.Binding) -> cpb.SqlBackend | cpb.GrpcBackend | cpb.HttpBackend | cpb.FileBackend:
    message_type = {
        m.BackendKind.SQL: cpb.SqlBackend,
        m.BackendKind.GRPC: cpb.GrpcBackend,
        m.BackendKind.HTTP: cpb.HttpBackend,
        m.BackendKind.FILES: cpb.FileBackend,
    }[b.kind]
    message: cpb.SqlBackend | cpb.GrpcBackend | cpb.HttpBackend | cpb.FileBackend = message_type()
    for key, value in b.options.items():
        if isinstance(value, dict):
            getattr(message, key).update(value)
        else:
            setattr(message, key, value)
    return message


def binding_from_wire(b: cpb.Binding) -> m.Binding:
    """A binding message as options of its backend; output-only fields are ignored."""
    out: list[FieldViolation] = []
    which = b.WhichOneof("backend")
    if which is None:
        out.append(FieldViolation("binding.backend", "name one backend: sql, grpc, http or files"))
    if not 0 <= b.timeout_seconds <= 600:
        out.append(FieldViolation("binding.timeout_seconds", "must be between 0 and 600 (0: the hub's default)"))
    if not 0 <= b.max_rows <= 100_000:
        out.append(FieldViolation("binding.max_rows", "must be between 0 and 100000 (0: 1000)"))
    raise_if(out)
    assert which is not None
    backend = getattr(b, which)
    options: dict[str, object] = {}
    for descriptor, value in backend.ListFields():
        options[descriptor.name] = dict(value) if descriptor.message_type is not None else value
    return m.Binding(b.resource_code.strip(), _BACKENDS[which], options, b.timeout_seconds, b.max_rows)
