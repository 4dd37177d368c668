"""Tracing end to end: a real hub with an in-memory span exporter, a provider kit server with its own, one query.

``span_tree`` gathers what the exporters received into a tree per trace, so a test can check where a
span hangs (a step under the RPC, the provider's call under the step) by name.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.provider import Provider, ProviderQuery, serve
from exchange import models as m
from exchange import tracing
from exchange.logs import JsonFormatter
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from tests.exchange_world import World, fails, make_world, query
from tests.harness import HOUSING, base_settings, identity_spec, running_hub

CONTRACTS = "20301/350200000001"
CONTRACT_NO = "XM2026-000123"
BUYER_ID = "350203198507154313"
QUERY_SPAN = "exchange.v1.ExchangeService/Query"
LOOKUP_SPAN = "exchange.v1.ProviderService/Lookup"


@dataclass
class Node:
    """A span and the spans whose parent it is."""

    span: ReadableSpan
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.span.name

    def find(self, name: str) -> Node:
        """The first span named ``name`` in this subtree (depth first)."""
        found = self.find_all(name)
        assert found, f"no span {name!r} under {self.name!r}: {self.outline()}"
        return found[0]

    def find_all(self, name: str) -> list[Node]:
        own = [self] if self.name == name else []
        return own + [n for child in self.children for n in child.find_all(name)]

    def outline(self, depth: int = 0) -> str:
        return "\n" + "  " * depth + self.name + "".join(c.outline(depth + 1) for c in self.children)


def span_tree(*exporters: InMemorySpanExporter) -> list[Node]:
    """The spans the exporters hold, as trees: roots are spans whose parent none of them holds."""
    spans = [s for e in exporters for s in e.get_finished_spans()]
    nodes = {s.context.span_id: Node(s) for s in spans if s.context is not None}
    roots: list[Node] = []
    for node in sorted(nodes.values(), key=lambda n: n.span.start_time or 0):
        parent = node.span.parent
        if parent is not None and parent.span_id in nodes:
            nodes[parent.span_id].children.append(node)
        else:
            roots.append(node)
    return roots


def tree_of(name: str, *exporters: InMemorySpanExporter) -> Node:
    """The one tree whose root is named ``name`` (e.g. an RPC's span)."""
    trees = [t for t in span_tree(*exporters) if t.name == name]
    assert len(trees) == 1, f"{len(trees)} traces rooted at {name!r}: {[t.outline() for t in span_tree(*exporters)]}"
    return trees[0]


@dataclass
class Traced:
    world: World
    hub_spans: InMemorySpanExporter
    provider_spans: InMemorySpanExporter
    provider_tracing: tracing.Tracing

    def flush(self) -> None:
        assert self.world.hub.hub.tracing.flush()
        assert self.provider_tracing.flush()

    def hub_span(self, name: str) -> ReadableSpan:
        """The one span ``name`` of the hub, waited for: a call's span may end just after its caller has the
        status (an aborted call's status is on its way before the handler has unwound)."""
        until = time.monotonic() + 10
        while True:
            self.flush()
            found = [s for s in self.hub_spans.get_finished_spans() if s.name == name]
            if found or time.monotonic() > until:
                assert len(found) == 1, f"{len(found)} spans {name!r}"
                return found[0]
            time.sleep(0.05)


def _contracts(q: ProviderQuery) -> Iterator[dict[str, object]]:
    return iter([{"contract_no": q.filters.get("contract_no"), "buyer_id_number": BUYER_ID}])


def _serve_contracts(world: World, provider_tracing: tracing.Tracing | None) -> grpc.Server:
    """The housing department's provider of contracts, bound and granted to the registry's system."""
    provider = Provider()
    provider.records(CONTRACTS)(_contracts)
    identity = world.hub.add_system("zj-wqba", HOUSING.code)
    server, port = serve(
        provider, "127.0.0.1:0", identity, tracer=provider_tracing.tracer if provider_tracing else None
    )
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("buyer_id_number", "买受人证件号码", m.FieldType.STRING),
        m.DataItem("price", "成交价格", m.FieldType.DECIMAL),
    )
    world.publish("housing", identity_spec(CONTRACTS, HOUSING.code, data_items=items, name="存量房买卖合同"))
    target = cpb.GrpcBackend(target=f"127.0.0.1:{port}", system_code="zj-wqba")
    world.bind("housing", cpb.Binding(resource_code=CONTRACTS, grpc=target, timeout_seconds=5))
    world.grant(CONTRACTS, ("contract_no", "buyer_id_number"), "housing")
    return server


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    hub_spans, provider_spans = InMemorySpanExporter(), InMemorySpanExporter()
    provider_tracing = tracing.open_tracing("zj-wqba-provider", exporter=provider_spans)
    settings = base_settings(tmp_path / "hub", tracing="otlp")
    with running_hub(settings, span_exporter=hub_spans) as hub:
        world = make_world(hub)
        server = _serve_contracts(world, provider_tracing)
        try:
            yield Traced(world, hub_spans, provider_spans, provider_tracing)
        finally:
            server.stop(0).wait()
            provider_tracing.shutdown()


