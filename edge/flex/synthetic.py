"""Synthetic but realistic load and PV profiles, seeded, for baseline tests, the CLI and the bench.

All profiles are mean power per ISP, shape (n sites, days, ISPs per day), on UTC days starting at first_day;
load is consumption (W >= 0), PV is generation (W >= 0); `sites()` gives net injection (+ = export, the gridedge
sign) = PV - load. The shapes (docs/flex.md, "Synthetic profiles"):

- residential: night base, a morning peak (07:00 local on weekdays, 09:30 at weekends), a midday plateau and an
  evening peak (19:30); per-household size (lognormal, sigma 0.4), a day-to-day level that wanders (AR(1) over
  days, like the weather), noisy ISPs (lognormal, sigma 0.25) and appliance spikes (about 2 a day, 1.5-3 kW for
  15-45 min);
- commercial: a 07:00-19:00 plateau on weekdays with soft edges, about a third of it at night and at weekends,
  little noise (sigma 0.05);
- pv: clear-sky output from the sun's elevation (declination and hour angle for a latitude and longitude),
  times a clearness that is drawn per day (Beta(4, 1.5): mostly bright, some dull days) and wanders within the
  day (AR(1) over ISPs, clouds passing).
Local time is UTC + tz_offset_h (no daylight saving). Same seed, same arguments -> same arrays.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np

from gridedge.core.isp import IspGrid, date_ns


def _hours(grid: IspGrid) -> np.ndarray:
    """Mid-ISP hour of day (UTC), shape (S,)."""
    return (np.arange(grid.per_day) + 0.5) * grid.minutes / 60.0


def _weekend(first_day: _dt.date, days: int) -> np.ndarray:
    return np.array([(first_day + _dt.timedelta(days=d)).weekday() >= 5 for d in range(days)])


def _ar1(rng: np.random.Generator, shape: tuple, phi: float, axis: int) -> np.ndarray:
    """Stationary AR(1) noise with unit variance along `axis`."""
    eps = rng.standard_normal(shape)
    x = np.moveaxis(eps, axis, 0).copy()
    scale = np.sqrt(1 - phi * phi)
    for k in range(1, x.shape[0]):
        x[k] = phi * x[k - 1] + scale * x[k]
    return np.moveaxis(x, 0, axis)


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (h - centre + 12) % 24 - 12
    return np.exp(-0.5 * (d / width) ** 2)


def residential(rng: np.random.Generator, n: int, days: int, grid: IspGrid, first_day: _dt.date,
                mean_w: float = 450.0, tz_offset_h: float = 1.0) -> np.ndarray:
    h = (_hours(grid) + tz_offset_h) % 24
    wd = 0.45 + 1.0 * _bump(h, 7.0, 0.9) + 0.35 * _bump(h, 13.0, 2.5) + 1.8 * _bump(h, 19.5, 1.6)
    we = 0.5 + 0.8 * _bump(h, 9.5, 1.5) + 0.7 * _bump(h, 13.0, 2.5) + 1.6 * _bump(h, 19.0, 1.8)
    shape = np.where(_weekend(first_day, days)[:, None], we[None, :], wd[None, :])  # (days, S)
    shape = shape / shape.mean()
    size = rng.lognormal(0.0, 0.4, (n, 1, 1)) * mean_w
    level = 1.0 + 0.1 * _ar1(rng, (n, days), 0.7, axis=1)[:, :, None]
    noise = rng.lognormal(-0.5 * 0.25 ** 2, 0.25, (n, days, grid.per_day))
    load = size * np.clip(level, 0.6, 1.5) * shape[None] * noise
    spikes = rng.poisson(2.0 * grid.minutes / 1440.0, (n, days, grid.per_day)) > 0
    spike_w = rng.uniform(1500.0, 3000.0, spikes.shape) * rng.uniform(15.0, 45.0, spikes.shape) / max(grid.minutes, 15)
    return load + np.where(spikes, np.minimum(spike_w, 3000.0), 0.0)


def commercial(rng: np.random.Generator, n: int, days: int, grid: IspGrid, first_day: _dt.date,
               peak_w: float = 20000.0, tz_offset_h: float = 1.0) -> np.ndarray:
    h = (_hours(grid) + tz_offset_h) % 24
    open_ = 1 / (1 + np.exp(-(h - 7.0) * 3)) * 1 / (1 + np.exp((h - 19.0) * 3))
    wd = 0.3 + 0.7 * open_
    shape = np.where(_weekend(first_day, days)[:, None], 0.35, wd[None, :])
    size = rng.uniform(0.5, 1.5, (n, 1, 1)) * peak_w
    level = 1.0 + 0.05 * _ar1(rng, (n, days), 0.8, axis=1)[:, :, None]
    noise = rng.lognormal(-0.5 * 0.05 ** 2, 0.05, (n, days, grid.per_day))
    return size * level * shape[None] * noise


def clear_sky(grid: IspGrid, first_day: _dt.date, days: int, lat_deg: float = 48.0, lon_deg: float = 10.0) -> np.ndarray:
    """Clear-sky output as a fraction of peak, (days, S): sin(elevation)^1.15 (a rough air-mass loss)."""
    doy = np.array([(first_day + _dt.timedelta(days=d)).timetuple().tm_yday for d in range(days)])
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365.0)
    solar_h = _hours(grid) + lon_deg / 15.0
    omega = np.radians(15.0 * (solar_h - 12.0))
    lat = np.radians(lat_deg)
    sin_el = np.sin(lat) * np.sin(decl)[:, None] + np.cos(lat) * np.cos(decl)[:, None] * np.cos(omega)[None, :]
    return np.clip(sin_el, 0.0, None) ** 1.15


def pv(rng: np.random.Generator, n: int, days: int, grid: IspGrid, first_day: _dt.date, peak_w: float = 5000.0,
       lat_deg: float = 48.0, lon_deg: float = 10.0) -> np.ndarray:
    sky = clear_sky(grid, first_day, days, lat_deg, lon_deg)
    daily = rng.beta(4.0, 1.5, (n, days, 1))
    clouds = 0.2 * _ar1(rng, (n, days, grid.per_day), 0.9, axis=2)
    k = np.clip(daily + clouds, 0.05, 1.0)
    size = rng.uniform(0.6, 1.6, (n, 1, 1)) * peak_w
    return size * sky[None] * k


def sites(n: int, days: int, *, isp_min: int = 15, first_day: _dt.date = _dt.date(2026, 1, 5), seed: int = 0,
          kind: str = "mixed", pv_share: float = 0.4) -> np.ndarray:
    """Net injection W per ISP (n, days, S). kind: residential, commercial, pv (generation only) or mixed
    (70 % residential, 30 % commercial, pv_share of all with rooftop PV)."""
    grid = IspGrid(isp_min)
    rng = np.random.default_rng(seed)
    if kind == "residential":
        return -residential(rng, n, days, grid, first_day)
    if kind == "commercial":
        return -commercial(rng, n, days, grid, first_day)
    if kind == "pv":
        return pv(rng, n, days, grid, first_day)
    if kind != "mixed":
        raise ValueError(f"kind must be residential, commercial, pv or mixed, got {kind!r}")
    is_com = rng.random(n) < 0.3
    load = np.where(is_com[:, None, None], commercial(rng, n, days, grid, first_day),
                    residential(rng, n, days, grid, first_day))
    has_pv = rng.random(n) < pv_share
    gen = pv(rng, n, days, grid, first_day, peak_w=5000.0) * has_pv[:, None, None] * np.where(is_com, 6.0, 1.0)[:, None, None]
    return gen - load


def first_day_ns(first_day: _dt.date) -> int:
    return date_ns(first_day)

