"""Pure numpy twin of the control kernels: the readable oracle, and the fallback when the extension is absent.

The compiled module `gridedge.cext._kernels` has the same functions with the same signatures and calls the
same validation helpers defined here, so both raise identical ValueErrors on bad input.

Conventions (IEEE 1547-2018 / EN 50549 style, generator sign convention):
- P and Q are per unit of the device's rated apparent power S (S = 1 pu); voltage is per unit of V_ref;
  frequency in Hz; times in s; rates in pu/s.
- Q > 0 injects reactive power (over-excited), Q < 0 absorbs it (under-excited).
- A signed power factor: pf > 0 means injecting Q (over-excited), pf < 0 absorbing; |pf| in (0, 1].
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LN10 = math.log(10.0)


class QMode(enum.IntEnum):
    """How a device's reactive power target is formed in cycle() (values are the int codes the kernels see)."""

    VOLT_VAR = 0  # Q(U) from the volt-var curve
    FIXED_Q = 1  # Q = q_set
    FIXED_PF = 2  # Q = sign(pf) * |P| * tan(acos |pf|)
    WATT_VAR = 3  # Q(P) from the watt-var curve


# --------------------------------------------------------------------------- validation (shared with Cython)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _float_array(name: str, value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not convertible to a float64 array ({exc})") from None


def as_vector(name: str, value, n: int | None = None, *, allow_inf: bool = False) -> np.ndarray:
    """A C-contiguous float64 (n,) array; a scalar is broadcast to n. Rejects NaN (and inf unless allowed)."""
    a = _float_array(name, value)
    if a.ndim == 0:
        if n is None:
            raise ValueError(f"{name}: expected a 1-D array, got a scalar")
        a = np.full(n, float(a))
    elif a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    elif n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match the number of devices N={n}")
    bad = np.isnan(a) if allow_inf else ~np.isfinite(a)
    if bad.any():
        i = _first(bad)
        raise ValueError(f"{name}: device {i}: value {float(a[i])!r} is not {'a number' if allow_inf else 'finite'}")
    return np.ascontiguousarray(a)


