"""Cross-hub receipts: one exchange that crossed hubs, proved from each hub's log, checked offline.

When hub A forwards a consumer's call to hub B, each hub logs its own exchange record, and each record
names the other (the link fields below); a call forwarded on through more hubs leaves a record at each.
A receipt bundles, for each hub, its records of that exchange with their inclusion proofs under one of
its checkpoints, and that checkpoint witnessed (cosigned, C2SP tlog-cosignature v1) by a neighbouring
hub. An auditor verifies it with only the keys they trust.

The receipt is JSON (UTF-8)::

    {
      "format": "exchange-cross-hub-receipt",   # what this file is
      "version": 1,                              # this layout; verifiers refuse versions they do not know
      "parts": [                                 # one per hub (a hub's own part alone: one), in any order
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
``hop`` ("out" in the record of the hub that forwarded the call to that peer, "in" in the record of the
hub that received it from that peer). A hub in the middle of a chain writes one record of each.

Verification, against trusted keys (log keys, and witness keys each bound to the hub it belongs to): the
format and version; at least two parts, of different origins; per part, the checkpoint signed by the
trusted log key of its origin, every record canonical, of the part's exchange id and included under that
checkpoint; the records linked into one chain, from the consumer's hub to the serving hub: each hub's
"out" record names the next hub and its exchange id, and the next hub's "in" record names it back; the
chain whole: it starts at a hub with an "out" record and no "in" record (the consumer's) and ends at one
with an "in" record and no "out" record (the serving hub), and a record naming a hub that has no part
makes the receipt incomplete, refused with that hub's origin and exchange id; and
each checkpoint cosigned by a trusted witness of a hub next to it in that chain (with two hubs: the other
one), so no hub vouches for itself.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass

from audit.cosignature import WitnessVerifier
from audit.merkle import ProofError, leaf_hash, verify_inclusion
from audit.note import Checkpoint, NoteError, Verifier, open_note
from audit.records import canonical

FORMAT = "exchange-cross-hub-receipt"
VERSION = 1


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


def _witnessed(part: Part, neighbours: list[str], trust: Trust) -> tuple[str, int]:
    """The trusted witness of a hub next to the part's in the chain that cosigned its checkpoint, and when."""
    witnesses = [w for w, hub in trust.witnesses if hub in neighbours]
    by = " or ".join(neighbours)
    if not witnesses:
        raise ReceiptError(f"{part.origin}: no witness key of {by} is trusted, so no cosignature can count")
    problems = []
    for witness in witnesses:
        try:
            found = witness.find(part.checkpoint)
        except NoteError as e:
            problems.append(str(e))
            continue
        return witness.name, found.timestamp
    raise ReceiptError(f"{part.origin}: the checkpoint is not witnessed by {by}: {'; '.join(problems)}")


def _hops(part: Part, other: Part) -> set[str]:
    """The hops of the part's records that name ``other``'s hub and exchange id (empty: none names it)."""
    records = (json.loads(r.record) for r in part.records)
    return {
        str(d.get("hop", ""))
        for d in records
        if d.get("peer_hub") == other.origin and d.get("peer_exchange_id") == other.exchange_id
    }


def _links(parts: list[Part]) -> dict[str, Part]:
    """Each hub's next hub: X forwarded to Y when X's record names Y "out" and Y's names X "in"."""
    following: dict[str, Part] = {}
    for x in parts:
        for y in parts:
            if x is y:
                continue
            ours, theirs = _hops(x, y), _hops(y, x)
            if ours and not theirs:
                raise ReceiptError(
                    f"the records are not linked: {x.origin}'s record names {y.origin}'s exchange {y.exchange_id}, "
                    f"but no record of {y.origin} names {x.origin}'s exchange {x.exchange_id} back"
                )
            if "out" in ours and "in" in theirs:
                if x.origin in following:
                    raise ReceiptError(f"the records are not linked: {x.origin} forwarded the exchange to two hubs")
                following[x.origin] = y
            elif ours and "in" not in ours:
                raise ReceiptError(f'{x.origin} and {y.origin} name each other, but not as one hop "out" and one "in"')
    return following


