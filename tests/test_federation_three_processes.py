"""Three hubs as three `exchange serve` processes on loopback, each with its own home, CA and store:
思明区 (county) ← 厦门市 (city) ← 福建省 (province), peered both ways by their operators.

One run shows the federation end to end across processes: the province's catalog reaches the county two hops
away, and so does a suspension of one of its entries; the county's department applies through its own hub for
a province entry, decided and granted at the province; the county's system queries it two hops away, masked at
the province; the cross-hub receipt of that query, fetched whole by an auditor at either end (or joined from
each hub's own part), verifies offline (and without the province's part is refused as incomplete); and, at
process level, a peering suspended on the way refuses the call, the province down is UNAVAILABLE naming the
hop, and so is the province served again with a new CA the city does not know; a county allowing one hop is
refused at the province, two hops away, each side recording it. The bad cases of a misbehaving peer (forged,
replayed and looping statements, an altered answer, entries of departments a peer does not hold, a forked
checkpoint) are in tests/test_federation_bad_peers.py.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from exchange import ca, pki
from exchange import models as m
from exchange import wire as w
from exchange.bootstrap import load_witness_key
from exchange.cli.main import main
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import PROVINCE_MARKET, SIMING_MARKET
from tests.harness import AUTHORITY
from tests.served_hubs import (
    PROVINCE_ENTRY,
    PROVINCE_OTHER,
    PROVINCE_PERSON,
    Served,
    audit_records,
    peer_pair,
    publish_at_province,
    remote_codes,
    serve,
    until,
)

ENTRY = PROVINCE_ENTRY
OTHER = PROVINCE_OTHER  # suspended later
PURPOSE = "企业登记核查"
PERSON = PROVINCE_PERSON
SYSTEM = "sm-djxt"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[dict[str, Served]]:
    """The three hubs served, peered county ← city ← province; the province's two entries published."""
    with ExitStack() as stack:
        running = {level: stack.enter_context(serve(tmp_path, level, checkpoint_seconds=0.5)) for level in
                   ("county", "city", "province")}  # fmt: skip
        peer_pair(running["county"], running["city"])
        peer_pair(running["city"], running["province"])
        publish_at_province(running["province"], tmp_path)
        yield running


def _status_at(node: Served, code: str) -> int:
    with node.running.client() as hub:
        return hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=code)).status


def _apply_at_county(county: Served) -> tuple[Path, str]:
    """The county's market department, its clerk and system registered at the county; the clerk applies there
    for the province's entry. The clerk's identity and the county's request id."""
    hub = county.running
    hub.add_department(SIMING_MARKET)
    hub.add_system(SYSTEM, SIMING_MARKET.code)
    clerk = hub.add_person("sm-clerk", SIMING_MARKET.code, m.Role.CONSUMER)
    today = dt.datetime.now(dt.UTC).date()
    app = m.Application(ENTRY, "", (SYSTEM,), PURPOSE, "《市场主体登记管理条例》", ("name", "id_number", "address"),
                        today, today + dt.timedelta(days=30), 100)  # fmt: skip
    with hub.client(clerk) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    assert applied.cross_hub.home_hub_code == "350000"
    return clerk, applied.id


def _decide_at_province(province: Served, county_request: str) -> str:
    """The province's steward approves the county's application (the name masked), its share manager grants."""
    hub = province.running
    steward = hub.certifier(PROVINCE_MARKET.code)
    pending = rpb.ListShareRequestsRequest(resource_code=ENTRY, status=rpb.SHARE_REQUEST_STATUS_PENDING)

    def arrived() -> bool:
        with hub.client(steward) as c:
            found = c.call(c.rights.ListShareRequests, pending).requests
        return any(r.cross_hub.consumer_request_id == county_request for r in found)

    until(arrived, "the county's application at the province")
    with hub.client(steward) as c:
        (request,) = c.call(c.rights.ListShareRequests, pending).requests
        assert (request.consumer_department_code, request.cross_hub.consumer_hub_code) == (SIMING_MARKET.code, "350203")
        masks = [rpb.FieldMask(field="name", mask=rpb.MASK_KIND_NAME)]
        c.call(c.rights.Approve, rpb.ApproveRequest(id=request.id, masks=masks, reason="符合条件"))
    manager = hub.add_person("fj-manager", AUTHORITY.code, m.Role.SHARE_MANAGER)
    with hub.client(manager) as c:
        return str(c.call(c.rights.IssueGrant, rpb.IssueGrantRequest(request_id=request.id)).id)


def _query(county: Served) -> xpb.QueryResponse:
    identity = county.running.identity(m.PrincipalKind.SYSTEM, SYSTEM)
    request = xpb.QueryRequest(
        resource_code=ENTRY, purpose=PURPOSE, filters={"id_number": PERSON}, fields=["name", "address"]
    )
    with county.running.client(identity) as hub:
        return hub.call(hub.exchange.Query, request)


def _refused(county: Served) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        _query(county)
    assert isinstance(info.value, grpc.Call)
    return info.value


