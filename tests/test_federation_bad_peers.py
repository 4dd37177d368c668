"""The federation's bad cases against hubs served as separate `exchange serve` processes (issue 15): a peer that
forges, replays or loops a forwarded statement; a hub on the way that alters an answer (a query, a stream); a
peer offering catalog entries of departments it does not hold; a peer that shows a forked checkpoint of its log.

The honest hubs are real processes, each with its own home, CA and store. The misbehaving party is a hub of the
test's own (tests/rogue_peers.py): its own CA, hub certificate and log key, registered by the served hubs'
operators as any peer. Each case checks the status and message the caller sees, the refusal in the refusing
hub's audit log (read by its auditor over its AuditService) and in its process log, and that no record reached
a party that should not have it.

One world is shared by the cases at the city (served county ← city ← province, and the rogue 湖里区 hub 350206
as the city's second child); the altered answer has its own (served county ← rogue city ← served province).
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncGenerator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from audit.forwarded import Forwarded
from audit.note import Checkpoint, Signer, open_note
from exchange import models as m
from exchange.bootstrap import load_audit_signer
from exchange.federation.model import HubRef, Offer, Peer
from exchange.server.witness import old_size_asked, proof_from
from exchange.services.federation.forwarding_parts import Part
from exchange.store import Store
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from exchange.v1 import forwarding_pb2 as fwpb
from exchange.v1 import witness_pb2 as wpb
from exchange.v1 import witness_pb2_grpc as wpb_grpc
from tests.federation_support import PROVINCE_MARKET, SIMING_MARKET, Node, department
from tests.harness import AUTHORITY, identity_spec
from tests.hub_process import free_port
from tests.rogue_peers import channel_as, forward, query_bytes, rogue_hub, signed, statement
from tests.served_hubs import (
    PEOPLE_ITEMS,
    Served,
    audit_records,
    grant_locally,
    peer_pair,
    people_table,
    publish_sql,
    remote_codes,
    serve,
    until,
)
from tests.witness_support import hub_log, record

ENTRY = "10101/350000000001"
PURPOSE = "企业登记核查"
PERSON = "350203198001012345"
COMPANY = "91350203MA2Y000001"
HULI = department("350206", "0077889", "湖里区市场监督管理局", m.AdministrativeLevel.COUNTY)
JIMEI = department("350211", "0066778", "集美区市场监督管理局", m.AdministrativeLevel.COUNTY)
ROGUE = ("350206", "湖里区政务数据共享平台")
ROGUE_SYSTEM = "hl-djxt"
SYSTEM = "sm-djxt"


def _publish_at_province(province: Served, root: Path) -> None:
    """The province's entry bound to a table of one person and two people of one company."""
    province.running.add_department(PROVINCE_MARKET)
    url = f"sqlite:///{root / 'qy.db'}"
    people = [("张三", PERSON, "厦门市思明区湖滨南路1号"), ("李四", COMPANY, "厦门市"), ("王五", COMPANY, "厦门市")]
    people_table(url, people)
    spec = identity_spec(ENTRY, PROVINCE_MARKET.code, name="企业人员身份信息", data_items=PEOPLE_ITEMS)
    publish_sql(province, province.running.certifier(PROVINCE_MARKET.code), spec, url, "qy")


@dataclass
class World:
    """Served county ← city ← province, the rogue hub 350206 a second child of the city, and their auditors."""

    county: Served
    city: Served
    province: Served
    rogue: Node
    metrics: str  # the city's metrics endpoint
    auditors: dict[str, Path]
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-peers")
    metrics = f"127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        county = stack.enter_context(serve(root, "county", checkpoint_seconds=0.5))
        city = stack.enter_context(
            serve(root, "city", checkpoint_seconds=0.5, extra={"EXCHANGE_METRICS_LISTEN": metrics})
        )
        province = stack.enter_context(serve(root, "province", checkpoint_seconds=0.5))
        rogue = stack.enter_context(rogue_hub(root, "county", *ROGUE))
        peer_pair(county, city)
        peer_pair(city, province)
        peer_pair(rogue, city)
        _publish_at_province(province, root)
        # The rogue's department holds a real grant at the province: its honest calls are served.
        grant_locally(province, ENTRY, owner=PROVINCE_MARKET.code, consumer=HULI, system=ROGUE_SYSTEM,
                      fields=("name", "id_number", "address"), purpose=PURPOSE)  # fmt: skip
        until(lambda: remote_codes(city, province.code) == [ENTRY], "the province's entry at the city")
        auditors = {n.level: n.running.add_person(f"au-{n.level}", AUTHORITY.code, m.Role.AUDITOR)
                    for n in (county, city, province)}  # fmt: skip
        yield World(county, city, province, rogue, f"http://{metrics}/metrics", auditors, root)


