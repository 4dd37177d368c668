"""The provider kit and the hub's gRPC adapter, over real mutual TLS on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from adapters import grpc_backend
from adapters.base import (
    Backend,
    BlockingDocument,
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Records,
    Row,
    checked_records,
)
from adapters.examples import housing
from adapters.factory import BackendContext, ClientTls
from adapters.grpc_backend import GrpcBackend
from adapters.provider import CHUNK_BYTES, Provider, ProviderDocument, ProviderQuery, serve
from exchange import models as m
from exchange import pki
from exchange.errors import ConfigError, NotFound
from exchange.v1 import data_pb2, provider_pb2, provider_pb2_grpc
from exchange.values import record_from_wire, to_wire
from tests.harness import HOUSING, identity_spec

SYSTEM = "zj-wqba"
BUYER = "350203198507154313"
CONTRACTS = identity_spec(
    code=housing.CONTRACTS,
    department=HOUSING.code,
    name="存量房买卖合同网签备案信息",
    data_items=(
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("property_address", "房屋坐落", m.FieldType.STRING),
        m.DataItem("seller_name", "出卖人姓名", m.FieldType.STRING),
        m.DataItem("buyer_name", "买受人姓名", m.FieldType.STRING),
        m.DataItem("buyer_id_number", "买受人证件号码", m.FieldType.STRING, filterable=True),
        m.DataItem("price", "成交价格（元）", m.FieldType.DECIMAL),
        m.DataItem("filed_on", "备案日期", m.FieldType.DATE),
    ),
)
TEXTS = identity_spec(
    code=housing.CONTRACT_TEXTS,
    department=HOUSING.code,
    name="房屋买卖合同文本",
    share_method=m.ShareMethod.DOCUMENT,
    data_items=(
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("document", "合同文本", m.FieldType.BYTES),
    ),
)
ALL_FIELDS = tuple(i.name for i in CONTRACTS.data_items)


@dataclass(frozen=True)
class Pki:
    hub: ClientTls  # the hub's certificate, as it presents it to providers
    system: ClientTls  # zj-wqba's certificate, used as a client: not the hub
    identity: Path  # zj-wqba's identity directory, for serving


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca_key, ca_cert = pki.create_ca("Test exchange CA")
    ca = pki.cert_pem(ca_cert)
    hub_key, hub_cert = pki.issue_server_certificate(ca_key, ca_cert, ("localhost",))
    system_key = pki.new_key()
    ref = m.PrincipalRef(m.PrincipalKind.SYSTEM, SYSTEM)
    system_cert = pki.sign_csr(ca_key, ca_cert, pki.make_csr(system_key, ref), ref, days=30)
    identity = tmp_path_factory.mktemp("pki") / SYSTEM
    pki.IdentityFiles(identity).write(system_key, pki.cert_pem(system_cert), ca)
    return Pki(
        hub=ClientTls(pki.key_pem(hub_key), pki.cert_pem(hub_cert), ca),
        system=ClientTls(pki.key_pem(system_key), pki.cert_pem(system_cert), ca),
        identity=identity,
    )


Serve = Callable[[Provider], int]


@pytest.fixture
def serving(certs: Pki) -> Iterator[Serve]:
    """Serves providers with zj-wqba's identity; stops them after the test."""
    servers: list[grpc.Server] = []

    def start(provider: Provider) -> int:
        server, port = serve(provider, "127.0.0.1:0", certs.identity, max_workers=4)
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None).wait()


