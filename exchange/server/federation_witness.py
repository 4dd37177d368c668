"""Logs that vouch for each other in a running federation: this hub witnesses its peers, and they witness it.

As a witness, the hub serves ``WitnessService`` on the federation listener. It witnesses exactly the logs
of its active peers: each call is admitted by the calling hub's certificate (``from_peer``), and the
checkpoint must be of the caller's own log (its origin is the one of the ``log_key`` the peer told at
introduction), so what is accepted follows the peerings as they change, without a restart. A suspended or
ended peer is refused with PERMISSION_DENIED naming it. It cosigns with the hub's witness key.

As a log, the hub submits its newest checkpoint to each active peer in every sync round, with the
consistency proof from the size that peer last cosigned, checks the cosignature with the peer's
``witness_key`` and keeps it (``AuditService.GetCheckpoint(witnessed)`` serves it). A peer that refuses the
checkpoint as a fork means this hub's log was shown to it inconsistently: logged as an error and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.cosignature import Cosignature, WitnessKey, WitnessVerifier
from audit.note import NoteError, Verifier
from exchange import errors
from exchange.federation.model import Peer, PeerState
from exchange.server.peering import from_peer
from exchange.server.witness import ConsistencyProofs, checked_cosignature, old_size_asked, proof_from, violation_of
from exchange.services.witness import Witness
from exchange.store import Store
from exchange.v1 import witness_pb2 as pb
from exchange.v1 import witness_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from exchange.server.federation import Federation

log = logging.getLogger(__name__)


class ForkCounter(Protocol):
    """Where forks are counted (the hub's metrics): ``where`` is "seen_here" or "refused_by_peer"."""

    def fork_seen(self, peer: str, where: str) -> None: ...


def peer_log(peer: Peer) -> Verifier:
    """The verifier of a peer's audit log, as it told it at introduction; refused while it is not known."""
    try:
        return Verifier.parse(peer.log_key)
    except NoteError:
        raise errors.FailedPrecondition(
            f"hub {peer.code} has not told this hub its audit log key (it is learnt when the peering becomes "
            "active): introduce the peering again",
            subject=peer.code,
        ) from None


def peer_witness(peer: Peer) -> WitnessVerifier | None:
    """The verifier of a peer's witness key, or None when the peer has not told one."""
    try:
        return WitnessVerifier.parse(peer.witness_key) if peer.witness_key else None
    except NoteError:
        return None


class PeerWitnessServicer(pb_grpc.WitnessServiceServicer):
    """WitnessService for the active peers' logs, on the federation listener."""

    def __init__(self, federation: Federation, key: WitnessKey, forks: ForkCounter | None = None) -> None:
        self.federation = federation
        self.key = key
        self.forks = forks

    @from_peer((PeerState.ACTIVE,), "submit its checkpoint to be witnessed")
    def AddCheckpoint(self, request: pb.AddCheckpointRequest, peer: Peer) -> pb.AddCheckpointResponse:
        verifier = peer_log(peer)
        offered = request.checkpoint.split("\n", 1)[0]
        if offered != verifier.name:
            raise errors.PermissionDenied(
                f"hub {peer.code} may submit only checkpoints of its own log {verifier.name!r}, "
                f"not of {offered[:80]!r}",
                reason="NOT_CALLERS_LOG",
            )
        witness = Witness(self.federation.store.witness, self.key, {verifier.name: verifier})
        try:
            cosignature = witness.add_checkpoint(request.checkpoint, request.old_size, list(request.consistency_proof))
        except errors.FailedPrecondition as e:
            if e.kind == "FORK" and self.forks is not None:
                self.forks.fork_seen(peer.code, "seen_here")
            raise
        return pb.AddCheckpointResponse(cosignatures=[cosignature.line()])


class Submission:
    """This hub's side: has each active peer cosign its newest checkpoint (run in every sync round)."""

    def __init__(self, store: Store, proofs: ConsistencyProofs, forks: ForkCounter | None = None) -> None:
        self.store = store
        self.proofs = proofs
        self.forks = forks

    async def submit(self, federation: Federation, peer: Peer) -> Cosignature | None:
        """The peer's cosignature on this hub's newest checkpoint, kept; None with no checkpoint or witness key."""
        witness = peer_witness(peer)
        latest = await asyncio.to_thread(self.store.audit.latest_checkpoint)
        if witness is None or latest is None:
            return None
        size, note = latest
        old = min(await asyncio.to_thread(self.store.witness.last_cosigned, witness.name), size)

        async def rpc(stub: pb_grpc.WitnessServiceAsyncStub, timeout: float) -> pb.AddCheckpointResponse:
            return await self._add(peer, stub, timeout, note=note, old=old, size=size)

        answer = await federation.call_on(peer, "witness this hub's checkpoint", pb_grpc.WitnessServiceStub, rpc)
        try:
            cosignature = checked_cosignature(answer, note, witness)
        except errors.Unavailable as e:
            raise errors.Unavailable(f"peer hub {peer.code}: {e.message}") from None
        await asyncio.to_thread(self.store.witness.add_cosignature, size, witness.name, cosignature.line())
        return cosignature

    async def _add(
        self, peer: Peer, stub: pb_grpc.WitnessServiceAsyncStub, timeout: float, *, note: str, old: int, size: int
    ) -> pb.AddCheckpointResponse:
        """AddCheckpoint, once more from the size the witness says it holds if it says another."""
        for attempt in range(2):
            proof = await asyncio.to_thread(proof_from, self.proofs, old, size)
            request = pb.AddCheckpointRequest(old_size=old, consistency_proof=proof, checkpoint=note)
            try:
                return await stub.AddCheckpoint(request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                if violation_of(e, "FORK") is not None:
                    raise self._fork(peer, size, e) from None
                asked = old_size_asked(e)
                if asked is not None and asked > size:  # the peer saw more of this log than it now holds
                    raise self._fork(peer, size, e) from None
                if attempt or asked is None:
                    raise
                old = asked
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _fork(self, peer: Peer, size: int, e: grpc.aio.AioRpcError) -> errors.ExchangeError:
        """A peer refused this hub's checkpoint as a fork, or has seen a larger tree of this hub's log than the
        newest checkpoint: either way it holds another history of this log (the second, a rolled-back one)."""
        if self.forks is not None:
            self.forks.fork_seen(peer.code, "refused_by_peer")
        message = (
            f"peer hub {peer.code} refused this hub's checkpoint of size {size} as a FORK of its log: the peer "
            f"holds a checkpoint of this log that this one does not extend, so this hub's log was shown "
            f"inconsistently (restored from an older backup, or its key used elsewhere). Operators of both hubs "
            f"must look; the peer keeps both checkpoints as evidence. The peer said: {e.details()}"
        )
        log.error("federation: %s", message)
        return errors.FailedPrecondition(message, subject=peer.code, kind="FORK")


class WitnessedAge(Collector):
    """exchange_federation_witnessed_age_seconds: per active peer, seconds since its newest cosignature here."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "exchange_federation_witnessed_age_seconds",
            "Seconds since the newest cosignature each active peer gave this hub's checkpoints "
            "(absent for a peer that never cosigned).",
            labels=["peer"],
        )
        now = time.time()
        for peer in self.store.peers.list((PeerState.ACTIVE,)):
            stamp = newest_cosignature(self.store, peer)
            if stamp is not None:
                age.add_metric([peer.code], max(0.0, now - stamp))
        yield age


def newest_cosignature(store: Store, peer: Peer) -> int | None:
    """When the peer's witness last cosigned this hub's checkpoints (POSIX seconds), or None."""
    witness = peer_witness(peer)
    if witness is None:
        return None
    size = store.witness.last_cosigned(witness.name)
    for line in store.witness.cosignatures(size) if size else []:
        try:
            cosignature = Cosignature.parse(line)
        except NoteError:
            continue
        if cosignature.name == witness.name and cosignature.key_id == witness.key_id:
            return cosignature.timestamp
    return None


class Witnessing:
    """Both sides of witnessing for a federation: the servicer its listener serves, and its submissions."""

    def __init__(self, key: WitnessKey, submission: Submission, forks: ForkCounter | None = None) -> None:
        self.key = key
        self.submission = submission
        self.forks = forks

    def servicer(self, federation: Federation) -> PeerWitnessServicer:
        return PeerWitnessServicer(federation, self.key, self.forks)
