"""SunSpec battery storage system for hardware-in-the-loop tests: models 1, 701, 702, 704, 713, 715 over a
BatteryPlant, on Modbus TCP or on a pseudo-terminal RTU line.

704 takes the active power set-point (WSet, + = discharge, - = charge) with its reversion, the active power limit
and the reactive power set-point; 713 shows the energy rating, energy available, SoC, SoH and status; 715 the
heartbeats and start/stop (STOP: no power). A write outside the plant's range gives ILLEGAL_DATA_VALUE, a write to
a read-only or unimplemented register ILLEGAL_DATA_ADDRESS; nothing changes on a refused write.

CLI: python -m gridedge.hil.battery_sim --port 1503 [--rtu] [--wh 10000 --w-max 5000 --soc 50]
     (prints "READY <port>" or "READY <pty path>" once serving; SIGTERM/SIGINT stop it)
"""
from __future__ import annotations

import argparse
import sys

from gridedge.drivers import sunspec as ss

from .battery import BatteryPlant
from .sunspec_sim import (DerControl715, PlantControls, SunSpecImage, SunSpecSim, run_cli, serve_until_signalled,
                          sf_for)

MODELS = (1, 701, 702, 704, 713, 715)

#: 704 points this device implements as writable -> the plant control each one drives.
WRITABLE_704 = {
    "WSetEna": "WSetEna", "WSet": "WSet", "WSetRvrt": "WSetRvrt", "WSetEnaRvrt": "WSetEnaRvrt",
    "WSetRvrtTms": "WSetRvrtTms", "WMaxLimPctEna": "WMaxLimPctEna", "WMaxLimPct": "WMaxLimPct",
    "WMaxLimPctRvrt": "WMaxLimPctRvrt", "WMaxLimPctEnaRvrt": "WMaxLimPctEnaRvrt",
    "WMaxLimPctRvrtTms": "WMaxLimPctRvrtTms", "VarSetEna": "VArSetEna", "VarSet": "VArSet",
}


def scale_factors(plant: BatteryPlant) -> dict[int, dict[str, int]]:
    w_sf = sf_for(plant.w_max * 1.1, 0)
    a_sf = sf_for(plant.w_max * 1.1 / 150.0, -2)
    wh_sf = sf_for(plant.wh_rtg, 0, limit=65534)       # WHRtg is a uint16
    return {
        701: {"A_SF": a_sf, "V_SF": -1, "Hz_SF": -3, "W_SF": w_sf, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf,
              "TotWh_SF": 0, "TotVarh_SF": 0, "Tmp_SF": -1},
        702: {"W_SF": w_sf, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf, "V_SF": -1, "A_SF": a_sf, "S_SF": 0},
        704: {"PF_SF": -3, "WMaxLimPct_SF": -2, "WSet_SF": 0, "WSetPct_SF": -2, "VarSet_SF": 0, "VarSetPct_SF": -2},
        713: {"WH_SF": wh_sf, "Pct_SF": -1},
    }


class _Control715(DerControl715):
    def __init__(self, sim: BatterySim):
        super().__init__(sim.image)
        self.sim = sim

    def write(self, values) -> None:
        super().write(values)
        self.sim.plant.running = self.op not in (0, 2)      # STOP / ENTER_STANDBY: no power


