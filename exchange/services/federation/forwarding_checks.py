"""The checks of exchanges forwarded across hubs: a statement received from a peer, and an answer coming back.

A receiving hub acts on a forwarded call only if the calling peer signed its statement (with the log key it
told at peering), for this hub, fresh, once, for the request received, with hops left, no loop, and on
behalf of a department its origin hub may speak for. An answer is passed on only if the home hub signed
its digest (with the home's log key, relayed with the catalog entry): no hub on the way can widen or
change it unseen.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Iterable

from audit import forwarded, provenance
from audit.forwarded import Forwarded, ForwardError
from audit.note import NoteError, Signer, Verifier
from exchange.errors import DataLoss, ExchangeError, FailedPrecondition, InvalidArgument, PermissionDenied
from exchange.federation.model import Peer, department_division, within
from exchange.services.auditing import now_text
from exchange.v1 import data_pb2
from exchange.v1 import exchange_pb2 as xpb
from exchange.values import RowsDigest, record_from_wire

# How each reason a statement is refused for becomes a status.
_DENIED = ("signature", "receiver", "request", "replay")
_MALFORMED = ("malformed",)


@functools.lru_cache(maxsize=256)
def verifier_of(log_key: str) -> Verifier:
    """A hub's log key, parsed (NoteError if it is none). Every forwarded call checks one or two signatures with
    the keys of a few hubs (its peers', its homes'), so each is parsed once: a parsed key is immutable."""
    return Verifier.parse(log_key)


def log_origin(log_key: str) -> str:
    """The log origin a hub's log key signs for (the name in its C2SP verifier key); "" if none is known."""
    try:
        return verifier_of(log_key).name
    except NoteError:
        return ""


def refusal(e: ForwardError, peer: Peer) -> ExchangeError:
    """The status of a refused statement, naming the reason and the hop it came from."""
    message = f"forwarded call from peer hub {peer.code} refused ({e.reason}): {e}"
    if e.reason in _DENIED:
        return PermissionDenied(message, f"FORWARD_{e.reason.upper()}")
    if e.reason in _MALFORMED:
        return InvalidArgument(message)
    return FailedPrecondition(message, subject=peer.code, kind=f"FORWARD_{e.reason.upper()}")


def accepted(
    note: str,
    peer: Peer,
    *,
    me: str,
    request: bytes,
    now: dt.datetime,
    seen: Callable[[str, dt.datetime], bool],
    call: str = "query",
) -> Forwarded:
    """The statement of a call ``peer`` forwarded, if this hub may act on it; the refusal (an error) if not."""
    try:
        sender = verifier_of(peer.log_key)
    except NoteError:
        raise FailedPrecondition(
            f"peer hub {peer.code} has told no log key: it cannot forward calls", subject=peer.code, kind="NO_LOG_KEY"
        ) from None
    try:
        statement = forwarded.check(note, sender, me=me, request=request, now=now, seen=seen)
    except ForwardError as e:
        raise refusal(e, peer) from None
    if statement.sender != peer.code:
        raise PermissionDenied(
            f"forwarded call refused: peer hub {peer.code} sent a statement of hub {statement.sender}", "FORWARD_SENDER"
        )
    division = department_division(statement.department)
    if not within(division, statement.origin):
        raise PermissionDenied(
            f"forwarded call refused: hub {statement.origin} may not speak for department {statement.department} "
            f"(division {division}, outside its own); it came from peer hub {peer.code}",
            "FORWARD_DEPARTMENT",
        )
    if statement.call != call:
        raise InvalidArgument(f"the forwarded statement is for a {statement.call} call, not a {call}")
    return statement


def request_of(raw: bytes, statement: Forwarded) -> xpb.QueryRequest | xpb.FetchDocumentRequest:
    """The forwarded request (a FetchDocumentRequest for a document), which must ask for what the statement names."""
    kind = xpb.FetchDocumentRequest if statement.call == "document" else xpb.QueryRequest
    try:
        request = kind.FromString(raw)
    except Exception:  # the protobuf runtime raises its own DecodeError
        raise InvalidArgument(f"the forwarded request is not a {kind.__name__}") from None
    if request.resource_code.strip() != statement.resource or request.purpose.strip() != statement.purpose:
        raise InvalidArgument("the forwarded request asks for another resource or purpose than its statement names")
    return request


def verified_answer(answer_bytes: bytes, note: str, home_key: str, statement: Forwarded, hop: str) -> xpb.QueryResponse:
    """The home hub's answer, if its signed provenance statement covers exactly these records for this call;
    DataLoss naming the hop the answer came from if not."""
    try:
        response = xpb.QueryResponse.FromString(answer_bytes)
        said = provenance.verify(note, verifier_of(home_key), records_digest(response.records)[0])
    except (provenance.ProvenanceError, NoteError) as e:
        raise DataLoss(
            f"the answer that came back from {hop} is not the one hub {statement.home} signed: {e}"
        ) from None
    except Exception:  # an unreadable answer
        raise DataLoss(f"the answer that came back from {hop} cannot be read") from None
    expected = (statement.resource, f"system/{statement.system}", statement.department, len(response.records))
    if (said.resource, said.consumer, said.consumer_department, said.count) != expected:
        raise DataLoss(f"the answer that came back from {hop} is signed for another call by hub {statement.home}")
    if said.exchange != response.exchange_id:
        raise DataLoss(f"the answer that came back from {hop} names another exchange than its signed statement")
    return response


