"""ExchangeService handlers: who is calling, what they ask, then the exchange service; errors as statuses.

Streams are async generators: gRPC asks for the next message only once the previous one is on
its way to the consumer, so a slow consumer slows the provider instead of filling the hub's memory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

import grpc

from exchange import tracing
from exchange.errors import ExchangeError
from exchange.server.methods import MethodTable
from exchange.server.rpc import Authenticator, abort_with, internal_error, peer_of, principal_of
from exchange.services.exchange import ExchangeService
from exchange.services.exchange.answers import Batch, ask_of, batch_bytes, chunk_to_wire, query_response
from exchange.services.federation.forwarding import Forwarding
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc as pb_grpc

STREAM_QUERY = "/exchange.v1.ExchangeService/StreamQuery"
Context = grpc.aio.ServicerContext[Any, Any]
P = TypeVar("P")
M = TypeVar("M")


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def add_to_server(servicer: ExchangeServicer, server: MethodTable) -> None:
    """Serves ``servicer``; StreamQuery's batches go out as the servicer encoded them (``batch_bytes``)."""
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    server.send_encoded(STREAM_QUERY)


class ExchangeServicer(pb_grpc.ExchangeServiceServicer):
    def __init__(
        self, service: ExchangeService, auth: Authenticator, insecure_dev: bool, forwarding: Forwarding | None = None
    ) -> None:
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev
        # Entries homed at other hubs are asked for there, through the peers (None: this hub does not federate).
        self.forwarding = forwarding

    async def Query(self, request: pb.QueryRequest, context: Context) -> pb.QueryResponse:
        identify = partial(principal_of, self, peer_of(self, context))
        try:
            if self.forwarding is not None and await self.forwarding.is_remote(request.resource_code.strip()):
                return await self.forwarding.query(identify, request, _deadline(context))
            result = await self.service.query(
                identify, ask_of(request), request.page_size, request.page_token, _deadline(context)
            )
        except ExchangeError as e:
            await abort_with(context, e)
            raise
        except Exception:
            await internal_error(context, "Query")
            raise
        return query_response(result)

    # Streaming handlers must be async generators themselves: that is how grpc.aio knows them.

    # Its batches are yielded encoded, each once (``add_to_server`` tells gRPC to send them as they are): a
    # batch's records were encoded by the shaping, for their size; gRPC would encode them all again.
    async def StreamQuery(  # type: ignore[override]
        self, request: pb.QueryRequest, context: Context
    ) -> AsyncIterator[bytes]:
        identify = partial(principal_of, self, peer_of(self, context))
        if self.forwarding is not None and await self._remote(request.resource_code.strip(), context):
            forwarded = self.forwarding.stream(identify, request, _deadline(context))
            async for encoded in _relay(context, forwarded, _encoded, "StreamQuery"):
                yield encoded
            return
        batches = self.service.stream(identify, ask_of(request), request.batch_size, _deadline(context))
        async for encoded in _relay(context, batches, _batch_sent, "StreamQuery"):
            yield encoded

    async def _remote(self, code: str, context: Context) -> bool:
        """Whether ``code`` is an entry homed at another hub (the call ends with the status if that cannot be said)."""
        assert self.forwarding is not None
        try:
            return await self.forwarding.is_remote(code)
        except ExchangeError as e:
            await abort_with(context, e)
            raise

    async def FetchDocument(
        self, request: pb.FetchDocumentRequest, context: Context
    ) -> AsyncIterator[pb.DocumentChunk]:
        identify = partial(principal_of, self, peer_of(self, context))
        if self.forwarding is not None and await self._remote(request.resource_code.strip(), context):
            forwarded = self.forwarding.document(identify, request, _deadline(context))
            async for chunk in _relay(context, forwarded, _same, "FetchDocument"):
                yield chunk
            return
        chunks = self.service.document(identify, ask_of(request), _deadline(context))
        async for message in _relay(context, chunks, chunk_to_wire, "FetchDocument"):
            yield message


async def _relay(
    context: Context, parts: AsyncGenerator[P, None], message: Callable[[P], M], where: str
) -> AsyncIterator[M]:
    """The service's parts as messages, as the consumer reads them; an error ends the call with its status."""
    try:
        async for part in parts:
            yield message(part)
    except ExchangeError as e:
        await abort_with(context, e)
    except Exception:
        await internal_error(context, where)
    finally:
        await parts.aclose()


def _same(message: M) -> M:
    return message


# A call's span (exchange.server.tracing) takes the exchange id from the messages it sees; encoded ones it cannot
# read, so StreamQuery puts the id on the span itself (a no-op when tracing is off).


def _batch_sent(batch: Batch) -> bytes:
    tracing.note_exchange_id(batch.exchange_id)
    return batch_bytes(batch)


def _encoded(message: pb.QueryBatch) -> bytes:
    tracing.note_exchange_id(message.exchange_id)
    return message.SerializeToString()
