"""The console's objection pages in a real browser: a consumer raises one from a catalog entry, the entry
shows it, the share manager escalates it, the owner's steward answers it (a refused answer keeps what was
typed), and a person of another department is not offered the answer form and is refused if it posts one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange import models as m
from tests.console_support import console_hub, console_url, csrf_of, new_page, screenshot, web_client
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, identity_spec

IDENTITY = "10101/350200000001"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("objections") / "hub") as h:
        for d in (POLICE, HOUSING):
            h.add_department(d)
        yield h


@pytest.fixture(scope="module")
def people(hub: RunningHub) -> dict[str, Path]:
    found = {
        "owner": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "foreign_owner": hub.add_person("zj-steward", HOUSING.code, m.Role.OWNER_STEWARD),
        "consumer": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        "manager": hub.add_person("sm-lin", AUTHORITY.code, m.Role.SHARE_MANAGER),
    }
    hub.publish(found["owner"], identity_spec(IDENTITY))
    return found


def test_raise_see_escalate_and_answer_in_the_browser(browser: Any, hub: RunningHub, people: dict[str, Path]) -> None:
    base = console_url(hub)
    consumer = new_page(browser, hub, people["consumer"])
    consumer.goto(f"{base}/catalog/{IDENTITY}")
    consumer.click("a[href^='/objections/new']")
    consumer.fill("input[name=fields]", "name, address")
    consumer.fill("textarea[name=reason]", "户籍地址与不动产登记簿记载不一致")
    consumer.click("#raise button[type=submit]")
    consumer.wait_for_url(re.compile(r".*/objections/OB-\d{8}-[0-9a-f]{8}(\?.*)?$"))
    objection = consumer.url.split("?")[0].rsplit("/", 1)[1]
    assert "待答复" in consumer.content() and "answer" not in {
        f.get_attribute("id") for f in consumer.query_selector_all("form")
    }
    screenshot(consumer, "objections-raised")
    consumer.goto(f"{base}/catalog/{IDENTITY}")
    assert objection in consumer.content()
    screenshot(consumer, "objections-on-the-catalog-entry")

    manager = new_page(browser, hub, people["manager"])
    manager.goto(f"{base}/objections")
    assert objection in manager.content()
    manager.click(f"a[href='/objections/{objection}']")
    manager.fill("#escalate textarea[name=reason]", "请尽快核查")
    manager.click("#escalate button[type=submit]")
    manager.wait_for_url(re.compile(f".*/objections/{objection}[?].*"))
    assert "已督办" in manager.content() and "请尽快核查" in manager.content()

    owner = new_page(browser, hub, people["owner"])
    owner.goto(f"{base}/objections")
    screenshot(owner, "objections-awaiting-the-steward")
    owner.click(f"a[href='/objections/{objection}']")
    owner.select_option("#answer select[name=kind]", "corrected")
    owner.fill("#answer textarea[name=text]", "已按登记簿更正户籍地址")
    answer = owner.expect_response(lambda r: r.url.endswith("/answer"))
    with answer as refused:
        owner.click("#answer button[type=submit]")
    assert refused.value.status == 400
    assert "effective_time" in owner.content()
    assert owner.input_value("#answer textarea[name=text]") == "已按登记簿更正户籍地址", "what was typed is kept"
    screenshot(owner, "objections-answer-refused")
    owner.fill("#answer input[name=effective]", "2026-12-01T08:00")
    owner.click("#answer button[type=submit]")
    owner.wait_for_url(re.compile(f".*/objections/{objection}[?].*"))
    page = owner.content()
    assert "确认有误，已更正" in page and "2026-12-01 08:00 UTC" in page and 'answer"' not in page
    screenshot(owner, "objections-answered")

    with web_client(hub, people["foreign_owner"]) as other:
        shown = other.get(f"/objections/{objection}")
        assert shown.status_code == 200 and 'id="answer"' not in shown.text
        posted = other.post(
            f"/objections/{objection}/answer",
            data={"csrf": csrf_of(shown.text), "kind": "rejected", "text": "无误"},
        )
        assert posted.status_code == 403
