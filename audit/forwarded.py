"""Forwarded-call statements: a hub's signed word of who asks, when it passes a call on to a peer hub.

When a system at hub A reads a resource homed at hub B, A authenticates the system and forwards the
call towards B along the tree of peers (county → city → province ...). Each hub on the way signs one
statement for the next hop, with its audit key (a C2SP signed note, Ed25519, as provenance statements),
naming the consuming department and system, the purpose, the hubs the call has passed and their exchange
ids, how many hops are left, and the SHA-256 of the request it forwards. The receiving hub trusts only the
statement of the peer that calls it (whose key it registered when they peered); that peer vouches for the
hops before it. Each hub keeps the statement it received in its audit record of the hop, so a cross-hub
receipt shows who asked whom.

``check`` is the receiving hub's test of a statement: signed by the calling peer, addressed to this hub,
fresh, never seen before (``seen`` remembers ids until they expire), for the request actually received,
not coming back through this hub, and with hops left. Each refusal says which of these failed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from audit.note import NoteError, Signer, Verifier, open_note

HEADER = "exchange-forward/v1"
CALLS = ("query", "stream", "document", "apply", "status", "dispute")
# How long a statement may be used, and how far the hubs' clocks may disagree.
LIFETIME = dt.timedelta(seconds=60)
CLOCK_SKEW = dt.timedelta(seconds=30)
_SCALARS = (
    "id", "time", "expires", "sender", "receiver", "home", "resource", "call",
    "department", "system", "purpose", "hops_left", "request",
)  # fmt: skip
_LISTS = ("path", "exchanges")


class ForwardError(ValueError):
    """A statement that is malformed, does not verify, or may not be accepted; ``reason`` is a short tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Forwarded:
    """One hop's statement. ``path`` and ``exchanges`` run from the origin hub to the sender, one per hub."""

    sender: str  # hub code of the hub that signs and forwards
    receiver: str  # hub code of the peer it is addressed to
    home: str  # hub code where the resource is homed
    resource: str
    call: str  # query, stream or document; apply, status or dispute for share requests across hubs
    department: str  # the consuming department's code, at the origin hub
    system: str  # the consuming system's code
    purpose: str
    path: tuple[str, ...]
    exchanges: tuple[str, ...]  # each hub's exchange id of this call, origin first
    hops_left: int
    request: str  # SHA-256 hex of the forwarded request's bytes
    time: str = ""  # RFC 3339 UTC, set by ``issue``
    expires: str = ""
    id: str = field(default="")  # random, once per statement: the receiver accepts it once

    @property
    def origin(self) -> str:
        return self.path[0]

    def text(self) -> str:
        lines = [HEADER, *(f"{k} {getattr(self, k)}" for k in _SCALARS)]
        lines += [f"{k} {','.join(getattr(self, k))}" for k in _LISTS]
        for line in lines:
            if "\n" in line or not line.isprintable():
                raise ForwardError("malformed", "a statement's values are single printable lines")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Forwarded:
        lines = text.rstrip("\n").split("\n")
        keys = (*_SCALARS, *_LISTS)
        if not lines or lines[0] != HEADER or len(lines) != len(keys) + 1:
            raise ForwardError("malformed", f"not a {HEADER} statement")
        values: dict[str, str] = {}
        for key, line in zip(keys, lines[1:], strict=True):
            name, _, value = line.partition(" ")
            if name != key:
                raise ForwardError("malformed", f"expected {key!r}, found {name[:20]!r}")
            values[key] = value
        if not values["hops_left"].isdigit():
            raise ForwardError("malformed", "hops_left is not a number")
        path, exchanges = (tuple(values.pop(k).split(",")) for k in _LISTS)
        return cls(path=path, exchanges=exchanges, hops_left=int(values.pop("hops_left")), **values)


