"""The brokered exchange end to end, through the SQL adapter: a real hub over mutual TLS, a real front-end database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from audit import provenance
from audit.note import Verifier
from exchange import models as m
from exchange import pki, values
from exchange.errors import Unavailable
from exchange.services.exchange import Ask, query_page
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import registry_pb2 as rgpb
from exchange.v1 import rights_pb2 as rpb
from tests.exchange_world import PURPOSE, World, fails, make_world, query
from tests.harness import POLICE, RunningHub, exchange_id_of, identity_spec, reason_of, violations
from tests.served_hubs import until

IDENTITY = "10101/350200000001"
OTHER = "10101/350200000005"
ID_NUMBER = "350203198001012345"
PEOPLE = 250


def _spec(code: str = IDENTITY) -> m.ResourceSpec:
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING, personal_information=True),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, personal_information=True, filterable=True),
        m.DataItem("household", "户号", m.FieldType.INTEGER, filterable=True),
        m.DataItem("birth_date", "出生日期", m.FieldType.DATE),
        m.DataItem("address", "户籍地址", m.FieldType.STRING),
    )
    return identity_spec(code, POLICE.code, data_items=items, name=f"居民身份信息 {code[-1]}")


@pytest.fixture
def frontend(tmp_path: Path) -> str:
    """The police front-end database (前置库): one person by ID number, and a household of many."""
    url = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE rk (xm TEXT, sfzh TEXT, hh INTEGER, csrq DATE, dz TEXT)"))
        c.execute(text(f"INSERT INTO rk VALUES ('张三', '{ID_NUMBER}', 7, '1980-01-01', '思明区湖滨南路 1 号')"))
        rows = [{"x": f"李{n:03d}", "s": f"3502031990{n:08d}", "d": "1990-02-02"} for n in range(PEOPLE)]
        c.execute(text("INSERT INTO rk VALUES (:x, :s, 8, :d, '湖里区')"), rows)
    engine.dispose()
    return url


def _binding(url: str, code: str = IDENTITY) -> cpb.Binding:
    columns = {"name": "xm", "id_number": "sfzh", "household": "hh", "birth_date": "csrq", "address": "dz"}
    return cpb.Binding(resource_code=code, sql=cpb.SqlBackend(url=url, table="rk", columns=columns))


@pytest.fixture
def world(hub: RunningHub, frontend: str) -> World:
    world = make_world(hub)
    world.publish("police", _spec())
    world.bind("police", _binding(frontend))
    return world


def _audit(world: World, exchange_id: str) -> list[dict[str, object]]:
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(exchange_id=exchange_id))
    return [json.loads(e.record) for e in found.entries]


def test_a_granted_query_returns_only_granted_fields_masked_and_audited(world: World) -> None:
    masks = (("id_number", rpb.MASK_KIND_ID_NUMBER), ("name", rpb.MASK_KIND_NAME))
    grant = world.grant(IDENTITY, ("name", "id_number", "birth_date"), "police", masks, verify_masked=("id_number",))
    answer = world.exchange().Query(
        query(IDENTITY, {"id_number": ID_NUMBER}, ["name", "id_number", "birth_date"], provenance=True), timeout=20
    )
    rows = [values.record_from_wire(r) for r in answer.records]
    assert rows == [
        {
            "name": "张*",
            "id_number": "350203********2345",
            "birth_date": values.parse_text("1980-01-01", m.FieldType.DATE),
        }
    ]
    assert answer.disclosure.grant_id == grant
    assert dict(answer.disclosure.masks) == {"id_number": "id_number", "name": "name"}
    records = _audit(world, answer.exchange_id)
    assert [(r["action"], r["outcome"], r["rows"]) for r in records] == [("query", "ok", 1)]
    assert records[0]["grant"] == grant and records[0]["actor"] == "system/bdc-djxt"
    assert ID_NUMBER not in json.dumps(records[0], ensure_ascii=False)  # the subject only as a keyed hash
    digest = values.RowsDigest()
    digest.update(rows)
    verifier = Verifier.parse(world.hub.files.audit_verifier.read_text())
    statement = provenance.verify(answer.provenance.note, verifier, digest.hexdigest())
    assert (statement.exchange, statement.count, statement.consumer) == (answer.exchange_id, 1, "system/bdc-djxt")
    assert records[0]["response_sha256"] == digest.hexdigest()
    with pytest.raises(provenance.ProvenanceError):
        provenance.verify(answer.provenance.note, verifier, "00" * 32)


def test_pages_cover_every_record_once(world: World) -> None:
    world.grant(IDENTITY, ("name", "id_number", "household"), "police")
    stub, seen, token, pages = world.exchange(), [], "", 0
    while True:
        page = stub.Query(
            query(IDENTITY, {"household": "8"}, ["id_number"], page_size=100, page_token=token), timeout=20
        )
        seen += [r.fields["id_number"].string_value for r in page.records]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == PEOPLE
    error = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Query,
        query(IDENTITY, {"household": "7"}, ["id_number"], page_token=token or "x"),
    )
    assert "page_token" in violations(error)


def test_refusals_are_precise_and_audited(world: World) -> None:
    world.publish("police", _spec(OTHER))
    world.grant(IDENTITY, ("name", "id_number"), "police", quota=3)
    stub = world.exchange()
    cases = [
        (query(OTHER, {"id_number": ID_NUMBER}, ["name"]), "NO_GRANT"),
        (
            xpb.QueryRequest(
                resource_code=IDENTITY, purpose="其他用途", filters={"id_number": ID_NUMBER}, fields=["name"]
            ),
            "WRONG_PURPOSE",
        ),
        (query(IDENTITY, {"id_number": ID_NUMBER}, ["address"]), "FIELD_NOT_GRANTED"),
        (query(IDENTITY, {"household": "8"}, ["name"]), "FIELD_NOT_GRANTED"),  # filtering needs a grant too
    ]
    for request, reason in cases:
        assert reason_of(fails(grpc.StatusCode.PERMISSION_DENIED, stub.Query, request)) == reason
    for _ in range(3):
        stub.Query(query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]), timeout=20)
    exhausted = fails(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Query, query(IDENTITY, {"id_number": ID_NUMBER}, ["name"])
    )
    assert reason_of(exhausted) == "QUOTA_EXHAUSTED"
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(outcome="denied", actor="system/bdc-djxt"))
    reasons = sorted(json.loads(e.record)["reason"].split(":")[0] for e in found.entries)
    assert reasons == ["field_not_granted"] * 2 + ["no_grant", "quota_exhausted", "wrong_purpose"]


def test_bad_input_gets_a_clear_status_and_no_data(world: World) -> None:
    world.grant(IDENTITY, ("name", "id_number", "household"), "police")
    stub = world.exchange()
    fails(grpc.StatusCode.NOT_FOUND, stub.Query, query("10101/350200000099", {"id_number": ID_NUMBER}, ["name"]))
    bad = [
        (query(IDENTITY, {"name": "张三"}, ["name"]), "filters[name]"),
        (query(IDENTITY, {"household": "seven"}, ["name"]), "filters[household]"),
        (query(IDENTITY, {}, ["name"]), "filters"),
        (query(IDENTITY, {"id_number": ID_NUMBER}, []), "fields"),
        (query(IDENTITY, {"id_number": ID_NUMBER}, ["nope"]), "fields"),
        (query(IDENTITY, {"id_number": ID_NUMBER}, ["name"], page_size=5000), "page_size"),
        (query(IDENTITY, {"id_number": "x" * 1000}, ["name"]), "filters[id_number]"),
        (
            xpb.QueryRequest(resource_code="../etc", purpose="", filters={"id_number": "1"}, fields=["name"]),
            "resource_code",
        ),
    ]
    for request, field in bad:
        assert field in violations(fails(grpc.StatusCode.INVALID_ARGUMENT, stub.Query, request)), field
    for injection in ("' OR '1'='1", "1; DROP TABLE rk; --", ID_NUMBER + "' --"):
        answer = stub.Query(query(IDENTITY, {"id_number": injection}, ["name"]), timeout=20)
        assert list(answer.records) == []
    person = world.exchange(world.people["consumer"])
    assert (
        reason_of(
            fails(grpc.StatusCode.PERMISSION_DENIED, person.Query, query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]))
        )
        == "NOT_A_SYSTEM"
    )
    doc = xpb.FetchDocumentRequest(resource_code=IDENTITY, purpose="不动产转移登记", filters={"id_number": ID_NUMBER})
    fails(grpc.StatusCode.FAILED_PRECONDITION, stub.FetchDocument, doc)


def _descriptions(error: grpc.Call) -> str:
    """Every field violation's description of a BadRequest detail, and the status message."""
    status = rpc_status.from_call(error)
    texts = [error.details() or ""]
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            texts += [v.description for v in bad.field_violations]
    return "\n".join(texts)


