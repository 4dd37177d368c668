"""Logs that vouch for each other, in running hubs: peers cosign each other's checkpoints in their sync rounds,
refuse a suspended peer, another log's checkpoint and a fork (keeping the evidence, the submitter logging it),
and an auditor at either end gets a cross-hub receipt of one exchange that verifies offline."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audit.cosignature import WitnessVerifier, split_note, with_cosignatures
from audit.note import Checkpoint, open_note
from exchange import errors
from exchange import models as m
from exchange.bootstrap import load_audit_signer, load_witness_key
from exchange.cli.main import main
from exchange.federation.model import PeerState
from exchange.server.federation_witness import Submission
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import receipts_pb2 as rpb
from exchange.v1 import receipts_pb2_grpc as rpb_grpc
from exchange.v1 import witness_pb2 as wpb
from exchange.v1 import witness_pb2_grpc as wpb_grpc
from tests.federation_support import Node, cross_receipt, hubs, peer_pair, trust_file
from tests.harness import AUTHORITY
from tests.witness_support import HubLog, hub_log, record

AGE = "exchange_federation_witnessed_age_seconds"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, Node]]:
    with hubs(tmp_path, "city", "province") as running:
        peer_pair(running["city"], running["province"])
        yield running


def _log_of(node: Node) -> HubLog:
    """The running hub's own audit log, to add records to as its exchanges would."""
    own = HubLog.__new__(HubLog)
    own.store, own.signer, own.log = node.running.hub.store, node.running.hub.audit.signer, node.running.hub.audit
    return own


def _auditor(node: Node) -> Path:
    return node.running.add_person(f"au-{node.level}", AUTHORITY.code, m.Role.AUDITOR)


def _witnessed(node: Node, auditor: Path) -> apb.SignedCheckpoint:
    with node.running.client(auditor) as hub:
        return hub.call(hub.audit.GetCheckpoint, apb.GetCheckpointRequest(witnessed=True))


def _witness_of(node: Node) -> WitnessVerifier:
    return load_witness_key(node.running.settings).verifier()


def test_peers_cosign_each_others_checkpoints_as_their_logs_grow(pair: dict[str, Node], tmp_path: Path) -> None:
    city, province = pair["city"], pair["province"]
    auditor = _auditor(city)
    first = _log_of(city).add(record(1), record(2))
    _log_of(province).add(record(3))
    city.sync()
    province.sync()
    head = _witnessed(city, auditor)
    assert head.size >= first
    note = with_cosignatures(head.note, list(head.cosignatures))
    found = _witness_of(province).find(note)  # verifies with the province's own witness key
    assert found.name == f"{province.running.settings.audit_origin}/witness"
    assert _witness_of(city).find(with_cosignatures(*_province_head(province))).name.startswith("350200")

    grown = _log_of(city).add(record(4), record(5), record(6))
    city.sync()  # from the size the province cosigned, with a consistency proof
    later = _witnessed(city, auditor)
    assert later.size == grown > head.size
    text, _ = split_note(later.note)
    assert Checkpoint.parse(text).size == grown
    _witness_of(province).find(with_cosignatures(later.note, list(later.cosignatures)))
    seen = province.running.hub.store.witness.seen(city.running.settings.audit_origin)
    assert seen is not None and seen.size == grown
    age = city.running.hub.metrics.registry.get_sample_value(AGE, {"peer": province.code})
    assert age is not None and age >= 0  # the province's newest cosignature of the city's log, measured
    held = tmp_path / "witnessed.note"  # the auditor's CLI writes the witnessed checkpoint with its cosignatures
    argv = ["--hub", city.running.settings.hub_address, "--identity", str(auditor), "audit", "checkpoint"]
    assert main([*argv, "--witnessed", "--out", str(held)]) == 0
    assert _witness_of(province).find(held.read_text(encoding="utf-8")).timestamp >= found.timestamp


def _province_head(province: Node) -> tuple[str, list[str]]:
    store = province.running.hub.store
    size = store.witness.newest_cosigned()
    return store.audit.checkpoints(size, size)[0][1], store.witness.cosignatures(size)


def _submit(node: Node, code: str, submission: Submission | None = None) -> None:
    """``node`` submits its checkpoint to ``code`` as if the peering were active on its side."""
    federation = node.federation
    assert federation.witnessing is not None
    peer = dataclasses.replace(node.peer(code), state=PeerState.ACTIVE)
    federation.run((submission or federation.witnessing.submission).submit(federation, peer))


