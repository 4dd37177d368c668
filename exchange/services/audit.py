"""Reading the audit log: checkpoints and proofs for anyone, records by right, the whole log for auditors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

from audit import report as evaluation
from audit.note import Checkpoint, Verifier, open_note
from audit.records import subject_hash
from exchange import validation
from exchange.auditlog.export import export_lines
from exchange.auditlog.log import AuditLog
from exchange.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from exchange.models import Page, Principal, ResourceStatus
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.audit import Entry, EntryFilter
from exchange.store.catalog import ResourceFilter
from exchange.workdays import WorkCalendar
from policy import HUB_WIDE, Action, RightsPolicy


@dataclass(frozen=True)
class SignedHead:
    size: int
    root: bytes
    note: str
    # Cosignature lines peer hubs' witnesses gave this checkpoint (exchange.store.witness).
    cosignatures: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchAnswer:
    """A page of search hits, each provable against ``head`` (by its proof in ``proofs``) unless newer.

    Entries at or beyond ``head.size`` (or all, while the log has no checkpoint) have no proof yet: they
    are returned, and the client marks them as not yet provable.
    """

    page: Page[Entry]
    head: SignedHead | None
    proofs: dict[int, list[bytes]]
    subject_hash: str


@dataclass(frozen=True)
class Tally:
    """How many records share one day (UTC, of their place in the log) and the fields a chart groups by."""

    day: dt.date
    kind: str
    action: str
    outcome: str
    actor: str
    actor_department: str
    resource: str
    purpose: str
    count: int

    @property
    def refused(self) -> bool:
        """A refused exchange, or a refused call recorded as "denied:<method>"."""
        return self.outcome == "denied" or self.action.startswith("denied:")


# The most records one tally reads; a longer period is cut there (and says so).
TALLY_LIMIT = 50_000
# Records read from the store at a time while a report is computed.
REPORT_BATCH = 5000


@dataclass(frozen=True)
class ReportRules:
    """What a report is reckoned by: the hub's calendar and the settings it reads (exchange/config.py)."""

    calendar: WorkCalendar
    retention_days: int
    objection_days: int


