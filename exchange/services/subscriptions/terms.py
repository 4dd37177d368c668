"""Terms: what a subscription may receive, asked of the grants each time, with the exchange's own pieces.

A subscription is asked as a query would be (``policy.decision``): its system, department, resource, purpose,
fields and filter items. Creating it, each poll of its source and each batch sent ask again, so a grant
suspended or revoked, or a resource suspended, stops it at once; a batch sent counts one call of the grant's
daily quota, like a query.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

from exchange.backend import Backend, ChangeRequest
from exchange.errors import ExchangeError, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from exchange.models import Binding, GrantStatus, Resource, ResourceStatus
from exchange.services.exchange import BackendPool
from exchange.services.exchange.admit import typed_filters
from exchange.services.exchange.answers import Ask
from exchange.services.exchange.decide import Entries, denial
from exchange.store import Store
from exchange.store.subscriptions import Subscription
from policy.decision import Decision, DecisionPoint, DenyReason, Question

# Reasons that govern new calls only: a subscription waits (and is not refused) while they hold.
COUNTING = frozenset({DenyReason.QUOTA_EXHAUSTED, DenyReason.RATE_LIMITED})


class Terms:
    """The grant checks, catalog entries and backends a subscription needs; blocking except ``changes``."""

    def __init__(
        self,
        store: Store,
        decisions: DecisionPoint,
        backends: BackendPool,
        entries: Entries,
        *,
        default_timeout: float,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._store = store
        self._decisions = decisions
        self._backends = backends
        self._entries = entries
        self._default_timeout = default_timeout
        self._clock = clock

    def entry(self, code: str) -> tuple[Resource, Binding | None]:
        found = self._entries.get(code, self._store.catalog.with_binding)
        if found is None:
            raise NotFound("resource", code)
        return found

    def held(self, code: str) -> bool:
        try:
            return self._entries.peek(code) is not None or self.entry(code) is not None
        except ExchangeError:
            return False

    def decide(self, system: str, department: str, ask: Ask, *, consume: bool, fresh: bool = False) -> Decision:
        """The grant decision for ``ask`` by ``system`` of ``department`` today; ``fresh``: by the grant as the
        store holds it now (see ``_reread``)."""
        resource = self.entry(ask.resource_code)[0]
        filters = tuple(ask.filters)
        asked = tuple(dict.fromkeys((*ask.fields, *filters)))
        question = Question(system, department, ask.resource_code, ask.purpose, asked, filters)
        today = self._clock().date()
        if fresh:
            self._reread(question, resource.status, today)
        return self._decisions.decide(question, resource.status, today, consume=consume)

    def _reread(self, question: Question, status: ResourceStatus, today: dt.date) -> None:
        """Reads the grant that would decide ``question`` from the store and, if it was suspended or revoked there,
        tells this process's decision point at once. Another process's change reaches this one by a notice
        that takes a moment; a poll or a batch asking in that moment would otherwise go by the grant as it was,
        and a change made after the revocation's commit could still be sent. One read per poll and per batch."""
        probe = self._decisions.decide(question, status, today, consume=False)
        if probe.grant_id:
            stored = self._store.rights.get_grant(probe.grant_id)
            if stored.status is not GrantStatus.ACTIVE:
                self._decisions.update(stored)

    def require(self, sub: Subscription, *, consume: bool) -> Decision:
        """The decision for a batch of ``sub``; raises the refusal (quota and rate too: the caller decides)."""
        decision = self.decide(sub.consumer_system, sub.consumer_department, ask_of(sub), consume=consume)
        if not decision.allowed:
            raise denial(decision)
        return decision

    def standing(self, sub: Subscription) -> Decision | None:
        """The decision if the grant, as the store holds it, lets ``sub`` go on (quota aside), else None: nothing
        is fetched."""
        decision = self.decide(sub.consumer_system, sub.consumer_department, ask_of(sub), consume=False, fresh=True)
        return decision if decision.allowed else None

    def source(self, code: str) -> tuple[Resource, Binding, Backend]:
        """The resource, its binding and its open backend; refuses an unbound or unpublished one."""
        resource, binding = self.entry(code)
        if binding is None:
            raise FailedPrecondition(
                f"resource {code} is not bound to a backend yet: its owner must bind it", code, kind="NOT_BOUND"
            )
        if resource.status is not ResourceStatus.PUBLISHED:
            raise FailedPrecondition(f"resource {code} is {resource.status.value}", code, kind="RESOURCE_SUSPENDED")
        return resource, binding, self._backends.get(resource, binding)

    def change_request(
        self, resource: Resource, binding: Binding, ask: Ask, after: str | None, limit: int
    ) -> ChangeRequest:
        filters = typed_filters(resource, ask)
        timeout = binding.timeout_seconds or self._default_timeout
        return ChangeRequest(resource.spec, filters, ask.fields, after, limit, timeout)


SUBSCRIPTION_ID = re.compile(r"^SB-[0-9]{8}-[0-9a-f]{12}$")


def require_id(value: str) -> None:
    if not SUBSCRIPTION_ID.match(value):
        raise InvalidArgument.of([FieldViolation("id", f"{value[:40]!r} is not a subscription id (SB-YYYYMMDD-...)")])


def ask_of(sub: Subscription) -> Ask:
    return Ask(sub.resource_code, sub.purpose, dict(sub.filters), sub.fields)
