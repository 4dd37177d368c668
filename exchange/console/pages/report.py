"""The evaluation report page: per-department figures for a period, with bar charts and CSV/JSON downloads.

The figures are the AuditService's GetReport (audit/report.py), computed at the newest signed checkpoint;
the page only lays them out. Auditors and the share manager (the right audit:report) may read it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from audit.report import to_csv, to_json
from exchange import errors
from exchange.console.pages.audit import CHART_HEIGHT, CHART_WIDTH, LEFT, Bar, DayChart, Tick
from exchange.console.web import Console, Viewer
from policy import Action

WHERE = "AuditServicer.GetReport"
DEFAULT_DAYS = 30
BOTTOM_ROOM, TOP_ROOM = 22, 12


def pair_chart(labels: list[str], a: list[int], b: list[int]) -> DayChart:
    """Two bars per label (series a and b), scaled to the larger count, for the chart_svg macro."""
    top = max([1, *a, *b])
    bottom = CHART_HEIGHT - BOTTOM_ROOM
    scale = (bottom - TOP_ROOM) / top
    slot = (CHART_WIDTH - LEFT - 8) / max(1, len(labels))
    width = min(60.0, max(1.0, slot * 0.38))
    bars: list[Bar] = []
    for i, label in enumerate(labels):
        x = LEFT + i * slot + slot / 2 - width
        for offset, series, n in ((0.0, "a", a[i]), (width, "b", b[i])):
            h = round(n * scale, 1)
            bars.append(Bar(round(x + offset, 1), round(bottom - h, 1), round(width, 1), h, series, f"{label}: {n}"))
    ticks = [Tick(round(LEFT + i * slot + slot / 2, 1), _short(label)) for i, label in enumerate(labels)]
    return DayChart(CHART_WIDTH, CHART_HEIGHT, bottom, top, bars, ticks, sum(a), sum(b))


def _short(label: str) -> str:
    """A tick's text: long codes (credit codes, catalog codes) by their last characters."""
    return label if len(label) <= 12 else "…" + label[-10:]


def charts(report: Mapping[str, Any]) -> dict[str, DayChart]:
    """The page's charts: answers on time/late, objections answered on time/late or overdue, entries used/unused."""
    depts = list(report["departments"])
    codes = [str(d["department"]) for d in depts]
    req = [d["requests"] for d in depts]
    obj = [d["objections"] for d in depts]
    cat = [d["catalog"] for d in depts]
    return {
        "requests": pair_chart(codes, [r["answered_on_time"] for r in req], [r["answered_late"] for r in req]),
        "objections": pair_chart(
            codes,
            [o["answered_on_time"] for o in obj],
            [o["answered_late"] + o["open_overdue"] for o in obj],
        ),
        "catalog": pair_chart(codes, [len(c["used"]) for c in cat], [len(c["never_used"]) for c in cat]),
    }


def _asked(request: Request) -> tuple[dt.date, dt.date, str]:
    """The first and last day (inclusive) and department asked for; the last 30 days by default."""
    today = dt.datetime.now(dt.UTC).date()

    def day(name: str, default: dt.date) -> dt.date:
        text = request.query_params.get(name, "")
        try:
            return dt.date.fromisoformat(text) if text else default
        except ValueError:
            raise errors.InvalidArgument.of([errors.FieldViolation(name, "is a date, YYYY-MM-DD")]) from None

    last = day("to", today)
    first = day("from", last - dt.timedelta(days=DEFAULT_DAYS - 1))
    return first, last, request.query_params.get("department", "").strip()


async def _compute(console: Console, viewer: Viewer, first: dt.date, last: dt.date, dept: str) -> dict[str, Any]:
    """The hub's report for [first, last + 1 day) (the service's period excludes its end)."""
    end = (last + dt.timedelta(days=1)).isoformat()
    report, _head = await console.call(viewer, WHERE, console.services.auditing.report, first.isoformat(), end, dept)
    return report


async def _page(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_REPORT, WHERE, "read the evaluation report")
    first, last, dept = _asked(request)
    query = urlencode({"from": first.isoformat(), "to": last.isoformat(), "department": dept})
    values: dict[str, Any] = {"first": first, "last": last, "department": dept, "query": query}
    try:
        report = await _compute(console, viewer, first, last, dept)
    except errors.InvalidArgument as e:
        return console.render(
            request, viewer, "report/report.html", 400, report=None, error=console.error_text(request, e), **values
        )
    return console.render(
        request, viewer, "report/report.html", report=report, charts=charts(report), error="", **values
    )


async def _download(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_REPORT, WHERE, "read the evaluation report")
    first, last, dept = _asked(request)
    report = await _compute(console, viewer, first, last, dept)
    as_csv = request.url.path.endswith(".csv")
    name = f"report-{first.isoformat()}-{last.isoformat()}.{'csv' if as_csv else 'json'}"
    return Response(
        to_csv(report) if as_csv else to_json(report),
        media_type="text/csv; charset=utf-8" if as_csv else "application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/report", _page, methods=["GET"]),
        Route("/report.csv", _download, methods=["GET"]),
        Route("/report.json", _download, methods=["GET"]),
    ]
