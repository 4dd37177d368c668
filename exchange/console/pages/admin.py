"""The operator's pages: departments, systems, people and certificates, and the hub's health.

Every page needs the right to register members (refused and recorded otherwise, under the name of the
gRPC call it stands for). A refused form comes back with what was typed, except an identity number,
which is never sent back to the browser.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.models import (
    AdministrativeLevel,
    CertificateRecord,
    Department,
    Person,
    Principal,
    PrincipalKind,
    PrincipalRef,
    Role,
    System,
)
from exchange.validation import raise_if
from policy import Action

E = TypeVar("E", bound=StrEnum)
REGISTRY = "RegistryServicer."
# Fields of a refused form never shown again: an identity number stays with whoever typed it.
NEVER_ECHOED = frozenset({"id_number"})
_STATUS: tuple[tuple[type[errors.ExchangeError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.ResourceExhausted, 429),
)


def refused_status(error: errors.ExchangeError) -> int:
    """The HTTP status of a refused form: 400, 403, 404, 429, else 409 (a conflict with the hub's state)."""
    return next((code for kind, code in _STATUS if isinstance(error, kind)), 409)


def choice(kind: type[E], value: str, path: str, out: list[errors.FieldViolation], *, required: bool = True) -> E:
    """The member of ``kind`` named ``value`` (a violation at ``path`` if none is; the first member stands in)."""
    members = {m.value: m for m in kind}
    if value in members:
        return members[value]
    if value or required:
        what = "is required" if not value else f"{value[:40]!r} is not a known value"
        out.append(errors.FieldViolation(path, f"{what}; one of {', '.join(members)}"))
    return next(iter(kind))


async def _operator(request: Request, where: str, doing: str) -> tuple[Console, Viewer]:
    """The console and the signed-in person, who must be an operator (refused and recorded as ``where``:
    the gRPC call the page stands for, or ``Console.<page>`` for a page no call stands for)."""
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.REGISTER_MEMBERS, where, doing)
    return console, viewer


def _refusal(console: Console, request: Request, form: Form | None, error: errors.ExchangeError) -> dict[str, Any]:
    """What a page shows of a refused form: the reason, its fields, and the values typed."""
    typed = {k: v for k, v in form.values().items() if k not in NEVER_ECHOED} if form else {}
    return {
        "error": console.error_text(request, error),
        "violations": getattr(error, "violations", []),
        "values": typed,
        "status_code": refused_status(error),
    }


def _fresh() -> dict[str, Any]:
    return {"error": "", "violations": [], "values": {}, "status_code": 200}


async def _departments(console: Console, viewer: Viewer) -> list[Department]:
    """Departments to choose from in forms (the first thousand, by code)."""
    page = await console.call(
        viewer, REGISTRY + "ListDepartments", console.services.registry.list_departments, 1000, "", "", None
    )
    return page.items


# Overview and health


async def _overview(request: Request) -> Response:
    console, viewer = await _operator(request, "Console.Admin", "administer members")
    return console.render(request, viewer, "admin/overview.html")


async def _health(request: Request) -> Response:
    console, viewer = await _operator(request, "Console.Health", "read the hub's health")
    rows = [_health_row(name, value) for name, value in await console.run(console.services.health)]
    return console.render(request, viewer, "admin/health.html", rows=rows)


HEALTH_NAMES = frozenset({"serving", "store", "audit_log_intact", "audit_log_checked_at", "audit_signed_at"})


def _health_row(name: str, value: str) -> dict[str, str]:
    """A health row with the message key of its label ("" when the hub names something the console does not know)."""
    subject = ""
    key = f"admin.health.row.{name}" if name in HEALTH_NAMES else ""
    if name.startswith("certificate_expires:"):
        key, subject = "admin.health.row.certificate_expires", name.partition(":")[2]
    tone = {"yes": "ok", "no": "bad"}.get(value, "")
    return {"name": name, "key": key, "subject": subject, "value": value, "tone": tone}


# Departments


def _department_of(form: Form) -> Department:
    out: list[errors.FieldViolation] = []
    level = choice(AdministrativeLevel, form.get("level"), "department.level", out)
    raise_if(out)
    parent = form.get("parent_code") or None
    return Department(form.get("code"), form.get("name"), form.get("division_code"), level, parent)


async def _department_page(request: Request, console: Console, viewer: Viewer, shown: dict[str, Any]) -> Response:
    token = request.query_params.get("page", "")
    registry = console.services.registry
    page = await console.call(
        viewer, REGISTRY + "ListDepartments", registry.list_departments, console.page_size, token, "", None
    )
    status = shown.pop("status_code")
    return console.render(
        request,
        viewer,
        "admin/departments.html",
        status,
        page=page,
        levels=[lv.value for lv in AdministrativeLevel],
        **shown,
    )


async def _list_departments(request: Request) -> Response:
    console, viewer = await _operator(request, REGISTRY + "ListDepartments", "administer departments")
    return await _department_page(request, console, viewer, _fresh())


