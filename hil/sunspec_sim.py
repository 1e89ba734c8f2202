"""Building blocks of the SunSpec device simulators (hil/inverter_sim.py, hil/battery_sim.py).

- `SunSpecImage`: a register image laid out from the pysunspec2 definitions (repeating groups sized by the device's
  counts), written by point name with the device's scale factors, through gridedge's own encoder;
- `CurveModel`: stored curves of 705 / 706 / 712 and the stored controls of 711, with adoption: curve 1 is the
  active curve and read-only, 2..N are writable; writing N to the adopt request checks curve N and copies it into
  curve 1 (IN_PROGRESS until the next step, then COMPLETED or FAILED: "curve conformance checks should be conducted
  when AdptCrvReq is set, not on point writes"), as the model definitions describe. Point writes are checked
  value by value: indexes within the stored curves and points, ranges within CURVE_RANGES;
- `DerControl715`: the DER heartbeat (incremented every second), the controller heartbeat the gateway writes, alarm
  reset and start/stop;
- `SunSpecSim`: a pymodbus server for an image, on Modbus TCP or as a unit on a pseudo-terminal RTU line
  (hil/modbus_sim.py), that refuses writes like a device would: ILLEGAL_DATA_ADDRESS for a read-only or unimplemented
  register or half a point, ILLEGAL_DATA_VALUE for a value the device does not accept (an enumerated point outside
  its symbols in the model definition, a value its model refuses); nothing changes then. With `booting` set it
  answers like an inverter still starting: "SunS" and an empty model chain, writes SERVER_DEVICE_BUSY.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from gridedge.drivers import sunspec as ss
from gridedge.drivers.sunspec_models import ModelLayout, instance_layout

log = logging.getLogger("gridedge.hil.sunspec_sim")

ADOPT_IN_PROGRESS, ADOPT_COMPLETED, ADOPT_FAILED = 0, 1, 2


def sf_for(max_abs: float, finest: int, limit: int = 32767) -> int:
    """Smallest scale factor >= finest at which max_abs still fits a 16-bit register (like a vendor would pick)."""
    sf = finest
    while max_abs / 10 ** sf > limit and sf < 10:
        sf += 1
    return sf


class SunSpecImage:
    """Registers from `base`: "SunS", the models in order, the end marker. `models` items are a model id or
    (model id, {count point: n}) for models with repeating groups."""

    def __init__(self, models: Sequence[int | tuple[int, Mapping[str, int]]], base: int = 40000,
                 sfs: Mapping[int, Mapping[str, int]] | None = None):
        if base not in ss.BASE_ADDRESSES:
            raise ValueError(f"base must be one of {ss.BASE_ADDRESSES}")
        self.base = base
        self.sfs: dict[int, dict[str, int]] = {m: dict(v) for m, v in (sfs or {}).items()}
        self.layouts: dict[int, ModelLayout] = {}
        self.model_addr: dict[int, int] = {}       # model id -> address of its ID register
        self.counts: dict[int, dict[str, int]] = {}
        addr = base + 2
        for item in models:
            mid, counts = (item, {}) if isinstance(item, int) else (item[0], dict(item[1]))
            lay = instance_layout(mid, counts)
            self.layouts[mid], self.model_addr[mid], self.counts[mid] = lay, addr, counts
            addr += lay.fixed_len
        self.end_addr = addr                        # the 0xFFFF end marker is here
        self.image: list[int] = [0] * (addr + 2 - base)
        self.image[0:2] = list(ss.SUNS_MARKER)
        self.image[addr - base:addr - base + 2] = [ss.END_MODEL_ID, 0]
        for mid, lay in self.layouts.items():
            self.put(mid, {n: None for n in lay.points if n not in ("ID", "L")})     # all "not implemented" first
            self.put(mid, {"ID": mid, "L": lay.fixed_data_len, **self.counts[mid]})
            self.put(mid, dict(self.sfs.get(mid, {})))

    def put(self, mid: int, values: Mapping[str, object]) -> None:
        """Encode engineering values (None = not implemented) into model `mid`; other points stay as they are."""
        lay = self.layouts[mid]
        start = self.model_addr[mid] - self.base
        sfs = self.sfs.get(mid, {})
        for name, v in values.items():
            p = lay.points[name]
            if p.type == "sunssf":
                regs = ss.encode_raw("sunssf", v)
            else:
                regs = ss.encode_point(p, v, sf=sfs.get(p.sf) if isinstance(p.sf, str) else None)
            self.image[start + p.offset:start + p.offset + p.size] = regs

    def get(self, mid: int) -> dict[str, object]:
        """Model `mid` decoded (what a gateway reads)."""
        start = self.model_addr[mid] - self.base
        lay = self.layouts[mid]
        return ss.decode_model(lay, self.image[start:start + lay.fixed_len], first_offset=0)

    def read(self, address: int, count: int) -> list[int]:
        off = address - self.base
        return self.image[off:off + count]

    def model_of(self, address: int, count: int) -> int | None:
        """The model whose data registers (after ID and L) hold address..address+count-1, if one does."""
        for mid, a in self.model_addr.items():
            if a + 2 <= address and address + count <= a + self.layouts[mid].fixed_len:
                return mid
        return None

    def decode_write(self, mid: int, address: int, values: Sequence[int],
                     writable: set[str]) -> dict[str, object] | ExcCodes:
        """{point: engineering value} of a write into model `mid`, or the exception a device answers: a write that
        touches a register outside the `writable` points, or only part of a point, is ILLEGAL_DATA_ADDRESS; a
        "not implemented" value, or an enumerated point's value that is none of its symbols, is ILLEGAL_DATA_VALUE."""
        lay = self.layouts[mid]
        start = self.model_addr[mid]
        touched = set(range(address, address + len(values)))
        covered: dict[str, object] = {}
        for name, p in lay.points.items():
            regs = set(range(start + p.offset, start + p.offset + p.size))
            if not regs & touched:
                continue
            if name not in writable or not regs <= touched:
                return ExcCodes.ILLEGAL_ADDRESS
            a = start + p.offset - address
            covered[name] = ss.decode_raw(p.type, values[a:a + p.size])
        if not covered or len(touched) != sum(lay.points[n].size for n in covered):
            return ExcCodes.ILLEGAL_ADDRESS
        out: dict[str, object] = {}
        sfs = self.sfs.get(mid, {})
        for name, raw in covered.items():
            p = lay.points[name]
            if raw is ss.NOT_IMPLEMENTED or (p.symbols and raw not in p.symbols):
                return ExcCodes.ILLEGAL_VALUE
            out[name] = raw if isinstance(raw, str) else ss.apply_sf(raw, sfs.get(p.sf) if isinstance(p.sf, str) else
                                                                    (p.sf if isinstance(p.sf, int) else None))
        return out


