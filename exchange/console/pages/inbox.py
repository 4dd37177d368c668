"""The owner steward's inbox: share requests for the department's data, and the page to decide one.

The due date is the 10-working-day answer rule's: the inbox shows it with the working days left on
the hub's calendar (and its note when the calendar's word differs), and marks and counts the overdue.
The request page shows the request in full beside the entry's data items; approving chooses the items
granted (a subset of those asked), a mask per item, an end date and the masked items the consumer may
verify. The rights service decides: the page only shows its answer, keeping what was typed when refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.models import MaskKind, Resource, ShareRequest, ShareRequestStatus
from exchange.services.rights import Approval
from exchange.store.rights import RequestFilter
from policy import Action

STATUSES = tuple(s.value for s in ShareRequestStatus)
MASK_KINDS = tuple(k.value for k in MaskKind)
_STATUS_CODES: tuple[tuple[type[errors.ExchangeError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
)


def status_code_of(error: errors.ExchangeError) -> int:
    """The HTTP status a refused form is shown again with."""
    return next((code for kind, code in _STATUS_CODES if isinstance(error, kind)), 409)


@dataclass(frozen=True)
class Due:
    """A request's answer deadline as the inbox shows it."""

    day: dt.date
    left: int
    overdue: bool
    note: str


def due_of(console: Console, request: ShareRequest, today: dt.date) -> Due:
    calendar = console.services.calendar
    awaiting = request.status is ShareRequestStatus.PENDING
    note = calendar.due_note(request.created_at.astimezone(dt.UTC).date(), request.due) if awaiting else ""
    left = calendar.working_days_between(today, request.due)
    return Due(request.due, left, awaiting and request.due < today, note)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def _inbox(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    where = "RightsServicer.ListShareRequests"
    await console.require(viewer, Action.DECIDE_REQUEST, where, "see share requests awaiting a decision")
    status = request.query_params.get("status", ShareRequestStatus.PENDING.value)
    if status and status not in STATUSES:
        raise errors.InvalidArgument.of([errors.FieldViolation("status", f"{status[:40]!r} is not a request status")])
    own = viewer.principal.department_code
    if status == ShareRequestStatus.PENDING.value:
        view, query = "for_me", RequestFilter()
    else:
        statuses = (ShareRequestStatus(status),) if status else ()
        view, query = "all", RequestFilter(owner_department=own, statuses=statuses)
    token = request.query_params.get("page", "")
    page, overdue = await console.call(
        viewer,
        where,
        console.services.rights.list_requests,
        console.page_size,
        token,
        query,
        view=view,
        overdue_only=False,
    )
    today = utc_today()
    rows = [(r, due_of(console, r, today)) for r in page.items]
    return console.render(
        request,
        viewer,
        "inbox/list.html",
        rows=rows,
        overdue=overdue,
        status=status,
        statuses=STATUSES,
        next_token=page.next_page_token,
    )


async def load_request(console: Console, viewer: Viewer, request_id: str) -> tuple[ShareRequest, Resource]:
    """The share request and the catalog entry it asks of, as the viewer may read them."""
    share = await console.call(
        viewer, "RightsServicer.GetShareRequest", console.services.rights.get_request, request_id
    )
    code = share.application.resource_code
    resource = await console.call(viewer, "CatalogServicer.GetResource", console.services.catalog.get, code, 0)
    return share, resource


def _initial_terms(share: ShareRequest) -> dict[str, Any]:
    """The approve form as first shown: every item asked, no masks, the end asked for."""
    app = share.application
    return {"typed": {"end_date": app.end.isoformat()}, "chosen": list(app.fields), "verify": []}


async def _show(
    request: Request, status_code: int = 200, error: str = "", violations: Any = (), **typed: Any
) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(
        viewer, Action.DECIDE_REQUEST, "RightsServicer.GetShareRequest", "open a share request to decide"
    )
    share, resource = await load_request(console, viewer, request.path_params["id"])
    terms = typed or _initial_terms(share)
    deciding = share.status is ShareRequestStatus.PENDING and viewer.may(
        Action.DECIDE_REQUEST, resource.spec.department_code
    )
    return console.render(
        request,
        viewer,
        "inbox/request.html",
        status_code=status_code,
        share=share,
        resource=resource,
        due=due_of(console, share, utc_today()),
        deciding=deciding,
        masks=MASK_KINDS,
        error=error,
        violations=list(violations),
        **terms,
    )


async def _request_page(request: Request) -> Response:
    return await _show(request)


def approval_of(form: Form) -> Approval:
    """The approve form as the service's Approval (``mask.<item>`` selects, "none" meaning unmasked); a
    malformed date or mask kind is refused as the RPC refuses it. The service checks the terms themselves."""
    out: list[errors.FieldViolation] = []
    end: dt.date | None = None
    if form.get("end_date"):
        try:
            end = dt.date.fromisoformat(form.get("end_date"))
        except ValueError:
            out.append(errors.FieldViolation("end_date", "a date YYYY-MM-DD"))
    masks: list[tuple[str, MaskKind]] = []
    for name, kind in form.values().items():
        item = name.removeprefix("mask.")
        if item == name or kind == MaskKind.NONE.value:
            continue
        if kind not in MASK_KINDS:
            out.append(errors.FieldViolation(f"masks[{item[:40]}].mask", f"{kind[:40]!r} is not a mask kind"))
        else:
            masks.append((item, MaskKind(kind)))
    if out:
        raise errors.InvalidArgument.of(out)
    fields = tuple(form.getlist("fields"))
    return Approval(fields, end, tuple(masks), form.get("reason"), tuple(form.getlist("verify_masked")))


async def _decide(request: Request, where: str, doing: str) -> tuple[Console, Viewer, Form]:
    """The posted decision form, from a person who may decide requests somewhere (refused and recorded if not)."""
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, where)
    await console.require(viewer, Action.DECIDE_REQUEST, where, doing)
    return console, viewer, form


