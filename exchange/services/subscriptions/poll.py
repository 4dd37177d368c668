"""Polling: each active subscription's source is asked for the changes after its stored position.

Pollers run in every hub process, whether or not the consumer is connected; a poll lease in the store gives
each subscription to one process at a time (another takes it over once a dead process's lease expired). A
poll asks the grants first (nothing is fetched outside a grant), fetches at most ``batch_size`` changes,
shapes them (granted items only, masked) and appends them to the window with the new position in one
transaction, which also checks that the lease and the position still stand: a process killed between the
fetch and that commit left nothing behind, and the next poll fetches the same changes again.
Changes left unacknowledged past the retention window are dropped here too (the follower is told).
A round in which some source filled a whole page is followed at once by the next (a subscription behind its
source catches up at the speed of the source and the store, not one page per ``poll_seconds``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from audit.records import subject_hash
from exchange import values
from exchange.backend import Change
from exchange.errors import ExchangeError, Unavailable
from exchange.models import Resource
from exchange.services.subscriptions.terms import Terms, ask_of
from exchange.store import Store
from exchange.store.subscriptions import NewChange, Poll, Subscription
from policy.decision import Decision
from policy.masks import apply

log = logging.getLogger(__name__)
KINDS = frozenset({"upsert", "delete"})


@dataclass(frozen=True)
class PollSettings:
    holder: str
    batch_size: int
    poll_seconds: float
    lease_seconds: float
    retention_hours: float


class Poller:
    """Takes changes from the sources of the subscriptions this process holds the poll lease of."""

    def __init__(
        self,
        store: Store,
        terms: Terms,
        settings: PollSettings,
        subject_key: bytes,
        *,
        clock: Callable[[], dt.datetime],
        appended: Callable[[str], None],
    ) -> None:
        self._store = store
        self._terms = terms
        self._settings = settings
        self._subject_key = subject_key
        self._clock = clock
        self._appended = appended
        # Whether a source filled a whole page in the current round (more may be waiting there).
        self._behind = False
        # Rounds that ended in the wait of poll_seconds, since this poller began (what its tests count).
        self.waits = 0

    async def run(self) -> None:
        """Polls every poll_seconds until cancelled, at once again after a round that took a full page from a
        source; a failed round is logged and the next one tries again."""
        while True:
            self._behind = False
            try:
                await self.poll_once()
            except ExchangeError as e:
                log.warning("subscription poll failed: %s", e.message)
            except Exception:  # a bug must not end polling for every subscription of this process
                log.exception("subscription poll failed unexpectedly")
            if self._behind:
                await asyncio.sleep(0)  # others' turn on the loop, then the next page
                continue
            self.waits += 1
            await asyncio.sleep(self._settings.poll_seconds)

    def stop(self) -> None:
        """At a clean stop (blocking): this process's poll leases are given up for others to take at once."""
        try:
            self._store.subscriptions.release_polls(self._settings.holder)
        except ExchangeError as e:
            log.warning("subscription poll leases not given up (they expire by themselves): %s", e.message)

    async def poll_once(self) -> int:
        """One round over the subscriptions this process may poll; how many changes it appended."""
        lease = dt.timedelta(seconds=self._settings.lease_seconds)
        held = await asyncio.to_thread(
            self._store.subscriptions.claim_polls, self._settings.holder, self._clock(), lease
        )
        appended = 0
        for sub in held:
            try:
                appended += await self.poll(sub)
            except ExchangeError as e:
                log.warning("subscription %s: the source could not be polled: %s", sub.id, e.message)
            except Exception:  # a backend's own bug: logged here, never passed on; the next round tries again
                log.exception("subscription %s: the source failed unexpectedly", sub.id)
        await asyncio.to_thread(self.sweep)
        return appended

    async def poll(self, sub: Subscription) -> int:
        decision = await asyncio.to_thread(self._terms.standing, sub)
        if decision is None:
            return 0  # suspended, revoked, expired or the resource suspended: nothing is fetched
        resource, binding, backend = await asyncio.to_thread(self._terms.source, sub.resource_code)
        request = self._terms.change_request(
            resource, binding, ask_of(sub), sub.source_cursor, self._settings.batch_size
        )
        batch = await backend.changes(request)
        if not batch.changes and batch.cursor == sub.source_cursor:
            return 0
        matching = [c for c in batch.changes if _matches(c, request.filters)]
        shaped = [self._shaped(resource, sub, decision, c) for c in matching]
        poll = Poll(sub.id, self._settings.holder, sub.source_cursor)
        last = await asyncio.to_thread(self._store.subscriptions.append, poll, shaped, batch.cursor, self._clock())
        if len(batch.changes) >= request.limit:
            self._behind = True
        if last and shaped:
            self._appended(sub.id)
            return len(shaped)
        return 0

    def _shaped(self, resource: Resource, sub: Subscription, decision: Decision, change: Change) -> NewChange:
        if change.kind not in KINDS:
            raise Unavailable(
                f"the provider of department {resource.spec.department_code} ({resource.spec.code}) sent a change "
                f"of unknown kind; the subscription waits for a corrected source"
            )
        row = apply(change.row, sub.fields, decision.masks)
        identifying = [i.name for i in resource.spec.data_items if i.filterable and change.row.get(i.name) is not None]
        subjects = tuple(sorted({subject_hash(self._subject_key, str(change.row[n])) for n in identifying}))
        change_id = hashlib.sha256(f"{resource.spec.code}\x00{change.cursor}".encode()).hexdigest()[:32]
        masks = tuple(sorted(f"{f}={k.value}" for f, k in decision.masks if f in sub.fields))
        return NewChange(change_id, change.kind, values.record_to_wire(row).SerializeToString(), subjects, masks)

    def sweep(self) -> None:
        """Drops pending changes older than the retention window (their followers are told of the gap)."""
        before = self._clock() - dt.timedelta(hours=self._settings.retention_hours)
        dropped = self._store.subscriptions.drop_older(before)
        for subscription_id, through in dropped.items():
            log.warning(
                "subscription %s: changes up to %d were dropped unacknowledged after the retention window",
                subscription_id,
                through,
            )


def _matches(change: Change, filters: Mapping[str, object]) -> bool:
    """Whether a change is of a record the subscription's filters name: the hub checks what the source should
    have (a row that lacks a filtered item, a deletion's, is kept: the source chose it)."""
    return all(change.row.get(name, value) == value for name, value in filters.items())
