"""The rights verbs of the ``exchange`` command: share requests and grants."""

from __future__ import annotations

import argparse
import datetime as dt

from google.type import date_pb2

from exchange import models as m
from exchange import wire as w
from exchange.cli import tables
from exchange.cli.commands import ask, show_list
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.v1 import rights_pb2 as pb

REQUEST_HEADERS = ["id", "resource", "consumer", "purpose", "status", "due", "grant"]
GRANT_HEADERS = ["id", "resource", "consumer", "fields", "purpose", "until", "quota/day", "status"]
_VIEWS = {
    "all": pb.SHARE_REQUEST_VIEW_UNSPECIFIED,
    "mine": pb.SHARE_REQUEST_VIEW_MINE,
    "for-me": pb.SHARE_REQUEST_VIEW_FOR_ME,
}


def _date(value: date_pb2.Date) -> str:
    d = w.date_from_wire(value, "", [], required=False)
    return d.isoformat() if d else "-"


def _due(r: pb.ShareRequest) -> str:
    return _date(r.due_date) + (" (estimated)" if r.due_date_estimated else "") + (" (overdue)" if r.overdue else "")


def _due_notes(requests: list[pb.ShareRequest]) -> None:
    """Below a table: the hub's note on each due date no calendar vouches for (e.g. Monday to Friday assumed)."""
    for r in requests:
        if r.due_date_estimated:
            print(f"{r.id}: due {_date(r.due_date)} ({r.due_date_note or 'estimated'})")


def _at(code: str, hub: str) -> str:
    """A resource or department with the other hub it is at, for a request that crosses hubs."""
    return f"{code} @{hub}" if hub else code


def request_rows(requests: list[pb.ShareRequest]) -> list[list[str]]:
    return [
        [
            r.id,
            _at(r.resource_code, r.cross_hub.home_hub_code),
            _at(r.consumer_department_code, r.cross_hub.consumer_hub_code),
            r.purpose,
            w.REQUEST_STATUS.label(r.status),
            _due(r),
            r.grant_id or "-",
        ]
        for r in requests
    ]


def grant_rows(grants: list[pb.Grant]) -> list[list[str]]:
    return [
        [
            g.id,
            g.resource_code,
            g.consumer_department_code,
            ", ".join(g.fields),
            g.purpose,
            _date(g.end_date),
            str(g.daily_quota),
            w.GRANT_STATUS.label(g.status),
        ]
        for g in grants
    ]


def _history(history: list[pb.ShareEvent]) -> str:
    rows = [[e.time.ToDatetime().strftime("%Y-%m-%d %H:%M"), e.action, e.actor.code, e.reason] for e in history]
    return tables.render(["at", "step", "by", "reason"], rows)


