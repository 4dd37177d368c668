"""Streams and documents forwarded across hubs, part by part: every part checked before it is passed on.

The home hub signs each part (a stream's batch, a document's chunk) with a statement chaining the parts before
it (``forwarding_checks.chained``); each hub on the way back checks the part it received before passing it on,
so none holds the whole answer and none passes on a part it has not checked. See docs/federation.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from google.protobuf.message import Message

from audit.forwarded import Forwarded
from audit.note import Signer
from audit.records import AuditRecord
from exchange.backend import being_cancelled
from exchange.errors import DataLoss, ExchangeError, Unavailable
from exchange.services.auditing import now_text
from exchange.services.exchange.answers import Batch, Chunk, batch_to_wire, chunk_to_wire
from exchange.services.exchange.record import Recorder, failed, since
from exchange.services.federation import forwarding_checks as checks

log = logging.getLogger("exchange.services.federation.forwarding")


@dataclass(frozen=True)
class Part:
    """One part of a forwarded stream or document as it came: its bytes as the home made them, the home's
    statement of it, and the id of the hub that sent it on."""

    payload: bytes
    statement: str
    exchange_id: str


class PartCheck(Protocol):
    """Checks each part as it comes (``forwarding_checks.BatchCheck``, ``ChunkCheck``): the part read, and
    whether it is the last."""

    rows: int
    size: int

    def __call__(self, payload: bytes, note: str) -> tuple[Message, bool]: ...


@dataclass(frozen=True)
class Outgoing:
    """A part-by-part call this hub passes on: its "out" record (not yet written), what it is, since when."""

    record: AuditRecord
    what: str  # "stream" or "document"
    hop: str  # "peer hub <code> at <address>"
    started: float


async def pass_on(
    recorder: Recorder, outgoing: Outgoing, parts: AsyncIterator[Part], check: PartCheck
) -> AsyncGenerator[tuple[Part, Message], None]:
    """The parts as they come, each checked before it is yielded; the "out" hop recorded when the first part
    names the next hub's exchange id, and closed when the last has passed (or how it failed)."""
    out, hop, last = outgoing.record, outgoing.hop, False
    try:
        async for part in parts:
            message, last = check(part.payload, part.statement)
            if not out.peer_exchange_id:
                out = replace(out, outcome="allowed", peer_exchange_id=part.exchange_id[:64])
                await recorder.append(out)
            yield part, message
        if not last:
            raise DataLoss(f"the {outgoing.what} from {hop} ended before its last part")
    except ExchangeError as e:
        raise await _failed(recorder, outgoing, out, check, e) from None
    except (asyncio.CancelledError, GeneratorExit) as e:
        if isinstance(e, asyncio.CancelledError) and not being_cancelled():  # the channel to the hop closed under it
            cut = Unavailable(f"the connection to {hop} was closed while the {outgoing.what} was passed on")
            raise await _failed(recorder, outgoing, out, check, cut) from None
        # the consumer went away: the record is written all the same
        recorder.append_in_background(replace(closing(out), outcome="cancelled", rows=check.rows, bytes=check.size))
        raise
    done = replace(closing(out), outcome="ok", rows=check.rows, bytes=check.size, latency_us=since(outgoing.started))
    await recorder.append(done)


async def _failed(
    recorder: Recorder, outgoing: Outgoing, out: AuditRecord, check: PartCheck, error: ExchangeError
) -> ExchangeError:
    """Records how a passed-on call failed; the error its consumer is given."""
    log.warning("forwarded %s %s to %s failed: %s", outgoing.what, out.exchange_id, outgoing.hop, error.message)
    ending = closing(out) if out.peer_exchange_id else out
    await recorder.append(replace(failed(ending, outgoing.started, error), rows=check.rows, bytes=check.size))
    return error.recorded_as(out.exchange_id)


async def signed_batches(
    signer: Signer, statement: Forwarded, batches: AsyncGenerator[Batch, None]
) -> AsyncGenerator[Part, None]:
    """The home's batches of a forwarded stream, each with its chained statement (of its records' digest)."""
    previous, number = "", 0
    try:
        async for served in batches:
            batch, number = batch_to_wire(served), number + 1
            digest = checks.records_digest(batch.records)[0]
            note, previous = checks.part_statement(
                signer, statement, kind="batch", number=number, previous=previous, sha256=digest,
                exchange_id=served.exchange_id,
            )  # fmt: skip
            yield Part(batch.SerializeToString(), note, served.exchange_id)
    finally:
        await batches.aclose()


async def signed_chunks(
    signer: Signer, statement: Forwarded, chunks: AsyncGenerator[Chunk, None]
) -> AsyncGenerator[Part, None]:
    """The home's chunks of a forwarded document, each with its chained statement (of its serialized bytes)."""
    previous, number = "", 0
    try:
        async for served in chunks:
            payload, number = chunk_to_wire(served).SerializeToString(), number + 1
            digest = hashlib.sha256(payload).hexdigest()
            note, previous = checks.part_statement(
                signer, statement, kind="chunk", number=number, previous=previous, sha256=digest,
                exchange_id=served.exchange_id,
            )  # fmt: skip
            yield Part(payload, note, served.exchange_id)
    finally:
        await chunks.aclose()


def closing(out: AuditRecord) -> AuditRecord:
    """The closing record of a part-by-part "out" hop (its opening one was written with the first part)."""
    return replace(out, action=f"{out.action}_end", time=now_text())


def parts_of(messages: AsyncIterator[Message], read: Callable[[Message], Part]) -> AsyncIterator[Part]:
    """A peer's streamed messages as parts."""

    async def each() -> AsyncIterator[Part]:
        async for message in messages:
            yield read(message)

    return each()
