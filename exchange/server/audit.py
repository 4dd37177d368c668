"""AuditService handlers: checkpoints, proofs, search, and the export stream."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from audit.receipt import document
from audit.report import to_json
from exchange import validation
from exchange.errors import ExchangeError, FailedPrecondition
from exchange.models import Principal
from exchange.server.receipts import CrossReceipts
from exchange.server.refusals import is_refusal
from exchange.server.rpc import Authenticator, Refusals, abort_with, caller_of, unary
from exchange.services.audit import AuditReadService, SignedHead, parse_time
from exchange.store.audit import Entry, EntryFilter
from exchange.v1 import audit_pb2 as pb
from exchange.v1 import audit_pb2_grpc as pb_grpc

LINES_PER_CHUNK = 2000


def _entry(e: Entry, proof: list[bytes] | None = None) -> pb.AuditEntry:
    return pb.AuditEntry(seq=e.seq, leaf_hash=e.leaf_hash, record=e.record or "", proof=proof or [])


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(
        self,
        service: AuditReadService,
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
        *,
        receipts: CrossReceipts | None = None,
    ) -> None:
        self.receipts = receipts
        self.refusals = refusals
        self.service = service
        self.auth = auth
        self.insecure_dev = insecure_dev

    def _head(self, head: SignedHead) -> pb.SignedCheckpoint:
        return pb.SignedCheckpoint(
            size=head.size,
            root_hash=head.root,
            note=head.note,
            verifier_key=self.service.verifier.encode(),
            cosignatures=head.cosignatures,
        )

    @unary
    def GetCheckpoint(self, request: pb.GetCheckpointRequest, actor: Principal) -> pb.SignedCheckpoint:
        return self._head(self.service.checkpoint(request.size, witnessed=request.witnessed))

    @unary
    def GetCrossHubReceipt(self, request: pb.GetCrossHubReceiptRequest, actor: Principal) -> pb.CrossHubReceipt:
        if self.receipts is None:
            raise FailedPrecondition("this hub makes no cross-hub receipts")
        parts = self.receipts.receipt(actor, request.exchange_id)
        text = json.dumps(document(parts), ensure_ascii=False, indent=2) + "\n"
        return pb.CrossHubReceipt(receipt_json=text, origins=[p.origin for p in parts])

    @unary
    def GetInclusionProof(self, request: pb.GetInclusionProofRequest, actor: Principal) -> pb.InclusionProof:
        entry, head, proof, size = self.service.inclusion(actor, request.seq, request.tree_size)
        answer = pb.InclusionProof(entry=_entry(entry), tree_size=size, hashes=proof)
        if head is not None:
            answer.checkpoint.CopyFrom(self._head(head))
        return answer

    @unary
    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest, actor: Principal) -> pb.ConsistencyProof:
        to_size, proof = self.service.consistency(request.from_size, request.to_size)
        return pb.ConsistencyProof(from_size=request.from_size, to_size=to_size, hashes=proof)

    @unary
    def SearchRecords(self, request: pb.SearchRecordsRequest, actor: Principal) -> pb.SearchRecordsResponse:
        self.service.require_reader(actor)  # the right first, before the search is checked
        validation.validate_key("department_code", request.department_code, "department", optional=True)
        validation.validate_key("resource_code", request.resource_code, "resource", optional=True)
        for name in ("actor", "purpose", "outcome", "exchange_id"):
            validation.validate_free_text(name, getattr(request, name), limit=validation.MAX_NAME)
        query = EntryFilter(
            since=parse_time(request.since.seconds, request.since.nanos, "since"),
            until=parse_time(request.until.seconds, request.until.nanos, "until"),
            department=request.department_code or None,
            actor=request.actor or None,
            resource=request.resource_code or None,
            purpose=request.purpose or None,
            outcome=request.outcome or None,
            exchange_id=request.exchange_id or None,
        )
        found = self.service.search(actor, request.page_size, request.page_token, query, request.data_subject.strip())
        answer = pb.SearchRecordsResponse(
            entries=[_entry(e, found.proofs.get(e.seq, [])) for e in found.page.items],
            next_page_token=found.page.next_page_token,
            subject_hash=found.subject_hash,
        )
        if found.head is not None:
            answer.checkpoint.CopyFrom(self._head(found.head))
        return answer

    @unary
    def GetReport(self, request: pb.GetReportRequest, actor: Principal) -> pb.GetReportResponse:
        computed, head = self.service.report(actor, request.from_date, request.to_date, request.department_code)
        return pb.GetReportResponse(report_json=to_json(computed), checkpoint=self._head(head))

    async def ExportLog(
        self, request: pb.ExportLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExportChunk]:
        actor = await caller_of(self, context)
        try:
            lines = await asyncio.to_thread(self.service.export, actor, request.from_seq)
            while True:
                chunk = await asyncio.to_thread(_take, lines, LINES_PER_CHUNK)
                if not chunk:
                    return
                yield pb.ExportChunk(lines="".join(line + "\n" for line in chunk))
        except ExchangeError as e:
            if is_refusal(e) and self.refusals is not None:
                e.recorded_as(await self.refusals.refused(actor, "AuditServicer.ExportLog", e))
            await abort_with(context, e)


def _take(lines: Iterator[str], n: int) -> list[str]:
    return list(itertools.islice(lines, n))
