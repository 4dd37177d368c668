"""The audit records a hub writes of exchanges forwarded to it: the hop it passes on, and a call it refuses."""

from __future__ import annotations

from dataclasses import replace

from audit.forwarded import Forwarded
from audit.records import AuditRecord
from exchange.errors import ExchangeError
from exchange.federation.model import Peer
from exchange.services.auditing import hub_instance, now_text
from exchange.services.exchange.record import refused
from exchange.services.federation.forwarding_checks import log_origin

# The most of a refused call's statement kept in its record (a statement is well under this; a junk one is not).
_KEPT = 4000


def hop_record(peer: Peer, statement: Forwarded, note: str, exchange_id: str) -> AuditRecord:
    """A hub on the way: the "in" record of the call it passes on (who asks, from which hub, the statement)."""
    return AuditRecord(
        kind="exchange",
        action=statement.call,
        time=now_text(),
        actor=f"system/{statement.system}"[:200],
        actor_department=statement.department,
        outcome="allowed",
        subject=statement.home,
        resource=statement.resource,
        purpose=statement.purpose[:200],
        exchange_id=exchange_id,
        request_sha256=statement.request,
        hub=hub_instance(),
        peer_hub=log_origin(peer.log_key),
        peer_exchange_id=statement.exchanges[-1],
        hop="in",
        forwarded=note,
    )


def refused_call(
    peer: Peer, note: str, call: str, exchange_id: str, *, error: ExchangeError, started: float
) -> AuditRecord:
    """The record of a forwarded call this hub refused: the calling hub, the reason, the statement."""
    record = AuditRecord(
        kind="exchange",
        action=call,
        time=now_text(),
        actor=f"hub/{peer.code}",
        actor_department="",
        outcome="denied",
        exchange_id=exchange_id,
        hub=hub_instance(),
        peer_hub=log_origin(peer.log_key),
        hop="in",
        forwarded=note[:_KEPT],
    )
    return replace(refused(record, started, error), outcome="denied")  # a refusal, whatever its status