def check_range(name: str, a: np.ndarray, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """ValueError naming the first device whose value lies outside [lo, hi] (or (lo, hi] with lo_open)."""
    if lo is not None:
        bad = a <= lo if lo_open else a < lo
        if bad.any():
            i = _first(bad)
            raise ValueError(f"{name}: device {i}: value {float(a[i])!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bad = a > hi
        if bad.any():
            i = _first(bad)
            raise ValueError(f"{name}: device {i}: value {float(a[i])!r} must be <= {hi}")


def check_dt(dt) -> float:
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise ValueError(f"dt: expected a number of seconds, got {dt!r}") from None
    if not (math.isfinite(dt) and dt > 0.0):
        raise ValueError(f"dt: must be finite and > 0 s, got {dt!r}")
    return dt


def check_out(name: str, out, n: int) -> np.ndarray:
    """A caller-provided output array must be a writable C-contiguous float64 (n,) array; None allocates one."""
    if out is None:
        return np.empty(n, dtype=np.float64)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (n,):
        shape = getattr(out, "shape", None)
        raise ValueError(f"{name}: expected a float64 array of shape ({n},), got {type(out).__name__} {shape}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name}: must be C-contiguous and writable")
    return out


def check_curve(name: str, xs, ys, npts, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (xs, ys, npts) of N piecewise-linear curves; xs must strictly ascend over the used points."""
    xs = _float_array(f"{name} xs", xs)
    ys = _float_array(f"{name} ys", ys)
    if xs.ndim != 2:
        raise ValueError(f"{name} xs: expected shape (N, K), got {xs.shape}")
    if ys.shape != xs.shape:
        raise ValueError(f"{name} ys: shape {ys.shape} does not match xs shape {xs.shape}")
    rows, k = xs.shape
    if n is not None and rows != n:
        raise ValueError(f"{name}: {rows} curves do not match the number of devices N={n}")
    if k < 2:
        raise ValueError(f"{name}: curves need at least 2 points, K={k}")
    npts_raw = np.asarray(npts)
    if npts_raw.shape != (rows,):
        raise ValueError(f"{name} npts: expected shape ({rows},), got {npts_raw.shape}")
    if npts_raw.dtype.kind not in "iu":
        if npts_raw.dtype.kind == "f" and np.all(np.isfinite(npts_raw)) and np.all(npts_raw == np.round(npts_raw)):
            npts_raw = npts_raw.astype(np.int64)
        else:
            raise ValueError(f"{name} npts: expected integers, got dtype {npts_raw.dtype}")
    bad = (npts_raw < 2) | (npts_raw > k)
    if bad.any():
        i = _first(bad)
        raise ValueError(f"{name}: device {i}: npts={int(npts_raw[i])} outside 2..K={k}")
    npts_c = np.ascontiguousarray(npts_raw, dtype=np.intc)
    used = np.arange(k)[None, :] < npts_c[:, None]
    bad = used & ~(np.isfinite(xs) & np.isfinite(ys))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: device {i}: point {j} ({float(xs[i, j])!r}, {float(ys[i, j])!r}) is not finite")
    seg_used = np.arange(k - 1)[None, :] < (npts_c[:, None] - 1)
    with np.errstate(invalid="ignore"):
        bad = seg_used & ~(np.diff(xs, axis=1) > 0.0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: device {i}: x not strictly ascending at point {j + 1} "
                         f"({float(xs[i, j])!r} then {float(xs[i, j + 1])!r})")
    return np.ascontiguousarray(xs), np.ascontiguousarray(ys), npts_c


def prepare_curve_eval(xs, ys, npts, x, out):
    x = as_vector("x", x)
    xs, ys, npts = check_curve("curve", xs, ys, npts, n=x.shape[0])
    return xs, ys, npts, x, check_out("out", out, x.shape[0])


def as_flags(name: str, value, n: int) -> np.ndarray:
    """A C-contiguous uint8 (n,) array of 0/1; a scalar is broadcast to n."""
    a = np.asarray(value)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.shape != (n,) or a.dtype.kind not in "biu" or not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name}: expected {n} booleans, got {value!r}")
    return np.ascontiguousarray(a, dtype=np.uint8)


def prepare_droop(f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, out, of_momentary=False):
    f = as_vector("f", f)
    n = f.shape[0]
    f_nom = as_vector("f_nom", f_nom, n)
    check_range("f_nom", f_nom, lo=0.0, lo_open=True)
    dbof = as_vector("dbof", dbof, n)
    check_range("dbof", dbof, lo=0.0)
    dbuf = as_vector("dbuf", dbuf, n)
    check_range("dbuf", dbuf, lo=0.0)
    kof = as_vector("kof", kof, n)
    check_range("kof", kof, lo=0.0, lo_open=True)
    kuf = as_vector("kuf", kuf, n)
    check_range("kuf", kuf, lo=0.0, lo_open=True)
    p_pre = as_vector("p_pre", p_pre, n)
    p_min = as_vector("p_min", p_min, n)
    p_max = as_vector("p_max", p_max, n)
    return (f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, as_flags("of_momentary", of_momentary, n),
            check_out("out", out, n))


def prepare_ramp(y_prev, target, rate_up, rate_dn, dt, out):
    y_prev = as_vector("y_prev", y_prev)
    n = y_prev.shape[0]
    target = as_vector("target", target, n)
    rate_up = as_vector("rate_up", rate_up, n, allow_inf=True)
    check_range("rate_up", rate_up, lo=0.0)
    rate_dn = as_vector("rate_dn", rate_dn, n, allow_inf=True)
    check_range("rate_dn", rate_dn, lo=0.0)
    return y_prev, target, rate_up, rate_dn, check_dt(dt), check_out("out", out, n)


def prepare_first_order(y_prev, target, olrt, dt, out):
    y_prev = as_vector("y_prev", y_prev)
    n = y_prev.shape[0]
    return (y_prev, as_vector("target", target, n), as_vector("olrt", olrt, n), check_dt(dt),
            check_out("out", out, n))


# --------------------------------------------------------------------------- parameter and input holders


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Curve:
    """N piecewise-linear curves y(x): xs, ys of shape (N, K); device i uses its first npts[i] points.

    Validated and copied into read-only arrays at construction, so cycle() need not check them again.
    """

    xs: np.ndarray
    ys: np.ndarray
    npts: np.ndarray
    name: str = "curve"

    def __post_init__(self):
        xs, ys, npts = check_curve(self.name, self.xs, self.ys, self.npts)
        object.__setattr__(self, "xs", _frozen(xs))
        object.__setattr__(self, "ys", _frozen(ys))
        object.__setattr__(self, "npts", _frozen(npts))

    @property
    def n(self) -> int:
        return self.xs.shape[0]

    @classmethod
    def from_points(cls, points: Sequence[Sequence[tuple[float, float]]], name: str = "curve") -> "Curve":
        """One list of (x, y) points per device; shorter lists are padded with their last point (unused)."""
        if len(points) == 0:
            raise ValueError(f"{name}: no devices")
        k = max(len(p) for p in points)
        xs = np.zeros((len(points), max(k, 2)))
        ys = np.zeros_like(xs)
        npts = np.zeros(len(points), dtype=np.intc)
        for i, pts in enumerate(points):
            if len(pts) < 2:
                raise ValueError(f"{name}: device {i}: npts={len(pts)} outside 2..K={k}")
            arr = _float_array(f"{name} points", pts)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise ValueError(f"{name}: device {i}: expected (x, y) pairs, got shape {arr.shape}")
            npts[i] = len(arr)
            xs[i, :] = arr[-1, 0]
            ys[i, :] = arr[-1, 1]
            xs[i, : len(arr)] = arr[:, 0]
            ys[i, : len(arr)] = arr[:, 1]
        return cls(xs, ys, npts, name)

    @classmethod
    def uniform(cls, points: Sequence[tuple[float, float]], n: int, name: str = "curve") -> "Curve":
        """The same curve for n devices."""
        return cls.from_points([points] * n, name)


# IEEE 1547-2018 Category B defaults (Table 8 volt-var, Table 10 volt-watt), V in pu of V_ref.
IEEE1547_CAT_B_VOLT_VAR = ((0.92, 0.44), (0.98, 0.0), (1.02, 0.0), (1.08, -0.44))
IEEE1547_VOLT_WATT = ((1.06, 1.0), (1.10, 0.0))


@dataclass(frozen=True, kw_only=True)
class CycleParams:
    """Per-device configuration of one control cycle (changes rarely; validated once at construction).

    Scalars are broadcast to all n devices. Curves default to "no effect": volt-var and watt-var Q = 0,
    volt-watt P = 1 pu. p_priority False means Q priority (P is curtailed to honour Q), the usual choice
    for volt-var support since Q is the grid requirement. olrt_p covers volt-watt, droop and limit changes
    alike (one response per device), except volt-watt: olrt_vw (default olrt_p) applies while the volt-watt P is
    the lowest of the P targets; rates may be inf (no ramp limit). of_momentary: the over-frequency reduction
    counts in the momentary power P_M (p_pre; VDE-AR-N 4105) instead of the rating P_max (IEEE 1547; default).
    """

    n: int
    volt_var: Curve | None = None
    volt_watt: Curve | None = None
    watt_var: Curve | None = None
    f_nom: object = 50.0
    dbof: object = 0.2  # EN 50549 LFSM-O threshold 50.2 Hz; IEEE 1547 Cat B uses 0.036 Hz
    dbuf: object = 0.2
    kof: object = 0.05
    kuf: object = 0.05
    p_min: object = 0.0
    q_mode: object = QMode.VOLT_VAR
    q_set: object = 0.0
    pf_set: object = 1.0
    p_priority: object = False
    olrt_p: object = 0.0
    olrt_vw: object = None
    olrt_q: object = 0.0
    of_momentary: object = False
    ramp_up_p: object = math.inf
    ramp_dn_p: object = math.inf
    ramp_q: object = math.inf

    def __post_init__(self):
        n = self.n
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected a positive number of devices, got {n!r}")
        defaults = {"volt_var": ((0.0, 0.0), (2.0, 0.0)), "volt_watt": ((0.0, 1.0), (2.0, 1.0)),
                    "watt_var": ((0.0, 0.0), (1.0, 0.0))}
        for name, pts in defaults.items():
            c = getattr(self, name)
            if c is None:
                c = Curve.uniform(pts, n, name.replace("_", "-"))
            elif not isinstance(c, Curve):
                raise ValueError(f"{name}: expected a Curve, got {type(c).__name__}")
            elif c.n != n:
                raise ValueError(f"{name}: {c.n} curves do not match the number of devices N={n}")
            object.__setattr__(self, name, c)

        def vec(name, **kw):
            a = as_vector(name, getattr(self, name), n, allow_inf=kw.pop("allow_inf", False))
            if kw:
                check_range(name, a, **kw)
            object.__setattr__(self, name, _frozen(a))

        vec("f_nom", lo=0.0, lo_open=True)
        vec("dbof", lo=0.0)
        vec("dbuf", lo=0.0)
        vec("kof", lo=0.0, lo_open=True)
        vec("kuf", lo=0.0, lo_open=True)
        vec("p_min")
        vec("q_set", lo=-1.0, hi=1.0)
        vec("pf_set", lo=-1.0, hi=1.0)
        bad = self.pf_set == 0.0
        if bad.any():
            raise ValueError(f"pf_set: device {_first(bad)}: power factor 0 is not allowed (|pf| in (0, 1])")
        vec("olrt_p")
        if self.olrt_vw is None:
            object.__setattr__(self, "olrt_vw", self.olrt_p)
        vec("olrt_vw")
        vec("olrt_q")
        vec("ramp_up_p", allow_inf=True, lo=0.0)
        vec("ramp_dn_p", allow_inf=True, lo=0.0)
        vec("ramp_q", allow_inf=True, lo=0.0)
        mode = np.asarray(self.q_mode)
        if mode.ndim == 0:
            mode = np.full(n, mode)
        if mode.shape != (n,):
            raise ValueError(f"q_mode: expected shape ({n},), got {mode.shape}")
        valid = {int(m) for m in QMode}
        if mode.dtype.kind not in "iu" or not np.isin(mode, list(valid)).all():
            bad = ~np.isin(mode, list(valid)) if mode.dtype.kind in "iuf" else np.ones(n, bool)
            i = _first(bad) if bad.any() else 0
            raise ValueError(f"q_mode: device {i}: {mode[i].item()!r} is not one of {sorted(valid)} (QMode)")
        object.__setattr__(self, "q_mode", _frozen(mode.astype(np.intc)))
        for name in ("p_priority", "of_momentary"):
            object.__setattr__(self, name, _frozen(as_flags(name, getattr(self, name), n)))

    @classmethod
    def ieee1547_cat_b(cls, n: int, f_nom: float = 60.0, **overrides) -> "CycleParams":
        """IEEE 1547-2018 Category B defaults: volt-var (OLRT 5 s), volt-watt (OLRT 10 s), droop 5 % with 0.036 Hz
        dead band (OLRT 5 s), counted in the rating."""
        kw = dict(volt_var=Curve.uniform(IEEE1547_CAT_B_VOLT_VAR, n, "volt-var"),
                  volt_watt=Curve.uniform(IEEE1547_VOLT_WATT, n, "volt-watt"),
                  f_nom=f_nom, dbof=0.036, dbuf=0.036, kof=0.05, kuf=0.05, olrt_q=5.0, olrt_p=5.0, olrt_vw=10.0)
        kw.update(overrides)
        return cls(n=n, **kw)


@dataclass
class CycleInputs:
    """What changes every cycle: measurements, the activation limit and the previous outputs (all pu / Hz).

    p_pre is the pre-disturbance P for the droop, latched by the caller when f leaves the dead band;
    None uses min(p_limit, volt-watt P, p_avail) of this cycle (stateless, so under-frequency response
    can only raise P where that is below the other limits).

    p_lo is the lowest P a device may be given, in [-1, 0]: 0 for a generator (the default, None), below 0
    for storage that can absorb (charge). p_meas is the measured output: when the computed P is a ceiling
    written to the device (it produces min(ceiling, what it has)), fixed-PF and watt-var use
    min(P, p_meas), so headroom above the actual output does not ask for reactive power. None uses P.
    """

    v: object
    f: object
    p_avail: object
    p_limit: object
    p_prev: object
    q_prev: object
    p_pre: object = None
    p_lo: object = None
    p_meas: object = None


def prepare_cycle(params, inputs, dt, out_p, out_q):
    """Validated arrays for one cycle:
    (v, f, p_avail, p_limit, p_prev, q_prev, p_pre or None, p_lo, p_meas or None, dt, out_p, out_q)."""
    if not isinstance(params, CycleParams):
        raise ValueError(f"params: expected CycleParams, got {type(params).__name__}")
    if not isinstance(inputs, CycleInputs):
        raise ValueError(f"inputs: expected CycleInputs, got {type(inputs).__name__}")
    n = params.n
    v = as_vector("v", inputs.v, n)
    f = as_vector("f", inputs.f, n)
    p_avail = as_vector("p_avail", inputs.p_avail, n)
    check_range("p_avail", p_avail, lo=0.0)
    p_limit = as_vector("p_limit", inputs.p_limit, n)
    p_prev = as_vector("p_prev", inputs.p_prev, n)
    q_prev = as_vector("q_prev", inputs.q_prev, n)
    p_pre = None if inputs.p_pre is None else as_vector("p_pre", inputs.p_pre, n)
    p_lo = np.zeros(n) if inputs.p_lo is None else as_vector("p_lo", inputs.p_lo, n)
    check_range("p_lo", p_lo, lo=-1.0, hi=0.0)
    p_meas = None if inputs.p_meas is None else as_vector("p_meas", inputs.p_meas, n)
    out_p = check_out("out_p", out_p, n)
    out_q = check_out("out_q", out_q, n)
    return v, f, p_avail, p_limit, p_prev, q_prev, p_pre, p_lo, p_meas, check_dt(dt), out_p, out_q


# --------------------------------------------------------------------------- kernels (numpy)


def _interp(xs, ys, npts, x):
    rows = np.arange(xs.shape[0])
    used = np.arange(xs.shape[1])[None, :] < npts[:, None]
    with np.errstate(invalid="ignore"):
        j = np.sum(used & (xs <= x[:, None]), axis=1)  # used points at or left of x
    lo = np.clip(j - 1, 0, npts - 2)
    x0, x1 = xs[rows, lo], xs[rows, lo + 1]
    y0, y1 = ys[rows, lo], ys[rows, lo + 1]
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    y = np.where(j == 0, ys[:, 0], y)
    return np.where(j >= npts, ys[rows, npts - 1], y)


def curve_eval(xs, ys, npts, x, out=None) -> np.ndarray:
    """y_i = curve_i(x_i): linear between points, held constant beyond the first and last point."""
    xs, ys, npts, x, out = prepare_curve_eval(xs, ys, npts, x, out)
    out[:] = _interp(xs, ys, npts, x)
    return out


def _droop(f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, of_momentary):
    f_of = f_nom + dbof
    f_uf = f_nom - dbuf
    scale = np.where(of_momentary, np.maximum(p_pre, 0.0), 1.0)
    p_of = np.maximum(p_pre - (f - f_of) / (f_nom * kof) * scale, p_min)
    p_uf = np.minimum(p_pre + (f_uf - f) / (f_nom * kuf), p_max)
    return np.where(f > f_of, p_of, np.where(f < f_uf, p_uf, p_pre))


def droop(f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, out=None, of_momentary=False) -> np.ndarray:
    """Frequency-watt P(f) (IEEE 1547-2018 6.5.2.7.2; EN 50549-1 LFSM-O / LFSM-U), P in pu of rating.

        f > f_nom + dbof:  p = max(p_pre - (f - (f_nom + dbof)) / (f_nom * kof) * ref, p_min)
        f < f_nom - dbuf:  p = min(p_pre + ((f_nom - dbuf) - f) / (f_nom * kuf), p_max)
        otherwise:         p = p_pre
    kof, kuf are per-unit droops (0.05 = 5 %: full rated P per 5 % of f_nom); p_max is the available P.
    ref is 1 (the rating P_max: IEEE 1547, an EN 50549-1 option) or, where of_momentary, the momentary power
    P_M = max(p_pre, 0) (VDE-AR-N 4105: 40 %/Hz of P_M at 50 Hz and 5 %). Under-frequency counts in P_max.
    """
    args = prepare_droop(f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, out, of_momentary)
    out = args[-1]
    out[:] = _droop(*args[:-1])
    return out


def _ramp(y_prev, target, rate_up, rate_dn, dt):
    return y_prev + np.clip(target - y_prev, -rate_dn * dt, rate_up * dt)


def ramp_limit(y_prev, target, rate_up, rate_dn, dt, out=None) -> np.ndarray:
    """y = y_prev + clip(target - y_prev, -rate_dn*dt, rate_up*dt); rates >= 0 in units/s, inf = unlimited."""
    y_prev, target, rate_up, rate_dn, dt, out = prepare_ramp(y_prev, target, rate_up, rate_dn, dt, out)
    out[:] = _ramp(y_prev, target, rate_up, rate_dn, dt)
    return out


def _first_order(y_prev, target, olrt, dt):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tau = olrt / LN10
        alpha = np.where(olrt > 0.0, 1.0 - np.exp(-dt / tau), 1.0)
    return y_prev + alpha * (target - y_prev)


def first_order(y_prev, target, olrt, dt, out=None) -> np.ndarray:
    """One step of a first-order lag reaching 90 % of a step after OLRT seconds.

    tau = OLRT / ln(10), alpha = 1 - exp(-dt / tau), y = y_prev + alpha * (target - y_prev); the discrete
    step is exact, so after OLRT/dt steps y has covered exactly 90 %. OLRT <= 0 means instantaneous.
    """
    y_prev, target, olrt, dt, out = prepare_first_order(y_prev, target, olrt, dt, out)
    out[:] = _first_order(y_prev, target, olrt, dt)
    return out


def cycle(params: CycleParams, inputs: CycleInputs, dt: float, out_p=None, out_q=None):
    """New (P, Q) set-points in pu for all devices, one control cycle of dt seconds. Steps, per device:

    1. P target = max(p_lo, min(p_limit, volt-watt P(v), droop P(f), p_avail)); the droop starts from p_pre
       (default min(p_limit, volt-watt, p_avail)) and is capped at p_avail for under-frequency.
    2. P = ramp_limit(first_order(p_prev -> P target, OLRT)), then clipped to [p_lo, min(p_avail, 1)]
       (so a lower p_avail acts at once, a higher one through the response and the ramp). OLRT is olrt_vw while
       volt-watt is the function acting (its P below p_limit and p_avail, and not above the droop's), else
       olrt_p (so a release, with every target back at the limit, follows olrt_p).
    3. Q target by q_mode: volt-var Q(v), fixed q_set, fixed PF from P' = min(P, p_meas) (P without p_meas),
       Q = sign(pf) * |P'| * tan(acos |pf|), or watt-var Q(P').
    4. Q = ramp_limit(first_order(q_prev -> Q target, olrt_q)) with the symmetric rate ramp_q.
    5. Capability (S = 1 pu): P priority -> |Q| <= sqrt(1 - P^2); Q priority -> |Q| <= 1, |P| <= sqrt(1 - Q^2).
    out_p / out_q may be the p_prev / q_prev arrays (in-place update).
    """
    (v, f, p_avail, p_limit, p_prev, q_prev, p_pre, p_lo, p_meas, dt, out_p, out_q) = prepare_cycle(
        params, inputs, dt, out_p, out_q)
    c = params
    p_vw = _interp(c.volt_watt.xs, c.volt_watt.ys, c.volt_watt.npts, v)
    p_base = np.minimum(np.minimum(p_limit, p_vw), p_avail)
    p_dr = _droop(f, c.f_nom, c.dbof, c.dbuf, c.kof, c.kuf, p_base if p_pre is None else p_pre, c.p_min, p_avail,
                  c.of_momentary)
    p_tgt = np.maximum(np.minimum(p_base, p_dr), p_lo)
    olrt = np.where((p_vw < p_limit) & (p_vw < p_avail) & (p_vw <= p_dr), c.olrt_vw, c.olrt_p)
    p = _ramp(p_prev, _first_order(p_prev, p_tgt, olrt, dt), c.ramp_up_p, c.ramp_dn_p, dt)
    p = np.clip(p, p_lo, np.minimum(p_avail, 1.0))

    p_q = p if p_meas is None else np.minimum(p, p_meas)
    q_vv = _interp(c.volt_var.xs, c.volt_var.ys, c.volt_var.npts, v)
    q_wv = _interp(c.watt_var.xs, c.watt_var.ys, c.watt_var.npts, p_q)
    pf = c.pf_set
    q_pf = np.sign(pf) * np.abs(p_q) * np.sqrt(1.0 - pf * pf) / np.abs(pf)
    q_tgt = np.select([c.q_mode == QMode.VOLT_VAR, c.q_mode == QMode.FIXED_Q, c.q_mode == QMode.FIXED_PF],
                      [q_vv, c.q_set, q_pf], q_wv)
    q = _ramp(q_prev, _first_order(q_prev, q_tgt, c.olrt_q, dt), c.ramp_q, c.ramp_q, dt)

    prio = c.p_priority.astype(bool)
    q_max = np.where(prio, np.sqrt(np.maximum(1.0 - p * p, 0.0)), 1.0)
    q = np.clip(q, -q_max, q_max)
    p_max = np.sqrt(np.maximum(1.0 - q * q, 0.0))
    p = np.where(prio, p, np.clip(p, -p_max, p_max))
    out_p[:] = p
    out_q[:] = q
    return out_p, out_q
