"""The parts of a cross-hub receipt fetched from peers: an adjacent peer's, and those of the hubs beyond it.

An exchange forwarded over several hops leaves records at each hub of its chain (audit/receipt.py). A hub
asks its adjacent peer for the peer's part (``ReceiptService.GetReceiptPart``) and, with ``further_hops``,
for the parts beyond it too: the peer reads which hubs its own records name besides the one asking (the
exchange went on from it, or came to it from further away) and asks each of them, its own adjacent peers,
the same way: one hop fewer each time, never a hub the ask came through (``path``), so an ask never turns
back or loops, and never further than the hop limits. Each hub answers only for an exchange whose records
name the hub asking it, so each further hub applies the NOT_FOUND rule to the hub before it.

Each hub checks what it passes on. Its adjacent peer's part: with the log key that peer told at peering. A
part from further away: with the key this hub knows for that log (a peer's, or a home hub's relayed with
the catalog), and else only with the key the part states, which shows that the part holds together; that
part was checked with the key told at peering by the hub next to it, which vouches for it as it vouches
for the keys it relays. A hub on the way can vouch for no more: an auditor trusts keys, not hubs, and
``exchange audit verify-receipt --trust`` is the check that counts.

A hub beyond that cannot be reached makes the answer UNAVAILABLE with the reason FURTHER_HUB_UNAVAILABLE
naming it (the asker tells it apart from its peer being down). So does one that is slow: the asker's deadline
goes with the ask (gRPC's own), and each hub asks the next with a little less than it has left
(``handed_on``), so the hub that does not answer in time is the one named, by the hub next to it, before the
asker's own call runs out (each hub's deadline is at most ``federation_call_seconds``). A part that does
not verify is DATA_LOSS naming its hub; a hub beyond whose records do not tie the exchange to the hub before
it is FAILED_PRECONDITION naming both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from audit.note import NoteError, Verifier
from audit.receipt import Part, ProvedRecord, ReceiptError, verify_part
from exchange import errors
from exchange.federation.model import Peer, PeerState
from exchange.server.federation_witness import peer_log
from exchange.server.rpc import reason_of
from exchange.store import Store
from exchange.store.audit import Entry
from exchange.v1 import receipts_pb2 as pb
from exchange.v1 import receipts_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from exchange.server.federation import Federation

FURTHER_UNAVAILABLE = "FURTHER_HUB_UNAVAILABLE"
# What a hub keeps of the time it has left when it asks the next hub: to tell its asker what went wrong.
KEEP_FRACTION = 0.1
KEEP_AT_LEAST_SECONDS = 0.3
MAX_PATH = 17  # federation_hop_limit is at most 16: a chain of 17 hubs
WHAT = "fetch a receipt part"


@dataclass(frozen=True)
class Ask:
    """One ask for a peer's part: its id of the exchange, how many hubs beyond it, the hubs it came through,
    and by when (time.monotonic()) the answer is needed (None: within ``federation_call_seconds``)."""

    exchange_id: str
    further_hops: int
    path: tuple[str, ...]
    deadline: float | None = None


def handed_on(deadline: float | None, now: float) -> float | None:
    """The deadline to ask the next hub with, a little before one's own (None: none was set)."""
    if deadline is None:
        return None
    left = deadline - now
    return now + left - max(left * KEEP_FRACTION, KEEP_AT_LEAST_SECONDS)


def part_to_wire(part: Part) -> pb.ReceiptPart:
    records = [pb.ProvedRecord(seq=r.seq, record=r.record, proof=list(r.proof)) for r in part.records]
    return pb.ReceiptPart(
        origin=part.origin, log_key=part.log_key, exchange_id=part.exchange_id, records=records,
        checkpoint=part.checkpoint,
    )  # fmt: skip


def part_from_wire(wire: pb.ReceiptPart) -> Part:
    records = tuple(ProvedRecord(r.seq, r.record, tuple(r.proof)) for r in wire.records)
    return Part(wire.origin, wire.log_key, wire.exchange_id, records, wire.checkpoint)


