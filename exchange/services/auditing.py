"""Audit records for changes of registry, catalog and rights, handed to the store method that writes the change."""

from __future__ import annotations

import functools
import os
import socket
import time

from audit.records import AuditRecord
from exchange.models import Principal


def now_text() -> str:
    """RFC 3339 UTC with microseconds, the form every record's time takes.

    The same text as ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` (microseconds always shown); the part up to the second
    is formatted once a second (every exchange record has a time or two, so this is on every call's path).
    """
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{_second_text(second)}{micro:06d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    """The time text of ``second`` (seconds since the epoch) up to and with its decimal point."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def hub_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def change_record(
    actor: Principal,
    kind: str,
    action: str,
    *,
    subject: str,
    resource: str = "",
    purpose: str = "",
    grant: str = "",
    reason: str = "",
) -> AuditRecord:
    """The record of one change made by ``actor``: what kind, which action, on what, and why."""
    return AuditRecord(
        kind=kind,
        action=action,
        time=now_text(),
        actor=str(actor.ref),
        actor_department=actor.department_code,
        outcome="ok",
        reason=reason,
        subject=subject,
        resource=resource,
        purpose=purpose,
        grant=grant,
        hub=hub_instance(),
    )
