"""The client verbs of the ``exchange`` command: registry, certificates and catalog.

Each verb builds a request, calls the hub with the caller's certificate, and
prints a table (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli import files, tables
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import InvalidArgument
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb

T = TypeVar("T")


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M") if ts.seconds else "-"


def _show(args: argparse.Namespace, message: Message, fields: list[tuple[str, str]]) -> None:
    if args.json:
        print(json_format.MessageToJson(message, ensure_ascii=False))
    else:
        print(tables.render(["field", "value"], fields, max_column=100))


def show_list(args: argparse.Namespace, response: Message, headers: list[str], rows: list[list[str]]) -> None:
    if args.json:
        print(json_format.MessageToJson(response, ensure_ascii=False))
        return
    print(tables.render(headers, rows))
    token = getattr(response, "next_page_token", "")
    if token:
        print(f"(more: add --page-token {token})")


def ask(
    args: argparse.Namespace, settings: Settings, rpc: Callable[[HubClient], Callable[..., T]], request: Message
) -> T:
    """One call to the hub with the caller's identity: ``rpc`` picks the stub method."""
    with HubClient(settings, args.identity) as hub:
        return hub.call(rpc(hub), request)


def _ref(args: argparse.Namespace) -> m.PrincipalRef:
    if args.system:
        return m.PrincipalRef(m.PrincipalKind.SYSTEM, args.system)
    return m.PrincipalRef(m.PrincipalKind.PERSON, args.person)


# Registry


def whoami(args: argparse.Namespace, settings: Settings) -> int:
    me = ask(args, settings, lambda hub: hub.registry.WhoAmI, rpb.WhoAmIRequest())
    roles = ", ".join(w.ROLE.label(r) for r in me.roles) or "-"
    _show(
        args,
        me,
        [
            ("principal", f"{w.KIND.label(me.principal.kind)}/{me.principal.code}"),
            ("name", me.display_name),
            ("department", me.department_code),
            ("roles", roles),
            ("certificate", me.certificate_fingerprint_sha256),
        ],
    )
    return 0


def department_rows(departments: list[rpb.Department]) -> list[list[str]]:
    return [[d.code, d.name, w.LEVEL.label(d.level), d.division_code, d.parent_code or "-"] for d in departments]


DEPARTMENT_HEADERS = ["code", "name", "level", "division", "parent"]


def dept_create(args: argparse.Namespace, settings: Settings) -> int:
    department = m.Department(args.code, args.name, args.division_code, m.AdministrativeLevel(args.level), args.parent)
    created = ask(
        args,
        settings,
        lambda hub: hub.registry.CreateDepartment,
        rpb.CreateDepartmentRequest(department=w.department_to_wire(department)),
    )
    show_list(args, created, DEPARTMENT_HEADERS, department_rows([created]))
    return 0


def dept_get(args: argparse.Namespace, settings: Settings) -> int:
    d = ask(args, settings, lambda hub: hub.registry.GetDepartment, rpb.GetDepartmentRequest(code=args.code))
    show_list(args, d, DEPARTMENT_HEADERS, department_rows([d]))
    return 0


def dept_list(args: argparse.Namespace, settings: Settings) -> int:
    level = w.LEVEL.optional(m.AdministrativeLevel(args.level) if args.level else None)
    request = rpb.ListDepartmentsRequest(
        page_size=args.page_size, page_token=args.page_token, parent_code=args.parent or "", level=level
    )
    response = ask(args, settings, lambda hub: hub.registry.ListDepartments, request)
    show_list(args, response, DEPARTMENT_HEADERS, department_rows(list(response.departments)))
    return 0


SYSTEM_HEADERS = ["code", "name", "department", "created"]


def _system_rows(systems: list[rpb.System]) -> list[list[str]]:
    return [[s.code, s.name, s.department_code, _time(s.create_time)] for s in systems]


def system_create(args: argparse.Namespace, settings: Settings) -> int:
    system = m.System(args.code, args.name, args.department, args.description)
    created = ask(
        args, settings, lambda hub: hub.registry.CreateSystem, rpb.CreateSystemRequest(system=w.system_to_wire(system))
    )
    show_list(args, created, SYSTEM_HEADERS, _system_rows([created]))
    return 0


