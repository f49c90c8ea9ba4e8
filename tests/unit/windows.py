"""AWS maintenance/backup window arithmetic for the tests: windows as sets of minutes of the week
(UTC), so overlaps are computed, not eyeballed."""

from __future__ import annotations

import re

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK = 7 * 24 * 60
_DAILY = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
_WEEKLY = re.compile(r"^([a-z]{3}):(\d\d):(\d\d)-([a-z]{3}):(\d\d):(\d\d)$")


def _span(start: int, end: int) -> set[int]:
    """Minutes from start (inclusive) to end (exclusive), wrapping around the week."""
    length = (end - start) % WEEK
    return {(start + i) % WEEK for i in range(length)}


def daily_minutes(window: str) -> set[int]:
    """'23:00-23:30' on every day of the week."""
    match = _DAILY.match(window)
    assert match, f"not a daily window: {window}"
    h1, m1, h2, m2 = map(int, match.groups())
    out: set[int] = set()
    for day in range(7):
        out |= _span(day * 1440 + h1 * 60 + m1, day * 1440 + h2 * 60 + m2)
    return out


def weekly_minutes(window: str) -> set[int]:
    """'sun:00:30-sun:01:30' once a week."""
    match = _WEEKLY.match(window)
    assert match, f"not a weekly window: {window}"
    d1, h1, m1, d2, h2, m2 = match.groups()
    start = DAYS.index(d1) * 1440 + int(h1) * 60 + int(m1)
    end = DAYS.index(d2) * 1440 + int(h2) * 60 + int(m2)
    return _span(start, end)


def daily_length_minutes(window: str) -> int:
    return len(daily_minutes(window)) // 7

