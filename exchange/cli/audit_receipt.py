"""Cross-hub receipts from the command line: this hub's part of one exchange, merging parts, verifying.

``exchange audit cross-receipt EXCHANGE_ID --out r.json`` asks this hub for the receipt of the exchange: its
part and the parts of every other hub of the exchange's chain, which the hub fetches over the federation
from its peers, each peer fetching those beyond it (``AuditService.GetCrossHubReceipt``). With ``--own`` it
writes this hub's part alone (its records, proved under its newest witnessed checkpoint);
``exchange audit cross-receipt --merge a.json b.json --out r.json`` joins parts made at each hub;
``exchange audit verify-receipt r.json --trust keys.txt`` checks the
result offline (audit.receipt), with the verdict and exit codes of ``exchange audit verify``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.cosignature import WitnessVerifier, with_cosignatures
from audit.note import Verifier
from audit.receipt import Part, ProvedRecord, ReceiptError, Trust, document, merge, parts_of, verify, verify_part
from exchange.cli import userfiles
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import InvalidArgument
from exchange.v1 import audit_pb2 as pb

PAGE = 100


def cross_receipt(args: argparse.Namespace, settings: Settings) -> int:
    """Writes this hub's part of a cross-hub receipt, or with --merge the receipt made of several parts."""
    userfiles.check_writable(args.out, "the receipt")
    if args.merge:
        groups = [_parts(path) for path in args.merge]
        if args.exchange_id:
            raise InvalidArgument("give either an exchange id (this hub's part) or --merge FILES, not both")
        parts = merge(*groups)
    elif args.exchange_id and args.own:
        parts = [_this_hubs_part(args, settings)]
    elif args.exchange_id:
        parts = _fetched(args, settings)
    else:
        raise InvalidArgument("give the exchange id to prove, or --merge with the hubs' receipt parts")
    args.out.write_text(json.dumps(document(parts), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    origins = ", ".join(p.origin for p in parts)
    if args.json:
        print(json.dumps({"parts": [p.origin for p in parts], "written_to": str(args.out)}))
    else:
        print(f"receipt with the part(s) of {origins} written to {args.out}")
    return 0


def _fetched(args: argparse.Namespace, settings: Settings) -> list[Part]:
    """The receipt the hub makes: its part and the other hubs', fetched over the federation."""
    with HubClient(settings, args.identity) as hub:
        answer = hub.call(hub.audit.GetCrossHubReceipt, pb.GetCrossHubReceiptRequest(exchange_id=args.exchange_id))
    try:
        return parts_of(json.loads(answer.receipt_json))
    except ValueError as e:
        raise InvalidArgument(f"the hub sent a receipt that cannot be read: {e}") from None


def _parts(path: Path) -> list[Part]:
    try:
        return parts_of(json.loads(userfiles.read_text(path, "a receipt part")))
    except ValueError as e:  # ReceiptError and JSON errors alike
        raise InvalidArgument(f"{path} is not a cross-hub receipt or part: {e}") from None


def _this_hubs_part(args: argparse.Namespace, settings: Settings) -> Part:
    with HubClient(settings, args.identity) as hub:
        head = hub.call(hub.audit.GetCheckpoint, pb.GetCheckpointRequest(witnessed=True))
        seqs = _seqs(hub, args.exchange_id)
        provable = [s for s in seqs if s < head.size]
        if not provable:
            raise InvalidArgument(
                f"no record of exchange {args.exchange_id} is under this hub's newest witnessed checkpoint "
                f"(size {head.size}): {'wait for the next witnessed checkpoint' if seqs else 'check the id'}"
            )
        records = []
        for seq in provable:
            proof = hub.call(hub.audit.GetInclusionProof, pb.GetInclusionProofRequest(seq=seq, tree_size=head.size))
            if not proof.entry.record:
                raise InvalidArgument(f"record {seq} is not yours to read (auditors make receipts)")
            records.append(ProvedRecord(seq, proof.entry.record, tuple(proof.hashes)))
    note = with_cosignatures(head.note, list(head.cosignatures))
    part = Part(Verifier.parse(head.verifier_key).name, head.verifier_key, args.exchange_id, tuple(records), note)
    verify_part(part, Verifier.parse(head.verifier_key))  # what the hub sent holds together, before it is written
    return part


def _seqs(hub: HubClient, exchange_id: str) -> list[int]:
    seqs: list[int] = []
    token = ""
    while True:
        request = pb.SearchRecordsRequest(exchange_id=exchange_id, page_size=PAGE, page_token=token)
        page = hub.call(hub.audit.SearchRecords, request)
        seqs += [e.seq for e in page.entries]
        token = page.next_page_token
        if not token:
            return seqs


def read_trust(paths: list[Path]) -> Trust:
    """The keys in the --trust files, each file checked on its own so an error names it."""
    logs: dict[str, Verifier] = {}
    witnesses: list[tuple[WitnessVerifier, str]] = []
    for path in paths:
        try:
            trust = Trust.parse(userfiles.read_text(path, "a trusted keys file").splitlines())
        except ReceiptError as e:
            raise InvalidArgument(f"{path}: {e}") from None
        logs.update(trust.logs)
        witnesses += trust.witnesses
    return Trust(logs, tuple(witnesses))


def verify_cross(args: argparse.Namespace, trust: Trust | None, data: dict[str, object]) -> int:
    """Verifies a cross-hub receipt offline against the keys in the --trust files."""
    if trust is None:
        raise InvalidArgument(
            "a cross-hub receipt is checked with --trust FILE: the hubs' log keys, and their witness keys each "
            "followed by the origin of the hub it belongs to"
        )
    try:
        verified = verify(data, trust)
    except ReceiptError as e:
        if args.json:
            print(json.dumps({"verified": False, "problem": str(e)}, ensure_ascii=False))
        print(f"error: the receipt {args.file} does NOT verify: {e}", file=sys.stderr)
        return 1
    if args.json:
        parts = [
            {"origin": v.part.origin, "exchange_id": v.part.exchange_id, "tree_size": v.checkpoint.size,
             "witness": v.witness, "witnessed_at": v.witnessed_at}
            for v in verified
        ]  # fmt: skip
        print(json.dumps({"verified": True, "parts": parts}, ensure_ascii=False, indent=2))
        return 0
    print("the receipt verifies: one exchange, recorded and witnessed at each hub it crossed, in order:")
    print("".join(f"  {v.sentence()}\n" for v in verified), end="")
    print("  each hub's record names the next hub's exchange id, and that hub's names it back")
    return 0