def _raw(fields: tuple[str, ...] = ("address",)) -> bytes:
    return query_bytes(ENTRY, PURPOSE, {"id_number": PERSON}, list(fields))


def _honest(world: World, raw: bytes) -> Forwarded:
    """The statement the rogue would honestly sign for ``raw``, as the origin of its own department's call."""
    return statement(world.rogue, world.city, raw, home=world.province.code, department=HULI.code, system=ROGUE_SYSTEM)


def _own_key(world: World) -> Signer:
    return world.rogue.running.hub.audit.signer


def _refused_at_city(world: World, note: str, raw: bytes) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        forward(world.rogue, world.city, note, raw)
    assert isinstance(info.value, grpc.Call)
    return info.value


def _denied_at(node: Served, auditor: Path, said: str, count: int) -> list[dict[str, object]]:
    """``node``'s records of forwarded calls from the rogue it refused saying ``said``, once ``count`` are in."""

    def denied() -> list[dict[str, object]]:
        found = audit_records(node, auditor, "denied")
        return [r for r in found if r.get("actor") == f"hub/{ROGUE[0]}" and said in str(r.get("reason"))]

    until(lambda: len(denied()) == count, f"{count} refusal(s) saying {said!r} in hub {node.code}'s audit log")
    return denied()


def _nothing_passed_on(world: World, refused: list[dict[str, object]]) -> None:
    """The city passed none of the refused calls on: it has no record of them but its refusal."""
    auditor = world.auditors["city"]
    for r in refused:
        assert r["hop"] == "in" and r["outcome"] == "denied"
        records = audit_records(world.city, auditor, "", exchange_id=str(r["exchange_id"]))
        assert [x["outcome"] for x in records] == ["denied"]


def test_a_forged_or_altered_statement_is_refused_by_the_city_process(world: World) -> None:
    raw = _raw()
    said = _honest(world, raw)
    other_key = signed(said, Signer.generate(world.rogue.running.settings.audit_origin))  # its name, not its key
    widened = signed(said, _own_key(world)).replace(f"purpose {PURPOSE}\n", "purpose 另一个目的\n")  # after signing
    assert "purpose 另一个目的\nhops_left" in widened
    for note in (other_key, widened):
        refused = _refused_at_city(world, note, raw)
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED, refused.details()
        assert (
            "forwarded call from peer hub 350206 refused (signature): the forwarded statement is not signed by the "
            "calling hub" in (refused.details() or "")
        ), refused.details()
    denied = _denied_at(world.city, world.auditors["city"], "refused (signature)", 2)
    _nothing_passed_on(world, denied)
    assert "forwarded query from peer hub 350206 refused" in world.city.log.read_text()


def test_a_replayed_statement_is_refused_also_after_the_city_process_restarts(world: World) -> None:
    raw = _raw()
    note = signed(_honest(world, raw), _own_key(world))
    answer = xpb.QueryResponse.FromString(forward(world.rogue, world.city, note, raw).response)
    assert [r.fields["address"].string_value for r in answer.records] == ["厦门市思明区湖滨南路1号"]  # once: served
    message = "refused (replay): the forwarded statement"
    again = _refused_at_city(world, note, raw)
    assert again.code() is grpc.StatusCode.PERMISSION_DENIED and message in (again.details() or ""), again.details()
    assert "was already used" in (again.details() or "")
    world.city.restart()  # the replay guard is in the city's store, not its memory
    after = _refused_at_city(world, note, raw)
    assert after.code() is grpc.StatusCode.PERMISSION_DENIED and message in (after.details() or ""), after.details()
    _nothing_passed_on(world, _denied_at(world.city, world.auditors["city"], "(replay)", 2))

    def served() -> list[dict[str, object]]:
        found = audit_records(world.province, world.auditors["province"], "ok", ENTRY)
        return [r for r in found if r.get("actor") == f"system/{ROGUE_SYSTEM}"]

    until(lambda: served() != [], "the rogue's one honest call served at the province")
    assert len(served()) == 1


