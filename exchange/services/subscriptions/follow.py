"""Following: a subscription's pending changes sent to its one follower, batch by batch; acknowledgements.

A follower takes the subscription's reader lease (a second follower is refused while the first's lease
stands, so no change goes to two live readers) and starts after the last acknowledged sequence. Before each
batch the caller's certificate and the grant are asked again (suspended, revoked, expired, resource
suspended: the follow ends with the status that says why), the batch counts one call of the grant's daily
quota, and its audit record (subscription, items, masks, records, data subjects hashed) is committed before
the batch leaves. Changes dropped after the retention window are announced as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from audit.records import AuditRecord
from exchange.errors import (
    ExchangeError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from exchange.models import MaskKind, Principal, PrincipalKind
from exchange.services.auditing import now_text
from exchange.services.exchange.answers import Identify, new_exchange_id
from exchange.services.exchange.record import Recorder, refused, since
from exchange.services.subscriptions.terms import Terms, ask_of, require_id
from exchange.store import Store
from exchange.store.subscriptions import PendingChange, Subscription, SubscriptionStatus
from policy.decision import Decision, DenyReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One batch: its audit record's exchange id, its changes, and what the grant disclosed."""

    exchange_id: str
    changes: list[PendingChange]
    grant_id: str
    fields: tuple[str, ...]
    masks: tuple[tuple[str, MaskKind], ...]


@dataclass(frozen=True)
class Gap:
    """Changes not sent: dropped after the retention window, or (``remasked``) shaped with masks the grant now
    in force makes stricter, so that sending them would show more than it allows."""

    first: int
    last: int
    remasked: bool = False

    @property
    def message(self) -> str:
        why = (
            "were taken under masks the grant in force no longer allows"
            if self.remasked
            else "were dropped after the retention window"
        )
        return f"changes {self.first}..{self.last} {why}: re-read by query what they may have changed"


Part = Delivery | Gap


@dataclass(frozen=True)
class FollowSettings:
    batch_size: int
    poll_seconds: float
    lease_seconds: float


