"""The evaluation report: how departments shared over a period, computed from audit records alone.

One pure function over the log's records (as parsed from their canonical JSON, in log order), so the
hub and an auditor holding a verified export compute the same figures with the same code. Only
records within the checkpoint's size and dated (their ``time``, UTC) before the period's end count;
a figure counts the events dated within the period [start, end). Per department:

- requests: conditional applications to its resources in the period, and the owner's answers
  (approve/refuse) in the period, on time or late against apply date + 10 working days; their median
  answer time in working days; requests still unanswered past their due date at the period's end (or,
  for a period reaching past the log's newest record, on that record's day: ``open_judged_on``).
- refusals by reason (the owner's refusal text); disputes of its refusals raised and decided.
- objections raised (as consumer), received, answered on time or late (due: raise date + N working
  days), corrected / no correction / rejected, escalated, and still open past their due date.
- catalog entries it owns, used (an exchange ending ok or allowed on them in the period) and never used.

And exchanges by resource, owner, consumer and outcome (each exchange counted once, by its last record).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from audit.records import ENTRY, parse_entry_line

# A share request's answer is due this many working days after its application (the rights service's rule).
REQUEST_ANSWER_WORKING_DAYS = 10
USED_OUTCOMES = ("ok", "allowed")
ANSWERS = {"answer:corrected": "corrected", "answer:no_correction": "no_correction", "answer:rejected": "rejected"}

Record = Mapping[str, object]


class Calendar(Protocol):
    """What the report needs of a working-day calendar (exchange.workdays.WorkCalendar has it)."""

    @property
    def sources(self) -> tuple[str, ...]: ...

    def is_working_day(self, day: dt.date) -> bool: ...

    def add_working_days(self, start: dt.date, count: int) -> dt.date: ...

    def working_days_between(self, start: dt.date, end: dt.date) -> int: ...


@dataclass(frozen=True)
class Period:
    """The days [start, end) a report covers."""

    start: dt.date
    end: dt.date

    def holds(self, day: dt.date) -> bool:
        return self.start <= day < self.end

    @property
    def last(self) -> dt.date:
        return self.end - dt.timedelta(days=1)


@dataclass(frozen=True)
class CheckpointRef:
    """The signed checkpoint a report was computed at: records at or beyond ``size`` are not counted."""

    size: int
    root: str  # hex
    note: str


@dataclass
class _Open:
    """A request or objection awaiting its answer."""

    owner: str
    opened: dt.date
    due: dt.date


@dataclass
class _Department:
    applied: int = 0
    on_time: int = 0
    late: int = 0
    answer_days: list[int] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    disputes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("raised", "overturned", "upheld"), 0))
    objections: dict[str, int] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)


_OBJECTION_KEYS = (
    "raised",
    "received",
    "answered_on_time",
    "answered_late",
    "corrected",
    "no_correction",
    "rejected",
    "escalated",
    "open_overdue",
)


class _Tally:
    """The state of one pass over the records."""

    def __init__(self, period: Period, calendar: Calendar, objection_days: int) -> None:
        self.period, self.calendar, self.objection_days = period, calendar, objection_days
        self.owners: dict[str, str] = {}  # resource code -> owning department
        self.retired: dict[str, dt.date] = {}
        self.requests: dict[str, _Open] = {}
        self.objections: dict[str, _Open] = {}
        self.exchanges: dict[str, tuple[str, str, str]] = {}  # exchange id -> (resource, consumer, outcome)
        self.departments: dict[str, _Department] = {}
        # The newest day the signed log speaks of: what is still open is judged on the period's last day,
        # or on this day if the period reaches past it (the log cannot say what will be overdue).
        self.newest: dt.date | None = None

    @property
    def judged_on(self) -> dt.date:
        return min(self.period.last, self.newest) if self.newest is not None else self.period.last

    def dept(self, code: str) -> _Department:
        if code not in self.departments:
            self.departments[code] = _Department(objections=dict.fromkeys(_OBJECTION_KEYS, 0))
        return self.departments[code]

    def owner_of(self, record: Record) -> str:
        resource = str(record.get("resource", ""))
        return self.owners.get(resource) or str(record.get("actor_department", ""))

    def take(self, record: Record) -> None:
        day = _day(record)
        if day is not None:
            self.newest = day if self.newest is None else max(self.newest, day)
        if day is None or day >= self.period.end:
            return
        kind, action = record.get("kind"), str(record.get("action", ""))
        if kind == "catalog":
            self.catalog(record, action, day)
        elif kind == "rights":
            self.rights(record, action, day)
        elif kind == "objection":
            self.objection(record, action, day)
        elif kind == "exchange" and self.period.holds(day) and record.get("exchange_id"):
            resource, consumer = str(record.get("resource", "")), str(record.get("actor_department", ""))
            self.exchanges[str(record["exchange_id"])] = (resource, consumer, str(record.get("outcome", "")))

    def catalog(self, record: Record, action: str, day: dt.date) -> None:
        code = str(record.get("subject", ""))
        if action.startswith("create:"):
            self.owners[code] = str(record.get("actor_department", ""))
            self.dept(self.owners[code])
            self.retired.pop(code, None)
        elif action == "retired":
            self.retired[code] = day

    def rights(self, record: Record, action: str, day: dt.date) -> None:
        subject, owner = str(record.get("subject", "")), self.owner_of(record)
        within = self.period.holds(day)
        if action == "apply:conditional":
            due = self.calendar.add_working_days(day, REQUEST_ANSWER_WORKING_DAYS)
            self.requests[subject] = _Open(owner, day, due)
            if within:
                self.dept(owner).applied += 1
        elif action in ("approve", "refuse"):
            self.answer_request(subject, day, within)
            if action == "refuse" and within:
                reasons = self.dept(owner).refusals
                reason = str(record.get("reason", "")).strip()
                reasons[reason] = reasons.get(reason, 0) + 1
        elif within and action == "dispute":
            self.dept(owner).disputes["raised"] += 1
        elif within and action.startswith("decide_dispute:"):
            key = "overturned" if action.endswith(":grant") else "upheld"
            self.dept(owner).disputes[key] += 1

    def answer_request(self, subject: str, day: dt.date, within: bool) -> None:
        waiting = self.requests.pop(subject, None)
        if waiting is None or not within:
            return
        d = self.dept(waiting.owner)
        if day <= waiting.due:
            d.on_time += 1
        else:
            d.late += 1
        d.answer_days.append(self.calendar.working_days_between(waiting.opened, day))

    def objection(self, record: Record, action: str, day: dt.date) -> None:
        subject, owner = str(record.get("subject", "")), self.owner_of(record)
        within = self.period.holds(day)
        if action == "raise":
            self.objections[subject] = _Open(owner, day, self.calendar.add_working_days(day, self.objection_days))
            if within:
                self.dept(str(record.get("actor_department", ""))).objections["raised"] += 1
                self.dept(owner).objections["received"] += 1
        elif action in ANSWERS:
            waiting = self.objections.pop(subject, None)
            if waiting is not None and within:
                counts = self.dept(waiting.owner).objections
                counts["answered_on_time" if day <= waiting.due else "answered_late"] += 1
                counts[ANSWERS[action]] += 1
        elif action == "escalate" and within:
            self.dept(owner).objections["escalated"] += 1

    def finish(self) -> None:
        """Counts what is still open past its due date when judged (see ``judged_on``), and the entries used."""
        last = self.judged_on
        for waiting in self.objections.values():
            if waiting.due < last:
                self.dept(waiting.owner).objections["open_overdue"] += 1
        for resource, _consumer, outcome in self.exchanges.values():
            if outcome in USED_OUTCOMES and resource in self.owners:
                self.dept(self.owners[resource]).used.add(resource)

    def open_requests_overdue(self, owner: str) -> int:
        last = self.judged_on
        return sum(1 for w in self.requests.values() if w.owner == owner and w.due < last)


def compute(
    entries: Iterable[tuple[int, Record | None]],
    period: Period,
    calendar: Calendar,
    *,
    objection_days: int,
    checkpoint: CheckpointRef,
    department: str = "",
) -> dict[str, object]:
    """The report as a plain mapping (JSON-ready, every list sorted): see the module's docstring.

    ``entries`` are (seq, record) in log order, the record None once pruned; those at or beyond the
    checkpoint's size are not read. ``department`` (optional) keeps one department's figures.
    """
    tally = _Tally(period, calendar, objection_days)
    for seq, record in entries:
        if seq >= checkpoint.size:
            break
        if record is not None:
            tally.take(record)
    tally.finish()
    codes = sorted(c for c in tally.departments if c and (not department or c == department))
    if department and department not in codes:
        codes = [department]
    return {
        "period": {"from": period.start.isoformat(), "to": period.end.isoformat()},
        "open_judged_on": tally.judged_on.isoformat(),
        "objection_answer_working_days": objection_days,
        "request_answer_working_days": REQUEST_ANSWER_WORKING_DAYS,
        "calendar": list(calendar.sources),
        "checkpoint": {"size": checkpoint.size, "root": checkpoint.root, "note": checkpoint.note},
        "department": department,
        "departments": [_department(tally, code) for code in codes],
        "exchanges": _exchanges(tally, department),
    }


def _department(tally: _Tally, code: str) -> dict[str, object]:
    d = tally.dept(code)
    owned = sorted(c for c, o in tally.owners.items() if o == code and not _retired_before(tally, c))
    median = statistics.median(d.answer_days) if d.answer_days else None
    return {
        "department": code,
        "requests": {
            "applied": d.applied,
            "answered_on_time": d.on_time,
            "answered_late": d.late,
            "open_overdue": tally.open_requests_overdue(code),
            "median_answer_working_days": None if median is None else round(float(median), 1),
        },
        "refusals": [{"reason": r, "count": n} for r, n in sorted(d.refusals.items())],
        "disputes": dict(d.disputes),
        "objections": dict(d.objections),
        "catalog": {
            "entries": len(owned),
            "used": sorted(c for c in owned if c in d.used),
            "never_used": [c for c in owned if c not in d.used],
        },
    }


def _retired_before(tally: _Tally, code: str) -> bool:
    retired = tally.retired.get(code)
    return retired is not None and retired < tally.period.start


def _exchanges(tally: _Tally, department: str) -> list[dict[str, object]]:
    counts: dict[tuple[str, str, str, str], int] = {}
    for resource, consumer, outcome in tally.exchanges.values():
        owner = tally.owners.get(resource, "")
        if department and department not in (owner, consumer):
            continue
        key = (resource, owner, consumer, outcome)
        counts[key] = counts.get(key, 0) + 1
    return [
        {"resource": r, "owner": o, "consumer": c, "outcome": out, "count": n}
        for (r, o, c, out), n in sorted(counts.items())
    ]


def _day(record: Record) -> dt.date | None:
    text = str(record.get("time") or record.get("logged") or "")[:10]
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def to_json(report: Mapping[str, object]) -> str:
    """The report's canonical JSON text (sorted keys, compact, UTF-8): equal reports give equal text."""
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def csv_rows(report: Mapping[str, object]) -> Iterator[list[str]]:
    """The report flattened to rows ``section, department, item, value`` (sorted as the report is)."""
    yield ["section", "department", "item", "value"]
    for name in ("from", "to"):
        yield ["period", "", name, str(_mapping(report["period"])[name])]
    yield ["period", "", "objection_answer_working_days", str(report["objection_answer_working_days"])]
    yield ["period", "", "open_judged_on", str(report["open_judged_on"])]
    checkpoint = _mapping(report["checkpoint"])
    yield ["checkpoint", "", "size", str(checkpoint["size"])]
    yield ["checkpoint", "", "root", str(checkpoint["root"])]
    for dept in _list(report["departments"]):
        code = str(dept["department"])
        for section in ("requests", "disputes", "objections"):
            for item, value in _mapping(dept[section]).items():
                yield [section, code, item, "" if value is None else str(value)]
        for refusal in _list(dept["refusals"]):
            yield ["refusals", code, str(refusal["reason"]), str(refusal["count"])]
        catalog = _mapping(dept["catalog"])
        yield ["catalog", code, "entries", str(catalog["entries"])]
        for state in ("used", "never_used"):
            for resource in _strs(catalog[state]):
                yield ["catalog", code, state, str(resource)]
    for row in _list(report["exchanges"]):
        item = f"{row['resource']} {row['consumer']} {row['outcome']}"
        yield ["exchanges", str(row["owner"]), item, str(row["count"])]


def to_csv(report: Mapping[str, object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(csv_rows(report))
    return out.getvalue()


def _mapping(value: object) -> Mapping[str, object]:
    assert isinstance(value, Mapping)
    return value


def _list(value: object) -> list[Mapping[str, object]]:
    assert isinstance(value, list)
    return value


def _strs(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(v) for v in value]


def entries_of_export(lines: Iterable[str]) -> Iterator[tuple[int, Record | None]]:
    """(seq, record) of an export's entry lines (see exchange.auditlog.export), for ``compute``; other lines are
    skipped."""
    for line in lines:
        if line.startswith(ENTRY + "\t"):
            seq, _leaf, record = parse_entry_line(line)
            yield seq, None if record is None else json.loads(record)
