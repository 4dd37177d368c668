"""The auditor's pages: search the audit log, one record with its proof (checked in the browser), a chart of
exchanges and refusals per day, the signed checkpoints, and an export of the log.

The search form is POSTed (a data subject's ID number never appears in a URL), and so is its paging.
A record page carries the record's canonical text, its inclusion proof and the signed checkpoint as
data: the browser (static/proof.js) checks them against the log's key the auditor pinned, so the
verdict does not depend on trusting this server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from exchange import errors, validation
from exchange.console.web import Console, Form, Viewer
from exchange.services.audit import Tally
from exchange.store.audit import Entry, EntryFilter
from policy import Action

T = TypeVar("T")
SEARCH = "AuditServicer.SearchRecords"
PROOF = "AuditServicer.GetInclusionProof"
EXPORT = "AuditServicer.ExportLog"
# The search form's fields, in the order the form shows them.
FILTERS = ("since", "until", "department", "actor", "resource", "purpose", "outcome", "exchange_id", "data_subject")
OUTCOMES = ("ok", "allowed", "denied", "failed")
LINES_PER_CHUNK = 2000
LONGEST_PERIOD_DAYS = 366
DEFAULT_PERIOD_DAYS = 30


# --- the search ---------------------------------------------------------------------------------------------


def parse_moment(field: str, value: str, *, end: bool = False) -> dt.datetime | None:
    """A time typed in a form (UTC): "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM"; a bare date as an end means that
    whole day. None when empty; InvalidArgument naming the field otherwise."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidArgument.of(
            [errors.FieldViolation(field, "is a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM), in UTC")]
        ) from None
    if end and len(value) == 10:
        moment += dt.timedelta(days=1)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def entry_filter(values: dict[str, str]) -> EntryFilter:
    """The search's filter from the form, checked as the SearchRecords RPC checks its request."""
    validation.validate_key("department", values["department"], "department", optional=True)
    validation.validate_key("resource", values["resource"], "resource", optional=True)
    for name in ("actor", "purpose", "outcome", "exchange_id"):
        validation.validate_free_text(name, values[name], limit=validation.MAX_NAME)
    return EntryFilter(
        since=parse_moment("since", values["since"]),
        until=parse_moment("until", values["until"], end=True),
        department=values["department"] or None,
        actor=values["actor"] or None,
        resource=values["resource"] or None,
        purpose=values["purpose"] or None,
        outcome=values["outcome"] or None,
        exchange_id=values["exchange_id"] or None,
    )


@dataclass(frozen=True)
class Hit:
    """One search result as the table shows it: the entry, its record's fields, whether it can be proved yet."""

    seq: int
    record: dict[str, object]
    pruned: bool
    provable: bool


def hits(entries: Iterable[Entry], head_size: int) -> list[Hit]:
    return [Hit(e.seq, json.loads(e.record) if e.record else {}, e.record is None, e.seq < head_size) for e in entries]


async def _search_form(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_AUDIT, SEARCH, "search the audit log")
    return _search_page(console, request, viewer, dict.fromkeys(FILTERS, ""))


async def _search(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_AUDIT, SEARCH, "search the audit log")
    form = await console.form(request, viewer, SEARCH)
    values = {name: form.get(name) for name in FILTERS}
    try:
        query = await _checked(console, viewer, SEARCH, lambda: entry_filter(values))
        found = await console.call(
            viewer, SEARCH, console.services.auditing.search, console.page_size, form.get("page"), query,
            values["data_subject"],
        )  # fmt: skip
    except errors.ExchangeError as e:
        status = 403 if isinstance(e, errors.PermissionDenied) else 400
        return _search_page(console, request, viewer, values, error=e, status_code=status)
    head_size = found.head.size if found.head else 0
    return _search_page(
        console, request, viewer, values, results=hits(found.page.items, head_size),
        next_token=found.page.next_page_token, searched=True,
    )  # fmt: skip


async def _checked(console: Console, viewer: Viewer, where: str, check: Callable[[], T]) -> T:
    """What ``check`` makes of a form; a refusal recorded as the RPC records its own request's checks."""
    try:
        return check()
    except errors.ExchangeError as e:
        await console.record_refusal(viewer, where, e)
        raise