def system_get(args: argparse.Namespace, settings: Settings) -> int:
    s = ask(args, settings, lambda hub: hub.registry.GetSystem, rpb.GetSystemRequest(code=args.code))
    show_list(args, s, SYSTEM_HEADERS, _system_rows([s]))
    return 0


def system_list(args: argparse.Namespace, settings: Settings) -> int:
    request = rpb.ListSystemsRequest(
        page_size=args.page_size, page_token=args.page_token, department_code=args.department or ""
    )
    response = ask(args, settings, lambda hub: hub.registry.ListSystems, request)
    show_list(args, response, SYSTEM_HEADERS, _system_rows(list(response.systems)))
    return 0


PERSON_HEADERS = ["username", "name", "department", "roles"]


def person_rows(people: list[rpb.Person]) -> list[list[str]]:
    return [
        [p.username, p.display_name, p.department_code, ", ".join(w.ROLE.label(r) for r in p.roles)] for p in people
    ]


def person_create(args: argparse.Namespace, settings: Settings) -> int:
    person = m.Person(args.username, args.name, args.department, frozenset(m.Role(r) for r in args.role))
    created = ask(
        args,
        settings,
        lambda hub: hub.registry.CreatePerson,
        rpb.CreatePersonRequest(person=w.person_to_wire(person), id_number=args.id_number),
    )
    show_list(args, created, PERSON_HEADERS, person_rows([created]))
    return 0


def person_get(args: argparse.Namespace, settings: Settings) -> int:
    p = ask(args, settings, lambda hub: hub.registry.GetPerson, rpb.GetPersonRequest(username=args.username))
    show_list(args, p, PERSON_HEADERS, person_rows([p]))
    return 0


def person_list(args: argparse.Namespace, settings: Settings) -> int:
    role = w.ROLE.optional(m.Role(args.role) if args.role else None)
    request = rpb.ListPeopleRequest(
        page_size=args.page_size, page_token=args.page_token, department_code=args.department or "", role=role
    )
    response = ask(args, settings, lambda hub: hub.registry.ListPeople, request)
    show_list(args, response, PERSON_HEADERS, person_rows(list(response.people)))
    return 0


def person_role(args: argparse.Namespace, settings: Settings) -> int:
    request = rpb.ChangeRoleRequest(username=args.username, role=w.ROLE.wire(m.Role(args.role)), reason=args.reason)
    add = args.verb == "assign-role"
    p = ask(args, settings, lambda hub: hub.registry.AssignRole if add else hub.registry.UnassignRole, request)
    show_list(args, p, PERSON_HEADERS, person_rows([p]))
    return 0


# Certificates


def issue_identity(hub: HubClient, ref: m.PrincipalRef, out: Path, ca_pem: bytes, days: int = 0) -> rpb.Certificate:
    """Makes a key here, has the hub sign it for ``ref``, and writes an identity directory."""
    key = pki.new_key()
    request = rpb.IssueCertificateRequest(
        principal=w.principal_ref_to_wire(ref), csr_pem=pki.make_csr(key, ref), validity_days=days
    )
    cert = hub.call(hub.registry.IssueCertificate, request)
    pki.IdentityFiles(out).write(key, cert.pem.encode(), ca_pem)
    return cert


def _check_identity_out(out: Path) -> None:
    """An identity directory can be written at ``out`` (checked before the hub is asked: no certificate is wasted)."""
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"cannot write the identity {out}: it is a file; give a directory to create")
    if not out.parent.is_dir():
        raise InvalidArgument(f"cannot write the identity {out}: the directory {out.parent} does not exist")
    if pki.IdentityFiles(out).key.exists():
        raise InvalidArgument(f"cannot write the identity {out}: it already holds a key; choose another directory")


