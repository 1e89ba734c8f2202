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
import asyncio
import logging
import signal
import sys
import time

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridedge.drivers import sunspec as ss
from gridedge.drivers.sunspec_models import model_layout
from gridedge.hil.plant import PvProfile, PVInverterPlant
from gridedge.hil.sunspec_sim import CURVE_SFS, CurveModel, DerControl715, SunSpecImage, write_to_handler

log = logging.getLogger("gridedge.hil.inverter_sim")

MODELS = (1, 701, 702, 704, 705, 711, 712, 715)
#: Stored curves / controls of the curve models (curve 1 is the active one).
MODEL_COUNTS = {705: {"NCrv": 3, "NPt": 4}, 711: {"NCtl": 2}, 712: {"NCrv": 2, "NPt": 4}}



def _sf_for(max_abs: float, finest: int, limit: int = 32767) -> int:
    """Smallest scale factor >= finest at which max_abs still fits a 16-bit register (like a vendor would pick)."""
    sf = finest
    while max_abs / 10 ** sf > limit and sf < 10:
        sf += 1
    return sf


def scale_factors(w_max: float, n_phases: int = 3) -> dict[int, dict[str, int]]:
    """The simulated device's scale factors: fine resolution, but the nameplate (+10 %) always fits int16."""
    w_sf = _sf_for(w_max * 1.1, 0)
    a_sf = _sf_for(w_max * 1.1 / 150.0, -2)        # worst case: single phase at 150 V
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