def _search_page(
    console: Console,
    request: Request,
    viewer: Viewer,
    values: dict[str, str],
    *,
    error: errors.ExchangeError | None = None,
    status_code: int = 200,
    results: list[Hit] | None = None,
    next_token: str = "",
    searched: bool = False,
) -> Response:
    return console.render(
        request,
        viewer,
        "audit/search.html",
        status_code=status_code,
        values=values,
        outcomes=OUTCOMES,
        error=console.error_text(request, error) if error else "",
        violations=getattr(error, "violations", []),
        results=results or [],
        next_token=next_token,
        searched=searched,
    )


# --- one record, with its proof ---------------------------------------------------------------------------


def readable(record: dict[str, object]) -> list[tuple[str, str]]:
    """Every field of a record, in the record's (sorted) order, as text."""
    return [(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in record.items()]


async def _record(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    if not viewer.may_anywhere(Action.READ_AUDIT):
        await console.require(viewer, Action.READ_OWN_AUDIT, PROOF, "read an audit record")
    seq = int(request.path_params["seq"])
    entry, head, proof, size = await console.call(viewer, PROOF, console.services.auditing.inclusion, seq, 0)
    assert head is not None  # asked of the newest checkpoint, which the service found or refused
    data = {"record": entry.record, "index": entry.seq, "size": size, "proof": [h.hex() for h in proof],
            "note": head.note}  # fmt: skip
    return console.render(
        request,
        viewer,
        "audit/record.html",
        entry=entry,
        fields=readable(json.loads(entry.record)) if entry.record else [],
        head=head,
        size=size,
        proof=[h.hex() for h in proof],
        data=data,
        hub_key=console.services.auditing.verifier.encode(),
    )


# --- a chart of exchanges and refusals per day ------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # "a" (exchanges) or "b" (refusals): the CSS class
    label: str  # the tooltip


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class DayChart:
    """A bar chart of two counts per day, laid out for an inline SVG (no script, no style attributes)."""

    width: int
    height: int
    bottom: float
    top_value: int
    bars: list[Bar]
    ticks: list[Tick]
    total_a: int
    total_b: int


CHART_WIDTH, CHART_HEIGHT, LEFT, BOTTOM_ROOM, TOP_ROOM = 760, 240, 44, 22, 12


def day_chart(days: list[dt.date], a: dict[dt.date, int], b: dict[dt.date, int]) -> DayChart:
    """Bars for ``a`` and ``b`` side by side for each of ``days``, scaled to the larger count."""
    top = max([1, *a.values(), *b.values()])
    plot_width = CHART_WIDTH - LEFT - 8
    bottom = CHART_HEIGHT - BOTTOM_ROOM
    scale = (bottom - TOP_ROOM) / top
    slot = plot_width / max(1, len(days))
    bar = max(1.0, slot * 0.38)
    bars: list[Bar] = []
    for i, day in enumerate(days):
        x = LEFT + i * slot + slot * 0.1
        for offset, series, counts in ((0.0, "a", a), (bar, "b", b)):
            n = counts.get(day, 0)
            h = round(n * scale, 1)
            bars.append(Bar(round(x + offset, 1), round(bottom - h, 1), round(bar, 1), h, series, f"{day}: {n}"))
    every = max(1, -(-len(days) // 8))
    ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 1), d.strftime("%m-%d")) for i, d in enumerate(days) if i % every == 0
    ]
    return DayChart(CHART_WIDTH, CHART_HEIGHT, bottom, top, bars, ticks, sum(a.values()), sum(b.values()))


def period(request: Request) -> tuple[dt.date, dt.date]:
    """The chart's first and last day from ``?from=&to=`` (dates, not sensitive), the last 30 days by default."""
    today = dt.datetime.now(dt.UTC).date()

    def day(name: str, default: dt.date) -> dt.date:
        text = request.query_params.get(name, "")
        try:
            return dt.date.fromisoformat(text) if text else default
        except ValueError:
            raise errors.InvalidArgument.of([errors.FieldViolation(name, "is a date, YYYY-MM-DD")]) from None

    last = day("to", today)
    first = day("from", last - dt.timedelta(days=DEFAULT_PERIOD_DAYS - 1))
    if not first <= last or (last - first).days >= LONGEST_PERIOD_DAYS:
        raise errors.InvalidArgument.of(
            [errors.FieldViolation("from", f"must be on or before the last day, at most {LONGEST_PERIOD_DAYS} days")]
        )
    return first, last


def period_filter(first: dt.date, last: dt.date) -> EntryFilter:
    since = dt.datetime.combine(first, dt.time(), dt.UTC)
    return EntryFilter(since=since, until=dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC))


