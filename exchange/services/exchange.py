"""The brokered exchange: decide, fetch from the owner, keep what was granted, mask, audit, answer.

Every call that names a caller becomes one audited exchange with an id, whether it is allowed,
refused or fails. The audit record is committed before any data is handed back: a query's once
its answer is ready (with the digest of what will be returned), a stream's or a document's before
the first batch or chunk (and a closing record after the last). If the audit log cannot confirm,
the call fails with UNAVAILABLE and nothing is released.

The blocking parts (store, backends) run in worker threads; the service's methods are coroutines
so that waiting for the audit commit holds no thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol, TypeVar

from audit import provenance
from audit.batch import GroupCommitter
from audit.note import Signer
from audit.records import AuditRecord, subject_hash
from exchange import validation, values
from exchange.backend import Backend, Document, FetchRequest, Row
from exchange.errors import (
    ExchangeError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from exchange.models import (
    Binding,
    MaskKind,
    Principal,
    PrincipalKind,
    Resource,
    ResourceStatus,
    ShareMethod,
    ShareType,
)
from exchange.paging import PageRequest, page_request
from exchange.services.auditing import hub_instance, now_text
from exchange.services.cache import Cache
from exchange.services.verification import Lookup, MaskedFilterGuard, Ticket
from exchange.store import Store
from exchange.v1 import data_pb2
from exchange.values import BadValue, RowsDigest, parse_text
from policy.decision import Decision, DecisionPoint, DenyReason, Question
from policy.masks import apply, mask

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_BATCH_SIZE = 500
# How often a stream or document asks again whether the caller's certificate still holds, in seconds.
RECHECK_SECONDS = 1.0
MAX_BATCH_SIZE = 5000
MAX_FILTERS = 16
MAX_FILTER_TEXT = 256
MAX_FIELDS = 200
DOCUMENT_KINDS = (ShareMethod.DOCUMENT,)
RECORD_KINDS = (ShareMethod.QUERY, ShareMethod.STREAM)
# The metric label of a resource code the catalog does not hold.
UNKNOWN_RESOURCE = "unknown"
_EXHAUSTED = {DenyReason.QUOTA_EXHAUSTED, DenyReason.RATE_LIMITED}


@dataclass(frozen=True)
class Ask:
    """A consumer's question, as it came (filters still text)."""

    resource_code: str
    purpose: str
    filters: Mapping[str, str]
    fields: tuple[str, ...] = ()
    provenance: bool = False


@dataclass(frozen=True)
class Disclosure:
    """What left the hub: the fields, their masks, and the grant that allowed it."""

    fields: tuple[str, ...]
    masks: tuple[tuple[str, MaskKind], ...]
    grant_id: str


@dataclass(frozen=True)
class QueryResult:
    exchange_id: str
    rows: list[Row]
    next_page_token: str
    disclosure: Disclosure
    provenance: str = ""


@dataclass(frozen=True)
class Batch:
    """One part of a stream: rows (or records already in wire form), or (last) the total and the provenance."""

    exchange_id: str
    rows: list[Row]
    disclosure: Disclosure | None = None
    last: bool = False
    total: int = 0
    provenance: str = ""
    records: list[data_pb2.Record] | None = None


@dataclass(frozen=True)
class Chunk:
    """One part of a document: its description first, its digest last."""

    exchange_id: str
    data: bytes = b""
    document: Document | None = None
    last: bool = False
    sha256: bytes = b""
    total: int = 0
    provenance: str = ""


@dataclass(frozen=True)
class _Call:
    """The shape of one call: its id, what it does, which share methods it serves, its limits."""

    exchange_id: str
    action: str
    methods: tuple[ShareMethod, ...]
    deadline: float | None
    page: tuple[int, str] | None = None
    batch: int = 0


@dataclass(frozen=True)
class _Settled:
    """What a worker-thread step came to: the record to commit, and the answer or the error."""

    record: AuditRecord
    error: ExchangeError | None = None
    result: QueryResult | None = None
    # Decided and allowed, to be fetched on the event loop.
    plan: _Plan | None = None


Identify = Callable[[], Principal]


@dataclass
class _Plan:
    """An allowed exchange, ready to fetch."""

    resource: Resource
    backend: Backend
    request: FetchRequest
    decision: Decision
    record: AuditRecord
    started: float = field(default_factory=time.monotonic)
    # A lookup filtered on a masked item: its reserved miss, given back if it finds a record.
    ticket: Ticket | None = None


class Observer(Protocol):
    """What the service tells the hub's metrics."""

    def recorded(self, record: AuditRecord, resource: str) -> None:
        """A committed record; ``resource`` is its resource code if the catalog holds it, else ``unknown``."""

    def decided(self, seconds: float) -> None: ...

    def provider_answered(self, provider: str, seconds: float, error: str) -> None: ...

    def audit_waited(self, seconds: float) -> None: ...

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None: ...


class _Unobserved:
    def recorded(self, record: AuditRecord, resource: str) -> None:
        return None

    def decided(self, seconds: float) -> None:
        return None

    def provider_answered(self, provider: str, seconds: float, error: str) -> None:
        return None

    def audit_waited(self, seconds: float) -> None:
        return None

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None:
        return None


