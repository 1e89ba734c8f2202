"""The sample model that flows between drivers, control and uplink: one Sample per value, or a SampleBlock for the
values of one read (same device, same instant), which is how block reads travel without an object per point.

Quality follows IEC 61850-7-3: a validity (good, invalid, questionable) plus a detail that says why.
Timestamps are UTC nanoseconds since the epoch; units are SI symbols as in SunSpec / IEC 61850-7-420.
"""
from __future__ import annotations

import enum
import functools
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
    CLOCK = "clock"  # the device's own clock status marks the time stamp invalid or doubtful (DLMS meters)


def now_ns() -> int:
    return time.time_ns()


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
    for a good value or a (validity, detail) pair. Iterating gives the equivalent Samples."""

    __slots__ = ("layout", "ts_ns", "values", "quality")

    def __init__(self, layout: BlockLayout, ts_ns: int, values: list, quality: list[Quality | None] | None = None):
        if len(values) != len(layout.names) or (quality is not None and len(quality) != len(values)):
            raise ValueError(f"{layout.device}: block of {len(layout.names)} points got {len(values)} values")
        self.layout = layout
        self.ts_ns = ts_ns
        self.values = values
        self.quality = quality

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
            return Sample(lay.points[i], self.ts_ns, self.values[i], lay.units[i])
        return Sample(lay.points[i], self.ts_ns, self.values[i], lay.units[i], q[0], q[1])

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