def request_digest(request: bytes) -> str:
    """The SHA-256 a statement carries of the request it forwards (the serialized request message)."""
    return hashlib.sha256(request).hexdigest()


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: str, name: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ForwardError("malformed", f"{name} {value[:30]!r} is not an RFC 3339 UTC time") from None


def issue(signer: Signer, statement: Forwarded, now: dt.datetime) -> str:
    """The signed note of ``statement``, stamped now, valid for ``LIFETIME``, with a fresh id."""
    if statement.call not in CALLS:
        raise ForwardError("malformed", f"call must be one of {', '.join(CALLS)}")
    if not statement.path or statement.path[-1] != statement.sender or len(statement.exchanges) != len(statement.path):
        raise ForwardError("malformed", "the path ends at the sender and names one exchange id per hub")
    stamped = _restamp(statement, now)
    return signer.sign(stamped.text())


def _restamp(statement: Forwarded, now: dt.datetime) -> Forwarded:
    values = {k: getattr(statement, k) for k in (*_SCALARS, *_LISTS)}
    values |= {"time": _stamp(now), "expires": _stamp(now + LIFETIME), "id": secrets.token_hex(16)}
    return Forwarded(**values)


def check(
    note: str,
    sender: Verifier,
    *,
    me: str,
    request: bytes,
    now: dt.datetime,
    seen: Callable[[str, dt.datetime], bool],
) -> Forwarded:
    """The statement in ``note``, if this hub (``me``) may act on it; ``ForwardError`` saying why not.

    ``sender`` is the verifier key of the peer that called (registered at peering). ``seen(id, expires)``
    records the id and answers whether it was recorded before: a replay.
    """
    try:
        statement = Forwarded.parse(open_note(note, sender))
    except NoteError as e:
        raise ForwardError("signature", f"the forwarded statement is not signed by the calling hub: {e}") from None
    _check_route(statement, me)
    _check_time(statement, now)
    if statement.request != request_digest(request):
        raise ForwardError("request", "the forwarded statement is for another request than the one received")
    if seen(statement.id, _when(statement.expires, "expires")):
        raise ForwardError("replay", f"the forwarded statement {statement.id} was already used")
    return statement


def _check_route(statement: Forwarded, me: str) -> None:
    if statement.receiver != me:
        raise ForwardError("receiver", f"the statement is addressed to hub {statement.receiver}, not to this hub {me}")
    if not statement.path or statement.path[-1] != statement.sender:
        raise ForwardError("malformed", "the statement's path does not end at its sender")
    if len(statement.exchanges) != len(statement.path) or not all(statement.exchanges):
        raise ForwardError("malformed", "the statement names one exchange id per hub on its path")
    if me in statement.path:
        raise ForwardError("loop", f"the call has already passed this hub ({' → '.join(statement.path)})")
    if statement.hops_left < 1:
        raise ForwardError("hops", f"the call has used its hop limit ({' → '.join(statement.path)})")
    if statement.call not in CALLS:
        raise ForwardError("malformed", f"call must be one of {', '.join(CALLS)}")


def _check_time(statement: Forwarded, now: dt.datetime) -> None:
    signed, expires = _when(statement.time, "time"), _when(statement.expires, "expires")
    if signed > now + CLOCK_SKEW:
        raise ForwardError("time", f"the statement is signed in the future ({statement.time}); check the hubs' clocks")
    if expires - signed > LIFETIME or now > expires + CLOCK_SKEW:
        raise ForwardError("expired", f"the forwarded statement expired at {statement.expires}")


def next_hop(received: Forwarded, me: str, exchange_id: str, receiver: str) -> Forwarded:
    """The statement this hub signs to pass a call it received on to ``receiver``: one hop more, one less left."""
    return Forwarded(
        sender=me,
        receiver=receiver,
        home=received.home,
        resource=received.resource,
        call=received.call,
        department=received.department,
        system=received.system,
        purpose=received.purpose,
        path=(*received.path, me),
        exchanges=(*received.exchanges, exchange_id),
        hops_left=received.hops_left - 1,
        request=received.request,
    )
