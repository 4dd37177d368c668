"""Cross-hub receipts over two real logs that witness each other, verified offline through the CLI.

Hub A forwarded exchange EX-A to hub B, which served it as EX-B; each logged its record naming the
other. Each hub's witness cosigned the other's checkpoint over a real WitnessService on loopback. The
receipt verifies with the auditor's trusted keys, and each tampering is refused with a message naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from audit.cosignature import WitnessKey, with_cosignatures
from audit.note import Signer
from audit.receipt import Part, ProvedRecord, ReceiptError, Trust, document, verify
from exchange import models as m
from exchange.cli.main import main
from exchange.errors import FailedPrecondition
from exchange.server.receipts import Parts
from exchange.server.witness import submit_checkpoint
from exchange.store import Store
from tests.harness import RunningHub
from tests.witness_support import HubLog, hub_log, record, serving, witness_of

A, B = "hub-a.example/audit", "hub-b.example/audit"


def _part(h: HubLog, exchange_id: str) -> Part:
    """The hub's part for ``exchange_id``, under its newest witnessed checkpoint (as the hub would serve it)."""
    size = h.store.witness.newest_cosigned()
    note = h.store.audit.checkpoints(size, size)[0][1]
    entries = [
        e for e in h.store.audit.entries(0, size) if json.loads(e.record or "{}").get("exchange_id") == exchange_id
    ]
    records = tuple(ProvedRecord(e.seq, e.record or "", tuple(h.log.inclusion_proof(e.seq, size))) for e in entries)
    cosigned = with_cosignatures(note, h.store.witness.cosignatures(size))
    return Part(h.origin, h.signer.verifier().encode(), exchange_id, records, cosigned)


def _cross_witness(a: HubLog, b: HubLog, key_a: WitnessKey, key_b: WitnessKey) -> None:
    """Each hub's witness cosigns the other's newest checkpoint, over loopback."""
    for log, witness_hub, key in ((a, b, key_b), (b, a, key_a)):
        with serving(witness_of(witness_hub.store, key, log)) as channel:
            assert submit_checkpoint(channel, log.store, log.log, key.verifier()) is not None


@dataclass
class Crossed:
    a: HubLog
    b: HubLog
    key_a: WitnessKey
    key_b: WitnessKey

    def trust_lines(self) -> list[str]:
        return [
            self.a.signer.verifier().encode(),
            self.b.signer.verifier().encode(),
            f"{self.key_a.verifier().encode()} {A}",
            f"{self.key_b.verifier().encode()} {B}",
        ]


def _crossed(tmp_path: Path, hop_b: str = "in") -> Crossed:
    """A's exchange EX-A forwarded to B's EX-B, each logged with its link, each hub witnessing the other."""
    a = hub_log(f"sqlite:///{tmp_path / 'a.db'}", Signer.generate(A))
    b = hub_log(f"sqlite:///{tmp_path / 'b.db'}", Signer.generate(B))
    a.add(record(1), record(2, exchange_id="EX-A", peer_hub=B, peer_exchange_id="EX-B", hop="out"), record(3))
    b.add(record(7), record(8), record(9, exchange_id="EX-B", peer_hub=A, peer_exchange_id="EX-A", hop=hop_b))
    b.add(record(10, exchange_id="EX-B2"))  # another exchange at B, linked to nothing
    key_a, key_b = WitnessKey.generate("hub-a.example/witness"), WitnessKey.generate("hub-b.example/witness")
    _cross_witness(a, b, key_a, key_b)
    return Crossed(a, b, key_a, key_b)


@pytest.fixture
def crossed(tmp_path: Path) -> Iterator[Crossed]:
    pair = _crossed(tmp_path)
    yield pair
    pair.a.store.close()
    pair.b.store.close()


def _write(path: Path, parts: list[Part]) -> Path:
    path.write_text(json.dumps(document(parts), ensure_ascii=False), encoding="utf-8")
    return path


def _verify_cli(tmp_path: Path, receipt: Path, trust: list[str]) -> int:
    keys = tmp_path / "trusted.txt"
    keys.write_text("# the hubs' log keys and witness keys\n" + "\n".join(trust) + "\n", encoding="utf-8")
    return main(["audit", "verify-receipt", str(receipt), "--trust", str(keys)])