def cert_issue(args: argparse.Namespace, settings: Settings) -> int:
    ref = _ref(args)
    _check_identity_out(args.out)
    with HubClient(settings, args.identity) as hub:
        ca_pem = pki.IdentityFiles(hub.identity).ca.read_bytes()
        cert = issue_identity(hub, ref, args.out, ca_pem, args.days)
    if args.json:
        print(json_format.MessageToJson(cert, ensure_ascii=False))
        return 0
    print(f"issued a certificate for {ref} (valid until {_time(cert.not_after)}); identity written to {args.out}")
    print(f"the private key never left this machine: {pki.IdentityFiles(args.out).key} (mode 0600)")
    return 0


def cert_list(args: argparse.Namespace, settings: Settings) -> int:
    request = rpb.ListCertificatesRequest(page_size=args.page_size, page_token=args.page_token)
    if args.system or args.person:
        request.principal.CopyFrom(w.principal_ref_to_wire(_ref(args)))
    response = ask(args, settings, lambda hub: hub.registry.ListCertificates, request)
    rows = [
        [
            f"{w.KIND.label(c.principal.kind)}/{c.principal.code}",
            c.serial_number[:16],
            _time(c.not_before),
            _time(c.not_after),
            f"{_time(c.revoke_time)} {c.revoke_reason}" if c.HasField("revoke_time") else "-",
            c.issued_by or "-",
            c.fingerprint_sha256,
        ]
        for c in response.certificates
    ]
    headers = ["principal", "serial", "valid from", "valid until", "revoked", "issued by", "fingerprint"]
    show_list(args, response, headers, rows)
    return 0


def cert_revoke(args: argparse.Namespace, settings: Settings) -> int:
    request = rpb.RevokeCertificateRequest(
        fingerprint_sha256=args.fingerprint, reason=args.reason, keep_renewals=args.keep_renewals
    )
    cert = ask(args, settings, lambda hub: hub.registry.RevokeCertificate, request)
    if args.json:
        print(json_format.MessageToJson(cert, ensure_ascii=False))
        return 0
    print(
        f"revoked the certificate of {w.KIND.label(cert.principal.kind)}/{cert.principal.code} "
        f"({cert.fingerprint_sha256[:16]}…): refused from the next call on"
    )
    return 0


# Catalog

RESOURCE_HEADERS = ["code", "name", "department", "share", "method", "status", "v"]


def resource_rows(resources: list[cpb.Resource]) -> list[list[str]]:
    return [
        [
            r.code,
            r.name,
            r.department_code,
            w.SHARE_TYPE.label(r.share_type),
            w.SHARE_METHOD.label(r.share_method),
            w.STATUS.label(r.status),
            str(r.version),
        ]
        for r in resources
    ]


def resource_detail(r: cpb.Resource) -> list[tuple[str, str]]:
    rows = [
        ("code", r.code),
        ("name", r.name),
        ("department", r.department_code),
        ("summary", r.summary),
        ("classification", r.classification),
        ("format", r.format),
        ("share type", w.SHARE_TYPE.label(r.share_type)),
        ("share conditions", r.share_conditions or "-"),
        ("legal basis", r.legal_basis or "-"),
        ("share method", w.SHARE_METHOD.label(r.share_method)),
        ("open to public", "yes" if r.open_to_public else "no"),
        ("update cycle", w.UPDATE_CYCLE.label(r.update_cycle)),
        ("subscribable", "yes" if r.subscribable else "no"),
        ("related", ", ".join(r.related_resource_codes) or "-"),
        ("status", f"{w.STATUS.label(r.status)} (version {r.version})"),
        ("published", _time(r.publish_time)),
    ]
    filterable = [i.name for i in r.data_items if i.filterable]
    rows.append(("filterable", ", ".join(filterable) or "none"))
    for i in r.data_items:
        notes = [w.FIELD_TYPE.label(i.type), w.SENSITIVITY.label(i.sensitivity)]
        notes += ["personal"] * i.personal_information + ["filterable"] * i.filterable
        rows.append((f"  {i.name}", f"{i.title} ({', '.join(notes)})"))
    return rows


