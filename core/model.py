"""The sample model that flows between drivers, control and uplink: one Sample per value, or a SampleBlock for the
values of one read (same device, same instant), which is how block reads travel without an object per point.

Quality follows IEC 61850-7-3: a validity (good, invalid, questionable) plus a detail that says why.
Timestamps are UTC nanoseconds since the epoch; units are SI symbols as in SunSpec / IEC 61850-7-420.
How good a timestamp is travels beside it (TimeQuality, IEC 61850-7-2), per block: one clock stamps one read.
"""
from __future__ import annotations

import enum
import functools
import math
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple


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
    CLOCK = "clock"  # the device's own clock status marks the time stamp invalid or doubtful (DLMS meters, PMUs)
    TEST = "test"    # the device is in test mode or the value was put in by a concentrator (IEC 61850 test; PMUs)


def now_ns() -> int:
    return time.time_ns()


#: TimeQuality.leap: a leap second announced (pending) or just past (IEEE C37.118.2 FRACSEC bits, chrony's
#: "Leap status").
LEAP_STATES = ("", "insert_pending", "delete_pending", "inserted", "deleted")
#: IEC 61850-5 time performance classes -> TimeAccuracy bits (error below 2**-bits s).
ACCURACY_CLASSES = {"T0": 7, "T1": 10, "T2": 14, "T3": 16, "T4": 18, "T5": 20}


def accuracy_bits(error_s: float | None) -> int | None:
    """IEC 61850-7-2 TimeAccuracy for a worst-case error: the fraction bits that are right (error < 2**-n s),
    0..24; None when the error is unknown (the standard's "unspecified")."""
    if error_s is None or not math.isfinite(error_s) or error_s < 0:
        return None
    if error_s >= 1.0:
        return 0
    return 24 if error_s <= 2.0 ** -24 else min(24, math.floor(-math.log2(error_s)))


class TimeQuality(NamedTuple):
    """How far a timestamp can be trusted (IEC 61850-7-2 TimeQuality) and whose clock made it.

    source "gateway": the gateway stamped the read (its clock discipline: chrony, NTP, PTP); "device": the device
    did (a PMU's GPS clock, a meter's clock), which says nothing of the gateway's clock and vice versa. A sample from
    an unsynchronised clock is not wrong, but its time is: the head-end must not align it with others."""

    source: str                     # "gateway" or "device"
    synchronised: bool              # False: IEC 61850 ClockNotSynchronized
    failure: bool = False           # ClockFailure
    accuracy: int | None = None     # TimeAccuracy in bits (error < 2**-n s); None: unspecified
    leap_known: bool = True         # LeapSecondsKnown
    step: bool = False              # the clock was stepped lately (wall clock against monotonic)
    leap: str = ""                  # one of LEAP_STATES

    @property
    def good(self) -> bool:
        return self.synchronised and not self.failure and not self.step

    def to_json(self) -> dict:
        """The block's "tq" (docs/mqtt-api.md): src and sync always, the rest only when it says something."""
        d: dict = {"src": self.source, "sync": self.synchronised}
        if self.failure:
            d["fail"] = True
        if self.accuracy is not None:
            d["acc"] = self.accuracy
        if not self.leap_known:
            d["lsk"] = False
        if self.step:
            d["step"] = True
        if self.leap:
            d["leap"] = self.leap
        return d

    @classmethod
    def from_json(cls, d) -> TimeQuality:
        """The inverse of to_json; ValueError on anything else."""
        keys = {"src", "sync", "fail", "acc", "lsk", "step", "leap"}
        if not isinstance(d, dict) or not {"src", "sync"} <= set(d) <= keys:
            raise ValueError("tq must be an object with src, sync and optionally fail, acc, lsk, step, leap")
        acc = d.get("acc")
        canonical = d.get("fail", True) is True and d.get("lsk", False) is False and d.get("step", True) is True
        if d["src"] not in ("gateway", "device") or not isinstance(d["sync"], bool) or not canonical \
                or ("leap" in d and d["leap"] not in LEAP_STATES[1:]) or not (
                acc is None or (isinstance(acc, int) and not isinstance(acc, bool) and 0 <= acc <= 24)):
            raise ValueError("tq: src gateway/device, sync a boolean, fail/step only true, lsk only false, acc "
                             "0..24, leap one of " + ", ".join(x for x in LEAP_STATES if x))
        return cls(d["src"], d["sync"], "fail" in d, acc, "lsk" not in d, "step" in d, d.get("leap", ""))