class Blocking:
    """The hub's (async) gRPC backend driven from a test, one event loop per test: each call awaited to its end.

    Stream batches, which the backend leaves in wire form, are read back as rows, as the hub's shaping does.
    """

    def __init__(self, backend: Backend, runner: asyncio.Runner) -> None:
        self._backend = backend
        self._run = runner.run

    def fetch(self, request: FetchRequest) -> list[Row]:
        return self._run(self._backend.fetch(request))

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        batches = self._backend.stream(request, batch_size)
        try:
            while (batch := self._run(anext(batches, None))) is not None:
                yield [record_from_wire(r) for r in batch.items] if isinstance(batch, Records) else batch
        finally:
            self._run(batches.aclose())

    def document(self, request: FetchRequest) -> BlockingDocument:
        opened = self._run(self._backend.document(request))

        def chunks() -> Iterator[bytes]:
            while (data := self._run(anext(opened.chunks, None))) is not None:
                yield data

        def close() -> None:
            self._run(opened.chunks.aclose())
            self._run(opened.aclose())

        return BlockingDocument(opened.name, opened.media_type, opened.size, chunks(), close)

    def close(self) -> None:
        self._run(self._backend.aclose())


Connect = Callable[..., Blocking]


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


@pytest.fixture
def connect(certs: Pki, serving: Serve, runner: asyncio.Runner) -> Iterator[Connect]:
    """Makes the hub's backends for a port (as zj-wqba's, with the hub's certificate unless told); closes them."""
    backends: list[Blocking] = []

    def make(port: int, system: str = SYSTEM, tls: ClientTls | None = None) -> Blocking:
        backend = GrpcBackend("厦门市住房和建设局", f"127.0.0.1:{port}", system, tls or certs.hub)
        backends.append(Blocking(backend, runner))
        return backends[-1]

    yield make
    for backend in backends:
        backend.close()