def links_of(found: Iterable[tuple[Entry, dict[str, object]]]) -> list[tuple[str, str]]:
    """Each hub the records name, as (its log origin, its id of the exchange), in a stable order."""
    return sorted({(str(f["peer_hub"]), str(f.get("peer_exchange_id", ""))) for _, f in found if f.get("peer_hub")})


def path_of(request: pb.GetReceiptPartRequest, caller: str) -> tuple[str, ...]:
    """The hubs an ask came through, the caller last (added if it left itself out); bad input refused."""
    path = tuple(o.strip() for o in request.path)
    if len(path) >= MAX_PATH or any(not o or len(o) > 200 for o in path):
        raise errors.InvalidArgument.of(
            [errors.FieldViolation("path", f"give at most {MAX_PATH - 1} log origins, none empty")]
        )
    return path if path and path[-1] == caller else (*path, caller)


class ChainParts:
    """Fetches a peer's part of a receipt and the parts beyond it, each checked before it is passed on."""

    def __init__(self, federation: Federation, store: Store, origin: str) -> None:
        self.federation = federation
        self.store = store
        self.origin = origin  # this hub's log origin

    @property
    def code(self) -> str:
        return self.federation.hub.code

    def peers(self, origins: Iterable[str]) -> dict[str, Peer]:
        """The active peers whose logs are ``origins``; FAILED_PRECONDITION naming any that is not one."""
        active = self.store.peers.list((PeerState.ACTIVE,))
        by_origin = {peer_log(p).name: p for p in active if p.log_key}
        missing = sorted(set(origins) - set(by_origin))
        if missing:
            raise errors.FailedPrecondition(
                f"the exchange crossed to the hub(s) whose log is {', '.join(missing)}, not an active peer of hub "
                f"{self.code}: ask that hub's auditors for its part (exchange audit cross-receipt --merge joins "
                "the parts)"
            )
        return {o: by_origin[o] for o in origins}

    def beyond(
        self, links: list[tuple[str, str]], further_hops: int, path: tuple[str, ...], deadline: float | None = None
    ) -> list[Part]:
        """The parts of the hubs ``links`` name beyond this one (none the ask came through), for a peer that
        asked with ``further_hops`` along ``path``, needing the answer by ``deadline``; each fetched from its
        adjacent hub (with a little less time than is left) and checked."""
        hops = min(further_hops, self.federation.settings.federation_hop_limit)
        ahead = [(origin, their_id) for origin, their_id in links if origin not in (*path, self.origin)]
        if hops <= 0 or not ahead:
            return []
        peers = self.peers([origin for origin, _ in ahead])
        found: list[Part] = []
        for origin, their_id in ahead:
            try:
                ask = Ask(their_id, hops - 1, (*path, self.origin), handed_on(deadline, time.monotonic()))
                found += self.fetch(peers[origin], ask)
            except errors.Unavailable as e:
                if e.reason == FURTHER_UNAVAILABLE:
                    raise
                raise errors.Unavailable(
                    f"hub {self.code} could not fetch the receipt part of the hub beyond it: {e.message}",
                    FURTHER_UNAVAILABLE,
                ) from None
        return found

    def fetch(self, peer: Peer, ask: Ask) -> list[Part]:
        """The peer's part of its exchange ``ask.exchange_id`` and the parts beyond it that ``ask`` asks for,
        the peer's first, each checked (blocking: run from a worker thread)."""
        if not ask.exchange_id:
            raise errors.FailedPrecondition(
                f"a record of the exchange at hub {self.code} names peer hub {peer.code} but not its id of the "
                "exchange: the hop failed before that hub answered (see the record's outcome and reason), so no "
                "receipt of it can be made",
                subject=peer.code,
            )
        request = pb.GetReceiptPartRequest(
            exchange_id=ask.exchange_id, further_hops=ask.further_hops, path=list(ask.path)
        )

        async def rpc(stub: pb_grpc.ReceiptServiceAsyncStub, timeout: float) -> pb.GetReceiptPartResponse:
            try:
                return await stub.GetReceiptPart(request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                raise self._refusal(peer, ask, e) from None

        timeout = self._timeout(peer, ask)
        call = self.federation.call_on(peer, WHAT, pb_grpc.ReceiptServiceStub, rpc, timeout)
        return self._checked(peer, ask, self.federation.run(call))

    def _timeout(self, peer: Peer, ask: Ask) -> float:
        """The seconds to wait for the peer: ``federation_call_seconds``, or less if the ask must be answered
        sooner; none left is UNAVAILABLE naming the peer not asked."""
        seconds = self.federation.settings.federation_call_seconds
        if ask.deadline is None:
            return seconds
        left = round(ask.deadline - time.monotonic(), 2)
        if left <= 0:
            raise errors.Unavailable(
                f"hub {self.code} had no time left to ask peer hub {peer.code} for {WHAT}: the hubs before it "
                "used the asker's deadline up"
            )
        return min(seconds, left)

    def _refusal(self, peer: Peer, ask: Ask, e: grpc.aio.AioRpcError) -> Exception:
        """What a refusal of the peer becomes here: its NOT_FOUND and a hub beyond it that cannot be reached
        are told as such; any other is left to the federation to name the hop (``e`` itself)."""
        if e.code() is grpc.StatusCode.NOT_FOUND:
            return errors.FailedPrecondition(
                f"peer hub {peer.code} has no record of its exchange {ask.exchange_id} that names this hub "
                f"({self.code}): the records here and there do not agree (see both hubs' audit logs)",
                subject=peer.code,
            )
        if e.code() is grpc.StatusCode.UNAVAILABLE and reason_of(e) == FURTHER_UNAVAILABLE:
            return errors.Unavailable(e.details() or f"a hub beyond peer hub {peer.code}", FURTHER_UNAVAILABLE)
        return e

    def _checked(self, peer: Peer, ask: Ask, answer: pb.GetReceiptPartResponse) -> list[Part]:
        """The peer's part checked with its log key, and each part beyond with the key known for its log."""
        part = part_from_wire(answer.part)
        try:
            verify_part(part, peer_log(peer))
        except ReceiptError as e:
            raise errors.DataLoss(f"peer hub {peer.code} sent a receipt part that does not verify: {e}") from None
        if part.exchange_id != ask.exchange_id:
            raise errors.DataLoss(
                f"peer hub {peer.code} sent its part of exchange {part.exchange_id!r}, not of {ask.exchange_id!r}"
            )
        further = [part_from_wire(w) for w in answer.further]
        if len(further) > ask.further_hops:
            raise errors.DataLoss(
                f"peer hub {peer.code} sent {len(further)} parts from beyond it, more than the {ask.further_hops} "
                "hubs asked for"
            )
        keys = self.known_keys() if further else {}
        seen = {part.origin, *ask.path}
        for beyond in further:
            if beyond.origin in seen:
                raise errors.DataLoss(f"peer hub {peer.code} sent a second part of hub {beyond.origin}")
            seen.add(beyond.origin)
            self._check_beyond(peer, beyond, keys.get(beyond.origin, []))
        return [part, *further]

    def _check_beyond(self, peer: Peer, part: Part, known: list[Verifier]) -> None:
        """A part from beyond the peer, checked with the key this hub knows for its log, else with the key it
        states (which the hub next to it checked with the key told at peering)."""
        stated = part.log_key.strip()
        try:
            if known:
                verify_part(part, next((v for v in known if v.encode() == stated), known[0]))
            else:
                verify_part(part, Verifier.parse(stated))
        except (ReceiptError, NoteError) as e:
            against = " with the log key this hub knows for it" if known else ""
            raise errors.DataLoss(
                f"the receipt part of hub {part.origin} that peer hub {peer.code} passed on does not verify"
                f"{against}: {e}"
            ) from None

    def known_keys(self) -> dict[str, list[Verifier]]:
        """The log keys this hub knows, by log origin: the home hubs' relayed with catalog entries, and its
        peers' as they told them at peering (for a peer's log, its key alone)."""
        keys: dict[str, list[Verifier]] = {}
        for text in self.store.federated.home_log_keys():
            with suppress(NoteError):
                verifier = Verifier.parse(text)
                keys.setdefault(verifier.name, []).append(verifier)
        for peer in self.store.peers.list():
            with suppress(NoteError):
                verifier = Verifier.parse(peer.log_key)
                keys[verifier.name] = [verifier]
        return keys
