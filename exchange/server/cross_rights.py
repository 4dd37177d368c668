"""Share requests across hubs on the wire: the calls peers make (CrossHubRightsService, on the federation
listener) and this hub's calls to its peers in each sync round (submitting applications still waiting, reading
back the status of those submitted). See docs/federation.md, "Applying across hubs".

Every call carries a statement the calling hub signs (audit/forwarded.py, calls "apply", "status" and
"dispute"); a hub
that is not the home checks it, logs its hop and passes the call on towards the home with its own statement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from audit.forwarded import Forwarded, ForwardError, check, issue, next_hop, request_digest
from audit.note import NoteError, Signer, Verifier
from exchange import errors
from exchange.federation.model import Peer, PeerState
from exchange.models import Application, MaskKind
from exchange.server.peering import from_peer
from exchange.services.federation.rights import (
    GRANT_CHANGES,
    GRANT_STATUSES,
    STATUSES,
    CrossHubRights,
    DisputeSubmission,
    Submission,
    hub_record,
    require_within,
)
from exchange.store.applications import HomeStatus, OutgoingDispute
from exchange.v1 import applications_pb2 as pb
from exchange.v1 import applications_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from exchange.server.federation import Federation

log = logging.getLogger(__name__)
T = TypeVar("T")
HOPS = 8  # how many hubs an application may pass on its way to the home
PAGE = 200
if TYPE_CHECKING:
    Rpc = Callable[[pb_grpc.CrossHubRightsServiceAsyncStub, float], Awaitable[T]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _bytes(message: pb.CrossHubApplication | pb.StatusQuery | pb.CrossHubDispute) -> bytes:
    return message.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Subject:
    """What a statement of this hub speaks for: an application or a dispute, and its exact bytes."""

    resource_code: str
    consumer_department_code: str
    system: str
    purpose: str
    body: bytes

    @classmethod
    def about(cls, query: pb.StatusQuery) -> Subject:
        """A status query speaks for no resource, department or purpose: only its bytes."""
        return cls("", "", "", "", _bytes(query))


class CrossHubClient:
    """This hub's side of applications across hubs: the statements it signs, its calls, its checks."""

    def __init__(self, federation: Federation, rights: CrossHubRights, signer: Signer) -> None:
        self.federation = federation
        self.rights = rights
        self.signer = signer
        self._lock = asyncio.Lock()

    @property
    def me(self) -> str:
        return self.rights.own.code

    # Calls to a peer

    async def call(self, peer: Peer, what: str, rpc: Rpc[T]) -> T:
        """One call to a peer's CrossHubRightsService, with the hop-naming errors of ``Federation.call``."""
        channel = self.federation.channel(peer)

        async def on(_: object, timeout: float) -> T:
            return await rpc(pb_grpc.CrossHubRightsServiceStub(channel), timeout)

        return await self.federation.call(peer, what, on)

    def statement(self, received: Forwarded | None, fresh: Forwarded, exchange_id: str, peer: str) -> str:
        """The signed statement for ``peer``: passing on ``received``, or ``fresh`` from this hub."""
        hop = fresh if received is None else next_hop(received, self.me, exchange_id, peer)
        return issue(self.signer, hop, _now())

    def checked(self, peer: Peer, note: str, request: bytes, call: str) -> Forwarded:
        """The calling peer's statement, if it may be acted on; PERMISSION_DENIED saying why not."""
        try:
            statement = check(
                note, Verifier.parse(peer.log_key), me=self.me, request=request, now=_now(),
                seen=self.federation.store.forwarded.seen,
            )  # fmt: skip
        except (ForwardError, NoteError) as e:
            reason = e.reason if isinstance(e, ForwardError) else "signature"
            self._refused(peer, call, str(e))
            message = f"hub {self.me} refused the statement: {e}"
            raise errors.PermissionDenied(message, reason=f"FORWARD_{reason.upper()}") from None
        if statement.call != call or statement.sender != peer.code:
            self._refused(peer, call, "statement for another call or sender")
            raise errors.PermissionDenied("the statement is for another call or sender", reason="FORWARD_REQUEST")
        return statement

    def _refused(self, peer: Peer, call: str, why: str) -> None:
        record = hub_record(peer.code, f"refused:{call}", subject=peer.code, reason=why)
        self.federation.store.audit.stage([record])

    def route(self, home: str, resource: str = "") -> Peer:
        """The active peer towards ``home``: the one the entry (or any entry homed there) came through."""
        store = self.federation.store
        via = ""
        entry = store.federated.get(resource) if resource else None
        if entry is not None and entry.home.code == home:
            via = entry.via_peer
        else:
            via = next((p.code for p in store.peers.list((PeerState.ACTIVE,)) if p.code == home), "")
            via = via or store.federated.via_towards(home)
        if not via:
            raise errors.FailedPrecondition(f"hub {self.me} knows no way to hub {home}", subject=home)
        return self.active_peer(via, f" towards hub {home}")

    def active_peer(self, code: str, towards: str = "") -> Peer:
        """Peer ``code``, if its peering is active (UNAVAILABLE otherwise: a later round tries again)."""
        peer = self.federation.store.peers.get(code)
        if peer.state is not PeerState.ACTIVE:
            raise errors.Unavailable(f"the peering with hub {code}{towards} is {peer.state.value}")
        return peer

    def signed(
        self, peer: Peer, received: Forwarded | None, exchange_id: str, subject: Subject, *, call: str, home: str
    ) -> str:
        """The statement this hub sends ``peer`` with a ``call`` of ``subject`` (an application or a dispute)."""
        fresh = Forwarded(
            sender=self.me, receiver=peer.code, home=home, resource=subject.resource_code, call=call,
            department=subject.consumer_department_code, system=subject.system, purpose=subject.purpose,
            path=(self.me,), exchanges=(exchange_id,), hops_left=HOPS, request=request_digest(subject.body),
        )  # fmt: skip
        return self.statement(received, fresh, exchange_id, peer.code)

    # The sync round: submit what waits, read back what changed

    async def sync(self) -> None:
        async with self._lock:
            waiting = await asyncio.to_thread(self.federation.store.applications.waiting)
            for request, via in waiting:
                home = request.cross_hub.home_hub if request.cross_hub else ""
                wire = _wire(request.application, request.id, str(request.applicant))
                wire.consumer_department_name = await asyncio.to_thread(self._department_name, wire)
                await self._submit_one(home, via, wire)
            for dispute in await asyncio.to_thread(self.federation.store.applications.disputes_waiting):
                await self._dispute_one(dispute)
            homes = await asyncio.to_thread(self.federation.store.applications.homes)
            for home, via, after in homes:
                await self._pull(home, via, after)

    def _department_name(self, wire: pb.CrossHubApplication) -> str:
        """The consumer department's name here, for the home's records ("" if it is gone)."""
        try:
            return self.federation.store.registry.get_department(wire.consumer_department_code).name
        except errors.NotFound:
            return ""

    async def _submit_one(self, home: str, via: str, application: pb.CrossHubApplication) -> None:
        store, request_id = self.federation.store, application.origin_request_id
        try:
            peer = await asyncio.to_thread(self.active_peer, via)
            answer = await self.submit(peer, None, application, request_id, home)
            status = _status(answer.status)
        except errors.ExchangeError as e:
            log.warning("federation: application %s not submitted: %s", request_id, e.message)
            if _final(e):  # the home or a hub on the way will not take it: refused, not retried
                await asyncio.to_thread(self.rights.refused_on_the_way, home, request_id, e.message)
            else:
                await asyncio.to_thread(store.applications.submission_failed, request_id, e.message)
            return
        # The answer's change number is not a cursor: changes of other applications before it are still to be read.
        said = replace(status, origin_request_id=request_id, sequence=0)
        await asyncio.to_thread(self.rights.home_said, home, said)

    async def submit(
        self, peer: Peer, received: Forwarded | None, application: pb.CrossHubApplication, exchange_id: str, home: str
    ) -> pb.SubmitApplicationResponse:
        """Submits ``application`` (homed at ``home``) to ``peer``: this hub's own (``received`` None) or one
        passed on."""
        subject = Subject(
            application.resource_code, application.consumer_department_code, application.applicant,
            application.purpose, _bytes(application),
        )  # fmt: skip
        statement = self.signed(peer, received, exchange_id, subject, call="apply", home=home)
        request = pb.SubmitApplicationRequest(statement=statement, application=application)

        async def rpc(stub: pb_grpc.CrossHubRightsServiceAsyncStub, timeout: float) -> pb.SubmitApplicationResponse:
            return await stub.SubmitApplication(request, timeout=timeout)

        return await self.call(peer, "submit an application", rpc)

    async def _dispute_one(self, dispute: OutgoingDispute) -> None:
        """Submits one dispute waiting here; its home's answer (disputed) is read back with the status pull."""
        store, request_id = self.federation.store, dispute.request_id
        wire = pb.CrossHubDispute(
            origin_request_id=request_id, home_request_id=dispute.home_request_id,
            resource_code=dispute.resource_code, consumer_department_code=dispute.consumer_department_code,
            reason=dispute.reason, disputer=dispute.disputer,
        )  # fmt: skip
        try:
            peer = await asyncio.to_thread(self.active_peer, dispute.via_peer)
            exchange_id = f"DS-{secrets.token_hex(8)}"
            await self.submit_dispute(peer, None, wire, exchange_id, dispute.home_hub, purpose=dispute.purpose)
        except errors.ExchangeError as e:
            log.warning("federation: dispute of %s not submitted: %s", request_id, e.message)
            if _final(e):  # the home or a hub on the way will not take it: refused, not retried
                await asyncio.to_thread(self.rights.dispute_refused_on_the_way, dispute.home_hub, request_id, e.message)
            else:
                await asyncio.to_thread(store.applications.dispute_failed, request_id, e.message)
            return
        await asyncio.to_thread(store.applications.dispute_submitted, request_id)

    async def submit_dispute(
        self, peer: Peer, received: Forwarded | None, dispute: pb.CrossHubDispute, exchange_id: str, home: str, *,
        purpose: str,
    ) -> pb.SubmitDisputeResponse:  # fmt: skip
        """Submits ``dispute`` (of a request homed at ``home``, for ``purpose``) to ``peer``: this hub's own
        (``received`` None) or one passed on."""
        subject = Subject(
            dispute.resource_code, dispute.consumer_department_code, dispute.disputer, purpose, _bytes(dispute)
        )
        statement = self.signed(peer, received, exchange_id, subject, call="dispute", home=home)
        request = pb.SubmitDisputeRequest(statement=statement, dispute=dispute)

        async def rpc(stub: pb_grpc.CrossHubRightsServiceAsyncStub, timeout: float) -> pb.SubmitDisputeResponse:
            return await stub.SubmitDispute(request, timeout=timeout)

        return await self.call(peer, "submit a dispute", rpc)

    async def _pull(self, home: str, via: str, after: int) -> None:
        try:
            peer = await asyncio.to_thread(self.federation.store.peers.get, via)
            query = pb.StatusQuery(home_hub_code=home, after_sequence=after)
            answer = await self.status(peer, None, query, f"ST-{secrets.token_hex(8)}")
        except errors.ExchangeError as e:
            log.warning("federation: status of applications at hub %s not read: %s", home, e.message)
            return
        for wire in answer.statuses:
            try:
                status = _status(wire)
            except errors.ExchangeError as e:
                log.warning("federation: hub %s told an unreadable status: %s", home, e.message)
                continue
            await asyncio.to_thread(self.rights.home_said, home, status)

    async def status(
        self, peer: Peer, received: Forwarded | None, query: pb.StatusQuery, exchange_id: str
    ) -> pb.ListApplicationStatusResponse:
        """Asks ``peer`` for the status of applications submitted towards ``query.home_hub_code``."""
        statement = self.signed(
            peer, received, exchange_id, Subject.about(query), call="status", home=query.home_hub_code
        )
        request = pb.ListApplicationStatusRequest(statement=statement, query=query)

        async def rpc(stub: pb_grpc.CrossHubRightsServiceAsyncStub, timeout: float) -> pb.ListApplicationStatusResponse:
            return await stub.ListApplicationStatus(request, timeout=timeout)

        return await self.call(peer, "read the status of applications", rpc)


