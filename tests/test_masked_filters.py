"""Filtering on a masked item: a right of its own, and a bounded verification when granted.

The attack: a consumer holding a masked ID number (``350203********4313``) tries, through a
filterable ID field, every birth date that fits the check digit. Before this, the full number came
back at guess 186, inside a daily quota of 300. These tests run the same attack against a real hub.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from exchange import models as m
from exchange import wire as w
from exchange.store import Store
from exchange.store.counters import Verdict
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import rights_pb2 as rpb
from exchange.validation import id_number_check
from policy.masks import mask
from policy.quota import DailyQuota
from tests.exchange_world import LOOKUP, REGISTRY, World, fails, make_world, query
from tests.harness import POLICE, RunningHub, identity_spec, reason_of

PREFIX, SEQUENCE = "350203", "431"
QUOTA = 300
MASK = (("id_number", rpb.MASK_KIND_ID_NUMBER),)


def _candidates() -> list[str]:
    """Every ID number of PREFIX and SEQUENCE whose check character is 3, by birth date: what the masked
    value ``350203********4313`` leaves to guess."""
    out = []
    day = dt.date(1950, 1, 1)
    while day < dt.date(2012, 1, 1):
        first17 = f"{PREFIX}{day:%Y%m%d}{SEQUENCE}"
        if id_number_check(first17) == "3":
            out.append(first17 + "3")
        day += dt.timedelta(days=1)
    return out


CANDIDATES = _candidates()
# The person the consumer holds the masked number of: the 186th guess, as in the report.
VICTIM = CANDIDATES[185]
OTHERS = ("110101199003071234", "44030419850615201X")  # other residents of the front-end database


@pytest.fixture
def world(hub: RunningHub, tmp_path: Path) -> World:
    world = make_world(hub)
    url = f"sqlite:///{tmp_path / 'ga-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE rk (name TEXT, id_number TEXT)"))
        people = [("张三", VICTIM), *(("李四", n) for n in OTHERS)]
        c.execute(text("INSERT INTO rk VALUES (:name, :id)"), [{"name": n, "id": i} for n, i in people])
    engine.dispose()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING, filterable=True),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
    )
    world.publish("police", identity_spec(LOOKUP, POLICE.code, data_items=items))
    world.bind("police", cpb.Binding(resource_code=LOOKUP, sql=cpb.SqlBackend(url=url, table="rk")))
    return world


def _lookup(number: str) -> xpb.QueryRequest:
    return query(LOOKUP, {"id_number": number}, ["name", "id_number"])


def _usage(world: World, grant: str, who: str) -> rpb.Grant:
    with world.hub.client(world.people[who]) as c:
        shown: rpb.Grant = c.call(c.rights.GetGrant, rpb.GetGrantRequest(id=grant))
    return shown


def _metric(world: World, name: str, **labels: str) -> float:
    value = world.hub.hub.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_guessing_the_hidden_digits_of_a_masked_id_number_recovers_nothing(world: World) -> None:
    assert len(CANDIDATES) > 2000 and CANDIDATES.index(VICTIM) < QUOTA - 1  # the quota alone let it through
    masked = str(mask(VICTIM, m.MaskKind.ID_NUMBER))
    assert masked == "350203********4313" and all(mask(c, m.MaskKind.ID_NUMBER) == masked for c in CANDIDATES)
    # The worst case: the owner lets the masked ID number be filtered on, to verify numbers the registry holds.
    grant = world.grant(LOOKUP, ("name", "id_number"), "police", MASK, quota=QUOTA, verify_masked=("id_number",))
    stub = world.exchange()
    found: list[str] = []
    outcomes: Counter[str] = Counter()
    for guess in CANDIDATES[: QUOTA - 1]:  # a day's quota of guesses, in birth-date order
        try:
            answer = stub.Query(_lookup(guess), timeout=20)
        except grpc.RpcError as e:
            assert isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            outcomes[reason_of(e)] += 1
            continue
        if answer.records:
            found.append(guess)
        else:
            outcomes["miss"] += 1
    assert found == []
    assert outcomes == {"miss": 3, "MASKED_FILTER_ENUMERATION": QUOTA - 1 - 3}
    # The pattern stays closed for the day, to the right number too: its owner is alerted.
    refused = fails(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Query, _lookup(VICTIM))
    assert reason_of(refused) == "MASKED_FILTER_ENUMERATION"
    assert "same visible parts found nothing today" in (refused.details() or "")
    labels = {"consumer_department": REGISTRY.code, "resource": LOOKUP}
    assert _metric(world, "exchange_masked_filter_enumerations_total", **labels) == QUOTA - 3
    # The owner's steward sees the verifications, the misses and the refusals, and so does the consuming
    # department (its own use).
    usage = _usage(world, grant, "police").usage
    assert (usage.calls, usage.verifications, usage.misses, usage.refused) == (QUOTA, 3, 3, QUOTA - 3)
    assert usage.miss_allowance == 5
    assert _usage(world, grant, "consumer").usage == usage
    # Nothing of the guesses is kept but keyed hashes: no candidate is in the store's counters.
    store = Store(world.hub.settings.effective_database_url)
    try:
        with store.db.read() as s:
            scopes = " ".join(r[0] for r in s.execute(text("SELECT scope FROM masked_filter_counts")))
    finally:
        store.close()
    assert "pattern:" in scopes and PREFIX not in scopes and "4313" not in scopes


def test_misses_are_bounded_per_day_and_a_hit_costs_none(world: World) -> None:
    grant = world.grant(LOOKUP, ("name", "id_number"), "police", MASK, quota=100, verify_masked=("id_number",))
    stub = world.exchange()
    for _ in range(6):  # verifying numbers the registry holds: each finds its record and uses no allowance
        assert [r.fields["id_number"].string_value for r in stub.Query(_lookup(VICTIM), timeout=20).records] == [
            "350203********4313"
        ]
    # Numbers of five different patterns that find nothing: the day's allowance of misses.
    first17 = [f"{region}19800101123" for region in ("110101", "120101", "130101", "140101", "150101")]
    strangers = [d + id_number_check(d) for d in first17]
    assert len({mask(s, m.MaskKind.ID_NUMBER) for s in strangers}) == 5
    for number in strangers:
        assert not stub.Query(_lookup(number), timeout=20).records
    for number in (strangers[0], VICTIM, OTHERS[0]):  # beyond it, every lookup on the masked item waits a day
        error = fails(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Query, _lookup(number))
        assert reason_of(error) == "MASKED_FILTER_MISSES_EXHAUSTED"
        assert "5 lookups on masked items that find nothing today" in (error.details() or "")
    # Other filters are not verifications: a lookup by name still answers, the number masked.
    (record,) = stub.Query(query(LOOKUP, {"name": "张三"}, ["id_number"]), timeout=20).records
    assert record.fields["id_number"].string_value == "350203********4313"
    usage = _usage(world, grant, "police").usage
    assert (usage.verifications, usage.misses, usage.refused) == (11, 5, 3)
    labels = {"consumer_department": REGISTRY.code, "resource": LOOKUP}
    assert _metric(world, "exchange_masked_filter_refusals_total", reason="misses_exhausted", **labels) == 3
    assert _metric(world, "exchange_masked_filter_enumerations_total", **labels) == 0


def test_filtering_on_a_masked_item_without_the_term_is_refused_and_audited(world: World) -> None:
    grant = world.grant(LOOKUP, ("name", "id_number"), "police", MASK)
    stub = world.exchange()
    error = fails(grpc.StatusCode.PERMISSION_DENIED, stub.Query, _lookup(VICTIM))
    assert reason_of(error) == "MASKED_FILTER_NOT_GRANTED"
    details = error.details() or ""
    assert f"id_number is masked under grant {grant}" in details and "verify_masked" in details
    # Reading the masked item, found by another filter, is what the grant gives.
    (record,) = stub.Query(query(LOOKUP, {"name": "张三"}, ["id_number"]), timeout=20).records
    assert record.fields["id_number"].string_value == "350203********4313"
    world.hub.hub.audit.flush()
    with world.hub.client(world.people["auditor"]) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(outcome="denied", actor="system/bdc-djxt"))
    (record_,) = [json.loads(e.record) for e in found.entries]
    assert record_["reason"].startswith("masked_filter_not_granted: id_number is masked under grant")
    assert record_["resource"] == LOOKUP and VICTIM not in json.dumps(record_)
    assert _usage(world, grant, "police").usage.refused == 1
    labels = {"consumer_department": REGISTRY.code, "resource": LOOKUP, "reason": "not_granted"}
    assert _metric(world, "exchange_masked_filter_refusals_total", **labels) == 1


def test_only_a_masked_item_may_be_named_for_verification(world: World) -> None:
    app = m.Application(
        LOOKUP, "", ("bdc-djxt",), "不动产转移登记", "细则", ("name", "id_number"),
        dt.date.today(), dt.date.today() + dt.timedelta(days=30), 100,
    )  # fmt: skip
    with world.hub.client(world.people["consumer"]) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    masks = [rpb.FieldMask(field="id_number", mask=rpb.MASK_KIND_ID_NUMBER)]
    with world.hub.client(world.people["police"]) as c:
        for verify in (["name"], ["id_number", "id_number"]):
            approval = rpb.ApproveRequest(id=applied.id, masks=masks, reason="x", verify_masked=verify)
            with pytest.raises(grpc.RpcError) as info:
                c.call(c.rights.Approve, approval)
            assert "verify_masked" in str(info.value)
        approval = rpb.ApproveRequest(id=applied.id, masks=masks, reason="x", verify_masked=["id_number"])
        assert list(c.call(c.rights.Approve, approval).verify_masked) == ["id_number"]
    with world.hub.client(world.people["manager"]) as c:
        issued = c.call(c.rights.IssueGrant, rpb.IssueGrantRequest(request_id=applied.id))
    assert list(issued.verify_masked) == ["id_number"]


# The counters in the store: hub-wide and kept across restarts (SQLite and PostgreSQL).

DAY = dt.date(2026, 11, 24)


def test_quota_leases_are_shared_by_processes_and_survive_a_restart(store: Store) -> None:
    other = Store(store.db.url)  # a second hub process on the same database
    try:
        quotas = [DailyQuota(store.counters, block=7), DailyQuota(other.counters, block=7)]
        taken = [0, 0]

        def use(n: int) -> None:
            while quotas[n].take("GR-1", 100, DAY):
                taken[n] += 1

        threads = [threading.Thread(target=use, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(taken) == 100 and store.counters.leased("GR-1", DAY) == 100
        assert quotas[0].spent("GR-1", DAY) and quotas[1].spent("GR-1", DAY)
    finally:
        other.close()
    # A process that crashed holding a lease: its calls stay used. One that stops cleanly gives them back.
    crashed = DailyQuota(store.counters, block=5)
    assert crashed.take("GR-2", 50, DAY)  # leased 5, used 1
    restarted = Store(store.db.url)
    try:
        assert restarted.counters.leased("GR-2", DAY) == 5
        clean = DailyQuota(restarted.counters, block=5)
        assert clean.take("GR-2", 50, DAY)
        clean.release_all()
        assert restarted.counters.leased("GR-2", DAY) == 6
        assert restarted.counters.lease("GR-2", DAY + dt.timedelta(days=1), 50, 50) == 50  # a new day, a new quota
    finally:
        restarted.close()


def test_masked_filter_counts_are_shared_by_processes_and_survive_a_restart(store: Store) -> None:
    other = Store(store.db.url)
    limited = [("grant:GR-1", 5), ("system:bdc-djxt", 5)]
    try:
        verdicts = [
            (store if n % 2 else other).counters.reserve_miss(DAY, limited, [f"pattern:{n}"], 3) for n in range(6)
        ]
        assert verdicts == [Verdict.RESERVED] * 5 + [Verdict.MISSES_EXHAUSTED]
        other.counters.refund_miss(DAY, ["grant:GR-1", "system:bdc-djxt", "pattern:0"])  # a hit
    finally:
        other.close()
    restarted = Store(store.db.url)
    try:
        counts = restarted.counters.counts("grant:GR-1", DAY)
        assert (counts.lookups, counts.misses, counts.refused) == (5, 4, 1)
        assert restarted.counters.reserve_miss(DAY, limited, ["pattern:7"], 3) is Verdict.RESERVED
        for _ in range(2):
            assert restarted.counters.reserve_miss(DAY, [("grant:GR-2", 5)], ["pattern:x"], 3) is Verdict.RESERVED
        # The third miss on one pattern fills it; the fourth lookup on it is an enumeration.
        assert restarted.counters.reserve_miss(DAY, [("grant:GR-3", 5)], ["pattern:x"], 3) is Verdict.RESERVED
        assert restarted.counters.reserve_miss(DAY, [("grant:GR-3", 5)], ["pattern:x"], 3) is Verdict.ENUMERATION
        assert restarted.counters.counts("pattern:x", DAY + dt.timedelta(days=1)).misses == 0
    finally:
        restarted.close()
