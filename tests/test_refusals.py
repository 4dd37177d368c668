"""Every refusal recorded: calls refused before their request is read, the per-caller bound, the exchange id to quote.

A real hub over mutual TLS on a loopback port. An identified caller's body that does not parse, is over
``max_message_bytes`` or is another message is refused and leaves exactly one audit record, whose
exchange id is the one the status names (``google.rpc.RequestInfo.request_id``); past the per-caller
bound one record counts the rest; a caller the hub cannot identify leaves nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from exchange import models as m
from exchange import pki
from exchange import wire as w
from exchange.cli.client import describe
from exchange.config import load
from exchange.errors import ConfigError
from exchange.server.refusal_rate import RefusalRate
from exchange.store import Store
from exchange.store.schema import AuditEntryRow, AuditStagedRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import registry_pb2 as rgpb
from exchange.validation import uscc_check_character
from tests.exchange_world import REGISTRY, World, make_world, query
from tests.harness import base_settings, exchange_id_of, reason_of, running_hub
from tests.served_hubs import until

LIMIT = 64 * 1024  # a small max_message_bytes, so an oversize body is quick to send
QUERY = "/exchange.v1.ExchangeService/Query"
GET_DEPARTMENT = "/exchange.v1.RegistryService/GetDepartment"
RESOURCE = "10101/350200000001"
GARBAGE = b"\x0a\x05ab"  # field 1 says five bytes follow, two do: no message parses from it


def _settings(home: Path, **changes: Any) -> Any:
    return base_settings(home, max_message_bytes=LIMIT, refusal_window_seconds=3600, **changes)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_hub(_settings(tmp_path_factory.mktemp("hub"))) as hub:
        yield make_world(hub)


def _system(world: World, code: str) -> Path:
    """A fresh system of the registry: a caller with a bound of its own."""
    return world.hub.add_system(code, REGISTRY.code)


def _send(world: World, identity: Path, method: str, body: bytes) -> grpc.Call:
    """Sends raw ``body`` to ``method`` as ``identity``; the call's error (it must fail)."""
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]  # only the hub's limit stands in the way
    channel = grpc.secure_channel(world.hub.settings.hub_address, _credentials(identity), options=options)
    try:
        rpc = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.RpcError) as info:
            rpc(body, timeout=20)
    finally:
        channel.close()
    assert isinstance(info.value, grpc.Call)
    return info.value


def _credentials(identity: Path) -> grpc.ChannelCredentials:
    files = pki.IdentityFiles(identity)
    return grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())


def _search(world: World, exchange_id: str = "", actor: str = "") -> list[dict[str, Any]]:
    """The audit records an auditor finds."""
    world.hub.hub.audit.flush()
    request = apb.SearchRecordsRequest(page_size=1000, exchange_id=exchange_id, actor=actor)
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, request)
    return [json.loads(e.record) for e in found.entries]


def _one_record_quoted(world: World, error: grpc.Call, actor: str) -> dict[str, Any]:
    """The one record of ``actor``'s refused call, found by the exchange id its status names."""
    exchange_id = exchange_id_of(error)
    assert exchange_id.startswith("EX"), f"no exchange id in the refusal: {error.code()}: {error.details()}"
    (record,) = _search(world, exchange_id=exchange_id)
    assert record["actor"] == actor and record["outcome"] == "denied"
    assert record["actor_department"] == REGISTRY.code
    return record


