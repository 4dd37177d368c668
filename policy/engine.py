"""The rights policy: Casbin decides, over the model and permissions kept beside this file.

Role assignments come from the registry: an owner steward or consumer acts
within their own department; operators, share managers and auditors act
hub-wide. Systems hold the ``system`` role in their department. The hub
builds one ``RightsPolicy`` at start and tells it of every new member.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import casbin

from exchange.errors import PermissionDenied
from exchange.models import Principal, PrincipalKind, PrincipalRef, Role

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model.conf"
PERMISSIONS = HERE / "permissions.csv"
HUB_WIDE = "*"
SYSTEM_ROLE = "system"
# Roles that act for the whole hub rather than for their own department.
_HUB_WIDE_ROLES = frozenset({Role.OPERATOR, Role.SHARE_MANAGER, Role.AUDITOR})


class Action(StrEnum):
    """What a caller asks to do, as ``object:action`` (the object and action columns of permissions.csv)."""

    REGISTER_MEMBERS = "registry:register"
    ISSUE_CERTIFICATE = "certificate:issue"
    CERTIFY_SYSTEM = "system_certificate:issue"
    REVOKE_CERTIFICATE = "certificate:revoke"
    WRITE_CATALOG = "catalog:write"
    APPLY_FOR_DATA = "request:apply"
    DISPUTE_REFUSAL = "request:dispute"
    DECIDE_REQUEST = "request:decide"
    ISSUE_GRANT = "grant:issue"
    SUSPEND_GRANT = "grant:suspend"
    RESUME_GRANT = "grant:resume"
    REVOKE_GRANT = "grant:revoke"
    DECIDE_DISPUTE = "dispute:decide"
    READ_AUDIT = "audit:read"
    READ_OWN_AUDIT = "audit:read_own"
    # The evaluation report (issue 19): figures per department, for auditors and the share manager.
    READ_REPORT = "audit:report"
    READ_DATA = "data:read"
    # Federation (issue 15): registering, suspending, resuming and ending peerings with other hubs.
    MANAGE_PEERS = "peering:manage"

    @property
    def object(self) -> str:
        return self.value.split(":")[0]

    @property
    def verb(self) -> str:
        return self.value.split(":")[1]


@dataclass(frozen=True)
class Assignment:
    """A principal in a role, within a department or hub-wide ("*")."""

    principal: PrincipalRef
    role: str
    domain: str


def assignments_of(principal: PrincipalRef, department: str, roles: Iterable[Role]) -> list[Assignment]:
    """The role assignments a registered member holds, from its department and roles."""
    if principal.kind is PrincipalKind.SYSTEM:
        return [Assignment(principal, SYSTEM_ROLE, department)]
    return [Assignment(principal, r.value, HUB_WIDE if r in _HUB_WIDE_ROLES else department) for r in roles]


def _permission_rows() -> list[list[str]]:
    with PERMISSIONS.open(encoding="utf-8") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f) if row and not row[0].startswith("#")]
    return [row[1:] for row in rows if row[0] == "p"]


class RightsPolicy:
    """Answers "may this principal do this, for this department?" with Casbin; safe across threads."""

    def __init__(self, assignments: Iterable[Assignment] = ()) -> None:
        self._enforcer = casbin.Enforcer(str(MODEL))
        self._enforcer.add_policies(_permission_rows())
        self._lock = threading.Lock()
        self.assign(assignments)

    def assign(self, assignments: Iterable[Assignment]) -> None:
        """Adds role assignments; ones already held are left as they are."""
        rules = [[str(a.principal), a.role, a.domain] for a in assignments]
        with self._lock:
            new = [r for r in rules if not self._enforcer.has_grouping_policy(*r)]
            if new:
                self._enforcer.add_grouping_policies(new)

    def refresh_roles(self, principal: PrincipalRef, load: Callable[[], Iterable[Assignment]]) -> None:
        """Replaces the role assignments of ``principal`` with what ``load`` reads from the store.

        ``load`` runs under the lock, so concurrent changes converge on the committed state.
        """
        with self._lock:
            rules = [[str(a.principal), a.role, a.domain] for a in load()]
            self._enforcer.remove_filtered_grouping_policy(0, str(principal))
            if rules:
                self._enforcer.add_grouping_policies(rules)

    def replace_roles(self, load: Callable[[], Iterable[Assignment]]) -> None:
        """Replaces every role assignment with what ``load`` reads from the store (a full resync)."""
        with self._lock:
            rules = [[str(a.principal), a.role, a.domain] for a in load()]
            held = self._enforcer.get_grouping_policy()
            if held:
                self._enforcer.remove_grouping_policies(held)
            if rules:
                self._enforcer.add_grouping_policies(rules)

    def allows(self, principal: PrincipalRef, action: Action, department: str) -> bool:
        with self._lock:
            return bool(self._enforcer.enforce(str(principal), department, action.object, action.verb))

    def require(self, actor: Principal, action: Action, department: str, doing: str) -> None:
        """Refuses with a message naming what the caller lacks; ``doing`` says what was attempted."""
        if self.allows(actor.ref, action, department):
            return
        roles = self.roles_for(action)
        holders = " or ".join(roles) if roles else "nobody"
        where = "" if department == HUB_WIDE else f" for department {department}"
        raise PermissionDenied(
            f"{actor.ref} may not {doing}: that takes the right {action.value}{where}, held by {holders}",
            reason=f"{action.object.upper()}_{action.verb.upper()}_DENIED",
        )

    def require_somewhere(self, actor: Principal, action: Action, doing: str) -> None:
        """Refuses a caller who may do ``action`` in no department, before anything it names is looked up."""
        if not self.allows(actor.ref, action, actor.department_code):
            self.require(actor, action, HUB_WIDE, doing)

    def roles_for(self, action: Action) -> list[str]:
        """Roles whose permissions include ``action``."""
        with self._lock:
            return sorted({p[0] for p in self._enforcer.get_policy() if p[1:] == [action.object, action.verb]})
