"""Catalog store: resource entries, their data items and their version history.

The current state of an entry lives in ``resources`` (with its items and
relations, so it can be searched); every change also appends the whole new
state to ``resource_versions``, which is never rewritten.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.errors import Aborted, AlreadyExists, NotFound
from exchange.models import (
    BackendKind,
    Binding,
    DataItem,
    FieldType,
    Page,
    PrincipalKind,
    PrincipalRef,
    Resource,
    ResourceChange,
    ResourceSpec,
    ResourceStatus,
    ResourceVersion,
    SensitivityGrade,
    ShareMethod,
    ShareType,
    UpdateCycle,
    binding_is_subscribable,
)
from exchange.paging import PageRequest
from exchange.store.changes import announce, resource_changed
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.recorded import RecordedWrites
from exchange.store.registry import department_row
from exchange.store.schema import (
    BindingRow,
    CatalogOfferRow,
    DataItemRow,
    DepartmentRow,
    RelatedResourceRow,
    ResourceRow,
    ResourceVersionRow,
)


@dataclass(frozen=True)
class Transition:
    """What a change makes of an entry: its new content and status, and how the change is named."""

    spec: ResourceSpec
    status: ResourceStatus
    change: ResourceChange


@dataclass(frozen=True)
class ResourceFilter:
    department_code: str | None = None
    share_type: ShareType | None = None
    statuses: tuple[ResourceStatus, ...] = ()
    text: str = ""
    field_name: str = ""
    # Only entries whose binding declares a change source.
    subscribable: bool = False
    # Drafts are visible to their own department only.
    viewer_department: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _resource_of(row: ResourceRow) -> Resource:
    spec = ResourceSpec(
        code=row.code,
        name=row.name,
        department_code=row.department.code,
        data_items=tuple(
            DataItem(
                name=i.name,
                title=i.title,
                type=FieldType(i.type),
                description=i.description,
                sensitivity=SensitivityGrade(i.sensitivity),
                personal_information=i.personal_information,
                filterable=i.filterable,
            )
            for i in row.items
        ),
        share_type=ShareType(row.share_type),
        share_method=ShareMethod(row.share_method),
        update_cycle=UpdateCycle(row.update_cycle),
        summary=row.summary,
        classification=row.classification,
        format=row.format,
        share_conditions=row.share_conditions,
        legal_basis=row.legal_basis,
        open_to_public=row.open_to_public,
        open_conditions=row.open_conditions,
        related_resource_codes=tuple(r.related_code for r in row.related),
    )
    binding = row.binding
    subscribable = binding is not None and binding_is_subscribable(binding.kind, binding.options)
    return Resource(
        spec, ResourceStatus(row.status), row.version, row.created_at, row.updated_at, row.published_at, subscribable
    )


def snapshot(resource: Resource) -> dict[str, Any]:
    """The JSON form of an entry kept in its history."""
    data = asdict(resource)
    data.pop("subscribable")  # the binding's, not the entry's: kept out of the entry's history
    for key in ("created_at", "updated_at", "published_at"):
        data[key] = data[key].isoformat() if data[key] else None
    return data


def from_snapshot(data: dict[str, Any]) -> Resource:
    spec = dict(data["spec"])
    spec["data_items"] = tuple(
        DataItem(**{**i, "type": FieldType(i["type"]), "sensitivity": SensitivityGrade(i["sensitivity"])})
        for i in spec["data_items"]
    )
    spec["related_resource_codes"] = tuple(spec["related_resource_codes"])
    for key, kind in (("share_type", ShareType), ("share_method", ShareMethod), ("update_cycle", UpdateCycle)):
        spec[key] = kind(spec[key])

    def when(key: str) -> dt.datetime | None:
        return dt.datetime.fromisoformat(data[key]) if data.get(key) else None

    created, updated = when("created_at"), when("updated_at")
    assert created is not None and updated is not None
    return Resource(
        ResourceSpec(**spec), ResourceStatus(data["status"]), data["version"], created, updated, when("published_at")
    )


def _write_spec(s: Session, row: ResourceRow, spec: ResourceSpec) -> None:
    """Copies an owner's spec onto the row, checking the references it makes."""
    clash = select(ResourceRow.id).where(
        ResourceRow.department_id == row.department_id, ResourceRow.name == spec.name, ResourceRow.code != spec.code
    )
    if s.scalar(clash) is not None:
        raise AlreadyExists("resource name", spec.name, "the department has another entry of that name")
    for code in spec.related_resource_codes:
        related = s.scalar(select(ResourceRow).where(ResourceRow.code == code))
        hidden = (
            related is not None
            and related.status == ResourceStatus.DRAFT.value
            and related.department_id != row.department_id
        )
        if related is None or hidden:  # another department's draft is not there for this one
            raise NotFound("related resource", code)
    for key in (
        "name",
        "summary",
        "classification",
        "format",
        "share_conditions",
        "legal_basis",
        "open_to_public",
        "open_conditions",
    ):
        setattr(row, key, getattr(spec, key))
    row.share_type = spec.share_type.value
    row.share_method = spec.share_method.value
    row.update_cycle = spec.update_cycle.value
    row.items = [
        DataItemRow(
            position=n,
            name=i.name,
            title=i.title,
            type=i.type.value,
            description=i.description,
            sensitivity=i.sensitivity.value,
            personal_information=i.personal_information,
            filterable=i.filterable,
        )
        for n, i in enumerate(spec.data_items)
    ]
    row.related = [RelatedResourceRow(position=n, related_code=c) for n, c in enumerate(spec.related_resource_codes)]


