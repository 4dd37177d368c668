"""The exchange through each kind of backend, end to end over mutual TLS: gRPC provider, REST endpoint, file store.

Covers the large stream with a slow consumer (flow control holds the provider back), a consumer
that cancels (the provider stops), a provider that hangs or answers outside its declaration, and
documents with their digest; the SQL backend is covered in test_exchange.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import grpc
import pytest
from sqlalchemy import create_engine, text

from adapters.provider import Provider, ProviderDocument, ProviderQuery, serve
from exchange import models as m
from exchange import values
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import rights_pb2 as rpb
from tests.exchange_world import PURPOSE, World, fails, make_world, query
from tests.harness import HOUSING, POLICE, RunningHub, identity_spec, violations

CONTRACTS = "20301/350200000001"
TEXTS = "20301/350200000002"
PAYERS = "10101/350200000003"
BULK = 50_000  # records of about 1 KiB: 50 MiB
TEXT = "合" * 340  # 1020 bytes of UTF-8


def _contracts_spec() -> m.ResourceSpec:
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("batch", "批次", m.FieldType.STRING, filterable=True),
        m.DataItem("buyer_id_number", "买受人证件号码", m.FieldType.STRING, personal_information=True),
        m.DataItem("price", "成交价格", m.FieldType.DECIMAL),
        m.DataItem("text", "条款", m.FieldType.STRING),
    )
    return identity_spec(CONTRACTS, HOUSING.code, data_items=items, name="存量房买卖合同")


class Housing:
    """The housing department's provider, with hooks to watch what the hub made it do."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = threading.Event()
        self.hang = threading.Event()
        self.garbage = False
        self.provider = Provider()
        self.provider.records(CONTRACTS)(self.contracts)
        self.provider.document(TEXTS)(self.text)

    def contracts(self, q: ProviderQuery) -> Iterator[dict[str, object]]:
        if self.hang.is_set():
            time.sleep(30)
        if q.filters.get("batch") == "bulk":
            return self._bulk()
        price: object = "not a number" if self.garbage else Decimal("3250000.00")
        row = {"contract_no": q.filters.get("contract_no"), "buyer_id_number": "350203198507154313", "price": price}
        return iter([{**row, "text": "第一条"}])

    def _bulk(self) -> Iterator[dict[str, object]]:
        self.produced = 0
        try:
            for n in range(BULK):
                self.produced += 1
                yield {"contract_no": f"XM{n:08d}", "buyer_id_number": "350203198507154313", "text": TEXT}
        finally:
            self.closed.set()

    def text(self, q: ProviderQuery) -> ProviderDocument | None:
        if q.filters.get("contract_no") != "XM2026-000123":
            return None
        pieces = [b"%PDF-1.4\n", b"x" * (3 << 20), b"%%EOF\n"]
        return ProviderDocument("XM2026-000123.pdf", "application/pdf", sum(map(len, pieces)), iter(pieces))


@pytest.fixture
def world(hub: RunningHub) -> World:
    return make_world(hub)


@pytest.fixture
def provider(world: World) -> Iterator[Housing]:
    housing = Housing()
    identity = world.hub.add_system("zj-wqba", HOUSING.code)
    server, port = serve(housing.provider, "127.0.0.1:0", identity)
    world.publish("housing", _contracts_spec())
    binding = cpb.Binding(
        resource_code=CONTRACTS,
        grpc=cpb.GrpcBackend(target=f"127.0.0.1:{port}", system_code="zj-wqba"),
        timeout_seconds=2,
    )
    world.bind("housing", binding)
    masks = (("buyer_id_number", rpb.MASK_KIND_ID_NUMBER),)
    world.grant(CONTRACTS, ("contract_no", "batch", "buyer_id_number", "price", "text"), "housing", masks)
    yield housing
    server.stop(0).wait()


def _audit(world: World, exchange_id: str) -> list[dict[str, object]]:
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(exchange_id=exchange_id))
    return [json.loads(e.record) for e in found.entries]


