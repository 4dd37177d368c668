"""The shapes a call takes through the exchange: what was asked, the call, its plan, and what is answered."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from audit.records import AuditRecord
from exchange import values
from exchange.backend import Backend, Document, FetchRequest, Row
from exchange.models import MaskKind, Principal, Resource, ShareMethod
from exchange.services.verification import Ticket
from exchange.v1 import exchange_pb2 as xpb
from policy.decision import Decision

DOCUMENT_KINDS = (ShareMethod.DOCUMENT,)
RECORD_KINDS = (ShareMethod.QUERY, ShareMethod.STREAM)

# Who is calling: the caller's certificate read against the registry (raises for an unknown caller).
Identify = Callable[[], Principal]


@dataclass(frozen=True)
class Ask:
    """A consumer's question, as it came (filters still text)."""

    resource_code: str
    purpose: str
    filters: Mapping[str, str]
    fields: tuple[str, ...] = ()
    provenance: bool = False


@dataclass(frozen=True)
class Link:
    """An exchange forwarded from another hub: that hub's log origin and exchange id, this hub's side of it
    ("in": it came from there), and the forwarded statement received (audit.receipt links the records)."""

    peer_hub: str
    peer_exchange_id: str
    hop: str
    forwarded: str = ""


@dataclass(frozen=True)
class Call:
    """The shape of one call: its id, what it does, which share methods it serves, its limits."""

    exchange_id: str
    action: str
    methods: tuple[ShareMethod, ...]
    deadline: float | None
    page: tuple[int, str] | None = None
    batch: int = 0
    link: Link | None = None

    @property
    def for_document(self) -> bool:
        return self.methods is DOCUMENT_KINDS


@dataclass
class Plan:
    """An allowed exchange, ready to fetch: the resource, its backend, the request, the decision, its record."""

    resource: Resource
    backend: Backend
    request: FetchRequest
    decision: Decision
    record: AuditRecord
    started: float = field(default_factory=time.monotonic)
    # A lookup filtered on a masked item: its reserved miss, given back if it finds a record.
    ticket: Ticket | None = None

    @property
    def department(self) -> str:
        return self.resource.spec.department_code


@dataclass(frozen=True)
class Disclosure:
    """What left the hub: the fields, their masks, and the grant that allowed it."""

    fields: tuple[str, ...]
    masks: tuple[tuple[str, MaskKind], ...]
    grant_id: str

    @classmethod
    def of(cls, plan: Plan) -> Disclosure:
        return cls(plan.request.fields, plan.decision.masks, plan.decision.grant_id)


@dataclass(frozen=True)
class QueryResult:
    exchange_id: str
    rows: list[Row]
    next_page_token: str
    disclosure: Disclosure
    provenance: str = ""


@dataclass(frozen=True)
class Batch:
    """One part of a stream: rows (or records already in wire form), or (last) the total and the provenance.

    ``message``: records already in wire form, in the message the consumer receives (its other fields unset);
    ``encoded``: that message's bytes, encoded once by the shaping (``batch_bytes`` sends them as they are).
    """

    exchange_id: str
    rows: list[Row]
    disclosure: Disclosure | None = None
    last: bool = False
    total: int = 0
    provenance: str = ""
    message: xpb.QueryBatch | None = None
    encoded: bytes | None = None


@dataclass(frozen=True)
class Chunk:
    """One part of a document: its description first, its digest last."""

    exchange_id: str
    data: bytes = b""
    document: Document | None = None
    last: bool = False
    sha256: bytes = b""
    total: int = 0
    provenance: str = ""


def new_exchange_id() -> str:
    """A unique, unguessable id: "EX" and 27 hex digits (11 of milliseconds since 1970, 16 random), time-ordered."""
    return f"EX{int(time.time() * 1000):010x}{os.urandom(8).hex()}"  # uuid4's source, without building a UUID


def provider_name(resource: Resource) -> str:
    """How errors name a provider: the owning department, never its backend's internals."""
    return f"of department {resource.spec.department_code} ({resource.spec.code})"


