"""The evaluation report (issue 19): a scripted history's figures from the hub, equal offline from a verified
export, and no figure at all from a tampered one; bad periods and callers without the right refused."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from audit import report as evaluation
from audit.records import AuditRecord
from exchange import models as m
from exchange import wire as w
from exchange.cli.main import main
from exchange.services import auditing
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import rights_pb2 as rpb
from exchange.workdays import WorkCalendar
from tests.exchange_world import LOOKUP, PERSON_ID, PURPOSE, REGISTRY, World, lookup, make_world, query, serve_lookup
from tests.harness import AUTHORITY, POLICE, RunningHub, base_settings, identity_spec, reason_of, running_hub, today

UNUSED = "10101/350200000009"
REFUSAL = "用途与职责不符"


@contextlib.contextmanager
def dated(monkeypatch: pytest.MonkeyPatch, day: dt.date) -> Iterator[None]:
    """Change records made in the block say they were made on ``day`` (the log still orders them as written)."""
    with monkeypatch.context() as patch:
        patch.setattr(auditing, "now_text", lambda: f"{day.isoformat()}T09:00:00.000000Z")
        yield


def _apply(world: World, resource: str) -> str:
    app = m.Application(
        resource_code=resource,
        consumer_department_code="",
        system_codes=("bdc-djxt",),
        purpose=PURPOSE,
        legal_basis="《不动产登记暂行条例实施细则》第十一条",
        fields=("name",),
        start=today(),
        end=today() + dt.timedelta(days=30),
        expected_daily_calls=10,
    )
    with world.hub.client(world.people["consumer"]) as c:
        return str(c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app))).id)


def _rights(world: World, who: str, method: str, request: Any) -> None:
    with world.hub.client(world.people[who]) as c:
        c.call(getattr(c.rights, method), request)


def _objection(action: str, subject: str, day: dt.date, by: tuple[str, str], reason: str) -> AuditRecord:
    """An objection record in the shape the objection service writes (issue 19's contract)."""
    return AuditRecord(
        kind="objection",
        action=action,
        time=f"{day.isoformat()}T10:00:00.000000Z",
        actor=by[0],
        actor_department=by[1],
        outcome="ok",
        reason=reason,
        subject=subject,
        resource=LOOKUP,
        fields=["name"] if action == "raise" else [],
    )


def _objections(hub: RunningHub) -> None:
    """Three objections on the lookup: one answered late (corrected), one on time (rejected), one left open."""
    old = today() - dt.timedelta(days=40)
    clerk, steward = ("person/bdc-clerk", REGISTRY.code), ("person/ga-steward", POLICE.code)
    records = [
        _objection("raise", "OB-1", old, clerk, "姓名与户籍不符"),
        _objection("raise", "OB-2", today(), clerk, "姓名有误"),
        _objection("raise", "OB-3", old, clerk, "姓名缺字"),
        _objection("answer:corrected", "OB-1", today(), steward, f"effective {today()}T08:00:00Z; 已更正"),
        _objection("answer:rejected", "OB-2", today(), steward, "数据无误"),
        _objection("escalate", "OB-3", today(), ("person/sm-lin", AUTHORITY.code), "逾期未答复"),
    ]
    hub.hub.store.audit.stage(records)


def _history(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Writes the history through the real services; the answer times (working days) it makes."""
    hub, calendar = world.hub, WorkCalendar.mainland()
    serve_lookup(world, tmp_path)  # applied and approved today: on time, 0 working days
    assert world.exchange().Query(lookup(), timeout=20).exchange_id  # the lookup is used
    world.publish("police", identity_spec(UNUSED, POLICE.code, name="从未使用的目录"))
    with pytest.raises(grpc.RpcError):  # no grant: denied, and UNUSED stays never used
        world.exchange().Query(query(UNUSED, {"id_number": PERSON_ID}, ["name"]), timeout=20)
    long_ago, lately = today() - dt.timedelta(days=40), today() - dt.timedelta(days=3)
    with dated(monkeypatch, long_ago):
        late, unanswered = _apply(world, UNUSED), _apply(world, UNUSED)
    with dated(monkeypatch, lately):
        refused = _apply(world, UNUSED)
    _rights(world, "police", "Approve", rpb.ApproveRequest(id=late, reason="同意"))
    _rights(world, "police", "Refuse", rpb.RefuseRequest(id=refused, reason=REFUSAL))
    _rights(world, "consumer", "Dispute", rpb.DisputeRequest(id=refused, reason="有法定依据"))
    _rights(world, "manager", "DecideDispute", rpb.DecideDisputeRequest(id=refused, grant=False, reason="维持"))
    assert unanswered
    _objections(hub)
    hub.hub.audit.flush()

    def days(start: dt.date) -> int:
        return sum(calendar.is_working_day(start + dt.timedelta(days=n)) for n in range(1, (today() - start).days + 1))

    return [0, days(long_ago), days(lately)]


def _report(hub: RunningHub, identity: Path, **asked: str) -> apb.GetReportResponse:
    with hub.client(identity) as c:
        return c.call(c.audit.GetReport, apb.GetReportRequest(**asked))


def _department(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in report["departments"] if d["department"] == code]
    assert len(found) == 1, code
    return found[0]


def _check_figures(report: dict[str, Any], answer_days: list[int]) -> None:
    police = _department(report, POLICE.code)
    assert police["requests"] == {
        "applied": 4,
        "answered_on_time": 2,
        "answered_late": 1,
        "open_overdue": 1,
        "median_answer_working_days": float(statistics.median(answer_days)),
    }
    assert police["refusals"] == [{"reason": REFUSAL, "count": 1}]
    assert police["disputes"] == {"raised": 1, "overturned": 0, "upheld": 1}
    assert police["objections"] == {
        "raised": 0,
        "received": 3,
        "answered_on_time": 1,
        "answered_late": 1,
        "corrected": 1,
        "no_correction": 0,
        "rejected": 1,
        "escalated": 1,
        "open_overdue": 1,
    }
    assert police["catalog"] == {"entries": 2, "used": [LOOKUP], "never_used": [UNUSED]}
    assert _department(report, REGISTRY.code)["objections"]["raised"] == 3
    rows = {(x["resource"], x["owner"], x["consumer"], x["outcome"]): x["count"] for x in report["exchanges"]}
    assert rows == {(LOOKUP, POLICE.code, REGISTRY.code, "ok"): 1, (UNUSED, POLICE.code, REGISTRY.code, "denied"): 1}


def test_the_report_is_recomputed_offline_from_a_verified_export(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_hub(base_settings(tmp_path / "hub", database_url=store_url)) as hub:
        world = make_world(hub)
        answer_days = _history(world, tmp_path, monkeypatch)
        auditor = world.people["auditor"]
        start, end = today() - dt.timedelta(days=60), today() + dt.timedelta(days=1)
        answer = _report(hub, auditor, from_date=start.isoformat(), to_date=end.isoformat())
        report = json.loads(answer.report_json)
        _check_figures(report, answer_days)
        assert report["checkpoint"] == {
            "size": answer.checkpoint.size,
            "root": answer.checkpoint.root_hash.hex(),
            "note": answer.checkpoint.note,
        }
        assert report["objection_answer_working_days"] == 5 and report["calendar"]

        hub_argv = ["--hub", hub.settings.hub_address, "--identity", str(world.people["manager"])]
        period = ["--from", start.isoformat(), "--to", end.isoformat()]
        capsys.readouterr()
        assert main([*hub_argv, "report", *period, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["departments"] == report["departments"]  # the share manager too
        assert main([*hub_argv, "report", *period, "--department", POLICE.code]) == 0
        table = capsys.readouterr().out
        assert f"checkpoint of size {answer.checkpoint.size}" in table and POLICE.code in table
        assert "1 (0/1)" in table  # the dispute, upheld

        export, note = tmp_path / "log.jsonl", tmp_path / "checkpoint.note"
        note.write_text(answer.checkpoint.note, encoding="utf-8")
        assert (
            main(
                ["--hub", hub.settings.hub_address, "--identity", str(auditor), "audit", "export", "--out", str(export)]
            )
            == 0
        )
        key = str(hub.files.audit_verifier)
        offline = ["audit", "report", "--from-export", str(export), "--key", key, "--checkpoint", str(note), *period]
        capsys.readouterr()
        assert main([*offline, "--json"]) == 0
        assert capsys.readouterr().out.strip() == answer.report_json  # the same figures, byte for byte

        assert main([*offline, "--csv"]) == 0
        csv_text = capsys.readouterr().out
        assert (
            f"refusals,{POLICE.code},{REFUSAL},1" in csv_text
            and f"catalog,{POLICE.code},never_used,{UNUSED}" in csv_text
        )

        text = export.read_text(encoding="utf-8")
        assert text.count(REFUSAL) >= 1
        export.write_text(text.replace(REFUSAL, "依据充分", 1), encoding="utf-8")
        assert main([*offline, "--json"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "does NOT verify" in err and "does not hash to its leaf" in err


@pytest.fixture
def quiet_hub(tmp_path: Path) -> Iterator[World]:
    with running_hub(base_settings(tmp_path / "hub")) as hub:
        world = make_world(hub)
        hub.hub.audit.flush()
        yield world


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        (today(), today(), "must hold a day"),
        (today(), today() - dt.timedelta(days=3), "is before the period's start"),
        (today() - dt.timedelta(days=181), today(), "past the log's retention of 180 days"),
        ("2026-02-30", today(), "must be a date YYYY-MM-DD"),
    ],
)
def test_a_bad_period_is_refused_and_recorded(quiet_hub: World, start: object, end: object, says: str) -> None:
    hub = quiet_hub.hub
    before = hub.hub.store.audit.size() + hub.hub.store.audit.staged_count()
    with pytest.raises(grpc.RpcError) as info:
        _report(hub, quiet_hub.people["auditor"], from_date=str(start), to_date=str(end))
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in (error.details() or ""), error.details()
    hub.hub.audit.flush()
    (record,) = [
        json.loads(e.record or "{}")
        for e in hub.hub.store.audit.entries(before, hub.hub.store.audit.size())
        if '"denied:GetReport"' in (e.record or "")
    ]
    assert record["actor"] == "person/au-chen"


def test_only_auditors_and_the_share_manager_read_the_report(quiet_hub: World) -> None:
    asked = {"from_date": today().isoformat(), "to_date": (today() + dt.timedelta(days=1)).isoformat()}
    for who in ("police", "consumer"):
        with pytest.raises(grpc.RpcError) as info:
            _report(quiet_hub.hub, quiet_hub.people[who], **asked)
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(info.value) == "AUDIT_REPORT_DENIED"
    one = json.loads(
        _report(quiet_hub.hub, quiet_hub.people["manager"], department_code=POLICE.code, **asked).report_json
    )
    assert [d["department"] for d in one["departments"]] == [POLICE.code] and one["department"] == POLICE.code


def _rec(kind: str, action: str, day: str, **fields: str) -> dict[str, object]:
    return {"kind": kind, "action": action, "time": f"{day}T09:00:00.000000Z", "outcome": "ok", **fields}


def test_the_computation_stops_at_the_checkpoint_and_reads_the_calendar() -> None:
    """Pure: records past the checkpoint's size are not counted; answer times in working days, a holiday skipped."""
    holiday = dt.date(2026, 3, 4)
    calendar = WorkCalendar(holidays=frozenset({holiday}), sources=("test calendar",))
    owner = {"actor_department": POLICE.code}
    records: list[dict[str, object]] = [
        _rec("catalog", "create:published", "2026-03-01", subject="R1", resource="R1", **owner),
        _rec("catalog", "create:published", "2026-03-01", subject="R2", resource="R2", **owner),
        _rec("catalog", "retired", "2026-03-01", subject="R2", resource="R2", **owner),
        _rec("rights", "apply:conditional", "2026-03-02", subject="SR-1", resource="R1", actor_department="C"),
        _rec("rights", "apply:conditional", "2026-03-02", subject="SR-2", resource="R1", actor_department="C"),
        _rec("rights", "approve", "2026-03-05", subject="SR-1", resource="R1", **owner),  # Tue-Thu, the 4th off: 2
        _rec("rights", "refuse", "2026-03-03", subject="SR-2", resource="R1", reason=" 不符 ", **owner),  # 1
        _rec("exchange", "query", "2026-03-06", resource="R1", exchange_id="X1", actor_department="C"),
        _rec("rights", "refuse", "2026-03-06", subject="SR-9", resource="R1", reason="past the checkpoint", **owner),
    ]
    entries = [(seq, r) for seq, r in enumerate(records)]
    at = evaluation.CheckpointRef(len(records) - 1, "00", "note")
    period = evaluation.Period(dt.date(2026, 3, 2), dt.date(2026, 3, 9))
    got = evaluation.compute(entries, period, calendar, objection_days=5, checkpoint=at)
    shown: dict[str, Any] = json.loads(evaluation.to_json(got))
    assert len(shown["departments"]) == 1
    police = shown["departments"][0]
    assert police["requests"]["median_answer_working_days"] == 1.5
    assert police["requests"]["answered_on_time"] == 2 and police["refusals"] == [{"reason": "不符", "count": 1}]
    assert police["catalog"] == {"entries": 1, "used": ["R1"], "never_used": []}  # R2 retired before the period
    assert got["calendar"] == ["test calendar"] and got["checkpoint"] == {"size": 8, "root": "00", "note": "note"}
    again = evaluation.compute(iter(entries), period, calendar, objection_days=5, checkpoint=at)
    assert evaluation.to_json(again) == evaluation.to_json(got)
    later: dict[str, Any] = json.loads(
        evaluation.to_json(
            evaluation.compute(
                entries, period, calendar, objection_days=5, checkpoint=evaluation.CheckpointRef(9, "", "")
            )
        )
    )
    assert {r["reason"] for r in later["departments"][0]["refusals"]} == {"不符", "past the checkpoint"}


def test_a_period_reaching_past_the_log_judges_what_is_open_on_the_logs_newest_day() -> None:
    """Pure: a request due after the log's newest record is not overdue in a period that reaches past it
    (the log cannot say what will be late); one due before it is."""
    calendar = WorkCalendar(sources=("test calendar",))
    owner = {"actor_department": POLICE.code}
    records: list[dict[str, object]] = [
        _rec("catalog", "create:published", "2026-03-01", subject="R1", resource="R1", **owner),
        _rec("rights", "apply:conditional", "2026-03-02", subject="SR-1", resource="R1", actor_department="C"),
        _rec("rights", "apply:conditional", "2026-03-20", subject="SR-2", resource="R1", actor_department="C"),
    ]
    entries = [(seq, r) for seq, r in enumerate(records)]
    at = evaluation.CheckpointRef(len(records), "00", "note")
    month = evaluation.Period(dt.date(2026, 3, 1), dt.date(2026, 4, 30))
    got = evaluation.compute(entries, month, calendar, objection_days=5, checkpoint=at)
    assert got["open_judged_on"] == "2026-03-20"
    police = json.loads(evaluation.to_json(got))["departments"][0]
    assert police["requests"]["open_overdue"] == 1  # SR-1 was due 2026-03-16; SR-2 is due 2026-04-03
    past = evaluation.compute(
        entries, evaluation.Period(dt.date(2026, 3, 1), dt.date(2026, 3, 10)), calendar, objection_days=5, checkpoint=at
    )
    assert past["open_judged_on"] == "2026-03-09"
