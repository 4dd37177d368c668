"""Working days, for the rule that an owner answers a conditional request within 10 working days.

Monday to Friday are working days unless the calendar lists them as holidays;
weekend days the calendar lists as make-up working days (调休) count too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml

from exchange.errors import ConfigError

DEFAULT_CALENDAR = Path(__file__).resolve().parent / "calendars" / "cn.yaml"
ANSWER_WITHIN_WORKING_DAYS = 10
_MAX_SPAN_DAYS = 366


@dataclass(frozen=True)
class WorkCalendar:
    holidays: frozenset[dt.date] = frozenset()
    workdays: frozenset[dt.date] = frozenset()

    def is_working_day(self, day: dt.date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_working_days(self, start: dt.date, count: int) -> dt.date:
        """The ``count``-th working day after ``start`` (``start`` itself does not count)."""
        day, left = start, count
        while left > 0:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                left -= 1
        return day

    @classmethod
    def load(cls, path: Path) -> WorkCalendar:
        """Reads a calendar file: ``holidays`` and ``workdays``, each a list of dates or "start..end" ranges."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"calendar file {path} cannot be read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"calendar file {path}: the top level must be a mapping")
        return cls(_days(data, "holidays", path), _days(data, "workdays", path))


def _days(data: dict[str, object], key: str, path: Path) -> frozenset[dt.date]:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise ConfigError(f"calendar file {path}: {key} must be a list")
    days: set[dt.date] = set()
    for entry in entries:
        first, _, last = str(entry).partition("..")
        try:
            start = dt.date.fromisoformat(first.strip())
            end = dt.date.fromisoformat(last.strip()) if last else start
        except ValueError:
            raise ConfigError(f"calendar file {path}: {key} entry {entry!r} is not a date or date..date") from None
        if end < start or (end - start).days > _MAX_SPAN_DAYS:
            raise ConfigError(f"calendar file {path}: {key} range {entry!r} runs backwards or over a year")
        days.update(start + dt.timedelta(days=n) for n in range((end - start).days + 1))
    return frozenset(days)
