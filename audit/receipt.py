"""Cross-hub receipts: one exchange that crossed two hubs, proved from both hubs' logs, checked offline.

When hub A forwards a consumer's call to hub B, each hub logs its own exchange record, and each record
names the other (the link fields below). A receipt bundles, for each hub, its records of that exchange
with their inclusion proofs under one of its checkpoints, and that checkpoint witnessed (cosigned, C2SP
tlog-cosignature v1) by the other hub. An auditor verifies it with only the keys they trust.

The receipt is JSON (UTF-8)::

    {
      "format": "exchange-cross-hub-receipt",   # what this file is
      "version": 1,                              # this layout; verifiers refuse versions they do not know
      "parts": [                                 # one per hub, two in a complete receipt (one in a hub's part)
        {
          "origin": "hub-a.example/audit",       # the hub's log origin (its checkpoints' first line)
          "log_key": "<origin>+<id>+<key>",      # the hub's log verifier key, as the hub states it (compared
                                                 # with the trusted one; never trusted by itself)
          "exchange_id": "…",                    # the hub's id of the exchange; every record below has it
          "records": [                           # the hub's records of the exchange, in log order
            {"seq": 41,                          # the entry number (leaf index) in the hub's log
             "record": "{…}",                    # the canonical JSON record exactly as the log hashes it
             "proof": ["<hex>", …]}              # RFC 9162 inclusion proof under the checkpoint below
          ],
          "checkpoint": "<signed note>"          # the checkpoint, signed by the hub, with the cosignature
                                                 # lines its witnesses gave it
        }
      ]
    }

Link fields, which the forwarding hubs write into their exchange records (audit.records.AuditRecord):
``peer_hub`` (the other hub's log origin), ``peer_exchange_id`` (the other hub's id of the exchange) and
``hop`` ("out" at the hub that forwarded the call, "in" at the hub that served it).

Verification, against trusted keys (log keys, and witness keys each bound to the hub it belongs to): the
format and version; two parts of two different origins; per part, the checkpoint signed by the trusted
log key of its origin, every record canonical, of the part's exchange id and included under that
checkpoint, and the checkpoint cosigned by a trusted witness of the other hub; and the records linked:
a record of each hub names the other hub and the other's exchange id, one "out" and one "in".
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass

from audit.cosignature import Cosignature, WitnessVerifier
from audit.merkle import ProofError, leaf_hash, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.records import canonical

FORMAT = "exchange-cross-hub-receipt"
VERSION = 1
HOPS = ("in", "out")


class ReceiptError(ValueError):
    """A receipt that is malformed or does not verify; the message names the part and what failed."""


@dataclass(frozen=True)
class ProvedRecord:
    seq: int
    record: str
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Part:
    """One hub's share of a receipt."""

    origin: str
    log_key: str
    exchange_id: str
    records: tuple[ProvedRecord, ...]
    checkpoint: str

    def as_dict(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "log_key": self.log_key,
            "exchange_id": self.exchange_id,
            "records": [{"seq": r.seq, "record": r.record, "proof": [h.hex() for h in r.proof]} for r in self.records],
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True)
class Trust:
    """The keys an auditor trusts: log keys by origin, and witness keys with the hub origin each belongs to."""

    logs: dict[str, Verifier]
    witnesses: tuple[tuple[WitnessVerifier, str], ...]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Trust:
        """Key lines: a log key ("<origin>+<id>+<key>", type 0x01), or a witness key (type 0x04) followed
        by a space and the origin of the hub whose witness it is. Blank lines and "#" comments are skipped."""
        logs: dict[str, Verifier] = {}
        witnesses: list[tuple[WitnessVerifier, str]] = []
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, hub = line.partition(" ")
            try:
                if hub.strip():
                    witnesses.append((WitnessVerifier.parse(key), hub.strip()))
                else:
                    verifier = Verifier.parse(key)
                    logs[verifier.name] = verifier
            except NoteError as e:
                raise ReceiptError(
                    f"trusted key line {n}: {e} (a log key alone, or a witness key then the hub origin it belongs to)"
                ) from None
        return cls(logs, tuple(witnesses))


def document(parts: Iterable[Part]) -> dict[str, object]:
    """The receipt document of ``parts``."""
    return {"format": FORMAT, "version": VERSION, "parts": [p.as_dict() for p in parts]}


