"""A record's time text: RFC 3339 UTC with microseconds, the instant it was taken, whatever its second's text."""

from __future__ import annotations

import datetime as dt
import time

from exchange.services.auditing import _second_text, now_text


def _microseconds(text: str) -> int:
    parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == text  # microseconds always shown, nothing else
    return (parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def test_the_time_text_is_the_instant_it_was_taken() -> None:
    for _ in range(1000):
        before = time.time_ns() // 1000
        taken = _microseconds(now_text())
        after = time.time_ns() // 1000
        assert before <= taken <= after


def test_each_seconds_text_is_the_standard_form() -> None:
    """The part of the text formatted once a second, over seconds of every kind (leap days, year ends)."""
    for second in (0, 951_782_399, 951_782_400, 1_767_225_599, 1_767_225_600, 4_102_444_799, 2_000_000_000):
        expected = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        assert _second_text(second) == expected
