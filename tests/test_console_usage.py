"""The steward's "who used our data" page against a real hub and Chromium: only the department's resources,
by consumer and purpose, with a chart per day; refused to a person without the right."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange import models as m
from tests.console_support import console_hub, console_url, new_page, screenshot, web_client
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, identity_spec
from tests.test_console_audit import RESOURCE, log_exchanges


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("console-usage") / "hub") as h:
        for d in (POLICE, HOUSING):
            h.add_department(d)
        yield h


@pytest.fixture(scope="module")
def steward(hub: RunningHub) -> Path:
    person = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.publish(person, identity_spec(RESOURCE))
    log_exchanges(hub, 5)
    return person


def test_a_steward_sees_who_used_the_departments_data(browser: Any, hub: RunningHub, steward: Path) -> None:
    page = new_page(browser, hub, steward)
    assert page.locator("nav.menu a[href='/usage']").count() == 1
    page.goto(console_url(hub) + "/usage")
    rows = page.locator("table.usage tbody tr")
    assert rows.count() == 1
    cells = rows.first.locator("td").all_text_contents()
    assert cells == [HOUSING.code, "system/bdc-djxt", RESOURCE, "不动产转移登记", "4", "1"]
    assert (
        page.locator("figure.chart > svg rect.a").count() == 1
        and page.locator("figure.chart > svg rect.b").count() == 1
    )
    assert page.locator("[style]").count() == 0
    screenshot(page, "usage")
    page.goto(console_url(hub) + "/usage?from=2020-01-01&to=2020-01-31")
    assert page.locator("p.empty").count() == 1
    page.context.close()


def test_another_departments_steward_sees_none_of_it(hub: RunningHub, steward: Path) -> None:
    other = hub.add_person("fg-steward", HOUSING.code, m.Role.OWNER_STEWARD)
    with web_client(hub, other) as client:
        answer = client.get("/usage")
        assert answer.status_code == 200 and "system/bdc-djxt" not in answer.text and 'class="empty"' in answer.text
        assert client.get("/usage?from=2026-02-30").status_code == 400
        assert client.get("/usage?from=2026-03-01&to=2026-02-01").status_code == 400


def test_a_person_without_the_right_is_refused(hub: RunningHub) -> None:
    auditor = hub.add_person("au-wu", AUTHORITY.code, m.Role.AUDITOR)
    with web_client(hub, auditor) as client:
        refused = client.get("/usage")
        assert refused.status_code == 403 and "audit:read_own" in refused.text
