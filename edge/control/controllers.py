"""One control cycle without I/O: process image in, set-points per device out (the engine does the writes).

The controllers run in this order; each may only tighten what the ones before it allow, except that a remote
reactive power set-point replaces the local reactive power function of its device:

1. `LocalFunctions`  the grid-code functions from the profile (volt-var, watt-var, constant PF or Q, volt-watt,
                     frequency-watt), as kernel parameters per device;
2. `RemoteSetpoints` the activations in force (limit P, P set-point, Q set-point, PF), traffic-light caps applied;
3. `PocLimit`        the export/import limit at the point of connection, from the site meter;
4. the kernel        `gridedge.cext.cycle` for all inverters and batteries at once: responses (OLRT), ramps,
                     the S = 1 pu capability;
5. `clamp`           every set-point to the device's capability and prequalified limits (capability.py).

P of an inverter is a ceiling (WMaxLimPct): it produces min(ceiling, what the sun gives). The kernel computes the
ceiling of the local functions (volt-watt, frequency-watt, with their response time); remote, POC and
prequalified ceilings are applied after it, at once, and any rise of the result is held to the profile's release
ramp. The ceiling is written only while something asks for it, while it binds the output, or while a release ramp
has not reached its target; otherwise the limit is disabled, which is the safe default. The local ceiling is kept
just above the measured output (HEADROOM), so a function that starts to bind acts on the actual output at once
instead of first travelling down through unused headroom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from gridedge.cext.twin import Curve, CycleInputs, CycleParams, QMode

from .activation import Activation
from .capability import Capability
from .measure import OPTIONAL_POINTS, Meas, read_meas  # noqa: F401  (read_meas: part of the cycle's API)
from .profiles import GridProfile

HEADROOM = 0.05     # pu of the rating kept above the measured output while no P ceiling is written
EPS = 1e-6
RELEASED = 1e-3     # a ceiling within 0.1 % of the rating is released (below the write dead band)
NEUTRAL_VV = ((0.0, 0.0), (2.0, 0.0))
NEUTRAL_VW = ((0.0, 1.0), (2.0, 1.0))
NEUTRAL_WV = ((-1.0, 0.0), (1.0, 0.0))
NO_DROOP_HZ = 1000.0  # a dead band no frequency leaves: frequency-watt off

LOCAL_Q = {"volt_var": QMode.VOLT_VAR, "watt_var": QMode.WATT_VAR, "constant_pf": QMode.FIXED_PF,
           "constant_q": QMode.FIXED_Q}


# ---------------------------------------------------------------- measurements and capabilities

# ---------------------------------------------------------------- the plan of one cycle

@dataclass
class DevicePlan:
    """Set-points of one device for this cycle, in canonical point names, and what they carry."""

    points: dict[str, float] = field(default_factory=dict)
    reversion: dict[str, float] = field(default_factory=dict)   # written with the set-points, where supported
    remote: bool = False          # a remote set-point is in force (heartbeat, keepalive)
    carries: set[str] = field(default_factory=set)   # activation ids applied in these set-points
    clamped: list[str] = field(default_factory=list)


@dataclass
class Plan:
    devices: dict[str, DevicePlan] = field(default_factory=dict)


@dataclass
class _Row:
    """Controller state of one device (inverter or battery) between cycles."""

    p_out: float = 1.0            # last P written, pu (a ceiling for inverters, the set-point for batteries)
    p_loc: float = 1.0            # inverters: the local functions' ceiling (the kernel's state), pu
    q_out: float = 0.0
    p_engaged: bool = False
    q_engaged: bool = False
    p_pre: float | None = None    # latched pre-disturbance P while frequency is outside the dead band
    p_touched: bool = False       # a P set-point was written once: disengaging writes the safe default
    q_touched: bool = False


# ---------------------------------------------------------------- point of connection

class PocLimit:
    """Export/import limit at the point of connection, closed loop on the site meter (W > 0 = export).

    On every new meter sample, the total ceiling of the controllable generators moves by gain x the error
    (export limit - measured export), starting from what they produce; it is shared by rating. Likewise the
    total consumption cap of controllable loads for the import limit. Released when the error stays on the
    safe side with the ceiling at the full rating. A silent meter (no good sample for stale_s) puts the
    generators at fail_safe_pct of their rating, and keeps the loads where they were.
    """

    def __init__(self, meter: str, export_limit_w: float | None, import_limit_w: float | None,
                 fail_safe_pct: float = 100.0, gain: float = 0.7) -> None:
        self.meter = meter
        self.export_limit_w = export_limit_w
        self.import_limit_w = import_limit_w
        self.fail_safe_pct = fail_safe_pct
        self.gain = gain
        self.gen_cap_w: float | None = None
        self.load_cap_w: float | None = None
        self.meter_silent = False
        self._last_ts: int | None = None

    def step(self, meter: Meas, gens: Mapping[str, tuple[Capability, float]],
             loads: Mapping[str, tuple[Capability, float]]) -> tuple[dict[str, float], dict[str, float]]:
        """gens/loads: device -> (capability, measured P W). Returns (generator ceilings W, load caps W consumed)."""
        gen_rated = sum(c.p_max_w for c, _ in gens.values())
        load_rated = sum(-c.p_min_w for c, _ in loads.values())
        self.meter_silent = meter.p_w is None
        if self.meter_silent:
            self._last_ts = None
            if self.export_limit_w is not None and gens and self.fail_safe_pct < 100.0:
                self.gen_cap_w = self.fail_safe_pct / 100 * sum(c.rated_w for c, _ in gens.values())
        elif meter.ts_ns != self._last_ts:
            self._last_ts = meter.ts_ns
            export = meter.p_w
            if self.export_limit_w is not None and gens:
                err = self.export_limit_w - export      # > 0: room to export more
                produced = sum(max(p, 0.0) for _, p in gens.values())
                base = produced if self.gen_cap_w is None else min(self.gen_cap_w, produced + 0.05 * gen_rated)
                if self.gen_cap_w is not None or err < 0:
                    cap = min(max(base + self.gain * err, 0.0), gen_rated)
                    self.gen_cap_w = None if (err > 0 and cap >= gen_rated - 1e-6) else cap
            if self.import_limit_w is not None and loads:
                err = self.import_limit_w + export      # > 0: room to import more
                consumed = sum(max(-p, 0.0) for _, p in loads.values())
                base = consumed if self.load_cap_w is None else min(self.load_cap_w, consumed + 0.05 * load_rated)
                if self.load_cap_w is not None or err < 0:
                    cap = min(max(base + self.gain * err, 0.0), load_rated)
                    self.load_cap_w = None if (err > 0 and cap >= load_rated - 1e-6) else cap
        gen = {} if self.gen_cap_w is None or not gen_rated else {
            d: self.gen_cap_w * c.p_max_w / gen_rated for d, (c, _) in gens.items()}
        load = {} if self.load_cap_w is None or not load_rated else {
            d: self.load_cap_w * -c.p_min_w / load_rated for d, (c, _) in loads.items()}
        return gen, load


# ---------------------------------------------------------------- the planner

class Planner:
    """Runs the controllers for one cycle. Holds the per-device state (responses, latches, engagement)."""

    def __init__(self, profile: GridProfile, *, v_nom_v: float = 230.0, q_mode: str = "off", pf: float = 1.0,
                 q_pct: float = 0.0, volt_watt: bool = False, freq_watt: bool = True, revert_s: float = 60.0,
                 poc: PocLimit | None = None, kernels=None) -> None:
        if kernels is None:
            import gridedge.cext as kernels
        self.k = kernels
        self.profile = profile
        self.v_nom_v = v_nom_v
        self.local_q = LOCAL_Q.get(q_mode)
        self.pf = pf
        self.q_pu = q_pct / 100
        self.volt_watt = volt_watt
        self.freq_watt = freq_watt
        self.revert_s = revert_s
        self.poc = poc
        self.rows: dict[str, _Row] = {}
        self._ramp_up = profile.ramp_up_pct_per_s / 100 if profile.ramp_up_pct_per_s > 0 else math.inf
        self._params: CycleParams | None = None
        self._params_key: tuple | None = None
        self._vw: Curve | None = None
        self._direct_touched: set[str] = set()

    def assume_set(self, device: str, channel: str) -> None:
        """A previous run of the agent left a set-point of this quantity (P or Q) on the device: write the safe
        default once nothing asks for one (the device may have no reversion of its own)."""
        row = self.rows.setdefault(device, _Row())
        if channel == "P":
            row.p_touched = True
            self._direct_touched.add(device)
        else:
            row.q_touched = True

    # ---- kernel parameters (rebuilt only when the set of rows or their modes change)

    def _cycle_params(self, ids: Sequence[str], kinds: Sequence[str], q_modes, q_set, pf_set) -> CycleParams:
        key = (tuple(ids), tuple(kinds), tuple(q_modes), tuple(q_set), tuple(pf_set))
        if key == self._params_key:
            return self._params
        n = len(ids)
        pr = self.profile
        batt = np.array([k == "battery" for k in kinds])
        vw_pts = [pr.volt_watt if (self.volt_watt and k == "inverter") else NEUTRAL_VW for k in kinds]
        db = (pr.db_of_hz, pr.db_uf_hz) if self.freq_watt else (NO_DROOP_HZ, NO_DROOP_HZ)
        rate = lambda pct: math.inf if pct <= 0 else pct / 100  # noqa: E731
        params = CycleParams(
            n=n, volt_var=Curve.uniform(pr.volt_var, n, "volt-var"), volt_watt=Curve.from_points(vw_pts, "volt-watt"),
            watt_var=Curve.uniform(pr.watt_var, n, "watt-var"), f_nom=pr.f_nom_hz, dbof=db[0], dbuf=db[1],
            kof=pr.k_of_pct / 100, kuf=pr.k_uf_pct / 100, p_min=np.where(batt, -1.0, 0.0),
            q_mode=np.array(q_modes, dtype=np.intc), q_set=np.array(q_set, dtype=float),
            pf_set=np.array(pf_set, dtype=float), p_priority=False,
            of_momentary=~batt & (pr.of_reference == "p_momentary"),   # storage: in P_max (it may go on to charge)
            olrt_p=np.where(batt, 0.0, pr.olrt_p_s), olrt_vw=np.where(batt, 0.0, pr.olrt_vw_s), olrt_q=pr.olrt_q_s,
            ramp_up_p=np.where(batt, math.inf, rate(pr.ramp_up_pct_per_s)),
            ramp_dn_p=np.where(batt, math.inf, rate(pr.ramp_dn_pct_per_s)), ramp_q=math.inf)
        self._params, self._params_key, self._vw = params, key, params.volt_watt
        return params

    # ---- the cycle

    def plan(self, dt: float, meas: Mapping[str, Meas], caps: Mapping[str, Capability],
             in_force: Sequence[tuple[Activation, Mapping[str, float]]]) -> Plan:
        """One cycle. in_force: (activation, effective share per device) from the book."""
        plan = Plan()
        remote_p: dict[str, tuple[Activation, float]] = {}
        remote_q: dict[str, tuple[Activation, float]] = {}
        revert = {act.id: act.revert_s for act, _ in in_force}
        for act, eff in in_force:
            for dev, value in eff.items():
                (remote_p if act.channel == "P" else remote_q)[dev] = (act, value)

        controlled = [d for d, c in caps.items() if c.writable and c.known and c.kind in ("inverter", "battery")]
        loads = [d for d, c in caps.items() if c.writable and c.known and c.kind == "load"]

        # 3. point of connection (computed first: it feeds the kernel's allowed P)
        poc_gen: dict[str, float] = {}
        poc_load: dict[str, float] = {}
        if self.poc is not None:
            gens = {d: (caps[d], meas[d].p_w or 0.0) for d in controlled if caps[d].kind == "inverter"}
            lds = {d: (caps[d], meas[d].p_w or 0.0) for d in loads}
            poc_gen, poc_load = self.poc.step(meas.get(self.poc.meter, Meas()), gens, lds)

        self._plan_loads(plan, loads, caps, meas, remote_p, poc_load)
        self._plan_unrated(plan, caps, remote_p)
        if not controlled:
            return plan

        # 1. + 2. kernel rows: local functions, then the remote set-points
        n = len(controlled)
        kinds = [caps[d].kind for d in controlled]
        q_modes, q_set, pf_set = [], [], []
        for d in controlled:
            c = caps[d]
            rq = remote_q.get(d)
            if rq is not None and rq[0].type == "set_reactive_power":
                q_modes.append(int(QMode.FIXED_Q)); q_set.append(_clip(rq[1] / c.rated_w, -1, 1)); pf_set.append(1.0)
            elif rq is not None:
                q_modes.append(int(QMode.FIXED_PF)); q_set.append(0.0); pf_set.append(rq[1])
            elif self.local_q is not None:
                q_modes.append(int(self.local_q)); q_set.append(_clip(self.q_pu, -1, 1)); pf_set.append(self.pf)
            else:
                q_modes.append(int(QMode.FIXED_Q)); q_set.append(0.0); pf_set.append(1.0)
        params = self._cycle_params(controlled, kinds, q_modes, q_set, pf_set)

        f_nom = self.profile.f_nom_hz
        v = np.empty(n); f = np.empty(n); p_avail = np.empty(n); p_limit = np.ones(n); p_prev = np.empty(n)
        q_prev = np.empty(n); p_pre = np.ones(n); p_lo = np.zeros(n); p_meas = np.empty(n)
        allowed_by: list[tuple[bool, set[str], float]] = []
        for i, d in enumerate(controlled):
            c, m = caps[d], meas[d]
            row = self.rows.setdefault(d, _Row())
            pm = _clip((m.p_w if m.p_w is not None else 0.0) / c.rated_w, -1, 1)
            qm = _clip((m.q_var if m.q_var is not None else 0.0) / c.rated_w, -1, 1)
            v[i] = m.v_v / self.v_nom_v if m.v_v is not None else 1.0
            f[i] = m.hz if m.hz is not None else f_nom
            p_meas[i] = pm
            carries: set[str] = set()
            hi = c.p_max_w / c.rated_w
            lo = c.p_min_w / c.rated_w
            rp = remote_p.get(d)
            if c.kind == "inverter":
                allowed = hi
                if rp is not None:
                    act, value = rp
                    allowed = min(allowed, value / 100 if act.type == "limit_active_power" else value / c.rated_w)
                    carries.add(act.id)
                if d in poc_gen:
                    allowed = min(allowed, poc_gen[d] / c.rated_w)
                # the kernel computes the local functions' ceiling; remote, POC and prequalified ceilings are
                # applied after it, at once (they are instructions, not autonomous functions with a response time)
                p_avail[i] = 1.0
                out_of_band = self.freq_watt and (f[i] > f_nom + self.profile.db_of_hz
                                                  or f[i] < f_nom - self.profile.db_uf_hz)
                if out_of_band and row.p_pre is None:
                    row.p_pre = _clip(pm, 0.0, 1.0)
                elif not out_of_band:
                    row.p_pre = None
                p_pre[i] = row.p_pre if row.p_pre is not None else 1.0
                p_prev[i] = min(row.p_loc, max(pm, 0.0) + HEADROOM)
                allowed_by.append((allowed < 1.0 - EPS or row.p_pre is not None, carries, _clip(allowed, 0.0, 1.0)))
            else:  # battery: P is a set-point, from the remote activation; absent, the battery is not driven
                sp = 0.0
                if rp is not None:
                    sp = _clip(rp[1] / c.rated_w, lo, hi)
                    carries.add(rp[0].id)
                p_avail[i] = max(hi, 0.0)
                p_lo[i] = min(lo, 0.0)
                if m.soc_pct is not None:
                    if m.soc_pct <= 5.0:
                        p_avail[i] = 0.0
                    if m.soc_pct >= 95.0:
                        p_lo[i] = 0.0
                p_pre[i] = _clip(sp, p_lo[i], p_avail[i])
                p_prev[i] = row.p_out if row.p_engaged else pm
                allowed_by.append((rp is not None, carries, 1.0))
            q_prev[i] = row.q_out if row.q_engaged else qm

        # 4. the kernel
        out_p, out_q = self.k.cycle(params, CycleInputs(v=v, f=f, p_avail=p_avail, p_limit=p_limit, p_prev=p_prev,
                                                        q_prev=q_prev, p_pre=p_pre, p_lo=p_lo, p_meas=p_meas), dt)
        vw_target = (self.k.curve_eval(self._vw.xs, self._vw.ys, self._vw.npts, v) if self.volt_watt
                     else np.ones(n))

        # 5. clamp, engagement and the points to write
        for i, d in enumerate(controlled):
            c, row = caps[d], self.rows[d]
            asked, carries, allowed = allowed_by[i]
            dp = plan.devices.setdefault(d, DevicePlan())
            dp.carries |= carries
            p = float(out_p[i])
            rq = remote_q.get(d)
            if rq is not None:
                dp.carries.add(rq[0].id)
            remote = bool(carries) or rq is not None
            dp.remote = remote
            if c.kind == "inverter":
                row.p_loc = p
                local = vw_target[i] < 1.0 - EPS or row.p_pre is not None     # volt-watt or P(f) out of band
                s_room = math.sqrt(max(0.0, 1.0 - float(out_q[i]) ** 2))       # Q priority: S = 1 pu
                target = min(allowed, p if local else 1.0, s_room)
                prev = row.p_out if row.p_engaged else min(1.0, max(p_meas[i], 0.0) + HEADROOM)
                p = min(target, prev + self._ramp_up * dt) if target > prev else target   # release ramp
                w, was = c.clamp_w(p * c.rated_w)
                p = w / c.rated_w
                # written while asked for, while the output sits at the ceiling last written (it binds), and
                # while a release ramp has not reached its target
                binding = p_meas[i] > (row.p_out if row.p_engaged else p) - HEADROOM
                ramping = row.p_engaged and p < target - EPS
                engaged = bool(carries) or (p < 1.0 - RELEASED and (asked or local or binding or ramping))
                if engaged:
                    dp.points.update(WMaxLimPct=round(p * 100, 3), WMaxLimPctEna=1)
                    rv = _clip(c.p_max_w / c.rated_w * 100, 0, 100)
                    if self.poc is not None and self.poc.export_limit_w is not None:
                        rv = min(rv, self.poc.fail_safe_pct)
                    if "WMaxLimPctRvrtTms" in meas[d].supports:
                        dp.reversion.update(WMaxLimPctRvrt=round(rv, 3), WMaxLimPctEnaRvrt=int(rv < 100),
                                            WMaxLimPctRvrtTms=int(self._revert(carries, revert)))
                elif row.p_touched:
                    dp.points.update(WMaxLimPct=100, WMaxLimPctEna=0)
            else:
                w, was = c.clamp_w(p * c.rated_w)
                p = w / c.rated_w
                engaged = asked
                if engaged:
                    dp.points.update(WSet=round(w, 1), WSetEna=1)
                    if "WSetRvrtTms" in meas[d].supports:
                        dp.reversion.update(WSetEnaRvrt=0, WSetRvrtTms=int(self._revert(carries, revert)))
                elif row.p_touched:
                    dp.points.update(WSetEna=0)
            if was:
                dp.clamped.append(f"P {p * c.rated_w:g} W ({c.describe()})")
            row.p_out, row.p_engaged = p, engaged
            row.p_touched |= engaged

            q = float(out_q[i])
            var, was = c.clamp_var(q * c.rated_w)
            q_engaged = rq is not None or self.local_q is not None
            if q_engaged:
                dp.points.update(VArSet=round(var, 1), VArSetEna=1)
                if "VArSetRvrtTms" in meas[d].supports:
                    ids = {rq[0].id} if rq is not None else set()
                    dp.reversion.update(VArSetEnaRvrt=0, VArSetRvrtTms=int(self._revert(ids, revert)))
            elif row.q_touched:
                dp.points.update(VArSetEna=0)
            if was:
                dp.clamped.append(f"Q {q * c.rated_w:g} var ({c.describe()})")
            row.q_out, row.q_engaged = var / c.rated_w, q_engaged
            row.q_touched |= q_engaged
        return plan

    def _plan_loads(self, plan: Plan, loads, caps, meas, remote_p, poc_load) -> None:
        """Controllable loads: a consumption cap (WMaxLimPct, % of the load's rating), remote and/or POC."""
        for d in loads:
            c = caps[d]
            dp = plan.devices.setdefault(d, DevicePlan())
            cap_pct = 100.0 * -c.p_min_w / c.rated_w
            rp = remote_p.get(d)
            if rp is not None:
                cap_pct = min(cap_pct, rp[1])
                dp.carries.add(rp[0].id)
                dp.remote = True
            if d in poc_load:
                cap_pct = min(cap_pct, poc_load[d] / c.rated_w * 100)
            if cap_pct < 100.0 - EPS:
                dp.points.update(WMaxLimPct=round(max(cap_pct, 0.0), 3), WMaxLimPctEna=1)
                self._direct_touched.add(d)
            elif d in self._direct_touched:
                dp.points.update(WMaxLimPct=100, WMaxLimPctEna=0)

    def _plan_unrated(self, plan: Plan, caps, remote_p) -> None:
        """A writable inverter or load whose rating is not known yet (no WMax read, none configured) still takes
        a remote limit in %, as it is; the functions that need per-unit values wait for the rating."""
        for d, c in caps.items():
            if not c.writable or c.known or c.kind not in ("inverter", "load"):
                continue
            dp = plan.devices.setdefault(d, DevicePlan())
            rp = remote_p.get(d)
            if rp is not None and rp[0].type == "limit_active_power":
                dp.points.update(WMaxLimPct=round(rp[1], 3), WMaxLimPctEna=1)
                dp.carries.add(rp[0].id)
                dp.remote = True
                self._direct_touched.add(d)
            elif d in self._direct_touched:
                dp.points.update(WMaxLimPct=100, WMaxLimPctEna=0)

    def _revert(self, ids: set[str], revert: Mapping[str, float]) -> float:
        """The device-side revert time: the shortest of the remote set-points carried, else control.revert_s."""
        times = [revert[i] for i in ids if i in revert]
        return min(times) if times else self.revert_s


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
