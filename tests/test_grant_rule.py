"""The decision point answers as Casbin itself decides over the same grants, and refuses models it cannot read.

The reference is a real pycasbin enforcer of ``grants.conf`` per (resource, consumer department), told
of each change as the decision point once was: the grant's lines removed, then added if it is active.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from pathlib import Path

import casbin
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exchange import models as m
from policy.decision import DecisionPoint, Question
from policy.grant_rule import GRANTS_MODEL, GrantRule, UnsupportedModel

TODAY = dt.date(2026, 11, 23)
RESOURCES = ("10101/000000000001", "10101/000000000002")
DEPARTMENTS = ("D001", "D002")
SYSTEMS = ("s1", "s2", "s3")
PURPOSES = ("不动产转移登记", "企业开办", "社保转移")
BASE = m.Grant(
    id="GR-0",
    request_id="SR-0",
    resource_code=RESOURCES[0],
    consumer_department_code=DEPARTMENTS[0],
    system_codes=("s1",),
    fields=("name",),
    purpose=PURPOSES[0],
    legal_basis="依据",
    start=TODAY - dt.timedelta(days=1),
    end=TODAY + dt.timedelta(days=1),
    daily_quota=10**9,
    rate_per_second=0,
    masks=(),
    status=m.GrantStatus.ACTIVE,
    issued_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
)

changes = st.builds(
    lambda n, r, d, systems, p, status: replace(
        BASE,
        id=f"GR-{n}",
        resource_code=r,
        consumer_department_code=d,
        system_codes=tuple(systems),
        purpose=p,
        status=status,
    ),
    st.integers(0, 11),
    st.sampled_from(RESOURCES),
    st.sampled_from(DEPARTMENTS),
    st.lists(st.sampled_from(SYSTEMS), min_size=1, max_size=3),  # a system named twice included
    st.sampled_from(PURPOSES[:2]),  # few purposes: grants often answer the same question
    st.sampled_from(list(m.GrantStatus)),
)


def _casbin_over(grants: list[m.Grant]) -> dict[tuple[str, str], casbin.Enforcer]:
    """Enforcers of the model per pair, told of each change in turn (a grant keeps its pair)."""
    enforcers: dict[tuple[str, str], casbin.Enforcer] = {}
    for g in grants:
        key = (g.resource_code, g.consumer_department_code)
        enforcer = enforcers.setdefault(key, casbin.Enforcer(str(GRANTS_MODEL)))
        enforcer.remove_filtered_policy(2, g.id)
        if g.status is m.GrantStatus.ACTIVE:
            enforcer.add_policies([[s, g.purpose, g.id] for s in g.system_codes])
    return enforcers


def _questions() -> list[Question]:
    universe = itertools.product((*SYSTEMS, "s9"), DEPARTMENTS, RESOURCES, (*PURPOSES, "其他"))
    return [Question(s, d, r, p, ("name",)) for s, d, r, p in universe]


def _first_pair_wins(grants: list[m.Grant]) -> list[m.Grant]:
    """Each grant id stays in the pair it was first issued in, as grants do."""
    home: dict[str, m.Grant] = {}
    out = []
    for g in grants:
        first = home.setdefault(g.id, g)
        out.append(
            replace(g, resource_code=first.resource_code, consumer_department_code=first.consumer_department_code)
        )
    return out


# Two grants answer the same question; the first is changed, so Casbin now names the second.
CONTENDED = [replace(BASE, id="GR-1"), replace(BASE, id="GR-2"), replace(BASE, id="GR-1", fields=("name", "id"))]


@settings(max_examples=150, deadline=None)
@given(drawn=st.lists(changes, max_size=40), at_once=st.booleans())
@example(drawn=CONTENDED, at_once=True)
@example(drawn=CONTENDED, at_once=False)
def test_decisions_agree_with_casbin_over_random_grants(drawn: list[m.Grant], *, at_once: bool) -> None:
    grants = _first_pair_wins(drawn)
    if at_once:
        point = DecisionPoint(grants)
    else:
        point = DecisionPoint()
        for g in grants:
            point.update(g)
    enforcers = _casbin_over(grants)
    for q in _questions():
        enforcer = enforcers.get((q.resource, q.department))
        allowed, line = enforcer.enforce_ex(q.system, q.purpose) if enforcer else (False, [])
        assert point.answer(q) == (line[2] if allowed else None), q
        assert point.decide(q, m.ResourceStatus.PUBLISHED, TODAY, consume=False).allowed == allowed, q


REORDERED = """
[request_definition]
r = purpose, system
[policy_definition]
p = grant, purpose, system
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = p.purpose == r.purpose && r.system == p.system
"""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SYSTEMS), st.sampled_from(PURPOSES), st.integers(0, 5)), max_size=12))
def test_a_model_in_another_order_is_read_as_casbin_reads_it(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, int]]
) -> None:
    path = tmp_path_factory.mktemp("model") / "reordered.conf"
    path.write_text(REORDERED)
    rule = GrantRule.load(path)
    lines = [line for s, p, n in rows for line in rule.lines(f"GR-{n}", p, (s,))]
    answers = rule.answers(lines)
    enforcer = rule.enforcer(lines)
    for s, p in itertools.product(SYSTEMS, PURPOSES):
        allowed, line = enforcer.enforce_ex(p, s)
        assert answers.get(rule.ask(s, p)) == (tuple(line) if allowed else None), (s, p)


def _model(matcher: str, *, effect: str = "some(where (p.eft == allow))", extra: str = "") -> str:
    return (
        "[request_definition]\nr = system, purpose\n[policy_definition]\np = system, purpose, grant\n"
        f"{extra}[policy_effect]\ne = {effect}\n[matchers]\nm = {matcher}\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        _model("r.system == p.system || r.purpose == p.purpose"),
        _model("r.system == p.system"),
        _model("r.system == p.system && keyMatch(r.purpose, p.purpose)"),
        _model("r.system == p.system && r.purpose == p.system"),
        _model("r.system == p.system && r.purpose == p.purpose", effect="!some(where (p.eft == deny))"),
        _model("g(r.system, p.system) && r.purpose == p.purpose", extra="[role_definition]\ng = _, _\n"),
    ],
    ids=["or", "purpose-ignored", "key-match", "purpose-against-system", "deny-effect", "roles"],
)
def test_a_model_the_decision_point_cannot_read_as_equalities_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "grants.conf"
    path.write_text(text)
    with pytest.raises(UnsupportedModel):
        GrantRule.load(path)


def test_the_shipped_model_is_read() -> None:
    rule = GrantRule.load()
    assert (rule.request, rule.policy) == (("system", "purpose"), ("system", "purpose", "grant"))
