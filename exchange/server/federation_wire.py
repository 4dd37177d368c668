"""Federation's messages: peers, and catalog entries with their home hub, to and from the wire."""

from __future__ import annotations

import datetime as dt

from exchange import wire as c
from exchange.errors import FieldViolation
from exchange.federation.model import HubRef, Offer, Peer, PeerRelation, PeerState
from exchange.models import Resource
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import federation_pb2 as pb
from exchange.validation import raise_if

RELATION = c.EnumMap(PeerRelation, pb.PeerRelation, "PEER_RELATION_")
STATE = c.EnumMap(PeerState, pb.PeerState, "PEER_STATE_")
_UTC = dt.UTC


def peer_to_wire(p: Peer) -> pb.Peer:
    return pb.Peer(
        code=p.code,
        name=p.name,
        level=p.level,
        relation=RELATION.wire(p.relation),
        address=p.address,
        ca_certificate_pem=p.ca_pem,
        ca_fingerprint_sha256=p.ca_fingerprint,
        state=STATE.wire(p.state),
        reason=p.reason,
        registered_at=c.timestamp(p.registered_at),
        changed_at=c.timestamp(p.changed_at),
        offer_sequence=p.offer_sequence,
        synced_at=c.timestamp(p.synced_at),
        sync_problem=p.sync_problem,
        log_key=p.log_key,
        witness_key=p.witness_key,
    )


def peer_from_wire(p: pb.Peer) -> Peer:
    """The operator-written part of a peer; output-only fields are ignored."""
    out: list[FieldViolation] = []
    relation = RELATION.checked(p.relation, "peer.relation", out)
    raise_if(out)
    return Peer(p.code.strip(), p.name.strip(), p.level.strip(), relation, p.address.strip(), p.ca_certificate_pem)


def listed_to_wire(resource: Resource, home: HubRef | None, department_name: str = "") -> cpb.Resource:
    """A catalog entry; one homed at another hub names that hub and its owning department's name there."""
    wire = c.resource_to_wire(resource)
    if home is not None:
        wire.home_hub_code, wire.home_hub_name, wire.home_level = home.code, home.name, home.level
        wire.home_department_name = department_name
    return wire


def offer_to_wire(o: Offer) -> pb.OfferedEntry:
    home_key = o.home.log_key if o.home is not None else ""
    return pb.OfferedEntry(
        sequence=o.sequence, resource=listed_to_wire(o.resource, o.home, o.department_name), home_log_key=home_key
    )


def offer_from_wire(o: pb.OfferedEntry) -> Offer:
    """An offered entry as a peer sent it; its spec is checked by the receiving side, which refuses a bad one."""
    r = o.resource
    spec = c.resource_spec_from_wire(r)
    out: list[FieldViolation] = []
    status = c.STATUS.checked(r.status, "resource.status", out)
    raise_if(out)
    resource = Resource(
        spec, status, r.version, r.create_time.ToDatetime(_UTC), r.update_time.ToDatetime(_UTC), _published(r)
    )
    home = HubRef(r.home_hub_code, r.home_hub_name, r.home_level, o.home_log_key) if r.home_hub_code else None
    return Offer(o.sequence, resource, home, department_name=r.home_department_name.strip()[:200])


def _published(r: cpb.Resource) -> dt.datetime | None:
    return r.publish_time.ToDatetime(_UTC) if r.HasField("publish_time") else None