class BatterySim(SunSpecSim):
    """A pymodbus server holding the SunSpec map of a simulated battery storage system."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1, *, wh_rtg: float = 10000.0,
                 w_max: float = 5000.0, soc_pct: float = 50.0, serial: str = "BAT0001", base: int = 40000,
                 step_s: float = 0.1, **plant_kw):
        self.plant = BatteryPlant(wh_rtg=wh_rtg, w_cha_max=w_max, w_dis_max=w_max, soc_pct=soc_pct, **plant_kw)
        self.sf = scale_factors(self.plant)
        super().__init__(SunSpecImage(MODELS, base, self.sf), host, port, unit_id, step_s)
        self.serial = serial
        self.handlers = {704: PlantControls(self.plant, WRITABLE_704), 715: _Control715(self)}
        self._render_static()
        self.refresh()

    @property
    def hb(self) -> DerControl715:
        return self.handlers[715]

    def _render_static(self) -> None:
        p = self.plant
        put = self.image.put
        put(1, {"Mn": "gridedge", "Md": "hil-battery", "Opt": "plant", "Vr": "0.1.0", "SN": self.serial,
                "DA": self.unit_id, "Pad": 0})
        put(702, {"WMaxRtg": p.w_max, "VAMaxRtg": p.w_max, "VarMaxInjRtg": round(p.var_max),
                  "VarMaxAbsRtg": round(p.var_max), "WChaRteMaxRtg": p.w_cha_max, "WDisChaRteMaxRtg": p.w_dis_max,
                  "VAChaRteMaxRtg": p.w_cha_max, "VADisChaRteMaxRtg": p.w_dis_max, "VNomRtg": 230.0,
                  "VMaxRtg": 253.0, "VMinRtg": 207.0, "AMaxRtg": round(p.w_max / (p.n_phases * 207.0), 2),
                  "NorOpCatRtg": 1, "AbnOpCatRtg": 2, "WMax": p.w_max, "VAMax": p.w_max,
                  "WChaRteMax": p.w_cha_max, "WDisChaRteMax": p.w_dis_max, "VNom": 230.0})
        put(713, {"WHRtg": p.wh_rtg})

    def refresh(self) -> None:
        """Render the plant's measurements (701, 713) and control state (704) into the register image."""
        p = self.plant
        three = p.n_phases == 3
        per = 1 / 3 if three else 1.0
        w, var, va = round(p.W), round(p.VAr), round(p.VA)
        put = self.image.put
        put(701, {
            "ACType": 2 if three else 0, "St": 1 if p.running else 0,
            "InvSt": (3 if abs(w) > 0 else 7) if p.running else 0, "ConnSt": 1, "Alrm": 0, "DERMode": 0,
            "W": w, "VA": va, "Var": var, "PF": round(p.PF, 3), "A": round(p.A * (3 if three else 1), 2),
            "LNV": round(p.v, 1), "Hz": round(p.hz, 3), "TotWhInj": int(p.TotWhExp), "TotWhAbs": int(p.TotWhImp),
            "TmpCab": 25.0, "WL1": round(w * per), "VL1": round(p.v, 1), "AL1": round(p.A, 2),
            **({"WL2": round(w * per), "WL3": round(w * per), "VL2": round(p.v, 1), "VL3": round(p.v, 1),
                "AL2": round(p.A, 2), "AL3": round(p.A, 2)} if three else {}),
        })
        put(704, {
            "WSetEna": p.WSetEna, "WSetMod": 1, "WSet": round(p.WSet), "WSetRvrt": round(p.WSetRvrt),
            "WSetEnaRvrt": p.WSetEnaRvrt, "WSetRvrtTms": p.WSetRvrtTms,
            "WSetRvrtRem": int(round(p.rvrt_rem("WSetRvrtTms"))),
            "WMaxLimPctEna": p.WMaxLimPctEna, "WMaxLimPct": p.WMaxLimPct, "WMaxLimPctRvrt": p.WMaxLimPctRvrt,
            "WMaxLimPctEnaRvrt": p.WMaxLimPctEnaRvrt, "WMaxLimPctRvrtTms": p.WMaxLimPctRvrtTms,
            "WMaxLimPctRvrtRem": int(round(p.rvrt_rem("WMaxLimPctRvrtTms"))),
            "VarSetEna": p.VArSetEna, "VarSetMod": 4, "VarSet": round(p.VArSet),
        })
        put(713, {"WHAvail": p.WHAvail, "SoC": round(p.soc_pct, 1), "SoH": p.soh_pct, "Sta": p.status})

    def step(self, dt_s: float) -> None:
        self.plant.step(dt_s)


# ---------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.battery_sim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1503, help="TCP port; 0 picks a free one")
    ap.add_argument("--rtu", action="store_true", help="serve on a pseudo-terminal RTU line instead of TCP")
    ap.add_argument("--baudrate", type=int, default=19200)
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--wh", type=float, default=10000.0, help="energy rating, Wh")
    ap.add_argument("--w-max", type=float, default=5000.0, help="charge and discharge rate limit, W")
    ap.add_argument("--soc", type=float, default=50.0, help="initial state of charge, %%")
    ap.add_argument("--serial", default="BAT0001")
    ap.add_argument("--base", type=int, default=40000, choices=ss.BASE_ADDRESSES)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sim = BatterySim(host=args.host, port=args.port, unit_id=args.unit, wh_rtg=args.wh, w_max=args.w_max,
                     soc_pct=args.soc, serial=args.serial, base=args.base)
    return run_cli(serve_until_signalled(sim, args.rtu, args.baudrate))


if __name__ == "__main__":
    sys.exit(main())
