"""Checks beyond single permissions: roles that may not be held together, and draft visibility."""

from __future__ import annotations

from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import Principal, Role


def visible_department(actor: Principal) -> str:
    """The department whose drafts the caller may see: its own."""
    return actor.department_code


# Roles one person may not hold together: the three rights stay apart, auditors change nothing,
# operators grant and read nothing (DOMAIN.md, "three separated rights").
CONFLICTS: tuple[tuple[Role, Role, str], ...] = (
    (Role.SHARE_MANAGER, Role.CONSUMER, "a share manager may not read data"),
    (Role.SHARE_MANAGER, Role.OWNER_STEWARD, "share management and ownership are separate rights"),
    (Role.OPERATOR, Role.SHARE_MANAGER, "an operator grants nothing"),
    (Role.OPERATOR, Role.CONSUMER, "an operator reads no data"),
    (Role.OPERATOR, Role.OWNER_STEWARD, "an operator does not manage a department's data"),
    (Role.AUDITOR, Role.OPERATOR, "an auditor changes nothing"),
    (Role.AUDITOR, Role.OWNER_STEWARD, "an auditor changes nothing"),
    (Role.AUDITOR, Role.SHARE_MANAGER, "an auditor changes nothing"),
    (Role.AUDITOR, Role.CONSUMER, "an auditor reads the audit log and nothing else"),
)


def require_compatible_roles(roles: frozenset[Role]) -> None:
    """Refuses a set of roles that would put two separated rights in one person's hands."""
    clashes = [
        FieldViolation("person.roles", f"{a.value} and {b.value} cannot be held together: {why}")
        for a, b, why in CONFLICTS
        if a in roles and b in roles
    ]
    if clashes:
        raise InvalidArgument.of(clashes)
