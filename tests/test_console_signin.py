"""Signing in to the web console, both ways, and what ends a session; forged, replayed and stolen sign-ins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from exchange import models as m
from exchange.store.schema import ConsoleLinkRow
from exchange.v1 import registry_pb2 as rpb
from tests.console_support import (
    console_hub,
    console_url,
    csrf_of,
    new_page,
    screenshot,
    sign_in_link,
    web_client,
)
from tests.harness import POLICE, RunningHub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("console") / "hub") as h:
        h.add_department(POLICE)
        yield h


@pytest.fixture(scope="module")
def steward(hub: RunningHub) -> Path:
    return hub.add_person("zhao-steward", POLICE.code, m.Role.OWNER_STEWARD)


def test_a_link_opens_one_session_and_only_once(hub: RunningHub, steward: Path) -> None:
    link = sign_in_link(hub, steward)
    with web_client(hub) as client:
        first = client.get(link.removeprefix(console_url(hub)))
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        home = client.get("/")
        assert home.status_code == 200 and "zhao-steward" in home.text
    with web_client(hub) as other:
        again = other.get(link.removeprefix(console_url(hub)))
        assert again.status_code == 403
        assert "already been used" in again.text
        assert other.get("/").status_code == 401


def test_only_the_hash_of_a_link_is_stored(hub: RunningHub, steward: Path) -> None:
    secret = sign_in_link(hub, steward).rsplit("/", 1)[1]
    with hub.hub.store.db.read() as s:
        stored = s.scalars(select(ConsoleLinkRow.secret_hash)).all()
    assert secret not in stored and all(len(h) == 64 for h in stored)


def test_a_forged_link_is_refused_and_recorded(hub: RunningHub) -> None:
    with web_client(hub) as client:
        answer = client.get("/signin/link/forged-secret-that-was-never-issued")
        assert answer.status_code == 403
        assert "not valid" in answer.text
        assert "EX" in answer.text  # the refusal's audit record, to quote


def test_a_system_cannot_sign_in_with_its_certificate(hub: RunningHub) -> None:
    system = hub.add_system("police-app", POLICE.code)
    with web_client(hub, system, certificate=True) as client:
        page = client.get("/signin")
        answer = client.post("/signin/certificate", data={"csrf": csrf_of(page.text)})
        assert answer.status_code == 403
        assert "systems call the hub over gRPC" in answer.text


def test_a_person_signs_in_with_the_browser_certificate(hub: RunningHub, steward: Path) -> None:
    with web_client(hub, steward, certificate=True) as client:
        page = client.get("/signin")
        assert "ZHAO-STEWARD" in page.text
        signed = client.post("/signin/certificate", data={"csrf": csrf_of(page.text)})
        assert signed.status_code == 303
        assert client.get("/").status_code == 200


def test_a_form_without_its_token_changes_nothing(hub: RunningHub, steward: Path) -> None:
    with web_client(hub, steward) as client:
        refused = client.post("/signout", data={"csrf": "wrong"})
        assert refused.status_code == 403
        assert "security token" in refused.text
        assert client.get("/").status_code == 200  # still signed in
        home = client.get("/")
        out = client.post("/signout", data={"csrf": csrf_of(home.text)})
        assert out.status_code == 303
        assert client.get("/").status_code == 401


def test_revoking_the_certificate_ends_the_session(hub: RunningHub) -> None:
    person = hub.add_person("qian-steward", POLICE.code, m.Role.OWNER_STEWARD)
    with web_client(hub, person) as client:
        assert client.get("/").status_code == 200
        fingerprint = (person / "cert.pem").read_bytes()
        from exchange import pki

        with hub.client() as operator:
            operator.call(
                operator.registry.RevokeCertificate,
                rpb.RevokeCertificateRequest(fingerprint_sha256=pki.fingerprint_of_pem(fingerprint), reason="lost key"),
            )
        ended = client.get("/")
        assert ended.status_code == 401
        assert "revoked" in ended.text


def test_a_body_over_the_limit_is_refused_unread(hub: RunningHub, steward: Path) -> None:
    with web_client(hub, steward) as client:
        answer = client.post("/signout", content=b"x" * (hub.settings.max_message_bytes + 1))
        assert answer.status_code == 413


def test_every_page_has_a_strict_content_security_policy(hub: RunningHub) -> None:
    with web_client(hub) as client:
        answer = client.get("/signin")
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert answer.headers["cache-control"] == "no-store"


def test_the_browser_signs_in_with_a_link_and_with_its_certificate(
    browser: Any, hub: RunningHub, steward: Path
) -> None:
    page = new_page(browser, hub, steward)
    assert page.locator("h1").inner_text() == "我的账户"
    screenshot(page, "home-steward")
    page.get_by_role("link", name="English").click()
    assert page.locator("h1").inner_text() == "My account"
    page.context.close()

    page = new_page(browser, hub, steward, certificate=True)
    page.goto(console_url(hub) + "/signin")
    screenshot(page, "signin-certificate")
    page.get_by_role("button", name="使用此证书登录").click()
    page.wait_for_url(console_url(hub) + "/")
    assert "zhao-steward" in page.locator(".person").inner_text()
    page.context.close()
