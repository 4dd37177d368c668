"""What awaits owners and the share manager (issue 19, notices): the services' counts, the hub's gauges
and the console's home page, for one scripted state on a real hub.

The state: the police (owner of the lookup and two more entries) has two pending share requests, one due
today; the housing bureau has one overdue, one approved awaiting its grant and one refusal under dispute.
The registry raised four objections to the police's lookup: one fresh, one due today, one overdue, one
answered.
"""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from exchange import models as m
from exchange import wire as w
from exchange.models import ShareRequestStatus, Tally
from exchange.store import Store
from exchange.store.schema import ShareRequestRow
from exchange.v1 import objection_pb2 as opb
from exchange.v1 import rights_pb2 as rpb
from tests.console_support import console_hub, console_url, new_page, principal_of, screenshot, web_client
from tests.exchange_world import LOOKUP, PURPOSE, World, make_world, serve_lookup
from tests.harness import (
    HOUSING,
    POLICE,
    RunningHub,
    audit_records,
    base_settings,
    identity_spec,
    move_objection_due,
    running_hub,
    today,
)


@dataclass
class Scene:
    hub: RunningHub
    world: World


def _publish_and_apply(world: World, owner: str, department: str, code: str) -> str:
    spec = identity_spec(code, department, name=f"共享资源{code[-2:]}")
    world.publish(owner, spec)
    app = m.Application(
        resource_code=code,
        consumer_department_code="",
        system_codes=("bdc-djxt",),
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name",),
        start=today(),
        end=today() + dt.timedelta(days=30),
        expected_daily_calls=100,
    )
    return str(_call(world, "consumer", "rights", "Apply", rpb.ApplyRequest(request=w.application_to_wire(app))).id)


def _call(world: World, who: str, service: str, rpc: str, request: Any) -> Any:
    with world.hub.client(world.people[who]) as c:
        stub = getattr(c, service)
        return c.call(getattr(stub, rpc), request)


def _raise(world: World) -> str:
    request = opb.RaiseObjectionRequest(resource_code=LOOKUP, fields=["name"], reason="姓名与户籍不符")
    return str(_call(world, "consumer", "objections", "RaiseObjection", request).id)


def _script(hub: RunningHub, world: World) -> None:
    police_fresh, police_soon, housing_late, housing_approved, housing_disputed = (
        _publish_and_apply(world, owner, dept, f"10101/3502000001{n:02d}")
        for n, owner, dept in (
            (2, "police", POLICE.code),
            (3, "police", POLICE.code),
            (4, "housing", HOUSING.code),
            (5, "housing", HOUSING.code),
            (6, "housing", HOUSING.code),
        )
    )
    assert police_fresh
    _call(world, "housing", "rights", "Approve", rpb.ApproveRequest(id=housing_approved, reason="同意"))
    _call(world, "housing", "rights", "Refuse", rpb.RefuseRequest(id=housing_disputed, reason="无依据"))
    _call(world, "consumer", "rights", "Dispute", rpb.DisputeRequest(id=housing_disputed, reason="依据充分"))
    fresh, soon, late, answered = (_raise(world) for _ in range(4))
    assert fresh
    answer = opb.AnswerObjectionRequest(id=answered, kind=opb.ANSWER_KIND_REJECTED, text="数据无误")
    _call(world, "police", "objections", "AnswerObjection", answer)
    store = Store(hub.settings.effective_database_url)
    try:
        with store.db.write() as s:
            for request_id, due in ((police_soon, today()), (housing_late, today() - dt.timedelta(days=3))):
                s.execute(update(ShareRequestRow).where(ShareRequestRow.id == request_id).values(due_date=due))
        move_objection_due(store, soon, today())
        move_objection_due(store, late, today() - dt.timedelta(days=3))
    finally:
        store.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    home = tmp_path_factory.mktemp("notices")
    with console_hub(home / "hub") as hub:
        world = make_world(hub)
        serve_lookup(world, home)
        _script(hub, world)
        yield Scene(hub, world)


def _awaiting(scene: Scene, who: str) -> tuple[dict[ShareRequestStatus, Tally], Tally]:
    hub = scene.hub.hub
    assert hub.rights is not None and hub.objections is not None
    principal = principal_of(scene.hub, scene.world.people[who])
    return hub.rights.awaiting(principal), hub.objections.awaiting(principal)


def test_the_services_count_what_awaits_each_person(scene: Scene) -> None:
    _check_counts(scene)


def test_the_counts_and_gauges_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """The same state in PostgreSQL: the counting queries (sums of cases, grouped) give the same figures."""
    with running_hub(base_settings(tmp_path / "hub", postgres_url)) as hub:
        world = make_world(hub)
        serve_lookup(world, tmp_path)
        _script(hub, world)
        scene = Scene(hub, world)
        _check_counts(scene)
        _check_gauges(scene)


