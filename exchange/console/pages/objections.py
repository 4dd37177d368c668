"""Console pages: objections to shared data — the lists, one objection with its answer and escalate forms,
and the form a consumer raises one with (reached from a catalog entry: /objections/new?resource=CODE).

The objection service decides everything; a refused form is shown again with what was typed and why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages.inbox import status_code_of
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.services.objections import Answer, Raising
from exchange.store.objections import AnswerKind, ObjectionFilter
from policy import HUB_WIDE, Action

VIEWS = ("mine", "for_me", "all")
KINDS = tuple(k.value for k in AnswerKind)


def _default_view(viewer: Viewer) -> str:
    """What a person most likely came for: what awaits them if they answer or watch, else their own."""
    if viewer.may(Action.DECIDE_DISPUTE, HUB_WIDE) or viewer.may(Action.DECIDE_REQUEST):
        return "for_me"
    return "mine"


async def _list(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    view = request.query_params.get("view") or _default_view(viewer)
    overdue = request.query_params.get("overdue") == "1"
    service = console.services.objections
    query = ObjectionFilter(overdue_on=service.today() if overdue else None)
    page, overdue_count = await console.call(
        viewer,
        "ObjectionServicer.ListObjections",
        service.list,
        console.page_size,
        request.query_params.get("page", ""),
        query,
        view=view,
    )
    return console.render(
        request,
        viewer,
        "objections/list.html",
        objections=page.items,
        next_token=page.next_page_token,
        view=view,
        views=VIEWS,
        overdue=overdue,
        overdue_count=overdue_count,
        today=service.today(),
    )


async def _show(
    request: Request, status_code: int = 200, error: str = "", violations: Any = (), **typed: Any
) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    service = console.services.objections
    objection = await console.call(viewer, "ObjectionServicer.GetObjection", service.get, request.path_params["id"])
    unanswered = objection.answered_at is None
    return console.render(
        request,
        viewer,
        "objections/objection.html",
        status_code=status_code,
        o=objection,
        overdue=objection.overdue_on(service.today()),
        answering=unanswered and viewer.may(Action.DECIDE_REQUEST, objection.owner_department),
        escalating=objection.state.value == "open" and viewer.may(Action.DECIDE_DISPUTE, HUB_WIDE),
        kinds=KINDS,
        error=error,
        violations=list(violations),
        typed=typed,
    )


async def _objection(request: Request) -> Response:
    return await _show(request)


def _answer_of(form: Form) -> Answer:
    """The answer form as the service's Answer; a malformed kind or time is refused as the RPC refuses it."""
    out: list[errors.FieldViolation] = []
    kind = form.get("kind")
    if kind not in KINDS:
        out.append(errors.FieldViolation("kind", f"one of {', '.join(KINDS)}"))
    effective: dt.datetime | None = None
    if form.get("effective"):
        try:
            effective = dt.datetime.fromisoformat(form.get("effective")).replace(tzinfo=dt.UTC)
        except ValueError:
            out.append(errors.FieldViolation("effective_time", "a time YYYY-MM-DDTHH:MM (UTC)"))
    if out:
        raise errors.InvalidArgument.of(out)
    return Answer(AnswerKind(kind), form.get("text").strip(), effective)


async def _post(request: Request, where: str, notice: str) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, where)
    objection_id = request.path_params["id"]
    service = console.services.objections
    try:
        if where.endswith("AnswerObjection"):
            await console.run(lambda: service.require_answerer(viewer.principal))
            await console.call(viewer, where, service.answer, objection_id, _answer_of(form))
        else:
            await console.call(viewer, where, service.escalate, objection_id, form.get("reason").strip())
    except errors.ExchangeError as e:
        await console.record_refusal(viewer, where, e)
        if isinstance(e, errors.PermissionDenied):
            raise
        message = console.error_text(request, e)
        return await _show(request, status_code_of(e), message, getattr(e, "violations", []), **form.values())
    return see_other(f"/objections/{objection_id}", notice)


async def _answer(request: Request) -> Response:
    return await _post(request, "ObjectionServicer.AnswerObjection", "objections.answered")


async def _escalate(request: Request) -> Response:
    return await _post(request, "ObjectionServicer.EscalateObjection", "objections.escalated")


async def _new(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.APPLY_FOR_DATA, "ObjectionServicer.RaiseObjection", "raise objections")
    typed = {"resource": request.query_params.get("resource", ""), "exchange": request.query_params.get("exchange", "")}
    return _raise_form(request, console, viewer, typed, [])


def _raise_form(
    request: Request, console: Console, viewer: Viewer, typed: dict[str, str], fields: list[str], **more: Any
) -> Response:
    return console.render(
        request, viewer, "objections/new.html", typed=typed, chosen=fields, error="", violations=[], **more
    )


async def _raise(request: Request) -> Response:
    where = "ObjectionServicer.RaiseObjection"
    console = Console.of(request)
    viewer = await console.viewer(request)
    form = await console.form(request, viewer, where)
    await console.require(viewer, Action.APPLY_FOR_DATA, where, "raise objections")
    fields = [f.strip() for f in form.get("fields").replace("，", ",").split(",") if f.strip()]
    raising = Raising(
        resource_code=form.get("resource").strip(),
        fields=tuple(fields),
        reason=form.get("reason").strip(),
        exchange_id=form.get("exchange").strip(),
        received_sha256=form.get("received_sha256").strip().lower(),
    )
    try:
        raised = await console.call(viewer, where, console.services.objections.raise_objection, raising)
    except errors.ExchangeError as e:
        if isinstance(e, errors.PermissionDenied) and e.reason != "EXCHANGE_NOT_RECEIVED":
            raise
        return console.render(
            request,
            viewer,
            "objections/new.html",
            status_code=status_code_of(e),
            typed=form.values(),
            chosen=fields,
            error=console.error_text(request, e),
            violations=list(getattr(e, "violations", [])),
        )
    return see_other(f"/objections/{raised.id}", "objections.raised")


def routes() -> list[BaseRoute]:
    return [
        Route("/objections", _list, methods=["GET"]),
        Route("/objections/new", _new, methods=["GET"]),
        Route("/objections/new", _raise, methods=["POST"]),
        Route("/objections/{id}", _objection, methods=["GET"]),
        Route("/objections/{id}/answer", _answer, methods=["POST"]),
        Route("/objections/{id}/escalate", _escalate, methods=["POST"]),
    ]


async def for_entry(console: Console, viewer: Viewer, code: str) -> dict[str, Any]:
    """A catalog entry's objections with their state (first page), so other consumers see data in doubt."""
    service = console.services.objections
    page, _ = await console.call(
        viewer, "ObjectionServicer.ListObjections", service.list, console.page_size, "", ObjectionFilter(code)
    )
    return {"objections": page.items, "objections_today": service.today()}
