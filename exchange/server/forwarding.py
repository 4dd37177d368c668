"""ForwardingService handlers on the federation listener, and this hub's calls of it on its peers.

A peer forwards a consumer's call towards the hub where the resource is homed (docs/federation.md, "Exchanges
across hubs"). The calling peer is admitted by its hub certificate as for every call on the listener; its
peering must be active. What it may ask is the forwarding service's to decide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from exchange import errors
from exchange.federation.model import Peer, PeerState
from exchange.server.rpc import abort_with, internal_error
from exchange.services.federation.forwarding_parts import Part
from exchange.v1 import forwarding_pb2 as pb
from exchange.v1 import forwarding_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from exchange.server.federation import Federation

Context = grpc.aio.ServicerContext[Any, Any]
# Left for the hub that calls a peer to hear its answer, of the consumer's deadline, in seconds.
_MARGIN = 0.2


class ForwardingServicer(pb_grpc.ForwardingServiceServicer):
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    async def ForwardQuery(self, request: pb.ForwardQueryRequest, context: Context) -> pb.ForwardQueryResponse:
        presented = _presented(context)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            peer = await _admitted(self.federation, presented)
            forwarding = self.federation.forwarding
            if forwarding is None:
                raise errors.Unavailable(f"hub {self.federation.hub.code} is not serving forwarded exchanges yet")
            return await forwarding.receive(peer, request.statement, request.request, deadline)
        except errors.ExchangeError as e:
            await abort_with(context, e)
        except Exception:
            await internal_error(context, "ForwardQuery")
        raise AssertionError("unreachable: abort raises")

    async def ForwardStream(
        self, request: pb.ForwardStreamRequest, context: Context
    ) -> AsyncIterator[pb.ForwardStreamResponse]:
        async for part in self._parts(request, context, "stream"):
            yield pb.ForwardStreamResponse(batch=part.payload, statement=part.statement, exchange_id=part.exchange_id)

    async def ForwardDocument(
        self, request: pb.ForwardDocumentRequest, context: Context
    ) -> AsyncIterator[pb.ForwardDocumentResponse]:
        async for part in self._parts(request, context, "document"):
            yield pb.ForwardDocumentResponse(chunk=part.payload, statement=part.statement, exchange_id=part.exchange_id)

    async def _parts(
        self, request: pb.ForwardStreamRequest | pb.ForwardDocumentRequest, context: Context, call: str
    ) -> AsyncIterator[Part]:
        presented = _presented(context)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            peer = await _admitted(self.federation, presented)
            forwarding = self.federation.forwarding
            if forwarding is None:
                raise errors.Unavailable(f"hub {self.federation.hub.code} is not serving forwarded exchanges yet")
            async for part in forwarding.receive_parts(peer, request.statement, request.request, call, deadline):
                yield part
        except errors.ExchangeError as e:
            await abort_with(context, e)
        except Exception:
            await internal_error(context, f"Forward {call}")


def _presented(context: Context) -> bytes | None:
    chain = list(context.auth_context().get("x509_pem_cert") or ())
    return chain[0] if chain else None


async def _admitted(federation: Federation, presented: bytes | None) -> Peer:
    return await asyncio.to_thread(federation.peering.admit, presented, (PeerState.ACTIVE,), "forward an exchange")


async def forward_query(
    federation: Federation, peer: Peer, request: pb.ForwardQueryRequest, deadline: float | None
) -> pb.ForwardQueryResponse:
    """Calls ``peer``'s ForwardQuery: within the consumer's deadline (less a margin to answer it), else the
    longest a peer call and a provider's answer may take; failures name the hop (``Federation.call_on``)."""
    timeout = _timeout(federation, deadline)

    async def rpc(channel: grpc.aio.Channel) -> pb.ForwardQueryResponse:
        stub: pb_grpc.ForwardingServiceAsyncStub = pb_grpc.ForwardingServiceStub(channel)
        return await stub.ForwardQuery(request, timeout=timeout)

    return await federation.call_over(peer, "forwarded query", rpc, timeout)


def forward_stream(
    federation: Federation, peer: Peer, request: pb.ForwardQueryRequest, deadline: float | None
) -> AsyncIterator[pb.ForwardStreamResponse]:
    """Calls ``peer``'s ForwardStream: its batches as they come; failures name the hop. The whole stream has
    the consumer's deadline, else none (the home's own limits end it)."""
    timeout = _whole(deadline)

    def rpc(channel: grpc.aio.Channel) -> AsyncIterator[pb.ForwardStreamResponse]:
        stub: pb_grpc.ForwardingServiceAsyncStub = pb_grpc.ForwardingServiceStub(channel)
        asked = pb.ForwardStreamRequest(statement=request.statement, request=request.request)
        return aiter(stub.ForwardStream(asked, timeout=timeout))

    return federation.stream_on(peer, "forwarded stream", rpc, timeout or federation.settings.federation_call_seconds)


def forward_document(
    federation: Federation, peer: Peer, request: pb.ForwardQueryRequest, deadline: float | None
) -> AsyncIterator[pb.ForwardDocumentResponse]:
    """Calls ``peer``'s ForwardDocument: its chunks as they come; failures name the hop (as ``forward_stream``)."""
    timeout = _whole(deadline)

    def rpc(channel: grpc.aio.Channel) -> AsyncIterator[pb.ForwardDocumentResponse]:
        stub: pb_grpc.ForwardingServiceAsyncStub = pb_grpc.ForwardingServiceStub(channel)
        asked = pb.ForwardDocumentRequest(statement=request.statement, request=request.request)
        return aiter(stub.ForwardDocument(asked, timeout=timeout))

    return federation.stream_on(peer, "forwarded document", rpc, timeout or federation.settings.federation_call_seconds)


def _whole(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.01, deadline - time.monotonic() - _MARGIN)


def _timeout(federation: Federation, deadline: float | None) -> float:
    """Within the consumer's deadline (less a margin to answer it), else the longest a peer call and a
    provider's answer may take."""
    settings = federation.settings
    timeout = settings.federation_call_seconds + settings.provider_timeout_seconds
    if deadline is not None:
        timeout = min(timeout, max(0.01, deadline - time.monotonic() - _MARGIN))
    return timeout