# ---------------------------------------------------------------------- 705 / 706 / 712 curves, 711 controls

#: model -> (repeating group, adopt request, adopt result, (x, y) of the curve points or None for 711 controls)
CURVE_SPECS: dict[int, tuple[str, str, str, tuple[str, str] | None]] = {
    705: ("Crv", "AdptCrvReq", "AdptCrvRslt", ("V", "Var")),
    706: ("Crv", "AdptCrvReq", "AdptCrvRslt", ("V", "W")),
    712: ("Crv", "AdptCrvReq", "AdptCrvRslt", ("W", "Var")),
    711: ("Ctl", "AdptCtlReq", "AdptCtlRslt", None),
}

#: The scale factors of the curve models in the simulators (0.01 % resolution, 1 mHz deadbands, 0.001 droop).
CURVE_SFS: dict[int, dict[str, int]] = {
    705: {"V_SF": -2, "DeptRef_SF": -2, "RspTms_SF": 0},
    706: {"V_SF": -2, "DeptRef_SF": -2, "RspTms_SF": 0},
    712: {"W_SF": -2, "DeptRef_SF": -2},
    711: {"Db_SF": -3, "K_SF": -3, "RspTms_SF": 0},
}

#: Ranges of curve points the model definitions give in words (the JSON has symbols but no min/max), by point name
#: without instance indexes, in engineering units (after the scale factor). 711 PMin: "The valid range is -100 to
#: 100"; the dependent values of a curve are percentages of a rating (the DeptRef base, WMax), so beyond +/-100 %
#: they ask for more than the device has. The curve indexes (adopt request, reversion curve, ActPt) are bounded by
#: the stored curves and points (CurveModel).
CURVE_RANGES: dict[int, dict[str, tuple[float, float]]] = {
    705: {"Crv.Pt.Var": (-100.0, 100.0)},
    706: {"Crv.Pt.W": (-100.0, 100.0)},
    712: {"Crv.Pt.W": (-100.0, 100.0), "Crv.Pt.Var": (-100.0, 100.0)},
    711: {"Ctl.PMin": (-100.0, 100.0)},
}