def _ask() -> xpb.QueryRequest:
    return query(CONTRACTS, {"contract_no": CONTRACT_NO}, ["contract_no", "buyer_id_number"])


@pytest.fixture
def exchange_log() -> Iterator[io.StringIO]:
    """The hub's JSON log lines of this test (the exchange's own line among them)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("exchange")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def _no_data_on(spans: list[ReadableSpan]) -> None:
    """No filter value, identity number or record content on any span (its name, attributes or events)."""
    assert spans
    for span in spans:
        events = [(e.name, dict(e.attributes or {})) for e in span.events]
        said = json.dumps([span.name, dict(span.attributes or {}), events], default=str, ensure_ascii=False)
        for secret in (CONTRACT_NO, BUYER_ID):
            assert secret not in said, f"{secret} on span {span.name}: {said}"


def test_a_query_is_one_trace_from_the_hub_to_the_provider(traced: Traced, exchange_log: io.StringIO) -> None:
    answer = traced.world.exchange().Query(_ask(), timeout=20)
    assert len(answer.records) == 1
    traced.flush()

    rpc = tree_of(QUERY_SPAN, traced.hub_spans, traced.provider_spans)
    span = rpc.span
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "exchange.v1.ExchangeService"
    assert attributes["rpc.method"] == "Query"
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attributes["exchange.id"] == answer.exchange_id
    assert span.status.status_code is not StatusCode.ERROR
    assert span.resource.attributes["service.name"] == "exchange-hub"

    # The provider's span: its own process's exporter, the hub's trace, under a span of the hub's.
    provider = rpc.find(LOOKUP_SPAN)
    assert provider.span in traced.provider_spans.get_finished_spans()
    assert provider.span.kind is SpanKind.SERVER
    assert provider.span.context.trace_id == span.context.trace_id
    hub_ids = {s.context.span_id for s in traced.hub_spans.get_finished_spans()}
    assert provider.span.parent is not None and provider.span.parent.span_id in hub_ids
    assert dict(provider.span.attributes or {})["exchange.id"] == answer.exchange_id
    assert dict(provider.span.attributes or {})["rpc.grpc.status_code"] == 0
    assert provider.span.resource.attributes["service.name"] == "zj-wqba-provider"
    _no_data_on([*traced.hub_spans.get_finished_spans(), *traced.provider_spans.get_finished_spans()])

    # The exchange's steps, in order, as children of the call's span; the provider's span under the fetch.
    steps = [c.name for c in rpc.children]
    assert steps == ["decide", "fetch", "mask", "audit.commit"], rpc.outline()
    assert rpc.find("fetch").children[0].span is provider.span
    assert dict(rpc.find("decide").span.attributes or {})["exchange.id"] == answer.exchange_id
    assert dict(rpc.find("audit.commit").span.attributes or {})["exchange.outcome"] == "ok"

    lines = [json.loads(line) for line in exchange_log.getvalue().splitlines()]
    logged = [line for line in lines if line.get("exchange_id") == answer.exchange_id]
    assert logged, f"no log line of exchange {answer.exchange_id}: {lines}"
    assert logged[-1]["trace_id"] == f"{span.context.trace_id:032x}"
    assert int(logged[-1]["span_id"], 16) in hub_ids


def test_a_stream_is_one_span_with_the_providers_stream_under_it(traced: Traced) -> None:
    batches = list(traced.world.exchange().StreamQuery(_ask(), timeout=20))
    exchange_id = batches[0].exchange_id
    assert exchange_id and batches[-1].last
    span = traced.hub_span("exchange.v1.ExchangeService/StreamQuery")
    attributes = dict(span.attributes or {})
    assert attributes["exchange.id"] == exchange_id
    assert attributes["rpc.grpc.status_code"] == 0
    rpc = tree_of(span.name, traced.hub_spans, traced.provider_spans)
    fetch = rpc.find("exchange.v1.ProviderService/Fetch")
    assert dict(fetch.span.attributes or {})["exchange.id"] == exchange_id
    # Decided, the opening record committed, a batch masked, the closing record committed.
    steps = [c.name for c in rpc.children if c.name != fetch.name]
    assert steps[:2] == ["decide", "audit.commit"] and steps[-1] == "audit.commit" and "mask" in steps, rpc.outline()
    _no_data_on([*traced.hub_spans.get_finished_spans(), *traced.provider_spans.get_finished_spans()])


def test_a_callers_trace_is_joined(traced: Traced) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    traced.world.exchange().Query(_ask(), timeout=20, metadata=metadata)
    span = traced.hub_span(QUERY_SPAN)
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id
    assert span.parent.is_remote


def test_a_refusal_has_its_status_and_exchange_id_on_the_span(traced: Traced) -> None:
    ask = query(CONTRACTS, {"contract_no": CONTRACT_NO}, ["contract_no", "price"])  # price was not granted
    error = fails(grpc.StatusCode.PERMISSION_DENIED, traced.world.exchange().Query, ask)
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RequestInfo()
    assert any(d.Unpack(info) for d in status.details)
    span = traced.hub_span(QUERY_SPAN)
    attributes = dict(span.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert attributes["exchange.id"] == info.request_id
    assert span.status.status_code is not StatusCode.ERROR  # the caller's doing, not a fault of the hub
    _no_data_on(list(traced.hub_spans.get_finished_spans()))


def test_tracing_off_makes_no_spans_and_no_exporter(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    with running_hub(base_settings(tmp_path / "hub"), span_exporter=exporter) as hub:
        make_world(hub)  # a dozen calls
        assert hub.hub.tracing.provider is None
        assert isinstance(hub.hub.tracing.tracer, trace.NoOpTracer)
        assert hub.hub.tracing.flush()
    assert exporter.get_finished_spans() == ()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_collector_does_not_break_calls(tmp_path: Path) -> None:
    settings = base_settings(tmp_path / "hub", tracing="otlp", tracing_endpoint=f"http://127.0.0.1:{_closed_port()}")
    with running_hub(settings) as hub:
        started = time.monotonic()
        world = make_world(hub)
        server = _serve_contracts(world, None)
        try:
            assert len(world.exchange().Query(_ask(), timeout=20).records) == 1
        finally:
            server.stop(0).wait()
        assert hub.hub.tracing.enabled
        assert time.monotonic() - started < 60
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 15, "the hub's stop waited too long on a collector that is not there"


def test_step_spans_hang_under_an_explicit_parent_in_an_executor_thread() -> None:
    exporter = InMemorySpanExporter()
    traced = tracing.open_tracing("steps", exporter=exporter)
    tracer = traced.tracer

    async def call() -> None:
        with tracing.step(tracer, "rpc"):
            parent = tracing.current_context()

            def work() -> None:  # run_in_executor does not carry contextvars: the parent is handed over
                with tracing.step(tracer, "fetch", parent=parent, resource="20301/350200000001"):
                    assert tracing.outgoing_headers()["traceparent"].startswith("00-")

            await asyncio.get_running_loop().run_in_executor(None, work)

    asyncio.run(call())
    with pytest.raises(ValueError, match="boom"), tracing.step(tracer, "mask"):
        raise ValueError("boom " + BUYER_ID)
    traced.shutdown()
    root = tree_of("rpc", exporter)
    fetch = root.find("fetch")
    assert dict(fetch.span.attributes or {}) == {"exchange.resource": "20301/350200000001"}
    (mask,) = [s for s in exporter.get_finished_spans() if s.name == "mask"]
    assert mask.status.status_code is StatusCode.ERROR and mask.status.description == "ValueError"
    assert mask.events == ()  # the exception's text is not recorded: it may quote data


def test_trace_context_in_and_out() -> None:
    assert tracing.outgoing_headers() == {}
    assert tracing.outgoing_metadata() == ()
    assert tracing.incoming_context(None) is None
    assert tracing.incoming_context([("traceparent", "not a traceparent")]) is None
    assert tracing.incoming_context([("x-other", "1")]) is None
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    context = tracing.incoming_context([("traceparent", sent), ("payload-bin", b"\x00")])
    assert context is not None
    assert tracing.outgoing_headers(context) == {"traceparent": sent}
    assert tracing.incoming_context({"Traceparent": sent}) is not None


def test_settings_turn_tracing_on(tmp_path: Path) -> None:
    settings = replace(base_settings(tmp_path), tracing="otlp", tracing_service_name="hub-xm", tracing_sample_ratio=0)
    exporter = InMemorySpanExporter()
    on = tracing.hub_tracing(settings, exporter)
    try:
        with tracing.step(on.tracer, "dropped"):
            pass  # a ratio of 0 keeps no trace started here
        joined = tracing.incoming_context([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
        with tracing.step(on.tracer, "kept", parent=joined):
            pass  # a caller's sampled trace is followed
    finally:
        on.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["kept"]
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "hub-xm"


def test_the_compose_file_offers_a_collector_the_hubs_can_point_at() -> None:
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    for name in ("otel-collector", "jaeger"):
        assert services[name]["profiles"] == ["tracing"], f"{name} starts only with --profile tracing"
    for name in ("hub-1", "hub-2"):
        env = services[name]["environment"]
        assert env["EXCHANGE_TRACING"] == "${TRACING:-off}"  # off unless asked for
        host, _, port = env["EXCHANGE_TRACING_ENDPOINT"].removeprefix("http://").partition(":")
        assert host in services and port in services[host]["expose"]
    mounted = services["otel-collector"]["volumes"][0].split(":")
    config = yaml.safe_load((deploy / mounted[0]).read_text(encoding="utf-8"))
    assert services["otel-collector"]["command"] == [f"--config={mounted[1]}"]
    pipeline = config["service"]["pipelines"]["traces"]
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert set(pipeline["receivers"]) <= set(config["receivers"])
    assert set(pipeline["processors"]) <= set(config["processors"])
    (exporter,) = pipeline["exporters"]
    jaeger_host, _, jaeger_port = config["exporters"][exporter]["endpoint"].partition(":")
    assert jaeger_host == "jaeger" and jaeger_port in services["jaeger"]["expose"]