class Sample(NamedTuple):
    """One value of one point at one instant. `point` is "<device id>/<point name>", e.g. "inv1/W".

    A named tuple, not a dataclass: drivers make tens of thousands a second on a Pi, and a tuple is built in a
    third of the time of a frozen dataclass."""

    point: str
    ts_ns: int
    value: float | int | str | None
    unit: str = ""
    validity: Validity = Validity.GOOD
    detail: Detail = Detail.NONE
    tq: TimeQuality | None = None  # how good ts_ns is (its block's), None where nobody said

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


Quality = tuple[Validity, Detail]


@functools.lru_cache(maxsize=4096)
def _index(names: tuple[str, ...]) -> dict[str, int]:
    """name -> position; one dict per distinct tuple of names, shared (never mutate it)."""
    return {n: i for i, n in enumerate(names)}


class BlockLayout:
    """The points one read of one device returns, in order. Built once per device and read, then shared by every
    SampleBlock of that read, so a poll costs one list of values, not one object per point."""

    __slots__ = ("device", "names", "units", "index", "json_head", "_points")

    def __init__(self, device: str, names: Sequence[str], units: Sequence[str]) -> None:
        if len(names) != len(units):
            raise ValueError(f"{device}: {len(names)} names but {len(units)} units")
        self.device = device
        self.names = tuple(names)
        self.units = tuple(units)
        self.index = _index(self.names)      # shared by every device with the same names
        self.json_head: bytes | None = None  # the encoder's cache (edge/contract.py)
        self._points: tuple[str, ...] | None = None

    @property
    def points(self) -> tuple[str, ...]:
        """"<device>/<name>" of each point, made on first use: telemetry and the process image go by device and
        name, so a meters-only gateway never builds the thousands of strings."""
        if self._points is None:
            self._points = tuple(f"{self.device}/{n}" for n in self.names)
        return self._points

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"BlockLayout({self.device!r}, {len(self.names)} points)"


class SampleBlock:
    """The values of one read of one device at one instant, in layout order.

    `quality` is None when every value is good (the common case), else a list aligned with `values` holding None
    for a good value or a (validity, detail) pair. `tq` is the time quality of ts_ns: set by a driver whose device
    stamps its own values (a PMU), else None and the agent gives the gateway's clock's when it publishes.
    Iterating gives the equivalent Samples."""

    __slots__ = ("layout", "ts_ns", "values", "quality", "tq")

    def __init__(self, layout: BlockLayout, ts_ns: int, values: list, quality: list[Quality | None] | None = None,
                 tq: TimeQuality | None = None):
        if len(values) != len(layout.names) or (quality is not None and len(quality) != len(values)):
            raise ValueError(f"{layout.device}: block of {len(layout.names)} points got {len(values)} values")
        self.layout = layout
        self.ts_ns = ts_ns
        self.values = values
        self.quality = quality
        self.tq = tq

    @classmethod
    def invalid(cls, layout: BlockLayout, ts_ns: int, detail: Detail) -> SampleBlock:
        """Every point invalid for the same reason (the device did not answer, the answer was malformed...)."""
        n = len(layout.names)
        return cls(layout, ts_ns, [None] * n, [(Validity.INVALID, detail)] * n)

    def __len__(self) -> int:
        return len(self.values)

    def sample(self, i: int) -> Sample:
        lay = self.layout
        q = self.quality[i] if self.quality is not None else None
        if q is None:
            return Sample(lay.points[i], self.ts_ns, self.values[i], lay.units[i], tq=self.tq)
        return Sample(lay.points[i], self.ts_ns, self.values[i], lay.units[i], q[0], q[1], self.tq)

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self.values)))


Reading = Sample | SampleBlock
"""What a driver hands the agent: single samples (any driver) or whole blocks (the fast path of block reads)."""


def flatten(readings) -> list[Sample]:
    """Samples and blocks as a flat list of Samples (for code that wants one object per value)."""
    out: list[Sample] = []
    for r in readings:
        if isinstance(r, SampleBlock):
            out.extend(r)
        else:
            out.append(r)
    return out
