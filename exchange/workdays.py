"""Working days, for the rule that an owner answers a conditional request within 10 working days.

Monday to Friday are working days unless a calendar lists them as holidays; weekend days a calendar
lists as make-up working days (调休) count too. The State Council's yearly notice comes from the
maintained ``chinesecalendar`` package; the operator's calendar file (setting ``calendar_file``) adds
local days off and a year the package does not have yet, and wins where the two differ.

A year that no source covers is counted Monday to Friday, never silently: ``assumed_years`` names
it, the hub logs and measures it, and a deadline reckoned through it carries a note.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exchange.errors import ConfigError

ANSWER_WITHIN_WORKING_DAYS = 10
# A deadline this many working days away or nearer is "due soon": what the console's notices and metrics count.
DUE_SOON_WORKING_DAYS = 2
# How long before a year's start the hub warns that no calendar covers it (the State Council's notice
# comes out in November, the package soon after); the alert ExchangeHolidayCalendarEnding uses the same.
NOTICE_LEAD_DAYS = 45
PACKAGE = "chinesecalendar"
# The longest range one calendar-file entry may give: a year, a leap year's included.
MAX_RANGE_DAYS = 366
_KEYS = ("years", "holidays", "workdays")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_YEARS = range(1990, 2200)
_FORM = "a date YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD"


@dataclass(frozen=True)
class WorkCalendar:
    holidays: frozenset[dt.date] = frozenset()
    workdays: frozenset[dt.date] = frozenset()
    # Years whose national calendar (every holiday and make-up working day) is known.
    years: frozenset[int] = frozenset()
    # Where it came from, for the hub's log: the package and its version, the file.
    sources: tuple[str, ...] = ()

    def is_working_day(self, day: dt.date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def working_days_between(self, start: dt.date, end: dt.date) -> int:
        """Working days after ``start`` up to and including ``end``; negative when ``end`` comes first."""
        first, last, sign = (start, end, 1) if end >= start else (end, start, -1)
        days = (first + dt.timedelta(days=n) for n in range(1, (last - first).days + 1))
        return sign * sum(1 for day in days if self.is_working_day(day))

    def add_working_days(self, start: dt.date, count: int) -> dt.date:
        """The ``count``-th working day after ``start`` (``start`` itself does not count)."""
        day, left = start, count
        while left > 0:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                left -= 1
        return day

    def covers(self, year: int) -> bool:
        return year in self.years

    def assumed_years(self, start: dt.date, end: dt.date) -> tuple[int, ...]:
        """The years counted from the day after ``start`` through ``end`` that no source covers."""
        first = (start + dt.timedelta(days=1)).year
        return tuple(y for y in range(first, end.year + 1) if not self.covers(y))

    def covered_through(self, year: int) -> int:
        """The last year of the unbroken run of covered years from ``year`` on (``year - 1`` if it is not covered)."""
        while self.covers(year):
            year += 1
        return year - 1

    def due_note(self, start: dt.date, due: dt.date) -> str:
        """Why a due date reckoned from ``start`` is not the calendar's word; empty when it is.

        Either a year it runs through is in no calendar (Monday to Friday counted), or it was
        reckoned on an earlier calendar (the package or the file changed since): then the note
        gives the date the calendar gives now.
        """
        current = self.add_working_days(start, ANSWER_WITHIN_WORKING_DAYS)
        assumed = self.assumed_years(start, max(due, current))
        if assumed:
            return f"{', '.join(map(str, assumed))} not in any calendar: Monday to Friday assumed"
        if current != due:
            return f"reckoned on an earlier calendar: by the current one due {current.isoformat()}"
        return ""

    def overlay(self, other: WorkCalendar) -> WorkCalendar:
        """This calendar with ``other``'s days over it: where the two differ, ``other`` wins."""
        return WorkCalendar(
            (self.holidays - other.workdays) | other.holidays,
            (self.workdays - other.holidays) | other.workdays,
            self.years | other.years,
            (*self.sources, *other.sources),
        )

    @classmethod
    def package(cls) -> WorkCalendar:
        """The State Council's notices as the ``chinesecalendar`` package carries them."""
        import chinese_calendar

        holidays = frozenset(_dates(chinese_calendar.holidays))
        workdays = frozenset(_dates(chinese_calendar.workdays))
        first, last = min(holidays).year, max(holidays).year
        source = f"{PACKAGE} {chinese_calendar.__version__} ({first}-{last})"
        return cls(holidays, workdays, frozenset(range(first, last + 1)), (source,))

    @classmethod
    def mainland(cls, path: Path | None = None) -> WorkCalendar:
        """The package's calendar with the operator's file (if any) over it."""
        base = cls.package()
        return base.overlay(cls.load(path)) if path is not None else base

    @classmethod
    def load(cls, path: Path) -> WorkCalendar:
        """Reads a calendar file: ``years``, ``holidays`` and ``workdays`` (see docs/operating.md)."""
        try:
            # _Loader is YAML's SafeLoader, dates left as text.
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"calendar file {path} cannot be read: {e}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"calendar file {path}: the top level must be a mapping of {', '.join(_KEYS)}")
        for key in data:
            if key not in _KEYS:
                raise ConfigError(f"calendar file {path}: unknown key {key!r} (the keys are {', '.join(_KEYS)})")
        holidays = _days(data, "holidays", path)
        workdays = _days(data, "workdays", path)
        both = sorted(set(holidays) & set(workdays))
        if both:
            day = both[0]
            raise ConfigError(
                f"calendar file {path}: {day} is both a holiday (entry {holidays[day]!r})"
                f" and a working day (entry {workdays[day]!r})"
            )
        years = _years(data, path, holidays)
        summary = f"{len(holidays)} holidays, {len(workdays)} working days"
        if years:
            summary = f"years {', '.join(map(str, sorted(years)))}; {summary}"
        return cls(frozenset(holidays), frozenset(workdays), years, (f"calendar file {path} ({summary})",))


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, but dates stay text: the calendar reads them itself, to name a bad one."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _dates(values: Iterable[Any]) -> Iterable[dt.date]:
    for value in values:
        if isinstance(value, dt.date):
            yield value