class InverterSim:
    """A pymodbus TCP server holding a SunSpec map of a simulated PV inverter."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1, w_max: float = 10000.0,
                 pv: PvProfile | float = 8000.0, ramp_pct_per_s: float = 10.0, serial: str = "SIM0001",
                 base: int = 40000, step_s: float = 0.1, models: tuple[int, ...] = MODELS, grid=None,
                 var_response_s: float = 0.0):
        """grid: the plant's connection point (hil/feeder.py Feeder.tap), None = a stiff 230 V / 50 Hz grid."""
        if base not in ss.BASE_ADDRESSES:
            raise ValueError(f"base must be one of {ss.BASE_ADDRESSES}")
        self.host, self.port, self.unit_id, self.base, self.step_s = host, port, unit_id, base, step_s
        self.serial = serial
        self.plant = PVInverterPlant(w_max=w_max, pv=pv, ramp_pct_per_s=ramp_pct_per_s, grid=grid,
                                     var_response_s=var_response_s)
        self.sf = scale_factors(self.plant.w_max, self.plant.n_phases)
        self.writes_applied = 0
        self.control_writes = 0                    # of those, writes of 704 controls (not curves or heartbeats)
        self.writes_refused = 0
        if not {1, 701, 704} <= set(models):
            raise ValueError("an inverter needs at least models 1, 701 and 704")
        # layout (every point "not implemented" first): model id -> address of the ID register
        self.map = SunSpecImage([(m, MODEL_COUNTS.get(m, {})) for m in models], base, {**CURVE_SFS, **self.sf})
        self.model_addr: dict[int, int] = self.map.model_addr
        self.end_addr = self.map.end_addr            # 0xFFFF end marker here
        self.image: list[int] = self.map.image
        self._render_static()
        # 705/711/712 stored curves and 715 heartbeats: written by the gateway, adopted at the next step
        self.handlers: dict[int, object] = {m: CurveModel(self.map, m) for m in (705, 711, 712) if m in models}
        if 715 in models:
            self.handlers[715] = DerControl715(self.map)
        self.refresh()
        self._server: ModbusTcpServer | None = None
        self._line = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ register image

    def _put(self, mid: int, values: dict[str, object]) -> None:
        """Encode engineering values into model `mid` (points not given stay as they are)."""
        self.map.put(mid, values)

    def _render_static(self) -> None:
        p = self.plant
        self._put(1, {"Mn": "gridedge", "Md": "hil-inverter", "Opt": "plant", "Vr": "0.1.0", "SN": self.serial,
                      "DA": self.unit_id, "Pad": 0})
        self._put(702, {"WMaxRtg": p.w_max, "VAMaxRtg": p.w_max, "VarMaxInjRtg": round(p.var_max),
                        "VarMaxAbsRtg": round(p.var_max), "VNomRtg": 230.0, "VMaxRtg": 253.0, "VMinRtg": 207.0,
                        "AMaxRtg": round(p.w_max / (p.n_phases * 207.0), 2), "NorOpCatRtg": 1, "AbnOpCatRtg": 2,
                        "WMax": p.w_max, "VAMax": p.w_max, "VNom": 230.0})

    def refresh(self) -> None:
        """Re-render the plant's measurements (701) and control state (704) into the register image."""
        p = self.plant
        three = p.n_phases == 3
        per = 1 / 3 if three else 1.0
        w, var, va = round(p.W), round(p.VAr), round(p.VA)
        self._put(701, {
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
            "ThrotPct": round(100 * (1 - w / p.available_w())) if p.available_w() > 1 else 0,
        })
        self._put(704, {
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

    # ------------------------------------------------------------------ Modbus side

    def _decode_write(self, address: int, values: list[int]) -> dict[str, float] | ExcCodes:
        """Plant controls of a write to 704, or the Modbus exception a device would answer."""
        lay = model_layout(704)
        start = self.model_addr[704]
        end = address + len(values)
        covered: dict[str, object] = {}
        touched = set(range(address, end))
        for name, p in lay.points.items():
            a = start + p.offset
            regs_of_point = set(range(a, a + p.size))
            if not regs_of_point & touched:
                continue
            if name not in WRITABLE_704 or not regs_of_point <= touched:
                return ExcCodes.ILLEGAL_ADDRESS
            covered[name] = ss.decode_raw(p.type, values[a - address:a - address + p.size])
        if not covered or len(touched) != sum(lay.points[n].size for n in covered):
            return ExcCodes.ILLEGAL_ADDRESS
        out: dict[str, float] = {}
        for name, raw in covered.items():
            if raw is ss.NOT_IMPLEMENTED:
                return ExcCodes.ILLEGAL_VALUE
            p = lay.points[name]
            sf = self.sf[704].get(p.sf) if isinstance(p.sf, str) else None
            out[WRITABLE_704[name]] = ss.apply_sf(raw, sf)
        return out

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values) -> ExcCodes | None:
        if set_values is None:
            # A read: serve the latest image (the background task renders into self.image).
            off = address - self.base
            current_registers[address - start_address:address - start_address + count] = \
                self.image[off:off + count]
            return None
        values = [int(v) for v in (set_values if isinstance(set_values, list) else [set_values])]
        mid = self.map.model_of(address, len(values))
        if mid in self.handlers:          # 705 / 711 / 712 curves, 715 heartbeat
            result = write_to_handler(self.map, self.handlers[mid], mid, address, values)
            if isinstance(result, ExcCodes):
                self.writes_refused += 1
                return result
            self.writes_applied += 1
            if isinstance(set_values, list):
                set_values[:] = self.map.read(address, len(values))
            return None
        a704 = self.model_addr[704]
        l704 = model_layout(704).fixed_len
        if address < a704 + 2 or address + len(values) > a704 + l704:
            self.writes_refused += 1
            log.warning("refused write of %d registers at %d: not a writable 704 control", len(values), address)
            return ExcCodes.ILLEGAL_ADDRESS
        decoded = self._decode_write(address, values)
        if isinstance(decoded, ExcCodes):
            self.writes_refused += 1
            log.warning("refused write at %d %s: %s", address, values, decoded.name)
            return decoded
        try:
            self.plant.write(**decoded)
        except (ValueError, KeyError) as exc:
            self.writes_refused += 1
            log.warning("refused write at %d: %s", address, exc)
            return ExcCodes.ILLEGAL_VALUE
        self.writes_applied += 1
        self.control_writes += 1
        log.info("applied write at %d: %s t_ns=%d", address, decoded, time.time_ns())
        self.refresh()
        off = address - self.base
        # the server now stores the written registers; keep them identical to our rendering
        values[:] = self.image[off:off + len(values)]
        if isinstance(set_values, list):
            set_values[:] = values
        return None

    def sim_device(self) -> SimDevice:
        """This inverter as a pymodbus SimDevice (a TCP server, or a unit on a ModbusLineSim RTU line)."""
        return SimDevice(id=self.unit_id, simdata=[SimData(address=self.base, values=list(self.image),
                                                           datatype=DataType.REGISTERS)], action=self._action)

    def start_plant(self) -> None:
        """Step the plant in the background (idempotent); start() and start_rtu() do it."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"inverter-sim-{self.unit_id}")

    async def start_rtu(self, baudrate: int = 19200) -> str:
        """Serve as the only unit of a pseudo-terminal RTU line and step the plant; returns the port to open."""
        from gridedge.hil.modbus_sim import ModbusLineSim

        self._line = ModbusLineSim({self.unit_id: self}, baudrate=baudrate)
        port = await self._line.start()
        self.start_plant()
        return port

    async def start(self) -> int:
        """Start serving and stepping the plant; returns the bound TCP port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        server = ModbusTcpServer(self.sim_device(), address=(self.host, self.port))
        await server.serve_forever(background=True)
        self._server = server
        sockets = server.transport.sockets if server.transport is not None else []
        if not sockets:
            await self.stop()
            raise RuntimeError(f"simulator could not listen on {self.host}:{self.port}")
        self.port = sockets[0].getsockname()[1]
        self.start_plant()
        return self.port

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            now = time.monotonic()
            try:
                self.plant.step(now - last)
                for h in self.handlers.values():
                    h.step()
                self.refresh()
            except Exception:  # noqa: BLE001 - a rendering bug must show in the log, not silently freeze the plant
                log.exception("plant step failed")
            last = now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        if self._line is not None:
            await self._line.stop()
            self._line = None


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


async def _main(args: argparse.Namespace) -> None:
    from gridedge.hil.feeder import Feeder, grid_commands

    feeder = None
    if args.feeder:
        r, x = (float(v) for v in args.feeder.split(","))
        feeder = Feeder([(r, x)], v_source_pu=args.grid_v_pu)
    sim = InverterSim(host=args.host, port=args.port, unit_id=args.unit, w_max=args.w_max, pv=args.pv_w,
                      ramp_pct_per_s=args.ramp_pct_per_s, serial=args.serial, base=args.base,
                      grid=feeder.tap(1, "inv") if feeder else None, var_response_s=args.var_response_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await sim.start_rtu(args.baudrate) if args.rtu else await sim.start()
    print(f"READY {port}", flush=True)
    control = asyncio.create_task(grid_commands(sys.stdin, feeder, sim.plant)) if args.grid_control else None
    try:
        await stop.wait()
    finally:
        if control is not None:
            control.cancel()
        await sim.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
