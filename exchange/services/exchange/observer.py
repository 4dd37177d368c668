"""What the exchange tells the hub's metrics, and the observer that listens to nothing."""

from __future__ import annotations

from typing import Protocol

from audit.records import AuditRecord


class Observer(Protocol):
    """What the service tells the hub's metrics."""

    def recorded(self, record: AuditRecord, resource: str) -> None:
        """A committed record; ``resource`` is its resource code if the catalog holds it, else ``unknown``."""

    def decided(self, seconds: float) -> None: ...

    def provider_answered(self, provider: str, seconds: float, error: str) -> None: ...

    def audit_waited(self, seconds: float) -> None: ...

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None: ...


class Unobserved:
    def recorded(self, record: AuditRecord, resource: str) -> None:
        return None

    def decided(self, seconds: float) -> None:
        return None

    def provider_answered(self, provider: str, seconds: float, error: str) -> None:
        return None

    def audit_waited(self, seconds: float) -> None:
        return None

    def masked_filter_refused(self, department: str, resource: str, reason: str) -> None:
        return None
