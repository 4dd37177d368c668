"""The owner steward's inbox in the console: due dates, overdue requests, approving with masks, refusals.

A real hub serves the console; requests are made by gRPC (quickly), decided in a real browser.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from exchange import models as m
from exchange import wire as w
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, AuditStagedRow, ShareRequestRow
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc
from exchange.workdays import WorkCalendar
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, web_client
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, exchange_id_in, identity_spec, today

IDENTITY = "10101/350200000001"


class World:
    """A hub with an owner (police), a consumer (housing), a share manager, and an entry to ask for."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        hub.add_department(POLICE)
        hub.add_department(HOUSING)
        self.owner = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
        self.consumer = hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER)
        self.manager = hub.add_person("sm-lin", AUTHORITY.code, m.Role.SHARE_MANAGER)
        hub.add_system("zj-xt", HOUSING.code)
        hub.publish(self.owner, identity_spec(IDENTITY))

    def call(self, identity: Path, method: str, request: Any) -> Any:
        with self.hub.client(identity) as client:
            return getattr(rights_pb2_grpc.RightsServiceStub(client.channel), method)(request, timeout=20)

    def apply(self, purpose: str = "住房保障资格审核") -> str:
        app = m.Application(
            resource_code=IDENTITY,
            consumer_department_code="",
            system_codes=("zj-xt",),
            purpose=purpose,
            legal_basis="《公共租赁住房管理办法》第七条",
            fields=("name", "id_number", "address"),
            start=today(),
            end=today() + dt.timedelta(days=365),
            expected_daily_calls=500,
        )
        applied = self.call(self.consumer, "Apply", pb.ApplyRequest(request=w.application_to_wire(app)))
        return str(applied.id)

    def request(self, request_id: str) -> Any:
        return self.call(self.owner, "GetShareRequest", pb.GetShareRequestRequest(id=request_id))

    def approve(self, request_id: str, *masks: tuple[str, pb.MaskKind.ValueType]) -> None:
        approval = pb.ApproveRequest(
            id=request_id,
            fields=["name", "id_number"],
            reason="同意核验",
            masks=[pb.FieldMask(field=f, mask=k) for f, k in masks],
        )
        self.call(self.owner, "Approve", approval)

    def make_overdue(self, request_id: str) -> None:
        """Ten working days pass without an answer: the due date moved into the past, in the store."""
        store = Store(self.hub.settings.effective_database_url)
        try:
            with store.db.write() as s:
                s.execute(
                    update(ShareRequestRow)
                    .where(ShareRequestRow.id == request_id)
                    .values(due_date=today() - dt.timedelta(days=3))
                )
        finally:
            store.close()

    def recorded(self, exchange_id: str) -> bool:
        """Whether the audit log holds the record ``exchange_id`` (integrated, or staged to be)."""
        store = Store(self.hub.settings.effective_database_url)
        try:
            for _ in range(50):
                with store.db.read() as s:
                    entries = s.scalar(
                        select(func.count()).select_from(AuditEntryRow).where(AuditEntryRow.exchange_id == exchange_id)
                    )
                    staged = s.scalar(
                        select(func.count())
                        .select_from(AuditStagedRow)
                        .where(AuditStagedRow.record.contains(exchange_id))
                    )
                if entries or staged:
                    return True
                time.sleep(0.2)
            return False
        finally:
            store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with console_hub(tmp_path_factory.mktemp("inbox") / "hub") as hub:
        yield World(hub)


def working_days_after(start: dt.date, due: dt.date) -> int:
    calendar = WorkCalendar.mainland()
    return sum(1 for n in range(1, (due - start).days + 1) if calendar.is_working_day(start + dt.timedelta(days=n)))


def row_of(html: str, request_id: str) -> str:
    found = re.search(r"<tr[^>]*>(?:(?!</tr>).)*" + re.escape(request_id) + r".*?</tr>", html, re.S)
    assert found, f"no row for {request_id}"
    return found.group(0)


