"""Refused administrative calls, written to the audit log: attempts to take a right leave a trace.

A refused exchange is recorded by the exchange service itself; this covers the registry, catalog,
rights and audit services, whose refusals change nothing and so had no record. The refusal stands
whether or not it can be recorded: a log that cannot take the record delays nothing and lets nothing
through.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from audit.batch import GroupCommitter
from exchange import errors
from exchange.models import Principal
from exchange.services.auditing import change_record

log = logging.getLogger(__name__)


class RefusalLog:
    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer

    async def refused(self, actor: Principal, where: str, error: errors.PermissionDenied) -> None:
        service, _, method = where.partition(".")
        kind = service.removesuffix("Servicer").lower() or "registry"
        record = change_record(actor, kind, f"denied:{method}", subject=method, reason=error.reason)
        try:
            await self._committer.append_async(replace(record, outcome="denied"), timeout=5.0)
        except Exception:  # the caller is refused all the same
            log.warning("a refused %s by %s could not be recorded", where, actor.ref, exc_info=True)
        log.info("refused %s for %s: %s", where, actor.ref, error.reason, extra={"event": record.as_dict()})