class Follower:
    def __init__(
        self, store: Store, terms: Terms, recorder: Recorder, settings: FollowSettings,
        *, clock: Callable[[], dt.datetime], delivered: Callable[[str, int], None],
    ) -> None:  # fmt: skip
        self._store = store
        self._terms = terms
        self._recorder = recorder
        self._settings = settings
        self._clock = clock
        self._delivered = delivered
        self._waiting: dict[str, asyncio.Event] = {}

    def appended(self, subscription_id: str) -> None:
        """The poller of this process appended changes: a follower waiting here looks at once."""
        event = self._waiting.get(subscription_id)
        if event is not None:
            event.set()

    async def follow(self, identify: Identify, subscription_id: str, size: int) -> AsyncGenerator[Part, None]:
        actor = await asyncio.to_thread(identify)
        sub = await asyncio.to_thread(self.owned, actor, subscription_id)
        holder = f"{uuid.uuid4().hex[:16]}"
        lease = dt.timedelta(seconds=self._settings.lease_seconds)
        take = self._store.subscriptions.take_reader
        await asyncio.to_thread(take, subscription_id, holder, self._clock(), lease)
        sent, size = sub.acknowledged_sequence, min(size or self._settings.batch_size, self._settings.batch_size)
        self._waiting[subscription_id] = event = asyncio.Event()
        # The lease is renewed in the background too: a consumer slow to take a batch keeps its place.
        keeper = asyncio.ensure_future(self._keep(subscription_id, holder, lease))
        try:
            while True:
                event.clear()
                # Read, not renewed, at each step (the keeper renews it): ``delivered`` refuses a follower that
                # lost its lease before any batch of it leaves.
                sub = await asyncio.to_thread(self._still_active, subscription_id)
                part = await self._next(identify, sub, holder, sent, size)
                if part is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), self._settings.poll_seconds)
                    continue
                yield part
                sent = part.last if isinstance(part, Gap) else part.changes[-1].sequence
        finally:
            keeper.cancel()
            self._waiting.pop(subscription_id, None)
            await asyncio.shield(asyncio.to_thread(self._store.subscriptions.release_reader, subscription_id, holder))

    def _still_active(self, subscription_id: str) -> Subscription:
        sub = self._store.subscriptions.get(subscription_id)
        if sub.status is not SubscriptionStatus.ACTIVE:
            raise FailedPrecondition(
                f"subscription {subscription_id} is {sub.status.value}: it delivers nothing",
                subscription_id,
                kind="SUBSCRIPTION_CANCELLED",
            )
        return sub

    async def _keep(self, subscription_id: str, holder: str, lease: dt.timedelta) -> None:
        """Renews the reader lease every third of its length while the follow lasts."""
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                await asyncio.to_thread(self._store.subscriptions.take_reader, subscription_id, holder, self._clock(),
                                        lease)  # fmt: skip
            except ExchangeError as e:  # the follow's own next step meets the same and ends with its status
                log.warning("subscription %s: the reader lease could not be renewed: %s", subscription_id, e.message)
                return

    async def _next(self, identify: Identify, sub: Subscription, holder: str, sent: int, size: int) -> Part | None:
        """The next part to send after ``sent``, recorded as delivered; None when there is nothing yet."""
        actor = await asyncio.to_thread(identify)  # a revoked or expired certificate ends the follow here
        await self._check(actor, sub, consume=False)
        if sub.dropped_through > sent:
            gap = Gap(sent + 1, sub.dropped_through)
            await asyncio.to_thread(self._store.subscriptions.delivered, sub.id, holder, gap.last)
            return gap
        changes = await asyncio.to_thread(self._store.subscriptions.pending, sub.id, sent, size)
        if not changes:
            return None
        began = now_text()  # the batch's record bears a time before its grant was asked: see _record
        decision = await self._check(actor, sub, consume=True)
        if decision is None:
            return None  # the grant's rate: the batch waits a moment
        changes, exposed = _within_masks(changes, decision, sub.fields)
        if exposed:
            gap = Gap(exposed[0].sequence, exposed[-1].sequence, remasked=True)
            await asyncio.to_thread(self._store.subscriptions.delivered, sub.id, holder, gap.last)
            return gap
        delivery = await self._record(actor, sub, decision, changes, began)
        await asyncio.to_thread(self._store.subscriptions.delivered, sub.id, holder, changes[-1].sequence)
        self._delivered(sub.resource_code, len(changes))
        return delivery

    async def _check(self, actor: Principal, sub: Subscription, *, consume: bool) -> Decision | None:
        """The grant's decision for the next batch (``consume``: by the grant as the store holds it now); a refusal
        is recorded and raised (the rate: None)."""
        decision = await asyncio.to_thread(self._terms.decide, actor.ref.code, actor.department_code, ask_of(sub),
                                           consume=consume, fresh=consume)  # fmt: skip
        if decision.allowed:
            return decision
        if decision.reason is DenyReason.RATE_LIMITED or (not consume and decision.reason in _QUOTA):
            return None if consume else decision
        error: ExchangeError = _refusal(sub, decision)
        record = self._opening(actor, sub, new_exchange_id())
        await self._recorder.append(refused(record, time.monotonic(), error))
        raise error.recorded_as(record.exchange_id)

    async def _record(
        self, actor: Principal, sub: Subscription, decision: Decision, changes: list[PendingChange], began: str
    ) -> Delivery:
        """Commits the batch's audit record (durably) before it may be sent. Its time is ``began``, taken before
        the grant was read from the store: so a batch sent is always recorded before a revocation's commit, even
        when it is sent after it (it was allowed by the grant as it stood then)."""
        started = time.monotonic()
        exchange_id = new_exchange_id()
        masks = tuple(m for m in decision.masks if m[0] in sub.fields)
        digest = hashlib.sha256(b"".join(c.payload for c in changes)).hexdigest()
        opening = self._opening(actor, sub, exchange_id)
        subjects = sorted({*opening.data_subjects, *(h for c in changes for h in c.subjects)})
        record = replace(
            opening,
            time=began,
            outcome="ok",
            grant=decision.grant_id,
            masks=[f"{f}={k.value}" for f, k in masks],
            rows=len(changes),
            bytes=sum(len(c.payload) for c in changes),
            response_sha256=digest,
            data_subjects=subjects,
            reason=f"subscription {sub.id}: changes {changes[0].sequence}..{changes[-1].sequence}",
            latency_us=since(started),
        )
        await self._recorder.append(record)
        return Delivery(exchange_id, changes, decision.grant_id, sub.fields, masks)

    def _opening(self, actor: Principal, sub: Subscription, exchange_id: str) -> AuditRecord:
        record = self._recorder.opening(actor, ask_of(sub), exchange_id, "subscription")
        return replace(record, subject=sub.id)

    # Acknowledging

    def acknowledge(self, actor: Principal, subscription_id: str, sequence: int) -> Subscription:
        """Forgets the changes up to ``sequence`` (blocking); refused after the grant was suspended or revoked."""
        sub = self.owned(actor, subscription_id)
        if sequence < 0:
            raise InvalidArgument.of([FieldViolation("sequence", "must be 0 or more: the last sequence received")])
        decision = self._terms.decide(actor.ref.code, actor.department_code, ask_of(sub), consume=False)
        if not decision.allowed and decision.reason not in _QUOTA:
            raise _refusal(sub, decision)
        return self._store.subscriptions.acknowledge(subscription_id, sequence, self._clock())

    def owned(self, actor: Principal, subscription_id: str) -> Subscription:
        """The subscription, if ``actor`` is the system that subscribed; another's and a missing one alike."""
        if actor.ref.kind is not PrincipalKind.SYSTEM:
            raise PermissionDenied(
                "only registered systems follow subscriptions; people use their department's system", "NOT_A_SYSTEM"
            )
        require_id(subscription_id)
        try:
            sub = self._store.subscriptions.get(subscription_id)
        except NotFound:  # a store that cannot answer is UNAVAILABLE, not a refusal: the follower retries
            sub = None
        if sub is None or str(actor.ref) != f"system/{sub.consumer_system}":
            raise PermissionDenied(
                f"{actor.ref} holds no subscription {subscription_id}: only the system that subscribed follows "
                "and acknowledges it",
                reason="NOT_SUBSCRIBER",
            )
        if sub.status.value != "active":
            raise FailedPrecondition(
                f"subscription {subscription_id} is {sub.status.value}: it delivers nothing", subscription_id,
                kind="SUBSCRIPTION_CANCELLED",
            )  # fmt: skip
        return sub


