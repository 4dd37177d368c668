"""The brokered exchange, one call at a time: admit, decide, fetch, shape, record, answer.

Every call that names a caller becomes one audited exchange with an id, whether it is allowed,
refused or fails. The audit record is committed before any data is handed back: a query's once
its answer is ready (with the digest of what will be returned), a stream's or a document's before
the first batch or chunk (and a closing record after the last). If the audit log cannot confirm,
the call fails with UNAVAILABLE and nothing is released.

Deciding reads the store, so it runs in a worker thread; everything else is awaited on the event
loop (backends that block run on their department's lane, see ``exchange.backend``).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from opentelemetry.trace import Tracer

from audit.note import Signer
from audit.records import AuditRecord
from exchange.auditlog.batch import GroupCommitter
from exchange.backend import Document
from exchange.errors import ExchangeError
from exchange.services.cache import Cache, NotHeld, holding_only
from exchange.services.exchange import shape
from exchange.services.exchange.admit import DEFAULT_BATCH_SIZE
from exchange.services.exchange.answers import (
    DOCUMENT_KINDS,
    RECORD_KINDS,
    Ask,
    Batch,
    Call,
    Chunk,
    Disclosure,
    Identify,
    Link,
    Plan,
    QueryResult,
    new_exchange_id,
)
from exchange.services.exchange.decide import Decider, Entries, Recheck
from exchange.services.exchange.fetch import BackendPool, Provider
from exchange.services.exchange.observer import Observer, Unobserved
from exchange.services.exchange.record import Ending, Recorder, answered, closing, failed, refused, since
from exchange.services.exchange.steps import Steps
from exchange.services.verification import MaskedFilterGuard
from exchange.store import Store
from policy.decision import DecisionPoint

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Settled:
    """What a step came to: the record to commit, and the answer or the error."""

    record: AuditRecord
    error: ExchangeError | None = None
    result: QueryResult | None = None


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
        entries: Entries | None = None,
        observer: Observer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        masked_misses_per_day: int = 5,
        masked_pattern_misses: int = 3,
        tracer: Tracer | None = None,
    ) -> None:
        # With tracing off (None) the steps cost nothing: no span, not even a no-op one, is made.
        self._steps = Steps(tracer)
        watcher: Observer = observer or Unobserved()
        guard = MaskedFilterGuard(store.counters, subject_key, masked_misses_per_day, masked_pattern_misses, watcher)
        # Catalog entries with their bindings, by code; the hub drops them on any catalog change.
        self._entries: Entries = entries or Cache()
        self._backends = backends
        self._decider = Decider(
            store, decisions, backends, self._entries, guard,
            default_timeout=default_timeout, clock=clock, decided=watcher.decided,
        )  # fmt: skip
        self._provider = Provider(watcher, self._steps)
        self._recorder = Recorder(
            committer, signer, subject_key, watcher, known=self._held, lookup=self._holds, steps=self._steps
        )
        # Streams and documents under way: a shutdown ends them and waits for their closing records.
        self._open: set[asyncio.Future[Any]] = set()

    async def finish(self, timeout: float) -> None:
        """At shutdown, once the server has stopped: ends the streams and documents still open (as cancelled)
        and waits, at most ``timeout`` seconds, until every closing record is committed, so that no stream is
        left in the log with its opening record only. The audit committer must still be running."""
        until = time.monotonic() + timeout
        for call in list(self._open):
            call.cancel()
        pending: set[asyncio.Future[Any]]
        while (pending := {*self._open, *self._recorder.closing}) and (left := until - time.monotonic()) > 0:
            await asyncio.wait(pending, timeout=left)
        if pending:
            log.warning("%d streams or closing audit records did not end before shutdown", len(pending))

    # Queries

    async def query(
        self,
        identify: Identify,
        ask: Ask,
        page_size: int,
        page_token: str,
        deadline: float | None,
        *,
        link: Link | None = None,
    ) -> QueryResult:
        """One page: decided in a worker thread, fetched, shaped; its record is committed before it is returned.
        ``link``: the call was forwarded by another hub (its records say so)."""
        call = Call(new_exchange_id(), "query", RECORD_KINDS, deadline, page=(page_size, page_token), link=link)
        plan = await self._plan(identify, ask, call)
        answering = asyncio.get_running_loop().create_task(self._answer(plan, ask, call))
        settled = await _unless_abandoned(answering, self._abandoned)
        if plan.ticket is not None and settled.result is not None and settled.result.rows:
            await self._found(plan)
        await self._recorder.append(settled.record)
        if settled.error is not None:
            raise settled.error.recorded_as(call.exchange_id)
        assert settled.result is not None
        return settled.result

    async def _answer(self, plan: Plan, ask: Ask, call: Call) -> Settled:
        try:
            rows = await self._provider.rows(plan)
            with self._steps("mask", rows=len(rows)):
                page = shape.page(plan, ask, call.page[1] if call.page else "", rows)
        except ExchangeError as e:
            return Settled(failed(plan.record, plan.started, e), e)
        note = self._recorder.statement(plan, "records", len(page.rows), page.digest) if ask.provenance else ""
        result = QueryResult(call.exchange_id, page.rows, page.next_token, Disclosure.of(plan), note)
        return Settled(answered(plan, len(page.rows), page.digest), result=result)

    def _abandoned(self, work: asyncio.Future[Settled]) -> None:
        """Records a query whose consumer left before the answer: what it came to, marked cancelled if answered."""
        if work.cancelled() or work.exception() is not None:
            return
        settled = work.result()
        record = settled.record if settled.error else replace(settled.record, outcome="cancelled")
        self._recorder.append_in_background(record)

    # Streams

    async def stream(
        self, identify: Identify, ask: Ask, batch_size: int, deadline: float | None, *, link: Link | None = None
    ) -> AsyncGenerator[Batch, None]:
        """Batches as the consumer takes them; the provider is read one batch ahead at most. ``link``: the call
        was forwarded by another hub."""
        call = Call(new_exchange_id(), "stream", RECORD_KINDS, deadline, batch=batch_size, link=link)
        plan = await self._plan(identify, ask, call)
        shaper = shape.StreamShaper(plan, ask.provenance)
        recheck = Recheck(identify, partial(self._decider.still_granted, plan, ask))
        batches = self._provider.batches(plan, batch_size or DEFAULT_BATCH_SIZE)
        ending, first = Ending(plan), True
        self._opened()
        try:
            with ending:
                await self._recorder.append(plan.record)
                async for batch in batches:
                    await recheck()
                    with self._steps("mask"):
                        rows, message, encoded = await asyncio.to_thread(shaper, batch)
                    if shaper.counted.rows:
                        await self._found(plan)
                    disclosure = Disclosure.of(plan) if first else None
                    yield Batch(call.exchange_id, rows, disclosure, message=message, encoded=encoded)
                    first = False
                yield await self._stream_end(plan, ask, shaper, first)
        finally:
            self._closed(ending, shaper.counted)
            await batches.aclose()

    async def _stream_end(self, plan: Plan, ask: Ask, shaper: shape.StreamShaper, first: bool) -> Batch:
        counted, digest = shaper.counted, shaper.hexdigest()
        note = self._recorder.statement(plan, "records", counted.rows, digest) if ask.provenance else ""
        await self._recorder.append(closing(plan, "ok", counted.rows, counted.size, digest))
        disclosure = Disclosure.of(plan) if first else None
        return Batch(plan.record.exchange_id, [], disclosure, True, counted.rows, note)

    # Documents

    async def document(
        self, identify: Identify, ask: Ask, deadline: float | None, *, link: Link | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The document's description, its chunks as the consumer takes them, then its digest. ``link``: the call
        was forwarded by another hub."""
        call = Call(new_exchange_id(), "document", DOCUMENT_KINDS, deadline, link=link)
        plan = await self._plan(identify, ask, call)
        opening = asyncio.ensure_future(self._provider.document(plan))
        try:
            document = await _unless_abandoned(opening, partial(self._abandoned_document, plan))
        except ExchangeError as e:
            await self._recorder.append(failed(plan.record, plan.started, e))
            raise e.recorded_as(call.exchange_id) from None
        counted, digest, ending = shape.Count(), hashlib.sha256(), Ending(plan)
        self._opened()
        try:
            with ending:
                # The file name stays out of the record: it may carry a data subject's identifier.
                await self._recorder.append(plan.record)
                yield Chunk(call.exchange_id, document=document)
                recheck = Recheck(identify, partial(self._decider.still_granted, plan, ask))
                async for data in document.chunks:
                    await recheck()
                    digest.update(data)
                    counted.size += len(data)
                    yield Chunk(call.exchange_id, data=data)
                yield await self._document_end(plan, ask, counted, digest.digest())
        finally:
            self._closed(ending, counted)
            await document.chunks.aclose()
            await document.aclose()

    async def _document_end(self, plan: Plan, ask: Ask, counted: shape.Count, sha256: bytes) -> Chunk:
        note = self._recorder.statement(plan, "document", counted.size, sha256.hex()) if ask.provenance else ""
        await self._recorder.append(closing(plan, "ok", 0, counted.size, sha256.hex()))
        return Chunk(plan.record.exchange_id, last=True, sha256=sha256, total=counted.size, provenance=note)

    def _abandoned_document(self, plan: Plan, work: asyncio.Future[object]) -> None:
        """Closes a document opened for a consumer that left meanwhile, and records what the call came to."""
        if work.cancelled():
            return
        error = work.exception()
        if error is None:
            opened = work.result()
            assert isinstance(opened, Document)
            self._recorder.track(asyncio.ensure_future(opened.aclose()))
        if isinstance(error, ExchangeError):
            self._recorder.append_in_background(failed(plan.record, plan.started, error))
        else:
            cancelled = replace(plan.record, outcome="cancelled", latency_us=since(plan.started))
            self._recorder.append_in_background(cancelled)

    # Steps shared by every call

    async def _plan(self, identify: Identify, ask: Ask, call: Call) -> Plan:
        """The allowed exchange (decided on the loop from what is held, else in a worker thread), or the
        refusal, audited, raised."""
        with self._steps("decide", action=call.action, id=call.exchange_id):
            prepared = self._prepare_held(identify, ask, call)
            if prepared is None:
                preparing = _in_thread(self._prepare, identify, ask, call)
                prepared = await _unless_abandoned(preparing, self._abandoned_plan)
        self._backends.close_retired()
        if isinstance(prepared, Plan):
            return prepared
        await self._recorder.append(prepared.record)
        assert prepared.error is not None
        raise prepared.error.recorded_as(call.exchange_id)

    def _prepare_held(self, identify: Identify, ask: Ask, call: Call) -> Plan | Settled | None:
        """``_prepare`` on the event loop when the caller, the catalog entry, the grant and a block of quota
        are held in memory (a thread hop each way saved); None, nothing counted, when it would wait on the store."""
        with holding_only():
            try:
                return self._prepare(identify, ask, call)
            except NotHeld:
                return None

    def _prepare(self, identify: Identify, ask: Ask, call: Call) -> Plan | Settled:
        actor = identify()  # an unknown caller raises here: there is no one to record
        started = time.monotonic()
        record = self._recorder.opening(actor, ask, call.exchange_id, call.action)
        if call.link is not None:  # a call forwarded from a peer hub: its record names the hop
            link = call.link
            record = replace(
                record, peer_hub=link.peer_hub, peer_exchange_id=link.peer_exchange_id, hop=link.hop,
                forwarded=link.forwarded,
            )  # fmt: skip
        try:
            return self._decider.plan(actor, ask, call, record, started)
        except ExchangeError as e:
            return Settled(refused(record, started, e), e)

    def _abandoned_plan(self, work: asyncio.Future[Plan | Settled]) -> None:
        """Records a call whose consumer left while it was decided."""
        if work.cancelled() or work.exception() is not None:
            return
        done = work.result()
        record = done.record if isinstance(done, Settled) else replace(done.record, outcome="cancelled")
        self._recorder.append_in_background(record)

    async def _found(self, plan: Plan) -> None:
        """A lookup filtered on a masked item found a record: its reserved miss is given back.

        If the store cannot take that, the miss stays counted (the bound errs on the safe side).
        """
        if plan.ticket is None:
            return
        try:
            await asyncio.to_thread(self._decider.found, plan)
            plan.ticket = None
        except ExchangeError as e:
            plan.ticket = None
            log.warning("a verified lookup's miss could not be given back: %s", e.message)

    def _opened(self) -> None:
        task = asyncio.current_task()
        assert task is not None  # the service's coroutines run as tasks of the hub's event loop
        self._open.add(task)

    def _closed(self, ending: Ending, counted: shape.Count) -> None:
        """The closing record of a stream or document that did not end well (its caller may be gone)."""
        self._open.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
        record = ending.closing_record(counted.rows, counted.size)
        if record is not None:
            self._recorder.append_in_background(record)

    def holds(self, code: str) -> bool:
        """Whether this hub's catalog holds entry ``code`` as far as the cache knows (no store read)."""
        return self._held(code)

    def _held(self, code: str) -> bool:
        return self._entries.peek(code) is not None

    def _holds(self, code: str) -> bool:
        try:
            return self._decider.entry(code) is not None
        except ExchangeError:  # not held, or the store could not say: the record is committed either way
            return False


def _in_thread(work: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """``work`` in a worker thread, with this task's context (a plain executor future: no task around it)."""
    run = partial(contextvars.copy_context().run, work, *args)
    return asyncio.get_running_loop().run_in_executor(None, run)


async def _unless_abandoned(work: asyncio.Future[T], abandoned: Callable[[asyncio.Future[T]], None]) -> T:
    """``work``'s result; if the caller is cancelled meanwhile, ``work`` goes on and ``abandoned`` gets it."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:  # the consumer went away or its deadline passed: nothing is sent
        work.add_done_callback(abandoned)
        raise