def test_a_provider_must_be_a_system_of_the_owner(world: World, provider: Housing) -> None:
    world.hub.add_system("ga-rkxx", POLICE.code)
    for code, expected in (("ga-rkxx", "another department"), ("nobody", "is registered")):
        binding = cpb.Binding(resource_code=CONTRACTS, grpc=cpb.GrpcBackend(target="127.0.0.1:1", system_code=code))
        with world.hub.client(world.people["housing"]) as c, pytest.raises(grpc.RpcError) as info:
            c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="x"))
        assert expected in (info.value.details() or "")


def test_a_query_through_a_grpc_provider(world: World, provider: Housing) -> None:
    fields = ["contract_no", "buyer_id_number", "price"]
    answer = world.exchange().Query(query(CONTRACTS, {"contract_no": "XM2026-000123"}, fields), timeout=20)
    assert [values.record_from_wire(r) for r in answer.records] == [
        {"contract_no": "XM2026-000123", "buyer_id_number": "350203********4313", "price": Decimal("3250000.00")}
    ]


def test_fifty_mib_to_a_slow_consumer_and_the_provider_waits_for_it(world: World, provider: Housing) -> None:
    request = query(CONTRACTS, {"batch": "bulk"}, ["contract_no", "buyer_id_number", "text"], batch_size=500)
    stream = world.exchange().StreamQuery(request, timeout=120)
    batches = iter(stream)
    head = next(batches)
    received = len(head.records)
    assert {r.fields["buyer_id_number"].string_value for r in head.records} == {"350203********4313"}
    time.sleep(3)  # a slow consumer: the hub must not read the whole result meanwhile
    held_back = provider.produced
    size, last = 0, None
    for batch in batches:
        received += len(batch.records)
        size += batch.ByteSize()
        last = batch
    assert held_back < BULK // 2, f"the provider ran {held_back} records ahead of a consumer that read 500"
    assert received == BULK and last is not None and last.last and last.total_records == BULK
    assert size > 50 * 1000 * 1000
    records = _audit(world, last.exchange_id)
    assert [(r["action"], r["outcome"], r["rows"]) for r in records] == [
        ("stream", "allowed", 0),
        ("stream_end", "ok", BULK),
    ]


def test_a_consumer_that_cancels_stops_the_provider(world: World, provider: Housing) -> None:
    request = query(CONTRACTS, {"batch": "bulk"}, ["contract_no", "text"], batch_size=100)
    stream = world.exchange().StreamQuery(request, timeout=120)
    first = next(iter(stream))
    cast("grpc.Future[object]", stream).cancel()
    assert provider.closed.wait(15), "the provider kept producing after the consumer cancelled"
    assert provider.produced < BULK
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        outcomes = [(r["action"], r["outcome"]) for r in _audit(world, first.exchange_id)]
        if len(outcomes) == 2:
            break
        time.sleep(0.1)
    assert outcomes == [("stream", "allowed"), ("stream_end", "cancelled")]


def test_a_hanging_or_lying_provider_is_contained(world: World, provider: Housing) -> None:
    stub = world.exchange()
    ask = query(CONTRACTS, {"contract_no": "XM2026-000123"}, ["contract_no", "price"])
    provider.hang.set()
    started = time.monotonic()
    error = fails(grpc.StatusCode.DEADLINE_EXCEEDED, stub.Query, ask)
    assert time.monotonic() - started < 10 and HOUSING.code in (error.details() or "")
    provider.hang.clear()
    provider.garbage = True
    error = fails(grpc.StatusCode.FAILED_PRECONDITION, stub.Query, ask)
    assert "outside its declaration" in (error.details() or "") and "not a number" not in (error.details() or "")
    streamed = stub.StreamQuery(ask, timeout=20)
    error = fails(grpc.StatusCode.FAILED_PRECONDITION, lambda **_: streamed)
    assert "not a number" not in (error.details() or "")
    provider.garbage = False
    assert len(stub.Query(ask, timeout=20).records) == 1  # the hub stayed up and serves on


