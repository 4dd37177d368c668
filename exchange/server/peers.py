"""FederationService handlers: the operator registers, reads, suspends, resumes and ends peerings.

A change is made here first (with its audit record), then the peer hub is told at once; a peer that cannot
be told now refuses this hub's calls anyway (a suspended or ended peering is refused on both sides), and a
registration waiting for the other side is retried by the sync loop. Peers are read and changed from the
store even while the hub does not federate (no ``federation_listen``); registering one needs the listener.
"""

from __future__ import annotations

import logging

from exchange import pki
from exchange.errors import ExchangeError, FailedPrecondition, FieldViolation
from exchange.federation.model import Peer
from exchange.models import Principal
from exchange.server import federation_wire as fw
from exchange.server.federation import Federation
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.federation.peering import PeeringService
from exchange.v1 import federation_pb2 as pb
from exchange.v1 import federation_pb2_grpc as pb_grpc
from exchange.validation import raise_if

log = logging.getLogger(__name__)


class FederationServicer(pb_grpc.FederationServiceServicer):
    def __init__(
        self,
        peering: PeeringService,
        federation: Federation | None,
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
    ) -> None:
        self.peering = peering
        self._federation = federation
        self.auth = auth
        self.insecure_dev = insecure_dev
        self.refusals = refusals

    def _federating(self) -> Federation:
        if self._federation is None:
            raise FailedPrecondition(
                "this hub does not federate: set hub_code, hub_name, hub_level and federation_listen, "
                "issue its hub certificate (`exchange ca hub-cert`) and restart it",
                kind="FEDERATION_OFF",
            )
        return self._federation

    @unary
    def GetHubIdentity(self, request: pb.GetHubIdentityRequest, actor: Principal) -> pb.GetHubIdentityResponse:
        self.peering.require(actor, "read this hub's federation identity")
        own, ca = self.peering.own, self.peering.ca_pem
        return pb.GetHubIdentityResponse(
            code=own.code,
            name=own.name,
            level=own.level,
            # empty: the hub does not federate (no federation listener)
            federation_address=self._federation.settings.federation_listen if self._federation else "",
            ca_certificate_pem=ca,
            ca_fingerprint_sha256=pki.fingerprint_of_pem(ca.encode()),
        )

    @unary
    def RegisterPeer(self, request: pb.RegisterPeerRequest, actor: Principal) -> pb.RegisterPeerResponse:
        self.peering.require(actor, "register peer hubs")
        federation = self._federating()
        peer = self.peering.register(actor, fw.peer_from_wire(request.peer), request.reason.strip())
        federation.peers_changed()
        try:  # active at once if the peer's operator registered this hub already
            peer = federation.run(federation.introduce(peer))
            federation.sync_soon()
        except ExchangeError as e:
            log.info("federation: hub %s registered; not active yet: %s", peer.code, e.message)
            federation.store.peers.sync_failed(peer.code, e.message)
            peer = federation.store.peers.get(peer.code)
        return pb.RegisterPeerResponse(peer=fw.peer_to_wire(peer))

    @unary
    def ListPeers(self, request: pb.ListPeersRequest, actor: Principal) -> pb.ListPeersResponse:
        self.peering.require(actor, "list peer hubs")  # the right before the request is read
        out: list[FieldViolation] = []
        state = fw.STATE.domain(request.state, "state", out, required=False)
        raise_if(out)
        return pb.ListPeersResponse(peers=[fw.peer_to_wire(p) for p in self.peering.list(actor, state)])

    @unary
    def GetPeer(self, request: pb.GetPeerRequest, actor: Principal) -> pb.GetPeerResponse:
        return pb.GetPeerResponse(peer=fw.peer_to_wire(self.peering.get(actor, request.code.strip())))

    def _changed(self, peer: Peer, change: str, reason: str) -> bool:
        """Tells the peer of the change (when this hub federates); whether it heard."""
        if self._federation is None:
            return False
        self._federation.peers_changed()
        if change == "resumed":
            self._federation.sync_soon()
        return self._federation.run(self._federation.tell(peer, change, reason))

    @unary
    def SuspendPeer(self, request: pb.SuspendPeerRequest, actor: Principal) -> pb.SuspendPeerResponse:
        reason = request.reason.strip()
        peer = self.peering.suspend(actor, request.code.strip(), reason)
        return pb.SuspendPeerResponse(peer=fw.peer_to_wire(peer), peer_told=self._changed(peer, "suspended", reason))

    @unary
    def ResumePeer(self, request: pb.ResumePeerRequest, actor: Principal) -> pb.ResumePeerResponse:
        reason = request.reason.strip()
        peer = self.peering.resume(actor, request.code.strip(), reason)
        return pb.ResumePeerResponse(peer=fw.peer_to_wire(peer), peer_told=self._changed(peer, "resumed", reason))

    @unary
    def EndPeer(self, request: pb.EndPeerRequest, actor: Principal) -> pb.EndPeerResponse:
        reason = request.reason.strip()
        peer = self.peering.end(actor, request.code.strip(), reason)
        return pb.EndPeerResponse(peer=fw.peer_to_wire(peer), peer_told=self._changed(peer, "ended", reason))