# The key of the PostgreSQL advisory lock under which offers are numbered (see lock_offers).
_OFFERS_LOCK = 0x0FFE25


def lock_offers(s: Session) -> None:
    """Numbers this transaction's offers after every earlier one has committed: peers read offers after the last
    sequence they stored, so a sequence must never become visible after a higher one. On PostgreSQL a transaction
    lock serialises the writers of offers (catalog changes: few); SQLite serialises every write already."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _OFFERS_LOCK})


def _record_version(s: Session, row: ResourceRow, change: ResourceChange, actor: PrincipalRef, reason: str) -> Resource:
    s.flush()
    s.refresh(row)
    resource = _resource_of(row)
    s.add(
        ResourceVersionRow(
            resource_id=row.id,
            version=row.version,
            change=change.value,
            actor_kind=actor.kind.value,
            actor_code=actor.code,
            reason=reason,
            changed_at=row.updated_at,
            snapshot=snapshot(resource),
        )
    )
    if resource.status is not ResourceStatus.DRAFT:  # offered to peer hubs (federation); "" home: this hub
        lock_offers(s)
        s.add(
            CatalogOfferRow(
                resource_code=row.code,
                home_hub_code="",
                home_hub_name="",
                home_level="",
                department_name=row.department.name,
                via_peer="",
                snapshot=snapshot(resource),
                offered_at=row.updated_at,
            )
        )
    return resource


class CatalogStore:
    """Reads and writes catalog entries; every method is one transaction."""

    def __init__(self, db: Database, recorded: RecordedWrites) -> None:
        self._db = db
        self._recorded = recorded

    def create(
        self, spec: ResourceSpec, status: ResourceStatus, actor: PrincipalRef, reason: str, *, audit: AuditRecord
    ) -> Resource:
        with self._recorded.write(audit) as s:
            if s.scalar(select(ResourceRow.id).where(ResourceRow.code == spec.code)) is not None:
                raise AlreadyExists("resource", spec.code)
            now = _now()
            row = ResourceRow(
                code=spec.code,
                department_id=department_row(s, spec.department_code).id,
                status=status.value,
                version=1,
                created_at=now,
                updated_at=now,
                published_at=now if status is ResourceStatus.PUBLISHED else None,
            )
            _write_spec(s, row, spec)
            s.add(row)
            announce(s, resource_changed(spec.code))
            return _record_version(s, row, ResourceChange.CREATED, actor, reason)

    def change(
        self,
        code: str,
        expected_version: int,
        actor: PrincipalRef,
        reason: str,
        decide: Callable[[Resource], Transition],
        *,
        audit: AuditRecord,
    ) -> Resource:
        """Applies ``decide`` to the current entry under a row lock, and records the new version.

        ``decide`` checks rights and state and raises to refuse; nothing is written then.
        """
        with self._recorded.write(audit) as s:
            row = s.scalar(select(ResourceRow).where(ResourceRow.code == code).with_for_update(of=ResourceRow))
            if row is None:
                raise NotFound("resource", code)
            current = _resource_of(row)
            if expected_version and expected_version != current.version:
                raise Aborted(
                    f"resource {code!r} is at version {current.version}, not {expected_version}; read it again"
                )
            step = decide(current)
            if step.change is ResourceChange.UPDATED:
                _write_spec(s, row, step.spec)
            row.status = step.status.value
            row.version = current.version + 1
            row.updated_at = _now()
            if step.status is ResourceStatus.PUBLISHED and row.published_at is None:
                row.published_at = row.updated_at
            announce(s, resource_changed(code))
            return _record_version(s, row, step.change, actor, reason)

    def get(self, code: str, version: int = 0) -> Resource:
        with self._db.read() as s:
            row = s.scalar(select(ResourceRow).where(ResourceRow.code == code))
            if row is None:
                raise NotFound("resource", code)
            if not version or version == row.version:
                return _resource_of(row)
            past = s.get(ResourceVersionRow, (row.id, version))
            if past is None:
                raise NotFound("resource version", f"{code}@{version}")
            return from_snapshot(past.snapshot)

    def list(self, page: PageRequest, f: ResourceFilter) -> Page[Resource]:
        with self._db.read() as s:
            stmt = select(ResourceRow)
            if f.department_code:
                stmt = stmt.where(ResourceRow.department_id == department_row(s, f.department_code).id)
            if f.share_type is not None:
                stmt = stmt.where(ResourceRow.share_type == f.share_type.value)
            if f.statuses:
                stmt = stmt.where(ResourceRow.status.in_([x.value for x in f.statuses]))
            viewer = department_row(s, f.viewer_department).id if f.viewer_department else None
            stmt = stmt.where(
                or_(ResourceRow.status != ResourceStatus.DRAFT.value, ResourceRow.department_id == viewer)
            )
            if f.text:
                pattern = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                stmt = stmt.where(
                    or_(
                        *(
                            c.ilike(pattern, escape="\\")
                            for c in (
                                ResourceRow.code,
                                ResourceRow.name,
                                ResourceRow.summary,
                                ResourceRow.classification,
                            )
                        ),
                        ResourceRow.department_id.in_(
                            select(DepartmentRow.id).where(DepartmentRow.name.ilike(pattern, escape="\\"))
                        ),
                    )
                )
            if f.field_name:
                stmt = stmt.where(
                    ResourceRow.items.any(or_(DataItemRow.name == f.field_name, DataItemRow.title == f.field_name))
                )
            if f.subscribable:
                stmt = stmt.where(ResourceRow.id.in_(_subscribable_ids(s)))
            return fetch_page(s, stmt, ResourceRow.code, page, convert=_resource_of)

    def set_binding(
        self, binding: Binding, actor: PrincipalRef, may_bind: Callable[[Resource], None], *, audit: AuditRecord
    ) -> Binding:
        """Replaces the resource's binding; ``may_bind`` sees the entry and raises to refuse."""
        with self._recorded.write(audit) as s:
            row = s.scalar(
                select(ResourceRow).where(ResourceRow.code == binding.resource_code).with_for_update(of=ResourceRow)
            )
            if row is None:
                raise NotFound("resource", binding.resource_code)
            may_bind(_resource_of(row))
            current = s.get(BindingRow, row.id)
            if current is None:
                current = BindingRow(resource_id=row.id, version=0)
                s.add(current)
            current.kind = binding.kind.value
            current.options = binding.options
            current.timeout_seconds = binding.timeout_seconds
            current.max_rows = binding.max_rows
            current.version += 1
            current.updated_at = _now()
            current.updated_by = str(actor)
            s.flush()
            announce(s, resource_changed(binding.resource_code))
            return _binding_of(binding.resource_code, current)

    def get_binding(self, code: str) -> Binding:
        with self._db.read() as s:
            found = s.execute(
                select(BindingRow)
                .join(ResourceRow, ResourceRow.id == BindingRow.resource_id)
                .where(ResourceRow.code == code)
            ).scalar()
            if found is None:
                raise NotFound("binding", code)
            return _binding_of(code, found)

    def with_binding(self, code: str) -> tuple[Resource, Binding | None]:
        """The current entry and its binding, read together (the data plane's one catalog read)."""
        with self._db.read() as s:
            row = s.scalar(select(ResourceRow).where(ResourceRow.code == code))
            if row is None:
                raise NotFound("resource", code)
            found = s.get(BindingRow, row.id)
            return _resource_of(row), (_binding_of(code, found) if found is not None else None)

    def versions(self, code: str, page: PageRequest) -> Page[ResourceVersion]:
        with self._db.read() as s:
            resource_id = s.scalar(select(ResourceRow.id).where(ResourceRow.code == code))
            if resource_id is None:
                raise NotFound("resource", code)
            stmt = select(ResourceVersionRow).where(ResourceVersionRow.resource_id == resource_id)
            return fetch_page(s, stmt, ResourceVersionRow.version, page, convert=_version_of, parse=int)


def _subscribable_ids(s: Session) -> list[int]:
    """The resources whose binding declares a change source (options are judged here, as every dialect can)."""
    return [b.resource_id for b in s.scalars(select(BindingRow)) if binding_is_subscribable(b.kind, b.options)]


def _binding_of(code: str, row: BindingRow) -> Binding:
    return Binding(code, BackendKind(row.kind), dict(row.options), row.timeout_seconds, row.max_rows, row.version)


def _version_of(row: ResourceVersionRow) -> ResourceVersion:
    return ResourceVersion(
        version=row.version,
        change=ResourceChange(row.change),
        actor=PrincipalRef(PrincipalKind(row.actor_kind), row.actor_code),
        reason=row.reason,
        changed_at=row.changed_at,
        resource=from_snapshot(row.snapshot),
    )