def ask_of(request: xpb.QueryRequest | xpb.FetchDocumentRequest) -> Ask:
    """What a consumer's request asks, its text trimmed."""
    fields = tuple(map(str.strip, request.fields)) if isinstance(request, xpb.QueryRequest) else ()
    given = request.filters  # read by key: a message map's items() is a generator written in Python
    filters = {k.strip(): given[k].strip() for k in given}
    return Ask(request.resource_code.strip(), request.purpose.strip(), filters, fields, request.provenance)


def disclosure_to_wire(d: Disclosure) -> xpb.Disclosure:
    return xpb.Disclosure(fields=list(d.fields), masks={f: k.value for f, k in d.masks}, grant_id=d.grant_id)


# The wire form of each disclosure lately answered: it depends on the grant, its masks and the fields asked for
# only, which most calls repeat. Never handed out (only copied from), so never changed; emptied when full.
_DISCLOSURES: dict[Disclosure, xpb.Disclosure] = {}
_DISCLOSURES_HELD = 256


def _wire_disclosure(d: Disclosure) -> xpb.Disclosure:
    held = _DISCLOSURES.get(d)
    if held is None:
        if len(_DISCLOSURES) >= _DISCLOSURES_HELD:
            _DISCLOSURES.clear()
        held = _DISCLOSURES[d] = disclosure_to_wire(d)
    return held


def query_response(result: QueryResult) -> xpb.QueryResponse:
    """A query's answer as the consumer receives it."""
    response = xpb.QueryResponse(
        exchange_id=result.exchange_id,
        next_page_token=result.next_page_token,
        provenance=xpb.Provenance(note=result.provenance) if result.provenance else None,
    )
    records = response.records
    for row in result.rows:  # each written into the response's own record, not built apart and copied in
        values.fill_record(records.add(), row)
    response.disclosure.CopyFrom(_wire_disclosure(result.disclosure))
    return response


def batch_to_wire(b: Batch) -> xpb.QueryBatch:
    """A stream's batch as the consumer receives it.

    Records in wire form are already in their message (parsed there from the provider's bytes): the batch's
    own fields are set in it and it is sent as it is, no record copied.
    """
    message = b.message
    if message is None:
        return xpb.QueryBatch(
            exchange_id=b.exchange_id,
            records=[values.record_to_wire(r) for r in b.rows],
            disclosure=disclosure_to_wire(b.disclosure) if b.disclosure else None,
            last=b.last,
            total_records=b.total,
            provenance=xpb.Provenance(note=b.provenance) if b.provenance else None,
        )
    message.exchange_id = b.exchange_id
    if b.disclosure:
        message.disclosure.CopyFrom(disclosure_to_wire(b.disclosure))
    message.last = b.last
    message.total_records = b.total
    if b.provenance:
        message.provenance.note = b.provenance
    return message


def batch_bytes(b: Batch) -> bytes:
    """A stream's batch encoded as the consumer receives it, the same bytes as ``batch_to_wire``'s message encoded.

    Records the shaping already encoded are not encoded again: the batch's own fields are encoded around them,
    in field order (``exchange_id`` is field 1, before the records; the others come after them).
    """
    if b.encoded is None:
        return batch_to_wire(b).SerializeToString()
    head = xpb.QueryBatch(exchange_id=b.exchange_id).SerializeToString()
    tail = xpb.QueryBatch(
        disclosure=disclosure_to_wire(b.disclosure) if b.disclosure else None,
        last=b.last,
        total_records=b.total,
        provenance=xpb.Provenance(note=b.provenance) if b.provenance else None,
    )
    return head + b.encoded + tail.SerializeToString()


def chunk_to_wire(c: Chunk) -> xpb.DocumentChunk:
    """A document's chunk as the consumer receives it."""
    d = c.document
    return xpb.DocumentChunk(
        exchange_id=c.exchange_id,
        info=xpb.DocumentInfo(name=d.name, media_type=d.media_type, size=d.size) if d is not None else None,
        data=c.data,
        last=c.last,
        sha256=c.sha256,
        total_bytes=c.total,
        provenance=xpb.Provenance(note=c.provenance) if c.provenance else None,
    )
