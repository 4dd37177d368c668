"""Record: every exchange's audit records, built here and committed before data is handed back.

A query has one record (its outcome, with the digest of what is returned); a stream or a document
an opening record (committed before the first batch or chunk) and a closing one (after the last, or
written in the background if the caller went away). If the log cannot confirm, the call fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from audit import provenance
from audit.note import Signer
from audit.records import AuditRecord, SubjectHasher, canonical_text
from exchange import validation
from exchange.auditlog.batch import GroupCommitter
from exchange.backend import being_cancelled
from exchange.errors import (
    ExchangeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from exchange.models import Principal
from exchange.services.auditing import hub_instance, now_text
from exchange.services.exchange.admit import MAX_FIELDS, MAX_FILTERS
from exchange.services.exchange.answers import Ask, Plan
from exchange.services.exchange.fetch import reason_of, unexpected
from exchange.services.exchange.observer import Observer
from exchange.services.exchange.steps import Steps

log = logging.getLogger("exchange.services.exchange")
# The metric label of a resource code the catalog does not hold.
UNKNOWN_RESOURCE = "unknown"


class Recorder:
    """Builds, commits and observes the exchange's records; keeps track of those written for callers gone."""

    def __init__(
        self,
        committer: GroupCommitter,
        signer: Signer,
        subject_key: bytes,
        observer: Observer,
        *,
        known: Callable[[str], bool | None],
        lookup: Callable[[str], bool],
        steps: Steps,
    ) -> None:
        self._steps = steps
        self._committer = committer
        self._signer = signer
        self._subject_hash = SubjectHasher(subject_key)
        self._observer = observer
        self._known = known
        self._lookup = lookup
        self._hub = hub_instance()
        # An exchange's record before it says anything of the call: each opening record is this one with the
        # call's fields (AuditRecord.but), cheaper than building all its fields anew.
        self._blank = AuditRecord(
            kind="exchange", action="", time="", actor="", actor_department="", outcome="denied", hub=self._hub
        )
        # Closing records being committed for callers that are gone: a shutdown waits for them.
        self.closing: set[asyncio.Future[None]] = set()

    def opening(self, actor: Principal, ask: Ask, exchange_id: str, action: str) -> AuditRecord:
        """The call's record as it begins: who, what, why, for which data subjects (hashed); refused until decided."""
        request = {"resource": ask.resource_code, "purpose": ask.purpose, "filters": dict(ask.filters)}
        request["fields"] = list(ask.fields)
        canonical = canonical_text(request)  # the bytes json.dumps(sort_keys, compact, ensure_ascii=False) gives
        subjects = {self._subject_hash(v) for v in list(ask.filters.values())[:MAX_FILTERS]}
        return self._blank.but(
            action=action,
            time=now_text(),
            actor=str(actor.ref),
            actor_department=actor.department_code,
            subject=ask.resource_code[:64],
            resource=ask.resource_code[:64],
            purpose=ask.purpose[:200],
            exchange_id=exchange_id,
            fields=[f[:64] for f in ask.fields[:MAX_FIELDS]],
            masks=[],  # a list of its own, as every record's
            request_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
            data_subjects=sorted(subjects),
            key_holder=actor.key_holder,
        )

    async def append(self, record: AuditRecord) -> None:
        """Commits ``record`` to the log (durably, in a group commit), then counts it and logs the outcome."""
        started = time.monotonic()
        with self._steps("audit.commit", outcome=record.outcome):
            await self._committer.append_async(record)
        self._observer.audit_waited(time.monotonic() - started)
        code = record.resource  # a held entry answers at once, without a coroutine
        self._observer.recorded(record, code if self._known(code) else await self._resource_label(code))
        # The final record of an exchange: one log line each (built only if the line is written).
        if record.outcome != "allowed" and log.isEnabledFor(logging.INFO):
            log.info("exchange %s %s", record.exchange_id, record.outcome, extra={"event": record.as_dict()})

    def append_in_background(self, record: AuditRecord) -> None:
        """For the closing record of a call that was cancelled: the caller is gone, the record is not."""
        self.track(asyncio.get_running_loop().create_task(self.append(record)))

    def track(self, task: asyncio.Future[None]) -> None:
        """Keeps ``task`` (finishing for a caller that is gone) until it is done; a shutdown waits for it."""
        self.closing.add(task)
        task.add_done_callback(self._closing_done)

    def _closing_done(self, task: asyncio.Future[None]) -> None:
        self.closing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a record that could not be committed was logged by the committer

    async def _resource_label(self, code: str) -> str:
        """``code`` if the catalog holds it, else ``unknown``: what a caller sent never becomes a metric label.

        A held entry answers at once; only a well-formed code not held yet is looked up (in a worker thread).
        """
        if self._known(code):
            return code
        if not validation.RESOURCE_CODE.match(code):
            return UNKNOWN_RESOURCE
        return code if await asyncio.to_thread(self._lookup, code) else UNKNOWN_RESOURCE

    def statement(self, plan: Plan, kind: str, count: int, sha256: str) -> str:
        """The signed provenance statement of what was handed back (asked for by the consumer)."""
        statement = provenance.Statement(
            exchange=plan.record.exchange_id,
            time=now_text(),
            resource=plan.resource.spec.code,
            owner=plan.resource.spec.department_code,
            consumer=plan.record.actor,
            consumer_department=plan.record.actor_department,
            kind=kind,
            count=count,
            sha256=sha256,
        )
        return provenance.sign(self._signer, statement)