def catalog_get(args: argparse.Namespace, settings: Settings) -> int:
    r = ask(
        args,
        settings,
        lambda hub: hub.catalog.GetResource,
        cpb.GetResourceRequest(code=args.code, version=args.version),
    )
    _show(args, r, resource_detail(r))
    return 0


def catalog_list(args: argparse.Namespace, settings: Settings) -> int:
    request = cpb.ListResourcesRequest(
        page_size=args.page_size,
        page_token=args.page_token,
        department_code=args.department or "",
        share_type=w.SHARE_TYPE.optional(m.ShareType(args.share_type) if args.share_type else None),
        status=w.STATUS.optional(m.ResourceStatus(args.status) if args.status else None),
        text=args.text or "",
        field_name=args.field or "",
        subscribable=args.subscribable,
        home_hub_code=args.home_hub or "",
        home_level=args.home_level or "",
    )
    response = ask(args, settings, lambda hub: hub.catalog.ListResources, request)
    resources = list(response.resources)
    if any(r.home_hub_code for r in resources):  # entries homed at peer hubs (federation) say where
        homes = [
            [f"{r.home_hub_code} {r.home_hub_name}" if r.home_hub_code else "-", r.home_department_name or "-"]
            for r in resources
        ]
        rows = [row + home for row, home in zip(resource_rows(resources), homes, strict=True)]
        show_list(args, response, [*RESOURCE_HEADERS, "home hub", "department at home"], rows)
    else:
        show_list(args, response, RESOURCE_HEADERS, resource_rows(resources))
    return 0


def catalog_history(args: argparse.Namespace, settings: Settings) -> int:
    request = cpb.ListResourceVersionsRequest(code=args.code, page_size=args.page_size, page_token=args.page_token)
    response = ask(args, settings, lambda hub: hub.catalog.ListResourceVersions, request)
    rows = [
        [
            str(v.version),
            w.CHANGE.label(v.change),
            f"{w.KIND.label(v.actor.kind)}/{v.actor.code}",
            _time(v.change_time),
            w.STATUS.label(v.resource.status),
            v.reason or "-",
        ]
        for v in response.versions
    ]
    show_list(args, response, ["version", "change", "by", "at", "status", "reason"], rows)
    return 0


def catalog_status(args: argparse.Namespace, settings: Settings) -> int:
    request = cpb.ChangeResourceStatusRequest(
        code=args.code, expected_version=args.expected_version, reason=args.reason
    )
    with HubClient(settings, args.identity) as hub:
        method = {
            "publish": hub.catalog.PublishResource,
            "suspend": hub.catalog.SuspendResource,
            "retire": hub.catalog.RetireResource,
        }[args.verb]
        r = hub.call(method, request)
    show_list(args, r, RESOURCE_HEADERS, resource_rows([r]))
    return 0


def load_catalog(hub: HubClient, specs: list[m.ResourceSpec], publish: bool, reason: str) -> list[cpb.Resource]:
    """Creates entries that are new and updates those that changed; returns what the hub holds after."""
    results = []
    for spec in specs:
        wire = w.spec_to_wire(spec)
        try:
            current = hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=spec.code))
        except grpc.RpcError as e:
            if not isinstance(e, grpc.Call) or e.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            request = cpb.CreateResourceRequest(resource=wire, publish=publish, reason=reason)
            results.append(hub.call(hub.catalog.CreateResource, request))
            continue
        editable = cpb.Resource()
        editable.CopyFrom(current)
        for name in ("status", "version", "publish_time", "create_time", "update_time"):
            editable.ClearField(name)
        if editable == wire:
            results.append(current)
            continue
        update = cpb.UpdateResourceRequest(resource=wire, expected_version=current.version, reason=reason)
        results.append(hub.call(hub.catalog.UpdateResource, update))
    return results


def catalog_load(args: argparse.Namespace, settings: Settings) -> int:
    specs = files.read_catalog(args.file)
    with HubClient(settings, args.identity) as hub:
        results = load_catalog(hub, specs, publish=not args.draft, reason=args.reason)
    show_list(args, cpb.ListResourcesResponse(resources=results), RESOURCE_HEADERS, resource_rows(results))
    return 0
