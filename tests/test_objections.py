"""Objections end to end on a real hub, on SQLite and on PostgreSQL: raise, answer each way, overdue, escalate.

And the bad input of issue 19: an objection to an exchange the caller did not receive or of another
department, an answer from a department that does not own the resource, a second answer, an objection on a
retired resource. Each is refused with a clear status, changes no objection, and leaves a refusal record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from exchange import models as m
from exchange.cli.client import HubClient
from exchange.cli.main import main
from exchange.store import Store
from exchange.store.schema import ObjectionRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import objection_pb2 as opb
from exchange.workdays import WorkCalendar
from tests.exchange_world import LOOKUP, REGISTRY, World, lookup, make_world, serve_lookup
from tests.harness import (
    HOUSING,
    POLICE,
    RunningHub,
    audit_records,
    base_settings,
    move_objection_due,
    reason_of,
    running_hub,
)


@dataclass
class Scene:
    hub: RunningHub
    world: World
    store: Store
    clients: dict[str, HubClient]

    def objections(self) -> int:
        with self.store.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(ObjectionRow)) or 0)

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.store)


@pytest.fixture(params=["sqlite", "postgresql"])
def scene(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scene]:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    with running_hub(base_settings(tmp_path / "hub", url)) as hub:
        world = make_world(hub)
        serve_lookup(world, tmp_path)
        identities = {
            **world.people,
            "system": world.consumer_system,
            "foreign_consumer": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
            "foreign_system": hub.add_system("zj-zfxt", HOUSING.code),
        }
        clients = {k: hub.client(v) for k, v in identities.items()}
        store = Store(hub.settings.effective_database_url)
        try:
            yield Scene(hub, world, store, clients)
        finally:
            for c in clients.values():
                c.close()
            store.close()


def _call(scene: Scene, who: str, rpc: str, request: Any) -> Any:
    c = scene.clients[who]
    return c.call(getattr(c.objections, rpc), request)


def _refused(scene: Scene, who: str, rpc: str, request: Any, code: grpc.StatusCode) -> grpc.Call:
    """Calls expecting ``code``: no objection row is added, and a refusal is recorded."""
    rows, denied = scene.objections(), _denied(scene, rpc)
    with pytest.raises(grpc.RpcError) as info:
        _call(scene, who, rpc, request)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert scene.objections() == rows
    assert _denied(scene, rpc) == denied + 1, "the refusal is recorded"
    return error


def _denied(scene: Scene, rpc: str) -> int:
    return sum(1 for r in scene.records() if r.get("action") == f"denied:{rpc}")


def _received(scene: Scene) -> tuple[str, str]:
    """The consumer system's exchange of the lookup, and the SHA-256 of the values it received."""
    answer = scene.world.exchange().Query(lookup(), timeout=20)
    values = json.dumps([str(r) for r in answer.records], ensure_ascii=False).encode()
    return answer.exchange_id, hashlib.sha256(values).hexdigest()


def _raise(scene: Scene, who: str = "consumer", **fields: Any) -> opb.Objection:
    request = opb.RaiseObjectionRequest(resource_code=LOOKUP, fields=["name"], reason="姓名与户籍不符", **fields)
    objection: opb.Objection = _call(scene, who, "RaiseObjection", request)
    return objection


def _answer(kind: int, text: str, effective: dt.datetime | None = None, id: str = "") -> opb.AnswerObjectionRequest:
    request = opb.AnswerObjectionRequest(id=id, kind=kind, text=text)  # type: ignore[arg-type]
    if effective is not None:
        stamp = Timestamp()
        stamp.FromDatetime(effective)
        request.effective_time.CopyFrom(stamp)
    return request


