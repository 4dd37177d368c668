"""The three rights and the audit log run by hand through the web console, in a real Chromium, role by role.

A consumer applies for a resident lookup, its owner approves with a mask, the share manager grants, the
consumer sees the grant and its system queries through the hub; the auditor finds that exchange by the
data subject's ID number (never put in an address), and the browser checks its inclusion proof and
signed checkpoint, then rejects the same record altered in transit. A consumer who types the approve
address is refused and nothing changes; a session whose certificate is revoked ends. Each role's main
page is saved as a screenshot (build/screenshots/flow-*.png).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as rpb_r
from tests.console_support import console_hub, console_url, new_page, screenshot
from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, REGISTRY, World, make_world, query
from tests.harness import POLICE, RunningHub, identity_spec, today

LEGAL_BASIS = "《不动产登记暂行条例实施细则》第十一条"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("console-flow")
    with console_hub(home / "hub") as hub:
        world = make_world(hub)
        url = f"sqlite:///{home / 'ga-qzk.db'}"
        engine = create_engine(url)
        with engine.begin() as c:
            c.execute(text("CREATE TABLE rk (name TEXT, id_number TEXT)"))
            c.execute(text("INSERT INTO rk VALUES ('张三', :id)"), {"id": PERSON_ID})
        engine.dispose()
        items = (
            m.DataItem("name", "姓名", m.FieldType.STRING, personal_information=True),
            m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True, personal_information=True),
        )
        world.publish("police", identity_spec(LOOKUP, POLICE.code, data_items=items))
        world.bind("police", cpb.Binding(resource_code=LOOKUP, sql=cpb.SqlBackend(url=url, table="rk")))
        yield world


def _request_status(hub: RunningHub, identity: Path, request_id: str) -> int:
    with hub.client(identity) as c:
        answer = c.call(c.rights.GetShareRequest, rpb_r.GetShareRequestRequest(id=request_id))
    return int(answer.status)


def _apply(browser: Any, world: World) -> str:
    """The consumer applies through the catalog; the new request's id."""
    page = new_page(browser, world.hub, world.people["consumer"])
    page.goto(f"{console_url(world.hub)}/catalog/{LOOKUP}")
    screenshot(page, "flow-consumer-entry")
    page.click("a.button")
    page.check("input[name=fields][value=name]")
    page.check("input[name=fields][value=id_number]")
    page.check("input[name=systems][value=bdc-djxt]")
    page.fill("input[name=purpose]", PURPOSE)
    page.fill("textarea[name=legal_basis]", LEGAL_BASIS)
    page.fill("input[name=daily_calls]", "200")
    screenshot(page, "flow-consumer-apply")
    with page.expect_navigation():
        page.click("form.apply button[type=submit]")
    assert "/requests/new" not in page.url, page.locator("main").inner_text()
    request_id: str = page.url.split("?")[0].rsplit("/", 1)[1]
    page.goto(f"{console_url(world.hub)}/requests")
    assert request_id in page.content()
    screenshot(page, "flow-consumer-requests")
    page.context.close()
    return request_id


def _approve_with_mask(browser: Any, world: World, request_id: str) -> None:
    page = new_page(browser, world.hub, world.people["police"])
    page.goto(f"{console_url(world.hub)}/inbox")
    assert request_id in page.content()
    screenshot(page, "flow-steward-inbox")
    page.goto(f"{console_url(world.hub)}/inbox/{request_id}")
    page.select_option("select[name='mask.name']", "name")
    page.fill("#approve textarea[name=reason]", "符合共享条件，姓名脱敏")
    screenshot(page, "flow-steward-approve")
    with page.expect_navigation():
        page.click("#approve button[type=submit]")
    assert page.locator(".refusal").count() == 0, page.locator("main").inner_text()
    page.context.close()


def _grant(browser: Any, world: World, request_id: str) -> None:
    page = new_page(browser, world.hub, world.people["manager"])
    page.goto(f"{console_url(world.hub)}/manage")
    assert request_id in page.content()
    screenshot(page, "flow-share-manager-desk")
    page.goto(f"{console_url(world.hub)}/manage/{request_id}")
    page.fill("#grant input[name=daily_quota]", "500")
    page.fill("#grant textarea[name=reason]", "同意授权")
    with page.expect_navigation():
        page.click("#grant button[type=submit]")
    assert page.locator(".refusal").count() == 0, page.locator("main").inner_text()
    page.context.close()


