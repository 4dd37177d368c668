"""The hub's gRPC server: wiring, credentials, health, reflection, shutdown.

This is the only place (with the CLI) that puts the layers together: the
store, the CA, the services and their handlers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import grpc
from grpc_health.v1 import _async as health_aio  # the asyncio servicer that health.aio re-exports
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter

from adapters import factory
from adapters.hosts import HostPolicy
from audit.note import Verifier
from exchange import pki, tracing
from exchange.auditlog.batch import GroupCommitter
from exchange.auditlog.indexes import Difference, LogDoesNotVerify, check_index
from exchange.auditlog.integrator import Integrator
from exchange.auditlog.log import AuditLog
from exchange.bootstrap import load_audit_signer
from exchange.config import Settings
from exchange.console.app import build_app
from exchange.console.server import ConsoleServer
from exchange.console.web import Services
from exchange.errors import AuditTampered, ConfigError, ExchangeError, FieldViolation
from exchange.models import Binding, PrincipalKind, PrincipalRef, Resource
from exchange.server import federation, heap
from exchange.server.audit import AuditServicer
from exchange.server.catalog import CatalogServicer
from exchange.server.console import ConsoleServicer, console_base_url
from exchange.server.credentials import TlsFiles
from exchange.server.exchange import ExchangeServicer
from exchange.server.exchange import add_to_server as add_exchange_to_server
from exchange.server.federation_witness import WitnessedAge
from exchange.server.forwarding import forward_document, forward_query, forward_stream
from exchange.server.methods import MethodTable
from exchange.server.metrics import HubMetrics, MetricsServer
from exchange.server.objections import ObjectionServicer
from exchange.server.parsing import RequestParsing
from exchange.server.peers import FederationServicer
from exchange.server.receipts import CrossReceipts, Parts
from exchange.server.refusal_rate import RefusalRate
from exchange.server.refusals import RefusalLog
from exchange.server.registry import RegistryServicer
from exchange.server.rights import RightsServicer
from exchange.server.subscription_metrics import SubscriptionLag
from exchange.server.subscriptions import SubscriptionServicer
from exchange.server.tracing import RpcTracing
from exchange.services.audit import AuditReadService, ReportRules
from exchange.services.cache import Cache
from exchange.services.catalog import CatalogService
from exchange.services.console import ConsoleAccess, Lifetimes
from exchange.services.exchange import BackendPool, ExchangeService
from exchange.services.exchange.record import Recorder
from exchange.services.exchange.steps import Steps
from exchange.services.federation.catalog import FederatedCatalog
from exchange.services.federation.forwarding import Forwarding, HubSide
from exchange.services.objections import ObjectionService
from exchange.services.registry import CertificateAuthority, RegistryService
from exchange.services.rights import RightsService
from exchange.services.subscriptions import (
    Follower,
    FollowSettings,
    Poller,
    PollSettings,
    SubscriptionService,
    Terms,
)
from exchange.store import Store
from exchange.store.changes import FEDERATION_SYNC, ChangeListener
from exchange.store.registry import Holder
from exchange.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    console_pb2,
    console_pb2_grpc,
    exchange_pb2,
    federation_pb2,
    federation_pb2_grpc,
    objection_pb2,
    objection_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    rights_pb2,
    rights_pb2_grpc,
    subscription_pb2,
    subscription_pb2_grpc,
)
from exchange.workdays import ANSWER_WITHIN_WORKING_DAYS, NOTICE_LEAD_DAYS, WorkCalendar
from policy import Assignment, RightsPolicy, assignments_of
from policy.decision import DecisionPoint
from policy.quota import DailyQuota, holder_id

log = logging.getLogger(__name__)
# Differences an index check writes to the log one by one; the rest are counted.
INDEX_DIFFERENCES_LOGGED = 20
# At shutdown, how long the closing audit records of streams and documents cut short may take to commit.
CLOSING_RECORDS_SECONDS = 10.0
SERVICES = (
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    rights_pb2.DESCRIPTOR.services_by_name["RightsService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name,
    console_pb2.DESCRIPTOR.services_by_name["ConsoleService"].full_name,
    objection_pb2.DESCRIPTOR.services_by_name["ObjectionService"].full_name,
    subscription_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name,
    federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name,
)


@dataclass(frozen=True)
class ServerCredentials:
    ca: CertificateAuthority
    tls: grpc.ServerCredentials
    # The hub's own key and certificate, which it also presents to providers, and the trust bundle.
    # Read at start: providers see a renewed server certificate after the hub restarts.
    client: factory.ClientTls
    files: TlsFiles


def load_credentials(settings: Settings) -> ServerCredentials:
    """The CA (to sign CSRs) and the mutual-TLS credentials, from the hub's home; both follow their files."""
    files = TlsFiles(pki.HubFiles(settings.home, settings.ca_key_file))
    authority = CertificateAuthority(files.current_authority, files.trust_pem)
    key, cert, trust = files.server.value
    return ServerCredentials(authority, files.credentials(), factory.ClientTls(key, cert, trust), files)


