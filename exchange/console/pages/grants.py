"""Grants: the list each person may see, and a grant's page with its terms, today's use and its controls.

The rights service chooses what each person sees (a consumer its department's grants, an owner steward
those on its data and its own, the share manager every grant) and to whom it shows today's use (those
who may suspend the grant). Suspend, resume and revoke are offered only to who may do them to this grant.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages.inbox import status_code_of
from exchange.console.web import Console, Viewer, see_other
from exchange.models import Grant, GrantStatus, Resource
from exchange.store.rights import GrantFilter
from policy import Action

STATUSES = tuple(s.value for s in GrantStatus)
# Each change: its path word, the action, the name its refusal is recorded under, the states it applies to.
CHANGES: dict[str, tuple[Action, str, tuple[GrantStatus, ...]]] = {
    "suspend": (Action.SUSPEND_GRANT, "RightsServicer.SuspendGrant", (GrantStatus.ACTIVE,)),
    "resume": (Action.RESUME_GRANT, "RightsServicer.ResumeGrant", (GrantStatus.SUSPENDED,)),
    "revoke": (Action.REVOKE_GRANT, "RightsServicer.RevokeGrant", (GrantStatus.ACTIVE, GrantStatus.SUSPENDED)),
}
NOTICES = {"suspend": "grants.suspended", "resume": "grants.resumed", "revoke": "grants.revoked"}


async def _list(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    status = request.query_params.get("status", "")
    if status and status not in STATUSES:
        raise errors.InvalidArgument.of([errors.FieldViolation("status", f"{status[:40]!r} is not a grant status")])
    query = GrantFilter(status=GrantStatus(status) if status else None)
    token = request.query_params.get("page", "")
    rights = console.services.rights
    page = await console.call(viewer, "RightsServicer.ListGrants", rights.list_grants, console.page_size, token, query)
    return console.render(
        request,
        viewer,
        "grants/list.html",
        grants=page.items,
        status=status,
        statuses=STATUSES,
        next_token=page.next_page_token,
    )


async def _load(console: Console, viewer: Viewer, grant_id: str) -> tuple[Grant, Resource]:
    grant = await console.call(viewer, "RightsServicer.GetGrant", console.services.rights.get_grant, grant_id)
    catalog = console.services.catalog
    resource = await console.call(viewer, "CatalogServicer.GetResource", catalog.get, grant.resource_code, 0)
    return grant, resource


def controls_of(viewer: Viewer, grant: Grant, owner: str) -> list[str]:
    """The changes this viewer may make to this grant now (its state allowing them)."""
    return [
        name for name, (action, _, sources) in CHANGES.items() if grant.status in sources and viewer.may(action, owner)
    ]


async def _show(request: Request, status_code: int = 200, error: str = "", typed: Any = None) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    grant, resource = await _load(console, viewer, request.path_params["id"])
    return console.render(
        request,
        viewer,
        "grants/grant.html",
        status_code=status_code,
        grant=grant,
        resource=resource,
        controls=controls_of(viewer, grant, resource.spec.department_code),
        error=error,
        typed=typed or {},
    )


async def _grant_page(request: Request) -> Response:
    return await _show(request)


async def _change(request: Request) -> Response:
    change = request.path_params["change"]
    if change not in CHANGES:
        raise errors.NotFound("grant change", change[:40])
    action, where, _ = CHANGES[change]
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, where)
    await console.require(viewer, action, where, f"{change} grants")
    grant_id = request.path_params["id"]
    rights = console.services.rights
    try:
        await console.call(viewer, where, rights.change_grant, grant_id, action, form.get("reason"))
    except errors.PermissionDenied:
        raise  # the person is refused, not what they typed: the error page, with its audit record
    except errors.ExchangeError as e:
        typed = {"change": change, "reason": form.get("reason")}
        return await _show(request, status_code_of(e), console.error_text(request, e), typed)
    return see_other(f"/grants/{grant_id}", NOTICES[change])


def routes() -> list[BaseRoute]:
    return [
        Route("/grants", _list, methods=["GET"]),
        Route("/grants/{id}", _grant_page, methods=["GET"]),
        Route("/grants/{id}/{change}", _change, methods=["POST"]),
    ]
