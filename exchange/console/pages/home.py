"""The home page: who is signed in, their department and roles, their certificate and session."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from exchange.console.web import Console
from exchange.models import CertificateRecord


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
    )


def routes() -> list[BaseRoute]:
    return [Route("/", _home, methods=["GET"])]
