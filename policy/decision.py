"""The data plane's question: may this system read these fields of this resource, for this purpose?

The Casbin model ``grants.conf`` is the rule: which live grant lets a system
read a resource for a purpose. It is parsed once per decision point
(``policy.grant_rule``), and each (resource, consumer department) keeps its
active grants in the order a Casbin enforcer of that pair would hold their
policy lines; when the pair's grants change, the model's answer for every
(system, purpose) the lines name is worked out and kept with the pair, so the
cost of a decision depends on the grants of that pair, not on all grants of
the hub. The model only compares for equality and allows when some line
matches, so a question the lines do not name is one Casbin denies, and the
answer is the first matching line, as Casbin's; tests check both against
pycasbin over random grants. A pycasbin enforcer per pair cost about 0.2 ms
to build and 25 µs a question (it re-parses its matcher on every call),
26 s to start at 100,000 grants. An index of the same grants explains a
denial precisely, and a cache answers a repeated question until any grant
changes. Daily quotas are counted per grant and day
hub-wide, in blocks leased from a shared counter (``policy.quota``); the rate
per second is counted in this process against its share of the grant's rate (the
rate divided by the live hub processes). A grant that masks an item lets it be
used as a filter only when it names the item in ``verify_masked``.
"""

from __future__ import annotations

import datetime as dt
import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

from exchange.models import Grant, GrantStatus, MaskKind, ResourceStatus
from policy.grant_rule import GrantRule, Line
from policy.quota import DailyQuota

# Distinct questions remembered before the cache starts afresh.
CACHE_LIMIT = 100_000


class DenyReason(StrEnum):
    NO_GRANT = "no_grant"
    WRONG_PURPOSE = "wrong_purpose"
    SUSPENDED = "grant_suspended"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "grant_expired"
    FIELD_NOT_GRANTED = "field_not_granted"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    RESOURCE_SUSPENDED = "resource_suspended"
    MASKED_FILTER_NOT_GRANTED = "masked_filter_not_granted"


@dataclass(frozen=True)
class Question:
    system: str
    department: str
    resource: str
    purpose: str
    # Every item asked for: returned and filtered on.
    fields: tuple[str, ...]
    # The items filtered on (also in ``fields``).
    filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    grant_id: str = ""
    fields: tuple[str, ...] = ()
    masks: tuple[tuple[str, MaskKind], ...] = ()
    reason: DenyReason | None = None
    message: str = ""
    # Filters on masked items that the grant allows as a verification (bounded by the caller).
    verifying: tuple[tuple[str, MaskKind], ...] = ()


def _deny(reason: DenyReason, message: str, grant_id: str = "") -> Decision:
    return Decision(False, grant_id, reason=reason, message=message)


def _quota_used(grant: Grant, day: dt.date, used: int) -> Decision:
    """The refusal of a grant whose day is used up: what it allows, what was handed out, when it resets."""
    resets = day + dt.timedelta(days=1)
    return _deny(
        DenyReason.QUOTA_EXHAUSTED,
        f"grant {grant.id} has used its daily quota of {grant.daily_quota} calls ({max(used, grant.daily_quota)} "
        f"used); it resets at {resets.isoformat()} 00:00 UTC",
    )


def _allow(grant: Grant, q: Question) -> Decision:
    masks = tuple((f, k) for f, k in grant.masks if f in q.fields)
    verifying = tuple((f, k) for f, k in masks if f in q.filters and k is not MaskKind.NONE)
    return Decision(True, grant.id, q.fields, masks, verifying=verifying)


def _masked_filters(grant: Grant, q: Question) -> Decision | None:
    """A denial when ``q`` filters on an item the grant masks and does not let be verified.

    Filtering on a masked item would let a caller that holds the masked value guess the hidden part
    (an ID number's 8 birth-date digits) one lookup at a time: it is a right of its own.
    """
    masked = {f for f, k in grant.masks if k is not MaskKind.NONE}
    refused = sorted(f for f in q.filters if f in masked and f not in grant.verify_masked)
    if not refused:
        return None
    items = ", ".join(refused)
    return _deny(
        DenyReason.MASKED_FILTER_NOT_GRANTED,
        f"{items} {'is' if len(refused) == 1 else 'are'} masked under grant {grant.id}: filtering on a masked item "
        "needs the grant's verification term (verify_masked), which the owner grants when approving",
        grant.id,
    )