#: IEEE 1547-2018 Category B defaults (domain brief, section 6), as the active curve 1 of a new device. Reactive
#: power is 44 % of the nameplate apparent power, so its reference is DeptRef 3 (VA_MAX_PCT, "Percent Max Apparent
#: Power"), not 1 (VAR_MAX_PCT, 44 % of VarMax); volt-watt is in % of WMax (DeptRef 0, W_MAX_PCT).
DEPT_REF_W_MAX_PCT, DEPT_REF_VA_MAX_PCT = 0, 3
DEFAULT_CURVES: dict[int, dict[str, object]] = {
    705: {"ActPt": 4, "DeptRef": DEPT_REF_VA_MAX_PCT, "Pri": 1, "VRef": 100.0, "VRefAutoEna": 0, "VRefAutoTms": 300,
          "RspTms": 5, "Pt": [(92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0)]},
    706: {"ActPt": 2, "DeptRef": DEPT_REF_W_MAX_PCT, "RspTms": 10, "Pt": [(106.0, 100.0), (110.0, 0.0)]},
    712: {"ActPt": 3, "DeptRef": DEPT_REF_VA_MAX_PCT, "Pri": 0, "Pt": [(20.0, 0.0), (50.0, 0.0), (100.0, -44.0)]},
    711: {"DbOf": 0.036, "DbUf": 0.036, "KOf": 0.05, "KUf": 0.05, "RspTms": 5, "PMin": 0},
}


