"""Exchanges across hubs: a county system queries a province resource through its own hub; the call is forwarded
county → city → province with signed statements, the province decides by its own grant, masks and signs the
answer, every hub checks that signature, and each hub records its hop with the others' exchange ids. Forged,
replayed, mismatched, expired, over-long and looping statements, an altered answer and a hub that is down are
refused with their status, logged and recorded."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, select, text

from audit import forwarded
from audit.forwarded import Forwarded
from audit.note import Signer
from exchange import errors
from exchange import models as m
from exchange import wire as w
from exchange.federation.model import Peer
from exchange.server.forwarding import forward_query
from exchange.services.federation.forwarding_parts import Part
from exchange.store import Store
from exchange.store.forwarding import KEEP_PAST_EXPIRY
from exchange.store.schema import AuditEntryRow, AuditStagedRow, ForwardedSeenRow
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from exchange.v1 import federation_pb2 as fpb_peers
from exchange.v1 import forwarding_pb2 as fpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import PROVINCE_MARKET, SIMING_MARKET, Node, hubs, peer_pair
from tests.harness import AUTHORITY, identity_spec, today

ENTRY = "10101/350000000001"
PURPOSE = "企业登记核查"
PERSON = "350203198001012345"
COMPANY = "91350203MA2Y000001"
SYSTEM = "sm-djxt"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """County ← city ← province, peered; the province's entry, bound and granted to the county's department,
    is catalogued at the county; the county's system is registered there."""
    with hubs(tmp_path, "county", "city", "province") as running:
        peer_pair(running["county"], running["city"])
        peer_pair(running["city"], running["province"])
        _serve_at_province(running["province"], tmp_path)
        grant_at_home(running["province"], ENTRY, ("name", "id_number", "address"), mask_name=True)
        for level in ("city", "county"):
            running[level].sync()
        county = running["county"]
        county.running.add_department(SIMING_MARKET)
        county.running.add_system(SYSTEM, SIMING_MARKET.code)
        yield running


def _serve_at_province(province: Node, root: Path) -> None:
    hub = province.running
    hub.add_department(PROVINCE_MARKET)
    url = f"sqlite:///{root / 'sj-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE qy (name TEXT, id_number TEXT, address TEXT)"))
        c.execute(text("INSERT INTO qy VALUES ('张三', :id, '厦门市思明区湖滨南路1号')"), {"id": PERSON})
        for name in ("李四", "王五"):  # two records of one company's people: a stream of two batches of one
            c.execute(text("INSERT INTO qy VALUES (:name, :id, '厦门市思明区')"), {"name": name, "id": COMPANY})
    engine.dispose()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
        m.DataItem("address", "住所", m.FieldType.STRING),
    )
    steward = hub.certifier(PROVINCE_MARKET.code)
    hub.publish(steward, identity_spec(ENTRY, PROVINCE_MARKET.code, data_items=items))
    with hub.client(steward) as c:
        binding = cpb.Binding(resource_code=ENTRY, sql=cpb.SqlBackend(url=url, table="qy"))
        c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入前置库"))


def grant_at_home(province: Node, entry: str, fields: tuple[str, ...], *, mask_name: bool = False) -> str:
    """TEST SEED, to be replaced by the cross-hub application (issue 15, item 3) once it lands: the province
    registers the county's department and system in its own registry, and the county's share request is made,
    approved and granted through the province's own services, as for a local consumer."""
    hub = province.running
    if SIMING_MARKET.code not in hub.certifiers:  # the first grant: the consumer side registered at the home
        hub.add_department(SIMING_MARKET)
        hub.add_system(SYSTEM, SIMING_MARKET.code)
        hub.add_person("sm-clerk", SIMING_MARKET.code, m.Role.CONSUMER)
        hub.add_person("fj-manager", AUTHORITY.code, m.Role.SHARE_MANAGER)
    clerk = hub.identity(m.PrincipalKind.PERSON, "sm-clerk")
    manager = hub.identity(m.PrincipalKind.PERSON, "fj-manager")
    app = m.Application(
        entry, "", (SYSTEM,), PURPOSE, "《市场主体登记管理条例》", fields, today(), today() + dt.timedelta(days=30), 100
    )
    with hub.client(clerk) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    masks = [rpb.FieldMask(field="name", mask=rpb.MASK_KIND_NAME)] if mask_name else []
    with hub.client(hub.certifier(PROVINCE_MARKET.code)) as c:
        c.call(c.rights.Approve, rpb.ApproveRequest(id=applied.id, masks=masks, reason="符合条件"))
    with hub.client(manager) as c:
        return str(c.call(c.rights.IssueGrant, rpb.IssueGrantRequest(request_id=applied.id)).id)


