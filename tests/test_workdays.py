"""Working days for the 10-working-day answer: the State Council's notices from the chinesecalendar package,
the operator's calendar file over them, and a year no calendar covers counted Monday to Friday, never silently.

Due dates are checked through the rights service (apply on a given day → due date), on a real store; the
note on an uncovered year through a real hub (the wire and the `exchange` command), its log and its metric.
Years from 2090 on stand for years no calendar covers: the package will not have them for a long time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from exchange import models as m
from exchange import wire as w
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.demo import sample_id_number
from exchange.cli.main import main
from exchange.errors import ConfigError
from exchange.pki import create_ca
from exchange.server.app import Hub
from exchange.services.catalog import CatalogService
from exchange.services.registry import CertificateAuthority, RegistryService
from exchange.services.rights import RightsService
from exchange.store import Store
from exchange.store.schema import ShareRequestRow
from exchange.v1 import rights_pb2 as pb
from exchange.v1 import rights_pb2_grpc
from exchange.workdays import WorkCalendar
from policy import RightsPolicy, assignments_of
from tests.harness import AUTHORITY, HOUSING, POLICE, TEST_RECORD, RunningHub, base_settings, identity_spec, running_hub

D = dt.date.fromisoformat
IDENTITY = "10101/350200000001"
OPERATOR = m.Principal(
    m.PrincipalRef(m.PrincipalKind.PERSON, "op-admin"), "运维", AUTHORITY.code, frozenset({m.Role.OPERATOR})
)
MONDAY_TO_FRIDAY = "not in any calendar: Monday to Friday assumed"


def _calendar_file(tmp_path: Path, text: str, name: str = "calendar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# The rights service on a real store, with a clock the test sets: apply on a day, read the due date.


class Applying:
    def __init__(self, store: Store, calendar: WorkCalendar) -> None:
        self.now = dt.datetime(2026, 1, 5, 2, tzinfo=dt.UTC)
        policy = RightsPolicy()
        key, cert = create_ca("workdays test CA")
        registry = RegistryService(store, CertificateAuthority.of(key, cert), policy, 30)
        store.registry.add_department(AUTHORITY, audit=TEST_RECORD)
        store.registry.add_person(
            m.Person("op-admin", "运维", AUTHORITY.code, frozenset({m.Role.OPERATOR})), audit=TEST_RECORD
        )
        policy.assign(assignments_of(OPERATOR.ref, AUTHORITY.code, OPERATOR.roles))
        for member in (POLICE, HOUSING):
            registry.create_department(OPERATOR, member)
        registry.create_system(OPERATOR, m.System("zj-sys", "住建系统", HOUSING.code))
        people = {}
        for username, department, role in (
            ("ga-owner", POLICE.code, m.Role.OWNER_STEWARD),
            ("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        ):
            person = m.Person(username, username, department, frozenset({role}))
            registry.create_person(OPERATOR, person, sample_id_number(username))
            people[username] = m.Principal(
                m.PrincipalRef(m.PrincipalKind.PERSON, username), username, department, person.roles
            )
        CatalogService(store, policy).create(people["ga-owner"], identity_spec(IDENTITY), True, "")
        self.consumer = people["zj-clerk"]
        self.rights = RightsService(store, policy, calendar, 1096, clock=lambda: self.now)

    def due(self, applied: dt.date) -> dt.date:
        """The due date of a conditional request applied for on ``applied`` (09:30 in Beijing)."""
        self.now = dt.datetime.combine(applied, dt.time(1, 30), tzinfo=dt.UTC)
        application = m.Application(
            resource_code=IDENTITY,
            consumer_department_code="",
            system_codes=("zj-sys",),
            purpose="不动产转移登记",
            legal_basis="《不动产登记暂行条例实施细则》第十一条",
            fields=("name",),
            start=applied,
            end=applied + dt.timedelta(days=365),
            expected_daily_calls=10,
        )
        request = self.rights.apply(self.consumer, application)
        assert request.status is m.ShareRequestStatus.PENDING
        return request.due


@pytest.fixture
def applying(tmp_path: Path) -> Iterator[Callable[[WorkCalendar], Applying]]:
    stores: list[Store] = []

    def make(calendar: WorkCalendar) -> Applying:
        store = Store(f"sqlite:///{tmp_path / f'store{len(stores)}.db'}")
        stores.append(store)
        store.db.migrate()
        return Applying(store, calendar)

    yield make
    for store in stores:
        store.close()


# The State Council's notice for 2026 (国办发明电〔2025〕7号), as the package carries it.
NOTICE_2026 = [
    # National Day and Mid-autumn: 10-01..10-07 off (and 09-25), 10-10 (Saturday) worked; the hub said 10-12.
    (D("2026-09-28"), D("2026-10-16")),
    # Spring Festival: 02-15..02-23 off, 02-14 and 02-28 (Saturdays) worked; the hub said 02-24.
    (D("2026-02-10"), D("2026-03-02")),
    # Make-up working days count, and a deadline can fall on one: Sunday 01-04, Saturday 02-14, Sunday
    # 09-20, Saturday 10-10.
    (D("2025-12-18"), D("2026-01-04")),
    (D("2026-02-02"), D("2026-02-14")),
    (D("2026-09-07"), D("2026-09-20")),
    (D("2026-09-20"), D("2026-10-10")),
    # Labour Day: 05-01..05-05 off, Saturday 05-09 worked.
    (D("2026-04-22"), D("2026-05-09")),
]


def test_due_dates_follow_the_state_councils_2026_notice(applying: Callable[[WorkCalendar], Applying]) -> None:
    calendar = WorkCalendar.mainland()
    assert calendar.covers(2025) and calendar.covers(2026)
    assert calendar.sources[0].startswith("chinesecalendar ")
    service = applying(calendar)
    assert [(applied, service.due(applied)) for applied, _ in NOTICE_2026] == NOTICE_2026
    for saturday_or_sunday in (D("2026-01-04"), D("2026-02-14"), D("2026-02-28"), D("2026-09-20"), D("2026-10-10")):
        assert saturday_or_sunday.weekday() >= 5 and calendar.is_working_day(saturday_or_sunday)
    for weekday_off in (D("2026-02-16"), D("2026-02-23"), D("2026-09-25"), D("2026-10-07")):
        assert weekday_off.weekday() < 5 and not calendar.is_working_day(weekday_off)
    for applied, due in NOTICE_2026:
        assert calendar.due_note(applied, due) == ""


def test_a_year_no_calendar_covers_is_counted_monday_to_friday_with_a_note(
    applying: Callable[[WorkCalendar], Applying],
) -> None:
    calendar = WorkCalendar.mainland()
    assert not calendar.covers(2099)
    service = applying(calendar)
    assert service.due(D("2099-06-01")) == D("2099-06-15")  # a Monday: two weeks of Monday to Friday
    assert calendar.assumed_years(D("2099-06-01"), D("2099-06-15")) == (2099,)
    assert calendar.due_note(D("2099-06-01"), D("2099-06-15")) == f"2099 {MONDAY_TO_FRIDAY}"
    # Only the years the count runs through: applied on the last day of a covered year, it is the next.
    assert calendar.assumed_years(D("2098-12-31"), D("2099-01-14")) == (2099,)
    # A due date reckoned on an earlier calendar (the hub counted 2026 Monday to Friday before this one).
    assert calendar.due_note(D("2026-09-28"), D("2026-10-12")) == (
        "reckoned on an earlier calendar: by the current one due 2026-10-16"
    )


# The operator's calendar file: local days off, a year the package lacks, and it wins over the package.

COUNTY = """\
# 某县: its own days off, a year the package does not have yet, and where the county works otherwise.
years: [2099]
holidays:
  - 2026-09-29                # a county's own day off
  - 2026-10-10                # a make-up Saturday the county does not work
  - 2099-01-01
  - 2099-06-02..2099-06-04    # say, 端午 in 2099