@dataclass(frozen=True, slots=True)
class _Terms:
    """A question's answer while no grant changes: the grant, and what its terms make of the question (the
    refusal of a masked filter it does not let be verified, else the allowing decision). Only the grant's dates,
    rate and quota are left to check on each call. Kept in ``DecisionPoint._cache``, which any grant change empties
    (a revocation or suspension is seen by the next call)."""

    grant: Grant
    refused: Decision | None
    allowed: Decision


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keeps Python's cyclic garbage collector out of a bulk load, then restores it as it was.

    A load makes hundreds of thousands of long-lived objects and no garbage cycles; left on, the
    collector walks the whole heap again each time they grow by a quarter (about half of the build
    time at 100,000 grants, for nothing to collect).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(slots=True)
class _Pair:
    """The grants of one (resource, consumer department): all, the active ones in Casbin's order, the answers."""

    grants: dict[str, Grant] = field(default_factory=dict)
    # The active grants, in the order Casbin would hold their policy lines (a changed grant's go last).
    active: dict[str, Grant] = field(default_factory=dict)
    # The model's answer for each request the lines name: the id of the allowing grant.
    answers: dict[tuple[str, ...], str] = field(default_factory=dict)

    def place(self, grant: Grant) -> None:
        """Takes the grant's new state in, as removing its policy lines and adding them again would."""
        self.active.pop(grant.id, None)
        if grant.status is GrantStatus.REVOKED:
            self.grants.pop(grant.id, None)
        else:
            self.grants[grant.id] = grant
        if grant.status is GrantStatus.ACTIVE:
            self.active[grant.id] = grant

    def lines(self, rule: GrantRule) -> Iterator[Line]:
        """The policy lines of the active grants, in Casbin's order."""
        for g in self.active.values():
            yield from rule.lines(g.id, g.purpose, g.system_codes)

    def ask(self, rule: GrantRule) -> None:
        """Refreshes ``answers`` from the lines, after the pair's policy changed."""
        found = rule.answers(self.lines(rule))
        self.answers = {request: line[rule.grant_at] for request, line in found.items()}


