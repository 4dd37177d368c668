"""Signing in (with the browser's certificate or a one-time link) and out.

A refused sign-in is an audit record, like a refused call: under the certificate's holder when the
certificate is known (a system's, say), else under ``person/anonymous`` (all such records share one
bound per window, so a flood of forged links cannot flood the log).
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from exchange import errors
from exchange.console.web import PRE_CSRF_COOKIE, SESSION_COOKIE, Console, fingerprint_of, see_other
from exchange.models import Principal, PrincipalKind, PrincipalRef
from exchange.services.console import Opened

ANONYMOUS = Principal(PrincipalRef(PrincipalKind.PERSON, "anonymous"), "", "")


async def page(request: Request, why: str = "", status_code: int = 200) -> HTMLResponse:
    """The sign-in page, with a fresh form token for the certificate button."""
    console = Console.of(request)
    token = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)
    presented = fingerprint_of(request)
    holder = await console.run(lambda: console.services.registry.authenticate(presented)) if presented else None
    response = console.render(
        request,
        None,
        "signin.html",
        status_code=status_code,
        why=why,
        holder=holder,
        presented=bool(presented),
        csrf=token,
    )
    response.set_cookie(PRE_CSRF_COOKIE, token, secure=True, httponly=True, samesite="strict")
    return response


async def _page(request: Request) -> Response:
    return await page(request)


def _signed_in(opened: Opened, response: Response) -> Response:
    """``response`` with the new session's cookie (and the pre-session form token gone)."""
    seconds = int((opened.record.expires_at - opened.record.created_at).total_seconds())
    response.set_cookie(SESSION_COOKIE, opened.secret, max_age=seconds, secure=True, httponly=True, samesite="strict")
    response.delete_cookie(PRE_CSRF_COOKIE, secure=True, httponly=True, samesite="strict")
    return response


async def _refused(request: Request, who: Principal | None, error: errors.ExchangeError) -> Response:
    console = Console.of(request)
    refusals = console.services.refusals
    if refusals is not None:
        error.recorded_as(await refusals.refused(who or ANONYMOUS, "ConsoleServicer.SignIn", error))
    status = 401 if isinstance(error, errors.Unauthenticated) else 403
    return await page(request, why=console.error_text(request, error), status_code=status)


async def _with_certificate(request: Request) -> Response:
    console = Console.of(request)
    await console.form(request, None, "ConsoleServicer.SignIn")
    presented = fingerprint_of(request)
    try:
        opened = await console.run(lambda: console.services.access.open_with_certificate(presented))
    except errors.ExchangeError as e:
        holder = await console.run(lambda: console.services.registry.authenticate(presented)) if presented else None
        return await _refused(request, holder, e)
    return _signed_in(opened, see_other("/"))


async def _with_link(request: Request) -> Response:
    console = Console.of(request)
    secret = request.path_params["secret"]
    try:
        opened = await console.run(lambda: console.services.access.open_with_link(secret))
    except errors.ExchangeError as e:
        return await _refused(request, None, e)
    # A page that moves on to "/" itself: a redirect straight from a link opened elsewhere would carry the
    # cross-site context, and the SameSite=Strict cookie would not be sent on the page it lands on.
    return _signed_in(opened, console.render(request, None, "signed_in.html", who=opened.principal))


async def _sign_out(request: Request) -> Response:
    console = Console.of(request)
    viewer = await console.viewer(request)
    await console.form(request, viewer, "ConsoleServicer.SignOut")
    await console.run(lambda: console.services.access.close(viewer.secret, viewer.principal))
    response = see_other("/signin", "signin.signed_out")
    response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="strict")
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/signin", _page, methods=["GET"]),
        Route("/signin/certificate", _with_certificate, methods=["POST"]),
        Route("/signin/link/{secret}", _with_link, methods=["GET"]),
        Route("/signout", _sign_out, methods=["POST"]),
    ]
