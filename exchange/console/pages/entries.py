"""The owner steward's catalog entries: the department's list, writing an entry, and its status changes.

An entry's code holds a "/" (``10101/350200000001``), so it travels as the query parameter ``code`` (or a
form field), never as a path segment. The form mirrors the CreateResource message: a refused form comes
back as typed, with the service's reason; data items are numbered rows (``item-<n>-<field>``), blank
rows ignored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.pages.admin import choice, refused_status
from exchange.console.web import Console, Form, Viewer, see_other
from exchange.models import (
    DataItem,
    FieldType,
    Principal,
    Resource,
    ResourceChange,
    ResourceSpec,
    ResourceStatus,
    SensitivityGrade,
    ShareMethod,
    ShareType,
    UpdateCycle,
)
from exchange.store.catalog import ResourceFilter
from exchange.validation import raise_if
from policy import Action

CATALOG = "CatalogServicer."
BLANK_ROWS = 8  # empty data item rows a form offers beyond the entry's own
MAX_ROWS = 80  # rows a form may post (the console reads at most 500 fields)
ITEM_FIELDS = ("name", "title", "type", "description", "sensitivity", "pi", "filterable")
CHANGES = {
    "publish": (ResourceChange.PUBLISHED, "PublishResource"),
    "suspend": (ResourceChange.SUSPENDED, "SuspendResource"),
    "retire": (ResourceChange.RETIRED, "RetireResource"),
}


async def _steward(request: Request, where: str, doing: str) -> tuple[Console, Viewer]:
    """The console and the signed-in person, who must write some department's entries (refused otherwise)."""
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.WRITE_CATALOG, CATALOG + where, doing)
    return console, viewer


# The list


async def _list(request: Request) -> Response:
    console, viewer = await _steward(request, "ListResources", "write catalog entries")
    status_text = request.query_params.get("status", "")
    token = request.query_params.get("page", "")
    catalog = console.services.catalog

    def listed(actor: Principal) -> Any:
        out: list[errors.FieldViolation] = []
        status = choice(ResourceStatus, status_text, "status", out, required=False) if status_text else None
        raise_if(out)
        query = ResourceFilter(department_code=actor.department_code)
        return catalog.list(actor, console.page_size, token, query, status)

    page = await console.call(viewer, CATALOG + "ListResources", listed)
    return console.render(
        request,
        viewer,
        "entries/list.html",
        page=page,
        status=status_text,
        statuses=[s.value for s in ResourceStatus],
        code_of=lambda r: quote(r.spec.code, safe=""),
    )


# The form: typed values <-> an entry


def _values_of(resource: Resource) -> dict[str, str]:
    """An entry as the form's values (what an edit starts from)."""
    spec = resource.spec
    values = {
        "code": spec.code,
        "name": spec.name,
        "summary": spec.summary,
        "classification": spec.classification,
        "format": spec.format,
        "share_type": spec.share_type.value,
        "share_method": spec.share_method.value,
        "update_cycle": spec.update_cycle.value,
        "share_conditions": spec.share_conditions,
        "legal_basis": spec.legal_basis,
        "open_conditions": spec.open_conditions,
        "related": "\n".join(spec.related_resource_codes),
        "expected_version": str(resource.version),
    }
    if spec.open_to_public:
        values["open_to_public"] = "on"
    for n, item in enumerate(spec.data_items):
        values.update(
            {
                f"item-{n}-name": item.name,
                f"item-{n}-title": item.title,
                f"item-{n}-type": item.type.value,
                f"item-{n}-description": item.description,
                f"item-{n}-sensitivity": item.sensitivity.value,
            }
        )
        values.update({f"item-{n}-pi": "on"} if item.personal_information else {})
        values.update({f"item-{n}-filterable": "on"} if item.filterable else {})
    return values


def _rows_in(values: dict[str, str]) -> int:
    """How many item rows the form shows: every row the values fill, and blank ones after them."""
    filled = [int(k.split("-")[1]) for k in values if k.startswith("item-") and k.split("-")[1].isdigit()]
    return min(MAX_ROWS, max(filled, default=-1) + 1 + BLANK_ROWS)


def _item_of(form: Form, n: int, path: str, out: list[errors.FieldViolation]) -> DataItem:
    def field(name: str) -> str:
        return form.get(f"item-{n}-{name}")

    return DataItem(
        name=field("name"),
        title=field("title"),
        type=choice(FieldType, field("type"), f"{path}.type", out),
        description=field("description"),
        sensitivity=choice(SensitivityGrade, field("sensitivity"), f"{path}.sensitivity", out),
        personal_information=field("pi") == "on",
        filterable=field("filterable") == "on",
    )


def _spec_of(form: Form, department: str, code: str = "") -> ResourceSpec:
    """The entry a form describes (violations of unknown choices raised together, as the gRPC handler does)."""
    out: list[errors.FieldViolation] = []
    filled = [n for n in range(MAX_ROWS) if any(form.get(f"item-{n}-{f}") for f in ("name", "title", "description"))]
    items = tuple(_item_of(form, n, f"resource.data_items[{i}]", out) for i, n in enumerate(filled))
    spec = ResourceSpec(
        code=code or form.get("code"),
        name=form.get("name"),
        department_code=department,
        data_items=items,
        share_type=choice(ShareType, form.get("share_type"), "resource.share_type", out),
        share_method=choice(ShareMethod, form.get("share_method"), "resource.share_method", out),
        update_cycle=choice(UpdateCycle, form.get("update_cycle"), "resource.update_cycle", out),
        summary=form.get("summary"),
        classification=form.get("classification"),
        format=form.get("format"),
        share_conditions=form.get("share_conditions"),
        legal_basis=form.get("legal_basis"),
        open_to_public=form.get("open_to_public") == "on",
        open_conditions=form.get("open_conditions"),
        related_resource_codes=tuple(c for c in form.get("related").replace(",", " ").split() if c),
    )
    raise_if(out)
    return spec