def test_a_statement_routed_in_a_loop_is_refused_by_the_city_process(world: World) -> None:
    raw = _raw()
    honest = _honest(world, raw)
    # The route already names the city; and a route from the province, which the city would send it back to.
    through_city = replace(honest, path=(world.city.code, ROGUE[0]), exchanges=("EXa", "EXb"))
    from_province = replace(honest, path=(world.province.code, ROGUE[0]), exchanges=("EXc", "EXd"))
    cases = (
        (through_city, "refused (loop): the call has already passed this hub (350200 → 350206)"),
        (from_province, "its next hop 350000 is on its path already (350000 → 350206): a routing loop"),
    )
    for said, message in cases:
        refused = _refused_at_city(world, signed(said, _own_key(world)), raw)
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert message in (refused.details() or ""), refused.details()
        assert "350206" in (refused.details() or "")
    _nothing_passed_on(world, _denied_at(world.city, world.auditors["city"], "(loop)", 1))
    _nothing_passed_on(world, _denied_at(world.city, world.auditors["city"], "a routing loop", 1))


def _claiming_home_elsewhere(rogue: Node, code: str, home: HubRef) -> None:
    """The rogue's offers, replaced by ones that name ``home`` as the home of its entry ``code``."""
    catalog = rogue.federation.catalog
    honest = catalog.offers

    def claiming(peer: Peer, after: int, size: int) -> tuple[list[Offer], int]:
        found, last = honest(peer, after, size)
        return [replace(o, home=home) if o.resource.spec.code == code else o for o in found], last

    catalog.offers = claiming  # type: ignore[method-assign]


def test_entries_of_departments_the_peer_does_not_hold_are_refused_and_never_reach_the_county(world: World) -> None:
    hub = world.rogue.running
    held, elsewhere = "10101/350206000001", "10101/350211000001"
    foreign = {"10101/350206000008": SIMING_MARKET, "10101/350206000009": PROVINCE_MARKET}
    # An entry of 集美区's department, offered as homed at 集美区's hub: not a hub within the rogue's division.
    _claiming_home_elsewhere(world.rogue, elsewhere, HubRef("350211", "集美区政务数据共享平台", "county"))
    for d in (HULI, JIMEI, *foreign.values()):
        hub.add_department(d)
    for code, d in ((held, HULI), (elsewhere, JIMEI), *foreign.items()):
        hub.publish(hub.certifier(d.code), identity_spec(code, d.code))
    until(lambda: remote_codes(world.city, ROGUE[0]) == [held], "the rogue's own entry at the city")
    refused = _denied_at(world.city, world.auditors["city"], "is not held by its home hub 350206", 2)
    assert {(r["action"], r["resource"]) for r in refused} == {("refuse_offer", code) for code in foreign}
    for r in refused:
        d = foreign[str(r["resource"])]
        said = f"its department {d.code} (division {d.division_code}) is not held by its home hub 350206"
        assert said in str(r["reason"])
    (claimed,) = _denied_at(world.city, world.auditors["city"], "a child, may offer only entries homed within", 1)
    assert (claimed["action"], claimed["resource"]) == ("refuse_offer", elsewhere)
    assert "hub 350206, a child, may offer only entries homed within its division, not at 350211" in str(
        claimed["reason"]
    )
    assert "federation: refused from hub 350206: entry 10101/350206000008" in world.city.log.read_text()
    assert remote_codes(world.city, "350211") == []
    # The county, below the city, gets the rogue's own entry and never the others; so does the province.
    until(lambda: remote_codes(world.county, ROGUE[0]) == [held], "the rogue's own entry at the county")
    until(lambda: remote_codes(world.province, ROGUE[0]) == [held], "the rogue's own entry at the province")
    assert remote_codes(world.county, "350211") == [] == remote_codes(world.province, "350211")