class CurveModel:
    """The stored curves (or controls) of one model in an image; see the module docstring."""

    def __init__(self, image: SunSpecImage, mid: int, active: Mapping[str, object] | None = None):
        if mid not in CURVE_SPECS:
            raise ValueError(f"model {mid} is not a curve model ({sorted(CURVE_SPECS)})")
        self.image, self.mid = image, mid
        self.group, self.req, self.rslt, self.axes = CURVE_SPECS[mid]
        counts = image.counts[mid]
        self.n = counts.get("NCtl" if mid == 711 else "NCrv", 0)
        self.n_pt = counts.get("NPt", 0)
        if self.n < 2:
            raise ValueError(f"model {mid} needs at least 2 stored curves (1 active, 1 writable)")
        self.adoptions = 0
        self._pending: int | None = None
        lay = image.layouts[mid]
        # Top-level controls and the RW points of curves 2..N; curve 1 (the active one) is read-only.
        self.writable = {n for n, p in lay.points.items() if p.writable and not n.startswith(f"{self.group}[1].")}
        self.bounds = {self.req: (1, self.n), "RvrtCrv": (1, self.n), "RvrtCtl": (1, self.n),
                       "Crv.ActPt": (1, self.n_pt), **CURVE_RANGES.get(mid, {})}
        curve = dict(DEFAULT_CURVES[mid] if active is None else active)
        base = {"Ena": 0, self.req: 0, self.rslt: ADOPT_COMPLETED, "RvrtTms": 0, "RvrtRem": 0}
        base.update({("RvrtCtl" if mid == 711 else "RvrtCrv"): 1})
        image.put(mid, {k: v for k, v in base.items() if k in lay.points})
        for i in range(1, self.n + 1):
            image.put(mid, self._curve_values(i, curve))
            image.put(mid, {f"{self.group}[{i}].ReadOnly": 1 if i == 1 else 0})

    def _curve_values(self, i: int, curve: Mapping[str, object]) -> dict[str, object]:
        lay = self.image.layouts[self.mid]
        out: dict[str, object] = {}
        for k, v in curve.items():
            if k == "Pt":
                for j, xy in enumerate(v, start=1):
                    for axis, val in zip(self.axes, xy):
                        out[f"{self.group}[{i}].Pt[{j}].{axis}"] = val
            elif f"{self.group}[{i}].{k}" in lay.points:
                out[f"{self.group}[{i}].{k}"] = v
        return {k: v for k, v in out.items() if k in lay.points}

    def curve(self, i: int = 1) -> dict[str, object]:
        """Curve `i` (1 = active) as {"ActPt": n, "Pt": [(x, y), ...], other points...}."""
        d = self.image.get(self.mid)
        pre = f"{self.group}[{i}]."
        out = {k[len(pre):]: v for k, v in d.items() if k.startswith(pre) and ".Pt[" not in k[len(pre) - 1:]}
        if self.axes:
            n = out.get("ActPt")
            n = n if isinstance(n, int) else 0
            out["Pt"] = [tuple(d.get(f"{pre}Pt[{j}].{a}") for a in self.axes) for j in range(1, min(n, self.n_pt) + 1)]
        return out

    @property
    def enabled(self) -> bool:
        return self.image.get(self.mid).get("Ena") == 1

    def _check(self, i: int) -> str | None:
        """Why curve i cannot be adopted, or None."""
        c = self.curve(i)
        if self.axes is None:
            bad = [k for k in ("DbOf", "DbUf", "KOf", "KUf") if not isinstance(c.get(k), (int, float)) or c[k] <= 0]
            return f"{', '.join(bad)} must be > 0" if bad else None
        n = c.get("ActPt")
        if not isinstance(n, int) or not 1 <= n <= self.n_pt:
            return f"ActPt {n!r} outside 1..{self.n_pt}"
        xs = [p[0] for p in c["Pt"]]
        if any(not isinstance(x, (int, float)) for x in xs) or any(b <= a for a, b in zip(xs, xs[1:])):
            return f"{self.axes[0]} points must be numbers in increasing order, got {xs}"
        return None

    def write(self, values: Mapping[str, object]) -> None:
        """Apply a (decoded, writable) write, or raise ValueError and change nothing if a value is out of its bounds;
        an adopt request starts an adoption, finished at the next step()."""
        for name, v in values.items():
            lo, hi = self.bounds.get(re.sub(r"\[\d+\]", "", name), (-math.inf, math.inf))
            if not lo <= v <= hi:
                raise ValueError(f"{name}={v} outside {lo:g}..{hi:g}")
        self.image.put(self.mid, dict(values))
        if self.req in values:
            self._pending = int(values[self.req])
            self.image.put(self.mid, {self.rslt: ADOPT_IN_PROGRESS})

    def step(self) -> None:
        if self._pending is None:
            return
        i, self._pending = self._pending, None
        why = self._check(i)
        if why is not None:
            log.warning("model %d: adopting curve %d failed: %s", self.mid, i, why)
            self.image.put(self.mid, {self.rslt: ADOPT_FAILED})
            return
        src = self.curve(i)
        values = self._curve_values(1, {k: v for k, v in src.items() if k != "ReadOnly"})
        if self.axes is not None:      # points beyond ActPt of the adopted curve are not part of it
            for j in range(len(src["Pt"]) + 1, self.n_pt + 1):
                values.update({f"{self.group}[1].Pt[{j}].{a}": None for a in self.axes})
        self.image.put(self.mid, values)
        self.image.put(self.mid, {self.rslt: ADOPT_COMPLETED})
        self.adoptions += 1
        log.info("model %d: curve %d adopted", self.mid, i)


# ---------------------------------------------------------------------- 715 DER control

