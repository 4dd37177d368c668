"""Policy cases kept as data, run against the real Casbin model and permissions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from exchange import models as m
from exchange.errors import InvalidArgument, PermissionDenied
from policy import Action, RightsPolicy, assignments_of, require_compatible_roles

HERE = Path(__file__).resolve().parent
OWN, OTHER = "11350200MB0023456P", "11350200MB0034567G"


def _rows(name: str) -> list[dict[str, str]]:
    with (HERE / name).open(encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


CASES = _rows("policy_cases.csv")
PAIRS = _rows("policy_role_pairs.csv")


def _principal(role: str) -> m.PrincipalRef:
    kind = m.PrincipalKind.SYSTEM if role == "system" else m.PrincipalKind.PERSON
    return m.PrincipalRef(kind, f"holder-of-{role.replace('_', '-')}")


@pytest.fixture(scope="module")
def policy() -> RightsPolicy:
    assignments = []
    for role in {c["role"] for c in CASES}:
        roles = () if role == "system" else (m.Role(role),)
        assignments += assignments_of(_principal(role), OWN, roles)
    return RightsPolicy(assignments)


def test_the_table_covers_every_role_and_action() -> None:
    covered = {(c["role"], c["action"]) for c in CASES}
    roles = {r.value for r in m.Role} | {"system"}
    assert covered == {(r, a.value) for r in roles for a in Action}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['role']}-{c['action']}" for c in CASES])
def test_policy_case(policy: RightsPolicy, case: dict[str, str]) -> None:
    who, action = _principal(case["role"]), Action(case["action"])
    assert policy.allows(who, action, OWN) == (case["own_department"] == "allow")
    assert policy.allows(who, action, OTHER) == (case["other_department"] == "allow")


def test_an_unregistered_principal_may_do_nothing(policy: RightsPolicy) -> None:
    stranger = m.PrincipalRef(m.PrincipalKind.PERSON, "stranger")
    assert not any(policy.allows(stranger, a, d) for a in Action for d in (OWN, OTHER, "*"))


def test_refusal_names_the_right_and_who_holds_it(policy: RightsPolicy) -> None:
    actor = m.Principal(_principal("consumer"), "消费者", OWN, frozenset({m.Role.CONSUMER}))
    with pytest.raises(
        PermissionDenied, match=r"takes the right grant:issue for department \w+, held by share_manager"
    ) as info:
        policy.require(actor, Action.ISSUE_GRANT, OWN, "issue grants")
    assert info.value.reason == "GRANT_ISSUE_DENIED"


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{p['role_a']}+{p['role_b']}" for p in PAIRS])
def test_role_pairs(pair: dict[str, str]) -> None:
    roles = frozenset({m.Role(pair["role_a"]), m.Role(pair["role_b"])})
    if pair["expected"] == "allow":
        require_compatible_roles(roles)
    else:
        with pytest.raises(InvalidArgument, match="cannot be held together"):
            require_compatible_roles(roles)


def test_the_pair_table_covers_every_pair_of_person_roles() -> None:
    listed = {frozenset({p["role_a"], p["role_b"]}) for p in PAIRS}
    roles = [r.value for r in m.Role]
    assert listed == {frozenset({a, b}) for i, a in enumerate(roles) for b in roles[i + 1 :]}
