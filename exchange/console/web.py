"""What every console page does around its service calls: who is signed in, forms, rendering, refusals.

A page handler reads the signed-in person (``viewer``), reads and checks a posted form (``form``: the
CSRF token, sizes), calls a service with the person as the actor (``call``: off the event loop, within
the console's deadline, a refusal recorded in the audit log exactly as a refused gRPC call is), and
renders a template (``render``). The services decide everything; the console only shows what they say.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from exchange import errors, pki
from exchange.config import Settings
from exchange.console.i18n import LOCALE_NAMES, Catalogs
from exchange.models import Principal, PrincipalRef, Role
from exchange.server.refusals import is_refusal  # the same rule as refused gRPC calls
from exchange.services.audit import AuditReadService
from exchange.services.catalog import CatalogService
from exchange.services.console import ConsoleAccess
from exchange.services.federation.catalog import FederatedCatalog
from exchange.services.objections import ObjectionService
from exchange.services.registry import RegistryService
from exchange.services.rights import RightsService
from exchange.store.console import SessionRecord
from exchange.store.database import deadline
from exchange.workdays import WorkCalendar
from policy import Action, RightsPolicy

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "__Host-exchange-session"
LANG_COOKIE = "exchange-lang"
# People whose menus are remembered at once (the menu depends only on identity, department and roles).
MENUS_KEPT = 1000
# The longest any one form field may be (a CSR or a reason is far shorter); longer is refused.
FIELD_CHARS = 20_000


class Refusals(Protocol):
    async def refused(self, actor: Principal, where: str, error: errors.ExchangeError) -> str: ...


@dataclass(frozen=True)
class Services:
    """The hub's services, as the gRPC handlers use them."""

    registry: RegistryService
    catalog: CatalogService
    rights: RightsService
    objections: ObjectionService
    auditing: AuditReadService
    access: ConsoleAccess
    policy: RightsPolicy
    calendar: WorkCalendar
    refusals: Refusals | None
    # The catalog with the entries its peers offer, homed at other hubs (as CatalogService's gRPC handlers
    # answer from it); None: the console lists this hub's own entries only.
    federated: FederatedCatalog | None = None
    # What the operator's health page shows: (name, value) rows of the hub's own state.
    health: Callable[[], list[tuple[str, str]]] = field(default=lambda: [])


@dataclass(frozen=True)
class Viewer:
    """The signed-in person of a request, with their session."""

    principal: Principal
    session: SessionRecord
    secret: str
    policy: RightsPolicy

    @property
    def roles(self) -> frozenset[Role]:
        return self.principal.roles

    def may(self, action: Action, department: str = "") -> bool:
        """Whether the policy lets this person do ``action`` (in ``department``, default their own)."""
        return self.policy.allows(self.principal.ref, action, department or self.principal.department_code)

    def may_anywhere(self, action: Action) -> bool:
        return self.may(action) or self.policy.allows(self.principal.ref, action, "*")


@dataclass(frozen=True)
class MenuItem:
    key: str  # message key of its label
    path: str
    shown: Callable[[Viewer], bool]


