"""The audit verbs of the ``exchange`` command: checkpoints, proofs, export, receipts, verification.

Search is in ``audit_search``.

``verify`` and ``verify-receipt`` run offline with only the log's public key (``log.pub``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.cosignature import with_cosignatures
from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.receipt import FORMAT as CROSS_HUB
from audit.verify import VerifyError, open_checkpoint, verify_export, verify_receipt
from exchange import pki
from exchange.cli import audit_receipt, tables, userfiles
from exchange.cli.client import HubClient
from exchange.cli.commands import ask
from exchange.config import Settings
from exchange.errors import InvalidArgument
from exchange.v1 import audit_pb2 as pb


def read_verifier(path: Path) -> Verifier:
    """The hub's public key (log.pub) from a file, or an error a person can act on."""
    text = userfiles.read_text(path, "the log's public key")
    try:
        return Verifier.parse(text)
    except NoteError as e:
        raise InvalidArgument(f"{path} is not a log's public key: {e}") from None


def read_held_checkpoint(path: Path, verifier: Verifier) -> Checkpoint:
    """A signed checkpoint note the auditor already holds, checked with the log's key."""
    note = userfiles.read_text(path, "the held checkpoint")
    return open_checkpoint(note, verifier, f"the held checkpoint {path}")


def _emit(args: argparse.Namespace, data: dict[str, object], rows: list[tuple[str, str]]) -> None:
    """The one output convention: a field/value table, or with ``--json`` the same facts as JSON (hashes in hex)."""
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(tables.render(["field", "value"], rows, max_column=100))


def _failed(args: argparse.Namespace, what: str, problem: Exception) -> int:
    """A proof that does not check: JSON for machines (with --json), and an ``error:`` line either way."""
    if args.json:
        print(json.dumps({"verified": False, "problem": str(problem)}, ensure_ascii=False))
    print(f"error: {what} does NOT verify: {problem}", file=sys.stderr)
    return 1


def _hash_rows(name: str, hashes: list[bytes]) -> list[tuple[str, str]]:
    return [(f"{name}[{i}]", h.hex()) for i, h in enumerate(hashes)] or [(name, "(none: nothing to prove)")]


def checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    if args.out is not None:
        userfiles.check_writable(args.out, "the checkpoint file")
    request = pb.GetCheckpointRequest(size=args.size, witnessed=args.witnessed)
    head = ask(args, settings, lambda hub: hub.audit.GetCheckpoint, request)
    note = with_cosignatures(head.note, list(head.cosignatures)) if args.witnessed else head.note
    data: dict[str, object] = {
        "size": head.size,
        "root_hash": head.root_hash.hex(),
        "verifier_key": head.verifier_key,
        "note": note,
        "cosignatures": list(head.cosignatures),
    }
    if args.out is not None:
        args.out.write_text(note, encoding="utf-8")
        data["written_to"] = str(args.out)
    rows = [("size", str(head.size)), ("root hash", head.root_hash.hex()), ("verifier key", head.verifier_key)]
    rows += [("cosigned by", line.split(" ")[1]) for line in head.cosignatures]
    _emit(args, data, rows + ([("written to", str(args.out))] if args.out is not None else []))
    if not args.json and args.out is None:
        print(f"\nsigned note:\n{note}", end="")
    return 0


def _proof(args: argparse.Namespace, settings: Settings) -> pb.InclusionProof:
    request = pb.GetInclusionProofRequest(seq=args.seq, tree_size=args.size)
    return ask(args, settings, lambda hub: hub.audit.GetInclusionProof, request)


def receipt(args: argparse.Namespace, settings: Settings) -> int:
    userfiles.check_writable(args.out, "the receipt")
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
    if args.json:
        print(json.dumps({"seq": proof.entry.seq, "tree_size": proof.tree_size, "written_to": str(args.out)}))
    else:
        print(f"receipt for record {proof.entry.seq} in the log of {proof.tree_size} entries written to {args.out}")
    return 0


def proof_check(args: argparse.Namespace, settings: Settings) -> int:
    """Checks one record's inclusion proof here, and prints it with its hashes (for checking with other tools)."""
    verifier = read_verifier(args.key)
    proof = _proof(args, settings)
    if not proof.HasField("checkpoint"):
        raise InvalidArgument(f"no signed checkpoint of size {proof.tree_size}: ask without --size")
    leaf = leaf_hash(proof.entry.record.encode()) if proof.entry.record else proof.entry.leaf_hash
    hashes = list(proof.hashes)
    try:
        head = Checkpoint.parse(open_note(proof.checkpoint.note, verifier))
        if leaf != proof.entry.leaf_hash:
            raise ProofError("the record does not hash to the leaf the hub sent")
        verify_inclusion(leaf, proof.entry.seq, head.size, hashes, head.root)
    except (ProofError, NoteError) as e:
        return _failed(args, f"the inclusion proof of record {proof.entry.seq}", e)
    seen = "its record checked" if proof.entry.record else "its record is not yours to read; its hash checked"
    data: dict[str, object] = {
        "verified": True,
        "seq": proof.entry.seq,
        "tree_size": head.size,
        "leaf_hash": leaf.hex(),
        "root_hash": head.root.hex(),
        "hashes": [h.hex() for h in hashes],
        "record_checked": bool(proof.entry.record),
        "checkpoint": proof.checkpoint.note,
    }
    rows = [
        ("record", str(proof.entry.seq)),
        ("tree size", str(head.size)),
        ("leaf hash", leaf.hex()),
        ("root hash", head.root.hex()),
        *_hash_rows("proof", hashes),
        ("verified", f"yes: record {proof.entry.seq} is in the signed log of {head.size} entries ({seen})"),
    ]
    _emit(args, data, rows)
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
    hashes = list(proof.hashes)
    try:
        first = Checkpoint.parse(open_note(old.note, verifier))
        second = Checkpoint.parse(open_note(new.note, verifier))
        verify_consistency(first.size, second.size, hashes, first.root, second.root)
    except (ProofError, NoteError) as e:
        return _failed(args, f"the consistency proof from size {old.size} to {new.size}", e)
    data: dict[str, object] = {
        "verified": True,
        "from_size": first.size,
        "from_root_hash": first.root.hex(),
        "to_size": second.size,
        "to_root_hash": second.root.hex(),
        "hashes": [h.hex() for h in hashes],
    }
    rows = [
        ("from size", str(first.size)),
        ("from root hash", first.root.hex()),
        ("to size", str(second.size)),
        ("to root hash", second.root.hex()),
        *_hash_rows("proof", hashes),
        (
            "verified",
            f"yes: the log of {second.size} entries extends that of {first.size} (nothing removed or changed)",
        ),
    ]
    _emit(args, data, rows)
    return 0


