# cython: language_level=3
"""Compiled control kernels: the same functions, signatures and validation as gridedge.cext.twin (the oracle).

Validation runs once per call in Python (shared helpers from twin); the loops then run without the GIL over
typed memoryviews. Formulas and conventions are documented in twin.py; keep both in step.
"""
from libc.math cimport exp, sqrt, log

import gridedge.cext.twin as _twin

cdef double LN10 = log(10.0)

# QMode codes (twin.QMode)
cdef enum:
    Q_VOLT_VAR = 0
    Q_FIXED_Q = 1
    Q_FIXED_PF = 2
    Q_WATT_VAR = 3


cdef inline double _interp(const double[:, ::1] xs, const double[:, ::1] ys, Py_ssize_t i, int n,
                           double x) noexcept nogil:
    cdef Py_ssize_t j
    if x <= xs[i, 0]:
        return ys[i, 0]
    if x >= xs[i, n - 1]:
        return ys[i, n - 1]
    j = 1
    while xs[i, j] <= x:  # terminates: x < xs[i, n - 1]
        j += 1
    return ys[i, j - 1] + (ys[i, j] - ys[i, j - 1]) * (x - xs[i, j - 1]) / (xs[i, j] - xs[i, j - 1])


cdef inline double _droop(double f, double f_nom, double dbof, double dbuf, double kof, double kuf,
                          double p_pre, double p_min, double p_max, bint of_momentary) noexcept nogil:
    cdef double f_of = f_nom + dbof
    cdef double f_uf = f_nom - dbuf
    cdef double p
    cdef double scale = 1.0
    if f > f_of:
        if of_momentary:
            scale = p_pre if p_pre > 0.0 else 0.0
        p = p_pre - (f - f_of) / (f_nom * kof) * scale
        return p if p > p_min else p_min
    if f < f_uf:
        p = p_pre + (f_uf - f) / (f_nom * kuf)
        return p if p < p_max else p_max
    return p_pre


cdef inline double _ramp(double y_prev, double target, double rate_up, double rate_dn, double dt) noexcept nogil:
    cdef double d = target - y_prev
    cdef double hi = rate_up * dt
    cdef double lo = -rate_dn * dt
    if d > hi:
        d = hi
    elif d < lo:
        d = lo
    return y_prev + d


cdef inline double _first_order(double y_prev, double target, double olrt, double dt) noexcept nogil:
    cdef double alpha = 1.0
    if olrt > 0.0:
        alpha = 1.0 - exp(-dt / (olrt / LN10))
    return y_prev + alpha * (target - y_prev)


cdef inline double _clip(double x, double lo, double hi) noexcept nogil:
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def curve_eval(xs, ys, npts, x, out=None):
    """y_i = curve_i(x_i): linear between points, held constant beyond the ends (see twin.curve_eval)."""
    xs, ys, npts, x, out = _twin.prepare_curve_eval(xs, ys, npts, x, out)
    cdef const double[:, ::1] cx = xs
    cdef const double[:, ::1] cy = ys
    cdef const int[::1] cn = npts
    cdef const double[::1] vx = x
    cdef double[::1] vo = out
    cdef Py_ssize_t i
    with nogil:
        for i in range(vx.shape[0]):
            vo[i] = _interp(cx, cy, i, cn[i], vx[i])
    return out


def droop(f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, out=None, of_momentary=False):
    """Frequency-watt P(f), IEEE 1547-2018 / EN 50549 LFSM-O/U (see twin.droop):

        f > f_nom + dbof:  p = max(p_pre - (f - (f_nom + dbof)) / (f_nom * kof) * ref, p_min)
        f < f_nom - dbuf:  p = min(p_pre + ((f_nom - dbuf) - f) / (f_nom * kuf), p_max)
        otherwise:         p = p_pre
    ref = max(p_pre, 0) (the momentary power) where of_momentary, else 1 (the rating).
    """
    f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, mom, out = _twin.prepare_droop(
        f, f_nom, dbof, dbuf, kof, kuf, p_pre, p_min, p_max, out, of_momentary)
    cdef const double[::1] vf = f, vfn = f_nom, vdo = dbof, vdu = dbuf, vko = kof, vku = kuf
    cdef const double[::1] vpre = p_pre, vmin = p_min, vmax = p_max
    cdef const unsigned char[::1] vmom = mom
    cdef double[::1] vo = out
    cdef Py_ssize_t i
    with nogil:
        for i in range(vf.shape[0]):
            vo[i] = _droop(vf[i], vfn[i], vdo[i], vdu[i], vko[i], vku[i], vpre[i], vmin[i], vmax[i], vmom[i])
    return out


def ramp_limit(y_prev, target, rate_up, rate_dn, dt, out=None):
    """y = y_prev + clip(target - y_prev, -rate_dn*dt, rate_up*dt); rates >= 0 per s, inf = unlimited."""
    y_prev, target, rate_up, rate_dn, dt, out = _twin.prepare_ramp(y_prev, target, rate_up, rate_dn, dt, out)
    cdef const double[::1] vy = y_prev, vt = target, vu = rate_up, vd = rate_dn
    cdef double[::1] vo = out
    cdef double cdt = dt
    cdef Py_ssize_t i
    with nogil:
        for i in range(vy.shape[0]):
            vo[i] = _ramp(vy[i], vt[i], vu[i], vd[i], cdt)
    return out


