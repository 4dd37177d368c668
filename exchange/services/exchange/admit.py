"""Admit: is the caller a system, and is what it asks well formed? Filters read as their items' types.

Nothing here reads the store: these checks run before any decision, on what the call itself carries.
"""

from __future__ import annotations

from exchange import validation
from exchange.errors import FieldViolation, InvalidArgument, PermissionDenied
from exchange.models import Principal, PrincipalKind, Resource
from exchange.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest, page_request
from exchange.services.exchange.answers import Ask, Call
from exchange.values import BadValue, parse_text

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 5000
MAX_FILTERS = 16
MAX_FILTER_TEXT = 256
MAX_FIELDS = 200


def admit(actor: Principal, ask: Ask, call: Call) -> None:
    """Refuses a caller that is not a system, then every problem of the request at once."""
    if actor.ref.kind is not PrincipalKind.SYSTEM:
        raise PermissionDenied(
            "only registered systems exchange data; people use their department's system", "NOT_A_SYSTEM"
        )
    out: list[FieldViolation] = []
    validation.check_pattern(
        out, "resource_code", ask.resource_code, validation.RESOURCE_CODE, validation.RESOURCE_CODE_FORMAT
    )
    validation.check_text(out, "purpose", ask.purpose, required=True, limit=validation.MAX_NAME)
    _check_filters(out, ask)
    _check_fields(out, ask, call.for_document)
    _check_sizes(out, ask, call)
    validation.raise_if(out)


def _check_filters(out: list[FieldViolation], ask: Ask) -> None:
    if not ask.filters:
        out.append(FieldViolation("filters", "name the record(s) wanted with at least one filter"))
    if len(ask.filters) > MAX_FILTERS:
        out.append(FieldViolation("filters", f"at most {MAX_FILTERS} filters"))
    for name, value in ask.filters.items():
        if len(value) > MAX_FILTER_TEXT or not value.isprintable():
            problem = f"must be printable text of at most {MAX_FILTER_TEXT} characters"
            out.append(FieldViolation(f"filters[{name[:40]}]", problem))


def _check_fields(out: list[FieldViolation], ask: Ask, document: bool) -> None:
    if document and ask.fields:
        out.append(FieldViolation("fields", "a document is fetched whole: name no fields"))
    if not document and not ask.fields:
        out.append(FieldViolation("fields", "name the fields needed (minimum necessary: no wildcard)"))
    if len(ask.fields) > MAX_FIELDS or len(set(ask.fields)) != len(ask.fields):
        out.append(FieldViolation("fields", f"name each field once, at most {MAX_FIELDS}"))


def _check_sizes(out: list[FieldViolation], ask: Ask, call: Call) -> None:
    page = call.page
    if page is not None and not 0 <= page[0] <= MAX_PAGE_SIZE:
        out.append(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"))
    elif page is not None and page[1]:
        after = query_page(ask, page[0], page[1]).after or ""  # a token issued for other filters is refused here
        if not (after.isdigit() and len(after) <= 9):
            out.append(FieldViolation("page_token", "is not a token this hub issued for this query"))
    if not 0 <= call.batch <= MAX_BATCH_SIZE:
        out.append(FieldViolation("batch_size", f"must be between 0 and {MAX_BATCH_SIZE} (0: {DEFAULT_BATCH_SIZE})"))


def query_page(ask: Ask, size: int, token: str) -> PageRequest:
    """A query's page: its size (0: the hub's one default) and where it continues, bound to what was asked."""
    scope: dict[str, object] = {"resource": ask.resource_code, "purpose": ask.purpose, "filters": dict(ask.filters)}
    return page_request(size, token, {**scope, "fields": list(ask.fields)})


def typed_filters(resource: Resource, ask: Ask) -> dict[str, object]:
    """The filters read as their items' types; only declared fields, only filterable items, each checked."""
    items = {i.name: i for i in resource.spec.data_items}
    out: list[FieldViolation] = []
    unknown_fields = [f for f in ask.fields if f not in items]
    if unknown_fields:
        listed = ", ".join(f[:40] for f in unknown_fields[:5])
        out.append(FieldViolation("fields", f"{listed} not in resource {resource.spec.code}"))
    typed: dict[str, object] = {}
    for name, text in ask.filters.items():
        item = items.get(name)
        if item is None or not item.filterable:
            filterable = sorted(n for n, i in items.items() if i.filterable)  # only a refusal lists them
            declared = f"cannot be filtered on; declared filters: {', '.join(filterable) or 'none'}"
            out.append(FieldViolation(f"filters[{name[:40]}]", declared))
            continue
        try:
            typed[name] = parse_text(text, item.type)
        except BadValue as e:
            out.append(FieldViolation(f"filters[{name}]", str(e)))
    if out:
        raise InvalidArgument.of(out)
    return typed