def _local_key(hub: HubClient, settings: Settings) -> Path | None:
    """The log's public key file on this machine, if there is one: in the configured home, or in the home
    the caller's identity was issued into (``HOME/identities/NAME``), and holding the key the hub signs with.

    Only a hint for the next command: the verification itself trusts the file, not the hub's word.
    """
    verifier_key = hub.call(hub.audit.GetCheckpoint, pb.GetCheckpointRequest()).verifier_key.strip()
    for home in (settings.home, hub.identity.parent.parent):
        path = pki.HubFiles(home).audit_verifier
        try:
            if path.read_text(encoding="utf-8").strip() == verifier_key:
                return path
        except (OSError, UnicodeError):
            continue
    return None


def export(args: argparse.Namespace, settings: Settings) -> int:
    userfiles.check_writable(args.out, "the export")
    count = 0
    with HubClient(settings, args.identity) as hub:
        with args.out.open("w", encoding="utf-8") as out:
            request = pb.ExportLogRequest(from_seq=args.from_seq)
            for chunk in hub.audit.ExportLog(request, timeout=max(hub.timeout, 3600)):
                out.write(chunk.lines)
                count += chunk.lines.count("\n")
        key = _local_key(hub, settings)
    if args.json:
        print(json.dumps({"lines": count, "written_to": str(args.out), "key": str(key) if key else None}))
        return 0
    if key is not None:
        print(f"{count} lines written to {args.out}; check them with `exchange audit verify {args.out} --key {key}`")
    else:
        print(
            f"{count} lines written to {args.out}; check them with `exchange audit verify {args.out} --key LOG_PUB`,"
            " LOG_PUB being the log's public key: audit/log.pub in the hub's home (ask its operator for a copy)"
        )
    return 0


def _progress(done: int) -> None:
    print(f"\r  verified {done:,} entries…", end="", file=sys.stderr, flush=True)


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Verifies an export offline; prints what it proved (as JSON with --json), or the first problem."""
    verifier = read_verifier(args.key)
    userfiles.check_readable(args.file, "the export")
    try:
        held = read_held_checkpoint(args.checkpoint, verifier) if args.checkpoint is not None else None
        with args.file.open(encoding="utf-8") as lines:
            progress = None if args.json else _progress
            report = verify_export(lines, verifier, progress=progress, held=held)
    except (VerifyError, ProofError) as e:
        if not args.json:
            print(file=sys.stderr)
        return _failed(args, f"the log in {args.file}", e)
    except UnicodeError:
        raise InvalidArgument(f"{args.file} is not an export of the audit log: it is not UTF-8 text") from None
    if args.json:
        print(json.dumps({"verified": True, **report.as_dict()}, ensure_ascii=False, indent=2))
        return 0
    print("\rthe log verifies:" + "".join(f"\n  {line}" for line in report.verdict()))
    return 0


def _receipt_data(path: Path) -> dict[str, object]:
    text = userfiles.read_text(path, "the receipt")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{path} is not a receipt (`exchange audit receipt` writes JSON): {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} is not a receipt: it holds JSON, but not an object with seq, record, proof")
    return data


def verify_receipt_file(args: argparse.Namespace, settings: Settings) -> int:
    """Verifies a receipt offline: one record's (with --key), or a cross-hub receipt's (with --trust)."""
    verifier = read_verifier(args.key) if args.key is not None else None
    trust = audit_receipt.read_trust(args.trust) if args.trust else None
    data = _receipt_data(args.file)
    if data.get("format") == CROSS_HUB:
        return audit_receipt.verify_cross(args, trust, data)
    if verifier is None:
        raise InvalidArgument("a one-record receipt is checked with --key LOG_PUB, the log's public key")
    try:
        head = verify_receipt(data, verifier)
    except VerifyError as e:
        return _failed(args, f"the receipt {args.file}", e)
    if args.json:
        print(json.dumps({"verified": True, "seq": data["seq"], "origin": head.origin, "tree_size": head.size}))
        return 0
    print(f"record {data['seq']} is in the log {head.origin} of {head.size} entries, signed by its key")
    return 0