class DecisionPoint:
    """Decides data-plane requests against the live grants; told of every grant change."""

    def __init__(
        self,
        grants: list[Grant] | None = None,
        clock: Callable[[], float] = time.monotonic,
        quota: DailyQuota | None = None,
    ) -> None:
        self._rule = GrantRule.load()
        self._clock = clock
        # Per grant: tokens left and when they were counted (a bucket of one second's calls).
        self._buckets: dict[str, tuple[float, float]] = {}
        self._pairs: dict[tuple[str, str], _Pair] = {}
        # Per question answered lately: its grant and what the grant's terms make of it (dropped on any change).
        self._cache: dict[Question, _Terms] = {}
        self.quota = quota or DailyQuota()
        self._lock = threading.Lock()
        self._load(grants or [])

    def _load(self, grants: list[Grant]) -> None:
        """Takes many grants in at once: each pair's answers are worked out once, after all its grants."""
        touched: dict[tuple[str, str], _Pair] = {}
        with self._lock, _collector_paused():
            for grant in grants:
                key = (grant.resource_code, grant.consumer_department_code)
                pair = touched[key] = self._pairs.setdefault(key, _Pair())
                pair.place(grant)
            for pair in touched.values():
                pair.ask(self._rule)
            self._cache.clear()

    def replace_all(self, load: Callable[[], list[Grant]]) -> None:
        """Starts afresh from the store (after this process may have missed changes).

        ``load`` runs under the lock, so no older update can land after it.
        """
        with self._lock:
            fresh = DecisionPoint(load())
            self._pairs, self._cache = fresh._pairs, {}

    def refresh(self, grant_id: str, load: Callable[[str], Grant]) -> None:
        """Takes a grant's committed state into account, read by ``load`` under the lock.

        Reading under the lock makes concurrent changes converge on what the store holds: whichever
        refresh runs last reads the last committed state, whatever order the changes were told in.
        """
        with self._lock:
            self._apply(load(grant_id))

    def update(self, grant: Grant) -> None:
        """Takes a new or changed grant into account; cached answers are dropped."""
        with self._lock:
            self._apply(grant)

    def _apply(self, grant: Grant) -> None:
        pair = self._pairs.setdefault((grant.resource_code, grant.consumer_department_code), _Pair())
        pair.place(grant)
        pair.ask(self._rule)
        self._cache.clear()

    def decide(self, q: Question, resource_status: ResourceStatus, today: dt.date, *, consume: bool = True) -> Decision:
        """Allow with the grant, the fields and the masks, or deny with the reason.

        An allowed call uses one call of the grant's daily quota unless ``consume`` is False (a dry run);
        a dry run knows only what this process has seen of the quota (it reads no shared counter).
        """
        if resource_status is not ResourceStatus.PUBLISHED:
            return _deny(DenyReason.RESOURCE_SUSPENDED, f"resource {q.resource} is {resource_status.value}")
        if not q.fields:
            return _deny(DenyReason.FIELD_NOT_GRANTED, "no field named: ask for the fields needed")
        with self._lock:
            found = self._grant_for(q, today)
            if isinstance(found, Decision):
                return found
            grant = found.grant
            refusal = found.refused or self._limit(grant, today, consume=consume)
            if refusal is not None:
                return refusal
        if consume and not self.quota.take(grant.id, grant.daily_quota, today):
            return _quota_used(grant, today, self.quota.used(grant.id, today))
        return found.allowed

    def decide_held(self, q: Question, resource_status: ResourceStatus, today: dt.date) -> Decision | None:
        """A call's decision (as ``decide``, counted) from what this process holds, never waiting on a lock
        or the shared counter; None, with nothing counted, when it cannot be made so (a lock is busy, the
        quota needs a new block) or the call filters on a masked item (its lookup is verified against shared
        counters): the caller then decides with ``decide``, where waiting is allowed."""
        if resource_status is not ResourceStatus.PUBLISHED or not q.fields:
            return self.decide(q, resource_status, today)  # a denial, without a lock
        if not self._lock.acquire(blocking=False):
            return None
        try:
            found = self._grant_for(q, today)
            return found if isinstance(found, Decision) else self._counted_held(found, today)
        finally:
            self._lock.release()

    def _counted_held(self, terms: _Terms, today: dt.date) -> Decision | None:
        """``decide_held``'s part after the grant is found, under the lock: terms, rate, then quota."""
        if terms.refused is not None:
            return terms.refused
        decision, grant = terms.allowed, terms.grant
        if decision.verifying:
            return None
        if not self._take_token(grant):
            return _deny(DenyReason.RATE_LIMITED, f"grant {grant.id} allows {grant.rate_per_second} calls a second")
        if not self.quota.take_held(grant.id, today):
            self._give_token(grant)
            return None
        return decision

    def _grant_for(self, q: Question, today: dt.date) -> _Terms | Decision:
        """The grant that answers ``q`` today and its terms for ``q`` (cached, or found and cached), or a denial."""
        terms = self._cache.get(q)
        if terms is not None and terms.grant.start <= today <= terms.grant.end:
            return terms
        found = self._match(q, today)
        if isinstance(found, Decision):
            return found
        grant = self._pairs[(q.resource, q.department)].grants[found]
        if not grant.start <= today <= grant.end:
            return self._validity(grant, today)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        terms = self._cache[q] = _Terms(grant, _masked_filters(grant, q), _allow(grant, q))
        return terms

    def _limit(self, grant: Grant, today: dt.date, *, consume: bool) -> Decision | None:
        """A denial when the grant's quota is known to be used up today, or (for a call) its rate is."""
        if self.quota.spent(grant.id, today):
            return _quota_used(grant, today, self.quota.used(grant.id, today))
        if consume and not self._take_token(grant):
            return _deny(DenyReason.RATE_LIMITED, f"grant {grant.id} allows {grant.rate_per_second} calls a second")
        return None

    def _take_token(self, grant: Grant) -> bool:
        """A token bucket per grant: this process's share of ``rate_per_second``, bursts of one second's worth.

        The share is the rate over the live hub processes, so the processes together allow the rate;
        a share under one call a second still lets one call through at a time (the bucket holds one).
        """
        if grant.rate_per_second <= 0:
            return True
        rate = grant.rate_per_second / max(1, self.quota.processes)
        size = max(1.0, rate)
        now = self._clock()
        tokens, then = self._buckets.get(grant.id, (size, now))
        tokens = min(size, tokens + (now - then) * rate)
        if tokens < 1:
            self._buckets[grant.id] = (tokens, now)
            return False
        self._buckets[grant.id] = (tokens - 1, now)
        return True

    def _give_token(self, grant: Grant) -> None:
        """Gives back the token a call took, when it is decided again elsewhere."""
        if grant.id in self._buckets:
            tokens, then = self._buckets[grant.id]
            self._buckets[grant.id] = (tokens + 1, then)

    def _match(self, q: Question, today: dt.date) -> str | Decision:
        """The id of the grant that allows ``q``, found by Casbin and checked by the index; or a denial."""
        pair = self._pairs.get((q.resource, q.department))
        mine = [g for g in pair.grants.values() if q.system in g.system_codes] if pair else []
        if pair is None or not mine:
            return _deny(DenyReason.NO_GRANT, f"no grant lets system {q.system} read {q.resource}")
        allowed_by = pair.answers.get(self._rule.ask(q.system, q.purpose))
        if allowed_by is None:
            if any(g.purpose == q.purpose for g in mine):
                return _deny(DenyReason.SUSPENDED, f"the grant for {q.purpose!r} on {q.resource} is suspended")
            purposes = "、".join(sorted({g.purpose for g in mine}))
            return _deny(DenyReason.WRONG_PURPOSE, f"granted only for {purposes}, not for {q.purpose!r}")
        candidates = [g for g in mine if g.purpose == q.purpose and g.status is GrantStatus.ACTIVE]
        current = [g for g in candidates if g.start <= today <= g.end] or [pair.grants[allowed_by]]
        covering = [g for g in current if set(q.fields) <= set(g.fields)]
        if not covering:
            missing = sorted(set(q.fields) - set(current[0].fields))
            return _deny(DenyReason.FIELD_NOT_GRANTED, f"fields not granted: {', '.join(missing)}")
        return covering[0].id

    @staticmethod
    def _validity(grant: Grant, today: dt.date) -> Decision:
        if today < grant.start:
            return _deny(DenyReason.NOT_YET_VALID, f"grant {grant.id} is valid from {grant.start}")
        return _deny(DenyReason.EXPIRED, f"grant {grant.id} expired on {grant.end}")

    def answer(self, q: Question) -> str | None:
        """The id of the grant the model lets answer ``q`` (before dates, fields and limits), or None."""
        with self._lock:
            pair = self._pairs.get((q.resource, q.department))
            return pair.answers.get(self._rule.ask(q.system, q.purpose)) if pair else None

    def casbin_agrees(self, q: Question) -> bool:
        """Whether the kept answer for ``q`` is what a pycasbin enforcer of the pair's lines answers now.

        Builds the enforcer on each call (about 0.2 ms): for tests and audits of this class.
        """
        with self._lock:
            pair = self._pairs.get((q.resource, q.department))
            if pair is None:
                return True
            enforcer = self._rule.enforcer(pair.lines(self._rule))
            allowed, line = enforcer.enforce_ex(*self._rule.ask(q.system, q.purpose))
            kept = pair.answers.get(self._rule.ask(q.system, q.purpose))
            return kept == (line[self._rule.grant_at] if allowed and line else None)
