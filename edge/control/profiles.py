"""Grid-code parameter profiles (IEEE 1547-2018 Category B, EN 50549-1 / VDE-AR-N 4105) and curve checks.

A profile is a set of defaults; the configuration picks one (`control.profile`) and may override any value
(`[control.settings]`). Curves are parameters, never constants: national settings and the DSO decide the
actual values (domain brief section 6). Voltages are per unit of `v_nom_v`, powers per unit of the device's
rating (WMax), reactive power > 0 is injection (over-excited).

The IEEE values are the standard's Category B defaults (Tables 8-10, 6.5.2.7). The EN 50549 / VDE-AR-N 4105
values are gridedge's defaults within the ranges those documents give (LFSM-O from 50.2 Hz at 5 %, cos phi 0.95
under-excited at full power for cos phi(P), Q(U) up to cos phi 0.95); a DSO's own settings replace them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


from gridedge.core import schema as s

Points = tuple[tuple[float, float], ...]

Q_MODES = ("off", "volt_var", "watt_var", "constant_pf", "constant_q")
#: What the over-frequency reduction counts in: the momentary power P_M frozen when the threshold is crossed
#: (VDE-AR-N 4105) or the rating P_max (IEEE 1547); EN 50549-1 allows either.
OF_REFERENCES = ("p_momentary", "p_max")


@dataclass(frozen=True)
class GridProfile:
    """Settings of the autonomous functions; rates in % of WMax per second, times in s, droop in %."""

    name: str
    title: str
    f_nom_hz: float
    volt_var: Points
    volt_watt: Points
    watt_var: Points
    olrt_q_s: float          # open-loop response time of the reactive power functions (90 % of a step)
    olrt_p_s: float          # of frequency-watt
    olrt_vw_s: float         # of volt-watt
    db_of_hz: float          # frequency-watt dead band above f_nom
    db_uf_hz: float          # ... and below
    k_of_pct: float          # droop: % of f_nom for the full rated P, over-frequency
    k_uf_pct: float
    ramp_up_pct_per_s: float  # increase of the P ceiling (release after a limit); 0 = unlimited
    ramp_dn_pct_per_s: float  # 0 = unlimited (a curtailment acts at once)
    of_reference: str = "p_max"   # OF_REFERENCES: over-frequency reduction in P_M or in P_max
    notes: str = ""

    def with_settings(self, **settings) -> "GridProfile":
        known = {f for f in self.__dataclass_fields__ if f not in ("name", "title", "notes")}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown profile setting(s): {', '.join(sorted(unknown))}")
        if settings.get("of_reference", self.of_reference) not in OF_REFERENCES:
            raise ValueError(f"of_reference must be one of {', '.join(OF_REFERENCES)}")
        return replace(self, **settings)


IEEE1547_CAT_B = GridProfile(
    name="ieee1547_cat_b", title="IEEE 1547-2018 Category B (default settings)",
    f_nom_hz=60.0,
    volt_var=((0.92, 0.44), (0.98, 0.0), (1.02, 0.0), (1.08, -0.44)),
    volt_watt=((1.06, 1.0), (1.10, 0.0)),
    watt_var=((0.2, 0.0), (0.5, 0.0), (1.0, -0.44)),
    olrt_q_s=5.0, olrt_p_s=5.0, olrt_vw_s=10.0,   # volt-var 5 s, frequency droop 5 s, volt-watt 10 s
    db_of_hz=0.036, db_uf_hz=0.036, k_of_pct=5.0, k_uf_pct=5.0,
    ramp_up_pct_per_s=0.0, ramp_dn_pct_per_s=0.0, of_reference="p_max",
    notes="Table 8 volt-var, Table 9 watt-var, Table 10 volt-watt, 6.5.2.7 frequency droop (in P_max)",
)

EN50549_VDE4105 = GridProfile(
    name="en50549_vde4105", title="EN 50549-1 / VDE-AR-N 4105 (gridedge defaults within the code's ranges)",
    f_nom_hz=50.0,
    volt_var=((0.92, 0.33), (0.96, 0.0), (1.04, 0.0), (1.08, -0.33)),
    volt_watt=((1.08, 1.0), (1.10, 0.0)),
    watt_var=((0.0, 0.0), (0.5, 0.0), (1.0, -0.33)),
    olrt_q_s=10.0, olrt_p_s=2.0, olrt_vw_s=2.0,
    db_of_hz=0.2, db_uf_hz=0.2, k_of_pct=5.0, k_uf_pct=5.0,
    ramp_up_pct_per_s=10.0 / 60.0, ramp_dn_pct_per_s=0.0,   # 10 % of WMax per minute after a limit is lifted
    of_reference="p_momentary",   # VDE-AR-N 4105: 40 %/Hz of P_M (EN 50549-1 also allows P_max)
    notes="LFSM-O 50.2 Hz / 5 % of P_M (40 %/Hz), LFSM-U 49.8 Hz / 5 % of P_max (storage), cos phi(P) 0.95 "
          "under-excited at P = 1, Q(U) to cos phi 0.95; the DSO's settings replace these",
)

PROFILES: dict[str, GridProfile] = {p.name: p for p in (EN50549_VDE4105, IEEE1547_CAT_B)}


# ---------------------------------------------------------------- curve checks

@dataclass(frozen=True)
class CurveRule:
    """What a curve's points must satisfy: x strictly ascending within x_range, y within y_range."""

    name: str
    x_what: str
    y_what: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    min_points: int = 2
    max_points: int = 10


