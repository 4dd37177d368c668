"""Hubs witnessing each other's logs through a real WitnessService on loopback, over real logs and stores.

Hub A's log submits its checkpoints to hub B's witness: consistent growth is cosigned (and the cosignature
kept and served with A's checkpoint); a fork is refused and kept as evidence; a stale old size is told the
size to prove from; an unknown origin or a foreign signature is refused; and two hub processes sharing
B's store cannot both cosign divergent trees (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from audit.cosignature import Cosignature, WitnessKey, with_cosignatures
from audit.merkle import MerkleTree, leaf_hash
from audit.note import Checkpoint, Signer
from audit.witnessing import Refusal, Refused, Seen, decide
from exchange.errors import FailedPrecondition, Unavailable
from exchange.server.witness import submit_checkpoint
from exchange.store import Store
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import witness_pb2 as pb
from exchange.v1 import witness_pb2_grpc as pb_grpc
from tests.harness import RunningHub
from tests.witness_support import HubLog, hub_log, record, serving, witness_of

ORIGIN = "hub-a.example/audit"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
def hub_a(tmp_path: Path, signer: Signer) -> Iterator[HubLog]:
    log = hub_log(f"sqlite:///{tmp_path / 'a.db'}", signer)
    yield log
    log.store.close()


@pytest.fixture
def witness_store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    store.db.migrate()
    yield store
    store.close()


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, list[error_details_pb2.PreconditionFailure.Violation]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            violations += list(failure.violations)
    return error.code(), violations


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def test_consistent_growth_is_cosigned_and_kept(hub_a: HubLog, witness_store: Store) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        hub_a.add(*(record(i) for i in range(3)))
        first = submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier())
        hub_a.add(*(record(i) for i in range(3, 10)))
        second = submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier())
    assert first is not None and second is not None
    seen = witness_store.witness.seen(ORIGIN)
    assert seen is not None and seen.size == 10
    assert hub_a.store.witness.last_cosigned(key.name) == 10
    # The witnessed checkpoint: A's note with B's cosignature, which B's key verifies.
    note = with_cosignatures(hub_a.latest_note(), hub_a.store.witness.cosignatures(10))
    assert key.verifier().find(note) == second
    assert hub_a.store.witness.cosignatures(3) == [first.line()]


def test_the_same_checkpoint_again_is_cosigned_again_and_a_false_answer_is_not_kept(
    hub_a: HubLog, witness_store: Store
) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    hub_a.add(*(record(i) for i in range(3)))
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        first = submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier())
        again = submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier())  # old size 3, no proof
        impostor = WitnessKey.generate("hub-b.example/witness")  # the name, not the key
        with pytest.raises(Unavailable, match="without a valid cosignature by its key"):
            submit_checkpoint(channel, hub_a.store, hub_a.log, impostor.verifier())
    assert first is not None and again is not None
    assert hub_a.store.witness.cosignatures(3) == [again.line()]  # one per witness and size: the newest
    assert hub_a.store.witness.last_cosigned(key.name) == 3


def test_a_fork_is_refused_kept_and_logged(
    tmp_path: Path, hub_a: HubLog, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    hub_b = hub_log(f"sqlite:///{tmp_path / 'b.db'}", Signer.generate("hub-b.example/audit"))
    witness_store = hub_b.store
    # The same hub's key signing another history of the same size: what a hub shows a second peer.
    other = hub_log(f"sqlite:///{tmp_path / 'a-fork.db'}", signer)
    hub_a.add(*(record(i) for i in range(4)))
    other.add(*(record(i, purpose="rewritten") for i in range(4)))
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        assert submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier()) is not None
        stub = pb_grpc.WitnessServiceStub(channel)
        with pytest.raises(grpc.RpcError) as same_size:
            stub.AddCheckpoint(pb.AddCheckpointRequest(old_size=4, checkpoint=other.latest_note()))
        other.add(record(99))
        proof = other.log.consistency_proof(4, 5)
        with pytest.raises(grpc.RpcError) as grown:
            stub.AddCheckpoint(
                pb.AddCheckpointRequest(old_size=4, consistency_proof=proof, checkpoint=other.latest_note())
            )
    for refused in (same_size.value, grown.value):
        code, violations = _status(refused)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert [(v.type, v.subject) for v in violations] == [("FORK", ORIGIN)]
    assert "different roots" in str(same_size.value.details())
    assert "not consistent" in str(grown.value.details())
    forks = witness_store.witness.forks(ORIGIN)
    assert [f.seen_note for f in forks] == [hub_a.latest_note()] * 2
    assert forks[0].offered_note != forks[1].offered_note
    assert all(f.offered_note.startswith(ORIGIN + "\n") for f in forks)
    assert "forked checkpoint" in caplog.text
    seen = witness_store.witness.seen(ORIGIN)
    assert seen is not None and seen.note == hub_a.latest_note()  # nothing of the fork was taken
    # B's own audit log holds each refusal, naming the forked log and what did not agree.
    size = hub_b.log.flush()
    refusals = [json.loads(e.record or "") for e in hub_b.store.audit.entries(0, size)]
    assert [(r["kind"], r["action"], r["outcome"], r["subject"]) for r in refusals] == [
        ("witness", "refuse_fork", "denied", ORIGIN)
    ] * 2
    assert "different roots" in refusals[0]["reason"] and "not consistent" in refusals[1]["reason"]
    other.store.close()
    hub_b.store.close()


def test_a_stale_old_size_is_told_the_size_to_prove_from(
    tmp_path: Path, hub_a: HubLog, signer: Signer, witness_store: Store
) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    hub_a.add(*(record(i) for i in range(3)))
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        stub = pb_grpc.WitnessServiceStub(channel)
        # B sees A at size 3 (as if another process of A submitted it; A's store does not know).
        stub.AddCheckpoint(pb.AddCheckpointRequest(old_size=0, checkpoint=hub_a.latest_note()))
        hub_a.add(*(record(i) for i in range(3, 7)))
        with pytest.raises(grpc.RpcError) as stale:
            stub.AddCheckpoint(pb.AddCheckpointRequest(old_size=0, checkpoint=hub_a.latest_note()))
        code, violations = _status(stale.value)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert [(v.type, v.subject) for v in violations] == [("OLD_SIZE", "3")]
        # The helper answers the refusal with a proof from size 3, and is cosigned.
        cosignature = submit_checkpoint(channel, hub_a.store, hub_a.log, key.verifier())
    assert cosignature is not None
    seen = witness_store.witness.seen(ORIGIN)
    assert seen is not None and seen.size == 7


def test_unknown_origins_and_foreign_signatures_are_refused(
    hub_a: HubLog, tmp_path: Path, witness_store: Store
) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    stranger = hub_log(f"sqlite:///{tmp_path / 'c.db'}", Signer.generate("hub-c.example/audit"))
    impostor = hub_log(f"sqlite:///{tmp_path / 'a2.db'}", Signer.generate(ORIGIN))  # A's name, another key
    stranger.add(record(1))
    impostor.add(record(1))
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        stub = pb_grpc.WitnessServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.AddCheckpoint(pb.AddCheckpointRequest(checkpoint=stranger.latest_note()))
        with pytest.raises(grpc.RpcError) as foreign:
            stub.AddCheckpoint(pb.AddCheckpointRequest(checkpoint=impostor.latest_note()))
    assert unknown.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(unknown.value) == "UNKNOWN_ORIGIN"
    assert "does not witness the log 'hub-c.example/audit'" in str(unknown.value.details())
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(foreign.value) == "BAD_SIGNATURE"
    assert witness_store.witness.seen(ORIGIN) is None and witness_store.witness.seen("hub-c.example/audit") is None
    stranger.store.close()
    impostor.store.close()


def test_malformed_proofs_and_shrinking_trees_are_invalid(hub_a: HubLog, witness_store: Store) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    hub_a.add(*(record(i) for i in range(3)))
    with serving(witness_of(witness_store, key, hub_a)) as channel:
        stub = pb_grpc.WitnessServiceStub(channel)
        with pytest.raises(grpc.RpcError) as proof_from_nothing:
            stub.AddCheckpoint(
                pb.AddCheckpointRequest(old_size=0, consistency_proof=[bytes(32)], checkpoint=hub_a.latest_note())
            )
        stub.AddCheckpoint(pb.AddCheckpointRequest(old_size=0, checkpoint=hub_a.latest_note()))
        hub_a.add(record(3))
        with pytest.raises(grpc.RpcError) as short_hash:
            stub.AddCheckpoint(
                pb.AddCheckpointRequest(old_size=3, consistency_proof=[b"x"], checkpoint=hub_a.latest_note())
            )
    for refused in (proof_from_nothing.value, short_hash.value):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert witness_store.witness.forks() == []


def _divergent(tmp_path: Path, signer: Signer, n: int) -> list[HubLog]:
    """``n`` histories under one key: the same 3 first records, then 2 different ones each."""
    logs = []
    for i in range(n):
        log = hub_log(f"sqlite:///{tmp_path / f'fork-{i}.db'}", signer)
        log.add(*(record(j) for j in range(3)))
        log.add(record(100 + i), record(200 + i))
        logs.append(log)
    return logs


def test_compare_and_set_lets_one_of_two_divergent_trees_through(store: Store, tmp_path: Path, signer: Signer) -> None:
    a, b = _divergent(tmp_path, signer, 2)
    three = a.store.audit.checkpoints(3, 3)[0][1]
    root3 = Checkpoint.parse(three.rpartition("\n\n")[0] + "\n").root
    assert store.witness.advance(ORIGIN, None, 3, root3, three)
    assert not store.witness.advance(ORIGIN, None, 3, root3, three)  # a second first insert loses
    seen = store.witness.seen(ORIGIN)
    assert seen == Seen(3, root3, three)
    roots = [Checkpoint.parse(h.latest_note().rpartition("\n\n")[0] + "\n").root for h in (a, b)]
    # Both processes decided from size 3; only the first to write moves it.
    assert store.witness.advance(ORIGIN, seen, 5, roots[0], a.latest_note())
    assert not store.witness.advance(ORIGIN, seen, 5, roots[1], b.latest_note())
    assert store.witness.seen(ORIGIN) == Seen(5, roots[0], a.latest_note())
    for h in (a, b):
        h.store.close()


def test_concurrent_witness_processes_cosign_only_one_divergent_tree(
    store: Store, store_url: str, tmp_path: Path, signer: Signer
) -> None:
    logs = _divergent(tmp_path, signer, 4)
    key = WitnessKey.generate("hub-b.example/witness")
    processes = [Store(store_url) for _ in logs]  # one store connection per witness process
    witnesses = [witness_of(p, key, logs[0]) for p in processes]
    witnesses[0].add_checkpoint(logs[0].store.audit.checkpoints(3, 3)[0][1], 0, [])
    barrier = threading.Barrier(len(logs))
    cosigned: list[Cosignature] = []
    refused: list[FailedPrecondition] = []

    def submit(i: int) -> None:
        proof = logs[i].log.consistency_proof(3, 5)
        barrier.wait()
        try:
            cosigned.append(witnesses[i].add_checkpoint(logs[i].latest_note(), 3, proof))
        except FailedPrecondition as e:
            refused.append(e)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(logs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cosigned) == 1
    assert len(refused) == len(logs) - 1 and all(e.kind in {"OLD_SIZE", "FORK"} for e in refused)
    seen = store.witness.seen(ORIGIN)
    assert seen is not None and seen.size == 5
    winner = next(h for h in logs if h.latest_note() == seen.note)
    key.verifier().verify(winner.latest_note().rpartition("\n\n")[0] + "\n", cosigned[0])
    for p in processes:
        p.close()
    for h in logs:
        h.store.close()


def test_get_checkpoint_serves_the_cosignatures_received(hub: RunningHub) -> None:
    key = WitnessKey.generate("hub-b.example/witness")
    with hub.client(hub.operator) as client:
        head = client.call(client.audit.GetCheckpoint, apb.GetCheckpointRequest())
        assert list(head.cosignatures) == []
        text = head.note.rpartition("\n\n")[0] + "\n"
        line = key.cosign(text, 1_700_000_000).line()
        hub.hub.store.witness.add_cosignature(head.size, key.name, line)
        served = client.call(client.audit.GetCheckpoint, apb.GetCheckpointRequest(size=head.size))
    assert list(served.cosignatures) == [line]
    assert key.verifier().find(with_cosignatures(served.note, list(served.cosignatures))).timestamp == 1_700_000_000


def _signed(signer: Signer, leaves: list[bytes]) -> tuple[MerkleTree, str]:
    tree = MerkleTree([leaf_hash(x) for x in leaves])
    return tree, signer.sign(Checkpoint(signer.name, tree.size, tree.root()).text())


def test_the_decision_gives_each_refusal_its_reason(signer: Signer) -> None:
    logs = {ORIGIN: signer.verifier()}
    tree5, note5 = _signed(signer, [b"%d" % i for i in range(5)])
    tree8, note8 = _signed(signer, [b"%d" % i for i in range(8)])
    seen = Seen(5, tree5.root(), note5)
    proof = tree8.consistency_proof(5, 8)
    assert decide(logs, seen, note8, 5, proof).size == 8
    assert decide(logs, Seen(0, tree5.root(0), note5), note5, 0, []).size == 5  # from an empty tree
    cases = [
        (seen, note5, 5, [bytes(32)], Refused.MALFORMED),  # a proof between equal sizes
        (Seen(8, tree8.root(), note8), note5, 8, [], Refused.MALFORMED),  # a smaller tree than the old size
        (seen, note8, 5, [bytes(31), *proof[1:]], Refused.MALFORMED),
        (seen, note8, 5, [*proof, bytes(32)], Refused.FORK),  # a well-formed proof that does not verify
        (seen, note8, 6, proof, Refused.OLD_SIZE),
        (seen, "\n" + note8, 5, proof, Refused.MALFORMED),
        (seen, note8.replace("\n8\n", "\n9\n"), 5, proof, Refused.BAD_SIGNATURE),
    ]
    for held, note, old, given, reason in cases:
        with pytest.raises(Refusal) as refused:
            decide(logs, held, note, old, given)
        assert refused.value.reason is reason, refused.value.message
