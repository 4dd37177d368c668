"""The owner steward's catalog entries in the console, against a real hub and a real browser: writing an
entry with its data items, editing it, changing its status with a reason, and refusals keeping the form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from exchange import models as m
from exchange.store.schema import ResourceRow
from exchange.v1 import catalog_pb2 as cpb
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, web_client
from tests.harness import HOUSING, POLICE, RunningHub, identity_spec


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("entries") / "hub") as h:
        h.add_department(POLICE)
        h.add_department(HOUSING)
        yield h


@pytest.fixture(scope="module")
def steward(hub: RunningHub) -> Path:
    return hub.add_person("chen-steward", POLICE.code, m.Role.OWNER_STEWARD)


def read_back(hub: RunningHub, steward: Path, code: str) -> cpb.Resource:
    """The entry as a gRPC client of the hub reads it."""
    with hub.client(steward) as client:
        return client.call(client.catalog.GetResource, cpb.GetResourceRequest(code=code))


def test_a_steward_writes_edits_and_suspends_an_entry_in_the_browser(
    browser: Any, hub: RunningHub, steward: Path
) -> None:
    hub.publish(steward, identity_spec("10101/350200000009", name="已有的草稿"), publish=False)
    page = new_page(browser, hub, steward)
    page.goto(console_url(hub) + "/entries/new")
    screenshot(page, "entries-form")
    page.fill("input[name=code]", "10102/350200000001")
    page.fill("input[name=name]", "机动车登记信息")
    page.fill("textarea[name=summary]", "机动车登记与转移信息")
    page.select_option("select[name=share_type]", "conditional")
    page.select_option("select[name=share_method]", "query")
    page.select_option("select[name=update_cycle]", "daily")
    page.fill("textarea[name=share_conditions]", "按事项申请")
    page.fill("textarea[name=legal_basis]", "《中华人民共和国道路交通安全法》")
    page.fill("input[name=item-0-name]", "plate")
    page.fill("input[name=item-0-title]", "号牌号码")
    page.check("input[name=item-0-filterable]")
    page.fill("input[name=item-1-name]", "owner_name")
    page.fill("input[name=item-1-title]", "所有人姓名")
    page.select_option("select[name=item-1-sensitivity]", "important")
    page.check("input[name=item-1-pi]")
    page.get_by_role("button", name="保存为草稿").click()
    assert page.locator(".notice").inner_text() == "条目已保存为草稿。"

    stored = read_back(hub, steward, "10102/350200000001")
    assert stored.name == "机动车登记信息" and stored.status == cpb.RESOURCE_STATUS_DRAFT
    assert [(i.name, i.filterable, i.personal_information) for i in stored.data_items] == [
        ("plate", True, False),
        ("owner_name", False, True),
    ]
    assert stored.data_items[1].sensitivity == cpb.SENSITIVITY_GRADE_IMPORTANT

    page.fill("input[name=name]", "机动车登记信息（含转移）")
    page.fill("input[name=item-2-name]", "brand")
    page.fill("input[name=item-2-title]", "品牌型号")
    page.fill("input[name=reason]", "增加品牌型号")
    page.get_by_role("button", name="保存").click()
    assert page.locator(".notice").inner_text() == "条目已修改。"
    assert [i.name for i in read_back(hub, steward, "10102/350200000001").data_items] == [
        "plate",
        "owner_name",
        "brand",
    ]

    page.get_by_role("button", name="发布").click()
    assert page.locator(".notice").inner_text() == "条目已发布。"
    page.fill("form[action='/entries/status'] input[name=reason]", "数据核查期间暂停")
    page.get_by_role("button", name="暂停共享").click()
    assert page.locator(".notice").inner_text() == "条目已暂停共享。"
    stored = read_back(hub, steward, "10102/350200000001")
    assert stored.status == cpb.RESOURCE_STATUS_SUSPENDED and stored.name == "机动车登记信息（含转移）"
    assert page.get_by_role("button", name="恢复共享").is_visible()
    screenshot(page, "entries-edit")

    page.goto(console_url(hub) + "/entries")
    table = page.locator("table").inner_text()
    assert "机动车登记信息（含转移）" in table and "已暂停" in table and "已有的草稿" in table and "草稿" in table
    screenshot(page, "entries-list")
    page.context.close()


def test_suspending_without_a_reason_is_refused_and_nothing_changes(hub: RunningHub, steward: Path) -> None:
    code = "10103/350200000001"
    version = hub.publish(steward, identity_spec(code)).version
    with web_client(hub, steward) as client:
        form = client.get("/entries/edit", params={"code": code})
        assert form.status_code == 200 and 'value="10103/350200000001" readonly' in form.text
        data = {"csrf": csrf_of(form.text), "code": code, "expected_version": str(version), "change": "suspend"}
        refused = client.post("/entries/status", data={**data, "reason": ""})
        assert refused.status_code == 400 and "reason" in refused.text
    assert read_back(hub, steward, code).status == cpb.RESOURCE_STATUS_PUBLISHED


def test_a_refused_entry_keeps_every_row_typed(hub: RunningHub, steward: Path) -> None:
    before = hub.rows(ResourceRow)
    with web_client(hub, steward) as client:
        csrf = csrf_of(client.get("/entries/new").text)
        typed = {
            "csrf": csrf,
            "code": "10104/350200000001",
            "name": "缺少依据的条目",
            "share_type": "conditional",
            "share_method": "query",
            "update_cycle": "monthly",
            "share_conditions": "按事项申请",
            "item-0-name": "plate",
            "item-0-title": "号牌号码",
            "item-0-type": "string",
            "item-0-sensitivity": "core",
            "item-0-pi": "on",
            "publish": "yes",
        }
        refused = client.post("/entries/new", data=typed)
        assert refused.status_code == 400
        assert "resource.legal_basis" in refused.text
        assert 'value="缺少依据的条目"' in refused.text and 'value="plate"' in refused.text
        assert '<option value="core" selected>' in refused.text
        assert 'name="item-0-pi" checked' in refused.text
    assert hub.rows(ResourceRow) == before


def test_an_entry_of_another_department_is_not_the_stewards_to_change(hub: RunningHub, steward: Path) -> None:
    other = hub.add_person("lin-steward", HOUSING.code, m.Role.OWNER_STEWARD)
    code = "10105/350200000001"
    hub.publish(other, identity_spec(code, department=HOUSING.code))
    with web_client(hub, steward) as client:
        edit = client.get(f"/entries/edit?code={quote(code, safe='')}")
        assert edit.status_code == 200  # a published entry is visible to all
        data = {"csrf": csrf_of(edit.text), "code": code, "expected_version": "1", "change": "retire", "reason": "x"}
        refused = client.post("/entries/status", data=data)
        assert refused.status_code == 403 and "EX" in refused.text
        listed = client.get("/entries")
        assert code not in listed.text  # only the steward's own department is listed
    assert read_back(hub, other, code).status == cpb.RESOURCE_STATUS_PUBLISHED


def test_the_entries_pages_are_refused_to_a_consumer(hub: RunningHub) -> None:
    consumer = hub.add_person("he-consumer", POLICE.code, m.Role.CONSUMER)
    with web_client(hub, consumer) as client:
        refused = client.get("/entries")
        assert refused.status_code == 403 and "EX" in refused.text
        assert client.get("/entries/new").status_code == 403


def test_a_retired_entry_is_listed_when_asked_for(hub: RunningHub, steward: Path) -> None:
    code = "10106/350200000001"
    version = hub.publish(steward, identity_spec(code, name="将停用的条目")).version
    with web_client(hub, steward) as client:
        form = client.get("/entries/edit", params={"code": code})
        data = {"csrf": csrf_of(form.text), "code": code, "expected_version": str(version), "change": "retire"}
        retired = client.post("/entries/status", data={**data, "reason": "由新条目取代"})
        assert retired.status_code == 303
        assert "将停用的条目" not in client.get("/entries").text
        assert "将停用的条目" in client.get("/entries", params={"status": "retired"}).text
    assert read_back(hub, steward, code).status == cpb.RESOURCE_STATUS_RETIRED
