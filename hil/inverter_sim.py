"""SunSpec PV inverter for hardware-in-the-loop tests: models 1, 701, 702, 704 over a PVInverterPlant, plus stored
curves 705 (volt-var), 711 (frequency droop controls), 712 (watt-var) with adoption and 715 (heartbeats), on Modbus
TCP or on a pseudo-terminal RTU line (hil/sunspec_sim.py has the curve and heartbeat models).

Register images are built from the pysunspec2 definitions with gridedge's own encoder, so the driver and the
simulator share definitions but not code paths for the wire format (a layout bug shows up as a test failure,
the golden tests against pysunspec2 guard the codec itself).

Writes into 704 are validated like a device would: a value outside the plant's range gives Modbus exception
ILLEGAL_DATA_VALUE; a write touching a read-only register, or a control this device does not implement, gives
ILLEGAL_DATA_ADDRESS. Nothing changes on a refused write.

CLI: python -m gridedge.hil.inverter_sim --port 1502 [--rtu]
     (prints "READY <port>" or "READY <pty path>" once serving; SIGTERM/SIGINT stop it)
"""
from __future__ import annotations

import argparse
import sys

from gridedge.drivers import sunspec as ss
from gridedge.hil.plant import PvProfile, PVInverterPlant
from gridedge.hil.sunspec_sim import (CURVE_SFS, CurveModel, DerControl715, PlantControls, SunSpecImage,
                                      SunSpecSim, run_cli, serve_until_signalled, sf_for)

MODELS = (1, 701, 702, 704, 705, 711, 712, 715)
#: Stored curves / controls of the curve models (curve 1 is the active one).
MODEL_COUNTS = {705: {"NCrv": 3, "NPt": 4}, 711: {"NCtl": 2}, 712: {"NCrv": 2, "NPt": 4}}



def scale_factors(w_max: float, n_phases: int = 3) -> dict[int, dict[str, int]]:
    """The simulated device's scale factors: fine resolution, but the nameplate (+10 %) always fits int16."""
    w_sf = sf_for(w_max * 1.1, 0)
    a_sf = sf_for(w_max * 1.1 / 150.0, -2)        # worst case: single phase at 150 V
    return {
        701: {"A_SF": a_sf, "V_SF": -1, "Hz_SF": -3, "W_SF": w_sf, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf,
              "TotWh_SF": 0, "TotVarh_SF": 0, "Tmp_SF": -1},
        702: {"W_SF": w_sf, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf, "V_SF": -1, "A_SF": a_sf, "S_SF": 0},
        704: {"PF_SF": -3, "WMaxLimPct_SF": -2, "WSet_SF": 0, "WSetPct_SF": -2, "VarSet_SF": 0,
              "VarSetPct_SF": -2},
    }

#: 704 points this device implements as writable, and the plant control each one drives.
WRITABLE_704 = {
    "WMaxLimPctEna": "WMaxLimPctEna", "WMaxLimPct": "WMaxLimPct", "WMaxLimPctRvrt": "WMaxLimPctRvrt",
    "WMaxLimPctEnaRvrt": "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms": "WMaxLimPctRvrtTms",
    "WSetEna": "WSetEna", "WSet": "WSet", "VarSetEna": "VArSetEna", "VarSet": "VArSet",
    # reversion of the set-points (control developer's block)
    "WSetRvrt": "WSetRvrt", "WSetEnaRvrt": "WSetEnaRvrt", "WSetRvrtTms": "WSetRvrtTms",
    "VarSetRvrt": "VArSetRvrt", "VarSetEnaRvrt": "VArSetEnaRvrt", "VarSetRvrtTms": "VArSetRvrtTms",
}