def test_a_merged_receipt_verifies_offline(
    crossed: Crossed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part_a = _write(tmp_path / "a.json", [_part(crossed.a, "EX-A")])
    part_b = _write(tmp_path / "b.json", [_part(crossed.b, "EX-B")])
    out = tmp_path / "receipt.json"
    assert main(["audit", "cross-receipt", "--merge", str(part_a), str(part_b), "--out", str(out)]) == 0
    assert _verify_cli(tmp_path, out, crossed.trust_lines()) == 0
    said = capsys.readouterr().out
    assert "the receipt verifies" in said
    assert f"{A}: exchange EX-A, record(s) 1 in its signed log of 3 entries, witnessed by hub-b.example/witness" in said
    assert f"{B}: exchange EX-B, record(s) 2 in its signed log of 4 entries, witnessed by hub-a.example/witness" in said


def _tampered_record(p: Part) -> Part:
    r = p.records[0]
    return replace(p, records=(replace(r, record=r.record.replace('"query"', '"delete"')),))


def _wrong_proof(p: Part) -> Part:
    r = p.records[0]
    return replace(p, records=(replace(r, proof=(bytes(32), *r.proof[1:])),))


def _no_cosignature(p: Part) -> Part:
    text, _, lines = p.checkpoint.rpartition("\n\n")
    return replace(p, checkpoint=f"{text}\n\n{lines.splitlines()[0]}\n")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_tampered_record, "record 2 is not in the signed log of 4 entries"),
        (_wrong_proof, "record 2 is not in the signed log of 4 entries"),
        (_no_cosignature, "the checkpoint is not witnessed by hub-a.example/audit"),
        (lambda p: replace(p, exchange_id="EX-OTHER"), "record 2 is of exchange 'EX-B'"),
    ],
)
def test_a_tampered_part_is_refused(
    crossed: Crossed, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: object, problem: str
) -> None:
    assert callable(tamper)
    receipt = _write(tmp_path / "r.json", [_part(crossed.a, "EX-A"), tamper(_part(crossed.b, "EX-B"))])
    assert _verify_cli(tmp_path, receipt, crossed.trust_lines()) == 1
    assert problem in capsys.readouterr().err


def test_unlinked_records_are_refused(crossed: Crossed) -> None:
    data = document([_part(crossed.a, "EX-A"), _part(crossed.b, "EX-B2")])
    unlinked = re.escape(f"not linked: no record of {A} names {B}'s exchange EX-B2")
    with pytest.raises(ReceiptError, match=unlinked):
        verify(data, Trust.parse(crossed.trust_lines()))


def test_records_linked_the_same_way_round_are_refused(tmp_path: Path) -> None:
    both_out = _crossed(tmp_path, hop_b="out")
    data = document([_part(both_out.a, "EX-A"), _part(both_out.b, "EX-B")])
    with pytest.raises(ReceiptError, match='one hop "out" and one "in"'):
        verify(data, Trust.parse(both_out.trust_lines()))
    both_out.a.store.close()
    both_out.b.store.close()


def test_a_call_forwarded_through_a_middle_hub_is_one_chain(tmp_path: Path) -> None:
    """A forwards to B, which forwards to C: B records the hop in and the hop out; each hub is witnessed by
    a neighbour, and a cosignature from a hub that is not next to it does not count."""
    c_origin = "hub-c.example/audit"
    a, b, c = (
        hub_log(f"sqlite:///{tmp_path / f'{n}.db'}", Signer.generate(o))
        for n, o in (("a", A), ("b", B), ("c", c_origin))
    )
    a.add(record(1, exchange_id="EX-A", peer_hub=B, peer_exchange_id="EX-B", hop="out"))
    b.add(
        record(2, exchange_id="EX-B", peer_hub=A, peer_exchange_id="EX-A", hop="in"),
        record(3, exchange_id="EX-B", peer_hub=c_origin, peer_exchange_id="EX-C", hop="out"),
    )
    c.add(record(4, exchange_id="EX-C", peer_hub=B, peer_exchange_id="EX-B", hop="in"))
    keys = {o: WitnessKey.generate(o.replace("/audit", "/witness")) for o in (A, B, c_origin)}
    # A and C by B's witness; B by C's. A's witness cosigns C: not a neighbour of C.
    for log, by in ((a, b), (c, b), (b, c), (c, a)):
        with serving(witness_of(by.store, keys[by.origin], log)) as channel:
            submit_checkpoint(channel, log.store, log.log, keys[by.origin].verifier())
    trust = Trust.parse(
        [h.signer.verifier().encode() for h in (a, b, c)] + [f"{k.verifier().encode()} {o}" for o, k in keys.items()]
    )
    parts = [_part(c, "EX-C"), _part(a, "EX-A"), _part(b, "EX-B")]  # in any order
    verified = verify(document(parts), trust)
    assert [(v.part.origin, v.witness) for v in verified] == [
        (A, "hub-b.example/witness"),
        (B, "hub-c.example/witness"),
        (c_origin, "hub-b.example/witness"),
    ]
    assert "— hub-a.example/witness " in parts[0].checkpoint
    by_a_only = replace(parts[0], checkpoint=parts[0].checkpoint.replace("— hub-b.example/witness ", "— x "))
    with pytest.raises(ReceiptError, match=f"{c_origin}: the checkpoint is not witnessed by {B}"):
        verify(document([by_a_only, *parts[1:]]), trust)
    missing_b = re.escape(
        f"incomplete: {c_origin} received the exchange from {B} (its exchange EX-B), but the receipt has no part of {B}"
    )
    with pytest.raises(ReceiptError, match=missing_b):  # the middle hub's part left out
        verify(document(parts[:2]), trust)
    missing_c = re.escape(f"incomplete: {B} forwarded the exchange to {c_origin} (its exchange EX-C)")
    with pytest.raises(ReceiptError, match=missing_c):  # stops at the middle hub: not the serving hub
        verify(document(parts[1:]), trust)
    missing_a = re.escape(f"incomplete: {B} received the exchange from {A} (its exchange EX-A)")
    with pytest.raises(ReceiptError, match=missing_a):  # starts at the middle hub: not the consumer's
        verify(document([parts[0], parts[2]]), trust)
    for h in (a, b, c):
        h.store.close()


