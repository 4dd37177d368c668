"""Peerings: what an operator may do to them, what a peer hub's call may do, and who a calling peer is.

A peering becomes active only when both hubs' operators registered each other: a hub calls a peer
(``Introduce``) only after registering it, and the peer's federation listener lets the call in only if its
operator registered the caller too. Either side may suspend (only that side resumes) or end it. Every change
is an audit record on the hub that makes it, and on the peer when it is told.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import replace

from cryptography import x509

from audit.cosignature import WitnessVerifier
from audit.note import NoteError, Verifier
from audit.records import AuditRecord
from exchange import pki, validation
from exchange.config import HUB_LEVELS
from exchange.errors import FailedPrecondition, FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated
from exchange.federation.model import HubKeys, HubRef, Peer, PeerRelation, PeerState
from exchange.models import Principal
from exchange.services.auditing import change_record, hub_instance, now_text
from exchange.services.federation.held import HeldEntries, HeldPeers
from exchange.store import Store
from policy import HUB_WIDE, Action, RightsPolicy

log = logging.getLogger(__name__)
HUB_CODE = re.compile(r"^[0-9]{6}$")
ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
OPPOSITE = {PeerRelation.PARENT: PeerRelation.CHILD, PeerRelation.CHILD: PeerRelation.PARENT}
Decide = Callable[[Peer], Peer]


def peer_record(peer_code: str, action: str, reason: str) -> AuditRecord:
    """The audit record of a change a peer hub made (its call, authenticated by its hub certificate)."""
    return AuditRecord(
        kind="federation",
        action=action,
        time=now_text(),
        actor=f"hub/{peer_code}",
        actor_department="",
        outcome="ok",
        reason=reason,
        subject=peer_code,
        hub=hub_instance(),
    )


def _check_code(code: str) -> None:
    """A peer's code, checked before it is looked up: a typo is INVALID_ARGUMENT, not NOT_FOUND."""
    out: list[FieldViolation] = []
    validation.check_pattern(out, "code", code, HUB_CODE, "a six-digit administrative division code")
    validation.raise_if(out)


def _check_peer(peer: Peer, own: HubRef) -> None:
    out: list[FieldViolation] = []
    validation.check_pattern(out, "peer.code", peer.code, HUB_CODE, "a six-digit administrative division code")
    validation.check_text(out, "peer.name", peer.name, required=True, limit=validation.MAX_NAME)
    if peer.level not in HUB_LEVELS:
        out.append(FieldViolation("peer.level", f"must be one of {', '.join(HUB_LEVELS)}"))
    validation.check_pattern(out, "peer.address", peer.address, ADDRESS, "host:port of its federation listener")
    if peer.code == own.code:
        out.append(FieldViolation("peer.code", f"{peer.code} is this hub's own code"))
    try:
        ca = x509.load_pem_x509_certificate(peer.ca_pem.encode())
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            out.append(FieldViolation("peer.ca_certificate_pem", "is not a CA certificate (basic constraints)"))
    except (ValueError, x509.ExtensionNotFound):
        out.append(FieldViolation("peer.ca_certificate_pem", "is not a PEM CA certificate"))
    validation.raise_if(out)