def _form_page(
    request: Request,
    console: Console,
    viewer: Viewer,
    values: dict[str, str],
    *,
    resource: Resource | None = None,
    error: errors.ExchangeError | None = None,
) -> Response:
    """The entry form (new when ``resource`` is None), filled with ``values``, with a refusal if any."""
    return console.render(
        request,
        viewer,
        "entries/form.html",
        refused_status(error) if error else 200,
        values=values,
        resource=resource,
        error=console.error_text(request, error) if error else "",
        violations=getattr(error, "violations", []),
        rows=_rows_in(values),
        choices={
            "share_type": [s.value for s in ShareType],
            "share_method": [s.value for s in ShareMethod],
            "update_cycle": [s.value for s in UpdateCycle],
            "type": [s.value for s in FieldType],
            "sensitivity": [s.value for s in SensitivityGrade],
        },
        changes=_changes_for(resource),
    )


def _changes_for(resource: Resource | None) -> list[str]:
    """The status changes an entry in its state may take (the service decides; this only offers them)."""
    if resource is None or resource.status is ResourceStatus.RETIRED:
        return []
    offered = {
        ResourceStatus.DRAFT: ["publish"],
        ResourceStatus.PUBLISHED: ["suspend"],
        ResourceStatus.SUSPENDED: ["publish"],
    }[resource.status]
    return [*offered, "retire"]


def _edit_url(code: str) -> str:
    return "/entries/edit?code=" + quote(code, safe="")


# Writing


async def _new(request: Request) -> Response:
    console, viewer = await _steward(request, "CreateResource", "create catalog entries")
    return _form_page(request, console, viewer, {})


async def _create(request: Request) -> Response:
    where = CATALOG + "CreateResource"
    console, viewer = await _steward(request, "CreateResource", "create catalog entries")
    form = await console.form(request, viewer, where)
    catalog = console.services.catalog
    publish = form.get("publish") == "yes"

    def create(actor: Principal) -> Resource:
        return catalog.create(actor, _spec_of(form, actor.department_code), publish, form.get("reason"))

    try:
        created = await console.call(viewer, where, create)
    except errors.ExchangeError as e:
        return _form_page(request, console, viewer, form.values(), error=e)
    return see_other(_edit_url(created.spec.code), "entries.published" if publish else "entries.drafted")


async def _current(console: Console, viewer: Viewer, code: str) -> Resource:
    return await console.call(viewer, CATALOG + "GetResource", console.services.catalog.get, code, 0)


async def _edit(request: Request) -> Response:
    console, viewer = await _steward(request, "UpdateResource", "update catalog entries")
    resource = await _current(console, viewer, request.query_params.get("code", "").strip())
    return _form_page(request, console, viewer, _values_of(resource), resource=resource)


async def _update(request: Request) -> Response:
    where = CATALOG + "UpdateResource"
    console, viewer = await _steward(request, "UpdateResource", "update catalog entries")
    form = await console.form(request, viewer, where)
    resource = await _current(console, viewer, form.get("original_code"))
    catalog = console.services.catalog

    def update(actor: Principal) -> Resource:
        spec = _spec_of(form, resource.spec.department_code, resource.spec.code)
        return catalog.update(actor, spec, _version(form), form.get("reason"))

    try:
        await console.call(viewer, where, update)
    except errors.ExchangeError as e:
        return _form_page(request, console, viewer, form.values(), resource=resource, error=e)
    return see_other(_edit_url(resource.spec.code), "entries.updated")


def _version(form: Form) -> int:
    text = form.get("expected_version")
    if not text.isdigit() or len(text) > 12:
        raise errors.InvalidArgument.of([errors.FieldViolation("expected_version", "must be the entry's version")])
    return int(text)


async def _change_status(request: Request) -> Response:
    console, viewer = await _steward(request, "SuspendResource", "change catalog entries' status")
    form = await console.form(request, viewer, CATALOG + "SuspendResource")
    picked = CHANGES.get(form.get("change"))
    if picked is None:
        raise errors.InvalidArgument.of([errors.FieldViolation("change", f"must be one of {', '.join(CHANGES)}")])
    change, name = picked
    where = CATALOG + name
    resource = await _current(console, viewer, form.get("code"))
    catalog = console.services.catalog

    def change_status(actor: Principal) -> Resource:
        return catalog.change_status(actor, resource.spec.code, change, _version(form), form.get("reason"))

    try:
        await console.call(viewer, where, change_status)
    except errors.ExchangeError as e:
        values = {**_values_of(resource), "status_reason": form.get("reason")}
        return _form_page(request, console, viewer, values, resource=resource, error=e)
    return see_other(_edit_url(resource.spec.code), f"entries.{change.value}")


def routes() -> list[BaseRoute]:
    return [
        Route("/entries", _list, methods=["GET"]),
        Route("/entries/new", _new, methods=["GET"]),
        Route("/entries/new", _create, methods=["POST"]),
        Route("/entries/edit", _edit, methods=["GET"]),
        Route("/entries/edit", _update, methods=["POST"]),
        Route("/entries/status", _change_status, methods=["POST"]),
    ]
