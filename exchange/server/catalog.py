"""CatalogService handlers: translate, call the catalog service, translate back."""

from __future__ import annotations

from exchange import wire as c
from exchange.errors import FieldViolation
from exchange.models import Principal, ResourceChange
from exchange.server.federation_wire import listed_to_wire
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.catalog import CatalogService
from exchange.services.federation.catalog import FederatedCatalog
from exchange.store.catalog import ResourceFilter
from exchange.v1 import catalog_pb2 as pb
from exchange.v1 import catalog_pb2_grpc as pb_grpc
from exchange.validation import raise_if


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(
        self,
        service: CatalogService,
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
        *,
        federated: FederatedCatalog | None = None,
    ) -> None:
        """``federated`` (the hub's) also lists and reads the entries homed at other hubs."""
        self.federated = federated
        self.refusals = refusals
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev

    @unary
    def CreateResource(self, request: pb.CreateResourceRequest, actor: Principal) -> pb.Resource:
        self.service.require_writer(actor, "create catalog entries")  # before the request is read
        spec = c.resource_spec_from_wire(request.resource)
        return c.resource_to_wire(self.service.create(actor, spec, request.publish, request.reason.strip()))

    @unary
    def UpdateResource(self, request: pb.UpdateResourceRequest, actor: Principal) -> pb.Resource:
        self.service.require_writer(actor, "update catalog entries")
        spec = c.resource_spec_from_wire(request.resource)
        updated = self.service.update(actor, spec, request.expected_version, request.reason.strip())
        return c.resource_to_wire(updated)

    def _change(self, request: pb.ChangeResourceStatusRequest, actor: Principal, change: ResourceChange) -> pb.Resource:
        changed = self.service.change_status(
            actor, request.code.strip(), change, request.expected_version, request.reason.strip()
        )
        return c.resource_to_wire(changed)

    @unary
    def PublishResource(self, request: pb.ChangeResourceStatusRequest, actor: Principal) -> pb.Resource:
        return self._change(request, actor, ResourceChange.PUBLISHED)

    @unary
    def SuspendResource(self, request: pb.ChangeResourceStatusRequest, actor: Principal) -> pb.Resource:
        return self._change(request, actor, ResourceChange.SUSPENDED)

    @unary
    def RetireResource(self, request: pb.ChangeResourceStatusRequest, actor: Principal) -> pb.Resource:
        return self._change(request, actor, ResourceChange.RETIRED)

    @unary
    def GetResource(self, request: pb.GetResourceRequest, actor: Principal) -> pb.Resource:
        if self.federated is None:
            return c.resource_to_wire(self.service.get(actor, request.code.strip(), request.version))
        found = self.federated.get(actor, request.code.strip(), request.version)
        return listed_to_wire(found.resource, found.home, found.department_name)

    @unary
    def ListResources(self, request: pb.ListResourcesRequest, actor: Principal) -> pb.ListResourcesResponse:
        out: list[FieldViolation] = []
        share_type = c.SHARE_TYPE.domain(request.share_type, "share_type", out, required=False)
        status = c.STATUS.domain(request.status, "status", out, required=False)
        raise_if(out)
        query = ResourceFilter(
            department_code=request.department_code.strip() or None,
            share_type=share_type,
            text=request.text.strip(),
            field_name=request.field_name.strip(),
            subscribable=request.subscribable,
        )
        home = (request.home_hub_code.strip(), request.home_level.strip())
        if self.federated is None:
            page = self.service.list(actor, request.page_size, request.page_token, query, status)
            resources = [c.resource_to_wire(r) for r in page.items]
            return pb.ListResourcesResponse(resources=resources, next_page_token=page.next_page_token)
        listed = self.federated.list(actor, request.page_size, request.page_token, query, status, home=home)
        return pb.ListResourcesResponse(
            resources=[listed_to_wire(x.resource, x.home, x.department_name) for x in listed.items],
            next_page_token=listed.next_page_token,
        )

    @unary
    def ListResourceVersions(
        self, request: pb.ListResourceVersionsRequest, actor: Principal
    ) -> pb.ListResourceVersionsResponse:
        page = self.service.versions(actor, request.code.strip(), request.page_size, request.page_token)
        return pb.ListResourceVersionsResponse(
            versions=[c.version_to_wire(v) for v in page.items], next_page_token=page.next_page_token
        )

    @unary
    def SetBinding(self, request: pb.SetBindingRequest, actor: Principal) -> pb.Binding:
        self.service.require_writer(actor, "bind catalog entries")
        binding = c.binding_from_wire(request.binding)
        return c.binding_to_wire(self.service.set_binding(actor, binding, request.reason.strip()))

    @unary
    def GetBinding(self, request: pb.GetBindingRequest, actor: Principal) -> pb.Binding:
        return c.binding_to_wire(self.service.get_binding(actor, request.resource_code.strip()))
