"""The foundation's role checks, each refusing with a message that names the missing right."""

from __future__ import annotations

from exchange.errors import PermissionDenied
from exchange.models import Principal, PrincipalKind, Role


def require_operator(actor: Principal, action: str) -> None:
    """Registering members and issuing certificates is the operator's job alone."""
    if actor.ref.kind is not PrincipalKind.PERSON or Role.OPERATOR not in actor.roles:
        raise PermissionDenied(f"{actor.ref} may not {action}: only an operator may", reason="OPERATOR_REQUIRED")


def require_steward_of(actor: Principal, department_code: str, action: str) -> None:
    """Only a steward of the owning department (归属权) may change that department's entries."""
    if actor.ref.kind is not PrincipalKind.PERSON or Role.OWNER_STEWARD not in actor.roles:
        raise PermissionDenied(
            f"{actor.ref} may not {action}: only an owner steward may change catalog entries",
            reason="STEWARD_REQUIRED",
        )
    if actor.department_code != department_code:
        raise PermissionDenied(
            f"{actor.ref} may not {action}: the entry belongs to department {department_code}, "
            f"not to the caller's department {actor.department_code}",
            reason="OTHER_DEPARTMENT",
        )


def visible_department(actor: Principal) -> str:
    """The department whose drafts the caller may see: its own."""
    return actor.department_code