def _forks_counted(world: World) -> float:
    """exchange_federation_forks_total{peer="350206",where="seen_here"} as the city's metrics endpoint shows it."""
    with urllib.request.urlopen(world.metrics, timeout=10) as answer:
        text = answer.read().decode()
    sample = f'exchange_federation_forks_total{{peer="{ROGUE[0]}",where="seen_here"}} '
    lines = [line for line in text.splitlines() if line.startswith(sample)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_forked_checkpoint_is_refused_kept_recorded_and_counted_by_the_city_process(world: World) -> None:
    rogue = world.rogue
    rogue.sync()  # the rogue's real checkpoint, cosigned by the city: the city has seen its log
    # A second history of the rogue's log, signed with its key (a copied key, or a store restored from a backup).
    forked = hub_log(f"sqlite:///{world.root / 'fork.db'}", load_audit_signer(rogue.running.settings))
    forked.add(record(1))
    with channel_as(rogue, world.city) as channel:
        stub = wpb_grpc.WitnessServiceStub(channel)

        def add(old: int, proof: list[bytes]) -> Any:  # the refusal: a grpc.RpcError that is a grpc.Call
            request = wpb.AddCheckpointRequest(old_size=old, consistency_proof=proof, checkpoint=forked.latest_note())
            with pytest.raises(grpc.RpcError) as info:
                stub.AddCheckpoint(request, timeout=30)
            assert isinstance(info.value, grpc.Call)
            return info.value

        seen = old_size_asked(add(0, []))  # the witness says which size of the rogue's log it holds
        assert seen is not None and seen > 1
        size = forked.add(*(record(100 + n) for n in range(seen - 1)))  # as large as the one it saw: another root
        assert size == seen
        same_size, offered = add(seen, []), [forked.latest_note()]
        grown = forked.add(*(record(200 + n) for n in range(3)))  # larger: only the consistency proof can tell
        inconsistent = add(seen, proof_from(forked.log, seen, grown))
        offered.append(forked.latest_note())
    origin = rogue.running.settings.audit_origin
    for refused, said in (
        (same_size, f"two checkpoints of size {seen} with different roots"),
        (inconsistent, f"the tree of size {grown} is not consistent with the one of size {seen}"),
    ):
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert said in (refused.details() or "") and origin in (refused.details() or ""), refused.details()
    forked.store.close()

    def recorded() -> list[dict[str, object]]:
        found = audit_records(world.city, world.auditors["city"], "denied")
        return [r for r in found if r.get("action") == "refuse_fork" and r.get("subject") == origin]

    until(lambda: len(recorded()) == 2, "the two forks in the city's audit log")
    assert sorted(str(r["reason"]).split(" (")[0] for r in recorded()) == sorted(
        [f"two checkpoints of size {seen} with different roots", f"the tree of size {grown} is not consistent "
         f"with the one of size {seen}"]
    )  # fmt: skip
    assert f"witness refused a forked checkpoint of {origin}" in world.city.log.read_text()
    assert _forks_counted(world) == 2
    # The evidence: both checkpoints of each fork, kept in the city's store as they were signed.
    store = Store(world.city.running.settings.effective_database_url)
    try:
        forks = store.witness.forks(origin)
    finally:
        store.close()
    assert sorted(f.offered_note for f in forks) == sorted(offered)
    real = rogue.running.hub.audit.signer.verifier()  # what the city saw: the rogue's real checkpoint of that size
    assert {Checkpoint.parse(open_note(f.seen_note, real)).size for f in forks} == {seen}


# An answer altered on the way: the county's parent is the rogue.


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[tuple[Served, Node]]:
    """Served county ← rogue city (350200, in this process) ← served province; the province's entry granted to
    the county's department (name masked) and catalogued at the county; the county's system registered."""
    with ExitStack() as stack:
        county = stack.enter_context(serve(tmp_path, "county", checkpoint_seconds=0.5))
        province = stack.enter_context(serve(tmp_path, "province", checkpoint_seconds=0.5))
        rogue = stack.enter_context(rogue_hub(tmp_path, "city", "350200", "厦门市政务数据共享平台"))
        peer_pair(rogue, province)
        peer_pair(county, rogue)
        _publish_at_province(province, tmp_path)
        grant_locally(province, ENTRY, owner=PROVINCE_MARKET.code, consumer=SIMING_MARKET, system=SYSTEM,
                      fields=("name", "id_number", "address"), purpose=PURPOSE)  # fmt: skip
        until(lambda: _pulled(rogue), "the province's entry at the rogue city")
        until(lambda: remote_codes(county, province.code) == [ENTRY], "the province's entry at the county")
        county.running.add_department(SIMING_MARKET)
        county.running.add_system(SYSTEM, SIMING_MARKET.code)
        yield county, rogue


def _pulled(rogue: Node) -> bool:
    """One sync round of the rogue (its loop waits for the test); whether it holds the province's entry."""
    rogue.sync()
    return rogue.running.hub.store.federated.get(ENTRY) is not None


def _widen(rogue: Node) -> None:
    """The rogue's serving of forwarded calls, replaced by one that unmasks the names in what it sends back, after
    its own checks passed the province's answer: a query's answer, a stream's batches."""
    forwarding = rogue.federation.forwarding
    assert forwarding is not None
    receive, receive_parts = forwarding.receive, forwarding.receive_parts

    def unmasked(records: Any) -> None:
        for r in records:
            r.fields["name"].string_value = r.fields["name"].string_value.replace("*", "三")

    async def query(peer: Peer, note: str, raw: bytes, deadline: float | None) -> fwpb.ForwardQueryResponse:
        answer = await receive(peer, note, raw, deadline)
        response = xpb.QueryResponse.FromString(answer.response)
        unmasked(response.records)
        answer.response = response.SerializeToString()
        return answer

    async def stream(
        peer: Peer, note: str, raw: bytes, call: str, deadline: float | None
    ) -> AsyncGenerator[Part, None]:
        async for part in receive_parts(peer, note, raw, call, deadline):
            batch = xpb.QueryBatch.FromString(part.payload)
            unmasked(batch.records)
            yield replace(part, payload=batch.SerializeToString())

    forwarding.receive, forwarding.receive_parts = query, stream  # type: ignore[method-assign]


def test_an_answer_altered_by_the_hub_on_the_way_is_refused_by_the_county_process(
    relayed: tuple[Served, Node],
) -> None:
    county, rogue = relayed
    identity = county.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    query = xpb.QueryRequest(resource_code=ENTRY, purpose=PURPOSE, filters={"id_number": PERSON}, fields=["name"])
    with county.running.client(identity) as client:
        stub = exchange_pb2_grpc.ExchangeServiceStub(client.channel)
        honest = stub.Query(query, timeout=30)
        assert [r.fields["name"].string_value for r in honest.records] == ["张*"]  # masked at the province
        _widen(rogue)
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(query, timeout=30)
        streamed: list[xpb.QueryBatch] = []
        asked = xpb.QueryRequest(resource_code=ENTRY, purpose=PURPOSE, filters={"id_number": COMPANY},
                                 fields=["name"], batch_size=1)  # fmt: skip
        with pytest.raises(grpc.RpcError) as streaming:
            streamed.extend(stub.StreamQuery(asked, timeout=30))
    hop = f"peer hub 350200 at {rogue.address}"
    for error, said in (
        (info.value, f"the answer that came back from {hop} is not the one hub 350000 signed"),
        (streaming.value, f"a batch that came back from {hop} is not one hub 350000 signed"),
    ):
        assert isinstance(error, grpc.Call)
        assert error.code() is grpc.StatusCode.DATA_LOSS, error.details()
        assert said in (error.details() or ""), error.details()
    assert streamed == []  # the county's system received no record of the altered stream
    auditor = county.running.add_person("au-county", AUTHORITY.code, m.Role.AUDITOR)

    def failed() -> list[dict[str, object]]:
        return [r for r in audit_records(county, auditor, "failed", ENTRY) if r.get("hop") == "out"]

    def reasons() -> str:
        return "\n".join(str(r["reason"]) for r in failed())

    until(lambda: "is not one hub 350000 signed" in reasons(), "the stream's failed hop in the county's audit log")
    assert "is not the one hub 350000 signed" in reasons()  # the query's
    assert {r["peer_hub"] for r in failed()} == {"350200.hub.example/audit"}
    assert "is not the one hub 350000 signed" in county.log.read_text()
