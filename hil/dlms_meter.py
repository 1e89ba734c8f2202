"""A simulated DLMS/COSEM meter for the rig, sans-IO: its COSEM objects, values that follow a site's load and PV
profile, and the server side of an association (APDU in, APDU out). hil/dlms_sim.py puts it on HDLC lines
(pseudo-terminals) and TCP.

    objects    Clock (8), Data (1), Registers (3), an Extended (4) and a Demand Register (5), load profile 1 (7,
               15-minute entries of the six IDIS energy registers with the AMR status), the Association (15)
    security   none, LLS (password) or HLS-GMAC (mechanism 5) with suite 0 ciphering, global or dedicated key
    faults     a repeated invocation counter (the client must refuse it), a dropped association, the clock
               marked doubtful or invalid, skewed, a profile entry with a status

Energy registers integrate the site's power minute by minute, so a live reading and a profile entry of the same
instant agree exactly, and a catch-up after an outage can be checked to the watt-hour.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gridedge.drivers.dlms import apdu as A
from gridedge.drivers.dlms import axdr, cosem
from gridedge.drivers.dlms.axdr import DateTime, enum, i8, i16, u8, u16, u32
from gridedge.drivers.dlms.errors import DlmsError, SecurityError
from gridedge.drivers.dlms.security import (SC_AUTH, SC_AUTH_ENC, Keys, ReplayGuard, hls_gmac, protect, unprotect)

from .plant import clear_sky_pv

__all__ = ["Site", "SimMeter", "ServerAssociation", "LP_COLUMNS", "ASSOCIATION_LN"]

NS = 1_000_000_000
ASSOCIATION_LN = bytes((0, 0, 40, 0, 0, 255))
SERIAL_OBIS = bytes((0, 0, 96, 1, 0, 255))
STATUS_OBIS = bytes((0, 0, 96, 10, 1, 255))
PROFILE_OBIS = bytes((1, 0, 99, 1, 0, 255))
SERVER_CONFORMANCE = A.conformance("get", "set", "action", "selective-access", "block-transfer-with-get-or-read",
                                   "multiple-references", "attribute0-supported-with-get")
#: The six IDIS energy registers of load profile 1 (A+, A-, reactive Q1..Q4), after clock and status.
LP_COLUMNS = tuple(bytes((1, 0, c, 8, 0, 255)) for c in (1, 2, 5, 6, 7, 8))


@dataclass
class Site:
    """What the meter measures: a household load and a PV plant (hil/plant.py's clear-sky day), in W."""

    pv_peak_w: float = 6000.0
    base_load_w: float = 400.0
    peak_load_w: float = 2500.0

    def __post_init__(self) -> None:
        self._pv = clear_sky_pv(self.pv_peak_w)

    def load_w(self, t_s: float) -> float:
        h = (t_s % 86400) / 3600
        bumps = math.exp(-((h - 7.5) / 1.2) ** 2) + 1.3 * math.exp(-((h - 19.0) / 1.8) ** 2)
        return self.base_load_w + (self.peak_load_w - self.base_load_w) * min(1.0, bumps / 1.3)

    def injection_w(self, t_s: float) -> float:
        return self._pv(t_s % 86400) - self.load_w(t_s)


class _Energy:
    """Cumulative import/export/quadrant energies (Wh) of a site whose power is constant within each UTC minute."""

    def __init__(self, site: Site, origin_s: int, base_wh: float = 1_000_000.0):
        self.site = site
        self.m0 = origin_s // 60
        self.base = base_wh
        self._cum: list[tuple[float, ...]] = [(base_wh,) * 6]

    def minute(self, m: int) -> tuple[float, ...]:
        """Wh per minute m: (A+, A-, Q1, Q2, Q3, Q4), reactive at a fixed 0.3 of active."""
        w = self.site.injection_w(m * 60)
        imp, exp = max(-w, 0.0) / 60, max(w, 0.0) / 60
        return imp, exp, imp * 0.3, exp * 0.1, exp * 0.3, imp * 0.1

    def at(self, t_s: float) -> tuple[float, ...]:
        m = max(0, int(t_s // 60) - self.m0)
        while len(self._cum) <= m:
            k = len(self._cum) - 1
            self._cum.append(tuple(c + e for c, e in zip(self._cum[k], self.minute(self.m0 + k))))
        frac = max(0.0, t_s - (self.m0 + m) * 60) / 60
        return tuple(c + f * frac for c, f in zip(self._cum[m], self.minute(self.m0 + m)))


@dataclass
class SimMeter:
    """One meter: its identity, security, clock, values and faults (see the module docstring)."""

    serial: str = "GRE0000001"
    site: Site = field(default_factory=Site)
    authentication: str = "none"                 # none | low | high_gmac
    password: bytes = b"00000000"
    keys: Keys | None = None
    system_title: bytes = b"SIM\x00\x00\x00\x00\x01"
    capture_period_s: int = 900
    profile_entries: int = 2000
    history_s: int = 2 * 86400
    max_pdu: int = 1024
    clock_offset_s: float = 0.0                  # meter time - true time
    deviation: int = -60                         # minutes, UTC = local + deviation (CET)
    clock_status: int = 0
    profile_status: dict[int, int] = field(default_factory=dict)   # entry time (s) -> AMR status to report
    repeat_counter: bool = False                 # fault: cipher answers with the previous invocation counter
    drop_next: bool = False                      # fault: forget the association before the next request

    def __post_init__(self) -> None:
        now = int(time.time())
        self.origin_s = now - self.history_s
        self.energy = _Energy(self.site, self.origin_s)
        self.ic = 1
        self.requests = 0

    # -- time and values
    def meter_ns(self) -> int:
        return time.time_ns() + int(self.clock_offset_s * NS)

    def clock_value(self) -> DateTime:
        return DateTime.from_ns(self.meter_ns(), self.deviation, self.clock_status)

    def registers(self, t_s: float | None = None) -> dict[bytes, tuple[float, int, int]]:
        """OBIS -> (value in unit, scaler, unit enum) at true time t_s (now)."""
        t = time.time() if t_s is None else t_s
        e = self.energy.at(t)
        w = self.site.injection_w(t)
        v = 230.0 + 4.0 * math.sin(t / 600)
        amps = abs(w) / 3 / v
        out = {obis: (val, 0, 30 if k < 2 else 32) for k, (obis, val) in enumerate(zip(LP_COLUMNS, e))}
        out.update({
            bytes((1, 0, 1, 7, 0, 255)): (max(-w, 0.0), 0, 27), bytes((1, 0, 2, 7, 0, 255)): (max(w, 0.0), 0, 27),
            bytes((1, 0, 3, 7, 0, 255)): (max(-w, 0.0) * 0.3, 0, 29), bytes((1, 0, 4, 7, 0, 255)): (max(w, 0.0) * 0.3, 0, 29),
            bytes((1, 0, 14, 7, 0, 255)): (50.0 + 0.02 * math.sin(t / 30), -2, 44),
            bytes((1, 0, 13, 7, 0, 255)): (0.95, -3, 255),
        })
        for phase, (vc, ac) in enumerate(((32, 31), (52, 51), (72, 71))):
            out[bytes((1, 0, vc, 7, 0, 255))] = (v + phase * 0.5, -1, 35)
            out[bytes((1, 0, ac, 7, 0, 255))] = (amps, -2, 33)
        return out

    def entry_times(self, now_s: float | None = None) -> list[int]:
        """Meter-clock times (s) of the load profile entries kept now, oldest first."""
        meter_now = (self.meter_ns() / NS) if now_s is None else now_s
        p = self.capture_period_s
        last = int(meter_now // p) * p
        first = max(-(-(self.origin_s + self.clock_offset_s) // p) * p, last - (self.profile_entries - 1) * p)
        return list(range(int(first), last + 1, p))

    def entry(self, t_meter_s: int) -> tuple:
        true_s = t_meter_s - self.clock_offset_s
        e = self.energy.at(true_s)
        status = self.profile_status.get(t_meter_s, 0)
        when = DateTime.from_ns(t_meter_s * NS, self.deviation, self.clock_status)
        return (when, u8(status), *(u32(int(round(x))) for x in e))

    def capture_objects(self) -> list:
        cols = [cosem.CaptureObject(8, cosem.CLOCK_OBIS, 2), cosem.CaptureObject(1, STATUS_OBIS, 2)]
        cols += [cosem.CaptureObject(3, o, 2) for o in LP_COLUMNS]
        return [c.encode() for c in cols]

    def profile(self, selection: A.Selection | None) -> list | A.AccessResult:
        times = self.entry_times()
        if selection is None:
            chosen = times
        elif selection.selector == 1:
            try:
                _restricting, lo, hi, _cols = selection.parameters
                lo_s = DateTime.decode(lo).to_ns() // NS
                hi_s = DateTime.decode(hi).to_ns() // NS
            except (ValueError, TypeError, DlmsError):
                return A.AccessResult(250)
            chosen = [t for t in times if lo_s <= t <= hi_s]
        elif selection.selector == 2:
            try:
                lo, hi = int(selection.parameters[0]), int(selection.parameters[1])
            except (ValueError, TypeError, IndexError):
                return A.AccessResult(250)
            chosen = times[max(lo, 1) - 1:(hi or len(times))]
        else:
            return A.AccessResult(250)
        return [self.entry(t) for t in chosen]

    # -- the object model: (class, OBIS, attribute) -> value
    def get(self, attr: A.Attribute, selection: A.Selection | None) -> Any:
        cid, ln, a = attr
        if a == 1:
            return ln
        if cid == 8 and ln == cosem.CLOCK_OBIS:
            return {2: self.clock_value(), 3: i16(self.deviation), 4: u8(self.clock_status)}.get(a, A.AccessResult(4))
        if cid == 1 and ln == SERIAL_OBIS and a == 2:
            return self.serial.encode()
        if cid == 1 and ln == STATUS_OBIS and a == 2:
            return u8(0)
        if cid == 7 and ln == PROFILE_OBIS:
            if a == 2:
                return self.profile(selection)
            return {3: self.capture_objects(), 4: u32(self.capture_period_s), 5: enum(1),
                    7: u32(len(self.entry_times())), 8: u32(self.profile_entries)}.get(a, A.AccessResult(4))
        if cid == 5 and ln == bytes((1, 0, 1, 4, 0, 255)):
            w = self.registers()[bytes((1, 0, 1, 7, 0, 255))][0]
            return {2: u32(int(w)), 3: u32(int(w)), 4: (i8(0), enum(27)), 5: u8(0),
                    6: self.clock_value(), 8: u32(self.capture_period_s)}.get(a, A.AccessResult(4))
        if cid == 4 and ln == bytes((1, 0, 1, 6, 0, 255)):
            return {2: u32(int(self.site.peak_load_w)), 3: (i8(0), enum(27)), 4: u8(0),
                    5: self.clock_value()}.get(a, A.AccessResult(4))
        if cid == 15 and ln == ASSOCIATION_LN and a == 2:
            return self.object_list()
        if cid == 3:
            reg = self.registers().get(ln)
            if reg is None:
                return A.AccessResult(4)
            value, scaler, unit = reg
            if a == 2:
                raw = int(round(value / 10 ** scaler))
                return u32(raw) if raw >= 0 else axdr.i32(raw)
            if a == 3:
                return (i8(scaler), enum(unit))
        return A.AccessResult(4)

    def set(self, attr: A.Attribute, raw: bytes) -> A.AccessResult:
        if attr.class_id == 8 and attr.obis == cosem.CLOCK_OBIS and attr.attribute == 2:
            try:
                value = axdr.decode_all(raw)
                target = DateTime.decode(value).to_ns()
            except (DlmsError, TypeError):
                return A.AccessResult(12)
            self.clock_offset_s = (target - time.time_ns()) / NS
            return A.AccessResult(0)
        return A.AccessResult(3)

    def object_list(self) -> list:
        objs = [(8, cosem.CLOCK_OBIS), (1, SERIAL_OBIS), (1, STATUS_OBIS), (7, PROFILE_OBIS), (15, ASSOCIATION_LN),
                (5, bytes((1, 0, 1, 4, 0, 255))), (4, bytes((1, 0, 1, 6, 0, 255)))]
        objs += [(3, o) for o in self.registers()]
        return [(u16(c), u8(0), ln, ([], [])) for c, ln in objs]

    def notification(self, body: Any, invoke: int = 1) -> bytes:
        """A DataNotification with this meter's time, ciphered (general-glo, suite 0) when it has keys."""
        plain = A.encode_notification(A.DataNotification(invoke, self.clock_value(), axdr.encode(body)))
        if self.keys is None:
            return plain
        self.ic += 1
        return protect(plain, SC_AUTH_ENC, self.system_title, self.ic, self.keys, general=True)

    def han_body(self) -> tuple:
        """The Austrian HAN push body: clock, serial, then (OBIS, value, scaler_unit) for each register."""
        regs = self.registers()
        items: list[Any] = [cosem.CLOCK_OBIS, self.clock_value(), (SERIAL_OBIS, self.serial.encode())]
        for code in (bytes((1, 0, c, 7, 0, 255)) for c in (32, 52, 72, 31, 51, 71, 1, 2)):
            value, scaler, unit = regs[code]
            items.append((code, u32(int(round(value / 10 ** scaler))), (i8(scaler), enum(unit))))
        for code in LP_COLUMNS[:2]:
            value, scaler, unit = regs[code]
            items.append((code, u32(int(round(value))), (i8(0), enum(unit))))
        return tuple(items)


class ServerAssociation:
    """The meter's side of one association (per HDLC connection or TCP connection)."""

    def __init__(self, meter: SimMeter):
        self.meter = meter
        self.state = "idle"                 # idle | pending (HLS) | associated
        self.client_title: bytes | None = None
        self.ciphered = False
        self.dedicated: bytes | None = None
        self.client_pdu = 0xFFFF
        self.conformance = 0
        self._stoc = b""
        self._guard = ReplayGuard()
        self._blocks: list[bytes] = []
        self._block_invoke = 0
        self.associations = 0

    def reset(self) -> None:
        self.state, self.ciphered, self.dedicated, self._blocks = "idle", False, None, []
        self._guard.reset()

    # -- ciphering of our answers
    def _ic(self) -> int:
        m = self.meter
        if not m.repeat_counter:
            m.ic += 1
        return m.ic

    def _out(self, plain: bytes) -> bytes:
        if not self.ciphered:
            return plain
        m = self.meter
        return protect(plain, SC_AUTH_ENC, m.system_title, self._ic(), m.keys, dedicated_key=self.dedicated)

    def handle(self, data: bytes) -> bytes | None:
        """One request APDU -> the answer APDU (None: no answer)."""
        m = self.meter
        m.requests += 1
        if not data:
            return None
        if m.drop_next and data[0] not in (A.AARQ, A.RLRQ):
            m.drop_next = False
            self.reset()
        if data[0] == A.AARQ:
            return self._aarq(data)
        if data[0] == A.RLRQ:
            self.reset()
            return A.encode_release(A.Release(True, 0))
        if self.state == "idle":
            return A.encode_response(A.ExceptionResponse(1, 1))
        if self.ciphered:
            try:
                u = unprotect(data, self.client_title, m.keys, dedicated_key=self.dedicated)
                if u.sc & SC_AUTH_ENC != SC_AUTH_ENC:
                    raise SecurityError("request not authenticated and encrypted")
                self._guard.check(self.client_title, u.ic)
            except SecurityError as exc:
                code = 6 if "invocation counter" in str(exc) else 5
                return A.encode_response(A.ExceptionResponse(1, code))
            except DlmsError:
                return A.encode_response(A.ExceptionResponse(2, 2))
            data = u.apdu
        try:
            req = A.decode_request(data)
        except DlmsError:
            return A.encode_response(A.ExceptionResponse(2, 2))
        if self.state == "pending":
            return self._out(self._hls(req))
        return self._out(self._serve(req))

    def _aarq(self, data: bytes) -> bytes:
        m = self.meter
        self.reset()
        try:
            aarq = A.decode_aarq(data)
        except DlmsError:
            return A.encode_aare(A.Aare(A.CONTEXT_LN, 1, 1))
        want_cipher = m.authentication == "high_gmac"
        ctx = A.CONTEXT_LN_CIPHERED if want_cipher else A.CONTEXT_LN
        mech = {"none": A.MECH_NONE, "low": A.MECH_LOW, "high_gmac": A.MECH_HIGH_GMAC}[m.authentication]
        if aarq.context != ctx:
            return A.encode_aare(A.Aare(aarq.context, 1, 2))
        if aarq.mechanism != mech:
            return A.encode_aare(A.Aare(ctx, 1, 11 if aarq.mechanism else 12))
        if mech == A.MECH_LOW and aarq.auth_value != m.password:
            return A.encode_aare(A.Aare(ctx, 1, 13))
        info = aarq.user_info
        if want_cipher:
            if aarq.calling_title is None or len(aarq.calling_title) != 8:
                return A.encode_aare(A.Aare(ctx, 1, 1))
            self.client_title = aarq.calling_title
            try:
                u = unprotect(info, self.client_title, m.keys)
                self._guard.check(self.client_title, u.ic)
                info = u.apdu
            except DlmsError:
                return A.encode_aare(A.Aare(ctx, 1, 13))
        try:
            init = A.decode_initiate(info)
        except DlmsError:
            return A.encode_aare(A.Aare(ctx, 1, 1))
        if init.version != 6:
            return A.encode_aare(A.Aare(ctx, 1, 1, user_info=bytes((A.CONFIRMED_SERVICE_ERROR, 1, 6, 1))))
        self.client_pdu = max(64, min(init.max_pdu, m.max_pdu))
        self.conformance = init.conformance & SERVER_CONFORMANCE
        self.dedicated = init.dedicated_key
        rsp = A.encode_initiate_response(A.InitiateResponse(self.conformance, m.max_pdu))
        title, stoc = None, None
        if want_cipher:
            rsp = protect(rsp, SC_AUTH_ENC, m.system_title, self._ic(), m.keys)
            title = m.system_title
        if mech == A.MECH_HIGH_GMAC:
            self._stoc = stoc = os.urandom(16)
            self._ctos = aarq.auth_value or b""
            self.state = "pending"
            self.ciphered = True
        else:
            self.state = "associated"
            self.associations += 1
        return A.encode_aare(A.Aare(ctx, 0, 14 if mech == A.MECH_HIGH_GMAC else 0, title, mech, stoc, rsp))

    def _hls(self, req) -> bytes:
        m = self.meter
        if not (isinstance(req, A.ActionRequest) and req.method == A.Method(15, ASSOCIATION_LN, 1)
                and req.parameter is not None):
            return A.encode_response(A.ExceptionResponse(1, 1))
        try:
            f = axdr.decode_all(req.parameter)
            ok = (isinstance(f, bytes) and len(f) == 17 and
                  hls_gmac(self.client_title, int.from_bytes(f[1:5], "big"), m.keys, self._stoc) == f)
        except DlmsError:
            ok = False
        if not ok:
            self.reset()
            return A.encode_response(A.ActionResponse(req.invoke, A.AccessResult(3)))
        self.state = "associated"
        self.associations += 1
        reply = hls_gmac(m.system_title, self._ic(), m.keys, self._ctos, SC_AUTH)
        return A.encode_response(A.ActionResponse(req.invoke, A.AccessResult(0), axdr.encode(reply)))

    def _encoded(self, value) -> bytes | A.AccessResult:
        if isinstance(value, A.AccessResult):
            return value
        try:
            return axdr.encode(value)
        except (ValueError, TypeError):
            return A.AccessResult(250)

    def _serve(self, req) -> bytes:
        m = self.meter
        if isinstance(req, A.GetRequest):
            self._blocks = []
            rsp = A.GetResponse(req.invoke, self._encoded(m.get(req.attribute, req.selection)))
            return self._maybe_blocks(rsp, req.invoke, rsp.result)
        if isinstance(req, A.GetWithList):
            self._blocks = []
            results = tuple(self._encoded(m.get(a, sel)) for a, sel in req.items)
            rsp = A.GetListResponse(req.invoke, results)
            return self._maybe_blocks(rsp, req.invoke, A.encode_response(rsp)[3:])
        if isinstance(req, A.GetNext):
            if not self._blocks or req.block != self._block_no:
                self._blocks = []
                return A.encode_response(A.GetBlock(req.invoke, True, req.block + 1, A.AccessResult(19)))
            return self._next_block(req.invoke)
        if isinstance(req, A.SetRequest):
            return A.encode_response(A.SetResponse(req.invoke, m.set(req.attribute, req.value)))
        if isinstance(req, A.ActionRequest):
            return A.encode_response(A.ActionResponse(req.invoke, A.AccessResult(3)))
        return A.encode_response(A.ExceptionResponse(2, 2))

    def _maybe_blocks(self, rsp, invoke: int, raw) -> bytes:
        """The answer as it is, or in blocks when it would not fit the client's PDU (with room for ciphering)."""
        encoded = A.encode_response(rsp)
        limit = self.client_pdu - (30 if self.ciphered else 0)
        if len(encoded) <= limit or isinstance(raw, A.AccessResult):
            return encoded
        size = max(16, limit - 16)
        self._blocks = [raw[i:i + size] for i in range(0, len(raw), size)]
        self._block_no = 0
        return self._next_block(invoke)

    def _next_block(self, invoke: int) -> bytes:
        chunk = self._blocks.pop(0)
        self._block_no += 1
        return A.encode_response(A.GetBlock(invoke, not self._blocks, self._block_no, chunk))
