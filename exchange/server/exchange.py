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

from exchange import values
from exchange.errors import ExchangeError
from exchange.server.rpc import Authenticator, abort_with, internal_error, peer_of, principal_of
from exchange.services.exchange import Ask, Batch, Chunk, Disclosure, ExchangeService
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
P = TypeVar("P")
M = TypeVar("M")


def _ask(request: pb.QueryRequest | pb.FetchDocumentRequest) -> Ask:
    fields = tuple(f.strip() for f in request.fields) if isinstance(request, pb.QueryRequest) else ()
    filters = {k.strip(): v.strip() for k, v in request.filters.items()}
    return Ask(request.resource_code.strip(), request.purpose.strip(), filters, fields, request.provenance)


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _disclosure(d: Disclosure) -> pb.Disclosure:
    return pb.Disclosure(fields=list(d.fields), masks={f: k.value for f, k in d.masks}, grant_id=d.grant_id)


class ExchangeServicer(pb_grpc.ExchangeServiceServicer):
    def __init__(self, service: ExchangeService, auth: Authenticator, insecure_dev: bool) -> None:
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev

    async def Query(self, request: pb.QueryRequest, context: Context) -> pb.QueryResponse:
        try:
            result = await self.service.query(
                partial(principal_of, self, peer_of(self, context)),
                _ask(request),
                request.page_size,
                request.page_token,
                _deadline(context),
            )
        except ExchangeError as e:
            await abort_with(context, e)
            raise
        except Exception:
            await internal_error(context, "Query")
            raise
        return pb.QueryResponse(
            exchange_id=result.exchange_id,
            records=[values.record_to_wire(r) for r in result.rows],
            next_page_token=result.next_page_token,
            disclosure=_disclosure(result.disclosure),
            provenance=pb.Provenance(note=result.provenance) if result.provenance else None,
        )

    # Streaming handlers must be async generators themselves: that is how grpc.aio knows them.

    async def StreamQuery(self, request: pb.QueryRequest, context: Context) -> AsyncIterator[pb.QueryBatch]:
        batches = self.service.stream(
            partial(principal_of, self, peer_of(self, context)), _ask(request), request.batch_size, _deadline(context)
        )
        async for message in _relay(context, batches, _batch, "StreamQuery"):
            yield message

    async def FetchDocument(
        self, request: pb.FetchDocumentRequest, context: Context
    ) -> AsyncIterator[pb.DocumentChunk]:
        chunks = self.service.document(
            partial(principal_of, self, peer_of(self, context)), _ask(request), _deadline(context)
        )
        async for message in _relay(context, chunks, _chunk, "FetchDocument"):
            yield message


def _batch(b: Batch) -> pb.QueryBatch:
    return pb.QueryBatch(
        exchange_id=b.exchange_id,
        records=b.records if b.records is not None else [values.record_to_wire(r) for r in b.rows],
        disclosure=_disclosure(b.disclosure) if b.disclosure else None,
        last=b.last,
        total_records=b.total,
        provenance=pb.Provenance(note=b.provenance) if b.provenance else None,
    )


def _chunk(c: Chunk) -> pb.DocumentChunk:
    d = c.document
    return pb.DocumentChunk(
        exchange_id=c.exchange_id,
        info=pb.DocumentInfo(name=d.name, media_type=d.media_type, size=d.size) if d is not None else None,
        data=c.data,
        last=c.last,
        sha256=c.sha256,
        total_bytes=c.total,
        provenance=pb.Provenance(note=c.provenance) if c.provenance else None,
    )


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
