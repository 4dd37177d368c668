"""One catalog in the console: at the county's hub (county ← city ← province), the catalog lists the county's own
entries with those its peers offer, each remote one marked with its home hub, filtered by home hub or level;
a remote entry's page shows what its home last offered (suspended at home, no application); an application
made from that page goes to the home, and the county's request pages name the entry."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange import models as m
from exchange.v1 import catalog_pb2 as cpb
from tests.console_support import console_url, csrf_of, new_page, screenshot, web_client
from tests.federation_support import HUBS, PROVINCE_MARKET, SIMING_MARKET, Node, hubs, peer_pair
from tests.harness import POLICE, identity_spec, today

COUNTY_ENTRY = "10101/350203000001"
CITY_ENTRY = "10101/350200000001"
PROVINCE_ENTRY = "10101/350000000001"
SUSPENDED_ENTRY = "10101/350000000002"
NAMES = {
    COUNTY_ENTRY: "个体工商户登记信息",
    CITY_ENTRY: "居民身份信息",
    PROVINCE_ENTRY: "企业登记信息",
    SUSPENDED_ENTRY: "企业年报信息",
}


def _publish(node: Node, department: m.Department, code: str) -> Path:
    hub = node.running
    if department.code not in hub.certifiers:
        hub.add_department(department)
    steward = hub.certifier(department.code)
    hub.publish(steward, identity_spec(code, department.code, name=NAMES[code]))
    return steward


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The three hubs peered, an entry published at each (and one the province suspended), all known at the
    county, whose consumer may apply."""
    with hubs(tmp_path, "county", "city", "province", console=True) as running:
        county, city, province = running["county"], running["city"], running["province"]
        peer_pair(county, city)
        peer_pair(city, province)
        _publish(county, SIMING_MARKET, COUNTY_ENTRY)
        _publish(city, POLICE, CITY_ENTRY)
        _publish(province, PROVINCE_MARKET, PROVINCE_ENTRY)
        steward = _publish(province, PROVINCE_MARKET, SUSPENDED_ENTRY)
        with province.running.client(steward) as hub:
            hub.call(hub.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=SUSPENDED_ENTRY, reason="核查"))
        county.running.add_system("sm-djxt", SIMING_MARKET.code)
        applicant = county.running.add_person("sm-clerk", SIMING_MARKET.code, m.Role.CONSUMER)
        for level in ("city", "county"):  # the entries travel down the tree
            running[level].sync()
        assert county.running.hub.store.federated.get(SUSPENDED_ENTRY) is not None
        yield {**running, "applicant": applicant}


def _codes(page: httpx.Response) -> set[str]:
    """The entry codes a catalog page lists."""
    assert page.status_code == 200, page.text
    return set(re.findall(r'<tr[^>]*>\s*<td><a href="/catalog/([^"]+)"', page.text))


def test_the_county_catalog_lists_remote_entries_with_their_home_and_filters_by_home(tree: dict[str, Any]) -> None:
    with web_client(tree["county"].running, tree["applicant"]) as county:
        listed = county.get("/catalog")
        assert _codes(listed) == {COUNTY_ENTRY, CITY_ENTRY, PROVINCE_ENTRY}  # the suspended one is not published
        for level in ("city", "province"):
            assert HUBS[level][1] in listed.text and f"@{HUBS[level][0]}" in listed.text
        assert "归属平台" in listed.text and "仅本平台" in listed.text
        assert _codes(county.get("/catalog", params={"home": "350000"})) == {PROVINCE_ENTRY}
        assert _codes(county.get("/catalog", params={"home": "350203"})) == {COUNTY_ENTRY}  # this hub only
        assert _codes(county.get("/catalog", params={"level": "city"})) == {CITY_ENTRY}
        assert _codes(county.get("/catalog", params={"level": "county", "text": "个体"})) == {COUNTY_ENTRY}
        assert _codes(county.get("/catalog", params={"level": "province", "text": "个体"})) == set()
        assert _codes(county.get("/catalog", params={"text": "企业"})) == {PROVINCE_ENTRY}
        # remote owners are found and shown by their name at home (not in this hub's registry)
        assert PROVINCE_MARKET.name in listed.text and POLICE.name in listed.text
        assert _codes(county.get("/catalog", params={"text": "福建省市场"})) == {PROVINCE_ENTRY}
        assert _codes(county.get("/catalog", params={"text": "公安"})) == {CITY_ENTRY}
        assert _codes(county.get("/catalog", params={"text": "市场监督管理局"})) == {COUNTY_ENTRY, PROVINCE_ENTRY}
        refused = county.get("/catalog", params={"home": "fujian"})
        assert refused.status_code == 400 and "home_hub_code" in refused.text
        county.cookies.set("exchange-lang", "en")
        english = county.get("/catalog")
        assert "Home hub" in english.text and "This hub only" in english.text and "Province" in english.text
        assert "catalog." not in english.text  # every new word has its English message


