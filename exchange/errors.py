"""One error tree for the whole hub.

Services and the store raise these; the server maps each to a gRPC status
with rich details (``google.rpc``), and the CLI prints them. Errors from
libraries (SQLAlchemy, cryptography) are translated into these at the
boundary where they occur, so no caller sees a library's exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``resource.data_items[2].type``) and what is wrong."""

    field: str
    description: str


class ExchangeError(Exception):
    """Base of every error the hub reports to a caller."""

    # The id under which the audit log holds the call this error ended, for the caller to quote; "" if none.
    exchange_id: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def recorded_as(self, exchange_id: str) -> Self:
        """This error, naming the audit record of the call it ended (sent to the caller in the status details)."""
        self.exchange_id = exchange_id
        return self


class InvalidArgument(ExchangeError):
    """The request itself is malformed; it names every bad field."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def of(cls, violations: list[FieldViolation]) -> InvalidArgument:
        """One error for several violations, with a message that lists them."""
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(f"invalid request: {summary}", violations)


class NotFound(ExchangeError):
    """A named thing does not exist (or is not visible to the caller)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class AlreadyExists(ExchangeError):
    """Creating something whose unique key or name is taken."""

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        super().__init__(f"{kind} {name!r} already exists{': ' + detail if detail else ''}")
        self.kind = kind
        self.name = name


class FailedPrecondition(ExchangeError):
    """The request is well formed but the state does not allow it (e.g. changing a retired entry)."""

    def __init__(self, message: str, subject: str = "", kind: str = "STATE") -> None:
        super().__init__(message)
        self.subject = subject
        self.kind = kind


class Aborted(ExchangeError):
    """A concurrent change won; re-read and try again."""


class Unauthenticated(ExchangeError):
    """The caller could not be identified as a registered principal."""


class PermissionDenied(ExchangeError):
    """The caller is known but lacks the right for this action."""

    def __init__(self, message: str, reason: str = "FORBIDDEN") -> None:
        super().__init__(message)
        self.reason = reason


class ResourceExhausted(ExchangeError):
    """A limit of the caller's grant is used up (daily quota, calls per second); ``reason`` names which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(ExchangeError):
    """The caller's deadline ran out before the hub could finish (for instance while waiting for a lock)."""


class Unavailable(ExchangeError):
    """A part the hub depends on (the store, a peer hub) cannot answer now; retrying may help.

    ``reason`` (an ErrorInfo reason, "" for none) tells apart a hub that answered that one further on cannot
    be reached from a hub that cannot be reached itself."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class DataLoss(ExchangeError):
    """Data that came from elsewhere does not verify (an answer altered on its way): it is not passed on."""


class AuditTampered(Unavailable):
    """The stored audit log is not what this hub wrote: the message names the first row that differs.

    The hub then signs nothing and serves no data until an operator has looked (docs/operating.md).
    """


class ConfigError(ExchangeError):
    """The configuration is invalid; the message says which setting and why."""