def _request(**changes: object) -> FetchRequest:
    base = FetchRequest(CONTRACTS, {"buyer_id_number": BUYER}, ALL_FIELDS, 100, 5.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def _contract(n: int) -> Row:
    return {
        "contract_no": f"XM2026-{n:06d}",
        "property_address": f"思明区湖滨南路{n}号",
        "seller_name": "陈美玲",
        "buyer_name": "林志强",
        "buyer_id_number": BUYER,
        "price": Decimal(f"{n}.50"),
        "filed_on": dt.date(2026, 1, 1) + dt.timedelta(days=n % 300),
    }


def _listing(count: int) -> Provider:
    """A provider whose contracts function lists ``count`` contracts of the buyer asked for."""
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def contracts(q: ProviderQuery) -> Iterator[Row]:
        for n in range(count):
            row = _contract(n)
            if all(row.get(k) == v for k, v in q.filters.items()):
                yield row

    return provider


@pytest.fixture
def example(certs: Pki, tmp_path: Path) -> Iterator[int]:
    """The housing example provider, started in-process on a new SQLite database."""
    server, port = housing.start(certs.identity, f"sqlite:///{tmp_path / 'housing.db'}")
    yield port
    server.stop(grace=None).wait()


def test_the_example_provider_answers_with_typed_values(example: int, connect: Connect) -> None:
    backend = connect(example)
    rows = backend.fetch(_request(filters={"contract_no": "XM2026-000123"}))
    assert rows == [
        {
            "contract_no": "XM2026-000123",
            "property_address": "思明区湖滨南路88号2梯1203室",
            "seller_name": "陈美玲",
            "buyer_name": "林志强",
            "buyer_id_number": BUYER,
            "price": Decimal("3250000.00"),
            "filed_on": dt.date(2026, 3, 2),
        }
    ]
    only = backend.fetch(_request(filters={"contract_no": "XM2026-000124"}, fields=("price", "filed_on")))
    assert only == [{"price": Decimal("2180000.00"), "filed_on": dt.date(2026, 3, 5)}]
    assert backend.fetch(_request(filters={"contract_no": "' OR '1'='1"})) == []
    document = backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000123"}, fields=()))
    body = b"".join(document.chunks)
    assert (document.name, document.media_type, document.size) == ("XM2026-000123.pdf", "application/pdf", len(body))
    assert body.startswith(b"%PDF-1.4") and b"XM2026-000123" in body
    with pytest.raises(NotFound, match="document"):
        backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-999999"}, fields=()))


def test_a_table_refuses_filters_it_was_not_opened_for(certs: Pki, example: int) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _raw_fetch(certs, example, certs.hub, filters={"seller_name": "陈美玲"})
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "seller_name" in (refused.value.details() or "")


def test_limit_and_offset(example: int, serving: Serve, connect: Connect) -> None:
    backend = connect(serving(_listing(10)))
    rows = backend.fetch(_request(limit=3, offset=4, fields=("contract_no",)))
    assert rows == [{"contract_no": f"XM2026-{n:06d}"} for n in (4, 5, 6)]
    assert backend.fetch(_request(limit=5, offset=8, fields=("contract_no",))) == [
        {"contract_no": "XM2026-000008"},
        {"contract_no": "XM2026-000009"},
    ]
    table = connect(example)  # a table pages in SQL
    by_buyer = {"buyer_id_number": "350206199003082428"}
    assert table.fetch(_request(filters=by_buyer, limit=1, fields=("contract_no",))) == [
        {"contract_no": "XM2026-000124"}
    ]
    assert table.fetch(_request(filters=by_buyer, limit=1, offset=1, fields=("contract_no",))) == []


def test_a_stream_arrives_in_many_batches(serving: Serve, connect: Connect) -> None:
    backend = connect(serving(_listing(1234)))
    batches = list(backend.stream(_request(limit=0), batch_size=100))
    assert [len(b) for b in batches] == [100] * 12 + [34]
    assert [r for b in batches for r in b] == [_contract(n) for n in range(1234)]


def test_closing_a_stream_stops_the_providers_function(serving: Serve, connect: Connect) -> None:
    closed = threading.Event()
    produced = 0
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def endless(q: ProviderQuery) -> Iterator[Row]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield _contract(produced)
        finally:
            closed.set()

    stream = connect(serving(provider)).stream(_request(), batch_size=50)
    assert len(next(stream)) == 50
    stream.close()
    assert closed.wait(5)
    stopped_at = produced
    time.sleep(0.2)
    assert produced == stopped_at


def test_a_hanging_provider_times_out(serving: Serve, connect: Connect) -> None:
    noticed = threading.Event()
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def hangs(q: ProviderQuery) -> Iterator[Row]:
        yield from (_contract(n) for n in range(500) if q.filters.get("contract_no") is None)
        while q.active():
            time.sleep(0.01)
        noticed.set()

    backend = connect(serving(provider))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="住房和建设局"):
        backend.fetch(_request(filters={"contract_no": "XM2026-000001"}, timeout_seconds=0.5))
    assert time.monotonic() - started < 2
    assert noticed.wait(5)
    noticed.clear()
    stream = backend.stream(_request(timeout_seconds=0.5), batch_size=500)
    assert len(next(stream)) == 500  # the first batch comes; then nothing within the timeout
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        next(stream)
    assert 0.4 < time.monotonic() - started < 2
    assert noticed.wait(5)


def test_answers_outside_the_declaration_are_refused(certs: Pki, serving: Serve, connect: Connect) -> None:
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def cheap(q: ProviderQuery) -> list[Row]:
        return [{**_contract(1), "price": "cheap"}]

    with pytest.raises(ProviderContractError, match="price is str, not decimal"):
        connect(serving(provider)).fetch(_request())
    undeclared = data_pb2.Record(fields={"contract_no": to_wire("XM2026-000001"), "secret": to_wire("x")})
    with _rogue(certs, undeclared) as port, pytest.raises(ProviderContractError, match="secret"):
        connect(port).fetch(_request())
    malformed = data_pb2.Record(fields={"price": data_pb2.Value(decimal_value="1,000")})
    with _rogue(certs, malformed) as port, pytest.raises(ProviderContractError, match="malformed"):
        connect(port).fetch(_request())


