"""The bench a scenario describes, built from the rig's parts: a throwaway (or kept) PKI, mosquitto with TLS and
the per-identity ACL, the fault proxy on the gateway's uplink, the simulated devices on a feeder model with their
Modbus fault relays, the gateway under test, and the DSO head-end simulator.

The simulated devices run in this process, so the rig sees every register write the moment it arrives and the
plant's true state (its available power is the baseline no gateway can fake). The gateway is a process the rig
starts (gridedge, or any command) or one that runs elsewhere and is only given the broker address, the
certificates and the devices' addresses (bench.json); the rig never looks inside it.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from gridedge import contract
from gridedge.drivers import regmap
from gridedge.mqtt import tls_context
from gridedge.security.signing import new_issuer_key

from .battery_sim import BatterySim
from .dso_sim import DsoSimulator
from .faultproxy import FaultProxy
from .feeder import Feeder
from .inverter_sim import InverterSim
from .modbus_relay import ModbusRelay
from .modbus_sim import ModbusLineSim, ModbusTcpSim, UnitSim
from .pki import Pki, make_pki
from .plant import clear_sky_pv
from .rig import (CONTROL_DEFAULTS, HEADEND_CN, ISSUERS, SETTINGS_DEFAULTS, _toml_value, issuer_identities, rig_broker,
                  stop_process)
from .scenario import Scenario

__all__ = ["Bench", "BenchError", "Clock", "value_at", "toml_text"]

CONTROL_POINTS = {"WMaxLimPct", "WMaxLimPctEna", "WSet", "WSetEna", "VarSet", "VarSetEna"}
RTU_MODES = {"timeout": "silent", "slow": "slow", "exception": "exception", "garbage": "bad_crc"}


class BenchError(RuntimeError):
    """The bench could not be built or the gateway did not come up; the message says where to look."""


class Clock:
    """Scenario time: 0 until the timeline starts, then `speed` scenario seconds per wall second."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.t0: float | None = None      # monotonic start of the timeline
        self.t0_ns = 0                    # its wall time

    def start(self) -> None:
        self.t0, self.t0_ns = time.monotonic(), time.time_ns()

    def scenario_s(self) -> float:
        return 0.0 if self.t0 is None else max(0.0, (time.monotonic() - self.t0) * self.speed)

    def deadline(self, at_s: float) -> float:
        return self.t0 + at_s / self.speed


def value_at(profile, t_s: float) -> float:
    """A profile (a number, or [(at, value)] points joined by straight lines and held beyond the ends) at t_s."""
    if isinstance(profile, (int, float)):
        return float(profile)
    if t_s < profile[0][0]:
        return profile[0][1]
    for (ta, va), (tb, vb) in zip(profile, profile[1:]):
        if ta <= t_s < tb:
            return va + (vb - va) * (t_s - ta) / (tb - ta)
    return profile[-1][1]


