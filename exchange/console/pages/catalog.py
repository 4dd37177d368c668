"""The catalog, for everyone: published entries found by text, department, share type or data item,
and one entry with its data items, terms and version history.

Filters are ordinary GET parameters (nothing in them is sensitive), so a search can be bookmarked.
The catalog service decides what is visible (another department's draft does not exist); the page
only shows what it answers. Whether to offer "apply" is the policy's word (``Action.APPLY_FOR_DATA``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages import objections
from exchange.console.web import Console, Viewer
from exchange.models import Department, Page, Resource, ResourceStatus, ResourceVersion, ShareType
from exchange.store.catalog import ResourceFilter
from policy import Action

# The most departments offered in the department filter (a province's departments fit well within it).
DEPARTMENTS_SHOWN = 1000
FILTERS = ("text", "department", "share_type", "field")


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


async def _list(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    typed = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    token = request.query_params.get("page", "")
    departments = await _departments(console, viewer)
    found: Page[Resource] = Page()
    message, status = "", 200
    try:
        query = _filter_of(typed)
        found = await console.call(
            viewer,
            "CatalogServicer.ListResources",
            console.services.catalog.list,
            console.page_size,
            token,
            query,
            ResourceStatus.PUBLISHED,
        )
    except (errors.InvalidArgument, errors.NotFound) as e:
        message, status = console.error_text(request, e), 400
    return console.render(
        request,
        viewer,
        "catalog/list.html",
        status_code=status,
        resources=found.items,
        next_token=found.next_page_token,
        typed=typed,
        departments=departments,
        share_types=[s.value for s in ShareType],
        message=message,
    )


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
    resource: Resource = await console.call(
        viewer, "CatalogServicer.GetResource", console.services.catalog.get, code, 0
    )
    versions: Page[ResourceVersion] = await console.call(
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
        owner=departments.get(resource.spec.department_code, resource.spec.department_code),
        versions=versions.items,
        next_token=versions.next_page_token,
        paged=bool(request.query_params.get("page")),
        may_apply=may_apply(viewer, resource),
        shareable=resource.spec.share_type is not ShareType.NOT_SHARED,
        **await objections.for_entry(console, viewer, code),
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/catalog", _list, methods=["GET"]),
        Route("/catalog/{code:path}", _entry, methods=["GET"]),
    ]