def _cli(node: Served, identity: Path, *argv: str) -> int:
    return main(["--hub", node.running.settings.hub_address, "--identity", str(identity), *argv])


def _receipt_part(node: Served, auditor: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> None:
    """``audit cross-receipt`` at ``node``, asked again until the records are under witnessed checkpoints."""

    def made() -> bool:
        done = _cli(node, auditor, "audit", "cross-receipt", *argv) == 0
        said = capsys.readouterr()
        assert done or "witness" in said.err, said.err  # the only refusal to wait out: not yet witnessed
        return done

    until(made, f"a receipt part at hub {node.code}")


def _trust(root: Path, nodes: list[Served]) -> Path:
    """Each hub's log key and witness key, as its operator hands them to an auditor."""
    lines = []
    for node in nodes:
        settings = node.running.settings
        lines.append(pki.HubFiles(settings.home).audit_verifier.read_text().strip())
        lines.append(f"{load_witness_key(settings).verifier().encode()} {settings.audit_origin}")
    path = root / "trusted.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _next_exchange(receipt: Path, origin: str) -> str:
    """The exchange id that hub ``origin``'s "out" record names at the next hub."""
    (part,) = [p for p in json.loads(receipt.read_text())["parts"] if p["origin"] == origin]
    outs = [json.loads(r["record"]) for r in part["records"]]
    (out,) = [r for r in outs if r.get("hop") == "out"]
    return str(out["peer_exchange_id"])


def test_three_served_hubs_share_catalog_rights_and_a_query_two_hops_away_with_its_receipt(
    tree: dict[str, Served], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    # Catalog sync two hops down, and an entry's suspension after it.
    until(lambda: remote_codes(county, province.code) == [ENTRY, OTHER], "the province's entries at the county")
    assert remote_codes(city, province.code) == [ENTRY, OTHER]
    with province.running.client(province.running.certifier(PROVINCE_MARKET.code)) as hub:
        hub.call(hub.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=OTHER, reason="系统升级"))
    suspended = cpb.RESOURCE_STATUS_SUSPENDED
    until(lambda: _status_at(county, OTHER) == suspended == _status_at(city, OTHER), "the suspension at the peers")
    assert _status_at(county, ENTRY) == cpb.RESOURCE_STATUS_PUBLISHED

    # A cross-level share request: the county applies, the province decides and grants, the county sees it.
    clerk, request_id = _apply_at_county(county)
    grant = _decide_at_province(province, request_id)

    def granted() -> bool:
        with county.running.client(clerk) as hub:
            seen = hub.call(hub.rights.GetShareRequest, rpb.GetShareRequestRequest(id=request_id))
        return seen.status == rpb.SHARE_REQUEST_STATUS_GRANTED and seen.grant_id == grant

    until(granted, "the province's grant at the county")

    # A query two hops away, masked at the province.
    answer = _query(county)
    assert [(r.fields["name"].string_value, r.fields["address"].string_value) for r in answer.records] == [
        ("张*", "厦门市思明区湖滨南路1号")
    ]
    assert dict(answer.disclosure.masks) == {"name": "name"}

    # The cross-hub receipt: the county's auditor alone gets the whole chain (the city fetches the province's part).
    auditors = {n.level: n.running.add_person(f"au-{n.level}", AUTHORITY.code, m.Role.AUDITOR) for n in tree.values()}
    origins = {n.level: n.running.settings.audit_origin for n in tree.values()}
    receipt, other = tmp_path / "receipt.json", tmp_path / "at-province.json"
    _receipt_part(county, auditors["county"], capsys, answer.exchange_id, "--out", str(receipt))
    at_city, at_province = _next_exchange(receipt, origins["county"]), _next_exchange(receipt, origins["city"])
    trust = _trust(tmp_path, [county, city, province])
    capsys.readouterr()
    assert main(["audit", "verify-receipt", str(receipt), "--trust", str(trust)]) == 0
    said = capsys.readouterr().out
    proved = [f"{origins['county']}: exchange {answer.exchange_id}", f"{origins['city']}: exchange {at_city}",
              f"{origins['province']}: exchange {at_province}"]  # fmt: skip
    assert all(line in said for line in proved), said
    # The province's auditor, at the other end, gets the same chain from the province alone.
    _receipt_part(province, auditors["province"], capsys, at_province, "--out", str(other))
    assert main(["audit", "verify-receipt", str(other), "--trust", str(trust)]) == 0
    said = capsys.readouterr().out
    assert all(line in said for line in proved), said
    # The other way: each hub's part made there (--own), joined with --merge; without the province's part, the
    # chain stops at the city, whose "out" record names the province, and is refused as incomplete.
    own = {level: tmp_path / f"own-{level}.json" for level in tree}
    for level, exchange_id in (("county", answer.exchange_id), ("city", at_city), ("province", at_province)):
        _receipt_part(tree[level], auditors[level], capsys, exchange_id, "--own", "--out", str(own[level]))
    joined, short = tmp_path / "joined.json", tmp_path / "short.json"
    assert main(["audit", "cross-receipt", "--merge", *(str(p) for p in own.values()), "--out", str(joined)]) == 0
    assert main(["audit", "cross-receipt", "--merge", str(own["county"]), str(own["city"]), "--out", str(short)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify-receipt", str(joined), "--trust", str(trust)]) == 0
    said = capsys.readouterr().out
    assert all(line in said for line in proved), said
    assert main(["audit", "verify-receipt", str(short), "--trust", str(trust)]) == 1
    incomplete = capsys.readouterr().err
    assert "incomplete" in incomplete and f"{origins['province']} (its exchange {at_province})" in incomplete
    # A record of the province's part altered (one more row than it served): the receipt no longer verifies.
    document = json.loads(receipt.read_text())
    (home,) = [p for p in document["parts"] if p["origin"] == origins["province"]]
    served = json.loads(home["records"][0]["record"])
    home["records"][0]["record"] = json.dumps({**served, "rows": served["rows"] + 1}, separators=(",", ":"))
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    assert main(["audit", "verify-receipt", str(altered), "--trust", str(trust)]) == 1
    assert "does NOT verify" in capsys.readouterr().err


def test_a_suspended_peering_refuses_and_the_province_down_is_unavailable_naming_the_hop(
    tree: dict[str, Served],
) -> None:
    county, city, province = tree["county"], tree["city"], tree["province"]
    until(lambda: remote_codes(county, province.code) == [ENTRY, OTHER], "the province's entries at the county")
    # An application waits at the county, submitted again each sync round while the calls below run: each
    # refused submission must not cut the queries sharing the county's channel to the city short.
    _apply_at_county(county)
    with city.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb.SuspendPeerRequest(code=province.code, reason="安全检查"))
    refused = _refused(county)
    assert refused.code() in {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED}
    assert "350000" in (refused.details() or "") and "suspended" in (refused.details() or "")
    with city.running.client() as hub:
        hub.call(hub.federation.ResumePeer, fpb.ResumePeerRequest(code=province.code, reason="检查完毕"))
    auditor = province.running.add_person("au-province", AUTHORITY.code, m.Role.AUDITOR)
    received = [r for r in audit_records(province, auditor, "", "") if r.get("hop") == "in"]
    assert province.stop() == 0
    down = _refused(county)
    assert down.code() == grpc.StatusCode.UNAVAILABLE, down.details()
    assert f"peer hub 350000 at {province.federation}" in (down.details() or "")
    # While it is down, the province's host rotates its CA and makes a new hub certificate, then serves again
    # at the same addresses: the city still holds the old CA for it, so the hop fails and nothing reaches it.
    settings = province.running.settings
    files = pki.HubFiles(settings.home, settings.ca_key_file)
    ca.rotate(files, "福建省政务数据共享平台 CA 2027")
    ca.issue_hub(files, settings.hub_code, settings.hostnames)
    province.restart()
    changed = _refused(county)
    assert changed.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}, changed.details()
    assert f"peer hub 350000 at {province.federation}" in (changed.details() or ""), changed.details()
    assert [r for r in audit_records(province, auditor, "", "") if r.get("hop") == "in"] == received


def test_a_call_beyond_the_origin_hubs_hop_limit_is_refused_and_recorded(tmp_path: Path) -> None:
    """The county allows one hop (federation_hop_limit = 1): the province, two hops away, refuses the call."""
    with ExitStack() as stack:
        county = stack.enter_context(serve(tmp_path, "county", extra={"EXCHANGE_FEDERATION_HOP_LIMIT": "1"}))
        city, province = (stack.enter_context(serve(tmp_path, level)) for level in ("city", "province"))
        peer_pair(county, city)
        peer_pair(city, province)
        publish_at_province(province, tmp_path)
        county.running.add_department(SIMING_MARKET)
        county.running.add_system(SYSTEM, SIMING_MARKET.code)
        until(lambda: remote_codes(county, province.code) == [ENTRY, OTHER], "the province's entries at the county")
        refused = _refused(county)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert "hop limit (350203 → 350200)" in (refused.details() or ""), refused.details()
        auditors = {n.level: n.running.add_person(f"au-{n.level}", AUTHORITY.code, m.Role.AUDITOR)
                    for n in (county, province)}  # fmt: skip
        # Refused before its statement was accepted: the province's record names the hop, not yet the entry.
        until(lambda: audit_records(province, auditors["province"], "denied", "") != [], "the refusal recorded")
        denied = audit_records(province, auditors["province"], "denied", "")
        assert [(r["hop"], r["peer_hub"]) for r in denied] == [("in", city.running.settings.audit_origin)]
        assert "hop limit" in str(denied[0]["reason"])
        failed = audit_records(county, auditors["county"], "failed", ENTRY)
        assert [(r["hop"], r["peer_hub"]) for r in failed] == [("out", city.running.settings.audit_origin)]
