"""The console's web application: routes, the menu, security headers, limits and error pages.

Every response carries a strict Content-Security-Policy (scripts, styles and images only from the hub
itself, no inline script), and pages are never cached; a Server-Timing header says how long the hub took.
A request body over the hub's message limit is refused before it is read. A hub error becomes a page with
the service's own reason (and the audit record to quote); anything unexpected, a page with a reference
that is logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from exchange import errors
from exchange.config import Settings
from exchange.console.pages import (
    admin,
    audit,
    catalog,
    entries,
    grants,
    home,
    inbox,
    manage,
    objections,
    report,
    requests,
    signin,
    usage,
)
from exchange.console.web import HERE, LANG_COOKIE, Console, MenuItem, Services, SignInRequired, Viewer
from policy import Action

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

_STATUS: tuple[tuple[type[errors.ExchangeError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.Unauthenticated, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.FailedPrecondition, 409),
    (errors.Aborted, 409),
    (errors.ResourceExhausted, 429),
    (errors.DeadlineExceeded, 504),
    (errors.Unavailable, 503),
)


def _anyone(v: Viewer) -> bool:
    return True


MENU = (
    MenuItem("nav.home", "/", _anyone),
    MenuItem("nav.catalog", "/catalog", _anyone),
    MenuItem("nav.requests", "/requests", lambda v: v.may(Action.APPLY_FOR_DATA)),
    MenuItem("nav.inbox", "/inbox", lambda v: v.may(Action.DECIDE_REQUEST)),
    MenuItem("nav.entries", "/entries", lambda v: v.may(Action.WRITE_CATALOG)),
    MenuItem("nav.usage", "/usage", lambda v: v.may(Action.WRITE_CATALOG)),
    MenuItem(
        "nav.grants",
        "/grants",
        lambda v: v.may(Action.APPLY_FOR_DATA) or v.may(Action.SUSPEND_GRANT) or v.may_anywhere(Action.ISSUE_GRANT),
    ),
    MenuItem("nav.manage", "/manage", lambda v: v.may_anywhere(Action.ISSUE_GRANT)),
    MenuItem(
        "nav.objections",
        "/objections",
        lambda v: v.may(Action.APPLY_FOR_DATA) or v.may(Action.DECIDE_REQUEST) or v.may_anywhere(Action.ISSUE_GRANT),
    ),
    MenuItem(
        "nav.report", "/report", lambda v: v.may_anywhere(Action.READ_AUDIT) or v.may_anywhere(Action.ISSUE_GRANT)
    ),
    MenuItem("nav.audit", "/audit", lambda v: v.may_anywhere(Action.READ_AUDIT)),
    MenuItem("nav.checkpoints", "/audit/checkpoints", lambda v: v.may_anywhere(Action.READ_AUDIT)),
    MenuItem("nav.admin", "/admin", lambda v: v.may_anywhere(Action.REGISTER_MEMBERS)),
    MenuItem("nav.health", "/admin/health", lambda v: v.may_anywhere(Action.REGISTER_MEMBERS)),
)
PAGES = (signin, home, catalog, requests, inbox, entries, manage, grants, objections, usage, audit, report, admin)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: security headers on every response, and the request body bound."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            await _too_large(send)
            return
        seen = 0
        started = time.perf_counter()

        async def bounded_receive() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _BodyTooLarge()
            return message

        async def secured_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers += HEADERS
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                # The hub's time on this request until its answer starts, for operators and the page benchmark.
                spent = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={spent:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, bounded_receive, secured_send)
        except _BodyTooLarge:
            await _too_large(send)


async def _too_large(send: Any) -> None:
    body = b"413: the request is larger than this hub accepts"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return await signin.page(request, why=exc.why, status_code=401)


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ExchangeError)
    console = Console.of(request)
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    viewer: Viewer | None = request.scope.get("exchange.viewer")
    reason = getattr(exc, "reason", "") or getattr(exc, "kind", "")
    violations = getattr(exc, "violations", [])
    return console.render(
        request,
        viewer,
        "error.html",
        status_code=status,
        status=status,
        message=console.error_text(request, exc),
        reason=reason,
        violations=violations,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    reference = uuid.uuid4().hex[:12]
    path = "/signin/link/…" if request.url.path.startswith("/signin/link/") else request.url.path  # no link secret
    log.error("console: unexpected error on %s %s (reference %s)", request.method, path, reference, exc_info=exc)
    console = Console.of(request)
    message = console.catalogs.text(console.locale(request), "common.error.internal", reference=reference)
    return console.render(
        request, None, "error.html", status_code=500, status=500, message=message, reason="", violations=[]
    )


async def _choose_language(request: Request) -> Response:
    console = Console.of(request)
    locale = console.catalogs.pick(request.path_params["locale"])
    back = request.query_params.get("next", "/")
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        back = "/"
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(LANG_COOKIE, locale, max_age=365 * 86400, secure=True, httponly=True, samesite="strict")
    return response


def build_app(services: Services, settings: Settings) -> Any:
    """The console as an ASGI application, over the hub's services."""
    console = Console(services, settings, MENU)
    routes: list[BaseRoute] = [Route("/lang/{locale}", _choose_language)]
    for page in PAGES:
        routes += page.routes()
    routes.append(Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"))
    app = Starlette(
        routes=routes,
        exception_handlers={
            SignInRequired: _sign_in_required,
            errors.ExchangeError: _hub_error,
            Exception: _unexpected,
        },
    )
    app.state.console = console
    return Guard(app, settings.max_message_bytes)
