"""COSEM interface classes as gridedge reads them (DLMS UA 1000-1, Blue Book): OBIS codes, units, scalers, the
clock's status, and the load profile's capture objects and selective access.

    Data (1)               value (2)
    Register (3)           value (2), scaler_unit (3)
    Extended Register (4)  value (2), scaler_unit (3), status (4), capture_time (5)
    Demand Register (5)    current_average_value (2), last_average_value (3), scaler_unit (4), status (5),
                           capture_time (6), start_time_current (7), period (8)
    Profile Generic (7)    buffer (2), capture_objects (3), capture_period (4), entries_in_use (7)
    Clock (8)              time (2), time_zone (3), status (4)

A register's value is value * 10**scaler in its unit; gridedge reports the unit as its SI symbol.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from gridedge.core.model import Detail, Quality, Validity

from . import axdr
from .apdu import Selection
from .errors import DecodeError

__all__ = ["DATA", "REGISTER", "EXTENDED_REGISTER", "DEMAND_REGISTER", "PROFILE_GENERIC", "CLOCK", "ASSOCIATION_LN",
           "PUSH_SETUP", "CLASSES", "UNITS", "CLOCK_OBIS", "obis", "obis_text", "scaler_attribute",
           "capture_time_attribute", "scaled", "CaptureObject", "capture_objects", "range_selection",
           "entry_selection", "clock_quality", "profile_status_quality", "unit_symbol", "parse_scaler_unit",
           "PROFILE_CRITICAL", "PROFILE_CLOCK_INVALID", "PROFILE_DATA_INVALID", "PROFILE_DST", "PROFILE_CLOCK_ADJUSTED",
           "PROFILE_POWER_DOWN"]

DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK = 1, 3, 4, 5, 7, 8
ASSOCIATION_LN, PUSH_SETUP = 15, 40
CLASSES = {DATA: "Data", REGISTER: "Register", EXTENDED_REGISTER: "Extended Register",
           DEMAND_REGISTER: "Demand Register", PROFILE_GENERIC: "Profile Generic", CLOCK: "Clock"}
CLOCK_OBIS = bytes((0, 0, 1, 0, 0, 255))

#: Blue Book unit enumeration -> the SI symbol gridedge reports ("" = no unit, a count).
UNITS = {
    1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C", 10: "currency", 11: "m",
    12: "m/s", 13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h", 17: "m3/d", 18: "m3/d", 19: "l", 20: "kg", 21: "N",
    22: "Nm", 23: "Pa", 24: "bar", 25: "J", 26: "J/h", 27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh",
    32: "varh", 33: "A", 34: "C", 35: "V", 36: "V/m", 37: "F", 38: "Ω", 39: "Ωm2/m", 40: "Wb", 41: "T", 42: "A/m",
    43: "H", 44: "Hz", 45: "1/Wh", 46: "1/varh", 47: "1/VAh", 48: "V2h", 49: "A2h", 50: "kg/s", 51: "S", 52: "K",
    53: "1/V2h", 54: "1/A2h", 55: "1/m3", 56: "%", 57: "Ah", 60: "Wh/m3", 61: "J/m3", 62: "mol%", 63: "g/m3",
    64: "Pa s", 65: "J/kg", 66: "g/cm2", 67: "atm", 70: "dBm", 71: "dBµV", 72: "dB", 254: "", 255: "",
}

_OBIS_DOTS = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")
_OBIS_IEC = re.compile(r"(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\*(\d{1,3}))?")


def obis(text: str | bytes) -> bytes:
    """"1.0.1.8.0.255", "1.0.1.8.0" or "1-0:1.8.0*255" -> the 6 bytes (F defaults to 255). Raises ValueError."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) != 6:
            raise ValueError(f"an OBIS code has 6 bytes, got {len(text)}")
        return bytes(text)
    m = _OBIS_DOTS.fullmatch(text.strip()) or _OBIS_IEC.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an OBIS code: {text!r} (like 1.0.1.8.0.255 or 1-0:1.8.0*255)")
    parts = [int(g) if g is not None else 255 for g in m.groups()]
    if any(p > 255 for p in parts):
        raise ValueError(f"OBIS group above 255 in {text!r}")
    return bytes(parts)


def obis_text(code: bytes) -> str:
    return ".".join(str(b) for b in code)


def unit_symbol(unit: int) -> str | None:
    return UNITS.get(unit)