class PeeringService:
    """Peerings as this hub holds them. Blocking (reads and writes the store). ``held`` is this process's copy
    of its peers (for the calls of peers and the exchanges forwarded to them), forgotten after every change made
    here; ``entries`` the remote entries held, forgotten when an ended peering's entries leave the catalog."""

    def __init__(
        self,
        store: Store,
        policy: RightsPolicy,
        own: HubRef,
        ca_pem: str,
        keys: HubKeys,
        *,
        entries: HeldEntries | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self.own = own
        self.ca_pem = ca_pem
        self.keys = keys
        self.held = HeldPeers(store)
        self.entries = entries or HeldEntries(store)

    def require(self, actor: Principal, doing: str) -> None:
        """Refuses anyone but an operator (the right peering:manage)."""
        self._policy.require(actor, Action.MANAGE_PEERS, HUB_WIDE, doing)

    def register(self, actor: Principal, peer: Peer, reason: str) -> Peer:
        self.require(actor, "register peer hubs")
        _check_peer(peer, self.own)
        validation.validate_free_text("reason", reason)
        fingerprint = pki.fingerprint_of_pem(peer.ca_pem.encode())
        fresh = replace(peer, ca_fingerprint=fingerprint, state=PeerState.REGISTERED, reason=reason)
        audit = change_record(actor, "federation", "register_peer", subject=peer.code, reason=reason)
        try:
            return self._store.peers.register(fresh, audit=audit)
        finally:
            self.held.forget()

    def get(self, actor: Principal, code: str) -> Peer:
        self.require(actor, "read peer hubs")
        _check_code(code)
        return self._store.peers.get(code)

    def list(self, actor: Principal, state: PeerState | None) -> list[Peer]:
        self.require(actor, "list peer hubs")
        return self._store.peers.list((state,) if state else ())

    def suspend(self, actor: Principal, code: str, reason: str) -> Peer:
        self.require(actor, "suspend peerings")

        def decide(peer: Peer) -> Peer:
            if peer.state in (PeerState.ENDED, PeerState.SUSPENDED_HERE):
                raise FailedPrecondition(f"the peering with hub {code} is {peer.state}", subject=code)
            return replace(peer, state=PeerState.SUSPENDED_HERE, reason=reason)

        return self._operator_change(actor, code, "suspend_peer", reason, decide)

    def resume(self, actor: Principal, code: str, reason: str) -> Peer:
        self.require(actor, "resume peerings")

        def decide(peer: Peer) -> Peer:
            if peer.state is not PeerState.SUSPENDED_HERE:
                whose = f" (only hub {code}'s operator resumes it)" if peer.state is PeerState.SUSPENDED_THERE else ""
                raise FailedPrecondition(
                    f"the peering with hub {code} is {peer.state}, not suspended here{whose}", subject=code
                )
            return replace(peer, state=PeerState.ACTIVE, reason=reason)

        return self._operator_change(actor, code, "resume_peer", reason, decide)

    def end(self, actor: Principal, code: str, reason: str) -> Peer:
        self.require(actor, "end peerings")

        def decide(peer: Peer) -> Peer:
            if peer.state is PeerState.ENDED:
                raise FailedPrecondition(f"the peering with hub {code} has ended already", subject=code)
            return replace(peer, state=PeerState.ENDED, reason=reason)

        ended = self._operator_change(actor, code, "end_peer", reason, decide)
        self._forget(code)
        return ended

    def _operator_change(self, actor: Principal, code: str, action: str, reason: str, decide: Decide) -> Peer:
        _check_code(code)
        out: list[FieldViolation] = []
        validation.check_text(out, "reason", reason, required=True, limit=validation.MAX_TEXT)
        validation.raise_if(out)
        audit = change_record(actor, "federation", action, subject=code, reason=reason)
        return self._change(code, decide, audit)

    # The peer's side: calls from peer hubs on the federation listener.

    def admit(self, presented: bytes | None, allowed: tuple[PeerState, ...], doing: str) -> Peer:
        """The registered peer behind a hub certificate, if its peering allows ``doing``; refused (and logged)
        with the peer and the reason otherwise."""
        try:
            return self._admit(presented, allowed, doing)
        except (Unauthenticated, PermissionDenied) as e:
            log.warning("federation: refused a call to %s: %s", doing, e.message)
            raise

    def _admit(self, presented: bytes | None, allowed: tuple[PeerState, ...], doing: str) -> Peer:
        if presented is None:
            raise Unauthenticated("no hub certificate was presented")
        code = pki.hub_code_of_presented(presented)
        if not code:
            raise Unauthenticated(
                "the certificate is not a hub certificate (URI urn:exchange:hub:<code>): "
                "the federation listener serves peer hubs only, never a department's system or person"
            )
        peer = self.held.find(code)
        if code == self.own.code or peer is None:
            raise Unauthenticated(f"hub {code} is not a registered peer of hub {self.own.code}")
        if not issued_by_registered(presented, peer.ca_pem):
            raise Unauthenticated(
                f"hub {code}'s certificate is not issued by the CA registered for it (SHA-256 "
                f"{peer.ca_fingerprint[:16]}…): if its CA changed, the operators must end and register the peering "
                "again with the new CA certificate"
            )
        if peer.state not in allowed:
            # The caller's own suspension has a reason of its own: a caller that holds the peering active
            # learns that its resumption did not reach this hub, and tells it again.
            reason = "PEERING_SUSPENDED_BY_CALLER" if peer.state is PeerState.SUSPENDED_THERE else "PEERING_NOT_ACTIVE"
            raise PermissionDenied(f"hub {code} may not {doing}: {_why(peer, self.own.code)}", reason=reason)
        return peer

    def introduced(self, peer: Peer, level: str, relation: PeerRelation, keys: HubKeys) -> Peer:
        """The peer says it registered this hub (its call came in, so this hub registered it): active."""
        if peer.relation is not OPPOSITE[relation] or peer.level != level:
            raise FailedPrecondition(
                f"hub {peer.code} registered this hub as its {relation.value} at level {level}, but this hub "
                f"registered it as its {peer.relation.value} at level {peer.level}: the operators must agree",
                subject=peer.code,
            )
        peer = self._learn(peer, keys)
        if peer.state is PeerState.ACTIVE:
            return peer
        return self._peer_change(peer.code, "peering_active", "both operators registered the peering", PeerState.ACTIVE)

    def confirmed(self, code: str, theirs: PeerState, keys: HubKeys) -> Peer:
        """This hub's introduction was accepted and the peer holds the peering ``theirs``."""
        peer = self._learn(self._store.peers.get(code), keys)
        if peer.state is PeerState.REGISTERED and theirs is PeerState.ACTIVE:
            return self._peer_change(code, "peering_active", "both operators registered the peering", PeerState.ACTIVE)
        return peer

    def _learn(self, peer: Peer, keys: HubKeys) -> Peer:
        """Keeps the keys a peer tells on introduction; a peer that tells other keys than it told before is
        refused (a new log or witness is a new peering: end it and register again)."""
        checked_keys(peer.code, keys)
        if (peer.log_key, peer.witness_key) == (keys.log_key, keys.witness_key):
            return peer
        if peer.log_key or peer.witness_key:
            raise FailedPrecondition(
                f"hub {peer.code} now tells other audit log or witness keys than when it was introduced: "
                "the operators must end the peering and register it again",
                subject=peer.code,
                kind="PEER_KEYS_CHANGED",
            )
        told = f"log key {keys.log_key}; witness key {keys.witness_key}"
        return self._change(
            peer.code,
            lambda p: replace(p, log_key=keys.log_key, witness_key=keys.witness_key),
            peer_record(peer.code, "peer_keys", told),
        )

    def notified(self, peer: Peer, change: str, reason: str) -> Peer:
        """The peer's operator suspended, resumed or ended the peering."""
        validation.validate_free_text("reason", reason)
        moves = {
            "suspended": ((PeerState.ACTIVE, PeerState.REGISTERED), PeerState.SUSPENDED_THERE),
            "resumed": ((PeerState.SUSPENDED_THERE,), PeerState.ACTIVE),
            "ended": (tuple(s for s in PeerState if s is not PeerState.ENDED), PeerState.ENDED),
        }
        before, after = moves[change]
        if peer.state not in before:
            return peer
        now = self._peer_change(peer.code, f"peer_{change}", reason, after)
        if now.state is PeerState.ENDED:
            self._forget(peer.code)
        return now

    def _forget(self, code: str) -> None:
        """An ended peering's entries leave this hub's catalog (hubs beyond keep what was relayed to them)."""
        gone = self._store.federated.forget(code)
        self.entries.forget()
        log.info("federation: the peering with hub %s ended; %d of its entries left the catalog", code, gone)

    def _peer_change(self, code: str, action: str, reason: str, state: PeerState) -> Peer:
        log.info("federation: the peering with hub %s is now %s (%s)", code, state, action)
        return self._change(code, lambda p: replace(p, state=state, reason=reason), peer_record(code, action, reason))

    def _change(self, code: str, decide: Decide, audit: AuditRecord) -> Peer:
        """Every change of a peering made here: the peers held are forgotten once it committed (or was refused),
        so that the next call of this process sees it (a suspension refuses the next call at once)."""
        try:
            return self._store.peers.change(code, decide, audit=audit)
        finally:
            self.held.forget()


@functools.lru_cache(maxsize=1024)
def issued_by_registered(presented: bytes, ca_pem: str) -> bool:
    """Whether the CA registered for a peer (``ca_pem``) issued the certificate it presented: both parsed and
    the signature checked once per pair, not on every call of the peer (both are immutable texts: a renewed
    certificate or another CA is another pair)."""
    cert = x509.load_pem_x509_certificate(presented)
    return pki.issued_by(cert, x509.load_pem_x509_certificate(ca_pem.encode()))


def _why(peer: Peer, own: str) -> str:
    return {
        PeerState.REGISTERED: "the peering is not active yet",
        PeerState.SUSPENDED_HERE: f"hub {own}'s operator suspended the peering",
        PeerState.SUSPENDED_THERE: f"hub {peer.code}'s operator suspended the peering",
        PeerState.ENDED: "the peering has ended",
    }.get(peer.state, f"the peering is {peer.state}")


def checked_keys(code: str, keys: HubKeys) -> None:
    """Refuses keys a peer tells that are not a signed-note verifier key and a cosignature verifier key."""
    try:
        Verifier.parse(keys.log_key)
        WitnessVerifier.parse(keys.witness_key)
    except NoteError as e:
        raise InvalidArgument.of([FieldViolation("log_key", f"hub {code} told keys that are not valid: {e}")]) from None