class CrossHubRightsServicer(pb_grpc.CrossHubRightsServiceServicer):
    """The calls peers make: submit an application, read the status of those submitted."""

    def __init__(self, federation: Federation, client: CrossHubClient) -> None:
        self.federation = federation
        self.client = client

    @from_peer((PeerState.ACTIVE,), "submit an application")
    def SubmitApplication(self, request: pb.SubmitApplicationRequest, peer: Peer) -> pb.SubmitApplicationResponse:
        client = self.client
        statement = client.checked(peer, request.statement, _bytes(request.application), "apply")
        wire = request.application
        if statement.home != client.me:
            return self._relay(peer, statement, wire)
        known = client.rights.known(statement.origin, wire.origin_request_id)
        if known is not None:
            return pb.SubmitApplicationResponse(status=_status_to_wire(known))
        submission = Submission(
            _application(wire), wire.origin_request_id, wire.applicant, wire.consumer_department_name, statement,
            peer.code,
        )  # fmt: skip
        return pb.SubmitApplicationResponse(status=_status_to_wire(client.rights.accept(submission)))

    def _relay(self, peer: Peer, statement: Forwarded, wire: pb.CrossHubApplication) -> pb.SubmitApplicationResponse:
        onward, hop_id = self._onward(peer, statement, wire, "apply", f"({wire.origin_request_id})")
        return self.federation.run(self.client.submit(onward, statement, wire, hop_id, statement.home))

    def _onward(
        self, peer: Peer, statement: Forwarded, wire: pb.CrossHubApplication | pb.CrossHubDispute, call: str, ids: str
    ) -> tuple[Peer, str]:
        """The next hub towards the home and this hop's id, the relay recorded here (``relay:<call>``) first."""
        require_within(wire.consumer_department_code, statement.origin)
        onward = self.client.route(statement.home, wire.resource_code)
        hop_id = f"FW-{secrets.token_hex(8)}"
        record = hub_record(
            peer.code, f"relay:{call}", subject=hop_id, resource=wire.resource_code,
            reason=f"from hub {statement.origin} {ids} to hub {statement.home} via {onward.code}; "
            f"path {' → '.join(statement.path)}",
        )  # fmt: skip
        self.federation.store.audit.stage([record])
        return onward, hop_id

    @from_peer((PeerState.ACTIVE,), "submit a dispute")
    def SubmitDispute(self, request: pb.SubmitDisputeRequest, peer: Peer) -> pb.SubmitDisputeResponse:
        client = self.client
        statement = client.checked(peer, request.statement, _bytes(request.dispute), "dispute")
        wire = request.dispute
        if statement.home != client.me:
            return self._relay_dispute(peer, statement, wire)
        submission = DisputeSubmission(
            origin_request_id=wire.origin_request_id, home_request_id=wire.home_request_id,
            resource_code=wire.resource_code, consumer_department_code=wire.consumer_department_code,
            reason=wire.reason.strip(), disputer=wire.disputer, statement=statement, via_peer=peer.code,
        )  # fmt: skip
        return pb.SubmitDisputeResponse(status=_status_to_wire(client.rights.accept_dispute(submission)))

    def _relay_dispute(self, peer: Peer, statement: Forwarded, wire: pb.CrossHubDispute) -> pb.SubmitDisputeResponse:
        ids = f"({wire.origin_request_id}, at home {wire.home_request_id})"
        onward, hop_id = self._onward(peer, statement, wire, "dispute", ids)
        dispute = self.client.submit_dispute(onward, statement, wire, hop_id, statement.home, purpose=statement.purpose)
        return self.federation.run(dispute)

    @from_peer((PeerState.ACTIVE,), "read the status of applications")
    def ListApplicationStatus(
        self, request: pb.ListApplicationStatusRequest, peer: Peer
    ) -> pb.ListApplicationStatusResponse:
        client = self.client
        statement = client.checked(peer, request.statement, _bytes(request.query), "status")
        if request.query.home_hub_code != client.me:
            onward = client.route(request.query.home_hub_code)
            hop = f"ST-{secrets.token_hex(8)}"
            return self.federation.run(client.status(onward, statement, request.query, hop))
        after = max(0, request.query.after_sequence)
        found = client.rights.statuses(statement.origin, after, PAGE)
        return pb.ListApplicationStatusResponse(statuses=[_status_to_wire(s) for s in found])


