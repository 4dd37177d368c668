"""Cross-hub receipts beyond the adjacent hubs, in running hubs: 思明区 (county) → 厦门市 (city) → 福建省 (province).

An exchange the county forwarded through the city to the province leaves a record at each. An auditor at
any of the three gets the whole chain's receipt from their own hub alone (each hub fetching the parts beyond
it from its own peer), and it verifies offline. A hub beyond that is down is UNAVAILABLE naming it; a part
the middle hub altered is refused at the asker, and one it forged whole under another key is refused offline,
and at the asker once it knows the right key; a hub beyond whose records do not tie the exchange to the
middle hub is a clear FAILED_PRECONDITION; an ask never turns back towards the hubs it came through; and a
chain cut short by the hop limit is refused as incomplete, naming the hub left out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from audit.note import Signer
from audit.receipt import Part, ProvedRecord
from exchange import errors
from exchange import models as m
from exchange.cli.main import main
from exchange.config import Settings
from exchange.server.receipt_chain import FURTHER_UNAVAILABLE, Ask, ChainParts, handed_on
from exchange.server.receipts import Parts
from exchange.store.audit import Entry
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import receipts_pb2 as rpb
from exchange.v1 import receipts_pb2_grpc as rpb_grpc
from tests.federation_support import PROVINCE_MARKET, Node, cross_receipt, hubs, peer_pair, trust_file
from tests.harness import AUTHORITY, identity_spec, reason_of
from tests.witness_support import HubLog, hub_log, record

ENTRY = "10101/350000000001"  # the province's, published for its log key to reach the county with the catalog


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """The three hubs, peered county ← city ← province."""
    with hubs(tmp_path, "county", "city", "province") as running:
        peer_pair(running["county"], running["city"])
        peer_pair(running["city"], running["province"])
        yield running


def _log_of(node: Node) -> HubLog:
    own = HubLog.__new__(HubLog)
    own.store, own.signer, own.log = node.running.hub.store, node.running.hub.audit.signer, node.running.hub.audit
    return own


def _origin(node: Node) -> str:
    return node.running.settings.audit_origin


def _two_hops(tree: dict[str, Node], n: int, *, province_names_city: bool = True) -> tuple[str, str, str]:
    """The county forwarded its exchange to the city, which forwarded it on to the province: each logs its
    records, the city one of each hop; the ids of the exchange at the county, the city and the province."""
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, at_city, at_province = f"EX-C{n}", f"EX-M{n}", f"EX-P{n}"
    _log_of(county).add(record(n, exchange_id=at_county, peer_hub=_origin(city), peer_exchange_id=at_city, hop="out"))
    _log_of(city).add(
        record(n + 1, exchange_id=at_city, peer_hub=_origin(county), peer_exchange_id=at_county, hop="in"),
        record(n + 2, exchange_id=at_city, peer_hub=_origin(province), peer_exchange_id=at_province, hop="out"),
    )
    back = {"peer_hub": _origin(city), "peer_exchange_id": at_city, "hop": "in"} if province_names_city else {}
    _log_of(province).add(record(n + 3, exchange_id=at_province, **back))
    for node in (county, city, province):  # each hub's peers cosign its newest checkpoint
        node.sync()
    return at_county, at_city, at_province


def _auditor(node: Node) -> Path:
    return node.running.add_person(f"au-{node.level}", AUTHORITY.code, m.Role.AUDITOR)


def test_an_auditor_at_any_hub_of_a_two_hop_exchange_gets_the_whole_chain_and_it_verifies_offline(
    tree: dict[str, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _two_hops(tree, 10)
    nodes = [tree["county"], tree["city"], tree["province"]]
    trust = trust_file(tmp_path, nodes)
    for node, exchange_id in zip(nodes, ids, strict=True):
        receipt = tmp_path / f"{node.level}.json"
        assert cross_receipt(node, _auditor(node), exchange_id, receipt) == 0, capsys.readouterr().err
        parts = json.loads(receipt.read_text())["parts"]
        assert sorted(p["origin"] for p in parts) == sorted(_origin(n) for n in nodes)
        capsys.readouterr()
        assert main(["audit", "verify-receipt", str(receipt), "--trust", str(trust)]) == 0
        said = capsys.readouterr().out.splitlines()
        chain = [line.strip() for line in said if "exchange EX-" in line]
        assert [line.split(":")[0] for line in chain] == [_origin(n) for n in nodes]  # in the exchange's order
        assert f"exchange {ids[2]}" in chain[2] and "witnessed by 350200.hub.example/audit/witness" in chain[2]


def test_a_hub_beyond_that_is_down_is_unavailable_naming_it(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, _, _ = _two_hops(tree, 20)
    province.federation.run(province.federation.stop())
    with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    told = refused.value.details() or ""
    assert f"hub {city.code} could not fetch the receipt part of the hub beyond it: peer hub {province.code}" in told
    assert reason_of(refused.value) == FURTHER_UNAVAILABLE
    assert "Peer hub 350200 answered" in told and "--own" in told and "--merge" in told


def test_a_hub_beyond_that_hangs_is_named_before_the_askers_own_call_runs_out(
    tree: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The province answers nothing (slow, not down): the city, asked with the county's deadline, asks it with a
    little less, so the city names the province before the county's own call to the city runs out."""
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, _, _ = _two_hops(tree, 25)
    released = threading.Event()
    records = Parts.records

    def hanging(self: Parts, exchange_id: str) -> list[tuple[Entry, dict[str, object]]]:
        if self.store is province.running.hub.store:
            released.wait(60)  # the province's part is never ready while the county waits
        return records(self, exchange_id)

    monkeypatch.setattr(Parts, "records", hanging)
    try:
        with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as refused:
            hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    finally:
        released.set()
    assert isinstance(refused.value, grpc.Call)
    told = refused.value.details() or ""
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, told
    assert reason_of(refused.value) == FURTHER_UNAVAILABLE, told
    hop = f"hub {city.code} could not fetch the receipt part of the hub beyond it: peer hub {province.code} at "
    assert hop in told and "did not answer fetch a receipt part within" in told
    assert f"peer hub {city.code} at" not in told  # not the county's own hop


