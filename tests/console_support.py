"""Helpers for the web console's tests: a hub serving its console, signed-in clients, a real browser.

The browser is Debian's Chromium driven by Playwright (no browser download): on CI it must be there
(the test command installs it); elsewhere its tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange import pki
from exchange.models import Principal
from tests.harness import RunningHub, base_settings, running_hub

CHROMIUM = Path("/usr/bin/chromium")
# Where tests leave screenshots of the pages they drive (an artifact of the test run).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def console_hub(home: Path, **changes: object) -> Iterator[RunningHub]:
    """A running hub that also serves its web console on a loopback port."""
    with running_hub(base_settings(home, "", console_listen="127.0.0.1:0", **changes)) as hub:
        yield hub


def console_url(hub: RunningHub) -> str:
    return f"https://127.0.0.1:{hub.hub.console_port}"


def principal_of(hub: RunningHub, identity: Path) -> Principal:
    """The registered principal of an identity directory, as the hub authenticates its certificate."""
    fingerprint = pki.fingerprint_of_pem((identity / "cert.pem").read_bytes())
    assert hub.hub.registry is not None
    principal = hub.hub.registry.authenticate(fingerprint)
    assert principal is not None, f"{identity} is not a valid identity of this hub"
    return principal


def sign_in_link(hub: RunningHub, identity: Path) -> str:
    """A one-time sign-in link for the person of ``identity`` (as `exchange console login` asks for one)."""
    assert hub.hub.console_access is not None
    secret, _ = hub.hub.console_access.create_link(principal_of(hub, identity))
    return f"{console_url(hub)}/signin/link/{secret}"


@contextmanager
def web_client(hub: RunningHub, identity: Path | None = None, *, certificate: bool = False) -> Iterator[httpx.Client]:
    """An HTTPS client of the console, signed in as ``identity`` with a link (or presenting its certificate
    when ``certificate`` is true, and not yet signed in)."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    if certificate and identity is not None:
        tls.load_cert_chain(str(identity / "cert.pem"), str(identity / "key.pem"))
    with httpx.Client(base_url=console_url(hub), verify=tls, timeout=30) as client:
        if identity is not None and not certificate:
            answer = client.get(sign_in_link(hub, identity).removeprefix(console_url(hub)))
            assert answer.status_code == 200, answer.text
        yield client


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form token"
    return found.group(1)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test the console in a real browser, but {CHROMIUM} is missing")
    pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM} (Debian package chromium)")


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (see the ``browser`` fixture in conftest.py)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    args = list(CHROMIUM_FLAGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Any, hub: RunningHub, identity: Path | None = None, *, certificate: bool = False) -> Any:
    """A fresh browser context's page (its own cookies), signed in with a link as ``identity`` unless
    ``certificate``: then the browser presents the identity's certificate and has not signed in yet."""
    options: dict[str, Any] = {
        "ignore_https_errors": True,
        "viewport": {"width": 1280, "height": 860},
        "locale": "zh-CN",  # the browser of a Chinese-speaking official: dates as the console's users read them
    }
    if certificate and identity is not None:
        options["client_certificates"] = [
            {
                "origin": console_url(hub),
                "certPath": str(identity / "cert.pem"),
                "keyPath": str(identity / "key.pem"),
            }
        ]
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    if identity is not None and not certificate:
        page.goto(sign_in_link(hub, identity))
        page.wait_for_url(console_url(hub) + "/")
    return page


def screenshot(page: Any, name: str) -> Path:
    """Saves a full-page screenshot under build/screenshots (kept by the test run as an artifact)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def text_lines(page: Any, selector: str) -> int:
    """How many lines the text in the first element ``selector`` matches takes on the page (its text's line boxes):
    for tests that a cell reads as a unit, not a character or a syllable a line."""
    count: int = page.eval_on_selector(
        selector,
        """el => { const tops = new Set(), walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
                   while (walk.nextNode()) {
                     const range = document.createRange(); range.selectNodeContents(walk.currentNode);
                     for (const r of range.getClientRects()) tops.add(Math.round(r.top));
                   }
                   return tops.size; }""",
    )
    return count


def clear_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