def test_a_document_from_a_grpc_provider(world: World, provider: Housing) -> None:
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("document", "合同文本", m.FieldType.BYTES),
    )
    spec = identity_spec(TEXTS, HOUSING.code, data_items=items, name="合同文本", share_method=m.ShareMethod.DOCUMENT)
    world.publish("housing", spec)
    with world.hub.client(world.people["housing"]) as c:
        target = c.call(c.catalog.GetBinding, cpb.GetBindingRequest(resource_code=CONTRACTS)).grpc
    world.bind("housing", cpb.Binding(resource_code=TEXTS, grpc=target))
    world.grant(TEXTS, ("contract_no", "document"), "housing")
    request = xpb.FetchDocumentRequest(resource_code=TEXTS, purpose=PURPOSE, filters={"contract_no": "XM2026-000123"})
    chunks = list(world.exchange().FetchDocument(request, timeout=20))
    data = b"".join(c.data for c in chunks)
    assert len(data) == (3 << 20) + 15 and chunks[-1].sha256 == hashlib.sha256(data).digest()
    assert chunks[0].info.media_type == "application/pdf" and chunks[0].info.size == len(data)
    missing = xpb.FetchDocumentRequest(resource_code=TEXTS, purpose=PURPOSE, filters={"contract_no": "XM404"})
    fails(grpc.StatusCode.NOT_FOUND, world.exchange().FetchDocument, missing)