_STREAMED = {"contract_no": m.FieldType.STRING, "price": m.FieldType.DECIMAL, "filed_on": m.FieldType.DATE}
_GOOD = {
    "contract_no": to_wire("XM2026-000001"),
    "price": to_wire(Decimal("1.50")),
    "filed_on": to_wire(dt.date(2026, 1, 2)),
}
_BAD_DATE = data_pb2.Value()
_BAD_DATE.date_value.year, _BAD_DATE.date_value.month, _BAD_DATE.date_value.day = 2026, 2, 30


@pytest.mark.parametrize(
    ("changes", "fault"),
    [
        ({}, None),
        ({"price": data_pb2.Value(), "filed_on": None}, None),  # null and absent values are allowed
        ({"price": to_wire(1)}, "record 1: price is not decimal"),
        ({"price": data_pb2.Value(decimal_value="1,000")}, "record 1: price is not a valid decimal"),
        ({"filed_on": _BAD_DATE}, "record 1: filed_on is not a valid date"),
        ({"secret": to_wire("x")}, "record 1 has a field not asked for: secret"),
        # the first fault in the declaration's order is named, before a field not asked for
        ({"secret": to_wire("x"), "filed_on": to_wire("x"), "price": to_wire(True)}, "record 1: price is not decimal"),
        ({"secret": to_wire("x"), "filed_on": _BAD_DATE}, "record 1: filed_on is not a valid date"),
    ],
)
def test_streamed_records_are_checked_against_the_declaration(
    changes: dict[str, data_pb2.Value | None], fault: str | None
) -> None:
    fields = {k: v for k, v in {**_GOOD, **changes}.items() if v is not None}
    records = [data_pb2.Record(fields=_GOOD), data_pb2.Record(fields=fields)]
    if fault is None:
        assert checked_records("P", _STREAMED, records) is records
        assert records[1] == data_pb2.Record(fields=fields)  # checking leaves the record as it was
    else:
        with pytest.raises(ProviderContractError, match=f"^the provider P answered outside its declaration: {fault}$"):
            checked_records("P", _STREAMED, records)


