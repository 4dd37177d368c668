"""Exchanges across hubs: a consumer's Query, StreamQuery or FetchDocument of an entry homed at another hub,
forwarded along the tree of peers (streams and documents part by part: forwarding_parts).

The consumer's hub (the origin) authenticates and admits the call as for a local entry, signs a forwarded
statement (audit.forwarded) and calls the peer the entry came from (its ``via_peer``, the next hop towards
its home). A hub on the way checks the statement, logs its hop ("in" from the caller, "out" to the next) and
signs the next statement. The home decides by its own grants for the foreign department, fetches, masks and
logs as for a local consumer ("in"), and signs the answer's digest (a provenance statement). Every hub on
the way back checks that signature, with the home's log key relayed with the catalog entry, before passing
the answer on, and completes its "out" record with the next hub's exchange id. See docs/federation.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from google.protobuf.message import Message

from audit import forwarded
from audit.forwarded import Forwarded
from audit.note import Signer
from audit.records import AuditRecord
from exchange.errors import ExchangeError, FailedPrecondition
from exchange.federation.model import Peer, PeerState, RemoteEntry
from exchange.models import Principal, PrincipalKind, PrincipalRef
from exchange.services.exchange import ExchangeService
from exchange.services.exchange.admit import admit, typed_filters
from exchange.services.exchange.answers import (
    DOCUMENT_KINDS,
    RECORD_KINDS,
    Ask,
    Call,
    Identify,
    Link,
    ask_of,
    new_exchange_id,
    query_response,
)
from exchange.services.exchange.record import Recorder, failed, refused, since
from exchange.services.federation import forwarding_checks as checks
from exchange.services.federation import forwarding_parts as parts
from exchange.services.federation.forwarding_records import hop_record, refused_call
from exchange.services.federation.held import HeldEntries, HeldPeers
from exchange.store import Store
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import forwarding_pb2 as fpb

log = logging.getLogger(__name__)
# Sends a forwarded query to a peer (Federation's call: its failures name the hop).
Send = Callable[[Peer, fpb.ForwardQueryRequest, float | None], Awaitable[fpb.ForwardQueryResponse]]
SendStream = Callable[[Peer, fpb.ForwardQueryRequest, float | None], AsyncIterator[fpb.ForwardStreamResponse]]
SendDocument = Callable[[Peer, fpb.ForwardQueryRequest, float | None], AsyncIterator[fpb.ForwardDocumentResponse]]


@dataclass(frozen=True)
class HubSide:
    """What forwarding knows of this hub: its code, its log origin, its hop limit, its log signer."""

    code: str
    origin: str
    hop_limit: int
    signer: Signer


@dataclass(frozen=True)
class Route:
    """Where a call goes next: the peer, the hub the entry is homed at, and that hub's log key."""

    peer: Peer
    home: str
    home_key: str