def test_a_not_shared_resource_says_so_and_how_to_dispute_it(world: World) -> None:
    secret = identity_spec(
        OTHER, POLICE.code, share_type=m.ShareType.NOT_SHARED, legal_basis="《保守国家秘密法》第九条"
    )
    world.publish("police", secret)
    stub = world.exchange()
    for request in (query(OTHER, {}, ["name"]), query(OTHER, {"id_number": ID_NUMBER}, ["name"])):
        refused = fails(grpc.StatusCode.PERMISSION_DENIED, stub.Query, request)
        assert reason_of(refused) == "NOT_SHARED"
        said = refused.details() or ""
        assert "is not shared" in said and "《保守国家秘密法》第九条" in said, said
        assert "request dispute" in said and "share manager" in said, said
        assert "at least one filter" not in said
    # A shared resource asked without filters still hears about its filters.
    assert "filters" in violations(fails(grpc.StatusCode.INVALID_ARGUMENT, stub.Query, query(IDENTITY, {}, ["name"])))


def test_a_malformed_resource_code_is_told_its_format(world: World) -> None:
    stub = world.exchange()
    bad = fails(grpc.StatusCode.INVALID_ARGUMENT, stub.Query, query("10101-1", {"id_number": ID_NUMBER}, ["name"]))
    assert "resource_code" in violations(bad)
    assert "1-9 digits, '/', 6-12 digits (like '10101/350200000001')" in _descriptions(bad)