def toml_text(doc: dict, prefix: str = "") -> str:
    """A configuration as TOML: values, then tables, then arrays of tables (what the rig writes for gridedge)."""
    out, tables, arrays = [], [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            out.append(f"{_toml_key(k)} = {_toml_value(v if not isinstance(v, Path) else str(v))}")
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in tables:
        text += f"\n[{prefix}{_toml_key(k)}]\n" + toml_text(v, f"{prefix}{_toml_key(k)}.")
    for k, items in arrays:
        for item in items:
            text += f"\n[[{prefix}{_toml_key(k)}]]\n" + toml_text(item, f"{prefix}{_toml_key(k)}.")
    return text


def _toml_key(k: str) -> str:
    """A bare key where TOML allows one, else quoted (a scenario's keys may hold dots, spaces, anything)."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def kept_pki(directory: Path, names: tuple[str, ...]) -> Pki:
    """The PKI in `directory` if one is there (an external gateway keeps its certificates across runs), else new."""
    p = Pki(dir=directory, ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
            server_cert=directory / "server.crt", server_key=directory / "server.key")
    if all(f.is_file() for f in (p.ca_cert, p.ca_key, p.server_cert, p.server_key)):
        for cert in (directory / "clients").glob("*.crt"):       # reuse issued client certificates as they are
            key = cert.with_suffix(".key")
            if key.is_file():
                p._clients[_cn_of(cert)] = (cert, key)
        return p
    return make_pki(directory, server_names=names, days=365)


def _cn_of(cert_path: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


class SimDevice:
    """One simulated device: its simulator, how the gateway reaches it, and what the rig saw of it."""

    def __init__(self, spec: dict, clock: Clock, seed: int) -> None:
        self.spec, self.id, self.kind = spec, spec["id"], spec["kind"]
        self.node = spec.get("node", 1)
        self.relay: ModbusRelay | None = None
        self.server = None          # a ModbusTcpSim, for meters on TCP
        self.endpoint: dict = {}    # the gateway's [[devices]] keys for it
        self.writes: list[dict] = []       # applied control writes: {"t", "points"}
        self.attempts: list[dict] = []     # every write request that reached it: {"t", "address", "count", "refused"}
        self.wh = [0.0, 0.0]               # a meter's import and export registers
        if self.kind == "inverter":
            cs = spec.get("clear_sky")
            if cs is not None:
                day = clear_sky_pv(cs["peak_w"], cs["sunrise"], cs["sunset"])
                pv = (lambda _t: day(clock.scenario_s()))
            else:
                prof = spec.get("pv", 0.8 * spec["w_max"])
                pv = (lambda _t: value_at(prof, clock.scenario_s()))
            self.sim = InverterSim(unit_id=spec["unit_id"], w_max=spec["w_max"], pv=pv,
                                   ramp_pct_per_s=spec["ramp_pct_per_s"], var_response_s=spec["var_response_s"],
                                   serial=f"HIL-{self.id}"[:16])
        elif self.kind == "battery":
            self.sim = BatterySim(unit_id=spec["unit_id"], wh_rtg=spec["wh"], w_max=spec["w_max"],
                                  soc_pct=spec["soc_pct"], serial=f"HIL-{self.id}"[:16])
        else:
            path = Path(regmap.__file__).parent / "maps" / f"{spec['map']}.toml"
            self.sim = UnitSim(spec["unit_id"], regmap.load_map(path))
        self._watch_writes()

    @property
    def w_max(self) -> float | None:
        return self.spec.get("w_max")

    @property
    def plant(self):
        return getattr(self.sim, "plant", None)

    def _watch_writes(self) -> None:
        """Record every write request (the simulator's own entry point) and every control write applied."""
        if self.kind == "meter":
            unit, action = self.sim, self.sim._action

            async def metered(fc, start, address, count, current, set_values):
                result = await action(fc, start, address, count, current, set_values)
                if set_values is not None:
                    self.attempts.append({"t": time.time_ns(), "address": address, "count": count,
                                          "refused": result is not None})
                return result
            unit._action = metered
            return
        apply, controls = self.sim.apply_write, self.sim.handlers[704]
        control_write = controls.write

        def attempt(address, values):
            result = apply(address, values)
            self.attempts.append({"t": time.time_ns(), "address": address, "count": len(values),
                                  "refused": result is not None})
            return result

        def applied(values):
            control_write(values)
            self.writes.append({"t": time.time_ns(), "points": {k: v for k, v in values.items()}})
        self.sim.apply_write, controls.write = attempt, applied

    def state(self) -> dict:
        """What the device does now (plant values; None where it has none)."""
        p = self.plant
        if p is None:
            return {}
        controlled = bool(p.WMaxLimPctEna or p.WSetEna or p.VArSetEna)
        limit = None
        if p.WMaxLimPctEna:
            limit = p.WMaxLimPct / 100 * p.w_max
        if p.WSetEna:
            limit = p.WSet if limit is None else min(limit, p.WSet)
        return {"W": p.W, "VAr": p.VAr, "avail_w": p.available_w() if self.kind == "inverter" else None,
                "setpoint_w": limit, "controlled": controlled,
                "soc_pct": getattr(p, "soc_pct", None)}


class Bench:
    def __init__(self, sc: Scenario, workdir: Path, clock: Clock, say: Callable[[str], None] = print) -> None:
        self.sc, self.workdir, self.clock, self.say = sc, Path(workdir), clock, say
        self.gateway_id = sc.gateway["id"]
        self.prefix = f"gridedge/v3/{self.gateway_id}/"
        self.mode = sc.gateway["mode"]
        self.broker = self.proxy = self.dso = self.line = self.gateway = None
        self.devices: dict[str, SimDevice] = {}
        self.relays: dict[str, ModbusRelay] = {}     # real devices behind the rig's relay
        self.real: dict[str, dict] = {}              # real devices: their [[devices]] keys for the gateway
        self.headend_offset_s = 0.0
        self.gateway_log = self.workdir / "gateway" / "gateway.log"
        self.bench_sheet = self.workdir / "bench.json"
        g = sc.grid
        self.feeder = Feeder([tuple(seg) for seg in g["segments"]])
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()
        self._telemetry_devs: set[str] = set()
        self._seen_upto = 0

    # ------------------------------------------------------------------ build
    async def start(self) -> None:
        sc = self.sc
        host = sc.broker["host"]
        pki_dir = Path(sc.broker["pki_dir"]).expanduser() if "pki_dir" in sc.broker else self.workdir / "pki"
        self.pki = await asyncio.to_thread(kept_pki, pki_dir, tuple(dict.fromkeys(("localhost", "127.0.0.1", host))))
        keys = pki_dir / "issuers"
        self.issuer_keys = {i: (keys / f"{i}.key.pem", keys / f"{i}.pub.pem") for i in ISSUERS}
        for i, (priv, pub) in self.issuer_keys.items():
            if not (priv.is_file() and pub.is_file()):
                new_issuer_key(keys, i)
        self.gw_cert, self.gw_key = self.pki.client(self.gateway_id)
        self.broker = rig_broker(self.workdir / "broker", self.pki, host, port=sc.broker["port"])
        await asyncio.to_thread(self.broker.start)
        if sc.uplink["path"] == "proxy":
            self.proxy = FaultProxy(host, self.broker.port, host=host, seed=sc.seed)
            await self.proxy.start()
        await self._start_devices()
        self.tick()                       # the meters show the grid before anything reads them
        self._write_bench_sheet()
        self.dso = DsoSimulator(self.broker.url, tls_context(self.pki.ca_cert, *self.pki.client(HEADEND_CN)),
                                self.prefix, client_id=HEADEND_CN, session_expiry_s=3600,
                                issuers=issuer_identities(self.pki, self.issuer_keys))
        await self.dso.start()
        if self.mode == "gridedge":
            self._write_gateway_config()
        if self.mode == "gridedge" or "command" in sc.gateway:
            await self.start_gateway()
        else:
            self.say(f"waiting for the external gateway {self.gateway_id!r}: its broker, certificates and devices "
                     f"are in {self.bench_sheet}")

    async def _start_devices(self) -> None:
        rtu = {}
        for spec in self.sc.devices:
            if spec["kind"] == "real":
                gw = dict(spec["gateway"], id=spec["id"])
                if spec["relay"]:
                    relay = ModbusRelay(gw["host"], gw.get("port", 502), seed=self.sc.seed)
                    gw.update(host="127.0.0.1", port=await relay.start())
                    self.relays[spec["id"]] = relay
                self.real[spec["id"]] = gw
                continue
            dev = SimDevice(spec, self.clock, self.sc.seed)
            self.devices[dev.id] = dev
            if spec["bus"] == "rtu":
                rtu[spec["unit_id"]] = dev
                continue
            if dev.kind == "meter":
                dev.server = ModbusTcpSim({spec["unit_id"]: dev.sim})
                port = await dev.server.start()
            else:
                port = await dev.sim.start()
            dev.relay = ModbusRelay("127.0.0.1", port, port=spec["port"], seed=self.sc.seed)
            dev.endpoint = {"host": "127.0.0.1", "port": await dev.relay.start()}
        if rtu:
            self.line = ModbusLineSim({u: d.sim for u, d in rtu.items()})
            path = await self.line.start()
            for d in rtu.values():
                if d.kind != "meter":
                    d.sim.start_plant()
                d.endpoint = {"serial_port": path, "baudrate": 19200, "parity": "N"}

    def _gateway_devices(self) -> list[dict]:
        out = []
        for dev in self.devices.values():
            spec = dev.spec
            rtu = spec["bus"] == "rtu"
            entry = {"id": dev.id, "role": dev.kind, "unit_id": spec["unit_id"],
                     "poll_ms": spec.get("poll_ms", self.sc.gateway["poll_ms"]), "timeout_ms": 1000, **dev.endpoint}
            if dev.kind == "meter":
                entry.update(driver="modbus_rtu" if rtu else "modbus_tcp", map=spec["map"], writable=False)
            else:
                entry.update(driver="sunspec_rtu" if rtu else "sunspec_tcp", writable=spec["writable"])
            out.append(entry)
        return out + list(self.real.values())

    @property
    def uplink_url(self) -> str:
        if self.proxy is None:
            return self.broker.url
        host = self.broker.host
        return f"mqtts://{f'[{host}]' if ':' in host else host}:{self.proxy.port}"

    def _write_bench_sheet(self) -> None:
        """What any gateway needs to join the bench: the broker, its certificates, the issuers, the devices."""
        sheet = {"gateway_id": self.gateway_id, "topic_prefix": self.prefix, "broker": self.uplink_url,
                 "ca_file": str(self.pki.ca_cert), "cert_file": str(self.gw_cert), "key_file": str(self.gw_key),
                 "issuers": {i: {"actor": i, "public_key": str(pub)} for i, (_k, pub) in self.issuer_keys.items()},
                 "devices": self._gateway_devices()}
        self.bench_sheet.parent.mkdir(parents=True, exist_ok=True)
        self.bench_sheet.write_text(json.dumps(sheet, indent=2) + "\n")

    def _write_gateway_config(self) -> Path:
        sheet = json.loads(self.bench_sheet.read_text())
        cfg = {
            "gateway": {"id": self.gateway_id, "description": f"gateway under test: {self.sc.name}"},
            "uplink": {"broker": sheet["broker"], "ca_file": sheet["ca_file"], "cert_file": sheet["cert_file"],
                       "key_file": sheet["key_file"], "keepalive_s": 10,
                       "telemetry_interval_ms": self.sc.gateway["telemetry_ms"], "backfill_rate": 200.0,
                       "backfill_jitter_s": 0.5},
            "storage": {"dir": str(self.workdir / "gateway" / "var")},
            "control": dict(CONTROL_DEFAULTS, settings=dict(SETTINGS_DEFAULTS)),
            "security": {"issuers": [{"id": i, "actor": v["actor"], "roles": ["operator"],
                                      "public_keys": [v["public_key"]]} for i, v in sheet["issuers"].items()]},
            "devices": sheet["devices"],
        }
        cfg = _merge(cfg, self.sc.gateway["config"])
        self.gateway_config = self.workdir / "gateway" / "gateway.toml"
        self.gateway_config.parent.mkdir(parents=True, exist_ok=True)
        self.gateway_config.write_text("# written by the gridedge HIL rig for this run\n" + toml_text(cfg))
        return self.gateway_config

    # ------------------------------------------------------------------ the gateway under test
    async def start_gateway(self) -> None:
        self.gateway_log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.mode == "gridedge":
            argv = [sys.executable, "-m", "gridedge", "run", "-c", str(self.gateway_config)]
        else:
            argv = [a.replace("{bench}", str(self.bench_sheet)) for a in self.sc.gateway["command"]]
        try:
            self.gateway = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=open(self.gateway_log, "ab"), env=env, start_new_session=True)
        except OSError as exc:
            raise BenchError(f"cannot start the gateway {argv[0]!r}: {exc.strerror}") from None

    async def kill_gateway(self, sig: int = signal.SIGKILL, timeout_s: float = 15.0) -> int | None:
        proc, self.gateway = self.gateway, None
        return await stop_process(proc, sig, timeout_s)

    def gateway_log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.gateway_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def wait_ready(self) -> None:
        """The gateway is online and every simulated device it reads is in its telemetry."""
        timeout = self.sc.gateway["online_timeout_s"]
        deadline = time.monotonic() + timeout
        wanted = set(self.devices) | set(self.real)
        while True:
            if self.gateway is not None and self.gateway.returncode is not None:
                raise BenchError(f"the gateway exited with status {self.gateway.returncode} while starting; "
                                 f"the end of its log ({self.gateway_log}):\n{self.gateway_log_tail()}")
            self._scan_telemetry()
            if self.online() and wanted <= self._telemetry_devs:
                return
            if time.monotonic() > deadline:
                missing = sorted(wanted - self._telemetry_devs)
                why = "is not online" if not self.online() else f"sends no telemetry of {', '.join(missing)}"
                raise BenchError(f"after {timeout:g} s the gateway {self.gateway_id!r} {why} (log: "
                                 f"{self.gateway_log if self.gateway is not None else 'not started by the rig'})")
            await asyncio.sleep(0.2)

    def online(self) -> bool:
        for s in reversed(self.dso.seen):
            if s.topic == self.prefix + contract.TOPIC_STATE and isinstance(s.doc, dict):
                return s.doc.get("status") == "online"
        return False

    def _scan_telemetry(self) -> None:
        seen = self.dso.seen
        for s in seen[self._seen_upto:]:
            if s.topic == self.prefix + contract.TOPIC_TELEMETRY and isinstance(s.doc, dict):
                for b in s.doc.get("blocks") or ():
                    if isinstance(b, dict) and isinstance(b.get("dev"), str):
                        self._telemetry_devs.add(b["dev"])
        self._seen_upto = len(seen)

    # ------------------------------------------------------------------ the plant and the grid
    def tick(self) -> dict[str, dict]:
        """Move the grid on to scenario time now: profiles, the feeder's voltages, the meters. Returns each
        simulated device's state, with its connection point's voltage (pu) and frequency."""
        t = self.clock.scenario_s()
        g = self.sc.grid
        self.feeder.v_source_pu = value_at(g["v_source_pu"], t)
        self.feeder.f_hz = value_at(g["f_hz"], t)
        loads: dict[int, list[float]] = {}
        for ld in self.sc.loads:
            acc = loads.setdefault(ld["node"], [0.0, 0.0])
            acc[0] += value_at(ld["w"], t)
            acc[1] += value_at(ld["var"], t)
        for node in range(1, self.feeder.nodes + 1):
            self.feeder.set_load(node, *loads.get(node, (0.0, 0.0)))
        states = {i: d.state() for i, d in self.devices.items()}
        for i, d in self.devices.items():
            if d.plant is not None:
                self.feeder.set_injection(d.node, i, states[i]["W"], states[i]["VAr"])
        out = {}
        for i, d in self.devices.items():
            v_pu, hz = self.feeder.voltage_pu(d.node), self.feeder.f_hz
            if d.plant is not None:
                d.plant.v, d.plant.hz = v_pu * self.feeder.v_nom_v, hz
                st = states[i]
            else:
                w = sum(states[m]["W"] for m in d.spec["measures"]) - loads.get(d.node, (0.0, 0.0))[0]
                var = sum(states[m]["VAr"] for m in d.spec["measures"]) - loads.get(d.node, (0.0, 0.0))[1]
                st = self._meter(d, w, var, v_pu, hz)
            out[i] = dict(st, v_pu=v_pu, hz=hz)
        return out

    def _meter(self, d: SimDevice, w: float, var: float, v_pu: float, hz: float) -> dict:
        now = time.monotonic()
        dt_h = (now - getattr(d, "_last", now)) / 3600
        d._last = now
        d.wh[0 if w < 0 else 1] += abs(w) * dt_h
        v = v_pu * self.feeder.v_nom_v
        values = {"W": w, "VAr": var, "Hz": hz, "TotWhImp": d.wh[0], "TotWhExp": d.wh[1]}
        for ph in "ABC":
            values.update({f"PhVph{ph}": v, f"Wph{ph}": w / 3, f"VArph{ph}": var / 3})
        d.sim.set_values({k: v for k, v in values.items() if k in {p.name for p in d.sim.rmap.points}})
        return {"W": w, "VAr": var, "avail_w": None, "setpoint_w": None, "controlled": False, "soc_pct": None}

    # ------------------------------------------------------------------ faults
    async def fault(self, f: dict, on: bool) -> None:
        kind = f["kind"]
        if kind == "uplink_latency":
            self.proxy.latency_s = f["latency_s"] if on else 0.0
        elif kind == "uplink_loss":
            self.proxy.drop_rate, self.proxy.drop_stall_s = (f["rate"], f["stall_s"]) if on else (0.0, 0.2)
        elif kind == "uplink_blackhole":
            self.proxy.blackhole(on)
        elif kind == "uplink_down":
            self.proxy.refuse(on)
            if on:
                await self.proxy.reset_all()
        elif kind == "broker_restart":
            await asyncio.to_thread(self.broker.stop if on else self.broker.start)
        elif kind.startswith("device_"):
            mode = kind.removeprefix("device_") if on else "ok"
            dev = self.devices.get(f["device"])
            if dev is not None and dev.spec["bus"] == "rtu":
                kw = {"delay_s": f["delay_s"]} if mode == "slow" else {"exception_code": f["code"]} \
                    if mode == "exception" else {}
                self.line.set_behaviour(dev.spec["unit_id"], RTU_MODES.get(mode, "ok"), **kw)
            else:
                relay = dev.relay if dev is not None else self.relays[f["device"]]
                relay.set(mode, **({"delay_s": f["delay_s"]} if mode == "slow" else
                                   {"code": f["code"]} if mode == "exception" else {}))
        elif kind == "gateway_kill":
            if on:
                await self.kill_gateway(signal.SIGKILL if f["signal"] == "KILL" else signal.SIGTERM)
            else:
                await self.start_gateway()
        elif kind == "clock_step":
            self.headend_offset_s += f["step_s"] if on else -f["step_s"]

    # ------------------------------------------------------------------ stop
    async def stop_gateway(self) -> None:
        """A clean stop of a gateway the rig started (it drains its outbox and says offline)."""
        if self.gateway is not None:
            await self.kill_gateway(signal.SIGTERM)

    async def stop(self) -> None:
        await self.kill_gateway(signal.SIGTERM)
        if self.dso is not None:
            await self.dso.stop()
        for dev in self.devices.values():
            for part in (dev.relay, dev.server):
                if part is not None:
                    await part.stop()
            if dev.kind != "meter":
                await dev.sim.stop()
        if self.line is not None:
            await self.line.stop()
        for relay in self.relays.values():
            await relay.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