def _load_subject_key(files: pki.HubFiles) -> bytes:
    try:
        return files.audit_subject_key.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{files.audit_subject_key} is missing: it is made by `exchange init`") from None


class Hub:
    """One hub process: a store, the services, and the gRPC server in front of them."""

    def __init__(
        self, settings: Settings, store: Store | None = None, span_exporter: SpanExporter | None = None
    ) -> None:
        """``span_exporter`` (tests) receives the spans in place of the OTLP collector, when tracing is on."""
        self.settings = settings
        # Built at start (its export thread with it) and shut down, flushing, at stop; off: a no-op tracer.
        self.tracing = tracing.off()
        self._span_exporter = span_exporter
        # Working days: the State Council's notices (chinesecalendar) with the operator's file over them;
        # read first, so that a bad file stops the hub before it opens anything.
        self.calendar = WorkCalendar.mainland(settings.calendar_file)
        self.store = store or Store(settings.effective_database_url)
        self.credentials = load_credentials(settings)
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.policy = RightsPolicy()
        # Daily quotas are counted hub-wide in the store, in blocks this process leases.
        self.decisions = DecisionPoint(quota=DailyQuota(self.store.counters, settings.quota_lease_calls))
        self.listener: ChangeListener | None = None
        self.audit = AuditLog(
            self.store.audit,
            load_audit_signer(settings),
            settings.audit_origin,
            checkpoint_seconds=settings.checkpoint_seconds,
            integrating=settings.audit_integrator == "thread",
        )
        # The integrator process (audit_integrator = "process"), started once the hub serves.
        self.integrator: Integrator | None = None
        self.committer: GroupCommitter | None = None
        self.exchanging: ExchangeService | None = None
        # The services, once built (in start): the gRPC handlers and the web console call the same ones.
        self.registry: RegistryService | None = None
        self.catalog: CatalogService | None = None
        # The catalog with the entries homed at other hubs (what ListResources and GetResource answer from).
        self.federated: FederatedCatalog | None = None
        self.rights: RightsService | None = None
        self.objections: ObjectionService | None = None
        self.subscriptions: SubscriptionService | None = None
        self.poller: Poller | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.auditing: AuditReadService | None = None
        self.console_access: ConsoleAccess | None = None
        self.console: ConsoleServer | None = None
        self.console_port = 0
        # Peering with other hubs and their catalogs (docs/federation.md); None: this hub does not federate.
        self.federation: federation.Federation | None = None
        self.refusals: RefusalLog | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._quota_task: asyncio.Task[None] | None = None
        self.metrics = HubMetrics()
        self.metrics_server: MetricsServer | None = None
        self.ready = False
        self._health_task: asyncio.Task[None] | None = None
        self._index_task: asyncio.Task[None] | None = None
        self._calendar_task: asyncio.Task[None] | None = None
        self.backend_context = factory.BackendContext(
            tls=self.credentials.client,
            document_roots=settings.effective_document_roots,
            default_timeout=settings.provider_timeout_seconds,
            forbidden_urls=(settings.effective_database_url,),
            hosts=HostPolicy(settings.backend_hosts, settings.allow_plain_http),
            allow_sqlite=settings.allow_sqlite_backends,
        )
        self.backends = BackendPool(
            lambda name, b, lane: factory.open_backend(name, b, replace(self.backend_context, lane=lane)),
            settings.backend_threads_per_department or max(1, settings.worker_threads // 2),
            settings.provider_timeout_seconds,
        )
        # What every call reads: certificate holders and catalog entries with their bindings.
        self.holders: Cache[str, Holder] = Cache()
        self.entries: Cache[str, tuple[Resource, Binding | None]] = Cache()
        self.store.on_commit.append(self._forget)

    def _forget(self, payload: str) -> None:
        """Drops what a committed change (of this process or another) makes stale."""
        kind = payload.partition(":")[0]
        if kind in {"principal", "certificate"}:
            self.holders.clear()
        elif kind == "resource":
            self.entries.clear()

    def _check_binding(self, binding: Binding, department_code: str) -> list[FieldViolation]:
        """A binding's problems, for the owning department: file roots are its own directories."""
        own = replace(
            self.backend_context,
            document_roots=tuple(root / department_code for root in self.backend_context.document_roots),
        )
        return factory.check(binding, own)

    def _build_server(self) -> grpc.aio.Server:
        """The gRPC server with every service; made inside the running event loop, which it binds to."""
        settings = self.settings
        policy = self.policy
        assert self.committer is not None
        rate = RefusalRate(settings.refusal_records_per_window, settings.refusal_window_seconds)
        self.refusals = refusals = RefusalLog(self.committer, rate)
        files = pki.HubFiles(settings.home)
        subject_key = _load_subject_key(files)  # keys data subjects in the log, and people's identity numbers
        registry = RegistryService(
            self.store,
            self.credentials.ca,
            policy,
            settings.certificate_days,
            holders=self.holders,
            identity_secret=subject_key,
        )
        options = [
            # Read a little past the limit, so the hub itself refuses (and records) a request just over it.
            ("grpc.max_receive_message_length", settings.max_message_bytes + settings.max_message_headroom_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Several worker processes share the port (exchange serve --workers); one alone must own it.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ]
        self.registry = registry
        self.console_access = ConsoleAccess(
            self.store.console,
            registry,
            Lifetimes(
                link=dt.timedelta(minutes=settings.console_link_minutes),
                idle=dt.timedelta(minutes=settings.console_idle_minutes),
                absolute=dt.timedelta(hours=settings.console_session_hours),
            ),
        )
        parsing = RequestParsing(registry, settings.insecure_dev, refusals, settings.max_message_bytes)
        # Tracing (an interceptor) outermost, so that its span also covers the requests refused while being read;
        # the parsing is applied by the table to each handler once, not by an interceptor per call.
        traced = [RpcTracing(self.tracing.tracer)] if self.tracing.enabled else None
        # One table of methods, not ~80 registered ones, each with a pending accept (exchange.server.methods).
        server = MethodTable(grpc.aio.server(options=options, interceptors=traced), wrap=parsing.reading)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(registry, registry, settings.insecure_dev, refusals), server
        )
        console_pb2_grpc.add_ConsoleServiceServicer_to_server(
            ConsoleServicer(
                self.console_access,
                lambda: console_base_url(settings, self.console_port),
                registry,
                settings.insecure_dev,
                refusals,
            ),
            server,
        )
        self.catalog = CatalogService(self.store, policy, self._check_binding)
        federated, peering, self.federation = federation.build(
            settings, self.store, policy, self.catalog, proofs=self.audit, forks=self.metrics
        )
        self.federated = federated
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self.catalog, registry, settings.insecure_dev, refusals, federated=federated), server
        )
        federation_pb2_grpc.add_FederationServiceServicer_to_server(
            FederationServicer(peering, self.federation, registry, settings.insecure_dev, refusals), server
        )
        self.rights = rights = RightsService(
            self.store,
            policy,
            self.calendar,
            settings.max_grant_days,
            decisions=self.decisions,
            miss_allowance=settings.masked_filter_misses_per_day,
        )
        if self.federation is not None:
            self.federation.serve_rights(rights, self.audit.signer)
        verifier = Verifier.parse(files.audit_verifier.read_text())
        if verifier.encode() != self.audit.signer.verifier().encode():
            raise ConfigError(f"{files.audit_verifier} is not the public key of {files.audit_key}")
        rules = ReportRules(self.calendar, settings.audit_retention_days, settings.objection_answer_working_days)
        self.auditing = auditing = AuditReadService(self.store, self.audit, policy, verifier, subject_key, rules=rules)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(
                auditing,
                registry,
                settings.insecure_dev,
                refusals,
                receipts=CrossReceipts(self.federation, Parts(self.store, self.audit, verifier), policy),
            ),
            server,
        )
        rights_pb2_grpc.add_RightsServiceServicer_to_server(
            RightsServicer(rights, registry, settings.insecure_dev, refusals, calendar=self.calendar), server
        )
        self.objections = ObjectionService(self.store, policy, self.calendar, settings.objection_answer_working_days)
        objection_pb2_grpc.add_ObjectionServiceServicer_to_server(
            ObjectionServicer(self.objections, registry, settings.insecure_dev, refusals), server
        )
        exchanging = ExchangeService(
            self.store,
            self.decisions,
            self.committer,
            self.backends,
            signer=self.audit.signer,
            subject_key=subject_key,
            entries=self.entries,
            observer=self.metrics,
            default_timeout=settings.provider_timeout_seconds,
            masked_misses_per_day=settings.masked_filter_misses_per_day,
            masked_pattern_misses=settings.masked_filter_pattern_misses,
            tracer=self.tracing.tracer if self.tracing.enabled else None,
        )
        forwarding = self._forwarding(exchanging, subject_key)
        add_exchange_to_server(ExchangeServicer(exchanging, registry, settings.insecure_dev, forwarding), server)
        self.exchanging = exchanging
        self._add_subscriptions(server, registry, subject_key)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    def _forwarding(self, exchanging: ExchangeService, subject_key: bytes) -> Forwarding | None:
        """Exchanges of entries homed at other hubs, forwarded along the peers (None: this hub does not federate)."""
        if self.federation is None:
            return None
        assert self.committer is not None
        recorder = Recorder(
            self.committer,
            self.audit.signer,
            subject_key,
            self.metrics,
            known=lambda code: False,  # a remote entry's code is no metric label of this hub
            lookup=lambda code: False,
            steps=Steps(None),
        )
        side = HubSide(
            self.settings.hub_code, self.settings.audit_origin, self.settings.federation_hop_limit, self.audit.signer
        )
        self.federation.forwarding = Forwarding(
            self.store,
            exchanging,
            recorder,
            side,
            peers=self.federation.peering.held,
            entries=self.federation.catalog.entries,
            send=partial(forward_query, self.federation),
            send_stream=partial(forward_stream, self.federation),
            send_document=partial(forward_document, self.federation),
        )
        return self.federation.forwarding

    def _add_subscriptions(self, server: grpc.aio.Server, registry: RegistryService, subject_key: bytes) -> None:
        """The subscription service, its follower and this process's poller (started with the hub)."""
        settings = self.settings
        assert self.committer is not None
        terms = Terms(
            self.store, self.decisions, self.backends, self.entries,
            default_timeout=settings.provider_timeout_seconds, clock=_now,
        )  # fmt: skip
        recorder = Recorder(
            self.committer, self.audit.signer, subject_key, self.metrics,
            known=lambda code: self.entries.peek(code) is not None, lookup=terms.held, steps=Steps(None),
        )  # fmt: skip
        batch, poll, lease = (
            settings.subscription_batch_size, settings.subscription_poll_seconds, settings.subscription_lease_seconds
        )  # fmt: skip
        follower = Follower(
            self.store, terms, recorder, FollowSettings(batch, poll, lease),
            clock=_now, delivered=self.metrics.subscription_delivered,
        )  # fmt: skip
        polls = PollSettings(holder_id(), batch, poll, lease, settings.subscription_retention_hours)
        self.poller = Poller(self.store, terms, polls, subject_key, clock=_now, appended=follower.appended)
        self.subscriptions = SubscriptionService(self.store, self.policy, terms, clock=_now)
        subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(
            SubscriptionServicer(self.subscriptions, follower, registry, settings.insecure_dev, self.refusals), server
        )

    def _resync(self) -> None:
        """Loads every member's roles and every live grant from the store, replacing what was held."""

        def every_assignment() -> list[Assignment]:
            return [a for member in self.store.registry.role_assignments() for a in assignments_of(*member)]

        self.holders.clear()
        self.entries.clear()
        self.policy.replace_roles(every_assignment)
        self.decisions.replace_all(self.store.rights.live_grants)

    def _apply_change(self, payload: str) -> None:
        """A change another hub process committed: a grant, a member's roles, a peering; or a sync round asked."""
        self._forget(payload)
        kind, _, key = payload.partition(":")
        if kind == "grant":
            self.decisions.refresh(key, self.store.rights.get_grant)
        elif kind == "principal":
            principal_kind, _, code = key.partition("/")
            ref = PrincipalRef(PrincipalKind(principal_kind), code)
            self.policy.refresh_roles(ref, lambda: assignments_of(*self.store.registry.roles_of(ref)))
        elif kind == "peer" and self.federation is not None:
            self.federation.peers_changed()  # the listener's trusted CAs, before the next handshake
        elif payload == FEDERATION_SYNC and self.federation is not None:
            self.federation.heard_sync()  # runs the round if this process holds the sync lock
        log.debug("applied policy change %s", payload)

    async def start(self) -> int:
        """Checks the store, binds the port and starts serving; returns the bound port."""
        if not self.store.db.is_current():
            raise ConfigError("the store's schema is not current: run `exchange migrate`")
        workers = ThreadPoolExecutor(self.settings.worker_threads, thread_name_prefix="hub-worker")
        asyncio.get_running_loop().set_default_executor(workers)
        if self.store.db.backend == "postgresql":
            self.listener = ChangeListener(self.store.db.url, self._apply_change, self._resync)
            await asyncio.to_thread(self.listener.start)
        else:
            self._resync()
        await asyncio.to_thread(self.audit.start)
        await asyncio.to_thread(self._beat_quota)  # registers this process before it serves (the rate's share)
        # No fixed wait for company (it was a call's p50 +1.1 ms at a few hundred calls a second): the records that
        # arrive while one commits form the next batch, and only under load does a turn wait (``gather``) for more.
        self.committer = GroupCommitter(
            self.store.audit,
            on_batch=self.metrics.batch_committed,
            halted=lambda: self.audit.broken,
            gather=self.settings.audit_gather_ms / 1000,
        )
        self.metrics.audit_log_checked(True, self.audit.checked_at)
        self.tracing = tracing.hub_tracing(self.settings, self._span_exporter)
        self.server = server = self._build_server()
        try:
            if self.settings.insecure_dev:
                log.warning(
                    "INSECURE DEVELOPMENT MODE: plaintext gRPC on %s, callers named by metadata, no certificates. "
                    "Never use this with real data.",
                    self.settings.listen,
                )
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, self.credentials.tls)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen}: the address is in use or not local")
        await server.start()
        if self.federation is not None:
            await self.federation.start()
        await self._set_serving(True)
        log.info("working days: %s", "; ".join(self.calendar.sources))
        self.check_calendar()  # before the metrics are served: their calendar gauges are set from here
        self._start_metrics()
        await self._start_console()
        self._health_task = asyncio.get_running_loop().create_task(self._watch_health())
        self._sweep_task = asyncio.get_running_loop().create_task(self._sweep_refusals())
        self._quota_task = asyncio.get_running_loop().create_task(self._quota_heartbeat())
        self._calendar_task = asyncio.get_running_loop().create_task(self._watch_calendar())
        if self.poller is not None:
            self._poll_task = asyncio.get_running_loop().create_task(self.poller.run())
        heap.settle()  # what start-up built is kept out of the collector's full scans (exchange/server/heap.py)
        if self.settings.audit_index_check_seconds > 0:
            self._index_task = asyncio.get_running_loop().create_task(self._watch_index())
        if not self.audit.integrating:  # last: a start that failed before leaves no process behind
            self.integrator = Integrator(self.settings, self.audit)
            await asyncio.to_thread(self.integrator.start)
        log.info("hub serving on port %d (store: %s)", self.port, self.store.db.backend)
        return self.port

    async def _start_console(self) -> None:
        """Serves the web console on console_listen, over the services the gRPC handlers use."""
        listen = self.settings.console_listen
        if not listen:
            return
        assert self.registry and self.catalog and self.rights and self.auditing and self.console_access
        assert self.objections
        services = Services(
            registry=self.registry,
            catalog=self.catalog,
            federated=self.federated,
            rights=self.rights,
            objections=self.objections,
            auditing=self.auditing,
            access=self.console_access,
            policy=self.policy,
            calendar=self.calendar,
            refusals=self.refusals,
            health=self.health_rows,
        )
        await asyncio.to_thread(self._prune_console)
        self.console = ConsoleServer(build_app(services, self.settings), listen, pki.HubFiles(self.settings.home))
        self.console_port = await self.console.start()
        log.info("web console on https://%s", listen.rpartition(":")[0] + f":{self.console_port}")

    def _prune_console(self) -> None:
        """Deletes sign-in links and console sessions that ended over a week ago (daily, and at start)."""
        try:
            gone = self.store.console.prune(dt.datetime.now(dt.UTC))
        except ExchangeError as e:
            log.warning("old console sessions could not be deleted: %s", e.message)
            return
        if gone:
            log.info("deleted %d console sign-in links and sessions over for a week", gone)

    def health_rows(self) -> list[tuple[str, str]]:
        """The hub's own state for the operator's health page: (name, value) rows."""
        return [
            ("serving", "yes" if self.ready else "no"),
            ("store", self.store.db.backend),
            ("audit_log_intact", "yes" if self.audit.broken is None else "no"),
            ("audit_log_checked_at", _utc(self.audit.checked_at)),
            ("audit_signed_at", _utc(self.audit.signed_at)),
            *(
                (f"certificate_expires:{name}", _utc(when.timestamp()))
                for name, when in self.credentials.files.expiries()
            ),
        ]

    def _start_metrics(self) -> None:
        listen = self.settings.metrics_listen
        if not listen:
            return
        self.metrics.watch_state(
            self.store, lambda: self.audit.signed_at, self.credentials.files.expiries, self.calendar
        )
        self.metrics.watch_subscriptions(SubscriptionLag(self.store))
        if self.federation is not None:
            self.metrics.registry.register(WitnessedAge(self.store))  # how fresh the peers' cosignatures are
            self.metrics.registry.register(federation.SyncHolder(self.federation.lock))  # whether it syncs here
        try:
            self.metrics_server = MetricsServer(self.metrics, lambda: self.ready, listen)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {listen}: {e.strerror}; set metrics_listen") from None
        self.metrics_server.start()
        log.info("metrics, /healthz and /readyz on port %d", self.metrics_server.port)

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)
        self.ready = serving
        self.metrics.ready.set(1 if serving else 0)

    def _writable(self) -> bool:
        """Whether the store takes a write, the audit log's last group commit went through and it is intact."""
        if self.audit.broken is not None:
            return False
        try:
            self.store.db.check_writable()
        except ExchangeError as e:
            log.warning("health: the store cannot be written: %s", e.message)
            return False
        if self.committer is not None and self.committer.failing:
            # The last group commit failed; with no traffic none would succeed to say otherwise, so probe.
            try:
                self.store.audit.probe()
            except ExchangeError as e:
                log.warning("health: the audit log's last commit failed and it still cannot be written: %s", e.message)
                return False
            self.committer.clear_failure()
            log.info("health: the audit log can be written again")
        return True

    def _check_audit_log(self) -> None:
        """The scheduled whole check of the stored audit log; a failure leaves the log broken (NOT_SERVING)."""
        try:
            self.audit.check()
        except AuditTampered:
            pass  # logged, and kept in self.audit.broken
        except ExchangeError as e:  # the store cannot be read now: the next round tries again
            log.warning("the audit log could not be checked: %s", e.message)
        self.metrics.audit_log_checked(self.audit.broken is None, self.audit.checked_at)

    async def _watch_health(self) -> None:
        """Reports NOT_SERVING while the store or the audit log cannot be written, or the log failed its
        check, SERVING again once they can (a broken log stays broken until an operator restarts)."""
        next_check = time.monotonic() + self.settings.audit_check_seconds
        while True:
            await asyncio.sleep(min(self.settings.health_check_seconds, self.settings.audit_check_seconds))
            if time.monotonic() >= next_check:
                await asyncio.to_thread(self._check_audit_log)
                next_check = time.monotonic() + self.settings.audit_check_seconds
            elif self.audit.broken is not None:
                self.metrics.audit_log_checked(False, self.audit.checked_at)
            writable = await asyncio.to_thread(self._writable)
            if writable != self.ready:
                log.warning("health: %s", "SERVING again" if writable else "NOT_SERVING")
                await self._set_serving(writable)

    async def _sweep_refusals(self) -> None:
        """Writes the counts of refusals past the per-caller bound as their windows close."""
        every = min(max(self.settings.refusal_window_seconds / 4, 1.0), 15.0)
        while self.refusals is not None:
            await asyncio.sleep(every)
            self.refusals.sweep()

    def _beat_quota(self) -> None:
        """One quota heartbeat: this process's holder record lives three beats on the store's clock."""
        self.decisions.quota.beat(3 * self.settings.quota_heartbeat_seconds)

    async def _quota_heartbeat(self) -> None:
        """Beats every quota_heartbeat_seconds; a missed beat is logged (parked calls wait, free ones are used)."""
        while True:
            await asyncio.sleep(self.settings.quota_heartbeat_seconds)
            try:
                await asyncio.to_thread(self._beat_quota)
            except ExchangeError as e:
                log.warning("quota heartbeat failed: %s", e.message)

    def _give_back_quota(self) -> None:
        """Returns the quota this process leased and did not use; if the store cannot take it, it stays used."""
        try:
            self.decisions.quota.release_all()
        except ExchangeError as e:
            log.warning("unused quota could not be given back (it counts as used today): %s", e.message)

    def check_calendar(self, today: dt.date | None = None) -> tuple[int, ...]:
        """Logs and measures the years with no holiday calendar that deadlines reckoned ``today`` run through.

        Those years are counted Monday to Friday; the hub goes on answering, but says so: a warning here
        (at start and daily), the gauges ``exchange_calendar_assumed_years`` and
        ``exchange_calendar_covered_through_year``, and a note on each such due date. A warning also
        comes ``NOTICE_LEAD_DAYS`` ahead of a year that no calendar covers yet.
        """
        today = today or dt.datetime.now(dt.UTC).date()
        due = self.calendar.add_working_days(today, ANSWER_WITHIN_WORKING_DAYS)
        assumed = self.calendar.assumed_years(today, due)
        through = self.calendar.covered_through(today.year)
        self.metrics.calendar_checked(len(assumed), through)
        advice = (
            "add the State Council's notice for it to the calendar file (setting calendar_file, years and "
            "holidays; docs/operating.md) or upgrade the chinesecalendar package, then restart the hub"
        )
        if assumed:
            log.warning(
                "working days: %s in no holiday calendar: a request applied for today is due %s, counting Monday"
                " to Friday; %s (calendars: %s)",
                ", ".join(map(str, assumed)),
                due.isoformat(),
                advice,
                "; ".join(self.calendar.sources),
            )
        elif through < (today + dt.timedelta(days=NOTICE_LEAD_DAYS)).year:
            log.warning(
                "working days: no holiday calendar for %d yet: deadlines that reach into it will count Monday"
                " to Friday; %s (calendars: %s)",
                through + 1,
                advice,
                "; ".join(self.calendar.sources),
            )
        return assumed

    async def _watch_calendar(self) -> None:
        """Checks the calendar again just after each midnight (UTC, the day the hub reckons deadlines in)."""
        while True:
            now = dt.datetime.now(dt.UTC)
            tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(0, 0, 5), tzinfo=dt.UTC)
            await asyncio.sleep((tomorrow - now).total_seconds())
            self.check_calendar()
            await asyncio.to_thread(self._prune_console)

    async def _watch_index(self) -> None:
        """Checks the audit search indexes against the verified records every audit_index_check_seconds."""
        while True:
            await asyncio.sleep(self.settings.audit_index_check_seconds)
            await asyncio.to_thread(self.check_audit_index)

    def check_audit_index(self) -> None:
        """One check of the audit search indexes (no repair); the result goes to the metrics and the log."""
        logged: list[Difference] = []

        def found(difference: Difference) -> None:
            if len(logged) < INDEX_DIFFERENCES_LOGGED:
                logged.append(difference)
                log.error("audit search index: %s", difference)

        try:
            report = check_index(self.store, self.audit.signer.verifier(), found=found)
        except LogDoesNotVerify as e:
            self.metrics.index_check_failures.inc()
            log.error("audit search index not checked: %s", e.message)
            return
        except Exception:
            self.metrics.index_check_failures.inc()
            log.exception("audit search index check failed")
            return
        self.metrics.index_mismatches.set(report.differences)
        self.metrics.index_checked.set(time.time())
        if report.differences:
            log.error(
                "audit search index: %d differences in %d entries; `exchange audit check-index --repair` "
                "rewrites the indexes from the records",
                report.differences,
                report.entries_differing,
            )

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish within the grace period, then closes."""
        self._begin_stop()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        if self.console is not None:
            await self.console.stop()
        if self.federation is not None:
            await self.federation.stop()
        if self.exchanging is not None:  # closing records of streams cut short, before the committer stops
            await self.exchanging.finish(CLOSING_RECORDS_SECONDS)
        if self.refusals is not None:  # the counts of refusals past the bound, before the committer stops
            await self.refusals.close()
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        if self.committer is not None:
            await asyncio.to_thread(self.committer.close)
        if self.poller is not None:
            await asyncio.to_thread(self.poller.stop)
        await self.backends.aclose()
        await asyncio.to_thread(self._give_back_quota)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)

        # The integrator process's last round integrates and signs what the committer staged; if it could not
        # (dead, failed, stuck), this process does.
        if self.integrator is None or not await asyncio.to_thread(self.integrator.stop):
            await self._final_flush()
        self.store.close()
        await asyncio.to_thread(self.tracing.shutdown)  # the last spans exported
        log.info("hub stopped")

    def _begin_stop(self) -> None:
        """Not ready any more, background tasks cancelled, and the integrator told (one ending from now on ended
        with the hub: not restarted)."""
        self.ready = False
        if self.integrator is not None:
            self.integrator.hub_stopping()
        heap.release()
        self.metrics.ready.set(0)
        tasks = (self._health_task, self._sweep_task, self._index_task, self._quota_task, self._calendar_task)
        for task in (*tasks, self._poll_task):
            if task is not None:
                task.cancel()

    async def _final_flush(self) -> None:
        try:
            await asyncio.to_thread(self.audit.stop)
        except ExchangeError as e:  # the store is down or full: what was staged waits there, for the next start
            log.error("the final audit flush failed (%s); staged records are integrated when a hub next starts", e)


async def serve(settings: Settings, on_ready: Callable[[int], None] | None = None) -> None:
    """Runs a hub until SIGTERM or SIGINT, then shuts it down gracefully.

    ``on_ready`` is told the bound port once the hub serves (a worker tells its supervisor so).
    """
    hub = Hub(settings)
    await hub.start()
    if on_ready is not None:
        on_ready(hub.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutdown requested; finishing in-flight calls (grace %.1fs)", settings.shutdown_grace_seconds)
    await hub.stop()


def _utc(epoch: float | None) -> str:
    """A moment for the operator's health page, as ISO 8601 UTC ("" if it has not happened)."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
