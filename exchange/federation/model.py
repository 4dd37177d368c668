"""What federation talks about: hubs, peers and their states, and where a catalog entry is homed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from exchange.models import Resource


class PeerRelation(StrEnum):
    PARENT = "parent"  # the peer is the level above this hub
    CHILD = "child"  # the peer is a level below


class PeerState(StrEnum):
    REGISTERED = "registered"  # registered here only: the peer's operator has not registered this hub (yet)
    ACTIVE = "active"
    SUSPENDED_HERE = "suspended_here"  # by this hub's operator
    SUSPENDED_THERE = "suspended_there"  # by the peer's operator
    ENDED = "ended"


# States whose CA the federation listener still trusts, so that their calls are refused with a reason.
TRUSTED_STATES = (PeerState.REGISTERED, PeerState.ACTIVE, PeerState.SUSPENDED_HERE, PeerState.SUSPENDED_THERE)


@dataclass(frozen=True)
class HubRef:
    """A hub as catalog entries name their home: its division code, name and level."""

    code: str
    name: str
    level: str
    # The hub's audit log verifier key, where it is known (relayed with catalog entries: see forwarding).
    log_key: str = ""


@dataclass(frozen=True)
class HubKeys:
    """A hub's public keys as it tells its peers: its audit log's verifier key and its witness's (C2SP forms)."""

    log_key: str
    witness_key: str


@dataclass(frozen=True)
class Peer:
    """A registered peer hub and the peering as this hub holds it."""

    code: str
    name: str
    level: str
    relation: PeerRelation
    address: str
    ca_pem: str
    ca_fingerprint: str = ""
    state: PeerState = PeerState.REGISTERED
    reason: str = ""
    registered_at: dt.datetime | None = None
    changed_at: dt.datetime | None = None
    offer_sequence: int = 0
    synced_at: dt.datetime | None = None
    sync_problem: str = ""
    # Learnt when the peering became active (over the mutual TLS the registered CA vouches for): the verifier
    # key of the peer's audit log (its checkpoints, provenance and forwarded-call statements) and of its witness.
    log_key: str = ""
    witness_key: str = ""

    @property
    def hub(self) -> HubRef:
        return HubRef(self.code, self.name, self.level)


@dataclass(frozen=True)
class RemoteEntry:
    """A catalog entry homed at another hub, as this hub keeps it (read-only)."""

    resource: Resource
    home: HubRef
    via_peer: str
    sequence: int = 0
    # The owning department's name as its home hub registers it (this registry does not hold it).
    department_name: str = ""


@dataclass(frozen=True)
class Offer:
    """One state of an entry a hub offers its peers; ``home`` None: the offering hub's own entry."""

    sequence: int
    resource: Resource
    home: HubRef | None
    via_peer: str = ""
    # The owning department's name as its home hub registers it, relayed with the home hub's name.
    department_name: str = ""


def division_prefix(code: str) -> str:
    """The significant digits of a division code: 350203 → 350203, 350200 → 3502, 350000 → 35, 000000 → ""."""
    out = code
    while out.endswith("00"):
        out = out[:-2]
    return out


def within(code: str, division: str) -> bool:
    """Whether division ``code`` lies within ``division`` (itself included): 350203 lies within 350200."""
    return code.startswith(division_prefix(division))


def department_division(department_code: str) -> str:
    """The registering division of a department, from its unified social credit code (characters 3 to 8)."""
    return department_code[2:8]