def _query(
    node: Node, fields: tuple[str, ...] = ("name", "address"), purpose: str = PURPOSE, provenance: bool = False
) -> xpb.QueryResponse:
    identity = node.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    with node.running.client(identity) as client:
        stub = exchange_pb2_grpc.ExchangeServiceStub(client.channel)
        filters = {"id_number": PERSON}
        request = xpb.QueryRequest(
            resource_code=ENTRY, purpose=purpose, filters=filters, fields=list(fields), provenance=provenance
        )
        return stub.Query(request, timeout=30)


def _refused(node: Node, code: grpc.StatusCode, **changes: Any) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        _query(node, **changes)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, f"{error.code()}: {error.details()}"
    return error


def exchanges(node: Node) -> list[dict[str, object]]:
    """The exchange records of a hub's audit log, staged or integrated, oldest first."""
    with node.running.hub.store.db.read() as s:
        texts = [*s.scalars(select(AuditEntryRow.record)), *s.scalars(select(AuditStagedRow.record))]
    records = [json.loads(t) for t in texts if t]
    return sorted((r for r in records if r["kind"] == "exchange"), key=lambda r: str(r["time"]))


def _origin(node: Node) -> str:
    return node.running.settings.audit_origin


def test_a_county_system_queries_a_province_resource_two_hops_away(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    answer = _query(county, provenance=True)
    assert [(r.fields["name"].string_value, r.fields["address"].string_value) for r in answer.records] == [
        ("张*", "厦门市思明区湖滨南路1号")  # masked at the province, as its grant says
    ]
    assert dict(answer.disclosure.masks) == {"name": "name"}

    (at_county,) = exchanges(county)
    at_city_in, at_city_out = exchanges(city)
    (at_province,) = exchanges(province)
    assert at_county["exchange_id"] == answer.exchange_id
    assert (at_county["hop"], at_county["peer_hub"], at_county["outcome"]) == ("out", _origin(city), "ok")
    assert at_county["peer_exchange_id"] == at_city_in["exchange_id"] == at_city_out["exchange_id"]
    assert (at_city_in["hop"], at_city_in["peer_hub"], at_city_in["peer_exchange_id"]) == (
        "in",
        _origin(county),
        answer.exchange_id,
    )
    assert (at_city_out["hop"], at_city_out["peer_hub"], at_city_out["outcome"]) == ("out", _origin(province), "ok")
    assert at_city_out["peer_exchange_id"] == at_province["exchange_id"]
    assert (at_province["hop"], at_province["peer_hub"], at_province["peer_exchange_id"]) == (
        "in",
        _origin(city),
        at_city_in["exchange_id"],
    )
    assert (at_province["outcome"], at_province["masks"], at_province["rows"]) == ("ok", ["name=name"], 1)
    assert (at_province["actor"], at_province["actor_department"]) == (f"system/{SYSTEM}", SIMING_MARKET.code)
    statement = Forwarded.parse(str(at_province["forwarded"]).split("\n\n")[0] + "\n")
    assert statement.path == (county.code, city.code)
    assert statement.exchanges == (answer.exchange_id, at_city_in["exchange_id"])
    assert (statement.department, statement.system, statement.purpose) == (SIMING_MARKET.code, SYSTEM, PURPOSE)
    assert statement.hops_left == county.running.settings.federation_hop_limit - 1
    # the home's provenance statement reaches the consumer, for the home's exchange id
    assert f"exchange {at_province['exchange_id']}" in answer.provenance.note


def test_one_hop_and_the_answer_without_provenance_unless_asked(tree: dict[str, Node]) -> None:
    city, province = tree["city"], tree["province"]
    city.running.add_department(SIMING_MARKET)
    city.running.add_system(SYSTEM, SIMING_MARKET.code)
    answer = _query(city, fields=("address",))
    assert [r.fields["address"].string_value for r in answer.records] == ["厦门市思明区湖滨南路1号"]
    assert not answer.HasField("provenance")
    (out,) = exchanges(city)
    (served,) = exchanges(province)
    assert (out["exchange_id"], out["peer_exchange_id"]) == (answer.exchange_id, served["exchange_id"])
    assert (served["peer_exchange_id"], served["hop"]) == (answer.exchange_id, "in")


def test_a_refusal_by_the_homes_grant_reaches_the_county_with_the_homes_reason(tree: dict[str, Node]) -> None:
    county, province = tree["county"], tree["province"]
    error = _refused(county, grpc.StatusCode.PERMISSION_DENIED, purpose="另一个目的")
    assert "peer hub 350200" in (error.details() or "") and "peer hub 350000" in (error.details() or "")
    assert "granted only for" in (error.details() or "")
    assert [r["outcome"] for r in exchanges(province)] == ["denied"]
    assert [(r["hop"], r["outcome"]) for r in exchanges(county)] == [("out", "failed")]


def test_a_request_refused_at_the_county_never_leaves_it(tree: dict[str, Node]) -> None:
    county, city = tree["county"], tree["city"]
    error = _refused(county, grpc.StatusCode.INVALID_ARGUMENT, fields=("name", "no_such_item"))
    assert "no_such_item not in resource" in str(error.details())
    assert [r["outcome"] for r in exchanges(county)] == ["denied"]
    assert exchanges(city) == []


# Statements sent to the city by hand, as the county hub (its certificate, its signature unless forged).


def _send(county: Node, city: Node, note: str, raw: bytes) -> fpb.ForwardQueryResponse:
    peer = county.peer(city.code)
    return county.federation.run(
        forward_query(county.federation, peer, fpb.ForwardQueryRequest(statement=note, request=raw), None)
    )


def _request(purpose: str = PURPOSE) -> bytes:
    request = xpb.QueryRequest(resource_code=ENTRY, purpose=purpose, filters={"id_number": PERSON}, fields=["address"])
    return request.SerializeToString()


def _statement(county: Node, city: Node, raw: bytes, **changes: object) -> Forwarded:
    statement = Forwarded(
        sender=county.code,
        receiver=city.code,
        home="350000",
        resource=ENTRY,
        call="query",
        department=SIMING_MARKET.code,
        system=SYSTEM,
        purpose=PURPOSE,
        path=(county.code,),
        exchanges=("EXtest0001",),
        hops_left=4,
        request=forwarded.request_digest(raw),
    )
    return replace(statement, **changes)  # type: ignore[arg-type]


def _signer(node: Node) -> Signer:
    return node.running.hub.audit.signer


def _refusal(call: Callable[[], object], kind: type[errors.ExchangeError]) -> str:
    with pytest.raises(kind) as info:
        call()
    return info.value.message


def test_a_statement_forwarded_by_hand_is_served(tree: dict[str, Node]) -> None:
    county, city = tree["county"], tree["city"]
    raw = _request()
    note = forwarded.issue(_signer(county), _statement(county, city, raw), dt.datetime.now(dt.UTC))
    answer = _send(county, city, note, raw)
    response = xpb.QueryResponse.FromString(answer.response)
    assert [r.fields["address"].string_value for r in response.records] == ["厦门市思明区湖滨南路1号"]
    # the same statement again: a replay
    message = _refusal(lambda: _send(county, city, note, raw), errors.PermissionDenied)
    assert "replay" in message and "already used" in message
    assert exchanges(city)[-1]["outcome"] == "denied" and "replay" in str(exchanges(city)[-1]["reason"])


@pytest.mark.parametrize(
    ("case", "kind", "said"),
    [
        ("forged", errors.PermissionDenied, "not signed by the calling hub"),
        ("other request", errors.PermissionDenied, "another request"),
        ("expired", errors.FailedPrecondition, "expired"),
        ("hops used", errors.FailedPrecondition, "hop limit"),
        ("loop", errors.FailedPrecondition, "already passed this hub"),
        ("foreign department", errors.PermissionDenied, "may not speak for department"),
    ],
)
def test_bad_statements_are_refused_logged_and_recorded(
    tree: dict[str, Node], case: str, kind: type[errors.ExchangeError], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    raw = _request()
    statement = _statement(county, city, raw)
    signer, now = _signer(county), dt.datetime.now(dt.UTC)
    if case == "forged":
        signer = Signer.generate(county.running.settings.audit_origin)
    elif case == "other request":
        statement = replace(statement, request=forwarded.request_digest(_request("另一个目的")))
    elif case == "expired":
        now -= dt.timedelta(minutes=5)
    elif case == "hops used":
        statement = replace(statement, hops_left=1)  # the city may not pass it on: the province refuses
    elif case == "loop":
        statement = replace(statement, path=(city.code, county.code), exchanges=("EXa", "EXb"))
    elif case == "foreign department":
        statement = replace(statement, department=PROVINCE_MARKET.code)
    note = forwarded.issue(signer, statement, now)
    message = _refusal(lambda: _send(county, city, note, raw), kind)
    assert said in message and "peer hub 350200" in message
    refuser = province if case == "hops used" else city
    assert said in caplog.text
    last = exchanges(refuser)[-1]
    assert (last["outcome"], last["hop"]) == ("denied", "in") and said in str(last["reason"])
    assert exchanges(province) == [] or case == "hops used"


def test_an_answer_altered_on_the_way_is_refused_at_the_county(tree: dict[str, Node]) -> None:
    county, city = tree["county"], tree["city"]
    forwarding = city.federation.forwarding
    assert forwarding is not None
    receive = forwarding.receive

    async def widening(peer: Peer, note: str, raw: bytes, deadline: float | None) -> fpb.ForwardQueryResponse:
        """The city's serving of a forwarded query, replaced by one that unmasks the name in the province's
        answer after the city's own check passed it: the county must see it."""
        answer = await receive(peer, note, raw, deadline)
        response = xpb.QueryResponse.FromString(answer.response)
        response.records[0].fields["name"].string_value = "张三"
        return replace_answer(answer, response)

    forwarding.receive = widening  # type: ignore[method-assign]
    error = _refused(county, grpc.StatusCode.DATA_LOSS)
    said = f"the answer that came back from peer hub 350200 at {county.peer(city.code).address} is not the one hub"
    assert said in str(error.details()) and "350000 signed" in str(error.details())
    assert [(r["hop"], r["outcome"]) for r in exchanges(county)] == [("out", "failed")]
    assert [(r["hop"], r["outcome"]) for r in exchanges(city)] == [("in", "allowed"), ("out", "ok")]


def replace_answer(answer: fpb.ForwardQueryResponse, response: xpb.QueryResponse) -> fpb.ForwardQueryResponse:
    return fpb.ForwardQueryResponse(
        response=response.SerializeToString(), provenance=answer.provenance, exchange_id=answer.exchange_id
    )


def test_the_province_down_is_unavailable_naming_the_hop(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    province.federation.run(province.federation.stop())
    error = _refused(county, grpc.StatusCode.UNAVAILABLE)
    assert f"peer hub 350000 at {city.peer(province.code).address}" in str(error.details())
    assert [(r["hop"], r["outcome"]) for r in exchanges(city)] == [("in", "allowed"), ("out", "failed")]
    assert [(r["hop"], r["outcome"]) for r in exchanges(county)] == [("out", "failed")]


def _stream(node: Node, provenance: bool = False) -> Iterator[xpb.QueryBatch]:
    """StreamQuery of the company's two records at ``node``, one batch each, as they come."""
    identity = node.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    with node.running.client(identity) as client:
        stub = exchange_pb2_grpc.ExchangeServiceStub(client.channel)
        request = xpb.QueryRequest(
            resource_code=ENTRY,
            purpose=PURPOSE,
            filters={"id_number": COMPANY},
            fields=["name"],
            batch_size=1,
            provenance=provenance,
        )
        yield from stub.StreamQuery(request, timeout=30)


def _hops(node: Node) -> list[tuple[object, ...]]:
    return [(r["action"], r["hop"], r["outcome"], r["rows"]) for r in exchanges(node)]


def test_a_stream_crosses_two_hops_each_batch_checked_on_the_way(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    batches = list(_stream(county, provenance=True))
    assert [r.fields["name"].string_value for b in batches for r in b.records] == ["李*", "王*"]
    assert batches[-1].last and batches[-1].total_records == 2 and batches[-1].provenance.note
    assert {b.exchange_id for b in batches} == {exchanges(county)[0]["exchange_id"]}
    assert _hops(county) == [("stream", "out", "allowed", 0), ("stream_end", "out", "ok", 2)]
    assert _hops(city) == [
        ("stream", "in", "allowed", 0),
        ("stream", "out", "allowed", 0),
        ("stream_end", "out", "ok", 2),
    ]
    assert _hops(province) == [("stream", "in", "allowed", 0), ("stream_end", "in", "ok", 2)]
    city_id, province_id = exchanges(city)[0]["exchange_id"], exchanges(province)[0]["exchange_id"]
    assert {r["peer_exchange_id"] for r in exchanges(county)} == {city_id}
    assert [r["peer_exchange_id"] for r in exchanges(city)][1:] == [province_id, province_id]
    assert {r["peer_exchange_id"] for r in exchanges(province)} == {city_id}


def test_a_batch_altered_on_the_way_is_refused_before_it_reaches_the_county(tree: dict[str, Node]) -> None:
    county, city = tree["county"], tree["city"]
    forwarding = city.federation.forwarding
    assert forwarding is not None
    receive_parts = forwarding.receive_parts

    async def widening(
        peer: Peer, note: str, raw: bytes, call: str, deadline: float | None
    ) -> AsyncGenerator[Part, None]:
        """The city's serving of a forwarded stream, replaced by one that unmasks the name in the province's
        second batch after the city's own check passed it: the county must see it."""
        number = 0
        async for part in receive_parts(peer, note, raw, call, deadline):
            number += 1
            if number != 2:
                yield part
                continue
            batch = xpb.QueryBatch.FromString(part.payload)
            batch.records[0].fields["name"].string_value = "王五"
            yield replace(part, payload=batch.SerializeToString())

    forwarding.receive_parts = widening  # type: ignore[method-assign]
    received: list[xpb.QueryBatch] = []
    with pytest.raises(grpc.RpcError) as info:
        received.extend(_stream(county))
    error = info.value
    assert isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.DATA_LOSS
    said = f"a batch that came back from peer hub 350200 at {county.peer(city.code).address} is not one hub 350000"
    assert said in str(error.details())
    assert [r.fields["name"].string_value for b in received for r in b.records] == ["李*"]  # the first, checked
    assert _hops(county) == [("stream", "out", "allowed", 0), ("stream_end", "out", "failed", 1)]
    # The city's closing record may be committed just after the county ended the call: waited for, not raced.
    deadline = time.monotonic() + 20
    while _hops(city)[-1][0] != "stream_end" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _hops(city)[-1] == ("stream_end", "out", "ok", 2)  # the city's own check passed what the province sent


def test_a_stream_whose_channel_to_the_next_hub_is_closed_under_it_fails_at_once(tree: dict[str, Node]) -> None:
    """The county's channel to the city closed while a stream passes through it (as a dropped channel is after
    its grace): gRPC cancels the call, and the county's consumer learns UNAVAILABLE at once, with the hop's
    failure recorded, rather than waiting unanswered for its own deadline."""
    county, city = tree["county"], tree["city"]
    forwarding = city.federation.forwarding
    assert forwarding is not None
    receive_parts = forwarding.receive_parts

    async def stalling(
        peer: Peer, note: str, raw: bytes, call: str, deadline: float | None
    ) -> AsyncGenerator[Part, None]:
        """The city's serving of a forwarded stream, replaced by one whose second part never comes in time."""
        async for part in receive_parts(peer, note, raw, call, deadline):
            yield part
            await asyncio.sleep(60)

    async def close_the_channel() -> None:
        _, channel = county.federation._channels.pop(city.code)
        await channel.close(None)

    forwarding.receive_parts = stalling  # type: ignore[method-assign]
    stream = _stream(county)
    assert [r.fields["name"].string_value for r in next(stream).records] == ["李*"]
    county.federation.run(close_the_channel())
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    error = info.value
    assert isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
    said = f"the connection to peer hub 350200 at {county.peer(city.code).address} was closed while the stream"
    assert said in str(error.details())
    assert _hops(county) == [("stream", "out", "allowed", 0), ("stream_end", "out", "failed", 1)]


DOCUMENTS = "10101/350000000002"


def test_a_document_crosses_two_hops_each_chunk_checked_on_the_way(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    hub = province.running
    folder = hub.settings.home / "documents" / PROVINCE_MARKET.code / "licences"  # the department's own root
    folder.mkdir(parents=True)
    licence = "营业执照".encode() * 5000
    (folder / f"{COMPANY}.pdf").write_bytes(licence)
    items = (m.DataItem("id_number", "统一社会信用代码", m.FieldType.STRING, filterable=True),)
    spec = identity_spec(
        DOCUMENTS, PROVINCE_MARKET.code, name="营业执照", data_items=items, share_method=m.ShareMethod.DOCUMENT
    )
    steward = hub.certifier(PROVINCE_MARKET.code)
    hub.publish(steward, spec)
    with hub.client(steward) as c:
        files = cpb.FileBackend(root=str(folder), name_template="{id_number}.pdf")
        binding = cpb.Binding(resource_code=DOCUMENTS, files=files)
        c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入证照库"))
    grant_at_home(province, DOCUMENTS, ("id_number",))
    for level in ("city", "county"):
        tree[level].sync()
    identity = county.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    with county.running.client(identity) as client:
        stub = exchange_pb2_grpc.ExchangeServiceStub(client.channel)
        request = xpb.FetchDocumentRequest(resource_code=DOCUMENTS, purpose=PURPOSE, filters={"id_number": COMPANY})
        chunks = list(stub.FetchDocument(request, timeout=30))
    data = b"".join(c.data for c in chunks)
    assert data == licence and chunks[-1].sha256 == hashlib.sha256(licence).digest()
    assert chunks[0].info.size == len(licence) and not chunks[-1].HasField("provenance")
    assert {c.exchange_id for c in chunks} == {exchanges(county)[0]["exchange_id"]}
    assert [(r["action"], r["hop"], r["outcome"], r["bytes"]) for r in exchanges(county)] == [
        ("document", "out", "allowed", 0),
        ("document_end", "out", "ok", len(licence)),
    ]
    assert [(r["action"], r["hop"], r["outcome"]) for r in exchanges(province)][-2:] == [
        ("document", "in", "allowed"),
        ("document_end", "in", "ok"),
    ]
    assert {r["peer_exchange_id"] for r in exchanges(county)} == {exchanges(city)[0]["exchange_id"]}


def test_a_suspended_peering_on_the_way_refuses_the_call(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    with province.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb_peers.SuspendPeerRequest(code=city.code, reason="安全检查"))
    error = _refused(county, grpc.StatusCode.FAILED_PRECONDITION)
    assert "peer hub 350200" in str(error.details()) and "peer hub 350000, whose peering is suspended_there" in str(
        error.details()
    )
    assert exchanges(province) == []
    # a call on a peering the receiving hub suspended is refused at its listener, as every call of a peer is
    with city.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb_peers.SuspendPeerRequest(code=county.code, reason="安全检查"))
    raw = _request()
    note = forwarded.issue(_signer(county), _statement(county, city, raw), dt.datetime.now(dt.UTC))
    message = _refusal(lambda: _send(county, city, note, raw), errors.PermissionDenied)
    assert "peer hub 350200" in message and "suspended" in message


def test_a_peering_suspended_after_calls_refuses_the_next_call_at_once(tree: dict[str, Node]) -> None:
    """The peers each hub holds for forwarded calls are forgotten by the suspension itself: at the county (the
    consumer's hub) and at the city (a hub on the way), the call right after it is refused."""
    county, city, province = tree["county"], tree["city"], tree["province"]
    assert _query(county).records  # the county and the city hold their peers (and the entry) from now
    with county.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb_peers.SuspendPeerRequest(code=city.code, reason="安全检查"))
    error = _refused(county, grpc.StatusCode.FAILED_PRECONDITION)
    assert "peer hub 350200, whose peering is suspended_here" in str(error.details())
    with county.running.client() as hub:
        hub.call(hub.federation.ResumePeer, fpb_peers.ResumePeerRequest(code=city.code, reason="检查完毕"))
    assert _query(county).records
    with city.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb_peers.SuspendPeerRequest(code=province.code, reason="安全检查"))
    error = _refused(county, grpc.StatusCode.FAILED_PRECONDITION)
    assert "peer hub 350000, whose peering is suspended_here" in str(error.details())
    assert [r["action"] for r in exchanges(province) if r["hop"] == "in"] == ["query", "query"]


def test_an_entry_suspended_at_home_is_refused_once_the_sync_round_brought_it(tree: dict[str, Node]) -> None:
    """The remote entries the county holds are forgotten by the sync round that stores a change of them (held
    here for ever otherwise: only that forgetting shows the change)."""
    county, province = tree["county"], tree["province"]
    held = county.federation.catalog.entries
    held.seconds = math.inf
    assert _query(county).records
    with province.running.client(province.running.certifier(PROVINCE_MARKET.code)) as c:
        c.call(c.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=ENTRY, reason="停用"))
    for level in ("city", "county"):
        tree[level].sync()
    entry = held.get(ENTRY)
    assert entry is not None and entry.resource.status is m.ResourceStatus.SUSPENDED
    error = _refused(county, grpc.StatusCode.PERMISSION_DENIED)  # by the home, as the round told the county
    assert "resource 10101/350000000001 is suspended" in str(error.details())


def test_the_replay_guard_accepts_an_id_once_and_forgets_it_after_it_expired(store: Store) -> None:
    """On SQLite and PostgreSQL: the store every hub process shares says whether a statement id was seen."""
    now = dt.datetime.now(dt.UTC)
    expires = now + forwarded.LIFETIME
    store.forwarded.purge_seconds = 0.0  # every new id drops the expired ones (a hub: one call in 10 s at most)
    assert store.forwarded.seen("a" * 32, expires) is False
    assert store.forwarded.seen("a" * 32, expires) is True
    assert store.forwarded.seen("b" * 32, expires) is False
    long_gone = now - KEEP_PAST_EXPIRY - dt.timedelta(minutes=1)
    assert store.forwarded.seen("c" * 32, long_gone) is False
    store.forwarded.seen("d" * 32, expires)  # a new id drops those kept past their time
    with store.db.read() as s:
        kept = set(s.scalars(select(ForwardedSeenRow.id)))
    assert kept == {"a" * 32, "b" * 32, "d" * 32}