def _iso(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.of([FieldViolation(flag, f"{value!r} is not a date (YYYY-MM-DD)")]) from None


def _masks(values: list[str]) -> list[pb.FieldMask]:
    out = []
    for value in values:
        name, _, kind = value.partition("=")
        try:
            out.append(pb.FieldMask(field=name, mask=w.MASK.wire(m.MaskKind(kind))))
        except ValueError:
            kinds = ", ".join(k.value for k in m.MaskKind)
            raise InvalidArgument.of(
                [FieldViolation("--mask", f"{value!r}: use FIELD=KIND, KIND one of {kinds}")]
            ) from None
    return out


def _show_request(args: argparse.Namespace, r: pb.ShareRequest) -> None:
    show_list(args, r, REQUEST_HEADERS, request_rows([r]))
    if not args.json:
        _due_notes([r])
        if r.decision_reason:
            print(f"decision: {r.decision_reason}")
        link = r.cross_hub
        if link.home_hub_code:
            problem = f"; last problem: {link.problem}" if link.problem else ""
            print(f"decided at hub {link.home_hub_code} as {link.home_request_id or '-'} ({link.submission}){problem}")
            if link.grant_status:
                print(_home_grant(link))
            if link.dispute:
                print(_home_dispute(link))
        if link.consumer_hub_code:
            print(f"applied at hub {link.consumer_hub_code} as {link.consumer_request_id}")
        print(_history(list(r.history)))


def _home_dispute(link: pb.CrossHubLink) -> str:
    """The dispute of the home's refusal, as this hub keeps it: waiting, submitted or not taken (and why)."""
    said = {"waiting": "waiting to be submitted", "submitted": "submitted", "refused": "not taken"}
    text = f"dispute at hub {link.home_hub_code}: {said.get(link.dispute, link.dispute)}"
    return text + (f" ({link.dispute_problem})" if link.dispute_problem else "")


def _home_grant(link: pb.CrossHubLink) -> str:
    """The grant at the home hub, as last read back: its state, whether it expired, its last change there."""
    text = f"grant at hub {link.home_hub_code}: {w.GRANT_STATUS.label(link.grant_status)}"
    text += " (expired)" if link.grant_expired else ""
    if link.HasField("grant_change_time"):
        at = link.grant_change_time.ToDatetime().strftime("%Y-%m-%d %H:%M")
        text += f", since {at} UTC: {link.grant_reason or '-'}"
    return text


def _show_grant(args: argparse.Namespace, g: pb.Grant) -> None:
    show_list(args, g, GRANT_HEADERS, grant_rows([g]))
    if not args.json:
        masks = ", ".join(f"{x.field}={w.MASK.label(x.mask)}" for x in g.masks) or "none"
        print(f"systems: {', '.join(g.system_codes)}; masks: {masks}; legal basis: {g.legal_basis or '-'}")
        print(f"masked items that may be filtered on (verification): {', '.join(g.verify_masked) or 'none'}")
        if g.HasField("usage"):
            print(_usage(g.usage))
        print(_history(list(g.history)))


def _usage(u: pb.GrantUsage) -> str:
    return (
        f"today ({_date(u.day)}, UTC): {u.calls} calls counted against the quota; verifications on masked items: "
        f"{u.verifications} lookups, {u.misses} found nothing (allowance {u.miss_allowance} a day), {u.refused} refused"
    )


def request_apply(args: argparse.Namespace, settings: Settings) -> int:
    start = _iso(args.start, "--start") if args.start else dt.date.today()
    end = _iso(args.end, "--end") if args.end else start + dt.timedelta(days=365)
    application = m.Application(
        resource_code=args.resource,
        consumer_department_code="",
        system_codes=tuple(args.system),
        purpose=args.purpose,
        legal_basis=args.legal_basis,
        fields=tuple(args.field),
        start=start,
        end=end,
        expected_daily_calls=args.daily_calls,
    )
    r = ask(args, settings, lambda hub: hub.rights.Apply, pb.ApplyRequest(request=w.application_to_wire(application)))
    _show_request(args, r)
    return 0


def request_get(args: argparse.Namespace, settings: Settings) -> int:
    _show_request(
        args, ask(args, settings, lambda hub: hub.rights.GetShareRequest, pb.GetShareRequestRequest(id=args.id))
    )
    return 0


def request_list(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ListShareRequestsRequest(
        page_size=args.page_size,
        page_token=args.page_token,
        view=_VIEWS[args.view],
        status=w.REQUEST_STATUS.optional(m.ShareRequestStatus(args.status) if args.status else None),
        resource_code=args.resource or "",
        consumer_department_code=args.consumer or "",
        overdue_only=args.overdue,
    )
    response = ask(args, settings, lambda hub: hub.rights.ListShareRequests, request)
    show_list(args, response, REQUEST_HEADERS, request_rows(list(response.requests)))
    if not args.json:
        _due_notes(list(response.requests))
        print(f"overdue (past 10 working days, undecided): {response.overdue_count}")
    return 0


def request_approve(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ApproveRequest(
        id=args.id,
        fields=args.field or [],
        masks=_masks(args.mask or []),
        reason=args.reason,
        verify_masked=args.verify_masked or [],
    )
    if args.end:
        request.end_date.CopyFrom(w.date_to_wire(_iso(args.end, "--end")))
    _show_request(args, ask(args, settings, lambda hub: hub.rights.Approve, request))
    return 0


def request_refuse(args: argparse.Namespace, settings: Settings) -> int:
    refused = ask(args, settings, lambda hub: hub.rights.Refuse, pb.RefuseRequest(id=args.id, reason=args.reason))
    _show_request(args, refused)
    return 0


def request_dispute(args: argparse.Namespace, settings: Settings) -> int:
    disputed = ask(args, settings, lambda hub: hub.rights.Dispute, pb.DisputeRequest(id=args.id, reason=args.reason))
    _show_request(args, disputed)
    return 0


def request_decide(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.DecideDisputeRequest(
        id=args.id, grant=args.outcome == "grant", reason=args.reason, daily_quota=args.daily_quota
    )
    _show_request(args, ask(args, settings, lambda hub: hub.rights.DecideDispute, request))
    return 0


def grant_issue(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.IssueGrantRequest(
        request_id=args.request_id, daily_quota=args.daily_quota, rate_per_second=args.rate, reason=args.reason
    )
    _show_grant(args, ask(args, settings, lambda hub: hub.rights.IssueGrant, request))
    return 0


def grant_change(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ChangeGrantRequest(id=args.id, reason=args.reason)
    method = {"suspend": "SuspendGrant", "resume": "ResumeGrant", "revoke": "RevokeGrant"}[args.verb]
    _show_grant(args, ask(args, settings, lambda hub: getattr(hub.rights, method), request))
    return 0


def grant_get(args: argparse.Namespace, settings: Settings) -> int:
    _show_grant(args, ask(args, settings, lambda hub: hub.rights.GetGrant, pb.GetGrantRequest(id=args.id)))
    return 0


def grant_list(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ListGrantsRequest(
        page_size=args.page_size,
        page_token=args.page_token,
        resource_code=args.resource or "",
        consumer_department_code=args.consumer or "",
        status=w.GRANT_STATUS.optional(m.GrantStatus(args.status) if args.status else None),
    )
    response = ask(args, settings, lambda hub: hub.rights.ListGrants, request)
    show_list(args, response, GRANT_HEADERS, grant_rows(list(response.grants)))
    return 0