def since(started: float) -> int:
    return int((time.monotonic() - started) * 1_000_000)


def refused(record: AuditRecord, started: float, error: ExchangeError) -> AuditRecord:
    """The record of a call refused before any fetch (denied), or that failed while being decided."""
    refusal = isinstance(error, PermissionDenied | ResourceExhausted | InvalidArgument | NotFound)
    wrong_method = isinstance(error, FailedPrecondition) and error.kind == "SHARE_METHOD"
    outcome = "denied" if refusal or wrong_method else "failed"
    reason = f"{reason_of(error)}: {error.message}"[:500]
    return record.but(outcome=outcome, reason=reason, latency_us=since(started))


def failed(record: AuditRecord, started: float, error: ExchangeError) -> AuditRecord:
    return record.but(outcome="failed", reason=f"{reason_of(error)}: {error.message}"[:500], latency_us=since(started))


def answered(plan: Plan, rows: int, sha256: str) -> AuditRecord:
    """The record of a query answered: how many rows, and the digest of what is returned."""
    return plan.record.but(rows=rows, response_sha256=sha256, latency_us=since(plan.started), outcome="ok")


def closing(plan: Plan, outcome: str, rows: int, size: int, sha256: str) -> AuditRecord:
    """The closing record of a stream or document."""
    return plan.record.but(
        action=f"{plan.record.action}_end",
        time=now_text(),
        outcome=outcome,
        rows=rows,
        bytes=size,
        response_sha256=sha256,
        latency_us=since(plan.started),
    )


class Ending:
    """How a stream or document call ended: "ok", "cancelled", or its error (a backend's bug made one)."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.outcome: ExchangeError | str = "ok"

    def __enter__(self) -> Ending:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        exchange_id = self._plan.record.exchange_id
        if isinstance(error, ExchangeError):
            self.outcome = error.recorded_as(exchange_id)  # its closing record says how the call ended
        elif isinstance(error, GeneratorExit) or (isinstance(error, asyncio.CancelledError) and being_cancelled()):
            self.outcome = "cancelled"
        elif isinstance(error, Exception | asyncio.CancelledError):  # a CancelledError here came from a backend
            self.outcome = unexpected(self._plan, error).recorded_as(exchange_id)
            raise self.outcome from None

    def closing_record(self, counted_rows: int, counted_size: int) -> AuditRecord | None:
        """The closing record of a call that did not end well (None if it did: that one is written in line)."""
        if self.outcome == "ok":
            return None
        outcome = self.outcome if isinstance(self.outcome, str) else "failed"
        record = closing(self._plan, outcome, counted_rows, counted_size, "")
        return failed(record, self._plan.started, self.outcome) if isinstance(self.outcome, ExchangeError) else record