def test_the_deadline_handed_on_is_a_little_less_than_the_time_left() -> None:
    assert handed_on(None, 100.0) is None  # an ask without a deadline: each hop its own
    assert handed_on(110.0, 100.0) == pytest.approx(109.0)  # a tenth kept to answer in
    assert handed_on(101.0, 100.0) == pytest.approx(100.7)  # and never less than 0.3 s


def _receipt_request(exchange_id: str) -> apb.GetCrossHubReceiptRequest:
    return apb.GetCrossHubReceiptRequest(exchange_id=exchange_id)


def test_a_part_the_middle_hub_altered_is_refused_at_the_asker(
    tree: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, at_city, _ = _two_hops(tree, 30)
    honest = ChainParts.beyond

    def altering(self: ChainParts, *args: object, **kwargs: object) -> list[Part]:
        """The city passes the province's part on with one more row in its record than it served."""
        found = honest(self, *args, **kwargs)  # type: ignore[arg-type]
        return [_one_more_row(p) if p.origin == _origin(province) else p for p in found]

    monkeypatch.setattr(ChainParts, "beyond", altering)
    chain = ChainParts(county.federation, county.running.hub.store, _origin(county))
    with pytest.raises(errors.DataLoss) as refused:
        chain.fetch(county.peer(city.code), Ask(at_city, 3, (_origin(county),)))
    told = refused.value.message
    assert f"the receipt part of hub {_origin(province)} that peer hub {city.code} passed on does not verify" in told
    # The auditor's call ends the same way, and nothing is written.
    with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as said:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    assert isinstance(said.value, grpc.Call)
    assert said.value.code() == grpc.StatusCode.DATA_LOSS and _origin(province) in (said.value.details() or "")


def _one_more_row(part: Part) -> Part:
    first = part.records[0]
    served = json.loads(first.record)
    altered = json.dumps({**served, "rows": int(served.get("rows", 0)) + 1}, separators=(",", ":"), sort_keys=True)
    return Part(
        part.origin, part.log_key, part.exchange_id, (ProvedRecord(first.seq, altered, first.proof),), part.checkpoint
    )


def test_a_hub_beyond_whose_records_do_not_name_the_middle_hub_is_a_failed_precondition(
    tree: dict[str, Node],
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, _, at_province = _two_hops(tree, 40, province_names_city=False)
    with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    told = refused.value.details() or ""
    assert f"peer hub {city.code}" in told
    assert (
        f"peer hub {province.code} has no record of its exchange {at_province} that names this hub ({city.code})"
        in told
    )


def test_an_ask_never_turns_back_towards_the_hubs_it_came_through(tree: dict[str, Node]) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    _, at_city, _ = _two_hops(tree, 50)

    def ask(path: list[str], hops: int) -> list[str]:
        request = rpb.GetReceiptPartRequest(exchange_id=at_city, further_hops=hops, path=path)

        async def rpc(stub: rpb_grpc.ReceiptServiceAsyncStub, timeout: float) -> rpb.GetReceiptPartResponse:
            return await stub.GetReceiptPart(request, timeout=timeout)

        call = county.federation.call_on(county.peer(city.code), "receipt", rpb_grpc.ReceiptServiceStub, rpc)
        answer = county.federation.run(call)
        return [answer.part.origin, *(p.origin for p in answer.further)]

    assert ask([_origin(county)], 3) == [_origin(city), _origin(province)]
    assert ask([_origin(county)], 0) == [_origin(city)]  # as a hub of an earlier version asks: its own part only
    assert ask([_origin(province), _origin(county)], 3) == [_origin(city)]  # the province is on the way already


def test_a_chain_cut_short_by_the_hop_limit_is_refused_naming_the_hub_left_out(
    tree: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    county, province = tree["county"], tree["province"]
    at_county, _, at_province = _two_hops(tree, 60)
    federation = county.federation
    monkeypatch.setattr(federation, "settings", _with_hop_limit(federation.settings, 1))
    with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "incomplete" in (refused.value.details() or "")
    assert f"{_origin(province)} (its exchange {at_province})" in (refused.value.details() or "")


def _with_hop_limit(settings: Settings, limit: int) -> Settings:
    return replace(settings, federation_hop_limit=limit)


def test_a_part_forged_whole_by_the_middle_hub_is_caught_with_a_key_the_asker_knows_and_offline(
    tree: dict[str, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The city passes on, for the province, a part that holds together under another key for the province's
    log. The county cannot tell while it knows no key for that log (the city vouches for it); verify-receipt
    with the hubs' own keys refuses it; once the province's key reached the county with the catalog, the
    county refuses it itself."""
    county, city, province = tree["county"], tree["city"], tree["province"]
    at_county, at_city, at_province = _two_hops(tree, 70)
    forger = hub_log(f"sqlite:///{tmp_path / 'forged.db'}", Signer.generate(_origin(province)))
    forger.add(record(73, exchange_id=at_province, peer_hub=_origin(city), peer_exchange_id=at_city, hop="in"))
    forged = _own_part(forger, at_province)
    honest = ChainParts.beyond

    def forging(self: ChainParts, *args: object, **kwargs: object) -> list[Part]:
        found = honest(self, *args, **kwargs)  # type: ignore[arg-type]
        return [forged if p.origin == _origin(province) else p for p in found]

    monkeypatch.setattr(ChainParts, "beyond", forging)
    auditor = _auditor(county)
    receipt = tmp_path / "forged-receipt.json"
    assert cross_receipt(county, auditor, at_county, receipt) == 0, capsys.readouterr().err
    capsys.readouterr()
    trust = trust_file(tmp_path, [county, city, province])
    assert main(["audit", "verify-receipt", str(receipt), "--trust", str(trust)]) == 1
    assert f"{_origin(province)}: the receipt states another log key than the one you trust" in capsys.readouterr().err

    _publish_at(province)
    for node in (city, county):
        node.sync()  # the entry, with its home's log key, relayed down to the county
    assert county.running.hub.store.federated.get(ENTRY) is not None
    with county.running.client(auditor) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request(at_county))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS, refused.value.details()
    assert "does not verify with the log key this hub knows for it" in (refused.value.details() or "")
    forger.store.close()


def _publish_at(node: Node) -> None:
    hub = node.running
    hub.add_department(PROVINCE_MARKET)
    hub.publish(hub.certifier(PROVINCE_MARKET.code), identity_spec(ENTRY, PROVINCE_MARKET.code))


def _own_part(h: HubLog, exchange_id: str) -> Part:
    """``h``'s part of ``exchange_id`` under its newest checkpoint (no witness: what a forger can make)."""
    size = h.store.audit.size()
    note = h.store.audit.checkpoints(size, size)[0][1]
    entries = [e for e in h.store.audit.entries(0, size) if f'"exchange_id":"{exchange_id}"' in (e.record or "")]
    records = tuple(ProvedRecord(e.seq, e.record or "", tuple(h.log.inclusion_proof(e.seq, size))) for e in entries)
    return Part(h.origin, h.signer.verifier().encode(), exchange_id, records, note)


def test_a_hop_that_failed_before_the_next_hub_answered_is_refused_saying_so(tree: dict[str, Node]) -> None:
    county, city = tree["county"], tree["city"]
    failed = {"peer_hub": _origin(city), "peer_exchange_id": "", "hop": "out", "outcome": "failed"}
    _log_of(county).add(record(80, exchange_id="EX-C80", **failed))
    county.sync()
    with county.running.client(_auditor(county)) as hub, pytest.raises(grpc.RpcError) as refused:
        hub.call(hub.audit.GetCrossHubReceipt, _receipt_request("EX-C80"))
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "names peer hub 350200 but not its id of the exchange: the hop failed" in (refused.value.details() or "")