async def _create_department(request: Request) -> Response:
    where = REGISTRY + "CreateDepartment"
    console, viewer = await _operator(request, REGISTRY + "CreateDepartment", "register departments")
    form = await console.form(request, viewer, where)
    registry = console.services.registry
    try:
        await console.call(viewer, where, lambda actor: registry.create_department(actor, _department_of(form)))
    except errors.ExchangeError as e:
        return await _department_page(request, console, viewer, _refusal(console, request, form, e))
    return see_other("/admin/departments", "admin.department_created")


# Systems


def _system_of(form: Form) -> System:
    return System(form.get("code"), form.get("name"), form.get("department_code"), form.get("description"))


async def _system_page(request: Request, console: Console, viewer: Viewer, shown: dict[str, Any]) -> Response:
    token = request.query_params.get("page", "")
    department = request.query_params.get("department", "")
    registry = console.services.registry
    page = await console.call(
        viewer, REGISTRY + "ListSystems", registry.list_systems, console.page_size, token, department
    )
    status = shown.pop("status_code")
    departments = await _departments(console, viewer)
    return console.render(
        request,
        viewer,
        "admin/systems.html",
        status,
        page=page,
        department=department,
        departments=departments,
        **shown,
    )


async def _list_systems(request: Request) -> Response:
    console, viewer = await _operator(request, REGISTRY + "ListSystems", "administer systems")
    return await _system_page(request, console, viewer, _fresh())


async def _create_system(request: Request) -> Response:
    where = REGISTRY + "CreateSystem"
    console, viewer = await _operator(request, REGISTRY + "CreateSystem", "register systems")
    form = await console.form(request, viewer, where)
    registry = console.services.registry
    try:
        await console.call(viewer, where, lambda actor: registry.create_system(actor, _system_of(form)))
    except errors.ExchangeError as e:
        return await _system_page(request, console, viewer, _refusal(console, request, form, e))
    return see_other("/admin/systems", "admin.system_created")


# People


def _person_of(form: Form) -> Person:
    out: list[errors.FieldViolation] = []
    roles = frozenset(choice(Role, r, f"person.roles[{i}]", out) for i, r in enumerate(form.getlist("roles")))
    raise_if(out)
    return Person(form.get("username"), form.get("display_name"), form.get("department_code"), roles)


async def _people_page(request: Request, console: Console, viewer: Viewer, shown: dict[str, Any]) -> Response:
    token = request.query_params.get("page", "")
    department = request.query_params.get("department", "")
    registry = console.services.registry
    page = await console.call(
        viewer, REGISTRY + "ListPeople", registry.list_people, console.page_size, token, department, None
    )
    status = shown.pop("status_code")
    typed, failed = shown.pop("values"), shown.pop("failed", "")
    shown["role_values"] = typed if failed == "role" else {}
    shown["values"] = typed if failed == "create" else {}
    shown["chosen_roles"] = [r for r in typed.get("_roles", "").split(",") if r]
    return console.render(
        request,
        viewer,
        "admin/people.html",
        status,
        page=page,
        department=department,
        departments=await _departments(console, viewer),
        roles=[r.value for r in Role],
        **shown,
    )


async def _list_people(request: Request) -> Response:
    console, viewer = await _operator(request, REGISTRY + "ListPeople", "administer people")
    return await _people_page(request, console, viewer, _fresh())


async def _create_person(request: Request) -> Response:
    where = REGISTRY + "CreatePerson"
    console, viewer = await _operator(request, REGISTRY + "CreatePerson", "register people")
    form = await console.form(request, viewer, where)
    registry = console.services.registry

    def create(actor: Principal) -> Person:
        return registry.create_person(actor, _person_of(form), form.get("id_number"))

    try:
        await console.call(viewer, where, create)
    except errors.ExchangeError as e:
        shown = _refusal(console, request, form, e)
        shown["values"]["_roles"] = ",".join(form.getlist("roles"))
        shown["failed"] = "create"
        return await _people_page(request, console, viewer, shown)
    return see_other("/admin/people", "admin.person_created")


async def _change_role(request: Request) -> Response:
    console, viewer = await _operator(request, REGISTRY + "AssignRole", "assign roles")
    form = await console.form(request, viewer, REGISTRY + "AssignRole")
    add = form.get("change") != "unassign"
    where = REGISTRY + ("AssignRole" if add else "UnassignRole")
    registry = console.services.registry

    def change(actor: Principal) -> Person:
        out: list[errors.FieldViolation] = []
        role = choice(Role, form.get("role"), "role", out)
        raise_if(out)
        return registry.change_role(actor, form.get("username"), role, add, form.get("reason"))

    try:
        await console.call(viewer, where, change)
    except errors.ExchangeError as e:
        return await _people_page(request, console, viewer, {**_refusal(console, request, form, e), "failed": "role"})
    return see_other("/admin/people", "admin.role_assigned" if add else "admin.role_unassigned")