class Forwarding:
    """Forwards exchanges of remote entries and serves those forwarded to this hub. It reads the peers and the
    remote entries it needs on every call from what this process holds of them (``held``: kept while unchanged)."""

    def __init__(
        self,
        store: Store,
        exchanging: ExchangeService,
        recorder: Recorder,
        hub: HubSide,
        *,
        peers: HeldPeers,
        entries: HeldEntries,
        send: Send,
        send_stream: SendStream,
        send_document: SendDocument,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._exchanging = exchanging
        self._recorder = recorder
        self._hub = hub
        self._peers = peers
        self._entries = entries
        self._send = send
        self._send_stream = send_stream
        self._send_document = send_document
        self._clock = clock

    async def is_remote(self, code: str) -> bool:
        """Whether ``code`` is an entry homed at another hub (a cached entry of this hub is answered at once)."""
        if self._exchanging.holds(code):
            return False
        if self._entries.peek(code) is not None:
            return True  # held: no worker thread for a dictionary look-up
        return await asyncio.to_thread(self._entries.get, code) is not None

    # The consumer's hub

    async def query(self, identify: Identify, request: xpb.QueryRequest, deadline: float | None) -> xpb.QueryResponse:
        """The answer of the home hub to a consumer of this hub, checked; recorded here as the "out" hop."""
        call = Call(new_exchange_id(), "query", RECORD_KINDS, deadline, page=(request.page_size, request.page_token))
        started = time.monotonic()
        raw = request.SerializeToString()
        record, statement, route, ask = await self._start(identify, request, raw, call)
        _, response = await self._pass_on(record, statement, raw, route, deadline=deadline, started=started)
        response.exchange_id = call.exchange_id  # the consumer's id of it here; the home's is in the provenance
        if not ask.provenance:
            response.ClearField("provenance")
        return response

    async def stream(
        self, identify: Identify, request: xpb.QueryRequest, deadline: float | None
    ) -> AsyncGenerator[xpb.QueryBatch, None]:
        """The home hub's batches for a consumer of this hub, each checked before it is passed on."""
        call = Call(new_exchange_id(), "stream", RECORD_KINDS, deadline, batch=request.batch_size)
        async for message, ask in self._parts_for_consumer(identify, request, call):
            assert isinstance(message, xpb.QueryBatch)
            message.exchange_id = call.exchange_id
            if message.last and not ask.provenance:
                message.ClearField("provenance")
            yield message

    async def document(
        self, identify: Identify, request: xpb.FetchDocumentRequest, deadline: float | None
    ) -> AsyncGenerator[xpb.DocumentChunk, None]:
        """The home hub's document for a consumer of this hub, each chunk checked before it is passed on."""
        call = Call(new_exchange_id(), "document", DOCUMENT_KINDS, deadline)
        async for message, ask in self._parts_for_consumer(identify, request, call):
            assert isinstance(message, xpb.DocumentChunk)
            message.exchange_id = call.exchange_id
            if message.last and not ask.provenance:
                message.ClearField("provenance")
            yield message

    async def _parts_for_consumer(
        self, identify: Identify, request: xpb.QueryRequest | xpb.FetchDocumentRequest, call: Call
    ) -> AsyncGenerator[tuple[Message, Ask], None]:
        started, raw = time.monotonic(), request.SerializeToString()
        record, statement, route, ask = await self._start(identify, request, raw, call)
        async for _, message in self._pass_on_parts(
            record, statement, raw, route, deadline=call.deadline, started=started
        ):
            yield message, ask

    async def _start(
        self, identify: Identify, request: xpb.QueryRequest | xpb.FetchDocumentRequest, raw: bytes, call: Call
    ) -> tuple[AuditRecord, Forwarded, Route, Ask]:
        """Admits the consumer's call here (a refusal recorded and raised) and its first statement."""
        ask = ask_of(request)
        admitted = await asyncio.to_thread(self._admit, identify, ask, call)
        if isinstance(admitted[1], ExchangeError):  # refused here
            await self._recorder.append(admitted[0])
            raise admitted[1].recorded_as(call.exchange_id)
        record, actor, route = admitted
        statement = Forwarded(
            sender=self._hub.code,
            receiver=route.peer.code,
            home=route.home,
            resource=ask.resource_code,
            call=call.action,
            department=actor.department_code,
            system=actor.ref.code,
            purpose=ask.purpose,
            path=(self._hub.code,),
            exchanges=(call.exchange_id,),
            hops_left=self._hub.hop_limit,
            request=forwarded.request_digest(raw),
        )
        return record, statement, route, ask

    def _admit(
        self, identify: Identify, ask: Ask, call: Call
    ) -> tuple[AuditRecord, Principal, Route] | tuple[AuditRecord, ExchangeError]:
        """The opening record, the caller and the route; or the record of the refusal and the refusal.
        Runs in a worker thread."""
        actor = identify()  # an unknown caller raises here: there is no one to record
        started = time.monotonic()
        record = self._recorder.opening(actor, ask, call.exchange_id, call.action)
        try:
            admit(actor, ask, call)
            entry = self._entries.get(ask.resource_code)
            if entry is None:
                raise FailedPrecondition(f"resource {ask.resource_code} is no longer catalogued at this hub")
            typed_filters(entry.resource, ask)
            if entry.resource.spec.share_method not in call.methods:
                raise FailedPrecondition(
                    f"resource {ask.resource_code} is shared by {entry.resource.spec.share_method.value}",
                    ask.resource_code,
                    kind="SHARE_METHOD",
                )
            route = self._route(entry)
        except ExchangeError as e:
            return refused(record, started, e), e
        return record, actor, route

    def _route(self, entry: RemoteEntry) -> Route:
        """The active peer towards the entry's home, and the home's log key (both needed to forward)."""
        peer = self._peers.get(entry.via_peer)
        if peer.state is not PeerState.ACTIVE:
            raise FailedPrecondition(
                f"resource {entry.resource.spec.code} is homed at hub {entry.home.code}, reached through peer hub "
                f"{peer.code}, whose peering is {peer.state.value}",
                subject=peer.code,
                kind="PEERING_NOT_ACTIVE",
            )
        if not entry.home.log_key:
            raise FailedPrecondition(
                f"hub {entry.home.code}'s log key is not known here yet (its entry predates it): answers from it "
                "cannot be checked; the next catalog change of the entry brings it",
                subject=entry.home.code,
                kind="HOME_LOG_KEY",
            )
        return Route(peer, entry.home.code, entry.home.log_key)

    # Every hub that passes a call on

    async def _pass_on(
        self,
        record: AuditRecord,
        statement: Forwarded,
        raw: bytes,
        route: Route,
        *,
        deadline: float | None,
        started: float,
    ) -> tuple[fpb.ForwardQueryResponse, xpb.QueryResponse]:
        """Signs ``statement``, calls the next hub, checks the home's signature over the answer; records the
        "out" hop (with the next hub's exchange id, or how it failed) before anything is passed back."""
        peer = route.peer
        out = replace(record, hop="out", peer_hub=checks.log_origin(peer.log_key), peer_exchange_id="")
        hop = f"peer hub {peer.code} at {peer.address}"
        try:
            note = forwarded.issue(self._hub.signer, statement, self._clock())
            answer = await self._send(peer, fpb.ForwardQueryRequest(statement=note, request=raw), deadline)
            response = checks.verified_answer(answer.response, answer.provenance, route.home_key, statement, hop)
        except ExchangeError as e:
            log.warning("forwarded query %s to %s failed: %s", statement.exchanges[-1], hop, e.message)
            await self._recorder.append(failed(out, started, e))
            raise e.recorded_as(record.exchange_id) from None
        done = replace(
            out,
            outcome="ok",
            peer_exchange_id=answer.exchange_id[:64],
            rows=len(response.records),
            latency_us=since(started),
        )
        await self._recorder.append(done)
        return answer, response

    def _pass_on_parts(
        self,
        record: AuditRecord,
        statement: Forwarded,
        raw: bytes,
        route: Route,
        *,
        deadline: float | None,
        started: float,
    ) -> AsyncGenerator[tuple[parts.Part, Message], None]:
        """``_pass_on`` for a stream or a document: each part checked as it comes, before it is passed on."""
        peer = route.peer
        out = replace(record, hop="out", peer_hub=checks.log_origin(peer.log_key), peer_exchange_id="")
        hop = f"peer hub {peer.code} at {peer.address}"
        note = forwarded.issue(self._hub.signer, statement, self._clock())
        request = fpb.ForwardQueryRequest(statement=note, request=raw)
        check: parts.PartCheck
        if statement.call == "document":
            check = checks.ChunkCheck(route.home_key, statement, hop)
            came = parts.parts_of(self._send_document(peer, request, deadline), _chunk_part)
        else:
            check = checks.BatchCheck(route.home_key, statement, hop)
            came = parts.parts_of(self._send_stream(peer, request, deadline), _batch_part)
        return parts.pass_on(self._recorder, parts.Outgoing(out, statement.call, hop, started), came, check)

    # A hub that receives a forwarded call

    async def receive(self, peer: Peer, note: str, raw: bytes, deadline: float | None) -> fpb.ForwardQueryResponse:
        """A query ``peer`` forwarded: served if homed here, else passed on towards its home."""
        exchange_id, started = new_exchange_id(), time.monotonic()
        statement, request, route = await self._accepted(peer, note, raw, "query", (exchange_id, started))
        if route is None:
            assert isinstance(request, xpb.QueryRequest)  # the statement said query, and request_of read it so
            return await self._serve(peer, statement, note, request, deadline)
        record = hop_record(peer, statement, note, exchange_id)
        await self._recorder.append(record)
        onward = forwarded.next_hop(statement, self._hub.code, exchange_id, route.peer.code)
        answer, _ = await self._pass_on(record, onward, raw, route, deadline=deadline, started=started)
        return fpb.ForwardQueryResponse(response=answer.response, provenance=answer.provenance, exchange_id=exchange_id)

    async def _accepted(
        self, peer: Peer, note: str, raw: bytes, call: str, ids: tuple[str, float]
    ) -> tuple[Forwarded, xpb.QueryRequest | xpb.FetchDocumentRequest, Route | None]:
        """``_accept`` in a worker thread; a refusal logged, recorded (under ``ids``: exchange id, start) and raised."""
        try:
            return await asyncio.to_thread(self._accept, peer, note, raw, call)
        except ExchangeError as e:
            log.warning("forwarded %s from peer hub %s refused: %s", call, peer.code, e.message)
            await self._recorder.append(refused_call(peer, note, call, ids[0], error=e, started=ids[1]))
            raise e.recorded_as(ids[0]) from None

    async def receive_parts(
        self, peer: Peer, note: str, raw: bytes, call: str, deadline: float | None
    ) -> AsyncGenerator[parts.Part, None]:
        """A stream or document (``call``) ``peer`` forwarded: served if homed here, else passed on, part by part,
        towards its home; the parts as the home made them, with this hub's exchange id."""
        exchange_id, started = new_exchange_id(), time.monotonic()
        statement, request, route = await self._accepted(peer, note, raw, call, (exchange_id, started))
        if route is None:
            async for served in self._serve_parts(peer, statement, note, request, deadline):
                yield served
            return
        record = hop_record(peer, statement, note, exchange_id)
        await self._recorder.append(record)
        onward = forwarded.next_hop(statement, self._hub.code, exchange_id, route.peer.code)
        async for part, _ in self._pass_on_parts(record, onward, raw, route, deadline=deadline, started=started):
            yield replace(part, exchange_id=exchange_id)

    def _serve_parts(
        self,
        peer: Peer,
        statement: Forwarded,
        note: str,
        request: xpb.QueryRequest | xpb.FetchDocumentRequest,
        deadline: float | None,
    ) -> AsyncGenerator[parts.Part, None]:
        """The home's batches or chunks, each with its signed statement chaining the ones before it."""
        consumer, ask, link = _as_consumer(peer, statement, note, request)
        signer = self._hub.signer
        if isinstance(request, xpb.FetchDocumentRequest):
            chunks = self._exchanging.document(lambda: consumer, ask, deadline, link=link)
            return parts.signed_chunks(signer, statement, chunks)
        batches = self._exchanging.stream(lambda: consumer, ask, request.batch_size, deadline, link=link)
        return parts.signed_batches(signer, statement, batches)

    def _accept(
        self, peer: Peer, note: str, raw: bytes, call: str
    ) -> tuple[Forwarded, xpb.QueryRequest | xpb.FetchDocumentRequest, Route | None]:
        """The statement, the request and where it goes next (None: homed here). Runs in a worker thread."""
        now, seen = self._clock(), self._store.forwarded.seen
        statement = checks.accepted(note, peer, me=self._hub.code, request=raw, now=now, seen=seen, call=call)
        request = checks.request_of(raw, statement)
        entry = self._entries.get(statement.resource)
        if entry is None:
            return statement, request, None  # this hub's own entry, or none: its exchange service says which
        route = self._route(entry)
        if route.peer.code in statement.path:
            raise FailedPrecondition(
                f"forwarded call refused: its next hop {route.peer.code} is on its path already "
                f"({' → '.join(statement.path)}): a routing loop",
                kind="FORWARD_LOOP",
            )
        return statement, request, route

    async def _serve(
        self, peer: Peer, statement: Forwarded, note: str, request: xpb.QueryRequest, deadline: float | None
    ) -> fpb.ForwardQueryResponse:
        """The home's answer: decided by this hub's grants for the foreign department, signed."""
        consumer, ask, link = _as_consumer(peer, statement, note, request)
        result = await self._exchanging.query(
            lambda: consumer, ask, request.page_size, request.page_token, deadline, link=link
        )
        response = query_response(result).SerializeToString()
        return fpb.ForwardQueryResponse(response=response, provenance=result.provenance, exchange_id=result.exchange_id)


def _as_consumer(
    peer: Peer, statement: Forwarded, note: str, request: xpb.QueryRequest | xpb.FetchDocumentRequest
) -> tuple[Principal, Ask, Link]:
    """The home's view of a forwarded call: the foreign system as its caller (kind system, its code, the consuming
    department), what it asks (always with provenance: the hubs on the way check it), and the link to record."""
    consumer = Principal(
        PrincipalRef(PrincipalKind.SYSTEM, statement.system),
        f"system {statement.system} at hub {statement.origin}",
        statement.department,
    )
    link = Link(checks.log_origin(peer.log_key), statement.exchanges[-1], "in", note)
    return consumer, replace(ask_of(request), provenance=True), link


def _batch_part(message: Message) -> parts.Part:
    assert isinstance(message, fpb.ForwardStreamResponse)
    return parts.Part(message.batch, message.statement, message.exchange_id)


def _chunk_part(message: Message) -> parts.Part:
    assert isinstance(message, fpb.ForwardDocumentResponse)
    return parts.Part(message.chunk, message.statement, message.exchange_id)
