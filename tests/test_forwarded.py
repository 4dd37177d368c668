"""Forwarded-call statements: what a hub signs when it passes a call on, and each reason the next hub refuses one."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from audit.forwarded import LIFETIME, Forwarded, ForwardError, check, issue, next_hop, request_digest
from audit.note import Signer

NOW = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
REQUEST = b"\x0a\x1210101/350200000001"
COUNTY = Signer.generate("hub.350203.example/audit")
CITY = Signer.generate("hub.350200.example/audit")


def _statement(**changes: object) -> Forwarded:
    base = Forwarded(
        sender="350203",
        receiver="350200",
        home="350000",
        resource="10101/350000000001",
        call="query",
        department="11350203MB0011111X",
        system="sm-tax-01",
        purpose="不动产转移登记",
        path=("350203",),
        exchanges=("EX" + "1" * 27,),
        hops_left=3,
        request=request_digest(REQUEST),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Seen:
    def __init__(self) -> None:
        self.ids: dict[str, dt.datetime] = {}

    def __call__(self, statement_id: str, expires: dt.datetime) -> bool:
        before = statement_id in self.ids
        self.ids[statement_id] = expires
        return before


def _check(note: str, me: str = "350200", now: dt.datetime = NOW, seen: Seen | None = None) -> Forwarded:
    return check(note, COUNTY.verifier(), me=me, request=REQUEST, now=now, seen=seen or Seen())


def test_a_statement_round_trips_and_names_who_asks() -> None:
    got = _check(issue(COUNTY, _statement(), NOW))
    assert (got.department, got.system, got.purpose, got.origin) == (
        "11350203MB0011111X",
        "sm-tax-01",
        "不动产转移登记",
        "350203",
    )
    assert got.expires == "2026-12-04T10:01:00Z" and len(got.id) == 32


def test_each_statement_is_accepted_once() -> None:
    note, seen = issue(COUNTY, _statement(), NOW), Seen()
    _check(note, seen=seen)
    with pytest.raises(ForwardError) as e:
        _check(note, seen=seen)
    assert e.value.reason == "replay"
    assert _check(issue(COUNTY, _statement(), NOW), seen=seen).id != next(iter(seen.ids))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("signed by another hub", "signature"),
        ("altered after signing", "signature"),
        ("addressed to another hub", "receiver"),
        ("for another request", "request"),
        ("expired", "expired"),
        ("from the future", "time"),
        ("back through this hub", "loop"),
        ("no hops left", "hops"),
    ],
)
def test_refusals_say_why(case: str, reason: str) -> None:
    note, me, now, request = issue(COUNTY, _statement(), NOW), "350200", NOW, REQUEST
    if case == "signed by another hub":
        note = issue(CITY, _statement(), NOW)
    elif case == "altered after signing":
        note = note.replace("purpose 不动产转移登记", "purpose 其他用途")
    elif case == "addressed to another hub":
        me = "350000"
    elif case == "for another request":
        request = REQUEST + b"x"
    elif case == "expired":
        now = NOW + LIFETIME + dt.timedelta(minutes=1)
    elif case == "from the future":
        now = NOW - dt.timedelta(minutes=5)
    elif case == "back through this hub":
        note = issue(COUNTY, _statement(path=("350200", "350203"), exchanges=("EXa", "EXb")), NOW)
    elif case == "no hops left":
        note = issue(COUNTY, _statement(hops_left=0), NOW)
    with pytest.raises(ForwardError) as e:
        check(note, COUNTY.verifier(), me=me, request=request, now=now, seen=Seen())
    assert e.value.reason == reason, str(e.value)


def test_the_next_hop_carries_the_path_and_one_hop_less() -> None:
    received = _check(issue(COUNTY, _statement(), NOW))
    onward = next_hop(received, "350200", "EX" + "2" * 27, "350000")
    got = check(issue(CITY, onward, NOW), CITY.verifier(), me="350000", request=REQUEST, now=NOW, seen=Seen())
    assert got.path == ("350203", "350200") and got.exchanges == ("EX" + "1" * 27, "EX" + "2" * 27)
    assert got.hops_left == 2 and got.sender == "350200" and got.department == "11350203MB0011111X"


def test_a_malformed_statement_is_refused_before_signing() -> None:
    with pytest.raises(ForwardError):
        issue(COUNTY, _statement(call="delete"), NOW)
    with pytest.raises(ForwardError):
        issue(COUNTY, _statement(path=("350200",)), NOW)
    with pytest.raises(ForwardError):
        issue(COUNTY, _statement(purpose="two\nlines"), NOW)


def test_share_requests_across_hubs_use_calls_of_their_own_and_an_unknown_call_is_refused() -> None:
    applied = _check(issue(COUNTY, _statement(call="apply", system="person/sm-clerk"), NOW))
    assert (applied.call, applied.system) == ("apply", "person/sm-clerk")
    asked = _check(issue(COUNTY, _statement(call="status", resource="", department="", system="", purpose=""), NOW))
    assert (asked.call, asked.resource, asked.department) == ("status", "", "")
    with pytest.raises(ForwardError) as refused:
        issue(COUNTY, _statement(call="revoke"), NOW)
    assert refused.value.reason == "malformed"
