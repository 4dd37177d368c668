"""The audit verbs of the ``exchange`` command: checkpoints, proofs, export, receipts, verification.

Search is in ``audit_search``.

``verify`` and ``verify-receipt`` run offline with only the log's public key (``log.pub``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.verify import VerifyError, open_checkpoint, verify_export, verify_receipt
from exchange.cli.client import HubClient
from exchange.cli.commands import ask
from exchange.config import Settings
from exchange.errors import InvalidArgument
from exchange.v1 import audit_pb2 as pb


def read_verifier(path: Path) -> Verifier:
    """The hub's public key (log.pub) from a file, or an error a person can act on."""
    try:
        return Verifier.parse(path.read_text())
    except OSError as e:
        raise InvalidArgument(f"cannot read the log's public key {path}: {e.strerror}") from None
    except NoteError as e:
        raise InvalidArgument(f"{path} is not a log's public key: {e}") from None


def read_held_checkpoint(path: Path, verifier: Verifier) -> Checkpoint:
    """A signed checkpoint note the auditor already holds, checked with the log's key."""
    try:
        note = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot read the held checkpoint {path}: {e.strerror}") from None
    return open_checkpoint(note, verifier, f"the held checkpoint {path}")


def checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    head = ask(args, settings, lambda hub: hub.audit.GetCheckpoint, pb.GetCheckpointRequest(size=args.size))
    if args.out is not None:
        args.out.write_text(head.note, encoding="utf-8")
        print(f"signed checkpoint of size {head.size} written to {args.out}")
        return 0
    print(f"size {head.size}, root {head.root_hash.hex()}\nverifier key: {head.verifier_key}\n\n{head.note}", end="")
    return 0


def _proof(args: argparse.Namespace, settings: Settings) -> pb.InclusionProof:
    request = pb.GetInclusionProofRequest(seq=args.seq, tree_size=args.size)
    return ask(args, settings, lambda hub: hub.audit.GetInclusionProof, request)


def receipt(args: argparse.Namespace, settings: Settings) -> int:
    proof = _proof(args, settings)
    if not proof.HasField("checkpoint"):
        raise InvalidArgument(f"no signed checkpoint of size {proof.tree_size}: ask without --size")
    data = {
        "seq": proof.entry.seq,
        "record": proof.entry.record,
        "leaf": proof.entry.leaf_hash.hex(),
        "tree_size": proof.tree_size,
        "proof": [h.hex() for h in proof.hashes],
        "checkpoint": proof.checkpoint.note,
        "verifier_key": proof.checkpoint.verifier_key,
    }
    verify_receipt(data, Verifier.parse(proof.checkpoint.verifier_key))
    args.out.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"receipt for record {proof.entry.seq} in the log of {proof.tree_size} entries written to {args.out}")
    return 0


def proof_check(args: argparse.Namespace, settings: Settings) -> int:
    proof = _proof(args, settings)
    if not proof.HasField("checkpoint"):
        raise InvalidArgument(f"no signed checkpoint of size {proof.tree_size}: ask without --size")
    verifier = read_verifier(args.key)
    leaf = leaf_hash(proof.entry.record.encode()) if proof.entry.record else proof.entry.leaf_hash
    try:
        head = Checkpoint.parse(open_note(proof.checkpoint.note, verifier))
        if leaf != proof.entry.leaf_hash:
            raise ProofError("the record does not hash to the leaf the hub sent")
        verify_inclusion(leaf, proof.entry.seq, head.size, list(proof.hashes), head.root)
    except (ProofError, NoteError) as e:
        print(f"the proof does NOT verify: {e}", file=sys.stderr)
        return 1
    seen = "its record checked" if proof.entry.record else "its record is not yours to read; its hash checked"
    print(f"record {proof.entry.seq} is in the signed log of {head.size} entries ({seen}; root {head.root.hex()})")
    return 0


def consistency(args: argparse.Namespace, settings: Settings) -> int:
    """Checks here that the log's newer checkpoint extends an older one: nothing removed or rewritten."""
    verifier = read_verifier(args.key)
    with HubClient(settings, args.identity) as hub:
        old = hub.call(hub.audit.GetCheckpoint, pb.GetCheckpointRequest(size=args.from_size))
        new = hub.call(hub.audit.GetCheckpoint, pb.GetCheckpointRequest(size=args.to_size))
        proof = hub.call(
            hub.audit.GetConsistencyProof, pb.GetConsistencyProofRequest(from_size=old.size, to_size=new.size)
        )
    try:
        first = Checkpoint.parse(open_note(old.note, verifier))
        second = Checkpoint.parse(open_note(new.note, verifier))
        verify_consistency(first.size, second.size, list(proof.hashes), first.root, second.root)
    except (ProofError, NoteError) as e:
        print(f"the checkpoints are NOT consistent: {e}", file=sys.stderr)
        return 1
    print(
        f"the signed log of {second.size} entries extends the signed log of {first.size}: "
        "nothing before was removed or changed"
    )
    return 0


def export(args: argparse.Namespace, settings: Settings) -> int:
    count = 0
    with HubClient(settings, args.identity) as hub, args.out.open("w", encoding="utf-8") as out:
        request = pb.ExportLogRequest(from_seq=args.from_seq)
        for chunk in hub.audit.ExportLog(request, timeout=max(hub.timeout, 3600)):
            out.write(chunk.lines)
            count += chunk.lines.count("\n")
    print(f"{count} lines written to {args.out}; check them with `exchange audit verify {args.out} --key log.pub`")
    return 0


def _progress(done: int) -> None:
    print(f"\r  verified {done:,} entries…", end="", file=sys.stderr, flush=True)


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Verifies an export offline; prints what it proved (as JSON with --json), or the first problem."""
    verifier = read_verifier(args.key)
    try:
        held = read_held_checkpoint(args.checkpoint, verifier) if args.checkpoint is not None else None
        with args.file.open(encoding="utf-8") as lines:
            progress = None if args.json else _progress
            report = verify_export(lines, verifier, progress=progress, held=held)
    except (VerifyError, ProofError) as e:
        if args.json:
            print(json.dumps({"verified": False, "problem": str(e)}, ensure_ascii=False))
        print(f"\nthe log does NOT verify: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"verified": True, **report.as_dict()}, ensure_ascii=False, indent=2))
        return 0
    print("\rthe log verifies:" + "".join(f"\n  {line}" for line in report.verdict()))
    return 0


def verify_receipt_file(args: argparse.Namespace, settings: Settings) -> int:
    data = json.loads(args.file.read_text(encoding="utf-8"))
    try:
        head = verify_receipt(data, read_verifier(args.key))
    except VerifyError as e:
        print(f"the receipt does NOT verify: {e}", file=sys.stderr)
        return 1
    print(f"record {data['seq']} is in the log {head.origin} of {head.size} entries, signed by its key")
    return 0