def test_a_suspended_peers_submission_is_refused(pair: dict[str, Node]) -> None:
    city, province = pair["city"], pair["province"]
    origin = province.running.settings.audit_origin

    def seen_size() -> int:
        seen = city.running.hub.store.witness.seen(origin)
        return seen.size if seen is not None else 0

    with city.running.client() as hub:
        hub.call(hub.federation.SuspendPeer, fpb.SuspendPeerRequest(code=province.code, reason="安全检查"))
    before = seen_size()
    assert city.running.hub.metrics.registry.get_sample_value(AGE, {"peer": province.code}) is None  # not active
    grown = _log_of(province).add(record(1))
    with pytest.raises(errors.PermissionDenied, match=r"hub 350000 may not submit its checkpoint to be witnessed"):
        _submit(province, city.code)
    assert seen_size() == before < grown

    with city.running.client() as hub:
        hub.call(hub.federation.ResumePeer, fpb.ResumePeerRequest(code=province.code, reason="检查完毕"))
    grown = _log_of(province).add(record(2))
    _submit(province, city.code)  # accepted again, without a restart
    assert seen_size() == grown


def test_a_checkpoint_of_another_log_than_the_callers_is_refused(pair: dict[str, Node], tmp_path: Path) -> None:
    city, province = pair["city"], pair["province"]
    other = hub_log(f"sqlite:///{tmp_path / 'other.db'}", load_audit_signer(city.running.settings))
    other.add(record(1))  # the city's log origin and key, submitted by the province
    request = wpb.AddCheckpointRequest(old_size=0, checkpoint=other.latest_note())

    async def rpc(stub: wpb_grpc.WitnessServiceAsyncStub, timeout: float) -> wpb.AddCheckpointResponse:
        return await stub.AddCheckpoint(request, timeout=timeout)

    peer = province.peer(city.code)
    call = province.federation.call_on(peer, "witness", wpb_grpc.WitnessServiceStub, rpc)
    with pytest.raises(errors.PermissionDenied, match=r"hub 350000 may submit only checkpoints of its own log"):
        province.federation.run(call)
    other.store.close()