def chained(previous: str, records_sha256: str) -> str:
    """The sha256 a batch statement signs: SHA-256 (hex) of the previous batch's ("" before the first) and
    this batch's records' SHA-256, both hex. A batch dropped, repeated, reordered or changed breaks the chain."""
    return hashlib.sha256(f"{previous}{records_sha256}".encode()).hexdigest()


def records_digest(records: Iterable[data_pb2.Record]) -> tuple[str, list[dict[str, object]]]:
    """The SHA-256 of records' canonical lines (as provenance signs them) and the records read."""
    rows = [record_from_wire(r) for r in records]
    digest = RowsDigest()
    digest.update(rows)
    return digest.hexdigest(), rows


def part_statement(
    signer: Signer, statement: Forwarded, *, kind: str, number: int, previous: str, sha256: str, exchange_id: str
) -> tuple[str, str]:
    """The home's signed statement of one part (kind "batch" or "chunk", its number from 1) of a forwarded stream
    or document, whose own digest is ``sha256``; and the chained digest it signs (see ``chained``)."""
    linked = chained(previous, sha256)
    said = provenance.Statement(
        exchange=exchange_id,
        time=now_text(),
        resource=statement.resource,
        owner="",  # a part's statement names no owner: the closing provenance statement does
        consumer=f"system/{statement.system}",
        consumer_department=statement.department,
        kind=kind,
        count=number,
        sha256=linked,
    )
    return provenance.sign(signer, said), linked


class _Chain:
    """The chain of a forwarded stream's or document's parts as a hub checks them."""

    def __init__(self, home_key: str, statement: Forwarded, hop: str, kind: str) -> None:
        self._key = home_key
        self._statement = statement
        self._hop = hop
        self._kind = kind
        self._previous = ""
        self._number = 0
        self.rows = 0
        self.size = 0

    def next(self, note: str, sha256: str, exchange_id: str) -> None:
        """Checks the statement of the next part, whose own digest is ``sha256``; DataLoss naming the hop if not."""
        st, hop = self._statement, self._hop
        try:
            said = provenance.verify(note, verifier_of(self._key), chained(self._previous, sha256))
        except (provenance.ProvenanceError, NoteError) as e:
            raise DataLoss(f"a {self._kind} that came back from {hop} is not one hub {st.home} signed: {e}") from None
        self._number += 1
        expected = (self._kind, self._number, st.resource, f"system/{st.system}", st.department, exchange_id)
        if (said.kind, said.count, said.resource, said.consumer, said.consumer_department, said.exchange) != expected:
            raise DataLoss(f"a {self._kind} that came back from {hop} is out of order or signed for another call")
        self._previous = said.sha256

    def closing(self, note: str, sha256: str, count: int) -> None:
        """Checks the closing provenance statement of the whole answer."""
        try:
            said = provenance.verify(note, verifier_of(self._key), sha256)
        except (provenance.ProvenanceError, NoteError) as e:
            problem = f"what came back from {self._hop} does not match its closing statement: {e}"
            raise DataLoss(problem) from None
        if said.count != count:
            raise DataLoss(f"what came back from {self._hop} lost a part on the way")


class ChunkCheck(_Chain):
    """Checks each chunk of a forwarded document, as it comes, against the home's chained statements."""

    def __init__(self, home_key: str, statement: Forwarded, hop: str) -> None:
        super().__init__(home_key, statement, hop, "chunk")
        self._whole = hashlib.sha256()

    def __call__(self, payload: bytes, note: str) -> tuple[xpb.DocumentChunk, bool]:
        try:
            chunk = xpb.DocumentChunk.FromString(payload)
        except Exception:  # an unreadable chunk
            raise DataLoss(f"a chunk that came back from {self._hop} cannot be read") from None
        self.next(note, hashlib.sha256(payload).hexdigest(), chunk.exchange_id)
        self._whole.update(chunk.data)
        self.size += len(chunk.data)
        if chunk.last:
            if chunk.sha256 != self._whole.digest() or chunk.total_bytes != self.size:
                raise DataLoss(f"the document that came back from {self._hop} lost bytes on the way")
            self.closing(chunk.provenance.note, self._whole.hexdigest(), self.size)
        return chunk, chunk.last


class BatchCheck(_Chain):
    """Checks each batch of a forwarded stream, as it comes, against the home's chained statements."""

    def __init__(self, home_key: str, statement: Forwarded, hop: str) -> None:
        super().__init__(home_key, statement, hop, "batch")
        self._all = RowsDigest()

    def __call__(self, payload: bytes, note: str) -> tuple[xpb.QueryBatch, bool]:
        try:
            batch = xpb.QueryBatch.FromString(payload)
            sha256, rows = records_digest(batch.records)
        except Exception:  # an unreadable batch
            raise DataLoss(f"a batch that came back from {self._hop} cannot be read") from None
        self.next(note, sha256, batch.exchange_id)
        self.rows += len(rows)
        self._all.update(rows)
        if batch.last:
            if batch.total_records != self.rows:
                raise DataLoss(f"the stream that came back from {self._hop} lost records on the way")
            self.closing(batch.provenance.note, self._all.hexdigest(), self.rows)
        return batch, batch.last
