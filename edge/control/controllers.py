"""The controllers: one unit per function, each with one signature, no I/O.

    contribute(view: CycleView) -> {device: Contribution}

A controller reads the cycle's view of the process image (measurements, capabilities, the activations in force)
and says what it asks of each device: a P ceiling, a battery P set-point, a reactive power function, the P_M of
frequency-watt. The Planner (planner.py) runs them in priority order and merges what they ask: P ceilings
combine by the minimum (a later controller only tightens what the ones before allow), a later P set-point or
reactive power ask replaces an earlier one (a remote Q set-point replaces the local function). A new grid-code
function that limits P or asks for Q is one new unit appended to Planner.controllers.

Powers are per unit of the device's rating (WMax), reactive power > 0 injects; "controlled" devices are the
writable inverters and batteries with a known rating, the ones the kernel runs for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Protocol, Sequence

from gridedge.cext.twin import QMode

from .activation import Activation
from .capability import Capability
from .measure import Meas
from .profiles import GridProfile

LOCAL_Q = {"volt_var": QMode.VOLT_VAR, "watt_var": QMode.WATT_VAR, "constant_pf": QMode.FIXED_PF,
           "constant_q": QMode.FIXED_Q}


@dataclass(frozen=True)
class CycleView:
    """What every controller sees of one cycle. in_force: (activation, effective share per device) from the book."""

    dt: float
    meas: Mapping[str, Meas]
    caps: Mapping[str, Capability]
    in_force: Sequence[tuple[Activation, Mapping[str, float]]] = ()

    @cached_property
    def controlled(self) -> list[str]:
        """Writable inverters and batteries with a known rating: the kernel's rows."""
        return [d for d, c in self.caps.items() if c.writable and c.known and c.kind in ("inverter", "battery")]

    def meas_of(self, device: str) -> Meas:
        return self.meas.get(device, _NONE)


_NONE = Meas()


@dataclass(frozen=True)
class QAsk:
    """A reactive power function for the kernel: Q = q_set (FIXED_Q), from pf (FIXED_PF), or a curve."""

    mode: QMode
    q_set: float = 0.0
    pf: float = 1.0


@dataclass
class Contribution:
    """What one controller asks of one device this cycle; None = nothing."""

    p_ceiling: float | None = None      # inverter: P ceiling; load: consumption cap (pu of the rating)
    p_set: float | None = None          # battery: P set-point (pu; < 0 charges)
    q: QAsk | None = None
    p_m: float | None = None            # frequency-watt: P_M frozen while the frequency is out of band (pu)
    carries_p: set[str] = field(default_factory=set)   # activation ids applied in the P ask
    carries_q: set[str] = field(default_factory=set)


class Controller(Protocol):
    def contribute(self, view: CycleView) -> dict[str, Contribution]: ...


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


# ---------------------------------------------------------------- prequalified limits

class Prequalified:
    """The prequalified limits of the configuration (`[[control.devices]]` p_max_w, p_min_w) as permanent
    ceilings: an inverter's largest P, a controllable load's largest consumption, where below the rating."""

    def contribute(self, view: CycleView) -> dict[str, Contribution]:
        out = {}
        for d, c in view.caps.items():
            if not (c.writable and c.known):
                continue
            ceiling = c.p_max_w / c.rated_w if c.kind == "inverter" else -c.p_min_w / c.rated_w \
                if c.kind == "load" else 1.0
            if ceiling < 1.0:
                out[d] = Contribution(p_ceiling=ceiling)
        return out


# ---------------------------------------------------------------- local grid-code functions

class PmLatch:
    """P_M of the frequency-watt function: the output measured when the frequency leaves the dead band, frozen
    while it stays outside, released when it is back inside (at or within the thresholds). No further hold time
    or deactivation threshold: the rise back follows the response time and the profile's release ramp."""

    def __init__(self) -> None:
        self.p_m: float | None = None

    def update(self, out_of_band: bool, p_meas: float) -> float | None:
        if not out_of_band:
            self.p_m = None
        elif self.p_m is None:
            self.p_m = _clip(p_meas, 0.0, 1.0)
        return self.p_m


