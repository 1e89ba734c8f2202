"""The battery plant (SoC integration, limits, reversion) and the SunSpec battery simulator (1/701/702/704/713/715)
against the SunSpec driver, on TCP and, as its own process, on a pseudo-terminal RTU line."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridedge.drivers.modbus import WriteError
from gridedge.drivers.modbus_rtu import SerialSettings
from gridedge.drivers.regmap_device import LinkSpec
from gridedge.drivers.scheduler import BusPool
from gridedge.drivers.sunspec_device import SunSpecDevice
from gridedge.hil.battery import BatteryPlant
from gridedge.hil.battery_sim import BatterySim
from gridedge.core.model import Detail

from . import aio
from .aio import until


arun = functools.partial(aio.arun, timeout=40.0)


def by_name(samples):
    return {s.point.split("/", 1)[1]: s for s in samples}


def run_for(plant: BatteryPlant, seconds: float, dt: float = 1.0) -> None:
    for _ in range(int(round(seconds / dt))):
        plant.step(dt)


# ------------------------------------------------------------------ plant

def test_discharge_and_charge_integrate_soc_with_efficiency():
    p = BatteryPlant(wh_rtg=10000, w_cha_max=5000, w_dis_max=5000, soc_pct=50, eff_cha=0.9, eff_dis=0.8,
                     ramp_pct_per_s=1000)
    p.write(WSet=2000, WSetEna=1)
    run_for(p, 1800)                       # 2 kW for half an hour: 1 kWh to the grid, 1.25 kWh from the cells
    assert p.W == 2000
    assert p.TotWhExp == pytest.approx(1000, rel=1e-3)
    assert p.energy_wh == pytest.approx(5000 - 1000 / 0.8, rel=1e-3)
    p.write(WSet=-3000)
    run_for(p, 1200)                       # 3 kW for 20 min: 1 kWh from the grid, 0.9 kWh into the cells
    assert p.W == -3000 and p.PF < 0
    assert p.TotWhImp == pytest.approx(1000, rel=1e-3)
    assert p.energy_wh == pytest.approx(5000 - 1250 + 900, rel=1e-3)
    assert p.soc_pct == pytest.approx(100 * p.energy_wh / 10000)
    assert p.WHAvail == p.energy_wh


def test_soc_window_and_rate_limits():
    p = BatteryPlant(wh_rtg=1000, w_cha_max=2000, w_dis_max=1000, soc_pct=50, soc_min_pct=10, soc_max_pct=90,
                     eff_cha=1.0, eff_dis=1.0, ramp_pct_per_s=1000)
    p.write(WSet=1000, WSetEna=1)
    run_for(p, 3600)
    assert p.soc_pct == pytest.approx(10.0) and p.W == 0.0 and p.status == 1     # stopped at the floor
    assert p.limits_w() == (-2000.0, 0.0)
    with pytest.raises(ValueError):
        p.write(WSet=-2500)                       # beyond the charge rate: refused, nothing changes
    assert p.WSet == 1000
    p.write(WSet=-2000)
    run_for(p, 3600)
    assert p.soc_pct == pytest.approx(90.0) and p.W == 0.0          # and at the ceiling, never beyond
    p.write(WSet=1000, WMaxLimPct=30, WMaxLimPctEna=1)
    run_for(p, 10)
    assert p.W == pytest.approx(600)              # 30 % of w_max (2000 W), on discharge
    p.running = False
    run_for(p, 1)
    assert p.W == 0.0


def test_ramp_and_reversion_when_the_controller_is_silent():
    p = BatteryPlant(w_cha_max=5000, w_dis_max=5000, ramp_pct_per_s=10)     # 500 W/s
    p.write(WSet=3000, WSetEna=1, WSetRvrt=0, WSetEnaRvrt=0, WSetRvrtTms=30)
    p.step(1.0)
    assert p.W == pytest.approx(500)
    run_for(p, 10)
    assert p.W == 3000 and p.rvrt_rem("WSetRvrtTms") == pytest.approx(19)
    run_for(p, 20)
    assert p.WSetEna == 0 and p.WSet == 0 and p.reversions == 1
    run_for(p, 10)
    assert p.W == 0.0


@pytest.mark.parametrize("kw", [dict(wh_rtg=0), dict(soc_min_pct=50, soc_max_pct=40), dict(eff_cha=1.5),
                                dict(soc_pct=120), dict(soh_pct=0), dict(n_phases=2)])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        BatteryPlant(**kw)


@settings(max_examples=200, deadline=None)
@given(soc=st.floats(0, 100), steps=st.lists(st.tuples(st.floats(-6000, 6000), st.floats(0, 600)), max_size=20),
       eff=st.floats(0.5, 1.0))
def test_energy_balance_and_soc_window_hold_for_any_schedule(soc, steps, eff):
    p = BatteryPlant(soc_pct=soc, eff_cha=eff, eff_dis=eff, ramp_pct_per_s=50)
    e0 = p.energy_wh
    lo_pct, hi_pct = min(soc, p.soc_min_pct), max(soc, p.soc_max_pct)
    for w, dt in steps:
        try:
            p.write(WSet=w, WSetEna=1)
        except ValueError:
            assert not -p.w_cha_max <= w <= p.w_dis_max
        p.step(dt)
        assert lo_pct - 1e-6 <= p.soc_pct <= hi_pct + 1e-6
        assert -p.w_cha_max <= p.W <= p.w_dis_max
    assert p.energy_wh == pytest.approx(e0 - p.TotWhExp / eff + p.TotWhImp * eff, abs=1e-6)


# ------------------------------------------------------------------ simulator + driver

STORAGE = ["W", "SoC", "SoH", "WHRtg", "WHAvail", "StorSt", "WChaRteMaxRtg", "WDisChaRteMaxRtg", "WChaRteMax",
           "WMax", "WSet", "WSetEna", "TotWhImp"]


def test_battery_sim_over_tcp_canonical_storage_points_and_set_point():
    async def main():
        sim = BatterySim(wh_rtg=2000, w_max=4000, soc_pct=40, ramp_pct_per_s=100)   # 0.1 % SoC = 2 Wh: 2.5 s
        port = await sim.start()
        dev = SunSpecDevice("bat1", LinkSpec("tcp", host="127.0.0.1", port=port, timeout_s=1.0), pool=BusPool(),
                            role="battery")
        try:
            await dev.connect()
            assert set(dev.models) == {1, 701, 702, 704, 713, 715}
            assert set(STORAGE) <= set(dev.available_points())
            s = by_name(await dev.poll())
            assert s["SoC"].value == 40.0 and s["SoC"].unit == "%" and s["SoH"].value == 100.0
            assert s["WHRtg"].value == 2000 and s["WHRtg"].unit == "Wh" and s["WHAvail"].value == 800
            assert s["WChaRteMaxRtg"].value == 4000 and s["WDisChaRteMaxRtg"].value == 4000
            assert s["StorSt"].value == 0 and s["W"].value == 0
            assert await dev.write_points({"WSet": -3000, "WSetEna": 1}) == {"WSet": -3000, "WSetEna": 1}

            async def charging():
                v = by_name(await dev.poll())
                return v if v["W"].value == -3000 and v["SoC"].value > 40.0 else None
            v = await until(charging)
            assert v["TotWhImp"].value >= 0 and sim.plant.W == -3000
            # beyond the charge rate: the device refuses (ILLEGAL_DATA_VALUE), nothing changes
            with pytest.raises(WriteError) as ei:
                await dev.write_points({"WSet": -5000})
            assert ei.value.exception_code == 3 and sim.plant.WSet == -3000
            # 715 STOP: no power, however the set-point stands
            await dev.write_model(715, {"OpCtl": 0})

            async def stopped():
                v = by_name(await dev.poll())
                return v if v["W"].value == 0 else None
            await until(stopped)
            assert not sim.plant.running
        finally:
            await dev.close()
            await sim.stop()
    arun(main())


def test_battery_cli_serves_an_rtu_line_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gridedge.hil.battery_sim", "--rtu", "--wh", "5000", "--soc", "80"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()          # blocks until the child prints READY (or exits)
        assert line.startswith("READY /dev/"), (line, proc.stderr.read() if proc.poll() is not None else "")
        pty = line.split()[1]

        async def main():
            link = LinkSpec("rtu", serial=SerialSettings(pty, parity="N", timeout_s=0.5), timeout_s=0.5)
            dev = SunSpecDevice("bat1", link, pool=BusPool(), role="battery", points=["SoC", "WHRtg", "W"])
            try:
                s = by_name(await dev.poll())
                assert s["SoC"].value == 80.0 and s["WHRtg"].value == 5000
                await dev.write_points({"WSet": 1000, "WSetEna": 1})
                with pytest.raises(WriteError) as ei:
                    await dev.write_points({"SoC": 50})         # a measurement, not a control
                assert ei.value.detail is Detail.BAD_REFERENCE
            finally:
                await dev.close()
        arun(main())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        err = proc.stderr.read()
        assert rc == 0, err
        assert "applied write at" in err and "(model 704)" in err and "WSet" in err
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
