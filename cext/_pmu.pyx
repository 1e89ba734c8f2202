# cython: language_level=3
"""Compiled C37.118.2 data-frame kernel: the same class, checks and arithmetic as gridedge.cext.pmu_twin (the
oracle; its docstring says what a row holds). Validation runs once, in Python (pmu_twin.check_layout); feed() then
scans, checks the CRC and decodes without the GIL, straight into the ring arrays.
"""
from libc.math cimport sqrt, atan2, fabs, remainder, isfinite, M_PI
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int16_t, int64_t
from libc.string cimport memcpy

import numpy as np

from gridedge.cext import pmu_twin as _twin

cdef enum:
    MORE = 0
    OTHER = 1
    BAD = 2
    FULL = 3
    PH_POLAR = 1
    PH_FLOAT = 2
    AN_FLOAT = 4
    FR_FLOAT = 8

cdef uint16_t CRC_TABLE[256]
cdef int _i, _k
cdef uint16_t _c
for _i in range(256):
    _c = <uint16_t>(_i << 8)
    for _k in range(8):
        _c = <uint16_t>(((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1))
    CRC_TABLE[_i] = _c


cdef inline uint16_t _crc(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint16_t crc = 0xFFFF
    cdef Py_ssize_t i
    for i in range(n):
        crc = <uint16_t>((crc << 8) ^ CRC_TABLE[(crc >> 8) ^ p[i]])
    return crc


cdef inline uint16_t _u16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline int16_t _i16(const uint8_t* p) noexcept nogil:
    return <int16_t>((p[0] << 8) | p[1])


cdef inline uint32_t _u32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline double _f32(const uint8_t* p) noexcept nogil:
    cdef uint32_t u = _u32(p)
    cdef float f
    memcpy(&f, &u, 4)
    return <double>f


def crc_ccitt(const uint8_t[::1] data):
    """CRC-CCITT (0x1021, initial 0xFFFF) of a bytes-like object."""
    if data.shape[0] == 0:
        return 0xFFFF
    return _crc(&data[0], data.shape[0])


cdef class DataDecoder:
    cdef readonly int idcode, frame_size
    cdef readonly int64_t time_base
    cdef readonly Py_ssize_t capacity, row, total
    cdef readonly object ts, tq, stat, values, layout
    cdef int[:, ::1] lay
    cdef double[::1] phs, pho, ans, ano
    cdef int64_t[::1] vts
    cdef uint8_t[::1] vtq
    cdef uint16_t[:, ::1] vstat
    cdef double[:, ::1] vval

    def __init__(self, int idcode, int frame_size, time_base, layout, ph_scale, ph_offset, an_scale, an_offset,
                 Py_ssize_t capacity):
        lay, arrays, cols = _twin.check_layout(idcode, frame_size, time_base, layout, ph_scale, ph_offset,
                                               an_scale, an_offset, capacity)
        self.idcode, self.frame_size, self.time_base, self.capacity = idcode, frame_size, time_base, capacity
        self.layout = lay
        self.lay = lay
        self.phs, self.pho, self.ans, self.ano = arrays
        self.ts = np.zeros(capacity, np.int64)
        self.tq = np.zeros(capacity, np.uint8)
        self.stat = np.zeros((capacity, lay.shape[0]), np.uint16)
        self.values = np.zeros((capacity, cols), np.float64)
        self.vts, self.vtq, self.vstat, self.vval = self.ts, self.tq, self.stat, self.values
        self.row = 0
        self.total = 0

    @property
    def ph_scale(self):
        return np.asarray(self.phs)

    def feed(self, buf, Py_ssize_t pos=0, max_rows=None):
        """Decode whole data frames of this stream from buf[pos:]: (position reached, rows written, why it
        stopped: MORE, OTHER, BAD or FULL)."""
        cdef const uint8_t[::1] view
        if len(buf) == 0:
            return pos, 0, MORE
        view = buf
        cdef Py_ssize_t limit = self.capacity if max_rows is None else max_rows
        cdef Py_ssize_t n = view.shape[0], rows = 0, size
        cdef int status
        cdef const uint8_t* b = &view[0]
        if pos < 0:
            raise ValueError("pos must be >= 0")
        with nogil:
            while True:
                if rows >= limit:
                    status = FULL
                    break
                if n - pos < 1:
                    status = MORE
                    break
                if b[pos] != 0xAA:
                    status = BAD
                    break
                if n - pos < 4:
                    status = MORE
                    break
                size = _u16(b + pos + 2)
                if (b[pos + 1] >> 4) > 5 or size < 16:
                    status = BAD
                    break
                if n - pos < size:
                    status = MORE
                    break
                if _crc(b + pos, size - 2) != _u16(b + pos + size - 2):
                    status = BAD
                    break
                if (b[pos + 1] >> 4) != 0 or _u16(b + pos + 4) != self.idcode or size != self.frame_size:
                    status = OTHER
                    break
                self._row(b + pos)
                pos += size
                rows += 1
        return pos, rows, status

    cdef void _row(self, const uint8_t* f) noexcept nogil:
        cdef Py_ssize_t r = self.row, i = 14, c = 0, p = 0, a = 0, st, j
        cdef uint32_t soc = _u32(f + 6), fracsec = _u32(f + 10)
        cdef int64_t frac = fracsec & 0xFFFFFF
        cdef int fmt, nph, nan, words
        cdef double x, y, mag, ang, raw
        self.vtq[r] = <uint8_t>(fracsec >> 24)
        if frac >= self.time_base:
            self.vts[r] = -1
        else:
            self.vts[r] = <int64_t>soc * 1000000000 + (frac * 1000000000 + self.time_base // 2) // self.time_base
        for st in range(self.lay.shape[0]):
            fmt, nph, nan, words = self.lay[st, 0], self.lay[st, 1], self.lay[st, 2], self.lay[st, 3]
            self.vstat[r, st] = _u16(f + i)
            i += 2
            for j in range(nph):
                if fmt & PH_FLOAT:
                    x, y = _f32(f + i), _f32(f + i + 4)
                    i += 8
                elif fmt & PH_POLAR:
                    x, y = _u16(f + i), _i16(f + i + 2) * 1e-4
                    i += 4
                else:
                    x, y = _i16(f + i), _i16(f + i + 2)
                    i += 4
                if fmt & PH_POLAR:
                    mag, ang = x, y
                else:
                    mag, ang = sqrt(x * x + y * y), atan2(y, x)
                ang = ang + self.pho[p + j]
                if isfinite(ang) and fabs(ang) > M_PI:
                    ang = remainder(ang, 2.0 * M_PI)
                self.vval[r, c + j] = mag * self.phs[p + j]
                self.vval[r, c + nph + j] = ang
            c += 2 * nph
            p += nph
            if fmt & FR_FLOAT:
                self.vval[r, c] = _f32(f + i)
                self.vval[r, c + 1] = _f32(f + i + 4)
                i += 8
            else:
                self.vval[r, c] = self.lay[st, 4] + _i16(f + i) / 1000.0
                self.vval[r, c + 1] = _i16(f + i + 2) / 100.0
                i += 4
            c += 2
            for j in range(nan):
                if fmt & AN_FLOAT:
                    raw = _f32(f + i)
                    i += 4
                else:
                    raw = _i16(f + i)
                    i += 2
                self.vval[r, c + j] = raw * self.ans[a + j] + self.ano[a + j]
            c += nan
            a += nan
            for j in range(words):
                self.vval[r, c + j] = _u16(f + i)
                i += 2
            c += words
        self.row = (r + 1) % self.capacity
        self.total += 1