def scaler_attribute(class_id: int) -> int | None:
    return {REGISTER: 3, EXTENDED_REGISTER: 3, DEMAND_REGISTER: 4}.get(class_id)


def capture_time_attribute(class_id: int) -> int | None:
    return {EXTENDED_REGISTER: 5, DEMAND_REGISTER: 6}.get(class_id)


def scaled(value: Any, scaler: int) -> float | int:
    """value * 10**scaler; ints stay ints when the scaler is not negative. Raises DecodeError for a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"register value is not a number: {type(value).__name__}")
    if scaler == 0:
        return value
    if scaler > 0 and isinstance(value, int):
        return value * 10 ** scaler
    return value * 10.0 ** scaler


def parse_scaler_unit(value: Any) -> tuple[int, int]:
    """(scaler, unit enum) of a scaler_unit structure. Raises DecodeError."""
    if (not isinstance(value, tuple) or len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in value) or not -128 <= value[0] <= 127):
        raise DecodeError(f"not a scaler_unit structure: {value!r}")
    return value[0], value[1]



class CaptureObject(NamedTuple):
    """One column of a profile: which attribute of which object it captures (data_index 0: all of it)."""

    class_id: int
    obis: bytes
    attribute: int
    data_index: int = 0

    def encode(self) -> tuple:
        return (axdr.u16(self.class_id), self.obis, axdr.i8(self.attribute), axdr.u16(self.data_index))


def capture_objects(value: Any) -> list[CaptureObject]:
    """The capture_objects attribute (array of {class_id, logical_name, attribute_index, data_index})."""
    if not isinstance(value, list):
        raise DecodeError("capture_objects is not an array")
    out = []
    for item in value:
        if (not isinstance(item, tuple) or len(item) != 4 or not isinstance(item[1], bytes) or len(item[1]) != 6
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in (item[0], item[2], item[3]))):
            raise DecodeError(f"not a capture object definition: {item!r}")
        out.append(CaptureObject(item[0], item[1], item[2], item[3]))
    return out


def range_selection(from_ns: int, to_ns: int, deviation: int | None,
                    restricting: CaptureObject = CaptureObject(CLOCK, CLOCK_OBIS, 2, 0)) -> Selection:
    """Selective access by range (selector 1) on the clock column: entries with from <= time <= to, every column.
    The bounds are written as the meter keeps time (its deviation)."""
    return Selection(1, (restricting.encode(), axdr.DateTime.from_ns(from_ns, deviation, None),
                         axdr.DateTime.from_ns(to_ns, deviation, None), []))


def entry_selection(from_entry: int, to_entry: int = 0) -> Selection:
    """Selective access by entry (selector 2): entries from..to (1 = oldest kept; to 0 = the newest), every column."""
    return Selection(2, (axdr.u32(from_entry), axdr.u32(to_entry), axdr.u16(1), axdr.u16(0)))


def clock_quality(dt: axdr.DateTime) -> Quality | None:
    """The quality a time stamp's own clock status gives its values: None (good), or (INVALID | QUESTIONABLE, CLOCK)."""
    if dt.invalid:
        return Validity.INVALID, Detail.CLOCK
    if dt.doubtful:
        return Validity.QUESTIONABLE, Detail.CLOCK
    return None


#: IDIS AMR profile status bits (0.0.96.10.x.255 captured with each load profile entry)
PROFILE_CRITICAL, PROFILE_CLOCK_INVALID, PROFILE_DATA_INVALID, PROFILE_DST = 0x01, 0x02, 0x04, 0x08
PROFILE_CLOCK_ADJUSTED, PROFILE_POWER_DOWN = 0x20, 0x80


def profile_status_quality(status: int | None) -> Quality | None:
    """The quality an entry's AMR profile status gives its values. A power failure inside the period does not make
    a cumulative register wrong, so it stays good; a clock adjusted within the period makes the time doubtful."""
    if status is None:
        return None
    if status & (PROFILE_CRITICAL | PROFILE_DATA_INVALID):
        return Validity.INVALID, Detail.DEVICE_EXCEPTION
    if status & PROFILE_CLOCK_INVALID:
        return Validity.INVALID, Detail.CLOCK
    if status & PROFILE_CLOCK_ADJUSTED:
        return Validity.QUESTIONABLE, Detail.CLOCK
    return None
