"""A consumer's requests in the console: applying through the browser form, following the department's
requests with their due dates, a refused form shown again as typed, a person without the right refused
and recorded, and disputing a refusal."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from exchange import models as m
from exchange import wire as w
from exchange.store import Store
from exchange.store.schema import ShareRequestRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, web_client
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, exchange_id_in, identity_spec, today

IDENTITY = "10101/350200000001"
LICENCE = "10101/350200000002"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("requests") / "hub") as h:
        for d in (POLICE, HOUSING):
            h.add_department(d)
        yield h


@pytest.fixture(scope="module")
def people(hub: RunningHub) -> dict[str, Path]:
    found = {
        "owner": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "consumer": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        "auditor": hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR),
    }
    hub.add_system("zj-fwdj", HOUSING.code)
    hub.publish(found["owner"], identity_spec(IDENTITY))
    hub.publish(
        found["owner"],
        identity_spec(
            LICENCE, name="户籍证明", share_type=m.ShareType.UNCONDITIONAL, share_conditions="", legal_basis=""
        ),
    )
    return found


def _rpc(hub: RunningHub, identity: Path, method: str, request: Any) -> Any:
    with hub.client(identity) as client:
        return getattr(rights_pb2_grpc.RightsServiceStub(client.channel), method)(request, timeout=20)


def _apply_by_grpc(hub: RunningHub, consumer: Path, purpose: str) -> pb.ShareRequest:
    app = m.Application(
        resource_code=IDENTITY,
        consumer_department_code="",
        system_codes=("zj-fwdj",),
        purpose=purpose,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name", "id_number"),
        start=today(),
        end=today() + dt.timedelta(days=30),
        expected_daily_calls=100,
    )
    applied: pb.ShareRequest = _rpc(hub, consumer, "Apply", pb.ApplyRequest(request=w.application_to_wire(app)))
    return applied


def _form(client: httpx.Client, **changes: Any) -> dict[str, Any]:
    """A complete application form, as the page would post it, with ``changes``."""
    page = client.get("/requests/new", params={"resource": IDENTITY})
    assert page.status_code == 200, page.text
    form = {
        "csrf": csrf_of(page.text),
        "resource": IDENTITY,
        "fields": ["name"],
        "systems": ["zj-fwdj"],
        "purpose": "房屋交易资格审核",
        "legal_basis": "《城市房地产管理法》第三十八条",
        "start": today().isoformat(),
        "end": (today() + dt.timedelta(days=90)).isoformat(),
        "daily_calls": "200",
    }
    return {**form, **changes}


def test_a_consumer_applies_through_the_form_and_follows_the_request(
    browser: Any, hub: RunningHub, people: dict[str, Path]
) -> None:
    page = new_page(browser, hub, people["consumer"])
    page.goto(console_url(hub) + f"/catalog/{IDENTITY}")
    page.click("a.button")
    page.check("input[name=systems][value=zj-fwdj]")
    page.fill("input[name=purpose]", "二手房交易网签")
    page.fill("textarea[name=legal_basis]", "《城市房地产管理法》第三十八条")
    page.fill("input[name=daily_calls]", "300")
    page.click("form.apply button[type=submit]")  # no item chosen: refused, the form as it was typed
    assert "name the fields needed" in page.locator(".refusal").inner_text()
    assert page.input_value("input[name=purpose]") == "二手房交易网签"
    assert page.input_value("input[name=daily_calls]") == "300"
    assert page.is_checked("input[name=systems][value=zj-fwdj]")
    screenshot(page, "requests-apply-refused")
    page.check("input[name=fields][value=name]")
    page.check("input[name=fields][value=id_number]")
    screenshot(page, "requests-apply")
    page.click("form.apply button[type=submit]")
    page.wait_for_url(re.compile(r".*/requests/SR-\d{8}-[0-9a-f]{8}\?notice=requests\.applied$"))
    assert page.locator("p.notice").inner_text() == "申请已提交。"
    request_id = page.url.split("/requests/")[1].split("?")[0]
    assert page.locator("h1 .tag").inner_text() == "待审核"
    shown = _rpc(hub, people["consumer"], "GetShareRequest", pb.GetShareRequestRequest(id=request_id))
    assert list(shown.fields) == ["name", "id_number"] and shown.purpose == "二手房交易网签"
    assert shown.expected_daily_calls == 300 and list(shown.system_codes) == ["zj-fwdj"]
    due = f"{shown.due_date.year:04d}-{shown.due_date.month:02d}-{shown.due_date.day:02d}"
    assert due in page.locator("dl.facts").first.inner_text()
    assert "提交申请" in page.locator("table.history").inner_text()
    screenshot(page, "requests-one")

    page.click("nav.menu >> text=我的申请")
    row = page.locator("table.requests tbody tr", has_text=request_id)
    assert "二手房交易网签" in row.inner_text() and due in row.inner_text() and "居民身份信息" in row.inner_text()
    assert row.get_attribute("class") is None  # not overdue
    screenshot(page, "requests-mine")
    page.context.close()


def test_an_unconditional_application_is_granted_at_once(hub: RunningHub, people: dict[str, Path]) -> None:
    with web_client(hub, people["consumer"]) as client:
        form = _form(client, resource=LICENCE, legal_basis="")
        answer = client.post("/requests/new", data=form, follow_redirects=True)
    assert answer.status_code == 200 and "申请已提交。" in answer.text
    assert "已授权" in answer.text and "GR-" in answer.text


def test_a_refused_application_shows_why_and_keeps_what_was_typed(hub: RunningHub, people: dict[str, Path]) -> None:
    before = hub.rows(ShareRequestRow)
    with web_client(hub, people["consumer"]) as client:
        forged = client.post("/requests/new", data=_form(client, fields=["name", "salary"], purpose="核对购房资格"))
        assert forged.status_code == 400
        assert "salary not in resource 10101/350200000001" in forged.text
        assert 'value="核对购房资格"' in forged.text and "《城市房地产管理法》第三十八条" in forged.text
        assert re.search(r'value="name" checked', forged.text)  # the item ticked stays ticked

        no_purpose = client.post("/requests/new", data=_form(client, purpose="", end="2020-13-01"))
        assert no_purpose.status_code == 400
        assert "request.end_date" in no_purpose.text and "is not a date" in no_purpose.text
        assert 'value="2020-13-01"' in no_purpose.text

        empty = client.post("/requests/new", data=_form(client, purpose=""))
        assert empty.status_code == 400 and "request.purpose" in empty.text
        assert 'value="200"' in empty.text  # the expected calls as typed
    assert hub.rows(ShareRequestRow) == before


def test_a_person_who_may_not_apply_is_refused_and_recorded(hub: RunningHub, people: dict[str, Path]) -> None:
    before = hub.rows(ShareRequestRow)
    with web_client(hub, people["auditor"]) as auditor:
        assert auditor.get("/requests/new", params={"resource": IDENTITY}).status_code == 403
        assert auditor.get("/requests").status_code == 403
        home = auditor.get("/")
        form = {
            "csrf": csrf_of(home.text),
            "resource": IDENTITY,
            "fields": ["name"],
            "systems": ["zj-fwdj"],
            "purpose": "查看",
            "legal_basis": "无",
            "start": today().isoformat(),
            "end": (today() + dt.timedelta(days=9)).isoformat(),
            "daily_calls": "1",
        }
        answer = auditor.post("/requests/new", data=form)
    assert answer.status_code == 403
    assert hub.rows(ShareRequestRow) == before
    found = exchange_id_in(answer.text)
    assert found, answer.text
    hub.hub.audit.flush()
    with hub.client(people["auditor"]) as c:
        records = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(page_size=10, exchange_id=found))
    (record,) = [json.loads(e.record) for e in records.entries]
    assert record["actor"] == "person/au-chen" and record["outcome"] == "denied"
    assert record["action"] == "denied:Apply"


def test_a_refusal_is_disputed_from_its_page(browser: Any, hub: RunningHub, people: dict[str, Path]) -> None:
    applied = _apply_by_grpc(hub, people["consumer"], "公租房资格复核")
    refusal = "申请数据项超出办理事项所需"
    _rpc(hub, people["owner"], "Refuse", pb.RefuseRequest(id=applied.id, reason=refusal))

    with web_client(hub, people["auditor"]) as auditor:  # sees the request, may not dispute it
        seen = auditor.get(f"/requests/{applied.id}")
        assert seen.status_code == 200 and refusal in seen.text and "/dispute" not in seen.text

    with web_client(hub, people["consumer"]) as client:
        page = client.get(f"/requests/{applied.id}")
        assert refusal in page.text and "对拒绝提出异议" in page.text and "厦门市住房和建设局" in page.text
        blank = client.post(f"/requests/{applied.id}/dispute", data={"csrf": csrf_of(page.text), "reason": " "})
        assert blank.status_code == 400 and "reason" in blank.text and "/dispute" in blank.text

    page = new_page(browser, hub, people["consumer"])
    page.goto(console_url(hub) + "/requests?status=refused")
    rows = page.locator("table.requests tbody tr")
    assert rows.count() == 1 and applied.id in rows.inner_text()
    page.click(f"text={applied.id}")
    screenshot(page, "requests-refused")
    page.fill("form.dispute textarea[name=reason]", "办理公租房资格复核须核对身份号码")
    page.click("form.dispute button")
    page.wait_for_url(re.compile(r".*\?notice=requests\.disputed$"))
    assert page.locator("h1 .tag").inner_text() == "异议处理中"
    assert "办理公租房资格复核须核对身份号码" in page.locator("table.history").inner_text()
    assert page.locator("form.dispute").count() == 0  # once only
    page.goto(console_url(hub) + "/requests?status=refusal_upheld")
    assert page.locator("p.empty").inner_text() == "没有此状态的申请。"
    page.context.close()
    shown = _rpc(hub, people["consumer"], "GetShareRequest", pb.GetShareRequestRequest(id=applied.id))
    assert shown.status == pb.SHARE_REQUEST_STATUS_DISPUTED


def test_an_overdue_request_is_marked(hub: RunningHub, people: dict[str, Path]) -> None:
    late = _apply_by_grpc(hub, people["consumer"], "逾期测试")
    store = Store(hub.settings.effective_database_url)
    try:  # ten working days pass without an answer
        with store.db.write() as s:
            s.execute(
                update(ShareRequestRow)
                .where(ShareRequestRow.id == late.id)
                .values(due_date=today() - dt.timedelta(days=1))
            )
    finally:
        store.close()
    with web_client(hub, people["consumer"]) as client:
        listed = client.get("/requests", params={"status": "pending"}).text
        row = re.search(r'<tr class="overdue">.*?</tr>', listed, re.S)
        assert row and late.id in row.group(0) and "已逾期" in row.group(0)
        assert listed.count('class="overdue"') == 1
        one = client.get(f"/requests/{late.id}").text
        assert "已逾期" in one and "reckoned on an earlier calendar" in one  # the due date is not the calendar's


def test_a_department_with_no_request_sees_the_empty_state(hub: RunningHub) -> None:
    other = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
    hub.add_department(other)
    clerk = hub.add_person("mz-clerk", other.code, m.Role.CONSUMER)
    with web_client(hub, clerk) as client:
        page = client.get("/requests")
    assert page.status_code == 200 and "本部门尚未提出任何共享申请。" in page.text
