"""The steward's "who used our data": exchanges on the department's resources by consumer, purpose and day.

The counts come from the audit log through the audit service, which restricts an owner steward to the
records of its own department's resources (a consumer to its own department's records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange.console.pages.audit import SEARCH, day_chart, days_of, exchanges_and_refusals, period, period_filter
from exchange.console.web import Console
from exchange.services.audit import Tally
from policy import Action


@dataclass(frozen=True)
class Use:
    """One consumer's use of one resource for one purpose over the period."""

    department: str
    actor: str
    resource: str
    purpose: str
    exchanges: int
    refused: int


def uses(tallies: Iterable[Tally]) -> list[Use]:
    """Exchange records grouped by consumer, resource and purpose, the most used first."""
    counts: dict[tuple[str, str, str, str], list[int]] = {}
    for t in tallies:
        if t.kind != "exchange":
            continue
        row = counts.setdefault((t.actor_department, t.actor, t.resource, t.purpose), [0, 0])
        row[1 if t.refused else 0] += t.count
    found = [Use(*key, exchanges=n, refused=r) for key, (n, r) in counts.items()]
    return sorted(found, key=lambda u: (-u.exchanges - u.refused, u.department, u.actor, u.resource, u.purpose))


async def _usage(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.require(viewer, Action.READ_OWN_AUDIT, SEARCH, "see who used the department's data")
    first, last = period(request)
    tallies, cut = await console.call(viewer, SEARCH, console.services.auditing.tally, period_filter(first, last))
    exchanges = [t for t in tallies if t.kind == "exchange"]
    done, refused = exchanges_and_refusals(exchanges)
    return console.render(
        request,
        viewer,
        "usage/usage.html",
        first=first,
        last=last,
        cut=cut,
        chart=day_chart(days_of(first, last), done, refused),
        uses=uses(exchanges),
    )


def routes() -> list[BaseRoute]:
    return [Route("/usage", _usage, methods=["GET"])]
