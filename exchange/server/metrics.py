"""The hub's metrics (Prometheus), and the HTTP port that serves them with liveness and readiness.

Each hub has its own registry (no process-wide state). Counters and histograms are fed by the
exchange service's observer and the audit group commit; gauges of the store's state (grants, share
requests and objections awaiting their owners, certificate expiry) are read when scraped, at most every
``STATE_SECONDS``. Label values are bounded and never a caller's text: departments, resources and providers
are members and catalog entries (a resource code the catalog does not hold is ``unknown``; an owning
department is the one the catalog names), outcomes, methods, kinds and reasons are fixed sets.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.records import AuditRecord
from exchange.models import Tally
from exchange.store import Store
from exchange.workdays import DUE_SOON_WORKING_DAYS, WorkCalendar

STATE_SECONDS = 15.0
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FAST = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05)


class HubMetrics:
    """Everything the hub measures, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exchanges = Counter(
            "exchange_exchanges_total",
            "Exchanges by consumer department, resource, call and outcome (ok, denied, failed, cancelled).",
            ["consumer_department", "resource", "method", "outcome"],
            registry=r,
        )
        # Each call's labelled children, resolved once (``labels`` costs a lock and a lookup on every call); the
        # label values are bounded sets (see above), and nothing here removes a child, so these stay exact.
        self._exchange_children: dict[tuple[str, str, str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._provider_children: dict[str, Histogram] = {}
        self.exchange_seconds = Histogram(
            "exchange_exchange_duration_seconds", "Time from a call's arrival to its final record.", ["method"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.decision_seconds = Histogram(
            "exchange_decision_duration_seconds", "Time the policy decision took.", buckets=_FAST, registry=r
        )
        self.provider_seconds = Histogram(
            "exchange_provider_call_duration_seconds", "Time a department's backend took to answer a query.",
            ["provider"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.provider_errors = Counter(
            "exchange_provider_errors_total", "Backend failures by provider and kind.", ["provider", "kind"], registry=r
        )
        self.streamed_bytes = Counter(
            "exchange_streamed_bytes_total", "Bytes of streams and documents sent to consumers.", ["resource"],
            registry=r,
        )  # fmt: skip
        self.audit_commit_seconds = Histogram(
            "exchange_audit_commit_duration_seconds", "Time a call waited for its audit record to commit.",
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.audit_batch = Histogram(
            "exchange_audit_batch_records", "Records per group-commit transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r,
        )  # fmt: skip
        self.audit_records = Counter(
            "exchange_audit_records_appended_total", "Audit records committed by group commit.", registry=r
        )
        self.subscription_changes = Counter(
            "exchange_subscription_changes_delivered_total",
            "Changes sent to subscription followers, by resource (a change sent again counts again).",
            ["resource"], registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "exchange_ready", "1 while the hub serves (the store and the audit log can be written), else 0.", registry=r
        )
        self.audit_intact = Gauge(
            "exchange_audit_log_intact",
            "1 while the stored audit log passes its check against its seals and newest signed checkpoint, else 0.",
            registry=r,
        )
        self.audit_checked = Gauge(
            "exchange_audit_log_checked_timestamp_seconds",
            "When the stored audit log last passed its whole check (Unix time).",
            registry=r,
        )
        self.masked_filter_refusals = Counter(
            "exchange_masked_filter_refusals_total",
            "Lookups filtered on a masked item that were refused, by consumer department, resource and reason "
            "(not_granted, misses_exhausted, enumeration).",
            ["consumer_department", "resource", "reason"],
            registry=r,
        )
        self.masked_filter_enumerations = Counter(
            "exchange_masked_filter_enumerations_total",
            "Lookups refused because several lookups on one masked pattern found nothing: someone guessing "
            "the hidden part of a masked value.",
            ["consumer_department", "resource"],
            registry=r,
        )
        self.audit_failures = Counter(
            "exchange_audit_write_failures_total",
            "Group commits that failed (their calls released nothing).",
            registry=r,
        )
        self.index_mismatches = Gauge(
            "exchange_audit_index_mismatches",
            "Differences between the audit search indexes and the verified records at the last check.",
            registry=r,
        )
        self.index_checked = Gauge(
            "exchange_audit_index_checked_timestamp_seconds",
            "When the audit search indexes were last checked against the verified records (Unix time).",
            registry=r,
        )
        self.calendar_assumed_years = Gauge(
            "exchange_calendar_assumed_years",
            "Years that a deadline reckoned today runs through and no holiday calendar covers (the chinesecalendar"
            " package nor calendar_file): counted Monday to Friday. 0 normally.",
            registry=r,
        )
        self.calendar_covered_through = Gauge(
            "exchange_calendar_covered_through_year",
            "The last year, from the current one on without a gap, that a holiday calendar covers"
            " (the current year minus 1 if it is not covered).",
            registry=r,
        )
        self.index_check_failures = Counter(
            "exchange_audit_index_check_failures_total",
            "Index checks that could not compare: the log itself did not verify, or the store failed.",
            registry=r,
        )
        self.forks = Counter(
            "exchange_federation_forks_total",
            "Forked checkpoints: a peer's that this hub's witness refused (seen_here), or this hub's that a peer's "
            "witness refused (refused_by_peer: this hub's log was shown inconsistently).",
            ["peer", "where"],
            registry=r,
        )

    # The exchange service's observer

    def recorded(self, record: AuditRecord, resource: str) -> None:
        """A committed exchange record: final ones are counted (an "allowed" opening record is not final).

        ``resource`` is the catalog code the record names, or ``unknown`` (never the code as the caller sent it);
        the department is the caller's registered one; the method and outcome come from the hub's own sets.
        """
        if record.kind != "exchange" or record.outcome == "allowed":
            return
        method = record.action.removesuffix("_end")
        key = (record.actor_department, resource, method, record.outcome)
        counted = self._exchange_children.get(key)
        if counted is None:
            counted = self._exchange_children[key] = self.exchanges.labels(*key)
        counted.inc()
        timed = self._duration_children.get(method)
        if timed is None:
            timed = self._duration_children[method] = self.exchange_seconds.labels(method)
        timed.observe(record.latency_us / 1_000_000)
        if record.bytes:
            self.streamed_bytes.labels(resource).inc(record.bytes)

    def decided(self, seconds: float) -> None:
        self.decision_seconds.observe(seconds)

    def provider_answered(self, provider: str, seconds: float, error: str) -> None:
        timed = self._provider_children.get(provider)
        if timed is None:
            timed = self._provider_children[provider] = self.provider_seconds.labels(provider)
        timed.observe(seconds)
        if error:
            self.provider_errors.labels(provider, error).inc()

    def audit_waited(self, seconds: float) -> None:
        self.audit_commit_seconds.observe(seconds)

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None:
        """Labels are the caller's registered department and a catalog entry's code, never what it sent."""
        self.masked_filter_refusals.labels(department, resource, reason).inc()
        if reason == "enumeration":
            self.masked_filter_enumerations.labels(department, resource).inc()

    # The group commit's observer

    def batch_committed(self, records: int, failed: bool) -> None:
        if failed:
            self.audit_failures.inc()
            return
        self.audit_batch.observe(records)
        self.audit_records.inc(records)

    def audit_log_checked(self, intact: bool, at: float | None) -> None:
        self.audit_intact.set(1 if intact else 0)
        if at is not None:
            self.audit_checked.set(at)

    def fork_seen(self, peer: str, where: str) -> None:
        """A fork between this hub and ``peer``'s witnessing (``where``: seen_here, refused_by_peer)."""
        self.forks.labels(peer, where).inc()

    def calendar_checked(self, assumed_years: int, covered_through: int) -> None:
        self.calendar_assumed_years.set(assumed_years)
        self.calendar_covered_through.set(covered_through)

    def watch_state(
        self,
        store: Store,
        checkpoint_time: Callable[[], float | None],
        own_certificates: Callable[[], list[tuple[str, dt.datetime]]] = list,
        calendar: WorkCalendar | None = None,
    ) -> None:
        """Adds the gauges read from the store, the audit log and the hub's own certificates when scraped;
        ``calendar`` reckons which deadlines are due soon (Monday to Friday without one)."""
        self.registry.register(_StateCollector(store, checkpoint_time, own_certificates, calendar or WorkCalendar()))

    def subscription_delivered(self, resource: str, changes: int) -> None:
        self.subscription_changes.labels(resource).inc(changes)

    def watch_subscriptions(self, lag: Collector) -> None:
        """Adds the subscriptions' lag gauges (read from the store when scraped)."""
        self.registry.register(lag)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges of the store's state, read at most every STATE_SECONDS (a scrape must not load the store)."""

    def __init__(
        self,
        store: Store,
        checkpoint_time: Callable[[], float | None],
        own_certificates: Callable[[], list[tuple[str, dt.datetime]]],
        calendar: WorkCalendar,
    ) -> None:
        self._store = store
        self._calendar = calendar
        self._checkpoint_time = checkpoint_time
        self._own_certificates = own_certificates
        self._lock = threading.Lock()
        self._read_at = -STATE_SECONDS
        self._state: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        """Nothing: describing would read the store when the hub starts and keep that for STATE_SECONDS."""
        return []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= STATE_SECONDS:
                self._state = self._read()
                self._read_at = time.monotonic()
            state = list(self._state)
        age = GaugeMetricFamily("exchange_audit_checkpoint_age_seconds", "Seconds since the newest signed checkpoint.")
        signed = self._checkpoint_time()
        if signed is not None:
            age.add_metric([], time.time() - signed)
        return [*state, age]

    def _read(self) -> list[Metric]:
        today = dt.datetime.now(dt.UTC).date()
        grants, pending, overdue = self._store.rights.counts(today)
        by_state = GaugeMetricFamily("exchange_grants", "Grants by state.", labels=["state"])
        for state in ("active", "suspended", "revoked"):
            by_state.add_metric([state], grants.get(state, 0))
        waiting = GaugeMetricFamily("exchange_share_requests_pending", "Share requests awaiting their owner.")
        waiting.add_metric([], pending)
        late = GaugeMetricFamily(
            "exchange_share_requests_overdue", "Share requests awaiting their owner past the 10-working-day answer."
        )
        late.add_metric([], overdue)
        expiry = GaugeMetricFamily(
            "exchange_certificate_expiry_timestamp_seconds",
            "When each principal's latest unrevoked certificate expires (Unix time);"
            " hub/server and hub/ca/<fingerprint> are the hub's own.",
            labels=["principal"],
        )
        for principal, not_after in [*self._store.registry.certificate_expiries(), *self._own_certificates()]:
            expiry.add_metric([principal], not_after.timestamp())
        return [by_state, waiting, late, expiry, *self._awaiting_owners(today)]

    def _awaiting_owners(self, today: dt.date) -> list[Metric]:
        """Per owning department (codes the hub holds): share requests and objections awaiting its answer."""
        soon = self._calendar.add_working_days(today, DUE_SOON_WORKING_DAYS)
        requests = self._store.rights.awaiting_owners(today, soon)
        objections = self._store.objections.unanswered_by_owner(today, soon)
        return [
            _by_owner(
                GaugeMetricFamily(
                    "exchange_share_requests_due_soon",
                    "Share requests awaiting their owner whose answer is due within 2 working days (not yet overdue).",
                    labels=_OWNER,
                ),
                requests,
                lambda t: t.due_soon,
            ),
            _by_owner(
                GaugeMetricFamily(
                    "exchange_share_requests_overdue_by_owner",
                    "Share requests awaiting their owner past the 10-working-day answer, by owning department.",
                    labels=_OWNER,
                ),
                requests,
                lambda t: t.overdue,
            ),
            _by_owner(
                GaugeMetricFamily(
                    "exchange_objections_open",
                    "Objections to shared data awaiting the owning department's answer (open or escalated).",
                    labels=_OWNER,
                ),
                objections,
                lambda t: t.count,
            ),
            _by_owner(
                GaugeMetricFamily(
                    "exchange_objections_due_soon",
                    "Unanswered objections whose answer is due within 2 working days (not yet overdue).",
                    labels=_OWNER,
                ),
                objections,
                lambda t: t.due_soon,
            ),
            _by_owner(
                GaugeMetricFamily(
                    "exchange_objections_overdue",
                    "Unanswered objections past their answer deadline (objection_answer_working_days).",
                    labels=_OWNER,
                ),
                objections,
                lambda t: t.overdue,
            ),
        ]


_OWNER = ["owner_department"]


def _by_owner(family: GaugeMetricFamily, tallies: dict[str, Tally], value: Callable[[Tally], int]) -> Metric:
    """``family`` with one sample per owning department."""
    for department, tally in sorted(tallies.items()):
        family.add_metric([department], value(tally))
    return family


class MetricsServer:
    """GET /metrics (Prometheus text), /healthz (the process answers) and /readyz (200 only when serving)."""

    def __init__(self, metrics: HubMetrics, ready: Callable[[], bool], listen: str) -> None:
        host, _, port = listen.rpartition(":")
        handler = _handler(metrics, ready)
        self._server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: HubMetrics, ready: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
            elif self.path == "/healthz":
                self._answer(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                serving = ready()
                self._answer(200 if serving else 503, b"ready\n" if serving else b"not serving\n", "text/plain")
            else:
                self._answer(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain")

        def _answer(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes are too frequent to log."""

    return Handler