class DerControl715:
    """715 in an image: DERHb counts seconds, ControllerHb is the gateway's, OpCtl start/stop, AlarmReset."""

    def __init__(self, image: SunSpecImage, clock=time.monotonic):
        self.image, self.clock = image, clock
        self.writable = {"ControllerHb", "AlarmReset", "OpCtl"}
        self.der_hb = 0
        self.controller_hb: int | None = None
        self.controller_hb_at: float | None = None
        self.op = 1
        self.alarm_resets = 0
        self._t0 = clock()
        image.put(715, {"LocRemCtl": 0, "DERHb": 0, "ControllerHb": 0, "AlarmReset": 0, "OpCtl": self.op})

    @property
    def controller_hb_age_s(self) -> float | None:
        """Seconds since the controller heartbeat last changed; None if it never did."""
        return None if self.controller_hb_at is None else self.clock() - self.controller_hb_at

    def write(self, values: Mapping[str, object]) -> None:
        if "AlarmReset" in values and values["AlarmReset"] not in (0, 1):
            raise ValueError(f"AlarmReset must be 0 or 1, got {values['AlarmReset']}")
        if "ControllerHb" in values and values["ControllerHb"] != self.controller_hb:
            self.controller_hb, self.controller_hb_at = int(values["ControllerHb"]), self.clock()
        if values.get("AlarmReset") == 1:
            self.alarm_resets += 1
            values = {**values, "AlarmReset": 0}     # a command, not a state
        if "OpCtl" in values:
            self.op = int(values["OpCtl"])
        self.image.put(715, dict(values))

    def step(self) -> None:
        hb = int(self.clock() - self._t0) % 0xFFFFFFFF      # periodic reset, never the "not implemented" value
        if hb != self.der_hb:
            self.der_hb = hb
            self.image.put(715, {"DERHb": hb})


# ---------------------------------------------------------------------- the server

def write_to_handler(image: SunSpecImage, handler, mid: int | None, address: int,
                     values: list[int]) -> ExcCodes | dict[str, object]:
    """Decode a write into model `mid` and hand it to the model's handler; the values applied, or the exception
    code a device answers (nothing changed then)."""
    if handler is None or mid is None:
        log.warning("refused write of %d registers at %d: not a writable model", len(values), address)
        return ExcCodes.ILLEGAL_ADDRESS
    decoded = image.decode_write(mid, address, values, handler.writable)
    if isinstance(decoded, ExcCodes):
        log.warning("refused write at %d %s: %s", address, values, decoded.name)
        return decoded
    try:
        handler.write(decoded)
    except (ValueError, KeyError) as exc:
        log.warning("refused write at %d: %s", address, exc)
        return ExcCodes.ILLEGAL_VALUE
    log.info("applied write at %d (model %d): %s t_ns=%d", address, mid, decoded, time.time_ns())
    return decoded


class PlantControls:
    """Writes into a control model (704) -> the plant's controls, atomically: the plant validates them all or
    changes nothing."""

    def __init__(self, plant, points: Mapping[str, str]):
        """points: SunSpec point this device implements as writable -> the plant control it drives."""
        self.plant = plant
        self.points = dict(points)
        self.writable = set(points)
        self.writes = 0

    def write(self, values: Mapping[str, object]) -> None:
        self.plant.write(**{self.points[k]: v for k, v in values.items()})
        self.writes += 1