class InverterSim(SunSpecSim):
    """A SunSpec PV inverter on a pymodbus server (TCP or a pty RTU line): 704 writes drive the plant."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1, w_max: float = 10000.0,
                 pv: PvProfile | float = 8000.0, ramp_pct_per_s: float = 10.0, serial: str = "SIM0001",
                 base: int = 40000, step_s: float = 0.1, models: tuple[int, ...] = MODELS, grid=None,
                 var_response_s: float = 0.0):
        """grid: the plant's connection point (hil/feeder.py Feeder.tap), None = a stiff 230 V / 50 Hz grid."""
        if base not in ss.BASE_ADDRESSES:
            raise ValueError(f"base must be one of {ss.BASE_ADDRESSES}")
        self.serial = serial
        self.plant = PVInverterPlant(w_max=w_max, pv=pv, ramp_pct_per_s=ramp_pct_per_s, grid=grid,
                                     var_response_s=var_response_s)
        self.sf = scale_factors(self.plant.w_max, self.plant.n_phases)
        if not {1, 701, 704} <= set(models):
            raise ValueError("an inverter needs at least models 1, 701 and 704")
        # layout (every point "not implemented" first): model id -> address of the ID register
        super().__init__(SunSpecImage([(m, MODEL_COUNTS.get(m, {})) for m in models], base, {**CURVE_SFS, **self.sf}),
                         host, port, unit_id, step_s)
        self._render_static()
        # 705/711/712 stored curves and 715 heartbeats: written by the gateway, adopted at the next step
        self.handlers = {m: CurveModel(self.image, m) for m in (705, 711, 712) if m in models}
        self.handlers[704] = PlantControls(self.plant, WRITABLE_704)
        if 715 in models:
            self.handlers[715] = DerControl715(self.image)
        self.refresh()

    @property
    def control_writes(self) -> int:
        """Of writes_applied, the writes of 704 controls (not curves, not heartbeats)."""
        return self.handlers[704].writes

    # ------------------------------------------------------------------ register image

    def _render_static(self) -> None:
        p = self.plant
        self.image.put(1, {"Mn": "gridedge", "Md": "hil-inverter", "Opt": "plant", "Vr": "0.1.0", "SN": self.serial,
                           "DA": self.unit_id, "Pad": 0})
        if 702 not in self.image.layouts:      # a device without nameplate ratings (a test of a changed chain)
            return
        self.image.put(702, {"WMaxRtg": p.w_max, "VAMaxRtg": p.w_max, "VarMaxInjRtg": round(p.var_max),
                             "VarMaxAbsRtg": round(p.var_max), "VNomRtg": 230.0, "VMaxRtg": 253.0, "VMinRtg": 207.0,
                             "AMaxRtg": round(p.w_max / (p.n_phases * 207.0), 2), "NorOpCatRtg": 1, "AbnOpCatRtg": 2,
                             "WMax": p.w_max, "VAMax": p.w_max, "VNom": 230.0})

    def refresh(self) -> None:
        """Re-render the plant's measurements (701) and control state (704) into the register image."""
        p = self.plant
        three = p.n_phases == 3
        per = 1 / 3 if three else 1.0
        w, var, va = round(p.W), round(p.VAr), round(p.VA)
        self.image.put(701, {
            "ACType": 2 if three else 0, "St": 1, "InvSt": 4 if p.WMaxLimPctEna and w < p.available_w() - 1 else 3,
            "ConnSt": 1, "Alrm": 0, "DERMode": 0,
            "W": w, "VA": va, "Var": var, "PF": round(p.PF, 3), "A": round(p.A * (3 if three else 1), 2),
            "LNV": round(p.v, 1), "LLV": round(p.v * 3 ** 0.5, 1) if three else None, "Hz": round(p.hz, 3),
            "TotWhInj": int(p.TotWhExp), "TotWhAbs": int(p.TotWhImp),
            "TotVarhInj": int(p.TotVArhInj), "TotVarhAbs": int(p.TotVArhAbs), "TmpCab": 35.0,
            "WL1": round(w * per), "VAL1": round(va * per), "VarL1": round(var * per), "PFL1": round(p.PF, 3),
            "AL1": round(p.A, 2), "VL1": round(p.v, 1),
            **({"WL2": round(w * per), "VAL2": round(va * per), "VarL2": round(var * per), "PFL2": round(p.PF, 3),
                "AL2": round(p.A, 2), "VL2": round(p.v, 1), "WL3": round(w * per), "VAL3": round(va * per),
                "VarL3": round(var * per), "PFL3": round(p.PF, 3), "AL3": round(p.A, 2), "VL3": round(p.v, 1),
                "VL1L2": round(p.v * 3 ** 0.5, 1), "VL2L3": round(p.v * 3 ** 0.5, 1),
                "VL3L1": round(p.v * 3 ** 0.5, 1)} if three else {}),
            "ThrotPct": max(0, round(100 * (1 - w / p.available_w()))) if p.available_w() > 1 else 0,
        })
        self.image.put(704, {
            "WMaxLimPctEna": p.WMaxLimPctEna, "WMaxLimPct": p.WMaxLimPct, "WMaxLimPctRvrt": p.WMaxLimPctRvrt,
            "WMaxLimPctEnaRvrt": p.WMaxLimPctEnaRvrt, "WMaxLimPctRvrtTms": p.WMaxLimPctRvrtTms,
            "WMaxLimPctRvrtRem": int(round(p.WMaxLimPctRvrtRem)),
            "WSetEna": p.WSetEna, "WSetMod": 1, "WSet": round(p.WSet), "VarSetEna": p.VArSetEna, "VarSetMod": 4,
            "VarSet": round(p.VArSet),
            "WSetRvrt": round(p.WSetRvrt), "WSetEnaRvrt": p.WSetEnaRvrt, "WSetRvrtTms": p.WSetRvrtTms,
            "WSetRvrtRem": int(round(p.rvrt_rem("WSetRvrtTms"))),
            "VarSetRvrt": round(p.VArSetRvrt), "VarSetEnaRvrt": p.VArSetEnaRvrt, "VarSetRvrtTms": p.VArSetRvrtTms,
            "VarSetRvrtRem": int(round(p.rvrt_rem("VArSetRvrtTms"))),
        })

    def step(self, dt_s: float) -> None:
        self.plant.step(dt_s)