_QUOTA = frozenset({DenyReason.QUOTA_EXHAUSTED, DenyReason.RATE_LIMITED})


def _within_masks(
    changes: list[PendingChange], decision: Decision, fields: tuple[str, ...]
) -> tuple[list[PendingChange], list[PendingChange]]:
    """The leading changes shaped with masks the grant still allows, or else the leading ones it no longer does
    (an item masked now that was masked otherwise, or not at all, when the change was taken)."""
    now = {f: k.value for f, k in decision.masks if f in fields and k is not MaskKind.NONE}

    def exposed(change: PendingChange) -> bool:
        then = dict(m.partition("=")[::2] for m in change.masks)
        return any(then.get(f) != kind for f, kind in now.items())

    first = exposed(changes[0])
    run: list[PendingChange] = []
    for change in changes:
        if exposed(change) != first:
            break
        run.append(change)
    return ([], run) if first else (run, [])


def _refusal(sub: Subscription, decision: Decision) -> ExchangeError:
    """Why the grants no longer let ``sub`` deliver, naming the subscription."""
    reason = (decision.reason or DenyReason.NO_GRANT).value.upper()
    message = f"subscription {sub.id} delivers nothing now: {decision.message}"
    if decision.reason is DenyReason.QUOTA_EXHAUSTED:
        return ResourceExhausted(message + "; its changes wait, follow again once the quota resets", reason)
    return PermissionDenied(message, reason)