class _Rogue(provider_pb2_grpc.ProviderServiceServicer):
    """A provider written without the kit, answering one fixed record to anything."""

    def __init__(self, record: data_pb2.Record) -> None:
        self._record = record

    def Fetch(
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderBatch]:
        yield provider_pb2.ProviderBatch(records=[self._record])

    def Lookup(
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> provider_pb2.ProviderBatch:
        return provider_pb2.ProviderBatch(records=[self._record])

    def FetchDocument(
        self, request: provider_pb2.ProviderFetchRequest, context: grpc.ServicerContext
    ) -> Iterator[provider_pb2.ProviderChunk]:
        yield provider_pb2.ProviderChunk()

    def ListChanges(
        self, request: provider_pb2.ProviderChangesRequest, context: grpc.ServicerContext
    ) -> provider_pb2.ProviderChanges:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no changes here")


class _rogue:  # noqa: N801 - used as a context manager
    def __init__(self, certs: Pki, record: data_pb2.Record) -> None:
        files = pki.IdentityFiles(certs.identity)
        credentials = grpc.ssl_server_credentials(
            [(files.key.read_bytes(), files.cert.read_bytes())], files.ca.read_bytes(), require_client_auth=True
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(_Rogue(record), self._server)
        self._port = self._server.add_secure_port("127.0.0.1:0", credentials)

    def __enter__(self) -> int:
        self._server.start()
        return self._port

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait()


def test_a_failing_function_is_logged_not_passed_on(
    certs: Pki, serving: Serve, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def broken(q: ProviderQuery) -> list[Row]:
        raise RuntimeError("connection to 10.1.2.3 refused, password=hunter2")

    port = serving(provider)
    with caplog.at_level(logging.ERROR), pytest.raises(ProviderUnavailable) as caught:
        connect(port).fetch(_request())
    assert "hunter2" not in str(caught.value) and caught.value.__cause__ is None
    assert "hunter2" in caplog.text  # in the provider's own log
    with pytest.raises(grpc.RpcError) as raw:
        _raw_fetch(certs, port, certs.hub)
    assert raw.value.code() is grpc.StatusCode.INTERNAL
    assert "hunter2" not in (raw.value.details() or "")
    with pytest.raises(ProviderUnavailable):  # a resource this provider does not serve
        connect(port).fetch(_request(resource=replace(CONTRACTS, code="20301/350200000009")))


def test_functions_returning_the_wrong_kind_of_thing_fail_generically(
    certs: Pki, serving: Serve, connect: Connect
) -> None:
    provider = Provider()
    provider.records(CONTRACTS.code)(lambda q: None)  # type: ignore[type-var]
    provider.document(TEXTS.code)(lambda q: b"not a document")  # type: ignore[type-var]
    port = serving(provider)
    with pytest.raises(grpc.RpcError) as raw:
        _raw_fetch(certs, port, certs.hub)
    assert raw.value.code() is grpc.StatusCode.INTERNAL
    assert "NoneType" not in (raw.value.details() or "")
    with pytest.raises(ProviderUnavailable):
        connect(port).document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000123"}))


def _raw_fetch(
    certs: Pki, port: int, tls: ClientTls, code: str = CONTRACTS.code, filters: dict[str, object] | None = None
) -> list[provider_pb2.ProviderBatch]:
    """Calls Fetch directly, to see the status and message the provider sends."""
    wire = {k: to_wire(v) for k, v in (filters or {"buyer_id_number": BUYER}).items()}
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.certificate)
    options = [("grpc.ssl_target_name_override", pki.provider_hostname(SYSTEM))]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        request = provider_pb2.ProviderFetchRequest(resource_code=code, filters=wire, fields=["contract_no"], limit=5)
        return list(stub.Fetch(request, timeout=5))


def test_only_the_hub_may_call_a_provider(certs: Pki, serving: Serve, connect: Connect) -> None:
    port = serving(_listing(3))
    assert len(_raw_fetch(certs, port, certs.hub)[0].records) == 3
    with pytest.raises(grpc.RpcError) as refused:
        _raw_fetch(certs, port, certs.system)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(ProviderUnavailable):
        connect(port, tls=certs.system).fetch(_request())


def test_the_provider_must_hold_the_bound_systems_certificate(serving: Serve, connect: Connect) -> None:
    port = serving(_listing(3))
    assert len(connect(port).fetch(_request())) == 3
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="住房和建设局"):
        connect(port, system="sw-tax").fetch(_request())
    assert time.monotonic() - started < 4


def test_a_second_provider_on_a_port_in_use_is_refused(certs: Pki, serving: Serve) -> None:
    """Not sharing the port (gRPC's default on Linux): the hub's calls would go to either process."""
    port = serving(_listing(3))
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        serve(_listing(3), f"127.0.0.1:{port}", certs.identity)


def test_a_provider_that_is_down_is_unavailable(connect: Connect) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderUnavailable):
        connect(port).fetch(_request())
    with pytest.raises(ProviderUnavailable):
        list(connect(port).stream(_request(), 10))
    with pytest.raises(ProviderUnavailable):
        connect(port).document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000123"}))


