"""Sans-IO IEEE C37.118.2-2011 synchrophasor frames: command, configuration 1/2/3, header and data frames, the
CRC-CCITT, and what the STAT word and FRACSEC's time-quality byte say. No sockets: drivers/pmu.py carries the bytes.

Every frame is SYNC (0xAA, type in bits 6-4, version in 3-0), FRAMESIZE, IDCODE, SOC, FRACSEC, a body and CHK
(CRC-CCITT: polynomial 0x1021, initial 0xFFFF, over everything before it). Data frames are decoded in bulk by a
compiled kernel (gridedge.cext.pmu, which gets Config.kernel_layout()); this module decodes them one at a time too
(decode_data), for tests, the rig and the fuzz, and encodes them for the PMU simulator.

Every decoder raises only FrameError (a ValueError) on hostile bytes.
"""
from __future__ import annotations

import binascii
import functools
import math
import struct
from dataclasses import dataclass, field

__all__ = ["SYNC", "DATA", "HEADER", "CFG1", "CFG2", "CMD", "CFG3", "CMD_DATA_OFF", "CMD_DATA_ON", "CMD_HEADER",
           "CMD_CFG1", "CMD_CFG2", "CMD_CFG3", "CMD_EXTENDED", "FrameError", "crc_ccitt", "Frame", "Station", "Config",
           "StationData", "parse_frame", "frame_at", "scan", "encode_frame", "encode_command", "decode_command", "encode_header",
           "encode_config", "decode_config", "encode_data", "decode_data", "time_ns", "Stat", "TQ_ERROR_S",
           "STAT_TIME_ERROR_S", "MIN_FRAME", "scaled", "FMT_POLAR", "FMT_PH_FLOAT", "FMT_AN_FLOAT", "FMT_FREQ_FLOAT"]

SYNC = 0xAA
DATA, HEADER, CFG1, CFG2, CMD, CFG3 = 0, 1, 2, 3, 4, 5
VERSION = 2                      # 1: C37.118-2005, 2: C37.118.2-2011 (both are read)
CMD_DATA_OFF, CMD_DATA_ON, CMD_HEADER, CMD_CFG1, CMD_CFG2, CMD_CFG3, CMD_EXTENDED = 1, 2, 3, 4, 5, 6, 8
MIN_FRAME = 16                   # SYNC, FRAMESIZE, IDCODE, SOC, FRACSEC, CHK
FMT_POLAR, FMT_PH_FLOAT, FMT_AN_FLOAT, FMT_FREQ_FLOAT = 1, 2, 4, 8
#: FRACSEC time-quality code (bits 3-0 of its top byte) -> worst-case error in s; 0 = locked to UTC, 15 = fault
TQ_ERROR_S = {0: 0.0, **{k: 10.0 ** (k - 10) for k in range(1, 12)}, 15: math.inf}
#: STAT bits 8-6 (2011, "PMU time quality") -> maximum time error in s; 0: not used (a 2005 PMU), 7: > 10 ms/unknown
STAT_TIME_ERROR_S = {1: 100e-9, 2: 1e-6, 3: 10e-6, 4: 100e-6, 5: 1e-3, 6: 10e-3, 7: math.inf}

_HEAD = struct.Struct(">BBHHII")


class FrameError(ValueError):
    """Bytes that are not a valid C37.118.2 frame, or a frame that does not fit its configuration."""


def crc_ccitt(data: bytes | bytearray | memoryview) -> int:
    """CRC-CCITT as C37.118.2 uses it: polynomial 0x1021, initial 0xFFFF, no reflection (binascii's crc_hqx)."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame whose CRC was right: the common header and the body (without header and CHK)."""

    type: int
    version: int
    idcode: int
    soc: int
    fracsec: int          # the whole 32-bit word: time-quality byte and the 24-bit fraction
    body: bytes

    @property
    def tq(self) -> int:
        return self.fracsec >> 24


