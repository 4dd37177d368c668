"""Property test: random sequences of role assignments, requests and decisions never let anyone read
data without a live grant, and never leave a person holding conflicting roles.

The services run on a real SQLite store with the real Casbin policy and decision point; only the
sequence of actions is random.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exchange import models as m
from exchange.cli.demo import sample_id_number
from exchange.errors import ExchangeError
from exchange.paging import page_request
from exchange.pki import create_ca
from exchange.services.catalog import CatalogService
from exchange.services.registry import CertificateAuthority, RegistryService
from exchange.services.rights import Approval, RightsService
from exchange.store import Store
from exchange.store.rights import RequestFilter
from exchange.workdays import WorkCalendar
from policy import Action, RightsPolicy, assignments_of, require_compatible_roles
from policy.decision import DecisionPoint, Question
from tests.harness import AUTHORITY, HOUSING, POLICE, TEST_RECORD, identity_spec, today

DEPARTMENTS = (AUTHORITY, POLICE, HOUSING)
RESOURCES = {
    "10101/350200000001": m.ShareType.CONDITIONAL,
    "10101/350200000002": m.ShareType.UNCONDITIONAL,
    "10101/350200000003": m.ShareType.NOT_SHARED,
}
SYSTEMS = {"ga-sys": POLICE.code, "zj-sys": HOUSING.code, "sj-sys": AUTHORITY.code}
PURPOSES = ("不动产转移登记", "企业开办")
FIELDS = ("name", "id_number", "address")
USERS = tuple(f"user-{i}" for i in range(4))
# Members with the usual roles, so that most sequences get as far as grants; USERS get random roles.
CAST = (
    ("zj-consumer", HOUSING.code, m.Role.CONSUMER),
    ("ga-consumer", POLICE.code, m.Role.CONSUMER),
    ("sm", AUTHORITY.code, m.Role.SHARE_MANAGER),
    ("au", AUTHORITY.code, m.Role.AUDITOR),
)
ACTORS = (*USERS, *(c[0] for c in CAST), "ga-owner", "op-admin")
OPERATOR = m.Principal(
    m.PrincipalRef(m.PrincipalKind.PERSON, "op-admin"), "运维", AUTHORITY.code, frozenset({m.Role.OPERATOR})
)


@dataclass
class World:
    store: Store
    registry: RegistryService
    rights: RightsService
    decisions: DecisionPoint

    def actor(self, username: str) -> m.Principal | None:
        try:
            return self.store.registry.principal(m.PrincipalRef(m.PrincipalKind.PERSON, username))
        except ExchangeError:
            return None


@contextmanager
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(f"sqlite:///{Path(scratch) / 'store.db'}")
        store.db.migrate()
        policy = RightsPolicy()
        decisions = DecisionPoint()
        key, cert = create_ca("property test CA")
        registry = RegistryService(store, CertificateAuthority.of(key, cert), policy, 30)
        rights = RightsService(store, policy, WorkCalendar(), 1096, decisions=decisions)
        store.registry.add_department(AUTHORITY, audit=TEST_RECORD)
        store.registry.add_person(
            m.Person("op-admin", "运维", AUTHORITY.code, frozenset({m.Role.OPERATOR})), audit=TEST_RECORD
        )
        policy.assign(assignments_of(OPERATOR.ref, AUTHORITY.code, OPERATOR.roles))
        for d in DEPARTMENTS[1:]:
            registry.create_department(OPERATOR, d)
        for code, department in SYSTEMS.items():
            registry.create_system(OPERATOR, m.System(code, code, department))
        steward = registry.create_person(
            OPERATOR,
            m.Person("ga-owner", "所有者", POLICE.code, frozenset({m.Role.OWNER_STEWARD})),
            sample_id_number("ga-owner"),
        )
        owner = m.Principal(
            m.PrincipalRef(m.PrincipalKind.PERSON, steward.username), "所有者", POLICE.code, steward.roles
        )
        for username, department, role in CAST:
            registry.create_person(
                OPERATOR, m.Person(username, username, department, frozenset({role})), sample_id_number(username)
            )
        catalog = CatalogService(store, policy)
        for n, (code, kind) in enumerate(RESOURCES.items()):
            basis = "" if kind is m.ShareType.UNCONDITIONAL else "依据"
            conditions = "条件" if kind is m.ShareType.CONDITIONAL else ""
            catalog.create(
                owner,
                identity_spec(code, name=f"资源{n}", share_type=kind, legal_basis=basis, share_conditions=conditions),
                True,
                "",
            )
        yield World(store, registry, rights, decisions)
        store.close()


roles = st.frozensets(st.sampled_from(list(m.Role)), min_size=1, max_size=2)


def actor(usual: str) -> st.SearchStrategy[str]:
    """Mostly the member whose job the step is, sometimes anyone: so sequences reach grants and also try abuse."""
    return st.one_of(st.just(usual), st.sampled_from(ACTORS))


action = st.one_of(
    st.tuples(st.just("person"), st.sampled_from(USERS), st.sampled_from(DEPARTMENTS[1:]), roles),
    st.tuples(st.sampled_from(("assign", "unassign")), st.sampled_from(ACTORS), st.sampled_from(list(m.Role))),
    st.tuples(
        st.just("apply"),
        st.one_of(st.sampled_from(("zj-consumer", "ga-consumer")), st.sampled_from(ACTORS)),
        st.sampled_from(list(RESOURCES)),
        st.one_of(st.none(), st.sampled_from(list(SYSTEMS))),
        st.sampled_from(PURPOSES),
        st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True),
    ),
    st.tuples(st.sampled_from(("approve", "refuse")), actor("ga-owner"), st.integers(0, 9)),
    st.tuples(st.just("dispute"), actor("zj-consumer"), st.integers(0, 9)),
    st.tuples(st.sampled_from(("uphold", "overturn", "issue")), actor("sm"), st.integers(0, 9)),
    st.tuples(
        st.sampled_from(("suspend", "resume", "revoke")), st.one_of(actor("ga-owner"), actor("sm")), st.integers(0, 9)
    ),
)


def _requests(w: World) -> list[m.ShareRequest]:
    return w.store.rights.list_requests(page_request(1000, "", {}), RequestFilter(), today())[0].items


def _step(w: World, act: tuple[Any, ...]) -> None:
    kind = act[0]
    if kind == "person":
        _, user, department, held = act
        w.registry.create_person(OPERATOR, m.Person(user, user, department.code, held), sample_id_number(user))
        return
    if kind in {"assign", "unassign"}:
        _, user, role = act
        w.registry.change_role(OPERATOR, user, role, kind == "assign", "调岗")
        return
    actor = w.actor(act[1])
    if actor is None:
        return
    if kind == "apply":
        _, _, resource, chosen, purpose, fields = act
        own = [code for code, department in SYSTEMS.items() if department == actor.department_code]
        system = chosen or (own[0] if own else "ga-sys")  # None: one of the applicant's own systems
        w.rights.apply(
            actor,
            m.Application(
                resource, "", (system,), purpose, "依据", tuple(fields), today(), today() + dt.timedelta(days=30), 10
            ),
        )
        return
    requests = _requests(w)
    if kind in {"suspend", "resume", "revoke"}:
        grants = [r.grant_id for r in requests if r.grant_id]
        if grants:
            action_of = {"suspend": "grant:suspend", "resume": "grant:resume", "revoke": "grant:revoke"}
            w.rights.change_grant(actor, grants[act[2] % len(grants)], Action(action_of[kind]), "理由")
        return
    if not requests:
        return
    target = requests[act[2] % len(requests)].id
    calls: dict[str, Callable[[], object]] = {
        "approve": lambda: w.rights.approve(actor, target, Approval()),
        "refuse": lambda: w.rights.refuse(actor, target, "理由"),
        "dispute": lambda: w.rights.dispute(actor, target, "理由"),
        "uphold": lambda: w.rights.decide_dispute(actor, target, grant=False, reason="理由", quota=0, rate=0),
        "overturn": lambda: w.rights.decide_dispute(actor, target, grant=True, reason="理由", quota=0, rate=0),
        "issue": lambda: w.rights.issue_grant(actor, target, 0, 0, ""),
    }
    calls[kind]()


def _check_invariants(w: World) -> None:
    for user in ACTORS:
        held = w.actor(user)
        if held is not None:
            require_compatible_roles(held.roles)  # nobody holds conflicting roles
    live = [g for g in w.store.rights.live_grants() if g.status is m.GrantStatus.ACTIVE and g.start <= today() <= g.end]
    for system, department in SYSTEMS.items():
        for resource in RESOURCES:
            for purpose in PURPOSES:
                for field in FIELDS:
                    q = Question(system, department, resource, purpose, (field,))
                    decision = w.decisions.decide(q, m.ResourceStatus.PUBLISHED, today(), consume=False)
                    backed = any(
                        g.resource_code == resource
                        and g.consumer_department_code == department
                        and system in g.system_codes
                        and g.purpose == purpose
                        and field in g.fields
                        for g in live
                    )
                    assert decision.allowed == backed, (q, decision)
    for request in _requests(w):
        approvers = [e.actor for e in w.store.rights.get_request(request.id).history if e.action == "approved"]
        assert request.applicant not in approvers  # nobody approved their own request


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, min_size=1, max_size=25))
def test_no_reading_without_a_live_grant_and_no_conflicting_roles(actions: list[tuple[Any, ...]]) -> None:
    with world() as w:
        for act in actions:
            with suppress(ExchangeError):  # a refusal is a fine outcome; what matters is the state after it
                _step(w, act)
            _check_invariants(w)
        event(f"grants issued: {min(len(w.store.rights.live_grants()), 3)}+")
