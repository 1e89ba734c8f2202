"""Pure-Python twin of the C37.118.2 data-frame kernel (cext/_pmu.pyx): the readable oracle, and the fallback when
the extension is absent. Same class, same arithmetic, same results to the bit (tests/test_pmu_kernel.py).

A DataDecoder decodes the data frames of one stream (one IDCODE, one configuration) from a byte buffer straight
into its ring of numpy arrays, as many whole frames as the buffer holds, and stops at the first thing that is not
one of them, saying what it is; the caller (drivers/pmu.py) deals with that frame (a configuration, another
stream's frame, garbage) and calls again. Per frame and station the row holds, in this order: |phasor| (V, A) of
each phasor, then each phasor's angle (rad, in [-pi, pi]), FREQ (Hz), DFREQ (Hz/s), the analogs (scaled), the
digital words (raw). Rows wrap around the ring; `total` counts every row written.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from gridedge.drivers.c37118 import FMT_AN_FLOAT, FMT_FREQ_FLOAT, FMT_PH_FLOAT, FMT_POLAR, crc_ccitt

MORE, OTHER, BAD, FULL = 0, 1, 2, 3
"""feed() stopped: the next frame is not whole yet / is a whole frame but not a data frame of this stream / no frame
starts there (bad sync, type, size or CRC) / max_rows rows were written."""


def check_layout(idcode, frame_size, time_base, layout, ph_scale, ph_offset, an_scale, an_offset, capacity):
    """Validated, contiguous arrays (shared by both implementations): the kernel trusts them afterwards."""
    layout = np.ascontiguousarray(layout, dtype=np.int32)
    if layout.ndim != 2 or layout.shape[1] != 5 or layout.shape[0] < 1:
        raise ValueError(f"layout: expected shape (stations, 5), got {layout.shape}")
    if (layout[:, 1:4] < 0).any() or (layout[:, 0] & ~0xF).any():
        raise ValueError("layout: negative counts or reserved FORMAT bits")
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (ph_scale, ph_offset, an_scale, an_offset)]
    nph, nan = int(layout[:, 1].sum()), int(layout[:, 2].sum())
    if [a.shape for a in arrays] != [(nph,), (nph,), (nan,), (nan,)]:
        raise ValueError(f"scales: expected {nph} phasor and {nan} analog factors")
    size = 16
    for fmt, ph, an, words, _fnom in layout.tolist():
        size += 2 + (8 if fmt & FMT_PH_FLOAT else 4) * ph + (8 if fmt & FMT_FREQ_FLOAT else 4)
        size += (4 if fmt & FMT_AN_FLOAT else 2) * an + 2 * words
    if size != frame_size:
        raise ValueError(f"frame_size {frame_size} does not match the layout ({size} bytes)")
    if not 0 < time_base <= 0xFFFFFF or not 0 <= idcode <= 0xFFFF or capacity < 1:
        raise ValueError("time_base must be 1..2**24-1, idcode 0..65535 and capacity >= 1")
    columns = int((2 * layout[:, 1] + 2 + layout[:, 2] + layout[:, 3]).sum())
    return layout, arrays, columns


class DataDecoder:
    def __init__(self, idcode: int, frame_size: int, time_base: int, layout, ph_scale, ph_offset, an_scale,
                 an_offset, capacity: int):
        self.layout, (self.ph_scale, self.ph_offset, self.an_scale, self.an_offset), cols = check_layout(
            idcode, frame_size, time_base, layout, ph_scale, ph_offset, an_scale, an_offset, capacity)
        self.idcode, self.frame_size, self.time_base, self.capacity = idcode, frame_size, time_base, capacity
        self.ts = np.zeros(capacity, np.int64)          # UTC ns, -1 where FRACSEC was not below TIME_BASE
        self.tq = np.zeros(capacity, np.uint8)          # FRACSEC's time-quality byte
        self.stat = np.zeros((capacity, len(self.layout)), np.uint16)
        self.values = np.zeros((capacity, cols), np.float64)
        self.row = 0
        self.total = 0

    def feed(self, buf, pos: int = 0, max_rows: int | None = None) -> tuple[int, int, int]:
        """Decode whole data frames of this stream from buf[pos:]: (position reached, rows written, why it
        stopped: MORE, OTHER, BAD or FULL)."""
        buf = memoryview(buf).cast("B")
        limit = self.capacity if max_rows is None else max_rows
        n, rows = len(buf), 0
        if pos < 0:
            raise ValueError("pos must be >= 0")
        while True:
            if rows >= limit:
                return pos, rows, FULL
            if n - pos < 1:
                return pos, rows, MORE
            if buf[pos] != 0xAA:
                return pos, rows, BAD
            if n - pos < 4:
                return pos, rows, MORE
            t = buf[pos + 1]
            size = buf[pos + 2] << 8 | buf[pos + 3]
            if (t >> 4) > 5 or size < 16:
                return pos, rows, BAD
            if n - pos < size:
                return pos, rows, MORE
            if crc_ccitt(buf[pos:pos + size - 2]) != (buf[pos + size - 2] << 8 | buf[pos + size - 1]):
                return pos, rows, BAD
            idcode = buf[pos + 4] << 8 | buf[pos + 5]
            if t >> 4 != 0 or idcode != self.idcode or size != self.frame_size:
                return pos, rows, OTHER
            self._row(bytes(buf[pos:pos + size]))
            pos += size
            rows += 1

    def _row(self, f: bytes) -> None:
        r = self.row
        soc, fracsec = struct.unpack_from(">II", f, 6)
        frac = fracsec & 0xFFFFFF
        self.tq[r] = fracsec >> 24
        self.ts[r] = -1 if frac >= self.time_base else (
            soc * 1_000_000_000 + (frac * 1_000_000_000 + self.time_base // 2) // self.time_base)
        i, c, p, a = 14, 0, 0, 0
        vals = self.values[r]
        for st, (fmt, nph, nan, words, fnom) in enumerate(self.layout.tolist()):
            self.stat[r, st] = struct.unpack_from(">H", f, i)[0]
            i += 2
            for j in range(nph):
                if fmt & FMT_PH_FLOAT:
                    x, y = struct.unpack_from(">ff", f, i)
                    i += 8
                elif fmt & FMT_POLAR:
                    x, y = struct.unpack_from(">Hh", f, i)
                    y = y * 1e-4
                    i += 4
                else:
                    x, y = struct.unpack_from(">hh", f, i)
                    i += 4
                if fmt & FMT_POLAR:
                    mag, ang = x, y
                else:
                    mag, ang = math.sqrt(x * x + y * y), math.atan2(y, x)
                ang = ang + self.ph_offset[p + j]
                if math.isfinite(ang) and abs(ang) > math.pi:
                    ang = math.remainder(ang, 2.0 * math.pi)
                vals[c + j] = mag * self.ph_scale[p + j]
                vals[c + nph + j] = ang
            c += 2 * nph
            p += nph
            if fmt & FMT_FREQ_FLOAT:
                fr, df = struct.unpack_from(">ff", f, i)
                i += 8
            else:
                fi, di = struct.unpack_from(">hh", f, i)
                i += 4
                fr, df = fnom + fi / 1000.0, di / 100.0
            vals[c], vals[c + 1] = fr, df
            c += 2
            for j in range(nan):
                if fmt & FMT_AN_FLOAT:
                    (raw,) = struct.unpack_from(">f", f, i)
                    i += 4
                else:
                    (raw,) = struct.unpack_from(">h", f, i)
                    i += 2
                vals[c + j] = raw * self.an_scale[a + j] + self.an_offset[a + j]
            c += nan
            a += nan
            for j in range(words):
                vals[c + j] = struct.unpack_from(">H", f, i)[0]
                i += 2
            c += words
        self.row = (r + 1) % self.capacity
        self.total += 1
