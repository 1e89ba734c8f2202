"""One control cycle without I/O: the controllers, the kernel, the points each device gets (the engine writes).

    Planner.plan(dt, meas, caps, in_force) -> Plan
      1. ask      every controller in priority order (controllers.py): Prequalified, LocalFunctions,
                  RemoteSetpoints, PocLimit; their asks merged per device (`Ask`)
      2. respond  `gridedge.cext.cycle` for all controlled inverters and batteries at once: volt-watt and
                  frequency-watt, the reactive power function, responses (OLRT), ramps, the S = 1 pu capability
      3. points   each device's set-points in canonical point names, clamped to its capability and prequalified
                  limits (capability.py), with the device-side reversion where the device has it

P of an inverter is a ceiling (WMaxLimPct): it produces min(ceiling, what the sun gives). The kernel computes the
ceiling of the local functions (volt-watt, frequency-watt, with their response time); the other ceilings
(prequalified, remote, POC) apply after it, at once, and any rise of the result is held to the profile's release
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
from .controllers import (Contribution, Controller, CycleView, LocalFunctions, PocLimit, Prequalified, QAsk,
                          RemoteSetpoints)
from .measure import Meas
from .profiles import GridProfile

HEADROOM = 0.05     # pu of the rating kept above the measured output while no P ceiling is written
EPS = 1e-6
RELEASED = 1e-3     # a ceiling within 0.1 % of the rating is released (below the write dead band)
NEUTRAL_VW = ((0.0, 1.0), (2.0, 1.0))
NO_DROOP_HZ = 1000.0  # a dead band no frequency leaves: frequency-watt off
NO_Q = QAsk(QMode.FIXED_Q)


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
class Ask:
    """What the controllers ask of one device this cycle, merged in their priority order."""

    p_ceiling: float = 1.0
    p_set: float | None = None
    q: QAsk | None = None
    p_m: float | None = None
    carries_p: set[str] = field(default_factory=set)
    carries_q: set[str] = field(default_factory=set)
    ceilinged: bool = False       # some controller asked for a P ceiling below the rating

    def add(self, c: Contribution) -> None:
        if c.p_ceiling is not None:
            self.p_ceiling = min(self.p_ceiling, c.p_ceiling)
            self.ceilinged |= c.p_ceiling < 1.0 - EPS
        self.p_set = c.p_set if c.p_set is not None else self.p_set
        self.q = c.q if c.q is not None else self.q
        self.p_m = c.p_m if c.p_m is not None else self.p_m
        self.carries_p |= c.carries_p
        self.carries_q |= c.carries_q


@dataclass
class _Row:
    """What the points stage remembers of one device between cycles."""

    p_out: float = 1.0            # last P written, pu (a ceiling for inverters, the set-point for batteries)
    p_loc: float = 1.0            # inverters: the local functions' ceiling (the kernel's state), pu
    q_out: float = 0.0
    p_engaged: bool = False
    q_engaged: bool = False
    p_touched: bool = False       # a P set-point was written once: disengaging writes the safe default
    q_touched: bool = False


class Planner:
    """Runs the controllers, the kernel and the points stage for one cycle; holds their state between cycles."""

    def __init__(self, profile: GridProfile, *, v_nom_v: float = 230.0, q_mode: str = "off", pf: float = 1.0,
                 q_pct: float = 0.0, volt_watt: bool = False, freq_watt: bool = True, revert_s: float = 60.0,
                 poc: PocLimit | None = None, kernels=None) -> None:
        if kernels is None:
            import gridedge.cext as kernels
        self.k = kernels
        self.profile = profile
        self.v_nom_v = v_nom_v
        self.volt_watt = volt_watt
        self.freq_watt = freq_watt
        self.revert_s = revert_s
        self.poc = poc
        self.local = LocalFunctions(profile, q_mode=q_mode, pf=pf, q_pct=q_pct, freq_watt=freq_watt)
        #: in priority order; a new function that limits P or asks for Q is one more unit here
        self.controllers: list[Controller] = [Prequalified(), self.local, RemoteSetpoints()] + ([poc] if poc else [])
        self.rows: dict[str, _Row] = {}
        self._ramp_up = profile.ramp_up_pct_per_s / 100 if profile.ramp_up_pct_per_s > 0 else math.inf
        self._params: CycleParams | None = None
        self._params_key: tuple | None = None

    def assume_set(self, device: str, channel: str) -> None:
        """A previous run of the agent left a set-point of this quantity (P or Q) on the device: write the safe
        default once nothing asks for one (the device may have no reversion of its own)."""
        row = self.rows.setdefault(device, _Row())
        if channel == "P":
            row.p_touched = True
        else:
            row.q_touched = True

    def plan(self, dt: float, meas: Mapping[str, Meas], caps: Mapping[str, Capability],
             in_force: Sequence[tuple[Activation, Mapping[str, float]]]) -> Plan:
        """One cycle. in_force: (activation, effective share per device) from the book."""
        view = CycleView(dt, meas, caps, in_force)
        asks = self.ask(view)
        revert = {act.id: act.revert_s for act, _ in in_force}
        plan = Plan()
        for d, c in caps.items():
            if c.writable and c.kind == "load" or c.writable and not c.known and c.kind == "inverter":
                self._direct_points(plan, d, c, asks.get(d, Ask()))
        controlled = view.controlled
        for d in controlled:
            asks.setdefault(d, Ask())
        if controlled:
            out_p, out_q, vw = self.respond(view, controlled, asks)
            for i, d in enumerate(controlled):
                self._points(plan, view, d, asks[d], float(out_p[i]), float(out_q[i]), vw[i], revert)
        return plan

    # ---- 1. ask

    def ask(self, view: CycleView) -> dict[str, Ask]:
        asks: dict[str, Ask] = {}
        for controller in self.controllers:
            for d, contribution in controller.contribute(view).items():
                asks.setdefault(d, Ask()).add(contribution)
        return asks

    # ---- 2. respond: the kernel

    def _cycle_params(self, kinds: Sequence[str], qs: Sequence[QAsk]) -> CycleParams:
        """The kernel's parameters, rebuilt only when the rows or their reactive power functions change."""
        key = (tuple(kinds), tuple(qs))
        if key == self._params_key:
            return self._params
        n = len(kinds)
        pr = self.profile
        batt = np.array([k == "battery" for k in kinds])
        vw_pts = [pr.volt_watt if (self.volt_watt and k == "inverter") else NEUTRAL_VW for k in kinds]
        db = (pr.db_of_hz, pr.db_uf_hz) if self.freq_watt else (NO_DROOP_HZ, NO_DROOP_HZ)
        rate = lambda pct: math.inf if pct <= 0 else pct / 100  # noqa: E731
        params = CycleParams(
            n=n, volt_var=Curve.uniform(pr.volt_var, n, "volt-var"), volt_watt=Curve.from_points(vw_pts, "volt-watt"),
            watt_var=Curve.uniform(pr.watt_var, n, "watt-var"), f_nom=pr.f_nom_hz, dbof=db[0], dbuf=db[1],
            kof=pr.k_of_pct / 100, kuf=pr.k_uf_pct / 100, p_min=np.where(batt, -1.0, 0.0),
            q_mode=np.array([int(q.mode) for q in qs], dtype=np.intc), q_set=np.array([q.q_set for q in qs]),
            pf_set=np.array([q.pf for q in qs]), p_priority=False,
            of_momentary=~batt & (pr.of_reference == "p_momentary"),   # storage: in P_max (it may go on to charge)
            olrt_p=np.where(batt, 0.0, pr.olrt_p_s), olrt_vw=np.where(batt, 0.0, pr.olrt_vw_s), olrt_q=pr.olrt_q_s,
            ramp_up_p=np.where(batt, math.inf, rate(pr.ramp_up_pct_per_s)),
            ramp_dn_p=np.where(batt, math.inf, rate(pr.ramp_dn_pct_per_s)), ramp_q=math.inf)
        self._params, self._params_key = params, key
        return params

    def respond(self, view: CycleView, controlled: Sequence[str], asks: Mapping[str, Ask]):
        """The kernel for all controlled devices: (P pu, Q pu, volt-watt P target pu) per row."""
        n = len(controlled)
        caps = view.caps
        params = self._cycle_params([caps[d].kind for d in controlled], [asks[d].q or NO_Q for d in controlled])
        f_nom = self.profile.f_nom_hz
        v = np.empty(n); f = np.empty(n); p_avail = np.empty(n); p_prev = np.empty(n)  # noqa: E702
        q_prev = np.empty(n); p_pre = np.ones(n); p_lo = np.zeros(n); p_meas = np.empty(n)  # noqa: E702
        for i, d in enumerate(controlled):
            c, m, a = caps[d], view.meas_of(d), asks[d]
            row = self.rows.setdefault(d, _Row())
            pm = _clip((m.p_w if m.p_w is not None else 0.0) / c.rated_w, -1, 1)
            qm = _clip((m.q_var if m.q_var is not None else 0.0) / c.rated_w, -1, 1)
            v[i] = m.v_v / self.v_nom_v if m.v_v is not None else 1.0
            f[i] = m.hz if m.hz is not None else f_nom
            p_meas[i] = pm
            if c.kind == "inverter":
                # the local functions' ceiling only: the other ceilings apply after the kernel, at once (they are
                # instructions, not autonomous functions with a response time)
                p_avail[i] = 1.0
                p_pre[i] = a.p_m if a.p_m is not None else 1.0
                p_prev[i] = min(row.p_loc, max(pm, 0.0) + HEADROOM)
            else:  # battery: P is a set-point, from the remote activation; absent, the battery is not driven
                hi, lo = c.p_max_w / c.rated_w, c.p_min_w / c.rated_w
                p_avail[i] = max(hi, 0.0)
                p_lo[i] = min(lo, 0.0)
                if m.soc_pct is not None:
                    if m.soc_pct <= 5.0:
                        p_avail[i] = 0.0
                    if m.soc_pct >= 95.0:
                        p_lo[i] = 0.0
                sp = _clip(a.p_set, lo, hi) if a.p_set is not None else 0.0
                p_pre[i] = _clip(sp, p_lo[i], p_avail[i])
                p_prev[i] = row.p_out if row.p_engaged else pm
            q_prev[i] = row.q_out if row.q_engaged else qm
        out_p, out_q = self.k.cycle(params, CycleInputs(v=v, f=f, p_avail=p_avail, p_limit=np.ones(n),
                                                        p_prev=p_prev, q_prev=q_prev, p_pre=p_pre, p_lo=p_lo,
                                                        p_meas=p_meas), view.dt)
        vw = params.volt_watt
        vw_target = self.k.curve_eval(vw.xs, vw.ys, vw.npts, v) if self.volt_watt else np.ones(n)
        return out_p, out_q, vw_target

    # ---- 3. points

    def _points(self, plan: Plan, view: CycleView, d: str, a: Ask, p: float, q: float, vw_target: float,
                revert: Mapping[str, float]) -> None:
        """A controlled device's set-points: engagement, the release ramp, the clamp, the device-side reversion."""
        c, row, supports = view.caps[d], self.rows[d], view.meas_of(d).supports
        dp = plan.devices.setdefault(d, DevicePlan())
        dp.carries |= a.carries_p | a.carries_q
        dp.remote = bool(dp.carries)
        if c.kind == "inverter":
            row.p_loc = p
            p_meas = _clip((view.meas_of(d).p_w or 0.0) / c.rated_w, -1, 1)
            local = vw_target < 1.0 - EPS or a.p_m is not None     # volt-watt or P(f) out of band
            s_room = math.sqrt(max(0.0, 1.0 - q ** 2))             # Q priority: S = 1 pu
            target = min(_clip(a.p_ceiling, 0.0, 1.0), p if local else 1.0, s_room)
            prev = row.p_out if row.p_engaged else min(1.0, max(p_meas, 0.0) + HEADROOM)
            p = min(target, prev + self._ramp_up * view.dt) if target > prev else target   # release ramp
            w, was = c.clamp_w(p * c.rated_w)
            p = w / c.rated_w
            # written while asked for, while the output sits at the ceiling last written (it binds), and while a
            # release ramp has not reached its target
            binding = p_meas > (row.p_out if row.p_engaged else p) - HEADROOM
            ramping = row.p_engaged and p < target - EPS
            asked = a.ceilinged or a.p_m is not None
            engaged = bool(a.carries_p) or (p < 1.0 - RELEASED and (asked or local or binding or ramping))
            if engaged:
                dp.points.update(WMaxLimPct=round(p * 100, 3), WMaxLimPctEna=1)
                rv = _clip(c.p_max_w / c.rated_w * 100, 0, 100)
                if self.poc is not None and self.poc.export_limit_w is not None:
                    rv = min(rv, self.poc.fail_safe_pct)
                if "WMaxLimPctRvrtTms" in supports:
                    dp.reversion.update(WMaxLimPctRvrt=round(rv, 3), WMaxLimPctEnaRvrt=int(rv < 100),
                                        WMaxLimPctRvrtTms=int(self._revert(a.carries_p, revert)))
            elif row.p_touched:
                dp.points.update(WMaxLimPct=100, WMaxLimPctEna=0)
        else:
            w, was = c.clamp_w(p * c.rated_w)
            p = w / c.rated_w
            engaged = a.p_set is not None
            if engaged:
                dp.points.update(WSet=round(w, 1), WSetEna=1)
                if "WSetRvrtTms" in supports:
                    dp.reversion.update(WSetEnaRvrt=0, WSetRvrtTms=int(self._revert(a.carries_p, revert)))
            elif row.p_touched:
                dp.points.update(WSetEna=0)
        if was:
            dp.clamped.append(f"P {p * c.rated_w:g} W ({c.describe()})")
        row.p_out, row.p_engaged = p, engaged
        row.p_touched |= engaged

        var, was = c.clamp_var(q * c.rated_w)
        q_engaged = a.q is not None
        if q_engaged:
            dp.points.update(VArSet=round(var, 1), VArSetEna=1)
            if "VArSetRvrtTms" in supports:
                dp.reversion.update(VArSetEnaRvrt=0, VArSetRvrtTms=int(self._revert(a.carries_q, revert)))
        elif row.q_touched:
            dp.points.update(VArSetEna=0)
        if was:
            dp.clamped.append(f"Q {q * c.rated_w:g} var ({c.describe()})")
        row.q_out, row.q_engaged = var / c.rated_w, q_engaged
        row.q_touched |= q_engaged

    def _direct_points(self, plan: Plan, d: str, c: Capability, a: Ask) -> None:
        """A controllable load (a consumption cap, % of its rating), or an inverter whose rating is not known yet
        (no WMax read, none configured: it takes a remote limit in %, as it is; the functions that need per-unit
        values wait for the rating): WMaxLimPct straight from the asks, no kernel."""
        dp = plan.devices.setdefault(d, DevicePlan())
        dp.carries |= a.carries_p
        dp.remote = bool(a.carries_p)
        row = self.rows.setdefault(d, _Row())
        cap_pct = 100.0 * a.p_ceiling
        if cap_pct < 100.0 - EPS or (a.carries_p and not c.known):
            dp.points.update(WMaxLimPct=round(max(cap_pct, 0.0), 3), WMaxLimPctEna=1)
            row.p_touched = True
        elif row.p_touched:
            dp.points.update(WMaxLimPct=100, WMaxLimPctEna=0)

    def _revert(self, ids: set[str], revert: Mapping[str, float]) -> float:
        """The device-side revert time: the shortest of the remote set-points carried, else control.revert_s."""
        times = [revert[i] for i in ids if i in revert]
        return min(times) if times else self.revert_s


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x
