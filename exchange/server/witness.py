"""WitnessService over gRPC, and the log's side: submitting this hub's checkpoint to a peer's witness.

The servicer is thin: the caller is a peer hub the federation listener has already admitted, and the
checkpoint's own signature says whose log it is, so no principal is looked up here. ``add_witness``
puts it on a given grpc.aio server. ``submit_checkpoint`` sends this hub's newest checkpoint to a
witness over a given channel, answers an OLD_SIZE refusal once with a proof from the size the witness
holds, checks the cosignature it gets back with the witness's key and keeps it in the store.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from audit.cosignature import Cosignature, WitnessVerifier
from audit.note import NoteError
from exchange.errors import ExchangeError, Unavailable
from exchange.server.rpc import abort_with, internal_error
from exchange.services.witness import Witness
from exchange.store import Store
from exchange.v1 import witness_pb2 as pb
from exchange.v1 import witness_pb2_grpc as pb_grpc


class WitnessServicer(pb_grpc.WitnessServiceServicer):
    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    async def AddCheckpoint(
        self, request: pb.AddCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AddCheckpointResponse:
        proof = list(request.consistency_proof)
        try:
            cosignature = await asyncio.to_thread(
                self.witness.add_checkpoint, request.checkpoint, request.old_size, proof
            )
        except ExchangeError as e:
            await abort_with(context, e)
        except Exception:
            await internal_error(context, "WitnessServicer.AddCheckpoint")
        return pb.AddCheckpointResponse(cosignatures=[cosignature.line()])


def add_witness(server: grpc.aio.Server, witness: Witness) -> None:
    """Serves ``witness`` as WitnessService on ``server`` (the federation listener)."""
    pb_grpc.add_WitnessServiceServicer_to_server(WitnessServicer(witness), server)


class ConsistencyProofs(Protocol):
    """Where the log's consistency proofs come from (the running exchange.auditlog.log.AuditLog)."""

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...


def violation_of(error: grpc.RpcError, kind: str) -> str | None:
    """The subject of a witness's refusal of type ``kind`` (OLD_SIZE, FORK); None for any other status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            for violation in failure.violations:
                if violation.type == kind:
                    return str(violation.subject)
    return None


def old_size_asked(error: grpc.RpcError) -> int | None:
    """The size a witness holds, from its OLD_SIZE refusal; None for any other status."""
    subject = violation_of(error, "OLD_SIZE")
    return int(subject) if subject is not None and subject.isdigit() else None


def submit_checkpoint(
    channel: grpc.Channel, store: Store, proofs: ConsistencyProofs, witness: WitnessVerifier, timeout: float = 10.0
) -> Cosignature | None:
    """Has ``witness`` cosign this hub's newest checkpoint and keeps the cosignature; None with no checkpoint yet.

    Raises grpc.RpcError with the witness's refusal (a fork, an unknown origin...), Unavailable when the
    witness answers with something that is not its valid cosignature.
    """
    latest = store.audit.latest_checkpoint()
    if latest is None:
        return None
    size, note = latest
    stub = pb_grpc.WitnessServiceStub(channel)
    old = store.witness.last_cosigned(witness.name)
    for attempt in range(2):
        proof = proof_from(proofs, old, size)
        request = pb.AddCheckpointRequest(old_size=old, consistency_proof=proof, checkpoint=note)
        try:
            answer = stub.AddCheckpoint(request, timeout=timeout)
            break
        except grpc.RpcError as e:
            asked = old_size_asked(e)
            if attempt or asked is None or asked > size:
                raise
            old = asked
    cosignature = checked_cosignature(answer, note, witness)
    store.witness.add_cosignature(size, witness.name, cosignature.line())
    return cosignature


def proof_from(proofs: ConsistencyProofs, old: int, size: int) -> list[bytes]:
    return proofs.consistency_proof(old, size) if 0 < old < size else []


def checked_cosignature(answer: pb.AddCheckpointResponse, note: str, witness: WitnessVerifier) -> Cosignature:
    text = note.rpartition("\n\n")[0] + "\n"
    for line in answer.cosignatures:
        try:
            cosignature = Cosignature.parse(line)
            witness.verify(text, cosignature)
        except NoteError:
            continue
        return cosignature
    raise Unavailable(f"the witness {witness.name} answered without a valid cosignature by its key")