def test_owner_sees_the_pending_request_and_approves_it_with_a_mask(world: World, browser: Any) -> None:
    request_id = world.apply()
    due = world.request(request_id).due_date
    due_day = dt.date(due.year, due.month, due.day)
    page = new_page(browser, world.hub, world.owner)
    page.goto(console_url(world.hub) + "/inbox")
    row = page.locator("tr", has_text=request_id)
    assert row.count() == 1
    assert due_day.isoformat() in row.inner_text()
    assert f"剩余 {working_days_after(today(), due_day)} 个工作日" in row.inner_text()
    screenshot(page, "inbox-list")

    row.get_by_role("link", name=request_id).click()
    page.wait_for_url(f"**/inbox/{request_id}")
    assert "《公共租赁住房管理办法》第七条" in page.content() and "住房保障资格审核" in page.content()
    page.locator("#field-address").uncheck()
    page.locator("select[name='mask.id_number']").select_option("id_number")
    page.locator("#approve textarea[name=reason]").fill("仅用于资格核验")
    screenshot(page, "inbox-approve")
    page.locator("#approve button[type=submit]").click()
    page.wait_for_url(f"**/inbox/{request_id}?notice=inbox.approved")
    assert "已同意该申请" in page.content()
    assert page.locator("#approve").count() == 0  # decided: no form any more

    approved = world.request(request_id)
    assert approved.status == pb.SHARE_REQUEST_STATUS_APPROVED
    assert list(approved.approved_fields) == ["name", "id_number"]
    assert [(x.field, x.mask) for x in approved.masks] == [("id_number", pb.MASK_KIND_ID_NUMBER)]
    assert approved.decision_reason == "仅用于资格核验"
    page.context.close()


def test_an_overdue_request_is_marked_and_counted(world: World) -> None:
    late = world.apply("逾期未答复的事项")
    on_time = world.apply("按时的事项")
    world.make_overdue(late)
    with web_client(world.hub, world.owner) as client:
        inbox = client.get("/inbox")
    assert inbox.status_code == 200
    assert 'class="overdue"' in row_of(inbox.text, late) and "已逾期" in row_of(inbox.text, late)
    assert 'class="overdue"' not in row_of(inbox.text, on_time)
    assert re.search(r"有 \d+ 件申请已超过答复期限", inbox.text)
    with web_client(world.hub, world.manager) as client:
        desk = client.get("/manage")
    overdue_section = desk.text[desk.text.index('id="overdue"') :]
    assert late in overdue_section and on_time not in overdue_section


def test_the_status_filter_and_the_empty_state(world: World) -> None:
    with web_client(world.hub, world.owner) as client:
        upheld = client.get("/inbox", params={"status": "refusal_upheld"})
        assert upheld.status_code == 200 and "没有符合条件的申请" in upheld.text
        bad = client.get("/inbox", params={"status": "nonsense"})
        assert bad.status_code == 400


def test_a_consumer_is_refused_the_decision_page_and_the_approve_form(world: World) -> None:
    request_id = world.apply("消费方自行审批的尝试")
    with web_client(world.hub, world.consumer) as client:
        typed = client.get(f"/inbox/{request_id}")
        assert typed.status_code == 403 and exchange_id_in(typed.text)
        listed = client.get("/inbox")
        assert listed.status_code == 403
        token = csrf_of(client.get("/").text)
        posted = client.post(
            f"/inbox/{request_id}/approve",
            data={"csrf": token, "fields": ["name"], "mask.name": "none", "reason": "自己批准"},
        )
    assert posted.status_code == 403
    found = exchange_id_in(posted.text)
    assert found, posted.text
    assert world.recorded(found)
    unchanged = world.request(request_id)
    assert unchanged.status == pb.SHARE_REQUEST_STATUS_PENDING and not unchanged.approved_fields


def test_a_refused_approval_keeps_what_was_typed(world: World) -> None:
    request_id = world.apply("表单保留的事项")
    with web_client(world.hub, world.owner) as client:
        token = csrf_of(client.get(f"/inbox/{request_id}").text)
        refused = client.post(
            f"/inbox/{request_id}/approve",
            data={
                "csrf": token,
                "fields": ["name", "phone"],  # phone was not asked for
                "mask.name": "name",
                "end_date": (today() + dt.timedelta(days=30)).isoformat(),
                "reason": "这段理由应当保留",
            },
        )
    assert refused.status_code == 400
    assert "phone not in" in refused.text  # the service's own reason
    assert "这段理由应当保留" in refused.text
    assert (today() + dt.timedelta(days=30)).isoformat() in refused.text
    assert re.search(r'value="name" id="field-name" checked', refused.text)
    assert not re.search(r'value="id_number" id="field-id_number" checked', refused.text)
    assert re.search(r'<option value="name" selected>', refused.text)
    assert world.request(request_id).status == pb.SHARE_REQUEST_STATUS_PENDING


