"""The ``exchange subscribe`` verbs: create, list, get and cancel subscriptions, and follow one.

``follow`` writes each change as one JSON line (to standard output or appended to a file), makes the lines
durable, then acknowledges the batch: a follower stopped at any point resumes after what it acknowledged,
and may see again, with the same ``change_id``, lines it wrote but had not acknowledged (deduplicate by it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

from exchange import values
from exchange.cli.client import HubClient
from exchange.cli.commands import ask, show_list
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.server.subscriptions import STATUS
from exchange.v1 import subscription_pb2 as pb

HEADERS = ["id", "resource", "consumer", "purpose", "status", "acknowledged", "last", "pending", "dropped"]
_KINDS = {pb.CHANGE_KIND_UPSERT: "upsert", pb.CHANGE_KIND_DELETE: "delete"}


def rows(subscriptions: Iterable[pb.Subscription]) -> list[list[str]]:
    return [
        [
            s.id,
            s.resource_code,
            f"{s.consumer_department_code}/{s.consumer_system_code}",
            s.purpose,
            STATUS.label(s.status),
            str(s.acknowledged_sequence),
            str(s.last_sequence),
            str(s.pending),
            str(s.dropped_through or "-"),
        ]
        for s in subscriptions
    ]


def _filters(items: Iterable[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument.of([FieldViolation("--filter", f"{item[:40]!r} is not name=value")])
        out[name] = value
    return out


def create(args: argparse.Namespace, settings: Settings) -> int:
    start = pb.SUBSCRIPTION_START_FIRST if args.from_first else pb.SUBSCRIPTION_START_NOW
    request = pb.CreateSubscriptionRequest(
        resource_code=args.resource, purpose=args.purpose, fields=args.field, filters=_filters(args.filter), start=start
    )
    response = ask(args, settings, lambda hub: hub.subscriptions.CreateSubscription, request)
    show_list(args, response, HEADERS, rows([response.subscription]))
    return 0


def get(args: argparse.Namespace, settings: Settings) -> int:
    response = ask(args, settings, lambda hub: hub.subscriptions.GetSubscription, pb.GetSubscriptionRequest(id=args.id))
    show_list(args, response, HEADERS, rows([response.subscription]))
    return 0


def list_(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ListSubscriptionsRequest(
        resource_code=args.resource or "", include_cancelled=args.all, page_size=args.page_size,
        page_token=args.page_token,
    )  # fmt: skip
    response = ask(args, settings, lambda hub: hub.subscriptions.ListSubscriptions, request)
    show_list(args, response, HEADERS, rows(response.subscriptions))
    return 0


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.CancelSubscriptionRequest(id=args.id, reason=args.reason)
    response = ask(args, settings, lambda hub: hub.subscriptions.CancelSubscription, request)
    show_list(args, response, HEADERS, rows([response.subscription]))
    return 0


def follow(args: argparse.Namespace, settings: Settings) -> int:
    """Follows until interrupted (or ``--max-changes`` were written and acknowledged)."""
    written = 0
    output: AbstractContextManager[IO[str]] = (
        open(args.out, "a", encoding="utf-8") if args.out else nullcontext(sys.stdout)  # noqa: SIM115
    )
    with HubClient(settings, args.identity) as hub, output as out:
        request = pb.FollowRequest(id=args.id, batch_size=args.batch_size)
        for message in hub.subscriptions.Follow(request):
            last = _write(out, message)
            hub.call(hub.subscriptions.Acknowledge, pb.AcknowledgeRequest(id=args.id, sequence=last))
            written += _count(message)
            if args.max_changes and written >= args.max_changes:
                break
    return 0


def _write(out: IO[str], message: pb.FollowResponse) -> int:
    """Writes the message's lines and makes them durable; the last sequence they cover."""
    if message.HasField("gap"):
        gap = message.gap
        line: dict[str, Any] = {"gap": {"first": gap.first_sequence, "last": gap.last_sequence, "message": gap.message}}
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        last = gap.last_sequence
    else:
        batch = message.batch
        for change in batch.changes:
            line = {
                "sequence": change.sequence,
                "change_id": change.change_id,
                "kind": _KINDS.get(change.kind, "unknown"),
                "record": values.record_from_wire(change.record),
                "exchange_id": batch.exchange_id,
            }
            out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        last = batch.last_sequence
    out.flush()
    if out is not sys.stdout:
        os.fsync(out.fileno())
    return last


def _count(message: pb.FollowResponse) -> int:
    part = message.gap if message.HasField("gap") else message.batch
    return part.last_sequence - part.first_sequence + 1


def add_verbs(top: Any, verb: Any) -> None:
    """``exchange subscribe ...``, with the CLI's ``_verb`` helper."""
    sub = top.add_parser("subscribe", help="subscriptions to a resource's changes").add_subparsers(
        dest="verb", required=True
    )
    p = verb(sub, "create", create, "subscribe this system to a resource's changes under its grant")
    p.add_argument("--resource", required=True, help="resource code")
    p.add_argument("--purpose", required=True, help="the grant's purpose")
    p.add_argument("--field", action="append", required=True, help="a granted item to receive (repeat)")
    p.add_argument("--filter", action="append", help="name=value: only changes of matching records (repeat)")
    p.add_argument("--from-first", action="store_true", help="every change the source holds (default: from now)")
    p = verb(sub, "get", get, "show a subscription and where its delivery stands")
    p.add_argument("id", help="the subscription's id (SB-...)")
    p = verb(sub, "list", list_, "list the subscriptions you may see (consumer, owner steward, share manager)")
    p.add_argument("--resource", help="only subscriptions to this resource")
    p.add_argument("--all", action="store_true", help="cancelled ones too")
    p.add_argument("--page-size", type=int, default=0, help="items per page (default 50, at most 1000)")
    p.add_argument("--page-token", default="", help="token printed at the end of the previous page")
    p = verb(sub, "cancel", cancel, "cancel a subscription (its changes still pending are dropped)")
    p.add_argument("id", help="the subscription's id (SB-...)")
    p.add_argument("--reason", default="", help="why, for the audit log")
    p = verb(sub, "follow", follow, "write each change as a JSON line, then acknowledge it; resumes after the last")
    p.add_argument("id", help="the subscription's id (SB-...)")
    p.add_argument("--out", help="append the lines to this file (default: standard output)")
    p.add_argument("--batch-size", type=int, default=0, help="most changes per batch (default: the hub's)")
    p.add_argument("--max-changes", type=int, default=0, help="stop after this many (default: follow on)")
