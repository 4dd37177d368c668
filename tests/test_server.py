"""End to end: a real hub on a loopback port, called over mutual TLS with real certificates."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.client import HubClient
from exchange.cli.demo import sample_id_number
from exchange.services.registry import CertificateAuthority
from exchange.store.schema import CertificateRow, DepartmentRow, ResourceRow, ResourceVersionRow, SystemRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import catalog_pb2_grpc, registry_pb2_grpc
from exchange.v1 import registry_pb2 as rpb
from tests.harness import HOUSING, POLICE, RunningHub, base_settings, identity_spec, running_hub

PERSON = m.PrincipalKind.PERSON
MARKET = m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY)


def _fails(code: grpc.StatusCode, call: Any, *args: Any, **kwargs: Any) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, error.details()
    return error


def _violations(error: grpc.Call) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


@pytest.fixture
def members(hub: RunningHub) -> dict[str, Path]:
    hub.add_department(POLICE)
    hub.add_department(HOUSING)
    return {
        "police": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "housing": hub.add_person("zj-steward", HOUSING.code, m.Role.OWNER_STEWARD),
        "clerk": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        "system": hub.add_system("ga-rkxx", POLICE.code),
    }


# Identity and transport


def test_whoami_names_the_certificate_holder(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client(members["system"]) as c:
        me = c.call(c.registry.WhoAmI, rpb.WhoAmIRequest())
    assert (me.principal.code, me.department_code) == ("ga-rkxx", POLICE.code)
    assert me.principal.kind == rpb.PRINCIPAL_KIND_SYSTEM
    expected = pki.fingerprint_of_pem(pki.IdentityFiles(members["system"]).cert.read_bytes())
    assert me.certificate_fingerprint_sha256 == expected


def test_call_without_client_certificate_is_refused(hub: RunningHub) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=hub.ca_pem)
    with grpc.secure_channel(hub.settings.hub_address, credentials) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        _fails(grpc.StatusCode.UNAVAILABLE, stub.WhoAmI, rpb.WhoAmIRequest(), timeout=5)


def test_certificate_from_a_foreign_ca_is_refused(hub: RunningHub, tmp_path: Path) -> None:
    foreign_key, foreign_ca = pki.create_ca("someone else's CA")
    key = pki.new_key()
    ref = m.PrincipalRef(PERSON, "op-admin")  # claims to be the operator
    cert = CertificateAuthority.of(foreign_key, foreign_ca).issue(pki.make_csr(key, ref), ref, 30)
    pki.IdentityFiles(tmp_path / "forged").write(key, cert.pem.encode(), hub.ca_pem)
    with HubClient(hub.settings, tmp_path / "forged") as c:
        _fails(grpc.StatusCode.UNAVAILABLE, c.call, c.registry.WhoAmI, rpb.WhoAmIRequest())


def test_hub_signed_but_unregistered_certificate_is_unauthenticated(hub: RunningHub, tmp_path: Path) -> None:
    ca = CertificateAuthority.of(pki.load_key(hub.files.ca_key), pki.load_cert(hub.files.ca_cert))
    key = pki.new_key()
    ref = m.PrincipalRef(PERSON, "op-admin")
    record = ca.issue(pki.make_csr(key, ref), ref, 30)  # signed by the hub's CA, but never recorded
    pki.IdentityFiles(tmp_path / "stray").write(key, record.pem.encode(), hub.ca_pem)
    with HubClient(hub.settings, tmp_path / "stray") as c:
        error = _fails(grpc.StatusCode.UNAUTHENTICATED, c.call, c.registry.WhoAmI, rpb.WhoAmIRequest())
    assert "not registered" in (error.details() or "")


def test_health_and_reflection_are_served(hub: RunningHub) -> None:
    with hub.client() as c:
        health = health_pb2_grpc.HealthStub(c.channel)
        for service in ("", "exchange.v1.RegistryService", "exchange.v1.CatalogService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        watching = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(iter(watching)).status == health_pb2.HealthCheckResponse.SERVING  # through the interceptor
        watching.cancel()
        reflect = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"exchange.v1.RegistryService", "exchange.v1.CatalogService", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="exchange.v1.CatalogService")
        reply = next(iter(reflect.ServerReflectionInfo(iter([request]))))
        described = descriptor_pb2.FileDescriptorProto.FromString(
            reply.file_descriptor_response.file_descriptor_proto[0]
        )
        assert described.package == "exchange.v1"


def test_oversized_message_is_refused_by_the_server(hub: RunningHub, members: dict[str, Path]) -> None:
    files = pki.IdentityFiles(members["police"])
    credentials = grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())
    big = hub.settings.max_message_bytes * 2  # the client would send it: only the hub's limit stands in the way
    options = [("grpc.max_send_message_length", big)]
    spec = identity_spec(summary="长" * (hub.settings.max_message_bytes // 2))
    with grpc.secure_channel(hub.settings.hub_address, credentials, options=options) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        request = cpb.CreateResourceRequest(resource=w.spec_to_wire(spec))
        error = _fails(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.CreateResource, request, timeout=20)
    assert "CLIENT" not in (error.details() or "")
    assert hub.rows(ResourceRow) == 0


def test_the_hub_gives_up_when_the_callers_deadline_passes(hub: RunningHub, members: dict[str, Path]) -> None:
    """A write stuck behind a lock ends with the deadline instead of committing after the caller left."""
    blocker = sqlite3.connect(hub.settings.effective_database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
    started = time.monotonic()
    try:
        with hub.client() as c:
            request = rpb.CreateDepartmentRequest(department=w.department_to_wire(MARKET))
            _fails(grpc.StatusCode.DEADLINE_EXCEEDED, c.registry.CreateDepartment, request, timeout=0.5)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    time.sleep(1.0)  # were the hub still waiting for the lock, it would commit now
    assert hub.rows(DepartmentRow) == 3


# Registry


def test_registry_round_trips(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client(members["clerk"]) as c:
        police = c.call(c.registry.GetDepartment, rpb.GetDepartmentRequest(code=POLICE.code))
        system = c.call(c.registry.GetSystem, rpb.GetSystemRequest(code="ga-rkxx"))
        steward = c.call(c.registry.GetPerson, rpb.GetPersonRequest(username="ga-steward"))
        people = c.call(c.registry.ListPeople, rpb.ListPeopleRequest(department_code=HOUSING.code))
        certs = c.call(
            c.registry.ListCertificates,
            rpb.ListCertificatesRequest(principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_SYSTEM, code="ga-rkxx")),
        )
    assert (police.name, police.level) == (POLICE.name, rpb.ADMINISTRATIVE_LEVEL_CITY)
    assert police.create_time.seconds > 0
    assert (system.department_code, steward.roles[:]) == (POLICE.code, [rpb.ROLE_OWNER_STEWARD])
    assert sorted(p.username for p in people.people) == ["zj-clerk", "zj-steward"]
    assert len(certs.certificates) == 1 and "PRIVATE" not in certs.certificates[0].pem


def test_list_pages_with_tokens(hub: RunningHub, members: dict[str, Path]) -> None:
    seen: list[str] = []
    token = ""
    with hub.client() as c:
        while True:
            page = c.call(c.registry.ListPeople, rpb.ListPeopleRequest(page_size=2, page_token=token))
            seen += [p.username for p in page.people]
            token = page.next_page_token
            if not token:
                break
        assert seen == sorted(["op-admin", "ga-steward", "zj-steward", "zj-clerk"])
        first = c.call(c.registry.ListPeople, rpb.ListPeopleRequest(page_size=1))
        other_filter = rpb.ListPeopleRequest(page_size=1, page_token=first.next_page_token, department_code=POLICE.code)
        error = _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.ListPeople, other_filter)
        assert "page_token" in _violations(error)
        forged = rpb.ListPeopleRequest(page_token="not-a-token!")
        _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.ListPeople, forged)
        huge = rpb.ListPeopleRequest(page_size=100000)
        assert "page_size" in _violations(_fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.ListPeople, huge))


BAD_DEPARTMENTS = [
    ({"code": "11350200MB0067890X"}, "department.code"),  # wrong check character
    ({"code": "1135"}, "department.code"),
    ({"name": ""}, "department.name"),
    ({"division_code": "35020"}, "department.division_code"),
    ({"division_code": "350203"}, "department.division_code"),  # a county code for a city-level department
    ({"level": 0}, "department.level"),
    ({"level": 42}, "department.level"),
]


@pytest.mark.parametrize(("change", "field"), BAD_DEPARTMENTS)
def test_malformed_department_is_invalid(hub: RunningHub, change: dict[str, Any], field: str) -> None:
    wire = w.department_to_wire(
        m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY)
    )
    for key, value in change.items():
        setattr(wire, key, value)
    with hub.client() as c:
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            c.call,
            c.registry.CreateDepartment,
            rpb.CreateDepartmentRequest(department=wire),
        )
    assert field in _violations(error)
    assert hub.rows(DepartmentRow) == 1


def test_duplicate_and_unknown_references(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client() as c:
        again = rpb.CreateDepartmentRequest(department=w.department_to_wire(POLICE))
        _fails(grpc.StatusCode.ALREADY_EXISTS, c.call, c.registry.CreateDepartment, again)
        same_name = w.department_to_wire(POLICE)
        same_name.code = "11350200MB0067890U"
        _fails(
            grpc.StatusCode.ALREADY_EXISTS,
            c.call,
            c.registry.CreateDepartment,
            rpb.CreateDepartmentRequest(department=same_name),
        )
        orphan = rpb.CreateSystemRequest(
            system=rpb.System(code="x-sys", name="X", department_code="11350200MB0067890U")
        )
        error = _fails(grpc.StatusCode.NOT_FOUND, c.call, c.registry.CreateSystem, orphan)
        assert "11350200MB0067890U" in (error.details() or "")
        nobody = rpb.IssueCertificateRequest(
            principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_PERSON, code="nobody"),
            csr_pem=pki.make_csr(pki.new_key(), m.PrincipalRef(PERSON, "nobody")),
        )
        _fails(grpc.StatusCode.NOT_FOUND, c.call, c.registry.IssueCertificate, nobody)
        _fails(grpc.StatusCode.NOT_FOUND, c.call, c.registry.GetPerson, rpb.GetPersonRequest(username="nobody"))
    assert hub.rows(DepartmentRow) == 3
    assert hub.rows(SystemRow) == 1


def test_bad_certificate_requests(hub: RunningHub, members: dict[str, Path]) -> None:
    ref = rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_SYSTEM, code="ga-rkxx")
    with hub.client(members["police"]) as c:  # the system's own department certifies it
        garbage = rpb.IssueCertificateRequest(principal=ref, csr_pem="-----BEGIN CERTIFICATE REQUEST-----\nxx")
        assert "csr_pem" in _violations(
            _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.IssueCertificate, garbage)
        )
        too_long = rpb.IssueCertificateRequest(
            principal=ref,
            csr_pem=pki.make_csr(pki.new_key(), m.PrincipalRef(m.PrincipalKind.SYSTEM, "ga-rkxx")),
            validity_days=5000,
        )
        assert "validity_days" in _violations(
            _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.IssueCertificate, too_long)
        )
        no_kind = rpb.IssueCertificateRequest(principal=rpb.PrincipalRef(code="ga-rkxx"), csr_pem="x")
        assert "principal.kind" in _violations(
            _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.registry.IssueCertificate, no_kind)
        )
    assert hub.rows(CertificateRow) == 5


def test_only_operators_register_members(hub: RunningHub, members: dict[str, Path]) -> None:
    department = w.department_to_wire(
        m.Department("11350200MB0067890U", "厦门市市场监督管理局", "350200", m.AdministrativeLevel.CITY)
    )
    for who in ("police", "system", "clerk"):
        with hub.client(members[who]) as c:
            error = _fails(
                grpc.StatusCode.PERMISSION_DENIED,
                c.call,
                c.registry.CreateDepartment,
                rpb.CreateDepartmentRequest(department=department),
            )
            assert "held by operator" in (error.details() or "")
            request = rpb.IssueCertificateRequest(
                principal=rpb.PrincipalRef(kind=rpb.PRINCIPAL_KIND_PERSON, code="ga-steward"),
                csr_pem=pki.make_csr(pki.new_key(), m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward")),
            )
            _fails(grpc.StatusCode.PERMISSION_DENIED, c.call, c.registry.IssueCertificate, request)
    assert hub.rows(DepartmentRow) == 3


def test_person_needs_a_known_role(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client() as c:
        unknown = cast(rpb.Role.ValueType, 99)
        for roles, field in (([], "person.roles"), ([unknown], "person.roles[0]")):
            person = rpb.Person(username="new-one", display_name="新人", department_code=POLICE.code, roles=roles)
            error = _fails(
                grpc.StatusCode.INVALID_ARGUMENT,
                c.call,
                c.registry.CreatePerson,
                rpb.CreatePersonRequest(person=person, id_number=sample_id_number(person.username)),
            )
            assert field in _violations(error)
        _fails(grpc.StatusCode.NOT_FOUND, c.call, c.registry.GetPerson, rpb.GetPersonRequest(username="new-one"))


# Catalog


def test_catalog_round_trip(hub: RunningHub, members: dict[str, Path]) -> None:
    created = hub.publish(members["police"], identity_spec(), publish=False)
    assert (created.status, created.version) == (cpb.RESOURCE_STATUS_DRAFT, 1)
    with hub.client(members["clerk"]) as c:  # another department does not see the draft
        _fails(grpc.StatusCode.NOT_FOUND, c.call, c.catalog.GetResource, cpb.GetResourceRequest(code=created.code))
        assert not c.call(c.catalog.ListResources, cpb.ListResourcesRequest()).resources
    with hub.client(members["police"]) as c:
        published = c.call(
            c.catalog.PublishResource, cpb.ChangeResourceStatusRequest(code=created.code, expected_version=1)
        )
        edited = w.spec_to_wire(identity_spec(summary="新的摘要"))
        updated = c.call(
            c.catalog.UpdateResource, cpb.UpdateResourceRequest(resource=edited, expected_version=2, reason="摘要")
        )
        suspended = c.call(c.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=created.code, reason="维护"))
    assert published.publish_time.seconds > 0 and updated.summary == "新的摘要"
    assert (suspended.status, suspended.version) == (cpb.RESOURCE_STATUS_SUSPENDED, 4)
    with hub.client(members["clerk"]) as c:
        found = c.call(c.catalog.ListResources, cpb.ListResourcesRequest(field_name="公民身份号码"))
        assert [r.code for r in found.resources] == [created.code]
        old = c.call(c.catalog.GetResource, cpb.GetResourceRequest(code=created.code, version=2))
        assert old.summary == "身份核验信息" and old.status == cpb.RESOURCE_STATUS_PUBLISHED
        history = c.call(c.catalog.ListResourceVersions, cpb.ListResourceVersionsRequest(code=created.code))
    assert [w.CHANGE.label(v.change) for v in history.versions] == ["created", "published", "updated", "suspended"]
    assert history.versions[3].actor.code == "ga-steward" and history.versions[3].reason == "维护"


BAD_RESOURCES: list[tuple[dict[str, Any], str]] = [
    ({"code": "ID-0001"}, "resource.code"),
    ({"name": " "}, "resource.name"),
    ({"legal_basis": ""}, "resource.legal_basis"),
    ({"share_conditions": ""}, "resource.share_conditions"),
    ({"share_type": cpb.SHARE_TYPE_NOT_SHARED, "legal_basis": ""}, "resource.legal_basis"),
    ({"share_type": 0}, "resource.share_type"),
    ({"share_method": 17}, "resource.share_method"),
    ({"update_cycle": 0}, "resource.update_cycle"),
    ({"department_code": "123"}, "resource.department_code"),
]


@pytest.mark.parametrize(("change", "field"), BAD_RESOURCES)
def test_malformed_resource_is_invalid(
    hub: RunningHub, members: dict[str, Path], change: dict[str, Any], field: str
) -> None:
    wire = w.spec_to_wire(identity_spec())
    for key, value in change.items():
        setattr(wire, key, value)
    with hub.client(members["police"]) as c:
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT, c.call, c.catalog.CreateResource, cpb.CreateResourceRequest(resource=wire)
        )
    assert field in _violations(error)
    assert hub.rows(ResourceRow) == 0


def test_bad_data_items_are_named_each(hub: RunningHub, members: dict[str, Path]) -> None:
    wire = w.spec_to_wire(identity_spec())
    wire.data_items[0].type = cast(cpb.FieldType.ValueType, 99)  # a type this hub does not know
    wire.data_items[1].name = "ID Number"
    wire.data_items[2].name = "name"  # a duplicate
    with hub.client(members["police"]) as c:
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT, c.call, c.catalog.CreateResource, cpb.CreateResourceRequest(resource=wire)
        )
        assert "resource.data_items[0].type" in _violations(error)
        wire.data_items[0].type = cpb.FIELD_TYPE_STRING
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT, c.call, c.catalog.CreateResource, cpb.CreateResourceRequest(resource=wire)
        )
        assert {"resource.data_items[1].name", "resource.data_items[2].name"} <= set(_violations(error))
        del wire.data_items[:]
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT, c.call, c.catalog.CreateResource, cpb.CreateResourceRequest(resource=wire)
        )
        assert "resource.data_items" in _violations(error)


def test_only_the_owning_departments_steward_changes_entries(hub: RunningHub, members: dict[str, Path]) -> None:
    hub.publish(members["police"], identity_spec())
    for who in ("housing", "clerk", "system"):
        with hub.client(members[who]) as c:
            _fails(
                grpc.StatusCode.PERMISSION_DENIED,
                c.call,
                c.catalog.SuspendResource,
                cpb.ChangeResourceStatusRequest(code="10101/350200000001", reason="x"),
            )
            edited = w.spec_to_wire(identity_spec(name="改名"))
            _fails(
                grpc.StatusCode.PERMISSION_DENIED,
                c.call,
                c.catalog.UpdateResource,
                cpb.UpdateResourceRequest(resource=edited),
            )
    with hub.client(members["housing"]) as c:  # nor may a steward publish in another department's name
        foreign = w.spec_to_wire(identity_spec(code="10101/350200000002", name="另一条"))
        error = _fails(
            grpc.StatusCode.PERMISSION_DENIED,
            c.call,
            c.catalog.CreateResource,
            cpb.CreateResourceRequest(resource=foreign),
        )
        assert POLICE.code in (error.details() or "")
    with hub.client(members["clerk"]) as c:
        current = c.call(c.catalog.GetResource, cpb.GetResourceRequest(code="10101/350200000001"))
    assert (current.name, current.version, current.status) == ("居民身份信息", 1, cpb.RESOURCE_STATUS_PUBLISHED)


def test_state_rules_and_version_conflicts(hub: RunningHub, members: dict[str, Path]) -> None:
    hub.publish(members["police"], identity_spec())
    code = "10101/350200000001"
    with hub.client(members["police"]) as c:
        _fails(
            grpc.StatusCode.FAILED_PRECONDITION,
            c.call,
            c.catalog.PublishResource,
            cpb.ChangeResourceStatusRequest(code=code),
        )
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            c.call,
            c.catalog.SuspendResource,
            cpb.ChangeResourceStatusRequest(code=code),
        )
        assert "reason" in _violations(error)
        _fails(
            grpc.StatusCode.ABORTED,
            c.call,
            c.catalog.UpdateResource,
            cpb.UpdateResourceRequest(resource=w.spec_to_wire(identity_spec()), expected_version=7),
        )
        moved = w.spec_to_wire(identity_spec(department=HOUSING.code))
        error = _fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            c.call,
            c.catalog.UpdateResource,
            cpb.UpdateResourceRequest(resource=moved),
        )
        assert "resource.department_code" in _violations(error)
        c.call(c.catalog.RetireResource, cpb.ChangeResourceStatusRequest(code=code, reason="停用"))
        _fails(
            grpc.StatusCode.FAILED_PRECONDITION,
            c.call,
            c.catalog.UpdateResource,
            cpb.UpdateResourceRequest(resource=w.spec_to_wire(identity_spec(summary="x"))),
        )
        _fails(
            grpc.StatusCode.FAILED_PRECONDITION,
            c.call,
            c.catalog.PublishResource,
            cpb.ChangeResourceStatusRequest(code=code),
        )
        _fails(
            grpc.StatusCode.NOT_FOUND,
            c.call,
            c.catalog.SuspendResource,
            cpb.ChangeResourceStatusRequest(code="10101/350200000099", reason="x"),
        )
        history = c.call(c.catalog.ListResourceVersions, cpb.ListResourceVersionsRequest(code=code))
    assert [w.CHANGE.label(v.change) for v in history.versions] == ["created", "retired"]


def test_related_resources_must_exist(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client(members["police"]) as c:
        spec = identity_spec(related_resource_codes=("20301/350200000001",))
        error = _fails(
            grpc.StatusCode.NOT_FOUND,
            c.call,
            c.catalog.CreateResource,
            cpb.CreateResourceRequest(resource=w.spec_to_wire(spec)),
        )
        assert "20301/350200000001" in (error.details() or "")


def test_registry_and_catalog_through_the_hub_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with running_hub(base_settings(tmp_path / "hub", postgres_url)) as pg_hub:
        pg_hub.add_department(POLICE)
        steward = pg_hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
        pg_hub.publish(steward, identity_spec())
        with pg_hub.client(steward) as c:
            c.call(c.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code="10101/350200000001", reason="维护"))
            again = cpb.CreateResourceRequest(resource=w.spec_to_wire(identity_spec()))
            _fails(grpc.StatusCode.ALREADY_EXISTS, c.call, c.catalog.CreateResource, again)
            found = c.call(c.catalog.ListResources, cpb.ListResourcesRequest(text="身份", field_name="id_number"))
        assert [(r.code, r.version) for r in found.resources] == [("10101/350200000001", 2)]


def test_lookups_with_malformed_codes_are_invalid_not_missing(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client(members["clerk"]) as c:
        for call, request, field in (
            (c.registry.GetDepartment, rpb.GetDepartmentRequest(code="bad"), "code"),
            (c.registry.GetSystem, rpb.GetSystemRequest(code="GA RKXX"), "code"),
            (c.registry.GetPerson, rpb.GetPersonRequest(username="../etc"), "username"),
            (c.registry.ListSystems, rpb.ListSystemsRequest(department_code="123"), "department_code"),
            (c.catalog.GetResource, cpb.GetResourceRequest(code="x"), "code"),
            (c.catalog.ListResources, cpb.ListResourcesRequest(text="身份\x00"), "text"),
            (c.catalog.ListResourceVersions, cpb.ListResourceVersionsRequest(code="x"), "code"),
        ):
            assert field in _violations(_fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, call, request))


def test_conflicting_roles_are_refused(hub: RunningHub, members: dict[str, Path]) -> None:
    with hub.client() as c:
        for roles in ([rpb.ROLE_AUDITOR, rpb.ROLE_OWNER_STEWARD], [rpb.ROLE_SHARE_MANAGER, rpb.ROLE_CONSUMER]):
            person = rpb.Person(username="two-hats", display_name="两顶帽子", department_code=POLICE.code, roles=roles)
            error = _fails(
                grpc.StatusCode.INVALID_ARGUMENT,
                c.call,
                c.registry.CreatePerson,
                rpb.CreatePersonRequest(person=person, id_number=sample_id_number(person.username)),
            )
            assert "cannot be held together" in _violations(error)["person.roles"]
        _fails(grpc.StatusCode.NOT_FOUND, c.call, c.registry.GetPerson, rpb.GetPersonRequest(username="two-hats"))


def test_other_departments_drafts_cannot_be_referenced_or_probed(hub: RunningHub, members: dict[str, Path]) -> None:
    hub.publish(members["police"], identity_spec(), publish=False)
    with hub.client(members["housing"]) as c:
        linked = identity_spec(
            code="20301/350200000001",
            department=HOUSING.code,
            name="网签",
            related_resource_codes=("10101/350200000001",),
        )
        _fails(
            grpc.StatusCode.NOT_FOUND,
            c.call,
            c.catalog.CreateResource,
            cpb.CreateResourceRequest(resource=w.spec_to_wire(linked)),
        )
        error = _fails(
            grpc.StatusCode.NOT_FOUND,
            c.call,
            c.catalog.GetResource,
            cpb.GetResourceRequest(code="10101/350200000001", version=7),
        )
        assert "resource '10101/350200000001' not found" in (error.details() or "")
    assert hub.rows(ResourceRow) == 1 and hub.rows(ResourceVersionRow) == 1


def test_reasons_are_bounded_text(hub: RunningHub, members: dict[str, Path]) -> None:
    hub.publish(members["police"], identity_spec())
    with hub.client(members["police"]) as c:
        for reason in ("停用\x00", "长" * 5000):
            request = cpb.ChangeResourceStatusRequest(code="10101/350200000001", reason=reason)
            assert "reason" in _violations(
                _fails(grpc.StatusCode.INVALID_ARGUMENT, c.call, c.catalog.SuspendResource, request)
            )
    assert hub.rows(ResourceVersionRow) == 1


def test_a_revoked_certificate_is_refused_from_its_next_call(hub: RunningHub, members: dict[str, Path]) -> None:
    fingerprint = pki.fingerprint_of_pem(pki.IdentityFiles(members["system"]).cert.read_bytes())
    with hub.client(members["system"]) as holder:  # one open connection, before and after
        holder.call(holder.registry.WhoAmI, rpb.WhoAmIRequest())
        with hub.client(members["police"]) as c:
            _fails(
                grpc.StatusCode.PERMISSION_DENIED,
                c.call,
                c.registry.RevokeCertificate,
                rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="密钥泄露"),
            )
        with hub.client() as op:
            for request, code in (
                (rpb.RevokeCertificateRequest(fingerprint_sha256="abc", reason="x"), grpc.StatusCode.INVALID_ARGUMENT),
                (rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint), grpc.StatusCode.INVALID_ARGUMENT),
                (rpb.RevokeCertificateRequest(fingerprint_sha256="0" * 64, reason="x"), grpc.StatusCode.NOT_FOUND),
            ):
                _fails(code, op.call, op.registry.RevokeCertificate, request)
            holder.call(holder.registry.WhoAmI, rpb.WhoAmIRequest())  # nothing changed yet
            revoked = op.call(
                op.registry.RevokeCertificate,
                rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="密钥泄露"),
            )
            assert revoked.revoke_reason == "密钥泄露" and revoked.revoke_time.seconds > 0
            _fails(
                grpc.StatusCode.FAILED_PRECONDITION,
                op.call,
                op.registry.RevokeCertificate,
                rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="again"),
            )
            own = pki.fingerprint_of_pem(pki.IdentityFiles(hub.operator).cert.read_bytes())
            _fails(
                grpc.StatusCode.FAILED_PRECONDITION,
                op.call,
                op.registry.RevokeCertificate,
                rpb.RevokeCertificateRequest(fingerprint_sha256=own, reason="oops"),
            )
        _fails(grpc.StatusCode.UNAUTHENTICATED, holder.call, holder.registry.WhoAmI, rpb.WhoAmIRequest())
