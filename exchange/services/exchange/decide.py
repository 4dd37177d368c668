"""Decide: which resource, which backend, whether a grant allows it, on what terms; and, during a long
call, whether it still does. Runs on the event loop when all it needs is held in memory (the catalog entry,
the caller, the grants, a block of quota); otherwise (``NotHeld`` raised there, nothing counted) in a worker
thread, which may read the catalog, the grants and the counters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from audit.records import AuditRecord
from exchange import validation
from exchange.backend import FetchRequest
from exchange.errors import ExchangeError, FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
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
from exchange.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from exchange.services.cache import Cache, NotHeld, held_only
from exchange.services.exchange.admit import admit, query_page, typed_filters
from exchange.services.exchange.answers import Ask, Call, Plan
from exchange.services.exchange.fetch import BackendPool
from exchange.services.federation.remote import refuse_if_remote
from exchange.services.verification import Lookup, MaskedFilterGuard, Ticket
from exchange.store import Store
from policy.decision import Decision, DecisionPoint, DenyReason, Question

log = logging.getLogger(__name__)
# Quota and rate govern new calls: a call under way was counted when it began.
_COUNTING = frozenset({DenyReason.QUOTA_EXHAUSTED, DenyReason.RATE_LIMITED})

Entries = Cache[str, tuple[Resource, Binding | None]]


class Decider:
    """From an admitted question to a ``Plan`` (or the refusal, raised), with the backend to fetch from."""

    def __init__(
        self,
        store: Store,
        decisions: DecisionPoint,
        backends: BackendPool,
        entries: Entries,
        guard: MaskedFilterGuard,
        *,
        default_timeout: float,
        clock: Callable[[], dt.datetime],
        decided: Callable[[float], None],
    ) -> None:
        self._store = store
        self._decisions = decisions
        self._backends = backends
        self._entries = entries
        self._guard = guard
        self._default_timeout = default_timeout
        self._clock = clock
        self._decided = decided

    def entry(self, code: str) -> tuple[Resource, Binding | None]:
        try:
            found = self._entries.get(code, self._store.catalog.with_binding)
        except NotFound as missing:
            raise refuse_if_remote(self._store, code, missing) from None
        assert found is not None  # with_binding raises NotFound rather than answer None
        return found

    def plan(self, actor: Principal, ask: Ask, call: Call, record: AuditRecord, started: float) -> Plan:
        """The allowed exchange; raises the refusal (its record is the caller's to write)."""
        held = self._refuse_not_shared(actor, ask)
        admit(actor, ask, call)
        resource, binding = held or self.entry(ask.resource_code)
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            raise NotFound("resource", ask.resource_code)
        filters = typed_filters(resource, ask)
        _check_method(resource, ask, call)
        today = self._clock().date()
        decision = self._decide(actor, ask, resource, filters, today)
        _check_terms(resource, ask, call, decision, binding)
        assert binding is not None  # _check_terms refuses an unbound resource
        backend = self._backends.get(resource, binding)
        request = self._request(resource, binding, filters, ask, call)
        ticket = self._verification(actor, resource, decision, filters, today)
        masks = tuple(m for m in decision.masks if m[0] in ask.fields)
        shown = [f"{f}={k.value}" for f, k in masks]
        granted = record.but(outcome="allowed", grant=decision.grant_id, masks=shown)
        if len(masks) != len(decision.masks):  # a masked item only filtered on: not among the fields returned
            decision = replace(decision, masks=masks)
        return Plan(resource, backend, request, decision, granted, started, ticket)

    def _decide(
        self, actor: Principal, ask: Ask, resource: Resource, filters: dict[str, object], today: dt.date
    ) -> Decision:
        # Filtering on an item needs a grant of it too; a document is fetched whole, so needs every item.
        wanted = ask.fields or tuple(i.name for i in resource.spec.data_items)
        asked = tuple(dict.fromkeys((*wanted, *filters)))
        question = Question(
            actor.ref.code, actor.department_code, ask.resource_code, ask.purpose, asked, tuple(filters)
        )
        asked_at = time.monotonic()
        held = held_only()
        if held:
            decision = self._decided_held(question, resource, today)
        else:
            decision = self._decisions.decide(question, resource.status, today)
        self._decided(time.monotonic() - asked_at)
        if not decision.allowed:
            if decision.reason is DenyReason.MASKED_FILTER_NOT_GRANTED:
                if held:  # counting the refusal writes to the store
                    raise NotHeld(ask.resource_code)
                self._count_not_granted(actor, resource, decision, today)
            raise denial(decision)
        return decision

    def _decided_held(self, question: Question, resource: Resource, today: dt.date) -> Decision:
        """The decision made on the event loop; ``NotHeld`` (nothing counted) if it needs the store or a busy lock."""
        decision = self._decisions.decide_held(question, resource.status, today)
        if decision is None:
            raise NotHeld(resource.spec.code)
        ahead = self._decisions.quota.ahead(decision.grant_id, today) if decision.allowed else None
        if ahead is not None:  # the next block of quota, leased in a thread before this one runs out
            asyncio.get_running_loop().run_in_executor(None, ahead).add_done_callback(_lease_failed)
        return decision

    def still_granted(self, plan: Plan, ask: Ask, actor: Principal) -> None:
        """Refuses, as the decision would now, a stream or document whose grant or resource no longer allows it."""
        status = self.entry(ask.resource_code)[0].status
        question = Question(actor.ref.code, actor.department_code, ask.resource_code, ask.purpose, plan.decision.fields)
        decision = self._decisions.decide(question, status, self._clock().date(), consume=False)
        if not decision.allowed and decision.reason not in _COUNTING:
            raise denial(decision)

    def found(self, plan: Plan) -> None:
        """A lookup filtered on a masked item found a record: its reserved miss is given back."""
        if plan.ticket is not None:
            self._guard.found(plan.ticket)

    def _refuse_not_shared(self, actor: Principal, ask: Ask) -> tuple[Resource, Binding | None] | None:
        """A resource classed not shared is refused first, saying so and how to dispute it: no filter or field
        could make it answer, so a complaint about them would only mislead. The catalog entry, if it was read
        (``plan`` reads it once)."""
        if actor.ref.kind is not PrincipalKind.SYSTEM or not validation.RESOURCE_CODE.match(ask.resource_code):
            return None
        try:
            found = self.entry(ask.resource_code)
        except NotFound:
            return None  # said after the request's own checks, as for any code the catalog does not hold
        resource = found[0]
        if resource.spec.share_type is not ShareType.NOT_SHARED:
            return found
        if resource.status is ResourceStatus.DRAFT and resource.spec.department_code != actor.department_code:
            return found
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
        self, resource: Resource, binding: Binding, filters: dict[str, object], ask: Ask, call: Call
    ) -> FetchRequest:
        timeout = binding.timeout_seconds or self._default_timeout
        if call.deadline is not None:
            timeout = min(timeout, max(0.001, call.deadline - time.monotonic()))
        limit, offset = 0, 0
        if call.page is not None:
            size, token = call.page
            if token:  # where it continues, from the token (checked against what was asked by admit already)
                paging = query_page(ask, size, token)
                size, offset = paging.size, int(paging.after or 0)
            else:  # the first page: no token to check against the request's digest, so none is computed
                size = size or DEFAULT_PAGE_SIZE
            limit = min(size, binding.max_rows or MAX_PAGE_SIZE) + 1
        return FetchRequest(resource.spec, filters, ask.fields, limit, timeout, offset, call.exchange_id)


