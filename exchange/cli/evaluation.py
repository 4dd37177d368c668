"""The evaluation report verbs: ``exchange report`` asks the hub; ``exchange audit report`` recomputes it offline.

Both print the figures audit/report.py computes; the offline verb first verifies the export with the
log's public key (as ``audit verify`` does), so a tampered export shows no figure at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from audit import report as evaluation
from audit.note import Checkpoint, Verifier
from audit.verify import VerifyError, open_checkpoint, verify_export
from exchange.cli import tables, userfiles
from exchange.cli.audit import read_held_checkpoint, read_verifier
from exchange.cli.commands import ask
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.v1 import audit_pb2 as pb
from exchange.workdays import WorkCalendar

COLUMNS = [
    "department",
    "applied",
    "on time",
    "late",
    "overdue",
    "median days",
    "refused",
    "disputes (overturned/upheld)",
    "objections raised",
    "received (on time/late/corrected)",
    "entries used/never",
]


def report(args: argparse.Namespace, settings: Settings) -> int:
    """Asks the hub for the report of a period and prints it (table, JSON or CSV)."""
    request = pb.GetReportRequest(from_date=args.from_date, to_date=args.to_date, department_code=args.department or "")
    answer = ask(args, settings, lambda hub: hub.audit.GetReport, request)
    _print(args, json.loads(answer.report_json))
    return 0


def offline(args: argparse.Namespace, settings: Settings) -> int:
    """Verifies an export, then recomputes the report from its records with the hub's own function."""
    verifier = read_verifier(args.key)
    userfiles.check_readable(args.from_export, "the export")
    period = _period(args.from_date, args.to_date)
    held = read_held_checkpoint(args.checkpoint, verifier) if args.checkpoint is not None else None
    try:
        with args.from_export.open(encoding="utf-8") as lines:
            proved = verify_export(lines, verifier, held=held)
    except VerifyError as e:
        print(f"error: the log in {args.from_export} does NOT verify, so no figure is shown: {e}", file=sys.stderr)
        return 1
    except UnicodeError:
        raise InvalidArgument(f"{args.from_export} is not an export of the audit log: it is not UTF-8 text") from None
    at = _checkpoint_ref(args, held, verifier, proved.size)
    calendar = WorkCalendar.mainland(settings.calendar_file)
    with args.from_export.open(encoding="utf-8") as lines:
        computed = evaluation.compute(
            evaluation.entries_of_export(lines),
            period,
            calendar,
            objection_days=args.objection_days or settings.objection_answer_working_days,
            checkpoint=at,
            department=args.department or "",
        )
    _print(args, computed)
    return 0


def _checkpoint_ref(
    args: argparse.Namespace, held: Checkpoint | None, verifier: Verifier, size: int
) -> evaluation.CheckpointRef:
    """The held checkpoint (its note as given) or the export's newest, whose note the export carries."""
    if held is not None:
        note = userfiles.read_text(args.checkpoint, "the held checkpoint")
        return evaluation.CheckpointRef(held.size, held.root.hex(), note)
    with args.from_export.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("E\t"):
                break
            data = json.loads(line)
            note = str(data.get("checkpoint", ""))
            if note and (found := open_checkpoint(note, verifier)).size == size:
                return evaluation.CheckpointRef(size, found.root.hex(), note)
    raise InvalidArgument(f"{args.from_export} holds no checkpoint note of size {size}")  # verify_export forbids it


def _period(start: str, end: str) -> evaluation.Period:
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        raise InvalidArgument.of([FieldViolation("--from/--to", "must be dates YYYY-MM-DD")]) from None
    if last <= first:
        raise InvalidArgument.of(
            [FieldViolation("--to", f"{end} must be after --from {start}: [from, to) holds a day")]
        )
    return evaluation.Period(first, last)


def _print(args: argparse.Namespace, data: Mapping[str, object]) -> None:
    if args.json or args.as_json:
        print(evaluation.to_json(data))
    elif args.csv:
        sys.stdout.write(evaluation.to_csv(data))
    else:
        print_table(data)


def print_table(data: Mapping[str, object]) -> None:
    """The report for people: its head, the departments' figures, and the exchanges by resource and outcome."""
    print(_head(data))
    print(tables.render(COLUMNS, [_row(d) for d in _items(data["departments"])], max_column=60))
    rows = [
        [str(x[k]) for k in ("resource", "owner", "consumer", "outcome", "count")] for x in _items(data["exchanges"])
    ]
    print(tables.render(["resource", "owner", "consumer", "outcome", "exchanges"], rows, max_column=60))


def _head(data: Mapping[str, object]) -> str:
    period, at = _mapping(data["period"]), _mapping(data["checkpoint"])
    return (
        f"period {period['from']} to {period['to']} (exclusive); objections due in "
        f"{data['objection_answer_working_days']} working days; computed at checkpoint of size {at['size']}, "
        f"root {at['root']}"
    )


def _row(d: Mapping[str, object]) -> list[str]:
    req, dis, obj, cat = (_mapping(d[k]) for k in ("requests", "disputes", "objections", "catalog"))
    median = req["median_answer_working_days"]
    refused = sum(int(str(r["count"])) for r in _items(d["refusals"]))
    return [
        str(d["department"]),
        str(req["applied"]),
        str(req["answered_on_time"]),
        str(req["answered_late"]),
        str(req["open_overdue"]),
        "-" if median is None else str(median),
        str(refused),
        f"{dis['raised']} ({dis['overturned']}/{dis['upheld']})",
        str(obj["raised"]),
        f"{obj['received']} ({obj['answered_on_time']}/{obj['answered_late']}/{obj['corrected']})",
        f"{len(_list(cat['used']))}/{len(_list(cat['never_used']))}",
    ]


def _mapping(value: object) -> Mapping[str, object]:
    assert isinstance(value, Mapping)
    return value


def _list(value: object) -> list[object]:
    assert isinstance(value, list)
    return value


def _items(value: object) -> list[Mapping[str, object]]:
    return [_mapping(x) for x in _list(value)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The period, department and output flags both verbs share."""
    p.add_argument("--from", dest="from_date", required=True, help="the period's first day, YYYY-MM-DD (UTC)")
    p.add_argument("--to", dest="to_date", required=True, help="the day after the period's last, YYYY-MM-DD")
    p.add_argument("--department", help="one department's figures (its code)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", dest="as_json", action="store_true", help="the report as canonical JSON")
    out.add_argument("--csv", action="store_true", help="the report as CSV rows: section, department, item, value")


def add_offline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-export", type=Path, required=True, help="the export (audit export --out)")
    p.add_argument("--key", type=Path, required=True, help="the log's public key file (log.pub)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="the signed checkpoint note the hub's report was computed at (default: the export's newest)",
    )
    p.add_argument(
        "--objection-days",
        type=int,
        default=0,
        help="working days an objection's answer is due in, as the hub's report states (default: the setting)",
    )
    add_arguments(p)