def _final(e: errors.ExchangeError) -> bool:
    """Whether a refused submission would be refused again: the home's rules, not a hub down or suspended."""
    if isinstance(e, errors.PermissionDenied):
        return e.reason in ("FOREIGN_DEPARTMENT", "FOREIGN_REQUEST", "FORWARD_REQUEST", "FORWARD_LOOP", "FORWARD_HOPS")
    return isinstance(e, errors.FailedPrecondition | errors.InvalidArgument)


# Wire forms


def _wire(app: Application, request_id: str, applicant: str) -> pb.CrossHubApplication:
    return pb.CrossHubApplication(
        resource_code=app.resource_code,
        consumer_department_code=app.consumer_department_code,
        system_codes=list(app.system_codes),
        purpose=app.purpose,
        legal_basis=app.legal_basis,
        fields=list(app.fields),
        start_date=app.start.isoformat(),
        end_date=app.end.isoformat(),
        expected_daily_calls=app.expected_daily_calls,
        origin_request_id=request_id,
        applicant=applicant,
    )


def _date(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise errors.InvalidArgument.of([errors.FieldViolation(name, f"{text[:20]!r} is not YYYY-MM-DD")]) from None


def _application(wire: pb.CrossHubApplication) -> Application:
    return Application(
        resource_code=wire.resource_code.strip(),
        consumer_department_code=wire.consumer_department_code.strip(),
        system_codes=tuple(c.strip() for c in wire.system_codes),
        purpose=wire.purpose.strip(),
        legal_basis=wire.legal_basis.strip(),
        fields=tuple(f.strip() for f in wire.fields),
        start=_date(wire.start_date, "application.start_date"),
        end=_date(wire.end_date, "application.end_date"),
        expected_daily_calls=wire.expected_daily_calls,
    )


def _status_to_wire(s: HomeStatus) -> pb.ApplicationStatus:
    return pb.ApplicationStatus(
        origin_request_id=s.origin_request_id,
        home_request_id=s.home_request_id,
        status=s.status.value,
        reason=s.reason,
        due_date=s.due.isoformat(),
        sequence=s.sequence,
        grant_id=s.grant_id,
        fields=list(s.fields),
        masks=[f"{f}={k.value}" for f, k in s.masks],
        end_date=s.end.isoformat() if s.end else "",
        daily_quota=s.daily_quota,
        grant_status=s.grant_status.value if s.grant_status else "",
        grant_change=s.grant_change,
        grant_reason=s.grant_reason,
        grant_change_time=s.grant_changed_at.isoformat() if s.grant_changed_at else "",
    )


def _status(wire: pb.ApplicationStatus) -> HomeStatus:
    status = STATUSES.get(wire.status)
    if status is None:
        raise errors.FailedPrecondition(f"unknown application status {wire.status[:30]!r}")
    grant_status = GRANT_STATUSES.get(wire.grant_status) if wire.grant_status else None
    if wire.grant_status and grant_status is None:
        raise errors.FailedPrecondition(f"unknown grant status {wire.grant_status[:30]!r}")
    try:
        masks = tuple((f, MaskKind(k)) for f, _, k in (m.partition("=") for m in wire.masks))
    except ValueError:
        raise errors.FailedPrecondition("an unknown mask kind in an application status") from None
    return HomeStatus(
        origin_request_id=wire.origin_request_id,
        home_request_id=wire.home_request_id,
        status=status,
        reason=wire.reason,
        due=_date(wire.due_date, "status.due_date"),
        sequence=wire.sequence,
        grant_id=wire.grant_id,
        fields=tuple(wire.fields),
        masks=masks,
        end=_date(wire.end_date, "status.end_date") if wire.end_date else None,
        daily_quota=wire.daily_quota,
        grant_status=grant_status,
        grant_change=wire.grant_change if wire.grant_change in GRANT_CHANGES else "",
        grant_reason=wire.grant_reason,
        grant_changed_at=_time(wire.grant_change_time) if wire.grant_change_time else None,
    )


def _time(text: str) -> dt.datetime:
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise errors.FailedPrecondition(f"{text[:40]!r} is not a time (RFC 3339) in an application status") from None
    if at.tzinfo is None:
        raise errors.FailedPrecondition(f"the time {text[:40]!r} of an application status names no time zone")
    return at.astimezone(dt.UTC)
