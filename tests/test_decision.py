"""The data-plane decision: allow with grant, fields and masks, or deny with the precise reason."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

from exchange import models as m
from policy.decision import Decision, DecisionPoint, DenyReason, Question
from policy.quota import DailyQuota, LocalLeases

TODAY = dt.date(2026, 11, 23)
PUBLISHED = m.ResourceStatus.PUBLISHED
CONSUMER = "11350200MB00456789"


def _grant(gid: str = "GR-1", **changes: object) -> m.Grant:
    grant = m.Grant(
        id=gid,
        request_id=f"SR-{gid}",
        resource_code="10101/350200000001",
        consumer_department_code=CONSUMER,
        system_codes=("bdc-djxt",),
        fields=("name", "id_number"),
        purpose="不动产转移登记",
        legal_basis="细则第十一条",
        start=TODAY - dt.timedelta(days=10),
        end=TODAY + dt.timedelta(days=10),
        daily_quota=3,
        rate_per_second=0,
        masks=(("id_number", m.MaskKind.ID_NUMBER),),
        status=m.GrantStatus.ACTIVE,
        issued_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    )
    return replace(grant, **changes)  # type: ignore[arg-type]


def _ask(**changes: object) -> Question:
    q = Question("bdc-djxt", CONSUMER, "10101/350200000001", "不动产转移登记", ("id_number",))
    return replace(q, **changes)  # type: ignore[arg-type]


def test_allowed_with_the_grant_and_only_the_masks_of_asked_fields() -> None:
    point = DecisionPoint([_grant()])
    decision = point.decide(_ask(), PUBLISHED, TODAY)
    assert decision.allowed and decision.grant_id == "GR-1"
    assert decision.masks == (("id_number", m.MaskKind.ID_NUMBER),)
    assert point.decide(_ask(fields=("name",)), PUBLISHED, TODAY).masks == ()


def test_each_denial_names_its_reason() -> None:
    point = DecisionPoint([_grant()])
    cases = [
        (_ask(system="other-sys"), DenyReason.NO_GRANT),
        (_ask(department="11350200MB0023456P"), DenyReason.NO_GRANT),
        (_ask(resource="10101/350200000009"), DenyReason.NO_GRANT),
        (_ask(purpose="企业开办"), DenyReason.WRONG_PURPOSE),
        (_ask(fields=("id_number", "address")), DenyReason.FIELD_NOT_GRANTED),
    ]
    for question, reason in cases:
        decision = point.decide(question, PUBLISHED, TODAY)
        assert (decision.allowed, decision.reason) == (False, reason), question
    assert "address" in point.decide(cases[-1][0], PUBLISHED, TODAY).message
    suspended = point.decide(_ask(), m.ResourceStatus.SUSPENDED, TODAY)
    assert suspended.reason is DenyReason.RESOURCE_SUSPENDED
    assert point.decide(_ask(), PUBLISHED, TODAY + dt.timedelta(days=11)).reason is DenyReason.EXPIRED
    assert point.decide(_ask(), PUBLISHED, TODAY - dt.timedelta(days=11)).reason is DenyReason.NOT_YET_VALID


def test_suspension_resumption_and_revocation_take_effect_on_the_next_call() -> None:
    point = DecisionPoint([_grant()])
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed  # now cached
    point.update(_grant(status=m.GrantStatus.SUSPENDED))
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.SUSPENDED
    point.update(_grant(status=m.GrantStatus.ACTIVE))
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed
    point.update(_grant(status=m.GrantStatus.REVOKED))
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.NO_GRANT


def test_quota_is_per_grant_and_day() -> None:
    point = DecisionPoint([_grant()])
    assert [point.decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(4)] == [True, True, True, False]
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.QUOTA_EXHAUSTED
    assert point.decide(_ask(), PUBLISHED, TODAY + dt.timedelta(days=1)).allowed


def test_a_current_grant_is_preferred_to_an_expired_one() -> None:
    old = _grant("GR-old", start=TODAY - dt.timedelta(days=400), end=TODAY - dt.timedelta(days=35))
    point = DecisionPoint([old, _grant("GR-new")])
    assert point.decide(_ask(), PUBLISHED, TODAY).grant_id == "GR-new"
    later = TODAY + dt.timedelta(days=11)  # the new one has expired too: the cached answer must not stand
    assert point.decide(_ask(), PUBLISHED, later).reason is DenyReason.EXPIRED


def test_decisions_follow_the_grants_and_casbin_through_any_sequence_of_changes() -> None:
    rng = random.Random(7)
    systems, purposes = ["s1", "s2", "s3"], ["不动产转移登记", "企业开办", "社保转移"]
    point = DecisionPoint()
    latest: dict[str, m.Grant] = {}
    for i in range(80):
        gid = f"GR-{rng.randint(0, 15)}"  # grants change again and again
        grant = _grant(
            gid,
            system_codes=tuple(rng.sample(systems, rng.randint(1, 2))),
            purpose=rng.choice(purposes),
            status=rng.choice(list(m.GrantStatus)),
        )
        point.update(grant)
        latest[gid] = grant
        for s in systems:
            for p in purposes:
                q = _ask(system=s, purpose=p)
                expected = any(
                    g.status is m.GrantStatus.ACTIVE and s in g.system_codes and g.purpose == p for g in latest.values()
                )
                assert point.decide(q, PUBLISHED, TODAY, consume=False).allowed == expected, (i, s, p)
                assert point.casbin_agrees(q), (i, s, p)


def test_dry_runs_and_other_days_leave_todays_quota_alone() -> None:
    point = DecisionPoint([_grant()])
    assert all(point.decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(3))
    yesterday = TODAY - dt.timedelta(days=1)
    assert point.decide(_ask(), PUBLISHED, yesterday, consume=False).allowed
    assert point.decide(_ask(), PUBLISHED, yesterday).allowed  # a caller a time zone behind
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.QUOTA_EXHAUSTED
    assert point.decide(_ask(fields=()), PUBLISHED, TODAY + dt.timedelta(days=1)).reason is DenyReason.FIELD_NOT_GRANTED


def test_the_rate_is_limited_per_grant_with_a_one_second_burst() -> None:
    now = [100.0]
    point = DecisionPoint([_grant(rate_per_second=2, daily_quota=100)], clock=lambda: now[0])
    assert [point.decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(3)] == [True, True, False]
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.RATE_LIMITED
    now[0] += 0.5  # half a second brings one call back
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed
    assert not point.decide(_ask(), PUBLISHED, TODAY).allowed
    assert point.decide(_ask(), PUBLISHED, TODAY, consume=False).allowed  # a dry run is never limited


def test_a_masked_item_is_a_filter_only_when_the_grant_lets_it_be_verified() -> None:
    point = DecisionPoint([_grant()])
    refused = point.decide(_ask(filters=("id_number",)), PUBLISHED, TODAY)
    assert refused.reason is DenyReason.MASKED_FILTER_NOT_GRANTED and refused.grant_id == "GR-1"
    assert "id_number is masked under grant GR-1" in refused.message and "verify_masked" in refused.message
    plain = point.decide(_ask(fields=("name", "id_number"), filters=("name",)), PUBLISHED, TODAY)
    assert plain.allowed and plain.verifying == ()  # reading the masked item is what the grant gives
    point.update(_grant(verify_masked=("id_number",)))
    verifying = point.decide(_ask(filters=("id_number",)), PUBLISHED, TODAY)
    assert verifying.allowed and verifying.verifying == (("id_number", m.MaskKind.ID_NUMBER),)
    unmasked = DecisionPoint([_grant(masks=(("id_number", m.MaskKind.NONE),))])
    assert unmasked.decide(_ask(filters=("id_number",)), PUBLISHED, TODAY).verifying == ()


def test_quota_blocks_leased_by_two_points_never_add_up_to_more_than_the_quota() -> None:
    leases = LocalLeases()  # stands for the store both processes share
    points = [DecisionPoint([_grant(daily_quota=25)], quota=DailyQuota(leases, block=4)) for _ in range(2)]
    allowed = [points[n % 2].decide(_ask(), PUBLISHED, TODAY).allowed for n in range(40)]
    assert allowed.count(True) == 25 and not any(allowed[25:])
    assert points[0].decide(_ask(), PUBLISHED, TODAY, consume=False).reason is DenyReason.QUOTA_EXHAUSTED


def test_the_quota_refusal_names_the_grant_its_use_and_when_it_resets() -> None:
    point = DecisionPoint([_grant("GR-20261123-0001")], quota=DailyQuota(LocalLeases(), block=2))
    assert [point.decide(_ask(), PUBLISHED, TODAY).allowed for _ in range(3)] == [True] * 3
    for _ in range(2):  # found used up by a lease, then known to this point
        refused = point.decide(_ask(), PUBLISHED, TODAY)
        assert refused.reason is DenyReason.QUOTA_EXHAUSTED
        assert refused.message == (
            "grant GR-20261123-0001 has used its daily quota of 3 calls (3 used); it resets at 2026-11-24 00:00 UTC"
        )


def test_a_questions_kept_terms_follow_every_change_of_its_grant_on_the_next_call() -> None:
    """The terms kept per question (masks, verification, fields) are dropped with any grant change, held or not."""

    def waited(point: DecisionPoint, q: Question) -> Decision:
        return point.decide(q, PUBLISHED, TODAY)

    def held(point: DecisionPoint, q: Question) -> Decision:  # held when a leased block has calls left
        return point.decide_held(q, PUBLISHED, TODAY) or point.decide(q, PUBLISHED, TODAY)

    for decide in (waited, held):
        point = DecisionPoint([_grant(daily_quota=1000)], quota=DailyQuota(LocalLeases(), block=2))
        ask, lookup = _ask(fields=("name", "id_number")), _ask(filters=("id_number",))
        for _ in range(3):  # the first call finds the grant, the others use what was kept
            assert decide(point, ask).masks == (("id_number", m.MaskKind.ID_NUMBER),)
            assert decide(point, lookup).reason is DenyReason.MASKED_FILTER_NOT_GRANTED
        point.update(_grant(daily_quota=1000, masks=(("name", m.MaskKind.NAME),)))
        assert decide(point, ask).masks == (("name", m.MaskKind.NAME),)
        assert decide(point, lookup).allowed  # no longer masked, so no longer a masked filter
        point.update(_grant(daily_quota=1000, fields=("name",)))
        assert decide(point, ask).reason is DenyReason.FIELD_NOT_GRANTED
        point.update(_grant(daily_quota=1000, end=TODAY - dt.timedelta(days=1)))
        assert decide(point, _ask(fields=("name",))).reason is DenyReason.EXPIRED
        point.update(_grant(daily_quota=1000))
        assert decide(point, _ask(fields=("name",))).allowed
        point.replace_all(lambda: [_grant(daily_quota=1000, status=m.GrantStatus.SUSPENDED)])
        assert decide(point, _ask(fields=("name",))).reason is DenyReason.SUSPENDED