# ---------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gridedge.hil.inverter_sim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1502, help="0 picks a free port")
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--w-max", type=float, default=10000.0)
    ap.add_argument("--pv-w", type=float, default=8000.0, help="constant PV availability, W")
    ap.add_argument("--ramp-pct-per-s", type=float, default=10.0)
    ap.add_argument("--serial", default="SIM0001")
    ap.add_argument("--base", type=int, default=40000, choices=ss.BASE_ADDRESSES)
    ap.add_argument("--rtu", action="store_true", help="serve on a pseudo-terminal RTU line instead of TCP")
    ap.add_argument("--baudrate", type=int, default=19200)
    ap.add_argument("--feeder", metavar="R,X", help="connect through a one-segment feeder, ohm per phase "
                                                    "(the voltage at the inverter responds to its P and Q)")
    ap.add_argument("--grid-v-pu", type=float, default=1.0, help="source voltage of the feeder, pu of 230 V")
    ap.add_argument("--var-response-s", type=float, default=0.0, help="time constant of Q following VarSet, s")
    ap.add_argument("--grid-control", action="store_true",
                    help="read 'grid v_pu=... hz=...' lines on stdin (the rig's hand on the grid)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from gridedge.hil.feeder import Feeder, grid_commands

    args = _parse(argv)
    feeder = None
    if args.feeder:
        r, x = (float(v) for v in args.feeder.split(","))
        feeder = Feeder([(r, x)], v_source_pu=args.grid_v_pu)
    sim = InverterSim(host=args.host, port=args.port, unit_id=args.unit, w_max=args.w_max, pv=args.pv_w,
                      ramp_pct_per_s=args.ramp_pct_per_s, serial=args.serial, base=args.base,
                      grid=feeder.tap(1, "inv") if feeder else None, var_response_s=args.var_response_s)
    control = grid_commands(sys.stdin, feeder, sim.plant) if args.grid_control else None
    return run_cli(serve_until_signalled(sim, args.rtu, args.baudrate, alongside=control))


if __name__ == "__main__":
    sys.exit(main())