def _oversize() -> bytes:
    """A valid query with an unknown field (9999, bytes) that takes it one byte over the limit."""
    body = query(RESOURCE, {"id_number": "350203198001012345"}, ["name"]).SerializeToString()
    tag = _varint(9999 << 3 | 2)
    pad = LIMIT + 1 - len(body) - len(tag) - 3  # a length under 2**21 takes three bytes
    return body + tag + _varint(pad) + b"\x00" * pad


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_an_unparseable_body_is_refused_and_recorded_once_under_the_id_it_names(world: World) -> None:
    system = _system(world, "bdc-garbage")
    before = _search(world, actor="system/bdc-garbage")
    error = _send(world, system, QUERY, GARBAGE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exchange.v1.QueryRequest" in (error.details() or "")
    record = _one_record_quoted(world, error, "system/bdc-garbage")
    assert (record["kind"], record["action"], record["subject"]) == ("exchange", "query", QUERY)
    assert record["reason"].startswith("unparseable_request")
    assert len(_search(world, actor="system/bdc-garbage")) == len(before) + 1


def test_an_oversize_body_is_refused_by_the_hub_and_recorded_once_under_the_id_it_names(world: World) -> None:
    system = _system(world, "bdc-oversize")
    body = _oversize()
    assert len(body) == LIMIT + 1
    error = _send(world, system, QUERY, body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert reason_of(error) == "REQUEST_TOO_LARGE" and str(LIMIT) in (error.details() or "")
    record = _one_record_quoted(world, error, "system/bdc-oversize")
    assert record["kind"] == "exchange" and record["reason"].startswith("request_too_large")
    assert len(_search(world, actor="system/bdc-oversize")) == 1


@pytest.mark.parametrize(
    "wrong",
    [
        rgpb.GetDepartmentRequest(
            code="11350200MB0023456P"
        ),  # parses as a query with nothing asked: the service refuses
        xpb.DocumentChunk(data=b"\xff\xfe\xfd"),  # its bytes stand where QueryRequest has a map: it does not parse
    ],
    ids=["parses", "unparseable"],
)
def test_a_wrong_message_is_refused_and_recorded_once_under_the_id_it_names(world: World, wrong: Any) -> None:
    code = f"bdc-wrong-{type(wrong).__name__.lower()[:8]}"
    system = _system(world, code)
    error = _send(world, system, QUERY, wrong.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    record = _one_record_quoted(world, error, f"system/{code}")
    assert record["kind"] == "exchange" and record["action"] == "query"
    assert len(_search(world, actor=f"system/{code}")) == 1


def test_an_unparseable_administrative_call_is_recorded_under_its_service(world: World) -> None:
    system = _system(world, "bdc-admin")
    error = _send(world, system, GET_DEPARTMENT, GARBAGE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    record = _one_record_quoted(world, error, "system/bdc-admin")
    assert (record["kind"], record["action"], record["subject"]) == ("registry", "denied:GetDepartment", GET_DEPARTMENT)


def _department() -> Any:
    return w.department_to_wire(REGISTRY)  # valid, so the policy is what refuses it


def test_administrative_and_data_plane_refusals_name_their_exchange_id(world: World) -> None:
    system = _system(world, "bdc-refused")
    with world.hub.client(system) as c:
        with pytest.raises(grpc.RpcError) as admin:
            c.call(c.registry.CreateDepartment, rgpb.CreateDepartmentRequest(department=_department()))
        with pytest.raises(grpc.RpcError) as data:
            c.call(c.exchange.Query, query(RESOURCE, {"id_number": "350203198001012345"}, ["name"]))
    for info, action in ((admin, "denied:CreateDepartment"), (data, "query")):
        error = info.value
        assert isinstance(error, grpc.Call)
        assert error.code() in {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}, error.details()
        assert _one_record_quoted(world, error, "system/bdc-refused")["action"] == action
        assert exchange_id_of(error) in describe(error)  # what the command line prints


def test_a_request_refused_for_what_it_asks_is_recorded_and_named_too(world: World) -> None:
    """Not only the policy refuses: a malformed page token (INVALID_ARGUMENT) and an unknown department
    (NOT_FOUND) are refusals the caller quotes, each one record with the kind of refusal as its reason."""
    system = _system(world, "bdc-asks")
    with world.hub.client(system) as c:
        with pytest.raises(grpc.RpcError) as bad:
            c.call(c.catalog.ListResources, cpb.ListResourcesRequest(page_token="not-a-token"))
        with pytest.raises(grpc.RpcError) as unknown:
            unregistered = "11350200MB0099999" + uscc_check_character("11350200MB0099999")
            c.call(c.registry.GetDepartment, rgpb.GetDepartmentRequest(code=unregistered))
    for info, code, reason in (
        (bad, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (unknown, grpc.StatusCode.NOT_FOUND, "not_found"),
    ):
        error = info.value
        assert isinstance(error, grpc.Call)
        assert error.code() == code, error.details()
        assert _one_record_quoted(world, error, "system/bdc-asks")["reason"] == reason


def test_a_caller_the_hub_cannot_identify_leaves_no_record(world: World) -> None:
    system = _system(world, "bdc-revoked")
    fingerprint = pki.fingerprint_of_pem(pki.IdentityFiles(system).cert.read_bytes())
    with world.hub.client() as op:
        op.call(
            op.registry.RevokeCertificate, rgpb.RevokeCertificateRequest(fingerprint_sha256=fingerprint, reason="x")
        )
    before = _search(world)
    error = _send(world, system, QUERY, GARBAGE)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and not exchange_id_of(error)
    assert _search(world) == before


def _records(url: str) -> list[dict[str, Any]]:
    """Every audit record in a (stopped) hub's store, staged or logged."""
    store = Store(url)
    try:
        with store.db.read() as s:
            texts = [*s.scalars(select(AuditStagedRow.record)), *s.scalars(select(AuditEntryRow.record))]
    finally:
        store.close()
    return [json.loads(t) for t in texts if t]


def test_a_body_over_what_the_transport_reads_is_still_recorded(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with running_hub(settings) as hub:
        world = make_world(hub)
        system = _system(world, "bdc-huge")
        transport = LIMIT + settings.max_message_headroom_bytes
        error = _send(world, system, QUERY, b"\x00" * (transport + 1))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own refusal, before the hub read it
    # The caller had its answer from gRPC before the hub recorded anything: the stopped hub's store has it.
    (record,) = [r for r in _records(settings.effective_database_url) if r["actor"] == "system/bdc-huge"]
    assert record["outcome"] == "denied" and record["reason"].startswith("request_not_received")
    assert record["subject"] == QUERY and record["exchange_id"].startswith("EX")


def _handlers() -> Iterator[asyncio.Task[Any]]:
    """The hub's tasks serving calls in the stream-request form (how the hub reads every unary request)."""
    for task in asyncio.all_tasks():
        coroutine: Any = task.get_coro()
        chain: list[str] = []
        while coroutine is not None and hasattr(coroutine, "cr_code"):
            chain.append(coroutine.cr_code.co_name)
            coroutine = coroutine.cr_await
        if "_handle_stream_unary_rpc" in chain and not task.done():
            yield task


def test_a_call_cancelled_before_its_request_arrived_is_still_recorded(world: World) -> None:
    """gRPC cancels the call whose request it refused unread, and that cancellation can reach the hub's
    handler before the end of its read does (seen under load): the attempt is recorded all the same.

    Made certain here: the caller holds its request back, and the handler's task is cancelled as gRPC's
    server cancels it, while the hub waits for the request."""
    system = _system(world, "bdc-cancelled")
    assert world.hub.loop is not None
    channel = grpc.secure_channel(world.hub.settings.hub_address, _credentials(system))
    held = threading.Event()

    def requests() -> Iterator[bytes]:
        held.wait(20)
        yield from ()

    counts: list[int] = []  # handlers cancelled, per try

    async def cancel_handlers() -> None:
        handlers = list(_handlers())
        for task in handlers:
            task.cancel()
        counts.append(len(handlers))

    def cancelled() -> bool:
        assert world.hub.loop is not None
        asyncio.run_coroutine_threadsafe(cancel_handlers(), world.hub.loop).result(timeout=10)
        return counts[-1] > 0

    call = channel.stream_unary(QUERY, request_serializer=bytes, response_deserializer=bytes).future(
        requests(), timeout=20
    )
    try:
        until(cancelled, "the hub's handler waiting for the request")
    finally:
        held.set()
        call.cancel()  # type: ignore[no-untyped-call]
        channel.close()
    assert counts[-1] == 1  # the only call in flight
    until(lambda: bool(_search(world, actor="system/bdc-cancelled")), "the record")
    (record,) = _search(world, actor="system/bdc-cancelled")
    assert (record["kind"], record["action"], record["subject"]) == ("exchange", "query", QUERY)
    assert record["outcome"] == "denied" and record["reason"].startswith("request_not_received")


def test_past_the_bound_one_record_counts_the_rest(tmp_path: Path) -> None:
    settings = _settings(tmp_path, refusal_records_per_window=3)
    with running_hub(settings) as hub:
        world = make_world(hub)
        system = _system(world, "bdc-flood")
        errors = [_send(world, system, QUERY, GARBAGE) for _ in range(3 + 7)]
        errors.append(_send(world, system, GET_DEPARTMENT, _oversize()))
        ids = [exchange_id_of(e) for e in errors]
    flood = [r for r in _records(settings.effective_database_url) if r["actor"] == "system/bdc-flood"]
    one_by_one = [r for r in flood if r["action"] != "refusals_suppressed"]
    assert [r["exchange_id"] for r in one_by_one] == ids[:3] and len(set(ids[:3])) == 3
    (counting,) = [r for r in flood if r["action"] == "refusals_suppressed"]
    assert counting["rows"] == 8 and counting["kind"] == "refusals" and counting["outcome"] == "denied"
    assert set(ids[3:]) == {counting["exchange_id"]}  # what each counted caller quotes finds the count
    assert counting["actor_department"] == REGISTRY.code


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_window_that_closes_hands_over_its_count_once() -> None:
    clock = _Clock()
    rate = RefusalRate(2, 60, clock)
    caller = m.Principal(m.PrincipalRef(m.PrincipalKind.SYSTEM, "bdc-djxt"), "系统", REGISTRY.code)
    first = [rate.admit(caller) for _ in range(5)]
    assert [a.record for a in first] == [True, True, False, False, False]
    assert all(a.closed is None for a in first)
    clock.now = 59.9
    assert rate.expired() == [] and not rate.admit(caller).record
    clock.now = 60.0
    reopened = rate.admit(caller)  # the next refusal after the window: recorded, and the count handed over
    assert reopened.record and reopened.closed is not None
    assert (reopened.closed.count, reopened.closed.exchange_id) == (4, first[2].exchange_id)
    assert rate.drain() == []
    clock.now = 200.0
    for _ in range(3):
        rate.admit(caller)
    clock.now = 260.0
    (counted,) = rate.expired()  # a sweep after the window closes, with no refusal since
    assert counted.count == 1 and rate.expired() == [] and rate.drain() == []


def test_the_bound_is_per_caller() -> None:
    rate = RefusalRate(1, 60, _Clock())
    one, other = (m.Principal(m.PrincipalRef(m.PrincipalKind.SYSTEM, c), c, REGISTRY.code) for c in ("a", "b"))
    assert rate.admit(one).record and not rate.admit(one).record and rate.admit(other).record
    assert [c.actor for c in rate.drain()] == [one]


def test_the_bound_settings_are_checked() -> None:
    for name in ("refusal_records_per_window", "refusal_window_seconds"):
        with pytest.raises(ConfigError, match=name):
            load(environ={f"EXCHANGE_{name.upper()}": "0"})