class SunSpecSim:
    """A SunSpec device simulator: subclasses build `self.image`, fill `self.handlers` ({model: object with
    `writable` point names and write(values)}), and render their plant in refresh() / advance it in step(dt)."""

    def __init__(self, image: SunSpecImage, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1,
                 step_s: float = 0.1):
        self.image = image
        self.host, self.port, self.unit_id, self.step_s = host, port, unit_id, step_s
        self.handlers: dict[int, object] = {}
        #: Still starting: "SunS" answers, but the chain is empty (end marker right after it) and writes are refused
        #: with SERVER_DEVICE_BUSY, as a slow-booting inverter does before its models are up. Clear it to boot.
        self.booting = False
        self.writes_applied = 0
        self.writes_refused = 0
        self._server = None          # a ModbusTcpSim serving this unit
        self._line = None
        self._task: asyncio.Task | None = None

    @property
    def base(self) -> int:
        return self.image.base

    @property
    def end_addr(self) -> int:
        return self.image.end_addr

    # -- subclass hooks
    def refresh(self) -> None:
        """Render the plant into the image."""

    def step(self, dt_s: float) -> None:
        """Advance the plant by dt_s seconds."""

    # -- Modbus side
    def read(self, address: int, count: int) -> list[int]:
        """What a read answers: the image, or while booting the marker and an empty chain (zeros after it)."""
        if not self.booting:
            return self.image.read(address, count)
        boot = (*ss.SUNS_MARKER, ss.END_MODEL_ID, 0)
        return [boot[a - self.base] if 0 <= a - self.base < len(boot) else 0 for a in range(address, address + count)]

    def apply_write(self, address: int, values: list[int]) -> ExcCodes | None:
        """A write as a device would take it: refused (exception code, nothing changed) or applied."""
        if self.booting:
            self.writes_refused += 1
            return ExcCodes.DEVICE_BUSY
        mid = self.image.model_of(address, len(values))
        result = write_to_handler(self.image, self.handlers.get(mid), mid, address, values)
        if isinstance(result, ExcCodes):
            self.writes_refused += 1
            return result
        self.writes_applied += 1
        self.refresh()
        return None

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values) -> ExcCodes | None:
        if set_values is None:
            # A read: serve the latest image (the background task renders into it).
            current_registers[address - start_address:address - start_address + count] = self.read(address, count)
            return None
        values = [int(v) for v in (set_values if isinstance(set_values, list) else [set_values])]
        exc = self.apply_write(address, values)
        if exc is not None:
            return exc
        rendered = self.image.read(address, len(values))   # the server stores what we rendered, not the raw write
        if isinstance(set_values, list):
            set_values[:] = rendered
        return None

    def sim_device(self) -> SimDevice:
        """This device as a pymodbus SimDevice (for a TCP server or a unit on a ModbusLineSim)."""
        return SimDevice(id=self.unit_id, simdata=[SimData(address=self.base, values=list(self.image.image),
                                                           datatype=DataType.REGISTERS)], action=self._action)

    async def start(self) -> int:
        """Serve on Modbus TCP and start the plant; returns the bound port."""
        from .modbus_sim import ModbusTcpSim

        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = ModbusTcpSim({self.unit_id: self}, self.host, self.port)
        try:
            self.port = await self._server.start()
        except BaseException:
            self._server = None
            raise
        self.start_plant()
        return self.port

    async def start_rtu(self, baudrate: int = 19200) -> str:
        """Serve as the only unit of a pseudo-terminal RTU line and start the plant; returns the port to open."""
        from .modbus_sim import ModbusLineSim

        self._line = ModbusLineSim({self.unit_id: self}, baudrate=baudrate)
        port = await self._line.start()
        self.start_plant()
        return port

    def start_plant(self) -> None:
        """Step the plant in the background (idempotent); for a sim served by a shared ModbusLineSim."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sunspec-sim-{self.unit_id}")

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            now = time.monotonic()
            try:
                self.step(now - last)
                for h in self.handlers.values():
                    if hasattr(h, "step"):
                        h.step()
                self.refresh()
            except Exception:  # noqa: BLE001 - a rendering bug must show in the log, not silently freeze the plant
                log.exception("plant step failed")
            last = now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._line is not None:
            await self._line.stop()
            self._line = None


# ---------------------------------------------------------------------- CLI of the simulators

async def serve_until_signalled(sim: SunSpecSim, rtu: bool, baudrate: int,
                                alongside: Coroutine | None = None) -> None:
    """Serve until SIGTERM / SIGINT, printing "READY <port>" or "READY <pty path>" once serving (what the rig
    waits for); `alongside` runs while serving and is cancelled at the end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = await sim.start_rtu(baudrate) if rtu else await sim.start()
    print(f"READY {where}", flush=True)
    task = asyncio.create_task(alongside) if alongside is not None else None
    try:
        await stop.wait()
    finally:
        if task is not None:
            task.cancel()
        await sim.stop()
    log.info("stopped")


def run_cli(main: Coroutine) -> int:
    """Run a simulator's main coroutine with the simulators' logging (to stderr, pymodbus quiet)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(main)
    return 0
