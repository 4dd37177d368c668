"""Filtering on a masked item: a bounded verification of a value the consumer already holds.

A consumer that may filter on a masked ID number and holds its masked form (``350203********4313``)
could otherwise try every birth date that fits the check digit, about 2,257 of them, and learn the
whole number from the one that finds a record. So a lookup filtered on a masked item is reserved as
a miss before it reaches the backend, and given back if it finds a record: misses are limited per
grant and per consumer system each day, and several misses on one masked pattern (values that share
the visible parts, e.g. the first 6 and last 4 digits) stop lookups on that pattern for the day and
raise an alert. Patterns are kept only as keyed hashes; the values looked up are never stored. The
counts are in the store, shared by every hub process and kept across restarts; a lookup that fails,
or a process that crashes, keeps its miss (the bound fails closed).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from audit.records import subject_hash
from exchange.errors import ResourceExhausted
from exchange.models import MaskKind
from exchange.store.counters import CountersStore, Counts, Verdict
from policy.masks import mask

log = logging.getLogger(__name__)


def grant_scope(grant_id: str) -> str:
    return f"grant:{grant_id}"


def system_scope(system_code: str) -> str:
    return f"system:{system_code}"


@dataclass(frozen=True)
class Lookup:
    """Who filters on which masked items, through which grant, on which resource."""

    grant_id: str
    system: str
    department: str
    resource: str
    # The masked items filtered on, with their masks and the values given.
    values: tuple[tuple[str, MaskKind, object], ...]


@dataclass(frozen=True)
class Ticket:
    """A reserved miss: given back if the lookup finds a record."""

    day: dt.date
    scopes: tuple[str, ...]


class Alerts(Protocol):
    """Told of each refused masked-filter lookup (``reason``: not_granted, misses_exhausted, enumeration)."""

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None: ...


class MaskedFilterGuard:
    """Bounds lookups filtered on masked items: misses per grant and system a day, and per masked pattern."""

    def __init__(
        self, counters: CountersStore, subject_key: bytes, misses_per_day: int, pattern_misses: int, alerts: Alerts
    ) -> None:
        self._counters = counters
        self._key = subject_key
        self._allowance = misses_per_day
        self._pattern_limit = pattern_misses
        self._alerts = alerts

    @property
    def allowance(self) -> int:
        return self._allowance

    def begin(self, lookup: Lookup, day: dt.date) -> Ticket:
        """Reserves a miss for ``lookup``, or refuses it (RESOURCE_EXHAUSTED) and counts the refusal."""
        mine = (grant_scope(lookup.grant_id), system_scope(lookup.system))
        patterns = self._patterns(lookup.values)
        limited = [(scope, self._allowance) for scope in mine]
        verdict = self._counters.reserve_miss(day, limited, patterns, self._pattern_limit)
        if verdict is Verdict.RESERVED:
            return Ticket(day, (*mine, *patterns))
        self._alerts.masked_filter_refused(lookup.department, lookup.resource, verdict.value)
        items = ", ".join(name for name, _, _ in lookup.values)
        if verdict is Verdict.ENUMERATION:
            log.warning(
                "masked-filter enumeration refused: system %s, grant %s, resource %s, item %s",
                lookup.system, lookup.grant_id, lookup.resource, items,
            )  # fmt: skip
            raise ResourceExhausted(
                f"{self._pattern_limit} lookups on {items} with the same visible parts found nothing today: "
                "guessing the masked part is refused until the next day (UTC), and the owner is alerted",
                "MASKED_FILTER_ENUMERATION",
            )
        raise ResourceExhausted(
            f"grant {lookup.grant_id} or system {lookup.system} has used its {self._allowance} lookups on masked "
            f"items that find nothing today; lookups filtered on {items} are refused until the next day (UTC)",
            "MASKED_FILTER_MISSES_EXHAUSTED",
        )

    def found(self, ticket: Ticket) -> None:
        """The lookup found a record: its reserved miss is given back."""
        self._counters.refund_miss(ticket.day, ticket.scopes)

    def not_granted(self, grant_id: str, system: str, department: str, resource: str, day: dt.date) -> None:
        """Counts a lookup refused because the grant does not let the masked item be filtered on."""
        self._alerts.masked_filter_refused(department, resource, "not_granted")
        self._counters.count_refusal(day, (grant_scope(grant_id), system_scope(system)))

    def usage(self, grant_id: str, day: dt.date) -> Counts:
        return self._counters.counts(grant_scope(grant_id), day)

    def _patterns(self, values: Sequence[tuple[str, MaskKind, object]]) -> list[str]:
        """The keyed hash of each value's visible parts (its masked form), by mask kind."""
        return [f"pattern:{subject_hash(self._key, f'{kind.value}:{mask(value, kind)}')}" for _, kind, value in values]
