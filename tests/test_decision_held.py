"""Deciding on the event loop from what the hub holds: the same answers as a decision that may wait,
and, when it cannot be made without waiting, nothing counted (the caller decides again in a thread)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from exchange import models as m
from exchange.services.cache import Cache, NotHeld, held_only, holding_only
from policy.decision import DecisionPoint, DenyReason
from policy.quota import DailyQuota, LocalLeases
from tests.test_decision import PUBLISHED, TODAY, _ask, _grant


def _point(**grant: object) -> tuple[DecisionPoint, LocalLeases]:
    leases = LocalLeases()  # stands for the store's shared counter
    return DecisionPoint([_grant("GR-1", **grant)], quota=DailyQuota(leases, block=2)), leases


def test_a_held_decision_uses_only_a_leased_block_and_counts_like_one_that_waits() -> None:
    point, leases = _point(daily_quota=20)  # blocks of 2 calls
    assert point.decide_held(_ask(), PUBLISHED, TODAY) is None  # no block yet: the counter would be asked
    assert leases.leased("GR-1", TODAY) == 0
    answers, held_ones = [], 0
    for _ in range(24):  # held when a block has calls left, otherwise decided as in a thread
        held = point.decide_held(_ask(), PUBLISHED, TODAY)
        held_ones += held is not None and held.allowed
        answers.append((held or point.decide(_ask(), PUBLISHED, TODAY)).allowed)
    assert answers == [True] * 20 + [False] * 4 and leases.leased("GR-1", TODAY) == 20
    assert held_ones == 10  # every second call: the other leased the block
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.QUOTA_EXHAUSTED


def test_denials_are_answered_held_without_the_counter() -> None:
    point, leases = _point()
    cases = [
        (_ask(system="other-sys"), DenyReason.NO_GRANT),
        (_ask(purpose="企业开办"), DenyReason.WRONG_PURPOSE),
        (_ask(fields=("id_number", "address")), DenyReason.FIELD_NOT_GRANTED),
        (_ask(filters=("id_number",)), DenyReason.MASKED_FILTER_NOT_GRANTED),
    ]
    for question, reason in cases:
        decision = point.decide_held(question, PUBLISHED, TODAY)
        assert decision is not None and decision.reason is reason, question
    suspended = point.decide_held(_ask(), m.ResourceStatus.SUSPENDED, TODAY)
    assert suspended is not None and suspended.reason is DenyReason.RESOURCE_SUSPENDED
    assert leases.leased("GR-1", TODAY) == 0


def test_a_lookup_on_a_masked_item_it_may_verify_is_left_to_the_thread() -> None:
    point, _ = _point(verify_masked=("id_number",), daily_quota=100)
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed  # a block is held now
    verifying = _ask(filters=("id_number",))
    assert point.decide_held(verifying, PUBLISHED, TODAY) is None
    assert point.decide(verifying, PUBLISHED, TODAY).verifying == (("id_number", m.MaskKind.ID_NUMBER),)


def test_the_rate_token_goes_back_when_the_call_is_decided_again() -> None:
    grant = _grant(rate_per_second=1, daily_quota=10)
    point = DecisionPoint([grant], clock=lambda: 100.0, quota=DailyQuota(LocalLeases(), block=1))
    assert point.decide_held(_ask(), PUBLISHED, TODAY) is None  # took the one token, then gave it back
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed  # so the call decided in the thread has it
    assert point.decide(_ask(), PUBLISHED, TODAY).reason is DenyReason.RATE_LIMITED


def test_a_busy_lock_is_not_waited_for() -> None:
    point, _ = _point(daily_quota=100)  # blocks of 2 calls
    assert point.decide(_ask(), PUBLISHED, TODAY).allowed
    reading, release = threading.Event(), threading.Event()

    def slow_load(grant_id: str) -> m.Grant:  # a refresh reading the store, under the point's lock
        reading.set()
        release.wait(10)
        return _grant(daily_quota=100)

    refresher = threading.Thread(target=point.refresh, args=("GR-1", slow_load))
    refresher.start()
    try:
        assert reading.wait(10)
        assert point.decide_held(_ask(), PUBLISHED, TODAY) is None
    finally:
        release.set()
        refresher.join(10)
    assert point.decide_held(_ask(), PUBLISHED, TODAY) is not None


def test_a_cache_holding_only_refuses_to_load() -> None:
    cache: Cache[str, str] = Cache()
    loads: list[str] = []

    def load(key: str) -> str:
        loads.append(key)
        return key.upper()

    assert cache.get("a", load) == "A"
    with holding_only():
        assert held_only() and cache.get("a", load) == "A"
        with pytest.raises(NotHeld):
            cache.get("b", load)
    assert not held_only() and cache.get("b", load) == "B" and loads == ["a", "b"]


def test_a_question_is_the_same_either_way() -> None:
    waits, _ = _point(daily_quota=100)
    holds, _ = _point(daily_quota=100)
    questions = [_ask(), _ask(fields=("name",)), _ask(system="x"), replace(_ask(), purpose="企业开办")]
    for question in questions * 3:
        waited = waits.decide(question, PUBLISHED, TODAY)
        held = holds.decide_held(question, PUBLISHED, TODAY) or holds.decide(question, PUBLISHED, TODAY)
        assert (held.allowed, held.reason, held.masks) == (waited.allowed, waited.reason, waited.masks)


def test_the_next_block_is_leased_ahead_once_half_of_one_is_left() -> None:
    leases = LocalLeases()
    quota = DailyQuota(leases, block=4)
    assert quota.ahead("GR-1", TODAY) is None  # nothing leased yet: the first block is leased when needed
    assert quota.take("GR-1", 100, TODAY)  # a block of 4, 3 left
    assert quota.ahead("GR-1", TODAY) is None
    assert quota.take_held("GR-1", TODAY)  # 2 left: half a block
    work = quota.ahead("GR-1", TODAY)
    assert work is not None and quota.ahead("GR-1", TODAY) is None  # one lease ahead at a time
    work()
    assert leases.leased("GR-1", TODAY) == 12  # the first block lasted under a second: the next is twice as large
    assert [quota.take_held("GR-1", TODAY) for _ in range(11)] == [True] * 10 + [False]
    assert quota.ahead("GR-1", TODAY) is not None  # done, so the next may be leased


def test_blocks_grow_while_a_grant_is_busy_within_bounds_and_start_again_when_it_is_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("policy.quota.time.monotonic", lambda: now[0])
    leases = LocalLeases()
    quota = DailyQuota(leases, block=4)

    def block(daily: int) -> int:
        """Uses the held block up, then takes one call: the size of the block that call leased."""
        while quota.take_held("GR-1", TODAY):
            pass
        before = leases.leased("GR-1", TODAY)
        assert quota.take("GR-1", daily, TODAY)
        return leases.leased("GR-1", TODAY) - before

    assert [block(10_000) for _ in range(7)] == [4, 8, 16, 32, 64, 64, 64]  # at most 16 times the setting
    assert block(400) == 40  # never more than a tenth of the quota
    now[0] += 1.0
    assert block(10_000) == 4  # a block that lasted a second or more: back to the setting
