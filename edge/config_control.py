"""The [control] section: local control, the grid-code profile and its settings, the point of connection and the
prequalified limits of the controlled devices; checked against itself and the [[devices]]."""
from __future__ import annotations

from typing import Any

from gridedge.control.profiles import OF_REFERENCES, PROFILES, Q_MODES
from gridedge.core import schema as s

from .config_devices import ID

__all__ = ["ACTORS", "CONTROL", "control_issues"]

ACTORS = ("tso", "dso", "aggregator")
GW = 1e9  # W: above any site one gateway serves, and every product of two such powers stays finite

CONTROL = s.Dict({
    "cycle_ms": s.Optional(s.Int(ge=10, le=60000), default=200, doc="control loop period, ms"),
    "max_activation_s": s.Optional(s.Int(gt=0, le=7 * 86400), default=86400, doc="longest activation accepted, s"),
    "revert_s": s.Optional(s.Int(ge=1, le=65535), default=60,
                           doc="remote set-points revert after this long without uplink, s"),
    "priorities": s.Optional(s.List(s.Str(choices=ACTORS), min_len=1, unique=True),
                             default=list(ACTORS), doc="which actor wins a conflict, first wins"),
    "schedule_horizon_s": s.Optional(s.Int(ge=0, le=7 * 86400), default=172800,
                                     doc="how far ahead an activation may be scheduled, s"),
    "profile": s.Optional(s.Str(choices=tuple(PROFILES)), default="en50549_vde4105",
                          doc="grid-code parameter profile"),
    "v_nom_v": s.Optional(s.Float(gt=0, le=100000), default=230.0, doc="reference voltage of the curves, V"),
    "q_mode": s.Optional(s.Str(choices=Q_MODES),
                         default="off", doc="local reactive power function"),
    "pf": s.Optional(s.Float(ge=-1, le=1), default=1.0, doc="power factor for constant_pf, > 0 injects Q"),
    "q_pct": s.Optional(s.Float(ge=-100, le=100), default=0.0, doc="Q for constant_q, % of WMax"),
    "volt_watt": s.Optional(s.Bool(), default=False, doc="local volt-watt P(U)"),
    "freq_watt": s.Optional(s.Bool(), default=True, doc="local frequency-watt P(f)"),
    "write_deadband_pct": s.Optional(s.Float(ge=0, le=10), default=0.2,
                                     doc="a set-point change smaller than this (% of rating) is not written"),
    "settings": s.Optional(s.Dict({
        "f_nom_hz": s.Optional(s.Float(ge=40, le=70), doc="nominal frequency, Hz"),
        "volt_var": s.Optional(s.Custom(lambda v: v), doc="volt-var curve, [[V pu, Q pu], ...]"),
        "volt_watt": s.Optional(s.Custom(lambda v: v), doc="volt-watt curve, [[V pu, P pu], ...]"),
        "watt_var": s.Optional(s.Custom(lambda v: v), doc="watt-var curve, [[P pu, Q pu], ...]"),
        "olrt_q_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, reactive power, s"),
        "olrt_p_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, P(f), s"),
        "olrt_vw_s": s.Optional(s.Float(ge=0, le=600), doc="open-loop response time, volt-watt, s"),
        "of_reference": s.Optional(s.Str(choices=OF_REFERENCES),
                                   doc="over-frequency reduction in the momentary power or the rating"),
        "db_of_hz": s.Optional(s.Float(ge=0, le=5), doc="P(f) dead band above f_nom, Hz"),
        "db_uf_hz": s.Optional(s.Float(ge=0, le=5), doc="P(f) dead band below f_nom, Hz"),
        "k_of_pct": s.Optional(s.Float(ge=1, le=20), doc="over-frequency droop, %"),
        "k_uf_pct": s.Optional(s.Float(ge=1, le=20), doc="under-frequency droop, %"),
        "ramp_up_pct_per_s": s.Optional(s.Float(ge=0, le=1000), doc="P ceiling increase limit, %/s; 0 = none"),
        "ramp_dn_pct_per_s": s.Optional(s.Float(ge=0, le=1000), doc="P ceiling decrease limit, %/s; 0 = none"),
    }), default={}),
    "poc": s.Optional(s.Dict({
        "meter": s.Required(s.Str(regex=f"{ID}{{1,32}}", regex_hint="be a device id"),
                            "device id of the site meter at the point of connection"),
        "export_limit_w": s.Optional(s.Float(ge=0, le=GW), doc="largest export at the point of connection, W"),
        "import_limit_w": s.Optional(s.Float(ge=0, le=GW), doc="largest import at the point of connection, W"),
        "fail_safe_pct": s.Optional(s.Float(ge=0, le=100), default=100.0,
                                    doc="generator ceiling when the meter is silent, % of WMax"),
    })),
    "devices": s.Optional(s.List(s.Dict({
        "id": s.Required(s.Str(regex=f"{ID}{{1,32}}", regex_hint="be a device id"), "a [[devices]] id"),
        "rated_w": s.Optional(s.Float(gt=0, le=GW), doc="rating, W, if the device does not report WMax"),
        "p_max_w": s.Optional(s.Float(ge=-GW, le=GW), doc="prequalified largest P (export), W"),
        "p_min_w": s.Optional(s.Float(ge=-GW, le=GW), doc="prequalified smallest P, W (< 0: storage may charge)"),
        "q_max_var": s.Optional(s.Float(ge=0, le=GW), doc="reactive capability, var (each direction)"),
    }), unique_key="id"), default=[]),
})