def time_ns(soc: int, fracsec: int, time_base: int) -> int:
    """SOC + FRACSEC / TIME_BASE as UTC ns (SOC counts no leap seconds, as POSIX time); FrameError if the fraction
    is not below TIME_BASE."""
    frac = fracsec & 0xFFFFFF
    if time_base <= 0 or frac >= time_base:
        raise FrameError(f"FRACSEC {frac} is not below TIME_BASE {time_base}")
    return soc * 1_000_000_000 + (frac * 1_000_000_000 + time_base // 2) // time_base


def scan(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[str, int]:
    """What lies at buf[pos:]: ("frame", end) a whole frame with a right CRC, ("more", 0) a frame not yet whole,
    ("bad", 0) no frame starts here (the caller skips a byte and scans again)."""
    n = len(buf) - pos
    if n < 1:
        return "more", 0
    if buf[pos] != SYNC:
        return "bad", 0
    if n < 4:
        return "more", 0
    if (buf[pos + 1] >> 4) & 0x7 > 5 or buf[pos + 1] & 0x80:
        return "bad", 0
    size = buf[pos + 2] << 8 | buf[pos + 3]
    if size < MIN_FRAME:
        return "bad", 0
    if n < size:
        return "more", 0
    end = pos + size
    if crc_ccitt(buf[pos:end - 2]) != (buf[end - 2] << 8 | buf[end - 1]):
        return "bad", 0
    return "frame", end


def frame_at(buf: bytes | bytearray | memoryview, pos: int, end: int) -> Frame:
    """The frame at buf[pos:end] that scan() (or the kernel) has already checked whole, CRC included."""
    _sync, t, _size, idcode, soc, fracsec = _HEAD.unpack_from(buf, pos)
    return Frame((t >> 4) & 0x7, t & 0xF, idcode, soc, fracsec, bytes(buf[pos + 14:end - 2]))


def parse_frame(data: bytes | bytearray | memoryview) -> Frame:
    """One frame, exactly: FrameError on a bad sync, type, size or CRC."""
    what, end = scan(data)
    if what != "frame" or end != len(data):
        raise FrameError(f"not one whole C37.118 frame ({what}, {len(data)} bytes)")
    return frame_at(data, 0, end)


def encode_frame(ftype: int, idcode: int, soc: int, fracsec: int, body: bytes, version: int = VERSION) -> bytes:
    size = MIN_FRAME + len(body)
    if size > 0xFFFF:
        raise ValueError(f"a frame of {size} bytes does not fit FRAMESIZE")
    head = _HEAD.pack(SYNC, (ftype << 4) | version, size, idcode, soc, fracsec)
    data = head + body
    return data + struct.pack(">H", crc_ccitt(data))


# ---------------------------------------------------------------- command and header frames

def encode_command(idcode: int, cmd: int, soc: int = 0, fracsec: int = 0, extended: bytes = b"") -> bytes:
    return encode_frame(CMD, idcode, soc, fracsec, struct.pack(">H", cmd) + extended)


def decode_command(frame: Frame) -> tuple[int, bytes]:
    """(CMD, extended frame bytes) of a command frame."""
    if frame.type != CMD or len(frame.body) < 2 or len(frame.body) % 2:
        raise FrameError("not a command frame (CMD word and whole 16-bit extended words)")
    return struct.unpack_from(">H", frame.body)[0], frame.body[2:]


def encode_header(idcode: int, text: str, soc: int = 0, fracsec: int = 0) -> bytes:
    return encode_frame(HEADER, idcode, soc, fracsec, text.encode("ascii", "replace"))


# ---------------------------------------------------------------- configuration frames

@dataclass(frozen=True)
class Station:
    """One PMU in a configuration: its channels and how its data frame block is coded and scaled.

    ph_scale turns an integer phasor into V or A (CFG-2 PHUNIT * 1e-5, CFG-3 its scale factor Y); ph_offset is
    the CFG-3 angle adjustment, rad. an_scale / an_offset: value = raw * scale + offset (CFG-2 ANUNIT's signed
    24-bit factor, CFG-3 M and B). Floats in a CFG-2 stream are taken as they are (the standard ignores the units)."""

    name: str
    idcode: int
    format: int
    phasors: tuple[str, ...] = ()
    currents: tuple[bool, ...] = ()      # per phasor: a current (else a voltage)
    ph_scale: tuple[float, ...] = ()
    ph_offset: tuple[float, ...] = ()
    analogs: tuple[str, ...] = ()
    an_kind: tuple[int, ...] = ()        # CFG-2 ANUNIT type: 0 point-on-wave, 1 RMS, 2 peak
    an_scale: tuple[float, ...] = ()
    an_offset: tuple[float, ...] = ()
    digitals: tuple[str, ...] = ()       # 16 names per status word, bit 0 first
    dig_masks: tuple[tuple[int, int], ...] = ()
    fnom: float = 50.0
    cfgcnt: int = 0
    g_pmu_id: bytes = bytes(16)          # CFG-3 only, as the next five
    lat: float = math.inf
    lon: float = math.inf
    elev: float = math.inf
    svc_class: str = "M"
    window_us: int = 0
    grp_dly_us: int = 0

    def __post_init__(self):
        p, a, d = len(self.phasors), len(self.analogs), len(self.digitals)
        if not (len(self.currents) == len(self.ph_scale) == len(self.ph_offset) == p) or d % 16 \
                or not (len(self.an_scale) == len(self.an_offset) == len(self.an_kind) == a) \
                or len(self.dig_masks) != d // 16:
            raise ValueError(f"station {self.name!r}: per-channel lists differ in length")

    @property
    def words(self) -> int:
        return len(self.digitals) // 16

    @property
    def data_size(self) -> int:
        """Bytes of this station's block in a data frame."""
        ph = 8 if self.format & FMT_PH_FLOAT else 4
        an = 4 if self.format & FMT_AN_FLOAT else 2
        fr = 4 if self.format & FMT_FREQ_FLOAT else 2
        return 2 + ph * len(self.phasors) + 2 * fr + an * len(self.analogs) + 2 * self.words

    @property
    def columns(self) -> int:
        """Values one frame gives of it: |phasor| and angle each, FREQ, DFREQ, analogs, digital words."""
        return 2 * len(self.phasors) + 2 + len(self.analogs) + self.words


@dataclass(frozen=True)
class Config:
    """A configuration frame (CFG-1, -2 or -3) of one data stream (IDCODE); a PDC's stream has several stations."""

    idcode: int
    time_base: int
    stations: tuple[Station, ...]
    data_rate: int                       # frames/s; negative: seconds per frame
    kind: int = CFG2
    soc: int = field(default=0, compare=False)       # when the frame was sent: not part of the configuration
    fracsec: int = field(default=0, compare=False)
    _layout: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def fps(self) -> float:
        return float(self.data_rate) if self.data_rate > 0 else 1.0 / -self.data_rate if self.data_rate else 0.0

    @property
    def data_frame_size(self) -> int:
        return MIN_FRAME + sum(s.data_size for s in self.stations)

    @property
    def columns(self) -> int:
        return sum(s.columns for s in self.stations)

    def kernel_layout(self):
        """(layout int32 [stations, 5]: format, phasors, analogs, words, fnom; ph_scale, ph_offset, an_scale,
        an_offset float64, the effective factors of scaled()): what the data kernel needs, made once."""
        if "k" not in self._layout:
            import numpy as np

            st = self.stations
            lay = np.array([[s.format, len(s.phasors), len(s.analogs), s.words, int(s.fnom)] for s in st],
                           dtype=np.int32).reshape(len(st), 5)
            eff = [scaled(s, self.kind) for s in st]
            cat = lambda k: np.array([x for e in eff for x in e[k]], dtype=np.float64)  # noqa: E731
            self._layout["k"] = (lay, cat(0), cat(1), cat(2), cat(3))
        return self._layout["k"]


def scaled(s: Station, kind: int) -> tuple[tuple[float, ...], ...]:
    """(ph_scale, ph_offset, an_scale, an_offset) as applied to a data frame: value = raw * scale + offset, angle +
    offset. A CFG-1/2 stream's floats are in engineering units already (the standard ignores PHUNIT/ANUNIT for
    them); a CFG-3 stream's scale factors apply to floats too (they are 1 and 0 when the floats are scaled)."""
    ph_float, an_float = s.format & FMT_PH_FLOAT and kind != CFG3, s.format & FMT_AN_FLOAT and kind != CFG3
    n, a = len(s.phasors), len(s.analogs)
    return ((1.0,) * n if ph_float else s.ph_scale, s.ph_offset,
            (1.0,) * a if an_float else s.an_scale, (0.0,) * a if an_float else s.an_offset)


def _name(raw: bytes) -> str:
    return raw.decode("latin-1").rstrip(" \x00")


def _fnom_code(fnom: float) -> int:
    return 1 if fnom == 50.0 else 0


def encode_config(cfg: Config, kind: int | None = None) -> bytes:
    """CFG-1, -2 or -3 (kind, default cfg.kind) of a configuration; CFG-3 as one frame (CONT_IDX 0)."""
    kind = cfg.kind if kind is None else kind
    if kind == CFG3:
        return encode_frame(CFG3, cfg.idcode, cfg.soc, cfg.fracsec, _cfg3_body(cfg))
    out = [struct.pack(">IH", cfg.time_base, len(cfg.stations))]
    for s in cfg.stations:
        names = list(s.phasors) + list(s.analogs) + list(s.digitals)
        out.append(s.name.encode("latin-1", "replace")[:16].ljust(16))
        out.append(struct.pack(">HHHHH", s.idcode, s.format, len(s.phasors), len(s.analogs), s.words))
        out += [n.encode("latin-1", "replace")[:16].ljust(16) for n in names]
        for cur, sc in zip(s.currents, s.ph_scale):
            out.append(struct.pack(">I", (int(cur) << 24) | min(0xFFFFFF, max(0, round(sc / 1e-5)))))
        for kind_, sc in zip(s.an_kind, s.an_scale):
            out.append(struct.pack(">I", (kind_ << 24) | (round(sc) & 0xFFFFFF)))
        out += [struct.pack(">HH", *m) for m in s.dig_masks]
        out.append(struct.pack(">HH", _fnom_code(s.fnom), s.cfgcnt))
    out.append(struct.pack(">h", cfg.data_rate))
    return encode_frame(kind, cfg.idcode, cfg.soc, cfg.fracsec, b"".join(out))


def _cfg3_body(cfg: Config) -> bytes:
    def name(t: str) -> bytes:
        b = t.encode("utf-8")[:255]
        return bytes([len(b)]) + b

    out = [struct.pack(">HIH", 0, cfg.time_base, len(cfg.stations))]
    for s in cfg.stations:
        out += [name(s.name), struct.pack(">H", s.idcode), s.g_pmu_id[:16].ljust(16, b"\0"),
                struct.pack(">HHHH", s.format, len(s.phasors), len(s.analogs), s.words)]
        out += [name(n) for n in list(s.phasors) + list(s.analogs) + list(s.digitals)]
        out += [struct.pack(">HBBff", 0, 8 if cur else 0, 0, sc, off)
                for cur, sc, off in zip(s.currents, s.ph_scale, s.ph_offset)]
        out += [struct.pack(">ff", sc, off) for sc, off in zip(s.an_scale, s.an_offset)]
        out += [struct.pack(">HH", *m) for m in s.dig_masks]
        out.append(struct.pack(">fffcii", s.lat, s.lon, s.elev, s.svc_class.encode("ascii", "replace")[:1] or b"M",
                               s.window_us, s.grp_dly_us))
        out.append(struct.pack(">HH", _fnom_code(s.fnom), s.cfgcnt))
    out.append(struct.pack(">h", cfg.data_rate))
    return b"".join(out)


_struct = functools.lru_cache(maxsize=256)(struct.Struct)


class _Reader:
    """Reads a body front to back; any read past its end is a FrameError."""

    def __init__(self, body: bytes):
        self.b, self.i = body, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise FrameError(f"configuration frame ends early (wanted {n} bytes at {self.i} of {len(self.b)})")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def unpack(self, fmt: str):
        s = _struct(fmt)
        if self.i + s.size > len(self.b):
            raise FrameError(f"configuration frame ends early (wanted {s.size} bytes at {self.i} of {len(self.b)})")
        out = s.unpack_from(self.b, self.i)
        self.i += s.size
        return out

    def name(self) -> str:
        return self.take(self.take(1)[0]).decode("utf-8", "replace")


def decode_config(frame: Frame) -> Config:
    """A CFG-1, -2 or -3 frame. A CFG-3 split over several frames (CONT_IDX != 0) is refused: no PMU here sends it."""
    if frame.type not in (CFG1, CFG2, CFG3):
        raise FrameError(f"frame type {frame.type} is not a configuration frame")
    r = _Reader(frame.body)
    if frame.type == CFG3:
        (cont,) = r.unpack(">H")
        if cont != 0:
            raise FrameError(f"fragmented CFG-3 (CONT_IDX {cont}) is not supported")
    time_base, num = r.unpack(">IH")
    time_base &= 0xFFFFFF
    if time_base == 0:
        raise FrameError("TIME_BASE is 0")
    if num == 0:
        raise FrameError("NUM_PMU is 0")
    stations = tuple(_station3(r) if frame.type == CFG3 else _station12(r) for _ in range(num))
    (rate,) = r.unpack(">h")
    if r.i != len(r.b):
        raise FrameError(f"{len(r.b) - r.i} bytes after DATA_RATE")
    return Config(frame.idcode, time_base, stations, rate, frame.type, frame.soc, frame.fracsec)


def _counts(r: _Reader) -> tuple[int, int, int, int]:
    fmt, ph, an, dg = r.unpack(">HHHH")
    if fmt & 0xFFF0:
        raise FrameError(f"FORMAT {fmt:#06x} sets reserved bits")
    return fmt, ph, an, dg


def _station12(r: _Reader) -> Station:
    name = _name(r.take(16))
    (idcode,) = r.unpack(">H")
    fmt, ph, an, dg = _counts(r)
    names = [_name(r.take(16)) for _ in range(ph + an + 16 * dg)]
    phunit = r.unpack(f">{ph}I") if ph else ()
    anunit = r.unpack(f">{an}I") if an else ()
    masks = tuple(r.unpack(">HH") for _ in range(dg))
    fnom, cfgcnt = r.unpack(">HH")
    if any((u >> 24) > 1 for u in phunit):
        raise FrameError("PHUNIT type is neither voltage (0) nor current (1)")
    an_scale = []
    for u in anunit:
        v = u & 0xFFFFFF
        an_scale.append(float(v - (1 << 24) if v & 0x800000 else v))
    return Station(name, idcode, fmt, tuple(names[:ph]), tuple(bool(u >> 24) for u in phunit),
                   tuple((u & 0xFFFFFF) * 1e-5 for u in phunit), (0.0,) * ph, tuple(names[ph:ph + an]),
                   tuple(u >> 24 for u in anunit), tuple(an_scale), (0.0,) * an, tuple(names[ph + an:]), masks,
                   50.0 if fnom & 1 else 60.0, cfgcnt)


def _station3(r: _Reader) -> Station:
    name = r.name()
    (idcode,) = r.unpack(">H")
    gid = r.take(16)
    fmt, ph, an, dg = _counts(r)
    names = [r.name() for _ in range(ph + an + 16 * dg)]
    phs = [r.unpack(">HBBff") for _ in range(ph)]
    ans = [r.unpack(">ff") for _ in range(an)]
    masks = tuple(r.unpack(">HH") for _ in range(dg))
    lat, lon, elev, svc, window, grp = r.unpack(">fffcii")
    fnom, cfgcnt = r.unpack(">HH")
    if not all(math.isfinite(x[3]) and math.isfinite(x[4]) for x in phs) \
            or not all(math.isfinite(m) and math.isfinite(b) for m, b in ans):
        raise FrameError("PHSCALE or ANSCALE is not a finite number")
    return Station(name, idcode, fmt, tuple(names[:ph]), tuple(bool(x[1] & 8) for x in phs),
                   tuple(float(x[3]) for x in phs), tuple(float(x[4]) for x in phs), tuple(names[ph:ph + an]),
                   (1,) * an, tuple(float(m) for m, _ in ans), tuple(float(b) for _, b in ans),
                   tuple(names[ph + an:]), masks, 50.0 if fnom & 1 else 60.0, cfgcnt, gid, lat, lon, elev,
                   svc.decode("latin-1"), window, grp)


# ---------------------------------------------------------------- data frames

@dataclass(frozen=True)
class StationData:
    """One station's values in one data frame, in engineering units: phasors as complex V or A (angle in rad),
    FREQ in Hz, DFREQ (ROCOF) in Hz/s, analogs scaled, digital words raw."""

    stat: int
    phasors: tuple[complex, ...] = ()
    freq: float = 50.0
    rocof: float = 0.0
    analogs: tuple[float, ...] = ()
    digitals: tuple[int, ...] = ()


def _clamp16(x: float, signed: bool = True) -> int:
    lo, hi = (-32767, 32767) if signed else (0, 65535)
    return int(min(hi, max(lo, round(x))))


def encode_data(cfg: Config, soc: int, fracsec: int, data: list[StationData]) -> bytes:
    """A data frame of `cfg` (the simulator's side): values out of an integer range are clamped."""
    if len(data) != len(cfg.stations):
        raise ValueError(f"{len(data)} stations' data for a configuration of {len(cfg.stations)}")
    out = []
    for s, d in zip(cfg.stations, data):
        out.append(struct.pack(">H", d.stat))
        fmt = s.format
        ph_scale, ph_offset, an_scale, an_offset = scaled(s, cfg.kind)
        for ph, sc, off in zip(d.phasors, ph_scale, ph_offset):
            mag, ang = abs(ph) / (sc or 1.0), math.remainder(math.atan2(ph.imag, ph.real) - off, math.tau)
            if fmt & FMT_PH_FLOAT:
                out.append(struct.pack(">ff", mag, ang) if fmt & FMT_POLAR else
                           struct.pack(">ff", mag * math.cos(ang), mag * math.sin(ang)))
            elif fmt & FMT_POLAR:
                out.append(struct.pack(">Hh", _clamp16(mag, False), _clamp16(ang * 1e4)))
            else:
                out.append(struct.pack(">hh", _clamp16(mag * math.cos(ang)), _clamp16(mag * math.sin(ang))))
        if fmt & FMT_FREQ_FLOAT:
            out.append(struct.pack(">ff", d.freq, d.rocof))
        else:
            out.append(struct.pack(">hh", _clamp16((d.freq - s.fnom) * 1000), _clamp16(d.rocof * 100)))
        for v, sc, off in zip(d.analogs, an_scale, an_offset):
            raw = (v - off) / (sc or 1.0)
            out.append(struct.pack(">f", raw) if fmt & FMT_AN_FLOAT else struct.pack(">h", _clamp16(raw)))
        out += [struct.pack(">H", w & 0xFFFF) for w in d.digitals]
    return encode_frame(DATA, cfg.idcode, soc, fracsec, b"".join(out))


def decode_data(frame: Frame, cfg: Config) -> tuple[int, list[StationData]]:
    """(UTC ns, per station) of one data frame: the readable reference of the compiled kernel's arithmetic."""
    if frame.type != DATA:
        raise FrameError(f"frame type {frame.type} is not a data frame")
    if MIN_FRAME + len(frame.body) != cfg.data_frame_size or frame.idcode != cfg.idcode:
        raise FrameError(f"data frame of {MIN_FRAME + len(frame.body)} bytes, IDCODE {frame.idcode}: the "
                         f"configuration says {cfg.data_frame_size} bytes, IDCODE {cfg.idcode}")
    ts = time_ns(frame.soc, frame.fracsec, cfg.time_base)
    b, i, out = frame.body, 0, []
    for s in cfg.stations:
        fmt = s.format
        ph_scale, ph_offset, an_scale, an_offset = scaled(s, cfg.kind)
        (stat,) = struct.unpack_from(">H", b, i)
        i += 2
        phasors = []
        for k, off in zip(ph_scale, ph_offset):
            if fmt & FMT_PH_FLOAT:
                x, y = struct.unpack_from(">ff", b, i)
                i += 8
            else:
                x, y = struct.unpack_from(">Hh" if fmt & FMT_POLAR else ">hh", b, i)
                i += 4
                if fmt & FMT_POLAR:
                    y = y * 1e-4
            mag, ang = (x, y) if fmt & FMT_POLAR else (math.hypot(x, y), math.atan2(y, x))
            phasors.append(complex(mag * k * math.cos(ang + off), mag * k * math.sin(ang + off)))
        if fmt & FMT_FREQ_FLOAT:
            freq, rocof = struct.unpack_from(">ff", b, i)
            i += 8
        else:
            f, r = struct.unpack_from(">hh", b, i)
            i += 4
            freq, rocof = s.fnom + f / 1000.0, r / 100.0
        analogs = []
        for k, off in zip(an_scale, an_offset):
            (raw,) = struct.unpack_from(">f" if fmt & FMT_AN_FLOAT else ">h", b, i)
            i += 4 if fmt & FMT_AN_FLOAT else 2
            analogs.append(raw * k + off)
        digitals = struct.unpack_from(f">{s.words}H", b, i) if s.words else ()
        i += 2 * s.words
        out.append(StationData(stat, tuple(phasors), float(freq), float(rocof), tuple(analogs), tuple(digitals)))
    return ts, out


# ---------------------------------------------------------------- the STAT word

@dataclass(frozen=True, slots=True)
class Stat:
    """A station's STAT word (C37.118.2-2011 table 7), bit by bit."""

    word: int

    @property
    def data_error(self) -> int:
        """0 good, 1 PMU error (no information about the data), 2 test mode or absent data inserted by a PDC (do
        not use), 3 PMU error (do not use)."""
        return self.word >> 14

    @property
    def sync_error(self) -> bool:
        return bool(self.word & 0x2000)

    @property
    def by_arrival(self) -> bool:
        return bool(self.word & 0x1000)

    @property
    def trigger(self) -> bool:
        return bool(self.word & 0x0800)

    @property
    def config_change(self) -> bool:
        return bool(self.word & 0x0400)

    @property
    def modified(self) -> bool:
        return bool(self.word & 0x0200)

    @property
    def time_quality(self) -> int:
        return (self.word >> 6) & 0x7

    @property
    def unlocked(self) -> int:
        """0 locked or unlocked < 10 s, 1: < 100 s, 2: <= 1000 s, 3: > 1000 s."""
        return (self.word >> 4) & 0x3

    @property
    def trigger_reason(self) -> int:
        return self.word & 0xF
