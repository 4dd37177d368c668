"""The checks of exchanges forwarded across hubs: a statement received from a peer, and an answer coming back.

A receiving hub acts on a forwarded call only if the calling peer signed its statement (with the log key it
told at peering), for this hub, fresh, once, for the request received, with hops left, no loop, and on
behalf of a department its origin hub may speak for. An answer is passed on only if the home hub signed
its digest (with the home's log key, relayed with the catalog entry): no hub on the way can widen or
change it unseen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from audit import forwarded, provenance
from audit.forwarded import Forwarded, ForwardError
from audit.note import NoteError, Verifier
from exchange.errors import DataLoss, ExchangeError, FailedPrecondition, InvalidArgument, PermissionDenied
from exchange.federation.model import Peer, department_division, within
from exchange.v1 import exchange_pb2 as xpb
from exchange.values import RowsDigest, record_from_wire

# How each reason a statement is refused for becomes a status.
_DENIED = ("signature", "receiver", "request", "replay")
_MALFORMED = ("malformed",)


def log_origin(log_key: str) -> str:
    """The log origin a hub's log key signs for (the name in its C2SP verifier key); "" if none is known."""
    try:
        return Verifier.parse(log_key).name
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
) -> Forwarded:
    """The statement of a call ``peer`` forwarded, if this hub may act on it; the refusal (an error) if not."""
    try:
        sender = Verifier.parse(peer.log_key)
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
    if statement.call != "query":
        raise FailedPrecondition(f"forwarded {statement.call} calls are not served yet", kind="FORWARD_CALL")
    return statement


def request_of(raw: bytes, statement: Forwarded) -> xpb.QueryRequest:
    """The forwarded request, which must ask for what the statement names."""
    try:
        request = xpb.QueryRequest.FromString(raw)
    except Exception:  # the protobuf runtime raises its own DecodeError
        raise InvalidArgument("the forwarded request is not a QueryRequest") from None
    if request.resource_code.strip() != statement.resource or request.purpose.strip() != statement.purpose:
        raise InvalidArgument("the forwarded request asks for another resource or purpose than its statement names")
    return request


def verified_answer(answer_bytes: bytes, note: str, home_key: str, statement: Forwarded, hop: str) -> xpb.QueryResponse:
    """The home hub's answer, if its signed provenance statement covers exactly these records for this call;
    DataLoss naming the hop the answer came from if not."""
    try:
        response = xpb.QueryResponse.FromString(answer_bytes)
        digest = RowsDigest()
        digest.update(record_from_wire(r) for r in response.records)
        said = provenance.verify(note, Verifier.parse(home_key), digest.hexdigest())
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