class BackendPool:
    """One open backend per binding version, shared by all calls; a replaced version is closed.

    It is also a bulkhead: one department's backends may hold at most ``threads_per_department``
    worker threads at once. Calls beyond that wait for a slot on the event loop, holding no thread,
    for at most the backend's own timeout, then fail (UNAVAILABLE, naming the department). A backend
    that hangs thus takes only its share of the pool, never the threads the other departments need.
    Backends answered on the event loop hold no thread and take no slot.
    """

    def __init__(self, opener: Callable[[str, Binding], Backend], threads_per_department: int = 16) -> None:
        self._opener = opener
        self._open: dict[str, tuple[int, Backend]] = {}
        self._lock = threading.Lock()
        self._limit = max(1, threads_per_department)
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def in_thread(self, resource: Resource, wait: float, work: Callable[[], T]) -> T:
        """Runs blocking backend ``work`` in a worker thread, on one of the owning department's slots."""
        slots = self._slots.setdefault(resource.spec.department_code, asyncio.Semaphore(self._limit))
        try:
            async with asyncio.timeout(wait):
                await slots.acquire()
        except TimeoutError:
            raise Unavailable(
                f"the backend {provider_name(resource)} is not keeping up: {self._limit} calls have held it "
                f"for over {wait:g} s; try again shortly"
            ) from None
        # The slot is the thread's: it is given back when the thread is done, not when a caller that left
        # stops waiting for it (the thread may still be blocked in the backend).
        running = asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, work)

        def done(finished: asyncio.Future[T]) -> None:
            slots.release()
            if not finished.cancelled():
                finished.exception()  # looked at: a caller that left does not want it logged as unretrieved

        running.add_done_callback(done)
        return await asyncio.shield(running)

    def get(self, resource: Resource, binding: Binding) -> Backend:
        with self._lock:
            held = self._open.get(binding.resource_code)
            if held is not None and held[0] == binding.version:
                return held[1]
            backend = self._opener(provider_name(resource), binding)
            self._open[binding.resource_code] = (binding.version, backend)
        if held is not None:
            held[1].close()
        return backend

    def close(self) -> None:
        with self._lock:
            held, self._open = list(self._open.values()), {}
        for _, backend in held:
            backend.close()


def provider_name(resource: Resource) -> str:
    """How errors name a provider: the owning department, never its backend's internals."""
    return f"of department {resource.spec.department_code} ({resource.spec.code})"