def test_a_stream_sends_every_record_in_batches_and_is_audited_before_and_after(world: World) -> None:
    world.grant(IDENTITY, ("id_number", "household"), "police", (("id_number", rpb.MASK_KIND_ID_NUMBER),))
    request = query(IDENTITY, {"household": "8"}, ["id_number"], batch_size=40, provenance=True)
    batches = list(world.exchange().StreamQuery(request, timeout=20))
    assert [len(b.records) for b in batches] == [40] * 6 + [10, 0]
    last = batches[-1]
    assert last.last and last.total_records == PEOPLE and batches[0].disclosure.masks["id_number"] == "id_number"
    rows = [values.record_from_wire(r) for b in batches for r in b.records]
    assert all(str(r["id_number"]).startswith("350203********") for r in rows)
    digest = values.RowsDigest()
    digest.update(rows)
    verifier = Verifier.parse(world.hub.files.audit_verifier.read_text())
    provenance.verify(last.provenance.note, verifier, digest.hexdigest())
    records = _audit(world, batches[0].exchange_id)
    assert [(r["action"], r["outcome"], r["rows"]) for r in records] == [
        ("stream", "allowed", 0),
        ("stream_end", "ok", PEOPLE),
    ]


def test_no_audit_no_data(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.grant(IDENTITY, ("name", "id_number"), "police")
    committer = world.hub.hub.committer
    assert committer is not None

    def broken(records: object) -> None:
        raise Unavailable("disk gone")

    monkeypatch.setattr(committer._store, "stage", broken)
    monkeypatch.setattr(committer._store, "stage_now", broken)  # in the event loop, and in its thread
    stub = world.exchange()
    error = fails(grpc.StatusCode.UNAVAILABLE, stub.Query, query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]))
    assert "audit" in (error.details() or "")
    stream = stub.StreamQuery(query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]), timeout=20)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stream))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_provider_failures_are_named_and_audited(world: World, tmp_path: Path) -> None:
    world.grant(IDENTITY, ("name", "id_number"), "police")
    world.bind("police", _binding(f"sqlite:///{tmp_path / 'missing' / 'none.db'}"))
    stub = world.exchange()
    error = fails(grpc.StatusCode.UNAVAILABLE, stub.Query, query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]))
    assert POLICE.code in (error.details() or "") and "sqlite" not in (error.details() or "")
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(outcome="failed"))
    assert [json.loads(e.record)["action"] for e in found.entries] == ["query"]


def test_an_unbound_resource_fails_before_any_fetch(world: World) -> None:
    world.publish("police", _spec(OTHER))
    world.grant(OTHER, ("name", "id_number"), "police")
    error = fails(
        grpc.StatusCode.FAILED_PRECONDITION, world.exchange().Query, query(OTHER, {"id_number": ID_NUMBER}, ["name"])
    )
    assert "not bound" in (error.details() or "")


def test_bindings_are_the_owners_and_checked(world: World, frontend: str) -> None:
    with world.hub.client(world.people["housing"]) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=_binding(frontend), reason="x"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own_store = world.hub.settings.effective_database_url
    with world.hub.client(world.people["police"]) as c:
        for binding in (_binding(own_store), cpb.Binding(resource_code=IDENTITY), _binding("mysql://x/y")):
            with pytest.raises(grpc.RpcError) as info:
                c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="x"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        secret = _binding("postgresql+psycopg://reader:s3cret@db.example/ga")
        shown = c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=secret, reason="x"))
        assert shown.sql.url == "postgresql+psycopg://reader:***@db.example/ga" and shown.version == 2
        assert c.call(c.catalog.GetBinding, cpb.GetBindingRequest(resource_code=IDENTITY)).sql.table == "rk"


