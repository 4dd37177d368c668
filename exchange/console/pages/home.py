"""The home page: who is signed in, their department and roles, their certificate and session, and what awaits
them (an owner steward's requests and objections to answer, the share manager's grants, disputes and deadlines)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange.console.web import Console, Viewer
from exchange.models import CertificateRecord, ShareRequestStatus, Tally
from policy import HUB_WIDE, Action

REQUESTS = "RightsServicer.ListShareRequests"
OBJECTIONS = "ObjectionServicer.ListObjections"


@dataclass(frozen=True)
class Notice:
    """One line of the "awaiting you" box: what (a message key), where it is listed, how many, and deadlines."""

    key: str
    href: str
    count: int
    due_soon: int = 0
    overdue: int = 0


async def _awaiting(console: Console, viewer: Viewer) -> list[Notice] | None:
    """What awaits the share manager or an owner steward (two counting queries); None for other people."""
    manager = viewer.may(Action.ISSUE_GRANT, HUB_WIDE)
    if not manager and not viewer.may(Action.DECIDE_REQUEST):
        return None
    requests = await console.call(viewer, REQUESTS, console.services.rights.awaiting)
    objections = await console.call(viewer, OBJECTIONS, console.services.objections.awaiting)
    pending = requests.get(ShareRequestStatus.PENDING, Tally())
    answer = Notice("home.awaiting.objections", "/objections?view=for_me", *_of(objections))
    if not manager:
        return [Notice("home.awaiting.requests", "/inbox", *_of(pending)), answer]
    return [
        Notice("home.awaiting.to_grant", "/manage#awaiting", requests.get(ShareRequestStatus.APPROVED, Tally()).count),
        Notice("home.awaiting.disputes", "/manage#disputes", requests.get(ShareRequestStatus.DISPUTED, Tally()).count),
        Notice("home.awaiting.late_requests", "/manage#overdue", pending.overdue),
        Notice("home.awaiting.open_objections", "/objections?view=for_me", *_of(objections)),
    ]


def _of(tally: Tally) -> tuple[int, int, int]:
    return tally.count, tally.due_soon, tally.overdue


async def _home(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    principal = viewer.principal

    def own_certificate() -> CertificateRecord | None:
        page = console.services.registry.list_certificates(principal, 100, "", principal.ref)
        return next((c for c in page.items if c.fingerprint_sha256 == principal.certificate_fingerprint), None)

    certificate = await console.run(own_certificate)
    department = await console.run(
        lambda: console.services.registry.get_department(principal, principal.department_code)
    )
    return console.render(
        request,
        viewer,
        "home.html",
        certificate=certificate,
        department=department,
        roles=sorted(r.value for r in viewer.roles),
        notices=await _awaiting(console, viewer),
    )


def routes() -> list[BaseRoute]:
    return [Route("/", _home, methods=["GET"])]