def test_raise_answer_each_way_overdue_and_escalate(scene: Scene) -> None:
    exchange_id, digest = _received(scene)
    doubt = _raise(scene, "system", exchange_id=exchange_id, received_sha256=digest)
    assert doubt.state == opb.OBJECTION_STATE_OPEN and doubt.owner_department_code == POLICE.code
    assert (doubt.exchange_id, doubt.received_sha256, doubt.raised_by) == (exchange_id, digest, "system/bdc-djxt")
    today = dt.datetime.now(dt.UTC).date()
    due = WorkCalendar.mainland(None).add_working_days(today, scene.hub.settings.objection_answer_working_days)
    assert (doubt.due_date.year, doubt.due_date.month, doubt.due_date.day) == (due.year, due.month, due.day)

    effective = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    corrected = _call(
        scene, "police", "AnswerObjection", _answer(opb.ANSWER_KIND_CORRECTED, "已更正姓名", effective, doubt.id)
    )
    assert corrected.state == opb.OBJECTION_STATE_ANSWERED and corrected.answered_by == "person/ga-steward"
    assert corrected.effective_time.ToDatetime(dt.UTC) == effective
    for kind, text in ((opb.ANSWER_KIND_NO_CORRECTION, "源数据已灭失"), (opb.ANSWER_KIND_REJECTED, "数据无误")):
        other = _raise(scene)
        answered = _call(scene, "police", "AnswerObjection", _answer(kind, text, id=other.id))
        assert (answered.answer_kind, answered.answer_text) == (kind, text)

    actions = [(r["action"], r["reason"]) for r in scene.records() if r["kind"] == "objection"]
    assert ("answer:corrected", "effective 2026-12-01T08:00:00Z; 已更正姓名") in actions
    assert {a for a, _ in actions} == {"raise", "answer:corrected", "answer:no_correction", "answer:rejected"}
    raised = next(
        r for r in scene.records() if r["kind"] == "objection" and r["subject"] == doubt.id and r["action"] == "raise"
    )
    assert (raised["exchange_id"], raised["fields"], raised["resource"]) == (exchange_id, ["name"], LOOKUP)
    assert (raised["actor"], raised["actor_department"]) == ("system/bdc-djxt", REGISTRY.code)
    assert digest not in json.dumps(raised), "the record names the exchange, not the values' digest"

    late = _raise(scene)
    assert not _listed(scene, "manager", overdue_only=True)
    move_objection_due(scene.store, late.id, today - dt.timedelta(days=3))
    overdue = _listed(scene, "manager", overdue_only=True)
    assert [o.id for o in overdue] == [late.id] and overdue[0].overdue
    assert [o.id for o in _listed(scene, "police", view=opb.OBJECTION_VIEW_FOR_ME)] == [late.id]
    escalated = _call(
        scene, "manager", "EscalateObjection", opb.EscalateObjectionRequest(id=late.id, reason="逾期督办")
    )
    assert escalated.state == opb.OBJECTION_STATE_ESCALATED and escalated.escalated_by == "person/sm-lin"
    _refused(
        scene,
        "manager",
        "EscalateObjection",
        opb.EscalateObjectionRequest(id=late.id, reason="再督办"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    still = _call(scene, "police", "AnswerObjection", _answer(opb.ANSWER_KIND_REJECTED, "核实无误", id=late.id))
    assert still.state == opb.OBJECTION_STATE_ANSWERED
    assert any(r["action"] == "escalate" and r["subject"] == late.id for r in scene.records())
    every = _listed(scene, "foreign_consumer", resource_code=LOOKUP)
    assert len(every) == 4 and all(o.state == opb.OBJECTION_STATE_ANSWERED for o in every), "the catalog's view"


def _listed(scene: Scene, who: str, **filters: Any) -> list[opb.Objection]:
    answer = _call(scene, who, "ListObjections", opb.ListObjectionsRequest(**filters))
    return list(answer.objections)


def test_bad_input_is_refused_with_a_clear_status_and_changes_nothing(scene: Scene) -> None:
    exchange_id, digest = _received(scene)
    mine = dict(exchange_id=exchange_id, received_sha256=digest)
    for who in ("foreign_consumer", "foreign_system"):  # another department's exchange
        error = _refused(scene, who, "RaiseObjection", _raising(**mine), grpc.StatusCode.PERMISSION_DENIED)
        assert reason_of(error) == "EXCHANGE_NOT_RECEIVED" and exchange_id in (error.details() or "")
    never = dict(exchange_id="EX" + "0" * 26, received_sha256=digest)  # an exchange it did not receive
    error = _refused(scene, "system", "RaiseObjection", _raising(**never), grpc.StatusCode.PERMISSION_DENIED)
    assert reason_of(error) == "EXCHANGE_NOT_RECEIVED"
    _refused(scene, "system", "RaiseObjection", _raising(exchange_id=exchange_id), grpc.StatusCode.INVALID_ARGUMENT)

    doubt = _raise(scene, "system", **mine)
    rejected = _answer(opb.ANSWER_KIND_REJECTED, "数据无误", id=doubt.id)
    error = _refused(scene, "housing", "AnswerObjection", rejected, grpc.StatusCode.PERMISSION_DENIED)
    assert reason_of(error) == "OBJECTION_ANSWER_DENIED" and "person/zj-steward" in (error.details() or "")
    _refused(
        scene,
        "police",
        "AnswerObjection",
        _answer(opb.ANSWER_KIND_CORRECTED, "已更正", id=doubt.id),
        grpc.StatusCode.INVALID_ARGUMENT,
    )  # a correction without its effective time
    _call(scene, "police", "AnswerObjection", rejected)
    error = _refused(
        scene,
        "police",
        "AnswerObjection",
        _answer(opb.ANSWER_KIND_NO_CORRECTION, "改答", id=doubt.id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "answered already" in (error.details() or "")
    assert _call(scene, "consumer", "GetObjection", opb.GetObjectionRequest(id=doubt.id)).answer_text == "数据无误"

    police = scene.hub.client(scene.world.people["police"])
    with police:
        police.call(police.catalog.RetireResource, cpb.ChangeResourceStatusRequest(code=LOOKUP, reason="停用"))
    error = _refused(scene, "consumer", "RaiseObjection", _raising(), grpc.StatusCode.FAILED_PRECONDITION)
    assert "retired" in (error.details() or "")


def _raising(**fields: Any) -> opb.RaiseObjectionRequest:
    return opb.RaiseObjectionRequest(resource_code=LOOKUP, fields=["name"], reason="金额有误", **fields)


def test_the_command_raises_lists_and_answers_and_refuses_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_hub(base_settings(tmp_path / "hub")) as hub:
        world = make_world(hub)
        serve_lookup(world, tmp_path)

        def run(who: str, *argv: str) -> tuple[int, str, str]:
            capsys.readouterr()
            code = main(["--hub", hub.settings.hub_address, "--identity", str(world.people[who]), *argv])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, _ = run(
            "consumer",
            "--json",
            "objection",
            "raise",
            "--resource",
            LOOKUP,
            "--field",
            "name",
            "--reason",
            "姓名与户籍不符",
        )
        assert code == 0
        objection = json.loads(out)["id"]
        code, out, _ = run("police", "objection", "list", "--view", "for-me")
        assert code == 0 and objection in out and "open" in out and "overdue (unanswered past the due date): 0" in out
        code, out, _ = run(
            "police",
            "objection",
            "answer",
            objection,
            "--kind",
            "corrected",
            "--text",
            "已更正",
            "--effective",
            "2026-12-01T08:00:00+08:00",
        )
        assert code == 0 and "effective 2026-12-01 00:00 UTC" in out
        code, _, err = run("police", "objection", "answer", objection, "--kind", "rejected", "--text", "改答")
        assert code != 0 and "FAILED_PRECONDITION" in err and "answered already" in err and "Traceback" not in err
        code, _, err = run(
            "police", "objection", "answer", "OB-1", "--kind", "corrected", "--text", "x", "--effective", "yesterday"
        )
        assert code != 0 and "--effective" in err and "Traceback" not in err
