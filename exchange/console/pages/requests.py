"""A consumer department's share requests: apply for a catalog entry, follow the department's requests
(status, due date in working days, overdue), read one with its history and decision, dispute a refusal.

Every change goes through the rights service as the signed-in person, under the name of the gRPC call
that does the same (a refusal is recorded alike). A refused form is shown again as it was typed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages.catalog import known, lookup, names
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.models import (
    Application,
    Page,
    Principal,
    ShareRequest,
    ShareRequestStatus,
    System,
    home_grant_expired,
)
from exchange.store.rights import RequestFilter
from policy import Action

# The most of a department's systems offered on the application form.
SYSTEMS_SHOWN = 200
# The period the form suggests (the hub refuses one longer than its limit, with the limit).
SUGGESTED_DAYS = 365
_STATUS_CODES: tuple[tuple[type[errors.ExchangeError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
)


def status_of(error: errors.ExchangeError) -> int:
    """The HTTP status a refused form is shown again with."""
    return next((code for kind, code in _STATUS_CODES if isinstance(error, kind)), 409)


@dataclass(frozen=True)
class Shown:
    """A request as a page shows it: overdue or not, and why its due date is an estimate, if it is; for one
    homed at another hub, whether its grant there has passed its end date."""

    request: ShareRequest
    overdue: bool
    due_note: str
    grant_expired: bool = False


def _shown(console: Console, r: ShareRequest, today: dt.date) -> Shown:
    """As ListShareRequests answers: overdue while pending past its due date; a due-date note while pending."""
    note = ""
    if r.status is ShareRequestStatus.PENDING:
        note = console.services.calendar.due_note(r.created_at.astimezone(dt.UTC).date(), r.due)
    return Shown(r, r.status is ShareRequestStatus.PENDING and r.due < today, note, home_grant_expired(r, today))


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# My requests


async def _list(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(
        viewer, Action.APPLY_FOR_DATA, "RightsServicer.ListShareRequests", "follow the department's requests"
    )
    status_text = request.query_params.get("status", "")
    statuses = [s.value for s in ShareRequestStatus]
    status = ShareRequestStatus(status_text) if status_text in statuses else None
    query = RequestFilter(statuses=(status,) if status else ())
    page, _ = await console.call(
        viewer,
        "RightsServicer.ListShareRequests",
        console.services.rights.list_requests,
        console.page_size,
        request.query_params.get("page", ""),
        query,
        view="mine",
        overdue_only=False,
    )
    today = _today()
    rows = [_shown(console, r, today) for r in page.items]
    return console.render(
        request,
        viewer,
        "requests/list.html",
        rows=rows,
        names=await names(console, viewer, {r.application.resource_code for r in page.items}),
        next_token=page.next_page_token,
        statuses=statuses,
        status=status.value if status else "",
    )


# Applying


def _date(out: list[errors.FieldViolation], path: str, text: str) -> dt.date | None:
    if not text:
        out.append(errors.FieldViolation(path, "is required"))
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        out.append(errors.FieldViolation(path, f"{text[:40]!r} is not a date (YYYY-MM-DD)"))
        return None


def application_of(form: Form) -> Application:
    """The application the form asks for, read as Apply reads its message (dates required)."""
    out: list[errors.FieldViolation] = []
    start = _date(out, "request.start_date", form.get("start"))
    end = _date(out, "request.end_date", form.get("end"))
    calls_text = form.get("daily_calls") or "0"
    if not calls_text.isdigit() or len(calls_text) > 12:
        out.append(errors.FieldViolation("request.expected_daily_calls", f"{calls_text[:20]!r} is not a number"))
    if out:
        raise errors.InvalidArgument.of(out)
    assert start is not None and end is not None
    return Application(
        resource_code=form.get("resource"),
        consumer_department_code="",
        system_codes=tuple(form.getlist("systems")),
        purpose=form.get("purpose"),
        legal_basis=form.get("legal_basis"),
        fields=tuple(form.getlist("fields")),
        start=start,
        end=end,
        expected_daily_calls=int(calls_text),
    )


async def _systems(console: Console, viewer: Viewer) -> list[System]:
    """The person's department's systems: those that may be named to use the data."""
    page: Page[System] = await console.run(
        lambda: console.services.registry.list_systems(
            viewer.principal, SYSTEMS_SHOWN, "", viewer.principal.department_code
        )
    )
    return page.items


async def _apply_form(
    request: Request,
    console: Console,
    viewer: Viewer,
    code: str,
    typed: dict[str, Any],
    *,
    message: str = "",
    violations: list[errors.FieldViolation] | None = None,
    status_code: int = 200,
) -> Response:
    listed = await lookup(console, viewer, code)
    return console.render(
        request,
        viewer,
        "requests/apply.html",
        status_code=status_code,
        resource=listed.resource,
        home=listed.home,
        systems=await _systems(console, viewer),
        typed=typed,
        message=message,
        violations=violations or [],
    )


async def _new(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.APPLY_FOR_DATA, "RightsServicer.Apply", "apply for data")
    code = request.query_params.get("resource", "").strip()
    if not code:
        raise errors.InvalidArgument.of([errors.FieldViolation("resource", "choose an entry of the catalog")])
    today = _today()
    typed = {**_blank(), "start": today.isoformat(), "end": (today + dt.timedelta(days=SUGGESTED_DAYS)).isoformat()}
    return await _apply_form(request, console, viewer, code, typed)


def _blank() -> dict[str, Any]:
    """The application form's values before anything is typed."""
    return {"start": "", "end": "", "daily_calls": "", "purpose": "", "legal_basis": "", "fields": [], "systems": []}