class ExchangeService:
    def __init__(
        self,
        store: Store,
        decisions: DecisionPoint,
        committer: GroupCommitter,
        backends: BackendPool,
        *,
        signer: Signer,
        subject_key: bytes,
        default_timeout: float,
        entries: Cache[str, tuple[Resource, Binding | None]] | None = None,
        observer: Observer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        masked_misses_per_day: int = 5,
        masked_pattern_misses: int = 3,
    ) -> None:
        self._observer: Observer = observer or _Unobserved()
        self._guard = MaskedFilterGuard(
            store.counters, subject_key, masked_misses_per_day, masked_pattern_misses, self._observer
        )
        # Catalog entries with their bindings, by code; the hub drops them on any catalog change.
        self._entries: Cache[str, tuple[Resource, Binding | None]] = entries or Cache()
        self._store = store
        self._decisions = decisions
        self._committer = committer
        self._backends = backends
        self._signer = signer
        self._subject_key = subject_key
        self._default_timeout = default_timeout
        self._clock = clock
        self._hub = hub_instance()
        # Streams and documents whose closing record is not yet on its way, and closing records being
        # committed for callers that are gone: a shutdown waits for both (see ``finish``).
        self._open: set[asyncio.Task[object]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def finish(self, timeout: float) -> None:
        """At shutdown, once the server has stopped: ends the streams and documents still open (as cancelled)
        and waits, at most ``timeout`` seconds, until every closing record is committed, so that no stream is
        left in the log with its opening record only. The audit committer must still be running."""
        until = time.monotonic() + timeout
        for call in list(self._open):
            call.cancel()
        while (pending := {*self._open, *self._closing}) and (left := until - time.monotonic()) > 0:
            await asyncio.wait(pending, timeout=left)
        if pending:
            log.warning("%d streams or closing audit records did not end before shutdown", len(pending))

    # Queries

    async def query(
        self, identify: Identify, ask: Ask, page_size: int, page_token: str, deadline: float | None
    ) -> QueryResult:
        """One page: decided in one worker-thread step, then fetched (on this loop when the backend can, else on
        one of its department's thread slots); its record is committed before it is returned."""
        call = _Call(new_exchange_id(), "query", RECORD_KINDS, deadline, page=(page_size, page_token))
        # A plain executor future: the call's one worker-thread step, without a task around it.
        work = asyncio.get_running_loop().run_in_executor(None, self._answer, identify, ask, call)
        settled = await _unless_abandoned(work, self._abandoned)
        plan = settled.plan
        if plan is not None:
            answering = asyncio.ensure_future(self._fetch_answer(plan, ask, call))
            settled = await _unless_abandoned(answering, self._abandoned)
            if settled.result is not None and settled.result.rows:
                await self._verified(plan)
        await self._append(settled.record)
        if settled.error is not None:
            raise settled.error.recorded_as(call.exchange_id)
        assert settled.result is not None
        return settled.result

    async def _fetch_answer(self, plan: _Plan, ask: Ask, call: _Call) -> _Settled:
        """The allowed call answered: on this loop when the backend can (no worker thread while it does),
        else in a worker thread on one of the department's slots."""
        if hasattr(plan.backend, "fetch_async"):
            return await self._answer_async(plan, ask, call)
        try:
            return await self._backends.in_thread(
                plan.resource, plan.request.timeout_seconds, partial(self._answer_blocking, plan, ask, call)
            )
        except ExchangeError as e:
            self._observer.provider_answered(plan.resource.spec.department_code, 0.0, _reason_of(e))
            return _Settled(_failed(plan.record, plan.started, e), e)

    def _answer_blocking(self, plan: _Plan, ask: Ask, call: _Call) -> _Settled:
        try:
            return self._settle(plan, ask, call, self._fetch(plan))
        except ExchangeError as e:
            return _Settled(_failed(plan.record, plan.started, e), e)

    async def _answer_async(self, plan: _Plan, ask: Ask, call: _Call) -> _Settled:
        fetch_async = plan.backend.fetch_async  # type: ignore[attr-defined]
        asked_at, error = time.monotonic(), ""
        try:
            rows = await fetch_async(plan.request)
        except ExchangeError as e:
            error = _reason_of(e)
            return _Settled(_failed(plan.record, plan.started, e), e)
        except Exception as e:  # a backend's own bug: the call fails, audited, and says nothing of it
            error = "unexpected"
            failure = _unexpected(plan, e)
            return _Settled(_failed(plan.record, plan.started, failure), failure)
        finally:
            self._observer.provider_answered(plan.resource.spec.department_code, time.monotonic() - asked_at, error)
        try:
            return self._settle(plan, ask, call, rows)
        except ExchangeError as e:
            return _Settled(_failed(plan.record, plan.started, e), e)

    def _answer(self, identify: Identify, ask: Ask, call: _Call) -> _Settled:
        actor = identify()  # an unknown caller raises here: there is no one to record
        started = time.monotonic()
        record = self._record(actor, ask, call.exchange_id, call.action)
        try:
            plan = self._decide(actor, ask, record, call, started)
        except ExchangeError as e:
            return _Settled(_refused(record, started, e), e)
        return _Settled(plan.record, plan=plan)  # fetched next: on the loop, or on one of the department's slots

    def _settle(self, plan: _Plan, ask: Ask, call: _Call, fetched: list[Row]) -> _Settled:
        """The answer from the backend's rows: the page, masked and digested, with its record."""
        started = plan.started
        rows, next_token, digest = self._page_of(plan, ask, call.page[1] if call.page else "", fetched)
        note = self._statement(plan, "records", len(rows), digest) if ask.provenance else ""
        done = replace(plan.record, rows=len(rows), response_sha256=digest, latency_us=_since(started), outcome="ok")
        return _Settled(done, result=QueryResult(call.exchange_id, rows, next_token, _disclosure(plan), note))

    def _fetch(self, plan: _Plan) -> list[Row]:
        """The backend's answer, timed and, when it fails, counted by kind."""
        asked_at, error = time.monotonic(), ""
        try:
            return plan.backend.fetch(plan.request)
        except ExchangeError as e:
            error = _reason_of(e)
            raise
        except Exception as e:  # a backend's own bug: the call fails, audited, and says nothing of it
            error = "unexpected"
            raise _unexpected(plan, e) from None
        finally:
            self._observer.provider_answered(plan.resource.spec.department_code, time.monotonic() - asked_at, error)

    def _abandoned_plan(self, work: asyncio.Future[_Plan | _Settled]) -> None:
        """Records a stream or document call whose consumer left while it was decided."""
        if work.cancelled() or work.exception() is not None:
            return
        done = work.result()
        record = done.record if isinstance(done, _Settled) else replace(done.record, outcome="cancelled")
        self._append_in_background(record)

    def _abandoned_document(self, plan: _Plan, work: asyncio.Future[Document]) -> None:
        """Closes a document opened for a consumer that left meanwhile, and records what the call came to."""
        if work.cancelled():
            return
        error = work.exception()
        if error is None:
            work.result().close()
        failure = error if isinstance(error, ExchangeError) or error is None else _unexpected(plan, Exception(error))
        outcome = replace(plan.record, outcome="cancelled", latency_us=_since(plan.started))
        self._append_in_background(outcome if failure is None else _failed(plan.record, plan.started, failure))

    def _abandoned(self, work: asyncio.Future[_Settled]) -> None:
        """Records a query whose consumer left before the answer: what it came to, marked cancelled if answered."""
        if work.cancelled() or work.exception() is not None:
            return
        settled = work.result()
        self._append_in_background(settled.record if settled.error else replace(settled.record, outcome="cancelled"))

    def _page_of(self, plan: _Plan, ask: Ask, page_token: str, rows: list[Row]) -> tuple[list[Row], str, str]:
        request = plan.request
        if len(rows) > request.limit:
            raise FailedPrecondition(
                f"the provider {provider_name(plan.resource)} returned more rows than asked for",
                kind="PROVIDER_CONTRACT",
            )
        size = request.limit - 1
        more = len(rows) > size
        rows = [apply(r, ask.fields, plan.decision.masks) for r in rows[:size]]
        digest = RowsDigest()
        digest.update(rows)
        next_token = _page(ask, size, page_token).token_after(str(request.offset + size)) if more else ""
        return rows, next_token, digest.hexdigest()

    async def stream(
        self, identify: Identify, ask: Ask, batch_size: int, deadline: float | None
    ) -> AsyncGenerator[Batch, None]:
        """Batches as the consumer takes them; the provider is read one batch ahead at most."""
        exchange_id = new_exchange_id()
        plan = await self._plan(identify, ask, _Call(exchange_id, "stream", RECORD_KINDS, deadline, batch=batch_size))
        size = batch_size or DEFAULT_BATCH_SIZE
        wire = getattr(plan.backend, "stream_records", None)
        wire_async = getattr(plan.backend, "stream_records_async", None)
        # A backend whose records are already in wire form (a gRPC provider) has them passed on as they
        # are, checked and masked in place, and digested only for a provenance statement; the others'
        # rows are converted once, by the server.
        digest = RowsDigest() if ask.provenance or (wire is None and wire_async is None) else None
        counted = _Count()
        recheck = _Recheck(identify, partial(self._still_granted, plan, ask))
        next_part: Callable[[], Awaitable[Part | None]]
        close: Callable[[], Awaitable[object]]
        if wire_async is not None:
            # Awaited on the event loop: a provider that hangs holds no worker thread meanwhile.
            received: AsyncGenerator[list[data_pb2.Record], None] = wire_async(plan.request, size)

            async def next_part() -> Part | None:
                batch = await anext(received, None)
                if batch is None:
                    return None
                masking = partial(_masked_records, batch, plan, digest, counted)
                return await asyncio.to_thread(_still_held, recheck, masking)

            close = received.aclose
        else:
            batches: Iterator[object]
            if wire is not None:
                batches = records = wire(plan.request, size)
                step = partial(_next_records, records, plan, digest, counted)
            else:
                batches = rows = plan.backend.stream(plan.request, size)
                step = partial(_next_rows, rows, plan, digest, counted)
            next_part = partial(
                self._backends.in_thread,
                plan.resource,
                plan.request.timeout_seconds,
                partial(_still_held, recheck, step),
            )
            close = partial(_close_quietly, getattr(batches, "close", None))
        next_part = self._verifying(plan, next_part, counted)
        first = True
        ending = _Ending(plan)
        call = _current_task()
        self._open.add(call)
        try:
            with ending:
                await self._append(plan.record)
                while (part := await next_part()) is not None:
                    yield Batch(exchange_id, part[0], _disclosure(plan) if first else None, records=part[1])
                    first = False
                hexdigest = digest.hexdigest() if digest is not None else ""
                note = self._statement(plan, "records", counted.rows, hexdigest) if ask.provenance else ""
                await self._append(_closing(plan, "ok", counted.rows, counted.size, hexdigest))
                yield Batch(exchange_id, [], _disclosure(plan) if first else None, True, counted.rows, note)
        finally:
            self._close_unless_ok(plan, ending.outcome, counted)
            self._open.discard(call)
            await close()

    # Documents

    async def document(self, identify: Identify, ask: Ask, deadline: float | None) -> AsyncGenerator[Chunk, None]:
        exchange_id = new_exchange_id()
        plan = await self._plan(identify, ask, _Call(exchange_id, "document", DOCUMENT_KINDS, deadline))
        wait = plan.request.timeout_seconds
        open_document = partial(plan.backend.document, plan.request)
        opening = asyncio.ensure_future(self._backends.in_thread(plan.resource, wait, open_document))
        try:
            document = await _unless_abandoned(opening, partial(self._abandoned_document, plan))
        except ExchangeError as e:
            await self._append(_failed(plan.record, plan.started, e))
            raise e.recorded_as(exchange_id) from None
        except Exception as e:
            failure = _unexpected(plan, e)
            await self._append(_failed(plan.record, plan.started, failure))
            raise failure.recorded_as(exchange_id) from None
        counted = _Count()
        digest = hashlib.sha256()
        ending = _Ending(plan)
        call = _current_task()
        self._open.add(call)
        try:
            with ending:
                # The file name stays out of the record: it may carry a data subject's identifier.
                await self._append(plan.record)
                yield Chunk(exchange_id, document=document)
                recheck = _Recheck(identify, partial(self._still_granted, plan, ask))
                chunk = partial(_still_held, recheck, partial(next, document.chunks, None))
                read = partial(self._backends.in_thread, plan.resource, wait, chunk)
                while (data := await read()) is not None:
                    digest.update(data)
                    counted.size += len(data)
                    yield Chunk(exchange_id, data=data)
                hexdigest = digest.hexdigest()
                note = self._statement(plan, "document", counted.size, hexdigest) if ask.provenance else ""
                await self._append(_closing(plan, "ok", 0, counted.size, hexdigest))
                yield Chunk(exchange_id, last=True, sha256=digest.digest(), total=counted.size, provenance=note)
        finally:
            self._close_unless_ok(plan, ending.outcome, counted)
            self._open.discard(call)
            await _close_quietly(document.close)

    # Deciding

    async def _verified(self, plan: _Plan) -> None:
        """A lookup filtered on a masked item found a record: its reserved miss is given back.

        If the store cannot take that, the miss stays counted (the bound errs on the safe side).
        """
        if plan.ticket is None:
            return
        try:
            await asyncio.to_thread(self._guard.found, plan.ticket)
        except ExchangeError as e:
            log.warning("a verified lookup's miss could not be given back: %s", e.message)

    def _verifying(
        self, plan: _Plan, next_part: Callable[[], Awaitable[Part | None]], counted: _Count
    ) -> Callable[[], Awaitable[Part | None]]:
        """``next_part``, giving back a verification's reserved miss once the stream has a record to send."""
        if plan.ticket is None:
            return next_part
        pending = [True]

        async def part() -> Part | None:
            got = await next_part()
            if pending[0] and counted.rows:
                pending[0] = False
                await self._verified(plan)
            return got

        return part

    async def _plan(self, identify: Identify, ask: Ask, call: _Call) -> _Plan:
        """The allowed exchange, or the refusal, audited, raised."""
        preparing = asyncio.ensure_future(asyncio.to_thread(self._prepare, identify, ask, call))
        prepared = await _unless_abandoned(preparing, self._abandoned_plan)
        if isinstance(prepared, _Plan):
            return prepared
        await self._append(prepared.record)
        assert prepared.error is not None
        raise prepared.error.recorded_as(call.exchange_id)

    def _prepare(self, identify: Identify, ask: Ask, call: _Call) -> _Plan | _Settled:
        actor = identify()  # an unknown caller raises here: there is no one to record
        started = time.monotonic()
        record = self._record(actor, ask, call.exchange_id, call.action)
        try:
            return self._decide(actor, ask, record, call, started)
        except ExchangeError as e:
            return _Settled(_refused(record, started, e), e)

    def _still_granted(self, plan: _Plan, ask: Ask, actor: Principal) -> None:
        """Refuses, as the decision would now, a stream or document whose grant or resource no longer allows it."""
        found = self._entries.get(ask.resource_code, self._store.catalog.with_binding)
        status = found[0].status if found is not None else plan.resource.status
        question = Question(actor.ref.code, actor.department_code, ask.resource_code, ask.purpose, plan.decision.fields)
        decision = self._decisions.decide(question, status, self._clock().date(), consume=False)
        # Quota and rate govern new calls; this one was counted when it began.
        if not decision.allowed and decision.reason not in _COUNTING:
            raise _denial(decision)

    def _decide(self, actor: Principal, ask: Ask, record: AuditRecord, call: _Call, started: float) -> _Plan:
        self._refuse_not_shared(actor, ask)
        _validate(actor, ask, call)
        found = self._entries.get(ask.resource_code, self._store.catalog.with_binding)
        assert found is not None  # with_binding raises NotFound rather than answer None
        resource, binding = found
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            raise NotFound("resource", ask.resource_code)
        filters = _typed_filters(resource, ask)
        if resource.spec.share_method not in call.methods:
            verb = "FetchDocument" if resource.spec.share_method is ShareMethod.DOCUMENT else "Query or StreamQuery"
            raise FailedPrecondition(
                f"resource {ask.resource_code} is shared by {resource.spec.share_method.value}: use {verb}",
                ask.resource_code,
                kind="SHARE_METHOD",
            )
        # Filtering on an item needs a grant of it too; a document is fetched whole, so needs every item.
        wanted = ask.fields or tuple(i.name for i in resource.spec.data_items)
        asked = tuple(dict.fromkeys((*wanted, *filters)))
        question = Question(
            actor.ref.code, actor.department_code, ask.resource_code, ask.purpose, asked, tuple(filters)
        )
        asked_at = time.monotonic()
        today = self._clock().date()
        decision = self._decisions.decide(question, resource.status, today)
        self._observer.decided(time.monotonic() - asked_at)
        if not decision.allowed:
            if decision.reason is DenyReason.MASKED_FILTER_NOT_GRANTED:
                self._count_not_granted(actor, resource, decision, today)
            raise _denial(decision)
        if call.methods is DOCUMENT_KINDS and any(k is not MaskKind.NONE for _, k in decision.masks):
            raise FailedPrecondition(
                f"the grant masks items of {ask.resource_code}, and a document cannot be masked: "
                "ask the owner for a grant without masks, or for the data as records",
                ask.resource_code,
                kind="MASKED_DOCUMENT",
            )
        if binding is None:
            raise FailedPrecondition(
                f"resource {ask.resource_code} is not bound to a backend yet: its owner must bind it",
                ask.resource_code,
                kind="NOT_BOUND",
            )
        backend = self._backends.get(resource, binding)
        request = self._request(resource, binding, filters, ask, call)
        ticket = self._verification(actor, resource, decision, filters, today)
        masks = tuple(m for m in decision.masks if m[0] in ask.fields)
        granted = replace(
            record,
            outcome="allowed",
            grant=decision.grant_id,
            masks=[f"{f}={k.value}" for f, k in masks],
        )
        return _Plan(resource, backend, request, replace(decision, masks=masks), granted, started, ticket)

    def _refuse_not_shared(self, actor: Principal, ask: Ask) -> None:
        """A resource classed not shared is refused first, saying so and how to dispute it: no filter or field
        could make it answer, so a complaint about them would only mislead."""
        if actor.ref.kind is not PrincipalKind.SYSTEM or not validation.RESOURCE_CODE.match(ask.resource_code):
            return
        try:
            found = self._entries.get(ask.resource_code, self._store.catalog.with_binding)
        except NotFound:
            return  # said after the request's own checks, as for any code the catalog does not hold
        resource = found[0] if found is not None else None
        if resource is None or resource.spec.share_type is not ShareType.NOT_SHARED:
            return
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            return
        raise PermissionDenied(not_shared_message(resource), "NOT_SHARED")

    def _count_not_granted(self, actor: Principal, resource: Resource, decision: Decision, today: dt.date) -> None:
        """Counts a masked filter the grant does not allow, for its owner; the refusal stands if it cannot be."""
        try:
            self._guard.not_granted(decision.grant_id, actor.ref.code, actor.department_code, resource.spec.code, today)
        except ExchangeError as e:
            log.warning("a refused masked filter could not be counted: %s", e.message)

    def _verification(
        self, actor: Principal, resource: Resource, decision: Decision, filters: dict[str, object], today: dt.date
    ) -> Ticket | None:
        """For a lookup filtered on masked items the grant lets be verified: its reserved miss, or the refusal."""
        if not decision.verifying:
            return None
        values = tuple((name, kind, filters[name]) for name, kind in decision.verifying)
        lookup = Lookup(decision.grant_id, actor.ref.code, actor.department_code, resource.spec.code, values)
        return self._guard.begin(lookup, today)

    def _request(
        self, resource: Resource, binding: Binding, filters: dict[str, object], ask: Ask, call: _Call
    ) -> FetchRequest:
        timeout = binding.timeout_seconds or self._default_timeout
        if call.deadline is not None:
            timeout = min(timeout, max(0.001, call.deadline - time.monotonic()))
        limit, offset = 0, 0
        if call.page is not None:
            size, token = call.page
            paging = _page(ask, size, token)
            limit = min(paging.size, binding.max_rows or MAX_PAGE_SIZE) + 1
            offset = int(paging.after or 0)
        return FetchRequest(resource.spec, filters, ask.fields, limit, timeout, offset, call.exchange_id)

    # Recording

    def _record(self, actor: Principal, ask: Ask, exchange_id: str, action: str) -> AuditRecord:
        request = {"resource": ask.resource_code, "purpose": ask.purpose, "filters": dict(ask.filters)}
        request["fields"] = list(ask.fields)
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return AuditRecord(
            kind="exchange",
            action=action,
            time=now_text(),
            actor=str(actor.ref),
            actor_department=actor.department_code,
            outcome="denied",
            subject=ask.resource_code[:64],
            resource=ask.resource_code[:64],
            purpose=ask.purpose[:200],
            exchange_id=exchange_id,
            fields=[f[:64] for f in ask.fields[:MAX_FIELDS]],
            request_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
            data_subjects=sorted(
                {subject_hash(self._subject_key, v) for v in list(ask.filters.values())[:MAX_FILTERS]}
            ),
            hub=self._hub,
            key_holder=actor.key_holder,
        )

    async def _append(self, record: AuditRecord) -> None:
        started = time.monotonic()
        await self._committer.append_async(record)
        self._observer.audit_waited(time.monotonic() - started)
        self._observer.recorded(record, await self._resource_label(record.resource))
        if record.outcome != "allowed":  # the final record of an exchange: one log line each
            log.info("exchange %s %s", record.exchange_id, record.outcome, extra={"event": record.as_dict()})

    async def _resource_label(self, code: str) -> str:
        """``code`` if the catalog holds it, else ``unknown``: what a caller sent never becomes a metric label.

        A held entry answers at once; only a well-formed code not held yet is looked up (in a worker thread).
        """
        if self._entries.peek(code) is not None:
            return code
        if not validation.RESOURCE_CODE.match(code):
            return UNKNOWN_RESOURCE
        return await asyncio.to_thread(self._known_resource, code)

    def _known_resource(self, code: str) -> str:
        try:
            found = self._entries.get(code, self._store.catalog.with_binding)
        except ExchangeError:  # not held, or the store could not say: the record is committed either way
            return UNKNOWN_RESOURCE
        return code if found is not None else UNKNOWN_RESOURCE

    def _append_in_background(self, record: AuditRecord) -> None:
        """For the closing record of a call that was cancelled: the caller is gone, the record is not."""
        task = asyncio.get_running_loop().create_task(self._append(record))
        self._closing.add(task)
        task.add_done_callback(self._closing_done)

    def _closing_done(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a record that could not be committed was logged by the committer

    def _close_unless_ok(self, plan: _Plan, outcome: ExchangeError | str, counted: _Count) -> None:
        """The closing record of a stream or document that did not end well (its caller may be gone)."""
        if outcome == "ok":
            return
        closing = _closing(plan, outcome if isinstance(outcome, str) else "failed", counted.rows, counted.size, "")
        self._append_in_background(closing if isinstance(outcome, str) else _failed(closing, plan.started, outcome))

    def _statement(self, plan: _Plan, kind: str, count: int, sha256: str) -> str:
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


def new_exchange_id() -> str:
    """A unique, unguessable id: "EX" and 26 hex digits, time-ordered by its first 10."""
    return f"EX{int(time.time() * 1000):010x}{uuid.uuid4().hex[:16]}"


def _page(ask: Ask, size: int, token: str) -> PageRequest:
    scope = {"resource": ask.resource_code, "purpose": ask.purpose, "filters": dict(ask.filters)}
    return page_request(size or DEFAULT_PAGE_SIZE, token, {**scope, "fields": list(ask.fields)})


class _Ending:
    """How a stream or document call ended: "ok", "cancelled", or its error (a backend's bug made one)."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self.outcome: ExchangeError | str = "ok"

    def __enter__(self) -> _Ending:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        exchange_id = self._plan.record.exchange_id
        if isinstance(error, ExchangeError):
            self.outcome = error.recorded_as(exchange_id)  # its closing record says how the call ended
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            self.outcome = "cancelled"
        elif isinstance(error, Exception):
            self.outcome = _unexpected(self._plan, error).recorded_as(exchange_id)
            raise self.outcome from None


_COUNTING = frozenset({DenyReason.QUOTA_EXHAUSTED, DenyReason.RATE_LIMITED})


class _Recheck:
    """Asks again, at most every RECHECK_SECONDS, whether the caller's certificate and grant still hold.

    A certificate revoked (or expired), or a grant suspended or revoked, during a long stream
    stops it at the next batch: the closing record says why, as for any other failure.
    """

    def __init__(self, identify: Identify, granted: Callable[[Principal], None]) -> None:
        self._identify = identify
        self._granted = granted
        self._due = time.monotonic() + RECHECK_SECONDS

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._due:
            self._due = now + RECHECK_SECONDS
            self._granted(self._identify())  # Unauthenticated, or the denial, once they no longer hold


def _still_held(recheck: _Recheck, step: Callable[[], T]) -> T:
    recheck()
    return step()


@dataclass
class _Count:
    """What a stream or document has sent so far: records, and bytes (wire-form records, document chunks)."""

    rows: int = 0
    size: int = 0


Part = tuple[list[Row], list[data_pb2.Record] | None]


def _next_rows(batches: Iterator[list[Row]], plan: _Plan, digest: RowsDigest | None, counted: _Count) -> Part | None:
    """The next batch of rows, projected, masked, counted and digested; None at the end."""
    batch = next(batches, None)
    if batch is None:
        return None
    rows = [apply(r, plan.request.fields, plan.decision.masks) for r in batch]
    counted.rows += len(rows)
    if digest is not None:
        digest.update(rows)
    return rows, None


def _next_records(
    batches: Iterator[list[data_pb2.Record]], plan: _Plan, digest: RowsDigest | None, counted: _Count
) -> Part | None:
    """The next batch of wire records, masked in place, counted and (only when asked) digested; None at the end."""
    batch = next(batches, None)
    return None if batch is None else _masked_records(batch, plan, digest, counted)


def _masked_records(batch: list[data_pb2.Record], plan: _Plan, digest: RowsDigest | None, counted: _Count) -> Part:
    """A batch of wire records, masked in place, counted and (only when asked) digested."""
    masks = plan.decision.masks
    records = [mask_record(r, masks) for r in batch] if masks else batch
    counted.rows += len(records)
    counted.size += sum(r.ByteSize() for r in records)
    if digest is not None:
        digest.update(values.record_from_wire(r) for r in records)
    return [], records


def mask_record(record: data_pb2.Record, masks: tuple[tuple[str, MaskKind], ...]) -> data_pb2.Record:
    """A record in wire form with the masked fields replaced by their masked text (nulls stay null)."""
    fields = record.fields
    for name, kind in masks:
        if name not in fields:
            continue
        value = fields[name]
        which = value.WhichOneof("kind")
        if which == "string_value":
            value.string_value = str(mask(value.string_value, kind))
        elif which is not None:
            value.string_value = str(mask(values.from_wire(value), kind))  # setting the text clears the other kind
    return record


def _current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None  # the service's coroutines run as tasks of the hub's event loop
    return task


def _unexpected(plan: _Plan, error: Exception) -> ExchangeError:
    """A backend failed in a way it should not (a bug of its own): logged here, UNAVAILABLE to the caller."""
    reference = uuid.uuid4().hex[:12]
    log.error("backend of %s failed unexpectedly (reference %s)", plan.resource.spec.code, reference, exc_info=error)
    return Unavailable(f"the provider {provider_name(plan.resource)} failed; reference {reference}")


async def _unless_abandoned(work: asyncio.Future[T], abandoned: Callable[[asyncio.Future[T]], None]) -> T:
    """``work``'s result; if the caller is cancelled meanwhile, ``work`` goes on and ``abandoned`` gets it."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:  # the consumer went away or its deadline passed: nothing is sent
        work.add_done_callback(abandoned)
        raise


async def _close_quietly(close: Callable[[], object] | None) -> None:
    """Closes a backend's iterator or document; one still running a step in a worker thread is left to finish."""
    if close is None:
        return
    try:
        await asyncio.to_thread(close)
    except ValueError:  # "generator already executing": the worker thread's step ends it when it returns
        log.debug("closing a backend iterator that is still running a step")


def _disclosure(plan: _Plan) -> Disclosure:
    return Disclosure(plan.request.fields, plan.decision.masks, plan.decision.grant_id)


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1_000_000)


def _reason_of(error: ExchangeError) -> str:
    if isinstance(error, PermissionDenied | ResourceExhausted):
        return error.reason.lower()
    if isinstance(error, FailedPrecondition):
        return error.kind.lower()
    return type(error).__name__.lower()


def _refused(record: AuditRecord, started: float, error: ExchangeError) -> AuditRecord:
    refusal = isinstance(error, PermissionDenied | ResourceExhausted | InvalidArgument | NotFound)
    outcome = "denied" if refusal or getattr(error, "kind", "") == "SHARE_METHOD" else "failed"
    return replace(
        record, outcome=outcome, reason=f"{_reason_of(error)}: {error.message}"[:500], latency_us=_since(started)
    )


def _failed(record: AuditRecord, started: float, error: ExchangeError) -> AuditRecord:
    return replace(
        record, outcome="failed", reason=f"{_reason_of(error)}: {error.message}"[:500], latency_us=_since(started)
    )


def _closing(plan: _Plan, outcome: str, rows: int, size: int, sha256: str) -> AuditRecord:
    return replace(
        plan.record,
        action=f"{plan.record.action}_end",
        time=now_text(),
        outcome=outcome,
        rows=rows,
        bytes=size,
        response_sha256=sha256,
        latency_us=_since(plan.started),
    )


def not_shared_message(resource: Resource) -> str:
    """Why a not-shared resource answers no one, and how a consumer disputes that (the share manager decides)."""
    basis = resource.spec.legal_basis or "none given"
    return (
        f"resource {resource.spec.code} is not shared: its owner {resource.spec.department_code} classed it "
        f"not_shared (legal basis: {basis}), so no grant can be made for it. To dispute the class, apply for it "
        "(exchange request apply): the application is refused with that legal basis, and you may then dispute "
        "the refusal (exchange request dispute); the share manager decides, and the owner must show the legal basis."
    )


def _denial(decision: Decision) -> ExchangeError:
    reason = decision.reason or DenyReason.NO_GRANT
    if reason in _EXHAUSTED:
        return ResourceExhausted(decision.message, reason.value.upper())
    return PermissionDenied(decision.message, reason.value.upper())


def _validate(actor: Principal, ask: Ask, call: _Call) -> None:
    out: list[FieldViolation] = []
    document, page, batch = call.methods is DOCUMENT_KINDS, call.page, call.batch
    if actor.ref.kind is not PrincipalKind.SYSTEM:
        raise PermissionDenied(
            "only registered systems exchange data; people use their department's system", "NOT_A_SYSTEM"
        )
    validation.check_pattern(
        out, "resource_code", ask.resource_code, validation.RESOURCE_CODE, validation.RESOURCE_CODE_FORMAT
    )
    validation.check_text(out, "purpose", ask.purpose, required=True, limit=validation.MAX_NAME)
    if not ask.filters:
        out.append(FieldViolation("filters", "name the record(s) wanted with at least one filter"))
    if len(ask.filters) > MAX_FILTERS:
        out.append(FieldViolation("filters", f"at most {MAX_FILTERS} filters"))
    for name, value in ask.filters.items():
        if len(value) > MAX_FILTER_TEXT or not value.isprintable():
            out.append(
                FieldViolation(
                    f"filters[{name[:40]}]", f"must be printable text of at most {MAX_FILTER_TEXT} characters"
                )
            )
    if document and ask.fields:
        out.append(FieldViolation("fields", "a document is fetched whole: name no fields"))
    if not document and not ask.fields:
        out.append(FieldViolation("fields", "name the fields needed (minimum necessary: no wildcard)"))
    if len(ask.fields) > MAX_FIELDS or len(set(ask.fields)) != len(ask.fields):
        out.append(FieldViolation("fields", f"name each field once, at most {MAX_FIELDS}"))
    if page is not None and not 0 <= page[0] <= MAX_PAGE_SIZE:
        out.append(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"))
    elif page is not None and page[1]:
        after = _page(ask, page[0], page[1]).after or ""  # a token issued for other filters is refused here
        if not (after.isdigit() and len(after) <= 9):
            out.append(FieldViolation("page_token", "is not a token this hub issued for this query"))
    if not 0 <= batch <= MAX_BATCH_SIZE:
        out.append(FieldViolation("batch_size", f"must be between 0 and {MAX_BATCH_SIZE} (0: {DEFAULT_BATCH_SIZE})"))
    validation.raise_if(out)


def _typed_filters(resource: Resource, ask: Ask) -> dict[str, object]:
    """The filters read as their items' types; only filterable items, each checked."""
    items = {i.name: i for i in resource.spec.data_items}
    known = set(items)
    out: list[FieldViolation] = []
    unknown_fields = [f for f in ask.fields if f not in known]
    if unknown_fields:
        out.append(
            FieldViolation(
                "fields", f"{', '.join(f[:40] for f in unknown_fields[:5])} not in resource {resource.spec.code}"
            )
        )
    filterable = sorted(n for n, i in items.items() if i.filterable)
    typed: dict[str, object] = {}
    for name, text in ask.filters.items():
        item = items.get(name)
        if item is None or not item.filterable:
            out.append(
                FieldViolation(
                    f"filters[{name[:40]}]",
                    f"cannot be filtered on; declared filters: {', '.join(filterable) or 'none'}",
                )
            )
            continue
        try:
            typed[name] = parse_text(text, item.type)
        except BadValue as e:
            out.append(FieldViolation(f"filters[{name}]", str(e)))
    if out:
        raise InvalidArgument.of(out)
    return typed
