"""The catalog, for everyone: published entries found by text, department, share type or data item,
and one entry with its data items, terms and version history.

A hub that federates lists, with its own entries, those its peers offer (homed at other hubs), each marked
with its home hub, and filters by home hub ("this hub only" among them) or by the home's level: the same
search as ListResources (``FederatedCatalog``). A remote entry's page shows what its home last offered (no
version history: that is kept at home), and the application for it goes through this hub to its home.

Filters are ordinary GET parameters (nothing in them is sensitive), so a search can be bookmarked.
The catalog service decides what is visible (another department's draft does not exist); the page
only shows what it answers. Whether to offer "apply" is the policy's word (``Action.APPLY_FOR_DATA``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.config import HUB_LEVELS
from exchange.console.pages import objections
from exchange.console.web import Console, Viewer
from exchange.federation.model import HubRef
from exchange.models import Department, Page, Principal, Resource, ResourceStatus, ResourceVersion, ShareType
from exchange.services.federation.catalog import Listed
from exchange.store.catalog import ResourceFilter
from policy import Action

# The most departments offered in the department filter (a province's departments fit well within it).
DEPARTMENTS_SHOWN = 1000
FILTERS = ("text", "department", "share_type", "field", "home", "level")


def _filter_of(values: dict[str, str]) -> ResourceFilter:
    """The catalog query the page's parameters ask for, as ListResources builds it."""
    share_type = values.get("share_type", "")
    if share_type and share_type not in {s.value for s in ShareType}:
        raise errors.InvalidArgument.of([errors.FieldViolation("share_type", f"{share_type[:40]!r} is no share type")])
    return ResourceFilter(
        department_code=values.get("department") or None,
        share_type=ShareType(share_type) if share_type else None,
        text=values.get("text", ""),
        field_name=values.get("field", ""),
    )


async def _departments(console: Console, viewer: Viewer) -> dict[str, str]:
    """Department names by code, for the filter and for naming each entry's owner."""
    page: Page[Department] = await console.run(
        lambda: console.services.registry.list_departments(viewer.principal, DEPARTMENTS_SHOWN, "", "", None)
    )
    return {d.code: d.name for d in page.items}


async def _homes(console: Console) -> list[HubRef]:
    """The hubs whose entries this catalog holds, this hub first; only this hub's when it holds no remote one."""
    federated = console.services.federated
    if federated is None:
        return []
    homes = await console.run(federated.homes)
    return list(homes) if len(homes) > 1 else []


async def _search(
    console: Console, viewer: Viewer, token: str, query: ResourceFilter, home: tuple[str, str]
) -> Page[Listed]:
    """A page of published entries, this hub's and (federating) those homed elsewhere, as ListResources answers."""
    federated = console.services.federated

    def search(actor: Principal) -> Page[Listed]:
        if federated is None:
            page = console.services.catalog.list(actor, console.page_size, token, query, ResourceStatus.PUBLISHED)
            return Page([Listed(r) for r in page.items], page.next_page_token)
        return federated.list(actor, console.page_size, token, query, ResourceStatus.PUBLISHED, home=home)

    found: Page[Listed] = await console.call(viewer, "CatalogServicer.ListResources", search)
    return found


async def _list(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    typed = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    token = request.query_params.get("page", "")
    departments = await _departments(console, viewer)
    homes = await _homes(console)
    found: Page[Listed] = Page()
    message, status = "", 200
    try:
        found = await _search(console, viewer, token, _filter_of(typed), (typed["home"], typed["level"]))
    except (errors.InvalidArgument, errors.NotFound) as e:
        message, status = console.error_text(request, e), 400
    return console.render(
        request,
        viewer,
        "catalog/list.html",
        status_code=status,
        listed=found.items,
        next_token=found.next_page_token,
        typed=typed,
        departments=departments,
        share_types=[s.value for s in ShareType],
        homes=homes,
        levels=HUB_LEVELS,
        message=message,
    )


async def lookup(console: Console, viewer: Viewer, code: str) -> Listed:
    """An entry of this hub, else one homed elsewhere that a peer offered (as GetResource answers)."""
    federated = console.services.federated
    if federated is None:
        found: Resource = await console.call(
            viewer, "CatalogServicer.GetResource", console.services.catalog.get, code, 0
        )
        return Listed(found)
    listed: Listed = await console.call(viewer, "CatalogServicer.GetResource", federated.get, code, 0)
    return listed


async def known(console: Console, viewer: Viewer, codes: set[str]) -> dict[str, Listed]:
    """The catalog entries ``codes`` this person may see, this hub's or remote (the others, e.g. a remote entry
    no longer offered, left out: a page then names them by code)."""
    federated = console.services.federated

    def one(code: str) -> Listed:
        if federated is None:
            return Listed(console.services.catalog.get(viewer.principal, code, 0))
        return federated.get(viewer.principal, code, 0)

    def each() -> dict[str, Listed]:
        out = {}
        for code in codes:
            try:
                out[code] = one(code)
            except errors.ExchangeError:
                continue
        return out

    return await console.run(each)


async def names(console: Console, viewer: Viewer, codes: set[str]) -> dict[str, str]:
    """The names of the catalog entries ``codes`` this person may see (see ``known``)."""
    return {code: x.resource.spec.name for code, x in (await known(console, viewer, codes)).items()}


def may_apply(viewer: Viewer, resource: Resource) -> bool:
    """Whether to offer this person an application for this entry: a published entry of another
    department, to a person whose roles may apply for data."""
    return (
        viewer.may(Action.APPLY_FOR_DATA)
        and resource.status is ResourceStatus.PUBLISHED
        and resource.spec.department_code != viewer.principal.department_code
    )


async def _entry(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    code = request.path_params["code"]
    listed = await lookup(console, viewer, code)
    resource = listed.resource
    versions: Page[ResourceVersion] = Page()
    doubts: dict[str, Any] = {}
    if listed.home is None:  # a remote entry's history and objections are kept at its home
        doubts = await objections.for_entry(console, viewer, code)
        versions = await console.call(
            viewer,
            "CatalogServicer.ListResourceVersions",
            console.services.catalog.versions,
            code,
            console.page_size,
            request.query_params.get("page", ""),
        )
    departments = await _departments(console, viewer)
    return console.render(
        request,
        viewer,
        "catalog/entry.html",
        resource=resource,
        spec=resource.spec,
        home=listed.home,
        owner=departments.get(resource.spec.department_code, "") or listed.department_name,
        versions=versions.items,
        next_token=versions.next_page_token,
        paged=bool(request.query_params.get("page")),
        may_apply=may_apply(viewer, resource),
        shareable=resource.spec.share_type is not ShareType.NOT_SHARED,
        **doubts,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/catalog", _list, methods=["GET"]),
        Route("/catalog/{code:path}", _entry, methods=["GET"]),
    ]
