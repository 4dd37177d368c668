"""What every RPC handler does around its service call.

Identify the caller from its client certificate, refuse a call whose deadline
has already passed, run the (blocking) service call off the event loop, and
turn the hub's errors into gRPC statuses with ``google.rpc`` details. An
unexpected exception becomes INTERNAL with a reference id that is logged; its
text never reaches the caller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from exchange import errors, pki, tracing
from exchange.models import Principal, PrincipalKind, PrincipalRef
from exchange.server.refusals import is_refusal
from exchange.store.database import deadline

log = logging.getLogger(__name__)
DOMAIN = "exchange.v1"
DEV_PRINCIPAL_HEADER = "x-exchange-dev-principal"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Authenticator(Protocol):
    def authenticate(self, fingerprint: str) -> Principal | None: ...

    def principal(self, ref: PrincipalRef) -> Principal: ...


class Refusals(Protocol):
    """Where refused administrative calls are recorded (the audit log), so attempts leave a trace."""

    async def refused(self, actor: Principal, where: str, error: errors.ExchangeError) -> str:
        """Records the refusal; the exchange id of the record that holds it."""
        ...


class Servicer(Protocol):
    auth: Authenticator
    insecure_dev: bool


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_of(error: errors.ExchangeError) -> status_pb2.Status:
    """The rich gRPC status of a hub error; a recorded one also names its exchange id (``RequestInfo``)."""
    status = _status_of(error)
    if error.exchange_id:
        status.details.append(_pack(error_details_pb2.RequestInfo(request_id=error.exchange_id)))
    return status


def _status_of(error: errors.ExchangeError) -> status_pb2.Status:  # noqa: PLR0911 - one branch per error kind
    if isinstance(error, errors.InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error.message, details=[_pack(detail)])
    if isinstance(error, errors.NotFound | errors.AlreadyExists):
        code = code_pb2.NOT_FOUND if isinstance(error, errors.NotFound) else code_pb2.ALREADY_EXISTS
        info = error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.name)
        return status_pb2.Status(code=code, message=error.message, details=[_pack(info)])
    if isinstance(error, errors.FailedPrecondition):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=error.kind, subject=error.subject, description=error.message
        )
        detail = error_details_pb2.PreconditionFailure(violations=[violation])
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=error.message, details=[_pack(detail)])
    if isinstance(error, errors.PermissionDenied):
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
        return status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=error.message, details=[_pack(info)])
    if isinstance(error, errors.ResourceExhausted):
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
        return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=error.message, details=[_pack(info)])
    if isinstance(error, errors.Aborted):
        return status_pb2.Status(code=code_pb2.ABORTED, message=error.message)
    if isinstance(error, errors.Unauthenticated):
        return status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=error.message)
    if isinstance(error, errors.DeadlineExceeded):
        return status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=error.message)
    if isinstance(error, errors.Unavailable):
        found = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN))] if error.reason else []
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=error.message, details=found)
    if isinstance(error, errors.DataLoss):
        return status_pb2.Status(code=code_pb2.DATA_LOSS, message=error.message)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=error.message)


def reason_of(e: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason a called service gave with its refusal (a peer hub's) ("" if none)."""
    status = rpc_status.from_call(e)  # type: ignore[arg-type]  # an ended call has what it reads
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _presented(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    pems = context.auth_context().get("x509_pem_cert")
    return next(iter(pems), None) if pems else None  # the first, without copying them all


@dataclass(frozen=True)
class Peer:
    """What a call says of its caller: its certificate's fingerprint, or in development mode its header.

    ``hub_code`` is set when the certificate is a hub's (its own code, or "" for a hub's server certificate):
    such a certificate never stands for a department's system or person.
    """

    fingerprint: str | None
    dev_header: str | None = None
    hub_code: str | None = None


def peer_of(servicer: Servicer, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
    """Reads the caller off the call: on the event loop, while the call is alive (a call gRPC has ended
    must not be touched, least of all from another thread)."""
    if servicer.insecure_dev:
        return Peer(None, str(dict(context.invocation_metadata() or ()).get(DEV_PRINCIPAL_HEADER, "")))
    pem = _presented(context)
    if pem is None:
        return _NO_CERTIFICATE
    return _peer_presenting(pem)


_NO_CERTIFICATE = Peer(None)


@functools.lru_cache(maxsize=4096)
def _peer_presenting(pem: bytes) -> Peer:
    """The (immutable) peer behind a certificate, remembered: a caller presents the same one on every call, and
    one lookup of its bytes costs less than two. Only what the certificate itself says is kept: whether it is
    registered, revoked or expired is asked of the registry on every call (``principal_of``)."""
    return Peer(pki.fingerprint_of_presented(pem), hub_code=pki.hub_code_of_presented(pem))


def principal_of(servicer: Servicer, peer: Peer) -> Principal:
    """The registered principal behind ``peer`` (blocking: reads the store)."""
    if servicer.insecure_dev:
        header = peer.dev_header or ""
        kind, _, code = header.partition("/")
        if kind not in {k.value for k in PrincipalKind} or not code:
            raise errors.Unauthenticated(
                f"development mode: send metadata {DEV_PRINCIPAL_HEADER}: person/<username> or system/<code>"
            )
        try:
            return servicer.auth.principal(PrincipalRef(PrincipalKind(kind), code))
        except errors.NotFound:
            raise errors.Unauthenticated(f"development mode: {header} is not a registered principal") from None
    if peer.fingerprint is None:
        raise errors.Unauthenticated("no client certificate was presented")
    if peer.hub_code is not None:
        raise errors.Unauthenticated(
            f"the client certificate is a hub's ({pki.hub_uri(peer.hub_code) if peer.hub_code else pki.HUB_URI}), "
            "never a department's system or person: hubs call each other on the federation listener"
        )
    principal = servicer.auth.authenticate(peer.fingerprint)
    if principal is None:
        raise errors.Unauthenticated(
            "the client certificate is not registered to a principal, has expired or has been revoked"
        )
    return principal


def identify(servicer: Servicer, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The registered principal behind this call (blocking: reads the store)."""
    return principal_of(servicer, peer_of(servicer, context))


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status) -> None:
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)


def unary(
    fn: Callable[[Any, Req, Principal], Resp],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Wraps a blocking ``fn(servicer, request, principal)`` as an async, authenticated RPC handler."""

    @functools.wraps(fn)
    async def handler(self: Servicer, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await _abort(context, status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message="deadline exceeded"))

        callers: list[Principal] = []
        peer = peer_of(self, context)  # read on the event loop: the call is not touched from the worker thread

        started = time.monotonic()

        def call() -> Resp:
            with deadline(None if remaining is None else remaining - (time.monotonic() - started)):
                callers.append(principal_of(self, peer))
                return fn(self, request, callers[0])

        try:
            return await asyncio.to_thread(call)
        except errors.ExchangeError as e:
            refusals: Refusals | None = getattr(self, "refusals", None)
            if is_refusal(e) and refusals is not None and callers:
                e.recorded_as(await refusals.refused(callers[0], fn.__qualname__, e))
            await abort_with(context, e)
        except Exception:
            await internal_error(context, fn.__qualname__)
        raise AssertionError("unreachable: abort raises")

    return handler


async def caller_of(servicer: Servicer, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The authenticated caller of a streaming handler; aborts the call with the right status otherwise."""
    try:
        return await asyncio.to_thread(principal_of, servicer, peer_of(servicer, context))
    except errors.ExchangeError as e:
        await abort_with(context, e)
    raise AssertionError("unreachable: abort raises")


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: errors.ExchangeError) -> None:
    """Ends a call with the status of a hub error; a recorded one's exchange id also goes on the call's span."""
    tracing.note_exchange_id(error.exchange_id)
    await _abort(context, status_of(error))


async def internal_error(context: grpc.aio.ServicerContext[Any, Any], where: str) -> None:
    """Logs the exception being handled with a reference, and ends the call with INTERNAL and that reference only."""
    reference = uuid.uuid4().hex[:12]
    log.exception("internal error in %s (reference %s)", where, reference)
    await _abort(context, status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error; reference {reference}"))
