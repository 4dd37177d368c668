"""The evaluation report page against a real hub and Chromium: per-department figures from the log, bar charts,
downloads equal to the hub's report; refused to a person without the right, a bad period refused with its reason."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.v1 import audit_pb2 as apb
from exchange.v1 import rights_pb2 as rpb
from tests.console_support import console_hub, console_url, new_page, screenshot, web_client
from tests.exchange_world import LOOKUP, World, lookup, make_world, serve_lookup
from tests.harness import POLICE, RunningHub, identity_spec, today
from tests.test_report import UNUSED, _apply


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("console-report")
    with console_hub(home / "hub") as hub:
        w = make_world(hub)
        serve_lookup(w, home)
        for _ in range(3):
            assert w.exchange().Query(lookup(), timeout=20).exchange_id
        w.publish("police", identity_spec(UNUSED, POLICE.code, name="从未使用的目录"))
        refused = _apply(w, UNUSED)
        with hub.client(w.people["police"]) as c:
            c.call(c.rights.Refuse, rpb.RefuseRequest(id=refused, reason="用途与职责不符"))
        hub.hub.audit.flush()
        yield w


def _hub_report(hub: RunningHub, identity: Path) -> str:
    asked = apb.GetReportRequest(
        from_date=(today() - dt.timedelta(days=29)).isoformat(), to_date=(today() + dt.timedelta(days=1)).isoformat()
    )
    with hub.client(identity) as c:
        return str(c.call(c.audit.GetReport, asked).report_json)


def test_an_auditor_reads_the_report_with_charts(browser: Any, world: World) -> None:
    hub, auditor = world.hub, world.people["auditor"]
    page = new_page(browser, hub, auditor)
    assert page.locator("nav.menu a[href='/report']").count() == 1
    page.goto(console_url(hub) + "/report")
    rows = {
        r.locator("td").first.text_content(): r for r in page.locator("table.report").first.locator("tbody tr").all()
    }
    assert set(rows) == {POLICE.code}  # the consumer raised no objection: it has no figure of its own
    police = rows[POLICE.code].locator("td").all_text_contents()
    assert police[1:4] == ["2", "2", "0"] and "用途与职责不符 (1)" in police[6]
    assert page.locator("figure.chart").count() == 3
    assert page.locator("figure.chart > svg rect.a").count() >= 1
    assert page.locator("[style]").count() == 0 and page.locator("script:not([src])").count() == 0
    exchanges = page.locator("table.report").nth(1).locator("tbody tr").all_text_contents()
    assert any(LOOKUP in x and "ok" in x and x.strip().endswith("3") for x in exchanges), exchanges
    screenshot(page, "report")
    page.context.close()


def test_the_downloads_are_the_hubs_report(world: World) -> None:
    hub, manager = world.hub, world.people["manager"]
    with web_client(hub, manager) as client:
        got = client.get("/report.json")
        assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
        downloaded, direct = json.loads(got.text), json.loads(_hub_report(hub, manager))
        # The log may have grown between the two (this very sign-in is on the record): the same figures,
        # each at the checkpoint it names, the direct one no older.
        assert {k: v for k, v in downloaded.items() if k != "checkpoint"} == {
            k: v for k, v in direct.items() if k != "checkpoint"
        }
        assert direct["checkpoint"]["size"] >= downloaded["checkpoint"]["size"]
        csv = client.get("/report.csv")
        assert csv.status_code == 200 and csv.text.startswith("section,department,item,value")
        assert f"catalog,{POLICE.code},never_used,{UNUSED}" in csv.text


def test_a_bad_period_keeps_the_form_and_says_why(world: World) -> None:
    with web_client(world.hub, world.people["auditor"]) as client:
        answer = client.get("/report?from=2026-03-01&to=2026-02-01")
        assert answer.status_code == 400 and "before the period" in answer.text and 'value="2026-03-01"' in answer.text
        assert client.get("/report?from=2026-02-30").status_code == 400


def test_a_person_without_the_right_is_refused(world: World) -> None:
    with web_client(world.hub, world.people["consumer"]) as client:
        refused = client.get("/report")
        assert refused.status_code == 403 and "audit:report" in refused.text
        assert client.get("/report.csv").status_code == 403