CURVE_RULES = {
    "volt_var": CurveRule("volt-var", "voltage", "Q", (0.5, 1.5), (-1.0, 1.0)),
    "volt_watt": CurveRule("volt-watt", "voltage", "P", (0.5, 1.5), (0.0, 1.0)),
    "watt_var": CurveRule("watt-var", "P", "Q", (-1.0, 1.0), (-1.0, 1.0)),
}


def curve_issues(name: str, points, q_limit_pu: float | None = None,
                 q_limit_why: str = "") -> tuple[Points | None, list[s.Issue]]:
    """Check one curve; issues carry paths relative to the curve ((i,) or (i, 0|1)).

    q_limit_pu, when known, is the smallest reactive capability (per unit of WMax) of the devices the curve
    applies to: a Q beyond it is an error, named with q_limit_why (e.g. "inv1: q_max_var 4400 var").
    """
    rule = CURVE_RULES[name]
    issues: list[s.Issue] = []
    if not isinstance(points, (list, tuple)):
        return None, [s.Issue((), f"must be an array of [{rule.x_what}, {rule.y_what}] pairs, got {s.describe(points)}")]
    if not rule.min_points <= len(points) <= rule.max_points:
        issues.append(s.Issue((), f"needs {rule.min_points} to {rule.max_points} points, got {len(points)}"))
    clean: list[tuple[float, float]] = []
    for i, pt in enumerate(points):
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            issues.append(s.Issue((i,), f"must be a pair [{rule.x_what} pu, {rule.y_what} pu], got {s.describe(pt)}"))
            continue
        vals = []
        for j, v in enumerate(pt):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                issues.append(s.Issue((i, j), f"must be a finite number, got {s.describe(v)}"))
            else:
                vals.append(float(v))
        if len(vals) != 2:
            continue
        x, y = vals
        lo, hi = rule.x_range
        if not lo <= x <= hi:
            issues.append(s.Issue((i, 0), f"{rule.x_what} {x:g} pu outside {lo:g}..{hi:g}"))
        lo, hi = rule.y_range
        if not lo <= y <= hi:
            issues.append(s.Issue((i, 1), f"{rule.y_what} {y:g} pu outside {lo:g}..{hi:g}"))
        elif rule.y_what == "Q" and q_limit_pu is not None and abs(y) > q_limit_pu + 1e-9:
            issues.append(s.Issue((i, 1), f"Q {y:g} pu exceeds the device capability {q_limit_pu:.3g} pu ({q_limit_why})"))
        if clean and x <= clean[-1][0]:
            issues.append(s.Issue((i, 0), f"{rule.x_what} {x:g} must be above the previous point's {clean[-1][0]:g} "
                                          f"(points ascend)"))
        clean.append((x, y))
    return (tuple(clean) if not issues else None), issues


def profile_issues(profile: GridProfile, q_limit_pu: float | None = None, q_limit_why: str = "") -> list[s.Issue]:
    """Every curve of a profile checked; paths are (curve name, point, coordinate)."""
    out: list[s.Issue] = []
    for name in CURVE_RULES:
        _, issues = curve_issues(name, getattr(profile, name), q_limit_pu, q_limit_why)
        out += [s.Issue((name,) + i.path, i.message) for i in issues]
    return out