def first_order(y_prev, target, olrt, dt, out=None):
    """First-order lag, 90 % of a step after OLRT: alpha = 1 - exp(-dt / (OLRT / ln 10)); OLRT <= 0 = instant."""
    y_prev, target, olrt, dt, out = _twin.prepare_first_order(y_prev, target, olrt, dt, out)
    cdef const double[::1] vy = y_prev, vt = target, vr = olrt
    cdef double[::1] vo = out
    cdef double cdt = dt
    cdef Py_ssize_t i
    with nogil:
        for i in range(vy.shape[0]):
            vo[i] = _first_order(vy[i], vt[i], vr[i], cdt)
    return out


def cycle(params, inputs, dt, out_p=None, out_q=None):
    """New (P, Q) set-points in pu for all devices, one control cycle; steps as in twin.cycle."""
    v, f, p_avail, p_limit, p_prev, q_prev, p_pre, p_lo, p_meas, dt, out_p, out_q = _twin.prepare_cycle(
        params, inputs, dt, out_p, out_q)
    c = params
    cdef const double[:, ::1] vv_x = c.volt_var.xs, vv_y = c.volt_var.ys
    cdef const double[:, ::1] vw_x = c.volt_watt.xs, vw_y = c.volt_watt.ys
    cdef const double[:, ::1] wv_x = c.watt_var.xs, wv_y = c.watt_var.ys
    cdef const int[::1] vv_n = c.volt_var.npts, vw_n = c.volt_watt.npts, wv_n = c.watt_var.npts
    cdef const double[::1] f_nom = c.f_nom, dbof = c.dbof, dbuf = c.dbuf, kof = c.kof, kuf = c.kuf
    cdef const double[::1] p_min = c.p_min, q_set = c.q_set, pf_set = c.pf_set
    cdef const double[::1] olrt_p = c.olrt_p, olrt_vw = c.olrt_vw, olrt_q = c.olrt_q
    cdef const double[::1] up_p = c.ramp_up_p, dn_p = c.ramp_dn_p, r_q = c.ramp_q
    cdef const int[::1] q_mode = c.q_mode
    cdef const unsigned char[::1] prio = c.p_priority, of_mom = c.of_momentary
    cdef const double[::1] mv = v, mf = f, mav = p_avail, mlim = p_limit, mpp = p_prev, mqp = q_prev
    cdef const double[::1] mlo = p_lo
    cdef const double[::1] mpre, mmeas
    cdef bint has_pre = p_pre is not None
    cdef bint has_meas = p_meas is not None
    if has_pre:
        mpre = p_pre
    else:
        mpre = p_prev  # placeholder, not read
    if has_meas:
        mmeas = p_meas
    else:
        mmeas = p_prev  # placeholder, not read
    cdef double[::1] op = out_p, oq = out_q
    cdef double cdt = dt
    cdef double p_vw, p_base, p_dr, p_tgt, p, p_q, q_tgt, q, pf, lim, pre, olrt
    cdef int mode
    cdef Py_ssize_t i
    with nogil:
        for i in range(mv.shape[0]):
            # 1. P target
            p_vw = _interp(vw_x, vw_y, i, vw_n[i], mv[i])
            p_base = p_vw
            if mlim[i] < p_base:
                p_base = mlim[i]
            if mav[i] < p_base:
                p_base = mav[i]
            pre = mpre[i] if has_pre else p_base
            p_dr = _droop(mf[i], f_nom[i], dbof[i], dbuf[i], kof[i], kuf[i], pre, p_min[i], mav[i], of_mom[i])
            p_tgt = p_dr if p_dr < p_base else p_base
            if p_tgt < mlo[i]:
                p_tgt = mlo[i]
            # 2. P response (volt-watt's own OLRT while it is the function acting), ramp, range
            olrt = olrt_vw[i] if (p_vw < mlim[i] and p_vw < mav[i] and p_vw <= p_dr) else olrt_p[i]
            p = _ramp(mpp[i], _first_order(mpp[i], p_tgt, olrt, cdt), up_p[i], dn_p[i], cdt)
            lim = mav[i] if mav[i] < 1.0 else 1.0
            p = _clip(p, mlo[i], lim)
            # 3. Q target
            p_q = p
            if has_meas and mmeas[i] < p_q:
                p_q = mmeas[i]
            mode = q_mode[i]
            if mode == Q_VOLT_VAR:
                q_tgt = _interp(vv_x, vv_y, i, vv_n[i], mv[i])
            elif mode == Q_FIXED_Q:
                q_tgt = q_set[i]
            elif mode == Q_FIXED_PF:
                pf = pf_set[i]
                if p_q < 0.0:
                    p_q = -p_q
                q_tgt = p_q * sqrt(1.0 - pf * pf) / pf if pf > 0.0 else -p_q * sqrt(1.0 - pf * pf) / -pf
            else:
                q_tgt = _interp(wv_x, wv_y, i, wv_n[i], p_q)
            # 4. Q response, ramp
            q = _ramp(mqp[i], _first_order(mqp[i], q_tgt, olrt_q[i], cdt), r_q[i], r_q[i], cdt)
            # 5. capability, S = 1 pu
            if prio[i]:
                lim = 1.0 - p * p
                lim = sqrt(lim) if lim > 0.0 else 0.0
                q = _clip(q, -lim, lim)
            else:
                q = _clip(q, -1.0, 1.0)
                lim = 1.0 - q * q
                lim = sqrt(lim) if lim > 0.0 else 0.0
                p = _clip(p, -lim, lim)
            op[i] = p
            oq[i] = q
    return out_p, out_q