def test_a_forked_checkpoint_is_refused_kept_and_logged_by_the_submitter(
    pair: dict[str, Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    city, province = pair["city"], pair["province"]
    _log_of(city).add(record(1), record(2))
    city.sync()
    origin = city.running.settings.audit_origin
    assert province.running.hub.store.witness.seen(origin) is not None
    # A second history of the city's log, signed with its key: what a hub restored from an old copy would show.
    forked = hub_log(f"sqlite:///{tmp_path / 'fork.db'}", load_audit_signer(city.running.settings))
    size = city.running.hub.store.audit.size()
    forked.add(*(record(100 + n) for n in range(size + 3)))  # larger, so that only its proof can tell
    metrics = city.running.hub.metrics
    caplog.set_level(logging.ERROR, logger="exchange.server.federation_witness")
    with pytest.raises(errors.FailedPrecondition, match="as a FORK of its log") as refused:
        _submit(city, province.code, Submission(forked.store, forked.log, metrics))
    assert refused.value.kind == "FORK"
    assert any("refused this hub's checkpoint" in r.message and r.levelno == logging.ERROR for r in caplog.records)
    sample = metrics.registry.get_sample_value
    assert sample("exchange_federation_forks_total", {"peer": province.code, "where": "refused_by_peer"}) == 1
    seen_here = {"peer": city.code, "where": "seen_here"}
    assert province.running.hub.metrics.registry.get_sample_value("exchange_federation_forks_total", seen_here) == 1
    [fork] = province.running.hub.store.witness.forks(origin)
    assert fork.offered_note == forked.latest_note()
    held = Checkpoint.parse(open_note(fork.seen_note, city.running.hub.audit.signer.verifier()))
    assert held.size >= 2 and held.origin == origin
    forked.store.close()


def test_a_log_rolled_back_below_what_the_peer_saw_is_told_as_a_fork(pair: dict[str, Node], tmp_path: Path) -> None:
    city, province = pair["city"], pair["province"]
    _log_of(city).add(record(1), record(2))
    city.sync()
    older = hub_log(f"sqlite:///{tmp_path / 'older.db'}", load_audit_signer(city.running.settings))
    older.add(record(1))  # a copy of the city's log from before the province saw it grow
    metrics = city.running.hub.metrics
    with pytest.raises(errors.FailedPrecondition, match="as a FORK of its log") as refused:
        _submit(city, province.code, Submission(older.store, older.log, metrics))
    assert "the witness last saw the log" in refused.value.message
    sample = metrics.registry.get_sample_value
    assert sample("exchange_federation_forks_total", {"peer": province.code, "where": "refused_by_peer"}) == 1
    older.store.close()


def _linked(city: Node, province: Node) -> None:
    """The city forwarded its exchange EX-CITY to the province, which served it as EX-PROV: each logs its record."""
    city_origin, province_origin = city.running.settings.audit_origin, province.running.settings.audit_origin
    _log_of(city).add(record(1, exchange_id="EX-CITY", peer_hub=province_origin, peer_exchange_id="EX-PROV", hop="out"))
    _log_of(province).add(
        record(2, exchange_id="EX-PROV", peer_hub=city_origin, peer_exchange_id="EX-CITY", hop="in"),
        record(3, exchange_id="EX-OTHER"),  # the province's own exchange, the city no party to it
    )


def test_a_cross_hub_receipt_is_fetched_at_either_end_and_verifies_offline(
    pair: dict[str, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    city, province = pair["city"], pair["province"]
    auditors = {"city": _auditor(city), "province": _auditor(province)}
    _linked(city, province)
    out = tmp_path / "early.json"
    assert cross_receipt(city, auditors["city"], "EX-CITY", out) != 0  # not yet witnessed by the province
    assert "not yet under a checkpoint witnessed by hub 350000" in capsys.readouterr().err
    city.sync()
    province.sync()
    trust = trust_file(tmp_path, [city, province])
    for node, exchange_id in ((city, "EX-CITY"), (province, "EX-PROV")):
        receipt = tmp_path / f"{node.level}.json"
        assert cross_receipt(node, auditors[node.level], exchange_id, receipt) == 0
        capsys.readouterr()
        assert main(["audit", "verify-receipt", str(receipt), "--trust", str(trust)]) == 0
        said = capsys.readouterr().out
        assert f"{city.running.settings.audit_origin}: exchange EX-CITY" in said
        assert f"{province.running.settings.audit_origin}: exchange EX-PROV" in said
        assert "witnessed by 350000.hub.example/audit/witness" in said  # the city's part, by the province


def test_the_part_of_an_exchange_the_caller_was_not_party_to_is_not_found(
    pair: dict[str, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    city, province = pair["city"], pair["province"]
    _linked(city, province)
    province_origin = province.running.settings.audit_origin
    # A city record claiming the province's own exchange EX-OTHER: the province does not give it.
    _log_of(city).add(record(4, exchange_id="EX-CLAIM", peer_hub=province_origin, peer_exchange_id="EX-OTHER"))
    city.sync()
    province.sync()

    def ask(exchange_id: str) -> tuple[grpc.StatusCode, str]:
        request = rpb.GetReceiptPartRequest(exchange_id=exchange_id)

        async def rpc(stub: rpb_grpc.ReceiptServiceAsyncStub, timeout: float) -> tuple[grpc.StatusCode, str]:
            try:
                part = await stub.GetReceiptPart(request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details() or ""
            return grpc.StatusCode.OK, part.part.origin

        peer = city.peer(province.code)
        return city.federation.run(city.federation.call_on(peer, "receipt", rpb_grpc.ReceiptServiceStub, rpc))

    assert ask("EX-PROV") == (grpc.StatusCode.OK, province.running.settings.audit_origin)
    other, missing = ask("EX-OTHER"), ask("EX-NONE")
    assert other[0] == missing[0] == grpc.StatusCode.NOT_FOUND
    assert other[1].replace("EX-OTHER", "X") == missing[1].replace("EX-NONE", "X")  # nothing tells them apart

    auditor = _auditor(city)
    assert cross_receipt(city, auditor, "EX-CLAIM", tmp_path / "claim.json") != 0
    assert "peer hub 350000 has no record of its exchange EX-OTHER that names this hub" in capsys.readouterr().err
    assert not (tmp_path / "claim.json").exists()