def test_fifty_mib_from_a_front_end_database_to_a_slow_consumer(world: World, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bulk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE ht (contract_no TEXT, batch TEXT, buyer_id_number TEXT, text TEXT)"))
        rows = [{"n": f"XM{n:08d}", "t": TEXT} for n in range(BULK)]
        c.execute(text("INSERT INTO ht VALUES (:n, 'bulk', '350203198507154313', :t)"), rows)
    engine.dispose()
    world.publish("housing", _contracts_spec())
    world.bind("housing", cpb.Binding(resource_code=CONTRACTS, sql=cpb.SqlBackend(url=url, table="ht")))
    world.grant(CONTRACTS, ("contract_no", "batch", "text"), "housing")
    request = query(CONTRACTS, {"batch": "bulk"}, ["contract_no", "text"], batch_size=1000)
    batches = iter(world.exchange().StreamQuery(request, timeout=120))
    received = len(next(batches).records)
    time.sleep(2)  # a slow consumer
    size = 0
    for batch in batches:
        received += len(batch.records)
        size += batch.ByteSize()
    assert received == BULK and size > 50 * 1000 * 1000


def test_a_query_through_a_rest_endpoint(world: World) -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps({"data": [{"xm": "林志强", "sfzh": "350203198507154313", "je": 97500.5}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        items = (
            m.DataItem("name", "姓名", m.FieldType.STRING),
            m.DataItem("id_number", "证件号码", m.FieldType.STRING, filterable=True),
            m.DataItem("amount", "金额", m.FieldType.DECIMAL),
        )
        world.publish("police", identity_spec(PAYERS, POLICE.code, data_items=items, name="缴款人"))
        endpoint = cpb.HttpBackend(
            url=f"http://127.0.0.1:{server.server_address[1]}/payers",
            fields={"name": "xm", "id_number": "sfzh", "amount": "je"},
            records_key="data",
            parameters={"id_number": "sfzh"},
        )
        world.bind("police", cpb.Binding(resource_code=PAYERS, http=endpoint))
        world.grant(PAYERS, ("name", "id_number", "amount"), "police", (("name", rpb.MASK_KIND_NAME),))
        answer = world.exchange().Query(
            query(PAYERS, {"id_number": "350203198507154313"}, ["name", "amount"]), timeout=20
        )
        assert [values.record_from_wire(r) for r in answer.records] == [{"name": "林**", "amount": Decimal("97500.5")}]
        assert "sfzh=350203198507154313" in seen[0]
        streamed = world.exchange().StreamQuery(
            query(PAYERS, {"id_number": "350203198507154313"}, ["name", "amount"]), timeout=20
        )
        assert [len(b.records) for b in streamed] == [1, 0]
    finally:
        server.shutdown()


def test_documents_from_a_file_store_with_their_digest(world: World, tmp_path: Path) -> None:
    root = world.hub.settings.effective_document_roots[0] / HOUSING.code / "contracts"
    root.mkdir(parents=True)
    content = b"%PDF-1.4\n" + bytes(range(256)) * 5000  # 1.2 MiB: several chunks
    (root / "XM2026-000123.pdf").write_bytes(content)
    (tmp_path / "secret.txt").write_text("outside the store")
    items = (
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("document", "合同文本", m.FieldType.BYTES),
    )
    spec = identity_spec(TEXTS, HOUSING.code, data_items=items, name="合同文本", share_method=m.ShareMethod.DOCUMENT)
    world.publish("housing", spec)
    files = cpb.FileBackend(root=str(root.resolve()), name_template="{contract_no}.pdf")
    world.bind("housing", cpb.Binding(resource_code=TEXTS, files=files))
    world.grant(TEXTS, ("contract_no", "document"), "housing")
    stub = world.exchange()

    def fetch(number: str) -> list[xpb.DocumentChunk]:
        request = xpb.FetchDocumentRequest(resource_code=TEXTS, purpose=PURPOSE, filters={"contract_no": number})
        return list(stub.FetchDocument(request, timeout=20))

    chunks = fetch("XM2026-000123")
    data = b"".join(c.data for c in chunks)
    assert data == content and chunks[-1].sha256 == hashlib.sha256(content).digest()
    assert (chunks[0].info.name, chunks[0].info.media_type, chunks[0].info.size) == (
        "XM2026-000123.pdf",
        "application/pdf",
        len(content),
    )
    assert chunks[-1].total_bytes == len(content) and len(chunks) > 3
    for hostile in ("../../secret", "..", "a/b", "x\x00y"):
        request = xpb.FetchDocumentRequest(resource_code=TEXTS, purpose=PURPOSE, filters={"contract_no": hostile})
        fails(grpc.StatusCode.INVALID_ARGUMENT, stub.FetchDocument, request)
    fails(
        grpc.StatusCode.NOT_FOUND,
        stub.FetchDocument,
        xpb.FetchDocumentRequest(resource_code=TEXTS, purpose=PURPOSE, filters={"contract_no": "XM404"}),
    )
    police_files = world.hub.settings.effective_document_roots[0] / POLICE.code
    police_files.mkdir()
    for root in (tmp_path, police_files, police_files.parent):  # outside the hub's roots, or not the owner's own
        outside = cpb.Binding(resource_code=TEXTS, files=cpb.FileBackend(root=str(root), name_template="{contract_no}"))
        with world.hub.client(world.people["housing"]) as c, pytest.raises(grpc.RpcError) as info:
            c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=outside, reason="x"))
        assert "binding.root" in violations(info.value)  # type: ignore[arg-type]


def test_a_consumer_that_gives_up_on_a_slow_provider_is_still_recorded(world: World, provider: Housing) -> None:
    provider.hang.set()
    ask = query(CONTRACTS, {"contract_no": "XM2026-000123"}, ["contract_no"])
    fails(grpc.StatusCode.DEADLINE_EXCEEDED, world.exchange().Query, ask, timeout=0.5)  # the binding waits 2 s
    provider.hang.clear()

    def recorded() -> list[str]:
        world.hub.hub.audit.flush()
        with world.hub.client(world.people["auditor"]) as c:
            found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(actor="system/bdc-djxt"))
        return [json.loads(e.record)["outcome"] for e in found.entries]

    deadline = time.monotonic() + 10
    while "failed" not in recorded() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert recorded() == ["failed"]  # the provider's timeout, recorded after the consumer left
