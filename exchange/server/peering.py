"""PeeringService handlers: the calls peer hubs make on the federation listener.

Each call is admitted by the calling hub's certificate: a registered peer's, issued by the CA registered for
it, whose peering allows the call. Anything else is refused with a status naming the peer and the reason.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from exchange import errors
from exchange.federation.model import HubKeys, Peer, PeerState
from exchange.server import federation_wire as fw
from exchange.server.rpc import abort_with, internal_error
from exchange.v1 import federation_pb2 as pb
from exchange.v1 import federation_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from exchange.server.federation import Federation

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
# When the peer's call being served must be answered (time.monotonic()), None if it set no deadline: a handler
# that asks hubs further on hands them a little less (receipt_chain). Set by from_peer for its worker thread.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("peer_call_deadline", default=None)
_NO_DEADLINE = 86400.0
_ANY_BUT_ENDED = tuple(s for s in PeerState if s is not PeerState.ENDED)
_CHANGES = {
    pb.PEERING_CHANGE_SUSPENDED: "suspended",
    pb.PEERING_CHANGE_RESUMED: "resumed",
    pb.PEERING_CHANGE_ENDED: "ended",
}


def from_peer(
    allowed: tuple[PeerState, ...], doing: str
) -> Callable[[Callable[[Any, Req, Peer], Resp]], Callable[[Any, Req, Context], Awaitable[Resp]]]:
    """Wraps a blocking ``fn(servicer, request, peer)``: the caller must be a peer in one of ``allowed`` states."""

    def wrap(fn: Callable[[Any, Req, Peer], Resp]) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
        @functools.wraps(fn)
        async def handler(self: PeeringServicer, request: Req, context: Context) -> Resp:
            chain = list(context.auth_context().get("x509_pem_cert") or ())
            presented = chain[0] if chain else None
            left: float | None = context.time_remaining()  # None, or very long, without a deadline
            CALL_DEADLINE.set(None if left is None or left > _NO_DEADLINE else time.monotonic() + left)

            def call() -> Resp:
                peer = self.federation.peering.admit(presented, allowed, doing)
                return fn(self, request, peer)

            try:
                return await asyncio.to_thread(call)
            except errors.ExchangeError as e:
                await abort_with(context, e)
            except Exception:
                await internal_error(context, fn.__qualname__)
            raise AssertionError("unreachable: abort raises")

        return handler

    return wrap


class PeeringServicer(pb_grpc.PeeringServiceServicer):
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    @from_peer((PeerState.REGISTERED, PeerState.ACTIVE), "introduce itself")
    def Introduce(self, request: pb.IntroduceRequest, peer: Peer) -> pb.IntroduceResponse:
        out: list[errors.FieldViolation] = []
        relation = fw.RELATION.checked(request.relation, "relation", out)
        if out:
            raise errors.InvalidArgument.of(out)
        peering = self.federation.peering
        now = peering.introduced(peer, request.level, relation, HubKeys(request.log_key, request.witness_key))
        self.federation.sync_soon()
        own, keys = peering.own, peering.keys
        return pb.IntroduceResponse(
            code=own.code,
            name=own.name,
            level=own.level,
            state=fw.STATE.wire(now.state),
            log_key=keys.log_key,
            witness_key=keys.witness_key,
        )

    @from_peer(_ANY_BUT_ENDED, "change the peering")
    def NotifyPeering(self, request: pb.NotifyPeeringRequest, peer: Peer) -> pb.NotifyPeeringResponse:
        change = _CHANGES.get(request.change)
        if change is None:
            raise errors.InvalidArgument.of([errors.FieldViolation("change", "must be SUSPENDED, RESUMED or ENDED")])
        now = self.federation.peering.notified(peer, change, request.reason.strip())
        self.federation.peers_changed()
        return pb.NotifyPeeringResponse(state=fw.STATE.wire(now.state))

    @from_peer((PeerState.ACTIVE,), "read the offered catalog entries")
    def ListOfferedEntries(self, request: pb.ListOfferedEntriesRequest, peer: Peer) -> pb.ListOfferedEntriesResponse:
        offers, last = self.federation.catalog.offers(peer, request.after_sequence, request.page_size)
        # A page stays well under the message limit, however large its entries: the rest follow in the next one.
        budget = self.federation.settings.max_message_bytes // 2
        entries: list[pb.OfferedEntry] = []
        for offer in offers:
            entry = fw.offer_to_wire(offer)
            budget -= entry.ByteSize()
            if entries and budget < 0:
                break
            entries.append(entry)
        return pb.ListOfferedEntriesResponse(entries=entries, last_sequence=last)
