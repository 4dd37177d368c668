"""Cross-hub receipts in a running federation: this hub's part of an exchange, the other hubs' fetched for it.

An auditor asks this hub (``AuditService.GetCrossHubReceipt``) for one exchange by this hub's id. Its records
name the hubs the exchange crossed to or came from (``peer_hub``: a log origin, ``peer_exchange_id``); for
each adjacent active peer so named, this hub asks it over the federation (``ReceiptService.GetReceiptPart``)
for its part and the parts of the hubs beyond it, which that peer fetches the same way from its own peers
(receipt_chain: how far, and what each hub checks before it passes a part on). This hub checks them, merges
them with its own part and refuses a receipt whose records do not link into the whole chain, from the
consumer's hub to the serving hub (audit.receipt.chain), naming the hub missing. A peer answers only for an
exchange whose records name the calling hub's log, and NOT_FOUND otherwise, so nothing leaks about
exchanges the caller was not party to. Each part is proved under a checkpoint a neighbour cosigned (the
asking hub's witness, for a peer's part): while the records are newer than any, FAILED_PRECONDITION says so.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from audit.cosignature import with_cosignatures
from audit.note import Verifier
from audit.receipt import Part, ProvedRecord, ReceiptError, merge
from audit.receipt import chain as whole_chain
from exchange import errors
from exchange.federation.model import Peer, PeerState
from exchange.models import Principal
from exchange.paging import MAX_PAGE_SIZE, PageRequest
from exchange.server.federation_witness import peer_log, peer_witness
from exchange.server.peering import CALL_DEADLINE, from_peer
from exchange.server.receipt_chain import (
    FURTHER_UNAVAILABLE,
    Ask,
    ChainParts,
    links_of,
    part_to_wire,
    path_of,
)
from exchange.server.witness import ConsistencyProofs
from exchange.store import Store
from exchange.store.audit import Entry, EntryFilter
from exchange.v1 import receipts_pb2 as pb
from exchange.v1 import receipts_pb2_grpc as pb_grpc
from policy import HUB_WIDE, Action, RightsPolicy

if TYPE_CHECKING:
    from exchange.server.federation import Federation


class InclusionProofs(ConsistencyProofs, Protocol):
    """Where the log's inclusion proofs come from (the running exchange.auditlog.log.AuditLog)."""

    def inclusion_proofs(self, seqs: list[int], size: int) -> dict[int, list[bytes]]: ...


class Parts:
    """This hub's part of a receipt of one exchange, under a checkpoint one of the given witnesses cosigned."""

    def __init__(self, store: Store, proofs: InclusionProofs, verifier: Verifier) -> None:
        self.store = store
        self.proofs = proofs
        self.verifier = verifier

    def records(self, exchange_id: str) -> list[tuple[Entry, dict[str, object]]]:
        """This hub's records of the exchange, in log order, each with its fields."""
        page = self.store.audit.search(PageRequest(MAX_PAGE_SIZE, None, ""), EntryFilter(exchange_id=exchange_id))
        found = [(e, json.loads(e.record)) for e in page.items if e.record]
        if not found and self.store.audit.exchange_seen(exchange_id) is not None:
            raise errors.FailedPrecondition(
                f"exchange {exchange_id}'s records at {self.verifier.name} are committed but not yet placed in the "
                "log, so not yet witnessed either: the log places them within a moment, and each sync round "
                "(federation_sync_seconds) has the peers cosign the newest checkpoint; ask again after the next",
                subject=exchange_id,
                kind="NOT_YET_WITNESSED",
            )
        return found

    def part(self, exchange_id: str, entries: list[Entry], witnesses: dict[str, str]) -> Part:
        """The part for ``entries``; ``witnesses`` maps each witness name that may vouch to its hub's code."""
        sizes = {name: self.store.witness.last_cosigned(name) for name in witnesses}
        size = max(sizes.values(), default=0)
        newest = max(e.seq for e in entries)
        if size <= newest:
            by = ", ".join(f"hub {code}" for code in sorted(witnesses.values())) or "no peer"
            raise errors.FailedPrecondition(
                f"exchange {exchange_id}'s records at {self.verifier.name} (up to entry {newest}) are not yet under a "
                f"checkpoint witnessed by {by} (witnessed up to size {size}): each sync round "
                "(federation_sync_seconds) has the peers cosign the newest checkpoint; ask again after the next",
                subject=exchange_id,
                kind="NOT_YET_WITNESSED",
            )
        note = self.store.audit.checkpoints(size, size)[0][1]
        proofs = self.proofs.inclusion_proofs([e.seq for e in entries], size)
        records = tuple(ProvedRecord(e.seq, e.record or "", tuple(proofs[e.seq])) for e in entries)
        signed = with_cosignatures(note, self.store.witness.cosignatures(size))
        return Part(self.verifier.name, self.verifier.encode(), exchange_id, records, signed)