def control_issues(ctl: Any, devices: list) -> list[s.Issue]:
    """The control section against itself and the devices: curves, the site meter, prequalified limits."""
    from gridedge.control.profiles import curve_issues, profile_issues

    if not isinstance(ctl, dict):
        return []
    issues: list[s.Issue] = []
    roles = {d["id"]: d.get("role") for d in devices if isinstance(d, dict) and "id" in d}
    if ctl.get("pf") == 0.0:
        issues.append(s.Issue(("control", "pf"), "must not be 0 (|pf| in (0, 1]; > 0 injects, < 0 absorbs reactive power)"))
    # the smallest reactive capability among devices with a known rating: curves must fit every device
    q_limit, why = None, ""
    for i, d in enumerate(ctl.get("devices") or ()):
        if not isinstance(d, dict):
            continue
        if "id" in d and d["id"] not in roles:
            issues.append(s.Issue(("control", "devices", i, "id"), f"no device {d['id']!r} in [[devices]]"
                                  + (f" (devices: {', '.join(roles)})" if roles else "")))
        if d.get("p_min_w") is not None and d.get("p_max_w") is not None and d["p_min_w"] > d["p_max_w"]:
            issues.append(s.Issue(("control", "devices", i, "p_min_w"),
                                  f"must not be above p_max_w ({d['p_min_w']:g} > {d['p_max_w']:g})"))
        if roles.get(d.get("id")) == "inverter" and d.get("p_min_w") is not None and d["p_min_w"] < 0:
            issues.append(s.Issue(("control", "devices", i, "p_min_w"),
                                  f"an inverter cannot absorb active power, got {d['p_min_w']:g}"))
        if d.get("rated_w") is not None and d.get("p_max_w") is not None and d["p_max_w"] > d["rated_w"]:
            issues.append(s.Issue(("control", "devices", i, "p_max_w"),
                                  f"must not exceed rated_w ({d['p_max_w']:g} > {d['rated_w']:g})"))
        if d.get("q_max_var") is not None and d.get("rated_w"):
            pu = d["q_max_var"] / d["rated_w"]
            if q_limit is None or pu < q_limit:
                q_limit, why = pu, f"{d.get('id')}: q_max_var {d['q_max_var']:g} var of rated_w {d['rated_w']:g} W"
    settings = ctl.get("settings") if isinstance(ctl.get("settings"), dict) else {}
    for name in ("volt_var", "volt_watt", "watt_var"):
        if name in settings:
            _, found = curve_issues(name, settings[name], q_limit, why)
            issues += [s.Issue(("control", "settings", name) + i.path, i.message) for i in found]
    profile = PROFILES.get(ctl.get("profile"))
    if profile is not None and q_limit is not None:
        for i in profile_issues(profile, q_limit, why):
            if i.path[0] not in settings:
                issues.append(s.Issue(("control", "profile"), f"{profile.name} {i.path[0]} point {i.path[1]}: "
                                                              f"{i.message}; set control.settings.{i.path[0]}"))
    poc = ctl.get("poc")
    if isinstance(poc, dict):
        meter = poc.get("meter")
        if meter is not None and meter not in roles:
            issues.append(s.Issue(("control", "poc", "meter"), f"no device {meter!r} in [[devices]]"
                                  + (f" (devices: {', '.join(roles)})" if roles else "")))
        elif meter is not None and roles[meter] != "meter":
            issues.append(s.Issue(("control", "poc", "meter"), f"{meter!r} is not a meter (role {roles[meter]!r})"))
        if "export_limit_w" not in poc and "import_limit_w" not in poc:
            issues.append(s.Issue(("control", "poc"), "needs export_limit_w, import_limit_w or both"))
    return issues