def _check_counts(scene: Scene) -> None:
    requests, objections = _awaiting(scene, "police")
    assert requests == {ShareRequestStatus.PENDING: Tally(2, due_soon=1, overdue=0)}
    assert objections == Tally(3, due_soon=1, overdue=1), "the answered objection awaits no one"
    requests, objections = _awaiting(scene, "housing")
    assert requests == {ShareRequestStatus.PENDING: Tally(1, due_soon=0, overdue=1)}
    assert objections == Tally()
    requests, objections = _awaiting(scene, "manager")
    assert requests == {
        ShareRequestStatus.PENDING: Tally(3, due_soon=1, overdue=1),
        ShareRequestStatus.APPROVED: Tally(1),
        ShareRequestStatus.DISPUTED: Tally(1),
    }
    assert objections == Tally(3, due_soon=1, overdue=1)


def test_a_consumer_awaits_no_objection_answer(scene: Scene) -> None:
    hub = scene.hub.hub
    assert hub.objections is not None
    with pytest.raises(Exception, match="answers no objections"):
        hub.objections.awaiting(principal_of(scene.hub, scene.world.people["consumer"]))


def _gauges(scene: Scene) -> dict[tuple[str, str], float]:
    server = scene.hub.hub.metrics_server
    assert server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, s.labels["owner_department"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "owner_department" in s.labels
    }


def test_the_gauges_count_per_owning_department(scene: Scene) -> None:
    _check_gauges(scene)


def _check_gauges(scene: Scene) -> None:
    gauges = _gauges(scene)
    assert gauges == {
        ("exchange_share_requests_due_soon", POLICE.code): 1,
        ("exchange_share_requests_due_soon", HOUSING.code): 0,
        ("exchange_share_requests_overdue_by_owner", POLICE.code): 0,
        ("exchange_share_requests_overdue_by_owner", HOUSING.code): 1,
        ("exchange_objections_open", POLICE.code): 3,
        ("exchange_objections_due_soon", POLICE.code): 1,
        ("exchange_objections_overdue", POLICE.code): 1,
    }


def _home(scene: Scene, who: str) -> str:
    with web_client(scene.hub, scene.world.people[who]) as client:
        page = client.get("/")
        assert page.status_code == 200
        return page.text


def test_the_home_page_shows_a_steward_what_awaits(scene: Scene) -> None:
    html = _home(scene, "police")
    assert '<a href="/inbox">待审核的共享申请：2</a>' in html
    assert '<a href="/objections?view=for_me">待答复的异议：3</a>' in html
    assert html.count("1 项 2 个工作日内到期") == 2 and html.count("1 项已逾期") == 1
    housing = _home(scene, "housing")
    assert "待审核的共享申请：1" in housing and "待答复的异议：0" in housing and "1 项已逾期" in housing


def test_the_home_page_shows_the_share_manager_what_awaits(scene: Scene) -> None:
    html = _home(scene, "manager")
    for line in (
        '<a href="/manage#awaiting">已同意待授权的申请：1</a>',
        '<a href="/manage#disputes">待裁决的拒绝争议：1</a>',
        '<a href="/manage#overdue">提供部门逾期未答复的申请：1</a>',
        '<a href="/objections?view=for_me">未答复的数据异议：3</a>',
    ):
        assert line in html


def test_the_home_page_of_others_has_no_box_and_records_no_refusal(scene: Scene) -> None:
    before = _refusals(scene)
    for who in ("consumer", "auditor"):
        assert "待办" not in _home(scene, who)
    assert _refusals(scene) == before


def _refusals(scene: Scene) -> int:
    """Refusal records in the log (integrated, or staged to be)."""
    store = Store(scene.hub.settings.effective_database_url)
    try:
        return sum(1 for r in audit_records(store) if r["action"].startswith("denied:"))
    finally:
        store.close()


def test_the_awaiting_box_in_a_browser(scene: Scene, browser: Any) -> None:
    page = new_page(browser, scene.hub, scene.world.people["manager"])
    page.goto(console_url(scene.hub) + "/")
    box = page.locator("section.awaiting")
    assert box.locator("li").count() == 4
    screenshot(page, "home-awaiting-manager")
    page.context.close()


def test_an_empty_box_says_so(scene: Scene, tmp_path: Path) -> None:
    with console_hub(tmp_path / "hub") as hub:
        world = make_world(hub)
        with web_client(hub, world.people["police"]) as client:
            html = client.get("/").text
    assert "暂无待办事项。" in html and "待审核的共享申请" not in html
