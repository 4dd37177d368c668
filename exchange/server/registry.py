"""RegistryService handlers: translate, call the registry service, translate back."""

from __future__ import annotations

from exchange import wire as c
from exchange.errors import FieldViolation
from exchange.models import Principal, PrincipalRef
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.registry import RegistryService
from exchange.v1 import registry_pb2 as pb
from exchange.v1 import registry_pb2_grpc as pb_grpc
from exchange.validation import raise_if


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(
        self, service: RegistryService, auth: Authenticator, insecure_dev: bool, refusals: Refusals | None = None
    ) -> None:
        self.refusals = refusals
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev

    @unary
    def WhoAmI(self, request: pb.WhoAmIRequest, actor: Principal) -> pb.WhoAmIResponse:
        return pb.WhoAmIResponse(
            principal=c.principal_ref_to_wire(actor.ref),
            display_name=actor.display_name,
            department_code=actor.department_code,
            roles=[c.ROLE.wire(r) for r in sorted(actor.roles)],
            certificate_fingerprint_sha256=actor.certificate_fingerprint,
        )

    @unary
    def CreateDepartment(self, request: pb.CreateDepartmentRequest, actor: Principal) -> pb.Department:
        self.service.require_registrar(actor, "register departments")  # before the request is read
        created = self.service.create_department(actor, c.department_from_wire(request.department))
        return c.department_to_wire(created)

    @unary
    def GetDepartment(self, request: pb.GetDepartmentRequest, actor: Principal) -> pb.Department:
        return c.department_to_wire(self.service.get_department(actor, request.code))

    @unary
    def ListDepartments(self, request: pb.ListDepartmentsRequest, actor: Principal) -> pb.ListDepartmentsResponse:
        out: list[FieldViolation] = []
        level = c.LEVEL.domain(request.level, "level", out, required=False)
        raise_if(out)
        page = self.service.list_departments(actor, request.page_size, request.page_token, request.parent_code, level)
        return pb.ListDepartmentsResponse(
            departments=[c.department_to_wire(d) for d in page.items], next_page_token=page.next_page_token
        )

    @unary
    def CreateSystem(self, request: pb.CreateSystemRequest, actor: Principal) -> pb.System:
        self.service.require_registrar(actor, "register systems")
        return c.system_to_wire(self.service.create_system(actor, c.system_from_wire(request.system)))

    @unary
    def GetSystem(self, request: pb.GetSystemRequest, actor: Principal) -> pb.System:
        return c.system_to_wire(self.service.get_system(actor, request.code))

    @unary
    def ListSystems(self, request: pb.ListSystemsRequest, actor: Principal) -> pb.ListSystemsResponse:
        page = self.service.list_systems(actor, request.page_size, request.page_token, request.department_code)
        return pb.ListSystemsResponse(
            systems=[c.system_to_wire(s) for s in page.items], next_page_token=page.next_page_token
        )

    @unary
    def CreatePerson(self, request: pb.CreatePersonRequest, actor: Principal) -> pb.Person:
        self.service.require_registrar(actor, "register people")
        person = c.person_from_wire(request.person)
        return c.person_to_wire(self.service.create_person(actor, person, request.id_number))

    @unary
    def GetPerson(self, request: pb.GetPersonRequest, actor: Principal) -> pb.Person:
        return c.person_to_wire(self.service.get_person(actor, request.username))

    @unary
    def ListPeople(self, request: pb.ListPeopleRequest, actor: Principal) -> pb.ListPeopleResponse:
        self.service.require_person_reader(actor, "list people")
        out: list[FieldViolation] = []
        role = c.ROLE.domain(request.role, "role", out, required=False)
        raise_if(out)
        page = self.service.list_people(actor, request.page_size, request.page_token, request.department_code, role)
        return pb.ListPeopleResponse(
            people=[c.person_to_wire(p) for p in page.items], next_page_token=page.next_page_token
        )

    @unary
    def IssueCertificate(self, request: pb.IssueCertificateRequest, actor: Principal) -> pb.Certificate:
        kind = c.KIND.domain(request.principal.kind, "principal.kind", [], required=False)
        self.service.require_issuer(actor, kind, request.principal.code)  # before the request is checked
        ref = c.principal_ref_from_wire(request.principal, "principal")
        record = self.service.issue_certificate(actor, ref, request.csr_pem, request.validity_days)
        return c.certificate_to_wire(record)

    @unary
    def ListCertificates(self, request: pb.ListCertificatesRequest, actor: Principal) -> pb.ListCertificatesResponse:
        ref: PrincipalRef | None = None
        if request.HasField("principal"):
            ref = c.principal_ref_from_wire(request.principal, "principal")
        page = self.service.list_certificates(actor, request.page_size, request.page_token, ref)
        return pb.ListCertificatesResponse(
            certificates=[c.certificate_to_wire(x) for x in page.items], next_page_token=page.next_page_token
        )

    @unary
    def RevokeCertificate(self, request: pb.RevokeCertificateRequest, actor: Principal) -> pb.Certificate:
        record = self.service.revoke_certificate(
            actor,
            request.fingerprint_sha256.strip().lower(),
            request.reason.strip(),
            keep_renewals=request.keep_renewals,
        )
        return c.certificate_to_wire(record)

    @unary
    def RenewCertificate(self, request: pb.RenewCertificateRequest, actor: Principal) -> pb.RenewCertificateResponse:
        record = self.service.renew_certificate(actor, request.csr_pem, request.validity_days)
        return pb.RenewCertificateResponse(certificate=c.certificate_to_wire(record), trust_bundle=self._bundle())

    @unary
    def GetTrustBundle(self, request: pb.GetTrustBundleRequest, actor: Principal) -> pb.TrustBundle:
        return self._bundle()

    def _bundle(self) -> pb.TrustBundle:
        pem, signing = self.service.trust_bundle()
        return pb.TrustBundle(pem=pem, signing_fingerprint_sha256=signing)

    def _change_role(self, request: pb.ChangeRoleRequest, actor: Principal, add: bool) -> pb.Person:
        self.service.require_registrar(actor, f"{'assign' if add else 'unassign'} roles")
        out: list[FieldViolation] = []
        role = c.ROLE.checked(request.role, "role", out)
        raise_if(out)
        changed = self.service.change_role(actor, request.username.strip(), role, add, request.reason.strip())
        return c.person_to_wire(changed)

    @unary
    def AssignRole(self, request: pb.ChangeRoleRequest, actor: Principal) -> pb.Person:
        return self._change_role(request, actor, add=True)

    @unary
    def UnassignRole(self, request: pb.ChangeRoleRequest, actor: Principal) -> pb.Person:
        return self._change_role(request, actor, add=False)