def test_a_refusal_needs_a_reason_and_then_refuses(world: World) -> None:
    request_id = world.apply("将被拒绝的事项")
    with web_client(world.hub, world.owner) as client:
        token = csrf_of(client.get(f"/inbox/{request_id}").text)
        empty = client.post(f"/inbox/{request_id}/refuse", data={"csrf": token, "reason": ""})
        assert empty.status_code == 400 and "reason" in empty.text
        done = client.post(f"/inbox/{request_id}/refuse", data={"csrf": token, "reason": "超出履职需要"})
        assert done.status_code == 303 and done.headers["location"].endswith("notice=inbox.refused")
    refused = world.request(request_id)
    assert refused.status == pb.SHARE_REQUEST_STATUS_REFUSED and refused.decision_reason == "超出履职需要"


def test_a_steward_of_the_applying_department_may_not_approve(world: World) -> None:
    request_id = world.apply("申请方管理员自批")
    housing_steward = world.hub.add_person("zj-steward", HOUSING.code, m.Role.OWNER_STEWARD)
    with web_client(world.hub, housing_steward) as client:
        assert f"/inbox/{request_id}" not in client.get("/inbox").text  # not its department's data
        token = csrf_of(client.get("/").text)
        refused = client.post(
            f"/inbox/{request_id}/approve", data={"csrf": token, "fields": ["name"], "reason": "越权"}
        )
    assert refused.status_code == 403
    found = exchange_id_in(refused.text)
    assert found and world.recorded(found)
    assert world.request(request_id).status == pb.SHARE_REQUEST_STATUS_PENDING


def test_an_unknown_mask_kind_is_refused_and_the_form_kept(world: World) -> None:
    request_id = world.apply("未知脱敏方式")
    with web_client(world.hub, world.owner) as client:
        token = csrf_of(client.get(f"/inbox/{request_id}").text)
        refused = client.post(
            f"/inbox/{request_id}/approve",
            data={"csrf": token, "fields": ["name"], "mask.name": "scramble", "reason": "保留此理由"},
        )
    assert refused.status_code == 400
    assert "is not a mask kind" in refused.text and "保留此理由" in refused.text
    assert world.request(request_id).status == pb.SHARE_REQUEST_STATUS_PENDING


def test_in_english_overdue_rows_show_and_a_refused_approval_comes_back_as_typed(world: World, browser: Any) -> None:
    late = world.apply("An overdue matter")
    world.make_overdue(late)
    page = new_page(browser, world.hub, world.owner)
    page.goto(console_url(world.hub) + "/lang/en?next=/inbox")
    page.wait_for_url("**/inbox")
    row = page.locator("tr.overdue", has_text=late)
    assert row.count() == 1 and "Overdue by" in row.inner_text()
    assert "past their answer date" in page.content()
    screenshot(page, "inbox-overdue-en")
    row.get_by_role("link", name=late).click()
    page.wait_for_url(f"**/inbox/{late}")
    page.locator("#field-name").uncheck()
    page.locator("select[name='mask.name']").select_option("name")  # a mask on an item not granted
    page.locator("#approve textarea[name=reason]").fill("kept as typed")
    page.locator("#approve button[type=submit]").click()
    page.wait_for_url(f"**/inbox/{late}/approve")
    assert "each mask names one granted field" in page.locator(".refusal").inner_text()
    assert not page.locator("#field-name").is_checked() and page.locator("#field-id_number").is_checked()
    assert page.locator("select[name='mask.name']").input_value() == "name"
    assert page.locator("#approve textarea[name=reason]").input_value() == "kept as typed"
    screenshot(page, "inbox-approve-refused-en")
    assert world.request(late).status == pb.SHARE_REQUEST_STATUS_PENDING
    page.context.close()