def days_of(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def exchanges_and_refusals(tallies: Iterable[Tally]) -> tuple[dict[dt.date, int], dict[dt.date, int]]:
    """Per day: exchanges that went through, and refusals (refused exchanges and refused calls)."""
    done: dict[dt.date, int] = {}
    refused: dict[dt.date, int] = {}
    for t in tallies:
        if t.refused:
            refused[t.day] = refused.get(t.day, 0) + t.count
        elif t.kind == "exchange":
            done[t.day] = done.get(t.day, 0) + t.count
    return done, refused


async def _chart(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_AUDIT, SEARCH, "chart the audit log")
    first, last = period(request)
    tallies, cut = await console.call(viewer, SEARCH, console.services.auditing.tally, period_filter(first, last))
    done, refused = exchanges_and_refusals(tallies)
    return console.render(
        request, viewer, "audit/chart.html", first=first, last=last, cut=cut,
        chart=day_chart(days_of(first, last), done, refused),
    )  # fmt: skip


# --- signed checkpoints -----------------------------------------------------------------------------------


async def _checkpoints(request: Request) -> Response:
    """The newest signed checkpoints, verbatim. Checkpoints are public (any caller may fetch them over gRPC)."""
    console = Console.of(request)
    viewer = await console.viewer(request)
    below = request.query_params.get("page", "")
    if not below.isdigit() and below:
        raise errors.InvalidArgument.of([errors.FieldViolation("page", "is a tree size")])
    size = console.page_size
    found = await console.run(lambda: console.services.auditing.recent_checkpoints(int(below or 0), size + 1))
    more = len(found) > size
    return console.render(
        request, viewer, "audit/checkpoints.html", checkpoints=found[:size],
        next_token=str(found[size - 1][0]) if more else "", hub_key=console.services.auditing.verifier.encode(),
    )  # fmt: skip


# --- export -----------------------------------------------------------------------------------------------


async def _export_form(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_AUDIT, EXPORT, "export the audit log")
    return console.render(request, viewer, "audit/export.html", values={"start": "0"}, error="", violations=[])


def _take(lines: Iterator[str], n: int) -> list[str]:
    return list(itertools.islice(lines, n))


async def _export(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_AUDIT, EXPORT, "export the audit log")
    form = await console.form(request, viewer, EXPORT)
    try:
        start = await _checked(console, viewer, EXPORT, lambda: _start_of(form))
        lines = await console.call(viewer, EXPORT, console.services.auditing.export, start)
    except errors.ExchangeError as e:
        status = 403 if isinstance(e, errors.PermissionDenied) else 400
        return console.render(
            request, viewer, "audit/export.html", status_code=status, values=form.values(),
            error=console.error_text(request, e), violations=getattr(e, "violations", []),
        )  # fmt: skip

    async def body() -> AsyncIterator[str]:
        while chunk := await asyncio.to_thread(_take, lines, LINES_PER_CHUNK):
            yield "".join(line + "\n" for line in chunk)

    name = f"audit-log-from-{start}.txt"
    headers = {"content-disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(body(), media_type="text/plain; charset=utf-8", headers=headers)


def _start_of(form: Form) -> int:
    text = form.get("start") or "0"
    if not text.isdigit() or len(text) > 18:
        raise errors.InvalidArgument.of([errors.FieldViolation("from_seq", "is an entry number, 0 or more")])
    return int(text)


def routes() -> list[BaseRoute]:
    return [
        Route("/audit", _search_form, methods=["GET"]),
        Route("/audit", _search, methods=["POST"]),
        Route("/audit/record/{seq:int}", _record, methods=["GET"]),
        Route("/audit/chart", _chart, methods=["GET"]),
        Route("/audit/checkpoints", _checkpoints, methods=["GET"]),
        Route("/audit/export", _export_form, methods=["GET"]),
        Route("/audit/export", _export, methods=["POST"]),
    ]
