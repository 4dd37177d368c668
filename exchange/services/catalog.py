"""Publishing and finding catalog entries (政务信息资源目录).

State machine of an entry: draft -> published <-> suspended, and any state
but retired -> retired (final). Every change names its actor and reason and
becomes a new version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from exchange import validation
from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from exchange.models import (
    BackendKind,
    Binding,
    Page,
    Principal,
    Resource,
    ResourceChange,
    ResourceSpec,
    ResourceStatus,
    ResourceVersion,
)
from exchange.paging import PageRequest, page_request
from exchange.services.auditing import change_record
from exchange.store import Store
from exchange.store.catalog import ResourceFilter, Transition
from policy import Action, RightsPolicy, visible_department

# Which states each status change may start from.
_ALLOWED_FROM = {
    ResourceChange.PUBLISHED: {ResourceStatus.DRAFT, ResourceStatus.SUSPENDED},
    ResourceChange.SUSPENDED: {ResourceStatus.PUBLISHED},
    ResourceChange.RETIRED: {ResourceStatus.DRAFT, ResourceStatus.PUBLISHED, ResourceStatus.SUSPENDED},
}
_TARGET = {
    ResourceChange.PUBLISHED: ResourceStatus.PUBLISHED,
    ResourceChange.SUSPENDED: ResourceStatus.SUSPENDED,
    ResourceChange.RETIRED: ResourceStatus.RETIRED,
}
_LISTED_BY_DEFAULT = (ResourceStatus.DRAFT, ResourceStatus.PUBLISHED, ResourceStatus.SUSPENDED)


def _no_check(binding: Binding, department_code: str) -> list[FieldViolation]:
    return []


class CatalogService:
    def __init__(
        self,
        store: Store,
        policy: RightsPolicy,
        check_binding: Callable[[Binding, str], list[FieldViolation]] = _no_check,
    ) -> None:
        self._store = store
        self._policy = policy
        self._check_binding = check_binding

    # Bindings: where the hub fetches an entry's data from (the owner's business)

    def set_binding(self, actor: Principal, binding: Binding, reason: str) -> Binding:
        self.require_writer(actor, "bind catalog entries")
        validation.validate_key("binding.resource_code", binding.resource_code, "resource")
        validation.validate_free_text("reason", reason)

        def may_bind(current: Resource) -> None:
            self._require_visible(actor, current)
            self._policy.require(actor, Action.WRITE_CATALOG, current.spec.department_code, "bind this entry")
            if current.status is ResourceStatus.RETIRED:
                raise FailedPrecondition(f"resource {current.spec.code!r} is retired", current.spec.code)
            department = current.spec.department_code
            validation.raise_if(
                [*self._check_binding(binding, department), *self._provider_problems(binding, department)]
            )

        code = binding.resource_code
        record = change_record(
            actor, "catalog", f"bind:{binding.kind.value}", subject=code, resource=code, reason=reason
        )
        return redacted(self._store.catalog.set_binding(binding, actor.ref, may_bind, audit=record))

    def _provider_problems(self, binding: Binding, department: str) -> list[FieldViolation]:
        """A gRPC provider must be a registered system of the owning department: no one answers for another."""
        code = binding.options.get("system_code")
        if binding.kind is not BackendKind.GRPC or not isinstance(code, str) or not code:
            return []
        try:
            system = self._store.registry.get_system(code)
        except NotFound:
            return [FieldViolation("binding.system_code", f"no system {code[:40]!r} is registered")]
        if system.department_code != department:
            return [FieldViolation("binding.system_code", "names a system of another department")]
        return []

    def get_binding(self, actor: Principal, code: str) -> Binding:
        self.require_writer(actor, "read catalog entries' bindings")
        validation.validate_key("resource_code", code, "resource")
        current = self._store.catalog.get(code)
        self._require_visible(actor, current)
        self._policy.require(actor, Action.WRITE_CATALOG, current.spec.department_code, "read this entry's binding")
        return redacted(self._store.catalog.get_binding(code))

    def create(self, actor: Principal, spec: ResourceSpec, publish: bool, reason: str) -> Resource:
        self.require_writer(actor, "create catalog entries")
        validation.validate_resource_spec(spec)
        validation.validate_free_text("reason", reason)
        self._policy.require(actor, Action.WRITE_CATALOG, spec.department_code, "create catalog entries")
        status = ResourceStatus.PUBLISHED if publish else ResourceStatus.DRAFT
        record = change_record(
            actor, "catalog", f"create:{status.value}", subject=spec.code, resource=spec.code, reason=reason
        )
        return self._store.catalog.create(spec, status, actor.ref, reason, audit=record)

    def update(self, actor: Principal, spec: ResourceSpec, expected_version: int, reason: str) -> Resource:
        self.require_writer(actor, "update catalog entries")
        validation.validate_resource_spec(spec)
        validation.validate_free_text("reason", reason)

        def decide(current: Resource) -> Transition:
            self._require_visible(actor, current)
            self._policy.require(actor, Action.WRITE_CATALOG, current.spec.department_code, "update this entry")
            if spec.department_code != current.spec.department_code:
                raise InvalidArgument.of(
                    [FieldViolation("resource.department_code", "an entry cannot move to another department")]
                )
            if current.status is ResourceStatus.RETIRED:
                raise FailedPrecondition(f"resource {spec.code!r} is retired and cannot change", spec.code)
            return Transition(spec, current.status, ResourceChange.UPDATED)

        record = change_record(actor, "catalog", "update", subject=spec.code, resource=spec.code, reason=reason)
        return self._store.catalog.change(spec.code, expected_version, actor.ref, reason, decide, audit=record)

    def change_status(
        self, actor: Principal, code: str, change: ResourceChange, expected_version: int, reason: str
    ) -> Resource:
        self.require_writer(actor, f"mark catalog entries {change.value}")
        validation.validate_key("code", code, "resource")
        validation.validate_free_text("reason", reason)
        if change is not ResourceChange.PUBLISHED and not reason.strip():
            raise InvalidArgument.of([FieldViolation("reason", f"is required to mark an entry {change.value}")])

        def decide(current: Resource) -> Transition:
            self._require_visible(actor, current)
            self._policy.require(
                actor, Action.WRITE_CATALOG, current.spec.department_code, f"mark this entry {change.value}"
            )
            if current.status not in _ALLOWED_FROM[change]:
                raise FailedPrecondition(
                    f"resource {code!r} is {current.status.value}; it cannot become {_TARGET[change].value}",
                    code,
                )
            return Transition(current.spec, _TARGET[change], change)

        record = change_record(actor, "catalog", change.value, subject=code, resource=code, reason=reason)
        return self._store.catalog.change(code, expected_version, actor.ref, reason, decide, audit=record)

    def get(self, actor: Principal, code: str, version: int) -> Resource:
        validation.validate_key("code", code, "resource")
        if version < 0:
            raise InvalidArgument.of([FieldViolation("version", "must be 0 (current) or a positive version")])
        current = self._store.catalog.get(code)
        self._require_visible(actor, current)
        return current if version in (0, current.version) else self._store.catalog.get(code, version)

    def list(
        self,
        actor: Principal,
        size: int,
        token: str,
        query: ResourceFilter,
        status: ResourceStatus | None,
    ) -> Page[Resource]:
        self.check_query(query)
        return self.list_page(actor, page_request(size, token, {**query.__dict__, "status": status}), query, status)

    @staticmethod
    def check_query(query: ResourceFilter) -> None:
        """A search's filters, checked before anything is looked up."""
        validation.validate_key("department_code", query.department_code or "", "department", optional=True)
        validation.validate_free_text("text", query.text, limit=validation.MAX_NAME)
        validation.validate_free_text("field_name", query.field_name, limit=validation.MAX_NAME)

    def list_page(
        self, actor: Principal, page: PageRequest, query: ResourceFilter, status: ResourceStatus | None
    ) -> Page[Resource]:
        """One page of the entries ``query`` finds, its request already checked (the federated catalog's part)."""
        statuses = (status,) if status else _LISTED_BY_DEFAULT
        return self._store.catalog.list(
            page, replace(query, statuses=statuses, viewer_department=visible_department(actor))
        )

    def versions(self, actor: Principal, code: str, size: int, token: str) -> Page[ResourceVersion]:
        validation.validate_key("code", code, "resource")
        self._require_visible(actor, self._store.catalog.get(code))
        return self._store.catalog.versions(code, page_request(size, token, {"code": code}))

    def require_writer(self, actor: Principal, doing: str) -> None:
        """Refuses, before its request is checked or any entry looked up, a caller who may write no department's
        entries (the handlers ask this before they translate a request)."""
        self._policy.require_somewhere(actor, Action.WRITE_CATALOG, doing)

    @staticmethod
    def _require_visible(actor: Principal, resource: Resource) -> None:
        """Drafts are the owner's business: to anyone else they do not exist."""
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != visible_department(actor):
            raise NotFound("resource", resource.spec.code)


def redacted(binding: Binding) -> Binding:
    """The binding with any password in its URL replaced, so reading a binding never shows one."""
    url = binding.options.get("url")
    if not isinstance(url, str):
        return binding
    parts = urlsplit(url)
    if parts.password is None:
        return binding
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return replace(binding, options={**binding.options, "url": urlunsplit(parts._replace(netloc=netloc))})