def test_the_rights_run_through_the_console_and_the_auditor_checks_the_exchange(browser: Any, world: World) -> None:
    hub = world.hub
    request_id = _apply(browser, world)
    _approve_with_mask(browser, world, request_id)
    _grant(browser, world, request_id)
    assert _request_status(hub, world.people["consumer"], request_id) == rpb_r.SHARE_REQUEST_STATUS_GRANTED

    page = new_page(browser, hub, world.people["consumer"])
    page.goto(f"{console_url(hub)}/grants")
    grants = page.locator("main table").inner_text()
    assert LOOKUP in grants and "500" in grants
    screenshot(page, "flow-consumer-grants")
    page.context.close()

    answer = world.exchange().Query(query(LOOKUP, {"id_number": PERSON_ID}, ["name", "id_number"]), timeout=20)
    assert answer.records and answer.exchange_id
    hub.hub.audit.flush()  # integrated and signed: the record has a proof

    page = new_page(browser, hub, world.people["auditor"])
    addresses: list[str] = []
    page.on("request", lambda r: addresses.append(r.url))
    page.goto(f"{console_url(hub)}/audit")
    page.fill("input[name=data_subject]", PERSON_ID)
    with page.expect_navigation():
        page.click("#audit-search button[type=submit]")
    results = page.locator("main table").inner_text()
    assert answer.exchange_id in results
    assert not any(PERSON_ID in a for a in addresses), "the ID number went into an address"
    screenshot(page, "flow-auditor-search")

    with page.expect_navigation():
        page.click(f"tr:has-text('{answer.exchange_id}') a[href^='/audit/record/']")
    page.fill("#pin-key", hub.files.audit_verifier.read_text().strip())
    page.click("#pin-button")
    page.wait_for_selector("#proof-verdict.ok, #proof-verdict.bad")
    assert "ok" in (page.get_attribute("#proof-verdict", "class") or "")
    screenshot(page, "flow-auditor-record")
    record_url = page.url

    def altered(route: Any) -> None:
        """The record page as a meddler in transit would change it: one character of the record checked."""
        body = route.fetch().text()
        head, marker, rest = body.partition('id="proof-data">')
        other = answer.exchange_id[:-1] + ("1" if answer.exchange_id.endswith("0") else "0")
        forged = rest.replace(answer.exchange_id, other, 1)
        assert forged != rest
        route.fulfill(body=head + marker + forged, content_type="text/html")

    page.route(record_url, altered)
    page.goto(record_url)
    page.wait_for_selector("#proof-verdict.ok, #proof-verdict.bad")
    assert "bad" in (page.get_attribute("#proof-verdict", "class") or "")
    page.context.close()


def test_a_consumer_typing_the_approve_address_is_refused_and_nothing_changes(browser: Any, world: World) -> None:
    hub = world.hub
    with hub.client(world.people["consumer"]) as c:
        app = m.Application(
            resource_code=LOOKUP,
            consumer_department_code="",
            system_codes=("bdc-djxt",),
            purpose="二手房交易资金监管",
            legal_basis=LEGAL_BASIS,
            fields=("name",),
            start=today(),
            end=today() + dt.timedelta(days=30),
            expected_daily_calls=100,
        )
        pending = c.call(c.rights.Apply, rpb_r.ApplyRequest(request=w.application_to_wire(app)))
    page = new_page(browser, hub, world.people["consumer"])
    answer = page.goto(f"{console_url(hub)}/inbox/{pending.id}")
    assert answer is not None and answer.status == 403
    text_shown = page.locator("main").inner_text()
    assert "request:decide" in text_shown and "EX" in text_shown
    screenshot(page, "flow-consumer-refused")
    page.context.close()
    assert _request_status(hub, world.people["police"], pending.id) == rpb_r.SHARE_REQUEST_STATUS_PENDING


def test_the_operator_revokes_a_certificate_and_its_session_ends(browser: Any, world: World) -> None:
    hub = world.hub
    clerk = hub.add_person("bdc-temp", REGISTRY.code, m.Role.CONSUMER)
    page = new_page(browser, hub, clerk)
    assert page.locator(".person").inner_text().endswith("(bdc-temp)")
    fingerprint = pki.fingerprint_of_pem((clerk / "cert.pem").read_bytes())
    with hub.client() as operator:
        operator.call(
            operator.registry.RevokeCertificate,
            rpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="离职"),
        )
    answer = page.goto(f"{console_url(hub)}/")
    assert answer is not None and answer.status == 401
    assert "revoked" in page.locator("main").inner_text()
    page.context.close()

    operator_page = new_page(browser, hub, hub.operator)
    operator_page.goto(f"{console_url(hub)}/admin/certificates")
    screenshot(operator_page, "flow-operator-certificates")
    operator_page.goto(f"{console_url(hub)}/admin/health")
    screenshot(operator_page, "flow-operator-health")
    operator_page.context.close()
