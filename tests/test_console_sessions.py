"""Console sessions on the record and at their ends: signing in and out are audit records, a refused sign-in
too; a removed role, an idle session and an over-long field each end or refuse what they must."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from exchange import models as m
from exchange.store.schema import AuditEntryRow, ConsoleSessionRow
from exchange.v1 import registry_pb2 as rpb
from tests.console_support import console_hub, console_url, csrf_of, sign_in_link, web_client
from tests.harness import HOUSING, POLICE, RunningHub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with console_hub(tmp_path_factory.mktemp("console-sessions") / "hub") as h:
        h.add_department(POLICE)
        h.add_department(HOUSING)
        yield h


def _console_records(hub: RunningHub, actor: str) -> list[dict[str, Any]]:
    """The console's audit records of ``actor``, once the log has taken in what was staged."""
    hub.hub.audit.flush()
    with hub.hub.store.db.read() as s:
        texts = s.scalars(select(AuditEntryRow.record).where(AuditEntryRow.actor == actor)).all()
    records = [json.loads(t) for t in texts if t]
    return [r for r in records if r["kind"] == "console"]


def test_signing_in_and_out_are_audit_records(hub: RunningHub) -> None:
    person = hub.add_person("wu-steward", POLICE.code, m.Role.OWNER_STEWARD)
    with web_client(hub, person) as client:
        home = client.get("/")
        assert client.post("/signout", data={"csrf": csrf_of(home.text)}).status_code == 303
    actions = [r["action"] for r in _console_records(hub, "person/wu-steward")]
    assert actions == ["sign_in_link", "sign_in", "sign_out"]


def test_a_replayed_link_is_a_refused_sign_in_on_the_record(hub: RunningHub) -> None:
    person = hub.add_person("zheng-clerk", HOUSING.code, m.Role.CONSUMER)
    link = sign_in_link(hub, person).removeprefix(console_url(hub))
    with web_client(hub) as client:
        assert client.get(link).status_code == 200
    with web_client(hub) as thief:
        assert thief.get(link).status_code == 403
    refused = [r for r in _console_records(hub, "person/anonymous") if r["action"] == "denied:SignIn"]
    assert any("LINK_USED" in r["reason"] or "already been used" in r["reason"] for r in refused), refused


def test_removing_a_role_ends_the_session(hub: RunningHub) -> None:
    person = hub.add_person("feng-steward", POLICE.code, m.Role.OWNER_STEWARD, m.Role.CONSUMER)
    with web_client(hub, person) as client:
        assert client.get("/").status_code == 200
        with hub.client() as operator:
            operator.call(
                operator.registry.UnassignRole,
                rpb.ChangeRoleRequest(username="feng-steward", role=rpb.ROLE_CONSUMER, reason="调岗"),
            )
        ended = client.get("/")
        assert ended.status_code == 401
        assert "roles have changed" in ended.text
        assert client.get("/").status_code == 401  # ended for good, not only refused once


def test_an_idle_session_ends(hub: RunningHub) -> None:
    person = hub.add_person("chu-steward", POLICE.code, m.Role.OWNER_STEWARD)
    with web_client(hub, person) as client:
        assert client.get("/").status_code == 200
        idle = dt.timedelta(minutes=hub.settings.console_idle_minutes + 1)
        with hub.hub.store.db.write() as s:
            s.execute(
                update(ConsoleSessionRow)
                .where(ConsoleSessionRow.username == "chu-steward")
                .values(seen_at=dt.datetime.now(dt.UTC) - idle)
            )
        ended = client.get("/")
        assert ended.status_code == 401
        assert "idle" in ended.text


def test_an_over_long_field_is_refused_and_changes_nothing(hub: RunningHub) -> None:
    person = hub.add_person("wei-steward", POLICE.code, m.Role.OWNER_STEWARD)
    with web_client(hub, person) as client:
        home = client.get("/")
        answer = client.post("/signout", data={"csrf": csrf_of(home.text), "reason": "长" * 20_001})
        assert answer.status_code == 400
        assert "too long" in answer.text and "EX" in answer.text  # a page with the reason, and its record
        assert client.get("/").status_code == 200  # still signed in: the refused form did nothing
        shorter = client.post("/signout", data={"csrf": csrf_of(home.text), "reason": "x" * 20_001})
        assert shorter.status_code == 400 and "at most 20000 characters" in shorter.text
