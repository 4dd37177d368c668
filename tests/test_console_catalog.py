"""The console's catalog: anyone signed in browses and searches published entries and reads one entry;
only a person who may apply is offered an application, and only for an entry that is shared."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange import models as m
from tests.console_support import console_hub, console_url, new_page, screenshot, web_client
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, identity_spec

IDENTITY = "10101/350200000001"
LICENCE = "10101/350200000002"
RECORD = "10101/350200000003"
DRAFT = "10101/350200000009"
# More of the housing department's entries: with those above, more than a page of five.
HOUSES = [f"20202/35020000000{n}" for n in range(1, 5)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("catalog") / "hub", console_page_size=5) as h:
        for d in (POLICE, HOUSING):
            h.add_department(d)
        yield h


@pytest.fixture(scope="module")
def people(hub: RunningHub) -> dict[str, Path]:
    found = {
        "owner": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "housing-owner": hub.add_person("zj-steward", HOUSING.code, m.Role.OWNER_STEWARD),
        "consumer": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        "auditor": hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR),
    }
    owner = found["owner"]
    hub.publish(owner, identity_spec(IDENTITY))
    hub.publish(
        owner,
        identity_spec(
            LICENCE, name="户籍证明", share_type=m.ShareType.UNCONDITIONAL, share_conditions="", legal_basis=""
        ),
    )
    hub.publish(
        owner,
        identity_spec(
            RECORD,
            name="违法犯罪记录",
            share_type=m.ShareType.NOT_SHARED,
            share_conditions="",
            legal_basis="《刑事诉讼法》第二百八十六条",
        ),
    )
    hub.publish(owner, identity_spec(DRAFT, name="未发布草稿"), publish=False)
    for n, code in enumerate(HOUSES):
        spec = identity_spec(
            code, HOUSING.code, name=f"房屋登记信息{n}", summary="房屋", share_type=m.ShareType.CONDITIONAL
        )
        hub.publish(found["housing-owner"], spec)
    return found


def _codes(page: Any) -> list[str]:
    return [c.strip() for c in page.locator("table.catalog tbody tr td:first-child").all_inner_texts()]


def test_a_consumer_browses_and_searches_the_catalog(browser: Any, hub: RunningHub, people: dict[str, Path]) -> None:
    page = new_page(browser, hub, people["consumer"])
    page.goto(console_url(hub) + "/catalog")
    first = _codes(page)
    assert len(first) == 5 and DRAFT not in first  # a page of five; another department's draft does not exist
    assert page.locator("table.catalog .tag.warn").first.inner_text() == "有条件共享"
    screenshot(page, "catalog-list")
    page.click("text=下一页")
    rest = _codes(page)
    assert set(first) | set(rest) == {IDENTITY, LICENCE, RECORD, *HOUSES} and not set(first) & set(rest)

    page.goto(console_url(hub) + "/catalog")
    page.fill("input[name=text]", "户籍证明")
    page.click("form.filters button")
    assert _codes(page) == [LICENCE]
    assert page.input_value("input[name=text]") == "户籍证明"  # the filter stays as typed

    page.goto(console_url(hub) + "/catalog")
    page.select_option("select[name=share_type]", "not_shared")
    page.click("form.filters button")
    assert _codes(page) == [RECORD]
    assert page.locator("table.catalog .tag.bad").inner_text() == "不予共享"

    page.goto(console_url(hub) + "/catalog")
    page.select_option("select[name=department]", HOUSING.code)
    page.click("form.filters button")
    assert sorted(_codes(page)) == HOUSES

    page.goto(console_url(hub) + "/catalog")
    page.select_option("select[name=department]", POLICE.code)
    page.fill("input[name=field]", "address")
    page.click("form.filters button")
    assert sorted(_codes(page)) == [IDENTITY, LICENCE, RECORD]

    page.goto(console_url(hub) + "/catalog")
    page.fill("input[name=text]", "没有这样的资源")
    page.click("form.filters button")
    assert page.locator("table.catalog").count() == 0
    assert page.locator("p.empty").inner_text() == "没有符合条件的已发布资源。"
    page.context.close()


def test_an_entry_shows_its_items_terms_and_versions(browser: Any, hub: RunningHub, people: dict[str, Path]) -> None:
    page = new_page(browser, hub, people["consumer"])
    page.goto(console_url(hub) + "/catalog")
    page.click(f"table.catalog a:has-text('{IDENTITY}')")
    page.wait_for_url(console_url(hub) + f"/catalog/{IDENTITY}")
    assert page.locator("h1").inner_text().startswith("居民身份信息")
    facts = page.locator("dl.facts").first.inner_text()
    assert "厦门市公安局" in facts and "《中华人民共和国居民身份证法》第十五条" in facts and "按事项申请" in facts
    items = page.locator("table.items tbody tr").all_inner_texts()
    assert len(items) == 3
    assert "公民身份号码" in items[1] and "重要" in items[1] and "个人信息" in items[1]
    assert "户籍地址" in items[2] and "个人信息" not in items[2]
    history = page.locator("table.versions tbody tr").all_inner_texts()
    assert len(history) == 1 and "v1" in history[0] and "ga-steward" in history[0]
    assert page.locator("a.button").inner_text() == "申请使用此资源"
    screenshot(page, "catalog-entry")
    page.click("a.button")
    page.wait_for_url(re.compile(r".*/requests/new\?resource=10101(%2F|/)350200000001$"))
    assert page.locator("input[name=fields]").count() == 3
    page.context.close()


def test_only_a_person_who_may_apply_is_offered_it(hub: RunningHub, people: dict[str, Path]) -> None:
    with web_client(hub, people["auditor"]) as auditor:
        answer = auditor.get(f"/catalog/{IDENTITY}")
        assert answer.status_code == 200 and "居民身份信息" in answer.text
        assert "/requests/new" not in answer.text
    with web_client(hub, people["owner"]) as owner:  # its own department's entry: it holds the data already
        assert "/requests/new" not in owner.get(f"/catalog/{IDENTITY}").text


def test_a_not_shared_entry_says_why_and_how_to_dispute(hub: RunningHub, people: dict[str, Path]) -> None:
    with web_client(hub, people["consumer"]) as client:
        text = client.get(f"/catalog/{RECORD}").text
    assert "此资源列为不予共享，依据：《刑事诉讼法》第二百八十六条" in text
    assert "共享管理员裁决" in text
    assert "申请使用此资源" not in text


def test_another_departments_draft_is_not_found_and_bad_filters_are_refused(
    hub: RunningHub, people: dict[str, Path]
) -> None:
    with web_client(hub, people["consumer"]) as client:
        assert client.get(f"/catalog/{DRAFT}").status_code == 404
        assert client.get("/catalog/10101/350200000077").status_code == 404
        bad = client.get("/catalog", params={"share_type": "secret"})
        assert bad.status_code == 400 and "no share type" in bad.text
        unknown = client.get("/catalog", params={"department": "11350200MB0099999X"})
        assert unknown.status_code == 400 and "table" not in unknown.text.split("</form>", 1)[1]
    with web_client(hub, people["owner"]) as owner:  # its own draft it sees
        assert owner.get(f"/catalog/{DRAFT}").status_code == 200


def test_the_catalog_speaks_english_when_asked(hub: RunningHub, people: dict[str, Path]) -> None:
    with web_client(hub, people["consumer"]) as client:
        client.get("/lang/en", params={"next": "/catalog"})
        listed = client.get("/catalog", params={"share_type": "unconditional"})
        entry = client.get(f"/catalog/{RECORD}")
    assert "<h1>Data catalog</h1>" in listed.text and ">Unconditional<" in listed.text and LICENCE in listed.text
    assert "This resource is classed not shared, on the legal basis: 《刑事诉讼法》第二百八十六条" in entry.text