class AuditReadService:
    def __init__(
        self,
        store: Store,
        log: AuditLog,
        policy: RightsPolicy,
        verifier: Verifier,
        subject_key: bytes,
        *,
        rules: ReportRules | None = None,
    ) -> None:
        self._rules = rules or ReportRules(WorkCalendar(), 0, 0)
        self._store = store
        self._log = log
        self._policy = policy
        self.verifier = verifier
        self._subject_key = subject_key

    def checkpoint(self, size: int, *, witnessed: bool = False) -> SignedHead:
        if size < 0:
            raise InvalidArgument.of([FieldViolation("size", "must be 0 (the newest) or a tree size")])
        if size == 0 and witnessed:
            size = self._store.witness.newest_cosigned()
            if size == 0:
                raise NotFound("witnessed checkpoint", "latest")
        if size == 0:
            latest = self._store.audit.latest_checkpoint()
            if latest is None:
                raise NotFound("checkpoint", "latest")
            size, note = latest
        else:
            found = self._store.audit.checkpoints(size, size)
            if not found:
                raise NotFound("checkpoint", str(size))
            note = found[0][1]
        root = Checkpoint.parse(open_note(note, self.verifier)).root
        return SignedHead(size, root, note, tuple(self._store.witness.cosignatures(size)))

    def inclusion(
        self, actor: Principal, seq: int, tree_size: int
    ) -> tuple[Entry, SignedHead | None, list[bytes], int]:
        """The proof for entry ``seq``; the record itself only to a caller who may read it (hashes to anyone)."""
        head = self.checkpoint(0) if tree_size == 0 else None
        size = head.size if head else tree_size
        if not 0 <= seq < size:
            raise InvalidArgument.of([FieldViolation("seq", f"entry {seq} is not in a tree of {size} entries")])
        self._log.sync()
        if size > self._log.tree.size:
            raise InvalidArgument.of([FieldViolation("tree_size", f"the log has {self._log.tree.size} entries")])
        entry = self._store.audit.entries(seq, seq + 1)[0]
        if not self._may_read(actor, entry):
            entry = replace(entry, record=None)
        if head is None:
            found = self._store.audit.checkpoints(size, size)
            cosigned = tuple(self._store.witness.cosignatures(size)) if found else ()
            head = SignedHead(size, self._log.tree.root(size), found[0][1], cosigned) if found else None
        return entry, head, self._log.inclusion_proof(seq, size), size

    def consistency(self, from_size: int, to_size: int) -> tuple[int, list[bytes]]:
        to_size = to_size or self.checkpoint(0).size
        self._log.sync()
        if not 0 < from_size <= to_size <= self._log.tree.size:
            raise InvalidArgument.of(
                [
                    FieldViolation(
                        "from_size",
                        f"need 0 < from_size <= to_size <= {self._log.tree.size}, got {from_size}, {to_size}",
                    )
                ]
            )
        return to_size, self._log.consistency_proof(from_size, to_size)

    def search(self, actor: Principal, size: int, token: str, f: EntryFilter, data_subject: str) -> SearchAnswer:
        """A page of the records ``actor`` may read that match ``f``, with their inclusion proofs."""
        self.require_reader(actor)
        validation.validate_free_text("data_subject", data_subject, limit=100)
        if data_subject:
            f = replace(f, subject_hash=subject_hash(self._subject_key, data_subject))
        f = self._restrict(actor, f)
        page = self._store.audit.search(page_request(size, token, {**f.__dict__}), f)
        head = self._newest_head()  # read after the page: every entry in it was integrated before
        provable = [e.seq for e in page.items if head is not None and e.seq < head.size]
        proofs = self._log.inclusion_proofs(provable, head.size) if head else {}
        return SearchAnswer(page, head, proofs, f.subject_hash or "")

    def tally(self, actor: Principal, f: EntryFilter, limit: int = TALLY_LIMIT) -> tuple[list[Tally], bool]:
        """Counts of the records ``actor`` may read that match ``f``, per day and grouping fields (for charts);
        and whether the count stopped at ``limit`` records. Pruned records (no detail left) are not counted."""
        f = self._restrict(actor, f)
        counts: dict[tuple[str, ...], int] = {}
        token, read = "", 0
        while read < limit:
            size = min(1000, limit - read)
            page = self._store.audit.search(page_request(size, token, {**f.__dict__}), f)
            read += len(page.items)
            for entry in page.items:
                if entry.record is not None:
                    key = _tally_key(json.loads(entry.record))
                    counts[key] = counts.get(key, 0) + 1
            token = page.next_page_token
            if not token:
                break
        tallies = [_tally(key, n) for key, n in sorted(counts.items())]
        return tallies, bool(token)

    def recent_checkpoints(self, below: int, count: int) -> list[tuple[int, str]]:
        """Up to ``count`` signed checkpoints of sizes below ``below`` (0: any), newest first, as (size, note)."""
        latest = self._store.audit.latest_checkpoint()
        if latest is None or count <= 0:
            return []
        top = latest[0] if below <= 0 else min(below - 1, latest[0])
        found: list[tuple[int, str]] = []
        window = 64
        while top >= 0 and len(found) < count:
            start = max(0, top - window + 1)
            found += reversed(self._store.audit.checkpoints(start, top))
            top, window = start - 1, window * 4
        return found[:count]

    def _newest_head(self) -> SignedHead | None:
        try:
            return self.checkpoint(0)
        except NotFound:
            return None

    def require_reader(self, actor: Principal) -> None:
        """Refuses, before its search is checked, a caller who may read no record at all (the handler asks first)."""
        if self._policy.allows(actor.ref, Action.READ_AUDIT, HUB_WIDE):
            return
        if not self._policy.allows(actor.ref, Action.READ_OWN_AUDIT, actor.department_code):
            raise PermissionDenied(f"{actor.ref} may not read the audit log", reason="AUDIT_READ_DENIED")

    def _restrict(self, actor: Principal, f: EntryFilter) -> EntryFilter:
        """Auditors see everything; an owner steward its resources' records; a consumer its department's."""
        if self._policy.allows(actor.ref, Action.READ_AUDIT, HUB_WIDE):
            return f
        self.require_reader(actor)
        if self._policy.allows(actor.ref, Action.DECIDE_REQUEST, actor.department_code):
            return replace(f, owner_resources=self._own_resources(actor.department_code))
        return replace(f, department=actor.department_code)

    def _may_read(self, actor: Principal, entry: Entry) -> bool:
        if entry.record is None:
            return True
        try:
            f = self._restrict(actor, EntryFilter())
        except PermissionDenied:
            return False
        data = json.loads(entry.record)
        if f.owner_resources is not None:
            return data.get("resource") in f.owner_resources
        return f.department is None or data.get("actor_department") == f.department

    def _own_resources(self, department: str) -> tuple[str, ...]:
        codes: list[str] = []
        token = ""
        statuses = tuple(ResourceStatus)
        while True:
            query = ResourceFilter(department_code=department, statuses=statuses, viewer_department=department)
            page = self._store.catalog.list(page_request(1000, token, {"d": department}), query)
            codes += [r.spec.code for r in page.items]
            token = page.next_page_token
            if not token:
                return tuple(codes)

    def export(self, actor: Principal, start: int) -> Iterator[str]:
        self._policy.require(actor, Action.READ_AUDIT, HUB_WIDE, "export the audit log")
        latest = self._store.audit.latest_checkpoint()
        size = latest[0] if latest else 0
        if not 0 <= start <= size:
            raise InvalidArgument.of(
                [FieldViolation("from_seq", f"must be between 0 and {size}, the newest checkpoint")]
            )
        self._log.sync()
        return export_lines(self._store.audit, self.verifier, start, self._log.prefix(start))

    def report(
        self, actor: Principal, start: str, end: str, department: str, today: dt.date | None = None
    ) -> tuple[dict[str, object], SignedHead]:
        """The evaluation report (audit.report) for [start, end), computed at the newest signed checkpoint."""
        self._policy.require(actor, Action.READ_REPORT, HUB_WIDE, "read the evaluation report")
        validation.validate_key("department_code", department, "department", optional=True)
        period = self.report_period(start, end, today or dt.datetime.now(dt.UTC).date())
        head = self.checkpoint(0)
        ref = evaluation.CheckpointRef(head.size, head.root.hex(), head.note)
        computed = evaluation.compute(
            self._records(head.size),
            period,
            self._rules.calendar,
            objection_days=self._rules.objection_days,
            checkpoint=ref,
            department=department,
        )
        return computed, head

    def report_period(self, start: str, end: str, today: dt.date) -> evaluation.Period:
        """The period asked for, refused when malformed, empty, reversed or older than the log keeps."""
        first, last = _date("from_date", start), _date("to_date", end)
        if last <= first:
            problem = "is the period's start" if last == first else "is before the period's start"
            raise InvalidArgument.of(
                [FieldViolation("to_date", f"{end} {problem} ({start}): the period [from, to) must hold a day")]
            )
        oldest = today - dt.timedelta(days=self._rules.retention_days)
        if first < oldest:
            raise InvalidArgument.of(
                [
                    FieldViolation(
                        "from_date",
                        f"{start} is past the log's retention of {self._rules.retention_days} days: the records "
                        f"before {oldest.isoformat()} may be pruned; start on or after it",
                    )
                ]
            )
        return evaluation.Period(first, last)

    def _records(self, size: int) -> Iterator[tuple[int, dict[str, object] | None]]:
        for first in range(0, size, REPORT_BATCH):
            for entry in self._store.audit.entries(first, min(size, first + REPORT_BATCH)):
                yield entry.seq, None if entry.record is None else json.loads(entry.record)


def _date(name: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else _bad_date(name, text)
    except ValueError:
        return _bad_date(name, text)


def _bad_date(name: str, text: str) -> dt.date:
    shown = repr(text[:20]) if text else "nothing"
    raise InvalidArgument.of([FieldViolation(name, f"must be a date YYYY-MM-DD, got {shown}")])


def _tally_key(record: dict[str, object]) -> tuple[str, ...]:
    day = str(record.get("logged") or record.get("time") or "")[:10]
    names = ("kind", "action", "outcome", "actor", "actor_department", "resource", "purpose")
    return (day, *(str(record.get(name, "")) for name in names))


def _tally(key: tuple[str, ...], count: int) -> Tally:
    day, kind, action, outcome, actor, department, resource, purpose = key
    return Tally(dt.date.fromisoformat(day), kind, action, outcome, actor, department, resource, purpose, count)


def parse_time(seconds: int, nanos: int, field: str) -> dt.datetime | None:
    if seconds == 0 and nanos == 0:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds + nanos / 1e9, dt.UTC)
    except (ValueError, OSError, OverflowError):
        raise InvalidArgument.of([FieldViolation(field, "is not a time this hub can search by")]) from None