def test_a_remote_entry_page_shows_its_home_and_a_suspended_one_takes_no_application(tree: dict[str, Any]) -> None:
    with web_client(tree["county"].running, tree["applicant"]) as county:
        entry = county.get(f"/catalog/{PROVINCE_ENTRY}")
        assert entry.status_code == 200, entry.text
        assert NAMES[PROVINCE_ENTRY] in entry.text and HUBS["province"][1] in entry.text and "省级" in entry.text
        assert "公民身份号码" in entry.text and PROVINCE_MARKET.code in entry.text  # its items, its owner
        assert PROVINCE_MARKET.name in entry.text  # by its name at home
        assert "版本记录保存在其归属平台" in entry.text and "此资源的数据疑义" not in entry.text  # kept at home
        assert f"/requests/new?resource={PROVINCE_ENTRY}" in entry.text
        suspended = county.get(f"/catalog/{SUSPENDED_ENTRY}")
        assert suspended.status_code == 200 and "在其归属平台的状态为「已暂停」" in suspended.text
        assert "/requests/new" not in suspended.text and "v2" in suspended.text
        assert county.get("/catalog/10101/350000000099").status_code == 404


def test_an_application_made_in_the_county_console_goes_to_the_home_and_its_pages_name_the_entry(
    tree: dict[str, Any], browser: Any
) -> None:
    """Seen in Chromium (screenshots under build/screenshots/federation-catalog-*.png)."""
    county = tree["county"].running
    page = new_page(browser, county, tree["applicant"])
    page.goto(console_url(county) + "/catalog")
    shown = page.inner_text("main")
    assert HUBS["province"][1] in shown and HUBS["city"][1] in shown and "本平台" in shown
    screenshot(page, "federation-catalog-list")
    page.select_option("select[name=home]", "350000")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/catalog\?.*home=350000"))
    assert page.locator("table.catalog tbody tr").count() == 1
    screenshot(page, "federation-catalog-filtered")
    page.goto(console_url(county) + "/catalog")
    page.fill("input[name=text]", "福建省市场")  # a remote owner, by its name at home
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/catalog\?.*text=.*"))
    assert page.locator("table.catalog tbody tr").count() == 1 and PROVINCE_MARKET.name in page.inner_text("main")
    screenshot(page, "federation-catalog-owner-search")
    page.click(f"a[href='/catalog/{PROVINCE_ENTRY}'] >> nth=1")
    assert HUBS["province"][1] in page.inner_text("main") and "catalog." not in page.inner_text("main")
    screenshot(page, "federation-catalog-entry")
    page.click("a.button")
    assert HUBS["province"][1] in page.inner_text("main")  # the form says where the application is decided
    page.check("input[name=fields][value=name]")
    page.check("input[name=systems][value=sm-djxt]")
    page.fill("input[name=purpose]", "企业登记核验")
    page.fill("textarea[name=legal_basis]", "《市场主体登记管理条例》第十六条")
    page.fill("input[name=daily_calls]", "300")
    screenshot(page, "federation-catalog-apply")
    page.click("form.apply button[type=submit]")
    page.wait_for_url(re.compile(r".*/requests/SR-[^?]+\?notice=requests\.applied$"))
    request_id = page.url.split("/requests/")[1].split("?")[0]
    shown = page.inner_text("main")
    assert NAMES[PROVINCE_ENTRY] in shown and HUBS["province"][1] in shown and "尚未送达" in shown
    screenshot(page, "federation-catalog-request")
    tree["county"].sync()  # submitted towards the province, which receives it
    page.reload()
    shown = page.inner_text("main")
    assert "归属平台已受理" in shown and "尚未送达" not in shown
    page.goto(console_url(county) + "/requests")
    row = page.locator("tr", has_text=request_id)
    assert NAMES[PROVINCE_ENTRY] in row.inner_text()


def test_a_request_page_falls_back_to_the_code_when_the_entry_is_no_longer_known(tree: dict[str, Any]) -> None:
    with web_client(tree["county"].running, tree["applicant"]) as county:
        page = county.get("/requests/new", params={"resource": PROVINCE_ENTRY})
        form = {
            "csrf": csrf_of(page.text),
            "resource": PROVINCE_ENTRY,
            "fields": ["name"],
            "systems": ["sm-djxt"],
            "purpose": "企业登记核验",
            "legal_basis": "《市场主体登记管理条例》第十六条",
            "start": today().isoformat(),
            "end": (today() + dt.timedelta(days=90)).isoformat(),
            "daily_calls": "100",
        }
        applied = county.post("/requests/new", data=form, follow_redirects=False)
        assert applied.status_code == 303, applied.text
        path = applied.headers["location"].split("?")[0]
        assert NAMES[PROVINCE_ENTRY] in county.get(path).text
        tree["county"].running.hub.store.federated.forget(tree["city"].code)  # the peering's entries leave
        shown = county.get(path)
        assert shown.status_code == 200 and NAMES[PROVINCE_ENTRY] not in shown.text and PROVINCE_ENTRY in shown.text