def test_a_deadline_too_short_ends_the_call_not_the_hub(world: World) -> None:
    world.grant(IDENTITY, ("name", "id_number"), "police")
    stub = world.exchange()
    request = query(IDENTITY, {"id_number": ID_NUMBER}, ["name"])
    fails(grpc.StatusCode.DEADLINE_EXCEEDED, stub.Query, request, timeout=0.0005)
    assert len(stub.Query(request, timeout=20).records) == 1


def test_changes_reach_the_next_exchange(world: World, tmp_path: Path) -> None:
    """What every call reads is kept in memory; a suspension, a new binding or a revocation still counts at once."""
    world.grant(IDENTITY, ("name", "id_number"), "police")
    stub = world.exchange()
    request = query(IDENTITY, {"id_number": ID_NUMBER}, ["name"])
    assert len(stub.Query(request, timeout=20).records) == 1
    with world.hub.client(world.people["police"]) as c:
        c.call(c.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=IDENTITY, reason="系统升级"))
        assert reason_of(fails(grpc.StatusCode.PERMISSION_DENIED, stub.Query, request)) == "RESOURCE_SUSPENDED"
        c.call(c.catalog.PublishResource, cpb.ChangeResourceStatusRequest(code=IDENTITY, reason="升级完成"))
    assert len(stub.Query(request, timeout=20).records) == 1
    world.bind("police", _binding(f"sqlite:///{tmp_path / 'gone' / 'x.db'}"))
    fails(grpc.StatusCode.UNAVAILABLE, stub.Query, request)
    fingerprint = pki.fingerprint_of_pem(pki.IdentityFiles(world.consumer_system).cert.read_bytes())
    with world.hub.client() as op:
        op.call(
            op.registry.RevokeCertificate, rgpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="泄露")
        )
    fails(grpc.StatusCode.UNAUTHENTICATED, stub.Query, request)


def test_forged_page_tokens_and_backend_bugs_are_contained(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.grant(IDENTITY, ("name", "id_number", "household"), "police")
    stub = world.exchange()
    ask = Ask(IDENTITY, PURPOSE, {"household": "8"}, ("id_number",))
    for after in ("abc", "-5", "9" * 30):  # well-formed for this query, but not an offset the hub issued
        token = query_page(ask, 100, "").token_after(after)
        request = query(IDENTITY, {"household": "8"}, ["id_number"], page_size=100, page_token=token)
        assert "page_token" in violations(fails(grpc.StatusCode.INVALID_ARGUMENT, stub.Query, request))
    stub.Query(query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]), timeout=20)  # opens the backend
    backend = next(iter(world.hub.hub.backends._open.values()))[1]

    def bug(request: object) -> list[dict[str, object]]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(backend, "fetch", bug)
    error = fails(grpc.StatusCode.UNAVAILABLE, stub.Query, query(IDENTITY, {"id_number": ID_NUMBER}, ["name"]))
    assert "secret" not in (error.details() or "") and POLICE.code in (error.details() or "")
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(outcome="failed"))
    assert [json.loads(e.record)["action"] for e in found.entries] == ["query"]


def test_a_cancellation_from_a_backend_fails_the_call_and_is_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend may raise CancelledError for a call its consumer did not cancel (gRPC does when a channel is
    closed under a call). The hub answers UNAVAILABLE at once, with the failure recorded: taken for the
    consumer's leaving, the call would wait unanswered for its own deadline, with no closing record."""
    world.grant(IDENTITY, ("name", "id_number"), "police")
    stub = world.exchange()
    request = query(IDENTITY, {"id_number": ID_NUMBER}, ["name"])
    stub.Query(request, timeout=20)  # opens the backend
    backend = next(iter(world.hub.hub.backends._open.values()))[1]

    async def cut(*_: object) -> list[dict[str, object]]:
        raise asyncio.CancelledError

    async def cut_stream(*_: object) -> AsyncIterator[object]:
        raise asyncio.CancelledError
        yield  # an async generator, as a backend's stream is

    monkeypatch.setattr(backend, "fetch", cut)
    monkeypatch.setattr(backend, "stream", cut_stream)
    for call in (stub.Query, stub.StreamQuery):
        error = fails(grpc.StatusCode.UNAVAILABLE, call, request, timeout=60)
        assert POLICE.code in (error.details() or ""), error.details()
        # A stream's closing record is written in the background once its consumer has the status: waited for.
        exchange_id = exchange_id_of(error)
        until(lambda: _ending(world, exchange_id) != [], "the call's closing record")  # noqa: B023 - used at once
        assert _ending(world, exchange_id) == ["failed"]


def _ending(world: World, exchange_id: str) -> list[object]:
    """The outcomes of an exchange's closing records (a query's one record, a stream's end)."""
    return [r["outcome"] for r in _audit(world, exchange_id) if r["action"] in {"query", "stream_end"}]