def test_documents_arrive_in_chunks_and_closing_cancels(serving: Serve, connect: Connect) -> None:
    pieces = [b"%PDF-1.4\n", b"x" * (CHUNK_BYTES + 10), b"%%EOF\n"]
    closed = threading.Event()
    provider = Provider()

    @provider.document(TEXTS.code)
    def text(q: ProviderQuery) -> ProviderDocument | None:
        if q.filters.get("contract_no") == "XM2026-000123":
            return ProviderDocument("XM2026-000123.pdf", "application/pdf", sum(map(len, pieces)), iter(pieces))
        if q.filters.get("contract_no") == "XM2026-000125":
            return ProviderDocument("../../etc/passwd", "text/plain", 0, iter([b"x"]))
        if q.filters.get("contract_no") == "XM2026-000124":
            return ProviderDocument("big.bin", "application/octet-stream", 0, _endless_chunks(closed))
        return None

    backend = connect(serving(provider))
    document = backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000123"}, fields=()))
    chunks = list(document.chunks)
    assert b"".join(chunks) == b"".join(pieces) and len(chunks) == 4  # the big piece was split
    assert (document.name, document.media_type, document.size) == (
        "XM2026-000123.pdf",
        "application/pdf",
        len(b"".join(pieces)),
    )
    endless = backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000124"}, fields=()))
    assert next(endless.chunks) == b"0" * 1024
    endless.close()
    assert closed.wait(5)
    with pytest.raises(NotFound):
        backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000999"}, fields=()))
    with pytest.raises(ProviderContractError, match="file name"):
        backend.document(_request(resource=TEXTS, filters={"contract_no": "XM2026-000125"}, fields=()))


def _endless_chunks(closed: threading.Event) -> Iterator[bytes]:
    try:
        while True:
            yield b"0" * 1024
    finally:
        closed.set()


@pytest.mark.parametrize(
    ("options", "tls", "expected"),
    [
        ({"target": "zj.example:7443", "system_code": SYSTEM}, True, []),
        ({"system_code": SYSTEM}, True, ["binding.target: is required"]),
        ({"target": "zj.example", "system_code": SYSTEM}, True, ["binding.target: must be host:port"]),
        ({"target": "zj.example:0", "system_code": SYSTEM}, True, ["binding.target: must be host:port"]),
        ({"target": "zj.example:70000", "system_code": SYSTEM}, True, ["binding.target: must be host:port"]),
        ({"target": "zj.example:7443"}, True, ["binding.system_code: is required"]),
        ({"target": "zj.example:7443", "system_code": "ZJ WQBA"}, True, ["binding.system_code: 'ZJ WQBA' is not"]),
        ({"target": "zj.example:7443", "system_code": SYSTEM}, False, ["binding: the hub has no client certificate"]),
    ],
)
def test_check_reports_bad_options(certs: Pki, options: dict[str, object], tls: bool, expected: list[str]) -> None:
    context = BackendContext(tls=certs.hub if tls else None)
    found = [f"{v.field}: {v.description}" for v in grpc_backend.check(options, context)]
    assert len(found) == len(expected)
    assert all(f.startswith(e) for f, e in zip(found, expected, strict=True))


def test_open_makes_a_backend_from_a_binding(certs: Pki, serving: Serve, runner: asyncio.Runner) -> None:
    port = serving(_listing(2))
    binding = m.Binding(CONTRACTS.code, m.BackendKind.GRPC, {"target": f"127.0.0.1:{port}", "system_code": SYSTEM})
    backend = Blocking(grpc_backend.open("厦门市住房和建设局", binding, BackendContext(tls=certs.hub)), runner)
    assert len(backend.fetch(_request())) == 2
    backend.close()
    with pytest.raises(ProviderUnavailable):  # no client certificate to present
        grpc_backend.open("厦门市住房和建设局", binding, BackendContext())


class _raw_rogue:  # noqa: N801 - used as a context manager
    """A provider written without the kit whose Fetch sends the given bytes as its messages, whatever they are."""

    def __init__(self, certs: Pki, messages: list[bytes]) -> None:
        files = pki.IdentityFiles(certs.identity)
        credentials = grpc.ssl_server_credentials(
            [(files.key.read_bytes(), files.cert.read_bytes())], files.ca.read_bytes(), require_client_auth=True
        )

        def fetch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield from messages

        handler = grpc.unary_stream_rpc_method_handler(fetch)  # no serializers: bytes as they are
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("exchange.v1.ProviderService", {"Fetch": handler}),)
        )
        self._port = self._server.add_secure_port("127.0.0.1:0", credentials)

    def __enter__(self) -> int:
        self._server.start()
        return self._port

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait()