@pytest.mark.parametrize("which", ["log", "witness", "binding"])
def test_wrong_keys_are_refused(crossed: Crossed, which: str) -> None:
    trust = crossed.trust_lines()
    if which == "log":
        trust[0] = Signer.generate(A).verifier().encode()
        problem = "another log key than the one you trust"
    elif which == "witness":
        trust[3] = f"{WitnessKey.generate('hub-b.example/witness').verifier().encode()} {B}"
        problem = "not witnessed by hub-b.example/audit"
    else:  # the witnesses' keys bound to the wrong hubs: a hub cannot vouch for itself
        trust[2], trust[3] = f"{crossed.key_a.verifier().encode()} {B}", f"{crossed.key_b.verifier().encode()} {A}"
        problem = "not witnessed by"
    data = document([_part(crossed.a, "EX-A"), _part(crossed.b, "EX-B")])
    with pytest.raises(ReceiptError, match=problem):
        verify(data, Trust.parse(trust))


def test_one_hubs_part_alone_is_not_a_receipt(
    crossed: Crossed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = _write(tmp_path / "a.json", [_part(crossed.a, "EX-A")])
    assert _verify_cli(tmp_path, receipt, crossed.trust_lines()) == 1
    assert "one part from each hub the exchange crossed; this one has 1 part(s)" in capsys.readouterr().err
    assert main(["audit", "verify-receipt", str(receipt)]) == 2  # neither --trust nor --key: told what to give


def test_a_running_hub_writes_its_part_through_the_cli(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auditor = hub.add_person("au-chen", "11350200MB0012345Y", m.Role.AUDITOR)
    b = HubLog.__new__(HubLog)  # the running hub's own store, key and log, as hub B
    b.store, b.signer, b.log = hub.hub.store, hub.hub.audit.signer, hub.hub.audit
    a = hub_log(f"sqlite:///{tmp_path / 'a.db'}", Signer.generate(A))
    a.add(record(1, exchange_id="EX-A", peer_hub=b.origin, peer_exchange_id="EX-B", hop="out"))
    b.add(record(2, exchange_id="EX-B", peer_hub=A, peer_exchange_id="EX-A", hop="in"))
    witness_store = Store(f"sqlite:///{tmp_path / 'b-witness.db'}")  # B's witness state (its own store in a hub)
    witness_store.db.migrate()
    key_a, key_b = WitnessKey.generate("hub-a.example/witness"), WitnessKey.generate("hub-b.example/witness")
    with serving(witness_of(witness_store, key_b, a)) as channel:
        submit_checkpoint(channel, a.store, a.log, key_b.verifier())
    with serving(witness_of(a.store, key_a, b)) as channel:
        submit_checkpoint(channel, b.store, b.log, key_a.verifier())
    out_b = tmp_path / "b.json"
    argv = ["--hub", hub.settings.hub_address, "--identity", str(auditor), "audit", "cross-receipt", "EX-B", "--own"]
    assert main([*argv, "--out", str(out_b)]) == 0
    part_a = _write(tmp_path / "a.json", [_part(a, "EX-A")])
    receipt = tmp_path / "receipt.json"
    assert main(["audit", "cross-receipt", "--merge", str(part_a), str(out_b), "--out", str(receipt)]) == 0
    trust = [
        a.signer.verifier().encode(),
        b.signer.verifier().encode(),
        f"{key_a.verifier().encode()} {A}",
        f"{key_b.verifier().encode()} {b.origin}",
    ]
    capsys.readouterr()
    assert _verify_cli(tmp_path, receipt, trust) == 0
    assert f"{b.origin}: exchange EX-B" in capsys.readouterr().out
    a.store.close()
    witness_store.close()


def test_a_part_asked_for_before_its_records_are_placed_says_to_ask_again(tmp_path: Path) -> None:
    """Records committed but not yet placed in the log: not "no such exchange", but not yet witnessed, ask again."""
    b = hub_log(f"sqlite:///{tmp_path / 'b.db'}", Signer.generate("hub-b.example/audit"))
    parts = Parts(b.store, b.log, b.signer.verifier())
    b.store.audit.stage([record(1, exchange_id="EX-B", peer_hub=A, peer_exchange_id="EX-A", hop="in")])
    with pytest.raises(FailedPrecondition) as refused:
        parts.records("EX-B")
    assert refused.value.kind == "NOT_YET_WITNESSED" and "not yet placed in the log" in refused.value.message
    assert parts.records("EX-NONE") == []  # an exchange the log never saw is simply not found
    b.log.flush()
    assert [fields["exchange_id"] for _, fields in parts.records("EX-B")] == ["EX-B"]
    b.store.close()
