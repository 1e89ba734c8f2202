"""Settlement intervals (ISPs): fixed-length intervals aligned to UTC boundaries.

Every length the issue allows (1, 5, 15, 30, 60 min) divides a day, so ISPs are also aligned to UTC midnight
and a day has a whole number of them. Times are UTC nanoseconds since the epoch, as everywhere in gridedge.
Days are UTC days: baselines that compare "similar days" compare UTC days (docs/flex.md says what that means
for a site in a local time zone).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

ISP_MINUTES = (1, 5, 15, 30, 60)
NS_PER_S = 1_000_000_000
DAY_NS = 86_400 * NS_PER_S


@dataclass(frozen=True, slots=True)
class IspGrid:
    """The ISP grid of one gateway: `minutes` long intervals starting at every multiple of it since the epoch."""

    minutes: int = 15

    def __post_init__(self) -> None:
        if isinstance(self.minutes, bool) or self.minutes not in ISP_MINUTES:
            raise ValueError(f"ISP length must be one of {', '.join(map(str, ISP_MINUTES))} minutes, got {self.minutes!r}")

    @property
    def seconds(self) -> int:
        return self.minutes * 60

    @property
    def ns(self) -> int:
        return self.minutes * 60 * NS_PER_S

    @property
    def per_day(self) -> int:
        return 1440 // self.minutes

    @property
    def hours(self) -> float:
        """Length in hours: W * hours = Wh."""
        return self.minutes / 60.0

    def start(self, ts_ns: int) -> int:
        """Start of the ISP that contains ts_ns (an ISP is [start, start + length))."""
        return ts_ns - ts_ns % self.ns

    def end(self, ts_ns: int) -> int:
        return self.start(ts_ns) + self.ns

    def slot(self, ts_ns: int) -> int:
        """Index of the ISP within its UTC day, 0 .. per_day - 1."""
        return (ts_ns % DAY_NS) // self.ns

    def starts(self, from_ns: int, to_ns: int) -> range:
        """Starts of every ISP that overlaps [from_ns, to_ns)."""
        if to_ns <= from_ns:
            return range(0)
        return range(self.start(from_ns), to_ns, self.ns)

    def overlap_ns(self, isp_start_ns: int, from_ns: int, to_ns: int) -> int:
        """How much of [from_ns, to_ns) lies in the ISP that starts at isp_start_ns."""
        return max(0, min(to_ns, isp_start_ns + self.ns) - max(from_ns, isp_start_ns))

    def hours_per_slot(self, n: int) -> int:
        """ISPs in n hours (a whole number for every allowed length)."""
        return n * 60 // self.minutes


def day_start(ts_ns: int) -> int:
    """00:00 UTC of the day that contains ts_ns."""
    return ts_ns - ts_ns % DAY_NS


def utc_date(day_ns: int) -> _dt.date:
    return _dt.datetime.fromtimestamp(day_start(day_ns) // NS_PER_S, _dt.timezone.utc).date()


def date_ns(date: _dt.date) -> int:
    """00:00 UTC of a calendar date, in ns."""
    return int(_dt.datetime(date.year, date.month, date.day, tzinfo=_dt.timezone.utc).timestamp()) * NS_PER_S


def is_weekend(day_ns: int, holidays: frozenset[_dt.date] = frozenset()) -> bool:
    """Day type of a UTC day: Saturday, Sunday and listed holidays are "weekend" days (as CAISO treats holidays)."""
    d = utc_date(day_ns)
    return d.weekday() >= 5 or d in holidays