# Certificates


def principal_ref_of(text: str, path: str) -> PrincipalRef:
    """``person/<username>`` or ``system/<code>`` as a reference (InvalidArgument at ``path`` otherwise)."""
    kind, _, code = text.strip().partition("/")
    out: list[errors.FieldViolation] = []
    found = choice(PrincipalKind, kind, f"{path}.kind", out)
    if not code:
        out.append(errors.FieldViolation(f"{path}.code", "is required (write person/<username> or system/<code>)"))
    raise_if(out)
    return PrincipalRef(found, code)


async def _certificate_page(request: Request, console: Console, viewer: Viewer, shown: dict[str, Any]) -> Response:
    token = request.query_params.get("page", "")
    principal = request.query_params.get("principal", "")
    registry = console.services.registry

    def listed(actor: Principal) -> Any:
        ref = principal_ref_of(principal, "principal") if principal else None
        return registry.list_certificates(actor, console.page_size, token, ref)

    page = await console.call(viewer, REGISTRY + "ListCertificates", listed)
    status = shown.pop("status_code")
    return console.render(request, viewer, "admin/certificates.html", status, page=page, principal=principal, **shown)


async def _list_certificates(request: Request) -> Response:
    console, viewer = await _operator(request, REGISTRY + "ListCertificates", "administer certificates")
    return await _certificate_page(request, console, viewer, _fresh())


async def _revoke_certificate(request: Request) -> Response:
    where = REGISTRY + "RevokeCertificate"
    console, viewer = await _operator(request, REGISTRY + "RevokeCertificate", "revoke certificates")
    form = await console.form(request, viewer, where)
    registry = console.services.registry
    fingerprint, reason = form.get("fingerprint").lower(), form.get("reason")
    try:
        await console.call(viewer, where, registry.revoke_certificate, fingerprint, reason)
    except errors.ExchangeError as e:
        return await _certificate_page(request, console, viewer, _refusal(console, request, form, e))
    return see_other("/admin/certificates", "admin.certificate_revoked")


async def _issue_certificate(request: Request) -> Response:
    where = REGISTRY + "IssueCertificate"
    console, viewer = await _operator(request, REGISTRY + "IssueCertificate", "issue certificates")
    form = await console.form(request, viewer, where)
    registry = console.services.registry

    def issue(actor: Principal) -> CertificateRecord:
        ref = principal_ref_of(form.get("principal"), "principal")
        return registry.issue_certificate(actor, ref, form.get("csr_pem"), _days(form.get("validity_days")))

    try:
        record = await console.call(viewer, where, issue)
    except errors.ExchangeError as e:
        return await _certificate_page(request, console, viewer, _refusal(console, request, form, e))
    return console.render(request, viewer, "admin/issued.html", certificate=record, download=_download_url(record))


def _days(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit() or len(text) > 6:
        raise errors.InvalidArgument.of([errors.FieldViolation("validity_days", "must be a whole number of days")])
    return int(text)


def _download_url(record: CertificateRecord) -> str:
    principal = quote(str(record.principal), safe="")
    return f"/admin/certificates/pem?principal={principal}&fingerprint={record.fingerprint_sha256}"


async def _certificate_pem(request: Request) -> Response:
    """A certificate's PEM as a file to save (certificates are public; the key never left its holder)."""
    console, viewer = await _operator(request, REGISTRY + "ListCertificates", "download certificates")
    wanted = request.query_params.get("fingerprint", "").lower()
    registry = console.services.registry

    def find(actor: Principal) -> CertificateRecord:
        ref = principal_ref_of(request.query_params.get("principal", ""), "principal")
        found = registry.list_certificates(actor, 1000, "", ref).items
        match = next((c for c in found if c.fingerprint_sha256 == wanted), None)
        if match is None:
            raise errors.NotFound("certificate", wanted[:64])
        return match

    record = await console.call(viewer, REGISTRY + "ListCertificates", find)
    name = f"{record.principal.code}-{record.fingerprint_sha256[:12]}.pem"
    return Response(
        record.pem,
        media_type="application/x-pem-file",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", _overview, methods=["GET"]),
        Route("/admin/health", _health, methods=["GET"]),
        Route("/admin/departments", _list_departments, methods=["GET"]),
        Route("/admin/departments", _create_department, methods=["POST"]),
        Route("/admin/systems", _list_systems, methods=["GET"]),
        Route("/admin/systems", _create_system, methods=["POST"]),
        Route("/admin/people", _list_people, methods=["GET"]),
        Route("/admin/people", _create_person, methods=["POST"]),
        Route("/admin/people/role", _change_role, methods=["POST"]),
        Route("/admin/certificates", _list_certificates, methods=["GET"]),
        Route("/admin/certificates/revoke", _revoke_certificate, methods=["POST"]),
        Route("/admin/certificates/issue", _issue_certificate, methods=["POST"]),
        Route("/admin/certificates/pem", _certificate_pem, methods=["GET"]),
    ]
