"""Metrics of subscriptions: each active subscription's lag, read from the store when scraped.

``exchange_subscription_pending_changes`` counts the changes taken from the source and not acknowledged;
``exchange_subscription_lag_seconds`` is the age of the oldest of them (0 when none wait). Labels are the
subscription's id (made by the hub), its resource and consumer department (members and catalog entries).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exchange.errors import ExchangeError
from exchange.store import Store

# A scrape reads the store at most this often.
LAG_SECONDS = 15.0
_LABELS = ["subscription", "resource", "consumer_department"]


class SubscriptionLag(Collector):
    def __init__(self, store: Store, every: float = LAG_SECONDS) -> None:
        self._store = store
        self._every = every
        self._lock = threading.Lock()
        self._read_at = -every
        self._state: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._every:
                self._state = self._read()
                self._read_at = time.monotonic()
            return list(self._state)

    def _read(self) -> list[Metric]:
        pending = GaugeMetricFamily(
            "exchange_subscription_pending_changes",
            "Changes of an active subscription taken from the source and not yet acknowledged.",
            labels=_LABELS,
        )
        lag = GaugeMetricFamily(
            "exchange_subscription_lag_seconds",
            "Seconds since the oldest unacknowledged change of an active subscription was taken (0: none waits).",
            labels=_LABELS,
        )
        try:
            windows = self._store.subscriptions.lag()
        except ExchangeError:
            return self._state  # the store cannot answer now: the last reading stands
        now = dt.datetime.now(dt.UTC)
        for w in windows:
            labels = [w.id, w.resource_code, w.consumer_department]
            pending.add_metric(labels, w.pending)
            lag.add_metric(labels, (now - w.oldest_pending_at).total_seconds() if w.oldest_pending_at else 0.0)
        return [pending, lag]