def _batch_bytes(*numbers: int) -> bytes:
    records = [data_pb2.Record(fields={"contract_no": to_wire(f"XM2026-{n:06d}")}) for n in numbers]
    return provider_pb2.ProviderBatch(records=records).SerializeToString()


@pytest.mark.parametrize(
    ("bad", "fault"),
    [
        (b"\x0a\xff\xff\xff", "a batch is not a ProviderBatch"),  # a record's length beyond the message
        (b"\x0a\x02\xff\xff", "a record is not a valid Record"),  # framed as a record, not one inside
    ],
)
def test_a_stream_message_that_does_not_parse_fails_the_stream(
    certs: Pki, connect: Connect, bad: bytes, fault: str
) -> None:
    """Not an early, silent end of the stream: what was read before it is not the whole answer."""
    with _raw_rogue(certs, [_batch_bytes(1, 2), bad, _batch_bytes(3)]) as port:
        stream = connect(port).stream(_request(fields=("contract_no",)), batch_size=1)
        assert next(stream) == [{"contract_no": "XM2026-000001"}]
        assert next(stream) == [{"contract_no": "XM2026-000002"}]
        with pytest.raises(ProviderContractError, match=f"declaration: {fault}$"):
            next(stream)


def test_a_stream_message_with_a_field_the_hub_does_not_know_still_gives_its_records(
    certs: Pki, connect: Connect
) -> None:
    unknown = b"\x10\x07"  # field 2, a varint: a later version of ProviderBatch, say
    messages = [_batch_bytes(1, 2) + unknown, unknown + _batch_bytes(3)]
    with _raw_rogue(certs, messages) as port:
        batches = list(connect(port).stream(_request(fields=("contract_no",)), batch_size=2))
    assert batches == [[{"contract_no": f"XM2026-{n:06d}"} for n in (1, 2)], [{"contract_no": "XM2026-000003"}]]


def test_a_call_cut_by_closing_the_backend_fails_unavailable(
    serving: Serve, runner: asyncio.Runner, certs: Pki
) -> None:
    """Closing a backend (its binding replaced, the hub stopping) cancels its calls in gRPC; the call's caller,
    not cancelled itself, learns UNAVAILABLE at once rather than a cancellation it never made. A caller that
    is cancelled still sees its own cancellation."""
    release = threading.Event()
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def hangs(q: ProviderQuery) -> Iterator[Row]:
        while q.active() and not release.wait(0.05):
            pass
        return iter(())

    port = serving(provider)

    async def cut(ask: Callable[[GrpcBackend], Awaitable[object]]) -> BaseException:
        backend = GrpcBackend("厦门市住房和建设局", f"127.0.0.1:{port}", SYSTEM, certs.hub)
        call = asyncio.ensure_future(ask(backend))
        await asyncio.sleep(0.5)  # the call is in flight (the provider hangs for the timeout of 30 s)
        await backend.aclose()
        try:
            await asyncio.wait_for(call, 5)
        except BaseException as e:  # what the call raised is the result
            return e
        raise AssertionError("the call did not fail")

    async def streamed(backend: GrpcBackend) -> object:
        return [b async for b in backend.stream(_request(timeout_seconds=30), 10)]

    try:
        for ask in (lambda b: b.fetch(_request(timeout_seconds=30)), streamed):
            error = runner.run(cut(ask))
            assert isinstance(error, ProviderUnavailable) and "住房和建设局" in error.message, repr(error)

        async def cancelled() -> bool:
            backend = GrpcBackend("厦门市住房和建设局", f"127.0.0.1:{port}", SYSTEM, certs.hub)
            call = asyncio.ensure_future(backend.fetch(_request(timeout_seconds=30)))
            await asyncio.sleep(0.5)
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                return True
            finally:
                await backend.aclose()
            return False

        assert runner.run(cancelled())
    finally:
        release.set()