def _day(text: str) -> dt.date:
    if not _DATE.fullmatch(text):
        raise ValueError("not a date YYYY-MM-DD")
    return dt.date.fromisoformat(text)


def _days(data: dict[Any, Any], key: str, path: Path) -> dict[dt.date, str]:
    """Each day of ``key``'s entries, with the entry that gave it."""
    entries = data.get(key)
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ConfigError(f"calendar file {path}: {key} must be a list, each item {_FORM}")
    days: dict[dt.date, str] = {}
    for entry in entries:
        text = str(entry).strip()
        if not isinstance(entry, str):
            raise ConfigError(f"calendar file {path}: {key} entry {text!r} is not {_FORM}")
        first, dots, last = text.partition("..")
        try:
            start = _day(first.strip())
            end = _day(last.strip()) if dots else start
        except ValueError as e:
            raise ConfigError(f"calendar file {path}: {key} entry {text!r}: {e}; write {_FORM}") from None
        span = (end - start).days + 1
        if end < start:
            raise ConfigError(f"calendar file {path}: {key} range {text!r} ends before it starts")
        if span > MAX_RANGE_DAYS:
            raise ConfigError(
                f"calendar file {path}: {key} range {text!r} spans {span} days; a range may span at most"
                f" {MAX_RANGE_DAYS} (one year)"
            )
        for n in range(span):
            days.setdefault(start + dt.timedelta(days=n), text)
    return days


def _years(data: dict[Any, Any], path: Path, holidays: dict[dt.date, str]) -> frozenset[int]:
    """The years the file carries whole: each must be a year, and list at least one holiday (every year has 元旦)."""
    entries = data.get("years")
    if entries is None:
        return frozenset()
    if not isinstance(entries, list):
        raise ConfigError(f"calendar file {path}: years must be a list of years, e.g. [2027]")
    years: set[int] = set()
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, int) or entry not in _YEARS:
            raise ConfigError(f"calendar file {path}: years entry {entry!r} is not a year (e.g. 2027)")
        if not any(day.year == entry for day in holidays):
            raise ConfigError(
                f"calendar file {path}: years entry {entry}: the file lists no holiday in {entry}; a year given"
                " under years must carry the State Council's whole notice for it"
            )
        years.add(entry)
    return frozenset(years)