def _witnesses(peers: list[Peer]) -> dict[str, str]:
    return {w.name: p.code for p in peers if (w := peer_witness(p)) is not None}


class ReceiptServicer(pb_grpc.ReceiptServiceServicer):
    """ReceiptService on the federation listener: a peer's part of an exchange it was party to, and, asked
    for them, the parts of the hubs beyond this one (receipt_chain)."""

    def __init__(self, federation: Federation, parts: Parts) -> None:
        self.federation = federation
        self.parts = parts
        self.chain = ChainParts(federation, parts.store, parts.verifier.name)

    @from_peer((PeerState.ACTIVE,), "fetch a receipt part")
    def GetReceiptPart(self, request: pb.GetReceiptPartRequest, peer: Peer) -> pb.GetReceiptPartResponse:
        origin = peer_log(peer).name
        exchange_id = request.exchange_id.strip()[:200]
        found = self.parts.records(exchange_id) if exchange_id else []
        if not any(fields.get("peer_hub") == origin for _, fields in found):
            raise errors.NotFound("exchange", exchange_id or "(none given)")
        part = self.parts.part(exchange_id, [e for e, _ in found], _witnesses([peer]))
        path = path_of(request, origin)
        further = (
            self.chain.beyond(links_of(found), request.further_hops, path, CALL_DEADLINE.get())
            if request.further_hops > 0
            else []
        )
        return pb.GetReceiptPartResponse(part=part_to_wire(part), further=[part_to_wire(p) for p in further])


class CrossReceipts:
    """The auditor's side: this hub's part and the parts of every other hub on the exchange's chain (its
    adjacent peers' and, fetched through them, those beyond), merged and checked to form the whole chain."""

    def __init__(self, federation: Federation | None, parts: Parts, policy: RightsPolicy) -> None:
        self.federation = federation
        self.parts = parts
        self.policy = policy

    def receipt(self, actor: Principal, exchange_id: str) -> list[Part]:
        """The receipt's parts, this hub's first (blocking: run from a worker thread)."""
        self.policy.require(actor, Action.READ_AUDIT, HUB_WIDE, "make a cross-hub receipt")
        exchange_id = exchange_id.strip()
        if not exchange_id or len(exchange_id) > 200:
            raise errors.InvalidArgument.of([errors.FieldViolation("exchange_id", "give this hub's exchange id")])
        found = self.parts.records(exchange_id)
        if not found:
            raise errors.NotFound("exchange", exchange_id)
        links = links_of(found)
        if not links:
            raise errors.FailedPrecondition(f"exchange {exchange_id} did not cross to another hub: no record names one")
        if self.federation is None:
            raise errors.FailedPrecondition(
                "this hub does not federate (federation_listen is not set), so it cannot fetch its peers' parts: "
                "make each hub's part with `exchange audit cross-receipt ID --own` and join them with --merge"
            )
        chain = ChainParts(self.federation, self.parts.store, self.parts.verifier.name)
        peers = chain.peers([origin for origin, _ in links])
        own = self.parts.part(exchange_id, [e for e, _ in found], _witnesses(list(peers.values())))
        beyond = self.federation.settings.federation_hop_limit - 1
        theirs = [
            p for origin, their_id in links for p in _fetch(chain, peers[origin], Ask(their_id, beyond, (own.origin,)))
        ]
        try:
            merged = merge([own], theirs)
            whole_chain(merged)
        except ReceiptError as e:
            raise errors.FailedPrecondition(str(e)) from None
        return merged


def _fetch(chain: ChainParts, peer: Peer, ask: Ask) -> list[Part]:
    """The peer's part and those beyond it; a hub beyond that cannot be reached is named, with what to do."""
    try:
        return chain.fetch(peer, ask)
    except errors.Unavailable as e:
        if e.reason != FURTHER_UNAVAILABLE:
            raise
        raise errors.Unavailable(
            f"{e.message}. Peer hub {peer.code} answered; ask again later, or make that hub's part there "
            "(exchange audit cross-receipt ID --own) and join the parts with --merge",
            FURTHER_UNAVAILABLE,
        ) from None
