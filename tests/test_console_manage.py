"""The share manager's desk and the grants pages in the console: issuing a grant, disputes, suspending and
resuming; what each role sees of a grant. A real hub, real browser; requests set up by gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from exchange.v1 import rights_pb2 as pb
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, text_lines, web_client
from tests.test_console_inbox import World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with console_hub(tmp_path_factory.mktemp("manage") / "hub") as hub:
        yield World(hub)


def grant_of(world: World, grant_id: str) -> Any:
    return world.call(world.manager, "GetGrant", pb.GetGrantRequest(id=grant_id))


def approved_request(world: World) -> str:
    request_id = world.apply("公租房资格复核")
    world.approve(request_id, ("id_number", pb.MASK_KIND_ID_NUMBER))
    return request_id


def test_the_share_manager_issues_a_grant_and_the_consumer_sees_it(world: World, browser: Any) -> None:
    request_id = approved_request(world)
    page = new_page(browser, world.hub, world.manager)
    page.goto(console_url(world.hub) + "/manage")
    awaiting = page.locator("#awaiting")
    assert awaiting.locator("tr", has_text=request_id).count() == 1
    assert text_lines(page, "#awaiting tbody tr td.date") == 1  # a date is not broken at its hyphens
    screenshot(page, "manage-desk")
    awaiting.get_by_role("link", name=request_id).click()
    page.wait_for_url(f"**/manage/{request_id}")
    page.locator("#grant input[name=daily_quota]").fill("300")
    page.locator("#grant input[name=rate_per_second]").fill("5")
    page.locator("#grant textarea[name=reason]").fill("经审核予以授权")
    page.locator("#grant button[type=submit]").click()
    page.wait_for_url(f"**/manage/{request_id}?notice=manage.granted")
    assert "已签发授权" in page.content()
    granted = world.request(request_id)
    assert granted.status == pb.SHARE_REQUEST_STATUS_GRANTED and granted.grant_id
    grant = grant_of(world, granted.grant_id)
    assert (grant.daily_quota, grant.rate_per_second, list(grant.fields)) == (300, 5, ["name", "id_number"])
    assert [(x.field, x.mask) for x in grant.masks] == [("id_number", pb.MASK_KIND_ID_NUMBER)]
    page.context.close()

    consumer = new_page(browser, world.hub, world.consumer)
    consumer.goto(console_url(world.hub) + "/grants")
    row = consumer.locator("tr", has_text=granted.grant_id)
    assert row.count() == 1
    text = row.inner_text()
    assert "身份证号脱敏" in text and "300" in text and "有效" in text
    assert "0 / 300" in text  # the consuming department sees its own use today against the quota
    assert text_lines(consumer, "tbody tr td.date") == 1
    screenshot(consumer, "grants-list")
    consumer.get_by_role("link", name=granted.grant_id).click()
    consumer.wait_for_url(f"**/grants/{granted.grant_id}")
    assert consumer.locator("form#suspend").count() == 0 and consumer.locator("form#revoke").count() == 0
    consumer.context.close()


def test_a_grant_form_refused_keeps_what_was_typed(world: World) -> None:
    request_id = approved_request(world)
    with web_client(world.hub, world.manager) as client:
        token = csrf_of(client.get(f"/manage/{request_id}").text)
        refused = client.post(
            f"/manage/{request_id}/grant",
            data={"csrf": token, "daily_quota": "99999999999", "rate_per_second": "2", "reason": "配额过大"},
        )
    assert refused.status_code == 400
    assert "daily_quota" in refused.text and 'value="99999999999"' in refused.text and "配额过大" in refused.text
    assert world.request(request_id).status == pb.SHARE_REQUEST_STATUS_APPROVED


def test_the_share_manager_suspends_then_resumes_a_grant(world: World, browser: Any) -> None:
    request_id = approved_request(world)
    grant_id = world.call(world.manager, "IssueGrant", pb.IssueGrantRequest(request_id=request_id)).id
    page = new_page(browser, world.hub, world.manager)
    page.goto(console_url(world.hub) + f"/grants/{grant_id}")
    assert "今日用量" in page.content() and page.locator("form#resume").count() == 0
    page.locator("#suspend button[type=submit]").click()
    page.wait_for_url(f"**/grants/{grant_id}/suspend")
    assert page.locator(".refusal").count() == 1  # a reason is required: the form comes back refused
    page.locator("#suspend textarea[name=reason]").fill("发现异常调用")
    page.locator("#suspend button[type=submit]").click()
    page.wait_for_url(f"**/grants/{grant_id}?notice=grants.suspended")
    assert grant_of(world, grant_id).status == pb.GRANT_STATUS_SUSPENDED
    assert page.locator("form#suspend").count() == 0
    page.locator("#resume textarea[name=reason]").fill("已核实，恢复")
    page.locator("#resume button[type=submit]").click()
    page.wait_for_url(f"**/grants/{grant_id}?notice=grants.resumed")
    resumed = grant_of(world, grant_id)
    assert resumed.status == pb.GRANT_STATUS_ACTIVE
    assert [e.action for e in resumed.history][-2:] == ["suspended", "resumed"]
    assert "暂停" in page.locator("table").last.inner_text()
    screenshot(page, "grant-page")
    page.context.close()


def test_a_consumer_cannot_suspend_or_reach_the_desk(world: World) -> None:
    request_id = approved_request(world)
    grant_id = world.call(world.manager, "IssueGrant", pb.IssueGrantRequest(request_id=request_id)).id
    with web_client(world.hub, world.consumer) as client:
        assert client.get("/manage").status_code == 403
        token = csrf_of(client.get(f"/grants/{grant_id}").text)
        refused = client.post(f"/grants/{grant_id}/suspend", data={"csrf": token, "reason": "试图暂停"})
    assert refused.status_code == 403 and "EX" in refused.text
    assert grant_of(world, grant_id).status == pb.GRANT_STATUS_ACTIVE


def test_the_share_manager_decides_a_dispute(world: World) -> None:
    request_id = world.apply("有异议的事项")
    world.call(world.owner, "Refuse", pb.RefuseRequest(id=request_id, reason="不属于履职范围"))
    world.call(world.consumer, "Dispute", pb.DisputeRequest(id=request_id, reason="属于法定职责"))
    with web_client(world.hub, world.manager) as client:
        desk = client.get("/manage")
        assert request_id in desk.text[desk.text.index('id="disputes"') : desk.text.index('id="overdue"')]
        token = csrf_of(client.get(f"/manage/{request_id}").text)
        decided = client.post(
            f"/manage/{request_id}/dispute",
            data={
                "csrf": token,
                "decision": "uphold",
                "reason": "依据不足",
                "daily_quota": "0",
                "rate_per_second": "0",
            },
        )
        assert decided.status_code == 303
    assert world.request(request_id).status == pb.SHARE_REQUEST_STATUS_REFUSAL_UPHELD


def test_the_owner_steward_may_suspend_a_grant_on_its_data(world: World) -> None:
    request_id = approved_request(world)
    grant_id = world.call(world.manager, "IssueGrant", pb.IssueGrantRequest(request_id=request_id)).id
    with web_client(world.hub, world.owner) as client:
        page = client.get(f"/grants/{grant_id}")
        assert page.status_code == 200 and 'id="suspend"' in page.text and 'id="revoke"' in page.text
        listed = client.get("/grants", params={"status": "active"})
        assert grant_id in listed.text
        done = client.post(f"/grants/{grant_id}/revoke", data={"csrf": csrf_of(page.text), "reason": "事项已办结"})
        assert done.status_code == 303
        revoked = client.get("/grants", params={"status": "revoked"})
        assert grant_id in revoked.text
    assert grant_of(world, grant_id).status == pb.GRANT_STATUS_REVOKED
