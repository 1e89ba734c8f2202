"""The one sample type that flows between drivers, control and uplink.

Quality follows IEC 61850-7-3: a validity (good, invalid, questionable) plus a detail that says why.
Timestamps are UTC nanoseconds since the epoch; units are SI symbols as in SunSpec / IEC 61850-7-420.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass


class Validity(enum.Enum):
    GOOD = "good"
    INVALID = "invalid"
    QUESTIONABLE = "questionable"


class Detail(enum.Enum):
    """Why a value is not simply good (IEC 61850-7-3 detailQual, plus field causes)."""

    NONE = ""
    TIMEOUT = "timeout"
    COMM_FAILURE = "comm_failure"
    OUT_OF_RANGE = "out_of_range"
    NOT_IMPLEMENTED = "not_implemented"
    SUBSTITUTED = "substituted"
    BAD_REFERENCE = "bad_reference"
    OLD_DATA = "old_data"
    DEVICE_EXCEPTION = "device_exception"
    MALFORMED = "malformed"


def now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one point at one instant. `point` is "<device id>/<point name>", e.g. "inv1/W"."""

    point: str
    ts_ns: int
    value: float | int | str | None
    unit: str = ""
    validity: Validity = Validity.GOOD
    detail: Detail = Detail.NONE

    @property
    def good(self) -> bool:
        return self.validity is Validity.GOOD

    def to_json(self) -> dict:
        d = {"p": self.point, "t": self.ts_ns, "v": self.value, "u": self.unit, "q": self.validity.value}
        if self.detail is not Detail.NONE:
            d["d"] = self.detail.value
        return d


def invalid(point: str, ts_ns: int, detail: Detail, unit: str = "") -> Sample:
    return Sample(point, ts_ns, None, unit, Validity.INVALID, detail)