async def _approve(request: Request) -> Response:
    where = "RightsServicer.Approve"
    console, viewer, form = await _decide(request, where, "approve share requests")
    request_id = request.path_params["id"]
    typed = {"typed": form.values(), "chosen": form.getlist("fields"), "verify": form.getlist("verify_masked")}
    try:
        approval = approval_of(form)
        await console.call(viewer, where, console.services.rights.approve, request_id, approval)
    except errors.ExchangeError as e:
        await console.record_refusal(viewer, where, e)
        return await _refused(request, e, **typed)
    return see_other(f"/inbox/{request_id}", "inbox.approved")


async def _refuse(request: Request) -> Response:
    where = "RightsServicer.Refuse"
    console, viewer, form = await _decide(request, where, "refuse share requests")
    request_id = request.path_params["id"]
    try:
        await console.call(viewer, where, console.services.rights.refuse, request_id, form.get("reason"))
    except errors.ExchangeError as e:
        typed = {"typed": {"refuse_reason": form.get("reason")}, "chosen": [], "verify": []}
        return await _refused(request, e, **typed)
    return see_other(f"/inbox/{request_id}", "inbox.refused")


async def _refused(request: Request, error: errors.ExchangeError, **typed: Any) -> Response:
    """The decision page again with what was typed and why it was refused; a refusal of the person
    (not of what they typed) is the error page, with its audit record."""
    if isinstance(error, errors.PermissionDenied):
        raise error
    console = Console.of(request)
    violations = getattr(error, "violations", [])
    message = console.error_text(request, error)
    return await _show(request, status_code_of(error), message, violations, **typed)


def routes() -> list[BaseRoute]:
    return [
        Route("/inbox", _inbox, methods=["GET"]),
        Route("/inbox/{id}", _request_page, methods=["GET"]),
        Route("/inbox/{id}/approve", _approve, methods=["POST"]),
        Route("/inbox/{id}/refuse", _refuse, methods=["POST"]),
    ]
