"""The ``exchange objection`` verbs: raise, answer, escalate, get and list objections to shared data."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from exchange import wire as w
from exchange.cli.commands import ask, show_list
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.server.objections import ANSWER, STATE
from exchange.store.objections import AnswerKind, ObjectionState
from exchange.v1 import objection_pb2 as pb

HEADERS = ["id", "resource", "exchange", "items", "raised by", "due", "state", "answer"]
_VIEWS = {"all": pb.OBJECTION_VIEW_UNSPECIFIED, "mine": pb.OBJECTION_VIEW_MINE, "for-me": pb.OBJECTION_VIEW_FOR_ME}


def rows(objections: list[pb.Objection]) -> list[list[str]]:
    return [
        [
            o.id,
            o.resource_code,
            o.exchange_id or "-",
            ", ".join(o.fields),
            o.raised_by,
            _due(o),
            STATE.label(o.state),
            ANSWER.label(o.answer_kind) if o.answer_kind else "-",
        ]
        for o in objections
    ]


def _due(o: pb.Objection) -> str:
    due = w.date_from_wire(o.due_date, "", [], required=False)
    return (due.isoformat() if due else "-") + (" (overdue)" if o.overdue else "")


def _show(args: argparse.Namespace, o: pb.Objection) -> int:
    show_list(args, o, HEADERS, rows([o]))
    if not args.json:
        print(f"why: {o.reason}")
        if o.received_sha256:
            print(f"SHA-256 of the values received: {o.received_sha256}")
        if o.answered_by:
            effective = (
                f" (effective {o.effective_time.ToDatetime(dt.UTC):%Y-%m-%d %H:%M} UTC)"
                if o.HasField("effective_time")
                else ""
            )
            print(f"answer by {o.answered_by}{effective}: {o.answer_text}")
        if o.escalated_by:
            print(f"escalated by {o.escalated_by}: {o.escalation_reason}")
    return 0


def _effective(value: str) -> Timestamp:
    try:
        at = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidArgument.of(
            [FieldViolation("--effective", f"{value!r} is not a time with its zone, e.g. 2026-12-01T08:00:00+08:00")]
        )
    stamp = Timestamp()
    stamp.FromDatetime(at.astimezone(dt.UTC))
    return stamp


def objection_raise(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.RaiseObjectionRequest(
        resource_code=args.resource,
        exchange_id=args.exchange or "",
        fields=args.field,
        reason=args.reason,
        received_sha256=args.received_sha256 or "",
    )
    return _show(args, ask(args, settings, lambda hub: hub.objections.RaiseObjection, request))


def objection_answer(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.AnswerObjectionRequest(id=args.id, kind=ANSWER.wire(AnswerKind(args.kind)), text=args.text)
    if args.effective:
        request.effective_time.CopyFrom(_effective(args.effective))
    return _show(args, ask(args, settings, lambda hub: hub.objections.AnswerObjection, request))


def objection_escalate(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.EscalateObjectionRequest(id=args.id, reason=args.reason)
    return _show(args, ask(args, settings, lambda hub: hub.objections.EscalateObjection, request))


def objection_get(args: argparse.Namespace, settings: Settings) -> int:
    return _show(args, ask(args, settings, lambda hub: hub.objections.GetObjection, pb.GetObjectionRequest(id=args.id)))


def objection_list(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ListObjectionsRequest(
        resource_code=args.resource or "",
        state=STATE.optional(ObjectionState(args.state) if args.state else None),
        view=_VIEWS[args.view],
        overdue_only=args.overdue,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    response = ask(args, settings, lambda hub: hub.objections.ListObjections, request)
    show_list(args, response, HEADERS, rows(list(response.objections)))
    if not args.json:
        print(f"overdue (unanswered past the due date): {response.overdue_count}")
    return 0


def add_verbs(top: Any, verb: Any) -> None:
    """``exchange objection ...``, with the CLI's ``_verb`` helper."""
    sub = top.add_parser("objection", help="objections to shared data").add_subparsers(dest="verb", required=True)
    p = verb(sub, "raise", objection_raise, "object to a resource's data, or an exchange you received (consumer)")
    p.add_argument("--resource", required=True, help="resource code")
    p.add_argument("--exchange", help="the exchange id whose records are in doubt")
    p.add_argument("--field", action="append", required=True, help="a data item in doubt (repeat)")
    p.add_argument("--reason", required=True, help="why (never the values themselves)")
    p.add_argument("--received-sha256", help="SHA-256 (hex) of the values you received; required with --exchange")
    p = verb(sub, "answer", objection_answer, "answer an objection to your department's data (owner steward)")
    p.add_argument("id", help="the objection's id")
    p.add_argument("--kind", required=True, choices=[k.value for k in AnswerKind], help="how it was settled")
    p.add_argument("--text", required=True, help="the answer: what was corrected, or why not")
    p.add_argument("--effective", help="corrected: when the corrected data took effect (ISO time with zone)")
    p = verb(sub, "escalate", objection_escalate, "escalate an open or overdue objection (share manager)")
    p.add_argument("id", help="the objection's id")
    p.add_argument("--reason", required=True, help="why, for the owner and the audit log")
    verb(sub, "get", objection_get, "show an objection and its answer").add_argument("id", help="the objection's id")
    p = verb(sub, "list", objection_list, "list objections")
    p.add_argument(
        "--view",
        choices=list(_VIEWS),
        default="all",
        help="mine: raised by your department; for-me: awaiting your answer (or the share manager's watch)",
    )
    p.add_argument("--resource", help="only objections to this resource (its code)")
    p.add_argument("--state", choices=[s.value for s in ObjectionState], help="only in this state")
    p.add_argument("--overdue", action="store_true", help="only unanswered ones past their due date")
    p.add_argument("--page-size", type=int, default=0, help="items per page (default 50, at most 1000)")
    p.add_argument("--page-token", default="", help="token printed at the end of the previous page")