async def _submit(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, "RightsServicer.Apply")

    def apply(actor: Principal) -> ShareRequest:
        return console.services.rights.apply(actor, application_of(form))

    try:
        created = await console.call(viewer, "RightsServicer.Apply", apply)
    except errors.ExchangeError as e:
        if isinstance(e, errors.PermissionDenied):
            raise  # a person who may not apply gets the refusal page, not a form to fill again
        typed: dict[str, Any] = {
            **_blank(),
            **form.values(),
            "fields": form.getlist("fields"),
            "systems": form.getlist("systems"),
        }
        return await _apply_form(
            request,
            console,
            viewer,
            form.get("resource"),
            typed,
            message=console.error_text(request, e),
            violations=list(getattr(e, "violations", [])),
            status_code=status_of(e),
        )
    return see_other(f"/requests/{created.id}", "requests.applied")


# One request


async def _request_page(
    request: Request, console: Console, viewer: Viewer, found: ShareRequest, **extra: Any
) -> Response:
    entry = (await known(console, viewer, {found.application.resource_code})).get(found.application.resource_code)
    home = entry.home if entry is not None else None
    consumer = found.application.consumer_department_code
    department = await console.run(lambda: console.services.registry.get_department(viewer.principal, consumer))
    may_dispute = _disputable(found) and viewer.may(Action.DISPUTE_REFUSAL, found.application.consumer_department_code)
    values: dict[str, Any] = {"message": "", "violations": [], "typed_reason": "", **extra}
    return console.render(
        request,
        viewer,
        "requests/request.html",
        shown=_shown(console, found, _today()),
        r=found,
        app=found.application,
        resource_name=entry.resource.spec.name if entry is not None else "",
        # The home hub's name, where the entry is known here (a request of another hub names only its code).
        home_name=home.name if home is not None and found.cross_hub and home.code == found.cross_hub.home_hub else "",
        department=department,
        masks=dict(found.masks),
        may_dispute=may_dispute,
        **values,
    )


def _disputable(found: ShareRequest) -> bool:
    """A refusal not yet disputed; one decided at another hub only once it reached there (its id known)."""
    link = found.cross_hub
    if link is None or not link.home_hub:
        return found.status is ShareRequestStatus.REFUSED
    return found.status is ShareRequestStatus.REFUSED and not link.dispute and bool(link.home_request_id)


async def _get(console: Console, viewer: Viewer, request_id: str) -> ShareRequest:
    found: ShareRequest = await console.call(
        viewer, "RightsServicer.GetShareRequest", console.services.rights.get_request, request_id
    )
    return found


async def _one(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    found = await _get(console, viewer, request.path_params["id"])
    return await _request_page(request, console, viewer, found)


async def _dispute(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    request_id = request.path_params["id"]
    form = await console.form(request, viewer, "RightsServicer.Dispute")
    reason = form.get("reason")
    try:
        disputed: ShareRequest = await console.call(
            viewer, "RightsServicer.Dispute", console.services.rights.dispute, request_id, reason
        )
    except errors.ExchangeError as e:
        found = await _get(console, viewer, request_id)
        response = await _request_page(
            request,
            console,
            viewer,
            found,
            message=console.error_text(request, e),
            violations=list(getattr(e, "violations", [])),
            typed_reason=reason,
        )
        response.status_code = status_of(e)
        return response
    forwarded = disputed.cross_hub is not None and bool(disputed.cross_hub.home_hub)
    return see_other(f"/requests/{request_id}", "requests.dispute_forwarded" if forwarded else "requests.disputed")


def routes() -> list[BaseRoute]:
    return [
        Route("/requests", _list, methods=["GET"]),
        Route("/requests/new", _new, methods=["GET"]),
        Route("/requests/new", _submit, methods=["POST"]),
        Route("/requests/{id}", _one, methods=["GET"]),
        Route("/requests/{id}/dispute", _dispute, methods=["POST"]),
    ]