def _missing(parts: list[Part]) -> None:
    """ReceiptError if a part's "out" or "in" record names a hub that has no part in the receipt: the chain
    then stops short of the serving hub (or starts after the consumer's), so it proves no whole exchange."""
    origins = {p.origin for p in parts}
    for part in parts:
        for data in (json.loads(r.record) for r in part.records):
            hub, hop = str(data.get("peer_hub") or ""), data.get("hop")
            if not hub or hub in origins or hop not in ("out", "in"):
                continue
            exchange = data.get("peer_exchange_id") or "(none: the hop failed)"
            went = "forwarded the exchange to" if hop == "out" else "received the exchange from"
            raise ReceiptError(
                f"the receipt is incomplete: {part.origin} {went} {hub} (its exchange {exchange}), but the "
                f"receipt has no part of {hub}: merge that hub's part in (exchange audit cross-receipt --merge)"
            )


def _ends(ordered: list[Part]) -> None:
    """ReceiptError unless the chain starts at a hub that received the exchange from none and ends at one
    that forwarded it to none (its records name no hop beyond the chain's ends)."""
    for part, hop, end in ((ordered[0], "in", "consumer's"), (ordered[-1], "out", "serving")):
        for data in (json.loads(r.record) for r in part.records):
            if data.get("hop") == hop:
                raise ReceiptError(
                    f"the receipt is incomplete: the chain's end {part.origin} is not the {end} hub: its record "
                    f"names a hop {hop!r} with {data.get('peer_hub')!r}'s exchange {data.get('peer_exchange_id')!r}, "
                    "whose part does not link to it"
                )


def chain(parts: list[Part]) -> list[Part]:
    """The parts in the order the exchange went, from the consumer's hub to the serving hub; ReceiptError
    unless every hub's record names the next one's exchange and that one's names it back, and the chain
    is whole (no hub it names is left out)."""
    _missing(parts)
    following = _links(parts)
    targets = {p.origin for p in following.values()}
    starts = [p for p in parts if p.origin not in targets]
    ordered = starts[:1]
    while ordered and ordered[-1].origin in following and len(ordered) <= len(parts):
        ordered.append(following[ordered[-1].origin])
    if len(starts) != 1 or len(ordered) != len(parts):
        raise ReceiptError(_unlinked(parts))
    _ends(ordered)
    return ordered


def _unlinked(parts: list[Part]) -> str:
    """Why the parts do not form one chain, naming a hub that links to none of the others if there is one."""
    for lone in parts:
        others = [q for q in parts if q is not lone]
        if not any(_hops(lone, q) or _hops(q, lone) for q in others):
            named = ", ".join(f"{q.origin}'s exchange {q.exchange_id}" for q in others)
            return (
                f"the records are not linked: no record of {lone.origin} names {named}, and no record of theirs "
                f"names {lone.origin}'s exchange {lone.exchange_id} (peer_hub, peer_exchange_id)"
            )
    return "the records are not linked into one chain from the consumer's hub to the serving hub"


def verify(data: object, trust: Trust) -> list[Verified]:
    """Checks a cross-hub receipt offline against ``trust``; the verified parts in the exchange's order."""
    parts = parts_of(data)
    if len(parts) < 2 or len({p.origin for p in parts}) != len(parts):
        raise ReceiptError(
            f"a cross-hub receipt has one part from each hub the exchange crossed; this one has {len(parts)} "
            f"part(s) of {sorted({p.origin for p in parts})} (merge the other hubs' parts in)"
        )
    checkpoints: dict[str, Checkpoint] = {}
    for part in parts:
        verifier = trust.logs.get(part.origin)
        if verifier is None:
            raise ReceiptError(f"{part.origin}: no trusted log key for this hub (give its log.pub with --trust)")
        checkpoints[part.origin] = verify_part(part, verifier)
    ordered = chain(parts)
    verified = []
    for n, part in enumerate(ordered):
        neighbours = [p.origin for p in ordered[max(n - 1, 0) : n + 2] if p is not part]
        verified.append(Verified(part, checkpoints[part.origin], *_witnessed(part, neighbours, trust)))
    return verified
