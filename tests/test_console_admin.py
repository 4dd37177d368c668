"""The operator's console pages against a real hub and a real browser: registering departments, systems and
people, roles, certificates issued and revoked, refusals that keep what was typed, and the hub's health."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from exchange import models as m
from exchange import pki, validation
from exchange.cli.demo import sample_id_number
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, DepartmentRow, PersonRow
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, web_client
from tests.harness import AUTHORITY, POLICE, RunningHub, exchange_id_in


def uscc(first17: str) -> str:
    """A valid unified social credit code from its first 17 characters."""
    return first17 + validation.uscc_check_character(first17)


TRANSPORT = m.Department(uscc("11350200MB0045678"), "厦门市交通运输局", "350200", m.AdministrativeLevel.CITY)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("admin") / "hub", console_page_size=5) as h:
        h.add_department(POLICE)
        yield h


@pytest.fixture(scope="module")
def steward(hub: RunningHub) -> Path:
    return hub.add_person("sun-steward", POLICE.code, m.Role.OWNER_STEWARD)


def audit_action(hub: RunningHub, exchange_id: str) -> str:
    """The action of the audit entry with ``exchange_id``, once the log has taken it in (a few seconds at most)."""
    store = Store(hub.settings.effective_database_url)
    try:
        for _ in range(100):
            with store.db.read() as s:
                action = s.scalar(select(AuditEntryRow.action).where(AuditEntryRow.exchange_id == exchange_id))
            if action:
                return str(action)
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError(f"no audit entry {exchange_id}")


def person(hub: RunningHub, username: str) -> m.Person:
    return hub.hub.store.registry.get_person(username)


def test_the_operator_registers_a_department_a_system_and_a_person_in_the_browser(
    browser: Any, hub: RunningHub
) -> None:
    page = new_page(browser, hub, hub.operator)
    page.goto(console_url(hub) + "/admin")
    assert page.locator("h1").inner_text() == "成员与证书管理"
    screenshot(page, "admin-overview")

    page.get_by_role("link", name="部门", exact=True).click()
    page.fill("input[name=code]", TRANSPORT.code)
    page.fill("input[name=name]", TRANSPORT.name)
    page.fill("input[name=division_code]", TRANSPORT.division_code)
    page.select_option("select[name=level]", "city")
    page.get_by_role("button", name="登记").click()
    assert page.locator(".notice").inner_text() == "部门已登记。"
    assert TRANSPORT.name in page.locator("table").inner_text()
    assert hub.hub.store.registry.get_department(TRANSPORT.code).name == TRANSPORT.name

    page.goto(console_url(hub) + "/admin/systems")
    page.fill("input[name=code]", "transport-app")
    page.fill("input[name=name]", "交通业务系统")
    page.select_option("select[name=department_code]", TRANSPORT.code)
    page.get_by_role("button", name="登记").click()
    assert page.locator(".notice").inner_text() == "系统已登记。"
    assert hub.hub.store.registry.get_system("transport-app").department_code == TRANSPORT.code

    page.goto(console_url(hub) + "/admin/people")
    create = page.locator("form[action='/admin/people']")
    create.locator("input[name=username]").fill("li-consumer")
    create.locator("input[name=display_name]").fill("李四")
    create.locator("select[name=department_code]").select_option(TRANSPORT.code)
    create.get_by_label("数据使用部门人员").check()
    create.locator("input[name=id_number]").fill(sample_id_number("li-consumer"))
    create.get_by_role("button", name="登记").click()
    assert page.locator(".notice").inner_text() == "人员已登记。"
    assert "id_number" not in page.url and sample_id_number("li-consumer") not in page.content()
    assert person(hub, "li-consumer").roles == {m.Role.CONSUMER}
    row = page.locator("tr", has_text="li-consumer")
    assert row.locator(".tag").all_inner_texts() == ["数据使用部门人员"]

    role = page.locator("form[action='/admin/people/role']")
    role.locator("input[name=username]").fill("li-consumer")
    role.locator("select[name=role]").select_option("auditor")
    role.locator("input[name=reason]").fill("兼任本局审计")
    role.get_by_role("button", name="分配角色").click()
    assert "auditor and consumer cannot be held together" in page.locator(".refusal").inner_text()
    assert role.locator("input[name=reason]").input_value() == "兼任本局审计"  # kept as typed
    assert role.locator("input[name=username]").input_value() == "li-consumer"
    role.locator("select[name=role]").select_option("owner_steward")
    role.locator("input[name=reason]").fill("兼管本局目录")
    role.get_by_role("button", name="分配角色").click()
    assert page.locator(".notice").inner_text() == "角色已分配。"
    assert person(hub, "li-consumer").roles == {m.Role.CONSUMER, m.Role.OWNER_STEWARD}
    screenshot(page, "admin-people")
    page.get_by_role("link", name="English").click()
    assert page.locator("h1").inner_text() == "People"
    screenshot(page, "admin-people-en")
    page.context.close()


def test_a_long_list_of_departments_is_paged(hub: RunningHub) -> None:
    for n in range(6):
        first17 = f"11350200MB0{n}9999"
        first17 += "0" * (17 - len(first17))
        hub.add_department(m.Department(uscc(first17), f"分页测试部门{n}", "350200", m.AdministrativeLevel.CITY))
    with web_client(hub, hub.operator) as client:
        first = client.get("/admin/departments")
        assert first.text.count("<tr><td><code>") == 5
        following = re.search(r'href="(/admin/departments\?page=[^"]+)"', first.text)
        assert following, "a full page links to the next"
        second = client.get(following.group(1).replace("&amp;", "&"))
        assert second.status_code == 200 and second.text.count("<tr><td><code>") >= 1
        shown = set(re.findall(r"分页测试部门\d", first.text)) | set(re.findall(r"分页测试部门\d", second.text))
        assert len(shown) > len(set(re.findall(r"分页测试部门\d", first.text)))


def test_a_refused_department_keeps_what_was_typed_and_says_why(hub: RunningHub) -> None:
    with web_client(hub, hub.operator) as client:
        csrf = csrf_of(client.get("/admin/departments").text)
        before = hub.rows(DepartmentRow)
        typed = {"code": AUTHORITY.code, "name": "重复的部门", "division_code": "350200", "level": "city"}
        duplicate = client.post("/admin/departments", data={"csrf": csrf, **typed})
        assert duplicate.status_code == 409
        assert "重复的部门" in duplicate.text and AUTHORITY.code in duplicate.text
        assert "already exists" in duplicate.text

        bad = client.post("/admin/departments", data={"csrf": csrf, **typed, "code": "NOT-A-CODE"})
        assert bad.status_code == 400
        assert 'value="NOT-A-CODE"' in bad.text and 'value="重复的部门"' in bad.text
        assert "department.code" in bad.text and "unified social credit code" in bad.text
        assert hub.rows(DepartmentRow) == before


def test_a_refused_system_keeps_what_was_typed(hub: RunningHub) -> None:
    with web_client(hub, hub.operator) as client:
        csrf = csrf_of(client.get("/admin/systems").text)
        typed = {
            "code": "Bad Code",
            "name": "写错代码的系统",
            "department_code": POLICE.code,
            "description": "说明文字",
        }
        refused = client.post("/admin/systems", data={"csrf": csrf, **typed})
        assert refused.status_code == 400 and "system.code" in refused.text
        assert 'value="Bad Code"' in refused.text and ">说明文字</textarea>" in refused.text
        assert f'<option value="{POLICE.code}" selected>' in refused.text


def test_a_refused_person_never_shows_the_identity_number_back(hub: RunningHub) -> None:
    number = sample_id_number("zhou-typo")
    with web_client(hub, hub.operator) as client:
        csrf = csrf_of(client.get("/admin/people").text)
        before = hub.rows(PersonRow)
        typed = {"username": "zhou-typo", "display_name": "周五", "department_code": POLICE.code, "roles": "auditor"}
        refused = client.post("/admin/people", data={"csrf": csrf, **typed, "id_number": number[:17] + "Z"})
        assert refused.status_code == 400
        assert "id_number" in refused.text and number[:17] not in refused.text
        assert 'value="zhou-typo"' in refused.text and 'value="auditor" checked' in refused.text
        assert hub.rows(PersonRow) == before


def test_a_steward_posting_the_operator_form_is_refused_and_nothing_is_created(hub: RunningHub, steward: Path) -> None:
    with web_client(hub, steward) as client:
        assert client.get("/admin/departments").status_code == 403
        csrf = csrf_of(client.get("/").text)
        before = hub.rows(DepartmentRow)
        typed = {"code": uscc("11350200MB0056789"), "name": "冒名部门", "division_code": "350200", "level": "city"}
        refused = client.post("/admin/departments", data={"csrf": csrf, **typed})
        assert refused.status_code == 403
        found = exchange_id_in(refused.text)
        assert found, "the refusal names its audit record"
        assert audit_action(hub, found) == "denied:CreateDepartment"
        assert "register departments" in refused.text
        assert hub.rows(DepartmentRow) == before
        assert 'href="/admin"' not in client.get("/").text  # the menu offers no operator page


def test_the_operator_revokes_a_certificate_and_its_holders_session_ends(browser: Any, hub: RunningHub) -> None:
    holder = hub.add_person("wu-leaver", POLICE.code, m.Role.CONSUMER)
    fingerprint = pki.fingerprint_of_pem((holder / "cert.pem").read_bytes())
    with web_client(hub, holder) as session:
        assert session.get("/").status_code == 200
        page = new_page(browser, hub, hub.operator)
        page.goto(console_url(hub) + "/admin/certificates?principal=person/wu-leaver")
        row = page.locator("tr", has_text=fingerprint[:16])
        row.locator("input[name=reason]").fill("调离本单位")
        row.get_by_role("button", name="吊销").click()
        assert "证书已吊销" in page.locator(".notice").inner_text()
        page.goto(console_url(hub) + "/admin/certificates?principal=person/wu-leaver")
        assert "已吊销" in page.locator("tr", has_text=fingerprint[:16]).inner_text()
        assert "调离本单位" in page.locator("table").inner_text()
        ended = session.get("/")
        assert ended.status_code == 401 and "revoked" in ended.text
        page.context.close()


def test_a_revocation_without_a_reason_is_refused(hub: RunningHub) -> None:
    holder = hub.add_person("zheng-keeps", POLICE.code, m.Role.CONSUMER)
    fingerprint = pki.fingerprint_of_pem((holder / "cert.pem").read_bytes())
    with web_client(hub, hub.operator) as client:
        csrf = csrf_of(client.get("/admin/certificates").text)
        refused = client.post("/admin/certificates/revoke", data={"csrf": csrf, "fingerprint": fingerprint})
        assert refused.status_code == 400 and "reason" in refused.text
    with web_client(hub, holder) as session:
        assert session.get("/").status_code == 200  # still valid


def test_the_operator_issues_a_certificate_from_a_pasted_request(browser: Any, hub: RunningHub) -> None:
    hub.add_person("feng-newkey", POLICE.code, m.Role.CONSUMER)
    ref = m.PrincipalRef(m.PrincipalKind.PERSON, "feng-newkey")
    csr = pki.make_csr(pki.new_key(), ref)
    page = new_page(browser, hub, hub.operator)
    page.goto(console_url(hub) + "/admin/certificates")
    issue = page.locator("form[action='/admin/certificates/issue']")
    issue.locator("input[name=principal]").fill("person/feng-newkey")
    issue.locator("textarea[name=csr_pem]").fill(csr)
    issue.locator("input[name=validity_days]").fill("30")
    issue.get_by_role("button", name="签发").click()
    assert page.locator("h1").inner_text() == "证书已签发"
    pem = page.locator("pre.pem").inner_text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    fingerprint = pki.fingerprint_of_pem(pem.encode())
    with page.expect_download() as download:
        page.get_by_role("link", name="下载证书（PEM）").click()
    assert pki.fingerprint_of_pem(Path(download.value.path()).read_bytes()) == fingerprint
    page.goto(console_url(hub) + "/admin/certificates?principal=person/feng-newkey")
    assert fingerprint[:16] in page.locator("table").inner_text()
    screenshot(page, "admin-certificates")
    page.context.close()


def test_a_refused_certificate_request_keeps_the_request(hub: RunningHub) -> None:
    with web_client(hub, hub.operator) as client:
        csrf = csrf_of(client.get("/admin/certificates").text)
        typed = {"principal": "person/nobody-here", "csr_pem": "not a request", "validity_days": "30"}
        refused = client.post("/admin/certificates/issue", data={"csrf": csrf, **typed})
        assert refused.status_code == 404
        assert "nobody-here" in refused.text and ">not a request</textarea>" in refused.text


def test_the_health_page_shows_the_hubs_state(browser: Any, hub: RunningHub) -> None:
    page = new_page(browser, hub, hub.operator)
    page.goto(console_url(hub) + "/admin/health")
    table = page.locator("table").inner_text()
    assert "正在提供服务" in table and "审计日志完整" in table
    assert "证书到期时间：hub/server" in table
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", table), "expiries are shown as ISO UTC times"
    screenshot(page, "admin-health")
    page.context.close()
