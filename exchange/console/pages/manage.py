"""The share manager's desk: approved requests awaiting a grant, disputes to decide, overdue requests.

Each list pages on its own. A request's page (/manage/{id}) shows it in full, with the form its state
calls for: issue the grant (daily quota, rate, reason) on an approved request, or decide a dispute
(grant, or uphold the refusal). The rights service decides; a refused form is shown again as typed.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages.inbox import due_of, load_request, status_code_of, utc_today
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.models import ShareRequest, ShareRequestStatus
from exchange.store.rights import RequestFilter
from policy import Action

LIST = "RightsServicer.ListShareRequests"
# The three lists: (its page parameter, its filter, overdue only).
SECTIONS = (
    ("awaiting", RequestFilter(statuses=(ShareRequestStatus.APPROVED,)), False),
    ("disputes", RequestFilter(statuses=(ShareRequestStatus.DISPUTED,)), False),
    ("overdue", RequestFilter(), True),
)


async def _section(
    console: Console, viewer: Viewer, request: Request, section: tuple[str, RequestFilter, bool]
) -> dict[str, Any]:
    """One of the desk's lists, at the page its own parameter names."""
    name, f, late = section
    token = request.query_params.get(f"page_{name}", "")
    rights = console.services.rights
    page, overdue = await console.call(
        viewer, LIST, rights.list_requests, console.page_size, token, f, view="all", overdue_only=late
    )
    today = utc_today()
    return {
        "name": name,
        "rows": [(r, due_of(console, r, today)) for r in page.items],
        "next_token": page.next_page_token,
        "overdue": overdue,
    }


async def _desk(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.ISSUE_GRANT, LIST, "see requests awaiting the share manager")
    sections = [await _section(console, viewer, request, s) for s in SECTIONS]
    return console.render(request, viewer, "manage/list.html", sections=sections)


async def _show(
    request: Request, status_code: int = 200, error: str = "", violations: Any = (), **typed: Any
) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.ISSUE_GRANT, "RightsServicer.GetShareRequest", "open a request to grant")
    share, resource = await load_request(console, viewer, request.path_params["id"])
    return console.render(
        request,
        viewer,
        "manage/request.html",
        status_code=status_code,
        share=share,
        resource=resource,
        due=due_of(console, share, utc_today()),
        error=error,
        violations=list(violations),
        typed=typed.get("typed", {}),
        granting=_form_of(viewer, share),
    )


def _form_of(viewer: Viewer, share: ShareRequest) -> str:
    """Which form the request's state calls for, if the viewer may use it: "grant", "dispute" or none."""
    if share.status is ShareRequestStatus.APPROVED and viewer.may_anywhere(Action.ISSUE_GRANT):
        return "grant"
    if share.status is ShareRequestStatus.DISPUTED and viewer.may_anywhere(Action.DECIDE_DISPUTE):
        return "dispute"
    return ""


async def _request_page(request: Request) -> Response:
    return await _show(request)


def limits_of(form: Form) -> tuple[int, int]:
    """The daily quota and rate typed (blank: 0, the service's default); a non-number is refused."""
    out: list[errors.FieldViolation] = []
    values = []
    for name in ("daily_quota", "rate_per_second"):
        text = form.get(name) or "0"
        if not text.isdigit() or len(text) > 12:
            out.append(errors.FieldViolation(name, f"{text[:20]!r} is not a whole number"))
            values.append(0)
        else:
            values.append(int(text))
    if out:
        raise errors.InvalidArgument.of(out)
    return values[0], values[1]


async def _posted(request: Request, where: str, action: Action, doing: str) -> tuple[Console, Viewer, Form]:
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, where)
    await console.require(viewer, action, where, doing)
    return console, viewer, form


async def _grant(request: Request) -> Response:
    where = "RightsServicer.IssueGrant"
    console, viewer, form = await _posted(request, where, Action.ISSUE_GRANT, "issue grants")
    request_id = request.path_params["id"]
    try:
        quota, rate = limits_of(form)
        rights = console.services.rights
        await console.call(viewer, where, rights.issue_grant, request_id, quota, rate, form.get("reason"))
    except errors.ExchangeError as e:
        return await _refused(request, viewer, where, e, form)
    return see_other(f"/manage/{request_id}", "manage.granted")


async def _dispute(request: Request) -> Response:
    where = "RightsServicer.DecideDispute"
    console, viewer, form = await _posted(request, where, Action.DECIDE_DISPUTE, "decide disputes")
    request_id = request.path_params["id"]
    decision = form.get("decision")
    try:
        if decision not in ("grant", "uphold"):
            raise errors.InvalidArgument.of([errors.FieldViolation("decision", "choose grant or uphold")])
        quota, rate = limits_of(form)
        await console.call(
            viewer,
            where,
            console.services.rights.decide_dispute,
            request_id,
            grant=decision == "grant",
            reason=form.get("reason"),
            quota=quota,
            rate=rate,
        )
    except errors.ExchangeError as e:
        return await _refused(request, viewer, where, e, form)
    return see_other(f"/manage/{request_id}", "manage.decided")


async def _refused(request: Request, viewer: Viewer, where: str, error: errors.ExchangeError, form: Form) -> Response:
    console = Console.of(request)
    await console.record_refusal(viewer, where, error)
    if isinstance(error, errors.PermissionDenied):
        raise error  # the person is refused, not what they typed: the error page, with its audit record
    message = console.error_text(request, error)
    violations = getattr(error, "violations", [])
    return await _show(request, status_code_of(error), message, violations, typed=form.values())


def routes() -> list[BaseRoute]:
    return [
        Route("/manage", _desk, methods=["GET"]),
        Route("/manage/{id}", _request_page, methods=["GET"]),
        Route("/manage/{id}/grant", _grant, methods=["POST"]),
        Route("/manage/{id}/dispute", _dispute, methods=["POST"]),
    ]