class LocalFunctions:
    """The grid-code functions of the profile (control.q_mode; volt-watt and frequency-watt run in the kernel
    with the profile's curves): each controlled device's reactive power function, and each inverter's P_M."""

    def __init__(self, profile: GridProfile, *, q_mode: str = "off", pf: float = 1.0, q_pct: float = 0.0,
                 freq_watt: bool = True) -> None:
        self.profile = profile
        mode = LOCAL_Q.get(q_mode)
        self.q = None if mode is None else QAsk(mode, _clip(q_pct / 100, -1, 1), pf)
        self._q_only = Contribution(q=self.q)     # what most devices get: one object, read only
        self.freq_watt = freq_watt
        self.latches: dict[str, PmLatch] = {}

    def out_of_band(self, hz: float | None) -> bool:
        pr = self.profile
        return self.freq_watt and hz is not None and (hz > pr.f_nom_hz + pr.db_of_hz or hz < pr.f_nom_hz - pr.db_uf_hz)

    def contribute(self, view: CycleView) -> dict[str, Contribution]:
        out = {}
        for d in view.controlled:
            c, m = view.caps[d], view.meas_of(d)
            p_m = None
            if c.kind == "inverter":
                pm = _clip((m.p_w if m.p_w is not None else 0.0) / c.rated_w, -1, 1)
                p_m = self.latches.setdefault(d, PmLatch()).update(self.out_of_band(m.hz), pm)
            if p_m is not None:
                out[d] = Contribution(q=self.q, p_m=p_m)
            elif self.q is not None:
                out[d] = self._q_only
        return out


# ---------------------------------------------------------------- remote set-points

class RemoteSetpoints:
    """The activations in force, traffic-light caps applied (their effective shares): a limit or a P set-point
    is a ceiling on an inverter (it cannot make more than the sun gives) and a cap on a load; a battery follows
    its P set-point; a Q or PF set-point replaces the local reactive power function. A device whose rating is
    not known yet takes only a limit in %, as it is."""

    def contribute(self, view: CycleView) -> dict[str, Contribution]:
        out: dict[str, Contribution] = {}
        for act, eff in view.in_force:
            for d, value in eff.items():
                c = view.caps.get(d)
                if c is None or not c.writable:
                    continue
                ask = out.setdefault(d, Contribution())
                if act.type == "limit_active_power":
                    ask.p_ceiling = value / 100
                elif not c.known:
                    continue
                elif act.type == "set_active_power" and c.kind == "battery":
                    ask.p_set = value / c.rated_w
                elif act.type == "set_active_power":
                    ask.p_ceiling = value / c.rated_w
                elif act.type == "set_reactive_power":
                    ask.q = QAsk(QMode.FIXED_Q, _clip(value / c.rated_w, -1, 1))
                else:
                    ask.q = QAsk(QMode.FIXED_PF, pf=value)
                (ask.carries_p if act.channel == "P" else ask.carries_q).add(act.id)
        return out


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

    def contribute(self, view: CycleView) -> dict[str, Contribution]:
        gens = {d: (view.caps[d], view.meas_of(d).p_w or 0.0) for d in view.controlled
                if view.caps[d].kind == "inverter"}
        loads = {d: (c, view.meas_of(d).p_w or 0.0) for d, c in view.caps.items()
                 if c.writable and c.known and c.kind == "load"}
        gen, load = self.step(view.meas_of(self.meter), gens, loads)
        return {d: Contribution(p_ceiling=w / view.caps[d].rated_w) for d, w in (gen | load).items()}

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
                produced = sum(max(p, 0.0) for _, p in gens.values())
                self.gen_cap_w = self._move(self.gen_cap_w, self.export_limit_w - export, produced, gen_rated)
            if self.import_limit_w is not None and loads:
                consumed = sum(max(-p, 0.0) for _, p in loads.values())
                self.load_cap_w = self._move(self.load_cap_w, self.import_limit_w + export, consumed, load_rated)
        gen = {} if self.gen_cap_w is None or not gen_rated else {
            d: self.gen_cap_w * c.p_max_w / gen_rated for d, (c, _) in gens.items()}
        load = {} if self.load_cap_w is None or not load_rated else {
            d: self.load_cap_w * -c.p_min_w / load_rated for d, (c, _) in loads.items()}
        return gen, load

    def _move(self, cap: float | None, err: float, now_w: float, rated: float) -> float | None:
        """One step of the loop on a total (W): err > 0 is room to spare. None = released."""
        base = now_w if cap is None else min(cap, now_w + 0.05 * rated)
        if cap is None and err >= 0:
            return None
        new = min(max(base + self.gain * err, 0.0), rated)
        return None if (err > 0 and new >= rated - 1e-6) else new