def parts_of(data: object) -> list[Part]:
    """The parts of a receipt document (format and version checked); ReceiptError if it is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReceiptError(f'not a cross-hub receipt: "format" is not {FORMAT!r}')
    if data.get("version") != VERSION:
        raise ReceiptError(f"receipt version {data.get('version')!r} is not one this verifier knows ({VERSION})")
    raw = data.get("parts")
    if not isinstance(raw, list):
        raise ReceiptError('the receipt has no "parts" list')
    return [_part(p, n) for n, p in enumerate(raw)]


def _part(raw: object, n: int) -> Part:
    try:
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        records = tuple(
            ProvedRecord(int(r["seq"]), _text(r["record"]), tuple(bytes.fromhex(h) for h in r["proof"]))
            for r in raw["records"]
        )
        fields = (_text(raw[k]) for k in ("origin", "log_key", "exchange_id", "checkpoint"))
        origin, log_key, exchange_id, checkpoint = fields
    except (KeyError, TypeError, ValueError) as e:
        raise ReceiptError(f"part {n} of the receipt is malformed: {e}") from None
    return Part(origin, log_key, exchange_id, records, checkpoint)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def merge(*groups: list[Part]) -> list[Part]:
    """The parts of several receipts as one: one part per origin (the same part given twice is kept once)."""
    merged: dict[str, Part] = {}
    for part in (p for group in groups for p in group):
        if part.origin in merged and merged[part.origin] != part:
            raise ReceiptError(f"two different parts for the hub {part.origin}: give one receipt part per hub")
        merged[part.origin] = part
    return list(merged.values())


@dataclass(frozen=True)
class Verified:
    """One verified part: its checkpoint, the witness that cosigned it and when."""

    part: Part
    checkpoint: Checkpoint
    witness: str
    witnessed_at: int

    def sentence(self) -> str:
        when = dt.datetime.fromtimestamp(self.witnessed_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        seqs = ", ".join(str(r.seq) for r in self.part.records)
        return (
            f"{self.part.origin}: exchange {self.part.exchange_id}, record(s) {seqs} in its signed log of "
            f"{self.checkpoint.size} entries, witnessed by {self.witness} at {when}"
        )


def verify_part(part: Part, verifier: Verifier) -> Checkpoint:
    """Checks one part against its hub's log key: signature, records canonical, of its exchange, included."""
    if verifier.name != part.origin:
        raise ReceiptError(f"{part.origin}: the trusted log key is for {verifier.name}")
    if part.log_key.strip() != verifier.encode():
        raise ReceiptError(f"{part.origin}: the receipt states another log key than the one you trust")
    try:
        checkpoint = Checkpoint.parse(open_note(part.checkpoint, verifier))
    except NoteError as e:
        raise ReceiptError(f"{part.origin}: the checkpoint is not signed by the trusted log key: {e}") from None
    if checkpoint.origin != part.origin:
        raise ReceiptError(f"{part.origin}: the checkpoint is of another log, {checkpoint.origin!r}")
    if not part.records:
        raise ReceiptError(f"{part.origin}: the part holds no record")
    for r in part.records:
        _check_record(part, checkpoint, r)
    return checkpoint


def _check_record(part: Part, checkpoint: Checkpoint, r: ProvedRecord) -> None:
    try:
        data = json.loads(r.record)
        if not isinstance(data, dict) or canonical(data) != r.record.encode():
            raise ValueError("not in canonical form")
    except ValueError as e:
        raise ReceiptError(f"{part.origin}: record {r.seq} is not a canonical record: {e}") from None
    if data.get("exchange_id") != part.exchange_id:
        raise ReceiptError(f"{part.origin}: record {r.seq} is of exchange {data.get('exchange_id')!r}")
    try:
        verify_inclusion(leaf_hash(r.record.encode()), r.seq, checkpoint.size, list(r.proof), checkpoint.root)
    except ProofError as e:
        raise ReceiptError(
            f"{part.origin}: record {r.seq} is not in the signed log of {checkpoint.size} entries: {e}"
        ) from None


def _witnessed(part: Part, checkpoint: Checkpoint, by_hub: str, trust: Trust) -> tuple[str, int]:
    """The trusted witness of hub ``by_hub`` that cosigned the part's checkpoint, and when."""
    witnesses = [w for w, hub in trust.witnesses if hub == by_hub]
    if not witnesses:
        raise ReceiptError(f"{part.origin}: no witness key of {by_hub} is trusted, so its cosignature cannot count")
    problems = []
    for witness in witnesses:
        try:
            found: Cosignature = witness.find(part.checkpoint)
        except NoteError as e:
            problems.append(str(e))
            continue
        return witness.name, found.timestamp
    raise ReceiptError(f"{part.origin}: the checkpoint is not witnessed by {by_hub}: {'; '.join(problems)}")


def _check_linked(a: Part, b: Part) -> None:
    """A record of each part names the other hub and its exchange id, one "out" and one "in"."""
    hops = []
    for this, other in ((a, b), (b, a)):
        linked = [
            d
            for d in (json.loads(r.record) for r in this.records)
            if d.get("peer_hub") == other.origin and d.get("peer_exchange_id") == other.exchange_id
        ]
        if not linked:
            raise ReceiptError(
                f"the records are not linked: no record of {this.origin} names {other.origin}'s exchange "
                f"{other.exchange_id} (peer_hub, peer_exchange_id)"
            )
        hops.append({str(d.get("hop", "")) for d in linked})
    if not any({x, y} == set(HOPS) for x in hops[0] for y in hops[1]):
        raise ReceiptError('the linked records do not show one hop "out" and one "in"')


def verify(data: object, trust: Trust) -> list[Verified]:
    """Checks a cross-hub receipt offline against ``trust``; the verified parts, or ReceiptError."""
    parts = parts_of(data)
    if len(parts) != 2 or parts[0].origin == parts[1].origin:
        raise ReceiptError(
            f"a cross-hub receipt has one part from each of two hubs; this one has {len(parts)} part(s) "
            f"of {sorted({p.origin for p in parts})} (merge the other hub's part in)"
        )
    verified = []
    for part, other in ((parts[0], parts[1]), (parts[1], parts[0])):
        verifier = trust.logs.get(part.origin)
        if verifier is None:
            raise ReceiptError(f"{part.origin}: no trusted log key for this hub (give its log.pub with --trust)")
        checkpoint = verify_part(part, verifier)
        witness, at = _witnessed(part, checkpoint, other.origin, trust)
        verified.append(Verified(part, checkpoint, witness, at))
    _check_linked(parts[0], parts[1])
    return verified