workdays:
  - 2026-10-07                # the county works the last day of National Day
  - 2099-06-06                # a make-up Saturday
"""


def test_the_calendar_file_adds_days_and_wins_over_the_package(
    tmp_path: Path, applying: Callable[[WorkCalendar], Applying]
) -> None:
    calendar = WorkCalendar.mainland(_calendar_file(tmp_path, COUNTY))
    assert calendar.covers(2026) and calendar.covers(2099) and not calendar.covers(2098)
    assert any(s.startswith("calendar file ") and "years 2099" in s for s in calendar.sources)
    assert not calendar.is_working_day(D("2026-09-29"))  # added
    assert not calendar.is_working_day(D("2026-10-10"))  # the package's make-up Saturday, overridden
    assert calendar.is_working_day(D("2026-10-07"))  # the package's holiday, overridden
    assert calendar.is_working_day(D("2026-02-14"))  # the rest of the package stands
    service = applying(calendar)
    # 09-30, 10-07, 10-08, 10-09, 10-12 .. 10-16, 10-19: the county's count.
    assert service.due(D("2026-09-28")) == D("2026-10-19")
    # 2099 from the file: 06-02..06-04 off, Saturday 06-06 worked; no note, the year is covered.
    assert service.due(D("2099-06-01")) == D("2099-06-17")
    assert calendar.due_note(D("2099-06-01"), D("2099-06-17")) == ""
    # A file with local days only covers no year by them: 2098 stays Monday to Friday, said so.
    local = WorkCalendar.mainland(_calendar_file(tmp_path, "holidays: [2098-03-02]\n", "local.yaml"))
    assert not local.covers(2098) and not local.is_working_day(D("2098-03-02"))
    assert local.due_note(D("2098-03-01"), local.add_working_days(D("2098-03-01"), 10)) == f"2098 {MONDAY_TO_FRIDAY}"
    # An empty file changes nothing.
    assert WorkCalendar.mainland(_calendar_file(tmp_path, "", "empty.yaml")).is_working_day(D("2026-10-10"))


BAD_FILES = [
    ("holiday:\n  - 2026-10-01\n", ["unknown key 'holiday'", "the keys are years, holidays, workdays"]),
    ("holidays:\n  - 2026-02-30\n", ["holidays entry '2026-02-30'", "day is out of range for month"]),
    ("holidays:\n  - 2026-10-01..2026-1O-07\n", ["holidays entry '2026-10-01..2026-1O-07'", "not a date"]),
    ("workdays:\n  - 26-10-10\n", ["workdays entry '26-10-10'", "not a date YYYY-MM-DD"]),
    ("workdays:\n  - 20261010\n", ["workdays entry '20261010' is not a date YYYY-MM-DD"]),
    ("holidays:\n  - 2026-01-01 08:00:00\n", ["holidays entry '2026-01-01 08:00:00': not a date YYYY-MM-DD"]),
    (
        "holidays:\n  - 2026-01-01..2027-01-02\n",
        ["holidays range '2026-01-01..2027-01-02' spans 367 days", "at most 366 (one year)"],
    ),
    ("holidays:\n  - 2026-10-07..2026-10-01\n", ["holidays range '2026-10-07..2026-10-01' ends before it starts"]),
    ("holidays: 2026-10-01\n", ["holidays must be a list"]),
    (
        "holidays: [2026-10-01..2026-10-03]\nworkdays: [2026-10-02]\n",
        ["2026-10-02 is both a holiday (entry '2026-10-01..2026-10-03') and a working day (entry '2026-10-02')"],
    ),
    ("years: 2027\nholidays: [2027-01-01]\n", ["years must be a list of years"]),
    ("years: [twenty]\n", ["years entry 'twenty' is not a year"]),
    ("years: [2027]\nholidays: [2026-10-01]\n", ["years entry 2027: the file lists no holiday in 2027"]),
    ("- 2026-10-01\n", ["the top level must be a mapping"]),
    ("holidays: [2026-10-01\n", ["cannot be read"]),
]


@pytest.mark.parametrize(("text", "wanted"), BAD_FILES)
def test_a_bad_calendar_file_is_refused_naming_the_file_the_entry_and_the_fault(
    tmp_path: Path, text: str, wanted: list[str]
) -> None:
    path = _calendar_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        WorkCalendar.mainland(path)
    message = str(info.value)
    assert message.startswith(f"calendar file {path}"), message
    for part in wanted:
        assert part in message, message


def test_a_hub_with_a_bad_calendar_file_does_not_start(tmp_path: Path) -> None:
    settings = base_settings(tmp_path / "hub", calendar_file=_calendar_file(tmp_path, "holiday: []\n"))
    initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维"))
    with pytest.raises(ConfigError, match="unknown key 'holiday'"):
        Hub(settings)


# A hub that meets a year no calendar covers: it answers, and says so in its log, its metrics and its answers.


def _gauge(hub: RunningHub, name: str) -> float:
    for line in hub.hub.metrics.exposition().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exposed")


@pytest.fixture
def county_hub(tmp_path: Path) -> Iterator[RunningHub]:
    path = _calendar_file(tmp_path, "years: [2098]\nholidays: [2098-01-01]\n")
    with running_hub(base_settings(tmp_path / "hub", calendar_file=path)) as hub:
        yield hub


def test_the_hub_warns_and_measures_a_year_no_calendar_covers(
    county_hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = county_hub
    # At start, for today.
    today = dt.datetime.now(dt.UTC).date()
    assert _gauge(hub, "exchange_calendar_covered_through_year") == hub.hub.calendar.covered_through(today.year)
    caplog.set_level(logging.WARNING, logger="exchange.server.app")
    assert hub.hub.check_calendar(D("2097-03-04")) == (2097,)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "working days: 2097 in no holiday calendar" in warning
    assert "a request applied for today is due 2097-03-18, counting Monday to Friday" in warning
    assert "calendar_file" in warning and "chinesecalendar" in warning
    assert _gauge(hub, "exchange_calendar_assumed_years") == 1
    assert _gauge(hub, "exchange_calendar_covered_through_year") == 2096
    # A covered year whose next year has no calendar: a warning 45 days ahead, not before; no assumed year.
    caplog.clear()
    assert hub.hub.check_calendar(D("2098-10-15")) == ()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert _gauge(hub, "exchange_calendar_assumed_years") == 0
    assert _gauge(hub, "exchange_calendar_covered_through_year") == 2098
    assert hub.hub.check_calendar(D("2098-11-20")) == ()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no holiday calendar for 2099 yet" in warning
    # Deadlines that cross into it are reckoned Monday to Friday, and measured so.
    assert hub.hub.check_calendar(D("2098-12-24")) == (2099,)
    assert _gauge(hub, "exchange_calendar_assumed_years") == 1
    # 2026, from the package: nothing to say.
    caplog.clear()
    assert hub.hub.check_calendar(D("2026-03-02")) == ()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert _gauge(hub, "exchange_calendar_assumed_years") == 0


def test_a_due_date_no_calendar_vouches_for_carries_a_note_on_the_wire_and_in_the_cli(
    county_hub: RunningHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = county_hub
    hub.add_department(POLICE)
    hub.add_department(HOUSING)
    owner = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    clerk = hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER)
    hub.add_system("zj-sys", HOUSING.code)
    hub.publish(owner, identity_spec(IDENTITY))
    today = dt.datetime.now(dt.UTC).date()
    application = m.Application(
        IDENTITY, "", ("zj-sys",), "不动产转移登记", "依据", ("name",), today, today + dt.timedelta(days=30), 10
    )
    with hub.client(clerk) as client:
        stub = rights_pb2_grpc.RightsServiceStub(client.channel)
        applied = [stub.Apply(pb.ApplyRequest(request=w.application_to_wire(application)), timeout=20) for _ in "abc"]
        # Reckoned today on the current calendars: no note (unless today's count runs into a year none covers).
        due = w.date_from_wire(applied[0].due_date, "", [], required=True)
        assert due is not None
        note = hub.hub.calendar.due_note(today, due)
        assert (applied[0].due_date_estimated, applied[0].due_date_note) == (bool(note), note)
        # As if applied for in 2097, which no calendar covers; and one the hub reckoned Monday to Friday
        # in 2026 before it had the package (the stored date stays; the note gives the calendar's).
        _store_dates(hub, applied[0].id, dt.datetime(2097, 3, 4, 1, 30, tzinfo=dt.UTC), D("2097-03-18"))
        _store_dates(hub, applied[1].id, dt.datetime(2026, 9, 28, 1, 30, tzinfo=dt.UTC), D("2026-10-12"))
        _store_dates(hub, applied[2].id, dt.datetime(2026, 9, 28, 1, 30, tzinfo=dt.UTC), D("2026-10-16"))
        got = [stub.GetShareRequest(pb.GetShareRequestRequest(id=r.id), timeout=20) for r in applied]
        listed = stub.ListShareRequests(pb.ListShareRequestsRequest(view=pb.SHARE_REQUEST_VIEW_MINE), timeout=20)
    expected = [
        (True, f"2097 {MONDAY_TO_FRIDAY}"),
        (True, "reckoned on an earlier calendar: by the current one due 2026-10-16"),
        (False, ""),
    ]
    assert [(r.due_date_estimated, r.due_date_note) for r in got] == expected
    by_id = {r.id: (r.due_date_estimated, r.due_date_note) for r in listed.requests}
    assert [by_id[r.id] for r in applied] == expected

    address = ["--hub", hub.settings.hub_address, "--identity", str(clerk)]
    capsys.readouterr()
    assert main([*address, "request", "get", applied[0].id]) == 0
    out = capsys.readouterr().out
    assert "2097-03-18 (estimated)" in out and f"due 2097-03-18 (2097 {MONDAY_TO_FRIDAY})" in out
    assert main([*address, "request", "list", "--view", "mine"]) == 0
    out = capsys.readouterr().out
    assert f"{applied[0].id}: due 2097-03-18 (2097 {MONDAY_TO_FRIDAY})" in out
    assert "2026-10-12 (estimated) (overdue)" in out
    assert (
        f"{applied[1].id}: due 2026-10-12 (reckoned on an earlier calendar: by the current one due 2026-10-16)" in out
    )
    assert f"{applied[2].id}: due" not in out

    # Once decided, the due date no longer binds anyone: no note.
    with hub.client(owner) as client:
        stub = rights_pb2_grpc.RightsServiceStub(client.channel)
        refused = stub.Refuse(pb.RefuseRequest(id=applied[0].id, reason="用途不明"), timeout=20)
    assert (refused.due_date_estimated, refused.due_date_note) == (False, "")


def _store_dates(hub: RunningHub, request_id: str, created: dt.datetime, due: dt.date) -> None:
    store = Store(hub.settings.effective_database_url)
    try:
        with store.db.write() as s:
            s.execute(
                update(ShareRequestRow).where(ShareRequestRow.id == request_id).values(created_at=created, due_date=due)
            )
    finally:
        store.close()


def test_working_days_between_counts_after_the_start_up_to_the_end_either_way() -> None:
    holiday = dt.date(2026, 3, 4)  # a Wednesday
    calendar = WorkCalendar(holidays=frozenset({holiday}))
    monday, next_monday = dt.date(2026, 3, 2), dt.date(2026, 3, 9)
    assert calendar.working_days_between(monday, next_monday) == 4  # Tue, Thu, Fri, Mon
    assert calendar.working_days_between(next_monday, monday) == -4
    assert calendar.working_days_between(monday, monday) == 0
    assert calendar.working_days_between(monday, calendar.add_working_days(monday, 10)) == 10
