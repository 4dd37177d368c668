"""The auditor's console pages against a real hub and a real Chromium: a search by a data subject's ID number
that never puts the number in a URL, a record whose proof the browser checks (and rejects once altered in
transit), the chart, the signed checkpoints, the export, and a consumer refused."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from audit.note import Verifier
from audit.records import AuditRecord, subject_hash
from audit.verify import verify_export
from exchange import models as m
from exchange.console.pages.audit import day_chart, parse_moment
from exchange.store.audit import EntryFilter
from exchange.store.schema import AuditEntryRow
from tests.console_support import (
    console_hub,
    console_url,
    csrf_of,
    new_page,
    principal_of,
    screenshot,
    text_lines,
    web_client,
)
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, identity_spec

CITIZEN = "350203198507154313"
OTHER = "350203199001011234"
RESOURCE = "10101/350200000001"
PURPOSE = "不动产转移登记"


def _exchange(n: int, key: bytes, outcome: str, who: str = CITIZEN) -> AuditRecord:
    return AuditRecord(
        kind="exchange",
        action="query",
        time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        actor="system/bdc-djxt",
        actor_department=HOUSING.code,
        outcome=outcome,
        resource=RESOURCE,
        purpose=PURPOSE,
        exchange_id=f"EX-console-{n}",
        data_subjects=[subject_hash(key, who)],
    )


def log_exchanges(hub: RunningHub, count: int, who: str = CITIZEN) -> list[int]:
    """``count`` exchanges about ``who`` (every third denied), integrated and signed; their entries."""
    key = hub.files.audit_subject_key.read_bytes()
    first = hub.hub.audit.flush()
    records = [_exchange(n, key, "denied" if n % 3 == 2 else "ok", who) for n in range(count)]
    hub.hub.store.audit.stage(records)
    hub.hub.audit.flush()
    return list(range(first, first + count))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("console-audit") / "hub", console_page_size=5) as h:
        for d in (POLICE, HOUSING):
            h.add_department(d)
        yield h


@pytest.fixture(scope="module")
def auditor(hub: RunningHub) -> Path:
    return hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR)


@pytest.fixture(scope="module")
def logged(hub: RunningHub) -> list[int]:
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.publish(steward, identity_spec(RESOURCE))
    log_exchanges(hub, 2, OTHER)
    return log_exchanges(hub, 7)


def _pin(page: Any, hub: RunningHub) -> None:
    page.fill("#pin-key", hub.files.audit_verifier.read_text().strip())
    page.click("#pin-button")


def test_the_auditor_finds_a_data_subjects_records_without_the_number_in_any_url(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    page = new_page(browser, hub, auditor)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(console_url(hub) + "/audit")
    page.fill("input[name=data_subject]", CITIZEN)
    page.click("#audit-search button[type=submit]")
    page.wait_for_selector("table.audit-results")
    rows = page.locator("table.audit-results tbody tr")
    assert rows.count() == 5  # the page size; the other two on the next page
    assert "EX-console-0" in page.content() and "system/bdc-djxt" in page.content()
    assert page.locator("table.audit-results .tag.bad").count() >= 1
    # Readable at 1280 px: the purpose (不动产转移登记) and the caller's code each on one line, not a character or
    # a syllable a line; the time a date over a clock time.
    assert text_lines(page, "table.audit-results tbody tr:first-child td.purpose") == 1
    assert text_lines(page, "table.audit-results tbody tr:first-child span.nowrap") == 1
    assert text_lines(page, "table.audit-results tbody tr:first-child td.time") == 2
    screenshot(page, "audit-search")
    page.click("#audit-next button[type=submit]")
    page.wait_for_selector("table.audit-results")
    assert page.locator("table.audit-results tbody tr").count() == 2
    assert "EX-console-6" in page.content()
    assert urls and not [u for u in urls if CITIZEN in u]
    page.context.close()


def test_a_search_posts_every_filter_and_pages_by_post(hub: RunningHub, auditor: Path, logged: list[int]) -> None:
    with web_client(hub, auditor) as client:
        token = csrf_of(client.get("/audit").text)
        fields = {
            "csrf": token,
            "since": dt.datetime.now(dt.UTC).date().isoformat(),
            "until": dt.datetime.now(dt.UTC).date().isoformat(),
            "department": HOUSING.code,
            "actor": "system/bdc-djxt",
            "resource": RESOURCE,
            "purpose": PURPOSE,
            "outcome": "denied",
            "exchange_id": "EX-console-2",
            "data_subject": CITIZEN,
        }
        found = client.post("/audit", data=fields)
        assert found.status_code == 200
        assert found.text.count("/audit/record/") == 1 and "EX-console-2" in found.text
        assert client.post("/audit", data={**fields, "outcome": "ok"}).text.count("/audit/record/") == 0
        assert "audit.search.empty" not in found.text
        bad = client.post("/audit", data={**fields, "department": "not-a-code", "since": "yesterday"})
        assert bad.status_code == 400
        assert "department" in bad.text and "since" in bad.text and 'value="not-a-code"' in bad.text
        assert client.get("/audit?data_subject=" + CITIZEN).status_code == 200  # a GET searches nothing
        assert "EX-console" not in client.get("/audit?data_subject=" + CITIZEN).text


def test_the_browser_verifies_a_record_against_the_pinned_key(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    page = new_page(browser, hub, auditor)
    page.goto(f"{console_url(hub)}/audit/record/{logged[0]}")
    assert page.locator("#proof-verdict").get_attribute("class") == "verdict"  # no key pinned yet
    _pin(page, hub)
    page.wait_for_selector("#proof-verdict.verdict.ok")
    assert page.locator("#proof-steps li.ok").count() == 5
    record = hub.hub.store.audit.entries(logged[0], logged[0] + 1)[0].record
    assert page.locator("#proof-record").text_content() == record
    assert "EX-console-0" in page.locator("#record-fields").text_content()
    screenshot(page, "audit-record-ok")
    # The key stays pinned in this browser: the next record is checked at once.
    page.goto(f"{console_url(hub)}/audit/record/{logged[3]}")
    page.wait_for_selector("#proof-verdict.verdict.ok")
    page.context.close()


def test_a_record_altered_in_transit_fails_the_check(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    page = new_page(browser, hub, auditor)

    def alter(route: Any) -> None:
        response = route.fetch()
        html = response.text()
        start = html.index('id="proof-data">')
        end = html.index("</script>", start)
        block = html[start:end]
        changed = block.replace("EX-console-1", "EX-console-7", 1)
        assert changed != block
        route.fulfill(response=response, body=html[:start] + changed + html[end:])

    page.route(re.compile(r".*/audit/record/\d+$"), alter)
    page.goto(f"{console_url(hub)}/audit/record/{logged[1]}")
    _pin(page, hub)
    page.wait_for_selector("#proof-verdict.verdict.bad")
    assert page.locator("#proof-steps li.bad").get_attribute("data-step") == "inclusion"
    screenshot(page, "audit-record-bad")
    page.context.close()


def test_a_key_other_than_the_logs_fails_the_signature(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    page = new_page(browser, hub, auditor)
    page.goto(f"{console_url(hub)}/audit/record/{logged[0]}")
    page.fill("#pin-key", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    page.click("#pin-button")
    page.wait_for_selector("#proof-verdict.verdict.bad")
    assert page.locator("#proof-steps li.bad").get_attribute("data-step") == "signature"
    page.fill("#pin-key", "not a key")
    page.click("#pin-button")
    assert "PeterNeumann" in (page.locator("#pinned-key").text_content() or "")  # a bad key is not pinned
    page.context.close()


def test_a_consumer_typing_audit_is_refused_and_recorded(hub: RunningHub, logged: list[int]) -> None:
    consumer = hub.add_person("fg-consumer", HOUSING.code, m.Role.CONSUMER)
    with web_client(hub, consumer) as client:
        refused = client.get("/audit")
        assert refused.status_code == 403
        assert "AUDIT_READ_DENIED" in refused.text and "audit:read" in refused.text
        assert client.get("/audit/export").status_code == 403
    hub.hub.audit.flush()
    with hub.hub.store.db.read() as s:
        actions = s.scalars(select(AuditEntryRow.action).where(AuditEntryRow.actor == "person/fg-consumer")).all()
    assert "denied:SearchRecords" in actions and "denied:ExportLog" in actions


def test_the_chart_counts_exchanges_and_refusals_per_day(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    page = new_page(browser, hub, auditor)
    page.goto(console_url(hub) + "/audit/chart")
    page.wait_for_selector("figure.chart svg")
    caption = page.locator("figure.chart figcaption").text_content() or ""
    with hub.hub.store.db.read() as s:
        rows = s.execute(select(AuditEntryRow.kind, AuditEntryRow.action, AuditEntryRow.outcome)).all()
    refused = sum(1 for kind, action, outcome in rows if outcome == "denied" or action.startswith("denied:"))
    through = sum(1 for kind, action, outcome in rows if kind == "exchange" and outcome != "denied")
    assert through >= 7 and refused >= 2
    assert f"({through})" in caption and f"({refused})" in caption
    assert (
        page.locator("figure.chart > svg rect.a").count() >= 1
        and page.locator("figure.chart > svg rect.b").count() >= 1
    )
    assert page.locator("[style]").count() == 0
    screenshot(page, "audit-chart")
    page.goto(console_url(hub) + "/audit/chart?from=2020-01-01&to=2020-01-31")
    assert page.locator("p.empty").count() == 1
    page.context.close()


def test_the_checkpoints_page_lists_signed_notes_newest_first(
    browser: Any, hub: RunningHub, auditor: Path, logged: list[int]
) -> None:
    for _ in range(6):
        log_exchanges(hub, 1, OTHER)
    page = new_page(browser, hub, auditor)
    page.goto(console_url(hub) + "/audit/checkpoints")
    notes = page.locator("pre.note").all_text_contents()
    assert len(notes) == 5
    verifier = Verifier.parse(hub.files.audit_verifier.read_text())
    sizes = [int(n.split("\n")[1]) for n in notes]
    assert sizes == sorted(sizes, reverse=True) and all(f"— {verifier.name} " in n for n in notes)
    screenshot(page, "audit-checkpoints")
    page.click("nav.pager a >> nth=0")
    older = page.locator("pre.note").all_text_contents()
    assert older and int(older[0].split("\n")[1]) < sizes[-1]
    page.context.close()


def test_the_export_downloads_lines_that_verify(hub: RunningHub, auditor: Path, logged: list[int]) -> None:
    with web_client(hub, auditor) as client:
        token = csrf_of(client.get("/audit/export").text)
        answer = client.post("/audit/export", data={"csrf": token, "start": "0"})
        assert answer.status_code == 200
        assert answer.headers["content-disposition"].startswith("attachment;")
        lines = answer.text.splitlines(keepends=True)
        assert any(line.startswith("E\t") for line in lines)
        report = verify_export(lines, Verifier.parse(hub.files.audit_verifier.read_text()))
        assert report.entries >= len(logged)
        refused = client.post("/audit/export", data={"csrf": token, "start": "99999999"})
        assert refused.status_code == 400 and 'value="99999999"' in refused.text


def test_the_service_tallies_only_what_the_reader_may_read(hub: RunningHub, logged: list[int]) -> None:
    assert hub.hub.auditing is not None
    police = hub.add_person("ga-steward2", POLICE.code, m.Role.OWNER_STEWARD)
    tallies, cut = hub.hub.auditing.tally(principal_of(hub, police), EntryFilter())
    assert not cut and tallies
    assert {t.resource for t in tallies} == {RESOURCE}
    housing = hub.add_person("fg-steward", HOUSING.code, m.Role.OWNER_STEWARD)
    assert hub.hub.auditing.tally(principal_of(hub, housing), EntryFilter())[0] == []
    few, cut = hub.hub.auditing.tally(principal_of(hub, police), EntryFilter(), limit=3)
    assert cut and sum(t.count for t in few) <= 3


def test_chart_geometry_and_times() -> None:
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(3)]
    chart = day_chart(days, {days[0]: 4, days[2]: 2}, {days[1]: 1})
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.series == "a" and tallest.y + tallest.height == chart.bottom and chart.top_value == 4
    assert [b.height for b in chart.bars if b.series == "b"][1] == round(tallest.height / 4, 1)
    assert parse_moment("until", "2026-11-02", end=True) == dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    assert parse_moment("since", "2026-11-02T08:30") == dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.UTC)
    with pytest.raises(Exception, match="since"):
        parse_moment("since", "yesterday")