def _lease_failed(work: asyncio.Future[None]) -> None:
    """A block leased ahead that could not be: the next call that needs one leases it (and says why not)."""
    if not work.cancelled() and work.exception() is not None:
        log.warning("a block of quota could not be leased ahead: %s", work.exception())


def _check_method(resource: Resource, ask: Ask, call: Call) -> None:
    if resource.spec.share_method not in call.methods:
        verb = "FetchDocument" if resource.spec.share_method is ShareMethod.DOCUMENT else "Query or StreamQuery"
        raise FailedPrecondition(
            f"resource {ask.resource_code} is shared by {resource.spec.share_method.value}: use {verb}",
            ask.resource_code,
            kind="SHARE_METHOD",
        )


def _check_terms(resource: Resource, ask: Ask, call: Call, decision: Decision, binding: Binding | None) -> None:
    """What the grant's terms and the binding rule out though the grant allows the call."""
    if call.for_document and any(k is not MaskKind.NONE for _, k in decision.masks):
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


def denial(decision: Decision) -> ExchangeError:
    reason = decision.reason or DenyReason.NO_GRANT
    if reason in _COUNTING:
        return ResourceExhausted(decision.message, reason.value.upper())
    return PermissionDenied(decision.message, reason.value.upper())


def not_shared_message(resource: Resource) -> str:
    """Why a not-shared resource answers no one, and how a consumer disputes that (the share manager decides)."""
    basis = resource.spec.legal_basis or "none given"
    return (
        f"resource {resource.spec.code} is not shared: its owner {resource.spec.department_code} classed it "
        f"not_shared (legal basis: {basis}), so no grant can be made for it. To dispute the class, apply for it "
        "(exchange request apply): the application is refused with that legal basis, and you may then dispute "
        "the refusal (exchange request dispute); the share manager decides, and the owner must show the legal basis."
    )


# How often a stream or document asks again whether the caller's certificate and grant still hold, in seconds.
RECHECK_SECONDS = 1.0


class Recheck:
    """Asks again, at most every RECHECK_SECONDS, whether the caller's certificate and grant still hold.

    A certificate revoked (or expired), or a grant suspended or revoked, during a long stream stops it
    before its next batch leaves: the closing record says why, as for any other failure.
    """

    def __init__(self, identify: Callable[[], Principal], granted: Callable[[Principal], None]) -> None:
        self._identify = identify
        self._granted = granted
        self._due = time.monotonic() + RECHECK_SECONDS

    async def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._due:
            self._due = now + RECHECK_SECONDS
            await asyncio.to_thread(self._ask)

    def _ask(self) -> None:
        self._granted(self._identify())  # Unauthenticated, or the denial, once they no longer hold
