"""Refused calls that no service records, written to the audit log: attempts leave a trace.

A refused exchange is recorded by the exchange service itself; this covers the registry, catalog,
rights and audit services, whose refusals change nothing and so had no record, and every call
refused before its request was read (a body that does not parse, one over the size limit), on any
service. Each record has an exchange id, which the caller is given to quote. Records are bounded per
caller (see ``RefusalRate``): past the bound, one record counts the rest. The refusal stands whether
or not it can be recorded: a log that cannot take the record delays nothing and lets nothing through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from audit.records import AuditRecord
from exchange import errors
from exchange.auditlog.batch import GroupCommitter
from exchange.models import Principal
from exchange.server.refusal_rate import Counted, RefusalRate
from exchange.services.auditing import change_record

log = logging.getLogger(__name__)
# The audit action of each ExchangeService method, as the exchange service records it.
EXCHANGE_ACTIONS = {"Query": "query", "StreamQuery": "stream", "FetchDocument": "document"}
COUNTING_ACTION = "refusals_suppressed"


class RefusalLog:
    """Writes refusals to the audit log through the group committer, within the per-caller bound."""

    def __init__(self, committer: GroupCommitter, rate: RefusalRate) -> None:
        self._committer = committer
        self._rate = rate
        self._writing: set[asyncio.Task[Any]] = set()

    async def refused(self, actor: Principal, where: str, error: errors.ExchangeError) -> str:
        """Records an administrative call refused (by the policy, or for what it asked); the exchange id
        its caller quotes."""
        service, _, method = where.partition(".")
        kind = service.removesuffix("Servicer").lower() or "registry"
        record = change_record(actor, kind, f"denied:{method}", subject=method, reason=refusal_reason(error))
        return await self._record(actor, record)

    async def unread(self, identify: Callable[[], Principal], method: str, reason: str, message: str) -> str:
        """Records a call refused before its request was read (``method`` as gRPC names it, /pkg.Service/Method):
        the exchange id its caller quotes, or "" if ``identify`` (blocking) finds no one to record.

        It runs to its end even if the call is cancelled meanwhile, as when gRPC itself refused the request."""
        return await asyncio.shield(self.unread_later(identify, method, reason, message))

    def unread_later(
        self, identify: Callable[[], Principal], method: str, reason: str, message: str
    ) -> asyncio.Task[str]:
        """Starts recording a call refused before its request was read (as ``unread``), for a call already
        gone: the recording runs on its own, and ``close`` waits for it."""
        recording = asyncio.get_running_loop().create_task(self._unread(identify, method, reason, message))
        self._writing.add(recording)
        recording.add_done_callback(self._writing.discard)
        return recording

    async def _unread(self, identify: Callable[[], Principal], method: str, reason: str, message: str) -> str:
        try:
            actor = await asyncio.to_thread(identify)
        except errors.ExchangeError:  # no one to record (mutual TLS refuses strangers before this)
            return ""
        service, _, name = method.strip("/").partition("/")
        kind = service.rpartition(".")[2].removesuffix("Service").lower()
        action = EXCHANGE_ACTIONS.get(name, name) if kind == "exchange" else f"denied:{name}"
        record = change_record(actor, kind, action, subject=method[:200], reason=f"{reason}: {message}"[:500])
        return await self._record(actor, record)

    def sweep(self) -> None:
        """Writes the counts of the windows that have closed (in the background: see ``close``)."""
        for counted in self._rate.expired():
            self._in_background(counting_record(counted))

    async def close(self) -> None:
        """At shutdown, once the server has stopped and before the committer does: writes every count not yet
        written, and waits for them and for the refusals still being recorded."""
        for counted in self._rate.drain():
            self._in_background(counting_record(counted))
        if self._writing:
            await asyncio.wait(set(self._writing), timeout=10.0)

    async def _record(self, actor: Principal, record: AuditRecord) -> str:
        admission = self._rate.admit(actor)
        if admission.closed is not None:
            self._in_background(counting_record(admission.closed))
        if not admission.record:
            log.debug("refused %s for %s: counted, not recorded", record.action, actor.ref)
            return admission.exchange_id
        denied = replace(record, outcome="denied", exchange_id=admission.exchange_id)
        await self._append(denied)
        log.info("refused %s for %s: %s", record.action, actor.ref, record.reason, extra={"event": denied.as_dict()})
        return admission.exchange_id

    def _in_background(self, record: AuditRecord) -> None:
        """Appends a counting record in a task of its own, which neither a caller leaving nor a sweep ends."""
        task = asyncio.get_running_loop().create_task(self._append(record))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _append(self, record: AuditRecord) -> None:
        try:
            await self._committer.append_async(record, timeout=5.0)
        except Exception:  # the caller is refused all the same
            log.warning("a refusal (%s by %s) could not be recorded", record.action, record.actor, exc_info=True)


# Errors that refuse what a caller asked (as opposed to the hub failing to answer), by their recorded reason.
_REFUSALS: tuple[tuple[type[errors.ExchangeError], str], ...] = (
    (errors.InvalidArgument, "invalid_argument"),
    (errors.NotFound, "not_found"),
    (errors.AlreadyExists, "already_exists"),
    (errors.FailedPrecondition, "failed_precondition"),
    (errors.Aborted, "aborted"),
)


def is_refusal(error: errors.ExchangeError) -> bool:
    """Whether ``error`` refuses the caller's request (recorded), rather than the hub failing (not)."""
    return isinstance(error, errors.PermissionDenied | errors.ResourceExhausted) or any(
        isinstance(error, kind) for kind, _ in _REFUSALS
    )


def refusal_reason(error: errors.ExchangeError) -> str:
    """The reason a refusal is recorded under: the policy's reason, or the kind of refusal."""
    if isinstance(error, errors.PermissionDenied | errors.ResourceExhausted):
        return error.reason
    return next((reason for kind, reason in _REFUSALS if isinstance(error, kind)), "refused")


def counting_record(counted: Counted) -> AuditRecord:
    """The one record of a caller's refusals past the bound in one window: how many (``rows``), and when."""
    message = f"{counted.count} refused calls from {counted.first} to {counted.last} were not recorded one by one"
    record = change_record(counted.actor, "refusals", COUNTING_ACTION, subject=str(counted.actor.ref))
    return replace(
        record,
        outcome="denied",
        reason=f"{COUNTING_ACTION}: {message}",
        rows=counted.count,
        exchange_id=counted.exchange_id,
    )