class SignInRequired(Exception):
    """No live session: the person is sent to the sign-in page (with why, if a session just ended)."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


class Form:
    """A posted form, checked: every value a string of at most ``FIELD_CHARS`` characters."""

    def __init__(self, data: FormData) -> None:
        self._data = data

    def get(self, name: str, default: str = "") -> str:
        value = self._data.get(name, default)
        return value.strip() if isinstance(value, str) else default

    def getlist(self, name: str) -> list[str]:
        return [v.strip() for v in self._data.getlist(name) if isinstance(v, str) and v.strip()]

    def values(self) -> dict[str, str]:
        """Every single value typed (for showing a refused form again as it was)."""
        return {k: v for k, v in self._data.items() if isinstance(v, str) and k != "csrf"}


def fingerprint_of(request: Request) -> str | None:
    """The fingerprint of the certificate the browser presented on this connection, if any."""
    chain = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return pki.fingerprint_of_presented(chain[0].encode()) if chain else None


class Console:
    """The console's services, templates and messages, and the helpers every page uses."""

    def __init__(self, services: Services, settings: Settings, menu: Iterable[MenuItem]) -> None:
        self.services = services
        self.settings = settings
        self.menu = tuple(menu)
        self.catalogs = Catalogs()
        self.page_size = settings.console_page_size
        self._menus: dict[tuple[PrincipalRef, str, frozenset[Role]], list[MenuItem]] = {}
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["day"] = _day

    @staticmethod
    def of(request: Request) -> Console:
        console: Console = request.app.state.console
        return console

    def locale(self, request: Request) -> str:
        return self.catalogs.pick(request.cookies.get(LANG_COOKIE))

    async def viewer(self, request: Request) -> Viewer:
        """The signed-in person, checked against the registry now; SignInRequired if there is none."""
        cached: Viewer | None = request.scope.get("exchange.viewer")
        if cached is not None:
            return cached
        secret = request.cookies.get(SESSION_COOKIE, "")
        if not secret:
            raise SignInRequired()
        presented = fingerprint_of(request)
        try:
            resumed = await self.run(lambda: self.services.access.resume(secret, presented))
        except errors.Unauthenticated as e:
            raise SignInRequired(e.message) from None
        viewer = Viewer(resumed.principal, resumed.record, secret, self.services.policy)
        request.scope["exchange.viewer"] = viewer
        return viewer

    async def run(self, fn: Callable[[], T]) -> T:
        """Runs blocking ``fn`` off the event loop, its store work bounded by the console's deadline."""
        seconds = self.settings.call_timeout_seconds
        started = time.monotonic()

        def bounded() -> T:
            with deadline(seconds - (time.monotonic() - started)):
                return fn()

        return await asyncio.to_thread(bounded)

    async def call(self, viewer: Viewer, where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Calls a service as ``viewer`` (``fn(principal, *args, **kwargs)``); a refusal is recorded as
        ``where`` names it (the gRPC handler's name, e.g. "RightsServicer.Approve") and raised."""
        try:
            return await self.run(lambda: fn(viewer.principal, *args, **kwargs))
        except errors.ExchangeError as e:
            await self.record_refusal(viewer, where, e)
            raise

    async def record_refusal(self, viewer: Viewer, where: str, error: errors.ExchangeError) -> None:
        refusals = self.services.refusals
        if refusals is not None and is_refusal(error) and not error.exchange_id:
            error.recorded_as(await refusals.refused(viewer.principal, where, error))

    async def require(self, viewer: Viewer, action: Action, where: str, doing: str) -> None:
        """Refuses (and records) a page or action for a person whose roles lack ``action`` everywhere."""
        try:
            self.services.policy.require_somewhere(viewer.principal, action, doing)
        except errors.PermissionDenied as e:
            await self.record_refusal(viewer, where, e)
            raise

    async def form(self, request: Request, viewer: Viewer | None, where: str = "Console.Form") -> Form:
        """The posted form, after its CSRF token and sizes are checked (refused and recorded otherwise)."""
        try:
            data = await request.form(max_files=0, max_fields=500, max_part_size=FIELD_CHARS * 4)
        except HTTPException as e:  # the form parser's own refusal (a field or the field count over its bound)
            bad = errors.InvalidArgument(
                "the form is too long or malformed",
                [errors.FieldViolation("form", f"{e.detail}; fields take at most {FIELD_CHARS} characters")],
            )
            if viewer is not None:
                await self.record_refusal(viewer, where, bad)
            raise bad from None
        expected = viewer.session.csrf_token if viewer else request.cookies.get(PRE_CSRF_COOKIE, "")
        sent = data.get("csrf")
        if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
            error = errors.PermissionDenied(
                "the form's security token is missing or wrong (was it open in an old tab?): reload the page and"
                " send it again",
                reason="CSRF_TOKEN_INVALID",
            )
            if viewer is not None:
                await self.record_refusal(viewer, where, error)
            raise error
        for name, value in data.multi_items():
            if isinstance(value, str) and len(value) > FIELD_CHARS:
                bad = errors.InvalidArgument(
                    f"{name} is too long", [errors.FieldViolation(name, f"at most {FIELD_CHARS} characters")]
                )
                if viewer is not None:
                    await self.record_refusal(viewer, where, bad)
                raise bad
        return Form(data)

    def render(
        self, request: Request, viewer: Viewer | None, template: str, status_code: int = 200, **values: Any
    ) -> HTMLResponse:
        """A page in the one layout, in the person's language, with the menu they may use."""
        locale = self.locale(request)

        def t(key: str, **kw: object) -> str:
            return self.catalogs.text(locale, key, **kw)

        menu = self._menu_of(viewer)
        path = request.url.path
        under = [m.path for m in menu if path == m.path or (m.path != "/" and path.startswith(m.path + "/"))]
        context = {
            "t": t,
            "locale": locale,
            "locales": LOCALE_NAMES,
            "viewer": viewer,
            "menu": menu,
            "current": max(under, key=len, default=""),  # the menu item the page is under (the longest match)
            "path": path,
            "csrf": viewer.session.csrf_token if viewer else request.cookies.get(PRE_CSRF_COOKIE, ""),
            "notice": _notice(request, t),
            "page_url": lambda **q: _page_url(request, **q),
            **values,
        }
        html = self.templates.get_template(template).render(context)
        return HTMLResponse(html, status_code=status_code)

    def _menu_of(self, viewer: Viewer | None) -> list[MenuItem]:
        """The menu items ``viewer`` may use: the policy's answer for their identity and roles, remembered
        (each item asks the policy once or twice, and every page shows the menu)."""
        if viewer is None:
            return []
        key = (viewer.principal.ref, viewer.principal.department_code, viewer.principal.roles)
        shown = self._menus.get(key)
        if shown is None:
            if len(self._menus) >= MENUS_KEPT:
                self._menus.clear()
            shown = self._menus[key] = [m for m in self.menu if m.shown(viewer)]
        return shown

    def error_text(self, request: Request, error: errors.ExchangeError) -> str:
        """What the person reads of a refusal: the service's own reason, with the record to quote."""
        text = error.message
        if error.exchange_id:
            text += " — " + self.catalogs.text(self.locale(request), "common.error.recorded", id=error.exchange_id)
        return text


PRE_CSRF_COOKIE = "__Host-exchange-csrf"


def see_other(path: str, notice: str = "") -> RedirectResponse:
    """Post/redirect/get: after a change, the page to show, with a message key (never data) to say what was done:
    ``notice`` "requests.applied" shows the message ``requests.notice.applied``."""
    if notice:
        path += ("&" if "?" in path else "?") + urlencode({"notice": notice})
    return RedirectResponse(path, status_code=303)


def _notice(request: Request, t: Callable[..., str]) -> str:
    """The message a redirect after a change asked for: ``?notice=<file>.<name>`` shows ``<file>.notice.<name>``."""
    area, _, name = request.query_params.get("notice", "").partition(".")
    if not (area.isidentifier() and name.isidentifier() and len(area) + len(name) < 60):
        return ""
    return t(f"{area}.notice.{name}")


def _page_url(request: Request, **changes: object) -> str:
    query = dict(request.query_params)
    query.pop("notice", None)
    for k, v in changes.items():
        if v in (None, ""):
            query.pop(k, None)
        else:
            query[k] = str(v)
    return request.url.path + ("?" + urlencode(query) if query else "")


def _when(value: dt.datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(value: dt.date | dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d")
